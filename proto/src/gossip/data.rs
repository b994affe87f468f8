//! A node's replicated state, and the rules for keeping a copy of it.
//!
//! Each node authors a set of *entries*: its node info, one per service, one per check, and
//! a leave marker when it leaves. Every change the owner makes takes the next number of the
//! node's version counter and stamps the one entry it touched, so a change travels alone
//! (a [`Delta`] of one entry) and a copy applies it in time proportional to its size.
//! Removals leave a tombstone, so that a copy that still holds the entry learns it is gone.
//!
//! A copy knows how far it is complete: [`NodeData::version`] means "every change up to here
//! is reflected". Deltas say which range of changes they cover (`from`, `to`]; one that starts
//! at or below the copy's version moves it forward, one that starts above it (a change was
//! missed) is still applied entry by entry — a higher entry version always wins — but leaves
//! the version where it was, so the next digest exchange asks for the gap.
//!
//! Below [`NodeData::base`] a copy can no longer say what changed (tombstones were forgotten,
//! or the owner restarted and voided its earlier entries): a peer that is behind the base
//! gets the whole state instead ([`Delta::full`]), which replaces its copy.
//!
//! Version numbers never depend on a clock: they count changes, and a restarted node learns
//! from its peers the highest version they hold for it and continues above it (see `node`).
//! Each run of a node also draws a random *run* id. Until a restarted node has learnt what
//! its peers hold, its new state may carry the very version number its previous run
//! reached, with other contents; the run id tells the two apart: a copy from another run
//! is never diffed against (it is replaced whole), ties in version go to the higher run,
//! and the owner, shown another run's state at or above its own version, stamps its state
//! again above it.

use crate::model::{Check, Service};
use compact_str::CompactString;
use rpds::RedBlackTreeMapSync;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Node names, service ids and check ids: short strings, kept inline.
pub type Name = CompactString;

/// The largest encoded entry a node may author (a service with its tags and meta, a check
/// with its 4 KiB output). Bounds what one entry can make a peer hold.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// The largest state a node may author, encoded (services, checks and node info together).
pub const MAX_NODE_BYTES: usize = 1024 * 1024;
/// The most entries (live and tombstones) one node's state may hold.
pub const MAX_NODE_ENTRIES: usize = 32 * 1024;
/// The largest entry a copy holds, key and value encoded: room for the key beside a value of
/// [`MAX_ENTRY_BYTES`]. Peers check what they receive against this, not against what the
/// owner checks, so that nothing an honest owner authors is ever refused.
pub const MAX_HELD_ENTRY_BYTES: usize = 2 * MAX_ENTRY_BYTES;
/// The most a copy of one node's state holds (keys and values of live entries and
/// tombstones, encoded). An honest owner stays under [`MAX_NODE_BYTES`] of values; keys
/// repeat the ids inside the values, and tombstones are at most as many as live entries
/// (or 128), so it can never reach this.
pub const MAX_HELD_NODE_BYTES: usize = 4 * MAX_NODE_BYTES;
/// The longest node name taken from a peer (names are DNS labels of at most 63 characters;
/// this leaves room and bounds what a name in a message can make a member hold).
pub const MAX_NAME_BYTES: usize = 255;
/// Ranges of changes held beyond a gap, at most (more wait for anti-entropy).
const MAX_PENDING_RANGES: usize = 16;
/// Tombstones kept per node beyond this (or beyond half the live entries, if more) are
/// forgotten oldest first, raising the base.
pub const MIN_TOMBSTONES: usize = 64;

/// What an entry is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKey {
    /// The node's datacenter, address and meta.
    Node,
    /// Present once the node has left gracefully.
    Leave,
    Service(Name),
    Check(Name),
}

/// The node-level facts of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub datacenter: String,
    pub address: IpAddr,
    pub meta: BTreeMap<String, String>,
}

/// The value of an entry. Values are shared (`Arc`) between the gossip state, the catalog
/// and the snapshots readers hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    Node(Arc<NodeInfo>),
    /// The node left gracefully while it ran with this boot stamp.
    Leave(u64),
    Service(Arc<Service>),
    Check(Arc<Check>),
}

impl Value {
    /// Whether this value may be stored under `key` (kinds match, ids agree).
    pub fn fits(&self, key: &EntryKey) -> bool {
        match (key, self) {
            (EntryKey::Node, Value::Node(_)) | (EntryKey::Leave, Value::Leave(_)) => true,
            (EntryKey::Service(id), Value::Service(s)) => s.id == id.as_str(),
            (EntryKey::Check(id), Value::Check(c)) => c.id == id.as_str(),
            _ => false,
        }
    }
}

/// One entry: the version of the change that last set it, and its value (`None`: removed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u64,
    pub value: Option<Value>,
}

/// One entry as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    pub key: EntryKey,
    pub version: u64,
    pub value: Option<Value>,
}

/// Changes of one node, as they travel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub node: Name,
    /// The run of the owner that authored these changes.
    pub run: u64,
    /// The entries hold every change of the node in (`from`, `to`] that is still current.
    pub from: u64,
    pub to: u64,
    /// With `full`, the entries are the node's whole live state at `to`, and `base` is the
    /// sender's base (the receiver may not serve deltas from below `to` afterwards).
    pub full: bool,
    pub entries: Vec<WireEntry>,
}

impl Delta {
    /// One entry's change from version `from` to `from + 1` (a removal when `value` is
    /// None): the smallest delta there is.
    pub fn single(
        node: impl Into<Name>,
        run: u64,
        from: u64,
        key: EntryKey,
        value: Option<Value>,
    ) -> Delta {
        Delta {
            node: node.into(),
            run,
            from,
            to: from + 1,
            full: false,
            entries: vec![WireEntry {
                key,
                version: from + 1,
                value,
            }],
        }
    }
}

/// Why a delta was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("delta range ({0}, {1}] is empty or reversed")]
    BadRange(u64, u64),
    #[error("entry version {version} outside the delta's range ({from}, {to}]")]
    OutOfRange { version: u64, from: u64, to: u64 },
    #[error("entry value does not match its key")]
    Mismatch,
    #[error("the same entry twice in one delta")]
    Duplicate,
    #[error("a full state cannot carry removals")]
    FullWithTombstone,
    #[error("node state would exceed {0} entries")]
    TooManyEntries(usize),
    #[error("entry of {0} bytes is over the limit of {MAX_HELD_ENTRY_BYTES}")]
    EntryTooLarge(usize),
    #[error("node state would hold {0} bytes, over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("node name of {0} bytes is over the limit of {MAX_NAME_BYTES}")]
    NameTooLong(usize),
}

/// What an entry costs a copy: its key and value, encoded.
fn entry_bytes(key: &EntryKey, value: Option<&Value>) -> usize {
    let key = postcard::experimental::serialized_size(key).unwrap_or(0);
    let value = value.map_or(0, |v| {
        postcard::experimental::serialized_size(v).unwrap_or(0)
    });
    key + value
}

/// One applied change: the entry's key and its new value (`None`: it is gone).
pub type Change = (EntryKey, Option<Value>);

/// A node's state as one member holds it. Cheap to clone (the entries share structure).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeData {
    /// The owner's run this copy follows (0: none yet).
    pub run: u64,
    /// Every change of the node up to this version is reflected here.
    pub version: u64,
    /// The highest entry version held; above `version` when changes arrived out of order.
    pub ahead: u64,
    /// Deltas starting below this cannot be built from this copy.
    pub base: u64,
    /// Ranges of changes received beyond a gap, (from, to], merged in once the gap fills.
    pending: Vec<(u64, u64)>,
    entries: RedBlackTreeMapSync<EntryKey, Entry>,
    live: usize,
    tombstones: usize,
    /// Encoded size of every entry held (see [`MAX_HELD_NODE_BYTES`]).
    bytes: usize,
}

impl NodeData {
    pub fn new() -> NodeData {
        NodeData::default()
    }

    /// An owner's own, empty state for a run starting at `version`.
    pub fn own(run: u64, version: u64) -> NodeData {
        NodeData {
            run,
            version,
            ahead: version,
            base: version,
            ..NodeData::default()
        }
    }

    /// (version, run): how copies of one node are ordered.
    pub fn stamp(&self) -> (u64, u64) {
        (self.version, self.run)
    }

    pub fn get(&self, key: &EntryKey) -> Option<&Value> {
        self.entries.get(key).and_then(|e| e.value.as_ref())
    }

    pub fn entry(&self, key: &EntryKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Live entries, in key order.
    pub fn values(&self) -> impl Iterator<Item = (&EntryKey, &Value)> {
        self.entries
            .iter()
            .filter_map(|(k, e)| e.value.as_ref().map(|v| (k, v)))
    }

    pub fn live(&self) -> usize {
        self.live
    }

    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    /// Encoded size of every entry held, keys included.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the copy is exactly the owner's state at `version` (no out-of-order extras).
    pub fn is_settled(&self) -> bool {
        self.ahead <= self.version
    }

    /// The leave marker's boot stamp, if the node has left.
    pub fn left_boot(&self) -> Option<u64> {
        match self.get(&EntryKey::Leave) {
            Some(Value::Leave(b)) => Some(*b),
            _ => None,
        }
    }

    fn put(&mut self, key: EntryKey, entry: Entry) {
        self.take(&key);
        if entry.value.is_some() {
            self.live += 1;
        } else {
            self.tombstones += 1;
        }
        self.bytes += entry_bytes(&key, entry.value.as_ref());
        self.entries.insert_mut(key, entry);
    }

    /// Removes an entry, keeping the counts in step.
    fn take(&mut self, key: &EntryKey) {
        if let Some(old) = self.entries.get(key) {
            if old.value.is_some() {
                self.live -= 1;
            } else {
                self.tombstones -= 1;
            }
            self.bytes = self
                .bytes
                .saturating_sub(entry_bytes(key, old.value.as_ref()));
            self.entries.remove_mut(key);
        }
    }

    // ----- the owner's side -----

    /// The owner records one change at the next version. Returns the delta that carries it.
    pub fn author(&mut self, node: &Name, key: EntryKey, value: Option<Value>) -> Delta {
        let version = self.version + 1;
        self.version = version;
        self.ahead = version;
        self.put(
            key.clone(),
            Entry {
                version,
                value: value.clone(),
            },
        );
        self.collect_tombstones();
        Delta {
            node: node.clone(),
            run: self.run,
            from: version - 1,
            to: version,
            full: false,
            entries: vec![WireEntry {
                key,
                version,
                value,
            }],
        }
    }

    /// The owner starts over above `version` (a restart that learnt its peers hold this
    /// version of it): every live entry is stamped again with a fresh version, tombstones are
    /// dropped and everything older is void.
    pub fn restamp_above(&mut self, version: u64) {
        let live: Vec<(EntryKey, Value)> =
            self.values().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut fresh = NodeData {
            run: self.run,
            version,
            ahead: version,
            base: version + 1,
            ..NodeData::default()
        };
        for (k, v) in live {
            fresh.version += 1;
            fresh.ahead = fresh.version;
            let version = fresh.version;
            fresh.put(
                k,
                Entry {
                    version,
                    value: Some(v),
                },
            );
        }
        *self = fresh;
    }

    /// Forgets the oldest tombstones once there are many, raising the base above them.
    fn collect_tombstones(&mut self) {
        let keep = MIN_TOMBSTONES.max(self.live / 2);
        if self.tombstones <= keep * 2 {
            return;
        }
        let mut dead: Vec<(u64, EntryKey)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.value.is_none())
            .map(|(k, e)| (e.version, k.clone()))
            .collect();
        dead.sort();
        let drop = dead.len() - keep;
        for (version, key) in dead.into_iter().take(drop) {
            self.take(&key);
            self.base = self.base.max(version);
        }
    }

    // ----- a copy's side -----

    /// What a peer whose copy is complete up to `have` (of run `have_run`) lacks: nothing,
    /// the changes since, or the whole state when `have` is below the base or from
    /// another run.
    pub fn delta_since(&self, node: &Name, have: u64, have_run: u64) -> Option<Delta> {
        if (have, have_run) >= (self.version, self.run) {
            // Entries we hold out of order beyond our own version are not ours to vouch
            // for; the peer gets them from whoever does.
            return None;
        }
        if have < self.base || have_run != self.run {
            return Some(self.full(node));
        }
        let mut entries: Vec<(u64, WireEntry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.version > have)
            .map(|(k, e)| {
                (
                    e.version,
                    WireEntry {
                        key: k.clone(),
                        version: e.version,
                        value: e.value.clone(),
                    },
                )
            })
            .collect();
        entries.sort_by_key(|(v, _)| *v);
        // Entries above our own version (held out of order) travel too; they do not
        // widen the range we vouch for.
        Some(Delta {
            node: node.clone(),
            run: self.run,
            from: have,
            to: self.version,
            full: false,
            entries: entries.into_iter().map(|(_, e)| e).collect(),
        })
    }

    /// The whole live state.
    pub fn full(&self, node: &Name) -> Delta {
        Delta {
            node: node.clone(),
            run: self.run,
            from: 0,
            to: self.version,
            full: true,
            entries: self
                .entries
                .iter()
                .filter(|(_, e)| e.value.is_some())
                .map(|(k, e)| WireEntry {
                    key: k.clone(),
                    version: e.version,
                    value: e.value.clone(),
                })
                .collect(),
        }
    }

    /// Checks a delta's shape before anything of it is applied.
    pub fn check(delta: &Delta) -> Result<(), DataError> {
        if delta.node.len() > MAX_NAME_BYTES {
            return Err(DataError::NameTooLong(delta.node.len()));
        }
        if delta.entries.len() > MAX_NODE_ENTRIES {
            return Err(DataError::TooManyEntries(MAX_NODE_ENTRIES));
        }
        if !delta.full && delta.from >= delta.to {
            return Err(DataError::BadRange(delta.from, delta.to));
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &delta.entries {
            if let Some(v) = &e.value {
                if !v.fits(&e.key) {
                    return Err(DataError::Mismatch);
                }
            } else if delta.full {
                return Err(DataError::FullWithTombstone);
            }
            if delta.full {
                if e.version > delta.to {
                    return Err(DataError::OutOfRange {
                        version: e.version,
                        from: 0,
                        to: delta.to,
                    });
                }
            } else if e.version <= delta.from {
                // Entries above `to` are allowed: the sender held them out of order.
                return Err(DataError::OutOfRange {
                    version: e.version,
                    from: delta.from,
                    to: delta.to,
                });
            }
            if !seen.insert(&e.key) {
                return Err(DataError::Duplicate);
            }
            let size = entry_bytes(&e.key, e.value.as_ref());
            if size > MAX_HELD_ENTRY_BYTES {
                return Err(DataError::EntryTooLarge(size));
            }
        }
        Ok(())
    }

    /// Applies a delta; returns the entries whose value changed. Applying the same delta
    /// twice, or deltas in any order, ends in the same state as applying each once in order.
    pub fn apply(&mut self, delta: &Delta) -> Result<Vec<Change>, DataError> {
        self.apply_within(delta, MAX_HELD_NODE_BYTES)
    }

    /// [`NodeData::apply`], refusing (with nothing changed) a delta after which this copy
    /// would hold more than `max_bytes` or [`MAX_NODE_ENTRIES`] entries.
    pub fn apply_within(
        &mut self,
        delta: &Delta,
        max_bytes: usize,
    ) -> Result<Vec<Change>, DataError> {
        Self::check(delta)?;
        let max_bytes = max_bytes.min(MAX_HELD_NODE_BYTES);
        if delta.full {
            return self.apply_full(delta, max_bytes);
        }
        // What the copy would hold afterwards, before anything of it is applied.
        let (mut count, mut bytes) = (self.live + self.tombstones, self.bytes);
        for e in &delta.entries {
            if self.newer(&e.key, e.version) {
                match self.entries.get(&e.key) {
                    Some(old) => {
                        bytes = bytes.saturating_sub(entry_bytes(&e.key, old.value.as_ref()))
                    }
                    None => count += 1,
                }
                bytes += entry_bytes(&e.key, e.value.as_ref());
            }
        }
        if count > MAX_NODE_ENTRIES {
            return Err(DataError::TooManyEntries(MAX_NODE_ENTRIES));
        }
        if bytes > max_bytes.max(self.bytes) {
            return Err(DataError::TooLarge(bytes, max_bytes));
        }
        let mut changes = Vec::new();
        for e in &delta.entries {
            if self.newer(&e.key, e.version) {
                let before = self.get(&e.key).cloned();
                self.put(
                    e.key.clone(),
                    Entry {
                        version: e.version,
                        value: e.value.clone(),
                    },
                );
                if before != e.value {
                    changes.push((e.key.clone(), e.value.clone()));
                }
                self.ahead = self.ahead.max(e.version);
            }
        }
        if self.run == 0 && self.version == 0 {
            self.run = delta.run;
        }
        // Only changes of the run we follow, starting where we are, move us forward; ranges
        // beyond a gap wait (a few of them) until it fills.
        if delta.run == self.run && delta.to > self.version {
            if delta.from <= self.version {
                self.version = delta.to;
                self.merge_pending();
            } else {
                if self.pending.len() >= MAX_PENDING_RANGES {
                    self.pending.remove(0);
                }
                self.pending.push((delta.from, delta.to));
            }
        }
        self.ahead = self.ahead.max(self.version);
        self.collect_tombstones();
        Ok(changes)
    }

    fn merge_pending(&mut self) {
        loop {
            let mut moved = false;
            for &(from, to) in &self.pending {
                if from <= self.version && to > self.version {
                    self.version = to;
                    moved = true;
                }
            }
            let v = self.version;
            self.pending.retain(|&(_, to)| to > v);
            if !moved {
                break;
            }
        }
    }

    /// Whether an entry at `version` for `key` is newer than what is held.
    fn newer(&self, key: &EntryKey, version: u64) -> bool {
        match self.entries.get(key) {
            Some(held) => version > held.version,
            // Anything at or below the base that we do not hold was voided or removed.
            None => version > self.base || self.version == 0,
        }
    }

    fn apply_full(&mut self, delta: &Delta, max_bytes: usize) -> Result<Vec<Change>, DataError> {
        if (delta.to, delta.run) <= self.stamp() {
            return Ok(Vec::new());
        }
        let mut next = NodeData {
            run: delta.run,
            version: delta.to,
            ahead: delta.to,
            // No tombstones came with it: changes from below `to` cannot be told from here.
            base: delta.to,
            ..NodeData::default()
        };
        for e in &delta.entries {
            next.put(
                e.key.clone(),
                Entry {
                    version: e.version,
                    value: e.value.clone(),
                },
            );
        }
        // Entries we hold out of order beyond the full state stay (they are newer).
        for (k, held) in self.entries.iter() {
            if held.version > delta.to {
                next.put(k.clone(), held.clone());
                next.ahead = next.ahead.max(held.version);
            }
        }
        if next.live + next.tombstones > MAX_NODE_ENTRIES {
            return Err(DataError::TooManyEntries(MAX_NODE_ENTRIES));
        }
        if next.bytes > max_bytes.max(self.bytes) {
            return Err(DataError::TooLarge(next.bytes, max_bytes));
        }
        let mut changes = Vec::new();
        for (k, e) in next.entries.iter() {
            if self.get(k) != e.value.as_ref() {
                changes.push((k.clone(), e.value.clone()));
            }
        }
        for (k, _) in self.values() {
            if next.entries.get(k).is_none() {
                changes.push((k.clone(), None));
            }
        }
        *self = next;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Weights;

    fn svc(id: &str, port: u16) -> Value {
        Value::Service(Arc::new(Service {
            id: id.into(),
            name: "web".into(),
            tags: vec![],
            address: String::new(),
            port,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        }))
    }

    fn key(id: &str) -> EntryKey {
        EntryKey::Service(id.into())
    }

    fn name() -> Name {
        "n1".into()
    }

    /// The owner's history: a, b, a changed, b removed, c.
    fn history() -> (NodeData, Vec<Delta>) {
        let mut owner = NodeData::own(1, 0);
        let n = name();
        let ds = vec![
            owner.author(&n, key("a"), Some(svc("a", 1))),
            owner.author(&n, key("b"), Some(svc("b", 2))),
            owner.author(&n, key("a"), Some(svc("a", 3))),
            owner.author(&n, key("b"), None),
            owner.author(&n, key("c"), Some(svc("c", 4))),
        ];
        (owner, ds)
    }

    fn live(d: &NodeData) -> Vec<(EntryKey, Value)> {
        d.values().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    #[test]
    fn deltas_in_any_order_or_twice_end_in_the_owners_state() {
        let (owner, ds) = history();
        let orders: Vec<Vec<usize>> = vec![
            vec![0, 1, 2, 3, 4],
            vec![4, 3, 2, 1, 0],
            vec![2, 0, 4, 1, 3],
            vec![0, 0, 1, 1, 2, 3, 3, 4, 4, 2],
        ];
        for order in orders {
            let mut copy = NodeData::new();
            for i in &order {
                copy.apply(&ds[*i]).unwrap();
            }
            assert_eq!(live(&copy), live(&owner), "order {order:?}");
            assert_eq!(copy.version, 5, "order {order:?}");
            assert!(copy.is_settled());
        }
    }

    #[test]
    fn a_missed_change_holds_the_version_until_the_gap_is_filled() {
        let (_, ds) = history();
        let mut copy = NodeData::new();
        copy.apply(&ds[0]).unwrap();
        copy.apply(&ds[2]).unwrap(); // missed ds[1]
        assert_eq!(copy.version, 1);
        assert_eq!(copy.ahead, 3);
        assert!(!copy.is_settled());
        copy.apply(&ds[1]).unwrap();
        assert_eq!(copy.version, 3);
        assert!(copy.is_settled());
    }

    #[test]
    fn delta_since_gives_exactly_what_is_missing() {
        let (owner, ds) = history();
        let mut copy = NodeData::new();
        copy.apply(&ds[0]).unwrap();
        copy.apply(&ds[1]).unwrap();
        let d = owner.delta_since(&name(), copy.version, copy.run).unwrap();
        assert!(!d.full);
        assert_eq!((d.from, d.to), (2, 5));
        assert_eq!(d.entries.len(), 3); // a@3, b removed@4, c@5
        let changes = copy.apply(&d).unwrap();
        assert_eq!(changes.len(), 3);
        assert_eq!(live(&copy), live(&owner));
        assert!(owner.delta_since(&name(), 5, 1).is_none());
    }

    #[test]
    fn a_copy_behind_the_base_gets_the_whole_state_and_loses_what_is_gone() {
        let (mut owner, ds) = history();
        let mut copy = NodeData::new();
        copy.apply(&ds[0]).unwrap();
        copy.apply(&ds[1]).unwrap(); // holds a@1, b@2
        owner.restamp_above(40); // a restart above version 40: a, c again; b stays gone
        assert_eq!(owner.base, 41);
        let d = owner.delta_since(&name(), copy.version, copy.run).unwrap();
        assert!(d.full);
        copy.apply(&d).unwrap();
        assert_eq!(live(&copy), live(&owner));
        assert!(copy.get(&key("b")).is_none());
        assert_eq!(copy.version, owner.version);
        // After a full state a copy cannot tell older changes apart: it too has a base.
        assert!(copy.delta_since(&name(), 10, copy.run).unwrap().full);
    }

    #[test]
    fn another_runs_state_at_the_same_version_is_replaced_whole() {
        // A restarted owner that has not yet learnt what peers hold reaches the version its
        // previous run had, with other contents.
        let (old, _) = history();
        let n = name();
        let mut new = NodeData::own(2, 0);
        for i in 0..5 {
            let id = format!("z{i}");
            new.author(&n, key(&id), Some(svc(&id, 9)));
        }
        assert_eq!(old.version, new.version);
        let mut copy = (*Box::new(old.clone())).clone();
        // The run decides the tie, and a copy of another run is never diffed against.
        let d = new.delta_since(&n, copy.version, copy.run).unwrap();
        assert!(d.full);
        copy.apply(&d).unwrap();
        assert_eq!(live(&copy), live(&new));
        assert_eq!(copy.run, 2);
    }

    #[test]
    fn old_entries_from_before_a_restart_do_not_come_back() {
        let (mut owner, ds) = history();
        owner.restamp_above(40);
        let mut copy = NodeData::new();
        copy.apply(&owner.full(&name())).unwrap();
        for d in &ds {
            copy.apply(d).unwrap();
        }
        assert_eq!(live(&copy), live(&owner));
    }

    #[test]
    fn tombstones_are_bounded_and_raise_the_base() {
        let mut owner = NodeData::own(1, 0);
        let n = name();
        for i in 0..1000 {
            let id = format!("s{i}");
            owner.author(&n, key(&id), Some(svc(&id, 1)));
            owner.author(&n, key(&id), None);
        }
        assert!(
            owner.tombstones() <= MIN_TOMBSTONES * 2,
            "{}",
            owner.tombstones()
        );
        assert!(owner.base > 1000);
        // A copy far behind gets the whole (empty) state.
        let d = owner.delta_since(&n, 5, 1).unwrap();
        assert!(d.full && d.entries.is_empty());
    }

    /// A service of about `bytes` encoded.
    fn big(id: &str, bytes: usize) -> Value {
        let mut meta = BTreeMap::new();
        for i in 0..bytes / 1000 {
            meta.insert(format!("k{i}"), "x".repeat(990));
        }
        Value::Service(Arc::new(Service {
            id: id.into(),
            name: "big".into(),
            tags: vec![],
            address: String::new(),
            port: 1,
            meta,
            weights: Weights::default(),
            enable_tag_override: false,
        }))
    }

    fn one(id: &str, from: u64, value: Option<Value>) -> Delta {
        Delta::single(name(), 1, from, key(id), value)
    }

    #[test]
    fn what_a_copy_holds_is_bounded_and_a_refusal_changes_nothing() {
        // One entry over the limit (key and value encoded) is refused.
        let mut copy = NodeData::new();
        let err = copy
            .apply(&one("a", 0, Some(big("a", MAX_HELD_ENTRY_BYTES + 1000))))
            .unwrap_err();
        assert!(matches!(err, DataError::EntryTooLarge(_)), "{err}");
        // A tombstone's key counts too.
        let long = "k".repeat(MAX_HELD_ENTRY_BYTES + 1);
        assert!(copy.apply(&one(&long, 0, None)).is_err());
        assert_eq!(copy, NodeData::new());

        // The whole state: entries under the entry limit, until the node limit.
        let mut from = 0;
        loop {
            let before = copy.clone();
            let id = format!("s{from}");
            match copy.apply(&one(&id, from, Some(big(&id, 100_000)))) {
                Ok(_) => from += 1,
                Err(e) => {
                    assert!(matches!(e, DataError::TooLarge(..)), "{e}");
                    assert_eq!(copy, before, "a refused delta changed the copy");
                    break;
                }
            }
        }
        assert!(copy.bytes() <= MAX_HELD_NODE_BYTES);
        assert!(copy.bytes() > MAX_HELD_NODE_BYTES - 200_000);
        // Shrinking is always allowed, even below a smaller limit.
        copy.apply_within(&one("s0", from, None), 1).unwrap();
        // A full state over the limit is refused whole.
        let mut owner = NodeData::own(2, 0);
        for i in 0..50 {
            let id = format!("f{i}");
            owner.author(&name(), key(&id), Some(big(&id, 100_000)));
        }
        let mut fresh = NodeData::new();
        assert!(fresh.apply(&owner.full(&name())).is_err());
        assert_eq!(fresh, NodeData::new());
    }

    #[test]
    fn bytes_are_counted_as_entries_come_and_go() {
        let (owner, ds) = history();
        let mut copy = NodeData::new();
        for d in &ds {
            copy.apply(d).unwrap();
        }
        let expect: usize = copy
            .entries
            .iter()
            .map(|(k, e)| entry_bytes(k, e.value.as_ref()))
            .sum();
        assert_eq!(copy.bytes(), expect);
        assert!(expect > 0);
        let mut whole = NodeData::new();
        whole.apply(&owner.full(&name())).unwrap();
        let expect: usize = whole.values().map(|(k, v)| entry_bytes(k, Some(v))).sum();
        assert_eq!(whole.bytes(), expect);
    }

    #[test]
    fn overlong_node_names_are_refused() {
        let mut d = one("a", 0, None);
        d.node = "n".repeat(MAX_NAME_BYTES + 1).into();
        assert_eq!(
            NodeData::new().apply(&d),
            Err(DataError::NameTooLong(MAX_NAME_BYTES + 1))
        );
    }

    #[test]
    fn malformed_deltas_are_refused_before_anything_changes() {
        let mut copy = NodeData::new();
        let bad = [
            Delta {
                node: name(),
                run: 1,
                from: 3,
                to: 3,
                full: false,
                entries: vec![],
            },
            Delta {
                node: name(),
                run: 1,
                from: 0,
                to: 2,
                full: false,
                entries: vec![WireEntry {
                    key: key("a"),
                    version: 1,
                    value: Some(svc("other", 1)),
                }],
            },
            Delta {
                node: name(),
                run: 1,
                from: 4,
                to: 6,
                full: false,
                entries: vec![WireEntry {
                    key: key("a"),
                    version: 2,
                    value: Some(svc("a", 1)),
                }],
            },
            Delta {
                node: name(),
                run: 1,
                from: 0,
                to: 2,
                full: false,
                entries: vec![
                    WireEntry {
                        key: key("a"),
                        version: 1,
                        value: None,
                    },
                    WireEntry {
                        key: key("a"),
                        version: 2,
                        value: None,
                    },
                ],
            },
            Delta {
                node: name(),
                run: 1,
                from: 0,
                to: 2,
                full: true,
                entries: vec![WireEntry {
                    key: key("a"),
                    version: 1,
                    value: None,
                }],
            },
        ];
        for d in bad {
            assert!(copy.apply(&d).is_err(), "{d:?}");
            assert_eq!(copy, NodeData::new());
        }
    }
}
