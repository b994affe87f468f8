//! Registrations bound to a process's life (SPEC §10): `muster exec` and process checks, on
//! two real agents on 127.0.0.x, observed through the other agent's DNS and HTTP.
//!
//! The speeds asked for (gone within a second of the process dying, compared with a TTL
//! check's wait) are measured and printed; the assertions use generous deadlines, as this
//! machine is shared.

use muster_tests::{dns_a, free_port, muster_bin, wait_for, Agent, AgentSpec, TempDir};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(20);
/// Generous bound for "at once" (the figure asked for is one second; see the printed values).
const GONE_DEADLINE: Duration = Duration::from_secs(10);

/// Two agents on `ip_a` and `ip_b`, joined.
fn pair(tag: &str, ip_a: &str, ip_b: &str) -> (Agent, Agent) {
    pair_with(AgentSpec::dev(&format!("{tag}-a"), ip_a), ip_b)
}

fn pair_with(spec_a: AgentSpec, ip_b: &str) -> (Agent, Agent) {
    let a = Agent::start(spec_a);
    let b = Agent::start(
        AgentSpec::dev(&format!("{}-peer", a.spec.name), ip_b)
            .args(&["--join", &a.spec.gossip_addr()]),
    );
    for x in [&a, &b] {
        assert!(
            wait_for(SETTLE, || x
                .get_json("/v1/agent/members")
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["Status"] == 1)
                .count()
                == 2),
            "cluster did not form; log of {}:\n{}",
            x.spec.name,
            x.logs()
        );
    }
    (a, b)
}

/// How many addresses `name` has in `agent`'s DNS (0 for NXDOMAIN).
fn dns_count(agent: &Agent, name: &str) -> usize {
    dns_a(agent.dns(), &format!("{name}.service.local."))
        .1
        .len()
}

/// Polls `agent`'s DNS every 10 ms until `name` has no address; returns how long it took.
fn time_until_gone_from_dns(agent: &Agent, name: &str, since: Instant) -> Duration {
    let gone = wait_fast(GONE_DEADLINE * 3, || dns_count(agent, name) == 0);
    assert!(gone, "{name} still in {}'s DNS", agent.spec.name);
    since.elapsed()
}

/// `wait_for` with a 10 ms step, for measuring.
fn wait_fast(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

fn kill(sig: &str, pid: u32) {
    let st = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid} failed");
}

/// A running `muster exec`, with its stderr in a file; killed on drop if still running.
struct Exec {
    child: Option<Child>,
    stderr: PathBuf,
    _dir: TempDir,
}

impl Exec {
    fn start(agent: &Agent, flags: &[&str], program: &[&str]) -> Exec {
        Exec::start_at(&agent.http().to_string(), flags, program)
    }

    /// Talking to the agent at `http_addr`, which need not be up.
    fn start_at(http_addr: &str, flags: &[&str], program: &[&str]) -> Exec {
        let dir = TempDir::new("exec");
        let stderr = dir.path().join("stderr");
        let child = Command::new(muster_bin())
            .arg("exec")
            .args(["--http-addr", http_addr])
            .args(flags)
            .arg("--")
            .args(program)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn muster exec");
        Exec {
            child: Some(child),
            stderr,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for `muster exec` to exit; its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            assert!(
                Instant::now() < deadline,
                "muster exec did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Exec {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The PID bound by the process check of local service `id` on `agent`.
fn bound_pid(agent: &Agent, id: &str) -> u32 {
    let checks = agent.get_json("/v1/agent/checks");
    let c = checks
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["ServiceID"] == id && c["Type"] == "process")
        .unwrap_or_else(|| panic!("no process check for {id}: {checks}"));
    c["Definition"]["PID"].as_u64().unwrap() as u32
}

fn local_service_ids(agent: &Agent) -> Vec<String> {
    agent
        .get_json("/v1/agent/services")
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// Writes a python script into `dir` and returns its path.
fn script(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// Sleeps `delay` seconds, then serves HTTP on 127.0.0.1:`port`.
const LATE_SERVER: &str = r#"
import http.server, sys, time
port, delay = int(sys.argv[1]), float(sys.argv[2])
time.sleep(delay)
http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler).serve_forever()
"#;

#[test]
fn exec_registers_once_the_port_opens_and_leaves_the_moment_the_program_dies() {
    let (a, b) = pair("exec-web", "127.0.0.71", "127.0.0.72");
    let dir = TempDir::new("exec-web");
    let server = script(dir.path(), "late_server.py", LATE_SERVER);
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let started = Instant::now();
    let mut exec = Exec::start(
        &a,
        &["--service", "web", "--port", &p],
        &["python3", &server, &p, "2"],
    );

    // Until the port opens, the other agent's DNS knows nothing of `web`. Each sample asks
    // DNS first and the port second: an address in DNS with the port still closed after
    // it would mean a registration before readiness.
    let mut samples_closed = 0;
    let mut port_open_at: Option<Instant> = None;
    let appeared = wait_fast(SETTLE, || {
        let in_dns = dns_count(&b, "web") > 0;
        let open = TcpStream::connect(("127.0.0.1", port)).is_ok();
        if open && port_open_at.is_none() {
            port_open_at = Some(Instant::now());
        }
        assert!(
            !in_dns || open,
            "web was in DNS while its port was closed; stderr:\n{}",
            exec.stderr()
        );
        if !open {
            samples_closed += 1;
        }
        in_dns
    });
    assert!(
        appeared,
        "web never reached the other agent's DNS; stderr:\n{}\nagent log:\n{}",
        exec.stderr(),
        a.logs()
    );
    assert!(
        samples_closed > 0,
        "the program's port was open from the first sample"
    );
    let open_at = port_open_at.expect("port seen open");
    println!(
        "exec: port open {:?} after start; in the other agent's DNS {:?} after the port opened",
        open_at - started,
        open_at.elapsed()
    );
    assert!(
        exec.stderr().contains("registered service web"),
        "{}",
        exec.stderr()
    );

    // kill -9 of the program: gone from the other agent's DNS at once.
    let id = local_service_ids(&a).pop().expect("one service");
    let pid = bound_pid(&a, &id);
    let t0 = Instant::now();
    kill("KILL", pid);
    let took = time_until_gone_from_dns(&b, "web", t0);
    println!("exec: kill -9 of the program -> gone from the other agent's DNS in {took:?} (asked: within 1 s)");
    assert!(took < GONE_DEADLINE, "took {took:?}");
    assert!(b
        .get_json("/v1/catalog/service/web")
        .as_array()
        .unwrap()
        .is_empty());
    // muster exec exits with the program's status: 128 + SIGKILL.
    assert_eq!(exec.wait(SETTLE), Some(137), "stderr:\n{}", exec.stderr());
}

#[test]
fn for_comparison_a_ttl_check_leaves_a_dead_instance_for_its_ttl() {
    let (a, b) = pair("exec-ttl", "127.0.0.73", "127.0.0.74");
    let body = json!({"Name": "hb", "Port": 1, "Check": {"CheckID": "hb-ttl", "TTL": "10s"}});
    assert_eq!(
        a.put("/v1/agent/service/register", &body.to_string())
            .status,
        200
    );
    assert_eq!(a.put("/v1/agent/check/pass/hb-ttl", "").status, 200);
    // The program's last heartbeat: from now on it is "dead".
    let t0 = Instant::now();
    assert!(wait_fast(SETTLE, || dns_count(&b, "hb") == 1));
    let gone = wait_fast(Duration::from_secs(60), || dns_count(&b, "hb") == 0);
    assert!(gone, "the TTL never expired");
    println!(
        "ttl: a 10 s TTL check left the dead instance in the other agent's DNS for {:?}",
        t0.elapsed()
    );
}

/// Notes each signal in a file; exits 42 on SIGTERM. Serves HTTP on the given port.
const SIGNAL_NOTER: &str = r#"
import http.server, os, signal, sys, threading, time
port, marker = int(sys.argv[1]), sys.argv[2]
def note(sig, _frame):
    with open(marker, "a") as f:
        f.write(signal.Signals(sig).name + "\n")
    if sig == signal.SIGTERM:
        time.sleep(0.3)
        os._exit(42)
for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
    signal.signal(s, note)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
while True:
    time.sleep(1)
"#;

#[test]
fn signals_reach_the_program_once_and_the_service_leaves_before_exec_exits() {
    let (a, b) = pair("exec-sig", "127.0.0.75", "127.0.0.76");
    let dir = TempDir::new("exec-sig");
    let noter = script(dir.path(), "noter.py", SIGNAL_NOTER);
    let marker = dir.path().join("signals");
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let url = format!("http://127.0.0.1:{port}/");
    let mut exec = Exec::start(
        &a,
        &[
            "--service",
            "sig",
            "--id",
            "sig-1",
            "--port",
            &p,
            "--tag",
            "v2",
            "--meta",
            "build=7",
            "--ready",
            &url,
            "--check-http",
            &url,
            "--interval",
            "1s",
        ],
        &["python3", &noter, &p, marker.to_str().unwrap()],
    );
    assert!(
        wait_for(SETTLE, || dns_count(&b, "sig") == 1),
        "sig never reached the other agent's DNS; stderr:\n{}",
        exec.stderr()
    );
    let svc = a.get_json("/v1/agent/service/sig-1");
    assert_eq!(svc["Tags"], json!(["v2"]));
    assert_eq!(svc["Meta"], json!({"build": "7"}));
    let types: Vec<Value> = a
        .get_json("/v1/agent/checks")
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["Type"].clone())
        .collect();
    assert!(
        types.contains(&json!("process")) && types.contains(&json!("http")),
        "{types:?}"
    );

    let noted = || std::fs::read_to_string(&marker).unwrap_or_default();
    kill("HUP", exec.pid());
    assert!(wait_for(SETTLE, || noted() == "SIGHUP\n"), "{:?}", noted());
    kill("INT", exec.pid());
    assert!(
        wait_for(SETTLE, || noted() == "SIGHUP\nSIGINT\n"),
        "{:?}",
        noted()
    );
    // Still registered: those two did not stop the program.
    assert_eq!(local_service_ids(&a), ["sig-1"]);

    let t0 = Instant::now();
    kill("TERM", exec.pid());
    let code = exec.wait(SETTLE);
    // The moment muster exec has exited, the local agent no longer has the service.
    assert!(
        local_service_ids(&a).is_empty(),
        "sig-1 still registered after muster exec exited"
    );
    println!(
        "exec: SIGTERM -> program exited, service deregistered, muster exec exited in {:?}",
        t0.elapsed()
    );
    assert_eq!(code, Some(42), "stderr:\n{}", exec.stderr());
    assert_eq!(
        noted(),
        "SIGHUP\nSIGINT\nSIGTERM\n",
        "each signal exactly once"
    );
    let took = time_until_gone_from_dns(&b, "sig", t0);
    println!("exec: SIGTERM -> gone from the other agent's DNS in {took:?}");
}

/// A child of this test that is the target of a process check.
fn sleeper() -> Child {
    Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("spawn sleep")
}

/// A PID that no process has: a child that ran and was reaped.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    c.wait().unwrap();
    let pid = c.id();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    pid
}

#[test]
fn a_registered_pid_check_removes_the_service_when_the_process_exits() {
    let (a, b) = pair("pid-direct", "127.0.0.77", "127.0.0.78");
    let mut job = sleeper();
    let body = json!({"Name": "job", "ID": "job-1", "Port": 7, "Check": {"PID": job.id()}});
    let r = a.put("/v1/agent/service/register", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let check = a.get_json("/v1/agent/checks")["service:job-1"].clone();
    assert_eq!(check["Type"], "process");
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["Definition"], json!({"PID": job.id()}));
    assert!(wait_for(SETTLE, || dns_count(&b, "job") == 1));

    // The process exits (killed; not yet reaped by us, its parent: a zombie counts as gone).
    let t0 = Instant::now();
    kill("KILL", job.id());
    let took = time_until_gone_from_dns(&b, "job", t0);
    println!("pid check: process killed -> gone from the other agent's DNS in {took:?} (asked: within 1 s)");
    assert!(took < GONE_DEADLINE, "took {took:?}");
    job.wait().unwrap();
    assert!(local_service_ids(&a).is_empty());

    // A PID no process has: 400 naming the field.
    let pid = dead_pid();
    let r = a.put(
        "/v1/agent/service/register",
        &json!({"Name": "ghost", "Check": {"PID": pid}}).to_string(),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("Check.PID") && r.text().contains(&pid.to_string()),
        "{}",
        r.text()
    );
    let r = a.put(
        "/v1/agent/service/register",
        &json!({"Name": "ghost", "Checks": [{"TTL": "5s"}, {"PID": pid}]}).to_string(),
    );
    assert!(
        r.status == 400 && r.text().contains("Checks[1].PID"),
        "{}",
        r.text()
    );
    let r = a.put(
        "/v1/agent/check/register",
        &json!({"Name": "ghost", "PID": pid}).to_string(),
    );
    assert!(r.status == 400 && r.text().contains("PID"), "{}", r.text());
    for bad in [json!(0), json!(-3), json!("12")] {
        let r = a.put(
            "/v1/agent/service/register",
            &json!({"Name": "ghost", "Check": {"PID": bad}}).to_string(),
        );
        assert!(
            r.status == 400 && r.text().contains("Check.PID"),
            "{bad}: {}",
            r.text()
        );
    }
    // A process that has exited but is not reaped yet (a zombie) is not running either.
    let zombie = Command::new("true").spawn().unwrap();
    let zpid = zombie.id();
    assert!(wait_for(SETTLE, || std::fs::read_to_string(format!(
        "/proc/{zpid}/stat"
    ))
    .is_ok_and(|s| s
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))));
    let r = a.put(
        "/v1/agent/service/register",
        &json!({"Name": "ghost", "Check": {"PID": zpid}}).to_string(),
    );
    assert!(
        r.status == 400 && r.text().contains("exited"),
        "{}",
        r.text()
    );
    reap(zombie);
    assert!(local_service_ids(&a).is_empty());

    // A node-level process check: the node turns critical when the process exits.
    let mut daemon = sleeper();
    let r = a.put(
        "/v1/agent/check/register",
        &json!({"Name": "daemon", "CheckID": "daemon", "PID": daemon.id()}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.get_json("/v1/agent/checks")["daemon"]["Status"],
        "passing"
    );
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    assert!(wait_for(SETTLE, || a.get_json("/v1/agent/checks")
        ["daemon"]["Status"]
        == "critical"));
    assert!(a.get_json("/v1/agent/checks")["daemon"]["Output"]
        .as_str()
        .unwrap()
        .contains("has exited"));
}

fn reap(mut c: Child) {
    c.wait().unwrap();
}

/// The stored record of service `id` in `data_dir`.
fn stored_file(data_dir: &Path, id: &str) -> PathBuf {
    std::fs::read_dir(data_dir.join("services"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|v| v["service"]["id"] == id)
        })
        .unwrap_or_else(|| panic!("no stored record of {id}"))
}

#[test]
fn after_a_restart_dead_and_reused_pids_are_judged_dead() {
    let data = TempDir::new("pid-restart");
    let spec = AgentSpec::dev("pid-restart-a", "127.0.0.79").data_dir(data.path());
    let (mut a, b) = pair_with(spec.clone(), "127.0.0.80");
    let mut alive = sleeper();
    let mut dies = sleeper();
    let mut reused = sleeper();
    for (name, p) in [("alive", &alive), ("dies", &dies), ("reused", &reused)] {
        let body = json!({"Name": name, "Port": 1, "Check": {"PID": p.id()}});
        let r = a.put("/v1/agent/service/register", &body.to_string());
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for name in ["alive", "dies", "reused"] {
        assert!(
            wait_for(SETTLE, || dns_count(&b, name) == 1),
            "{name} not in the peer's DNS"
        );
    }

    // Stop the agent; while it is down, one process dies, and another's record is made to
    // name a different process with the same PID (what a reused PID looks like).
    a.signal("TERM");
    a.wait_exit(SETTLE);
    dies.kill().unwrap();
    dies.wait().unwrap();
    let file = stored_file(data.path(), "reused");
    let mut rec: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let start = &mut rec["checks"][0]["kind"]["Process"]["start_time"];
    let recorded = start.as_u64().expect("a stored start time");
    *start = json!(recorded + 1);
    std::fs::write(&file, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();

    // Started again, joining its peer (which saw it leave).
    let a = Agent::start(spec.args(&["--join", &b.spec.gossip_addr()]));
    // Judged before the agent answers anything: no waiting here.
    assert_eq!(local_service_ids(&a), ["alive"]);
    for name in ["dies", "reused"] {
        assert!(a
            .get_json(&format!("/v1/catalog/service/{name}"))
            .as_array()
            .unwrap()
            .is_empty());
    }
    let files = std::fs::read_dir(data.path().join("services"))
        .unwrap()
        .count();
    assert_eq!(
        files, 1,
        "the records of the dead services are removed from data_dir"
    );
    assert!(
        a.logs().contains("the PID now belongs to another process"),
        "{}",
        a.logs()
    );
    // Once the peer has the restarted node's record (it serves `alive` again), that record
    // holds neither of the others.
    assert!(
        wait_for(SETTLE, || dns_count(&b, "alive") == 1),
        "the peer never saw the restarted node"
    );
    for name in ["dies", "reused"] {
        assert_eq!(dns_count(&b, name), 0);
        assert!(b
            .get_json(&format!("/v1/catalog/service/{name}"))
            .as_array()
            .unwrap()
            .is_empty());
    }
    assert_eq!(
        a.get_json("/v1/agent/checks")["service:alive"]["Status"],
        "passing"
    );

    // The restored, still-live check is watched again.
    alive.kill().unwrap();
    alive.wait().unwrap();
    assert!(wait_for(SETTLE, || local_service_ids(&a).is_empty()));
    reused.kill().unwrap();
    reused.wait().unwrap();
}

#[test]
fn pid_in_toml_files_for_the_agent_and_for_muster_register() {
    let conf = TempDir::new("pid-conf");
    let mut live = sleeper();
    let dead = dead_pid();
    std::fs::write(
        conf.path().join("live.toml"),
        format!(
            "[[service]]\nname = \"live\"\nport = 1\ncheck = {{ pid = {} }}\n",
            live.id()
        ),
    )
    .unwrap();
    // A stale PID in a file does not stop the agent: that service is left out, and said so.
    std::fs::write(
        conf.path().join("stale.toml"),
        format!("[[service]]\nname = \"stale\"\ncheck = {{ pid = {dead} }}\n"),
    )
    .unwrap();
    let a = Agent::start(
        AgentSpec::dev("pid-conf", "127.0.0.81")
            .args(&["--config-dir", conf.path().to_str().unwrap()]),
    );
    assert_eq!(local_service_ids(&a), ["live"]);
    assert!(
        a.logs().contains("service \"stale\" not registered"),
        "{}",
        a.logs()
    );
    let r = a.put("/v1/agent/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(local_service_ids(&a), ["live"]);

    live.kill().unwrap();
    live.wait().unwrap();
    assert!(wait_for(SETTLE, || local_service_ids(&a).is_empty()));
    // A reload does not bring back a service whose process is gone.
    assert_eq!(a.put("/v1/agent/reload", "").status, 200);
    assert!(local_service_ids(&a).is_empty());

    // `muster register FILE` with a pid: bound by the agent; a dead one refused by name.
    let mut job = sleeper();
    let file = conf.path().join("job.toml.in");
    std::fs::write(
        &file,
        format!(
            "[[service]]\nname = \"job\"\ncheck = {{ pid = {} }}\n",
            job.id()
        ),
    )
    .unwrap();
    let out = Command::new(muster_bin())
        .args(["register", "--http-addr", &a.http().to_string()])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(local_service_ids(&a), ["job"]);
    std::fs::write(
        &file,
        format!("[[service]]\nname = \"job2\"\ncheck = {{ pid = {dead} }}\n"),
    )
    .unwrap();
    let out = Command::new(muster_bin())
        .args(["register", "--http-addr", &a.http().to_string()])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Check.PID"), "{err}");
    job.kill().unwrap();
    job.wait().unwrap();
    assert!(wait_for(SETTLE, || local_service_ids(&a).is_empty()));
}

#[test]
fn exec_keeps_the_program_running_while_the_agent_is_unreachable() {
    let dir = TempDir::new("exec-unreach");
    let marker = dir.path().join("ran");
    let spec = AgentSpec::dev("exec-late", "127.0.0.82");
    // No agent yet at that address: muster exec retries, PROGRAM runs regardless.
    let script = format!("touch {}; exec sleep 600", marker.display());
    let mut exec = Exec::start_at(
        &format!("{}:{}", spec.ip, spec.http_port),
        &["--service", "late"],
        &["sh", "-c", &script],
    );
    assert!(
        wait_for(SETTLE, || exec.stderr().contains("retrying")),
        "{}",
        exec.stderr()
    );
    assert!(marker.exists(), "PROGRAM did not start");
    let a = Agent::start(spec);
    assert!(
        wait_for(Duration::from_secs(60), || local_service_ids(&a).len() == 1),
        "never registered once the agent came up; stderr:\n{}",
        exec.stderr()
    );
    let err = exec.stderr();
    assert!(
        err.contains("cannot reach agent") && err.contains("keeps running"),
        "{err}"
    );
    kill("TERM", exec.pid());
    // sleep dies of the forwarded SIGTERM: 128 + 15.
    assert_eq!(exec.wait(SETTLE), Some(143));
    assert!(local_service_ids(&a).is_empty());
}

#[test]
fn example_unit_wraps_a_program_with_muster_exec_and_passes_systemd_analyze_verify() {
    let unit_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples/web-exec.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let exec_start = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    assert!(
        exec_start.starts_with("/usr/local/bin/muster exec ") && exec_start.contains(" -- "),
        "{exec_start}"
    );
    assert!(unit.lines().any(|l| l.trim() == "KillMode=mixed"));
    // The flags in the unit are ones muster exec accepts: run it with PROGRAM replaced by
    // `true` (no agent needed: it exits before registering) and see it exit 0.
    let flags: Vec<&str> = exec_start
        .split(" -- ")
        .next()
        .unwrap()
        .split_whitespace()
        .skip(2)
        .collect();
    let st = Command::new(muster_bin())
        .arg("exec")
        .args(&flags)
        .args([
            "--ready",
            "none",
            "--http-addr",
            "127.0.0.1:1",
            "--",
            "true",
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(0), "the unit's flags are refused");

    let have_analyze = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_analyze {
        eprintln!(
            "SKIPPED systemd-analyze verify: systemd-analyze is not installed \
             (apt package `systemd`, listed in .ci/packages-ops.txt)"
        );
        return;
    }
    // verify insists that ExecStart's binary exists: point it at the binary under test.
    let dir = TempDir::new("exec-unit");
    let copy = dir.path().join("web-exec.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/muster", &muster_bin().display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
