//! Gossip over the network: UDP datagrams (SWIM) and TCP streams (push-pull), both wrapped
//! in the envelope (sealed when a key is set). Anything that fails to open is dropped and
//! counted in `gossip_decrypt_failures`, never parsed.

use crate::metrics::METRICS;
use muster_proto::gossip::envelope::{self, Channel, NONCE_LEN};
use muster_proto::gossip::message::MAX_PUSH_PULL_BYTES;
use muster_proto::gossip::{GossipKey, OpenError, MAX_DATAGRAM};
use rand::RngCore;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// The largest stream frame accepted: a full state plus the envelope.
pub const MAX_FRAME: usize = MAX_PUSH_PULL_BYTES + envelope::SEALED_OVERHEAD;
/// How long one push-pull exchange may take end to end.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // ThreadRng is a CSPRNG reseeded from the OS: unique nonces under one key.
    rand::rng().fill_bytes(&mut n);
    n
}

pub fn seal(key: Option<&GossipKey>, channel: Channel, payload: &[u8]) -> Vec<u8> {
    envelope::seal(key, nonce(), channel, payload)
}

/// Opens an envelope, counting failures.
pub fn open(key: Option<&GossipKey>, channel: Channel, data: &[u8]) -> Result<Vec<u8>, OpenError> {
    let r = envelope::open(key, channel, data);
    if r.is_err() {
        METRICS.gossip_decrypt_failures.fetch_add(1, Relaxed);
    }
    r
}

/// The one writer of the UDP socket: seals and sends what the SWIM task hands it.
pub async fn udp_writer(
    socket: Arc<UdpSocket>,
    key: Option<GossipKey>,
    mut rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
) {
    while let Some((to, payload)) = rx.recv().await {
        let packet = seal(key.as_ref(), Channel::Datagram, &payload);
        match socket.send_to(&packet, to).await {
            Ok(n) => METRICS.gossip_out(n),
            Err(e) => tracing::debug!(%to, error = %e, "gossip send failed"),
        }
    }
}

/// Reads datagrams, opens them and hands payloads to the SWIM task. When that task falls
/// behind, datagrams are dropped (SWIM tolerates loss) rather than queued without bound.
pub async fn udp_reader(socket: Arc<UdpSocket>, key: Option<GossipKey>, tx: mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 512];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors surface here on some systems; keep reading, but never spin.
                tracing::trace!(error = %e, "gossip receive error");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                continue;
            }
        };
        METRICS.gossip_in(n);
        match open(key.as_ref(), Channel::Datagram, &buf[..n]) {
            Ok(payload) => {
                if tx.try_send(payload).is_err() {
                    if tx.is_closed() {
                        return;
                    }
                    tracing::trace!("SWIM task busy: dropped a datagram");
                }
            }
            Err(e) => tracing::debug!(%from, error = %e, "dropped gossip packet"),
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
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("{0}")]
    Open(#[from] OpenError),
}

pub async fn write_frame(
    stream: &mut TcpStream,
    key: Option<&GossipKey>,
    payload: &[u8],
) -> Result<(), StreamError> {
    let sealed = seal(key, Channel::Stream, payload);
    if sealed.len() > MAX_FRAME {
        return Err(StreamError::TooLarge(sealed.len()));
    }
    let mut frame = Vec::with_capacity(4 + sealed.len());
    frame.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
    frame.extend_from_slice(&sealed);
    stream.write_all(&frame).await?;
    stream.flush().await?;
    METRICS.gossip_out(frame.len());
    Ok(())
}

pub async fn read_frame(
    stream: &mut TcpStream,
    key: Option<&GossipKey>,
) -> Result<Vec<u8>, StreamError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        // Most likely a peer with another key or protocol; count it like a failed open.
        METRICS.gossip_decrypt_failures.fetch_add(1, Relaxed);
        return Err(StreamError::TooLarge(len));
    }
    // Read in steps so a peer announcing a large frame must actually send it before we
    // hold that much memory.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < len {
        let want = (len - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(StreamError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    METRICS.gossip_in(4 + len);
    Ok(open(key, Channel::Stream, &buf)?)
}

/// Client side of push-pull: connect, send our state, read theirs.
pub async fn exchange(
    to: SocketAddr,
    key: Option<GossipKey>,
    ours: Vec<u8>,
) -> Result<Vec<u8>, StreamError> {
    let run = async {
        let mut s = TcpStream::connect(to).await?;
        s.set_nodelay(true)?;
        write_frame(&mut s, key.as_ref(), &ours).await?;
        read_frame(&mut s, key.as_ref()).await
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, run)
        .await
        .map_err(|_| StreamError::Timeout)?
}
