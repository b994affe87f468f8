//! A fleet: N hosts, each publishing its node info and S services, formed by joins, and
//! the measurements the issues ask of it — how fast one change reaches everyone, how fast
//! and how surely a crash is detected, what gossip costs idle and under churn, what a
//! joiner costs.

use crate::cluster::{Seen, Sim};
use crate::net::NetConfig;
use muster_proto::gossip::{EntryKey, Event, Name, NodeInfo, Value};
use muster_proto::model::{MemberStatus, Service, Weights};
use rand10::rngs::StdRng;
use rand10::{RngExt, SeedableRng};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct FleetConfig {
    pub nodes: usize,
    pub services: usize,
    pub loss: f64,
    pub seed: u64,
    pub lifeguard: bool,
    /// Ask a suspect directly before declaring it down.
    pub last_check: bool,
    pub fanout: usize,
    /// Hosts start this far apart, each joining a random host already up.
    pub join_every: Duration,
}

impl FleetConfig {
    pub fn new(nodes: usize, services: usize, loss: f64, seed: u64) -> FleetConfig {
        FleetConfig {
            nodes,
            services,
            loss,
            seed,
            lifeguard: true,
            last_check: true,
            fanout: 6,
            join_every: Duration::from_millis(10),
        }
    }
}

pub fn host_name(i: usize) -> String {
    format!("node-{i}")
}

pub fn service(i: usize, k: usize, gen: u64) -> Service {
    Service {
        id: format!("svc-{k}"),
        name: format!("service-{k}"),
        tags: vec![format!("v{gen}")],
        address: String::new(),
        port: 9000 + k as u16,
        meta: BTreeMap::from([("host".to_string(), format!("{i}"))]),
        weights: Weights::default(),
        enable_tag_override: false,
    }
}

/// What host `i` publishes at start: its node info and `services` services.
pub fn host_state(i: usize, services: usize) -> Vec<(EntryKey, Option<Value>)> {
    let mut v = vec![(
        EntryKey::Node,
        Some(Value::Node(Arc::new(NodeInfo {
            datacenter: "dc1".into(),
            address: crate::cluster::addr_of(i + 1).ip(),
            meta: BTreeMap::new(),
        }))),
    )];
    for k in 0..services {
        let s = service(i, k, 0);
        v.push((
            EntryKey::Service(s.id.as_str().into()),
            Some(Value::Service(Arc::new(s))),
        ));
    }
    v
}

/// One change being followed to every host.
#[derive(Clone, Debug)]
pub struct Watch {
    pub node: Name,
    pub key: EntryKey,
    pub version: u64,
    pub start: Duration,
    /// When each host had it (the author: at once).
    pub arrived: Vec<Option<Duration>>,
}

/// What the nodes reported, as it happened.
#[derive(Default)]
pub struct Log {
    /// (when, observer, subject) of every "failed" verdict.
    pub failed: Vec<(Duration, usize, Name)>,
    /// The same, for members that were up and reachable at the time: false positives.
    pub false_failed: Vec<(Duration, usize, Name)>,
    pub watch: Option<Watch>,
    /// (when, host, reason) of every stamp move.
    pub stamps: Vec<(Duration, usize, &'static str)>,
}

pub struct Fleet {
    pub sim: Sim,
    pub cfg: FleetConfig,
    pub log: Rc<RefCell<Log>>,
    rng: StdRng,
}

impl Fleet {
    pub fn new(cfg: FleetConfig) -> Fleet {
        let mut sim = Sim::new(cfg.seed, NetConfig::default().with_loss(cfg.loss));
        sim.template.lifeguard = cfg.lifeguard;
        sim.template.last_check = cfg.last_check;
        sim.template.fanout = cfg.fanout;
        for i in 0..cfg.nodes {
            sim.add_host(&host_name(i), host_state(i, cfg.services));
        }
        let log = Rc::new(RefCell::new(Log::default()));
        let l = log.clone();
        sim.observe(move |sim, seen| observe(&mut l.borrow_mut(), sim, seen));
        Fleet {
            rng: StdRng::seed_from_u64(cfg.seed ^ 0x5eed),
            sim,
            cfg,
            log,
        }
    }

    /// Starts every host, one every `join_every`, each joining a random host already up,
    /// and runs until every host knows every other as alive with its whole state (or
    /// `limit` passes). Returns the time formation took.
    pub fn form(&mut self, limit: Duration) -> Option<Duration> {
        let start = self.sim.now;
        self.sim.start(0, None);
        for i in 1..self.cfg.nodes {
            self.sim.run_for(self.cfg.join_every);
            let j = self.rng.random_range(0..i);
            self.sim.start(i, Some(j));
        }
        self.run_until_converged(start + limit).map(|t| t - start)
    }

    /// A fleet started the way an operator's script or a benchmark starts one: host 0 up,
    /// then every other host joining host 0 within a few milliseconds (`spacing` apart).
    /// Returns how long after the first join every host listed every other as alive (or
    /// None if that took longer than `limit`).
    pub fn form_through_one(&mut self, spacing: Duration, limit: Duration) -> Option<Duration> {
        self.sim.start(0, None);
        self.sim.run_for(Duration::from_millis(100));
        let start = self.sim.now;
        for i in 1..self.cfg.nodes {
            self.sim.start(i, Some(0));
            self.sim.run_for(spacing);
        }
        loop {
            if self.all_listed() {
                return Some(self.sim.now - start);
            }
            if self.sim.now - start >= limit {
                return None;
            }
            self.sim.run_for(Duration::from_millis(10));
        }
    }

    /// Every running host lists every other running host as alive (their state aside).
    pub fn all_listed(&self) -> bool {
        let hosts = &self.sim.hosts;
        hosts.iter().filter_map(|h| h.node.as_ref()).all(|n| {
            hosts.iter().all(|x| {
                x.node.is_none()
                    || x.name == *n.name()
                    || n.member(&x.name)
                        .is_some_and(|m| m.status == MemberStatus::Alive)
            })
        })
    }

    /// Starts every host at once from a formed view of the fleet (every member and its
    /// state), as after formation, without replaying N whole-catalog joins: the way to set
    /// up thousands of nodes in one process. See `Node::warm_start`.
    pub fn form_warm(&mut self) {
        let n = self.cfg.nodes;
        for i in 0..n {
            self.sim.start(i, None);
        }
        let view: Vec<(
            muster_proto::gossip::NodeId,
            Arc<muster_proto::gossip::NodeData>,
        )> = self
            .sim
            .hosts
            .iter()
            .filter_map(|h| h.node.as_ref())
            .map(|n| (n.id().clone(), Arc::new(n.own_data().clone())))
            .collect();
        for i in 0..n {
            self.sim.warm_start(i, view.clone());
        }
    }

    /// Runs until converged (checking every 100 ms); returns when it was.
    pub fn run_until_converged(&mut self, limit: Duration) -> Option<Duration> {
        loop {
            if self.converged() {
                return Some(self.sim.now);
            }
            if self.sim.now >= limit {
                return None;
            }
            self.sim.run_for(Duration::from_millis(100));
        }
    }

    /// Every running host lists every other running host as alive and holds exactly its
    /// current state.
    pub fn converged(&self) -> bool {
        let hosts = &self.sim.hosts;
        let up: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].running()).collect();
        for &j in &up {
            let Some(nj) = hosts[j].node.as_ref() else {
                continue;
            };
            for &x in &up {
                if x == j {
                    continue;
                }
                let Some(nx) = hosts[x].node.as_ref() else {
                    continue;
                };
                let name = &hosts[x].name;
                if nj
                    .member(name)
                    .is_none_or(|m| m.status != MemberStatus::Alive)
                {
                    return false;
                }
                let theirs = nx.own_data();
                match nj.data(name) {
                    Some(d) if d.stamp() == theirs.stamp() && d.is_settled() => {}
                    _ => return false,
                }
            }
        }
        true
    }

    /// Whether `host` lists every other running host as alive and holds its current state.
    pub fn holds_all(&self, host: usize) -> bool {
        let hosts = &self.sim.hosts;
        let Some(n) = hosts[host].node.as_ref() else {
            return false;
        };
        hosts.iter().enumerate().all(|(x, hx)| {
            x == host
                || hx.node.as_ref().is_none_or(|nx| {
                    n.member(&hx.name)
                        .is_some_and(|m| m.status == MemberStatus::Alive)
                        && n.data(&hx.name)
                            .is_some_and(|d| d.stamp() == nx.own_data().stamp() && d.is_settled())
                })
        })
    }

    /// Every host's member list and state agree with the truth, in detail (slow: tests).
    pub fn check_exact(&self) -> Result<(), String> {
        let hosts = &self.sim.hosts;
        for (j, hj) in hosts.iter().enumerate() {
            let Some(nj) = hj.node.as_ref() else { continue };
            for (x, hx) in hosts.iter().enumerate() {
                if x == j {
                    continue;
                }
                let view = nj.member(&hx.name);
                match &hx.node {
                    Some(nx) => {
                        if view
                            .as_ref()
                            .is_none_or(|v| v.status != MemberStatus::Alive)
                        {
                            return Err(format!(
                                "{} lists {} as {:?}",
                                hj.name,
                                hx.name,
                                view.map(|v| v.status)
                            ));
                        }
                        let want: Vec<_> = nx.own_data().values().collect();
                        let have: Vec<_> = nj
                            .data(&hx.name)
                            .map(|d| d.values().collect())
                            .unwrap_or_default();
                        if want != have {
                            return Err(format!("{} holds another state of {}", hj.name, hx.name));
                        }
                    }
                    None => {
                        if view.as_ref().is_some_and(|v| v.served && !v.stale) {
                            return Err(format!("{} still serves stopped {}", hj.name, hx.name));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes one change (a new tag on a service) on `host` and follows it: returns, for
    /// every other running host, how long it took to arrive (None: not within `limit`).
    pub fn spread(&mut self, host: usize, limit: Duration) -> Vec<Option<Duration>> {
        let k = self.rng.random_range(0..self.cfg.services.max(1));
        let gen = self.rng.random::<u32>() as u64 + 1;
        let svc = service(host, k, gen);
        let key = EntryKey::Service(svc.id.as_str().into());
        let version = self.sim.hosts[host]
            .node
            .as_ref()
            .map_or(0, |n| n.version() + 1);
        let start = self.sim.now;
        let n = self.sim.hosts.len();
        self.log.borrow_mut().watch = Some(Watch {
            node: self.sim.hosts[host].name.clone(),
            key: key.clone(),
            version,
            start,
            arrived: vec![None; n],
        });
        self.sim
            .publish(host, vec![(key, Some(Value::Service(Arc::new(svc))))]);
        let expected = (0..n)
            .filter(|&i| i != host && self.sim.hosts[i].running())
            .count();
        let deadline = start + limit;
        while self.sim.now < deadline {
            self.sim.run_for(Duration::from_millis(10));
            let got = self
                .log
                .borrow()
                .watch
                .as_ref()
                .map_or(0, |w| w.arrived.iter().filter(|a| a.is_some()).count());
            if got >= expected {
                break;
            }
        }
        let w = self.log.borrow_mut().watch.take();
        let w = w.expect("watch set above");
        (0..n)
            .filter(|&i| i != host && self.sim.hosts[i].running())
            .map(|i| w.arrived[i].map(|t| t - start))
            .collect()
    }

    /// Total bytes and datagrams sent by running hosts, and change-carrying datagrams.
    pub fn counters(&self) -> (u64, u64, u64) {
        let mut bytes = 0;
        let mut dgrams = 0;
        let mut pushes = 0;
        for h in &self.sim.hosts {
            bytes += h.bytes_out;
            dgrams += h.datagrams_out;
            if let Some(n) = &h.node {
                pushes += n.stats().push_datagrams + n.stats().pull_datagrams;
            }
        }
        (bytes, dgrams, pushes)
    }

    /// `rate` changes per second, cluster-wide, for `d`: returns (changes made, bytes per
    /// host per second, change datagrams per change).
    pub fn churn(&mut self, rate: f64, d: Duration) -> (u64, f64, f64) {
        let (b0, _, p0) = self.counters();
        let end = self.sim.now + d;
        let step = Duration::from_secs_f64(1.0 / rate);
        let mut changes = 0;
        while self.sim.now < end {
            let host = self.rng.random_range(0..self.sim.hosts.len());
            if self.sim.hosts[host].running() && self.cfg.services > 0 {
                let k = self.rng.random_range(0..self.cfg.services);
                let svc = service(host, k, self.rng.random::<u32>() as u64 + 1);
                let key = EntryKey::Service(svc.id.as_str().into());
                self.sim
                    .publish(host, vec![(key, Some(Value::Service(Arc::new(svc))))]);
                changes += 1;
            }
            self.sim.run_for(step);
        }
        let (b1, _, p1) = self.counters();
        let running = self.sim.hosts.iter().filter(|h| h.running()).count().max(1);
        (
            changes,
            (b1 - b0) as f64 / running as f64 / d.as_secs_f64(),
            (p1 - p0) as f64 / changes.max(1) as f64,
        )
    }

    /// Bytes per running host per second over `d` with no changes.
    pub fn idle_bytes(&mut self, d: Duration) -> f64 {
        let (b0, _, _) = self.counters();
        self.sim.run_for(d);
        let (b1, _, _) = self.counters();
        let running = self.sim.hosts.iter().filter(|h| h.running()).count().max(1);
        (b1 - b0) as f64 / running as f64 / d.as_secs_f64()
    }

    /// Crashes `victim` and returns how long until the first and the last other running
    /// host declared it failed (None: not within `limit`).
    pub fn crash_detection(
        &mut self,
        victim: usize,
        limit: Duration,
    ) -> (Option<Duration>, Option<Duration>) {
        let start = self.sim.now;
        let name = self.sim.hosts[victim].name.clone();
        self.sim.crash(victim);
        let others: Vec<usize> = (0..self.sim.hosts.len())
            .filter(|&i| i != victim && self.sim.hosts[i].running())
            .collect();
        let mut first = None;
        while self.sim.now < start + limit {
            self.sim.run_for(Duration::from_millis(50));
            let log = self.log.borrow();
            let seen: Vec<(Duration, usize)> = log
                .failed
                .iter()
                .filter(|(t, _, n)| *t >= start && *n == name)
                .map(|(t, o, _)| (*t, *o))
                .collect();
            if first.is_none() {
                first = seen.iter().map(|(t, _)| *t - start).min();
            }
            let all = others.iter().all(|o| seen.iter().any(|(_, s)| s == o));
            if all {
                let last = seen.iter().map(|(t, _)| *t - start).max();
                return (first, last);
            }
        }
        (first, None)
    }

    /// Rough resident memory of the whole process, bytes.
    pub fn rss() -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }
}

fn observe(log: &mut Log, sim: &Sim, seen: Seen<'_>) {
    match seen.event {
        Event::Member(v) if v.status == MemberStatus::Failed => {
            log.failed.push((seen.at, seen.host, v.name.clone()));
            let subject = sim.hosts.iter().find(|h| h.name == v.name);
            let reachable =
                subject.is_some_and(|s| s.running() && s.group == sim.hosts[seen.host].group);
            if reachable {
                log.false_failed.push((seen.at, seen.host, v.name.clone()));
            }
        }
        Event::Data { node, changes } => {
            if let Some(w) = log.watch.as_mut() {
                if w.node == *node && w.arrived[seen.host].is_none() {
                    let has = changes.iter().any(|(k, _)| *k == w.key)
                        && sim.hosts[seen.host]
                            .node
                            .as_ref()
                            .and_then(|n| n.data(node))
                            .and_then(|d| d.entry(&w.key))
                            .is_some_and(|e| e.version >= w.version);
                    if has {
                        w.arrived[seen.host] = Some(seen.at);
                    }
                }
            }
        }
        Event::Stamp { reason, .. } => log.stamps.push((seen.at, seen.host, reason)),
        _ => {}
    }
}
