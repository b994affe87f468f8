//! The cluster, the I/O half: sockets, sealing, one timer and one loop around
//! `muster_proto::gossip::Node`, which decides everything (SWIM membership, spreading
//! changes, anti-entropy, member standing). The simulator runs the very same `Node`.
//!
//! One task owns the node. Everything reaches it as a message — datagrams, stream requests
//! (answered on the spot) and replies, this node's own changes from `State`, join and
//! force-leave commands, the stop signal — and after each it sends what the node wants
//! sent and applies what the node reports to the catalog (through `State`), in one batch.
//! What a join must do before the node can (resolve names, retry with backoff) lives here.

pub mod transport;

use crate::metrics::METRICS;
use crate::shared::{Command, Shared, Stop};
use muster_proto::gossip::{Event, Node, NodeConfig, Transmit};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

/// Join retries back off from this to [`JOIN_BACKOFF_MAX`].
const JOIN_BACKOFF_MIN: Duration = Duration::from_secs(1);
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long shutdown lets the leave notice go out before the process exits.
pub const LEAVE_GRACE: Duration = Duration::from_millis(300);
/// The longest start-up waits for the first join attempt before reporting ready.
pub const FIRST_JOIN_WAIT: Duration = Duration::from_secs(12);
/// Stamp moves logged per minute at most (the node bounds them; this bounds the log).
const STAMP_LOGS_PER_MINUTE: u32 = 5;
/// Receive queue asked for the gossip UDP socket (see `start`).
const GOSSIP_RECV_BUFFER: usize = 4 << 20;
/// The file in `data_dir` that keeps this node's boot stamp and version across runs.
const STAMPS_FILE: &str = "gossip.json";

/// The running gossip task.
pub struct Started {
    /// Finishes after announcing our leave when the stop signal changes.
    pub task: JoinHandle<()>,
    /// Becomes true once the first `retry_join` attempt has finished, successful or not
    /// (at once without `retry_join`).
    pub first_join: watch::Receiver<bool>,
}

/// A sync request received by the stream server, waiting for the node's answer.
struct Inbound {
    from: SocketAddr,
    body: Vec<u8>,
    reply: oneshot::Sender<Option<Vec<u8>>>,
}

/// This node's boot stamp and version, as the data directory keeps them.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
struct Stamps {
    boot: u64,
    version: u64,
}

fn load_stamps(dir: &Path) -> Option<Stamps> {
    let bytes = std::fs::read(dir.join(STAMPS_FILE)).ok()?;
    if bytes.len() > 4096 {
        return None;
    }
    serde_json::from_slice(&bytes).ok()
}

fn save_stamps(dir: &Path, s: Stamps) {
    let bytes = serde_json::to_vec(&s).unwrap_or_default();
    if let Err(e) = crate::store::write_file_durably(dir, STAMPS_FILE, &bytes) {
        tracing::warn!(error = %e, "could not record this node's boot stamp in data_dir");
    }
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
    // A burst of changes (a fleet registering at once) reaches a member as a burst of
    // datagrams, and the kernel drops what overflows the socket's queue while the process
    // waits for a CPU; a deeper queue absorbs it, as memberlist's 2 MiB does. The kernel caps
    // this at net.core.rmem_max; a smaller queue only means more repairs by pulls and sync.
    let _ = socket2::SockRef::from(&*udp).set_recv_buffer_size(GOSSIP_RECV_BUFFER);
    let tcp = TcpListener::bind(bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind gossip TCP {bind}: {e}"))?;
    // Sealing and opening read this shared keyring (keyring operations swap it); whether
    // gossip may run without a key was decided at start-up (`keyring::check_secure`).
    let keys = shared.keyring.keys();
    transport::set_source_ip(config.bind_addr);

    // A boot stamp above any this node used before: the data directory remembers the last
    // one; without it the clock gives a guess, and peers that remember a later run teach the
    // node (it moves above what they hold at the first exchange).
    let dir = config.data_dir.clone();
    let saved = dir.as_deref().and_then(load_stamps);
    let boot = match saved {
        Some(s) => s.boot.saturating_add(1),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
            .max(1),
    };
    let version = saved.map_or(0, |s| s.version);
    if let Some(dir) = &dir {
        save_stamps(dir, Stamps { boot, version });
    }
    let mut cfg = NodeConfig::new(
        config.node_name.as_str(),
        SocketAddr::new(config.advertise_addr, config.ports.gossip),
    );
    cfg.boot = boot;
    cfg.version = version;
    cfg.run = rand::random::<u64>() | 1;
    cfg.seed = rand::random();
    cfg.reconnect_timeout = config.reconnect_timeout;
    let epoch = Instant::now();
    let node = Node::new(cfg, Duration::ZERO);

    let (out_tx, out_rx) = mpsc::channel(4096);
    let (in_tx, in_rx) = mpsc::channel(4096);
    let (inbound_tx, inbound_rx) = mpsc::channel(transport::MAX_STREAMS);
    let (reply_tx, reply_rx) = mpsc::channel(256);
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
    let local = shared
        .state
        .take_local_changes()
        .ok_or_else(|| anyhow::anyhow!("gossip started twice"))?;
    tracing::info!(gossip = %bind, id = ?node.id(), encrypted = !keys.load().is_empty(), "gossip running");
    let mut task = Driver {
        shared: shared.clone(),
        node,
        epoch,
        keys,
        out: out_tx,
        stream_replies: reply_tx,
        data_dir: dir,
        retry_join: config.retry_join.clone(),
        default_port: config.ports.gossip,
        join_backoff: JOIN_BACKOFF_MIN,
        next_join: Some(Instant::now()).filter(|_| !config.retry_join.is_empty()),
        joined: config.retry_join.is_empty(),
        retry_pending: 0,
        first_join: first_join_tx,
        join_replies: HashMap::new(),
        stamp_logs: (Instant::now(), 0),
        reported: Default::default(),
    };
    let task =
        tokio::spawn(async move { task.run(in_rx, inbound_rx, reply_rx, local, commands).await });
    Ok(Started { task, first_join })
}

/// Accepts gossip streams: sync frames go to the node, keyring frames to the keyring.
/// Admission, size, time and buffer bounds are the transport's.
async fn serve_streams(
    listener: TcpListener,
    keys: transport::Keys,
    keyring: crate::keyring::KeyringHandle,
    inbound: mpsc::Sender<Inbound>,
    mut stop: watch::Receiver<Stop>,
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
        let keys = keys.clone();
        let keyring = keyring.clone();
        let inbound = inbound.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            // Refused at once, or after a bounded wait for a place (see `Admission`).
            let Some(_permit) = admission.admit(&stream, from).await else {
                return;
            };
            transport::serve_stream(stream, from, keys, |frame| async move {
                match frame.kind {
                    transport::FrameKind::Keyring => Ok((
                        transport::FrameKind::Keyring,
                        crate::keyring::serve(&keyring, &frame).await,
                    )),
                    transport::FrameKind::Sync => {
                        let (reply, rx) = oneshot::channel();
                        inbound
                            .send(Inbound {
                                from,
                                body: frame.body,
                                reply,
                            })
                            .await
                            .map_err(|_| "gossip stopped".to_string())?;
                        match rx.await.map_err(|_| "gossip stopped".to_string())? {
                            Some(body) => Ok((transport::FrameKind::Sync, body)),
                            None => {
                                METRICS.gossip_malformed.fetch_add(1, Relaxed);
                                Err("not a muster sync request".to_string())
                            }
                        }
                    }
                }
            })
            .await;
        });
    }
}

/// The task that owns the node.
struct Driver {
    shared: Shared,
    node: Node,
    /// The node's clock: time since this instant.
    epoch: Instant,
    keys: transport::Keys,
    out: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    stream_replies: mpsc::Sender<(u64, Result<Vec<u8>, String>)>,
    data_dir: Option<std::path::PathBuf>,
    retry_join: Vec<String>,
    default_port: u16,
    join_backoff: Duration,
    /// When to try `retry_join` next (None: not retrying).
    next_join: Option<Instant>,
    /// Whether some `retry_join` target answered (retrying stops then).
    joined: bool,
    /// `retry_join` attempts under way.
    retry_pending: usize,
    first_join: watch::Sender<bool>,
    /// Join commands waiting for the node's verdict, by address.
    join_replies: HashMap<SocketAddr, Vec<oneshot::Sender<Result<usize, String>>>>,
    /// (start of the current minute, stamp moves logged in it).
    stamp_logs: (Instant, u32),
    /// Node counters already added to the metrics.
    reported: muster_proto::gossip::Stats,
}

impl Driver {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    async fn run(
        &mut self,
        mut datagrams: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut replies: mpsc::Receiver<(u64, Result<Vec<u8>, String>)>,
        mut local: mpsc::UnboundedReceiver<Vec<muster_proto::gossip::Change>>,
        mut commands: mpsc::Receiver<Command>,
    ) {
        let mut stop = self.shared.stop_rx();
        loop {
            let timeout = self.node.poll_timeout().map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                |t| self.epoch + t,
            );
            let join_at = self
                .next_join
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some((from, data)) = datagrams.recv() => {
                    let now = self.now();
                    self.node.handle_datagram(now, from, &data);
                }
                Some(req) = inbound.recv() => {
                    let now = self.now();
                    let _ = req.reply.send(self.node.handle_stream(now, req.from, &req.body));
                }
                Some((id, result)) = replies.recv() => {
                    let now = self.now();
                    self.node.handle_stream_reply(now, id, result.as_deref().map_err(|e| e.clone()));
                }
                Some(changes) = local.recv() => {
                    let now = self.now();
                    self.node.publish(now, changes);
                }
                Some(cmd) = commands.recv() => self.command(cmd).await,
                _ = sleep_until(timeout) => {
                    let now = self.now();
                    self.node.handle_timeout(now);
                }
                _ = sleep_until(join_at) => self.retry_join().await,
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() != Stop::Running {
                        self.leave().await;
                        return;
                    }
                }
            }
            self.flush();
        }
    }

    /// Sends what the node wants sent and applies what it reports, in one batch.
    fn flush(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            match t {
                Transmit::Datagram { to, bytes } => {
                    if self.out.try_send((to, bytes)).is_err() {
                        tracing::trace!("gossip writer busy: dropped a datagram");
                    }
                }
                Transmit::Stream { to, id, bytes } => {
                    let keys = self.keys.clone();
                    let tx = self.stream_replies.clone();
                    tokio::spawn(async move {
                        let result = transport::exchange(to, keys, bytes)
                            .await
                            .map_err(|e| e.to_string());
                        let _ = tx.send((id, result)).await;
                    });
                }
            }
        }
        let mut events = Vec::new();
        while let Some(e) = self.node.poll_event() {
            events.push(e);
        }
        if !events.is_empty() {
            self.shared.state.apply_gossip(&events);
            for e in &events {
                self.report(e);
            }
        }
        self.metrics();
    }

    /// Logs, persists and answers what an event means outside the catalog.
    fn report(&mut self, e: &Event) {
        match e {
            Event::Member(v) => match v.status {
                muster_proto::model::MemberStatus::Failed => {
                    tracing::warn!(node = %v.name, addr = %v.addr, held = v.served, "member failed")
                }
                muster_proto::model::MemberStatus::Left => {
                    tracing::info!(node = %v.name, "member left")
                }
                _ => tracing::debug!(node = %v.name, addr = %v.addr, boot = v.boot, "member up"),
            },
            Event::Forget { node } => tracing::info!(node = %node, "member forgotten"),
            Event::Protect { since } => match since {
                Some(_) => tracing::warn!(
                    "lost most peers at once: serving their last known instances, flagged stale (protect mode)"
                ),
                None => tracing::info!("protect mode over"),
            },
            Event::Stamp {
                boot,
                version,
                reason,
            } => {
                if let Some(dir) = &self.data_dir {
                    save_stamps(
                        dir,
                        Stamps {
                            boot: *boot,
                            version: *version,
                        },
                    );
                }
                let (start, n) = &mut self.stamp_logs;
                if start.elapsed() > Duration::from_secs(60) {
                    *start = Instant::now();
                    *n = 0;
                }
                *n += 1;
                if *n <= STAMP_LOGS_PER_MINUTE {
                    tracing::warn!(boot, version, "{reason}");
                }
            }
            Event::Joined { addr, result } => {
                if let Some(waiting) = self.join_replies.remove(addr) {
                    for w in waiting {
                        let _ = w.send(result.clone().map(|()| 1).map_err(|e| format!("join {addr}: {e}")));
                    }
                }
                if self.retry_pending > 0 {
                    self.retry_pending -= 1;
                    match result {
                        Ok(()) => {
                            if !self.joined {
                                tracing::info!(peer = %addr, "joined the cluster through retry_join");
                            }
                            self.joined = true;
                            self.next_join = None;
                        }
                        Err(e) => tracing::warn!(peer = %addr, error = %e, "join failed; retrying"),
                    }
                    if self.retry_pending == 0 {
                        self.first_join.send_replace(true);
                    }
                }
            }
            Event::Data { .. } => {}
        }
    }

    /// Adds what the node counted since the last call to the agent's metrics.
    fn metrics(&mut self) {
        let s = self.node.stats();
        let malformed = s.malformed - self.reported.malformed;
        let implausible = s.implausible - self.reported.implausible;
        if malformed + implausible > 0 {
            METRICS
                .gossip_malformed
                .fetch_add(malformed + implausible, Relaxed);
        }
        if implausible > 0 {
            METRICS.gossip_dropped_n("claim", "implausible", implausible);
        }
        // Identities refused because the member table is full.
        let refused = s.members_refused - self.reported.members_refused;
        if refused > 0 {
            METRICS.gossip_dropped_n("member", "over_capacity", refused);
        }
        self.reported = s.clone();
        METRICS
            .gossip_health_score
            .store(u64::from(self.node.health_score()), Relaxed);
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Join { addrs, reply } => {
                let mut targets = Vec::new();
                for a in &addrs {
                    match resolve(a, self.default_port).await {
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
                self.join_replies.entry(first).or_default().push(reply);
                let now = self.now();
                for t in targets {
                    self.node.join(now, t);
                }
            }
            Command::ForceLeave { node, prune, reply } => {
                let now = self.now();
                let _ = reply.send(self.node.force_leave(now, &node, prune));
            }
        }
    }

    /// One round of `retry_join`: every target resolved and joined; the next round backs off.
    async fn retry_join(&mut self) {
        self.next_join = Some(Instant::now() + self.join_backoff);
        self.join_backoff = (self.join_backoff * 2).min(JOIN_BACKOFF_MAX);
        let me = self.node.id().gossip_addr();
        let mut failures = Vec::new();
        let mut asked = 0;
        for t in self.retry_join.clone() {
            match resolve(&t, self.default_port).await {
                Ok(addrs) => {
                    for a in addrs.into_iter().filter(|a| *a != me) {
                        asked += 1;
                        self.retry_pending += 1;
                        let now = self.now();
                        self.node.join(now, a);
                    }
                }
                Err(e) => failures.push(format!("{t}: {e}")),
            }
        }
        for f in &failures {
            tracing::warn!(error = %f, "join target does not resolve");
        }
        if asked == 0 {
            // Nothing to ask (names that do not resolve, or only this node's own address):
            // the attempt is over, and the retry goes on.
            if failures.is_empty() {
                tracing::warn!("retry_join lists only this node");
            }
            self.first_join.send_replace(true);
        }
    }

    /// Tells the cluster we are leaving, lets it go out, and records our stamps.
    async fn leave(&mut self) {
        let now = self.now();
        let members = self.node.members_up();
        self.node.leave(now);
        self.flush();
        // Wait (briefly) until the writer has sent everything queued.
        let deadline = Instant::now() + LEAVE_GRACE;
        while self.out.capacity() < self.out.max_capacity() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(dir) = &self.data_dir {
            save_stamps(
                dir,
                Stamps {
                    boot: self.node.id().boot(),
                    version: self.node.version(),
                },
            );
        }
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

    #[test]
    fn stamps_survive_in_data_dir() {
        let dir = std::env::temp_dir().join(format!("muster-stamps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load_stamps(&dir).is_none());
        save_stamps(
            &dir,
            Stamps {
                boot: 7,
                version: 42,
            },
        );
        let s = load_stamps(&dir).unwrap();
        assert_eq!((s.boot, s.version), (7, 42));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
