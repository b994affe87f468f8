//! Fault tests with a real network cut: iptables drops traffic between one agent and the
//! others on loopback. Rules live in a chain of our own, named after this process, and are
//! removed when the test ends (pass or fail). Needs root and iptables (`tests/run.sh` installs it).

use muster_tests::{dns_a, wait_for, Agent, AgentSpec, DropChain};
use serde_json::json;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(30);
const DETECT: Duration = Duration::from_secs(60);

/// Drops all traffic between `victim` and each of `others` while it lives.
fn isolate(victim: &str, others: &[&str]) -> DropChain {
    let cut = DropChain::new("T");
    for o in others {
        cut.drop_matching(&["-s", victim, "-d", o]);
        cut.drop_matching(&["-s", o, "-d", victim]);
    }
    cut
}

fn healthy_web(a: &Agent) -> usize {
    a.get_json("/v1/health/service/web?passing")
        .as_array()
        .unwrap()
        .len()
}

fn statuses(a: &Agent) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = a
        .get_json("/v1/agent/members")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Name"].as_str().unwrap().to_string(),
                m["Status"].as_u64().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn an_agent_cut_off_from_most_peers_keeps_serving_last_known_instances() {
    let ips = ["127.0.0.41", "127.0.0.42", "127.0.0.43", "127.0.0.44"];
    let seed = Agent::start(AgentSpec::dev("p0", ips[0]));
    let join = seed.spec.gossip_addr();
    let mut agents = vec![seed];
    for (i, ip) in ips.iter().enumerate().skip(1) {
        agents.push(Agent::start(
            AgentSpec::dev(&format!("p{i}"), ip).args(&["--join", &join]),
        ));
    }
    for (i, a) in agents.iter().enumerate() {
        let body = json!({"Name": "web", "ID": format!("web-{i}"), "Port": 8000 + i}).to_string();
        assert_eq!(a.put("/v1/agent/service/register", &body).status, 200);
    }
    for a in &agents {
        assert!(
            wait_for(SETTLE, || healthy_web(a) == 4),
            "{} never saw 4 instances; members {:?}",
            a.spec.name,
            statuses(a)
        );
    }
    let (lonely, rest) = agents.split_first().unwrap();

    let cut = isolate(ips[0], &ips[1..]);
    // The others lost one peer of three: an ordinary failure, p0's instance leaves.
    for a in rest {
        assert!(
            wait_for(DETECT, || healthy_web(a) == 3),
            "{} still serves p0's instance; members {:?}",
            a.spec.name,
            statuses(a)
        );
    }
    // p0 lost every peer at once: it declares them failed, but keeps serving what it knew.
    assert!(
        wait_for(DETECT, || statuses(lonely)
            .iter()
            .filter(|(_, s)| *s == 4)
            .count()
            == 3),
        "p0 never declared its peers failed: {:?}",
        statuses(lonely)
    );
    let r = lonely.get("/v1/health/service/web?passing");
    assert_eq!(
        r.json().as_array().unwrap().len(),
        4,
        "last known instances dropped"
    );
    assert_eq!(r.header("X-Muster-Stale"), Some("true"));
    assert!(
        r.header("X-Consul-LastContact")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    let (rcode, addrs) = dns_a(lonely.dns(), "web.service.local.");
    assert_eq!(rcode, hickory_proto::op::ResponseCode::NoError);
    assert!(!addrs.is_empty());
    // The others are not in protect mode: their answers are not marked stale.
    assert!(rest[0]
        .get("/v1/health/service/web")
        .header("X-Muster-Stale")
        .is_none());

    // Contact returns: everyone is alive again and nothing is stale.
    drop(cut);
    for a in &agents {
        assert!(
            wait_for(DETECT, || statuses(a).iter().all(|(_, s)| *s == 1)
                && healthy_web(a) == 4),
            "{} did not recover after the cut healed: {:?}",
            a.spec.name,
            statuses(a)
        );
    }
    assert!(
        wait_for(SETTLE, || lonely
            .get("/v1/health/service/web")
            .header("X-Muster-Stale")
            .is_none()),
        "protect mode never ended"
    );
}
