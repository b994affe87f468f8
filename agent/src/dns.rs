//! The DNS listener on `client_addr:dns_port` (SPEC §5): UDP and TCP around the pure answer
//! logic in `muster_proto::dns`.
//!
//! UDP is the hot path, so it avoids the usual per-query costs: one `SO_REUSEPORT` socket per
//! core, each served by its own thread in a plain blocking loop (no task spawned, nothing
//! logged per query), and a per-thread answer cache keyed by (name, type) whose entries stay
//! good until the part of the catalog they depend on changes (one service name's index, or
//! the node list's): a change to one name never costs another name's cached answer. The
//! config changing drops it all. TCP connections are tokio tasks
//! (several queries per connection, idle timeout, capped count). Names outside the domain
//! go to the configured recursors, on the tokio runtime so a slow upstream never stalls a
//! UDP thread.

use crate::config::{Config, DnsConfig};
use crate::metrics::METRICS;
use crate::shared::{Shared, Stop};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::Name;
use muster_proto::dns::{self, fast, Action, DnsSettings, Lookup, Transport};
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Largest query we read over UDP; anything longer arrives cut and is answered FORMERR.
const UDP_RECV_BUF: usize = 4096;
/// How often a blocked UDP thread wakes to see whether the agent is stopping.
const UDP_STOP_POLL: Duration = Duration::from_millis(200);
/// A TCP connection with no complete query for this long is closed (RFC 7766 §6.2.3).
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most TCP connections served at once; more are closed on accept.
const TCP_MAX_CONNECTIONS: usize = 256;
/// Most queries being forwarded at once; more get SERVFAIL straight away.
const MAX_FORWARDS_IN_FLIGHT: usize = 512;
/// Cached lookups per thread; the cache is cleared when full (random names cannot grow it).
const CACHE_MAX_ENTRIES: usize = 10_000;

/// The bound sockets, before serving.
pub struct Listener {
    udp: Vec<UdpSocket>,
    tcp: TcpListener,
    addr: SocketAddr,
}

/// Binds UDP (one `SO_REUSEPORT` socket per core) and TCP on `client_addr:dns_port`.
pub async fn bind(shared: &Shared) -> anyhow::Result<Listener> {
    let cfg = shared.config.load();
    let wanted = SocketAddr::new(cfg.client_addr, cfg.ports.dns);
    // A plain bind first: it fails if anything holds the port, including another process's
    // SO_REUSEPORT group that we would otherwise silently share the traffic with. It also
    // turns port 0 into a real port for the other sockets.
    let probe = UdpSocket::bind(wanted)
        .map_err(|e| anyhow::anyhow!("cannot listen for DNS on {wanted} (udp): {e}"))?;
    let addr = probe.local_addr()?;
    drop(probe);
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 16);
    let mut udp = Vec::with_capacity(workers);
    for _ in 0..workers {
        udp.push(
            reuseport_udp(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen for DNS on {addr} (udp): {e}"))?,
        );
    }
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for DNS on {addr} (tcp): {e}"))?;
    Ok(Listener { udp, tcp, addr })
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    // Bursts (a restart of many clients, a benchmark) should queue, not drop; the kernel
    // caps this at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(UDP_STOP_POLL))?;
    Ok(s)
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the agent stops: UDP threads and the TCP accept loop.
    pub async fn serve(self, shared: Shared) {
        let stopping = Arc::new(AtomicBool::new(false));
        let forwards = Arc::new(Semaphore::new(MAX_FORWARDS_IN_FLIGHT));
        let runtime = tokio::runtime::Handle::current();
        let mut threads = Vec::new();
        for (i, sock) in self.udp.into_iter().enumerate() {
            let worker = UdpWorker {
                answerer: Answerer::new(shared.clone()),
                stopping: stopping.clone(),
                forwards: forwards.clone(),
                runtime: runtime.clone(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || worker.run(sock));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => tracing::error!(error = %e, "cannot start a DNS UDP thread"),
            }
        }
        serve_tcp(self.tcp, shared.clone(), forwards).await;
        stopping.store(true, Ordering::Relaxed);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Per-thread (or per-connection) answering state: the settings derived from the config,
/// the cache, and a fast RNG for shuffling.
struct Answerer {
    shared: Shared,
    rng: SmallRng,
    config: Option<Arc<Config>>,
    settings: DnsSettings,
    recursors: Vec<SocketAddr>,
    recursor_timeout: Duration,
    /// Tells when the catalog changed, so the snapshot is re-read only then.
    changes: tokio::sync::watch::Receiver<u64>,
    snapshot: Arc<muster_proto::Snapshot>,
    /// Encoded answers of simple queries by (lowercase wire name, type), with the index of
    /// what each depends on when it was made: an entry stays good until that index moves, so
    /// a change to `db` leaves every other name's answer cached. `None` marks names the
    /// general path answers (outside the domain).
    cache: HashMap<Vec<u8>, (Option<fast::Prepared>, u64)>,
    key: Vec<u8>,
    scratch: fast::Scratch,
}

impl Answerer {
    fn new(shared: Shared) -> Self {
        let mut changes = shared.state.subscribe();
        changes.mark_unchanged();
        let snapshot = shared.state.snapshot();
        Answerer {
            shared,
            rng: SmallRng::from_rng(&mut rand::rng()),
            config: None,
            settings: fallback_settings(),
            recursors: Vec::new(),
            recursor_timeout: Duration::from_secs(2),
            changes,
            snapshot,
            cache: HashMap::new(),
            key: Vec::with_capacity(260),
            scratch: fast::Scratch::default(),
        }
    }

    /// Picks up a new config (reload) by pointer identity; cheap when unchanged.
    fn refresh_config(&mut self) {
        let current = self.shared.config.load();
        if self
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &current))
        {
            return;
        }
        let cfg: Arc<Config> = Arc::clone(&current);
        self.settings = settings_from(&cfg.domain, &cfg.dns).unwrap_or_else(|e| {
            tracing::error!(domain = %cfg.domain, error = %e, "invalid DNS domain; answering for \"local\"");
            fallback_settings()
        });
        self.recursors = cfg.dns.recursors.clone();
        self.recursor_timeout = cfg.dns.recursor_timeout;
        self.config = Some(cfg);
        self.cache.clear();
    }

    /// Answers one packet. `Forward` comes back with the parsed query for the recursors.
    fn handle(&mut self, bytes: &[u8], transport: Transport) -> (Action, Option<Message>) {
        self.refresh_config();
        // The writer stores the snapshot before it announces the index, so marking the
        // change seen first and reading after can never leave us on an older snapshot.
        if self.changes.has_changed().unwrap_or(false) {
            self.changes.mark_unchanged();
            self.snapshot = self.shared.state.snapshot();
        }
        if let Some(q) = fast::parse_simple(bytes) {
            q.write_key(&mut self.key);
            let snapshot = &self.snapshot;
            let fresh = |(p, at): &(Option<fast::Prepared>, u64)| {
                p.as_ref()
                    .is_none_or(|p| p.depends().index(snapshot) == *at)
            };
            if let Some((prepared, _)) = self.cache.get(self.key.as_slice()).filter(|e| fresh(e)) {
                if let Some(p) = prepared {
                    let reply = fast_reply(
                        &q,
                        p,
                        &self.settings,
                        transport,
                        &mut self.rng,
                        &mut self.scratch,
                    );
                    return (reply, None);
                }
            } else {
                let prepared = self.prepare(&q);
                if self.cache.len() >= CACHE_MAX_ENTRIES {
                    self.cache.clear();
                }
                let reply = prepared.as_ref().map(|p| {
                    fast_reply(
                        &q,
                        p,
                        &self.settings,
                        transport,
                        &mut self.rng,
                        &mut self.scratch,
                    )
                });
                let at = prepared
                    .as_ref()
                    .map_or(0, |p| p.depends().index(&self.snapshot));
                self.cache.insert(self.key.clone(), (prepared, at));
                if let Some(reply) = reply {
                    return (reply, None);
                }
            }
        }
        // Everything the fast path declines: the general path, uncached.
        let query = match dns::parse(bytes) {
            Ok(q) => q,
            Err(action) => return (action, None),
        };
        let question = match dns::precheck(&query, &self.settings) {
            Ok(q) => q,
            Err(action) => return (action, None),
        };
        let lookup = dns::resolve(
            question.name(),
            question.query_type(),
            &self.settings,
            &self.snapshot,
        );
        match dns::respond(&query, &lookup, &self.settings, transport, &mut self.rng) {
            Action::Forward => (Action::Forward, Some(query)),
            other => (other, None),
        }
    }

    /// Resolves and encodes a simple query's answer for the cache; `None` when the general
    /// path must decide (a name outside the domain).
    fn prepare(&self, q: &fast::SimpleQuery<'_>) -> Option<fast::Prepared> {
        let name = q.decode_name().ok()?;
        match dns::resolve(&name, q.record_type(), &self.settings, &self.snapshot) {
            Lookup::Local(res) => fast::Prepared::new(&res).ok(),
            Lookup::Outside => None,
        }
    }

    fn forward_plan(&self) -> (Vec<SocketAddr>, Duration, DnsSettings) {
        (
            self.recursors.clone(),
            self.recursor_timeout,
            self.settings.clone(),
        )
    }
}

/// Assembles a cached answer for a simple query (a free function so the cache entry and the
/// answerer's RNG can be borrowed at once).
fn fast_reply(
    q: &fast::SimpleQuery<'_>,
    p: &fast::Prepared,
    settings: &DnsSettings,
    transport: Transport,
    rng: &mut SmallRng,
    scratch: &mut fast::Scratch,
) -> Action {
    let mut out = Vec::with_capacity(512);
    fast::write_reply(q, p, settings, transport, rng, scratch, &mut out);
    Action::Reply {
        bytes: out,
        rcode: p.rcode(),
    }
}

fn settings_from(domain: &str, dns: &DnsConfig) -> Result<DnsSettings, hickory_proto::ProtoError> {
    DnsSettings::new(
        domain,
        secs(dns.ttl),
        secs(dns.negative_ttl),
        dns.only_passing,
        dns.udp_answer_limit,
        !dns.recursors.is_empty(),
    )
}

fn fallback_settings() -> DnsSettings {
    settings_from("local", &DnsConfig::default()).unwrap_or_else(|_| {
        // "local" is a valid name; this arm exists only because the constructor is fallible.
        DnsSettings {
            domain: Name::root(),
            ttl: 0,
            negative_ttl: 0,
            only_passing: false,
            udp_answer_limit: 3,
            recursion_available: false,
        }
    })
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

/// The metrics label of an rcode.
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "noerror",
        ResponseCode::FormErr => "formerr",
        ResponseCode::NXDomain => "nxdomain",
        ResponseCode::NotImp => "notimp",
        ResponseCode::Refused => "refused",
        // BADVERS and anything else we might relay from a recursor
        _ => "servfail",
    }
}

/// The rcode in a DNS header (low 4 bits), for counting relayed answers.
fn header_rcode(bytes: &[u8]) -> ResponseCode {
    ResponseCode::from(0, bytes.get(3).map_or(2, |b| b & 0x0f))
}

struct UdpWorker {
    answerer: Answerer,
    stopping: Arc<AtomicBool>,
    forwards: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
}

/// Placeholder peer for skipped datagrams (keeps `received[i]` aligned with `bufs[i]`).
const UNSPECIFIED: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Datagrams moved per recvmmsg/sendmmsg call.
const UDP_BATCH: usize = 32;

impl UdpWorker {
    /// Receives up to a batch of queries in one system call, answers them, and sends the
    /// replies in one system call: under load this divides the per-packet kernel cost (and
    /// the wake-ups of the clients) by the batch size; when idle it blocks on the first.
    fn run(mut self, sock: UdpSocket) {
        let sock = Arc::new(sock);
        let fd = sock.as_raw_fd();
        let mut bufs: Vec<Vec<u8>> = (0..UDP_BATCH).map(|_| vec![0u8; UDP_RECV_BUF]).collect();
        let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
        let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(UDP_BATCH, None);
        let mut received: Vec<(usize, SockaddrStorage)> = Vec::with_capacity(UDP_BATCH);
        let mut replies: Vec<Vec<u8>> = Vec::with_capacity(UDP_BATCH);
        let mut peers: Vec<Option<SockaddrStorage>> = Vec::with_capacity(UDP_BATCH);
        while !self.stopping.load(Ordering::Relaxed) {
            received.clear();
            {
                let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                    .iter_mut()
                    .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                    .collect();
                match recvmmsg(
                    fd,
                    &mut recv_headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_WAITFORONE,
                    None,
                ) {
                    Ok(results) => {
                        for m in results {
                            // A datagram longer than the buffer arrives cut (MSG_TRUNC); no
                            // real query is that long, so it is dropped rather than misread.
                            match m.address {
                                Some(addr) if !m.flags.contains(MsgFlags::MSG_TRUNC) => {
                                    received.push((m.bytes, addr))
                                }
                                _ => received.push((0, SockaddrStorage::from(UNSPECIFIED))),
                            }
                        }
                    }
                    // Timeout (the stop poll), EINTR, or ICMP errors from earlier sends.
                    Err(_) => continue,
                }
            }
            let started = Instant::now();
            replies.clear();
            peers.clear();
            for (i, (len, addr)) in received.iter().enumerate() {
                if *len == 0 {
                    continue;
                }
                let packet = &bufs[i][..(*len).min(UDP_RECV_BUF)];
                // A panic here would be a bug in the answer path; catching it keeps this
                // socket (a share of all traffic under SO_REUSEPORT) served meanwhile.
                let answerer = &mut self.answerer;
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    answerer.handle(packet, Transport::Udp)
                }));
                let Ok(handled) = handled else {
                    METRICS.dns_query("servfail", started.elapsed());
                    self.answerer = Answerer::new(self.answerer.shared.clone());
                    continue;
                };
                match handled {
                    (Action::Reply { bytes, rcode }, _) => {
                        replies.push(bytes);
                        peers.push(Some(*addr));
                        METRICS.dns_query(rcode_label(rcode), started.elapsed());
                    }
                    (Action::Forward, Some(query)) => {
                        if let Some(peer) = socket_addr(addr) {
                            self.forward(&sock, packet, query, peer, started);
                        }
                    }
                    _ => {}
                }
            }
            send_batch(fd, &mut send_headers, &replies, &peers);
        }
    }

    /// Hands a query for a name outside the domain to the runtime (a slow upstream must
    /// not stall this thread); SERVFAIL at once when too many are in flight.
    fn forward(
        &self,
        sock: &Arc<UdpSocket>,
        packet: &[u8],
        query: Message,
        peer: SocketAddr,
        started: Instant,
    ) {
        let (recursors, timeout, settings) = self.answerer.forward_plan();
        match self.forwards.clone().try_acquire_owned() {
            Ok(permit) => {
                let packet = packet.to_vec();
                let sock = sock.clone();
                self.runtime.spawn(async move {
                    let (bytes, rcode) = forward(
                        &packet,
                        &query,
                        &recursors,
                        timeout,
                        &settings,
                        Transport::Udp,
                    )
                    .await;
                    let _ = sock.send_to(&bytes, peer);
                    METRICS.dns_query(rcode_label(rcode), started.elapsed());
                    drop(permit);
                });
            }
            Err(_) => {
                if let Action::Reply { bytes, rcode } =
                    dns::error_reply(&query, ResponseCode::ServFail, &settings)
                {
                    let _ = sock.send_to(&bytes, peer);
                    METRICS.dns_query(rcode_label(rcode), started.elapsed());
                }
            }
        }
    }
}

/// Sends replies with sendmmsg, continuing after a partial send; a datagram the kernel
/// refuses (e.g. the peer's address family) is skipped, as a lost UDP reply would be.
fn send_batch(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    replies: &[Vec<u8>],
    peers: &[Option<SockaddrStorage>],
) {
    let mut done = 0;
    while done < replies.len() {
        let slices: Vec<[IoSlice<'_>; 1]> =
            replies[done..].iter().map(|r| [IoSlice::new(r)]).collect();
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        match sendmmsg(
            fd,
            headers,
            slices.iter(),
            &peers[done..],
            no_cmsgs,
            MsgFlags::empty(),
        ) {
            Ok(results) => {
                let sent = results.count();
                done += sent.max(1);
            }
            Err(_) => done += 1,
        }
    }
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Asks each recursor in turn, each within `timeout`; relays the first real answer, or
/// SERVFAIL when all fail. The query goes out as received (same id), over the transport the
/// client used.
async fn forward(
    packet: &[u8],
    query: &Message,
    recursors: &[SocketAddr],
    timeout: Duration,
    settings: &DnsSettings,
    transport: Transport,
) -> (Vec<u8>, ResponseCode) {
    for upstream in recursors {
        let attempt = match transport {
            Transport::Udp => tokio::time::timeout(timeout, forward_udp(packet, *upstream)).await,
            Transport::Tcp => tokio::time::timeout(timeout, forward_tcp(packet, *upstream)).await,
        };
        if let Ok(Ok(reply)) = attempt {
            let rcode = header_rcode(&reply);
            return (reply, rcode);
        }
    }
    match dns::error_reply(query, ResponseCode::ServFail, settings) {
        Action::Reply { bytes, rcode } => (bytes, rcode),
        _ => (Vec::new(), ResponseCode::ServFail),
    }
}

/// Whether `reply` answers `packet`: same id, QR set.
fn is_reply_to(packet: &[u8], reply: &[u8]) -> bool {
    reply.len() >= 12 && packet.len() >= 2 && reply[..2] == packet[..2] && reply[2] & 0x80 != 0
}

async fn forward_udp(packet: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    // connect() makes the kernel drop datagrams from anyone but the upstream.
    sock.connect(upstream).await?;
    sock.send(packet).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        if is_reply_to(packet, &buf[..n]) {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(packet: &[u8], upstream: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(upstream).await?;
    let len = u16::try_from(packet.len()).map_err(std::io::Error::other)?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    s.write_all(&framed).await?;
    let n = s.read_u16().await? as usize;
    let mut reply = vec![0u8; n];
    s.read_exact(&mut reply).await?;
    if is_reply_to(packet, &reply) {
        Ok(reply)
    } else {
        Err(std::io::Error::other(
            "upstream reply does not match the query",
        ))
    }
}

async fn serve_tcp(listener: TcpListener, shared: Shared, forwards: Arc<Semaphore>) {
    let connections = Arc::new(Semaphore::new(TCP_MAX_CONNECTIONS));
    let mut stop = shared.stop_rx();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "DNS TCP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over the cap: close at once rather than queue (the client retries).
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let shared = shared.clone();
                let forwards = forwards.clone();
                tokio::spawn(async move {
                    serve_connection(stream, shared, forwards).await;
                    drop(permit);
                });
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() != Stop::Running { break; }
            }
        }
    }
}

/// One TCP connection: length-prefixed queries answered in order until the client closes,
/// goes idle, sends garbage framing, or the agent stops.
async fn serve_connection(mut stream: TcpStream, shared: Shared, forwards: Arc<Semaphore>) {
    let _ = stream.set_nodelay(true);
    let mut stop = shared.stop_rx();
    let mut answerer = Answerer::new(shared);
    let mut buf = Vec::new();
    loop {
        let read = async {
            let len = stream.read_u16().await? as usize;
            buf.resize(len, 0);
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(())
        };
        tokio::select! {
            r = tokio::time::timeout(TCP_IDLE_TIMEOUT, read) => {
                if !matches!(r, Ok(Ok(()))) { return; }
            }
            _ = stop.changed() => return,
        }
        let started = Instant::now();
        let (reply, rcode) = match answerer.handle(&buf, Transport::Tcp) {
            (Action::Reply { bytes, rcode }, _) => (bytes, rcode),
            (Action::Forward, Some(query)) => {
                let (recursors, timeout, settings) = answerer.forward_plan();
                match forwards.clone().try_acquire_owned() {
                    Ok(_permit) => {
                        forward(&buf, &query, &recursors, timeout, &settings, Transport::Tcp).await
                    }
                    Err(_) => match dns::error_reply(&query, ResponseCode::ServFail, &settings) {
                        Action::Reply { bytes, rcode } => (bytes, rcode),
                        _ => return,
                    },
                }
            }
            // A response or a runt sent to us over a stream: the peer is not a DNS client.
            _ => return,
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        // A client that stops reading must not hold its connection permit forever.
        match tokio::time::timeout(TCP_IDLE_TIMEOUT, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        METRICS.dns_query(rcode_label(rcode), started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    //! Recursor forwarding against fake upstreams on real loopback sockets (the e2e tests
    //! cover the rest through the binary).
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::RecordType;

    fn query_packet(id: u16) -> (Vec<u8>, Message) {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("example.com.").unwrap(),
            RecordType::A,
        ));
        (m.to_vec().unwrap(), m)
    }

    fn settings() -> DnsSettings {
        DnsSettings::new("local", 0, 0, false, 3, true).unwrap()
    }

    /// An upstream that answers every UDP query with NXDOMAIN, after first sending a
    /// stray datagram with the wrong id (which must be ignored).
    async fn udp_upstream() -> SocketAddr {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 512];
            loop {
                let Ok((n, peer)) = s.recv_from(&mut buf).await else {
                    return;
                };
                let mut reply = buf[..n].to_vec();
                reply[2] |= 0x80;
                reply[3] = (reply[3] & 0xf0) | 3;
                let mut stray = reply.clone();
                stray[0] ^= 0xff;
                let _ = s.send_to(&stray, peer).await;
                let _ = s.send_to(&reply, peer).await;
            }
        });
        addr
    }

    /// A UDP socket that never answers.
    async fn silent_upstream() -> (tokio::net::UdpSocket, SocketAddr) {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    #[tokio::test]
    async fn relays_the_first_working_recursor() {
        let (_silent, dead) = silent_upstream().await;
        let good = udp_upstream().await;
        let (packet, query) = query_packet(0x4242);
        let (reply, rcode) = forward(
            &packet,
            &query,
            &[dead, good],
            Duration::from_millis(300),
            &settings(),
            Transport::Udp,
        )
        .await;
        assert_eq!(rcode, ResponseCode::NXDomain);
        assert_eq!(&reply[..2], &[0x42, 0x42]);
        assert_eq!(Message::from_vec(&reply).unwrap().queries, query.queries);
    }

    #[tokio::test]
    async fn servfail_when_every_recursor_fails() {
        let (_silent, dead) = silent_upstream().await;
        // nothing listens on a port we just released: connection refused
        let closed = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let (packet, query) = query_packet(7);
        let (reply, rcode) = forward(
            &packet,
            &query,
            &[dead, closed],
            Duration::from_millis(200),
            &settings(),
            Transport::Udp,
        )
        .await;
        assert_eq!(rcode, ResponseCode::ServFail);
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, 7);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.metadata.recursion_available);
    }

    #[tokio::test]
    async fn forwards_over_tcp_for_tcp_clients() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let n = s.read_u16().await.unwrap() as usize;
            let mut q = vec![0u8; n];
            s.read_exact(&mut q).await.unwrap();
            q[2] |= 0x80;
            s.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
            s.write_all(&q).await.unwrap();
        });
        let (packet, query) = query_packet(99);
        let (reply, rcode) = forward(
            &packet,
            &query,
            &[addr],
            Duration::from_secs(2),
            &settings(),
            Transport::Tcp,
        )
        .await;
        assert_eq!(rcode, ResponseCode::NoError);
        assert_eq!(Message::from_vec(&reply).unwrap().metadata.id, 99);
    }
}
