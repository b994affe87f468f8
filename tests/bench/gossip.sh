#!/usr/bin/env bash
# Gossip benchmark: N muster agents vs N Serf agents, side by side on loopback.
#
# For each N (default: 20 50) and each system it measures
#   join      time from "everyone joins the first agent" until every agent lists N alive
#   spread    time from a change on agent 1 (muster: a service registration; Serf: a tag)
#             until the farthest agent shows it
#   detect    time from kill -9 of one agent until every other agent lists it failed; KILLS
#             agents (default 3) are killed one after another in each run, each once the
#             one before is detected everywhere, and the figure is the median of all of them
#             (one detection is a probe that happens to come soon or late: too noisy alone)
#   bytes     gossip bytes sent per node per second while idle, 6 s after the cluster
#             formed (steady state, join-time exchanges excluded; muster: its own counters;
#             Serf: memberlist.udp/tcp.sent through a statsd sink)
#   rss       resident memory per agent (MiB, mean) after the cluster formed
#
# Usage: [REPEAT=3] [KILLS=3] tests/bench/gossip.sh [N...]   (MUSTER_BIN defaults to target/release/muster;
#        REPEAT runs each system that many times and reports the median of each figure)
# Needs: a release build (cargo build --release -p muster-agent), Debian package `serf`,
# python3, and the 127.0.0.0/8 loopback (agents use 127.0.1.x and 127.0.2.x).
set -euo pipefail
cd "$(dirname "$0")/../.."
MUSTER_BIN=${MUSTER_BIN:-target/release/muster}
SERF_BIN=${SERF_BIN:-$(command -v serf || true)}
[ -x "$MUSTER_BIN" ] || { echo "no $MUSTER_BIN: cargo build --release -p muster-agent" >&2; exit 1; }
[ -n "$SERF_BIN" ] || { echo "serf not found: apt-get install serf" >&2; exit 1; }
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(20 50)
export MUSTER_BIN SERF_BIN
exec python3 - "${SIZES[@]}" <<'PY'
import json, os, signal, socket, subprocess, sys, tempfile, threading, time, urllib.request

MUSTER = os.environ["MUSTER_BIN"]
SERF = os.environ["SERF_BIN"]
IDLE_WINDOW = 10.0
KILLS = int(os.environ.get("KILLS", "3"))
TIMEOUT = 90.0


def now():
    return time.monotonic()


def http(ip, method, path, body=b""):
    req = urllib.request.Request(f"http://{ip}:8500{path}", data=body if method == "PUT" else None, method=method)
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read() or b"null")


def rss_mib(pids):
    total = 0
    for p in pids:
        with open(f"/proc/{p}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / len(pids) / 1024


def wait_all(checks, timeout=TIMEOUT):
    """Runs every check in its own thread until it holds; returns the time the slowest
    one first held (seconds since start), or None on timeout."""
    start = now()
    done = [None] * len(checks)

    def run(i, check):
        while now() - start < timeout:
            try:
                if check():
                    done[i] = now() - start
                    return
            except Exception:
                pass
            time.sleep(0.05)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(checks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return None if any(d is None for d in done) else max(done)


class Statsd(threading.Thread):
    """A statsd sink summing Serf's memberlist send counters."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent = 0.0
        self.lock = threading.Lock()

    def run(self):
        while True:
            data, _ = self.sock.recvfrom(65536)
            for line in data.decode(errors="replace").splitlines():
                name, _, rest = line.partition(":")
                if name.endswith("memberlist.udp.sent") or name.endswith("memberlist.tcp.sent"):
                    try:
                        v = float(rest.split("|")[0])
                    except ValueError:
                        continue
                    with self.lock:
                        self.sent += v

    def total(self):
        with self.lock:
            return self.sent


class Muster:
    name = "muster"

    def __init__(self, n, tmp):
        self.n, self.tmp = n, tmp
        self.ips = [f"127.0.1.{i + 1}" for i in range(n)]
        self.procs = []

    def start(self):
        for i, ip in enumerate(self.ips):
            log = open(os.path.join(self.tmp, f"muster-{i}.log"), "w")
            self.procs.append(subprocess.Popen(
                [MUSTER, "agent", "--dev", "--node", f"m{i}", "--bind", ip, "--advertise", ip,
                 "--client", ip, "--log-level", "warn"],
                stdout=log, stderr=log))
        assert wait_all([lambda ip=ip: http(ip, "GET", "/v1/agent/self") is not None for ip in self.ips]) is not None

    def join_all(self):
        seed = self.ips[0]
        for ip in self.ips[1:]:
            threading.Thread(target=http, args=(ip, "PUT", f"/v1/agent/join/{seed}")).start()

    def alive_count(self, ip):
        return sum(1 for m in http(ip, "GET", "/v1/agent/members") if m["Status"] == 1)

    def change(self):
        http(self.ips[0], "PUT", "/v1/agent/service/register", b'{"Name": "bench", "Port": 1}')

    def sees_change(self, ip):
        return len(http(ip, "GET", "/v1/catalog/service/bench")) == 1

    def sees_failed(self, ip, victim):
        return any(m["Name"] == f"m{victim}" and m["Status"] == 4 for m in http(ip, "GET", "/v1/agent/members"))

    def bytes_sent(self, alive):
        total = 0
        for i in alive:
            counters = http(self.ips[i], "GET", "/v1/agent/metrics")["Counters"]
            total += next(c["Sum"] for c in counters if c["Name"] == "muster.gossip.bytes_sent")
        return total

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


class Serf:
    name = "serf"

    def __init__(self, n, tmp, statsd):
        self.n, self.tmp, self.statsd = n, tmp, statsd
        self.ips = [f"127.0.2.{i + 1}" for i in range(n)]
        self.procs = []

    def cli(self, ip, *args):
        # Go flags stop at the first positional argument: -rpc-addr goes right after the command.
        return subprocess.run([SERF, args[0], f"-rpc-addr={ip}:7373", *args[1:]], capture_output=True, text=True, timeout=10)

    def start(self):
        for i, ip in enumerate(self.ips):
            cfg = os.path.join(self.tmp, f"serf-{i}.json")
            with open(cfg, "w") as f:
                json.dump({"statsd_addr": f"127.0.0.1:{self.statsd.port}"}, f)
            log = open(os.path.join(self.tmp, f"serf-{i}.log"), "w")
            self.procs.append(subprocess.Popen(
                [SERF, "agent", f"-node=s{i}", f"-bind={ip}:7946", f"-rpc-addr={ip}:7373",
                 "-profile=lan", "-log-level=warn", f"-config-file={cfg}"],
                stdout=log, stderr=log))
        assert wait_all([lambda ip=ip: self.cli(ip, "members").returncode == 0 for ip in self.ips]) is not None

    def join_all(self):
        seed = self.ips[0]
        for ip in self.ips[1:]:
            threading.Thread(target=self.cli, args=(ip, "join", f"{seed}:7946")).start()

    def members(self, ip):
        return json.loads(self.cli(ip, "members", "-format=json").stdout)["members"]

    def alive_count(self, ip):
        return sum(1 for m in self.members(ip) if m["status"] == "alive")

    def change(self):
        self.cli(self.ips[0], "tags", "-set", "bench=1")

    def sees_change(self, ip):
        return any(m["name"] == "s0" and m["tags"].get("bench") == "1" for m in self.members(ip))

    def sees_failed(self, ip, victim):
        return any(m["name"] == f"s{victim}" and m["status"] == "failed" for m in self.members(ip))

    def bytes_sent(self, alive):
        return self.statsd.total()

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def bench(system):
    n = system.n
    r = {}
    system.start()
    t = now()
    system.join_all()
    took = wait_all([lambda ip=ip: system.alive_count(ip) == n for ip in system.ips])
    r["join"] = took
    # Let join-time exchanges (push-pulls) finish: the byte figure is the steady state.
    time.sleep(6)
    r["rss"] = rss_mib([p.pid for p in system.procs])
    alive = list(range(n))
    b0 = system.bytes_sent(alive)
    time.sleep(IDLE_WINDOW)
    b1 = system.bytes_sent(alive)
    r["bytes"] = (b1 - b0) / n / IDLE_WINDOW
    system.change()
    r["spread"] = wait_all([lambda ip=ip: system.sees_change(ip) for ip in system.ips[1:]])
    r["detects"] = []
    for victim in range(n - 1, n - 1 - KILLS, -1):
        system.procs[victim].kill()
        took = wait_all([lambda ip=ip, v=victim: system.sees_failed(ip, v) for ip in system.ips[:victim]])
        r["detects"].append(took)
        if took is None:
            break
        time.sleep(2)
    r["detect"] = median(r["detects"])
    system.stop()
    return r


def fmt(v, unit):
    return "timeout" if v is None else f"{v:.2f} {unit}" if unit == "s" else f"{v:.0f} {unit}" if unit == "B/s" else f"{v:.1f} {unit}"


def median(values):
    """Median of the runs; a timeout counts as slower than any figure."""
    vs = sorted(values, key=lambda v: float("inf") if v is None else v)
    return vs[len(vs) // 2]


def main():
    sizes = [int(a) for a in sys.argv[1:]]
    repeat = int(os.environ.get("REPEAT", "1"))
    if not 1 <= KILLS < min(sizes):
        # Agent 0 must live on to be asked, and a run needs at least one kill to report.
        sys.exit(f"KILLS={KILLS}: must be at least 1 and below the smallest N ({min(sizes)})")
    statsd = Statsd()
    statsd.start()
    rows = []
    for n in sizes:
        runs = {"muster": [], "serf": []}
        for _ in range(repeat):
            # Alternate systems within each repetition so both see the same machine load.
            for make in (lambda tmp: Muster(n, tmp), lambda tmp: Serf(n, tmp, statsd)):
                with tempfile.TemporaryDirectory(prefix="gossip-bench-") as tmp:
                    system = make(tmp)
                    try:
                        r = bench(system)
                    finally:
                        system.stop()
                    runs[system.name].append(r)
                    print(f"N={n:<3} {system.name:<7} join {fmt(r['join'], 's'):>9}  spread {fmt(r['spread'], 's'):>9}  "
                          f"detect {fmt(r['detect'], 's'):>9} ({' '.join(fmt(d, 's') for d in r['detects'])})  gossip {fmt(r['bytes'], 'B/s'):>10}/node  rss {fmt(r['rss'], 'MiB'):>9}",
                          flush=True)
                time.sleep(2)
        for name in ("muster", "serf"):
            row = {k: median([r[k] for r in runs[name]]) for k in runs[name][0] if k != "detects"}
            row["detect"] = median([d for r in runs[name] for d in r["detects"]])
            rows.append((n, name, row))
    print()
    print(f"median of {repeat} run(s) per row; kill -9 detected: median of {KILLS} kill(s) per run")
    print("| N | system | full membership | change to farthest | kill -9 detected | gossip bytes/node/s | RSS/agent |")
    print("|---|---|---|---|---|---|---|")
    for n, name, r in rows:
        print(f"| {n} | {name} | {fmt(r['join'], 's')} | {fmt(r['spread'], 's')} | {fmt(r['detect'], 's')} | {fmt(r['bytes'], 'B/s')} | {fmt(r['rss'], 'MiB')} |")


main()
PY
