//! The data model every other part of muster speaks: nodes, services, checks, health.
//!
//! A *node* is one host running one agent. Each node owns exactly one [`NodeRecord`]: its
//! address, its metadata, the services registered on it and the checks guarding them. Only
//! the owning agent ever authors that record; everyone else holds copies, and a copy with a
//! higher [`NodeRecord::version`] replaces a lower one (see `catalog`). Keeping the unit of
//! ownership and replication this coarse makes merging trivial and conflict-free.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Health of a check, ordered from best to worst so that `max()` gives the aggregate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Passing,
    Warning,
    Critical,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }

    /// Parses Consul's spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passing" => Some(HealthStatus::Passing),
            "warning" => Some(HealthStatus::Warning),
            "critical" => Some(HealthStatus::Critical),
            _ => None,
        }
    }
}

/// DNS SRV weights of an instance, chosen by its current health (Consul's `Weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One registered service instance, as its owner declared it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Unique on its node; defaults to the name.
    pub id: String,
    /// The service's name: a DNS label, shared by all its instances.
    pub name: String,
    pub tags: Vec<String>,
    /// Empty means "the node's address".
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    pub enable_tag_override: bool,
}

/// How a check decides its status. Only the owning agent runs checks; the kind travels with
/// the record so that other agents can show it (`Type` in the API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    /// Status set from outside through `/v1/agent/check/{pass,warn,fail,update}`; goes
    /// critical when not refreshed within `ttl_ms`.
    Ttl { ttl_ms: u64 },
    Http {
        url: String,
        method: String,
        headers: BTreeMap<String, Vec<String>>,
        tls_skip_verify: bool,
        interval_ms: u64,
        timeout_ms: u64,
    },
    Tcp {
        address: String,
        interval_ms: u64,
        timeout_ms: u64,
    },
    Script {
        args: Vec<String>,
        interval_ms: u64,
        timeout_ms: u64,
    },
    /// Set by the agent itself: maintenance mode, `serfHealth`.
    Internal,
    /// Bound to one process's life (SPEC §10): passing while it runs; when it exits the
    /// agent deregisters the service at once. `start_time` (clock ticks since boot, field
    /// 22 of `/proc/PID/stat`) is recorded when the check is registered, so a later process
    /// that happens to get the same PID is never taken for the owner. Added last: the enum
    /// travels postcard-encoded in gossip and JSON-stored in `data_dir`.
    Process { pid: u32, start_time: u64 },
}

impl CheckKind {
    /// Consul's `Type` string.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Script { .. } => "script",
            CheckKind::Internal => "",
            CheckKind::Process { .. } => "process",
        }
    }
}

/// One health check, attached to a service on the same node or (empty `service_id`) to the
/// node as a whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub status: HealthStatus,
    pub notes: String,
    pub output: String,
    /// Empty for a node-level check.
    pub service_id: String,
    pub kind: CheckKind,
    /// Remove the service after it has been critical this long (0 = never).
    pub deregister_critical_after_ms: u64,
    /// When `status` last changed (or the check was created), on the owning agent's wall
    /// clock, in Unix milliseconds; 0 when unknown (checks stored by older versions). Only
    /// the web status page shows it: Consul's check JSON has no such field.
    #[serde(default)]
    pub status_changed_ms: u64,
}

/// Longest check output (and notes) kept, in bytes: outputs travel in every gossip copy of
/// the node's record, so a chatty check must not be able to grow it without bound.
pub const MAX_CHECK_OUTPUT: usize = 4096;

/// Bytes as check output text, cut to [`MAX_CHECK_OUTPUT`] bytes on a character boundary.
pub fn check_output_text(bytes: &[u8]) -> String {
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_CHECK_OUTPUT)]).into_owned();
    if s.len() > MAX_CHECK_OUTPUT {
        // Lossy decoding can grow the text (U+FFFD is 3 bytes); cut it back.
        let mut end = MAX_CHECK_OUTPUT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Reserved check ids, as Consul names them.
pub const SERF_HEALTH_CHECK: &str = "serfHealth";
pub const NODE_MAINTENANCE_CHECK: &str = "_node_maintenance";
pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";

/// A persistent (structure-sharing) ordered map: cloning is O(1), a change copies one path.
pub type Map<K, V> = rpds::RedBlackTreeMapSync<K, V>;

/// Everything one node says about itself, as one member holds it. Its maps share structure
/// with earlier versions, so changing one service or check costs O(log n) and a copy is
/// free: snapshots of the catalog hold these by the thousand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    pub datacenter: String,
    /// The address other hosts reach this node at (its advertise address).
    pub address: IpAddr,
    pub meta: BTreeMap<String, String>,
    /// Keyed by service id. Change through [`NodeRecord::put_service`] and friends, which
    /// keep the per-service check index in step.
    pub services: Map<String, Arc<Service>>,
    /// Keyed by check id.
    pub checks: Map<String, Arc<Check>>,
    /// Check ids by the service they guard ("" for node-level checks).
    by_service: Map<String, Map<String, ()>>,
    /// How many changes built this record (the owner's version, informational).
    pub version: u64,
}

impl NodeRecord {
    pub fn new(name: impl Into<String>, datacenter: impl Into<String>, address: IpAddr) -> Self {
        NodeRecord {
            name: name.into(),
            datacenter: datacenter.into(),
            address,
            meta: BTreeMap::new(),
            services: Map::new_sync(),
            checks: Map::new_sync(),
            by_service: Map::new_sync(),
            version: 0,
        }
    }

    pub fn put_service(&mut self, service: Arc<Service>) {
        self.services.insert_mut(service.id.clone(), service);
    }

    pub fn remove_service(&mut self, id: &str) -> Option<Arc<Service>> {
        let old = self.services.get(id).cloned();
        self.services.remove_mut(id);
        old
    }

    pub fn put_check(&mut self, check: Arc<Check>) {
        if let Some(old) = self.checks.get(&check.id).cloned() {
            self.unindex(&old);
        }
        let mut set = self
            .by_service
            .get(&check.service_id)
            .cloned()
            .unwrap_or_else(Map::new_sync);
        set.insert_mut(check.id.clone(), ());
        self.by_service.insert_mut(check.service_id.clone(), set);
        self.checks.insert_mut(check.id.clone(), check);
    }

    pub fn remove_check(&mut self, id: &str) -> Option<Arc<Check>> {
        let old = self.checks.get(id).cloned()?;
        self.unindex(&old);
        self.checks.remove_mut(id);
        Some(old)
    }

    fn unindex(&mut self, check: &Check) {
        if let Some(set) = self.by_service.get(&check.service_id) {
            let mut set = set.clone();
            set.remove_mut(&check.id);
            if set.is_empty() {
                self.by_service.remove_mut(&check.service_id);
            } else {
                self.by_service.insert_mut(check.service_id.clone(), set);
            }
        }
    }

    /// The checks guarding `service_id` itself (not the node-level ones), in id order.
    pub fn own_checks<'a>(&'a self, service_id: &str) -> impl Iterator<Item = &'a Arc<Check>> + 'a {
        self.by_service
            .get(service_id)
            .into_iter()
            .flat_map(|set| set.keys())
            .filter_map(move |id| self.checks.get(id))
    }

    /// Checks that concern `service_id`: its own plus the node-level ones (as Consul's health
    /// endpoints report them), in id order within each group. Costs what it returns.
    pub fn checks_for_service<'a>(
        &'a self,
        service_id: &'a str,
    ) -> impl Iterator<Item = &'a Check> + 'a {
        let node_level = self.own_checks("");
        let own = (!service_id.is_empty())
            .then(|| self.own_checks(service_id))
            .into_iter()
            .flatten();
        node_level.chain(own).map(|c| &**c)
    }
}

/// Where a member stands in the cluster, with Consul's numeric `Status` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberStatus {
    Alive,
    /// Suspected by SWIM but not yet declared down: still served.
    Suspect,
    /// Left gracefully.
    Left,
    /// Declared down by SWIM.
    Failed,
}

impl MemberStatus {
    /// Consul's `Status` in `/v1/agent/members` (serf.MemberStatus).
    pub fn code(self) -> u8 {
        match self {
            MemberStatus::Alive | MemberStatus::Suspect => 1,
            MemberStatus::Left => 3,
            MemberStatus::Failed => 4,
        }
    }

    /// Whether the node's services belong in answers.
    pub fn is_up(self) -> bool {
        matches!(self, MemberStatus::Alive | MemberStatus::Suspect)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Suspect => "suspect",
            MemberStatus::Left => "left",
            MemberStatus::Failed => "failed",
        }
    }
}
