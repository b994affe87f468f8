//! What a peer without the key can and cannot make a node believe or hold. Each forgery is
//! built with the protocol's own encoders — exactly what an attacker who can reach a
//! plaintext gossip port sends, checksums and all — and fed to the nodes of the small
//! lossless test network of `tests`, followed by the rule that keeps it harmless:
//!
//! * a node's own address and state are never taken from a peer (it moves above claims);
//! * versions far ahead are refused and counted; nearer ones are undone by the owner;
//! * a forged failure or force-leave of a live member does not stick;
//! * a ghost member (a name and an address nobody answers at) is forgotten within a
//!   probe round or two, and never turns protect mode on;
//! * members, data-only nodes and their state stay within fixed bounds.

use super::tests::{addr, svc, Net};
use super::*;
use crate::gossip::data::{Delta, NodeInfo, MAX_HELD_NODE_BYTES};
use crate::gossip::wire::{self, Pull, Push, SyncRequest, Verdict, PULL_HASHES};
use crate::model::{MemberStatus, Service, Weights};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the forger sends from: not on the test network, so what is sent to it is lost.
fn forger_addr() -> SocketAddr {
    SocketAddr::from(([10, 9, 0, 200], 8301))
}

fn forger() -> NodeId {
    NodeId::new("forger", forger_addr(), 1)
}

/// A SWIM gossip datagram from the forger to node `to`, carrying `updates`.
fn swim(net: &Net, to: usize, updates: Vec<foca::Member<NodeId>>) -> Vec<u8> {
    let header = foca::Header {
        src: forger(),
        src_incarnation: 0,
        dst: net.node(to).id().clone(),
        message: foca::Message::Gossip,
    };
    wire::swim_datagram(&wire::swim_packet(&header, &updates).unwrap(), &[])
}

fn inject(net: &mut Net, to: usize, bytes: &[u8]) {
    net.deliver(to, forger_addr(), bytes);
}

fn inject_stream(net: &mut Net, to: usize, req: &SyncRequest) -> Option<Vec<u8>> {
    let now = net.now;
    let reply =
        net.nodes[to]
            .as_mut()
            .unwrap()
            .handle_stream(now, forger_addr(), &wire::encode(req));
    net.pump();
    reply
}

/// Every standing node `at` reported for `of`, in order.
fn standings(net: &Net, at: usize, of: &str) -> Vec<MemberStatus> {
    net.events[at]
        .iter()
        .filter_map(|e| match e {
            Event::Member(v) if v.name == of => Some(v.status),
            _ => None,
        })
        .collect()
}

fn protect_began(net: &Net, at: usize) -> bool {
    net.events[at]
        .iter()
        .any(|e| matches!(e, Event::Protect { since: Some(_) }))
}

fn push(deltas: Vec<Delta>) -> Vec<u8> {
    wire::push_datagram(&Push {
        deltas,
        relay: true,
        ..Push::default()
    })
}

fn node_info(ip: &str) -> Value {
    Value::Node(Arc::new(NodeInfo {
        datacenter: "dc1".into(),
        address: ip.parse().unwrap(),
        meta: BTreeMap::new(),
    }))
}

#[test]
fn a_node_never_takes_its_own_address_from_a_peer() {
    let mut net = Net::new(3);
    let me = net.node(0).id().clone();
    let elsewhere = SocketAddr::from(([10, 9, 0, 99], 8301));
    // n1 is told (and passes on) that n0 now runs, as a later run, at another address.
    let impostor = NodeId::new(me.name().clone(), elsewhere, me.boot() + 1);
    let d = swim(&net, 1, vec![foca::Member::alive(impostor)]);
    inject(&mut net, 1, &d);
    // n0 itself is handed its own node info with another address, a little ahead.
    let (v, run) = (net.node(0).version(), net.node(0).own_data().run);
    let forged = Delta::single("n0", run, v, EntryKey::Node, Some(node_info("10.9.0.99")));
    inject(&mut net, 0, &push(vec![forged]));
    net.run(Duration::from_secs(20));

    assert_eq!(net.node(0).id().gossip_addr(), addr(0));
    assert!(
        net.node(0).id().boot() > me.boot() + 1,
        "moved above the claim"
    );
    assert!(net.node(0).member("n0").is_none(), "lists itself as a peer");
    assert!(net.node(0).own_data().get(&EntryKey::Node).is_none());
    for at in [1, 2] {
        let m = net.node(at).member("n0").unwrap();
        assert_eq!(
            (m.addr, m.status),
            (addr(0), MemberStatus::Alive),
            "at n{at}"
        );
        assert!(
            !standings(&net, at, "n0").contains(&MemberStatus::Failed),
            "n{at} listed n0 failed: {:?}",
            standings(&net, at, "n0")
        );
        assert!(net
            .node(at)
            .data("n0")
            .unwrap()
            .get(&EntryKey::Node)
            .is_none());
    }
}

#[test]
fn an_impostor_a_member_cannot_move_above_falls_back_to_the_member() {
    // A claim of n2 at another address with a boot stamp beyond any n2 may take: n2 cannot
    // move above it, so n0 must not hold it as n2 once nobody answers there.
    let mut net = Net::new(3);
    let real = net.node(2).id().clone();
    let impostor = NodeId::new("n2", SocketAddr::from(([10, 9, 0, 98], 8301)), u64::MAX - 7);
    let d = swim(&net, 0, vec![foca::Member::alive(impostor.clone())]);
    inject(&mut net, 0, &d);
    assert_eq!(
        net.node(0).member("n2").unwrap().addr,
        impostor.gossip_addr()
    );
    net.run(Duration::from_secs(30));
    let m = net.node(0).member("n2").unwrap();
    assert_eq!((m.addr, m.status), (addr(2), MemberStatus::Alive));
    assert_eq!(m.boot, real.boot());
    for at in [0, 1] {
        assert!(!standings(&net, at, "n2").contains(&MemberStatus::Failed));
    }
    assert!(
        net.node(2).stats().implausible > 0,
        "n2 refused to chase it"
    );
}

#[test]
fn a_far_future_version_is_refused_and_counted_and_later_changes_still_spread() {
    let mut net = Net::new(3);
    let run = net.node(1).own_data().run;
    let far = 1u64 << 40;
    let forged = Delta::single("n1", run, far, EntryKey::Service("web-1".into()), None);
    for at in [0, 2] {
        inject(&mut net, at, &push(vec![forged.clone()]));
        let reply = inject_stream(
            &mut net,
            at,
            &SyncRequest::Push {
                from: forger(),
                deltas: vec![forged.clone()],
            },
        );
        assert!(reply.is_some());
        assert_eq!(net.node(at).stats().implausible, 2, "at n{at}");
        assert!(net.node(at).data("n1").unwrap().version < far);
    }
    let now = net.now;
    net.nodes[1]
        .as_mut()
        .unwrap()
        .publish(now, vec![svc("later", 9)]);
    net.pump();
    for at in [0, 2] {
        let d = net.node(at).data("n1").unwrap();
        assert!(
            d.get(&EntryKey::Service("later".into())).is_some(),
            "at n{at}"
        );
        assert!(
            d.get(&EntryKey::Service("web-1".into())).is_some(),
            "at n{at}"
        );
    }
}

#[test]
fn a_nearer_planted_version_is_undone_by_the_owner_at_the_next_exchange() {
    // Within the plausible jump a forger can plant a version (here: n1's node info at
    // another address); the owner sees what its peers hold at the next exchange and
    // stamps its own state above it.
    let mut net = Net::new(3);
    let (v, run) = (net.node(1).version(), net.node(1).own_data().run);
    let planted = Delta::single(
        "n1",
        run,
        v + 1000,
        EntryKey::Node,
        Some(node_info("10.9.0.97")),
    );
    let mut planted = planted;
    planted.from = v; // contiguous with what n0 holds, so it moves n0's copy
                      // Not to be passed on (passed on, it reaches n1 at once, which moves above it then).
    let quiet = wire::push_datagram(&Push {
        deltas: vec![planted],
        relay: false,
        ..Push::default()
    });
    inject(&mut net, 0, &quiet);
    assert!(net
        .node(0)
        .data("n1")
        .unwrap()
        .get(&EntryKey::Node)
        .is_some());
    net.run(Duration::from_secs(120));
    for at in [0, 2] {
        let d = net.node(at).data("n1").unwrap();
        assert!(
            d.get(&EntryKey::Node).is_none(),
            "planted entry still at n{at}"
        );
        assert!(d.version > v + 1001, "at n{at}");
    }
    assert!(net.node(1).version() > v + 1001);
}

#[test]
fn a_forged_failure_or_force_leave_of_a_live_member_does_not_stick() {
    let mut net = Net::new(3);
    let n2 = net.node(2).id().clone();
    // "n2 is down", at its current boot and at the next one (same address).
    let d = swim(&net, 0, vec![foca::Member::down(n2.clone())]);
    inject(&mut net, 0, &d);
    assert_eq!(net.status(0, 2), Some(MemberStatus::Failed));
    net.run(Duration::from_secs(5));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Alive));
    let later = net.node(2).id().with_boot(net.node(2).id().boot() + 1);
    let d = swim(&net, 0, vec![foca::Member::down(later)]);
    inject(&mut net, 0, &d);
    net.run(Duration::from_secs(5));
    for at in [0, 1] {
        assert_eq!(net.status(at, 2), Some(MemberStatus::Alive), "at n{at}");
    }
    assert!(net.node(2).id().boot() > n2.boot() + 1);

    // An operator's force-leave of a live member is refused where it is held alive, and
    // not passed on.
    let verdict = Verdict::ForceLeft(net.node(2).id().clone());
    let forged = wire::push_datagram(&Push {
        verdicts: vec![verdict],
        relay: true,
        ..Push::default()
    });
    inject(&mut net, 0, &forged);
    net.run(Duration::from_secs(2));
    for at in [0, 1] {
        assert_eq!(net.status(at, 2), Some(MemberStatus::Alive), "at n{at}");
        assert!(!standings(&net, at, "n2").contains(&MemberStatus::Left));
    }
}

#[test]
fn a_force_leave_that_arrives_before_the_crash_is_seen_here_applies_once_it_is() {
    let mut net = Net::new(3);
    let n2 = net.node(2).id().clone();
    // n2 crashes; the operator's force-leave, issued where the crash was seen first,
    // reaches n0 while n0 still holds n2 up.
    net.nodes[2] = None;
    let verdict = wire::push_datagram(&Push {
        verdicts: vec![Verdict::ForceLeft(n2.clone())],
        relay: false,
        ..Push::default()
    });
    inject(&mut net, 0, &verdict);
    assert_eq!(
        net.status(0, 2),
        Some(MemberStatus::Alive),
        "refused while held up"
    );
    // Once n0's own SWIM declares that identity down, the verdict stands: left, not failed.
    net.run(Duration::from_secs(20));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Left));
    assert_eq!(net.status(1, 2), Some(MemberStatus::Failed), "never told");
}

#[test]
fn ghost_members_are_forgotten_within_a_few_probe_rounds_and_never_protected() {
    let mut net = Net::new(3);
    let ghosts: Vec<NodeId> = (0..5)
        .map(|i| {
            NodeId::new(
                format!("ghost{i}"),
                SocketAddr::from(([10, 9, 1, i], 8301)),
                1,
            )
        })
        .collect();
    let d = swim(
        &net,
        0,
        ghosts.iter().cloned().map(foca::Member::alive).collect(),
    );
    inject(&mut net, 0, &d);
    let listed = net.node(0).member("ghost0").unwrap();
    assert_eq!(listed.status, MemberStatus::Alive);
    assert!(!listed.served, "a member without state is never served");
    // A ghost with state pushed for it, too (node info and a service).
    let phantom = NodeId::new("phantom", SocketAddr::from(([10, 9, 1, 50], 8301)), 1);
    let info = Delta::single(
        "phantom",
        5,
        0,
        EntryKey::Node,
        Some(node_info("10.9.1.50")),
    );
    let (k, v) = svc("phantom-web", 80);
    let service = Delta::single("phantom", 5, 1, k, v);
    inject(&mut net, 0, &push(vec![info, service]));
    let d = swim(&net, 0, vec![foca::Member::alive(phantom)]);
    inject(&mut net, 0, &d);
    assert!(net.node(0).member("phantom").unwrap().served);

    net.run(Duration::from_secs(40));
    for at in 0..3 {
        for g in &ghosts {
            assert!(net.node(at).member(g.name()).is_none(), "{g:?} at n{at}");
        }
        if let Some(m) = net.node(at).member("phantom") {
            assert_eq!(m.status, MemberStatus::Failed, "at n{at}");
            assert!(!m.served, "phantom served at n{at}");
        }
        assert!(net.node(at).member("forger").is_none(), "forger at n{at}");
        assert!(!protect_began(&net, at), "protect mode at n{at}");
        for of in 0..3 {
            if of != at {
                assert_eq!(net.status(at, of), Some(MemberStatus::Alive));
            }
        }
    }
}

#[test]
fn the_member_table_stays_within_its_bound_whatever_peers_claim() {
    let mut cfg = super::tests::config(0, 1);
    cfg.max_members = 16;
    let mut now = Duration::from_secs(1);
    let mut node = Node::new(cfg, now);
    let mut ghost = 0u32;
    for round in 0..200 {
        let updates = (0..6)
            .map(|_| {
                ghost += 1;
                let [_, a, b, c] = ghost.to_be_bytes();
                foca::Member::alive(NodeId::new(
                    format!("g{ghost}"),
                    SocketAddr::from(([10, a, b, c], 8301)),
                    1,
                ))
            })
            .collect::<Vec<_>>();
        let header = foca::Header {
            src: NodeId::new(
                format!("s{round}"),
                SocketAddr::from(([10, 200, 0, round as u8], 1)),
                1,
            ),
            src_incarnation: 0,
            dst: node.id().clone(),
            message: foca::Message::Gossip,
        };
        let bytes = wire::swim_datagram(&wire::swim_packet(&header, &updates).unwrap(), &[]);
        node.handle_datagram(now, forger_addr(), &bytes);
        now += Duration::from_millis(50);
        node.handle_timeout(now);
        while node.poll_transmit().is_some() {}
        while node.poll_event().is_some() {}
        assert!(node.known() <= 16, "{} members", node.known());
        assert!(node.swim.iter_membership_state().len() <= 16);
    }
    assert!(node.stats().members_refused > 0);
}

/// A service whose encoded size is about `bytes`.
fn big_service(id: &str, bytes: usize) -> (EntryKey, Option<Value>) {
    let mut meta = BTreeMap::new();
    for i in 0..bytes / 1000 {
        meta.insert(format!("k{i}"), "x".repeat(990));
    }
    (
        EntryKey::Service(id.into()),
        Some(Value::Service(Arc::new(Service {
            id: id.into(),
            name: "big".into(),
            tags: vec![],
            address: String::new(),
            port: 1,
            meta,
            weights: Weights::default(),
            enable_tag_override: false,
        }))),
    )
}

#[test]
fn state_pushed_for_names_that_are_no_members_stays_within_its_budget() {
    let mut net = Net::new(2);
    let names: Vec<String> = (0..300).map(|i| format!("nobody{i}")).collect();
    for n in &names {
        let (k, v) = big_service("s", 60_000);
        let d = Delta::single(n, 1, 0, k, v);
        inject_stream(
            &mut net,
            0,
            &SyncRequest::Push {
                from: forger(),
                deltas: vec![d],
            },
        );
    }
    let held: usize = names
        .iter()
        .filter_map(|n| net.node(0).data(n))
        .map(|d| d.bytes())
        .sum();
    assert!(
        held <= UNCONFIRMED_BYTES,
        "{held} bytes held for non-members"
    );
    assert!(held > UNCONFIRMED_BYTES / 2, "the budget is used: {held}");
    assert!(net.node(0).known() <= 1 + MAX_UNCONFIRMED);
}

#[test]
fn a_members_state_stays_within_its_bound() {
    let mut net = Net::new(2);
    let run = net.node(1).own_data().run;
    let held = net.node(0).data("n1").unwrap().version;
    for i in 0..100u64 {
        let (k, v) = big_service(&format!("s{i}"), 100_000);
        inject_stream(
            &mut net,
            0,
            &SyncRequest::Push {
                from: forger(),
                deltas: vec![Delta::single("n1", run, held + i, k, v)],
            },
        );
    }
    let d = net.node(0).data("n1").unwrap();
    assert!(d.bytes() <= MAX_HELD_NODE_BYTES, "{}", d.bytes());
    assert!(net.node(0).stats().malformed > 0, "refusals counted");
}

#[test]
fn a_pull_is_answered_once_per_change_and_within_a_bound() {
    let mut net = Net::new(2);
    let now = net.now;
    let changes: Vec<(EntryKey, Option<Value>)> =
        (0..200).map(|i| svc(&format!("s{i}"), 1)).collect();
    for c in changes {
        net.nodes[1].as_mut().unwrap().publish(now, vec![c]);
    }
    net.pump();
    let hashes: Vec<u64> = (1..=net.node(1).version())
        .map(|v| crate::gossip::recent::change_hash("n1", v))
        .collect();
    let sent = |net: &mut Net, pull: &Pull| {
        let now = net.now;
        let n = net.nodes[1].as_mut().unwrap();
        n.handle_datagram(now, forger_addr(), &wire::pull_datagram(pull));
        let mut out = 0;
        while let Some(t) = n.poll_transmit() {
            if matches!(t, Transmit::Datagram { to, .. } if to == forger_addr()) {
                out += 1;
            }
        }
        out
    };
    let newest = *hashes.last().unwrap();
    let same = Pull {
        hashes: vec![newest; PULL_HASHES],
    };
    assert_eq!(sent(&mut net, &same), 1, "one copy of one change");
    let many = Pull {
        hashes: hashes.iter().rev().take(PULL_HASHES).copied().collect(),
    };
    let n = sent(&mut net, &many);
    assert!((1..=MAX_PULL_REPLY).contains(&n), "{n} datagrams");
}
