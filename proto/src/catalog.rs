//! The catalog: every node's services and checks as this agent knows them, each node's
//! standing, and the indexes that drive blocking queries.
//!
//! It is built from changes, one entry at a time (a service, a check, a node's facts), as the
//! gossip node reports them, and from member verdicts; applying a change costs about the size
//! of the change, never the size of the catalog. Everything is held in persistent maps, so a
//! [`Snapshot`] is a copy of a few pointers and keeps sharing all it did not change with the
//! catalog after it.
//!
//! Index rule: one counter rises with every applied batch of changes, and is stamped on what
//! changed: the node, each service instance, each check, and each service *name* (so a watcher
//! of `web` is not woken by a change to `db`). Indexes never go backwards.
//!
//! The catalog is a value: one owner mutates it and publishes snapshots; readers never wait.

use crate::gossip::{Change, EntryKey, Value};
use crate::model::{Check, HealthStatus, Map, MemberStatus, NodeRecord, Service};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

/// Raft-style create/modify indexes of one catalog item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Indexes {
    pub create: u64,
    pub modify: u64,
}

/// One node as the catalog holds it: its record, its standing and the indexes.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    pub record: NodeRecord,
    pub status: MemberStatus,
    /// A member (SWIM told us of it). A node known only from state pushed ahead of its
    /// membership is held but not shown.
    pub listed: bool,
    /// Whether its instances belong in answers (up, or held by protect mode).
    pub served: bool,
    /// Answers that include it are flagged stale (held by protect mode, or back after a
    /// failure and not yet reconciled).
    pub stale: bool,
    /// The gossip address of the member, when known (shown by `/v1/agent/members`).
    pub gossip_addr: Option<SocketAddr>,
    /// When `status` last changed, in the caller's clock (milliseconds).
    pub status_since_ms: u64,
    pub indexes: Indexes,
    service_indexes: Map<String, Indexes>,
    check_indexes: Map<String, Indexes>,
}

impl NodeEntry {
    fn new(record: NodeRecord, index: u64, now_ms: u64) -> NodeEntry {
        NodeEntry {
            record,
            status: MemberStatus::Alive,
            listed: false,
            served: false,
            stale: false,
            gossip_addr: None,
            status_since_ms: now_ms,
            indexes: Indexes {
                create: index,
                modify: index,
            },
            service_indexes: Map::new_sync(),
            check_indexes: Map::new_sync(),
        }
    }

    /// Whether this node's services belong in answers.
    pub fn serving(&self) -> bool {
        self.listed && self.served
    }

    pub fn service_indexes(&self, service_id: &str) -> Indexes {
        self.service_indexes
            .get(service_id)
            .copied()
            .unwrap_or(self.indexes)
    }

    pub fn check_indexes(&self, check_id: &str) -> Indexes {
        self.check_indexes
            .get(check_id)
            .copied()
            .unwrap_or(self.indexes)
    }

    /// Aggregate health of one instance on this node: the worst of its own checks and the
    /// node-level checks. A node that is not served counts as critical.
    pub fn instance_health(&self, service_id: &str) -> HealthStatus {
        if !self.serving() {
            return HealthStatus::Critical;
        }
        self.record
            .checks_for_service(service_id)
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Passing)
    }
}

/// The instances of one service name (any case), with what `/v1/catalog/services` shows.
#[derive(Clone, Debug, Default)]
struct NameEntry {
    index: u64,
    /// (node, service id) of every instance, served or not, in node order.
    instances: Map<(String, String), ()>,
    /// Instances on serving nodes, by exact name: how many, and how many carry each tag.
    serving: BTreeMap<String, (usize, BTreeMap<String, usize>)>,
}

/// What changed when something was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The catalog index after the change (unchanged when nothing changed).
    pub index: u64,
    pub changed: bool,
}

/// Which answers' indexes moved since the last [`Catalog::take_touched`], so that the owner
/// wakes only the blocking queries waiting on them (a change to `db` wakes no watcher of
/// `web`). Its size is that of the changes, never that of the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Service names (lowercase) whose index moved.
    pub names: BTreeSet<String>,
    /// Nodes whose own index moved (added, changed, removed).
    pub nodes: BTreeSet<String>,
    /// The node list's index moved.
    pub node_list: bool,
    /// The service-name list's index moved.
    pub service_list: bool,
    /// A name was forgotten, so the index of every name not held moved.
    pub absent_names: bool,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self == &Touched::default()
    }
}

/// Why an update was not applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("record for node {node} has version {offered}, not newer than {held}")]
    Stale {
        node: String,
        offered: u64,
        held: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown node {0}")]
pub struct UnknownNode(pub String);

/// A member's standing, as the catalog takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub status: MemberStatus,
    pub served: bool,
    pub stale: bool,
    pub gossip_addr: Option<SocketAddr>,
}

impl Standing {
    pub fn alive() -> Standing {
        Standing {
            status: MemberStatus::Alive,
            served: true,
            stale: false,
            gossip_addr: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Catalog {
    nodes: Map<String, Arc<NodeEntry>>,
    names: Map<String, Arc<NameEntry>>,
    index: u64,
    /// The index at which a name was last forgotten; the index of every name not held, so
    /// that forgetting a name never sends its index backwards.
    pruned_floor: u64,
    /// Last index at which the set of nodes (or their addresses/status/meta) changed.
    nodes_index: u64,
    /// Last index at which the set of service names or their tags changed.
    services_index: u64,
    /// The datacenter of nodes known before their node info arrives.
    datacenter: String,
    protect_since_ms: Option<u64>,
    stale_nodes: usize,
    stale_since_ms: Option<u64>,
    touched: Touched,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl Catalog {
    pub fn new() -> Self {
        Catalog {
            nodes: Map::new_sync(),
            names: Map::new_sync(),
            index: 1,
            pruned_floor: 0,
            nodes_index: 1,
            services_index: 1,
            datacenter: "dc1".into(),
            protect_since_ms: None,
            stale_nodes: 0,
            stale_since_ms: None,
            touched: Touched::default(),
        }
    }

    /// What moved since the last call (see [`Touched`]).
    pub fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    fn set_nodes_index(&mut self, index: u64) {
        self.nodes_index = index;
        self.touched.node_list = true;
    }

    fn set_services_index(&mut self, index: u64) {
        self.services_index = index;
        self.touched.service_list = true;
    }

    /// The datacenter shown for members whose node info has not arrived yet.
    pub fn set_datacenter(&mut self, dc: &str) {
        self.datacenter = dc.to_string();
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn node(&self, name: &str) -> Option<&Arc<NodeEntry>> {
        self.nodes.get(name)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Arc<NodeEntry>> {
        self.nodes.values()
    }

    fn bump(&mut self) -> u64 {
        self.index += 1;
        self.index
    }

    /// Counts an instance in (or out of) its name's entry.
    fn count_instance(&mut self, node: &str, svc: &Service, serving: bool, add: bool) {
        let key = lower(&svc.name);
        let mut e = self
            .names
            .get(&key)
            .map(|e| NameEntry::clone(e))
            .unwrap_or_default();
        let inst = (node.to_string(), svc.id.clone());
        if add {
            e.instances.insert_mut(inst, ());
        } else {
            e.instances.remove_mut(&inst);
        }
        if serving {
            let slot = e.serving.entry(svc.name.clone()).or_default();
            if add {
                slot.0 += 1;
                for t in &svc.tags {
                    *slot.1.entry(t.clone()).or_default() += 1;
                }
            } else {
                slot.0 = slot.0.saturating_sub(1);
                for t in &svc.tags {
                    if let Some(n) = slot.1.get_mut(t) {
                        *n -= 1;
                        if *n == 0 {
                            slot.1.remove(t);
                        }
                    }
                }
                if slot.0 == 0 {
                    e.serving.remove(&svc.name);
                }
            }
        }
        if e.instances.is_empty() {
            self.names.remove_mut(&key);
        } else {
            self.names.insert_mut(key, Arc::new(e));
        }
    }

    /// Stamps `index` on each name; a name with no instances left raises the floor that all
    /// unknown names answer with instead.
    fn stamp_names(&mut self, names: impl IntoIterator<Item = String>, index: u64) {
        for name in names {
            match self.names.get(&name) {
                Some(e) => {
                    let mut e = NameEntry::clone(e);
                    e.index = index;
                    self.names.insert_mut(name.clone(), Arc::new(e));
                    self.touched.names.insert(name);
                }
                None => {
                    self.pruned_floor = index;
                    self.touched.absent_names = true;
                    self.touched.names.insert(name);
                }
            }
        }
    }

    /// Applies changes to a node's entries (its services, checks and node facts), as the
    /// gossip node reports them, or as this agent authors them for itself. Costs about the
    /// size of the changes. Returns whether anything changed.
    pub fn apply_changes(&mut self, node: &str, changes: &[Change], now_ms: u64) -> Outcome {
        let index = self.index + 1;
        let mut entry = match self.nodes.get(node) {
            Some(e) => NodeEntry::clone(e),
            None => NodeEntry::new(
                NodeRecord::new(node, self.datacenter.clone(), [0, 0, 0, 0].into()),
                index,
                now_ms,
            ),
        };
        let serving = entry.serving();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut changed = false;
        let mut node_changed = false;
        let mut services_changed = false;
        let mut touch_all = false;
        for (key, value) in changes {
            match (key, value) {
                (EntryKey::Node, Some(Value::Node(info))) => {
                    let r = &mut entry.record;
                    if r.datacenter != info.datacenter
                        || r.address != info.address
                        || r.meta != info.meta
                    {
                        r.datacenter = info.datacenter.clone();
                        r.address = info.address;
                        r.meta = info.meta.clone();
                        node_changed = true;
                        touch_all = true;
                    }
                }
                (EntryKey::Service(id), value) => {
                    let new = match value {
                        Some(Value::Service(s)) => Some(s.clone()),
                        _ => None,
                    };
                    let old = entry.record.services.get(id.as_str()).cloned();
                    if old == new {
                        continue;
                    }
                    changed = true;
                    if let Some(o) = &old {
                        self.count_instance(node, o, serving, false);
                        touched.insert(lower(&o.name));
                    }
                    match &new {
                        Some(n) => {
                            self.count_instance(node, n, serving, true);
                            touched.insert(lower(&n.name));
                            let create = old
                                .as_ref()
                                .map_or(index, |_| entry.service_indexes(id).create);
                            entry.service_indexes.insert_mut(
                                id.to_string(),
                                Indexes {
                                    create,
                                    modify: index,
                                },
                            );
                            entry.record.put_service(n.clone());
                        }
                        None => {
                            entry.service_indexes.remove_mut(id.as_str());
                            entry.record.remove_service(id);
                        }
                    }
                    let shown = |s: &Option<Arc<Service>>| {
                        s.as_ref().map(|s| (s.name.clone(), s.tags.clone()))
                    };
                    if shown(&old) != shown(&new) {
                        services_changed = true;
                    }
                }
                (EntryKey::Check(id), value) => {
                    let new = match value {
                        Some(Value::Check(c)) => Some(c.clone()),
                        _ => None,
                    };
                    let old = entry.record.checks.get(id.as_str()).cloned();
                    if old == new {
                        continue;
                    }
                    changed = true;
                    for c in old.iter().chain(new.iter()) {
                        if c.service_id.is_empty() {
                            touch_all = true;
                        } else if let Some(s) = entry.record.services.get(&c.service_id).cloned() {
                            touched.insert(lower(&s.name));
                            let ix = entry.service_indexes(&c.service_id);
                            entry.service_indexes.insert_mut(
                                c.service_id.clone(),
                                Indexes {
                                    create: ix.create,
                                    modify: index,
                                },
                            );
                        }
                    }
                    match &new {
                        Some(n) => {
                            let create = old
                                .as_ref()
                                .map_or(index, |_| entry.check_indexes(id).create);
                            entry.check_indexes.insert_mut(
                                id.to_string(),
                                Indexes {
                                    create,
                                    modify: index,
                                },
                            );
                            entry.record.put_check(n.clone());
                        }
                        None => {
                            entry.check_indexes.remove_mut(id.as_str());
                            entry.record.remove_check(id);
                        }
                    }
                }
                // A leave marker shows through the member's standing, not its entries.
                _ => {}
            }
        }
        if !changed && !node_changed {
            return Outcome {
                index: self.index,
                changed: false,
            };
        }
        self.index = index;
        entry.indexes.modify = index;
        self.touched.nodes.insert(node.to_string());
        entry.record.version += 1;
        if touch_all {
            // Node facts and node-level checks show in every instance of the node.
            for (id, svc) in entry.record.services.iter() {
                touched.insert(lower(&svc.name));
                let ix = entry.service_indexes(id);
                entry.service_indexes.insert_mut(
                    id.clone(),
                    Indexes {
                        create: ix.create,
                        modify: index,
                    },
                );
            }
        }
        if node_changed && entry.listed {
            self.set_nodes_index(index);
        }
        if services_changed && serving {
            self.set_services_index(index);
        }
        self.stamp_names(touched, index);
        self.nodes.insert_mut(node.to_string(), Arc::new(entry));
        Outcome {
            index,
            changed: true,
        }
    }

    /// Sets a member's standing (status, whether it is served and flagged). A member not
    /// known yet is listed at once, with no services until its state arrives. Every instance
    /// on the node changes visibility when `served` changes, so every one of its names is
    /// touched.
    pub fn set_standing(&mut self, node: &str, s: Standing, now_ms: u64) -> Outcome {
        let index = self.index + 1;
        let mut entry = match self.nodes.get(node) {
            Some(e) => NodeEntry::clone(e),
            None => NodeEntry::new(
                NodeRecord::new(node, self.datacenter.clone(), [0, 0, 0, 0].into()),
                index,
                now_ms,
            ),
        };
        if entry.listed
            && entry.status == s.status
            && entry.served == s.served
            && entry.stale == s.stale
            && (s.gossip_addr.is_none() || entry.gossip_addr == s.gossip_addr)
        {
            return Outcome {
                index: self.index,
                changed: false,
            };
        }
        self.index = index;
        let was_serving = entry.serving();
        let was_listed = entry.listed;
        if entry.stale != s.stale {
            if s.stale {
                self.stale_nodes += 1;
                if self.stale_nodes == 1 {
                    self.stale_since_ms = Some(now_ms);
                }
            } else {
                self.stale_nodes = self.stale_nodes.saturating_sub(1);
                if self.stale_nodes == 0 {
                    self.stale_since_ms = None;
                }
            }
        }
        if !entry.listed || entry.status != s.status {
            entry.status_since_ms = now_ms;
        }
        entry.listed = true;
        entry.status = s.status;
        entry.served = s.served;
        entry.stale = s.stale;
        if s.gossip_addr.is_some() {
            entry.gossip_addr = s.gossip_addr;
        }
        entry.indexes.modify = index;
        self.touched.nodes.insert(node.to_string());
        let now_serving = entry.serving();
        let services: Vec<Arc<Service>> = entry.record.services.values().cloned().collect();
        if was_serving != now_serving {
            for svc in &services {
                self.count_instance(node, svc, was_serving, false);
                self.count_instance(node, svc, now_serving, true);
            }
            if !services.is_empty() {
                self.set_services_index(index);
            }
        }
        // Status and flags show in every instance's health and in the member list (a node
        // listed just now shows its instances as they were created).
        for svc in services.iter().filter(|_| was_listed) {
            let ix = entry.service_indexes(&svc.id);
            entry.service_indexes.insert_mut(
                svc.id.clone(),
                Indexes {
                    create: ix.create,
                    modify: index,
                },
            );
        }
        self.stamp_names(services.iter().map(|s| lower(&s.name)), index);
        self.set_nodes_index(index);
        self.nodes.insert_mut(node.to_string(), Arc::new(entry));
        Outcome {
            index,
            changed: true,
        }
    }

    /// Sets a known node's status, served when up (a shorthand of [`Catalog::set_standing`]).
    pub fn set_status(
        &mut self,
        node: &str,
        status: MemberStatus,
        now_ms: u64,
    ) -> Result<Outcome, UnknownNode> {
        if !self.nodes.contains_key(node) {
            return Err(UnknownNode(node.to_string()));
        }
        let addr = self.nodes.get(node).and_then(|n| n.gossip_addr);
        Ok(self.set_standing(
            node,
            Standing {
                status,
                served: status.is_up(),
                stale: false,
                gossip_addr: addr,
            },
            now_ms,
        ))
    }

    /// Protect mode began (with when) or ended.
    pub fn set_protect(&mut self, since_ms: Option<u64>) -> Outcome {
        if self.protect_since_ms == since_ms {
            return Outcome {
                index: self.index,
                changed: false,
            };
        }
        self.protect_since_ms = since_ms;
        let index = self.bump();
        self.set_nodes_index(index);
        Outcome {
            index,
            changed: true,
        }
    }

    /// Forgets a node entirely (reaped after `reconnect_timeout`, or force-left and pruned).
    pub fn remove_node(&mut self, node: &str) -> Outcome {
        let Some(entry) = self.nodes.get(node).cloned() else {
            return Outcome {
                index: self.index,
                changed: false,
            };
        };
        let index = self.bump();
        self.nodes.remove_mut(node);
        self.touched.nodes.insert(node.to_string());
        if entry.stale {
            self.stale_nodes = self.stale_nodes.saturating_sub(1);
            if self.stale_nodes == 0 {
                self.stale_since_ms = None;
            }
        }
        let serving = entry.serving();
        let mut names = Vec::new();
        for svc in entry.record.services.values() {
            self.count_instance(node, svc, serving, false);
            names.push(lower(&svc.name));
        }
        self.stamp_names(names, index);
        self.set_nodes_index(index);
        self.set_services_index(index);
        Outcome {
            index,
            changed: true,
        }
    }

    /// Replaces a node's whole record (tests and tools): the difference is applied as
    /// changes, refused if `record.version` is not above the one held.
    pub fn apply_record(
        &mut self,
        record: NodeRecord,
        status: MemberStatus,
        gossip_addr: Option<SocketAddr>,
        now_ms: u64,
    ) -> Result<Outcome, ApplyError> {
        let held = self.nodes.get(&record.name).map(|e| e.record.version);
        if let Some(held) = held.filter(|h| record.version <= *h && *h > 0) {
            return Err(ApplyError::Stale {
                node: record.name,
                offered: record.version,
                held,
            });
        }
        let mut changes: Vec<Change> = vec![(
            EntryKey::Node,
            Some(Value::Node(Arc::new(crate::gossip::NodeInfo {
                datacenter: record.datacenter.clone(),
                address: record.address,
                meta: record.meta.clone(),
            }))),
        )];
        if let Some(old) = self.nodes.get(&record.name) {
            for id in old.record.services.keys() {
                if !record.services.contains_key(id) {
                    changes.push((EntryKey::Service(id.as_str().into()), None));
                }
            }
            for id in old.record.checks.keys() {
                if !record.checks.contains_key(id) {
                    changes.push((EntryKey::Check(id.as_str().into()), None));
                }
            }
        }
        for (id, s) in record.services.iter() {
            changes.push((
                EntryKey::Service(id.as_str().into()),
                Some(Value::Service(s.clone())),
            ));
        }
        for (id, c) in record.checks.iter() {
            changes.push((
                EntryKey::Check(id.as_str().into()),
                Some(Value::Check(c.clone())),
            ));
        }
        let name = record.name.clone();
        self.apply_changes(&name, &changes, now_ms);
        let up = status.is_up();
        let out = self.set_standing(
            &name,
            Standing {
                status,
                served: up,
                stale: false,
                gossip_addr,
            },
            now_ms,
        );
        if let Some(e) = self.nodes.get(&name) {
            let mut e = NodeEntry::clone(e);
            e.record.version = record.version;
            self.nodes.insert_mut(name, Arc::new(e));
        }
        Ok(Outcome {
            index: self.index,
            changed: true,
        }
        .max(out))
    }

    /// The immutable view readers use: a copy of a few pointers.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            nodes: self.nodes.clone(),
            names: self.names.clone(),
            index: self.index,
            pruned_floor: self.pruned_floor,
            protect_since_ms: self.protect_since_ms.or(self.stale_since_ms),
            nodes_index: self.nodes_index,
            services_index: self.services_index,
        }
    }
}

impl Outcome {
    fn max(self, other: Outcome) -> Outcome {
        Outcome {
            index: self.index.max(other.index),
            changed: self.changed || other.changed,
        }
    }
}

/// One service instance in a snapshot: the node that hosts it and the service itself.
#[derive(Clone, Copy, Debug)]
pub struct Instance<'a> {
    pub node: &'a NodeEntry,
    pub service: &'a Service,
}

impl<'a> Instance<'a> {
    pub fn health(&self) -> HealthStatus {
        self.node.instance_health(&self.service.id)
    }

    /// Checks that apply to this instance (its own and the node's).
    pub fn checks(&self) -> impl Iterator<Item = &'a Check> {
        self.node.record.checks_for_service(&self.service.id)
    }

    /// The address clients should connect to: the service's own, else the node's.
    pub fn address(&self) -> String {
        if self.service.address.is_empty() {
            self.node.record.address.to_string()
        } else {
            self.service.address.clone()
        }
    }

    pub fn has_tags(&self, tags: &[String]) -> bool {
        tags.iter().all(|t| {
            self.service
                .tags
                .iter()
                .any(|have| have.eq_ignore_ascii_case(t))
        })
    }

    pub fn indexes(&self) -> Indexes {
        self.node.service_indexes(&self.service.id)
    }
}

/// An immutable view of the catalog at one index. Cheap to clone (shared maps).
#[derive(Clone, Debug)]
pub struct Snapshot {
    nodes: Map<String, Arc<NodeEntry>>,
    names: Map<String, Arc<NameEntry>>,
    index: u64,
    pruned_floor: u64,
    /// Set while answers may include stale instances (protect mode, or members back from a
    /// failure and not yet reconciled): since when (agent clock, ms).
    protect_since_ms: Option<u64>,
    nodes_index: u64,
    services_index: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Catalog::new().snapshot()
    }
}

impl Snapshot {
    /// The catalog index this snapshot was taken at.
    pub fn index(&self) -> u64 {
        self.index.max(1)
    }

    /// Index of the answer about one service name: rises only when that name's instances
    /// change (in any way that shows in a catalog or health answer).
    pub fn service_index(&self, name: &str) -> u64 {
        self.names
            .get(&lower(name))
            .map_or(self.pruned_floor, |e| e.index)
            .max(1)
    }

    /// Whether any instance of `name` (lowercase) is held, served or not.
    pub fn holds_name(&self, lower_name: &str) -> bool {
        self.names.contains_key(lower_name)
    }

    /// Since when answers may include stale instances, if they may.
    pub fn protect_since_ms(&self) -> Option<u64> {
        self.protect_since_ms
    }

    /// Index of answers about the node list.
    pub fn nodes_index(&self) -> u64 {
        self.nodes_index.max(1)
    }

    /// Index of the answer listing service names and tags.
    pub fn services_index(&self) -> u64 {
        self.services_index.max(1)
    }

    /// A member of the cluster (nodes known only from state pushed ahead of their
    /// membership are not shown).
    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes
            .get(name)
            .filter(|n| n.listed)
            .map(|n| n.as_ref())
    }

    /// Case-insensitive lookup of a node, as DNS needs.
    pub fn node_ignore_case(&self, name: &str) -> Option<&NodeEntry> {
        self.node(name).or_else(|| {
            self.nodes()
                .find(|n| n.record.name.eq_ignore_ascii_case(name))
        })
    }

    /// Every member, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values().filter(|n| n.listed).map(|n| n.as_ref())
    }

    /// Every instance of the service `name` (case-insensitive) on any member, up or not,
    /// in node order. Costs what it returns.
    pub fn instances(&self, name: &str) -> impl Iterator<Item = Instance<'_>> {
        self.names
            .get(&lower(name))
            .into_iter()
            .flat_map(|e| e.instances.keys())
            .filter_map(|(node, id)| {
                let node = self.nodes.get(node).filter(|n| n.listed)?;
                let service = node.record.services.get(id)?;
                Some(Instance {
                    node: node.as_ref(),
                    service: service.as_ref(),
                })
            })
    }

    /// Instances that belong in answers: node served, and (with `passing_only`) passing,
    /// else not critical; filtered by `tags` (all must match).
    pub fn healthy_instances<'a>(
        &'a self,
        name: &str,
        tags: &'a [String],
        passing_only: bool,
    ) -> impl Iterator<Item = Instance<'a>> + 'a {
        self.instances(name).filter(move |i| {
            let h = i.health();
            let ok = if passing_only {
                h == HealthStatus::Passing
            } else {
                h != HealthStatus::Critical
            };
            ok && i.has_tags(tags)
        })
    }

    /// Service names with instances on served nodes, with the union of their tags
    /// (`/v1/catalog/services`). Costs the number of names and tags, not instances.
    pub fn service_names(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for e in self.names.values() {
            for (name, (_, tags)) in &e.serving {
                out.entry(name.clone())
                    .or_default()
                    .extend(tags.keys().cloned());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CheckKind, Weights};
    use std::net::{IpAddr, Ipv4Addr};

    fn svc(id: &str, name: &str) -> Service {
        Service {
            id: id.into(),
            name: name.into(),
            tags: vec!["v1".into()],
            address: String::new(),
            port: 80,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        }
    }

    fn record(node: &str, version: u64, services: &[Service]) -> NodeRecord {
        let mut r = NodeRecord::new(node, "dc1", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        r.version = version;
        for s in services {
            r.put_service(Arc::new(s.clone()));
        }
        r
    }

    fn set(c: &mut Catalog, node: &str, s: Service) {
        c.apply_changes(
            node,
            &[(
                EntryKey::Service(s.id.as_str().into()),
                Some(Value::Service(Arc::new(s))),
            )],
            0,
        );
    }

    #[test]
    fn one_change_touches_only_its_name() {
        let mut c = Catalog::new();
        c.apply_record(
            record("a", 1, &[svc("w", "web"), svc("d", "db")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        let s1 = c.snapshot();
        let mut d = svc("d", "db");
        d.port = 5432;
        set(&mut c, "a", d);
        let s2 = c.snapshot();
        assert_eq!(s1.service_index("web"), s2.service_index("web"));
        assert!(s2.service_index("db") > s1.service_index("db"));
        assert!(s2.index() > s1.index());
        let w = s2.instances("web").next().unwrap().indexes();
        let d = s2.instances("db").next().unwrap().indexes();
        assert_eq!(w.create, w.modify);
        assert!(d.modify > d.create);
        // The earlier snapshot still shows what it showed.
        assert_eq!(s1.instances("db").next().unwrap().service.port, 80);
        // An unchanged change changes nothing.
        let before = c.index();
        let mut d = svc("d", "db");
        d.port = 5432;
        set(&mut c, "a", d);
        assert_eq!(c.index(), before);
    }

    #[test]
    fn standing_hides_instances_and_bumps_names() {
        let mut c = Catalog::new();
        c.apply_record(
            record("a", 1, &[svc("w", "web")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        let before = c.snapshot().service_index("web");
        c.set_standing(
            "a",
            Standing {
                status: MemberStatus::Failed,
                served: false,
                stale: false,
                gossip_addr: None,
            },
            10,
        );
        let s = c.snapshot();
        assert!(s.service_index("web") > before);
        assert_eq!(s.healthy_instances("web", &[], false).count(), 0);
        // The record is kept (last known instances), just not served.
        assert_eq!(s.instances("web").count(), 1);
        assert_eq!(s.node("a").unwrap().status_since_ms, 10);
        assert!(s.service_names().is_empty());
        // Held by protect mode: served, flagged.
        c.set_standing(
            "a",
            Standing {
                status: MemberStatus::Failed,
                served: true,
                stale: true,
                gossip_addr: None,
            },
            20,
        );
        let s = c.snapshot();
        assert_eq!(s.healthy_instances("web", &[], false).count(), 1);
        assert_eq!(s.protect_since_ms(), Some(20));
        assert_eq!(s.service_names().len(), 1);
    }

    #[test]
    fn members_are_listed_before_their_state_and_state_before_membership_is_hidden() {
        let mut c = Catalog::new();
        set(&mut c, "early", svc("w", "web"));
        let s = c.snapshot();
        assert!(s.node("early").is_none());
        assert_eq!(s.instances("web").count(), 0);
        c.set_standing("early", Standing::alive(), 0);
        assert_eq!(c.snapshot().healthy_instances("web", &[], false).count(), 1);
        c.set_standing("bare", Standing::alive(), 0);
        let s = c.snapshot();
        assert!(s.node("bare").unwrap().record.services.is_empty());
        assert_eq!(s.nodes().count(), 2);
    }

    #[test]
    fn health_filters_and_tags() {
        let mut c = Catalog::new();
        let mut r = record("a", 1, &[svc("w1", "web"), svc("w2", "web")]);
        r.put_check(Arc::new(Check {
            id: "c1".into(),
            name: "c1".into(),
            status: HealthStatus::Critical,
            notes: String::new(),
            output: String::new(),
            service_id: "w2".into(),
            kind: CheckKind::Ttl { ttl_ms: 1000 },
            deregister_critical_after_ms: 0,
            status_changed_ms: 0,
        }));
        let mut w1 = svc("w1", "web");
        w1.tags = vec!["Primary".into()];
        r.put_service(Arc::new(w1));
        c.apply_record(r, MemberStatus::Alive, None, 0).unwrap();
        let s = c.snapshot();
        assert_eq!(s.healthy_instances("WEB", &[], false).count(), 1);
        assert_eq!(
            s.healthy_instances("web", &["primary".into()], false)
                .count(),
            1
        );
        assert_eq!(s.healthy_instances("web", &["v1".into()], false).count(), 0);
        assert_eq!(s.service_names().get("web").unwrap().len(), 2);
    }

    #[test]
    fn names_without_instances_are_forgotten_without_going_backwards() {
        let mut c = Catalog::new();
        c.set_standing("a", Standing::alive(), 0);
        set(&mut c, "a", svc("w", "web"));
        let with = c.snapshot().service_index("web");
        c.apply_changes("a", &[(EntryKey::Service("w".into()), None)], 0);
        let s = c.snapshot();
        assert!(s.names.is_empty(), "no name kept without instances");
        assert!(
            s.service_index("web") > with,
            "index of a removed name moved forward"
        );
        for v in 0..200u64 {
            let name = format!("n{v}");
            set(&mut c, "a", svc(&name, &name));
            c.apply_changes("a", &[(EntryKey::Service(name.as_str().into()), None)], 0);
        }
        assert!(c.names.is_empty());
        // Two nodes with the same name: removing one keeps the name.
        set(&mut c, "a", svc("w", "web"));
        c.set_standing("b", Standing::alive(), 0);
        set(&mut c, "b", svc("w", "web"));
        c.remove_node("b");
        assert_eq!(c.snapshot().instances("web").count(), 1);
    }

    #[test]
    fn a_change_costs_the_change_not_the_catalog() {
        // 3,000 services on one node: changing one copies a path, and snapshots share the
        // rest (the earlier snapshot is untouched).
        let mut c = Catalog::new();
        c.set_standing("big", Standing::alive(), 0);
        let changes: Vec<Change> = (0..3000)
            .map(|i| {
                let s = svc(&format!("s{i}"), &format!("name{i}"));
                (
                    EntryKey::Service(s.id.as_str().into()),
                    Some(Value::Service(Arc::new(s))),
                )
            })
            .collect();
        c.apply_changes("big", &changes, 0);
        let before = c.snapshot();
        set(&mut c, "big", svc("s7", "renamed"));
        let after = c.snapshot();
        assert_eq!(before.instances("name7").count(), 1);
        assert_eq!(after.instances("name7").count(), 0);
        assert_eq!(after.instances("renamed").count(), 1);
        assert_eq!(after.service_index("name8"), before.service_index("name8"));
    }

    #[test]
    fn remove_node_forgets_it() {
        let mut c = Catalog::new();
        c.apply_record(
            record("a", 1, &[svc("w", "web")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        assert!(c.remove_node("a").changed);
        assert!(!c.remove_node("a").changed);
        assert!(c.snapshot().node("a").is_none());
        assert_eq!(c.snapshot().instances("web").count(), 0);
    }

    #[test]
    fn touched_names_only_what_moved() {
        let mut c = Catalog::new();
        c.set_standing("a", Standing::alive(), 0);
        set(&mut c, "a", svc("w", "Web"));
        set(&mut c, "a", svc("d", "db"));
        c.take_touched();
        set(&mut c, "a", svc("d", "db"));
        assert!(c.take_touched().is_empty(), "a repeat moves nothing");
        let mut db = svc("d", "db");
        db.port = 99;
        set(&mut c, "a", db);
        let t = c.take_touched();
        assert_eq!(t.names, BTreeSet::from(["db".to_string()]));
        assert_eq!(t.nodes, BTreeSet::from(["a".to_string()]));
        assert!(!t.node_list && !t.service_list && !t.absent_names);
        // A node going down moves every name it serves, and both lists.
        c.set_status("a", MemberStatus::Failed, 1).unwrap();
        let t = c.take_touched();
        assert_eq!(
            t.names,
            BTreeSet::from(["db".to_string(), "web".to_string()])
        );
        assert!(t.node_list && t.service_list);
        // Forgetting the last instance of a name moves every absent name's index.
        c.remove_node("a");
        let t = c.take_touched();
        assert!(t.absent_names);
        assert_eq!(c.snapshot().service_index("never-seen"), c.index());
    }
}
