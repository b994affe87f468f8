//! The cluster: SWIM membership (foca) over UDP, catalog records as piggy-backed
//! broadcasts, and full-state push-pull over TCP on the same port.
//!
//! One task owns foca and everything it decides: datagrams, timers, local record changes,
//! push-pull results, join and force-leave commands and the leave at shutdown all arrive
//! at that task as messages. Sends go out through one writer task; timers come back from
//! one queue in deadline order. Membership changes and remote records are applied to the
//! catalog through `State`; nothing here reads or writes the catalog any other way.

mod timers;
pub mod transport;

use crate::agent::{Shared, Stop};
use crate::metrics::METRICS;
use foca::{AccumulatingRuntime, Identity, Member, OwnedNotification, PostcardCodec};
use muster_proto::gossip::message::split_record;
use muster_proto::gossip::{
    swim_config, CatalogBroadcasts, Delivery, Item, NodeId, PushPull, SharedLedger, Swim,
};
use muster_proto::model::{MemberStatus, NodeRecord};
use rand::seq::IndexedRandom;
use rand10::SeedableRng;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use timers::TimerQueue;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// How often each member exchanges full state with a random other member.
const PUSH_PULL_EVERY: Duration = Duration::from_secs(30);
/// Join retries back off from this to [`JOIN_BACKOFF_MAX`].
const JOIN_BACKOFF_MIN: Duration = Duration::from_secs(1);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Eager pushes of news (each to 3 random members) before it is left to piggy-backing:
/// with two, a change reaches every member of a 50-node cluster in a few network trips
/// with rare misses (each node is picked ~6 times on average), within the retransmit limit.
const EAGER_ROUNDS: usize = 2;
/// A member that SWIM reports up but whose record has not arrived by broadcast within
/// this long is asked for it directly (a push-pull with that member).
const RECORD_GRACE: Duration = Duration::from_millis(250);
/// Direct record fetches started per check, so a join storm cannot open a connection burst.
const MAX_FETCHES: usize = 8;
/// After joining, one more push-pull this much later: updates broadcast while the cluster
/// did not yet know us as a member were not sent to us.
const SETTLE_SYNC_AFTER: Duration = Duration::from_secs(3);
/// How often failed and left members are checked for reaping.
const REAP_EVERY: Duration = Duration::from_secs(5);
/// How long shutdown lets the leave notice go out before the process exits.
pub const LEAVE_GRACE: Duration = Duration::from_millis(300);
/// The longest start-up waits for the first join attempt before reporting ready.
pub const FIRST_JOIN_WAIT: Duration = Duration::from_secs(12);
/// Push-pull exchanges served at once; more connections wait in the backlog.
const MAX_STREAMS: usize = 16;

/// A request to the gossip task from the HTTP API.
pub enum Command {
    Join {
        addrs: Vec<String>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    ForceLeave {
        node: String,
        prune: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What the HTTP API holds to reach the gossip task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// A handle and the receiving end the gossip task is started with.
    pub fn channel() -> (Handle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(64);
        (Handle { tx }, rx)
    }

    /// Joins the cluster through `addr` ("ip:port" or "ip"); returns how many were joined.
    pub async fn join(&self, addr: &str) -> Result<usize, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Join {
                addrs: vec![addr.to_string()],
                reply,
            })
            .await
            .map_err(|_| "gossip is not running".to_string())?;
        rx.await
            .map_err(|_| "gossip stopped before the join finished".to_string())?
    }

    /// Marks a failed member as left (or forgets it entirely with `prune`).
    pub async fn force_leave(&self, node: &str, prune: bool) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::ForceLeave {
                node: node.to_string(),
                prune,
                reply,
            })
            .await
            .map_err(|_| "gossip is not running".to_string())?;
        rx.await
            .map_err(|_| "gossip stopped before force-leave finished".to_string())?
    }
}

/// A full state received by the TCP server, waiting for ours in reply.
struct Inbound {
    state: PushPull,
    reply: oneshot::Sender<Vec<u8>>,
}

/// The outcome of a push-pull we started.
struct Outcome {
    to: SocketAddr,
    result: Result<PushPull, String>,
    /// Join requests waiting on this exchange.
    reply: Option<oneshot::Sender<Result<usize, String>>>,
    /// Part of `retry_join`.
    retry: bool,
    /// A joining exchange (not anti-entropy).
    join: bool,
}

/// A join attempt the task asked itself for (after resolving a retry_join target).
struct JoinRequest {
    to: SocketAddr,
    retry: bool,
}

/// This task's view of one member, keyed by node name.
#[derive(Clone, Debug)]
struct View {
    id: NodeId,
    status: MemberStatus,
}

/// The running gossip task.
pub struct Started {
    /// Finishes after announcing our leave when the stop signal changes.
    pub task: JoinHandle<()>,
    /// Becomes true once the first `retry_join` attempt has finished, successful or not
    /// (at once without `retry_join`).
    pub first_join: watch::Receiver<bool>,
}

/// Binds the gossip port (UDP and TCP) and starts the tasks.
pub async fn start(shared: &Shared, commands: mpsc::Receiver<Command>) -> anyhow::Result<Started> {
    let config = shared.config.load_full();
    let bind = SocketAddr::new(config.bind_addr, config.ports.gossip);
    let udp = Arc::new(
        UdpSocket::bind(bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot bind gossip UDP {bind}: {e}"))?,
    );
    let tcp = TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind gossip TCP {bind}: {e}"))?;
    // Sealing and opening read this shared keyring (keyring operations swap it); whether
    // gossip may run without a key was decided at start-up (`keyring::check_secure`).
    let keys = shared.keyring.keys();
    let boot = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1);
    let me = NodeId::new(
        config.node_name.clone(),
        SocketAddr::new(config.advertise_addr, config.ports.gossip),
        boot,
    );
    let ledger = SharedLedger::default();
    let swim = Swim::with_custom_broadcast(
        me.clone(),
        swim_config(1),
        rand10::rngs::StdRng::seed_from_u64(rand::random()),
        PostcardCodec,
        CatalogBroadcasts::new(ledger.clone()),
    );

    let (out_tx, out_rx) = mpsc::channel(4096);
    let (in_tx, in_rx) = mpsc::channel(4096);
    let (inbound_tx, inbound_rx) = mpsc::channel(MAX_STREAMS);
    let (outcome_tx, outcome_rx) = mpsc::channel(64);
    let (join_tx, join_rx) = mpsc::channel(64);
    let (first_join_tx, first_join) = watch::channel(config.retry_join.is_empty());
    tokio::spawn(transport::udp_writer(udp.clone(), keys.clone(), out_rx));
    tokio::spawn(transport::udp_reader(udp.clone(), keys.clone(), in_tx));
    tokio::spawn(serve_streams(
        tcp,
        keys.clone(),
        shared.keyring.clone(),
        inbound_tx,
        shared.stop_rx(),
    ));

    tracing::info!(gossip = %bind, id = ?me, encrypted = !keys.load().is_empty(), "gossip running");
    let mut task = Gossip {
        shared: shared.clone(),
        swim,
        ledger,
        me,
        keys,
        timers: TimerQueue::default(),
        out: out_tx,
        views: HashMap::new(),
        size_bucket: 1,
        outcome_tx,
        join_requests: join_tx,
        retry_join: config.retry_join.clone(),
        join_backoff: JOIN_BACKOFF_MIN,
        next_join: Instant::now(),
        joined: false,
        default_port: config.ports.gossip,
        reconnect_timeout: config.reconnect_timeout,
        first_join: first_join_tx,
        awaited: HashMap::new(),
        settle_sync: None,
    };
    let task = tokio::spawn(async move {
        task.run(in_rx, inbound_rx, outcome_rx, commands, join_rx)
            .await
    });
    Ok(Started { task, first_join })
}

/// Accepts gossip streams: sync frames (push-pull) go to the SWIM task, keyring frames to
/// the keyring. Admission, size, time and buffer bounds are the transport's.
async fn serve_streams(
    listener: TcpListener,
    keys: transport::Keys,
    keyring: crate::keyring::KeyringHandle,
    inbound: mpsc::Sender<Inbound>,
    mut stop: tokio::sync::watch::Receiver<Stop>,
) {
    let admission = transport::Admission::default();
    loop {
        let (stream, from) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "gossip accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Some(permit) = admission.admit(&stream, from) else {
            continue;
        };
        let keys = keys.clone();
        let keyring = keyring.clone();
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let _permit = permit;
            transport::serve_stream(stream, from, keys, |frame| async move {
                match frame.kind {
                    transport::FrameKind::Keyring => Ok((
                        transport::FrameKind::Keyring,
                        crate::keyring::serve(&keyring, &frame).await,
                    )),
                    transport::FrameKind::Sync => {
                        let state = PushPull::decode(&frame.body).map_err(|e| {
                            METRICS.gossip_malformed.fetch_add(1, Relaxed);
                            e.to_string()
                        })?;
                        let (reply, rx) = oneshot::channel();
                        inbound
                            .send(Inbound { state, reply })
                            .await
                            .map_err(|_| "gossip stopped".to_string())?;
                        let ours = rx.await.map_err(|_| "gossip stopped".to_string())?;
                        Ok((transport::FrameKind::Sync, ours))
                    }
                }
            })
            .await;
        });
    }
}

struct Gossip {
    shared: Shared,
    swim: Swim<rand10::rngs::StdRng>,
    ledger: SharedLedger,
    me: NodeId,
    keys: transport::Keys,
    timers: TimerQueue,
    out: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    views: HashMap<String, View>,
    /// The power of two the SWIM settings were last scaled for.
    size_bucket: usize,
    outcome_tx: mpsc::Sender<Outcome>,
    join_requests: mpsc::Sender<JoinRequest>,
    retry_join: Vec<String>,
    join_backoff: Duration,
    next_join: Instant,
    /// Whether some retry_join target answered (retrying stops then).
    joined: bool,
    default_port: u16,
    reconnect_timeout: Duration,
    first_join: watch::Sender<bool>,
    /// Members up in SWIM whose record we still lack, with when to fetch it directly.
    awaited: HashMap<String, (NodeId, Instant)>,
    /// When to run the post-join push-pull.
    settle_sync: Option<Instant>,
}

impl Gossip {
    async fn run(
        &mut self,
        mut datagrams: mpsc::Receiver<Vec<u8>>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut outcomes: mpsc::Receiver<Outcome>,
        mut commands: mpsc::Receiver<Command>,
        mut join_requests: mpsc::Receiver<JoinRequest>,
    ) {
        let mut local = self.shared.state.local_record();
        let mut stop = self.shared.stop_rx();
        let first = local.borrow_and_update().clone();
        self.publish(&first).await;
        let mut push_pull = tokio::time::interval_at(
            Instant::now() + PUSH_PULL_EVERY.mul_f64(0.5 + rand::random::<f64>()),
            PUSH_PULL_EVERY,
        );
        let mut reap = tokio::time::interval(REAP_EVERY);
        let mut fetch = tokio::time::interval(RECORD_GRACE / 2);
        fetch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.retry_join.is_empty() {
            self.joined = true;
        }
        loop {
            let join_at = if self.joined {
                Instant::now() + Duration::from_secs(3600)
            } else {
                self.next_join
            };
            tokio::select! {
                Some(data) = datagrams.recv() => {
                    let mut rt = AccumulatingRuntime::new();
                    if let Err(e) = self.swim.handle_data(&data, &mut rt) {
                        METRICS.gossip_malformed.fetch_add(1, Relaxed);
                        tracing::trace!(error = %e, "gossip packet not handled");
                    }
                    self.flush(rt).await;
                }
                _ = sleep_until(self.timers.next_deadline()) => {
                    for timer in self.timers.due(Instant::now()) {
                        let mut rt = AccumulatingRuntime::new();
                        if let Err(e) = self.swim.handle_timer(timer, &mut rt) {
                            tracing::debug!(error = %e, "SWIM timer failed");
                        }
                        self.flush(rt).await;
                    }
                }
                r = local.changed() => {
                    if r.is_err() { return; }
                    let rec = local.borrow_and_update().clone();
                    self.publish(&rec).await;
                }
                Some(req) = inbound.recv() => {
                    let from = req.state.from.clone();
                    // A joiner's record reached us whole over the stream; its own
                    // broadcasts mostly go to us too (we are all it knows), so spread it
                    // for it, or the rest of the cluster only learns it by push-pull.
                    let joiner = req
                        .state
                        .join
                        .then(|| req.state.records.iter().find(|(r, _)| r.name == from.name))
                        .flatten()
                        .map(|(r, _)| r.clone());
                    self.merge(req.state).await;
                    let _ = req.reply.send(self.full_state(false));
                    if let Some(record) = joiner {
                        self.publish(&record).await;
                    }
                    tracing::debug!(from = ?from, "push-pull served");
                }
                Some(o) = outcomes.recv() => self.finish_exchange(o).await,
                Some(cmd) = commands.recv() => self.command(cmd).await,
                Some(j) = join_requests.recv() => {
                    if !self.joined {
                        self.join(j.to, None, j.retry).await;
                    }
                }
                _ = push_pull.tick() => self.push_pull_random(),
                _ = sleep_until(join_at) => self.retry_join(),
                _ = reap.tick() => self.reap().await,
                _ = fetch.tick() => self.fetch_missing(),
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() != Stop::Running {
                        self.leave().await;
                        return;
                    }
                }
            }
        }
    }

    /// Carries out what foca asked for during one call.
    async fn flush(&mut self, mut rt: AccumulatingRuntime<NodeId>) {
        self.send_and_schedule(&mut rt);
        while let Some(n) = rt.to_notify() {
            self.notified(n).await;
        }
        let deliveries = self.ledger.lock().drain();
        let news = !deliveries.is_empty();
        for d in deliveries {
            match d {
                Delivery::Record(r) => self.apply_record(r, None).await,
                Delivery::Leave(id) => self.member_left(id).await,
            }
        }
        if news {
            // Forward news at once instead of waiting for the next gossip round: each hop
            // then costs a network trip, not up to a gossip interval.
            let mut rt = AccumulatingRuntime::new();
            for _ in 0..EAGER_ROUNDS {
                if let Err(e) = self.swim.broadcast(&mut rt) {
                    tracing::debug!(error = %e, "forwarding broadcast failed");
                }
            }
            self.send_and_schedule(&mut rt);
        }
        self.rescale();
    }

    fn send_and_schedule(&mut self, rt: &mut AccumulatingRuntime<NodeId>) {
        while let Some((to, data)) = rt.to_send() {
            if self.out.try_send((to.addr, data.to_vec())).is_err() {
                tracing::trace!("gossip writer busy: dropped a datagram");
            }
        }
        while let Some((after, timer)) = rt.to_schedule() {
            self.timers.schedule(after, timer);
        }
    }

    /// Re-tunes SWIM (retransmissions, suspicion timeout) when the cluster size crosses a
    /// power of two.
    fn rescale(&mut self) {
        let bucket = (self.swim.num_members() + 1).next_power_of_two();
        if bucket != self.size_bucket {
            self.size_bucket = bucket;
            if let Err(e) = self.swim.set_config(swim_config(bucket)) {
                tracing::debug!(error = %e, "SWIM config not changed");
            }
        }
    }

    async fn notified(&mut self, n: OwnedNotification<NodeId>) {
        let state = self.shared.state.clone();
        match n {
            OwnedNotification::MemberUp(id) => {
                if self.superseded(&id) {
                    return;
                }
                tracing::info!(node = %id.name, addr = %id.addr, "member up");
                self.views.insert(
                    id.name.clone(),
                    View {
                        id: id.clone(),
                        status: MemberStatus::Alive,
                    },
                );
                state.set_gossip_addr(&id.name, id.addr).await;
                state.set_member_status(&id.name, MemberStatus::Alive).await;
                if state.snapshot().node(&id.name).is_none() {
                    // A member is a member as soon as SWIM says so (Consul's members list
                    // is the gossip view): hold it in the catalog as a version-0
                    // placeholder (address, no services) that its real record replaces.
                    let dc = self.shared.config.load().datacenter.clone();
                    let placeholder = NodeRecord::new(id.name.clone(), dc, id.addr.ip());
                    state
                        .apply_remote(placeholder, MemberStatus::Alive, Some(id.addr))
                        .await;
                    self.awaited
                        .insert(id.name.clone(), (id, Instant::now() + RECORD_GRACE));
                }
            }
            OwnedNotification::MemberDown(id) => {
                let Some(view) = self.views.get_mut(&id.name) else {
                    return;
                };
                if view.id != id {
                    return;
                }
                if view.status != MemberStatus::Left {
                    view.status = MemberStatus::Failed;
                    tracing::warn!(node = %id.name, addr = %id.addr, "member failed");
                    state
                        .set_member_status(&id.name, MemberStatus::Failed)
                        .await;
                }
            }
            OwnedNotification::Rename(old, new) => {
                if old.name != new.name {
                    // Another node took over this address: the old one is gone from here.
                    if let Some(v) = self.views.get_mut(&old.name) {
                        if v.id == old && v.status.is_up() {
                            v.status = MemberStatus::Failed;
                            state
                                .set_member_status(&old.name, MemberStatus::Failed)
                                .await;
                        }
                    }
                }
                if !self.superseded(&new) {
                    if let Some(v) = self.views.get_mut(&new.name) {
                        v.id = new.clone();
                    }
                    state.set_gossip_addr(&new.name, new.addr).await;
                }
            }
            OwnedNotification::Active => tracing::info!("joined the cluster"),
            OwnedNotification::Idle => tracing::info!("no other live members known"),
            OwnedNotification::Rejoin(id) => {
                tracing::warn!(
                    boot = id.boot,
                    "was declared down; rejoined as a new incarnation"
                );
                self.me = id;
            }
            OwnedNotification::Defunct => {
                if *self.shared.stop_tx.borrow() == Stop::Running {
                    tracing::warn!("declared down by the cluster");
                }
            }
        }
    }

    /// Whether we already know a later run of this member.
    fn superseded(&self, id: &NodeId) -> bool {
        self.views
            .get(&id.name)
            .is_some_and(|v| v.id != *id && v.id.supersedes(id))
    }

    async fn member_left(&mut self, id: NodeId) {
        if self.superseded(&id) || id.name == self.me.name {
            return;
        }
        tracing::info!(node = %id.name, "member left");
        self.views.insert(
            id.name.clone(),
            View {
                id: id.clone(),
                status: MemberStatus::Left,
            },
        );
        self.shared
            .state
            .set_member_status(&id.name, MemberStatus::Left)
            .await;
    }

    /// Applies a record, holding the node in the state we know it in (or `hearsay`, what
    /// the peer that sent it believes, when we know nothing of it).
    async fn apply_record(&mut self, record: NodeRecord, hearsay: Option<MemberStatus>) {
        let (status, addr) = match self.views.get(&record.name) {
            Some(v) => (v.status, Some(v.id.addr)),
            None => (hearsay.unwrap_or(MemberStatus::Alive), None),
        };
        self.shared.state.apply_remote(record, status, addr).await;
    }

    /// Spreads a record: a new version of our own, or a joiner's we relay for it.
    async fn publish(&mut self, record: &NodeRecord) {
        let items = match split_record(record) {
            Ok(items) => items,
            Err(e) => {
                tracing::error!(error = %e, "this node's record is too large to gossip");
                return;
            }
        };
        for item in items {
            if let Err(e) = self.swim.add_broadcast(&item) {
                tracing::error!(error = %e, "record part refused by SWIM");
            }
        }
        let mut rt = AccumulatingRuntime::new();
        for _ in 0..EAGER_ROUNDS {
            if let Err(e) = self.swim.broadcast(&mut rt) {
                tracing::debug!(error = %e, "broadcast failed");
            }
        }
        self.flush(rt).await;
    }

    fn full_state(&self, join: bool) -> Vec<u8> {
        let snap = self.shared.state.snapshot();
        let state = PushPull {
            from: self.me.clone(),
            join,
            members: self.swim.iter_membership_state().cloned().collect(),
            records: snap.nodes().map(|n| (n.record.clone(), n.status)).collect(),
        };
        match state.encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "full state too large to send");
                Vec::new()
            }
        }
    }

    /// Merges a peer's full state: its membership into foca, then its records.
    async fn merge(&mut self, state: PushPull) {
        let mut rt = AccumulatingRuntime::new();
        let mut members = state.members;
        // The sender is alive: it just talked to us.
        members.push(Member::alive(state.from.clone()));
        if let Err(e) = self.swim.apply_many(members.into_iter(), true, &mut rt) {
            tracing::debug!(error = %e, "push-pull membership not applied");
        }
        self.flush(rt).await;
        for (record, status) in state.records {
            if record.name == self.me.name {
                // Only matters if a peer remembers a newer version of us (an earlier run):
                // State re-stamps ours above it.
                if self
                    .ledger
                    .lock()
                    .version(&record.name)
                    .is_some_and(|v| v >= record.version)
                {
                    continue;
                }
                self.shared.state.apply_remote(record, status, None).await;
                continue;
            }
            let known = self.ledger.lock().version(&record.name);
            if known.is_some_and(|v| v >= record.version) {
                continue;
            }
            self.ledger
                .lock()
                .note_version(&record.name, record.version);
            self.apply_record(record, Some(status)).await;
        }
    }

    /// Starts a push-pull with `to` in the background.
    fn exchange(
        &self,
        to: SocketAddr,
        join: bool,
        reply: Option<oneshot::Sender<Result<usize, String>>>,
        retry: bool,
    ) {
        let ours = self.full_state(join);
        let keys = self.keys.clone();
        let tx = self.outcome_tx.clone();
        tokio::spawn(async move {
            let result = match transport::exchange(to, keys, ours).await {
                Ok(bytes) => PushPull::decode(&bytes).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let _ = tx
                .send(Outcome {
                    to,
                    result,
                    reply,
                    retry,
                    join,
                })
                .await;
        });
    }

    async fn finish_exchange(&mut self, o: Outcome) {
        if o.retry {
            self.first_join.send_replace(true);
        }
        match o.result {
            Ok(state) => {
                let peer = state.from.clone();
                tracing::debug!(peer = ?peer, "push-pull done");
                self.merge(state).await;
                if o.retry && !self.joined {
                    tracing::info!(peer = %o.to, "joined the cluster through retry_join");
                    self.joined = true;
                }
                if o.join {
                    self.settle_sync = Some(Instant::now() + SETTLE_SYNC_AFTER);
                }
                if let Some(r) = o.reply {
                    let _ = r.send(Ok(1));
                }
            }
            Err(e) => {
                tracing::debug!(peer = %o.to, error = %e, "push-pull failed");
                if o.retry {
                    tracing::warn!(peer = %o.to, error = %e, "join failed; retrying");
                }
                if let Some(r) = o.reply {
                    let _ = r.send(Err(format!("join {}: {e}", o.to)));
                }
            }
        }
    }

    /// Announces ourselves to `to` over UDP (foca accepts an announce addressed to any
    /// identity at its address) and starts a joining push-pull with it.
    async fn join(
        &mut self,
        to: SocketAddr,
        reply: Option<oneshot::Sender<Result<usize, String>>>,
        retry: bool,
    ) {
        let mut rt = AccumulatingRuntime::new();
        let probe = NodeId::new(String::new(), to, 0);
        if let Err(e) = self.swim.announce(probe, &mut rt) {
            tracing::debug!(error = %e, "announce failed");
        }
        self.flush(rt).await;
        self.exchange(to, true, reply, retry);
    }

    fn retry_join(&mut self) {
        let targets = self.retry_join.clone();
        let port = self.default_port;
        let tx = self.outcome_tx.clone();
        let me = self.me.addr;
        self.next_join = Instant::now() + self.join_backoff;
        self.join_backoff = (self.join_backoff * 2).min(JOIN_BACKOFF_MAX);
        // Resolve in the background (names may need DNS); report back as failed
        // exchanges when nothing resolves, or as join commands when something does.
        let cmd = self.self_commands();
        tokio::spawn(async move {
            let mut asked = 0;
            let mut failures = Vec::new();
            for t in targets {
                match resolve(&t, port).await {
                    Ok(addrs) => {
                        for a in addrs.into_iter().filter(|a| *a != me) {
                            asked += 1;
                            let _ = cmd.send(JoinRequest { to: a, retry: true }).await;
                        }
                    }
                    Err(e) => failures.push(format!("{t}: {e}")),
                }
            }
            if asked == 0 {
                // Nothing to ask (names that do not resolve, or only this node's own
                // address): report it as a failed attempt so the retry goes on.
                if failures.is_empty() {
                    failures.push("retry_join lists only this node".into());
                }
                let _ = tx
                    .send(Outcome {
                        to: SocketAddr::from(([0, 0, 0, 0], port)),
                        result: Err(failures.join("; ")),
                        reply: None,
                        retry: true,
                        join: true,
                    })
                    .await;
            } else {
                for f in failures {
                    tracing::warn!(error = %f, "join target does not resolve");
                }
            }
        });
    }

    fn self_commands(&self) -> mpsc::Sender<JoinRequest> {
        self.join_requests.clone()
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Join { addrs, reply } => {
                let port = self.default_port;
                let mut targets = Vec::new();
                for a in &addrs {
                    match resolve(a, port).await {
                        Ok(v) => targets.extend(v),
                        Err(e) => {
                            let _ = reply.send(Err(format!("{a}: {e}")));
                            return;
                        }
                    }
                }
                let Some(first) = targets.first().copied() else {
                    let _ = reply.send(Err("no address to join".into()));
                    return;
                };
                self.join(first, Some(reply), false).await;
                for t in targets.into_iter().skip(1) {
                    self.join(t, None, false).await;
                }
            }
            Command::ForceLeave { node, prune, reply } => {
                let _ = reply.send(self.force_leave(&node, prune).await);
            }
        }
    }

    async fn force_leave(&mut self, node: &str, prune: bool) -> Result<(), String> {
        if node == self.me.name {
            return Err("cannot force-leave this agent itself (use leave)".into());
        }
        let snap = self.shared.state.snapshot();
        let Some(entry) = snap.node(node) else {
            return Err(format!("unknown member {node:?}"));
        };
        if prune {
            self.forget(node).await;
            return Ok(());
        }
        if entry.status == MemberStatus::Alive {
            return Err(format!(
                "member {node:?} is alive; only failed members can be forced to leave"
            ));
        }
        let id = self
            .views
            .get(node)
            .map(|v| v.id.clone())
            .or_else(|| entry.gossip_addr.map(|a| NodeId::new(node, a, 0)));
        if let Some(id) = id {
            // Tell everyone, so the member is listed as left cluster-wide.
            let item = Item::Leave { id: id.clone() }.encode();
            if let Err(e) = self.swim.add_broadcast(&item) {
                tracing::debug!(error = %e, "force-leave broadcast refused");
            }
            let mut rt = AccumulatingRuntime::new();
            let _ = self.swim.broadcast(&mut rt);
            self.flush(rt).await;
            self.member_left(id).await;
        }
        self.shared
            .state
            .set_member_status(node, MemberStatus::Left)
            .await;
        Ok(())
    }

    async fn forget(&mut self, node: &str) {
        self.views.remove(node);
        self.ledger.lock().forget(node);
        self.shared.state.remove_node(node).await;
    }

    fn push_pull_random(&mut self) {
        let peers: Vec<SocketAddr> = self.swim.iter_members().map(|m| m.id().addr()).collect();
        if let Some(to) = peers.choose(&mut rand::rng()).copied() {
            self.exchange(to, false, None, false);
        }
    }

    /// Asks members whose record never arrived by broadcast for it directly. Broadcasts
    /// reach almost everyone; this closes the gap in seconds instead of a push-pull period.
    fn fetch_missing(&mut self) {
        if self.settle_sync.is_some_and(|at| at <= Instant::now()) {
            self.settle_sync = None;
            self.push_pull_random();
        }
        if self.awaited.is_empty() {
            return;
        }
        let snap = self.shared.state.snapshot();
        // Still waiting while only the placeholder (version 0) is held.
        self.awaited
            .retain(|name, _| snap.node(name).is_none_or(|n| n.record.version == 0));
        let now = Instant::now();
        let due: Vec<NodeId> = self
            .awaited
            .values()
            .filter(|(_, at)| *at <= now)
            .map(|(id, _)| id.clone())
            .take(MAX_FETCHES)
            .collect();
        for id in due {
            // One try per member; the periodic push-pull covers the rest.
            self.awaited.remove(&id.name);
            if self.swim.iter_members().any(|m| m.id() == &id) {
                tracing::debug!(node = %id.name, "record not received by broadcast; fetching it");
                self.exchange(id.addr, false, None, false);
            }
        }
    }

    /// Forgets members that have been failed or left for longer than `reconnect_timeout`.
    async fn reap(&mut self) {
        let snap = self.shared.state.snapshot();
        let now = self.shared.state.now_ms();
        let limit = self.reconnect_timeout.as_millis() as u64;
        let expired: Vec<String> = snap
            .nodes()
            .filter(|n| n.record.name != self.me.name && !n.status.is_up())
            .filter(|n| now.saturating_sub(n.status_since_ms) >= limit)
            .map(|n| n.record.name.clone())
            .collect();
        for name in expired {
            tracing::info!(node = %name, "reaping member gone longer than reconnect_timeout");
            self.forget(&name).await;
        }
        // Names that peers mentioned (records, leaves, partial records) but that are neither
        // in the catalog nor members any more are dropped, so the ledger stays bounded.
        let snap = self.shared.state.snapshot();
        let members: std::collections::HashSet<String> = self
            .swim
            .iter_members()
            .map(|m| m.id().name.clone())
            .collect();
        let me = self.me.name.clone();
        self.ledger
            .lock()
            .retain_known(|n| n == me || members.contains(n) || snap.node(n).is_some());
    }

    /// Tells the cluster we are leaving: a leave notice (so peers list us as left and
    /// drop our services at once) and foca's own down notice.
    async fn leave(&mut self) {
        let item = Item::Leave {
            id: self.me.clone(),
        }
        .encode();
        if let Err(e) = self.swim.add_broadcast(&item) {
            tracing::debug!(error = %e, "leave notice refused");
        }
        let mut rt = AccumulatingRuntime::new();
        let _ = self.swim.broadcast(&mut rt);
        let _ = self.swim.broadcast(&mut rt);
        if let Err(e) = self.swim.leave_cluster(&mut rt) {
            tracing::debug!(error = %e, "leave failed");
        }
        let members = self.swim.num_members();
        self.flush(rt).await;
        // Wait (briefly) until the writer has sent everything queued.
        let deadline = Instant::now() + LEAVE_GRACE;
        while self.out.capacity() < self.out.max_capacity() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        tracing::info!(members, "left the cluster");
    }
}

/// Resolves "ip:port", "ip", "host:port" or "host" (default gossip port).
async fn resolve(target: &str, default_port: u16) -> Result<Vec<SocketAddr>, String> {
    let target = target.trim();
    if let Ok(a) = target.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if let Ok(ip) = target.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, default_port)]);
    }
    let with_port = if target
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        target.to_string()
    } else {
        format!("{target}:{default_port}")
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err("resolves to no address".into());
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_targets_resolve_with_default_port() {
        assert_eq!(
            resolve("127.0.0.2", 8301).await.unwrap(),
            vec!["127.0.0.2:8301".parse().unwrap()]
        );
        assert_eq!(
            resolve("127.0.0.2:9000", 8301).await.unwrap(),
            vec!["127.0.0.2:9000".parse().unwrap()]
        );
        assert_eq!(
            resolve("[::1]", 8301).await.unwrap(),
            vec!["[::1]:8301".parse().unwrap()]
        );
        assert!(resolve("", 8301).await.is_err());
    }
}
