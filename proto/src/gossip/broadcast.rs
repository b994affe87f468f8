//! foca's custom-broadcast handler for the catalog: decides which received items are news
//! (and so worth relaying), reassembles record parts, and hands complete records and leave
//! intents to the owner of the catalog.
//!
//! Dedup is by (node, version, part): a part is relayed once per version, and nothing older
//! than the newest complete version of a node is ever relayed again. The [`Ledger`] is
//! shared (behind a mutex) between the handler inside foca and the task that owns foca, so
//! that task can drain [`Delivery`]s and tell the ledger about records learnt by push-pull.

use super::identity::NodeId;
use super::message::{decode_record, Item, MessageError};
use crate::model::NodeRecord;
use foca::{BroadcastHandler, Invalidates};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// Records being reassembled at once; beyond this new ones wait for push-pull.
pub const MAX_ASSEMBLIES: usize = 4096;
/// Bytes held by all partial records together (parts are small, but many large partial
/// records must not add up to gigabytes); beyond this new parts wait for push-pull.
pub const MAX_ASSEMBLY_BYTES: usize = 64 * 1024 * 1024;
/// Undrained deliveries kept; beyond this the oldest are dropped (push-pull repairs).
pub const MAX_PENDING: usize = 65536;

/// What the catalog owner must apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    Record(NodeRecord),
    Leave(NodeId),
}

/// What a broadcast item is about, for foca's backlog replacement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemKey {
    Part {
        node: String,
        version: u64,
        part: u16,
    },
    Leave {
        node: String,
        boot: u64,
    },
}

impl Invalidates for ItemKey {
    /// A newer version of a node's record makes every part of older versions moot; a leave
    /// makes the leaver's pending record parts moot.
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (
                ItemKey::Part {
                    node: a,
                    version: va,
                    part: pa,
                },
                ItemKey::Part {
                    node: b,
                    version: vb,
                    part: pb,
                },
            ) => a == b && (va > vb || (va == vb && pa == pb)),
            (ItemKey::Leave { node: a, boot: ba }, ItemKey::Leave { node: b, boot: bb }) => {
                a == b && ba >= bb
            }
            (ItemKey::Leave { node: a, .. }, ItemKey::Part { node: b, .. }) => a == b,
            (ItemKey::Part { .. }, ItemKey::Leave { .. }) => false,
        }
    }
}

struct Assembly {
    version: u64,
    parts: Vec<Option<Vec<u8>>>,
    have: usize,
    /// Bytes of the parts received so far.
    bytes: usize,
}

/// Which versions and leaves this member has seen, the records being reassembled, and the
/// deliveries waiting for the catalog owner.
#[derive(Default)]
pub struct Ledger {
    /// Newest complete version per node.
    versions: HashMap<String, u64>,
    assemblies: HashMap<String, Assembly>,
    /// Bytes held by `assemblies` together (bounded by [`MAX_ASSEMBLY_BYTES`]).
    assembly_bytes: usize,
    /// Newest boot per node whose leave was seen.
    leaves: HashMap<String, u64>,
    pending: VecDeque<Delivery>,
}

impl Ledger {
    /// Notes that the catalog holds `node` at `version` (learnt by push-pull, or our own),
    /// so older parts are no longer relayed.
    pub fn note_version(&mut self, node: &str, version: u64) {
        let v = self.versions.entry(node.to_string()).or_insert(0);
        if version > *v {
            *v = version;
        }
        if self
            .assemblies
            .get(node)
            .is_some_and(|a| a.version <= version)
        {
            self.drop_assembly(node);
        }
    }

    /// Removes a partial record and gives its bytes back to the budget.
    fn drop_assembly(&mut self, node: &str) -> Option<Assembly> {
        let a = self.assemblies.remove(node)?;
        self.assembly_bytes = self.assembly_bytes.saturating_sub(a.bytes);
        Some(a)
    }

    /// Forgets every node `known` says no longer exists (called when members are reaped),
    /// so that names peers once mentioned do not pile up.
    pub fn retain_known(&mut self, known: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .versions
            .keys()
            .chain(self.leaves.keys())
            .chain(self.assemblies.keys())
            .filter(|n| !known(n))
            .cloned()
            .collect();
        for n in gone {
            self.forget(&n);
        }
    }

    pub fn version(&self, node: &str) -> Option<u64> {
        self.versions.get(node).copied()
    }

    /// Forgets a node (reaped or force-left).
    pub fn forget(&mut self, node: &str) {
        self.versions.remove(node);
        self.drop_assembly(node);
        self.leaves.remove(node);
    }

    pub fn drain(&mut self) -> Vec<Delivery> {
        self.pending.drain(..).collect()
    }

    fn deliver(&mut self, d: Delivery) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(d);
    }

    /// Takes one item; returns its key when it is news to relay.
    fn receive(&mut self, item: Item, local: bool) -> Result<Option<ItemKey>, MessageError> {
        match item {
            Item::Leave { id } => {
                if self.leaves.get(&id.name).is_some_and(|b| *b >= id.boot) {
                    return Ok(None);
                }
                self.leaves.insert(id.name.clone(), id.boot);
                let key = ItemKey::Leave {
                    node: id.name.clone(),
                    boot: id.boot,
                };
                if !local {
                    self.deliver(Delivery::Leave(id));
                }
                Ok(Some(key))
            }
            Item::RecordPart {
                node,
                version,
                part,
                parts,
                data,
            } => {
                let key = ItemKey::Part {
                    node: node.clone(),
                    version,
                    part,
                };
                if local {
                    // Our own record: the caller already holds it whole.
                    self.note_version(&node, version);
                    return Ok(Some(key));
                }
                if self.versions.get(&node).is_some_and(|v| *v >= version) {
                    return Ok(None);
                }
                // `Item::decode`, the only way items arrive here, already refused part
                // numbers out of range.
                let fresh = match self.assemblies.get(&node) {
                    Some(a) if a.version > version => return Ok(None),
                    Some(a) => a.version < version || a.parts.len() != parts as usize,
                    None => {
                        if self.assemblies.len() >= MAX_ASSEMBLIES {
                            return Ok(None);
                        }
                        true
                    }
                };
                if fresh {
                    self.drop_assembly(&node);
                    self.assemblies.insert(
                        node.clone(),
                        Assembly {
                            version,
                            parts: vec![None; parts as usize],
                            have: 0,
                            bytes: 0,
                        },
                    );
                }
                let Some(a) = self.assemblies.get_mut(&node) else {
                    return Ok(None);
                };
                let Some(slot) = a.parts.get_mut(part as usize) else {
                    return Ok(None);
                };
                if slot.is_some() {
                    return Ok(None);
                }
                if self.assembly_bytes + data.len() > MAX_ASSEMBLY_BYTES {
                    return Ok(None);
                }
                self.assembly_bytes += data.len();
                a.bytes += data.len();
                *slot = Some(data);
                a.have += 1;
                if a.have == a.parts.len() {
                    if let Some(a) = self.drop_assembly(&node) {
                        let bytes: Vec<u8> = a.parts.into_iter().flatten().flatten().collect();
                        let record = decode_record(&bytes)?;
                        if record.name != node || record.version != version {
                            return Err(MessageError::Invalid("record does not match its parts"));
                        }
                        self.note_version(&node, version);
                        self.deliver(Delivery::Record(record));
                    }
                }
                Ok(Some(key))
            }
        }
    }
}

/// A ledger shared by the handler and the task that owns foca.
#[derive(Clone, Default)]
pub struct SharedLedger(Arc<Mutex<Ledger>>);

impl SharedLedger {
    pub fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic elsewhere while holding the lock leaves plain data; keep using it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handler given to foca.
pub struct CatalogBroadcasts {
    pub ledger: SharedLedger,
}

impl CatalogBroadcasts {
    pub fn new(ledger: SharedLedger) -> Self {
        CatalogBroadcasts { ledger }
    }
}

impl BroadcastHandler<NodeId> for CatalogBroadcasts {
    type Key = ItemKey;
    type Error = MessageError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<ItemKey>, MessageError> {
        let item = Item::decode(data)?;
        self.ledger.lock().receive(item, sender.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::super::message::split_record;
    use super::*;

    fn rec(name: &str, services: usize, version: u64) -> NodeRecord {
        let mut r = NodeRecord::new(name, "dc1", "10.0.0.1".parse().unwrap());
        r.version = version;
        for i in 0..services {
            r.meta.insert(format!("key-{i:04}"), "v".repeat(40));
        }
        r
    }

    fn peer() -> NodeId {
        NodeId::new("p", "127.0.0.1:1".parse().unwrap(), 1)
    }

    #[test]
    fn partial_records_are_bounded_in_bytes_and_forgotten_when_unknown() {
        let ledger = SharedLedger::default();
        let mut h = CatalogBroadcasts::new(ledger.clone());
        let p = peer();
        // Many nodes each sending only the first part of a big record: the held bytes stop
        // growing at the budget.
        let big = rec("x", 400, 1);
        let parts = split_record(&big).unwrap();
        assert!(parts.len() > 2);
        let mut i = 0u32;
        loop {
            let mut r = big.clone();
            r.name = format!("n{i}");
            let first = split_record(&r).unwrap().remove(0);
            let _ = h.receive_item(&first, Some(&p));
            i += 1;
            let l = ledger.lock();
            assert!(l.assembly_bytes <= MAX_ASSEMBLY_BYTES);
            if l.assemblies.len() >= MAX_ASSEMBLIES || i > MAX_ASSEMBLIES as u32 + 10 {
                break;
            }
        }
        // Names nobody knows any more are dropped, with their bytes.
        ledger.lock().retain_known(|n| n == "n1");
        let l = ledger.lock();
        assert_eq!(l.assemblies.len(), 1);
        assert_eq!(l.assembly_bytes, l.assemblies["n1"].bytes);
    }

    #[test]
    fn parts_in_any_order_deliver_once() {
        let ledger = SharedLedger::default();
        let mut h = CatalogBroadcasts::new(ledger.clone());
        let r = rec("n", 60, 3);
        let mut items = split_record(&r).unwrap();
        assert!(items.len() > 2);
        items.reverse();
        let p = peer();
        for it in &items {
            assert!(h.receive_item(it, Some(&p)).unwrap().is_some());
        }
        for it in &items {
            assert!(
                h.receive_item(it, Some(&p)).unwrap().is_none(),
                "dup relayed"
            );
        }
        assert_eq!(ledger.lock().drain(), vec![Delivery::Record(r)]);
    }

    #[test]
    fn older_versions_are_not_news() {
        let ledger = SharedLedger::default();
        let mut h = CatalogBroadcasts::new(ledger.clone());
        let p = peer();
        let new = split_record(&rec("n", 1, 5)).unwrap();
        let old = split_record(&rec("n", 1, 4)).unwrap();
        assert!(h.receive_item(&new[0], Some(&p)).unwrap().is_some());
        assert!(h.receive_item(&old[0], Some(&p)).unwrap().is_none());
        ledger.lock().note_version("m", 9);
        let m = split_record(&rec("m", 1, 8)).unwrap();
        assert!(h.receive_item(&m[0], Some(&p)).unwrap().is_none());
    }

    #[test]
    fn leave_is_delivered_once_and_invalidates_parts() {
        let ledger = SharedLedger::default();
        let mut h = CatalogBroadcasts::new(ledger.clone());
        let id = NodeId::new("n", "127.0.0.1:2".parse().unwrap(), 7);
        let item = Item::Leave { id: id.clone() }.encode();
        let key = h.receive_item(&item, Some(&peer())).unwrap().unwrap();
        assert!(h.receive_item(&item, Some(&peer())).unwrap().is_none());
        assert_eq!(ledger.lock().drain(), vec![Delivery::Leave(id)]);
        assert!(key.invalidates(&ItemKey::Part {
            node: "n".into(),
            version: 1,
            part: 0
        }));
    }

    #[test]
    fn own_items_are_relayed_not_delivered() {
        let ledger = SharedLedger::default();
        let mut h = CatalogBroadcasts::new(ledger.clone());
        let items = split_record(&rec("me", 1, 2)).unwrap();
        assert!(h.receive_item(&items[0], None).unwrap().is_some());
        assert!(ledger.lock().drain().is_empty());
        assert!(h.receive_item(&items[0], Some(&peer())).unwrap().is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut h = CatalogBroadcasts::new(SharedLedger::default());
        assert!(h.receive_item(&[0xff, 0xff, 0xff], Some(&peer())).is_err());
        // A single part claiming to be a whole record that does not decode.
        let bad = Item::RecordPart {
            node: "x".into(),
            version: 1,
            part: 0,
            parts: 1,
            data: vec![0xff; 10],
        }
        .encode();
        assert!(h.receive_item(&bad, Some(&peer())).is_err());
    }
}
