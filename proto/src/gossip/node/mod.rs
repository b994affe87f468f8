//! The gossip node: one member's whole share of the cluster protocol, as a state machine.
//!
//! Shaped like quinn-proto's `Connection`: it owns foca (SWIM membership), this node's own
//! versioned state, every other member's state and status, and every rule about them; it
//! has no socket, no clock and no lock. The caller feeds it datagrams, stream requests and
//! replies, timeouts and local commands, each with the current time, and drains what it
//! wants sent ([`Node::poll_transmit`]), what happened ([`Node::poll_event`]) and when to
//! call it next ([`Node::poll_timeout`]). The agent runs one over real sockets; the
//! simulator runs thousands over a virtual network. Same code, same decisions.
//!
//! How the parts fit:
//! * `peers`: the member table and the one rule that says what state a member is in
//!   (alive, failed, left), from SWIM's verdicts, leave markers and force-leaves.
//! * `spread`: a change travels as itself — pushed eagerly to a few members by each member
//!   that first receives it, announced by hash in the trailer of SWIM datagrams, pulled by
//!   whoever missed it.
//! * `sync`: anti-entropy over streams — digests first, then only what differs — for joins,
//!   healed partitions, returning members and anything the pushes missed.

#[cfg(test)]
mod hostile;
mod peers;
mod spread;
mod sync;
#[cfg(test)]
mod tests;

use super::config::{swim_config, NodeConfig};
use super::data::{Change, EntryKey, Name, NodeData, Value};
use super::digest::Digest;
use super::health::Health;
use super::identity::NodeId;
use super::recent::{Recent, Wants};
use super::timers::TimerQueue;
use crate::model::MemberStatus;
use crate::protect::Protect;
use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use rand10::rngs::StdRng;
use rand10::SeedableRng;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use sync::Session;

pub use super::config::MAX_MEMBERS;
pub use peers::{MemberView, MAX_UNCONFIRMED, UNCONFIRMED_BYTES};

type Swim = Foca<NodeId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// How long a member that SWIM reports up may go without its state before it is fetched.
const RECORD_GRACE: Duration = Duration::from_millis(250);
/// How long after a change was seen out of order the gap is fetched, if still open.
const GAP_GRACE: Duration = Duration::from_millis(500);
/// One more anti-entropy exchange this long after a join (changes made while the cluster
/// did not know us yet were not pushed to us).
const SETTLE_AFTER: Duration = Duration::from_secs(3);
/// And one this long after a join, with the member we joined through: members that joined
/// through it a moment after us are missing from our join reply, and their word that they
/// joined (`Verdict::Joined`) may have gone to the members they knew before those knew us.
/// The member we joined through knows them all, and the comparison brings in whom we lack.
const EARLY_SETTLE: Duration = Duration::from_millis(250);
/// One anti-entropy exchange this long after a burst of changes (more than SWIM trailers
/// announce) has left the announcement window: by then pushes and pulls are done, and
/// what they missed (a node's last change above all, which no later change reveals as a
/// gap) would otherwise wait for periodic anti-entropy, a minute or more in a large
/// cluster. Pushed back while the burst lasts, so one exchange per member per burst.
const BURST_SETTLE: Duration = Duration::from_secs(1);
/// How often a failed member may be tried again, and how many such tries the whole cluster
/// makes per round (each member tries with a chance of budget / members).
const RECONNECT_EVERY: Duration = Duration::from_secs(1);
const RECONNECT_BUDGET: usize = 8;
/// How often failed and left members are checked for reaping.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// Client streams (syncs and fetches) open at once (joins, which only the operator starts,
/// aside). Their replies are at most `wire::MAX_STREAM_FRAME` each, and the transport's
/// frame budget is shared by all of them.
pub const MAX_SESSIONS: usize = 8;
/// Most identities one datagram can name (the smallest encoded member is 11 bytes).
const MAX_IDS_PER_DATAGRAM: usize = super::wire::MAX_PAYLOAD / 11 + 1;
/// Most datagrams one pull is answered with (a pull fits in one datagram; this bounds what a
/// forged source address can make this node send to someone else).
const MAX_PULL_REPLY: usize = 64;
/// A member's claim that a node is this many versions ahead of what we hold is refused.
pub const MAX_VERSION_JUMP: u64 = 1 << 32;
/// No boot stamp or version above this is ever taken (no run could count that far; room
/// is left to move above any accepted one).
pub const MAX_STAMP: u64 = 1 << 62;
/// How long a suspect has to answer the last check before it is declared down.
const CONFIRM_WAIT: Duration = Duration::from_millis(500);
/// Copies of the last check sent (each may be lost).
const CONFIRM_COPIES: usize = 3;
/// Our own boot/version is not moved more often than this (two nodes sharing a name would
/// otherwise chase each other's stamps as fast as packets go).
const JUMP_INTERVAL: Duration = Duration::from_millis(500);

/// What a peer holds of our own name.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Claim {
    pub boot: u64,
    pub version: u64,
    pub run: u64,
    pub left_boot: u64,
    /// The peer holds this boot as down.
    pub down: bool,
}

/// Something to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    Datagram {
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Open a stream to `to`, send `bytes`, and hand the reply (or the failure) back with
    /// [`Node::handle_stream_reply`] and this id.
    Stream {
        to: SocketAddr,
        id: u64,
        bytes: Vec<u8>,
    },
}

/// Something that happened, for the caller to apply (catalog, logs, disk).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A member's standing changed.
    Member(MemberView),
    /// Entries of a node changed (its services, checks, node info, leave marker).
    Data { node: Name, changes: Vec<Change> },
    /// A node is forgotten (reaped after `reconnect_timeout`, or pruned).
    Forget { node: Name },
    /// Protect mode began (with when) or ended.
    Protect { since: Option<Duration> },
    /// This node's boot stamp or version moved (a peer knew a later run of it, or SWIM
    /// renewed it after a false "down"): worth persisting, so a restart starts above.
    Stamp {
        boot: u64,
        version: u64,
        reason: &'static str,
    },
    /// A join attempt ended.
    Joined {
        addr: SocketAddr,
        result: Result<(), String>,
    },
}

/// Counters, for metrics and the simulator's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams_out: u64,
    pub datagram_bytes_out: u64,
    /// Datagrams carrying changes: eager pushes, pulls and answers to pulls.
    pub push_datagrams: u64,
    pub pull_datagrams: u64,
    pub stream_requests: u64,
    pub stream_bytes_out: u64,
    pub syncs_started: u64,
    pub syncs_completed: u64,
    /// Peer input that failed to parse or made no sense.
    pub malformed: u64,
    /// Claims refused as implausible (versions or boot stamps too far ahead).
    pub implausible: u64,
    /// Changes applied from peers.
    pub changes_applied: u64,
    /// Times this node moved its own boot stamp or version above what a peer held.
    pub self_jumps: u64,
    /// Identities refused because the member table is full (see `NodeConfig::max_members`).
    pub members_refused: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tick {
    Swim(foca::Timer<NodeId>),
    Sync,
    Reap,
    Pulls,
    Fetch,
    Settle,
    /// The exchange [`EARLY_SETTLE`] after a join, with the member we joined through (it
    /// learnt every joiner of the wave that came through it): never pushed back by a burst
    /// (a join wave is one).
    EarlySettle {
        to: SocketAddr,
        server: Name,
    },
    Reconnect,
}

pub struct Node {
    cfg: NodeConfig,
    swim: Swim,
    rng: StdRng,
    /// Our own state: authored here, versioned here.
    own: NodeData,
    /// Boot stamp under which we left (0 while running).
    own_left: u64,
    peers: peers::Table,
    digest: Digest,
    recent: Recent,
    wants: Wants,
    timers: TimerQueue<Tick>,
    out: VecDeque<Transmit>,
    events: VecDeque<Event>,
    sessions: rustc_hash::FxHashMap<u64, Session>,
    next_session: u64,
    health: Health,
    protect: Protect,
    protect_on: bool,
    stats: Stats,
    size_bucket: usize,
    left: bool,
    last_jump: Option<Duration>,
    pulls_scheduled: bool,
    /// When a fetch tick is due, if one is scheduled.
    fetch_at: Option<Duration>,
    /// When the sync after a burst of changes is due (pushed back while the burst lasts),
    /// and when the latest burst seen leaves the announcement window.
    settle_at: Option<Duration>,
    burst_until: Option<Duration>,
    /// Members to sync with soon (returned after a failure, or holding a gap), in order.
    to_sync: VecDeque<Name>,
    /// Nodes with changes to fetch, in deadline order.
    gaps: VecDeque<Gap>,
    /// Suspects asked "are you alive?" whose down verdict waits for the answer.
    confirming: rustc_hash::FxHashSet<(NodeId, u16)>,
}

/// A node whose changes up to `want` we lack: fetched from `from` at `at` unless they
/// arrive first.
#[derive(Clone, Debug)]
struct Gap {
    node: Name,
    from: SocketAddr,
    at: Duration,
    want: u64,
}

impl Node {
    /// A node that knows no one yet; `join` (or being joined) connects it.
    pub fn new(cfg: NodeConfig, now: Duration) -> Node {
        let mut seeds = StdRng::seed_from_u64(cfg.seed);
        let me = NodeId::new(cfg.name.clone(), cfg.gossip_addr, cfg.boot.max(1));
        let swim = Foca::new(
            me,
            swim_config(1),
            StdRng::from_rng(&mut seeds),
            PostcardCodec,
        );
        let own = NodeData::own(cfg.run.max(1), cfg.version);
        let mut node = Node {
            health: Health::new(cfg.lifeguard),
            protect: Protect::new(cfg.protect),
            cfg,
            swim,
            rng: StdRng::from_rng(&mut seeds),
            own,
            own_left: 0,
            peers: peers::Table::default(),
            digest: Digest::default(),
            recent: Recent::default(),
            wants: Wants::default(),
            timers: TimerQueue::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            sessions: Default::default(),
            next_session: 1,
            protect_on: false,
            stats: Stats::default(),
            size_bucket: 1,
            left: false,
            last_jump: None,
            pulls_scheduled: false,
            fetch_at: None,
            settle_at: None,
            burst_until: None,
            to_sync: VecDeque::new(),
            gaps: VecDeque::new(),
            confirming: Default::default(),
        };
        node.count_self();
        let first_sync = node.jittered(now, node.sync_period());
        node.timers.schedule(first_sync, Tick::Sync);
        node.timers.schedule(now + REAP_EVERY, Tick::Reap);
        node.timers.schedule(now + RECONNECT_EVERY, Tick::Reconnect);
        node
    }

    // ----- what the caller reads -----

    pub fn id(&self) -> &NodeId {
        self.swim.identity()
    }

    pub fn name(&self) -> &Name {
        &self.cfg.name
    }

    /// The version of our own state (persist it at shutdown).
    pub fn version(&self) -> u64 {
        self.own.version
    }

    pub fn own_data(&self) -> &NodeData {
        &self.own
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Members SWIM counts as up (alive or suspect), not counting us.
    pub fn members_up(&self) -> usize {
        self.swim.num_members()
    }

    /// Our view of one member.
    pub fn member(&self, name: &str) -> Option<MemberView> {
        self.peers.get(name).and_then(|p| p.view())
    }

    /// What we hold of a node's state.
    pub fn data(&self, name: &str) -> Option<&NodeData> {
        if name == self.cfg.name.as_str() {
            return Some(&self.own);
        }
        self.peers.get(name).map(|p| &*p.data)
    }

    /// Every member we hold a view of.
    pub fn members(&self) -> impl Iterator<Item = MemberView> + '_ {
        self.peers.iter().filter_map(|p| p.view())
    }

    /// Nodes we hold state of (members or not yet confirmed), not counting us.
    pub fn known(&self) -> usize {
        self.peers.len()
    }

    pub fn protect_active(&self) -> bool {
        self.protect_on
    }

    /// Local health score (0 = healthy), for metrics.
    pub fn health_score(&self) -> u32 {
        self.health.score()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.out.pop_front();
        if t.is_none() && self.out.capacity() > 256 {
            // A burst (a join, a warm start) is over: give the room back.
            self.out.shrink_to(16);
        }
        t
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if e.is_none() && self.events.capacity() > 256 {
            self.events.shrink_to(16);
        }
        e
    }

    /// When `handle_timeout` should be called next.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.left {
            return None;
        }
        self.timers.next()
    }

    // ----- inputs -----

    /// A timer came due (call it at or after [`Node::poll_timeout`]).
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.left {
            return;
        }
        while let Some((deadline, tick)) = self.timers.pop_due(now) {
            self.health.observe(deadline, now);
            match tick {
                Tick::Swim(t) => {
                    if let foca::Timer::ChangeSuspectToDown {
                        member_id,
                        incarnation,
                        ..
                    } = &t
                    {
                        if self.last_check(now, member_id, *incarnation) {
                            self.timers.schedule(now + CONFIRM_WAIT, Tick::Swim(t));
                            continue;
                        }
                    }
                    let mut rt = AccumulatingRuntime::new();
                    let _ = self.swim.handle_timer(t, &mut rt);
                    self.drain_swim(now, rt);
                }
                Tick::Sync => {
                    self.sync_with_random_member(now);
                    let next = self.jittered(now, self.sync_period());
                    self.timers.schedule(next, Tick::Sync);
                }
                Tick::Reap => {
                    self.reap(now);
                    self.timers.schedule(now + REAP_EVERY, Tick::Reap);
                }
                Tick::Pulls => {
                    self.pulls_scheduled = false;
                    self.send_pulls(now);
                }
                Tick::Fetch => {
                    if self.fetch_at.is_some_and(|at| at <= now) {
                        self.fetch_at = None;
                    }
                    self.run_fetches(now);
                }
                Tick::Settle => {
                    match self.settle_at {
                        Some(at) if at > now => {
                            self.timers.schedule(at, Tick::Settle);
                            continue;
                        }
                        Some(_) => self.settle_at = None,
                        None => {}
                    }
                    self.sync_with_random_member(now);
                }
                Tick::EarlySettle { to, server } => self.start_sync(now, to, Some(server), false),
                Tick::Reconnect => {
                    self.protect_tick(now);
                    self.reconnect(now);
                    self.timers.schedule(now + RECONNECT_EVERY, Tick::Reconnect);
                }
            }
        }
    }

    fn sync_with_random_member(&mut self, now: Duration) {
        if let Some(to) = self.random_members(1, None).into_iter().next() {
            self.start_sync(now, to.gossip_addr(), Some(to.name().clone()), false);
        }
    }

    /// Publishes local changes (services, checks, node info): one version each, pushed at
    /// once as one delta.
    pub fn publish(&mut self, now: Duration, changes: Vec<(EntryKey, Option<Value>)>) {
        if changes.is_empty() || self.left {
            return;
        }
        let name = self.cfg.name.clone();
        let mut merged: Option<super::data::Delta> = None;
        for (key, value) in changes {
            let d = self.own.author(&name, key, value);
            match &mut merged {
                None => merged = Some(d),
                Some(m) => {
                    m.to = d.to;
                    m.entries.extend(d.entries);
                }
            }
        }
        self.count_self();
        if let Some(mut d) = merged {
            // A key authored twice in one batch travels once, with its last value (linear
            // in the batch: a node starting with thousands of services publishes them all).
            let mut seen = rustc_hash::FxHashSet::default();
            d.entries.reverse();
            d.entries.retain(|e| seen.insert(e.key.clone()));
            d.entries.reverse();
            self.spread_new(now, d, None);
        }
    }

    /// Starts joining the cluster through `addr`: a SWIM announce and a joining sync. The
    /// outcome comes back as [`Event::Joined`].
    pub fn join(&mut self, now: Duration, addr: SocketAddr) {
        if addr == self.cfg.gossip_addr {
            self.events.push_back(Event::Joined {
                addr,
                result: Err("that is this node's own gossip address".into()),
            });
            return;
        }
        let mut rt = AccumulatingRuntime::new();
        // foca accepts an announce addressed to any identity at its address.
        let _ = self.swim.announce(NodeId::new("", addr, 0), &mut rt);
        self.drain_swim(now, rt);
        self.start_sync(now, addr, None, true);
    }

    /// Starts from a saved view of the cluster — members taken as alive, with the state held
    /// of each — instead of learning it all through joins: what a node restarted with a
    /// persisted catalog would do, and how the simulator sets up a formed fleet of thousands
    /// without replaying thousands of whole-catalog joins. SWIM then probes every member and
    /// anti-entropy brings in whatever changed since the view was taken. The caller holds
    /// those states already: no `Data` event is reported for them.
    pub fn warm_start(&mut self, now: Duration, view: Vec<(NodeId, std::sync::Arc<NodeData>)>) {
        let mut members = Vec::with_capacity(view.len());
        for (id, data) in view {
            if id.name() == self.cfg.name {
                continue;
            }
            self.peers.adopt(&id, data, now);
            members.push(foca::Member::alive(id));
        }
        let mut rt = AccumulatingRuntime::new();
        let _ = self.swim.apply_many(members.into_iter(), false, &mut rt);
        self.drain_swim(now, rt);
    }

    /// Leaves gracefully: the leave marker is pushed to more members than a change is, and
    /// SWIM announces our departure. The node is inert afterwards.
    pub fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        let boot = self.id().boot();
        self.own_left = boot;
        let name = self.cfg.name.clone();
        let d = self
            .own
            .author(&name, EntryKey::Leave, Some(Value::Leave(boot)));
        self.count_self();
        self.spread_new(now, d.clone(), None);
        // A second round to other members: nobody will be able to pull it from us.
        self.push_to(now, &d, self.cfg.fanout, None);
        let mut rt = AccumulatingRuntime::new();
        let _ = self.swim.leave_cluster(&mut rt);
        self.drain_swim(now, rt);
        self.left = true;
        self.timers.clear();
    }

    /// Marks a failed member as left cluster-wide (`prune`: forgets it here at once).
    pub fn force_leave(&mut self, now: Duration, name: &str, prune: bool) -> Result<(), String> {
        if name == self.cfg.name.as_str() {
            return Err("cannot force-leave this agent itself (use leave)".into());
        }
        let Some(peer) = self.peers.get(name) else {
            return Err(format!("unknown member {name:?}"));
        };
        if prune {
            self.forget(name);
            return Ok(());
        }
        if peer.status == Some(MemberStatus::Alive) {
            return Err(format!(
                "member {name:?} is alive; only failed members can be forced to leave"
            ));
        }
        let verdict = super::wire::Verdict::ForceLeft(peer.id.clone());
        self.apply_verdict(now, &verdict);
        self.spread_verdict(now, verdict, None);
        Ok(())
    }

    // ----- SWIM plumbing -----

    /// Carries out what foca asked for in one call.
    fn drain_swim(&mut self, now: Duration, mut rt: AccumulatingRuntime<NodeId>) {
        // Verdicts first: whether a "you are down" notice is warranted depends on them.
        while let Some(n) = rt.to_notify() {
            self.notified(now, n);
        }
        while let Some((to, packet)) = rt.to_send() {
            if self.bogus_turn_undead(&to, &packet) {
                continue;
            }
            let trailer = self.recent.announce(now, super::wire::TRAILER_HASHES);
            let bytes = super::wire::swim_datagram(&packet, &trailer);
            self.send_datagram(to.gossip_addr(), bytes);
        }
        if let Some(until) = self.recent.take_saturated() {
            self.burst_seen(until);
        }
        while let Some((after, timer)) = rt.to_schedule() {
            // Lifeguard: a node that lags gives its probes and suspicions more time. The last
            // check (see `last_check`) takes its wait out of the suspicion period rather than
            // adding to it: a crash is declared no later than without it.
            let after = match timer {
                foca::Timer::ChangeSuspectToDown { .. } if self.cfg.last_check => {
                    self.health.stretch(now, after).saturating_sub(CONFIRM_WAIT)
                }
                foca::Timer::SendIndirectProbe { .. }
                | foca::Timer::ChangeSuspectToDown { .. }
                | foca::Timer::ProbeRandomMember(_) => self.health.stretch(now, after),
                _ => after,
            };
            self.timers.schedule(now + after, Tick::Swim(timer));
        }
        self.rescale();
    }

    /// foca 2.0 tells a suspect "you are down" when its suspicion timer runs out even if the
    /// suspect refuted the suspicion in time (it checks the incarnation for the verdict, not
    /// for the notice), and the suspect then gives up its identity for nothing. Such a notice
    /// is dropped here: it is only sent to a member we do hold as down.
    fn bogus_turn_undead(&self, to: &NodeId, packet: &[u8]) -> bool {
        let mut buf = packet;
        let mut codec = PostcardCodec;
        let Ok(header) = foca::Codec::<NodeId>::decode_header(&mut codec, &mut buf) else {
            return false;
        };
        header.message == foca::Message::TurnUndead
            && self
                .peers
                .get(to.name())
                .is_some_and(|p| &p.id == to && p.swim == peers::SwimState::Up)
    }

    fn notified(&mut self, now: Duration, n: OwnedNotification<NodeId>) {
        match n {
            OwnedNotification::MemberUp(id) => self.swim_up(now, id),
            OwnedNotification::MemberDown(id) => self.swim_down(now, &id),
            OwnedNotification::Rename(old, new) => {
                if old.name() != new.name() {
                    // Another node took over this address: the old one is gone from here.
                    self.swim_down(now, &old);
                }
                self.swim_up(now, new);
            }
            OwnedNotification::Rejoin(id) => {
                self.events.push_back(Event::Stamp {
                    boot: id.boot(),
                    version: self.own.version,
                    reason: "declared down by the cluster; rejoined as the next boot",
                });
            }
            OwnedNotification::Active | OwnedNotification::Idle | OwnedNotification::Defunct => {}
        }
    }

    fn send_datagram(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.stats.datagram_bytes_out += bytes.len() as u64;
        self.out.push_back(Transmit::Datagram { to, bytes });
    }

    /// Announcements fell behind a burst of changes that leaves their window at `until`:
    /// one sync after it (see [`BURST_SETTLE`]), jittered so that the members that saw the
    /// same burst do not all open their exchange at the same moment.
    fn burst_seen(&mut self, until: Duration) {
        if self.burst_until.is_some_and(|u| u >= until) {
            return;
        }
        self.burst_until = Some(until);
        let at = self.jittered(until, BURST_SETTLE);
        match self.settle_at {
            None => {
                self.timers.schedule(at, Tick::Settle);
                self.settle_at = Some(at);
            }
            Some(t) if t < at => self.settle_at = Some(at),
            Some(_) => {}
        }
    }

    /// Re-tunes SWIM (retransmissions, suspicion timeout) when the cluster size crosses a
    /// power of two.
    fn rescale(&mut self) {
        let bucket = (self.swim.num_members() + 1).next_power_of_two();
        if bucket != self.size_bucket {
            self.size_bucket = bucket;
            let _ = self.swim.set_config(swim_config(bucket));
        }
    }

    fn sync_period(&self) -> Duration {
        super::config::sync_interval(self.cfg.sync_interval, self.swim.num_members() + 1)
    }

    /// `now + d` × a random factor in [0.5, 1.5), so members do not fall into step.
    fn jittered(&mut self, now: Duration, d: Duration) -> Duration {
        use rand10::RngExt;
        now + d.mul_f64(0.5 + self.rng.random::<f64>())
    }

    /// Up to `n` distinct random members that are up, never `except`.
    fn random_members(&mut self, n: usize, except: Option<SocketAddr>) -> Vec<NodeId> {
        self.peers.random_up(&mut self.rng, n, except)
    }

    /// Tries to reach a member held as failed: after a partition heals, neither side's SWIM
    /// talks to the other (down is final for an identity), so a sync is opened directly; it
    /// tells the other side we hold it as down (it moves to a new boot stamp) and shows us its
    /// new identity, which SWIM then spreads on each side. The whole cluster makes about
    /// `RECONNECT_BUDGET` such tries per round, whatever its size.
    fn reconnect(&mut self, now: Duration) {
        use rand10::RngExt;
        let members = self.peers.up_count() + 1;
        let chance = (RECONNECT_BUDGET as f64 / members as f64).min(1.0);
        if self.rng.random::<f64>() >= chance {
            return;
        }
        let failed: Vec<(Name, SocketAddr)> = self
            .peers
            .iter()
            .filter(|p| p.status == Some(MemberStatus::Failed))
            .map(|p| (p.id.name().clone(), p.id.gossip_addr()))
            .collect();
        if failed.is_empty() {
            return;
        }
        let mut failed = failed;
        failed.sort();
        let (name, addr) = failed[self.rng.random_range(0..failed.len())].clone();
        self.start_sync(now, addr, Some(name), false);
    }

    /// Before a suspect is declared down, ask it directly (a few copies, as datagrams get
    /// lost): a live member that missed the news of its suspicion refutes it now and says so,
    /// instead of being declared down because its refutation never reached us. Returns
    /// whether the verdict should wait for the answer (false: the check was already made).
    fn last_check(&mut self, _now: Duration, suspect: &NodeId, incarnation: u16) -> bool {
        if !self.cfg.last_check {
            return false;
        }
        let key = (suspect.clone(), incarnation);
        if self.confirming.remove(&key) {
            return false;
        }
        if self.confirming.len() >= 4096 {
            return false;
        }
        self.confirming.insert(key);
        let bytes = super::wire::confirm_datagram(&super::wire::Confirm {
            target: suspect.clone(),
            incarnation,
        });
        for _ in 0..CONFIRM_COPIES {
            self.send_datagram(suspect.gossip_addr(), bytes.clone());
        }
        true
    }

    // ----- our own stamps -----

    /// A peer holds this of our own name: if it is ahead of us (a later boot stamp, a leave
    /// under our boot, our identity declared down, state of another run at or above our
    /// version), move above it, so that our identity and our state win again.
    pub(super) fn learn_self(&mut self, now: Duration, claim: Claim) {
        if self.left {
            return;
        }
        let my_boot = self.id().boot();
        let boot_ahead = claim.boot > my_boot
            || (claim.left_boot != 0 && claim.left_boot >= my_boot)
            || (claim.down && claim.boot == my_boot);
        let data_ahead = claim.version > self.own.version
            || (claim.version == self.own.version
                && claim.version > 0
                && claim.run != 0
                && claim.run != self.own.run);
        if !boot_ahead && !data_ahead {
            return;
        }
        // Claims about ourselves are taken however far ahead (a data directory lost, a clock
        // set back: the cluster may remember anything of an earlier run), up to a ceiling no
        // run could reach, so that moving above them can never overflow.
        if claim.boot.max(claim.left_boot) > MAX_STAMP || claim.version > MAX_STAMP {
            self.stats.implausible += 1;
            return;
        }
        let mut moved_boot = false;
        // Identity changes are spaced out: two nodes misconfigured with one name would
        // otherwise chase each other's stamps as fast as packets go.
        if boot_ahead
            && self
                .last_jump
                .is_none_or(|at| now.saturating_sub(at) >= JUMP_INTERVAL)
        {
            self.last_jump = Some(now);
            let new_boot = claim.boot.max(claim.left_boot).max(my_boot) + 1;
            let new_id = self.id().with_boot(new_boot);
            let mut rt = AccumulatingRuntime::new();
            let _ = self.swim.change_identity(new_id, &mut rt);
            self.drain_swim(now, rt);
            moved_boot = true;
        }
        if data_ahead || moved_boot {
            // Everything we hold is stamped again above what peers remember, and replaces it
            // whole (entries of an earlier run that we no longer have are dropped).
            self.own.restamp_above(claim.version.max(self.own.version));
            self.count_self();
            let full = self.own.full(&self.cfg.name);
            self.spread_new(now, full, None);
        }
        if !moved_boot && !data_ahead {
            return;
        }
        self.stats.self_jumps += 1;
        self.events.push_back(Event::Stamp {
            boot: self.id().boot(),
            version: self.own.version,
            reason: if moved_boot {
                "a peer knew a later run of this node (or held it as down or left); moved above it"
            } else {
                "a peer held state of this node from another run; stamped ours above it"
            },
        });
    }

    fn count_self(&mut self) {
        let name = self.cfg.name.clone();
        let contribution =
            super::digest::node_hash(&name, (self.own.version, self.own.run, self.own_left));
        let old = std::mem::replace(&mut self.peers.own_counted, contribution);
        self.digest.toggle(&name, old);
        self.digest.toggle(&name, contribution);
    }

    /// Applies changes to a peer's state; returns whether anything changed.
    fn apply_data(
        &mut self,
        now: Duration,
        delta: &super::data::Delta,
        from: Option<SocketAddr>,
    ) -> bool {
        if delta.node == self.cfg.name {
            let left = delta
                .entries
                .iter()
                .find_map(|e| match (&e.key, &e.value) {
                    (EntryKey::Leave, Some(Value::Leave(b))) => Some(*b),
                    _ => None,
                })
                .unwrap_or(0);
            let top = delta
                .entries
                .iter()
                .map(|e| e.version)
                .max()
                .unwrap_or(0)
                .max(delta.to);
            self.learn_self(
                now,
                Claim {
                    version: top,
                    run: delta.run,
                    left_boot: left,
                    ..Claim::default()
                },
            );
            return false;
        }
        match self.peers.apply(now, delta) {
            Ok(applied) => {
                if applied.gap {
                    if let Some(from) = from {
                        let want = delta.to;
                        self.note_gap(now, delta.node.clone(), from, GAP_GRACE, want);
                    }
                }
                if applied.implausible {
                    self.stats.implausible += 1;
                }
                let changed = !applied.changes.is_empty();
                if changed {
                    self.stats.changes_applied += applied.changes.len() as u64;
                    self.events.push_back(Event::Data {
                        node: delta.node.clone(),
                        changes: applied.changes,
                    });
                }
                self.refresh(now, &delta.node);
                changed
            }
            Err(_) => {
                self.stats.malformed += 1;
                false
            }
        }
    }

    /// Whether the member table is full (ours, or SWIM's, which also keeps down members).
    fn at_member_cap(&self) -> bool {
        self.peers.len() >= self.cfg.max_members
            || self.swim.iter_membership_state().len() >= self.cfg.max_members
    }

    /// Whether `id` may be taken as a member: it is held already, or there is room.
    fn admits(&self, id: &NodeId) -> bool {
        id.name() == self.cfg.name
            || self.peers.get(id.name()).is_some_and(|p| p.is(id))
            || !self.at_member_cap()
    }

    /// [`Node::admits`], counting a refusal.
    fn admit(&mut self, id: &NodeId) -> bool {
        let ok = self.admits(id);
        if !ok {
            self.stats.members_refused += 1;
        }
        ok
    }

    /// The members of `list` that may be taken (held already, or within the room left),
    /// counting the rest as refused.
    fn admit_members(
        &mut self,
        list: impl IntoIterator<Item = foca::Member<NodeId>>,
    ) -> Vec<foca::Member<NodeId>> {
        let used = self
            .peers
            .len()
            .max(self.swim.iter_membership_state().len());
        let mut room = self.cfg.max_members.saturating_sub(used);
        let mut out = Vec::new();
        for m in list {
            let held = m.id().name() == self.cfg.name
                || self.peers.get(m.id().name()).is_some_and(|p| p.is(m.id()));
            if held {
                out.push(m);
            } else if room > 0 {
                room -= 1;
                out.push(m);
            } else {
                self.stats.members_refused += 1;
            }
        }
        out
    }

    /// Near the member cap, a SWIM packet that names more identities this node does not hold
    /// than there is room for is refused whole (foca would add them all). Far below the
    /// cap nothing is looked at: a datagram cannot name more than [`MAX_IDS_PER_DATAGRAM`].
    fn admits_swim_packet(&self, packet: &[u8]) -> bool {
        let used = self
            .peers
            .len()
            .max(self.swim.iter_membership_state().len());
        if used + MAX_IDS_PER_DATAGRAM <= self.cfg.max_members {
            return true;
        }
        let room = self.cfg.max_members.saturating_sub(used);
        let held = |id: &NodeId| {
            id.name() == self.cfg.name || self.peers.get(id.name()).is_some_and(|p| p.is(id))
        };
        let mut buf = packet;
        let mut codec = PostcardCodec;
        let Ok(header) = foca::Codec::<NodeId>::decode_header(&mut codec, &mut buf) else {
            return true; // foca refuses it
        };
        let mut new = usize::from(!held(&header.src));
        if buf.len() >= 2 && header.message != foca::Message::Broadcast {
            let count = u16::from_be_bytes([buf[0], buf[1]]);
            let mut buf = &buf[2..];
            for _ in 0..count {
                match foca::Codec::<NodeId>::decode_member(&mut codec, &mut buf) {
                    Ok(m) => new += usize::from(!held(m.id())),
                    Err(_) => return true, // foca refuses it
                }
            }
        }
        new <= room
    }

    /// Fetches `node`'s changes up to version `want` from `from` after `delay`, unless they
    /// arrive first. A node already waiting keeps its turn and wants the higher version
    /// (a fetch asks for everything after what we hold, so one fetch covers both).
    fn note_gap(
        &mut self,
        now: Duration,
        node: Name,
        from: SocketAddr,
        delay: Duration,
        want: u64,
    ) {
        if let Some(g) = self.gaps.iter_mut().find(|g| g.node == node) {
            g.want = g.want.max(want);
            return;
        }
        if self.gaps.len() >= 4096 {
            return;
        }
        let at = now + delay;
        let pos = self
            .gaps
            .iter()
            .position(|g| g.at > at)
            .unwrap_or(self.gaps.len());
        self.gaps.insert(
            pos,
            Gap {
                node,
                from,
                at,
                want,
            },
        );
        self.schedule_fetch(at);
    }

    fn schedule_fetch(&mut self, at: Duration) {
        if self.fetch_at.is_none_or(|t| at < t) {
            self.fetch_at = Some(at);
            self.timers.schedule(at, Tick::Fetch);
        }
    }
}
