#!/usr/bin/env bash
# HTTP benchmark: catalog reads (1 and 100 instances) and registrations against muster, with
# etcd (Debian etcd-server, v3 JSON gateway) as the real peer in the same run; idle RSS of
# muster vs a Serf agent (Debian serf). Loopback only; everything it starts it stops.
#
#   tests/bench/http.sh            # needs: wrk etcd-server serf (apt), a release build
#
# Prints one line per figure and a summary table (markdown) at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${DUR:-10}
IP=127.0.0.1
for t in wrk etcd serf; do command -v $t >/dev/null || { echo "missing $t: apt-get install -y wrk etcd-server serf" >&2; exit 1; }; done
cargo build --release -q -p muster-agent
BIN=target/release/muster
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
wait_http() { for _ in $(seq 100); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

HP=$(port); DP=$(port); GP=$(port)
$BIN agent --dev --node bench --http-port $HP --dns-port $DP --gossip-port $GP --log-level warn &
MPID=$!; PIDS+=($MPID)
wait_http "http://$IP:$HP/v1/agent/self"

# Serf agent for the idle-RSS comparison.
SP=$(port); SRP=$(port)
serf agent -node=bench-serf -bind=$IP:$SP -rpc-addr=$IP:$SRP -log-level=warn >/dev/null 2>&1 &
SPID=$!; PIDS+=($SPID)
sleep 3
M_IDLE=$(rss_kib $MPID); S_IDLE=$(rss_kib $SPID)
echo "idle RSS: muster ${M_IDLE} KiB, serf ${S_IDLE} KiB"

# Catalog content: 1 instance of "one", 100 of "hundred".
curl -sf -X PUT "http://$IP:$HP/v1/agent/service/register" -d '{"Name":"one","Port":80}' >/dev/null
for i in $(seq 1 100); do
  curl -sf -X PUT "http://$IP:$HP/v1/agent/service/register" \
    -d "{\"Name\":\"hundred\",\"ID\":\"h$i\",\"Port\":$((8000+i)),\"Tags\":[\"v1\"],\"Meta\":{\"i\":\"$i\"}}" >/dev/null
done

# etcd with the same data: one key per instance under a prefix, read as a range.
EC=$(port); EP=$(port)
etcd --data-dir "$WORK/etcd" --listen-client-urls http://$IP:$EC --advertise-client-urls http://$IP:$EC \
     --listen-peer-urls http://$IP:$EP --initial-advertise-peer-urls http://$IP:$EP \
     --initial-cluster default=http://$IP:$EP --log-level error >/dev/null 2>&1 &
PIDS+=($!)
wait_http "http://$IP:$EC/health"
b64() { printf '%s' "$1" | base64 -w0; }
curl -sf -X POST "http://$IP:$EC/v3/kv/put" -d "{\"key\":\"$(b64 /svc/one/1)\",\"value\":\"$(b64 '{"Port":80}')\"}" >/dev/null
for i in $(seq 1 100); do
  curl -sf -X POST "http://$IP:$EC/v3/kv/put" -d "{\"key\":\"$(b64 /svc/hundred/h$i)\",\"value\":\"$(b64 "{\"Port\":$((8000+i)),\"Tags\":[\"v1\"]}")\"}" >/dev/null
done
RANGE_ONE="{\"key\":\"$(b64 /svc/one/)\",\"range_end\":\"$(b64 /svc/one0)\"}"
RANGE_100="{\"key\":\"$(b64 /svc/hundred/)\",\"range_end\":\"$(b64 /svc/hundred0)\"}"

cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = os.getenv("BODY")
wrk.headers["Content-Type"] = "application/json"
LUA
# Fixed-rate reads: each of C connections waits C/RATE seconds between requests.
cat > "$WORK/rate.lua" <<'LUA'
local per_conn_delay = tonumber(os.getenv("DELAY_MS"))
function delay() return per_conn_delay end
LUA
cat > "$WORK/register.lua" <<'LUA'
local n = 0
local tid = 0
function setup(thread) tid = tid + 1; thread:set("tid", tid) end
request = function()
  n = n + 1
  -- Churn on one host: the same 100 services re-registered over and over (each PUT
  -- replaces one, with a new port), so the node's size stays that of a busy host.
  local body = string.format('{"Name":"reg","ID":"reg-%d","Port":%d,"Tags":["a"]}', n % 100, n % 65535)
  return wrk.format("PUT", "/v1/agent/service/register", {["Content-Type"]="application/json"}, body)
end
LUA
cat > "$WORK/etcdput.lua" <<'LUA'
local n = 0
local tid = 0
local function b64(s)
  local b='ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  return ((s:gsub('.', function(x) local r,bb='',x:byte() for i=8,1,-1 do r=r..(bb%2^i-bb%2^(i-1)>0 and '1' or '0') end return r end)..'0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if (#x < 6) then return '' end local c=0 for i=1,6 do c=c+(x:sub(i,i)=='1' and 2^(6-i) or 0) end return b:sub(c+1,c+1) end)..({ '', '==', '=' })[#s%3+1])
end
function setup(thread) tid = tid + 1; thread:set("tid", tid) end
request = function()
  n = n + 1
  local body = string.format('{"key":"%s","value":"%s"}', b64(string.format("/svc/reg/%d", n % 100)), b64(string.format('{"Port":%d,"Tags":["a"]}', n % 65535)))
  return wrk.format("POST", "/v3/kv/put", {["Content-Type"]="application/json"}, body)
end
LUA

# wrk summary → "rps p50 p99" (ms)
run_wrk() {
  local out; out=$(wrk --latency "$@" 2>&1)
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local errs; errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
  [ -n "$errs" ] && echo "   wrk: $errs" >&2
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { python3 -c "
import re,sys; s=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',s)
v=float(m.group(1)); u=m.group(2); print(round(v/1000 if u=='us' else v*1000 if u=='s' else v,3))" "$1"; }

C=32; T=2
declare -A R
for round in 1 2; do
  R[m1_$round]=$(run_wrk -t$T -c$C -d${DUR}s "http://$IP:$HP/v1/catalog/service/one")
  R[e1_$round]=$(BODY="$RANGE_ONE" run_wrk -t$T -c$C -d${DUR}s -s "$WORK/post.lua" "http://$IP:$EC/v3/kv/range")
  R[m100_$round]=$(run_wrk -t$T -c$C -d${DUR}s "http://$IP:$HP/v1/catalog/service/hundred")
  R[e100_$round]=$(BODY="$RANGE_100" run_wrk -t$T -c$C -d${DUR}s -s "$WORK/post.lua" "http://$IP:$EC/v3/kv/range")
done
best() { printf '%s\n%s\n' "${R[${1}_1]}" "${R[${1}_2]}" | sort -k1 -n -r | head -1; }
M1=$(best m1); E1=$(best e1); M100=$(best m100); E100=$(best e100)
echo "max-rate reads (rps p50ms p99ms), best of 2 alternating rounds:"
echo "  muster 1 instance:    $M1"
echo "  etcd   1 key range:   $E1"
echo "  muster 100 instances: $M100"
echo "  etcd   100 key range: $E100"

# p99 at a fixed rate of at least 10,000 requests/s: 24 connections, each waiting 2 ms
# between requests (wrk has no rate option; the wait plus the answer time gives ~10-11k/s).
FIX1=$(DELAY_MS=2 run_wrk -t2 -c24 -d${DUR}s -s "$WORK/rate.lua" "http://$IP:$HP/v1/catalog/service/one")
FIX100=$(DELAY_MS=2 run_wrk -t2 -c24 -d${DUR}s -s "$WORK/rate.lua" "http://$IP:$HP/v1/catalog/service/hundred")
echo "fixed ~10k rps (rps p50ms p99ms): 1 instance: $FIX1; 100 instances: $FIX100"

# Registrations (100 services re-registered in turn, see register.lua): muster in --dev
# (memory only) and with a data_dir (fsync per write), etcd put of the same 100 keys.
MREG=$(run_wrk -t2 -c8 -d${DUR}s -s "$WORK/register.lua" "http://$IP:$HP")
HP2=$(port); DP2=$(port); GP2=$(port)
$BIN agent --dev --node bench2 --http-port $HP2 --dns-port $DP2 --gossip-port $GP2 --data-dir "$WORK/data" --log-level warn &
PIDS+=($!)
wait_http "http://$IP:$HP2/v1/agent/self"
MREGD=$(run_wrk -t2 -c8 -d${DUR}s -s "$WORK/register.lua" "http://$IP:$HP2")
EREG=$(run_wrk -t2 -c8 -d${DUR}s -s "$WORK/etcdput.lua" "http://$IP:$EC")
echo "registrations (rps p50ms p99ms): muster --dev: $MREG; muster data_dir (fsync): $MREGD; etcd put: $EREG"
M_AFTER=$(rss_kib $MPID)
echo "muster RSS after the run (holding $(curl -s http://$IP:$HP/v1/agent/services | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') services): ${M_AFTER} KiB"

ratio() { python3 -c "print(round(float('$1')/float('$2'),2))"; }
f() { echo "$1" | awk "{print \$$2}"; }
cat <<MD

| figure | muster | peer | ratio |
|---|---|---|---|
| idle RSS | $((M_IDLE/1024)).$(( (M_IDLE%1024)*10/1024 )) MiB | serf $((S_IDLE/1024)).$(( (S_IDLE%1024)*10/1024 )) MiB | $(ratio $M_IDLE $S_IDLE) |
| catalog read, 1 instance (req/s, p99) | $(f "$M1" 1), $(f "$M1" 3) ms | etcd range $(f "$E1" 1), $(f "$E1" 3) ms | $(ratio $(f "$M1" 1) $(f "$E1" 1)) |
| catalog read, 100 instances (req/s, p99) | $(f "$M100" 1), $(f "$M100" 3) ms | etcd range $(f "$E100" 1), $(f "$E100" 3) ms | $(ratio $(f "$M100" 1) $(f "$E100" 1)) |
| p99 at a fixed ~10k req/s, 1 / 100 instances | $(f "$FIX1" 3) ms / $(f "$FIX100" 3) ms ($(f "$FIX1" 1) / $(f "$FIX100" 1) req/s) | | |
| registrations, --dev (req/s, p99) | $(f "$MREG" 1), $(f "$MREG" 3) ms | | |
| registrations, data_dir fsync (req/s, p99) | $(f "$MREGD" 1), $(f "$MREGD" 3) ms | etcd put $(f "$EREG" 1), $(f "$EREG" 3) ms | $(ratio $(f "$MREGD" 1) $(f "$EREG" 1)) |
MD
