#!/usr/bin/env bash
# Fleet-scale benchmark (issue 10): K muster agents on loopback, each holding S services,
# for each S in a list, in one run. For each S it measures
#   membership   time from starting the agents (all joining the first) until every agent
#                lists K alive members
#   convergence  time from the last registration's answer (K×S registrations, sent
#                concurrently) until every agent holds K×S instances
#   idle bytes   gossip bytes sent per node per second, steady state (the agents' own
#                muster.gossip.bytes_sent counters, over IDLE seconds)
#   churn bytes  the same while CHURN_RATE changes/s run cluster-wide (a service
#                re-registered with a new tag on a random agent)
#   spread       time from a change (same kind) until every agent answers it, median and
#                worst of SPREADS changes made one at a time (blocking queries on every agent)
#   late joiner  time from starting one more agent until it holds the whole catalog
#   CPU, RSS     per agent (from /proc): CPU idle and under churn, RSS at the end
# and checks the issue's goals at the end.
#
# Usage: [K=100] [S_LIST="0 10 100"] [REPEAT=1] tests/bench/scale.sh
# More knobs (env): IDLE=30 CHURN=30 CHURN_RATE=20 SPREADS=20 SETTLE=10 TIMEOUT=180
#   NET=127.0.20   agent i gets NET.(i+1) (then NET+1.x ...); addresses whose ports
#                  (8301 tcp+udp, 8500 tcp, 8600 tcp+udp) are taken are skipped
#   MUSTER_BIN=target/release/muster (built here when it is the default)
# Needs: python3 (stdlib only), the 127.0.0.0/8 loopback; no other package.
# Everything it starts it stops (also on Ctrl-C / SIGTERM).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${MUSTER_BIN:-}" ]; then
    cargo build --release -q -p muster-agent
    MUSTER_BIN=target/release/muster
fi
[ -x "$MUSTER_BIN" ] || { echo "no $MUSTER_BIN" >&2; exit 1; }
export MUSTER_BIN
exec python3 tests/bench/scale.py
