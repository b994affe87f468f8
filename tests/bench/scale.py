"""Fleet-scale benchmark driver (see tests/bench/scale.sh for what it measures and the knobs).

One process drives everything with threads and plain HTTP (stdlib only), so the figures
come from the agents' own counters and answers, not from anything this driver estimates:
bytes from `muster.gossip.bytes_sent`, instance counts from
`muster.catalog.service_instances`, a change seen when an agent's blocking query on that
service answers with the new tag, CPU and RSS from /proc.
"""

import ctypes
import http.client
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

MUSTER = os.environ["MUSTER_BIN"]
K = int(os.environ.get("K", "100"))
S_LIST = [int(s) for s in os.environ.get("S_LIST", "0 10 100").split()]
REPEAT = int(os.environ.get("REPEAT", "1"))
IDLE = float(os.environ.get("IDLE", "30"))
CHURN = float(os.environ.get("CHURN", "30"))
CHURN_RATE = float(os.environ.get("CHURN_RATE", "20"))
SPREADS = int(os.environ.get("SPREADS", "20"))
SETTLE = float(os.environ.get("SETTLE", "10"))
TIMEOUT = float(os.environ.get("TIMEOUT", "180"))
NET = os.environ.get("NET", "127.0.20")
HTTP_PORT, DNS_PORT, GOSSIP_PORT = 8500, 8600, 8301
CLK_TCK = os.sysconf("SC_CLK_TCK")


def now():
    return time.monotonic()


def log(msg):
    print(msg, flush=True)


# ----- HTTP -----


def request(ip, method, path, body=None, timeout=10.0, conn=None):
    """One HTTP request; returns (status, headers, body bytes). Reuses `conn` if given."""
    own = conn is None
    c = conn or http.client.HTTPConnection(ip, HTTP_PORT, timeout=timeout)
    try:
        c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        r = c.getresponse()
        data = r.read()
        return r.status, r.headers, data
    finally:
        if own:
            c.close()


def metrics(ip):
    """The agent's Prometheus metrics as {series: value}."""
    status, _, data = request(ip, "GET", "/v1/agent/metrics?format=prometheus", timeout=5)
    if status != 200:
        raise RuntimeError(f"{ip}: metrics answered {status}")
    out = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def instances(ip):
    return int(metrics(ip)["muster_catalog_service_instances"])


def alive(ip):
    return int(metrics(ip)['muster_members{state="alive"}'])


def service_body(name, sid, port, tag):
    return (
        f'{{"Name":"{name}","ID":"{sid}","Port":{port},"Tags":["{tag}"],'
        f'"Meta":{{"team":"bench","tier":"web"}}}}'
    ).encode()


# ----- /proc -----


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ----- addresses and agents -----


def port_free(ip, port, kind):
    s = socket.socket(socket.AF_INET, kind)
    if kind == socket.SOCK_STREAM:
        # As the agent binds its listeners: a previous run's TIME_WAIT does not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_ips(n):
    """n loopback addresses under NET whose agent ports are free (others are skipped)."""
    a, b, c = (int(x) for x in NET.split("."))
    out = []
    for i in range(n * 2 + 50):
        ip = f"{a}.{b}.{c + i // 250}.{i % 250 + 1}"
        if all(
            port_free(ip, p, k)
            for p, k in (
                (HTTP_PORT, socket.SOCK_STREAM),
                (DNS_PORT, socket.SOCK_STREAM),
                (DNS_PORT, socket.SOCK_DGRAM),
                (GOSSIP_PORT, socket.SOCK_STREAM),
                (GOSSIP_PORT, socket.SOCK_DGRAM),
            )
        ):
            out.append(ip)
            if len(out) == n:
                return out
    raise SystemExit(f"fewer than {n} free loopback addresses under {NET}")


def die_with_parent():
    """In the child before exec: the kernel kills the agent if this driver dies, even by
    SIGKILL, so no agent outlives a run."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Agents:
    def __init__(self, ips, tmp):
        self.ips, self.tmp = ips, tmp
        self.procs = {}

    def start(self, ip, join):
        logf = open(os.path.join(self.tmp, f"{ip}.log"), "w")
        args = [MUSTER, "agent", "--dev", "--node", "n-" + ip.replace(".", "-"), "--bind", ip, "--advertise", ip,
                "--client", ip, "--log-level", "warn"]
        if join:
            args += ["--join", f"{join}:{GOSSIP_PORT}"]
        self.procs[ip] = subprocess.Popen(args, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                         preexec_fn=die_with_parent)
        logf.close()

    def pid(self, ip):
        return self.procs[ip].pid

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def check_running(self):
        dead = [ip for ip, p in self.procs.items() if p.poll() is not None]
        if dead:
            tail = open(os.path.join(self.tmp, f"{dead[0]}.log")).read()[-2000:]
            raise RuntimeError(f"agent(s) exited: {dead[:5]}; log of {dead[0]}:\n{tail}")


def wait_each(ips, check, timeout=TIMEOUT, interval=0.2, start=None):
    """Polls check(ip) for every ip (one thread each) until it holds; returns the time each
    first held, in seconds since `start` (None for those that timed out)."""
    start = now() if start is None else start
    seen = {}

    def run(ip):
        while now() - start < timeout:
            try:
                if check(ip):
                    seen[ip] = now() - start
                    return
            except Exception:
                pass
            time.sleep(interval)

    threads = [threading.Thread(target=run, args=(ip,), daemon=True) for ip in ips]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [seen.get(ip) for ip in ips]


def worst(times):
    return None if any(t is None for t in times) else max(times)


# ----- phases -----


def register_all(ips, s):
    """Registers svc-0..svc-(s-1) on every agent, concurrently across agents (one
    keep-alive connection per agent); returns the time of the last answer."""
    last = [0.0]
    lock = threading.Lock()

    def one_agent(ip):
        conn = http.client.HTTPConnection(ip, HTTP_PORT, timeout=30)
        try:
            for j in range(s):
                status, _, data = request(ip, "PUT", "/v1/agent/service/register",
                                          service_body(f"svc-{j}", f"svc-{j}", 20000 + j, "v0"), conn=conn)
                if status != 200:
                    raise RuntimeError(f"{ip}: register svc-{j}: {status} {data[:200]!r}")
            with lock:
                last[0] = max(last[0], now())
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        for f in [pool.submit(one_agent, ip) for ip in ips]:
            f.result()
    return last[0]


def counters(agents, ips):
    """(time, bytes sent, cpu ticks) per agent."""
    out = {}
    for ip in ips:
        m = metrics(ip)
        out[ip] = (now(), m["muster_gossip_bytes_sent_total"], cpu_ticks(agents.pid(ip)))
    return out


def rates(before, after):
    """Mean gossip bytes/s per node and mean CPU (% of one core) per agent, over each
    agent's own window."""
    bps, cpu = [], []
    for ip, (t0, b0, c0) in before.items():
        t1, b1, c1 = after[ip]
        bps.append((b1 - b0) / (t1 - t0))
        cpu.append((c1 - c0) / CLK_TCK / (t1 - t0) * 100)
    return statistics.mean(bps), statistics.mean(cpu), max(cpu)


def change_target(s, rng):
    """(name, id) of the service a change re-registers: an existing one when there are
    services, else a "churn" service (added once per agent, then re-registered)."""
    if s == 0:
        return "churn", "churn"
    j = rng.randrange(s)
    return f"svc-{j}", f"svc-{j}"


def churn(agents, ips, s, rng):
    """CHURN_RATE changes/s for CHURN seconds; returns (bytes/node/s, cpu mean, cpu max,
    changes sent, changes late by more than 1 s)."""
    before = counters(agents, ips)
    n = int(CHURN * CHURN_RATE)
    start = now()
    late = [0]
    errors = []

    def send(k):
        ip = rng.choice(ips)
        name, sid = change_target(s, rng)
        try:
            status, _, _ = request(ip, "PUT", "/v1/agent/service/register",
                                   service_body(name, sid, 30000, f"c{k}"))
            if status != 200:
                errors.append(status)
        except Exception as e:
            errors.append(str(e))

    with ThreadPoolExecutor(max_workers=8) as pool:
        for k in range(n):
            due = start + k / CHURN_RATE
            delay = due - now()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                late[0] += 1
            pool.submit(send, k)
    after = counters(agents, ips)
    if errors:
        raise RuntimeError(f"churn: {len(errors)} registrations failed: {errors[:3]}")
    b, c, cmax = rates(before, after)
    return b, c, cmax, n, late[0]


def spread_once(ips, s, rng, k):
    """One change on a random agent; returns the time until every other agent's blocking
    query on that service answers with the new tag (None on timeout)."""
    origin = rng.choice(ips)
    name, sid = change_target(s, rng)
    tag = f"spread-{k}-{rng.randrange(1 << 30)}".encode()
    others = [ip for ip in ips if ip != origin]
    path = f"/v1/catalog/service/{name}"
    index = {}
    for ip in others:
        _, h, _ = request(ip, "GET", path)
        index[ip] = int(h.get("X-Consul-Index", "0"))
    seen = {}
    t0 = [now()]

    def watch(ip):
        conn = http.client.HTTPConnection(ip, HTTP_PORT, timeout=20)
        idx = index[ip]
        try:
            while now() - t0[0] < 15:
                status, h, body = request(ip, "GET", f"{path}?index={idx}&wait=10s", conn=conn)
                if status == 200 and tag in body:
                    seen[ip] = now() - t0[0]
                    return
                idx = int(h.get("X-Consul-Index", idx))
        except Exception:
            pass
        finally:
            conn.close()

    threads = [threading.Thread(target=watch, args=(ip,), daemon=True) for ip in others]
    for t in threads:
        t.start()
    # Let every watcher's query reach its agent (one that arrives late still answers at
    # once: it asks against the index from before the change).
    time.sleep(0.1)
    t0[0] = now()
    status, _, data = request(origin, "PUT", "/v1/agent/service/register",
                              service_body(name, sid, 30000, tag.decode()))
    if status != 200:
        raise RuntimeError(f"spread: register on {origin}: {status} {data[:200]!r}")
    for t in threads:
        t.join()
    times = [seen.get(ip) for ip in others]
    return worst(times)


def late_joiner(agents, ip, seed):
    """Starts one more agent joining the seed; returns (time to full membership, time to
    the whole catalog), both from its start."""
    target_members = alive(seed) + 1
    target = instances(seed)
    start = now()
    agents.start(ip, seed)
    members = wait_each([ip], lambda i: alive(i) >= target_members, interval=0.02, start=start)[0]
    whole = wait_each([ip], lambda i: instances(i) >= target, interval=0.02, start=start)[0]
    return members, whole, target


def bench_one(s, rep, tmp):
    rng = random.Random(1000 * s + rep)
    log(f"S={s} run {rep + 1}/{REPEAT}, load {os.getloadavg()[0]:.2f}")
    ips = free_ips(K + 1)
    members, joiner = ips[:K], ips[K]
    seed = members[0]
    agents = Agents(ips, tmp)
    r = {}
    try:
        t_start = now()
        agents.start(seed, None)
        if wait_each([seed], lambda ip: alive(ip) >= 1, timeout=30)[0] is None:
            agents.check_running()
            raise RuntimeError("seed agent did not answer")
        for ip in members[1:]:
            agents.start(ip, seed)
        r["membership"] = worst(wait_each(members, lambda ip: alive(ip) == K, start=t_start))
        agents.check_running()
        log(f"  S={s}: {K} agents up, full membership after {fmt(r['membership'], 's')}")

        if s > 0:
            t_reg = now()
            t_last = register_all(members, s)
            r["register"] = t_last - t_reg
            log(f"  S={s}: {K * s} registrations took {r['register']:.1f} s")
            r["convergence"] = worst(wait_each(members, lambda ip: instances(ip) == K * s,
                                               start=t_last, interval=0.1))
        else:
            r["register"] = 0.0
            r["convergence"] = 0.0
        agents.check_running()
        log(f"  S={s}: convergence {fmt(r['convergence'], 's')}; settling {SETTLE:.0f} s")
        time.sleep(SETTLE)

        before = counters(agents, members)
        time.sleep(IDLE)
        after = counters(agents, members)
        r["idle_bytes"], r["idle_cpu"], r["idle_cpu_max"] = rates(before, after)
        log(f"  S={s}: idle {r['idle_bytes']:.0f} B/node/s, CPU {r['idle_cpu']:.2f}% per agent "
            f"({r['idle_cpu'] * K / 100:.2f} cores for all {K})")

        r["churn_bytes"], r["churn_cpu"], r["churn_cpu_max"], sent, late = churn(agents, members, s, rng)
        log(f"  S={s}: churn ({sent} changes, {late} sent late) {r['churn_bytes']:.0f} B/node/s, "
            f"CPU {r['churn_cpu']:.2f}% per agent ({r['churn_cpu'] * K / 100:.2f} cores for all {K})")
        time.sleep(3)

        spreads = []
        for k in range(SPREADS):
            spreads.append(spread_once(members, s, rng, k))
            time.sleep(0.3)
        done = [x for x in spreads if x is not None]
        r["spread_median"] = statistics.median(done) if done else None
        r["spread_worst"] = worst(spreads)
        r["spread_timeouts"] = len(spreads) - len(done)
        log(f"  S={s}: spread median {fmt(r['spread_median'], 'ms')}, worst {fmt(r['spread_worst'], 'ms')}"
            f" ({r['spread_timeouts']} timeouts)")

        r["joiner_members"], r["joiner_catalog"], r["joiner_target"] = late_joiner(agents, joiner, seed)
        log(f"  S={s}: late joiner: members {fmt(r['joiner_members'], 's')}, "
            f"whole catalog ({r['joiner_target']} instances) {fmt(r['joiner_catalog'], 's')}")

        agents.check_running()
        rss = [rss_kib(agents.pid(ip)) / 1024 for ip in members]
        r["rss_mean"], r["rss_max"] = statistics.mean(rss), max(rss)
        r["instances"] = instances(seed)
        log(f"  S={s}: RSS per agent mean {r['rss_mean']:.1f} MiB, max {r['rss_max']:.1f} MiB "
            f"at {r['instances']} instances")
    finally:
        agents.stop_all()
    return r


# ----- report -----


def fmt(v, unit):
    if v is None:
        return "timeout"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "ms":
        return f"{v * 1000:.0f} ms"
    if unit == "B/s":
        return f"{v:,.0f} B/s"
    if unit == "%":
        return f"{v:.2f}%"
    return f"{v:.1f} {unit}"


def median(values):
    """Median of the runs; a timeout counts as slower than any figure."""
    vs = sorted(values, key=lambda v: float("inf") if v is None else v)
    return vs[len(vs) // 2]


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def main():
    if K < 2:
        raise SystemExit("K must be at least 2")
    tmp = tempfile.mkdtemp(prefix="scale-bench-")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    started = now()
    load = os.getloadavg()
    log(f"scale bench: K={K} S={S_LIST} REPEAT={REPEAT} IDLE={IDLE:.0f}s CHURN={CHURN:.0f}s "
        f"@{CHURN_RATE:g}/s SPREADS={SPREADS}; {os.cpu_count()} CPUs, load {load[0]:.2f}")
    rows = {}
    try:
        for s in S_LIST:
            runs = []
            for rep in range(REPEAT):
                runs.append(bench_one(s, rep, tmp))
            rows[s] = {k: median([r[k] for r in runs]) for k in runs[0]}
            # The goal is about the worst spread: keep the worst of every run too.
            rows[s]["spread_worst_all"] = None if any(
                r["spread_worst"] is None for r in runs) else max(r["spread_worst"] for r in runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = now() - started

    print()
    print(f"K={K} agents, median of {REPEAT} run(s) per row; wall time {wall / 60:.1f} min; "
          f"load before {load[0]:.2f}")
    print("| S | instances | membership | convergence | idle B/node/s | churn B/node/s "
          "| spread median / worst | late joiner: catalog | CPU/agent idle / churn | RSS/agent mean / max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s, r in rows.items():
        print(f"| {s} | {r['instances']:,} | {fmt(r['membership'], 's')} | "
              f"{fmt(r['convergence'], 's') if s else 'n/a'} | {fmt(r['idle_bytes'], 'B/s')} | "
              f"{fmt(r['churn_bytes'], 'B/s')} | {fmt(r['spread_median'], 'ms')} / {fmt(r['spread_worst'], 'ms')} | "
              f"{fmt(r['joiner_catalog'], 's')} | {fmt(r['idle_cpu'], '%')} / {fmt(r['churn_cpu'], '%')} | "
              f"{r['rss_mean']:.1f} / {r['rss_max']:.1f} MiB |")
    print()
    goals = []
    if 0 in rows and 100 in rows:
        x = ratio(rows[100]["idle_bytes"], rows[0]["idle_bytes"])
        goals.append(("idle bytes S=100 <= 1.5x S=0", x is not None and x <= 1.5, f"x{x:.2f}" if x else "n/a"))
    if 10 in rows and 100 in rows:
        x = ratio(rows[100]["churn_bytes"], rows[10]["churn_bytes"])
        goals.append(("churn bytes S=100 <= 2x S=10", x is not None and x <= 2.0, f"x{x:.2f}" if x else "n/a"))
    for s, r in rows.items():
        w = r["spread_worst_all"]
        goals.append((f"worst spread < 1 s at S={s}", w is not None and w < 1.0,
                      f"worst of {SPREADS * REPEAT} changes: {fmt(w, 'ms')}"))
    for s, r in rows.items():
        if r["instances"] >= 10_000:
            goals.append((f"RSS < 30 MiB per agent at {r['instances']:,} instances",
                          r["rss_max"] < 30, f"largest agent {r['rss_max']:.1f} MiB (median of runs)"))
    for name, ok, value in goals:
        print(f"goal: {name}: {'met' if ok else 'NOT met'} ({value})")


if __name__ == "__main__":
    main()
