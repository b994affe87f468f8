//! The catalog: every node's record as this agent knows it, plus the indexes that drive
//! blocking queries.
//!
//! Merge rule: each node authors its own [`NodeRecord`]; a copy with a higher `version`
//! replaces a lower one, whole. There is no field-level merge, so two agents that have seen
//! the same versions hold the same catalog whatever order the updates arrived in.
//!
//! Index rule: the catalog keeps one counter that rises on every applied change, and stamps
//! it on what changed: the node, each service instance, each check, and each service *name*
//! (so a watcher of `web` is not woken by a change to `db`). Indexes never go backwards.
//!
//! The catalog is a value: the agent's single writer mutates it and publishes an immutable
//! [`Snapshot`] after each change; readers never wait on the writer.

use crate::model::{Check, HealthStatus, MemberStatus, NodeRecord, Service};
use crate::protect::Protect;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

/// Raft-style create/modify indexes of one catalog item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Indexes {
    pub create: u64,
    pub modify: u64,
}

/// One node as the catalog holds it: its record, its membership state and the indexes.
#[derive(Clone, Debug)]
pub struct NodeEntry {
    pub record: NodeRecord,
    pub status: MemberStatus,
    /// The gossip address of the member, when known (shown by `/v1/agent/members`).
    pub gossip_addr: Option<SocketAddr>,
    /// When `status` last changed, in the caller's clock (milliseconds); used for reaping.
    pub status_since_ms: u64,
    pub indexes: Indexes,
    pub service_indexes: BTreeMap<String, Indexes>,
    pub check_indexes: BTreeMap<String, Indexes>,
    /// Declared failed but held in protect mode: its last known instances are still served,
    /// marked stale (see `protect`).
    pub stale: bool,
}

impl NodeEntry {
    /// Whether this node's services belong in answers: it is up, or held in protect mode.
    pub fn serving(&self) -> bool {
        self.status.is_up() || self.stale
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

/// What changed when a record or a status was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The catalog index after the change (unchanged when nothing changed).
    pub index: u64,
    pub changed: bool,
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
    #[error("unknown node {0}")]
    UnknownNode(String),
}

#[derive(Clone, Debug, Default)]
pub struct Catalog {
    nodes: BTreeMap<String, Arc<NodeEntry>>,
    index: u64,
    /// Last index at which anything about instances of this service name (lowercase) changed.
    /// Only names with instances are kept, so the map cannot grow with every name ever seen.
    name_indexes: HashMap<String, u64>,
    /// Instances per service name (lowercase): tells when a name has none left.
    name_counts: HashMap<String, usize>,
    /// The index at which a name was last forgotten; the index of every name not in
    /// `name_indexes`, so that forgetting a name never sends its index backwards.
    pruned_floor: u64,
    /// Last index at which the set of nodes (or their addresses/status/meta) changed.
    nodes_index: u64,
    /// Last index at which the set of service names or their tags changed.
    services_index: u64,
    /// This agent's own node: never counted as a peer, never held.
    local: Option<String>,
    protect: Protect,
}

impl Catalog {
    pub fn new() -> Self {
        Catalog {
            index: 1,
            nodes_index: 1,
            services_index: 1,
            ..Default::default()
        }
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    /// Names this agent's own node, so protect mode counts only peers.
    pub fn set_local(&mut self, name: &str) {
        self.local = Some(name.to_string());
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

    /// Applies a node's record. A record whose version is not above the held one is refused
    /// (`Stale`), so replays and out-of-order deliveries are harmless. `status` is the
    /// membership state to hold the node in; `now_ms` stamps a status change.
    pub fn apply_record(
        &mut self,
        record: NodeRecord,
        status: MemberStatus,
        gossip_addr: Option<SocketAddr>,
        now_ms: u64,
    ) -> Result<Change, ApplyError> {
        let old = self.nodes.get(&record.name).cloned();
        if let Some(old) = &old {
            if record.version <= old.record.version {
                return Err(ApplyError::Stale {
                    node: record.name,
                    offered: record.version,
                    held: old.record.version,
                });
            }
        }
        let index = self.bump();
        let old_node = old.as_deref();
        // How the node itself changed; a new node counts as changed in every way.
        let (node_indexes, node_changed, status_changed, status_since_ms, node_checks_changed) =
            match old_node {
                None => (
                    Indexes {
                        create: index,
                        modify: index,
                    },
                    true,
                    true,
                    now_ms,
                    true,
                ),
                Some(old) => {
                    let status_changed = old.status != status;
                    let node_changed = old.record.address != record.address
                        || old.record.meta != record.meta
                        || old.record.datacenter != record.datacenter
                        || status_changed;
                    let node_checks_changed = old
                        .record
                        .checks
                        .values()
                        .filter(|c| c.service_id.is_empty())
                        .ne(record.checks.values().filter(|c| c.service_id.is_empty()));
                    (
                        Indexes {
                            create: old.indexes.create,
                            modify: index,
                        },
                        node_changed,
                        status_changed,
                        if status_changed {
                            now_ms
                        } else {
                            old.status_since_ms
                        },
                        node_checks_changed,
                    )
                }
            };
        // Any change to the node or its node-level checks touches every instance on it.
        let touch_all = node_changed || node_checks_changed;
        let mut touched_names: BTreeSet<String> = BTreeSet::new();
        let mut services_changed = false;
        let mut service_indexes = BTreeMap::new();
        let mut check_indexes = BTreeMap::new();
        // One pass per service: did it (or its checks) change, and what are its indexes.
        for (id, svc) in &record.services {
            let prev = old_node.and_then(|o| {
                o.record
                    .services
                    .get(id)
                    .map(|p| (p, o.service_indexes(id)))
            });
            let unchanged = prev.is_some_and(|(p, _)| p == svc)
                && old_node.is_some_and(|o| checks_equal(&o.record, &record, id));
            if prev.map(|(p, _)| (&p.name, &p.tags)) != Some((&svc.name, &svc.tags)) {
                services_changed = true;
            }
            if !unchanged || touch_all {
                touched_names.insert(svc.name.to_ascii_lowercase());
            }
            let idx = match prev {
                Some((_, ix)) if unchanged && !status_changed => ix,
                Some((_, ix)) => Indexes {
                    create: ix.create,
                    modify: index,
                },
                None => Indexes {
                    create: index,
                    modify: index,
                },
            };
            service_indexes.insert(id.clone(), idx);
        }
        if let Some(old) = old_node {
            for (id, svc) in &old.record.services {
                if !record.services.contains_key(id) {
                    services_changed = true;
                    touched_names.insert(svc.name.to_ascii_lowercase());
                }
            }
        }
        for (id, chk) in &record.checks {
            let prev = old
                .as_ref()
                .and_then(|o| o.record.checks.get(id).map(|p| (p, o.check_indexes(id))));
            let idx = match prev {
                Some((p, ix)) if p == chk => ix,
                Some((_, ix)) => Indexes {
                    create: ix.create,
                    modify: index,
                },
                None => Indexes {
                    create: index,
                    modify: index,
                },
            };
            check_indexes.insert(id.clone(), idx);
        }
        if let Some(old) = &old {
            self.count_names(&old.record, false);
        }
        self.count_names(&record, true);
        self.stamp_names(touched_names, index);
        if node_changed {
            self.nodes_index = index;
        }
        if services_changed {
            self.services_index = index;
        }
        let name = record.name.clone();
        let gossip_addr = gossip_addr.or(old.as_ref().and_then(|o| o.gossip_addr));
        let stale = !status.is_up() && self.protect.is_held(&name);
        self.nodes.insert(
            name,
            Arc::new(NodeEntry {
                record,
                status,
                gossip_addr,
                status_since_ms,
                indexes: node_indexes,
                service_indexes,
                check_indexes,
                stale,
            }),
        );
        Ok(Change {
            index,
            changed: true,
        })
    }

    /// Changes a node's membership state (alive, suspect, left, failed). Every instance on
    /// the node changes visibility, so every one of its service names is touched. A failure
    /// may start (or fall under) protect mode, which holds failed peers as stale instead; a
    /// return may end it, which lets the failures of peers still missing apply.
    pub fn set_status(
        &mut self,
        node: &str,
        status: MemberStatus,
        now_ms: u64,
    ) -> Result<Change, ApplyError> {
        let Some(entry) = self.nodes.get(node) else {
            return Err(ApplyError::UnknownNode(node.to_string()));
        };
        if entry.status == status {
            return Ok(Change {
                index: self.index,
                changed: false,
            });
        }
        let index = self.bump();
        let mut stale_changes: Vec<(String, bool)> = Vec::new();
        match status {
            MemberStatus::Failed if self.local.as_deref() != Some(node) => {
                let serving_peers = self
                    .nodes
                    .values()
                    .filter(|n| {
                        n.record.name != node
                            && self.local.as_ref() != Some(&n.record.name)
                            && n.serving()
                    })
                    .count();
                for held in self.protect.on_failure(node, now_ms, serving_peers, 0) {
                    stale_changes.push((held, true));
                }
            }
            MemberStatus::Alive | MemberStatus::Suspect => {
                if let Some(released) = self.protect.on_alive(node, now_ms) {
                    stale_changes.extend(released.into_iter().map(|n| (n, false)));
                }
            }
            _ => self.protect.forget(node),
        }
        self.update_entry(node, index, |e| {
            e.status = status;
            e.status_since_ms = now_ms;
            e.stale = !status.is_up() && stale_changes.iter().any(|(n, s)| n == node && *s);
        });
        for (other, stale) in stale_changes.into_iter().filter(|(n, _)| n != node) {
            if self.nodes.get(&other).is_some_and(|e| e.stale != stale) {
                self.update_entry(&other, index, |e| e.stale = stale);
            }
        }
        self.nodes_index = index;
        self.services_index = index;
        Ok(Change {
            index,
            changed: true,
        })
    }

    /// Rewrites one node entry at `index`: every instance on it is touched.
    fn update_entry(&mut self, node: &str, index: u64, f: impl FnOnce(&mut NodeEntry)) {
        let Some(entry) = self.nodes.get(node) else {
            return;
        };
        let mut entry = NodeEntry::clone(entry);
        f(&mut entry);
        entry.indexes.modify = index;
        for ix in entry.service_indexes.values_mut() {
            ix.modify = index;
        }
        let names: Vec<String> = entry
            .record
            .services
            .values()
            .map(|svc| svc.name.to_ascii_lowercase())
            .collect();
        self.stamp_names(names, index);
        self.nodes.insert(node.to_string(), Arc::new(entry));
    }

    /// Records the gossip address of a member; returns whether it changed (the member list
    /// shows it, so a change moves the node-list index).
    pub fn set_gossip_addr(&mut self, node: &str, addr: SocketAddr) -> bool {
        let Some(entry) = self.nodes.get(node) else {
            return false;
        };
        if entry.gossip_addr == Some(addr) {
            return false;
        }
        let mut entry = NodeEntry::clone(entry);
        entry.gossip_addr = Some(addr);
        self.nodes.insert(node.to_string(), Arc::new(entry));
        self.nodes_index = self.bump();
        true
    }

    /// Forgets a node entirely (reaped after `reconnect_timeout`, or force-left).
    pub fn remove_node(&mut self, node: &str) -> Change {
        let Some(entry) = self.nodes.remove(node) else {
            return Change {
                index: self.index,
                changed: false,
            };
        };
        let index = self.bump();
        self.protect.forget(node);
        self.count_names(&entry.record, false);
        let names: Vec<String> = entry
            .record
            .services
            .values()
            .map(|svc| svc.name.to_ascii_lowercase())
            .collect();
        self.stamp_names(names, index);
        self.nodes_index = index;
        self.services_index = index;
        Change {
            index,
            changed: true,
        }
    }

    /// Adds (or takes away) the instances of `rec` from the per-name counts.
    fn count_names(&mut self, rec: &NodeRecord, add: bool) {
        for svc in rec.services.values() {
            let name = svc.name.to_ascii_lowercase();
            if add {
                *self.name_counts.entry(name).or_insert(0) += 1;
            } else if let Some(n) = self.name_counts.get_mut(&name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.name_counts.remove(&name);
                }
            }
        }
    }

    /// Stamps `index` on each name; a name with no instances left is forgotten instead and
    /// raises the floor that all unknown names answer with.
    fn stamp_names(&mut self, names: impl IntoIterator<Item = String>, index: u64) {
        for name in names {
            if self.name_counts.contains_key(&name) {
                self.name_indexes.insert(name, index);
            } else {
                self.name_indexes.remove(&name);
                self.pruned_floor = index;
            }
        }
    }

    /// Builds the immutable view readers use.
    pub fn snapshot(&self) -> Snapshot {
        let mut by_name: HashMap<String, Vec<(Arc<NodeEntry>, String)>> = HashMap::new();
        for entry in self.nodes.values() {
            for (id, svc) in &entry.record.services {
                by_name
                    .entry(svc.name.to_ascii_lowercase())
                    .or_default()
                    .push((entry.clone(), id.clone()));
            }
        }
        Snapshot {
            nodes: self.nodes.clone(),
            index: self.index,
            name_indexes: self.name_indexes.clone(),
            pruned_floor: self.pruned_floor,
            protect_since_ms: self.protect.active_since(),
            nodes_index: self.nodes_index,
            services_index: self.services_index,
            by_name,
        }
    }
}

fn checks_equal(a: &NodeRecord, b: &NodeRecord, service_id: &str) -> bool {
    a.checks
        .values()
        .filter(|c| c.service_id == service_id)
        .eq(b.checks.values().filter(|c| c.service_id == service_id))
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

/// An immutable view of the catalog at one index. Cheap to clone (shared node entries).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    nodes: BTreeMap<String, Arc<NodeEntry>>,
    index: u64,
    name_indexes: HashMap<String, u64>,
    pruned_floor: u64,
    /// Set while protect mode holds failed peers' instances (agent clock, ms).
    protect_since_ms: Option<u64>,
    nodes_index: u64,
    services_index: u64,
    by_name: HashMap<String, Vec<(Arc<NodeEntry>, String)>>,
}

impl Snapshot {
    /// The catalog index this snapshot was taken at.
    pub fn index(&self) -> u64 {
        self.index.max(1)
    }

    /// Index of the answer about one service name: rises only when that name's instances
    /// change (in any way that shows in a catalog or health answer).
    pub fn service_index(&self, name: &str) -> u64 {
        self.name_indexes
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.pruned_floor)
            .max(1)
    }

    /// When protect mode began, if answers currently include stale instances.
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

    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name).map(|n| n.as_ref())
    }

    /// Case-insensitive lookup of a node, as DNS needs.
    pub fn node_ignore_case(&self, name: &str) -> Option<&NodeEntry> {
        self.node(name).or_else(|| {
            self.nodes
                .values()
                .find(|n| n.record.name.eq_ignore_ascii_case(name))
                .map(|n| n.as_ref())
        })
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.values().map(|n| n.as_ref())
    }

    /// Every instance of the service `name` (case-insensitive) on any node, up or not,
    /// in node order.
    pub fn instances(&self, name: &str) -> impl Iterator<Item = Instance<'_>> {
        self.by_name
            .get(&name.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .filter_map(|(node, id)| {
                node.record.services.get(id).map(|service| Instance {
                    node: node.as_ref(),
                    service,
                })
            })
    }

    /// Instances that belong in answers: node up, and (with `passing_only`) passing,
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

    /// Service names of nodes that are up, with the union of their tags (catalog/services).
    pub fn service_names(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in self.nodes.values().filter(|n| n.serving()) {
            for svc in node.record.services.values() {
                out.entry(svc.name.clone())
                    .or_default()
                    .extend(svc.tags.iter().cloned());
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
            r.services.insert(s.id.clone(), s.clone());
        }
        r
    }

    #[test]
    fn higher_version_wins_and_stale_is_refused() {
        let mut c = Catalog::new();
        c.apply_record(
            record("a", 2, &[svc("web1", "web")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        let err = c
            .apply_record(record("a", 1, &[]), MemberStatus::Alive, None, 0)
            .unwrap_err();
        assert!(matches!(err, ApplyError::Stale { held: 2, .. }));
        assert_eq!(c.snapshot().instances("web").count(), 1);
        c.apply_record(record("a", 3, &[]), MemberStatus::Alive, None, 0)
            .unwrap();
        assert_eq!(c.snapshot().instances("web").count(), 0);
    }

    #[test]
    fn order_of_delivery_does_not_matter() {
        let recs = [
            record("a", 1, &[svc("x", "web")]),
            record("a", 2, &[svc("x", "web"), svc("y", "db")]),
            record("b", 5, &[svc("z", "web")]),
            record("a", 3, &[svc("y", "db")]),
        ];
        let mut one = Catalog::new();
        let mut two = Catalog::new();
        for r in recs.iter() {
            let _ = one.apply_record(r.clone(), MemberStatus::Alive, None, 0);
        }
        for r in recs.iter().rev() {
            let _ = two.apply_record(r.clone(), MemberStatus::Alive, None, 0);
        }
        let names = |c: &Catalog| {
            c.nodes()
                .map(|n| (n.record.name.clone(), n.record.version))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&one), names(&two));
    }

    #[test]
    fn index_per_service_name() {
        let mut c = Catalog::new();
        c.apply_record(
            record("a", 1, &[svc("w", "web"), svc("d", "db")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        let s1 = c.snapshot();
        let mut r = record("a", 2, &[svc("w", "web"), svc("d", "db")]);
        r.services.get_mut("d").unwrap().port = 5432;
        c.apply_record(r, MemberStatus::Alive, None, 0).unwrap();
        let s2 = c.snapshot();
        assert_eq!(s1.service_index("web"), s2.service_index("web"));
        assert!(s2.service_index("db") > s1.service_index("db"));
        assert!(s2.index() > s1.index());
        // service indexes: web instance untouched, db modified, create kept
        let w = s2.instances("web").next().unwrap().indexes();
        let d = s2.instances("db").next().unwrap().indexes();
        assert_eq!(w.create, w.modify);
        assert!(d.modify > d.create);
    }

    #[test]
    fn status_change_hides_instances_and_bumps_names() {
        let mut c = Catalog::new();
        c.apply_record(
            record("a", 1, &[svc("w", "web")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        let before = c.snapshot().service_index("web");
        c.set_status("a", MemberStatus::Failed, 10).unwrap();
        let s = c.snapshot();
        assert!(s.service_index("web") > before);
        assert_eq!(s.healthy_instances("web", &[], false).count(), 0);
        // the record is kept (last known instances), just not served
        assert_eq!(s.instances("web").count(), 1);
        assert_eq!(s.node("a").unwrap().status_since_ms, 10);
        assert!(c.set_status("zz", MemberStatus::Alive, 0).is_err());
    }

    #[test]
    fn health_filters_and_tags() {
        let mut c = Catalog::new();
        let mut r = record("a", 1, &[svc("w1", "web"), svc("w2", "web")]);
        r.checks.insert(
            "c1".into(),
            Check {
                id: "c1".into(),
                name: "c1".into(),
                status: HealthStatus::Critical,
                notes: String::new(),
                output: String::new(),
                service_id: "w2".into(),
                kind: CheckKind::Ttl { ttl_ms: 1000 },
                deregister_critical_after_ms: 0,
                status_changed_ms: 0,
            },
        );
        r.services.get_mut("w1").unwrap().tags = vec!["Primary".into()];
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
        c.apply_record(
            record("a", 1, &[svc("w", "web")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        let with = c.snapshot().service_index("web");
        c.apply_record(record("a", 2, &[]), MemberStatus::Alive, None, 0)
            .unwrap();
        let s = c.snapshot();
        assert!(s.name_indexes.is_empty(), "no name kept without instances");
        assert!(
            s.service_index("web") > with,
            "index of a removed name moved forward"
        );
        // Many names coming and going leave nothing behind.
        for v in 3..200u64 {
            let name = format!("n{v}");
            c.apply_record(
                record("a", v, &[svc(&name, &name)]),
                MemberStatus::Alive,
                None,
                0,
            )
            .unwrap();
        }
        c.apply_record(record("a", 500, &[]), MemberStatus::Alive, None, 0)
            .unwrap();
        assert!(c.name_indexes.is_empty() && c.name_counts.is_empty());
        // Two nodes with the same name: removing one keeps the name.
        c.apply_record(
            record("a", 501, &[svc("w", "web")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        c.apply_record(
            record("b", 1, &[svc("w", "web")]),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
        c.remove_node("b");
        assert_eq!(c.name_counts.get("web"), Some(&1));
        assert!(c.name_indexes.contains_key("web"));
    }

    #[test]
    fn protect_mode_serves_peers_lost_at_once_as_stale() {
        let mut c = Catalog::new();
        c.set_local("me");
        c.apply_record(record("me", 1, &[]), MemberStatus::Alive, None, 0)
            .unwrap();
        for n in ["a", "b", "c", "d"] {
            c.apply_record(
                record(n, 1, &[svc(&format!("{n}-web"), "web")]),
                MemberStatus::Alive,
                None,
                0,
            )
            .unwrap();
        }
        // An ordinary single failure applies: a's instance leaves the answers.
        c.set_status("a", MemberStatus::Failed, 1_000).unwrap();
        assert_eq!(c.snapshot().healthy_instances("web", &[], false).count(), 3);
        assert!(c.snapshot().protect_since_ms().is_none());
        // b and c fail right after: 3 of 4 peers in one burst → protect mode holds all three.
        c.set_status("b", MemberStatus::Failed, 2_000).unwrap();
        let before = c.snapshot().service_index("web");
        c.set_status("c", MemberStatus::Failed, 3_000).unwrap();
        let s = c.snapshot();
        assert_eq!(s.protect_since_ms(), Some(3_000));
        assert_eq!(
            s.healthy_instances("web", &[], false).count(),
            4,
            "last known instances kept"
        );
        assert!(s.node("a").unwrap().stale && s.node("c").unwrap().stale);
        assert_eq!(
            s.node("a").unwrap().status,
            MemberStatus::Failed,
            "members still tell the truth"
        );
        assert!(s.service_index("web") > before, "watchers see the change");
        // Contact returns with half of them: protect mode ends; c's failure now applies.
        c.set_status("a", MemberStatus::Alive, 9_000).unwrap();
        c.set_status("b", MemberStatus::Alive, 9_100).unwrap();
        let s = c.snapshot();
        assert!(s.protect_since_ms().is_none());
        assert!(!s.node("c").unwrap().stale);
        assert_eq!(s.healthy_instances("web", &[], false).count(), 3);
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
    }
}
