//! Health across a cluster: checks run where the service lives, their status reaches every
//! agent through gossip, and DNS, `?passing` and blocking queries everywhere follow it.
//! Three real agents on 127.0.0.x joined by `--join`.

use hickory_proto::op::ResponseCode;
use muster_tests::{dns_a, wait_for, Agent, AgentSpec};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(20);

fn cluster(tag: &str) -> Vec<Agent> {
    let a = Agent::start(AgentSpec::dev(&format!("{tag}-a"), "127.0.0.11"));
    let join = a.spec.gossip_addr();
    let b =
        Agent::start(AgentSpec::dev(&format!("{tag}-b"), "127.0.0.12").args(&["--join", &join]));
    let c =
        Agent::start(AgentSpec::dev(&format!("{tag}-c"), "127.0.0.13").args(&["--join", &join]));
    let agents = vec![a, b, c];
    for x in &agents {
        assert!(
            wait_for(SETTLE, || {
                let m = x.get_json("/v1/agent/members");
                m.as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| m["Status"] == 1)
                    .count()
                    == 3
            }),
            "cluster did not form; log of {}:\n{}",
            x.spec.name,
            x.logs()
        );
    }
    agents
}

fn passing_count(a: &Agent, name: &str) -> usize {
    a.get_json(&format!("/v1/health/service/{name}?passing"))
        .as_array()
        .unwrap()
        .len()
}

fn dns_addrs(a: &Agent, name: &str) -> (ResponseCode, usize) {
    let (rcode, addrs) = dns_a(a.dns(), &format!("{name}.service.local."));
    (rcode, addrs.len())
}

#[test]
fn ttl_check_gates_dns_and_passing_on_every_agent() {
    let agents = cluster("ttl");
    let (a, b, c) = (&agents[0], &agents[1], &agents[2]);
    let body = json!({"Name": "api", "ID": "api-1", "Port": 9000, "Check": {"TTL": "60s", "CheckID": "api-ttl"}});
    assert_eq!(
        b.put("/v1/agent/service/register", &body.to_string())
            .status,
        200
    );
    // Registered everywhere, but critical: not in ?passing, NXDOMAIN in DNS.
    for x in [a, c] {
        assert!(wait_for(SETTLE, || x
            .get_json("/v1/catalog/service/api")
            .as_array()
            .unwrap()
            .len()
            == 1));
        assert_eq!(passing_count(x, "api"), 0);
        assert_eq!(dns_addrs(x, "api"), (ResponseCode::NXDomain, 0));
    }
    assert_eq!(b.put("/v1/agent/check/pass/api-ttl", "").status, 200);
    for x in [a, b, c] {
        assert!(
            wait_for(SETTLE, || passing_count(x, "api") == 1),
            "pass did not reach {}",
            x.spec.name
        );
        assert!(wait_for(SETTLE, || dns_addrs(x, "api") == (ResponseCode::NoError, 1)));
    }
    // Warning stays in DNS (only_passing is off) but leaves ?passing.
    assert_eq!(b.put("/v1/agent/check/warn/api-ttl", "").status, 200);
    assert!(wait_for(SETTLE, || passing_count(a, "api") == 0));
    assert_eq!(dns_addrs(a, "api"), (ResponseCode::NoError, 1));
    assert_eq!(b.put("/v1/agent/check/fail/api-ttl", "").status, 200);
    assert!(wait_for(SETTLE, || dns_addrs(c, "api")
        == (ResponseCode::NXDomain, 0)));
}

/// A tiny HTTP server that answers 200 while `up` is set, on a fixed port.
fn health_server(up: Arc<AtomicBool>) -> (u16, std::thread::JoinHandle<()>, Arc<AtomicBool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let h = std::thread::spawn(move || {
        while !d.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf);
                    let status = if up.load(Ordering::SeqCst) {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        )
                        .as_bytes(),
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    (port, h, done)
}

#[test]
fn http_check_follows_a_real_server_across_the_cluster() {
    let agents = cluster("http");
    let (a, c) = (&agents[0], &agents[2]);
    let up = Arc::new(AtomicBool::new(true));
    let (port, server, done) = health_server(up.clone());
    let body = json!({"Name": "site", "Port": port, "Check": {"HTTP": format!("http://127.0.0.1:{port}/health"), "Interval": "1s"}});
    assert_eq!(
        c.put("/v1/agent/service/register", &body.to_string())
            .status,
        200
    );
    assert!(
        wait_for(SETTLE, || passing_count(a, "site") == 1),
        "never passing on a"
    );
    assert!(wait_for(SETTLE, || dns_addrs(a, "site").1 == 1));
    up.store(false, Ordering::SeqCst);
    assert!(
        wait_for(SETTLE, || passing_count(a, "site") == 0),
        "never critical on a"
    );
    assert!(wait_for(SETTLE, || dns_addrs(a, "site").0 == ResponseCode::NXDomain));
    let h = a.get_json("/v1/health/checks/site");
    assert_eq!(h[0]["Status"], "critical");
    assert!(h[0]["Output"].as_str().unwrap().contains("503"), "{h}");
    up.store(true, Ordering::SeqCst);
    assert!(
        wait_for(SETTLE, || passing_count(a, "site") == 1),
        "never passing again on a"
    );
    done.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

#[test]
fn blocking_query_on_one_agent_wakes_on_a_change_made_on_another() {
    let agents = cluster("block");
    let (a, b) = (&agents[0], &agents[1]);
    let body = json!({"Name": "queue", "ID": "queue-1", "Port": 5672});
    assert_eq!(
        b.put("/v1/agent/service/register", &body.to_string())
            .status,
        200
    );
    assert!(wait_for(SETTLE, || a
        .get_json("/v1/health/service/queue")
        .as_array()
        .unwrap()
        .len()
        == 1));
    let idx = a.get("/v1/health/service/queue").index();

    // Nothing changes: the query holds for its wait time and returns the same index.
    let t = Instant::now();
    let r = a.get(&format!("/v1/health/service/queue?index={idx}&wait=1s"));
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.index(), idx);

    // A change on b wakes a's watcher (long before its 60 s wait runs out).
    let http = a.http();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let r = muster_tests::request(
            http,
            "GET",
            &format!("/v1/health/service/queue?index={idx}&wait=60s"),
            None,
            &[],
        );
        (t.elapsed(), r)
    });
    std::thread::sleep(Duration::from_millis(300));
    let changed = Instant::now();
    let body = json!({"Name": "queue", "ID": "queue-2", "Port": 5673});
    assert_eq!(
        b.put("/v1/agent/service/register", &body.to_string())
            .status,
        200
    );
    let (_, r) = waiter.join().unwrap();
    let woke_after = changed.elapsed();
    assert!(r.index() > idx);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    assert!(
        woke_after < Duration::from_secs(55),
        "woke only at the deadline"
    );
    eprintln!("blocking query on a woke {woke_after:?} after the change on b");
}

#[test]
fn deregister_critical_after_removes_a_dead_service_everywhere() {
    let agents = cluster("reap");
    let (a, b) = (&agents[0], &agents[1]);
    // Nothing listens on this port: the TCP check is critical from the start.
    let dead = muster_tests::free_port("127.0.0.1");
    let body = json!({"Name": "ghost", "Port": dead, "Check": {"TCP": format!("127.0.0.1:{dead}"), "Interval": "1s", "DeregisterCriticalServiceAfter": "2s"}});
    assert_eq!(
        b.put("/v1/agent/service/register", &body.to_string())
            .status,
        200
    );
    let alive = json!({"Name": "ghost", "ID": "ghost-ok", "Port": 1});
    assert_eq!(
        b.put("/v1/agent/service/register", &alive.to_string())
            .status,
        200
    );
    assert!(wait_for(SETTLE, || a
        .get_json("/v1/catalog/service/ghost")
        .as_array()
        .unwrap()
        .len()
        == 2));
    assert!(
        wait_for(SETTLE, || a
            .get_json("/v1/catalog/service/ghost")
            .as_array()
            .unwrap()
            .len()
            == 1),
        "dead instance never reaped"
    );
    assert_eq!(
        a.get_json("/v1/catalog/service/ghost")[0]["ServiceID"],
        "ghost-ok"
    );
}
