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
use muster_proto::model::{
    Check, CheckKind, HealthStatus, MemberStatus, NodeRecord, NODE_MAINTENANCE_CHECK,
    SERVICE_MAINTENANCE_PREFIX,
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
    /// This node's authoritative record.
    local: NodeRecord,
    sources: HashMap<String, Source>,
    /// Service id → maintenance reason.
    maintenance: HashMap<String, String>,
    store: Option<Arc<Store>>,
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    now.max(prev + 1)
}

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
                local,
                sources: HashMap::new(),
                maintenance: HashMap::new(),
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
        w.local.version = next_version(w.local.version);
        let now = self.now_ms();
        if let Err(e) = w
            .catalog
            .apply_record(w.local.clone(), MemberStatus::Alive, None, now)
        {
            tracing::error!(error = %e, "local record refused by catalog");
        }
        self.local_tx.send_replace(Arc::new(w.local.clone()));
        self.publish(w);
    }

    fn stored(w: &Writer, id: &str) -> Option<StoredService> {
        let service = w.local.services.get(id)?.clone();
        let checks = w
            .local
            .checks
            .values()
            .filter(|c| c.service_id == id && !c.id.starts_with(SERVICE_MAINTENANCE_PREFIX))
            .cloned()
            .collect();
        Some(StoredService::new(
            service,
            checks,
            w.maintenance.get(id).cloned(),
        ))
    }

    /// Persists the service `id` (if HTTP-registered and a store exists). Blocking I/O runs
    /// off the async threads; the writer lock is held so files are written in change order.
    async fn persist_service(w: &Writer, id: &str) -> Result<(), StateError> {
        let Some(store) = w.store.clone() else {
            return Ok(());
        };
        if w.sources.get(id) != Some(&Source::Http) {
            return Ok(());
        }
        let stored = Self::stored(w, id);
        let id = id.to_string();
        tokio::task::spawn_blocking(move || match stored {
            Some(s) => store.save_service(&s),
            None => store.remove_service(&id),
        })
        .await
        .map_err(|e| StateError::Persist(std::io::Error::other(e)))??;
        Ok(())
    }

    async fn persist_node_check(
        w: &Writer,
        check: Option<&Check>,
        id: &str,
    ) -> Result<(), StateError> {
        let Some(store) = w.store.clone() else {
            return Ok(());
        };
        let check = check.cloned();
        let id = id.to_string();
        tokio::task::spawn_blocking(move || match check {
            Some(c) => store.save_check(&c),
            None => store.remove_check(&id),
        })
        .await
        .map_err(|e| StateError::Persist(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Restores what `data_dir` holds (called once at start, before listeners open).
    pub async fn restore(&self, loaded: crate::store::Loaded) {
        let mut w = self.writer.lock().await;
        for s in loaded.services {
            let id = s.service.id.clone();
            w.sources.insert(id.clone(), Source::Http);
            for c in s.checks {
                w.local.checks.insert(c.id.clone(), c);
            }
            if let Some(reason) = s.maintenance {
                w.local
                    .checks
                    .insert(maintenance_id(&id), maintenance_check(&id, &reason));
                w.maintenance.insert(id.clone(), reason);
            }
            w.local.services.insert(id, s.service);
        }
        for c in loaded.checks {
            w.local.checks.insert(c.id.clone(), c);
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
        let mut w = self.writer.lock().await;
        let id = def.service.id.clone();
        if replace_checks {
            let keep: Vec<&str> = def.checks.iter().map(|c| c.id.as_str()).collect();
            w.local.checks.retain(|cid, c| {
                c.service_id != id
                    || keep.contains(&cid.as_str())
                    || cid.starts_with(SERVICE_MAINTENANCE_PREFIX)
            });
        }
        for mut check in def.checks {
            check.service_id = id.clone();
            if let Some(old) = w.local.checks.get(&check.id) {
                if old.kind == check.kind && old.service_id == check.service_id {
                    check.status = old.status;
                    check.output = old.output.clone();
                }
            }
            w.local.checks.insert(check.id.clone(), check);
        }
        w.local.services.insert(id.clone(), def.service);
        w.sources.insert(id.clone(), source);
        Self::persist_service(&w, &id).await?;
        self.commit_local(&mut w);
        Ok(())
    }

    /// Removes a local service and its checks.
    pub async fn deregister_service(&self, id: &str) -> Result<(), StateError> {
        let mut w = self.writer.lock().await;
        if w.local.services.remove(id).is_none() {
            return Err(StateError::UnknownService(id.to_string()));
        }
        w.local.checks.retain(|_, c| c.service_id != id);
        w.maintenance.remove(id);
        let was_http = w.sources.get(id) == Some(&Source::Http);
        if was_http {
            if let Some(store) = w.store.clone() {
                let sid = id.to_string();
                tokio::task::spawn_blocking(move || store.remove_service(&sid))
                    .await
                    .map_err(|e| StateError::Persist(std::io::Error::other(e)))??;
            }
        }
        w.sources.remove(id);
        self.commit_local(&mut w);
        Ok(())
    }

    /// This node's record as it stands.
    pub fn local(&self) -> Arc<NodeRecord> {
        self.local_tx.borrow().clone()
    }

    /// Makes the config-file services exactly `defs`: adds, changes and removes config
    /// services; HTTP registrations are left alone. Returns (added, changed, removed).
    pub async fn apply_config_services(
        &self,
        defs: Vec<ServiceDefinition>,
    ) -> (usize, usize, usize) {
        let mut w = self.writer.lock().await;
        let (mut added, mut changed, mut removed) = (0, 0, 0);
        let wanted: HashMap<String, ServiceDefinition> = defs
            .into_iter()
            .map(|d| (d.service.id.clone(), d))
            .collect();
        let current: Vec<String> = w
            .sources
            .iter()
            .filter(|(_, s)| **s == Source::Config)
            .map(|(id, _)| id.clone())
            .collect();
        for id in current {
            if !wanted.contains_key(&id) {
                w.local.services.remove(&id);
                w.local.checks.retain(|_, c| c.service_id != id);
                w.sources.remove(&id);
                removed += 1;
            }
        }
        for (id, def) in wanted {
            let existing_checks: Vec<Check> = w
                .local
                .checks
                .values()
                .filter(|c| c.service_id == id && !c.id.starts_with(SERVICE_MAINTENANCE_PREFIX))
                .cloned()
                .collect();
            let same = w.local.services.get(&id) == Some(&def.service)
                && existing_checks.len() == def.checks.len()
                && def.checks.iter().all(|c| {
                    existing_checks
                        .iter()
                        .any(|e| e.id == c.id && e.kind == c.kind && e.name == c.name)
                });
            if same && w.sources.get(&id) == Some(&Source::Config) {
                continue;
            }
            if w.local.services.contains_key(&id) {
                changed += 1;
            } else {
                added += 1;
            }
            w.local
                .checks
                .retain(|cid, c| c.service_id != id || cid.starts_with(SERVICE_MAINTENANCE_PREFIX));
            for mut check in def.checks {
                check.service_id = id.clone();
                if let Some(old) = existing_checks
                    .iter()
                    .find(|o| o.id == check.id && o.kind == check.kind)
                {
                    check.status = old.status;
                    check.output = old.output.clone();
                }
                w.local.checks.insert(check.id.clone(), check);
            }
            w.local.services.insert(id.clone(), def.service);
            w.sources.insert(id, Source::Config);
        }
        if added + changed + removed > 0 {
            self.commit_local(&mut w);
        }
        (added, changed, removed)
    }

    /// Adds or replaces a check. Its service (if any) must exist locally.
    pub async fn register_check(&self, mut check: Check) -> Result<(), StateError> {
        let mut w = self.writer.lock().await;
        if !check.service_id.is_empty() && !w.local.services.contains_key(&check.service_id) {
            return Err(StateError::Invalid(format!(
                "invalid ServiceID: no local service {:?}",
                check.service_id
            )));
        }
        if let Some(old) = w.local.checks.get(&check.id) {
            if old.kind == check.kind && old.service_id == check.service_id {
                check.status = old.status;
                check.output = old.output.clone();
            }
        }
        let sid = check.service_id.clone();
        let id = check.id.clone();
        w.local.checks.insert(id.clone(), check);
        if sid.is_empty() {
            let c = w.local.checks.get(&id).cloned();
            Self::persist_node_check(&w, c.as_ref(), &id).await?;
        } else {
            Self::persist_service(&w, &sid).await?;
        }
        self.commit_local(&mut w);
        Ok(())
    }

    pub async fn deregister_check(&self, id: &str) -> Result<(), StateError> {
        let mut w = self.writer.lock().await;
        let Some(old) = w.local.checks.remove(id) else {
            return Err(StateError::UnknownCheck(id.to_string()));
        };
        if old.service_id.is_empty() {
            Self::persist_node_check(&w, None, id).await?;
        } else {
            Self::persist_service(&w, &old.service_id).await?;
        }
        self.commit_local(&mut w);
        Ok(())
    }

    /// Sets a check's status and output (TTL updates, check runners). Returns false when
    /// nothing changed. TTL state is persisted so it survives a restart.
    pub async fn update_check(
        &self,
        id: &str,
        status: HealthStatus,
        output: String,
    ) -> Result<bool, StateError> {
        let mut w = self.writer.lock().await;
        let Some(check) = w.local.checks.get_mut(id) else {
            return Err(StateError::UnknownCheck(id.to_string()));
        };
        if check.status == status && check.output == output {
            return Ok(false);
        }
        check.status = status;
        check.output = output;
        let check = check.clone();
        if check.service_id.is_empty() {
            Self::persist_node_check(&w, Some(&check), id).await?;
        } else if matches!(check.kind, CheckKind::Ttl { .. }) {
            Self::persist_service(&w, &check.service_id).await?;
        }
        self.commit_local(&mut w);
        Ok(true)
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
        let mut w = self.writer.lock().await;
        if !w.local.services.contains_key(id) {
            return Err(StateError::UnknownService(id.to_string()));
        }
        let cid = maintenance_id(id);
        if enable {
            w.local.checks.insert(cid, maintenance_check(id, reason));
            w.maintenance.insert(id.to_string(), reason.to_string());
        } else {
            w.local.checks.remove(&cid);
            w.maintenance.remove(id);
        }
        Self::persist_service(&w, id).await?;
        self.commit_local(&mut w);
        Ok(())
    }

    /// Puts the whole node in or out of maintenance (`_node_maintenance`).
    pub async fn set_node_maintenance(&self, enable: bool, reason: &str) -> Result<(), StateError> {
        let mut w = self.writer.lock().await;
        if enable {
            let check = node_maintenance_check(reason);
            w.local.checks.insert(check.id.clone(), check.clone());
            Self::persist_node_check(&w, Some(&check), NODE_MAINTENANCE_CHECK).await?;
        } else {
            w.local.checks.remove(NODE_MAINTENANCE_CHECK);
            Self::persist_node_check(&w, None, NODE_MAINTENANCE_CHECK).await?;
        }
        self.commit_local(&mut w);
        Ok(())
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
            if record.version >= w.local.version {
                w.local.version = record.version;
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

    pub async fn set_gossip_addr(&self, node: &str, addr: SocketAddr) {
        let mut w = self.writer.lock().await;
        w.catalog.set_gossip_addr(node, addr);
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
    }
}
