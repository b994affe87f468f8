//! End-to-end tests of the single-host HTTP API: the real `muster` binary, real HTTP over a
//! socket. Registration, every read path, input errors with their status codes, durability
//! across `kill -9`, blocking queries.

use muster_tests::{request, wait_for, Agent, AgentSpec, TempDir};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn web(id: &str, port: u16, tags: &[&str]) -> String {
    json!({
        "ID": id, "Name": "web", "Port": port, "Tags": tags,
        "Meta": {"version": "1.2"}, "Weights": {"Passing": 10, "Warning": 1}
    })
    .to_string()
}

#[test]
fn register_and_read_back_everywhere() {
    let a = Agent::start(AgentSpec::dev("node-a", "127.0.0.1"));
    let before = a.get("/v1/catalog/services").index();
    assert_eq!(
        a.put(
            "/v1/agent/service/register",
            &web("web-1", 8080, &["v1", "primary"])
        )
        .status,
        200
    );
    assert_eq!(
        a.put("/v1/agent/service/register", &web("web-2", 8081, &["v2"]))
            .status,
        200
    );
    let db = json!({"Name": "db", "Port": 5432, "Address": "10.1.2.3"}).to_string();
    assert_eq!(a.put("/v1/agent/service/register", &db).status, 200);

    // /v1/agent/services: keyed by id, name field is "Service".
    let svcs = a.get_json("/v1/agent/services");
    assert_eq!(svcs["web-1"]["Service"], "web");
    assert_eq!(svcs["web-1"]["Port"], 8080);
    assert_eq!(svcs["web-1"]["Tags"], json!(["v1", "primary"]));
    assert_eq!(svcs["web-1"]["Meta"]["version"], "1.2");
    assert_eq!(
        svcs["web-1"]["Weights"],
        json!({"Passing": 10, "Warning": 1})
    );
    assert_eq!(svcs["db"]["ID"], "db", "ID defaults to the name");
    let one = a.get_json("/v1/agent/service/web-2");
    assert_eq!(one["ID"], "web-2");
    assert_eq!(a.get("/v1/agent/service/nope").status, 404);

    // /v1/catalog/services: names with the union of tags; index rose.
    let r = a.get("/v1/catalog/services");
    assert!(r.index() > before);
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(r.header("X-Consul-LastContact"), Some("0"));
    let cat = r.json();
    let mut tags: Vec<String> = serde_json::from_value(cat["web"].clone()).unwrap();
    tags.sort();
    assert_eq!(tags, ["primary", "v1", "v2"]);
    assert_eq!(cat["db"], json!([]));

    // /v1/catalog/service/:name with Consul's field names.
    let list = a.get_json("/v1/catalog/service/web");
    assert_eq!(list.as_array().unwrap().len(), 2);
    let e = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["ServiceID"] == "web-1")
        .unwrap();
    for field in [
        "ServiceName",
        "ServicePort",
        "ServiceTags",
        "ServiceMeta",
        "ServiceAddress",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(e.get(field).is_some(), "missing {field} in {e}");
    }
    assert_eq!(e["ServiceName"], "web");
    assert_eq!(e["Node"], "node-a");
    assert_eq!(e["Address"], "127.0.0.1");
    assert_eq!(
        e["ServiceAddress"], "",
        "empty ServiceAddress means the node address"
    );
    assert_eq!(e["Datacenter"], "dc1");
    // ?tag= filters, repeatable (all must match), case-insensitive like Consul's DNS.
    assert_eq!(
        a.get_json("/v1/catalog/service/web?tag=v1")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.get_json("/v1/catalog/service/web?tag=v1&tag=primary")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.get_json("/v1/catalog/service/web?tag=v1&tag=v2")
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(a.get_json("/v1/catalog/service/nothing"), json!([]));
    let db = a.get_json("/v1/catalog/service/db");
    assert_eq!(db[0]["ServiceAddress"], "10.1.2.3");

    // /v1/health/service/:name: Node, Service (name field "Service"), Checks incl. serfHealth.
    let h = a.get_json("/v1/health/service/web?tag=primary");
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0]["Service"]["Service"], "web");
    assert_eq!(h[0]["Service"]["ID"], "web-1");
    assert_eq!(h[0]["Node"]["Node"], "node-a");
    let checks = h[0]["Checks"].as_array().unwrap();
    assert!(checks
        .iter()
        .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "passing"));
    assert_eq!(
        a.get_json("/v1/health/service/web?passing")
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Nodes, node, datacenters, status, self, members.
    let nodes = a.get_json("/v1/catalog/nodes");
    assert_eq!(nodes[0]["Node"], "node-a");
    let node = a.get_json("/v1/catalog/node/node-a");
    assert_eq!(node["Services"]["web-1"]["Service"], "web");
    assert_eq!(a.get_json("/v1/catalog/node/ghost"), Value::Null);
    assert_eq!(a.get_json("/v1/catalog/datacenters"), json!(["dc1"]));
    assert!(a
        .get_json("/v1/status/leader")
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
    assert_eq!(a.get_json("/v1/status/peers").as_array().unwrap().len(), 1);
    let me = a.get_json("/v1/agent/self");
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["NodeName"], "node-a");
    let members = a.get_json("/v1/agent/members");
    assert_eq!(members[0]["Name"], "node-a");
    assert_eq!(members[0]["Status"], 1);
    let hn = a.get_json("/v1/health/node/node-a");
    assert_eq!(hn[0]["CheckID"], "serfHealth");
    assert!(!a
        .get_json("/v1/health/state/passing")
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(a.get("/v1/health/state/bogus").status, 400);
    // An unknown datacenter is refused, as Consul does.
    assert_eq!(a.get("/v1/catalog/services?dc=elsewhere").status, 500);

    // Deregister: gone from every view; unknown id is 404.
    assert_eq!(a.put("/v1/agent/service/deregister/web-1", "").status, 200);
    assert_eq!(a.put("/v1/agent/service/deregister/web-1", "").status, 404);
    assert_eq!(
        a.get_json("/v1/catalog/service/web")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(a.get_json("/v1/agent/services").get("web-1").is_none());
}

/// A check that sets two kinds (the issue's `TTL` with `HTTP`) is a 400 naming both, for a
/// service's check and for a check registered on its own; nothing is stored.
#[test]
fn a_check_of_two_kinds_is_refused_naming_the_conflict() {
    let a = Agent::start(AgentSpec::dev("node-kinds", "127.0.0.1"));
    let r = a.put(
        "/v1/agent/service/register",
        r#"{"Name":"web","Check":{"TTL":"30s","HTTP":"http://x","Interval":"1s"}}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.text().trim(),
        "Invalid Check: TTL and HTTP are both set, but a check has one kind: \
         give only one of TTL, HTTP, TCP or Args"
    );
    let r = a.put(
        "/v1/agent/service/register",
        r#"{"Name":"web","Checks":[{"TTL":"30s"},{"TCP":"127.0.0.1:1","Args":["/bin/true"],"Interval":"1s"}]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text()
            .starts_with("Invalid Checks[1]: TCP and Args are both set"),
        "{}",
        r.text()
    );
    let r = a.put(
        "/v1/agent/check/register",
        r#"{"Name":"disk","TTL":"30s","TCP":"127.0.0.1:1","Interval":"1s"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("TTL and TCP are both set"),
        "{}",
        r.text()
    );
    assert_eq!(a.get_json("/v1/agent/services"), json!({}));
    assert_eq!(a.get_json("/v1/agent/checks"), json!({}));
}

#[test]
fn bad_input_gets_its_status_and_agent_keeps_serving() {
    let a = Agent::start(AgentSpec::dev("node-bad", "127.0.0.1"));
    let cases: Vec<(String, &str)> = vec![
        (json!({"Port": 80}).to_string(), "Name"),
        (json!({"Name": "has_underscore"}).to_string(), "Name"),
        (json!({"Name": "x".repeat(64)}).to_string(), "Name"),
        (json!({"Name": "web", "ID": "a/b"}).to_string(), "ID"),
        (json!({"Name": "web", "ID": "i".repeat(129)}).to_string(), "ID"),
        (json!({"Name": "web", "Port": 65536}).to_string(), "Port"),
        (json!({"Name": "web", "Port": -1}).to_string(), "Port"),
        (json!({"Name": "web", "Port": "80"}).to_string(), "Port"),
        (json!({"Name": "web", "Tags": vec!["t"; 65]}).to_string(), "Tags"),
        (json!({"Name": "web", "Tags": ["t".repeat(256)]}).to_string(), "Tags"),
        (json!({"Name": "web", "Meta": {"bad key": "v"}}).to_string(), "Meta"),
        (json!({"Name": "web", "Meta": {"k": "v".repeat(513)}}).to_string(), "Meta"),
        (json!({"Name": "web", "Meta": (0..65).map(|i| (format!("k{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}).to_string(), "Meta"),
        (json!({"Name": "web", "Weights": {"Passing": 0}}).to_string(), "Weights.Passing"),
        (json!({"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/"}}).to_string(), "Check.Interval"),
        ("{not json".to_string(), "decode"),
        ("".to_string(), "body"),
    ];
    for (body, field) in &cases {
        let r = a.put("/v1/agent/service/register", body);
        assert_eq!(r.status, 400, "body {body}: {}", r.text());
        assert!(
            r.text().contains(field),
            "error for {body} should name {field}: {}",
            r.text()
        );
    }
    // Unknown ids: 404.
    assert_eq!(a.put("/v1/agent/service/deregister/ghost", "").status, 404);
    assert_eq!(a.put("/v1/agent/check/pass/ghost", "").status, 404);
    assert_eq!(
        a.put("/v1/agent/service/maintenance/ghost?enable=true", "")
            .status,
        404
    );
    // Wrong method: 405.
    assert_eq!(a.get("/v1/agent/service/register").status, 405);
    assert_eq!(a.put("/v1/catalog/services", "").status, 405);
    assert_eq!(
        request(a.http(), "DELETE", "/v1/agent/services", None, &[]).status,
        405
    );
    // Unknown path: 404.
    assert_eq!(a.get("/v1/nothing/here").status, 404);
    // Over 1 MiB: 413, refused from the declared length before the body is read.
    let big = format!(
        "{{\"Name\":\"web\",\"Meta\":{{\"k\":\"{}\"}}}}",
        "x".repeat(1 << 20)
    );
    assert_eq!(a.put("/v1/agent/service/register", &big).status, 413);
    // ... and also when the length is not declared up front (chunked upload).
    let r = chunked_put(&a, "/v1/agent/service/register", 2 << 20);
    assert_eq!(r, 413);
    // Nothing was stored by any of that, and the agent still serves.
    assert_eq!(a.get_json("/v1/agent/services"), json!({}));
    assert_eq!(
        a.put("/v1/agent/service/register", &web("ok", 1, &[]))
            .status,
        200
    );
    assert_eq!(a.get_json("/v1/agent/services")["ok"]["Port"], 1);
}

/// Sends a chunked body of `size` bytes and returns the status code.
fn chunked_put(a: &Agent, path: &str, size: usize) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(a.http()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .is_err()
            || s.write_all(&chunk).is_err()
            || s.write_all(b"\r\n").is_err()
        {
            break; // the server gave up on us, as it should
        }
        sent += chunk.len();
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn write_token_is_enforced_when_set() {
    // The token comes from a config file, so this waits for config loading: use the env of
    // the harness only through a file.
    let dir = TempDir::new("token");
    let cfg = dir.path().join("muster.toml");
    std::fs::write(&cfg, "[http]\ntoken = \"s3cret\"\n").unwrap();
    let a = Agent::start(
        AgentSpec::dev("node-tok", "127.0.0.1").args(&["--config", cfg.to_str().unwrap()]),
    );
    let body = web("w", 80, &[]);
    assert_eq!(a.put("/v1/agent/service/register", &body).status, 403);
    let r = request(
        a.http(),
        "PUT",
        "/v1/agent/service/register",
        Some(body.as_bytes()),
        &[("X-Consul-Token", "wrong")],
    );
    assert_eq!(r.status, 403);
    let r = request(
        a.http(),
        "PUT",
        "/v1/agent/service/register",
        Some(body.as_bytes()),
        &[("X-Consul-Token", "s3cret")],
    );
    assert_eq!(r.status, 200);
    let r = request(
        a.http(),
        "PUT",
        "/v1/agent/service/deregister/w",
        Some(b""),
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(r.status, 200);
    // Reads stay open.
    assert_eq!(a.get("/v1/catalog/services").status, 200);
}

#[test]
fn registrations_survive_kill_9_and_restart() {
    let dir = TempDir::new("durable");
    let spec = AgentSpec::dev("node-d", "127.0.0.1").data_dir(dir.path());
    let mut a = Agent::start(spec.clone());
    // Every acknowledged registration must survive: register many, kill -9 right after the
    // last 200 without any grace period.
    for i in 0..50 {
        let r = a.put(
            "/v1/agent/service/register",
            &web(&format!("web-{i}"), 9000 + i, &["t"]),
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.put("/v1/agent/service/deregister/web-7", "").status, 200);
    let ttl = json!({"Name": "api", "Check": {"TTL": "1h", "CheckID": "api-ttl"}}).to_string();
    assert_eq!(a.put("/v1/agent/service/register", &ttl).status, 200);
    assert_eq!(
        a.put("/v1/agent/check/pass/api-ttl?note=fine", "").status,
        200
    );
    assert_eq!(
        a.put(
            "/v1/agent/service/maintenance/web-3?enable=true&reason=upgrade",
            ""
        )
        .status,
        200
    );
    a.kill9();

    // A corrupt record must not stop start-up: it is moved aside.
    std::fs::write(
        dir.path().join("services/garbage.json"),
        b"{\"format\":1, \"serv",
    )
    .unwrap();
    let b = Agent::start(spec.clone());
    let svcs = b.get_json("/v1/agent/services");
    assert_eq!(svcs.as_object().unwrap().len(), 50, "49 web + api");
    assert!(svcs.get("web-7").is_none());
    assert_eq!(svcs["web-42"]["Port"], 9042);
    let checks = b.get_json("/v1/agent/checks");
    assert_eq!(
        checks["api-ttl"]["Status"], "passing",
        "TTL state persisted"
    );
    assert_eq!(checks["api-ttl"]["Output"], "fine");
    assert_eq!(checks["_service_maintenance:web-3"]["Status"], "critical");
    assert!(dir.path().join("quarantine/garbage.json").exists());
    assert!(
        b.logs().contains("quarantine"),
        "log should say what was moved aside:\n{}",
        b.logs()
    );
    drop(b);

    // --dev without --data-dir writes nothing: a fresh dev agent starts empty.
    let c = Agent::start(AgentSpec::dev("node-d", "127.0.0.1"));
    assert_eq!(c.get_json("/v1/agent/services"), json!({}));
}

#[test]
fn kill_9_during_a_write_storm_loses_nothing_acknowledged() {
    let dir = TempDir::new("storm");
    let spec = AgentSpec::dev("node-s", "127.0.0.1").data_dir(dir.path());
    let mut a = Agent::start(spec.clone());
    let http = a.http();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            for i in 0..10_000 {
                let id = format!("s-{i}");
                let body = web(&id, 1000, &[]);
                match muster_tests::try_request(
                    http,
                    "PUT",
                    "/v1/agent/service/register",
                    Some(body.as_bytes()),
                    &[],
                ) {
                    Ok(r) if r.status == 200 => acked.lock().unwrap().push(id),
                    _ => break,
                }
            }
        })
    };
    // Let some writes through, then kill without warning while writes are in flight.
    assert!(wait_for(Duration::from_secs(20), || acked
        .lock()
        .unwrap()
        .len()
        >= 40));
    a.kill9();
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let b = Agent::start(spec);
    let svcs = b.get_json("/v1/agent/services");
    for id in &acked {
        assert!(
            svcs.get(id).is_some(),
            "acknowledged {id} lost after kill -9"
        );
    }
}

#[test]
fn graceful_shutdown_exits_zero() {
    for sig in ["TERM", "INT"] {
        let mut a = Agent::start(AgentSpec::dev("node-g", "127.0.0.1"));
        // A blocking query in flight must be let go, not cut off mid-response.
        let http = a.http();
        let idx = a.get("/v1/catalog/services").index();
        let waiter = std::thread::spawn(move || {
            muster_tests::try_request(
                http,
                "GET",
                &format!("/v1/catalog/services?index={idx}&wait=60s"),
                None,
                &[],
            )
        });
        std::thread::sleep(Duration::from_millis(300));
        a.signal(sig);
        assert_eq!(
            a.wait_exit(Duration::from_secs(15)),
            Some(0),
            "exit code after SIG{sig}"
        );
        let r = waiter.join().unwrap().expect("in-flight request answered");
        assert_eq!(r.status, 200);
    }
}

#[test]
fn blocking_queries_wake_on_change_and_wait_otherwise() {
    let a = Agent::start(AgentSpec::dev("node-b", "127.0.0.1"));
    assert_eq!(
        a.put("/v1/agent/service/register", &web("w1", 80, &[]))
            .status,
        200
    );
    let idx = a.get("/v1/health/service/web").index();
    // Nothing changes: the query waits for ?wait= and returns the same index.
    let t = Instant::now();
    let r = a.get(&format!("/v1/health/service/web?index={idx}&wait=1s"));
    assert!(t.elapsed() >= Duration::from_millis(900), "returned early");
    assert_eq!(r.index(), idx);
    // A change to another service does not wake a watcher of this one.
    let http = a.http();
    let waiter = std::thread::spawn(move || {
        let t = Instant::now();
        let r = muster_tests::request(
            http,
            "GET",
            &format!("/v1/health/service/web?index={idx}&wait=30s"),
            None,
            &[],
        );
        (t.elapsed(), r)
    });
    std::thread::sleep(Duration::from_millis(300));
    let db = json!({"Name": "db", "Port": 5432}).to_string();
    assert_eq!(a.put("/v1/agent/service/register", &db).status, 200);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiter.is_finished(),
        "a change to db woke the watcher of web"
    );
    // A change to this service wakes it with a higher index.
    assert_eq!(
        a.put("/v1/agent/service/register", &web("w2", 81, &[]))
            .status,
        200
    );
    let (_, r) = waiter.join().unwrap();
    assert!(r.index() > idx);
    assert_eq!(r.json().as_array().unwrap().len(), 2);
    assert_eq!(
        a.get(&format!("/v1/health/service/web?index={idx}&wait=bogus"))
            .status,
        400
    );
}

#[test]
fn ids_with_plus_reserved_check_ids_and_bounded_outputs() {
    let a = Agent::start(AgentSpec::dev("node-edge", "127.0.0.1"));
    // '+' in a path is a literal plus (only the query string treats it as a space).
    assert_eq!(
        a.put("/v1/agent/service/register", &web("a+b", 80, &[]))
            .status,
        200
    );
    assert_eq!(a.get_json("/v1/agent/service/a+b")["ID"], "a+b");
    assert_eq!(a.put("/v1/agent/service/deregister/a+b", "").status, 200);
    // The agent's own check ids cannot be taken.
    for id in ["serfHealth", "_node_maintenance", "_service_maintenance:x"] {
        let body = json!({"Name": "web", "Check": {"CheckID": id, "TTL": "10s"}}).to_string();
        let r = a.put("/v1/agent/service/register", &body);
        assert_eq!(r.status, 400, "{id}: {}", r.text());
        assert!(r.text().contains("Check.CheckID"), "{}", r.text());
    }
    // A check output is clipped to 4 KiB (it travels in every gossip copy of the record).
    let body =
        json!({"Name": "web", "ID": "w", "Check": {"CheckID": "w-ttl", "TTL": "1h"}}).to_string();
    assert_eq!(a.put("/v1/agent/service/register", &body).status, 200);
    let huge = json!({"Status": "passing", "Output": "x".repeat(100_000)}).to_string();
    assert_eq!(a.put("/v1/agent/check/update/w-ttl", &huge).status, 200);
    let out = a.get_json("/v1/agent/checks")["w-ttl"]["Output"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(out, 4096);
}

#[test]
fn a_record_too_large_to_gossip_is_refused_whole() {
    let a = Agent::start(AgentSpec::dev("node-big", "127.0.0.1"));
    let meta: serde_json::Map<String, Value> = (0..64)
        .map(|i| (format!("{i:0>100}"), json!("v".repeat(500))))
        .collect();
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..40 {
        let body = json!({"Name": "fat", "ID": format!("fat-{i}"), "Meta": meta}).to_string();
        let r = a.put("/v1/agent/service/register", &body);
        if r.status == 200 {
            accepted += 1;
        } else {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the node record must hit the gossip size limit");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("gossip"), "{}", r.text());
    // The refused one is not half-applied; everything accepted before is intact.
    let svcs = a.get_json("/v1/agent/services");
    assert_eq!(svcs.as_object().unwrap().len(), accepted);
    assert!(svcs.get(format!("fat-{accepted}")).is_none());
    // Removing something makes room again.
    assert_eq!(a.put("/v1/agent/service/deregister/fat-0", "").status, 200);
    let body = json!({"Name": "small", "Port": 1}).to_string();
    assert_eq!(a.put("/v1/agent/service/register", &body).status, 200);
}

#[test]
fn a_failed_disk_write_changes_nothing() {
    let dir = TempDir::new("diskfail");
    let a = Agent::start(AgentSpec::dev("node-df", "127.0.0.1").data_dir(dir.path()));
    assert_eq!(
        a.put("/v1/agent/service/register", &web("before", 1, &[]))
            .status,
        200
    );
    // Make the services directory unusable (a file in its place): writes must fail.
    let services = dir.path().join("services");
    std::fs::rename(&services, dir.path().join("services.moved")).unwrap();
    std::fs::write(&services, b"not a directory").unwrap();
    let r = a.put("/v1/agent/service/register", &web("during", 2, &[]));
    assert_eq!(r.status, 500, "{}", r.text());
    let r = a.put("/v1/agent/service/deregister/before", "");
    assert_eq!(r.status, 500, "{}", r.text());
    // Nothing of either change is visible, now or after a later successful write.
    std::fs::remove_file(&services).unwrap();
    std::fs::rename(dir.path().join("services.moved"), &services).unwrap();
    assert_eq!(
        a.put("/v1/agent/service/register", &web("after", 3, &[]))
            .status,
        200
    );
    let svcs = a.get_json("/v1/agent/services");
    assert!(
        svcs.get("during").is_none(),
        "failed registration leaked: {svcs}"
    );
    assert!(
        svcs.get("before").is_some(),
        "failed deregistration leaked: {svcs}"
    );
    assert!(svcs.get("after").is_some());
}

#[test]
fn a_config_service_takes_the_place_of_an_http_one_with_the_same_id() {
    let dir = TempDir::new("takeover");
    let data = dir.path().join("data");
    let cfg = dir.path().join("svc.toml");
    let spec = AgentSpec::dev("node-to", "127.0.0.1").data_dir(&data);
    let a = Agent::start(spec.clone());
    assert_eq!(
        a.put("/v1/agent/service/register", &web("dup", 1111, &[]))
            .status,
        200
    );
    drop(a);
    // The config file now defines the same id: it wins, and the stored HTTP copy is gone.
    std::fs::write(
        &cfg,
        "[[service]]\nname = \"web\"\nid = \"dup\"\nport = 2222\n",
    )
    .unwrap();
    let b = Agent::start(spec.clone().args(&["--config", cfg.to_str().unwrap()]));
    assert_eq!(b.get_json("/v1/agent/service/dup")["Port"], 2222);
    drop(b);
    // Without the file the service is gone for good: the old HTTP registration does not
    // come back from data_dir.
    let c = Agent::start(spec);
    assert_eq!(c.get("/v1/agent/service/dup").status, 404);
}
