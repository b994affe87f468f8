//! The member table: every other node this member knows, with its state and its standing,
//! and the one rule that decides the standing.
//!
//! A member's standing comes from three facts and nothing else, so that the member list,
//! the catalog and DNS can never disagree about it:
//! * SWIM's verdict on the newest identity (boot stamp) known for the name: up or down;
//! * the boot stamp the node left under, from its own leave marker or an operator's
//!   force-leave (0: never left);
//! * nothing else — in particular not the order in which messages arrived.
//!
//! Left if it left under the current boot or a later one; else alive if SWIM says up, failed
//! if SWIM says down. A restart is a higher boot, so a node that is up again is never "left".

use super::super::data::{Change, DataError, Delta, Name, NodeData, MAX_HELD_NODE_BYTES};
use super::super::digest::node_hash;
use super::super::identity::NodeId;
use super::super::intern::{self, Table as InternTable};
use super::{Event, Node, MAX_VERSION_JUMP};
use crate::model::MemberStatus;
use foca::{AccumulatingRuntime, Member};
use hashbrown::HashTable;
use rand10::rngs::StdRng;
use rand10::RngExt;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

/// Data-only nodes (pushed to us before SWIM confirmed them) are dropped after this long.
const UNCONFIRMED_TTL: Duration = Duration::from_secs(60);
/// Most data-only nodes held at once.
pub const MAX_UNCONFIRMED: usize = 1024;
/// Most bytes of state held for data-only nodes together (anyone can push state for a name
/// that is no member; a member's own state is fetched whole once SWIM confirms it).
pub const UNCONFIRMED_BYTES: usize = 8 * 1024 * 1024;
/// A returning member's state is flagged stale at most this long if no sync completes.
const RETURN_STALE_MAX: Duration = Duration::from_secs(10);

thread_local! {
    /// Settled node states, shared by every member of a simulation that holds the same.
    static STATES: RefCell<InternTable<(Name, u64, u64), NodeData>> = RefCell::new(InternTable::default());
}

/// SWIM's verdict on a member's newest identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SwimState {
    /// Not (yet) a SWIM member: known only from state pushed to us.
    Unknown,
    Up,
    Down,
}

/// A member as the caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub name: Name,
    pub addr: SocketAddr,
    pub boot: u64,
    pub status: MemberStatus,
    /// Whether it belongs in answers (up, or held by protect mode, and its state is in: a
    /// member known only by name and address has nothing to answer with, and anyone can
    /// claim one).
    pub served: bool,
    /// Whether answers that include it should be flagged stale (held by protect mode, or
    /// back after a failure and not yet reconciled).
    pub stale: bool,
    /// When `status` last changed (caller's clock).
    pub since: Duration,
}

/// One member, kept small: every member of a 10,000-node simulation holds 10,000 of these.
pub(super) struct Peer {
    pub id: NodeId,
    pub data: Arc<NodeData>,
    /// What this peer contributes to the digest (0: nothing).
    counted: u64,
    /// What few members need (a force-leave, a return not yet reconciled).
    extra: Option<Box<Extra>>,
    /// When `status` last changed (seconds on the caller's clock).
    since_s: u32,
    /// Fingerprint of what the caller was last told (0: nothing).
    told: u32,
    /// Index in the table's list of up members (u32::MAX: not up).
    slot: u32,
    pub swim: SwimState,
    pub status: Option<MemberStatus>,
    /// Failed, but served in protect mode.
    pub held: bool,
}

#[derive(Default)]
struct Extra {
    /// Boot stamp of an operator's force-leave (0: none).
    forced_boot: u64,
    /// Boot stamp of a force-leave that arrived while SWIM still held that very identity up
    /// here (0: none): it takes effect if SWIM declares that identity down (the verdict
    /// often arrives a moment before this member's own down verdict); a member that stays
    /// up, or comes back under a later boot, is untouched.
    pending_force: u64,
    /// Back after a failure, state not yet reconciled: since when (ms + 1; 0: not).
    returned_ms: u64,
    /// The identity this one superseded at another address, while SWIM still holds that one
    /// up: a later run claimed elsewhere may be an impostor (or a move that failed), and if
    /// it is declared down first, the member is the earlier run again, not failed.
    prev: Option<NodeId>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn secs(d: Duration) -> u32 {
    d.as_secs().min(u64::from(u32::MAX)) as u32
}

impl Peer {
    fn new(id: NodeId, now: Duration) -> Peer {
        Peer {
            id,
            data: Arc::new(NodeData::new()),
            counted: 0,
            extra: None,
            since_s: secs(now),
            told: 0,
            slot: u32::MAX,
            swim: SwimState::Unknown,
            status: None,
            held: false,
        }
    }

    fn extra_mut(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the extra fields once none is set.
    fn tidy(&mut self) {
        if self.extra.as_ref().is_some_and(|e| {
            e.forced_boot == 0 && e.pending_force == 0 && e.returned_ms == 0 && e.prev.is_none()
        }) {
            self.extra = None;
        }
    }

    pub fn forced_boot(&self) -> u64 {
        self.extra.as_ref().map_or(0, |e| e.forced_boot)
    }

    pub fn set_forced_boot(&mut self, boot: u64) {
        self.extra_mut().forced_boot = boot;
        self.tidy();
    }

    /// See `Extra::pending_force`.
    pub fn pending_force(&self) -> u64 {
        self.extra.as_ref().map_or(0, |e| e.pending_force)
    }

    pub fn set_pending_force(&mut self, boot: u64) {
        self.extra_mut().pending_force = boot;
        self.tidy();
    }

    /// Whether we hold no state of it: a real agent always publishes its node info at start,
    /// so such a member is known only by name and address, what anyone can claim.
    pub fn stateless(&self) -> bool {
        self.data.version == 0 && self.data.live() == 0
    }

    /// See `Extra::prev`.
    pub fn prev(&self) -> Option<&NodeId> {
        self.extra.as_ref().and_then(|e| e.prev.as_ref())
    }

    pub fn set_prev(&mut self, prev: Option<NodeId>) {
        if prev.is_none() && self.extra.is_none() {
            return;
        }
        self.extra_mut().prev = prev;
        self.tidy();
    }

    /// Whether `id` is this member's identity, or the one it superseded.
    pub fn is(&self, id: &NodeId) -> bool {
        &self.id == id || self.prev() == Some(id)
    }

    pub fn left_boot(&self) -> u64 {
        self.data.left_boot().unwrap_or(0).max(self.forced_boot())
    }

    fn returned_ms(&self) -> u64 {
        self.extra.as_ref().map_or(0, |e| e.returned_ms)
    }

    pub fn returned(&self) -> Option<Duration> {
        let r = self.returned_ms();
        (r > 0).then(|| Duration::from_millis(r - 1))
    }

    pub fn set_returned(&mut self, at: Option<Duration>) {
        if at.is_none() && self.extra.is_none() {
            return;
        }
        self.extra_mut().returned_ms = at.map_or(0, |t| ms(t) + 1);
        self.tidy();
    }

    /// The rule.
    fn derive(&self) -> Option<MemberStatus> {
        if self.swim == SwimState::Unknown {
            return None;
        }
        let left = self.left_boot();
        if left != 0 && left >= self.id.boot() {
            return Some(MemberStatus::Left);
        }
        Some(match self.swim {
            SwimState::Up => MemberStatus::Alive,
            _ => MemberStatus::Failed,
        })
    }

    fn served(&self, status: MemberStatus) -> bool {
        (status.is_up() || self.held) && !self.stateless()
    }

    pub fn view(&self) -> Option<MemberView> {
        let status = self.status?;
        Some(MemberView {
            name: self.id.name().clone(),
            addr: self.id.gossip_addr(),
            boot: self.id.boot(),
            status,
            served: self.served(status),
            stale: self.held || self.returned_ms() > 0,
            since: Duration::from_secs(u64::from(self.since_s)),
        })
    }

    /// A fingerprint of the view, to tell the caller only when it changes.
    fn fingerprint(&self) -> u32 {
        let Some(status) = self.status else {
            return 0;
        };
        let mut buf = [0u8; 28];
        buf[0] = status.code();
        buf[1] = u8::from(self.served(status));
        buf[2] = u8::from(self.held || self.returned_ms() > 0);
        buf[3..11].copy_from_slice(&self.id.boot().to_le_bytes());
        buf[11..19].copy_from_slice(&u64::from(self.since_s).to_le_bytes());
        let addr = self.id.gossip_addr();
        buf[19..21].copy_from_slice(&addr.port().to_le_bytes());
        let ip = match addr.ip() {
            std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
            std::net::IpAddr::V6(v6) => xxh3_64(&v6.octets()),
        };
        buf[21..28].copy_from_slice(&ip.to_le_bytes()[..7]);
        (xxh3_64(&buf) as u32) | 1
    }
}

/// What applying a delta did.
pub(super) struct Applied {
    pub changes: Vec<Change>,
    /// The delta started above what we held: a change was missed.
    pub gap: bool,
    /// Refused as too far ahead.
    pub implausible: bool,
}

/// The member table, keyed by each peer's own name (no second copy of every name: a
/// 10,000-member table is held by every member of a 10,000-node simulation).
#[derive(Default)]
pub(super) struct Table {
    map: HashTable<Peer>,
    /// Members that are up, for random choices in constant time.
    up: Vec<NodeId>,
    unconfirmed: usize,
    /// Bytes of state held for data-only nodes (bounded by [`UNCONFIRMED_BYTES`]).
    unconfirmed_bytes: usize,
    /// What our own node contributes to the digest.
    pub own_counted: u64,
}

fn hash_name(name: &str) -> u64 {
    xxh3_64(name.as_bytes())
}

fn peer_hash(p: &Peer) -> u64 {
    hash_name(p.id.name())
}

impl Table {
    pub fn get(&self, name: &str) -> Option<&Peer> {
        self.map.find(hash_name(name), |p| p.id.name() == name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Peer> {
        self.map.find_mut(hash_name(name), |p| p.id.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Names in a stable order (the table's own order depends on its history).
    pub fn names_sorted(&self) -> Vec<Name> {
        let mut v: Vec<Name> = self.map.iter().map(|p| p.id.name().clone()).collect();
        v.sort();
        v
    }

    pub fn up_count(&self) -> usize {
        self.up.len()
    }

    fn set_up(&mut self, name: &str, up: bool) {
        let Some(p) = self.get_mut(name) else {
            return;
        };
        let slot = p.slot;
        let id = p.id.clone();
        match (slot != u32::MAX, up) {
            (false, true) => {
                let at = self.up.len() as u32;
                if let Some(p) = self.get_mut(name) {
                    p.slot = at;
                }
                self.up.push(id);
            }
            (true, true) => self.up[slot as usize] = id,
            (true, false) => {
                if let Some(p) = self.get_mut(name) {
                    p.slot = u32::MAX;
                }
                let i = slot as usize;
                self.up.swap_remove(i);
                if let Some(moved) = self.up.get(i).map(|m| m.name().clone()) {
                    if let Some(m) = self.get_mut(&moved) {
                        m.slot = i as u32;
                    }
                }
            }
            (false, false) => {}
        }
    }

    /// Up to `n` distinct random members that are up, never `except`.
    pub fn random_up(&self, rng: &mut StdRng, n: usize, except: Option<SocketAddr>) -> Vec<NodeId> {
        let candidates = self.up.len();
        if candidates == 0 || n == 0 {
            return Vec::new();
        }
        if candidates <= n + 1 {
            return self
                .up
                .iter()
                .filter(|id| Some(id.gossip_addr()) != except)
                .take(n)
                .cloned()
                .collect();
        }
        let mut out: Vec<NodeId> = Vec::with_capacity(n);
        let mut tries = 0;
        while out.len() < n && tries < n * 8 {
            tries += 1;
            let id = &self.up[rng.random_range(0..candidates)];
            if Some(id.gossip_addr()) == except || out.contains(id) {
                continue;
            }
            out.push(id.clone());
        }
        out
    }

    /// The peer of this name, created (unknown to SWIM yet) if need be.
    fn entry(&mut self, id: &NodeId, now: Duration) -> &mut Peer {
        let h = hash_name(id.name());
        if self.get(id.name()).is_none() {
            self.map
                .insert_unique(h, Peer::new(id.clone(), now), peer_hash);
        }
        self.map
            .find_mut(h, |p| p.id.name() == id.name())
            .expect("inserted above")
    }

    /// A member another member holds as failed (or left, under `left_boot`), learnt at a join.
    pub fn departed(&mut self, id: &NodeId, left_boot: u64, now: Duration) {
        let peer = self.entry(id, now);
        peer.swim = SwimState::Down;
        peer.set_forced_boot(left_boot);
    }

    /// Takes a node's state from a saved view (see `Node::warm_start`).
    pub fn adopt(&mut self, id: &NodeId, data: Arc<NodeData>, now: Duration) {
        let fresh = self.get(id.name()).is_none();
        let peer = self.entry(id, now);
        peer.data = data;
        if fresh {
            self.unconfirmed += 1;
        }
    }

    /// SWIM now knows a node that was data-only: it no longer counts against the
    /// data-only bounds.
    pub fn confirmed(&mut self, name: &str) {
        let bytes = self.get(name).map_or(0, |p| p.data.bytes());
        self.unconfirmed = self.unconfirmed.saturating_sub(1);
        self.unconfirmed_bytes = self.unconfirmed_bytes.saturating_sub(bytes);
    }

    pub fn remove(&mut self, name: &str) -> Option<Peer> {
        self.set_up(name, false);
        let p = match self
            .map
            .find_entry(hash_name(name), |p| p.id.name() == name)
        {
            Ok(e) => e.remove().0,
            Err(_) => return None,
        };
        if p.swim == SwimState::Unknown {
            self.unconfirmed = self.unconfirmed.saturating_sub(1);
            self.unconfirmed_bytes = self.unconfirmed_bytes.saturating_sub(p.data.bytes());
        }
        Some(p)
    }

    /// Applies a delta to the node's state, creating a data-only entry for a node SWIM has
    /// not told us of yet (bounded).
    pub fn apply(&mut self, now: Duration, delta: &Delta) -> Result<Applied, DataError> {
        NodeData::check(delta)?;
        if self.get(&delta.node).is_none() {
            if self.unconfirmed >= MAX_UNCONFIRMED {
                return Ok(Applied {
                    changes: Vec::new(),
                    gap: false,
                    implausible: false,
                });
            }
            self.unconfirmed += 1;
            // The address is learnt when SWIM confirms the node.
            let placeholder =
                NodeId::new(delta.node.clone(), SocketAddr::from(([0, 0, 0, 0], 0)), 0);
            self.entry(&placeholder, now);
        }
        let others_unconfirmed = self.unconfirmed_bytes;
        let Some(peer) = self.get_mut(&delta.node) else {
            return Err(DataError::Mismatch);
        };
        let held = peer.data.version.max(peer.data.ahead);
        let top = delta
            .entries
            .iter()
            .map(|e| e.version)
            .max()
            .unwrap_or(0)
            .max(delta.to);
        if held > 0 && top > held.saturating_add(MAX_VERSION_JUMP) {
            return Ok(Applied {
                changes: Vec::new(),
                gap: false,
                implausible: true,
            });
        }
        let before = peer.data.version;
        let bytes_before = peer.data.bytes();
        // A data-only node shares what is left of the data-only budget.
        let confirmed = peer.swim != SwimState::Unknown;
        let limit = if confirmed {
            MAX_HELD_NODE_BYTES
        } else {
            UNCONFIRMED_BYTES.saturating_sub(others_unconfirmed.saturating_sub(bytes_before))
        };
        let data = Arc::make_mut(&mut peer.data);
        let changes = data.apply_within(delta, limit)?;
        let bytes_after = data.bytes();
        let gap = !delta.full && delta.from > before && data.version < delta.to;
        if data.is_settled() {
            // Settled copies of one (version, run) hold the same live entries; sharing one
            // with another base is safe (its tombstones are real deletions too).
            let key = (delta.node.clone(), data.version, data.run);
            let mine = std::mem::take(data);
            peer.data = intern::with(&STATES, |t| t.get_or_insert(key, || Arc::new(mine)));
        }
        if !confirmed {
            self.unconfirmed_bytes =
                (self.unconfirmed_bytes + bytes_after).saturating_sub(bytes_before);
        }
        Ok(Applied {
            changes,
            gap,
            implausible: false,
        })
    }
}

impl Node {
    /// SWIM says this identity is up.
    pub(super) fn swim_up(&mut self, now: Duration, id: NodeId) {
        if id.name() == self.cfg.name {
            // Our name at another address (SWIM keeps members apart by address): whoever
            // claims it there is not us, and peers that take the claim (a run at least as
            // late as ours) would list us there. Move above it, so that ours wins again.
            if &id != self.id() && id.boot() >= self.id().boot() {
                self.learn_self(
                    now,
                    super::Claim {
                        boot: id.boot(),
                        down: true,
                        ..super::Claim::default()
                    },
                );
            }
            return;
        }
        let existed = self.peers.get(id.name()).map(|p| p.swim);
        if existed.is_none() && self.peers.len() >= self.cfg.max_members {
            self.stats.members_refused += 1;
            return;
        }
        let peer = self.peers.entry(&id, now);
        if peer.swim != SwimState::Unknown && id.boot() < peer.id.boot() {
            return; // a late word about an earlier run
        }
        if existed == Some(SwimState::Unknown) {
            self.peers.confirmed(id.name());
        }
        let peer = self.peers.entry(&id, now);
        let restarted = peer.swim != SwimState::Unknown && id.boot() > peer.id.boot();
        if peer.id != id {
            let prev = (peer.swim == SwimState::Up && peer.id.gossip_addr() != id.gossip_addr())
                .then(|| peer.id.clone());
            peer.set_prev(prev);
        }
        peer.id = id.clone();
        peer.swim = SwimState::Up;
        let fetch_state = peer.data.version == 0;
        if restarted {
            // Its state will be replaced; until we have reconciled, answers are flagged.
            peer.set_returned(Some(now));
        }
        self.refresh(now, id.name());
        if restarted {
            // Reconcile with it at once, as with a member back from a failure: otherwise the
            // flag stays until some other reconciliation or `RETURN_STALE_MAX`, and a member
            // that only renewed its boot stamp (it refuted being declared down on the other
            // side of a healed partition) keeps answers flagged for no reason.
            let name = id.name().clone();
            if !self.to_sync.contains(&name) {
                self.to_sync.push_back(name);
            }
            self.schedule_fetch(now);
        }
        if fetch_state {
            // Its state usually arrives pushed within milliseconds; if not, fetch it.
            self.note_gap(
                now,
                id.name().clone(),
                id.gossip_addr(),
                super::RECORD_GRACE,
                1,
            );
        }
    }

    /// SWIM says this identity is down.
    pub(super) fn swim_down(&mut self, now: Duration, id: &NodeId) {
        let Some(peer) = self.peers.get_mut(id.name()) else {
            return;
        };
        if peer.prev() == Some(id) {
            peer.set_prev(None);
            return;
        }
        if peer.id != *id {
            return;
        }
        if let Some(prev) = peer.prev().cloned() {
            peer.set_prev(None);
            // The run that superseded `prev` at another address is gone while `prev` is
            // still up: the member is `prev` again (an impostor's claim fails here).
            peer.id = prev;
            self.refresh(now, id.name());
            return;
        }
        let pending = peer.pending_force();
        if pending != 0 {
            peer.set_pending_force(0);
            if pending >= id.boot() && pending > peer.forced_boot() {
                peer.set_forced_boot(pending);
            }
        }
        if peer.stateless() && peer.forced_boot() == 0 {
            // Nothing but a name and an address we were told of, and nobody answers there:
            // a ghost (or a member that died before any of its state reached us). There is
            // nothing to list: it is forgotten at once rather than listed failed for days.
            self.forget(&id.name().clone());
            return;
        }
        peer.swim = SwimState::Down;
        self.refresh(now, id.name());
    }

    /// Applies a verdict; returns false when it is refused, so that it is not passed on.
    pub(super) fn apply_verdict(&mut self, now: Duration, v: &super::super::wire::Verdict) -> bool {
        match v {
            super::super::wire::Verdict::ForceLeft(id) => self.apply_force_left(now, id),
            super::super::wire::Verdict::Joined(id) => self.apply_joined(now, id),
        }
    }

    /// A joiner says it is here: it is taken as alive unless we hold this run or a later one
    /// already. Passed on if it is news here, and also if we learnt of this run only lately
    /// (from a join reply's table, in the same wave): such members still carry the word to
    /// those that lack it. A word that comes round again after members forgot having seen it
    /// (`recent::KEEP`) is about a run held for longer, and goes no further.
    fn apply_joined(&mut self, now: Duration, id: &NodeId) -> bool {
        if id.name() == self.cfg.name || !self.admit(id) {
            return false;
        }
        if let Some(p) = self.peers.get(id.name()) {
            if p.swim != SwimState::Unknown {
                if id.boot() < p.id.boot() || (p.id == *id && p.swim != SwimState::Up) {
                    // An earlier run, or this run already declared down here: stale.
                    return false;
                }
                if p.id == *id {
                    let since = Duration::from_secs(u64::from(p.since_s));
                    return now.saturating_sub(since) < super::super::recent::KEEP;
                }
            }
        }
        let mut rt = AccumulatingRuntime::new();
        // No news to SWIM: this word itself reaches every member.
        let _ = self
            .swim
            .apply_many(std::iter::once(Member::alive(id.clone())), false, &mut rt);
        self.drain_swim(now, rt);
        true
    }

    /// Applies a force-leave verdict; returns whether it was news here (false when it is
    /// about us, about a member SWIM holds up here, or changed nothing).
    fn apply_force_left(&mut self, now: Duration, id: &NodeId) -> bool {
        if id.name() == self.cfg.name {
            // We are alive and say so: a later boot refutes it.
            self.learn_self(
                now,
                super::Claim {
                    left_boot: id.boot(),
                    ..super::Claim::default()
                },
            );
            return false;
        }
        if let Some(p) = self.peers.get_mut(id.name()) {
            if p.swim == SwimState::Up {
                // An operator forces out failed members only. One that SWIM holds up here
                // was not failed where the verdict began, or is back: SWIM's verdict stands
                // (and the member, told it was forced out, moves to a later boot anyway).
                // Kept for this identity in case SWIM declares it down here too: the
                // verdict usually began where the crash was seen a moment sooner.
                if id.boot() == p.id.boot() && id.boot() > p.pending_force() {
                    p.set_pending_force(id.boot());
                }
                return false;
            }
            if id.boot() >= p.id.boot() && id.boot() > p.forced_boot() {
                p.set_forced_boot(id.boot());
                self.refresh(now, id.name());
                return true;
            }
        }
        // Held already, about an earlier run, or about a member never heard of: nothing
        // changed here, so it is not passed on. A verdict that comes round again after
        // members forgot having seen it (`recent::KEEP`) dies out instead of circling.
        false
    }

    /// Recomputes a member's standing after any change of its facts, and tells the caller,
    /// the digest, the list of up members and protect mode what changed.
    pub(super) fn refresh(&mut self, now: Duration, name: &str) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        let before = peer.status;
        let after = peer.derive();
        let stateful = !peer.stateless();
        if before != after {
            peer.status = after;
            peer.since_s = secs(now);
        }
        if peer
            .returned()
            .is_some_and(|at| now.saturating_sub(at) > RETURN_STALE_MAX)
        {
            peer.set_returned(None);
        }
        let up = after == Some(MemberStatus::Alive);
        let contribution = if up {
            node_hash(name, (peer.data.version, peer.data.run, peer.left_boot()))
        } else {
            0
        };
        let old = std::mem::replace(&mut peer.counted, contribution);
        if old != contribution {
            self.digest.toggle(name, old);
            self.digest.toggle(name, contribution);
        }
        self.peers.set_up(name, up);

        match (before, after) {
            // Only members we hold state of count: members known by name and address
            // alone (ghosts, which anyone can claim) must not turn protect mode on.
            (Some(MemberStatus::Alive), Some(MemberStatus::Failed)) if stateful => {
                let serving = self.served_peers().saturating_sub(1);
                let suspects = self
                    .swim
                    .iter_membership_state()
                    .filter(|m| {
                        m.state() == foca::State::Suspect
                            && m.id().name() != name
                            && self
                                .peers
                                .get(m.id().name())
                                .is_some_and(|p| !p.stateless() && &p.id == m.id())
                    })
                    .count();
                let held = self
                    .protect
                    .on_failure(name, now.as_millis() as u64, serving, suspects);
                for h in held {
                    if let Some(p) = self.peers.get_mut(&h) {
                        p.held = true;
                    }
                    if h != name {
                        self.tell(now, &h);
                    }
                }
            }
            (Some(MemberStatus::Failed), Some(MemberStatus::Alive)) => {
                if let Some(p) = self.peers.get_mut(name) {
                    p.set_returned(Some(now));
                }
                let n: Name = name.into();
                if !self.to_sync.contains(&n) {
                    self.to_sync.push_back(n);
                }
                self.schedule_fetch(now);
            }
            (_, Some(MemberStatus::Left)) => {
                self.protect.forget(name);
                if let Some(p) = self.peers.get_mut(name) {
                    p.held = false;
                    p.set_returned(None);
                }
            }
            _ => {}
        }
        self.tell(now, name);
        self.note_protect(now);
    }

    /// Tells the caller about a member if its view changed.
    pub(super) fn tell(&mut self, _now: Duration, name: &str) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        let fingerprint = peer.fingerprint();
        if fingerprint != peer.told {
            peer.told = fingerprint;
            if let Some(v) = peer.view() {
                self.events.push_back(Event::Member(v));
            }
        }
    }

    /// Peers we hold state of that are served (up, or held by protect mode).
    fn served_peers(&self) -> usize {
        self.peers
            .iter()
            .filter(|p| !p.stateless() && (p.slot != u32::MAX || p.held))
            .count()
    }

    pub(super) fn note_protect(&mut self, now: Duration) {
        let on = self.protect.active_since().is_some();
        if on != self.protect_on {
            self.protect_on = on;
            self.events.push_back(Event::Protect {
                since: on.then_some(now),
            });
        }
    }

    /// We reconciled with a member that came back: every returned member's state is now as
    /// new as that member's view of it, so their answers are no longer flagged; protect
    /// mode may end.
    pub(super) fn reconciled(&mut self, now: Duration, with: &str) {
        let partner_returned = self.peers.get(with).is_some_and(|p| p.returned().is_some());
        if !partner_returned && !self.protect.is_held(with) {
            return;
        }
        let returned: Vec<Name> = self
            .peers
            .iter()
            .filter(|p| p.returned().is_some())
            .map(|p| p.id.name().clone())
            .collect();
        for name in &returned {
            if let Some(p) = self.peers.get_mut(name) {
                p.set_returned(None);
            }
            // Protect mode counts who is back; it may end here.
            let _ = self.protect.on_alive(name, now.as_millis() as u64);
        }
        // Held flags follow protect mode's verdict (held peers that are still failed).
        for name in self.peers.names_sorted() {
            let held = self.protect.is_held(&name);
            if let Some(p) = self.peers.get_mut(&name) {
                p.held = held && p.status == Some(MemberStatus::Failed);
            }
            self.tell(now, &name);
        }
        self.note_protect(now);
    }

    /// Ends protect mode once its grace has run out: held peers still missing are failed.
    pub(super) fn protect_tick(&mut self, now: Duration) {
        if self.protect.tick(now.as_millis() as u64).is_some() {
            for name in self.peers.names_sorted() {
                let held = self.protect.is_held(&name);
                if let Some(p) = self.peers.get_mut(&name) {
                    p.held = held && p.status == Some(MemberStatus::Failed);
                }
                self.tell(now, &name);
            }
            self.note_protect(now);
        }
    }

    /// Forgets a node entirely (reaped or pruned).
    pub(super) fn forget(&mut self, name: &str) {
        if let Some(p) = self.peers.remove(name) {
            self.digest.toggle(name, p.counted);
            self.protect.forget(name);
            self.events.push_back(Event::Forget { node: name.into() });
        }
    }

    /// Forgets members failed or left for longer than `reconnect_timeout`, and data-only
    /// nodes SWIM never confirmed.
    pub(super) fn reap(&mut self, now: Duration) {
        let limit = self.cfg.reconnect_timeout;
        let gone: Vec<Name> = self
            .peers
            .iter()
            .filter(|p| {
                let since = Duration::from_secs(u64::from(p.since_s));
                match p.status {
                    None => now.saturating_sub(since) > UNCONFIRMED_TTL,
                    Some(s) => !s.is_up() && now.saturating_sub(since) >= limit,
                }
            })
            .map(|p| p.id.name().clone())
            .collect();
        for name in gone {
            self.forget(&name);
        }
        // Returned members whose reconciliation never completed stop being flagged.
        let stale: Vec<Name> = self
            .peers
            .iter()
            .filter(|p| {
                p.returned()
                    .is_some_and(|at| now.saturating_sub(at) > RETURN_STALE_MAX)
            })
            .map(|p| p.id.name().clone())
            .collect();
        for name in stale {
            self.refresh(now, &name);
        }
    }
}
