//! The cluster end to end: real agents on 127.0.0.x join one seed over gossip, share their
//! services, notice a crash (listed failed, services gone) and a graceful leave (listed
//! left, services gone at once), teach a late joiner everything, take a restarted node
//! back, and keep out an agent with the wrong key. Answers are checked over HTTP and DNS.

use hickory_proto::op::ResponseCode;
use muster_tests::{dns_a, wait_for, Agent, AgentSpec};
use serde_json::Value;
use std::time::Duration;

/// Generous: tests never assert timings, only that things happen.
const SPREAD: Duration = Duration::from_secs(20);
const DETECT: Duration = Duration::from_secs(40);

fn join_args(seed: &Agent) -> Vec<String> {
    vec!["--join".into(), seed.spec.gossip_addr()]
}

fn start_joined(name: &str, ip: &str, seed: &Agent, extra: &[&str]) -> Agent {
    let mut spec = AgentSpec::dev(name, ip);
    spec.extra.extend(join_args(seed));
    spec.extra.extend(extra.iter().map(|s| s.to_string()));
    Agent::start(spec)
}

/// (name → Status) from `/v1/agent/members`.
fn members(a: &Agent) -> Vec<(String, u64)> {
    let v = a.get_json("/v1/agent/members");
    v.as_array()
        .map(|l| {
            l.iter()
                .map(|m| {
                    (
                        m["Name"].as_str().unwrap_or_default().to_string(),
                        m["Status"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn status_of(a: &Agent, node: &str) -> Option<u64> {
    members(a)
        .into_iter()
        .find(|(n, _)| n == node)
        .map(|(_, s)| s)
}

/// Nodes that `a` answers with for service `name` (health endpoint, as clients ask).
fn nodes_for(a: &Agent, name: &str) -> Vec<String> {
    let v = a.get_json(&format!("/v1/health/service/{name}"));
    let mut nodes: Vec<String> = v
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| e["Node"]["Node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    nodes.sort();
    nodes
}

/// (rcode, addresses) of `NAME.service.local` A records from `a`'s DNS.
fn dns_for(a: &Agent, name: &str) -> (ResponseCode, Vec<String>) {
    let (rcode, addrs) = dns_a(a.dns(), &format!("{name}.service.local."));
    (rcode, addrs.into_iter().collect())
}

fn catalog_nodes_for(a: &Agent, name: &str) -> Vec<String> {
    let v = a.get_json(&format!("/v1/catalog/service/{name}"));
    v.as_array()
        .map(|l| {
            l.iter()
                .filter_map(|e| e["Node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn register(a: &Agent, name: &str, port: u16) {
    let r = a.put(
        "/v1/agent/service/register",
        &format!(r#"{{"Name": "{name}", "Port": {port}, "Tags": ["v1"]}}"#),
    );
    assert_eq!(r.status, 200, "register {name}: {}", r.text());
}

fn all_logs(agents: &[&Agent]) -> String {
    agents
        .iter()
        .map(|a| format!("--- {} ---\n{}", a.spec.name, a.logs()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A counter from `/v1/agent/metrics` (Consul's JSON shape).
fn counter(a: &Agent, name: &str) -> u64 {
    let v: Value = a.get_json("/v1/agent/metrics");
    v["Counters"]
        .as_array()
        .and_then(|l| l.iter().find(|c| c["Name"] == name))
        .and_then(|c| c["Count"].as_u64())
        .unwrap_or_else(|| panic!("no counter {name} in {v}"))
}

#[test]
fn five_agents_join_share_services_and_see_crashes_and_leaves() {
    let seed = Agent::start(AgentSpec::dev("seed", "127.0.0.2"));
    let mut agents: Vec<Agent> = (0..5)
        .map(|i| start_joined(&format!("n{i}"), &format!("127.0.0.{}", 3 + i), &seed, &[]))
        .collect();
    let everyone = |agents: &[Agent]| -> Vec<String> {
        let mut v: Vec<String> = agents.iter().map(|a| a.spec.name.clone()).collect();
        v.push("seed".into());
        v.sort();
        v
    };
    let names = everyone(&agents);

    // Everyone sees everyone alive.
    for a in agents.iter().chain([&seed]) {
        let ok = wait_for(SPREAD, || {
            let m = members(a);
            m.len() == names.len() && m.iter().all(|(_, s)| *s == 1)
        });
        assert!(ok, "{} members: {:?}", a.spec.name, members(a));
    }

    // A service registered on one agent is answered by all the others.
    register(&agents[0], "web", 8080);
    register(&agents[1], "db", 5432);
    register(&agents[2], "cache", 6379);
    for a in agents.iter().chain([&seed]) {
        let ok = wait_for(SPREAD, || {
            nodes_for(a, "web") == ["n0"]
                && nodes_for(a, "db") == ["n1"]
                && catalog_nodes_for(a, "cache") == ["n2"]
                && dns_for(a, "web") == (ResponseCode::NoError, vec!["127.0.0.3".into()])
                && dns_for(a, "cache") == (ResponseCode::NoError, vec!["127.0.0.5".into()])
        });
        assert!(
            ok,
            "{} answers web={:?} db={:?}\n{}",
            a.spec.name,
            nodes_for(a, "web"),
            nodes_for(a, "db"),
            all_logs(&[a])
        );
    }

    // kill -9 of n1: its services leave every answer once SWIM declares it down, and it
    // stays listed as failed (Status 4).
    agents[1].kill9();
    for a in agents.iter().filter(|a| a.spec.name != "n1").chain([&seed]) {
        let ok = wait_for(DETECT, || {
            status_of(a, "n1") == Some(4)
                && nodes_for(a, "db").is_empty()
                && dns_for(a, "db").0 == ResponseCode::NXDomain
        });
        assert!(
            ok,
            "{} after kill -9 of n1: members {:?}, db {:?}",
            a.spec.name,
            members(a),
            nodes_for(a, "db")
        );
        let services = a.get_json("/v1/catalog/services");
        assert!(services.get("db").is_none(), "{services}");
    }

    // SIGTERM of n2: it tells the cluster; its services go and it is listed as left.
    agents[2].signal("TERM");
    assert_eq!(agents[2].wait_exit(Duration::from_secs(20)), Some(0));
    for a in [&agents[0], &agents[3], &agents[4], &seed] {
        let ok = wait_for(SPREAD, || {
            status_of(a, "n2") == Some(3)
                && catalog_nodes_for(a, "cache").is_empty()
                && dns_for(a, "cache").0 == ResponseCode::NXDomain
        });
        assert!(
            ok,
            "{} after SIGTERM of n2: members {:?}",
            a.spec.name,
            members(a)
        );
    }

    // A late joiner (joining a member other than the seed) learns what came before it,
    // including who failed and who left.
    let late = start_joined("late", "127.0.0.9", &agents[3], &[]);
    let ok = wait_for(SPREAD, || {
        nodes_for(&late, "web") == ["n0"]
            && dns_for(&late, "web").1 == ["127.0.0.3"]
            && status_of(&late, "n1") == Some(4)
            && status_of(&late, "n2") == Some(3)
            && status_of(&late, "seed") == Some(1)
    });
    assert!(
        ok,
        "late joiner: members {:?}, web {:?}\n{}",
        members(&late),
        nodes_for(&late, "web"),
        all_logs(&[&late])
    );
    for a in [&agents[0], &seed] {
        assert!(
            wait_for(SPREAD, || status_of(a, "late") == Some(1)),
            "{} never saw the late joiner",
            a.spec.name
        );
    }

    // n1 restarted on the same address comes back alive (a new boot wins over the
    // identity that was declared down), and what it registers is seen again.
    let spec = agents[1].spec.clone();
    let restarted = Agent::start(spec);
    register(&restarted, "db", 5433);
    for a in [&agents[0], &seed, &late] {
        let ok = wait_for(SPREAD, || {
            status_of(a, "n1") == Some(1) && nodes_for(a, "db") == ["n1"]
        });
        assert!(
            ok,
            "{} after n1 restarted: members {:?}, db {:?}\n{}",
            a.spec.name,
            members(a),
            nodes_for(a, "db"),
            all_logs(&[a, &restarted])
        );
    }
    agents[1] = restarted;

    // force-leave turns a failed member into a left one everywhere.
    agents[4].kill9();
    assert!(wait_for(DETECT, || status_of(&seed, "n4") == Some(4)));
    let r = seed.put("/v1/agent/force-leave/n4", "");
    assert_eq!(r.status, 200, "{}", r.text());
    for a in [&agents[0], &seed] {
        assert!(
            wait_for(SPREAD, || status_of(a, "n4") == Some(3)),
            "{} members after force-leave: {:?}",
            a.spec.name,
            members(a)
        );
    }
    // Forcing an alive member out is refused.
    let r = seed.put("/v1/agent/force-leave/n0", "");
    assert_ne!(r.status, 200);
}

#[test]
fn join_endpoint_and_leave_endpoint() {
    let a = Agent::start(AgentSpec::dev("ja", "127.0.0.10"));
    let mut b = Agent::start(AgentSpec::dev("jb", "127.0.0.11"));
    register(&b, "api", 9000);
    let r = a.put(&format!("/v1/agent/join/{}", b.spec.gossip_addr()), "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(wait_for(SPREAD, || nodes_for(&a, "api") == ["jb"]));
    // Joining an address where nobody listens fails (and says so).
    let dead = muster_tests::free_port("127.0.0.10");
    let r = a.put(&format!("/v1/agent/join/127.0.0.10:{dead}"), "");
    assert_ne!(r.status, 200);
    // PUT /v1/agent/leave: the agent tells the cluster and exits.
    let r = b.put("/v1/agent/leave", "");
    assert_eq!(r.status, 200);
    assert_eq!(b.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(
        wait_for(SPREAD, || status_of(&a, "jb") == Some(3)
            && nodes_for(&a, "api").is_empty()),
        "members {:?}",
        members(&a)
    );
}

#[test]
fn an_agent_with_the_wrong_key_never_joins() {
    let key = "dGhpcyBpcyBhIDMyIGJ5dGUga2V5IGZvciB0ZXN0cyE="; // 32 bytes
    let wrong = "YW5vdGhlciAzMiBieXRlIGtleSwgbm90IHRoZSBvbmU="; // 32 bytes
    let seed = Agent::start(AgentSpec::dev("k-seed", "127.0.0.12").args(&["--encrypt", key]));
    let good = start_joined("k-good", "127.0.0.13", &seed, &["--encrypt", key]);
    register(&good, "secret", 7000);
    assert!(
        wait_for(SPREAD, || nodes_for(&seed, "secret") == ["k-good"]),
        "agents with the same key did not form a cluster\n{}",
        all_logs(&[&seed, &good])
    );
    let before = counter(&seed, "muster.gossip.decrypt_failures");

    let intruder = start_joined("k-bad", "127.0.0.14", &seed, &["--encrypt", wrong]);
    let plain = start_joined("k-plain", "127.0.0.15", &seed, &[]);
    // The seed counts what it could not open...
    assert!(
        wait_for(SPREAD, || counter(&seed, "muster.gossip.decrypt_failures")
            > before),
        "no failed decrypts counted"
    );
    // ...and, while both keep retrying, neither is ever a member, nor learns anything.
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < deadline {
        for a in [&seed, &good] {
            let m = members(a);
            assert!(
                m.iter().all(|(n, _)| n != "k-bad" && n != "k-plain"),
                "{} lists an agent without the key: {m:?}",
                a.spec.name
            );
        }
        for a in [&intruder, &plain] {
            assert_eq!(
                members(a).len(),
                1,
                "{} joined: {:?}",
                a.spec.name,
                members(a)
            );
            assert!(nodes_for(a, "secret").is_empty());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
