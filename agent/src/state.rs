//! The one owner of the catalog and of this node's own services and checks.
//!
//! Readers (DNS, HTTP reads) load the current immutable [`Snapshot`] and never wait on
//! anyone. Writers never hold a lock across disk I/O:
//!
//! * Local changes (registrations, check results, maintenance, config reloads) go to one
//!   committer task. It takes every change that arrived while it was busy as one batch,
//!   applies them in order to a copy of the local state (a copy is free: the maps share
//!   structure), writes what they touched to `data_dir` with one flush for the whole batch
//!   (group commit), and only then makes the copy the state, applies the changed entries to
//!   the catalog, hands them to gossip, and answers every writer of the batch. A failed
//!   write changes nothing and fails the whole batch. A change costs what it touches, not
//!   the number of services the node holds.
//! * Gossip applies what it learns of other nodes as entry changes and member verdicts,
//!   under a plain mutex held for microseconds.
//!
//! Every publish swaps the snapshot in an `ArcSwap`, sends the new index on a `watch`
//! channel (DNS follows it), and wakes the blocking queries waiting on what the change
//! touched (see `waiters`).

use crate::config::ServiceDefinition;
use crate::store::{FileJob, Store, StoredService};
use crate::waiters::{Subscription, Waiters, Watch};
use arc_swap::ArcSwap;
use muster_proto::catalog::{Catalog, Standing};
use muster_proto::gossip::data::{MAX_ENTRY_BYTES, MAX_NODE_BYTES};
use muster_proto::gossip::{Change, EntryKey, Event, NodeInfo, Value};
use muster_proto::model::{
    check_output_text, Check, CheckKind, HealthStatus, Map, NodeRecord, Service,
    NODE_MAINTENANCE_CHECK, SERVICE_MAINTENANCE_PREFIX,
};
use muster_proto::Snapshot;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

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

/// Writers waiting at once beyond which new ones wait for room (each batch takes them all).
const MAX_BATCH: usize = 1024;

/// A file in `data_dir` that a local change touched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
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

/// This node's own state: its record plus what only this agent needs to know about it
/// (where each service came from, maintenance reasons). Persistent maps throughout: a copy
/// is free and a change copies one path.
#[derive(Clone, Debug)]
struct Local {
    record: NodeRecord,
    sources: Map<String, Source>,
    /// Service id → maintenance reason.
    maintenance: Map<String, String>,
    /// Encoded size of all entries, bounded by [`MAX_NODE_BYTES`].
    bytes: usize,
    /// Entries changed since the last drain (the committer drains after each change).
    keys: Vec<EntryKey>,
}

fn entry_size<T: serde::Serialize>(v: &T) -> usize {
    postcard::to_allocvec(v).map_or(0, |b| b.len())
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
                        .own_checks(id)
                        .filter(|c| !c.id.starts_with(SERVICE_MAINTENANCE_PREFIX))
                        .map(|c| Check::clone(c))
                        .collect();
                    FileJob::SaveService(StoredService::new(
                        Service::clone(service),
                        checks,
                        self.maintenance.get(id).cloned(),
                    ))
                }
                _ => FileJob::RemoveService(id.clone()),
            },
            Persist::NodeCheck(id) => match self.record.checks.get(id) {
                Some(c) if c.service_id.is_empty() => FileJob::SaveCheck(Check::clone(c)),
                _ => FileJob::RemoveCheck(id.clone()),
            },
        }
    }

    fn set_service(&mut self, service: Service) {
        let id = service.id.clone();
        let old = self
            .record
            .services
            .get(&id)
            .map(|s| entry_size(&**s))
            .unwrap_or(0);
        self.bytes = self.bytes + entry_size(&service) - old.min(self.bytes);
        self.record.put_service(Arc::new(service));
        self.keys.push(EntryKey::Service(id.as_str().into()));
    }

    fn set_check(&mut self, check: Check) {
        let id = check.id.clone();
        let old = self
            .record
            .checks
            .get(&id)
            .map(|c| entry_size(&**c))
            .unwrap_or(0);
        self.bytes = self.bytes + entry_size(&check) - old.min(self.bytes);
        self.record.put_check(Arc::new(check));
        self.keys.push(EntryKey::Check(id.as_str().into()));
    }

    fn drop_check(&mut self, id: &str) -> Option<Arc<Check>> {
        let old = self.record.remove_check(id)?;
        self.bytes = self.bytes.saturating_sub(entry_size(&*old));
        self.keys.push(EntryKey::Check(id.into()));
        Some(old)
    }

    /// Adds or replaces a service with its checks (see `State::register_service`).
    fn put_service(&mut self, def: ServiceDefinition, source: Source, replace_checks: bool) {
        let id = def.service.id.clone();
        if replace_checks {
            let keep: Vec<&str> = def.checks.iter().map(|c| c.id.as_str()).collect();
            let gone: Vec<String> = self
                .record
                .own_checks(&id)
                .filter(|c| {
                    !keep.contains(&c.id.as_str()) && !c.id.starts_with(SERVICE_MAINTENANCE_PREFIX)
                })
                .map(|c| c.id.clone())
                .collect();
            for cid in gone {
                self.drop_check(&cid);
            }
        }
        for mut check in def.checks {
            check.service_id = id.clone();
            self.put_check(check);
        }
        self.set_service(def.service);
        self.sources.insert_mut(id, source);
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
        if self
            .record
            .checks
            .get(&check.id)
            .is_some_and(|c| **c == check)
        {
            return;
        }
        self.set_check(check);
    }

    /// Removes a service with its checks and maintenance state; false if it was not there.
    fn remove_service(&mut self, id: &str) -> bool {
        let Some(old) = self.record.remove_service(id) else {
            return false;
        };
        self.bytes = self.bytes.saturating_sub(entry_size(&*old));
        self.keys.push(EntryKey::Service(id.into()));
        let checks: Vec<String> = self.record.own_checks(id).map(|c| c.id.clone()).collect();
        for cid in checks {
            self.drop_check(&cid);
        }
        self.maintenance.remove_mut(id);
        self.sources.remove_mut(id);
        true
    }

    /// Whether `def` is exactly what is registered (service and check definitions).
    fn defines(&self, def: &ServiceDefinition) -> bool {
        let id = &def.service.id;
        let existing: Vec<&Arc<Check>> = self
            .record
            .own_checks(id)
            .filter(|c| !c.id.starts_with(SERVICE_MAINTENANCE_PREFIX))
            .collect();
        self.record.services.get(id).map(|s| &**s) == Some(&def.service)
            && existing.len() == def.checks.len()
            && def.checks.iter().all(|c| {
                existing
                    .iter()
                    .any(|e| e.id == c.id && e.kind == c.kind && e.name == c.name)
            })
    }

    /// The current value of an entry of ours.
    fn value(&self, key: &EntryKey) -> Option<Value> {
        match key {
            EntryKey::Service(id) => self
                .record
                .services
                .get(id.as_str())
                .map(|s| Value::Service(s.clone())),
            EntryKey::Check(id) => self
                .record
                .checks
                .get(id.as_str())
                .map(|c| Value::Check(c.clone())),
            EntryKey::Node => Some(Value::Node(Arc::new(NodeInfo {
                datacenter: self.record.datacenter.clone(),
                address: self.record.address,
                meta: self.record.meta.clone(),
            }))),
            EntryKey::Leave => None,
        }
    }

    /// Every entry of ours, as changes (what gossip publishes first).
    fn all_entries(&self) -> Vec<Change> {
        let mut v = vec![(EntryKey::Node, self.value(&EntryKey::Node))];
        for (id, s) in self.record.services.iter() {
            v.push((
                EntryKey::Service(id.as_str().into()),
                Some(Value::Service(s.clone())),
            ));
        }
        for (id, c) in self.record.checks.iter() {
            v.push((
                EntryKey::Check(id.as_str().into()),
                Some(Value::Check(c.clone())),
            ));
        }
        v
    }
}

/// What a local change answers with.
enum Answer {
    Unit,
    Changed(bool),
    Counts(usize, usize, usize),
}

type Edit = Box<dyn FnOnce(&mut Local) -> Result<(Answer, Vec<Persist>), StateError> + Send>;

/// A local change waiting for its batch.
struct Request {
    edit: Edit,
    reply: oneshot::Sender<Result<Answer, StateError>>,
}

/// What the catalog owner holds; the lock is held for microseconds, never across I/O.
struct Inner {
    catalog: Catalog,
    local: Local,
}

/// Shared handle to the agent's state. Cheap to clone through `Arc`.
pub struct State {
    pub node_name: String,
    snapshot: ArcSwap<Snapshot>,
    index_tx: watch::Sender<u64>,
    waiters: Waiters,
    local_tx: watch::Sender<Arc<NodeRecord>>,
    inner: Mutex<Inner>,
    requests: mpsc::Sender<Request>,
    /// Local entry changes, in order, for gossip to publish.
    gossip_tx: mpsc::UnboundedSender<Vec<Change>>,
    gossip_rx: Mutex<Option<mpsc::UnboundedReceiver<Vec<Change>>>>,
    started: Instant,
    /// Ids of TTL checks refreshed through the API. A refresh that repeats the current
    /// status and output changes nothing in the record (`update_check` returns false), yet
    /// it must still restart the check's TTL timer, so the TTL runners listen here.
    ttl_refresh_tx: broadcast::Sender<String>,
}

/// How many TTL refreshes may queue for a slow runner before it sees `Lagged` (it then
/// treats the gap as a refresh of its own check: see `checks`).
const TTL_REFRESH_BACKLOG: usize = 1024;

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

impl State {
    /// The state of a node with no services yet, and its committer task (so: inside a tokio
    /// runtime).
    pub fn new(
        node_name: String,
        datacenter: String,
        address: IpAddr,
        node_meta: BTreeMap<String, String>,
        store: Option<Store>,
    ) -> Arc<State> {
        let mut record = NodeRecord::new(node_name.clone(), datacenter.clone(), address);
        record.meta = node_meta;
        let local = Local {
            record,
            sources: Map::new_sync(),
            maintenance: Map::new_sync(),
            bytes: 0,
            keys: Vec::new(),
        };
        let mut catalog = Catalog::new();
        catalog.set_datacenter(&datacenter);
        let info = local.all_entries();
        catalog.apply_changes(&node_name, &info, 0);
        catalog.set_standing(&node_name, Standing::alive(), 0);
        let snapshot = catalog.snapshot();
        let (index_tx, _) = watch::channel(snapshot.index());
        let (local_tx, _) = watch::channel(Arc::new(local.record.clone()));
        let (gossip_tx, gossip_rx) = mpsc::unbounded_channel();
        let _ = gossip_tx.send(info);
        let (requests, queue) = mpsc::channel(MAX_BATCH);
        let state = Arc::new(State {
            node_name,
            snapshot: ArcSwap::from_pointee(snapshot),
            index_tx,
            waiters: Waiters::new(),
            local_tx,
            inner: Mutex::new(Inner { catalog, local }),
            requests,
            gossip_tx,
            gossip_rx: Mutex::new(Some(gossip_rx)),
            started: Instant::now(),
            ttl_refresh_tx: broadcast::channel(TTL_REFRESH_BACKLOG).0,
        });
        tokio::spawn(committer(
            Arc::downgrade(&state),
            queue,
            store.map(Arc::new),
        ));
        state
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent data (every mutation
        // is a swap of a finished value); keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Follows one answer's index (blocking queries); take it before reading the snapshot.
    pub fn follow(&self, watch: Watch<'_>) -> Subscription {
        self.waiters.subscribe(watch)
    }

    /// A receiver that sees this node's record after every local change (check runners).
    pub fn local_record(&self) -> watch::Receiver<Arc<NodeRecord>> {
        self.local_tx.subscribe()
    }

    /// This node's record as it stands.
    pub fn local(&self) -> Arc<NodeRecord> {
        self.local_tx.borrow().clone()
    }

    /// The stream of this node's entry changes, in order, starting with every entry it had
    /// when it was taken (for gossip; taken once).
    pub fn take_local_changes(&self) -> Option<mpsc::UnboundedReceiver<Vec<Change>>> {
        self.gossip_rx.lock().ok()?.take()
    }

    fn publish(&self, catalog: &mut Catalog) {
        let snap = Arc::new(catalog.snapshot());
        let index = snap.index();
        self.snapshot.store(Arc::clone(&snap));
        self.index_tx.send_replace(index);
        self.waiters.wake(index, &catalog.take_touched(), &snap);
    }

    /// Runs one local change in the next batch (see the module comment).
    async fn change_local(&self, edit: Edit) -> Result<Answer, StateError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request { edit, reply })
            .await
            .map_err(|_| StateError::Invalid("the agent is shutting down".into()))?;
        rx.await
            .map_err(|_| StateError::Invalid("the agent is shutting down".into()))?
    }

    /// Restores what `data_dir` holds (called once at start, before listeners open).
    pub async fn restore(&self, loaded: crate::store::Loaded) {
        let r = self
            .change_local(Box::new(move |l| {
                for s in loaded.services {
                    let id = s.service.id.clone();
                    l.sources.insert_mut(id.clone(), Source::Http);
                    for c in s.checks {
                        l.set_check(c);
                    }
                    if let Some(reason) = s.maintenance {
                        l.set_check(maintenance_check(&id, &reason));
                        l.maintenance.insert_mut(id.clone(), reason);
                    }
                    l.set_service(s.service);
                }
                for c in loaded.checks {
                    l.set_check(c);
                }
                // Already on disk: nothing to write.
                Ok((Answer::Unit, Vec::new()))
            }))
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "restoring data_dir failed");
        }
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
        self.change_local(Box::new(move |l| {
            let id = def.service.id.clone();
            l.put_service(def, source, replace_checks);
            Ok((Answer::Unit, vec![Persist::Service(id)]))
        }))
        .await
        .map(|_| ())
    }

    /// Removes a local service and its checks.
    pub async fn deregister_service(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_string();
        self.change_local(Box::new(move |l| {
            if !l.remove_service(&id) {
                return Err(StateError::UnknownService(id));
            }
            Ok((Answer::Unit, vec![Persist::Service(id)]))
        }))
        .await
        .map(|_| ())
    }

    /// Makes the config-file services exactly `defs`: adds, changes and removes config
    /// services; HTTP registrations are left alone, except that a config service with the
    /// same id takes the place of an HTTP one (and its stored file is removed).
    /// Returns (added, changed, removed).
    pub async fn apply_config_services(
        &self,
        defs: Vec<ServiceDefinition>,
    ) -> Result<(usize, usize, usize), StateError> {
        let answer = self
            .change_local(Box::new(move |l| {
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
                let mut wanted: Vec<(String, ServiceDefinition)> = wanted.into_iter().collect();
                wanted.sort_by(|a, b| a.0.cmp(&b.0));
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
                Ok((Answer::Counts(added, changed, removed), touched))
            }))
            .await?;
        match answer {
            Answer::Counts(a, c, r) => Ok((a, c, r)),
            _ => Ok((0, 0, 0)),
        }
    }

    /// Adds or replaces a check. Its service (if any) must exist locally.
    pub async fn register_check(&self, check: Check) -> Result<(), StateError> {
        self.change_local(Box::new(move |l| {
            let sid = check.service_id.clone();
            if !sid.is_empty() && !l.record.services.contains_key(&sid) {
                return Err(StateError::Invalid(format!(
                    "Invalid ServiceID: no local service {sid:?}"
                )));
            }
            let id = check.id.clone();
            l.put_check(check);
            Ok((Answer::Unit, vec![Persist::of_check(&sid, &id)]))
        }))
        .await
        .map(|_| ())
    }

    pub async fn deregister_check(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_string();
        self.change_local(Box::new(move |l| {
            let Some(old) = l.drop_check(&id) else {
                return Err(StateError::UnknownCheck(id));
            };
            Ok((Answer::Unit, vec![Persist::of_check(&old.service_id, &id)]))
        }))
        .await
        .map(|_| ())
    }

    /// Sets a check's status and output (TTL updates, check runners); the output is clipped
    /// to `muster_proto::model::MAX_CHECK_OUTPUT` bytes. Returns false when nothing changed.
    /// TTL state is persisted so it survives a restart.
    pub async fn update_check(
        &self,
        id: &str,
        status: HealthStatus,
        output: String,
    ) -> Result<bool, StateError> {
        let output = check_output_text(output.as_bytes());
        // Runners report every interval; most reports change nothing, so answer those from
        // the published record without queueing a change.
        match self.local().checks.get(id) {
            None => return Err(StateError::UnknownCheck(id.to_string())),
            Some(c) if c.status == status && c.output == output => return Ok(false),
            Some(_) => {}
        }
        let id = id.to_string();
        let answer = self
            .change_local(Box::new(move |l| {
                let Some(old) = l.record.checks.get(&id).cloned() else {
                    return Err(StateError::UnknownCheck(id));
                };
                if old.status == status && old.output == output {
                    return Ok((Answer::Changed(false), Vec::new()));
                }
                let mut check = Check::clone(&old);
                if check.status != status {
                    check.status_changed_ms = wall_clock_millis();
                }
                check.status = status;
                check.output = output;
                let touched =
                    if check.service_id.is_empty() || matches!(check.kind, CheckKind::Ttl { .. }) {
                        vec![Persist::of_check(&check.service_id, &id)]
                    } else {
                        // Results of HTTP/TCP/script checks are recomputed after a restart.
                        vec![]
                    };
                l.set_check(check);
                Ok((Answer::Changed(true), touched))
            }))
            .await?;
        Ok(matches!(answer, Answer::Changed(true)))
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
        let (id, reason) = (id.to_string(), reason.to_string());
        self.change_local(Box::new(move |l| {
            if !l.record.services.contains_key(&id) {
                return Err(StateError::UnknownService(id));
            }
            let cid = maintenance_id(&id);
            if enable {
                l.put_check(maintenance_check(&id, &reason));
                l.maintenance.insert_mut(id.clone(), reason);
            } else {
                l.drop_check(&cid);
                l.maintenance.remove_mut(&id);
            }
            Ok((Answer::Unit, vec![Persist::Service(id)]))
        }))
        .await
        .map(|_| ())
    }

    /// Puts the whole node in or out of maintenance (`_node_maintenance`).
    pub async fn set_node_maintenance(&self, enable: bool, reason: &str) -> Result<(), StateError> {
        let reason = reason.to_string();
        self.change_local(Box::new(move |l| {
            if enable {
                l.put_check(node_maintenance_check(&reason));
            } else {
                l.drop_check(NODE_MAINTENANCE_CHECK);
            }
            Ok((
                Answer::Unit,
                vec![Persist::NodeCheck(NODE_MAINTENANCE_CHECK.to_string())],
            ))
        }))
        .await
        .map(|_| ())
    }

    // ----- the gossip side -----

    /// Applies what gossip reported (other nodes' changes, member verdicts, protect mode) in
    /// one go, and publishes once.
    pub fn apply_gossip(&self, events: &[Event]) {
        let now = self.now_ms();
        let mut inner = self.inner();
        let mut changed = false;
        for e in events {
            match e {
                Event::Data { node, changes } if node.as_str() != self.node_name => {
                    changed |= inner.catalog.apply_changes(node, changes, now).changed;
                }
                Event::Member(v) if v.name.as_str() != self.node_name => {
                    let standing = Standing {
                        status: v.status,
                        served: v.served,
                        stale: v.stale,
                        gossip_addr: Some(v.addr),
                    };
                    changed |= inner.catalog.set_standing(&v.name, standing, now).changed;
                }
                Event::Forget { node } if node.as_str() != self.node_name => {
                    changed |= inner.catalog.remove_node(node).changed;
                }
                Event::Protect { since } => {
                    let since = since.map(|_| now);
                    changed |= inner.catalog.set_protect(since).changed;
                }
                _ => {}
            }
        }
        if changed {
            self.publish(&mut inner.catalog);
        }
    }
}

/// The committer: takes every waiting local change as one batch, applies them to a copy,
/// writes them with one flush, then publishes (see the module comment).
async fn committer(
    state: std::sync::Weak<State>,
    mut queue: mpsc::Receiver<Request>,
    store: Option<Arc<Store>>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let Some(state) = state.upgrade() else {
            return;
        };
        let before = state.inner().local.clone();
        let mut working = before.clone();
        working.keys.clear();
        let mut keys: BTreeSet<EntryKey> = BTreeSet::new();
        let mut touched: BTreeSet<Persist> = BTreeSet::new();
        let mut answered: Vec<(oneshot::Sender<Result<Answer, StateError>>, Answer)> = Vec::new();
        for req in batch {
            let mut next = working.clone();
            match (req.edit)(&mut next).and_then(|ok| within_bounds(&next).map(|()| ok)) {
                Ok((answer, files)) => {
                    keys.extend(next.keys.drain(..));
                    touched.extend(files);
                    working = next;
                    answered.push((req.reply, answer));
                }
                Err(e) => {
                    let _ = req.reply.send(Err(e));
                }
            }
        }
        if let (Some(store), false) = (&store, touched.is_empty()) {
            let jobs: Vec<FileJob> = touched.iter().map(|t| working.file_job(t)).collect();
            let store = store.clone();
            let written = tokio::task::spawn_blocking(move || store.commit(jobs))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            if let Err(e) = written {
                tracing::error!(error = %e, "could not write to data_dir; the changes were refused");
                for (reply, _) in answered {
                    let _ = reply.send(Err(StateError::Persist(std::io::Error::new(
                        e.kind(),
                        e.to_string(),
                    ))));
                }
                continue;
            }
        }
        // Durable: the copy becomes the state, and its changed entries go to the catalog
        // and to gossip.
        let changes: Vec<Change> = keys
            .into_iter()
            .filter_map(|k| {
                let now = working.value(&k);
                (now != before.value(&k)).then_some((k, now))
            })
            .collect();
        if !changes.is_empty() {
            working.record.version += 1;
            let record = Arc::new(working.record.clone());
            {
                let mut inner = state.inner();
                inner.local = working;
                let now = state.now_ms();
                let node = state.node_name.clone();
                inner.catalog.apply_changes(&node, &changes, now);
                state.publish(&mut inner.catalog);
            }
            state.local_tx.send_replace(record);
            let _ = state.gossip_tx.send(changes);
        } else {
            state.inner().local = working;
        }
        for (reply, answer) in answered {
            let _ = reply.send(Ok(answer));
        }
    }
}

/// The limits that keep one node's state within what gossip carries.
fn within_bounds(l: &Local) -> Result<(), StateError> {
    if l.bytes > MAX_NODE_BYTES {
        return Err(StateError::Invalid(format!(
            "refused: this node's services and checks would exceed {} KiB encoded, the most one node may gossip; remove some first",
            MAX_NODE_BYTES / 1024
        )));
    }
    for k in &l.keys {
        if let Some(v) = l.value(k) {
            if entry_size(&v) > MAX_ENTRY_BYTES {
                return Err(StateError::Invalid(format!(
                    "refused: one service or check may be at most {} KiB encoded to gossip",
                    MAX_ENTRY_BYTES / 1024
                )));
            }
        }
    }
    Ok(())
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

#[cfg(test)]
impl State {
    /// A memory-only state of node `n1` in `dc1` at 127.0.0.1, for unit tests.
    pub fn for_test() -> Arc<State> {
        State::new(
            "n1".into(),
            "dc1".into(),
            "127.0.0.1".parse().expect("an address"),
            BTreeMap::new(),
            None,
        )
    }
}
