//! What the web status page (SPEC §9) shows, computed from a catalog snapshot.
//!
//! The page needs, each in one blocking read, views that no Consul endpoint gives whole:
//! every service with its instance counts by health, every instance of one service with
//! its checks and how long each has held its status, and every member with its status and
//! number of services. Consul's UI reads such views from `/v1/internal/ui/*`; muster serves
//! these under the same prefix. They are pure functions of a [`Snapshot`] and the clocks
//! (passed in), so the rules below are tested here and the agent only serves the result.
//!
//! Which instances count: those on nodes that are up, held in protect mode (marked stale),
//! or failed. A failed node's instances are out of every DNS and API answer, but an operator
//! looking for what is broken must see them: they count as critical (as Consul's UI shows
//! a dead node's instances with a critical `serfHealth`) until the member is reaped. A node
//! that *left* took its services away on purpose, so they are not shown at all.

use crate::catalog::{Instance, NodeEntry, Snapshot};
use crate::consul::serf_health;
use crate::model::{Check, HealthStatus, MemberStatus};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One row of the services page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceSummary {
    pub name: String,
    pub tags: BTreeSet<String>,
    /// Instances shown (see the module comment), and how many are in each health.
    pub instance_count: usize,
    pub passing: usize,
    pub warning: usize,
    pub critical: usize,
    /// Distinct nodes the instances run on.
    pub node_count: usize,
    /// Instances on nodes held in protect mode: last known, not confirmed.
    pub stale: usize,
}

/// Everything the page shows about one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDetail {
    pub name: String,
    pub instances: Vec<InstanceDetail>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceDetail {
    pub node: String,
    pub node_address: String,
    pub node_status: &'static str,
    /// Whether DNS and the API currently answer with this instance.
    pub served: bool,
    pub stale: bool,
    #[serde(rename = "ID")]
    pub id: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub weights: WeightsView,
    pub health: &'static str,
    pub checks: Vec<CheckDetail>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WeightsView {
    pub passing: u32,
    pub warning: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDetail {
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    /// Consul's `Type` ("ttl", "http", …; empty for the agent's own checks).
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub status: &'static str,
    pub output: String,
    pub notes: String,
    /// A check of the node as a whole (it bears on every instance there).
    pub node_check: bool,
    /// How long ago the status last changed, in milliseconds; `None` when unknown.
    pub status_age_ms: Option<u64>,
}

/// One row of the nodes page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeSummary {
    pub name: String,
    pub address: String,
    pub datacenter: String,
    /// alive, suspect, failed or left.
    pub status: &'static str,
    pub stale: bool,
    /// Worst of the node's own checks (`serfHealth` included).
    pub health: &'static str,
    pub service_count: usize,
    pub meta: BTreeMap<String, String>,
    /// The member's gossip address, when known.
    pub gossip_address: Option<String>,
    /// How long the node has held its status, in milliseconds.
    pub status_age_ms: u64,
}

/// The clocks the ages are computed from: the agent's own (the clock of
/// `NodeEntry::status_since_ms`) and the wall clock in Unix milliseconds (that of
/// `Check::status_changed_ms`, stamped by each check's owner).
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    pub agent_ms: u64,
    pub wall_ms: u64,
}

/// Whether a node's instances are shown (see the module comment).
fn shown(node: &NodeEntry) -> bool {
    node.status != MemberStatus::Left
}

/// Every service name with its instance counts by health, sorted by name. Names that differ
/// only in case are one service (as in DNS and the catalog); the first spelling met names it.
pub fn services(snap: &Snapshot) -> Vec<ServiceSummary> {
    let mut by_key: HashMap<String, (ServiceSummary, BTreeSet<&str>)> = HashMap::new();
    for node in snap.nodes().filter(|n| shown(n)) {
        for svc in node.record.services.values() {
            let (row, nodes) = by_key
                .entry(svc.name.to_ascii_lowercase())
                .or_insert_with(|| {
                    (
                        ServiceSummary {
                            name: svc.name.clone(),
                            tags: BTreeSet::new(),
                            instance_count: 0,
                            passing: 0,
                            warning: 0,
                            critical: 0,
                            node_count: 0,
                            stale: 0,
                        },
                        BTreeSet::new(),
                    )
                });
            row.tags.extend(svc.tags.iter().cloned());
            row.instance_count += 1;
            match node.instance_health(&svc.id) {
                HealthStatus::Passing => row.passing += 1,
                HealthStatus::Warning => row.warning += 1,
                HealthStatus::Critical => row.critical += 1,
            }
            if node.stale {
                row.stale += 1;
            }
            nodes.insert(node.record.name.as_str());
        }
    }
    let mut out: Vec<ServiceSummary> = by_key
        .into_values()
        .map(|(mut row, nodes)| {
            row.node_count = nodes.len();
            row
        })
        .collect();
    out.sort_by(|a, b| {
        a.name
            .to_ascii_lowercase()
            .cmp(&b.name.to_ascii_lowercase())
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// Every shown instance of `name` (case-insensitive), worst health first, then by node
/// and id; each with its own checks first, then the node's (`serfHealth` among them).
pub fn service(snap: &Snapshot, name: &str, now: Clocks) -> ServiceDetail {
    let mut instances: Vec<(HealthStatus, InstanceDetail)> = snap
        .instances(name)
        .filter(|i| shown(i.node))
        .map(|i| {
            let health = i.health();
            (health, instance(&i, health, now))
        })
        .collect();
    instances.sort_by(|(ha, a), (hb, b)| {
        hb.cmp(ha)
            .then_with(|| a.node.cmp(&b.node))
            .then_with(|| a.id.cmp(&b.id))
    });
    let name = snap
        .instances(name)
        .next()
        .map_or_else(|| name.to_string(), |i| i.service.name.clone());
    ServiceDetail {
        name,
        instances: instances.into_iter().map(|(_, i)| i).collect(),
    }
}

fn instance(i: &Instance<'_>, health: HealthStatus, now: Clocks) -> InstanceDetail {
    let node = i.node;
    let own = i.checks().filter(|c| !c.service_id.is_empty());
    let serf = serf_health(node);
    let node_checks = i.checks().filter(|c| c.service_id.is_empty());
    let mut checks: Vec<CheckDetail> = own.map(|c| check(c, now)).collect();
    checks.push(CheckDetail {
        // The synthetic member check changes with the member status, in the agent's clock.
        status_age_ms: Some(now.agent_ms.saturating_sub(node.status_since_ms)),
        ..check(&serf, now)
    });
    checks.extend(node_checks.map(|c| check(c, now)));
    InstanceDetail {
        node: node.record.name.clone(),
        node_address: node.record.address.to_string(),
        node_status: node.status.as_str(),
        served: node.serving(),
        stale: node.stale,
        id: i.service.id.clone(),
        address: i.address(),
        port: i.service.port,
        tags: i.service.tags.clone(),
        meta: i.service.meta.clone(),
        weights: WeightsView {
            passing: i.service.weights.passing,
            warning: i.service.weights.warning,
        },
        health: health.as_str(),
        checks,
    }
}

fn check(c: &Check, now: Clocks) -> CheckDetail {
    CheckDetail {
        check_id: c.id.clone(),
        name: c.name.clone(),
        kind: c.kind.type_name(),
        status: c.status.as_str(),
        output: c.output.clone(),
        notes: c.notes.clone(),
        node_check: c.service_id.is_empty(),
        // A stamp from a peer whose clock runs ahead reads as "just now", never negative.
        status_age_ms: (c.status_changed_ms != 0)
            .then(|| now.wall_ms.saturating_sub(c.status_changed_ms)),
    }
}

/// Every member this agent knows, by name, left ones included (until reaped).
pub fn nodes(snap: &Snapshot, now: Clocks) -> Vec<NodeSummary> {
    snap.nodes()
        .map(|n| {
            let serf = serf_health(n);
            let health = n
                .record
                .checks
                .values()
                .filter(|c| c.service_id.is_empty())
                .map(|c| c.status)
                .chain(std::iter::once(serf.status))
                .max()
                .unwrap_or(HealthStatus::Passing);
            NodeSummary {
                name: n.record.name.clone(),
                address: n.record.address.to_string(),
                datacenter: n.record.datacenter.clone(),
                status: n.status.as_str(),
                stale: n.stale,
                health: health.as_str(),
                service_count: n.record.services.size(),
                meta: n.record.meta.clone(),
                gossip_address: n.gossip_addr.map(|a| a.to_string()),
                status_age_ms: now.agent_ms.saturating_sub(n.status_since_ms),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::model::{CheckKind, NodeRecord, Service, Weights};
    use std::net::{IpAddr, Ipv4Addr};

    fn svc(id: &str, name: &str, tags: &[&str]) -> Service {
        Service {
            id: id.into(),
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            address: String::new(),
            port: 8080,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        }
    }

    fn ttl(id: &str, service_id: &str, status: HealthStatus, changed_ms: u64) -> Check {
        Check {
            id: id.into(),
            name: format!("check {id}"),
            status,
            notes: String::new(),
            output: format!("output of {id}"),
            service_id: service_id.into(),
            kind: CheckKind::Ttl { ttl_ms: 10_000 },
            deregister_critical_after_ms: 0,
            status_changed_ms: changed_ms,
        }
    }

    fn record(name: &str, last_octet: u8, services: &[Service], checks: &[Check]) -> NodeRecord {
        let mut r = NodeRecord::new(name, "dc1", IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet)));
        r.version = 1;
        for s in services {
            r.put_service(std::sync::Arc::new(s.clone()));
        }
        for c in checks {
            r.put_check(std::sync::Arc::new(c.clone()));
        }
        r
    }

    /// Nodes a (web passing, db warning), b (web critical), c (web, failed), d (web, left).
    fn cluster() -> Catalog {
        let mut c = Catalog::new();
        let a = record(
            "a",
            1,
            &[svc("web-1", "web", &["v1"]), svc("db-1", "db", &[])],
            &[ttl("db-ttl", "db-1", HealthStatus::Warning, 1_000)],
        );
        let b = record(
            "b",
            2,
            &[svc("web-2", "Web", &["v2"])],
            &[ttl("web-ttl", "web-2", HealthStatus::Critical, 5_000)],
        );
        let cc = record("c", 3, &[svc("web-3", "web", &[])], &[]);
        let d = record("d", 4, &[svc("web-4", "web", &[])], &[]);
        for r in [a, b, cc, d] {
            c.apply_record(r, MemberStatus::Alive, None, 100).unwrap();
        }
        c.set_status("c", MemberStatus::Failed, 2_000).unwrap();
        c.set_status("d", MemberStatus::Left, 2_000).unwrap();
        c
    }

    const NOW: Clocks = Clocks {
        agent_ms: 10_000,
        wall_ms: 7_000,
    };

    #[test]
    fn services_count_instances_by_health_and_skip_left_nodes() {
        let snap = cluster().snapshot();
        let rows = services(&snap);
        assert_eq!(rows.len(), 2);
        let db = &rows[0];
        assert_eq!(db.name, "db");
        assert_eq!((db.passing, db.warning, db.critical), (0, 1, 0));
        let web = &rows[1];
        // a: passing; b: critical check; c: failed node counts as critical; d left: not shown.
        assert_eq!(web.instance_count, 3);
        assert_eq!((web.passing, web.warning, web.critical), (1, 0, 2));
        assert_eq!(web.node_count, 3);
        assert_eq!(
            web.tags,
            ["v1", "v2"].iter().map(|s| s.to_string()).collect()
        );
        assert_eq!(web.stale, 0);
    }

    #[test]
    fn service_lists_worst_first_with_checks_and_ages() {
        let snap = cluster().snapshot();
        let d = service(&snap, "WEB", NOW);
        let order: Vec<(&str, &str, bool)> = d
            .instances
            .iter()
            .map(|i| (i.node.as_str(), i.health, i.served))
            .collect();
        assert_eq!(
            order,
            [
                ("b", "critical", true),
                ("c", "critical", false),
                ("a", "passing", true)
            ]
        );
        let b = &d.instances[0];
        assert_eq!(b.node_status, "alive");
        assert_eq!(b.address, "10.0.0.2");
        assert_eq!(b.port, 8080);
        assert_eq!(b.checks.len(), 2);
        assert_eq!(b.checks[0].check_id, "web-ttl");
        assert_eq!(b.checks[0].status, "critical");
        assert_eq!(b.checks[0].output, "output of web-ttl");
        assert_eq!(b.checks[0].status_age_ms, Some(2_000));
        assert!(!b.checks[0].node_check);
        assert_eq!(b.checks[1].check_id, "serfHealth");
        assert!(b.checks[1].node_check);
        // alive since the record arrived at agent time 100
        assert_eq!(b.checks[1].status_age_ms, Some(9_900));
        let c = &d.instances[1];
        assert_eq!(c.node_status, "failed");
        assert_eq!(c.checks[0].status, "critical");
        assert_eq!(c.checks[0].status_age_ms, Some(8_000));
    }

    #[test]
    fn unknown_check_stamps_and_future_stamps() {
        let now = Clocks {
            agent_ms: 0,
            wall_ms: 500,
        };
        assert_eq!(
            check(&ttl("x", "s", HealthStatus::Passing, 0), now).status_age_ms,
            None
        );
        assert_eq!(
            check(&ttl("x", "s", HealthStatus::Passing, 900), now).status_age_ms,
            Some(0)
        );
    }

    #[test]
    fn unknown_service_is_empty_and_keeps_the_asked_name() {
        let snap = cluster().snapshot();
        let d = service(&snap, "nope", NOW);
        assert_eq!(d.name, "nope");
        assert!(d.instances.is_empty());
    }

    #[test]
    fn nodes_show_status_services_and_age() {
        let snap = cluster().snapshot();
        let rows = nodes(&snap, NOW);
        let brief: Vec<(&str, &str, &str, usize, u64)> = rows
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.status,
                    n.health,
                    n.service_count,
                    n.status_age_ms,
                )
            })
            .collect();
        assert_eq!(
            brief,
            [
                ("a", "alive", "passing", 2, 9_900),
                ("b", "alive", "passing", 1, 9_900),
                ("c", "failed", "critical", 1, 8_000),
                ("d", "left", "critical", 1, 8_000),
            ]
        );
        assert_eq!(rows[0].address, "10.0.0.1");
    }

    #[test]
    fn serialized_names_are_consuls_spelling() {
        let snap = cluster().snapshot();
        let v = serde_json::to_value(service(&snap, "web", NOW)).unwrap();
        let i = &v["Instances"][0];
        assert_eq!(i["ID"], "web-2");
        assert_eq!(i["Checks"][0]["CheckID"], "web-ttl");
        assert_eq!(i["Checks"][0]["Type"], "ttl");
        assert_eq!(i["Weights"]["Passing"], 1);
        let s = serde_json::to_value(services(&snap)).unwrap();
        assert_eq!(s[1]["Name"], "web");
        assert_eq!(s[1]["InstanceCount"], 3);
    }
}
