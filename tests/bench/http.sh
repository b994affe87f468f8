#!/usr/bin/env bash
# HTTP benchmark, with etcd (Debian etcd-server, v3 JSON gateway) as the real peer in the
# same run and a Serf agent (Debian serf) for idle memory. Loopback only; everything it
# starts it stops.
#
#   [DUR=10] [REG_CONC="1 16 64"] [REG_ROUNDS=3] [FILL=3000] tests/bench/http.sh
#   needs: wrk etcd-server serf python3 curl (apt); builds the release agent unless
#   MUSTER_BIN names another binary (e.g. an older build, to compare)
#
# Figures, in this order:
#   idle RSS              muster vs Serf, each just started
#   max-rate reads        catalog reads of a service with 1 and with 100 instances vs etcd
#                         ranges over the same data (wrk 2 threads, 32 connections, best of
#                         two alternating rounds)
#   fixed-rate reads      p99 at about 10,000 req/s (24 connections, 2 ms apart), idle, and
#                         again while 100 registrations/s change the service being read;
#                         REG_ROUNDS rounds, the lowest p99 of each kept
#   registrations         with a data_dir (durable before the answer: group commit, one
#                         syncfs per batch of concurrent writers) vs etcd puts, both at each
#                         concurrency in REG_CONC (wrk connections); --dev (memory only)
#   registrations, full   the same on agents already holding FILL services, vs empty ones;
#                         all kinds alternate over REG_ROUNDS rounds, best round kept
# Prints one line per figure and markdown tables at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${DUR:-10}
REG_CONC=${REG_CONC:-"1 16 64"}
REG_ROUNDS=${REG_ROUNDS:-3}
FILL=${FILL:-3000}
IP=127.0.0.1
for t in wrk etcd serf python3 curl; do
    command -v $t >/dev/null || { echo "missing $t: tests/install-packages.sh .ci/bench-packages-*.txt" >&2; exit 1; }
done
if [ -z "${MUSTER_BIN:-}" ]; then
    cargo build --release -q -p muster-agent
    MUSTER_BIN=target/release/muster
fi
BIN=$MUSTER_BIN
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
wait_http() { for _ in $(seq 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }

# start_agent NAME [data_dir]: starts an agent on free ports; sets AGENT_PID and AGENT_HTTP.
start_agent() {
    local hp dp gp
    hp=$(port); dp=$(port); gp=$(port)
    $BIN agent --dev --node "$1" --http-port "$hp" --dns-port "$dp" --gossip-port "$gp" \
        ${2:+--data-dir "$2"} --log-level warn &
    AGENT_PID=$!; PIDS+=($AGENT_PID)
    AGENT_HTTP="http://$IP:$hp"
    wait_http "$AGENT_HTTP/v1/agent/self"
}

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"

# The agent serving reads keeps a data_dir, as a production agent does.
start_agent bench "$WORK/data-read"; MPID=$AGENT_PID; M=$AGENT_HTTP
SP=$(port); SRP=$(port)
serf agent -node=bench-serf -bind=$IP:$SP -rpc-addr=$IP:$SRP -log-level=warn >/dev/null 2>&1 &
SPID=$!; PIDS+=($SPID)
sleep 3
M_IDLE=$(rss_kib $MPID); S_IDLE=$(rss_kib $SPID)
echo "idle RSS: muster ${M_IDLE} KiB, serf ${S_IDLE} KiB"

# Catalog content: 1 instance of "one", 100 of "hundred".
curl -sf -X PUT "$M/v1/agent/service/register" -d '{"Name":"one","Port":80}' >/dev/null
for i in $(seq 1 100); do
    curl -sf -X PUT "$M/v1/agent/service/register" \
        -d "{\"Name\":\"hundred\",\"ID\":\"h$i\",\"Port\":$((8000 + i)),\"Tags\":[\"v1\"],\"Meta\":{\"i\":\"$i\"}}" >/dev/null
done

# etcd with the same data: one key per instance under a prefix, read as a range. Its data
# directory is on the same filesystem as the agents' (both fsync there).
EC=$(port); EP=$(port)
etcd --data-dir "$WORK/etcd" --listen-client-urls http://$IP:$EC --advertise-client-urls http://$IP:$EC \
    --listen-peer-urls http://$IP:$EP --initial-advertise-peer-urls http://$IP:$EP \
    --initial-cluster default=http://$IP:$EP --log-level error >/dev/null 2>&1 &
PIDS+=($!)
E="http://$IP:$EC"
wait_http "$E/health"
b64() { printf '%s' "$1" | base64 -w0; }
curl -sf -X POST "$E/v3/kv/put" -d "{\"key\":\"$(b64 /svc/one/1)\",\"value\":\"$(b64 '{"Port":80}')\"}" >/dev/null
for i in $(seq 1 100); do
    curl -sf -X POST "$E/v3/kv/put" -d "{\"key\":\"$(b64 /svc/hundred/h$i)\",\"value\":\"$(b64 "{\"Port\":$((8000 + i)),\"Tags\":[\"v1\"]}")\"}" >/dev/null
done
RANGE_ONE="{\"key\":\"$(b64 /svc/one/)\",\"range_end\":\"$(b64 /svc/one0)\"}"
RANGE_100="{\"key\":\"$(b64 /svc/hundred/)\",\"range_end\":\"$(b64 /svc/hundred0)\"}"

cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = os.getenv("BODY")
wrk.headers["Content-Type"] = "application/json"
LUA
# Fixed-rate reads: each of C connections waits DELAY_MS between requests.
cat >"$WORK/rate.lua" <<'LUA'
local per_conn_delay = tonumber(os.getenv("DELAY_MS"))
function delay() return per_conn_delay end
LUA
# Registrations as churn on one host: the same 100 services re-registered over and over
# (each PUT replaces one, with a new port), so the node's size stays what it was.
cat >"$WORK/register.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"Name":"reg","ID":"reg-%d","Port":%d,"Tags":["a"]}', n % 100, n % 65535)
  return wrk.format("PUT", "/v1/agent/service/register", {["Content-Type"]="application/json"}, body)
end
LUA
# etcd puts of the same 100 keys (values base64 as the v3 gateway wants).
cat >"$WORK/etcdput.lua" <<'LUA'
local n = 0
local function b64(s)
  local b='ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  return ((s:gsub('.', function(x) local r,bb='',x:byte() for i=8,1,-1 do r=r..(bb%2^i-bb%2^(i-1)>0 and '1' or '0') end return r end)..'0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if (#x < 6) then return '' end local c=0 for i=1,6 do c=c+(x:sub(i,i)=='1' and 2^(6-i) or 0) end return b:sub(c+1,c+1) end)..({ '', '==', '=' })[#s%3+1])
end
request = function()
  n = n + 1
  local body = string.format('{"key":"%s","value":"%s"}', b64(string.format("/svc/reg/%d", n % 100)), b64(string.format('{"Port":%d,"Tags":["a"]}', n % 65535)))
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"]="application/json"}, body)
end
LUA
# Paced registrations (RATE per second for SECONDS, on schedule, one keep-alive
# connection each of CONNS threads): re-registers instances of "hundred" with a new tag,
# so the answer being read changes RATE times a second. Prints "sent failed".
cat >"$WORK/pace.py" <<'PY'
import http.client, sys, threading, time
host, port, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
conns = 4
sent, failed = [0], [0]
lock = threading.Lock()
start = time.monotonic()
total = int(rate * seconds)
def run(t):
    c = http.client.HTTPConnection(host, port, timeout=10)
    for k in range(t, total, conns):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        i = k % 100 + 1
        body = '{"Name":"hundred","ID":"h%d","Port":%d,"Tags":["v1","t%d"],"Meta":{"i":"%d"}}' % (i, 8000 + i, k, i)
        try:
            c.request("PUT", "/v1/agent/service/register", body=body)
            r = c.getresponse(); r.read()
            ok = r.status == 200
        except Exception:
            ok = False
            c.close(); c = http.client.HTTPConnection(host, port, timeout=10)
        with lock:
            sent[0] += 1
            failed[0] += 0 if ok else 1
threads = [threading.Thread(target=run, args=(t,)) for t in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
print(sent[0], failed[0], round(sent[0] / (time.monotonic() - start), 1))
PY
# Registers N services fill-0..fill-(N-1) with 32 concurrent keep-alive clients.
cat >"$WORK/fill.py" <<'PY'
import http.client, sys, threading
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def run(t):
    c = http.client.HTTPConnection(host, port, timeout=30)
    for i in range(t, n, 32):
        body = '{"Name":"fill-%d","ID":"fill-%d","Port":%d,"Tags":["a","b"],"Meta":{"team":"x"}}' % (i % 300, i, 10000 + i)
        c.request("PUT", "/v1/agent/service/register", body=body)
        r = c.getresponse(); r.read()
        if r.status != 200:
            sys.exit(f"fill-{i}: {r.status}")
threads = [threading.Thread(target=run, args=(t,)) for t in range(32)]
for t in threads: t.start()
for t in threads: t.join()
PY

to_ms() {
    python3 -c "
import re,sys; m=re.match(r'([0-9.]+)(us|ms|s)',sys.argv[1])
v=float(m.group(1)); u=m.group(2); print(round(v/1000 if u=='us' else v*1000 if u=='s' else v,3))" "$1"
}
# wrk summary → "rps p50 p99" (ms)
run_wrk() {
    local out rps p50 p99 errs
    out=$(wrk --latency "$@" 2>&1)
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    [ -n "$errs" ] && echo "   wrk: $errs" >&2
    echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
# Field N of a "rps p50 p99 ..." line.
f() { echo "$1" | awk "{print \$$2}"; }
# wrk's threads: one per connection up to 2.
threads() { [ "$1" -ge 2 ] && echo 2 || echo 1; }

declare -A R
for round in 1 2; do
    R[m1_$round]=$(run_wrk -t2 -c32 -d${DUR}s "$M/v1/catalog/service/one")
    R[e1_$round]=$(BODY="$RANGE_ONE" run_wrk -t2 -c32 -d${DUR}s -s "$WORK/post.lua" "$E/v3/kv/range")
    R[m100_$round]=$(run_wrk -t2 -c32 -d${DUR}s "$M/v1/catalog/service/hundred")
    R[e100_$round]=$(BODY="$RANGE_100" run_wrk -t2 -c32 -d${DUR}s -s "$WORK/post.lua" "$E/v3/kv/range")
done
best() { printf '%s\n%s\n' "${R[${1}_1]}" "${R[${1}_2]}" | sort -k1 -n -r | head -1; }
M1=$(best m1); E1=$(best e1); M100=$(best m100); E100=$(best e100)
echo "max-rate reads (rps p50ms p99ms), best of 2 alternating rounds:"
echo "  muster 1 instance:    $M1"
echo "  etcd   1 key range:   $E1"
echo "  muster 100 instances: $M100"
echo "  etcd   100 key range: $E100"

# p99 at a fixed rate of about 10,000 requests/s: 24 connections, each waiting 2 ms
# between requests (wrk has no rate option; the wait plus the answer time gives ~10k/s).
fixed() { DELAY_MS=2 run_wrk -t2 -c24 -d${DUR}s -s "$WORK/rate.lua" "$M/v1/catalog/service/$1"; }
# fixed_under_writes NAME: the same while 100 registrations/s (durable: this agent has a
# data_dir) change the 100-instance service; appends "reg/s failed" to wrk's figures.
fixed_under_writes() {
    python3 "$WORK/pace.py" $IP "${M##*:}" 100 "$DUR" >"$WORK/pace" &
    local pace=$! out sent failed rate
    PIDS+=($pace)
    out=$(fixed "$1")
    wait $pace
    read -r sent failed rate <"$WORK/pace"
    [ "$failed" = 0 ] || { echo "background registrations failed: $failed of $sent" >&2; exit 1; }
    echo "$out $rate $failed"
}
# REG_ROUNDS alternating rounds; each kind keeps its round with the lowest p99 (a stall of
# the shared machine in one 10 s window moves a p99 by milliseconds).
for round in $(seq 1 "$REG_ROUNDS"); do
    R[f1_$round]=$(fixed one)
    R[f100_$round]=$(fixed hundred)
    R[w1_$round]=$(fixed_under_writes one)
    R[w100_$round]=$(fixed_under_writes hundred)
    echo "fixed ~10k rps round $round (rps p50ms p99ms [reg/s failed]): idle: 1 instance ${R[f1_$round]};" \
        "100 instances ${R[f100_$round]}; with registrations: 1 instance ${R[w1_$round]}; 100 instances ${R[w100_$round]}"
done
lowest_p99() { for round in $(seq 1 "$REG_ROUNDS"); do echo "${R[${1}_$round]}"; done | sort -k3 -g | head -1; }
FIX1=$(lowest_p99 f1); FIX100=$(lowest_p99 f100); FIXW1=$(lowest_p99 w1); FIXW100=$(lowest_p99 w100)
PACE1_RATE=$(f "$FIXW1" 4); PACE2_RATE=$(f "$FIXW100" 4)
# Every round, for the table: p99 of each round, in order.
p99s() { for round in $(seq 1 "$REG_ROUNDS"); do f "${R[${1}_$round]}" 3; done | paste -sd/ -; }

# Registrations: four agents, two with a data_dir (durable before the answer) and two
# --dev; one of each first filled with FILL services. Then REG_ROUNDS alternating rounds
# of every kind at every concurrency, keeping each kind's best round: the disk's fsync time
# on a shared machine swings by several times between two 10 s runs, so one run each,
# taken at different moments, would compare the disk's moods rather than the agents.
start_agent bench-durable "$WORK/data-reg"; RD=$AGENT_HTTP
start_agent bench-durable-full "$WORK/data-full"; FD=$AGENT_HTTP
start_agent bench-memory; RM=$AGENT_HTTP
start_agent bench-memory-full; FM=$AGENT_HTTP
count() { curl -sf "$1/v1/agent/services" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
for a in "$FD" "$FM"; do
    python3 "$WORK/fill.py" $IP "${a##*:}" "$FILL"
done
N_FULL=$(count "$FD")
sleep 5
reg() { run_wrk -t"$(threads "$2")" -c"$2" -d${DUR}s -s "$WORK/register.lua" "$1"; }
put() { run_wrk -t"$(threads "$1")" -c"$1" -d${DUR}s -s "$WORK/etcdput.lua" "$E"; }
for round in $(seq 1 "$REG_ROUNDS"); do
    for c in $REG_CONC; do
        R[rd_${c}_$round]=$(reg "$RD" "$c")
        R[ep_${c}_$round]=$(put "$c")
        R[fd_${c}_$round]=$(reg "$FD" "$c")
        R[rm_${c}_$round]=$(reg "$RM" "$c")
        R[fm_${c}_$round]=$(reg "$FM" "$c")
        echo "registrations round $round, $c connections (rps p50ms p99ms): data_dir ${R[rd_${c}_$round]};" \
            "etcd put ${R[ep_${c}_$round]}; data_dir holding $N_FULL ${R[fd_${c}_$round]};" \
            "--dev ${R[rm_${c}_$round]}; --dev holding $N_FULL ${R[fm_${c}_$round]}"
    done
done
# The best round of each kind at each concurrency becomes R[kind_c].
for c in $REG_CONC; do
    for k in rd ep fd rm fm; do
        R[${k}_$c]=$(for round in $(seq 1 "$REG_ROUNDS"); do echo "${R[${k}_${c}_$round]}"; done | sort -k1 -n -r | head -1)
    done
done
M_AFTER=$(rss_kib $MPID)
echo "read agent's RSS after the run (holding $(count "$M") services): ${M_AFTER} KiB"

ratio() { python3 -c "print(round(float('$1')/float('$2'),2))"; }
n() { python3 -c "print(f'{round(float(\"$(f "$1" 1)\")):,}')"; }
cat <<MD

| figure | muster | peer | ratio |
|---|---|---|---|
| idle RSS | $(mib $M_IDLE) MiB | serf $(mib $S_IDLE) MiB | $(ratio $M_IDLE $S_IDLE) |
| catalog read, 1 instance (req/s, p99) | $(n "$M1"), $(f "$M1" 3) ms | etcd range $(n "$E1"), $(f "$E1" 3) ms | $(ratio $(f "$M1" 1) $(f "$E1" 1)) |
| catalog read, 100 instances (req/s, p99) | $(n "$M100"), $(f "$M100" 3) ms | etcd range $(n "$E100"), $(f "$E100" 3) ms | $(ratio $(f "$M100" 1) $(f "$E100" 1)) |
| read p99 at a fixed ~10k req/s, 1 / 100 instances, idle (lowest of $REG_ROUNDS rounds: $(p99s f1) / $(p99s f100) ms) | $(f "$FIX1" 3) ms / $(f "$FIX100" 3) ms ($(n "$FIX1") / $(n "$FIX100") req/s) | | |
| the same with 100 registrations/s of the service read (rounds: $(p99s w1) / $(p99s w100) ms) | $(f "$FIXW1" 3) ms / $(f "$FIXW100" 3) ms ($(n "$FIXW1") / $(n "$FIXW100") req/s; $PACE1_RATE / $PACE2_RATE reg/s) | | goal < 2 ms |

| registrations, wrk connections (best of $REG_ROUNDS rounds) | data_dir (req/s, p99) | etcd put (req/s, p99) | ratio | --dev (req/s, p99) |
|---|---|---|---|---|
MD
for c in $REG_CONC; do
    echo "| $c | $(n "${R[rd_$c]}"), $(f "${R[rd_$c]}" 3) ms | $(n "${R[ep_$c]}"), $(f "${R[ep_$c]}" 3) ms | $(ratio $(f "${R[rd_$c]}" 1) $(f "${R[ep_$c]}" 1)) | $(n "${R[rm_$c]}"), $(f "${R[rm_$c]}" 3) ms |"
done
cat <<MD

| registrations, wrk connections | data_dir: empty → holding $N_FULL (req/s) | ratio | --dev: empty → holding $N_FULL (req/s) | ratio |
|---|---|---|---|---|
MD
for c in $REG_CONC; do
    echo "| $c | $(n "${R[rd_$c]}") → $(n "${R[fd_$c]}") | $(ratio $(f "${R[fd_$c]}" 1) $(f "${R[rd_$c]}" 1)) | $(n "${R[rm_$c]}") → $(n "${R[fm_$c]}") | $(ratio $(f "${R[fm_$c]}" 1) $(f "${R[rm_$c]}" 1)) |"
done
