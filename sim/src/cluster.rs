//! A whole cluster in one process: hosts running muster's gossip [`Node`] (the agent's
//! very code) over the simulated network, on a virtual clock, driven by one event queue.
//!
//! Everything random comes from one seed, and events at the same instant run in the order
//! they were queued, so a seed always gives the same run; [`Sim::trace`] folds every event
//! into a hash that two runs can compare.
//!
//! Hosts can be started, crashed (silence, nothing said), restarted (a new run of the same
//! name and address, with or without what its data directory remembered), made to leave
//! gracefully, cut apart into partition groups and slowed down.

use crate::net::NetConfig;
use muster_proto::gossip::node::Transmit;
use muster_proto::gossip::{EntryKey, Event, Name, Node, NodeConfig, Value};
use rand10::rngs::StdRng;
use rand10::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

/// What a host remembers across a restart when it has a data directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Persisted {
    pub boot: u64,
    pub version: u64,
}

/// One simulated machine.
pub struct Host {
    pub name: Name,
    pub addr: SocketAddr,
    /// The running node, if the host is up.
    pub node: Option<Node>,
    /// Bumped at every (re)start, so events meant for an earlier run are dropped.
    pub run: u32,
    /// Partition group: datagrams and streams only flow within a group.
    pub group: u32,
    /// Slow host: every event it receives is handled up to this much late.
    pub lag: Option<Duration>,
    /// Whether a restart keeps what the data directory remembers.
    pub data_dir: bool,
    pub persisted: Persisted,
    /// The boot stamp a restart without a data directory starts from (an agent takes it
    /// from its clock; a clock set back gives a lower one).
    pub boot_guess: u64,
    /// What the host publishes at every start (its node info and services).
    pub services: Vec<(EntryKey, Option<Value>)>,
    wake_at: Option<Duration>,
    /// Bytes this host sent, datagrams and streams.
    pub bytes_out: u64,
    pub datagrams_out: u64,
}

impl Host {
    pub fn running(&self) -> bool {
        self.node.is_some()
    }
}

enum Ev {
    Wake {
        host: usize,
        run: u32,
        lagged: bool,
    },
    Datagram {
        to: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
        lagged: bool,
    },
    StreamRequest {
        server: usize,
        client: usize,
        client_run: u32,
        id: u64,
        bytes: Vec<u8>,
        lagged: bool,
    },
    StreamReply {
        client: usize,
        run: u32,
        id: u64,
        result: Result<Vec<u8>, String>,
        lagged: bool,
    },
    Join {
        host: usize,
        run: u32,
    },
}

/// Called with every event a node reports.
type Observer = Box<dyn FnMut(&Sim, Seen<'_>)>;

/// Something a host's node reported, as the observer sees it.
pub struct Seen<'a> {
    pub at: Duration,
    pub host: usize,
    pub event: &'a Event,
}

pub struct Sim {
    pub now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    events: rustc_hash::FxHashMap<u64, Ev>,
    pub hosts: Vec<Host>,
    by_addr: rustc_hash::FxHashMap<SocketAddr, usize>,
    pub net: NetConfig,
    rng: StdRng,
    seeds: StdRng,
    /// Folded hash of every event handled.
    pub trace: u64,
    /// Settings every node starts from (name, address, boot, seed are per host).
    pub template: NodeConfig,
    /// Called with every event a node reports.
    observer: Option<Observer>,
    /// Events handled.
    pub handled: u64,
}

pub fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8301))
}

impl Sim {
    pub fn new(seed: u64, net: NetConfig) -> Sim {
        let mut seeds = StdRng::seed_from_u64(seed);
        Sim {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Default::default(),
            hosts: Vec::new(),
            by_addr: Default::default(),
            net,
            rng: StdRng::seed_from_u64(seeds.random()),
            seeds,
            trace: 0,
            template: NodeConfig::new("template", addr_of(0)),
            observer: None,
            handled: 0,
        }
    }

    pub fn observe(&mut self, f: impl FnMut(&Sim, Seen<'_>) + 'static) {
        self.observer = Some(Box::new(f));
    }

    /// Adds a host (not started). Returns its index.
    pub fn add_host(&mut self, name: &str, services: Vec<(EntryKey, Option<Value>)>) -> usize {
        let i = self.hosts.len();
        let addr = addr_of(i + 1);
        self.by_addr.insert(addr, i);
        self.hosts.push(Host {
            name: name.into(),
            addr,
            node: None,
            run: 0,
            group: 0,
            lag: None,
            data_dir: false,
            persisted: Persisted::default(),
            boot_guess: 1,
            services,
            wake_at: None,
            bytes_out: 0,
            datagrams_out: 0,
        });
        i
    }

    fn push(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn fold(&mut self, parts: &[u64]) {
        let mut buf = Vec::with_capacity(8 * (parts.len() + 1));
        buf.extend_from_slice(&self.trace.to_le_bytes());
        for p in parts {
            buf.extend_from_slice(&p.to_le_bytes());
        }
        self.trace = xxh3_64(&buf);
    }

    /// Starts (or restarts) a host: a new run of its node, which publishes its services and
    /// joins through `join` (a host index) if given.
    pub fn start(&mut self, host: usize, join: Option<usize>) {
        let seed: u64 = self.seeds.random();
        let run_id: u64 = self.seeds.random::<u64>() | 1;
        let h = &mut self.hosts[host];
        h.run += 1;
        let (boot, version) = if h.data_dir && h.persisted.boot > 0 {
            (h.persisted.boot + 1, h.persisted.version)
        } else {
            (h.boot_guess.max(1), 0)
        };
        let mut cfg = self.template.clone();
        cfg.name = h.name.clone();
        cfg.gossip_addr = h.addr;
        cfg.boot = boot;
        cfg.version = version;
        cfg.run = run_id;
        cfg.seed = seed;
        h.persisted.boot = boot;
        let mut node = Node::new(cfg, self.now);
        node.publish(self.now, h.services.clone());
        h.node = Some(node);
        h.wake_at = None;
        if let Some(j) = join {
            let to = self.hosts[j].addr;
            if let Some(n) = self.hosts[host].node.as_mut() {
                n.join(self.now, to);
            }
        }
        self.flush(host);
    }

    /// Asks a host to join through another at `at`.
    pub fn join_at(&mut self, at: Duration, host: usize) {
        let run = self.hosts[host].run;
        self.push(at, Ev::Join { host, run });
    }

    /// Stops a host without a word (a crash, a power cut): its data directory keeps only
    /// what was written before (the boot stamp at start, the version at the last clean stop).
    pub fn crash(&mut self, host: usize) {
        let h = &mut self.hosts[host];
        h.node = None;
        h.wake_at = None;
    }

    /// Stops a host after it announced its leave; a data directory keeps its stamps.
    pub fn leave(&mut self, host: usize) {
        let now = self.now;
        if let Some(n) = self.hosts[host].node.as_mut() {
            n.leave(now);
        }
        self.flush(host);
        let h = &mut self.hosts[host];
        if let Some(n) = h.node.take() {
            h.persisted = Persisted {
                boot: n.id().boot(),
                version: n.version(),
            };
        }
        h.wake_at = None;
    }

    /// Gives a host a saved view of the cluster (see `Node::warm_start`).
    pub fn warm_start(
        &mut self,
        host: usize,
        view: Vec<(
            muster_proto::gossip::NodeId,
            std::sync::Arc<muster_proto::gossip::NodeData>,
        )>,
    ) {
        let now = self.now;
        if let Some(n) = self.hosts[host].node.as_mut() {
            n.warm_start(now, view);
        }
        self.flush(host);
    }

    /// Publishes a change on a host.
    pub fn publish(&mut self, host: usize, changes: Vec<(EntryKey, Option<Value>)>) {
        let now = self.now;
        if let Some(n) = self.hosts[host].node.as_mut() {
            n.publish(now, changes);
        }
        self.flush(host);
    }

    /// Runs events until the clock reaches `until`.
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            let Some(ev) = self.events.remove(&seq) else {
                continue;
            };
            self.now = at;
            self.handled += 1;
            self.dispatch(ev);
        }
        self.now = until;
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Delays an event meant for a slow host (once); true if it was delayed.
    fn lag(&mut self, host: usize, lagged: bool) -> Option<Duration> {
        if lagged {
            return None;
        }
        let max = self.hosts[host].lag?;
        Some(Duration::from_nanos(
            self.rng.random_range(0..=max.as_nanos() as u64),
        ))
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Wake { host, run, lagged } => {
                if self.hosts[host].run != run || !self.hosts[host].running() {
                    return;
                }
                if let Some(d) = self.lag(host, lagged) {
                    self.push(
                        self.now + d,
                        Ev::Wake {
                            host,
                            run,
                            lagged: true,
                        },
                    );
                    return;
                }
                self.fold(&[1, host as u64]);
                let now = self.now;
                let h = &mut self.hosts[host];
                if h.wake_at.is_some_and(|t| t <= now) {
                    h.wake_at = None;
                }
                if let Some(n) = h.node.as_mut() {
                    n.handle_timeout(now);
                }
                self.flush(host);
            }
            Ev::Datagram {
                to,
                from,
                bytes,
                lagged,
            } => {
                if !self.hosts[to].running() {
                    return;
                }
                if let Some(d) = self.lag(to, lagged) {
                    self.push(
                        self.now + d,
                        Ev::Datagram {
                            to,
                            from,
                            bytes,
                            lagged: true,
                        },
                    );
                    return;
                }
                self.fold(&[2, to as u64, xxh3_64(&bytes)]);
                let now = self.now;
                if let Some(n) = self.hosts[to].node.as_mut() {
                    n.handle_datagram(now, from, &bytes);
                }
                self.flush(to);
            }
            Ev::StreamRequest {
                server,
                client,
                client_run,
                id,
                bytes,
                lagged,
            } => {
                let reachable = self.hosts[server].running()
                    && self.hosts[server].group == self.hosts[client].group;
                if !reachable {
                    let fail = if self.hosts[server].running() {
                        self.net.connect_timeout
                    } else {
                        Duration::from_millis(1)
                    };
                    self.push(
                        self.now + fail,
                        Ev::StreamReply {
                            client,
                            run: client_run,
                            id,
                            result: Err("connection failed".into()),
                            lagged: false,
                        },
                    );
                    return;
                }
                if let Some(d) = self.lag(server, lagged) {
                    self.push(
                        self.now + d,
                        Ev::StreamRequest {
                            server,
                            client,
                            client_run,
                            id,
                            bytes,
                            lagged: true,
                        },
                    );
                    return;
                }
                self.fold(&[3, server as u64, xxh3_64(&bytes)]);
                let now = self.now;
                let from = self.hosts[client].addr;
                let reply = self.hosts[server]
                    .node
                    .as_mut()
                    .and_then(|n| n.handle_stream(now, from, &bytes));
                self.flush(server);
                let (result, size) = match reply {
                    Some(r) => {
                        let len = r.len();
                        self.hosts[server].bytes_out += len as u64;
                        (Ok(r), len)
                    }
                    None => (Err("stream closed".into()), 0),
                };
                let at = self.now + self.net.latency(&mut self.rng) + self.net.transfer(size);
                self.push(
                    at,
                    Ev::StreamReply {
                        client,
                        run: client_run,
                        id,
                        result,
                        lagged: false,
                    },
                );
            }
            Ev::StreamReply {
                client,
                run,
                id,
                result,
                lagged,
            } => {
                if self.hosts[client].run != run || !self.hosts[client].running() {
                    return;
                }
                if let Some(d) = self.lag(client, lagged) {
                    self.push(
                        self.now + d,
                        Ev::StreamReply {
                            client,
                            run,
                            id,
                            result,
                            lagged: true,
                        },
                    );
                    return;
                }
                self.fold(&[4, client as u64, id]);
                let now = self.now;
                if let Some(n) = self.hosts[client].node.as_mut() {
                    n.handle_stream_reply(now, id, result.as_deref().map_err(|e| e.clone()));
                }
                self.flush(client);
            }
            Ev::Join { host, run } => {
                if self.hosts[host].run != run || !self.hosts[host].running() {
                    return;
                }
                let candidates: Vec<usize> = (0..self.hosts.len())
                    .filter(|&j| j != host && self.hosts[j].running())
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let j = candidates[self.rng.random_range(0..candidates.len())];
                let to = self.hosts[j].addr;
                let now = self.now;
                if let Some(n) = self.hosts[host].node.as_mut() {
                    n.join(now, to);
                }
                self.flush(host);
            }
        }
    }

    /// Sends what a host's node wants sent, reports its events, and schedules its next wake.
    fn flush(&mut self, host: usize) {
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let next = {
            let Some(node) = self.hosts[host].node.as_mut() else {
                return;
            };
            while let Some(t) = node.poll_transmit() {
                out.push(t);
            }
            while let Some(e) = node.poll_event() {
                seen.push(e);
            }
            node.poll_timeout()
        };
        let from = self.hosts[host].addr;
        for t in out {
            match t {
                Transmit::Datagram { to, bytes } => {
                    self.hosts[host].bytes_out += bytes.len() as u64;
                    self.hosts[host].datagrams_out += 1;
                    let Some(&j) = self.by_addr.get(&to) else {
                        continue;
                    };
                    if self.hosts[j].group != self.hosts[host].group || self.net.lost(&mut self.rng)
                    {
                        continue;
                    }
                    let at = self.now + self.net.latency(&mut self.rng);
                    self.push(
                        at,
                        Ev::Datagram {
                            to: j,
                            from,
                            bytes,
                            lagged: false,
                        },
                    );
                }
                Transmit::Stream { to, id, bytes } => {
                    self.hosts[host].bytes_out += bytes.len() as u64;
                    let client_run = self.hosts[host].run;
                    let Some(&j) = self.by_addr.get(&to) else {
                        self.push(
                            self.now + Duration::from_millis(1),
                            Ev::StreamReply {
                                client: host,
                                run: client_run,
                                id,
                                result: Err("no such host".into()),
                                lagged: false,
                            },
                        );
                        continue;
                    };
                    let at =
                        self.now + self.net.latency(&mut self.rng) + self.net.transfer(bytes.len());
                    self.push(
                        at,
                        Ev::StreamRequest {
                            server: j,
                            client: host,
                            client_run,
                            id,
                            bytes,
                            lagged: false,
                        },
                    );
                }
            }
        }
        if !seen.is_empty() {
            if let Some(mut obs) = self.observer.take() {
                for e in &seen {
                    obs(
                        self,
                        Seen {
                            at: self.now,
                            host,
                            event: e,
                        },
                    );
                }
                self.observer = Some(obs);
            }
            for e in &seen {
                if let Event::Stamp { boot, version, .. } = e {
                    // The agent writes these to its data directory.
                    let h = &mut self.hosts[host];
                    h.persisted = Persisted {
                        boot: *boot,
                        version: *version,
                    };
                }
                if let Event::Joined { result: Err(_), .. } = e {
                    // Try again, through someone else, as retry_join does.
                    let run = self.hosts[host].run;
                    self.push(self.now + Duration::from_secs(1), Ev::Join { host, run });
                }
            }
        }
        if let Some(t) = next {
            let h = &mut self.hosts[host];
            if h.wake_at.is_none_or(|w| t < w) {
                h.wake_at = Some(t);
                let run = h.run;
                let at = t.max(self.now);
                self.push(
                    at,
                    Ev::Wake {
                        host,
                        run,
                        lagged: false,
                    },
                );
            }
        }
    }

    /// Puts hosts in partition groups (`group_of(host)`); the same group for all heals.
    pub fn partition(&mut self, group_of: impl Fn(usize) -> u32) {
        for (i, h) in self.hosts.iter_mut().enumerate() {
            h.group = group_of(i);
        }
    }

    pub fn index_of(&self, addr: SocketAddr) -> Option<usize> {
        self.by_addr.get(&addr).copied()
    }
}
