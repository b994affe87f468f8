//! A whole cluster in one process: 200 members running foca with muster's identity,
//! broadcast handler, record chunking and push-pull, over a simulated network that loses
//! 10% of datagrams, on a virtual clock with a seeded RNG (so every run is the same run).
//!
//! It shows that every member converges on every member's record — both the records
//! published at join and a later change of every record — and that a member that stops is
//! declared down by every other member.

use foca::{AccumulatingRuntime, OwnedNotification, PostcardCodec, Timer};
use muster_proto::gossip::message::split_record;
use muster_proto::gossip::{
    swim_config, CatalogBroadcasts, Delivery, NodeId, PushPull, SharedLedger, Swim,
};
use muster_proto::model::{MemberStatus, NodeRecord, Service};
use rand10::rngs::StdRng;
use rand10::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;

const NODES: usize = 200;
const LOSS: f64 = 0.10;
const SEED: u64 = 0x5eed_2026;
/// Every member changes its record at this time.
const UPDATE_AT_MS: u64 = 20_000;
/// This member is stopped (crashes: no leave) at this time.
const VICTIM: usize = 7;
const STOP_AT_MS: u64 = 25_000;
const END_MS: u64 = 60_000;
/// Anti-entropy period per member (push-pull over a reliable stream).
const PUSH_PULL_MS: u64 = 20_000;
/// Eager pushes of news, as the agent makes them.
const EAGER_ROUNDS: usize = 2;

enum Event {
    Timer(usize, Timer<NodeId>),
    Packet(usize, Vec<u8>),
    Join(usize),
    PushPull(usize),
    Update(usize),
    Stop(usize),
}

struct Node {
    swim: Swim<StdRng>,
    ledger: SharedLedger,
    records: HashMap<String, NodeRecord>,
    down: HashSet<NodeId>,
    running: bool,
    started: bool,
}

struct Sim {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Event>,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    net: StdRng,
    sent: u64,
    lost: u64,
    /// When every running member first held version 2 of every record.
    converged_at: Option<u64>,
    /// When every other running member first declared the victim down.
    detected_at: Option<u64>,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 8301))
}

fn record(i: usize, version: u64, services: usize) -> NodeRecord {
    let mut r = NodeRecord::new(format!("node-{i}"), "dc1", addr(i).ip());
    r.version = version;
    for s in 0..services {
        let id = format!("svc-{s}");
        r.services.insert(
            id.clone(),
            Service {
                id,
                name: format!("service-{s}"),
                tags: vec![format!("v{version}")],
                address: String::new(),
                port: 9000 + s as u16,
                meta: BTreeMap::from([("owner".to_string(), format!("team-{i}"))]),
                weights: Default::default(),
                enable_tag_override: false,
            },
        );
    }
    r
}

impl Sim {
    fn new() -> Sim {
        let mut seeds = StdRng::seed_from_u64(SEED);
        let mut nodes = Vec::new();
        let mut by_addr = HashMap::new();
        for i in 0..NODES {
            let id = NodeId::new(format!("node-{i}"), addr(i), 1);
            let ledger = SharedLedger::default();
            let swim = Swim::with_custom_broadcast(
                id,
                swim_config(NODES),
                StdRng::seed_from_u64(seeds.random()),
                PostcardCodec,
                CatalogBroadcasts::new(ledger.clone()),
            );
            by_addr.insert(addr(i), i);
            // Member 3 has a record too large for one packet, so it travels in parts.
            let services = if i == 3 { 40 } else { 2 };
            let own = record(i, 1, services);
            nodes.push(Node {
                swim,
                ledger,
                records: HashMap::from([(own.name.clone(), own)]),
                down: HashSet::new(),
                running: false,
                started: false,
            });
        }
        let mut sim = Sim {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes,
            by_addr,
            net: StdRng::seed_from_u64(seeds.random()),
            sent: 0,
            lost: 0,
            converged_at: None,
            detected_at: None,
        };
        // Members start one after another over 4 s, each joining a random earlier one.
        for i in 0..NODES {
            sim.at(i as u64 * 20, Event::Join(i));
            sim.at(UPDATE_AT_MS + i as u64 * 7, Event::Update(i));
        }
        sim.at(STOP_AT_MS, Event::Stop(VICTIM));
        sim
    }

    fn at(&mut self, t: u64, e: Event) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq)));
        self.events.insert(self.seq, e);
    }

    /// Carries out what foca asked for during one call on member `i`.
    fn flush(&mut self, i: usize, mut rt: AccumulatingRuntime<NodeId>) {
        while let Some((to, data)) = rt.to_send() {
            self.sent += 1;
            if self.net.random_bool(LOSS) {
                self.lost += 1;
                continue;
            }
            let Some(&j) = self.by_addr.get(&to.addr) else {
                continue;
            };
            let latency = self.net.random_range(1..8);
            self.at(self.now + latency, Event::Packet(j, data.to_vec()));
        }
        while let Some((after, timer)) = rt.to_schedule() {
            self.at(self.now + after.as_millis() as u64, Event::Timer(i, timer));
        }
        while let Some(n) = rt.to_notify() {
            if let OwnedNotification::MemberDown(id) = n {
                self.nodes[i].down.insert(id);
            }
        }
        let node = &mut self.nodes[i];
        let deliveries = node.ledger.lock().drain();
        let news = !deliveries.is_empty();
        for d in deliveries {
            if let Delivery::Record(r) = d {
                apply(&mut node.records, r);
            }
        }
        if news {
            // As the agent does: forward news at once, in two eager pushes.
            let mut rt = AccumulatingRuntime::new();
            for _ in 0..EAGER_ROUNDS {
                let _ = self.nodes[i].swim.broadcast(&mut rt);
            }
            self.flush(i, rt);
        }
    }

    fn publish(&mut self, i: usize, rec: &NodeRecord) {
        let mut rt = AccumulatingRuntime::new();
        for item in split_record(rec).expect("record fits") {
            self.nodes[i]
                .swim
                .add_broadcast(&item)
                .expect("own item accepted");
        }
        for _ in 0..EAGER_ROUNDS {
            let _ = self.nodes[i].swim.broadcast(&mut rt);
        }
        self.flush(i, rt);
    }

    fn state(&self, i: usize) -> PushPull {
        let n = &self.nodes[i];
        PushPull {
            from: n.swim.identity().clone(),
            join: false,
            members: n.swim.iter_membership_state().cloned().collect(),
            records: n
                .records
                .values()
                .map(|r| (r.clone(), MemberStatus::Alive))
                .collect(),
        }
    }

    /// Merges a full state received by member `i` (after a trip through the codec).
    fn merge(&mut self, i: usize, state: &PushPull) {
        let bytes = state.encode().expect("state encodes");
        let state = PushPull::decode(&bytes).expect("state decodes");
        let mut rt = AccumulatingRuntime::new();
        let node = &mut self.nodes[i];
        for (r, _) in state.records {
            node.ledger.lock().note_version(&r.name, r.version);
            apply(&mut node.records, r);
        }
        let _ = node
            .swim
            .apply_many(state.members.into_iter(), true, &mut rt);
        self.flush(i, rt);
    }

    fn push_pull(&mut self, i: usize, j: usize) {
        let mine = self.state(i);
        self.merge(j, &mine);
        let theirs = self.state(j);
        self.merge(i, &theirs);
    }

    fn run(&mut self) {
        while let Some(Reverse((t, seq))) = self.queue.pop() {
            if t > END_MS {
                break;
            }
            self.now = t;
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            match ev {
                Event::Join(i) => {
                    self.nodes[i].running = true;
                    self.nodes[i].started = true;
                    let own = self.nodes[i].records[&format!("node-{i}")].clone();
                    self.publish(i, &own);
                    if i > 0 {
                        let seed = self.net.random_range(0..i);
                        let mut rt = AccumulatingRuntime::new();
                        let target = self.nodes[seed].swim.identity().clone();
                        let _ = self.nodes[i].swim.announce(target, &mut rt);
                        self.flush(i, rt);
                        if self.nodes[seed].running {
                            self.push_pull(i, seed);
                            // As the agent does: the member a joiner pushed its state to
                            // spreads the joiner's record for it.
                            let joiner = self.nodes[i].records[&format!("node-{i}")].clone();
                            self.publish(seed, &joiner);
                        }
                    }
                    let first = PUSH_PULL_MS + self.net.random_range(0..PUSH_PULL_MS);
                    self.at(self.now + first, Event::PushPull(i));
                }
                Event::Timer(i, timer) => {
                    if !self.nodes[i].running {
                        continue;
                    }
                    let mut rt = AccumulatingRuntime::new();
                    let _ = self.nodes[i].swim.handle_timer(timer, &mut rt);
                    self.flush(i, rt);
                }
                Event::Packet(i, data) => {
                    if !self.nodes[i].running {
                        continue;
                    }
                    let mut rt = AccumulatingRuntime::new();
                    // Malformed or stale packets are errors foca reports; the sim ignores
                    // them like the agent does (after counting).
                    let _ = self.nodes[i].swim.handle_data(&data, &mut rt);
                    self.flush(i, rt);
                }
                Event::PushPull(i) => {
                    if !self.nodes[i].running {
                        continue;
                    }
                    let members: Vec<SocketAddr> = self.nodes[i]
                        .swim
                        .iter_members()
                        .map(|m| m.id().addr)
                        .collect();
                    if !members.is_empty() {
                        let pick = members[self.net.random_range(0..members.len())];
                        if let Some(&j) = self.by_addr.get(&pick) {
                            if self.nodes[j].running {
                                self.push_pull(i, j);
                            }
                        }
                    }
                    self.at(self.now + PUSH_PULL_MS, Event::PushPull(i));
                }
                Event::Update(i) => {
                    if !self.nodes[i].running {
                        continue;
                    }
                    let services = if i == 3 { 41 } else { 3 };
                    let rec = record(i, 2, services);
                    self.nodes[i].records.insert(rec.name.clone(), rec.clone());
                    self.publish(i, &rec);
                }
                Event::Stop(i) => self.nodes[i].running = false,
            }
            self.observe();
        }
    }

    /// Notes when the update has reached everyone and when the crash has been detected.
    fn observe(&mut self) {
        if self.now < UPDATE_AT_MS || !self.seq.is_multiple_of(512) {
            return;
        }
        if self.converged_at.is_none()
            && self.nodes.iter().filter(|n| n.running).all(|n| {
                (0..NODES).all(|k| {
                    n.records
                        .get(&format!("node-{k}"))
                        .is_some_and(|r| r.version == 2)
                })
            })
        {
            self.converged_at = Some(self.now);
        }
        let victim = addr(VICTIM);
        if self.now > STOP_AT_MS
            && self.detected_at.is_none()
            && self
                .nodes
                .iter()
                .filter(|n| n.running)
                .all(|n| n.down.iter().any(|d| d.addr == victim))
        {
            self.detected_at = Some(self.now);
        }
    }

    /// Members that do not yet hold every member's latest record.
    fn lagging(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.running)
            .filter(|n| {
                (0..NODES).any(|k| {
                    n.records
                        .get(&format!("node-{k}"))
                        .is_none_or(|r| *r != record(k, 2, if k == 3 { 41 } else { 3 }))
                })
            })
            .count()
    }
}

fn apply(records: &mut HashMap<String, NodeRecord>, r: NodeRecord) {
    match records.get(&r.name) {
        Some(old) if old.version >= r.version => {}
        _ => {
            records.insert(r.name.clone(), r);
        }
    }
}

#[test]
fn two_hundred_members_converge_with_ten_percent_loss() {
    let mut sim = Sim::new();
    sim.run();
    assert!(sim.nodes.iter().all(|n| n.started));
    let loss = sim.lost as f64 / sim.sent as f64;
    assert!(
        (0.08..0.12).contains(&loss),
        "the network dropped {loss:.3} of {} datagrams",
        sim.sent
    );
    assert_eq!(sim.lagging(), 0, "members missing records at the end");

    // Every running member knows every other running member as active, and none of them
    // believes the victim is alive.
    let victim = sim.nodes[VICTIM].swim.identity().clone();
    for (i, n) in sim.nodes.iter().enumerate().filter(|(_, n)| n.running) {
        let active: HashSet<SocketAddr> = n.swim.iter_members().map(|m| m.id().addr).collect();
        assert!(
            !active.contains(&victim.addr),
            "node-{i} still thinks the stopped member is up"
        );
        assert!(
            n.down.iter().any(|d| d.addr == victim.addr),
            "node-{i} never saw the stopped member go down"
        );
        assert_eq!(
            active.len(),
            NODES - 2,
            "node-{i} sees {} active members",
            active.len()
        );
    }
    let converged = sim.converged_at.expect("the update reached everyone");
    let detected = sim.detected_at.expect("everyone detected the crash");
    println!(
        "{NODES} members, {:.1}% loss: update everywhere after {} ms, crash detected everywhere after {} ms, {} datagrams",
        loss * 100.0,
        converged - UPDATE_AT_MS - (NODES as u64 - 1) * 7,
        detected - STOP_AT_MS,
        sim.sent
    );
}
