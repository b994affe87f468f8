//! The one owner of the catalog and of this node's own record.
//!
//! Writers (HTTP registrations, config reloads, check runners, gossip) take the writer lock,
//! change the catalog, persist what must survive, and publish a fresh immutable
//! [`Snapshot`] through an `ArcSwap`. Readers (DNS, HTTP reads) load the current snapshot
//! and never wait on the writer. Every publish also sends the new index on a `watch`
//! channel, which is what blocking queries wait on, and this node's record on another,
//! which is what gossip spreads.

use crate::config::ServiceDefinition;
use crate::store::{Store, StoredService};
use arc_swap::ArcSwap;
use muster_proto::catalog::Catalog;
use muster_proto::gossip::message::encode_record;
use muster_proto::model::{
    check_output_text, Check, CheckKind, HealthStatus, MemberStatus, NodeRecord,
    NODE_MAINTENANCE_CHECK, SERVICE_MAINTENANCE_PREFIX,
};
use muster_proto::Snapshot;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, watch, Mutex};

/// Where a local service came from: config files are re-applied on reload and never
/// written to `data_dir`; HTTP registrations are persisted and untouched by reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Config,
    Http,
}

/// Why a local change was refused.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("unknown service id {0:?}")]
    UnknownService(String),
    #[error("unknown check id {0:?}")]
    UnknownCheck(String),
    #[error("{0}")]
    Invalid(String),
    #[error("could not persist to data_dir: {0}")]
    Persist(#[from] std::io::Error),
}

struct Writer {
    catalog: Catalog,
    local: Local,
    store: Option<Arc<Store>>,
}

/// This node's own state: its authoritative record plus what only this agent needs to
/// know about it (where each service came from, maintenance reasons).
#[derive(Clone, Debug, PartialEq)]
struct Local {
    record: NodeRecord,
    sources: HashMap<String, Source>,
    /// Service id → maintenance reason.
    maintenance: HashMap<String, String>,
}

/// A file in `data_dir` that a local change touched.
enum Persist {
    /// The file of an HTTP-registered service (with its checks and maintenance).
    Service(String),
    /// The file of a node-level check.
    NodeCheck(String),
}

impl Persist {
    /// The file a check lives in: its service's, or its own for a node-level check.
    fn of_check(service_id: &str, check_id: &str) -> Persist {
        if service_id.is_empty() {
            Persist::NodeCheck(check_id.to_string())
        } else {
            Persist::Service(service_id.to_string())
        }
    }
}

/// What to do to one file so that it matches the local state.
enum FileJob {
    SaveService(StoredService),
    RemoveService(String),
    SaveCheck(Check),
    RemoveCheck(String),
}

impl FileJob {
    fn run(self, store: &Store) -> std::io::Result<()> {
        match self {
            FileJob::SaveService(s) => store.save_service(&s),
            FileJob::RemoveService(id) => store.remove_service(&id),
            FileJob::SaveCheck(c) => store.save_check(&c),
            FileJob::RemoveCheck(id) => store.remove_check(&id),
        }
    }
}

impl Local {
    /// The file job that makes `data_dir` agree with this state for `what`. Only HTTP
    /// services are stored; a service that is gone, or now comes from a config file,
    /// has its file removed.
    fn file_job(&self, what: &Persist) -> FileJob {
        match what {
            Persist::Service(id) => match self.record.services.get(id) {
                Some(service) if self.sources.get(id) == Some(&Source::Http) => {
                    let checks = self
                        .record
                        .checks
                        .values()
                        .filter(|c| {
                            &c.service_id == id && !c.id.starts_with(SERVICE_MAINTENANCE_PREFIX)
                        })
                        .cloned()
                        .collect();
                    FileJob::SaveService(StoredService::new(
                        service.clone(),
                        checks,
                        self.maintenance.get(id).cloned(),
                    ))
                }
                _ => FileJob::RemoveService(id.clone()),
            },
            Persist::NodeCheck(id) => match self.record.checks.get(id) {
                Some(c) if c.service_id.is_empty() => FileJob::SaveCheck(c.clone()),
                _ => FileJob::RemoveCheck(id.clone()),
            },
        }
    }

    /// Adds or replaces a service with its checks (see `State::register_service`).
    fn put_service(&mut self, def: ServiceDefinition, source: Source, replace_checks: bool) {
        let id = def.service.id.clone();
        if replace_checks {
            let keep: Vec<&str> = def.checks.iter().map(|c| c.id.as_str()).collect();
            self.record.checks.retain(|cid, c| {
                c.service_id != id
                    || keep.contains(&cid.as_str())
                    || cid.starts_with(SERVICE_MAINTENANCE_PREFIX)
            });
        }
        for mut check in def.checks {
            check.service_id = id.clone();
            self.put_check(check);
        }
        self.record.services.insert(id.clone(), def.service);
        self.sources.insert(id, source);
    }

    /// Adds or replaces a check; one with the same definition keeps its current status
    /// (and when that status began); a new one starts its status now.
    fn put_check(&mut self, mut check: Check) {
        check.status_changed_ms = wall_clock_millis();
        if let Some(old) = self.record.checks.get(&check.id) {
            if old.kind == check.kind && old.service_id == check.service_id {
                check.status = old.status;
                check.output = old.output.clone();
                check.status_changed_ms = old.status_changed_ms;
            }
        }
        self.record.checks.insert(check.id.clone(), check);
    }

    /// Removes a service with its checks and maintenance state; false if it was not there.
    fn remove_service(&mut self, id: &str) -> bool {
        if self.record.services.remove(id).is_none() {
            return false;
        }
        self.record.checks.retain(|_, c| c.service_id != id);
        self.maintenance.remove(id);
        self.sources.remove(id);
        true
    }

    /// Whether `def` is exactly what is registered (service and check definitions).
    fn defines(&self, def: &ServiceDefinition) -> bool {
        let id = &def.service.id;
        let existing: Vec<&Check> = self
            .record
            .checks
            .values()
            .filter(|c| &c.service_id == id && !c.id.starts_with(SERVICE_MAINTENANCE_PREFIX))
            .collect();
        self.record.services.get(id) == Some(&def.service)
            && existing.len() == def.checks.len()
            && def.checks.iter().all(|c| {
                existing
                    .iter()
                    .any(|e| e.id == c.id && e.kind == c.kind && e.name == c.name)
            })
    }
}

/// Shared handle to the agent's state. Cheap to clone through `Arc`.
pub struct State {
    pub node_name: String,
    snapshot: ArcSwap<Snapshot>,
    index_tx: watch::Sender<u64>,
    local_tx: watch::Sender<Arc<NodeRecord>>,
    writer: Mutex<Writer>,
    started: Instant,
    /// Ids of TTL checks refreshed through the API. A refresh that repeats the current
    /// status and output changes nothing in the record (`update_check` returns false), yet
    /// it must still restart the check's TTL timer, so the TTL runners listen here.
    ttl_refresh_tx: broadcast::Sender<String>,
}

/// How many TTL refreshes may queue for a slow runner before it sees `Lagged` (it then
/// treats the gap as a refresh of its own check: see `checks`).
const TTL_REFRESH_BACKLOG: usize = 1024;

/// A fresh record version: above the last one, and above any version a previous run of
/// this node could have used (wall-clock microseconds), so a restarted node's record always
/// replaces what peers remember of it.
fn next_version(prev: u64) -> u64 {
    wall_clock_micros().max(prev.saturating_add(1))
}

fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds: when a check's status changed (shown by the web status page).
fn wall_clock_millis() -> u64 {
    wall_clock_micros() / 1000
}

/// How far ahead of our clock a peer's copy of our own record may be (clock skew between
/// this run and an earlier one) before it is refused: one day.
const FUTURE_VERSION_SLACK_MICROS: u64 = 86_400_000_000;

impl State {
    pub fn new(
        node_name: String,
        datacenter: String,
        address: IpAddr,
        node_meta: BTreeMap<String, String>,
        store: Option<Store>,
    ) -> Arc<State> {
        let mut local = NodeRecord::new(node_name.clone(), datacenter, address);
        local.meta = node_meta;
        local.version = next_version(0);
        let mut catalog = Catalog::new();
        catalog.set_local(&node_name);
        catalog
            .apply_record(local.clone(), MemberStatus::Alive, None, 0)
            .expect("an empty catalog accepts any record");
        let snapshot = catalog.snapshot();
        let (index_tx, _) = watch::channel(snapshot.index());
        let (local_tx, _) = watch::channel(Arc::new(local.clone()));
        Arc::new(State {
            node_name,
            snapshot: ArcSwap::from_pointee(snapshot),
            index_tx,
            local_tx,
            writer: Mutex::new(Writer {
                catalog,
                local: Local {
                    record: local,
                    sources: HashMap::new(),
                    maintenance: HashMap::new(),
                },
                store: store.map(Arc::new),
            }),
            started: Instant::now(),
            ttl_refresh_tx: broadcast::channel(TTL_REFRESH_BACKLOG).0,
        })
    }

    /// Milliseconds since the agent started: the clock for member status timestamps.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The current catalog view. Never blocks.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// A receiver that sees the catalog index after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }

    /// A receiver that sees this node's record after every local change (for gossip).
    pub fn local_record(&self) -> watch::Receiver<Arc<NodeRecord>> {
        self.local_tx.subscribe()
    }

    fn publish(&self, w: &Writer) {
        let snap = w.catalog.snapshot();
        let index = snap.index();
        self.snapshot.store(Arc::new(snap));
        self.index_tx.send_replace(index);
    }

    /// Re-stamps the local record, applies it to the catalog and publishes it.
    fn commit_local(&self, w: &mut Writer) {
        w.local.record.version = next_version(w.local.record.version);
        let now = self.now_ms();
        if let Err(e) =
            w.catalog
                .apply_record(w.local.record.clone(), MemberStatus::Alive, None, now)
        {
            tracing::error!(error = %e, "local record refused by catalog");
        }
        self.local_tx.send_replace(Arc::new(w.local.record.clone()));
        self.publish(w);
    }

    /// Applies one local change as a transaction: `change` edits a copy of the local state
    /// and names the files it touched; the copy must still fit in a gossip record, its files
    /// are written (and fsynced) to `data_dir`, and only then does it become the state and
    /// get published. On any error nothing has changed, in memory or on disk.
    async fn change_local<T>(
        &self,
        change: impl FnOnce(&mut Local) -> Result<(T, Vec<Persist>), StateError>,
    ) -> Result<T, StateError> {
        let mut w = self.writer.lock().await;
        let mut next = w.local.clone();
        let (out, touched) = change(&mut next)?;
        if next == w.local {
            return Ok(out);
        }
        if let Err(e) = encode_record(&next.record) {
            return Err(StateError::Invalid(format!(
                "refused: this node's record would no longer fit in gossip ({e}); remove services or checks first"
            )));
        }
        if let Some(store) = w.store.clone() {
            let jobs: Vec<FileJob> = touched.iter().map(|t| next.file_job(t)).collect();
            tokio::task::spawn_blocking(move || jobs.into_iter().try_for_each(|j| j.run(&store)))
                .await
                .map_err(|e| StateError::Persist(std::io::Error::other(e)))??;
        }
        w.local = next;
        self.commit_local(&mut w);
        Ok(out)
    }

    /// Restores what `data_dir` holds (called once at start, before listeners open).
    pub async fn restore(&self, loaded: crate::store::Loaded) {
        let mut w = self.writer.lock().await;
        let l = &mut w.local;
        for s in loaded.services {
            let id = s.service.id.clone();
            l.sources.insert(id.clone(), Source::Http);
            for c in s.checks {
                l.record.checks.insert(c.id.clone(), c);
            }
            if let Some(reason) = s.maintenance {
                l.record
                    .checks
                    .insert(maintenance_id(&id), maintenance_check(&id, &reason));
                l.maintenance.insert(id.clone(), reason);
            }
            l.record.services.insert(id, s.service);
        }
        for c in loaded.checks {
            l.record.checks.insert(c.id.clone(), c);
        }
        self.commit_local(&mut w);
    }

    /// Registers (or replaces) a local service with its checks. With `replace_checks`, checks
    /// of this service not in `def` are removed. A check that already exists with the same
    /// definition keeps its current status. Persisted before returning when `source` is HTTP.
    pub async fn register_service(
        &self,
        def: ServiceDefinition,
        source: Source,
        replace_checks: bool,
    ) -> Result<(), StateError> {
        self.change_local(|l| {
            let id = def.service.id.clone();
            l.put_service(def, source, replace_checks);
            Ok(((), vec![Persist::Service(id)]))
        })
        .await
    }

    /// Removes a local service and its checks.
    pub async fn deregister_service(&self, id: &str) -> Result<(), StateError> {
        self.change_local(|l| {
            if !l.remove_service(id) {
                return Err(StateError::UnknownService(id.to_string()));
            }
            Ok(((), vec![Persist::Service(id.to_string())]))
        })
        .await
    }

    /// This node's record as it stands.
    pub fn local(&self) -> Arc<NodeRecord> {
        self.local_tx.borrow().clone()
    }

    /// Makes the config-file services exactly `defs`: adds, changes and removes config
    /// services; HTTP registrations are left alone, except that a config service with the
    /// same id takes the place of an HTTP one (and its stored file is removed).
    /// Returns (added, changed, removed).
    pub async fn apply_config_services(
        &self,
        defs: Vec<ServiceDefinition>,
    ) -> Result<(usize, usize, usize), StateError> {
        self.change_local(|l| {
            let (mut added, mut changed, mut removed) = (0, 0, 0);
            let mut touched = Vec::new();
            let wanted: HashMap<String, ServiceDefinition> = defs
                .into_iter()
                .map(|d| (d.service.id.clone(), d))
                .collect();
            let current: Vec<String> = l
                .sources
                .iter()
                .filter(|(id, s)| **s == Source::Config && !wanted.contains_key(*id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in current {
                l.remove_service(&id);
                touched.push(Persist::Service(id));
                removed += 1;
            }
            for (id, def) in wanted {
                if l.sources.get(&id) == Some(&Source::Config) && l.defines(&def) {
                    continue;
                }
                if l.record.services.contains_key(&id) {
                    changed += 1;
                } else {
                    added += 1;
                }
                l.put_service(def, Source::Config, true);
                touched.push(Persist::Service(id));
            }
            Ok(((added, changed, removed), touched))
        })
        .await
    }

    /// Adds or replaces a check. Its service (if any) must exist locally.
    pub async fn register_check(&self, check: Check) -> Result<(), StateError> {
        self.change_local(|l| {
            let sid = check.service_id.clone();
            if !sid.is_empty() && !l.record.services.contains_key(&sid) {
                return Err(StateError::Invalid(format!(
                    "Invalid ServiceID: no local service {sid:?}"
                )));
            }
            let id = check.id.clone();
            l.put_check(check);
            Ok(((), vec![Persist::of_check(&sid, &id)]))
        })
        .await
    }

    pub async fn deregister_check(&self, id: &str) -> Result<(), StateError> {
        self.change_local(|l| {
            let Some(old) = l.record.checks.remove(id) else {
                return Err(StateError::UnknownCheck(id.to_string()));
            };
            Ok(((), vec![Persist::of_check(&old.service_id, id)]))
        })
        .await
    }

    /// Sets a check's status and output (TTL updates, check runners); the output is clipped
    /// to `muster_proto::model::MAX_CHECK_OUTPUT` bytes. Returns false when nothing changed. TTL state is
    /// persisted so it survives a restart.
    pub async fn update_check(
        &self,
        id: &str,
        status: HealthStatus,
        output: String,
    ) -> Result<bool, StateError> {
        let output = check_output_text(output.as_bytes());
        {
            // Runners report every interval; most reports change nothing, so answer those
            // without copying the local state.
            let w = self.writer.lock().await;
            match w.local.record.checks.get(id) {
                None => return Err(StateError::UnknownCheck(id.to_string())),
                Some(c) if c.status == status && c.output == output => return Ok(false),
                Some(_) => {}
            }
        }
        self.change_local(|l| {
            let Some(check) = l.record.checks.get_mut(id) else {
                return Err(StateError::UnknownCheck(id.to_string()));
            };
            if check.status != status {
                check.status_changed_ms = wall_clock_millis();
            }
            check.status = status;
            check.output = output;
            let touched =
                if check.service_id.is_empty() || matches!(check.kind, CheckKind::Ttl { .. }) {
                    vec![Persist::of_check(&check.service_id, id)]
                } else {
                    // Results of HTTP/TCP/script checks are recomputed after a restart.
                    vec![]
                };
            Ok((true, touched))
        })
        .await
    }

    /// Announces that TTL check `id` was refreshed (pass/warn/fail/update), whether or not
    /// its status or output changed. Call before `update_check`, so that a timer firing in
    /// between cannot overwrite the fresh status with "TTL expired".
    pub fn ttl_refreshed(&self, id: &str) {
        // No receiver simply means no TTL runner is up (yet); nothing to tell.
        let _ = self.ttl_refresh_tx.send(id.to_string());
    }

    /// A receiver of TTL refresh announcements (for the TTL check runners).
    pub fn ttl_refreshes(&self) -> broadcast::Receiver<String> {
        self.ttl_refresh_tx.subscribe()
    }

    /// Puts a service in or out of maintenance (a critical `_service_maintenance:<id>` check).
    pub async fn set_service_maintenance(
        &self,
        id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), StateError> {
        self.change_local(|l| {
            if !l.record.services.contains_key(id) {
                return Err(StateError::UnknownService(id.to_string()));
            }
            let cid = maintenance_id(id);
            if enable {
                l.put_check(maintenance_check(id, reason));
                l.maintenance.insert(id.to_string(), reason.to_string());
            } else {
                l.record.checks.remove(&cid);
                l.maintenance.remove(id);
            }
            Ok(((), vec![Persist::Service(id.to_string())]))
        })
        .await
    }

    /// Puts the whole node in or out of maintenance (`_node_maintenance`).
    pub async fn set_node_maintenance(&self, enable: bool, reason: &str) -> Result<(), StateError> {
        self.change_local(|l| {
            if enable {
                l.put_check(node_maintenance_check(reason));
            } else {
                l.record.checks.remove(NODE_MAINTENANCE_CHECK);
            }
            Ok((
                (),
                vec![Persist::NodeCheck(NODE_MAINTENANCE_CHECK.to_string())],
            ))
        })
        .await
    }

    // ----- the gossip side -----

    /// Applies another node's record received by gossip. Records claiming to be this node
    /// are never accepted; if a peer holds a newer version of our own record (from an earlier
    /// run), we re-stamp ours above it so that ours wins everywhere. Returns whether the
    /// catalog changed.
    pub async fn apply_remote(
        &self,
        record: NodeRecord,
        status: MemberStatus,
        gossip_addr: Option<SocketAddr>,
    ) -> bool {
        let mut w = self.writer.lock().await;
        if record.name == self.node_name {
            // A version from the far future is a corrupt or hostile claim, not an earlier
            // run of ours: adopting it would pin our record there (or overflow it).
            if record.version > wall_clock_micros().saturating_add(FUTURE_VERSION_SLACK_MICROS) {
                tracing::warn!(
                    version = record.version,
                    "ignoring a record of this node with a version far in the future"
                );
                return false;
            }
            if record.version >= w.local.record.version {
                w.local.record.version = record.version;
                self.commit_local(&mut w);
                return true;
            }
            return false;
        }
        let now = self.now_ms();
        match w.catalog.apply_record(record, status, gossip_addr, now) {
            Ok(c) => {
                self.publish(&w);
                c.changed
            }
            Err(_) => false,
        }
    }

    /// Sets another node's membership state. Unknown nodes are ignored (their record has not
    /// arrived yet). Returns whether anything changed.
    pub async fn set_member_status(&self, node: &str, status: MemberStatus) -> bool {
        if node == self.node_name {
            return false;
        }
        let mut w = self.writer.lock().await;
        let now = self.now_ms();
        match w.catalog.set_status(node, status, now) {
            Ok(c) if c.changed => {
                self.publish(&w);
                true
            }
            _ => false,
        }
    }

    /// Records where a member gossips from (shown by `/v1/agent/members`).
    pub async fn set_gossip_addr(&self, node: &str, addr: SocketAddr) {
        let mut w = self.writer.lock().await;
        if w.catalog.set_gossip_addr(node, addr) {
            self.publish(&w);
        }
    }

    /// Forgets a node (reaped, or force-left). Never this node.
    pub async fn remove_node(&self, node: &str) -> bool {
        if node == self.node_name {
            return false;
        }
        let mut w = self.writer.lock().await;
        let c = w.catalog.remove_node(node);
        if c.changed {
            self.publish(&w);
        }
        c.changed
    }
}

pub fn maintenance_id(service_id: &str) -> String {
    format!("{SERVICE_MAINTENANCE_PREFIX}{service_id}")
}

fn maintenance_check(service_id: &str, reason: &str) -> Check {
    Check {
        id: maintenance_id(service_id),
        name: "Service Maintenance Mode".into(),
        status: HealthStatus::Critical,
        notes: if reason.is_empty() {
            "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.".into()
        } else {
            reason.to_string()
        },
        output: String::new(),
        service_id: service_id.to_string(),
        kind: CheckKind::Internal,
        deregister_critical_after_ms: 0,
        status_changed_ms: wall_clock_millis(),
    }
}

fn node_maintenance_check(reason: &str) -> Check {
    Check {
        id: NODE_MAINTENANCE_CHECK.into(),
        name: "Node Maintenance Mode".into(),
        status: HealthStatus::Critical,
        notes: if reason.is_empty() {
            "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.".into()
        } else {
            reason.to_string()
        },
        output: String::new(),
        service_id: String::new(),
        kind: CheckKind::Internal,
        deregister_critical_after_ms: 0,
        status_changed_ms: wall_clock_millis(),
    }
}
