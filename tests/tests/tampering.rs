//! The tampering trial of issue 14, on a plaintext loopback cluster of three agents. A
//! forger without a key — nothing stops it but the agents' own rules — builds well-formed
//! datagrams and sync frames with proto's own encoders (valid checksums, plausible
//! contents), learns each agent's identity and state the way a peer would (a SWIM announce,
//! a fetch), and tries what bit-flipped captures once achieved:
//!
//! 1. rewrite a node's own address: the node must never list itself at another IP, and its
//!    peers must list it at its own again (never as failed);
//! 2. plant a version far ahead for a node: refused and counted in the metrics, and the
//!    node's later registrations still reach its peers;
//! 3. make a healthy agent mark another failed (or left) for good: alive again within
//!    seconds, never left;
//! 4. inject ghost members: gone (or failed, when the forger also pushed state for one)
//!    within a probe round or two, never in the catalog's nodes, and protect mode never
//!    turned on.
//!
//! Timings are printed, not asserted beyond generous deadlines. (That gossip on a
//! non-loopback address without a key refuses to start, saying why and how, is tested in
//! `hostile.rs`.)

use muster_proto::gossip::data::{Delta, NodeInfo};
use muster_proto::gossip::envelope::{Keyring, Place};
use muster_proto::gossip::foca::{self, Codec, Member, PostcardCodec};
use muster_proto::gossip::frame::{self, FrameKind, MAX_FRAME_PAYLOAD};
use muster_proto::gossip::wire::{self, Datagram, Push, Summary, SyncReply, SyncRequest, Verdict};
use muster_proto::gossip::{EntryKey, NodeId, Value};
use muster_tests::{free_port, wait_for, Agent, AgentSpec};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SPREAD: Duration = Duration::from_secs(30);

/// A peer without the key, speaking plaintext gossip as well as any agent.
struct Forger {
    udp: UdpSocket,
    /// The identity it speaks as. It never answers probes, so the cluster soon holds it as
    /// down and ignores what it says; each attack starts under a fresh one.
    id: NodeId,
}

impl Forger {
    fn new(ip: &str) -> Forger {
        let port = free_port(ip);
        let udp = UdpSocket::bind((ip, port)).unwrap();
        udp.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let id = NodeId::new("forger", udp.local_addr().unwrap(), 1);
        Forger { udp, id }
    }

    /// Speaks as a new run of itself (a later boot stamp at the same address).
    fn fresh(&mut self) {
        self.id = self.id.with_boot(self.id.boot() + 1);
    }

    fn send(&self, to: SocketAddr, payload: &[u8]) {
        let packet = Keyring::plain().seal([0; 24], Place::Datagram, payload);
        self.udp.send_to(&packet, to).unwrap();
    }

    fn swim(&self, to: &NodeId, message: foca::Message<NodeId>, updates: Vec<Member<NodeId>>) {
        let header = foca::Header {
            src: self.id.clone(),
            src_incarnation: 0,
            dst: to.clone(),
            message,
        };
        let packet = wire::swim_packet(&header, &updates).unwrap();
        self.send(to.gossip_addr(), &wire::swim_datagram(&packet, &[]));
    }

    /// The identity an agent runs under now, as any peer learns it: announce (as a fresh
    /// run of the forger, which the agent takes as alive), and read the sender of the
    /// answer (a feed; anything the agent sent before is stale).
    fn identity(&mut self, agent: &Agent) -> NodeId {
        self.fresh();
        let addr: SocketAddr = agent.spec.gossip_addr().parse().unwrap();
        let mut buf = [0u8; 2048];
        self.udp.set_nonblocking(true).unwrap();
        while self.udp.recv_from(&mut buf).is_ok() {}
        self.udp.set_nonblocking(false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            self.swim(&NodeId::new("", addr, 0), foca::Message::Announce, vec![]);
            let answered = Instant::now() + Duration::from_secs(2);
            while Instant::now() < answered {
                let Ok((n, from)) = self.udp.recv_from(&mut buf) else {
                    break;
                };
                if from != addr {
                    continue;
                }
                let Ok(opened) = Keyring::plain().open(Place::Datagram, &buf[..n]) else {
                    continue;
                };
                if let Ok(Datagram::Swim { packet, .. }) = wire::parse_datagram(&opened.payload) {
                    let mut p = packet;
                    match Codec::<NodeId>::decode_header(&mut PostcardCodec, &mut p) {
                        Ok(h) if h.message == foca::Message::Feed => return h.src,
                        _ => continue,
                    }
                }
            }
        }
        panic!("{} never answered an announce", agent.spec.name);
    }

    /// One sync exchange over TCP, in a plaintext frame.
    fn exchange(&self, agent: &Agent, req: &SyncRequest) -> Option<SyncReply> {
        let plain = Keyring::plain();
        let body = wire::encode(req);
        let bytes = frame::encode(&plain, FrameKind::Sync, &body, MAX_FRAME_PAYLOAD, || {
            [0; 24]
        })
        .unwrap();
        let mut s = TcpStream::connect(agent.spec.gossip_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            if let Ok(f) = frame::decode(&plain, &got, MAX_FRAME_PAYLOAD) {
                return wire::decode_reply(&f.body).ok();
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// What an agent holds of `node`: (run, version, the entries' keys).
    fn state_of(&self, agent: &Agent, node: &str) -> (u64, u64, Vec<EntryKey>) {
        let req = SyncRequest::Fetch {
            from: self.id.clone(),
            wants: vec![(node.into(), 0, 0)],
        };
        match self.exchange(agent, &req) {
            Some(SyncReply::Deltas { deltas, .. }) if !deltas.is_empty() => {
                let d = &deltas[0];
                (
                    d.run,
                    d.to,
                    d.entries.iter().map(|e| e.key.clone()).collect(),
                )
            }
            other => panic!("no state of {node} from {}: {other:?}", agent.spec.name),
        }
    }

    fn push(&self, to: &Agent, deltas: Vec<Delta>, verdicts: Vec<Verdict>) {
        let d = wire::push_datagram(&Push {
            deltas,
            verdicts,
            relay: true,
            ..Push::default()
        });
        self.send(to.spec.gossip_addr().parse().unwrap(), &d);
    }
}

/// (name, addr, status) of every member an agent lists.
fn members(a: &Agent) -> Vec<(String, String, u64)> {
    a.get_json("/v1/agent/members")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Name"].as_str().unwrap_or("").to_string(),
                m["Addr"].as_str().unwrap_or("").to_string(),
                m["Status"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn status_of(a: &Agent, name: &str) -> Option<u64> {
    members(a).into_iter().find(|m| m.0 == name).map(|m| m.2)
}

fn catalog_nodes(a: &Agent) -> Vec<String> {
    a.get_json("/v1/catalog/nodes")
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap_or("").to_string())
        .collect()
}

fn catalog_address(a: &Agent, node: &str) -> String {
    a.get_json(&format!("/v1/catalog/node/{node}"))["Node"]["Address"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn has_service(a: &Agent, name: &str) -> bool {
    a.get_json(&format!("/v1/catalog/service/{name}"))
        .as_array()
        .is_some_and(|l| !l.is_empty())
}

/// Sum of `muster.gossip.dropped` for one channel and reason.
fn dropped(a: &Agent, channel: &str, reason: &str) -> u64 {
    let v: Json = a.get_json("/v1/agent/metrics");
    v["Counters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["Name"] == "muster.gossip.dropped"
                && c["Labels"]["channel"] == channel
                && c["Labels"]["reason"] == reason
        })
        .map(|c| c["Count"].as_u64().unwrap_or(0))
        .sum()
}

/// Every agent lists itself at its own address, and nowhere else.
fn each_lists_itself_at_home(agents: &[&Agent]) {
    for a in agents {
        let own: Vec<_> = members(a)
            .into_iter()
            .filter(|m| m.0 == a.spec.name)
            .collect();
        assert_eq!(own.len(), 1, "{}: {own:?}", a.spec.name);
        assert_eq!(
            own[0].1, a.spec.ip,
            "{} lists itself elsewhere",
            a.spec.name
        );
        assert_eq!(
            catalog_address(a, &a.spec.name),
            a.spec.ip,
            "{}'s own catalog address",
            a.spec.name
        );
    }
}

fn node_info(ip: &str) -> Value {
    Value::Node(Arc::new(NodeInfo {
        datacenter: "dc1".into(),
        address: ip.parse().unwrap(),
        meta: BTreeMap::new(),
    }))
}

/// Samples `f` every 100 ms for `d`, returning every sample.
fn sample<T>(d: Duration, mut f: impl FnMut() -> T) -> Vec<T> {
    let end = Instant::now() + d;
    let mut out = Vec::new();
    while Instant::now() < end {
        out.push(f());
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}

#[test]
fn a_keyless_forger_cannot_rewrite_plant_fail_or_haunt_a_plaintext_cluster() {
    let a = Agent::start(AgentSpec::dev("alpha", "127.0.14.1"));
    let b = Agent::start(
        AgentSpec::dev("bravo", "127.0.14.2").args(&["--join", &a.spec.gossip_addr()]),
    );
    let c = Agent::start(
        AgentSpec::dev("charlie", "127.0.14.3").args(&["--join", &a.spec.gossip_addr()]),
    );
    let all = [&a, &b, &c];
    for (agent, svc) in [(&a, "web-a"), (&b, "web-b"), (&c, "web-c")] {
        let r = agent.put(
            "/v1/agent/service/register",
            &format!(r#"{{"Name": "{svc}", "Port": 80}}"#),
        );
        assert_eq!(r.status, 200);
    }
    assert!(
        wait_for(SPREAD, || all.iter().all(|x| {
            ["web-a", "web-b", "web-c"]
                .iter()
                .all(|s| has_service(x, s))
                && members(x).iter().filter(|m| m.2 == 1).count() == 3
        })),
        "the cluster did not form"
    );
    let mut forger = Forger::new("127.0.14.9");
    let moved = |x: &Agent| {
        x.logs()
            .matches("a peer knew a later run of this node")
            .count()
    };
    let failed = |x: &Agent, n: &str| {
        x.logs()
            .lines()
            .filter(|l| l.contains("member failed") && l.contains(n))
            .count()
    };

    // 1a. A's own address, through SWIM: B and C are told A now runs (a later run) at
    //     127.0.14.99, and pass it on as SWIM does.
    let ida = forger.identity(&a);
    let elsewhere: SocketAddr = format!("127.0.14.99:{}", ida.gossip_addr().port())
        .parse()
        .unwrap();
    let impostor = NodeId::new(ida.name().clone(), elsewhere, ida.boot() + 1);
    let targets = [forger.identity(&b), forger.identity(&c)];
    let moves_before = moved(&a);
    let started = Instant::now();
    for to in &targets {
        forger.swim(
            to,
            foca::Message::Gossip,
            vec![Member::alive(impostor.clone())],
        );
    }
    let mut elsewhere_seen = 0;
    let mut settled = None;
    let samples = sample(Duration::from_secs(15), || {
        each_lists_itself_at_home(&all);
        let views = [&b, &c].map(|x| members(x).into_iter().find(|m| m.0 == "alpha"));
        let home = views
            .iter()
            .all(|m| m.as_ref().is_some_and(|m| m.1 == "127.0.14.1" && m.2 == 1));
        if !home {
            elsewhere_seen += 1;
        }
        if home && settled.is_none() && moved(&a) > moves_before {
            settled = Some(started.elapsed());
        }
        views.map(|m| m.map(|m| m.2))
    });
    println!(
        "own address through SWIM: every agent at home in each of {} samples; alpha moved above the claim, listed elsewhere by a peer in {elsewhere_seen} samples, at home by both {:?} after the forgery",
        samples.len(),
        settled
    );
    assert!(
        moved(&a) > moves_before,
        "the claim never reached alpha:\n{}",
        a.logs()
    );
    assert!(
        settled.is_some(),
        "the peers do not list alpha at its own address: {:?}",
        members(&b)
    );
    assert!(
        samples.iter().flatten().all(|s| *s == Some(1)),
        "a peer listed alpha as other than alive: {samples:?}"
    );
    for x in [&b, &c] {
        assert_eq!(catalog_address(x, "alpha"), "127.0.14.1");
    }

    // 1b. A is handed its own node info at that address, over a datagram and a sync
    //     stream, and a summary of itself there.
    let moves_before = moved(&a);
    let (run, version, _) = forger.state_of(&b, "alpha");
    let forged = Delta::single(
        "alpha",
        run,
        version,
        EntryKey::Node,
        Some(node_info("127.0.14.99")),
    );
    forger.push(&a, vec![forged.clone()], vec![]);
    forger.exchange(
        &a,
        &SyncRequest::Push {
            from: forger.id.clone(),
            deltas: vec![forged],
        },
    );
    let impostor = NodeId::new("alpha", elsewhere, forger.identity(&a).boot() + 1);
    forger.exchange(
        &a,
        &SyncRequest::Compare {
            from: forger.id.clone(),
            buckets: (0..=255).collect(),
            nodes: vec![Summary {
                id: impostor,
                version: version + 5,
                run,
                up: true,
                left_boot: 0,
            }],
        },
    );
    let samples = sample(Duration::from_secs(5), || {
        each_lists_itself_at_home(&all);
        [&b, &c].map(|x| (status_of(x, "alpha"), catalog_address(x, "alpha")))
    });
    assert!(
        samples
            .iter()
            .flatten()
            .all(|s| s.0 == Some(1) && s.1 == "127.0.14.1"),
        "{samples:?}"
    );
    assert!(
        moved(&a) > moves_before,
        "alpha did not move above the claims"
    );
    println!(
        "own state handed to alpha: not taken ({} samples); alpha moved above it",
        samples.len()
    );

    // 2. A version of B 2^40 ahead, to A and C, over a datagram and a stream.
    let (run, version, keys) = forger.state_of(&b, "bravo");
    let svc_key = keys
        .into_iter()
        .find(|k| matches!(k, EntryKey::Service(_)))
        .expect("bravo's service");
    let far = Delta::single("bravo", run, version + (1 << 40), svc_key, None);
    let before: Vec<u64> = [&a, &c]
        .map(|x| dropped(x, "claim", "implausible"))
        .to_vec();
    for x in [&a, &c] {
        forger.push(x, vec![far.clone()], vec![]);
        forger.exchange(
            x,
            &SyncRequest::Push {
                from: forger.id.clone(),
                deltas: vec![far.clone()],
            },
        );
    }
    assert!(
        wait_for(Duration::from_secs(10), || [&a, &c]
            .iter()
            .zip(&before)
            .all(|(x, n)| dropped(x, "claim", "implausible") >= n + 2)),
        "far-ahead claims not counted: {:?}",
        [&a, &c].map(|x| dropped(x, "claim", "implausible"))
    );
    let r = b.put(
        "/v1/agent/service/register",
        r#"{"Name": "later-b", "Port": 81}"#,
    );
    assert_eq!(r.status, 200);
    let t = Instant::now();
    assert!(wait_for(SPREAD, || [&a, &c]
        .iter()
        .all(|x| has_service(x, "later-b") && has_service(x, "web-b"))));
    println!(
        "far-future version: refused and counted ({:?} implausible claims on alpha/charlie); bravo's next registration reached both in {:?}",
        [&a, &c].map(|x| dropped(x, "claim", "implausible")),
        t.elapsed()
    );

    // 3. C down at its current boot and at the next one, sent to A; then an operator's
    //    force-leave of C.
    for next in [0, 1] {
        let failed_before = failed(&a, "charlie");
        let idc = forger.identity(&c);
        let target = NodeId::new(idc.name().clone(), idc.gossip_addr(), idc.boot() + next);
        let ida = forger.identity(&a);
        forger.swim(&ida, foca::Message::Gossip, vec![Member::down(target)]);
        let t = Instant::now();
        let statuses = sample(Duration::from_secs(3), || {
            (t.elapsed(), status_of(&a, "charlie"))
        });
        assert!(
            wait_for(Duration::from_secs(20), || status_of(&a, "charlie")
                == Some(1)
                && status_of(&b, "charlie") == Some(1)),
            "charlie stays failed: {:?}",
            members(&a)
        );
        assert!(
            failed(&a, "charlie") > failed_before,
            "the forged down never took:\n{}",
            a.logs()
        );
        let failed_samples: Vec<Duration> = statuses
            .iter()
            .filter(|s| s.1 == Some(4))
            .map(|s| s.0)
            .collect();
        println!(
            "forged down of charlie (boot +{next}): listed failed in {} of {} samples (100 ms apart) on alpha, the last {:?} after the forgery; alive on alpha and bravo at the end",
            failed_samples.len(),
            statuses.len(),
            failed_samples.last()
        );
    }
    let idc = forger.identity(&c);
    forger.push(&a, vec![], vec![Verdict::ForceLeft(idc)]);
    let statuses = sample(Duration::from_secs(4), || {
        [status_of(&a, "charlie"), status_of(&b, "charlie")]
    });
    assert!(
        statuses.iter().flatten().all(|s| *s == Some(1)),
        "a forged force-leave of live charlie took: {statuses:?}"
    );

    // 4. Ghosts: two members nobody answers for, and one the forger also pushed state for.
    let ida = forger.identity(&a);
    let ghosts: Vec<NodeId> = (0..2)
        .map(|i| {
            NodeId::new(
                format!("ghost{i}"),
                format!("127.0.14.{}:7301", 70 + i).parse().unwrap(),
                1,
            )
        })
        .collect();
    forger.swim(
        &ida,
        foca::Message::Gossip,
        ghosts.iter().cloned().map(Member::alive).collect(),
    );
    let info = Delta::single(
        "phantom",
        5,
        0,
        EntryKey::Node,
        Some(node_info("127.0.14.78")),
    );
    let service = Delta::single(
        "phantom",
        5,
        1,
        EntryKey::Service("phantom-web".into()),
        Some(Value::Service(Arc::new(muster_proto::model::Service {
            id: "phantom-web".into(),
            name: "phantom-web".into(),
            tags: vec![],
            address: String::new(),
            port: 80,
            meta: BTreeMap::new(),
            weights: Default::default(),
            enable_tag_override: false,
        }))),
    );
    forger.push(&a, vec![info, service], vec![]);
    std::thread::sleep(Duration::from_millis(200));
    let phantom = NodeId::new("phantom", "127.0.14.78:7301".parse().unwrap(), 1);
    forger.swim(&ida, foca::Message::Gossip, vec![Member::alive(phantom)]);
    let t = Instant::now();
    let mut gone_after = None;
    let deadline = Duration::from_secs(60);
    let mut seen_listed = false;
    while t.elapsed() < deadline {
        let mut haunted = false;
        for x in all {
            let listed = members(x);
            for m in &listed {
                if m.0.starts_with("ghost") || m.0 == "forger" {
                    seen_listed = true;
                    haunted = true;
                }
                if m.0 == "phantom" && m.2 != 4 {
                    haunted = true;
                }
            }
            let nodes = catalog_nodes(x);
            assert!(
                !nodes
                    .iter()
                    .any(|n| n.starts_with("ghost") || n == "forger"),
                "{} serves a ghost: {nodes:?}",
                x.spec.name
            );
        }
        if !haunted {
            gone_after = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "ghosts: listed by some agent: {seen_listed}; gone (phantom failed) everywhere after {gone_after:?}"
    );
    assert!(
        gone_after.is_some(),
        "ghosts outlived {deadline:?}: {:?}",
        members(&a)
    );
    assert!(
        seen_listed,
        "the ghosts were never taken: the forgery did not land"
    );
    for x in all {
        assert!(!has_service(x, "phantom-web"));
        let protect = x.get_json("/v1/agent/metrics");
        let on = protect["Gauges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["Name"] == "muster.protect_mode" && g["Value"].as_f64() != Some(0.0));
        assert!(!on, "{} in protect mode", x.spec.name);
        for y in all {
            assert_eq!(
                status_of(x, &y.spec.name),
                Some(1),
                "{} lists {}",
                x.spec.name,
                y.spec.name
            );
        }
    }
    each_lists_itself_at_home(&all);
}
