//! Gossip over the network: UDP datagrams (SWIM) and TCP stream frames (sync, keyring
//! operations), each sealed or checksummed by the shared keyring, and every bound on what a
//! peer may make this agent hold, enforced before anything is decoded:
//!
//! * datagrams: at most [`MAX_DATAGRAM`] bytes, opened in place, dropped when they do not
//!   open (wrong or no key, bad checksum, plaintext where encryption is required);
//! * streams: at most [`MAX_STREAMS`] served at once and [`MAX_STREAMS_PER_SOURCE`] per
//!   source address (beyond the latter refused at once, with a reason; beyond the former
//!   up to [`MAX_WAITING`] wait up to [`ADMISSION_WAIT`] for a place, the rest are
//!   refused); one request frame per
//!   stream, read chunk by chunk (each chunk opened before the next is read, so a peer
//!   without the key is cut off after one chunk); at most [`MAX_FRAME_PAYLOAD`] bytes per
//!   frame; all frames being read share [`INFLIGHT_BUDGET`] bytes of buffer; a chunk that
//!   does not arrive within [`IDLE_TIMEOUT`] ends the stream (slow-loris), and a whole
//!   exchange ends after [`EXCHANGE_TIMEOUT`].
//!
//! Every drop is counted by channel and reason (`muster.gossip.dropped`). The keyring is
//! read afresh for every packet and frame, so keyring operations and reloads apply at once.

use crate::metrics::METRICS;
use arc_swap::ArcSwap;
use muster_proto::gossip::envelope::{Keyring, Place, Policy, NONCE_LEN};
use muster_proto::gossip::frame::{
    check_magic, refusal, refusal_text, Frame, FrameDecoder, FrameEncoder, FrameError, Word,
    MAX_CHUNK,
};
pub use muster_proto::gossip::frame::{FrameKind, MAX_FRAME_PAYLOAD};
use muster_proto::gossip::MAX_DATAGRAM;
use rand::RngCore;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// The keyring every sender and receiver reads; keyring operations swap it.
pub type Keys = Arc<ArcSwap<Keyring>>;

/// How long one exchange (connect, request, reply) may take end to end.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream on which no chunk arrives (or can be buffered) for this long is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams served at once; more are refused until one ends.
pub const MAX_STREAMS: usize = 16;
/// Streams served at once for one source address.
pub const MAX_STREAMS_PER_SOURCE: usize = 4;
/// Streams that may wait for a place when [`MAX_STREAMS`] are being served: a fleet
/// started at once joins one seed with dozens of streams in the same second, each served
/// in milliseconds; refusing all but 16 failed the rest of those joins. A waiting stream
/// holds a socket and a task, no buffer.
pub const MAX_WAITING: usize = 256;
/// How long a stream waits for a place before it is refused (`busy`); below the peer's
/// [`EXCHANGE_TIMEOUT`], so the peer hears why.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(3);
/// Payload bytes that all frames being read at once may hold together.
pub const INFLIGHT_BUDGET: usize = 2 * MAX_FRAME_PAYLOAD;
/// How long a refusal may take to write before the stream is simply closed.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The shared buffer budget of frames being read, in bytes.
static BUDGET: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(INFLIGHT_BUDGET));

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // ThreadRng is a CSPRNG reseeded from the OS: unique nonces under one key.
    rand::rng().fill_bytes(&mut n);
    n
}

/// The one writer of the UDP socket: seals and sends what the SWIM task hands it.
pub async fn udp_writer(
    socket: Arc<UdpSocket>,
    keys: Keys,
    mut rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
) {
    while let Some((to, payload)) = rx.recv().await {
        let packet = keys.load().seal(nonce(), Place::Datagram, &payload);
        match socket.send_to(&packet, to).await {
            Ok(n) => METRICS.gossip_out(n),
            Err(e) => tracing::debug!(%to, error = %e, "gossip send failed"),
        }
    }
}

/// Reads datagrams, opens them and hands payloads (with who sent them) to the gossip task.
/// When that task falls behind, datagrams are dropped (SWIM tolerates loss) rather than
/// queued without bound.
pub async fn udp_reader(
    socket: Arc<UdpSocket>,
    keys: Keys,
    tx: mpsc::Sender<(SocketAddr, Vec<u8>)>,
) {
    // One byte more than the largest datagram, so an oversized one shows as a full buffer.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on some systems; keep reading, but never spin.
                tracing::trace!(error = %e, "gossip receive error");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        METRICS.gossip_in(n);
        if n > MAX_DATAGRAM {
            METRICS.gossip_dropped("datagram", "oversized");
            continue;
        }
        match keys.load().open(Place::Datagram, &buf[..n]) {
            Ok(opened) => {
                if tx.try_send((from, opened.payload)).is_err() {
                    if tx.is_closed() {
                        return;
                    }
                    tracing::trace!("SWIM task busy: dropped a datagram");
                }
            }
            Err(e) => {
                METRICS.gossip_decrypt_failures.fetch_add(1, Relaxed);
                METRICS.gossip_dropped("datagram", e.reason());
                tracing::debug!(%from, error = %e, "dropped gossip packet");
            }
        }
    }
}

/// Why a stream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("gossip streams are busy here (buffer budget exhausted)")]
    Busy,
    #[error("expected a {0:?} frame in reply, got {1:?}")]
    WrongKind(FrameKind, FrameKind),
    #[error("{0}")]
    Handler(String),
}

impl StreamError {
    fn reason(&self) -> &'static str {
        match self {
            StreamError::Io(_) => "io",
            StreamError::Timeout => "timeout",
            StreamError::Frame(f) => f.reason(),
            StreamError::Busy => "busy",
            StreamError::WrongKind(..) => "malformed",
            StreamError::Handler(_) => "handler",
        }
    }

    /// Whether the peer should be told why (a muster peer whose frame we could not take);
    /// not for timeouts and broken connections, nor for what is not muster at all.
    fn worth_a_refusal(&self) -> bool {
        match self {
            StreamError::Frame(FrameError::NotGossip(_) | FrameError::Refused(_)) => false,
            StreamError::Frame(_) | StreamError::Busy | StreamError::Handler(_) => true,
            _ => false,
        }
    }
}

/// Buffer budget held by one frame being read; given back when the read ends.
struct Held(usize);

impl Drop for Held {
    fn drop(&mut self) {
        BUDGET.add_permits(self.0);
    }
}

async fn idle<T>(f: impl Future<Output = std::io::Result<T>>) -> Result<T, StreamError> {
    match tokio::time::timeout(IDLE_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StreamError::Timeout),
    }
}

/// Reads the first four bytes of a frame; a peer that closes before sending any is not a
/// muster gossip port (a muster peer always answers, if only with a refusal).
async fn read_magic<S: AsyncRead + Unpin>(stream: &mut S) -> Result<[u8; 4], StreamError> {
    let mut first = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = match idle(stream.read(&mut first[got..])).await {
            Ok(n) => n,
            Err(StreamError::Io(e))
                if got == 0
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
            {
                0
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            if got == 0 {
                return Err(FrameError::NotGossip(
                    "it closed the connection without answering (is it the DNS or another port?)"
                        .into(),
                )
                .into());
            }
            return Err(FrameError::Truncated.into());
        }
        got += n;
    }
    Ok(first)
}

async fn read_frame_inner<S: AsyncRead + Unpin>(
    stream: &mut S,
    ring: &Keyring,
) -> Result<(Frame, usize), StreamError> {
    check_magic(read_magic(stream).await?)?;
    let mut decoder = FrameDecoder::new(ring, MAX_FRAME_PAYLOAD);
    let mut held = Held(0);
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut wire = 4;
    loop {
        let mut word = [0u8; 4];
        idle(stream.read_exact(&mut word)).await?;
        wire += 4;
        match Word::parse(word)? {
            Word::Refusal { len } => {
                idle(stream.read_exact(&mut buf[..len])).await?;
                return Err(FrameError::Refused(refusal_text(&buf[..len])).into());
            }
            Word::Chunk { len, last } => {
                // Room for this chunk's payload in the shared budget, before reading it.
                let want = u32::try_from(len).unwrap_or(u32::MAX);
                match tokio::time::timeout(IDLE_TIMEOUT, BUDGET.acquire_many(want)).await {
                    Ok(Ok(p)) => {
                        p.forget();
                        held.0 += len;
                    }
                    _ => return Err(StreamError::Busy),
                }
                idle(stream.read_exact(&mut buf[..len])).await?;
                wire += len;
                if decoder.push(last, &buf[..len])? {
                    return Ok((decoder.finish()?, wire));
                }
            }
        }
    }
}

/// Reads one frame: checks the magic, then opens each chunk as it arrives (the first
/// with any installed key, the rest with the same one), within the size, time and buffer
/// bounds above. Failures are counted by reason.
pub async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    keys: &Keys,
) -> Result<Frame, StreamError> {
    let ring = keys.load_full();
    let r = match tokio::time::timeout(EXCHANGE_TIMEOUT, read_frame_inner(stream, &ring)).await {
        Ok(r) => r,
        Err(_) => Err(StreamError::Timeout),
    };
    match r {
        Ok((frame, wire)) => {
            METRICS.gossip_in(wire);
            Ok(frame)
        }
        Err(e) => {
            if matches!(e, StreamError::Frame(FrameError::Open(_))) {
                METRICS.gossip_decrypt_failures.fetch_add(1, Relaxed);
            }
            METRICS.gossip_dropped("stream", e.reason());
            Err(e)
        }
    }
}

/// Writes one frame of `kind`, chunk by chunk, sealed by the current primary key.
/// Keyring frames are sealed whenever there is a key, whatever `encrypt_verify_outgoing`
/// says: a keyed agent takes keyring operations only sealed.
pub async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    keys: &Keys,
    kind: FrameKind,
    body: &[u8],
) -> Result<(), StreamError> {
    let mut ring = keys.load_full();
    if kind == FrameKind::Keyring && !ring.policy().verify_outgoing {
        let policy = Policy {
            verify_outgoing: true,
            ..ring.policy()
        };
        ring = Arc::new(ring.with_policy(policy));
    }
    write_frame_with(stream, &ring, kind, body).await
}

async fn write_frame_with<S: AsyncWrite + Unpin>(
    stream: &mut S,
    ring: &Keyring,
    kind: FrameKind,
    body: &[u8],
) -> Result<(), StreamError> {
    let mut encoder = FrameEncoder::new(ring, kind, body, MAX_FRAME_PAYLOAD)?;
    let mut sent = 0;
    while let Some(chunk) = encoder.next_chunk(nonce()) {
        idle(stream.write_all(&chunk)).await?;
        sent += chunk.len();
    }
    idle(stream.flush()).await?;
    METRICS.gossip_out(sent);
    Ok(())
}

/// Tells a peer why its stream is refused, without waiting on a peer that does not read.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, reason: &str) {
    let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
        stream.write_all(&refusal(reason)).await?;
        stream.flush().await
    })
    .await;
}

/// The address outgoing streams are opened from: the gossip bind address, when it names
/// one. Without it the kernel would pick one (127.0.0.1 for every agent on a loopback
/// test host), and a peer could not tell, or firewall, where a stream comes from.
static SOURCE_IP: std::sync::OnceLock<IpAddr> = std::sync::OnceLock::new();

/// Sets the address outgoing streams come from (once, at start).
pub fn set_source_ip(ip: IpAddr) {
    if !ip.is_unspecified() {
        let _ = SOURCE_IP.set(ip);
    }
}

async fn connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(ip) = SOURCE_IP.get().filter(|ip| ip.is_ipv4() == to.is_ipv4()) else {
        return TcpStream::connect(to).await;
    };
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(*ip, 0))?;
    socket.connect(to).await
}

/// Client side: connect, send `body` as a frame of `kind`, read the reply frame.
pub async fn exchange_kind(
    to: SocketAddr,
    keys: &Keys,
    kind: FrameKind,
    body: &[u8],
) -> Result<Frame, StreamError> {
    let run = async {
        let mut s = connect(to).await?;
        s.set_nodelay(true)?;
        if let Err(e) = write_frame(&mut s, keys, kind, body).await {
            // A peer that stopped reading may have said why (a refusal), or may not be
            // muster at all: what it sent says more than the broken pipe.
            if let StreamError::Io(_) = e {
                if let Err(told @ StreamError::Frame(_)) = read_frame(&mut s, keys).await {
                    return Err(told);
                }
            }
            return Err(e);
        }
        let reply = read_frame(&mut s, keys).await?;
        if reply.kind != kind {
            return Err(StreamError::WrongKind(kind, reply.kind));
        }
        Ok(reply)
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, run)
        .await
        .map_err(|_| StreamError::Timeout)?
}

/// Client side of a sync (push-pull): send our state, get theirs.
pub async fn exchange(to: SocketAddr, keys: Keys, ours: Vec<u8>) -> Result<Vec<u8>, StreamError> {
    Ok(exchange_kind(to, &keys, FrameKind::Sync, &ours).await?.body)
}

/// The first bytes of an HTTP request: someone pointed an HTTP client at the gossip port.
fn looks_like_http(first: &FrameError) -> bool {
    matches!(first, FrameError::NotGossip(w) if ["\"GET", "\"POS", "\"PUT", "\"HEA", "\"DEL", "\"OPT"]
        .iter()
        .any(|m| w.contains(m)))
}

/// Server side of one stream: reads the request frame, lets `handle` answer it (kind and
/// body of the reply, or a reason to refuse), writes the reply. What cannot be read is
/// refused with the reason, so the peer's operator sees why.
pub async fn serve_stream<F, Fut>(mut stream: TcpStream, from: SocketAddr, keys: Keys, handle: F)
where
    F: FnOnce(Frame) -> Fut,
    Fut: Future<Output = Result<(FrameKind, Vec<u8>), String>>,
{
    let run = async {
        let frame = match read_frame(&mut stream, &keys).await {
            Ok(f) => f,
            Err(e) => {
                if let StreamError::Frame(f) = &e {
                    if looks_like_http(f) {
                        let _ = tokio::time::timeout(
                            REFUSAL_WRITE_TIMEOUT,
                            stream.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 39\r\n\r\nthis is a muster gossip port, not HTTP\n"),
                        )
                        .await;
                    }
                }
                if e.worth_a_refusal() {
                    refuse(&mut stream, &e.to_string()).await;
                }
                return Err(e);
            }
        };
        // A keyring reply goes back the way its request came: a plain request (from an
        // agent without a key) gets a plain reply it can read, even when the request just
        // installed this agent's first key.
        let plain_keyring = frame.kind == FrameKind::Keyring
            && frame.by == muster_proto::gossip::envelope::OpenedBy::Plain;
        match handle(frame).await {
            Ok((FrameKind::Keyring, body)) if plain_keyring => {
                write_frame_with(&mut stream, &Keyring::plain(), FrameKind::Keyring, &body).await
            }
            Ok((kind, body)) => write_frame(&mut stream, &keys, kind, &body).await,
            Err(reason) => {
                refuse(&mut stream, &reason).await;
                Err(StreamError::Handler(reason))
            }
        }
    };
    match tokio::time::timeout(EXCHANGE_TIMEOUT, run).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(%from, error = %e, "gossip stream refused"),
        Err(_) => {
            METRICS.gossip_dropped("stream", "timeout");
            tracing::debug!(%from, "gossip stream timed out");
        }
    }
}

/// Admission of inbound streams: at most [`MAX_STREAMS`] served at once and
/// [`MAX_STREAMS_PER_SOURCE`] from one address (served or waiting). A stream over the
/// per-source limit is refused at once; one that finds every place taken waits for one,
/// up to [`ADMISSION_WAIT`], if fewer than [`MAX_WAITING`] already wait, else it is
/// refused at once too.
#[derive(Clone)]
pub struct Admission {
    total: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    limits: AdmissionLimits,
}

/// The bounds an [`Admission`] enforces (the constants above, smaller in tests).
#[derive(Clone, Copy, Debug)]
pub struct AdmissionLimits {
    pub streams: usize,
    pub per_source: usize,
    pub waiting: usize,
    pub wait: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            streams: MAX_STREAMS,
            per_source: MAX_STREAMS_PER_SOURCE,
            waiting: MAX_WAITING,
            wait: ADMISSION_WAIT,
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(AdmissionLimits::default())
    }
}

/// A stream's place among those of its source; given back on drop (also when the stream
/// is refused after waiting).
struct SourceSlot {
    source: IpAddr,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.per_source.lock() {
            if let Some(n) = m.get_mut(&self.source) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&self.source);
                }
            }
        }
    }
}

/// A stream's place among those being served; freed on drop.
pub struct StreamPermit {
    _total: OwnedSemaphorePermit,
    _source: SourceSlot,
}

/// One waiting stream, counted while it waits.
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            total: Arc::new(Semaphore::new(limits.streams)),
            per_source: Arc::default(),
            waiting: Arc::default(),
            limits,
        }
    }

    /// A permit for a stream from `from`, or None after telling the peer it is refused.
    /// Returns at once unless every place is taken and the stream may wait for one.
    pub async fn admit(&self, stream: &TcpStream, from: SocketAddr) -> Option<StreamPermit> {
        let refused = |why: &'static str, text: String| {
            METRICS.gossip_dropped("stream", why);
            // Best effort and never blocking: the refusal fits in any socket buffer.
            let _ = stream.try_write(&refusal(&text));
            tracing::debug!(%from, "gossip stream refused: {text}");
            None
        };
        let source = from.ip();
        let slot = {
            let Ok(mut m) = self.per_source.lock() else {
                return None;
            };
            let n = m.entry(source).or_insert(0);
            if *n >= self.limits.per_source {
                let limit = self.limits.per_source;
                drop(m);
                return refused(
                    "per_source",
                    format!("busy: {limit} gossip streams from {source} already"),
                );
            }
            *n += 1;
            SourceSlot {
                source,
                per_source: self.per_source.clone(),
            }
        };
        let busy = || {
            format!(
                "busy: {} gossip streams are being served",
                self.limits.streams
            )
        };
        let total = match self.total.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if self.waiting.fetch_add(1, Relaxed) >= self.limits.waiting {
                    self.waiting.fetch_sub(1, Relaxed);
                    return refused("busy", busy());
                }
                let _waiting = Waiting(self.waiting.clone());
                match tokio::time::timeout(self.limits.wait, self.total.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(p)) => p,
                    _ => return refused("busy", busy()),
                }
            }
        };
        Some(StreamPermit {
            _total: total,
            _source: slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn keys(ring: Keyring) -> Keys {
        Arc::new(ArcSwap::from_pointee(ring))
    }

    fn sealed(b: u8) -> Keyring {
        Keyring::new([[b; 32]], Policy::default()).unwrap()
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_pipe() {
        for ring in [Keyring::plain(), sealed(1)] {
            let k = keys(ring);
            let (mut a, mut b) = duplex(1 << 20);
            let body = vec![7u8; 200_000];
            let w = {
                let k = k.clone();
                let body = body.clone();
                tokio::spawn(async move { write_frame(&mut a, &k, FrameKind::Sync, &body).await })
            };
            let f = read_frame(&mut b, &k).await.unwrap();
            w.await.unwrap().unwrap();
            assert_eq!((f.kind, f.body), (FrameKind::Sync, body));
        }
    }

    #[tokio::test]
    async fn keyring_frames_are_sealed_even_when_gossip_is_sent_plain() {
        let relaxed = Keyring::new(
            [[1; 32]],
            Policy {
                verify_incoming: false,
                verify_outgoing: false,
            },
        )
        .unwrap();
        let k = keys(relaxed);
        for (kind, sealed) in [(FrameKind::Sync, false), (FrameKind::Keyring, true)] {
            let (mut a, mut b) = duplex(1 << 16);
            write_frame(&mut a, &k, kind, b"x").await.unwrap();
            let f = read_frame(&mut b, &k).await.unwrap();
            assert_eq!(
                f.by != muster_proto::gossip::envelope::OpenedBy::Plain,
                sealed
            );
        }
    }

    #[tokio::test]
    async fn a_closed_or_http_peer_is_named_as_not_gossip() {
        let k = keys(Keyring::plain());
        let (a, mut b) = duplex(64);
        drop(a);
        let e = read_frame(&mut b, &k).await.unwrap_err().to_string();
        assert!(e.contains("not a muster gossip port"), "{e}");
        let (mut a, mut b) = duplex(64);
        a.write_all(b"HTTP/1.1 400 Bad Request\r\n").await.unwrap();
        let e = read_frame(&mut b, &k).await.unwrap_err().to_string();
        assert!(
            e.contains("not a muster gossip port") && e.contains("HTTP"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_frame_under_another_key_is_refused_at_its_first_chunk() {
        let (mut a, mut b) = duplex(1 << 20);
        let theirs = keys(sealed(2));
        let w = tokio::spawn(async move {
            write_frame(&mut a, &theirs, FrameKind::Sync, &vec![0u8; 1 << 20]).await
        });
        let e = read_frame(&mut b, &keys(sealed(1))).await.unwrap_err();
        assert!(matches!(e, StreamError::Frame(FrameError::Open(_))), "{e}");
        drop(b);
        // The writer is cut off long before it sent its megabyte.
        assert!(w.await.unwrap().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_peer_times_out() {
        let (mut a, mut b) = duplex(64);
        a.write_all(&muster_proto::gossip::frame::MAGIC)
            .await
            .unwrap();
        a.write_all(&[0, 0]).await.unwrap();
        let e = read_frame(&mut b, &keys(Keyring::plain()))
            .await
            .unwrap_err();
        assert!(matches!(e, StreamError::Timeout), "{e}");
        drop(a);
    }

    #[tokio::test]
    async fn admission_caps_streams_per_source() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let adm = Admission::default();
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for i in 0..=MAX_STREAMS_PER_SOURCE {
            clients.push(TcpStream::connect(addr).await.unwrap());
            let (s, from) = l.accept().await.unwrap();
            let p = adm.admit(&s, from).await;
            assert_eq!(p.is_some(), i < MAX_STREAMS_PER_SOURCE, "stream {i}");
            held.push((s, p));
        }
        // The refused one was told why.
        let mut last = clients.pop().unwrap();
        let e = read_frame(&mut last, &keys(Keyring::plain()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused") && e.contains("busy"), "{e}");
        // A freed place is usable again.
        held.truncate(1);
        clients.push(TcpStream::connect(addr).await.unwrap());
        let (s, from) = l.accept().await.unwrap();
        assert!(adm.admit(&s, from).await.is_some());
    }

    /// Connects to `to` from `source` (a loopback address of our own choosing).
    async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::from((source, 0))).unwrap();
        sock.connect(to).await.unwrap()
    }

    #[tokio::test]
    async fn a_stream_beyond_the_served_ones_waits_for_a_place_within_bounds() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let adm = Admission::new(AdmissionLimits {
            streams: 2,
            per_source: 4,
            waiting: 1,
            wait: Duration::from_millis(300),
        });
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for i in 0..4u8 {
            clients.push(connect_from([127, 0, 0, 10 + i], addr).await);
            accepted.push(l.accept().await.unwrap());
        }
        let first = adm.admit(&accepted[0].0, accepted[0].1).await.unwrap();
        let _second = adm.admit(&accepted[1].0, accepted[1].1).await.unwrap();
        // The third waits; the fourth finds the one waiting place taken: refused at once.
        let (s3, from3) = (&accepted[2].0, accepted[2].1);
        let (s4, from4) = (&accepted[3].0, accepted[3].1);
        let third = adm.admit(s3, from3);
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut third)
                .await
                .is_err(),
            "the third stream should wait"
        );
        assert!(adm.admit(s4, from4).await.is_none());
        let e = read_frame(&mut clients[3], &keys(Keyring::plain()))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused") && e.contains("busy"), "{e}");
        // A place freed: the waiting stream is served.
        drop(first);
        let third = third.await.expect("admitted once a place was freed");
        // Every place taken again and nobody leaves: a waiting stream is refused in time.
        let (s4, from4) = (&accepted[3].0, accepted[3].1);
        assert!(adm.admit(s4, from4).await.is_none());
        drop(third);
    }
}
