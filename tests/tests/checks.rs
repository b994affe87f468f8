//! End-to-end tests of health checks run by the real `muster` binary: TTL checks refreshed
//! over the API, HTTP(S) and TCP checks against real local servers that stop and come back,
//! `deregister_critical_after`, checks added and removed through `/v1/agent/check/*`, and
//! maintenance mode — observed through `?passing` and `/v1/agent/health/service/name/:name`.
//!
//! Script checks need `enable_script_checks = true`, set here through a config file.

use muster_tests::{free_port, wait_for, Agent, AgentSpec, TempDir};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Generous: checks run every second on a machine shared with other builds.
const WAIT: Duration = Duration::from_secs(30);

fn register(a: &Agent, body: Value) {
    let r = a.put("/v1/agent/service/register", &body.to_string());
    assert_eq!(r.status, 200, "register {body}: {}", r.text());
}

/// How many instances of `name` `?passing` returns.
fn passing(a: &Agent, name: &str) -> usize {
    a.get_json(&format!("/v1/health/service/{name}?passing"))
        .as_array()
        .map_or(0, Vec::len)
}

/// The local agent's view of one check (`/v1/agent/checks`).
fn check(a: &Agent, id: &str) -> Value {
    a.get_json("/v1/agent/checks")[id].clone()
}

fn check_status(a: &Agent, id: &str) -> String {
    check(a, id)["Status"].as_str().unwrap_or("").to_string()
}

/// Status code of `/v1/agent/health/service/name/:name` (200 / 429 / 503).
fn agent_health(a: &Agent, name: &str) -> u16 {
    a.get(&format!("/v1/agent/health/service/name/{name}"))
        .status
}

fn wait_status(a: &Agent, id: &str, want: &str) {
    let ok = wait_for(WAIT, || check_status(a, id) == want);
    assert!(
        ok,
        "check {id} never became {want}: {}\nlog:\n{}",
        check(a, id),
        a.logs()
    );
}

/// A tiny HTTP/1.1 server on a std listener: redirects `/moved` to `/health`, answers every
/// other request with `code` and a fixed body, and remembers the last head of a request for
/// `/health?…`. Stops (closing its port) on `stop`.
struct TinyHttp {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TinyHttp {
    fn start(addr: &str, code: Arc<AtomicU16>, last_head: Arc<Mutex<String>>) -> TinyHttp {
        let listener = TcpListener::bind(addr).expect("bind test HTTP server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => serve_one(s, &code, &last_head),
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        });
        TinyHttp {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops serving; the port is closed when this returns.
    fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request of [`TinyHttp`].
fn serve_one(mut s: std::net::TcpStream, code: &AtomicU16, last_head: &Mutex<String>) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if head.starts_with("GET /moved ") {
        let _ = s.write_all(
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: /health\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    if head.starts_with("GET /health?") {
        *last_head.lock().unwrap() = head;
    }
    let code = code.load(Ordering::SeqCst);
    let body = "hello from the test server";
    let _ = write!(
        s,
        "HTTP/1.1 {code} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl Drop for TinyHttp {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[test]
fn ttl_check_gates_passing_until_refreshed_and_expires() {
    let a = Agent::start(AgentSpec::dev("ttl-node", "127.0.0.1"));
    register(
        &a,
        json!({"Name": "pay", "ID": "pay-1", "Port": 9000, "Check": {"TTL": "3s"}}),
    );
    // New checks start critical: the instance exists but is not passing.
    assert_eq!(check_status(&a, "service:pay-1"), "critical");
    assert_eq!(
        a.get_json("/v1/health/service/pay")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(passing(&a, "pay"), 0);
    assert_eq!(agent_health(&a, "pay"), 503);

    assert_eq!(
        a.put("/v1/agent/check/pass/service:pay-1?note=all%20good", "")
            .status,
        200
    );
    assert_eq!(passing(&a, "pay"), 1, "present right after the pass");
    assert_eq!(agent_health(&a, "pay"), 200);
    assert_eq!(check(&a, "service:pay-1")["Output"], "all good");

    // Nobody refreshes it: the TTL runs out.
    assert!(
        wait_for(WAIT, || passing(&a, "pay") == 0),
        "TTL never expired"
    );
    let c = check(&a, "service:pay-1");
    assert_eq!(c["Status"], "critical");
    assert_eq!(
        c["Output"],
        "TTL expired (last output before timeout follows): all good"
    );
    assert_eq!(c["Type"], "ttl");

    // warn and update set the status the same way (`?passing` means passing only).
    assert_eq!(a.put("/v1/agent/check/warn/service:pay-1", "").status, 200);
    assert_eq!(agent_health(&a, "pay"), 429);
    assert_eq!(passing(&a, "pay"), 0);
    let upd = json!({"Status": "passing", "Output": "back"}).to_string();
    assert_eq!(
        a.put("/v1/agent/check/update/service:pay-1", &upd).status,
        200
    );
    assert_eq!(passing(&a, "pay"), 1);
    assert_eq!(check(&a, "service:pay-1")["Output"], "back");
}

#[test]
fn http_check_follows_a_real_server() {
    let a = Agent::start(AgentSpec::dev("http-node", "127.0.0.1"));
    let code = Arc::new(AtomicU16::new(200));
    let head = Arc::new(Mutex::new(String::new()));
    let server = TinyHttp::start("127.0.0.1:0", code.clone(), head.clone());
    let addr = server.addr;
    let url = format!("http://{addr}/health?deep=1");
    register(
        &a,
        json!({
            "Name": "api", "ID": "api-1", "Port": addr.port(),
            "Check": {"HTTP": url, "Interval": "1s", "Timeout": "2s",
                      "Header": {"X-Probe": ["muster"]}}
        }),
    );
    wait_status(&a, "service:api-1", "passing");
    assert_eq!(passing(&a, "api"), 1);
    assert_eq!(agent_health(&a, "api"), 200);
    assert_eq!(
        check(&a, "service:api-1")["Output"],
        format!("HTTP GET {url}: 200 OK Output: hello from the test server")
    );
    let seen = head.lock().unwrap().clone();
    assert!(
        seen.starts_with("GET /health?deep=1 HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(
        seen.to_ascii_lowercase().contains("x-probe: muster\r\n"),
        "{seen}"
    );

    // Redirects are followed (as Consul's Go client does); the output names the URL checked.
    let moved = format!("http://{addr}/moved");
    register(
        &a,
        json!({"Name": "api", "ID": "api-2", "Port": addr.port(),
               "Check": {"HTTP": moved, "Interval": "1s", "Timeout": "2s"}}),
    );
    wait_status(&a, "service:api-2", "passing");
    assert_eq!(
        check(&a, "service:api-2")["Output"],
        format!("HTTP GET {moved}: 200 OK Output: hello from the test server")
    );
    assert_eq!(a.put("/v1/agent/service/deregister/api-2", "").status, 200);

    // 429 is a warning, other non-2xx critical.
    code.store(429, Ordering::SeqCst);
    wait_status(&a, "service:api-1", "warning");
    assert_eq!(agent_health(&a, "api"), 429);
    assert_eq!(passing(&a, "api"), 0);
    code.store(500, Ordering::SeqCst);
    wait_status(&a, "service:api-1", "critical");
    assert_eq!(agent_health(&a, "api"), 503);
    code.store(204, Ordering::SeqCst);
    wait_status(&a, "service:api-1", "passing");

    // The server goes away: critical; it comes back on the same port: passing.
    server.stop();
    wait_status(&a, "service:api-1", "critical");
    assert_eq!(passing(&a, "api"), 0);
    assert_eq!(agent_health(&a, "api"), 503);
    let out = check(&a, "service:api-1")["Output"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(out.starts_with(&format!("HTTP GET {url}: ")), "{out}");
    let _server = TinyHttp::start(&addr.to_string(), code.clone(), head.clone());
    wait_status(&a, "service:api-1", "passing");
    assert_eq!(passing(&a, "api"), 1);
}

#[test]
fn tcp_check_follows_a_listener() {
    let a = Agent::start(AgentSpec::dev("tcp-node", "127.0.0.1"));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    register(
        &a,
        json!({"Name": "db", "Port": addr.port(),
               "Check": {"TCP": addr.to_string(), "Interval": "1s", "Timeout": "2s"}}),
    );
    wait_status(&a, "service:db", "passing");
    assert_eq!(
        check(&a, "service:db")["Output"],
        format!("TCP connect {addr}: Success")
    );
    assert_eq!(passing(&a, "db"), 1);
    drop(listener);
    wait_status(&a, "service:db", "critical");
    assert_eq!(passing(&a, "db"), 0);
    let _listener = TcpListener::bind(addr).unwrap();
    wait_status(&a, "service:db", "passing");
    assert_eq!(passing(&a, "db"), 1);
}

#[test]
fn deregister_critical_after_removes_a_dead_service() {
    let a = Agent::start(AgentSpec::dev("reap-node", "127.0.0.1"));
    let dead = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    register(
        &a,
        json!({"Name": "ghost", "Port": 1,
               "Check": {"TCP": dead, "Interval": "1s", "Timeout": "1s",
                         "DeregisterCriticalServiceAfter": "2s"}}),
    );
    // Same dead target, no deregister_critical_after: stays, critical.
    register(
        &a,
        json!({"Name": "stubborn", "Port": 2,
               "Check": {"TCP": dead, "Interval": "1s", "Timeout": "1s"}}),
    );
    assert!(a.get_json("/v1/agent/services").get("ghost").is_some());
    let gone = wait_for(WAIT, || {
        a.get_json("/v1/agent/services").get("ghost").is_none()
    });
    assert!(gone, "ghost was never reaped; log:\n{}", a.logs());
    assert_eq!(a.get_json("/v1/catalog/service/ghost"), json!([]));
    assert!(a
        .get_json("/v1/agent/checks")
        .get("service:ghost")
        .is_none());
    wait_status(&a, "service:stubborn", "critical");
    assert!(a.get_json("/v1/agent/services").get("stubborn").is_some());
}

#[test]
fn checks_added_and_removed_through_the_check_endpoints() {
    let a = Agent::start(AgentSpec::dev("chk-node", "127.0.0.1"));
    register(&a, json!({"Name": "cache", "Port": 6379}));
    assert_eq!(passing(&a, "cache"), 1, "no checks: passing");

    // A TTL check attached to the service: starts critical.
    let ttl = json!({"Name": "cache-alive", "ServiceID": "cache", "TTL": "60s"});
    let r = a.put("/v1/agent/check/register", &ttl.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let c = check(&a, "cache-alive");
    assert_eq!(
        (c["Status"].as_str(), c["Type"].as_str()),
        (Some("critical"), Some("ttl"))
    );
    assert_eq!(c["ServiceID"], "cache");
    assert_eq!(passing(&a, "cache"), 0);
    assert_eq!(a.put("/v1/agent/check/pass/cache-alive", "").status, 200);
    assert_eq!(passing(&a, "cache"), 1);

    // A node-level TCP check, run by the agent, guards every service of the node.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let tcp = json!({"Name": "node-port", "TCP": addr.to_string(), "Interval": "1s"});
    assert_eq!(
        a.put("/v1/agent/check/register", &tcp.to_string()).status,
        200
    );
    wait_status(&a, "node-port", "passing");
    assert_eq!(passing(&a, "cache"), 1);
    drop(listener);
    wait_status(&a, "node-port", "critical");
    assert_eq!(passing(&a, "cache"), 0);
    assert_eq!(
        a.put("/v1/agent/check/deregister/node-port", "").status,
        200
    );
    assert!(a.get_json("/v1/agent/checks").get("node-port").is_none());
    assert_eq!(passing(&a, "cache"), 1);

    // Status from /update; then the TTL check goes away and the service is passing again.
    let upd = json!({"Status": "warning", "Output": "slow"}).to_string();
    assert_eq!(
        a.put("/v1/agent/check/update/cache-alive", &upd).status,
        200
    );
    assert_eq!(agent_health(&a, "cache"), 429);
    assert_eq!(
        a.put("/v1/agent/check/deregister/cache-alive", "").status,
        200
    );
    assert!(a.get_json("/v1/agent/checks").get("cache-alive").is_none());
    assert_eq!(agent_health(&a, "cache"), 200);
    assert_eq!(
        a.put("/v1/agent/check/deregister/cache-alive", "").status,
        404
    );
}

#[test]
fn maintenance_hides_an_instance_until_disabled() {
    let a = Agent::start(AgentSpec::dev("mnt-node", "127.0.0.1"));
    register(&a, json!({"Name": "web", "ID": "web-1", "Port": 80}));
    register(&a, json!({"Name": "web", "ID": "web-2", "Port": 81}));
    assert_eq!(passing(&a, "web"), 2);
    let r = a.put(
        "/v1/agent/service/maintenance/web-1?enable=true&reason=deploy",
        "",
    );
    assert_eq!(r.status, 200);
    assert_eq!(passing(&a, "web"), 1);
    let left = a.get_json("/v1/health/service/web?passing");
    assert_eq!(left[0]["Service"]["ID"], "web-2");
    let m = check(&a, "_service_maintenance:web-1");
    assert_eq!(
        (m["Status"].as_str(), m["Notes"].as_str()),
        (Some("critical"), Some("deploy"))
    );
    assert_eq!(agent_health(&a, "web"), 503, "worst instance decides");
    assert_eq!(
        a.put("/v1/agent/service/maintenance/web-1?enable=false", "")
            .status,
        200
    );
    assert_eq!(passing(&a, "web"), 2);
    assert!(a
        .get_json("/v1/agent/checks")
        .get("_service_maintenance:web-1")
        .is_none());
    assert_eq!(agent_health(&a, "web"), 200);
}

/// `openssl s_server -www` with a throwaway self-signed certificate; killed on drop.
struct TlsServer {
    child: Child,
    _dir: TempDir,
}

impl TlsServer {
    fn start(addr: &str) -> TlsServer {
        let dir = TempDir::new("tls");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=muster-test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl (apt: openssl) is needed for the HTTPS check test");
        assert!(st.success(), "openssl req failed");
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", addr])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let server = TlsServer { child, _dir: dir };
        let sa: SocketAddr = addr.parse().unwrap();
        assert!(
            wait_for(WAIT, || std::net::TcpStream::connect(sa).is_ok()),
            "openssl s_server never listened on {addr}"
        );
        server
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_check_verifies_unless_told_to_skip() {
    let a = Agent::start(AgentSpec::dev("tls-node", "127.0.0.1"));
    let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let _server = TlsServer::start(&addr);
    let url = format!("https://{addr}/");
    register(
        &a,
        json!({"Name": "secure", "ID": "secure-skip", "Port": 1,
               "Check": {"HTTP": url, "Interval": "1s", "Timeout": "5s", "TLSSkipVerify": true}}),
    );
    register(
        &a,
        json!({"Name": "secure", "ID": "secure-verify", "Port": 2,
               "Check": {"HTTP": url, "Interval": "1s", "Timeout": "5s"}}),
    );
    wait_status(&a, "service:secure-skip", "passing");
    let out = check(&a, "service:secure-skip")["Output"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(out.starts_with(&format!("HTTP GET {url}: 200 ")), "{out}");
    // The self-signed certificate is not trusted: the verifying check fails the handshake
    // (it has been critical since registration; wait until it has actually run).
    assert!(
        wait_for(WAIT, || {
            let c = check(&a, "service:secure-verify");
            c["Status"] == "critical"
                && c["Output"]
                    .as_str()
                    .is_some_and(|o| o.contains("certificate"))
        }),
        "verifying check: {}",
        check(&a, "service:secure-verify")
    );
    assert_eq!(passing(&a, "secure"), 1);
}

#[test]
fn script_checks_run_when_enabled_by_config() {
    let dir = TempDir::new("script");
    let code_file = dir.path().join("exit-code");
    std::fs::write(&code_file, "0").unwrap();
    let conf = dir.path().join("agent.toml");
    // The script prints a line on stdout and one on stderr, then exits with the file's code.
    let script = format!(
        "c=$(cat {}); echo \"exit $c\"; echo to-stderr >&2; exit $c",
        code_file.display()
    );
    std::fs::write(
        &conf,
        format!(
            r#"enable_script_checks = true

[[service]]
name = "batch"
port = 7000
check = {{ args = ["sh", "-c", {script:?}], interval = "1s", timeout = "10s" }}
"#
        ),
    )
    .unwrap();
    let a = Agent::start(
        AgentSpec::dev("script-node", "127.0.0.1").args(&["--config", conf.to_str().unwrap()]),
    );
    wait_status(&a, "service:batch", "passing");
    let out = check(&a, "service:batch")["Output"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        out.contains("exit 0\n") && out.contains("to-stderr\n"),
        "{out:?}"
    );
    assert_eq!(check(&a, "service:batch")["Type"], "script");
    assert_eq!(passing(&a, "batch"), 1);

    std::fs::write(&code_file, "1").unwrap();
    wait_status(&a, "service:batch", "warning");
    assert_eq!(agent_health(&a, "batch"), 429);
    std::fs::write(&code_file, "2").unwrap();
    wait_status(&a, "service:batch", "critical");
    assert_eq!(agent_health(&a, "batch"), 503);
    std::fs::write(&code_file, "0").unwrap();
    wait_status(&a, "service:batch", "passing");

    // Registered over HTTP too (this agent allows scripts); killed when it overruns.
    let slow = json!({"Name": "slow", "Port": 7001,
                      "Check": {"Args": ["sleep", "30"], "Interval": "1s", "Timeout": "500ms",
                                "Status": "passing"}});
    register(&a, slow);
    assert!(
        wait_for(WAIT, || {
            check(&a, "service:slow")["Output"] == "Timed out (500ms) running check"
        }),
        "{}",
        check(&a, "service:slow")
    );
    assert_eq!(check_status(&a, "service:slow"), "critical");
}

#[test]
fn script_checks_are_refused_by_default() {
    let a = Agent::start(AgentSpec::dev("noscript-node", "127.0.0.1"));
    let body = json!({"Name": "x", "Check": {"Args": ["true"], "Interval": "1s"}});
    let r = a.put("/v1/agent/service/register", &body.to_string());
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("enable_script_checks"), "{}", r.text());
    let chk = json!({"Name": "y", "Args": ["true"], "Interval": "1s"});
    assert_eq!(
        a.put("/v1/agent/check/register", &chk.to_string()).status,
        400
    );
    assert!(a.get_json("/v1/agent/services").get("x").is_none());
}

#[test]
fn ttl_state_survives_a_restart_and_its_timer_starts_again() {
    let data = TempDir::new("ttl-data");
    let spec = AgentSpec::dev("ttl-restart", "127.0.0.1").data_dir(data.path());
    let mut a = Agent::start(spec.clone());
    register(
        &a,
        json!({"Name": "hb", "Port": 1, "Check": {"TTL": "20s"}}),
    );
    assert_eq!(
        a.put("/v1/agent/check/pass/service:hb?note=beat", "")
            .status,
        200
    );
    a.kill9();

    // Restored passing: the TTL counts again from the restart, so it is still passing now…
    let b = Agent::start(spec);
    assert_eq!(check_status(&b, "service:hb"), "passing");
    assert_eq!(passing(&b, "hb"), 1);
    // …and expires when nobody refreshes it after the restart.
    assert!(
        wait_for(Duration::from_secs(60), || check_status(&b, "service:hb")
            == "critical"),
        "restored TTL check never expired: {}",
        check(&b, "service:hb")
    );
    assert_eq!(
        check(&b, "service:hb")["Output"],
        "TTL expired (last output before timeout follows): beat"
    );
}
