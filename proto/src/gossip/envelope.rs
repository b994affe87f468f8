//! The wire envelope around every gossip packet and stream frame: a version byte, then the
//! payload — in the clear, or sealed with XChaCha20-Poly1305 under the cluster key.
//!
//! Sealed layout: `[VERSION_SEALED] [24-byte nonce] [ciphertext + 16-byte tag]`. The version
//! byte and the channel (datagram or stream) are authenticated as associated data, so a
//! sealed UDP packet cannot be replayed as a stream frame or downgraded to plain. Opening
//! never panics: anything that does not open is an [`OpenError`] the caller drops and counts.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Plain payload follows.
pub const VERSION_PLAIN: u8 = 1;
/// Nonce and sealed payload follow.
pub const VERSION_SEALED: u8 = 2;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed envelope adds to its payload.
pub const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Which kind of transport carries the envelope (bound into the authentication).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Datagram,
    Stream,
}

impl Channel {
    fn tag(self) -> u8 {
        match self {
            Channel::Datagram => b'd',
            Channel::Stream => b's',
        }
    }
}

/// The shared 32-byte cluster key, ready to seal and open.
#[derive(Clone)]
pub struct GossipKey(XChaCha20Poly1305);

impl GossipKey {
    pub fn new(key: &[u8; 32]) -> GossipKey {
        GossipKey(XChaCha20Poly1305::new(&(*key).into()))
    }
}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

/// Why an envelope was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("empty envelope")]
    Empty,
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
    #[error("plain envelope but this cluster requires encryption")]
    NotSealed,
    #[error("sealed envelope but no key is configured")]
    NoKey,
    #[error("sealed envelope too short")]
    Truncated,
    #[error("sealed envelope does not open with our key")]
    Forged,
}

/// Wraps `payload` for the wire: sealed with `key` (using `nonce`, which must never repeat
/// under one key — callers draw it from a CSPRNG) or plain without one.
pub fn seal(
    key: Option<&GossipKey>,
    nonce: [u8; NONCE_LEN],
    channel: Channel,
    payload: &[u8],
) -> Vec<u8> {
    let Some(key) = key else {
        let mut out = Vec::with_capacity(1 + payload.len());
        out.push(VERSION_PLAIN);
        out.extend_from_slice(payload);
        return out;
    };
    let aad = [VERSION_SEALED, channel.tag()];
    let xnonce = XNonce::from(nonce);
    // Encryption of an in-memory buffer only fails for messages beyond ~256 GiB.
    let sealed = key
        .0
        .encrypt(
            &xnonce,
            Payload {
                msg: payload,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(SEALED_OVERHEAD + payload.len());
    out.push(VERSION_SEALED);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Unwraps an envelope. With a key only sealed envelopes are accepted; without one only
/// plain envelopes are.
pub fn open(
    key: Option<&GossipKey>,
    channel: Channel,
    envelope: &[u8],
) -> Result<Vec<u8>, OpenError> {
    let (&version, rest) = envelope.split_first().ok_or(OpenError::Empty)?;
    match (version, key) {
        (VERSION_PLAIN, None) => Ok(rest.to_vec()),
        (VERSION_PLAIN, Some(_)) => Err(OpenError::NotSealed),
        (VERSION_SEALED, None) => Err(OpenError::NoKey),
        (VERSION_SEALED, Some(key)) => {
            if rest.len() < NONCE_LEN + TAG_LEN {
                return Err(OpenError::Truncated);
            }
            let (nonce, sealed) = rest.split_at(NONCE_LEN);
            let mut n = [0u8; NONCE_LEN];
            n.copy_from_slice(nonce);
            let aad = [VERSION_SEALED, channel.tag()];
            key.0
                .decrypt(
                    &XNonce::from(n),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| OpenError::Forged)
        }
        (v, _) => Err(OpenError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> GossipKey {
        GossipKey::new(&[b; 32])
    }

    #[test]
    fn plain_round_trip() {
        let e = seal(None, [0; 24], Channel::Datagram, b"hello");
        assert_eq!(e[0], VERSION_PLAIN);
        assert_eq!(open(None, Channel::Datagram, &e).unwrap(), b"hello");
    }

    #[test]
    fn sealed_round_trip_and_overhead() {
        let k = key(7);
        let e = seal(Some(&k), [3; 24], Channel::Datagram, b"hello");
        assert_eq!(e.len(), 5 + SEALED_OVERHEAD);
        assert!(
            !e.windows(5).any(|w| w == b"hello"),
            "payload is not in the clear"
        );
        assert_eq!(open(Some(&k), Channel::Datagram, &e).unwrap(), b"hello");
    }

    #[test]
    fn wrong_key_tamper_and_channel_are_refused() {
        let k = key(7);
        let e = seal(Some(&k), [3; 24], Channel::Datagram, b"hello");
        assert_eq!(
            open(Some(&key(8)), Channel::Datagram, &e),
            Err(OpenError::Forged)
        );
        assert_eq!(open(Some(&k), Channel::Stream, &e), Err(OpenError::Forged));
        for i in 0..e.len() {
            let mut t = e.clone();
            t[i] ^= 0x40;
            assert!(open(Some(&k), Channel::Datagram, &t).is_err(), "byte {i}");
        }
        for n in 0..e.len() {
            assert!(open(Some(&k), Channel::Datagram, &e[..n]).is_err());
        }
    }

    #[test]
    fn key_mismatch_in_mode_is_refused() {
        let k = key(1);
        let plain = seal(None, [0; 24], Channel::Stream, b"x");
        let sealed = seal(Some(&k), [0; 24], Channel::Stream, b"x");
        assert_eq!(
            open(Some(&k), Channel::Stream, &plain),
            Err(OpenError::NotSealed)
        );
        assert_eq!(open(None, Channel::Stream, &sealed), Err(OpenError::NoKey));
        assert_eq!(open(None, Channel::Stream, &[]), Err(OpenError::Empty));
        assert_eq!(
            open(None, Channel::Stream, &[9, 1, 2]),
            Err(OpenError::UnknownVersion(9))
        );
    }
}
