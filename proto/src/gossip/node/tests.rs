//! The node's rules, one by one, on a handful of nodes wired directly to each other: a
//! lossless network with no latency, a clock moved by hand. (`muster-sim` runs the same
//! node at fleet scale over a network that loses, delays and partitions.)

use super::*;
use crate::gossip::data::{EntryKey, Value};
use crate::gossip::wire::{self, SyncRequest};
use crate::model::{MemberStatus, Service, Weights};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Which datagrams (from, to, bytes) the network loses.
pub(super) type Loss = Box<dyn Fn(usize, usize, &[u8]) -> bool>;

pub(super) struct Net {
    pub nodes: Vec<Option<Node>>,
    pub now: Duration,
    /// Datagrams from→to for which this returns true are lost.
    pub lose: Loss,
    /// Stream requests from→to for which this returns true are refused.
    pub refuse: Loss,
    /// Bytes carried by streams (requests and replies), for tests that count them.
    pub stream_bytes: usize,
    pub events: Vec<Vec<Event>>,
    /// Applied to every node's settings at start.
    pub tweak: fn(&mut NodeConfig),
}

pub(super) fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 9, 0, i as u8 + 1], 8301))
}

pub(super) fn name(i: usize) -> String {
    format!("n{i}")
}

pub(super) fn config(i: usize, boot: u64) -> NodeConfig {
    let mut c = NodeConfig::new(name(i), addr(i));
    c.boot = boot;
    c.seed = i as u64 + 1;
    c.run = 1000 + boot;
    c.reconnect_timeout = Duration::from_secs(120);
    c
}

pub(super) fn svc(id: &str, port: u16) -> (EntryKey, Option<Value>) {
    (
        EntryKey::Service(id.into()),
        Some(Value::Service(Arc::new(Service {
            id: id.into(),
            name: "web".into(),
            tags: vec![],
            address: String::new(),
            port,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        }))),
    )
}

impl Net {
    pub(super) fn new(n: usize) -> Net {
        Net::new_with(n, |_| {})
    }

    /// `n` nodes whose settings `tweak` changes, formed by joins through node 0.
    pub(super) fn new_with(n: usize, tweak: fn(&mut NodeConfig)) -> Net {
        let mut net = Net {
            nodes: (0..n).map(|_| None).collect(),
            now: Duration::from_secs(1),
            lose: Box::new(|_, _, _| false),
            refuse: Box::new(|_, _, _| false),
            stream_bytes: 0,
            events: vec![Vec::new(); n],
            tweak,
        };
        for i in 0..n {
            net.start(i, 1, if i == 0 { None } else { Some(0) });
        }
        net.run(Duration::from_secs(3));
        net
    }

    pub(super) fn start(&mut self, i: usize, boot: u64, join: Option<usize>) {
        let mut cfg = config(i, boot);
        (self.tweak)(&mut cfg);
        let mut node = Node::new(cfg, self.now);
        node.publish(self.now, vec![svc(&format!("web-{i}"), 8000 + i as u16)]);
        if let Some(j) = join {
            node.join(self.now, addr(j));
        }
        self.nodes[i] = Some(node);
        self.pump();
    }

    /// Hands node `to` a datagram from `from`, then delivers what follows.
    pub(super) fn deliver(&mut self, to: usize, from: SocketAddr, bytes: &[u8]) {
        let now = self.now;
        self.nodes[to]
            .as_mut()
            .expect("running")
            .handle_datagram(now, from, bytes);
        self.pump();
    }

    /// An operator's force-leave of `name` at node `at`, then delivers what follows.
    fn force_leave(&mut self, at: usize, name: &str) -> Result<(), String> {
        let now = self.now;
        let r = self.nodes[at]
            .as_mut()
            .expect("running")
            .force_leave(now, name, false);
        self.pump();
        r
    }

    pub(super) fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("running")
    }

    pub(super) fn status(&self, at: usize, of: usize) -> Option<MemberStatus> {
        self.node(at).member(&name(of)).map(|m| m.status)
    }

    /// Delivers everything sent, to quiescence.
    pub(super) fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let Some(n) = self.nodes[i].as_mut() else {
                    continue;
                };
                let mut out = Vec::new();
                while let Some(t) = n.poll_transmit() {
                    out.push(t);
                }
                while let Some(e) = n.poll_event() {
                    self.events[i].push(e);
                }
                for t in out {
                    moved = true;
                    let to = |a: SocketAddr| (0..self.nodes.len()).find(|&j| addr(j) == a);
                    match t {
                        Transmit::Datagram { to: a, bytes } => {
                            let Some(j) = to(a) else { continue };
                            if (self.lose)(i, j, &bytes) {
                                continue;
                            }
                            if let Some(m) = self.nodes[j].as_mut() {
                                m.handle_datagram(self.now, addr(i), &bytes);
                            }
                        }
                        Transmit::Stream { to: a, id, bytes } => {
                            let reply = to(a)
                                .filter(|&j| !(self.refuse)(i, j, &bytes))
                                .and_then(|j| self.nodes[j].as_mut())
                                .and_then(|m| m.handle_stream(self.now, addr(i), &bytes));
                            self.stream_bytes +=
                                bytes.len() + reply.as_ref().map_or(0, |r| r.len());
                            if let Some(n) = self.nodes[i].as_mut() {
                                let r = reply.as_deref().ok_or_else(|| "refused".to_string());
                                n.handle_stream_reply(self.now, id, r);
                            }
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Moves the clock in 10 ms steps, firing timers and delivering what they send.
    pub(super) fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.now += Duration::from_millis(10);
            for n in self.nodes.iter_mut().flatten() {
                if n.poll_timeout().is_some_and(|t| t <= self.now) {
                    n.handle_timeout(self.now);
                }
            }
            self.pump();
        }
    }
}

#[test]
fn a_member_is_listed_before_its_state_arrives_and_its_state_is_fetched() {
    // n2's pushes never reach n0: n0 learns of n2 from SWIM, lists it at once, and
    // fetches its state directly when it does not arrive pushed.
    let mut net = Net::new(2);
    net.lose = Box::new(|from, to, bytes| {
        from == 2 && to == 0 && bytes[0] == crate::gossip::wire::KIND_PUSH
    });
    net.nodes.push(None);
    net.events.push(Vec::new());
    net.start(2, 1, Some(1));
    net.run(Duration::from_millis(600));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Alive));
    net.run(Duration::from_secs(2));
    let d = net.node(0).data("n2").expect("state fetched");
    assert!(d.get(&EntryKey::Service("web-2".into())).is_some());
}

#[test]
fn a_change_travels_alone_and_the_higher_version_wins() {
    let mut net = Net::new(3);
    let now = net.now;
    net.nodes[1]
        .as_mut()
        .unwrap()
        .publish(now, vec![svc("web-1", 9999)]);
    net.pump();
    let d = net.node(2).data("n1").unwrap();
    match d.get(&EntryKey::Service("web-1".into())) {
        Some(Value::Service(s)) => assert_eq!(s.port, 9999),
        other => panic!("{other:?}"),
    }
    // The change was pushed as one entry: a datagram, not the node's whole state.
    assert!(net.node(1).stats().push_datagrams > 0);
}

#[test]
fn a_change_too_large_for_a_datagram_is_announced_and_fetched_at_once() {
    // A node's state held at a lower version, settled, must not pass for "filled" when a
    // notice says a later version exists (it once did: such changes waited for the next
    // anti-entropy round, minutes at fleet scale).
    let mut net = Net::new(3);
    let now = net.now;
    let many: Vec<_> = (0..200).map(|k| svc(&format!("bulk-{k}"), 1000)).collect();
    net.nodes[1].as_mut().unwrap().publish(now, many);
    net.run(Duration::from_millis(300));
    for i in [0, 2] {
        assert_eq!(net.node(i).data("n1").unwrap().live(), 201);
        assert!(net.node(i).stats().stream_requests > 0);
    }
}

#[test]
fn a_peer_that_missed_changes_converges_through_the_digest_exchange() {
    // n2 hears SWIM but none of the changes (no pushes, no pulls, no direct fetches): only
    // the periodic anti-entropy exchange is left to it, and that must send only what is
    // newer, never n1's whole state again.
    let mut net = Net::new(3);
    let now = net.now;
    let many: Vec<_> = (0..200).map(|k| svc(&format!("bulk-{k}"), 1000)).collect();
    net.nodes[1].as_mut().unwrap().publish(now, many);
    // Too large for one datagram: announced by a notice and fetched.
    net.run(Duration::from_secs(1));
    assert_eq!(net.node(2).data("n1").unwrap().live(), 201);
    let full_state = 200 * wire::encode(&svc("bulk-0", 1000)).len();
    net.lose =
        Box::new(|_, to, bytes| to == 2 && matches!(bytes[0], wire::KIND_PUSH | wire::KIND_PULL));
    net.refuse = Box::new(|from, _, bytes| {
        from == 2 && matches!(wire::decode_request(bytes), Ok(SyncRequest::Fetch { .. }))
    });
    let now = net.now;
    let changed: Vec<_> = (0..5).map(|k| svc(&format!("bulk-{k}"), 2000)).collect();
    net.nodes[1].as_mut().unwrap().publish(now, changed);
    net.run(Duration::from_secs(1));
    let port_of = |net: &Net, k: usize| match net.node(2).data("n1").and_then(|d| {
        d.get(&EntryKey::Service(format!("bulk-{k}").as_str().into()))
            .cloned()
    }) {
        Some(Value::Service(s)) => s.port,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        port_of(&net, 0),
        1000,
        "the change reached n2 some other way"
    );
    net.stream_bytes = 0;
    // Two sync intervals (30 s at this size) with jitter: at least one exchange with n2.
    net.run(Duration::from_secs(70));
    for k in 0..5 {
        assert_eq!(port_of(&net, k), 2000, "bulk-{k} did not converge");
    }
    assert!(
        net.stream_bytes > 0 && net.stream_bytes * 4 < full_state,
        "the exchange moved {} bytes; n1's whole state is about {full_state}",
        net.stream_bytes
    );
}

#[test]
fn a_graceful_leave_is_left_everywhere_and_a_restart_is_alive_again() {
    let mut net = Net::new(3);
    let now = net.now;
    net.nodes[2].as_mut().unwrap().leave(now);
    net.pump();
    net.nodes[2] = None;
    net.run(Duration::from_millis(100));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Left));
    assert_eq!(net.status(1, 2), Some(MemberStatus::Left));
    // The same node starts again (a later boot): alive, never "left".
    net.start(2, 2, Some(0));
    net.run(Duration::from_secs(2));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Alive));
    assert_eq!(net.status(1, 2), Some(MemberStatus::Alive));
}

#[test]
fn a_crash_is_failed_then_forgotten_after_reconnect_timeout() {
    let mut net = Net::new(3);
    net.nodes[2] = None;
    net.run(Duration::from_secs(20));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Failed));
    assert!(net.node(0).data("n2").is_some(), "last known state kept");
    net.run(Duration::from_secs(130));
    assert_eq!(net.status(0, 2), None, "reaped");
    assert!(net.events[0]
        .iter()
        .any(|e| matches!(e, Event::Forget { node } if node == "n2")));
}

/// A push datagram carrying one verdict, as first receivers pass it on.
fn verdict_word(v: wire::Verdict) -> Vec<u8> {
    wire::push_datagram(&wire::Push {
        verdicts: vec![v],
        relay: true,
        ..wire::Push::default()
    })
}

/// A push datagram carrying `id`'s word that it joined.
fn joined_word(id: NodeId) -> Vec<u8> {
    verdict_word(wire::Verdict::Joined(id))
}

/// How many pushes node `at` sends on when `bytes` arrive from node `from`.
fn pushes_passed_on(net: &mut Net, at: usize, from: usize, bytes: &[u8]) -> usize {
    let now = net.now;
    let node = net.nodes[at].as_mut().expect("running");
    while node.poll_transmit().is_some() {}
    node.handle_datagram(now, addr(from), bytes);
    let mut pushes = 0;
    while let Some(t) = node.poll_transmit() {
        if let Transmit::Datagram { bytes, .. } = t {
            pushes += usize::from(bytes.first() == Some(&wire::KIND_PUSH));
        }
    }
    pushes
}

#[test]
fn a_joiner_is_listed_everywhere_through_its_word_that_it_joined() {
    let mut net = Net::new(2);
    net.nodes.push(None);
    net.events.push(Vec::new());
    // n1 hears no SWIM at all: neither n0's gossip of the joiner nor the joiner's probes.
    net.lose = Box::new(|_, to, bytes| to == 1 && bytes.first() == Some(&wire::KIND_SWIM));
    net.start(2, 1, Some(0));
    assert_eq!(net.status(1, 2), Some(MemberStatus::Alive));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Alive));
}

#[test]
fn a_word_that_a_member_joined_is_stale_once_that_run_is_down() {
    let mut net = Net::new(3);
    let n2 = net.node(2).id().clone();
    net.nodes[2] = None;
    net.run(Duration::from_secs(20));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Failed));
    net.deliver(0, addr(1), &joined_word(n2));
    net.run(Duration::from_secs(2));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Failed));
    assert_eq!(net.status(1, 2), Some(MemberStatus::Failed));
}

#[test]
fn a_word_that_a_member_joined_goes_no_further_once_it_is_old_news() {
    let mut net = Net::new(3);
    let word = joined_word(net.node(2).id().clone());
    // Long after the join, members have forgotten having seen the word: if it comes round
    // again, it is not passed on (nor announced), or it would circle for ever.
    net.run(Duration::from_secs(30));
    assert_eq!(pushes_passed_on(&mut net, 0, 1, &word), 0);
    assert_eq!(net.status(0, 2), Some(MemberStatus::Alive));
}

/// When node 0 first lists node 2 as failed after node 2 crashes.
fn crash_declared(mut net: Net) -> Duration {
    let crash = net.now;
    net.nodes[2] = None;
    while net.status(0, 2) != Some(MemberStatus::Failed) {
        assert!(net.now - crash < Duration::from_secs(30), "never declared");
        net.run(Duration::from_millis(10));
    }
    net.now - crash
}

#[test]
fn the_last_check_before_a_verdict_does_not_delay_it() {
    let with = crash_declared(Net::new(3));
    let without = crash_declared(Net::new_with(3, |c| c.last_check = false));
    assert!(
        with <= without,
        "{with:?} with the last check, {without:?} without"
    );
}

#[test]
fn force_leave_turns_a_failed_member_left_cluster_wide() {
    let mut net = Net::new(3);
    net.nodes[2] = None;
    net.run(Duration::from_secs(20));
    assert!(net.force_leave(0, "n1").is_err(), "alive");
    net.force_leave(0, "n2").unwrap();
    assert_eq!(net.status(0, 2), Some(MemberStatus::Left));
    assert_eq!(net.status(1, 2), Some(MemberStatus::Left));
}

#[test]
fn a_force_leave_verdict_goes_no_further_once_it_is_old_news() {
    // Four members, so that node 1 has one to pass a verdict from node 0 on to (node 3).
    let mut net = Net::new(4);
    let n2 = net.node(2).id().clone();
    net.nodes[2] = None;
    net.run(Duration::from_secs(20));
    net.force_leave(0, "n2").unwrap();
    assert_eq!(net.status(1, 2), Some(MemberStatus::Left));
    // Members forget having seen the verdict (`recent::KEEP`): if it comes round again, it
    // changes nothing here and is not passed on, or it would circle for ever.
    net.run(Duration::from_secs(30));
    let word = verdict_word(wire::Verdict::ForceLeft(n2));
    assert_eq!(pushes_passed_on(&mut net, 1, 0, &word), 0);
    assert_eq!(net.status(1, 2), Some(MemberStatus::Left));
    // Nor a verdict about a member never heard of: there is nothing to force out here.
    let stranger = NodeId::new("n9", addr(9), 5);
    let word = verdict_word(wire::Verdict::ForceLeft(stranger));
    assert_eq!(pushes_passed_on(&mut net, 1, 0, &word), 0);
}

#[test]
fn a_restart_with_a_lower_boot_stamp_moves_above_what_peers_remember() {
    let mut net = Net::new(3);
    // A second run of n2 with a clock-based boot stamp of 9, then a crash: the others hold
    // n2#9 as failed.
    net.nodes[2] = None;
    net.start(2, 9, Some(0));
    net.run(Duration::from_secs(2));
    let before = net.node(2).id().boot();
    let old_version = net.node(2).version();
    net.nodes[2] = None;
    net.run(Duration::from_secs(20));
    assert_eq!(net.status(0, 2), Some(MemberStatus::Failed));
    // A run that remembers nothing and whose clock went back: boot 1, version 0.
    let mut cfg = config(2, 1);
    cfg.run = 77;
    let mut node = Node::new(cfg, net.now);
    node.publish(net.now, vec![svc("fresh", 1)]);
    node.join(net.now, addr(0));
    net.nodes[2] = Some(node);
    net.pump();
    net.run(Duration::from_secs(2));
    assert!(net.node(2).id().boot() > before);
    assert!(net.node(2).version() > old_version);
    for at in [0, 1] {
        assert_eq!(net.status(at, 2), Some(MemberStatus::Alive));
        let d = net.node(at).data("n2").unwrap();
        assert!(d.get(&EntryKey::Service("fresh".into())).is_some());
        assert!(
            d.get(&EntryKey::Service("web-2".into())).is_none(),
            "an entry of the earlier run survived"
        );
    }
}

#[test]
fn claims_far_ahead_are_refused_and_counted() {
    let mut net = Net::new(2);
    let forged = crate::gossip::wire::push_datagram(&crate::gossip::wire::Push {
        deltas: vec![crate::gossip::data::Delta {
            node: "n1".into(),
            run: 1001,
            from: 1 << 40,
            to: (1 << 40) + 1,
            full: false,
            entries: vec![crate::gossip::data::WireEntry {
                key: EntryKey::Service("evil".into()),
                version: (1 << 40) + 1,
                value: None,
            }],
        }],
        relay: true,
        ..Default::default()
    });
    let now = net.now;
    net.nodes[0]
        .as_mut()
        .unwrap()
        .handle_datagram(now, addr(1), &forged);
    assert_eq!(net.node(0).stats().implausible, 1);
    assert!(net.node(0).data("n1").unwrap().version < 1 << 40);
}

#[test]
fn a_member_that_missed_the_last_change_of_a_burst_gets_it_soon_after() {
    // n0 makes more changes at once than SWIM trailers announce. n2 misses the push of the
    // last one and its pulls are lost: no later change shows it the gap, and periodic
    // anti-entropy is at least 15 s away. A sync once the burst is over fetches it (and
    // every member makes one, but only one).
    let mut net = Net::new(3);
    // Past the sync a join schedules, so that only the burst can cause one.
    net.run(Duration::from_secs(5));
    const BURST: u16 = 40;
    let last = net.node(0).version() + u64::from(BURST);
    net.lose = Box::new(move |_, to, bytes| {
        use crate::gossip::wire::{parse_datagram, Datagram, KIND_PULL};
        if bytes[0] == KIND_PULL {
            return true;
        }
        to == 2
            && matches!(parse_datagram(bytes), Ok(Datagram::Push(p))
                if p.deltas.iter().any(|d| d.node == "n0" && d.to == last))
    });
    for k in 0..BURST {
        let now = net.now;
        net.nodes[0]
            .as_mut()
            .unwrap()
            .publish(now, vec![svc(&format!("burst-{k}"), 9000 + k)]);
        net.pump();
    }
    assert_eq!(net.node(0).version(), last);
    assert_eq!(net.node(1).data("n0").map(|d| d.version), Some(last));
    assert_eq!(net.node(2).data("n0").map(|d| d.version), Some(last - 1));
    let syncs = net.node(2).stats().syncs_started;
    // Announcements fall behind while the burst is in their window, then one sync.
    net.run(crate::gossip::recent::WINDOW + BURST_SETTLE + Duration::from_secs(1));
    assert_eq!(net.node(2).data("n0").map(|d| d.version), Some(last));
    assert_eq!(
        net.node(2).stats().syncs_started,
        syncs + 1,
        "one sync for the burst"
    );
}
