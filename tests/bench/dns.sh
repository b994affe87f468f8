#!/usr/bin/env bash
# DNS throughput: muster versus Knot DNS serving the same names, measured with dnsperf in
# one run, alternating servers round by round so machine noise hits both alike.
#
# Usage: tests/bench/dns.sh [rounds] [seconds-per-round]
#   env: MUSTER_BIN (default target/release/muster), BENCH_IP (127.0.0.77),
#        DNSPERF_CLIENTS (8), DNSPERF_THREADS (1), DNSPERF_OUTSTANDING (100)
# Needs: dnsperf, knot (knotd), dnsutils (dig), curl; a release build of muster
#        (`cargo build --release -p muster-agent`).
# Prints per-round qps, loss and latency for both servers, then the means and the ratio
# muster/knot (goal: >= 1.0, with no loss).
set -euo pipefail

ROUNDS=${1:-3}
SECS=${2:-10}
IP=${BENCH_IP:-127.0.0.77}
CLIENTS=${DNSPERF_CLIENTS:-8}
THREADS=${DNSPERF_THREADS:-1}
OUTSTANDING=${DNSPERF_OUTSTANDING:-100}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MUSTER_BIN=${MUSTER_BIN:-$ROOT/target/release/muster}
SERVICES=10
INSTANCES=3

for tool in dnsperf knotd dig curl; do
    command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 2; }
done
[ -x "$MUSTER_BIN" ] || { echo "missing $MUSTER_BIN: cargo build --release -p muster-agent" >&2; exit 2; }

free_port() {
    python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$IP"
}
HTTP_PORT=$(free_port); DNS_PORT=$(free_port); GOSSIP_PORT=$(free_port); KNOT_PORT=$(free_port)

WORK=$(mktemp -d /tmp/muster-dnsbench.XXXXXX)
MUSTER_PID=""; KNOT_PID=""
cleanup() {
    [ -n "$MUSTER_PID" ] && kill "$MUSTER_PID" 2>/dev/null && wait "$MUSTER_PID" 2>/dev/null
    [ -n "$KNOT_PID" ] && kill "$KNOT_PID" 2>/dev/null && wait "$KNOT_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

hex() { printf '%02x%02x%02x%02x' $(echo "$1" | tr . ' '); }

# --- muster, with the services registered over HTTP ---
"$MUSTER_BIN" agent --dev --node bench --bind "$IP" --advertise "$IP" --client "$IP" \
    --http-port "$HTTP_PORT" --dns-port "$DNS_PORT" --gossip-port "$GOSSIP_PORT" \
    --log-level warn >"$WORK/muster.log" 2>&1 &
MUSTER_PID=$!
for _ in $(seq 100); do
    curl -sf "http://$IP:$HTTP_PORT/v1/agent/self" >/dev/null && break
    sleep 0.1
done

# --- the same names as a Knot zone ---
ZONE=$WORK/local.zone
{
    echo '$ORIGIN local.'
    echo '$TTL 0'
    echo '@ IN SOA ns.local. hostmaster.local. 1 3600 600 86400 0'
    echo '@ IN NS ns.local.'
    echo "ns IN A $IP"
    echo "bench.node IN A $IP"
} >"$ZONE"
QUERIES=$WORK/queries.txt
: >"$QUERIES"
for s in $(seq 0 $((SERVICES - 1))); do
    for i in $(seq 1 $INSTANCES); do
        addr="10.0.$s.$i"; port=$((8000 + i))
        curl -sf -X PUT "http://$IP:$HTTP_PORT/v1/agent/service/register" \
            -d "{\"Name\":\"svc$s\",\"ID\":\"svc$s-$i\",\"Address\":\"$addr\",\"Port\":$port}" >/dev/null
        echo "svc$s.service IN A $addr" >>"$ZONE"
        echo "svc$s.service IN SRV 1 1 $port $(hex "$addr").addr.local." >>"$ZONE"
        echo "$(hex "$addr").addr IN A $addr" >>"$ZONE"
    done
    echo "svc$s.service.local A" >>"$QUERIES"
    echo "svc$s.service.local SRV" >>"$QUERIES"
done
echo "bench.node.local A" >>"$QUERIES"
echo "missing.service.local A" >>"$QUERIES"

cat >"$WORK/knot.conf" <<EOF
server:
    rundir: "$WORK"
    listen: $IP@$KNOT_PORT
    udp-workers: $(nproc)
    tcp-workers: 1
    background-workers: 1
database:
    storage: "$WORK"
log:
  - target: stderr
    any: warning
zone:
  - domain: local
    storage: "$WORK"
    file: "local.zone"
EOF
knotd -c "$WORK/knot.conf" >"$WORK/knot.log" 2>&1 &
KNOT_PID=$!
for _ in $(seq 100); do
    dig +short +tries=1 +time=1 @"$IP" -p "$KNOT_PORT" bench.node.local A | grep -q . && break
    sleep 0.1
done

# --- both must give the same answers (rcode and record set) before we time them ---
answers() { # server port name type
    dig +norec +noall +answer +comments @"$1" -p "$2" "$3" "$4" |
        awk '/status:/ {sub(/,.*/, "", $6); print $6} /IN/ && !/^;/ {print $1, $4, $5, $6, $7, $8}' | sort
}
while read -r name type; do
    if [ "$(answers "$IP" "$DNS_PORT" "$name" "$type")" != "$(answers "$IP" "$KNOT_PORT" "$name" "$type")" ]; then
        echo "answers differ for $name $type:" >&2
        answers "$IP" "$DNS_PORT" "$name" "$type" >&2; echo --- >&2
        answers "$IP" "$KNOT_PORT" "$name" "$type" >&2
        exit 1
    fi
done <"$QUERIES"

# --- alternate rounds ---
run() { # port -> "qps lost_pct avg_ms max_ms"
    dnsperf -s "$IP" -p "$1" -d "$QUERIES" -l "$SECS" -c "$CLIENTS" -T "$THREADS" \
        -q "$OUTSTANDING" -t 2 2>&1 |
        awk '/Queries sent:/ {sent=$3}
             /Queries lost:/ {lost=$3}
             /Queries per second:/ {qps=$4}
             /Average Latency/ {avg=$4; max=$8; gsub(/[(),]/, "", max)}
             END {printf "%.0f %.3f %.3f %.3f\n", qps, (sent ? 100*lost/sent : 100), avg*1000, max*1000}'
}
echo "dnsperf -l $SECS -c $CLIENTS -T $THREADS -q $OUTSTANDING; $((SERVICES * 2 + 2)) names; $(nproc) cores; $(date -u +%FT%TZ)"
printf '%-6s %-7s %10s %8s %9s %9s\n' round server qps loss% avg_ms max_ms
M_SUM=0; K_SUM=0; M_LOSS=0; K_LOSS=0; M_LAT=0; K_LAT=0
for r in $(seq 1 "$ROUNDS"); do
    read -r q l a m < <(run "$DNS_PORT")
    printf '%-6s %-7s %10s %8s %9s %9s\n' "$r" muster "$q" "$l" "$a" "$m"
    M_SUM=$((M_SUM + q)); M_LOSS=$(echo "$M_LOSS + $l" | bc -l); M_LAT=$(echo "$M_LAT + $a" | bc -l)
    read -r q l a m < <(run "$KNOT_PORT")
    printf '%-6s %-7s %10s %8s %9s %9s\n' "$r" knot "$q" "$l" "$a" "$m"
    K_SUM=$((K_SUM + q)); K_LOSS=$(echo "$K_LOSS + $l" | bc -l); K_LAT=$(echo "$K_LAT + $a" | bc -l)
done
M_QPS=$((M_SUM / ROUNDS)); K_QPS=$((K_SUM / ROUNDS))
printf 'mean   muster %10d %8.3f %9.3f\n' "$M_QPS" "$(echo "$M_LOSS / $ROUNDS" | bc -l)" "$(echo "$M_LAT / $ROUNDS" | bc -l)"
printf 'mean   knot   %10d %8.3f %9.3f\n' "$K_QPS" "$(echo "$K_LOSS / $ROUNDS" | bc -l)" "$(echo "$K_LAT / $ROUNDS" | bc -l)"
printf 'ratio muster/knot: %.2f\n' "$(echo "$M_QPS / $K_QPS" | bc -l)"
