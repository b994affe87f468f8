//! The wire envelope around every gossip datagram and every chunk of a stream frame, and
//! the keyring that seals and opens it.
//!
//! Layouts (the first byte says which):
//! * sealed: `[VERSION_SEALED] [24-byte nonce] [ciphertext + 16-byte tag]`, XChaCha20-Poly1305
//!   under the keyring's primary key. Where the envelope sits is bound in as associated
//!   data: the version, the channel (datagram or stream), and for a stream chunk its index,
//!   whether it is the last, and the nonce of the frame's first chunk — so a sealed datagram
//!   cannot be replayed as a stream chunk, chunks cannot be reordered, dropped, cut short or
//!   spliced from another frame, and nothing can be downgraded to plain.
//! * plain: `[VERSION_PLAIN] [CRC32C, 4 bytes BE] [payload]`. The checksum covers the same
//!   context as the associated data above plus the payload. It is no defence against an
//!   attacker (who can recompute it), but random bit flips of plaintext gossip are detected
//!   and dropped instead of being decoded into a wrong version or address.
//!
//! A [`Keyring`] holds up to [`MAX_KEYS`] keys, primary first: it seals with the primary and
//! opens with any installed key, saying which one opened it, so a new key can be rolled
//! through a live cluster (install everywhere, make it primary, remove the old one). Its
//! [`Policy`] carries Consul's `encrypt_verify_incoming` / `encrypt_verify_outgoing`: with
//! outgoing off it sends plain while holding keys, with incoming off it also accepts plain,
//! which is how a plaintext cluster moves to encryption without a partition.
//!
//! Opening never panics and never allocates more than the envelope's own size: anything
//! that does not open is an [`OpenError`] the caller drops and counts.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// A plain envelope without checksum, as muster sent before checksums: refused.
pub const VERSION_PLAIN_UNCHECKED: u8 = 1;
/// Nonce and sealed payload follow.
pub const VERSION_SEALED: u8 = 2;
/// Checksum and plain payload follow.
pub const VERSION_PLAIN: u8 = 3;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
pub const CHECKSUM_LEN: usize = 4;
pub const KEY_LEN: usize = 32;
/// Bytes a sealed envelope adds to its payload: the most any envelope adds.
pub const SEALED_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Bytes a plain envelope adds to its payload.
pub const PLAIN_OVERHEAD: usize = 1 + CHECKSUM_LEN;
/// Most keys a keyring holds: a rotation needs two; each extra key is one more trial
/// decryption for every packet that does not open.
pub const MAX_KEYS: usize = 16;

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

/// Where a stream chunk sits in its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkPos {
    pub index: u32,
    pub last: bool,
    /// The nonce of the frame's first chunk (zeros in a plain frame, which has none).
    pub frame: [u8; NONCE_LEN],
}

/// Where an envelope sits: what the seal or checksum binds besides the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Datagram,
    Chunk(ChunkPos),
}

impl Place {
    /// The associated data (sealed) or checksum prefix (plain) for `version`.
    fn context(&self, version: u8) -> Vec<u8> {
        match self {
            Place::Datagram => vec![version, Channel::Datagram.tag()],
            Place::Chunk(p) => {
                let mut c = Vec::with_capacity(7 + NONCE_LEN);
                c.push(version);
                c.push(Channel::Stream.tag());
                c.push(u8::from(p.last));
                c.extend_from_slice(&p.index.to_be_bytes());
                c.extend_from_slice(&p.frame);
                c
            }
        }
    }
}

/// One 32-byte gossip key, ready to seal and open.
#[derive(Clone)]
pub struct GossipKey {
    raw: [u8; KEY_LEN],
    cipher: XChaCha20Poly1305,
}

impl GossipKey {
    pub fn new(key: &[u8; KEY_LEN]) -> GossipKey {
        GossipKey {
            raw: *key,
            cipher: XChaCha20Poly1305::new(&(*key).into()),
        }
    }

    /// The key's bytes (to persist it or show it to its operator).
    pub fn raw(&self) -> &[u8; KEY_LEN] {
        &self.raw
    }
}

impl PartialEq for GossipKey {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for GossipKey {}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(..)")
    }
}

/// Consul's `encrypt_verify_incoming` / `encrypt_verify_outgoing`; both only matter while
/// the keyring holds a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Refuse plain envelopes (off: accept plain as well as sealed).
    pub verify_incoming: bool,
    /// Seal what we send (off: send plain although keys are installed).
    pub verify_outgoing: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            verify_incoming: true,
            verify_outgoing: true,
        }
    }
}

/// Why a keyring change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    #[error("the keyring already holds {MAX_KEYS} keys; remove one first")]
    Full,
    #[error("key is not installed; install it first")]
    NotInstalled,
    #[error("key is the primary key; make another key primary (use) before removing it")]
    RemovePrimary,
}

/// Why an envelope was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("empty envelope")]
    Empty,
    #[error("unknown envelope version {0}")]
    UnknownVersion(u8),
    #[error("plain envelope without checksum (sent by an older muster)")]
    Unchecked,
    #[error("plain envelope but this agent requires encryption (encrypt_verify_incoming)")]
    NotSealed,
    #[error("sealed envelope but this agent has no gossip key")]
    NoKey,
    #[error("envelope too short")]
    Truncated,
    #[error("sealed envelope does not open with any installed key")]
    Forged,
    #[error("plain envelope with a wrong checksum (corrupted)")]
    Checksum,
    #[error("chunk is {0} but the frame began {1}")]
    ModeChanged(&'static str, &'static str),
}

impl OpenError {
    /// A short name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::Empty | OpenError::Truncated | OpenError::UnknownVersion(_) => "malformed",
            OpenError::Unchecked => "unchecked",
            OpenError::NotSealed => "plaintext",
            OpenError::NoKey | OpenError::Forged | OpenError::ModeChanged(..) => "decrypt",
            OpenError::Checksum => "checksum",
        }
    }
}

/// What opened an envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenedBy {
    Plain,
    Key(GossipKey),
}

/// An opened envelope: the payload and what opened it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    pub payload: Vec<u8>,
    pub by: OpenedBy,
}

/// The installed gossip keys (primary first) and the verify policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<GossipKey>,
    policy: Policy,
}

impl Keyring {
    /// A keyring with these keys, the first one primary; repeats are dropped.
    pub fn new(
        keys: impl IntoIterator<Item = [u8; KEY_LEN]>,
        policy: Policy,
    ) -> Result<Keyring, KeyringError> {
        let mut ring = Keyring {
            keys: Vec::new(),
            policy,
        };
        for k in keys {
            ring = ring.install(&k)?;
        }
        Ok(ring)
    }

    /// No keys: everything plain (with checksums).
    pub fn plain() -> Keyring {
        Keyring::default()
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The same keys under another policy.
    pub fn with_policy(&self, policy: Policy) -> Keyring {
        Keyring {
            keys: self.keys.clone(),
            policy,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn primary(&self) -> Option<&GossipKey> {
        self.keys.first()
    }

    /// Installed keys, primary first.
    pub fn keys(&self) -> impl Iterator<Item = &GossipKey> {
        self.keys.iter()
    }

    pub fn contains(&self, key: &[u8; KEY_LEN]) -> bool {
        self.keys.iter().any(|k| k.raw == *key)
    }

    /// Adds a key (the first key installed becomes primary). Installing a key twice is not
    /// an error, so a cluster-wide install can simply be repeated.
    pub fn install(&self, key: &[u8; KEY_LEN]) -> Result<Keyring, KeyringError> {
        if self.contains(key) {
            return Ok(self.clone());
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(KeyringError::Full);
        }
        let mut next = self.clone();
        next.keys.push(GossipKey::new(key));
        Ok(next)
    }

    /// Makes an installed key the primary one (the key everything is sealed with).
    pub fn use_key(&self, key: &[u8; KEY_LEN]) -> Result<Keyring, KeyringError> {
        let i = self
            .keys
            .iter()
            .position(|k| k.raw == *key)
            .ok_or(KeyringError::NotInstalled)?;
        let mut next = self.clone();
        let k = next.keys.remove(i);
        next.keys.insert(0, k);
        Ok(next)
    }

    /// Removes a key that is not the primary one; removing a key that is not installed
    /// changes nothing (so a cluster-wide remove can be repeated).
    pub fn remove(&self, key: &[u8; KEY_LEN]) -> Result<Keyring, KeyringError> {
        if self.primary().is_some_and(|p| p.raw == *key) {
            return Err(KeyringError::RemovePrimary);
        }
        let mut next = self.clone();
        next.keys.retain(|k| k.raw != *key);
        Ok(next)
    }

    /// The key outgoing envelopes are sealed with, if they are sealed.
    pub fn sealing_key(&self) -> Option<&GossipKey> {
        self.primary().filter(|_| self.policy.verify_outgoing)
    }

    /// Wraps `payload` sitting at `place`: sealed with the primary key (using `nonce`, which
    /// must never repeat under one key — callers draw it from a CSPRNG), or plain with a
    /// checksum when there is no key or `verify_outgoing` is off.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], place: Place, payload: &[u8]) -> Vec<u8> {
        seal_with(self.sealing_key(), nonce, place, payload)
    }

    /// Unwraps an envelope sitting at `place`, trying every installed key on a sealed one.
    pub fn open(&self, place: Place, envelope: &[u8]) -> Result<Opened, OpenError> {
        let (&version, rest) = envelope.split_first().ok_or(OpenError::Empty)?;
        match version {
            VERSION_PLAIN => {
                if !self.keys.is_empty() && self.policy.verify_incoming {
                    return Err(OpenError::NotSealed);
                }
                Ok(Opened {
                    payload: open_plain(place, rest)?,
                    by: OpenedBy::Plain,
                })
            }
            VERSION_SEALED => {
                if self.keys.is_empty() {
                    return Err(OpenError::NoKey);
                }
                check_sealed_len(rest)?;
                for key in &self.keys {
                    if let Ok(payload) = open_sealed(key, place, rest) {
                        return Ok(Opened {
                            payload,
                            by: OpenedBy::Key(key.clone()),
                        });
                    }
                }
                Err(OpenError::Forged)
            }
            VERSION_PLAIN_UNCHECKED => Err(OpenError::Unchecked),
            v => Err(OpenError::UnknownVersion(v)),
        }
    }

    /// Opens an envelope that must have been opened `by` the same thing as the first
    /// chunk of its frame (a frame never switches key or mode midway).
    pub fn open_as(
        &self,
        by: &OpenedBy,
        place: Place,
        envelope: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let (&version, rest) = envelope.split_first().ok_or(OpenError::Empty)?;
        match (version, by) {
            (VERSION_PLAIN, OpenedBy::Plain) => open_plain(place, rest),
            (VERSION_SEALED, OpenedBy::Key(key)) => {
                check_sealed_len(rest)?;
                open_sealed(key, place, rest).map_err(|_| OpenError::Forged)
            }
            (VERSION_PLAIN, OpenedBy::Key(_)) => Err(OpenError::ModeChanged("plain", "sealed")),
            (VERSION_SEALED, OpenedBy::Plain) => Err(OpenError::ModeChanged("sealed", "plain")),
            (VERSION_PLAIN_UNCHECKED, _) => Err(OpenError::Unchecked),
            (v, _) => Err(OpenError::UnknownVersion(v)),
        }
    }
}

/// Seals with `key`, or wraps plain with a checksum without one.
pub fn seal_with(
    key: Option<&GossipKey>,
    nonce: [u8; NONCE_LEN],
    place: Place,
    payload: &[u8],
) -> Vec<u8> {
    let Some(key) = key else {
        let mut out = Vec::with_capacity(PLAIN_OVERHEAD + payload.len());
        out.push(VERSION_PLAIN);
        out.extend_from_slice(&checksum(place, payload).to_be_bytes());
        out.extend_from_slice(payload);
        return out;
    };
    let aad = place.context(VERSION_SEALED);
    // Encryption of an in-memory buffer only fails for messages beyond ~256 GiB.
    let sealed = key
        .cipher
        .encrypt(
            &XNonce::from(nonce),
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

/// The nonce of a sealed envelope (its first chunk's nonce identifies a stream frame).
pub fn sealed_nonce(envelope: &[u8]) -> Option<[u8; NONCE_LEN]> {
    match envelope.split_first() {
        Some((&VERSION_SEALED, rest)) if rest.len() >= NONCE_LEN + TAG_LEN => {
            let mut n = [0u8; NONCE_LEN];
            n.copy_from_slice(&rest[..NONCE_LEN]);
            Some(n)
        }
        _ => None,
    }
}

fn checksum(place: Place, payload: &[u8]) -> u32 {
    let ctx = place.context(VERSION_PLAIN);
    crc32c::crc32c_append(crc32c::crc32c(&ctx), payload)
}

fn open_plain(place: Place, rest: &[u8]) -> Result<Vec<u8>, OpenError> {
    if rest.len() < CHECKSUM_LEN {
        return Err(OpenError::Truncated);
    }
    let (sum, payload) = rest.split_at(CHECKSUM_LEN);
    let want = u32::from_be_bytes([sum[0], sum[1], sum[2], sum[3]]);
    if checksum(place, payload) != want {
        return Err(OpenError::Checksum);
    }
    Ok(payload.to_vec())
}

fn check_sealed_len(rest: &[u8]) -> Result<(), OpenError> {
    if rest.len() < NONCE_LEN + TAG_LEN {
        Err(OpenError::Truncated)
    } else {
        Ok(())
    }
}

fn open_sealed(key: &GossipKey, place: Place, rest: &[u8]) -> Result<Vec<u8>, ()> {
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let mut n = [0u8; NONCE_LEN];
    n.copy_from_slice(nonce);
    let aad = place.context(VERSION_SEALED);
    key.cipher
        .decrypt(
            &XNonce::from(n),
            Payload {
                msg: sealed,
                aad: &aad,
            },
        )
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(keys: &[u8], policy: Policy) -> Keyring {
        Keyring::new(keys.iter().map(|b| [*b; 32]), policy).unwrap()
    }

    fn sealed(b: u8) -> Keyring {
        ring(&[b], Policy::default())
    }

    fn chunk(index: u32, last: bool) -> Place {
        Place::Chunk(ChunkPos {
            index,
            last,
            frame: [7; NONCE_LEN],
        })
    }

    #[test]
    fn plain_round_trip_carries_a_checksum() {
        let r = Keyring::plain();
        let e = r.seal([0; 24], Place::Datagram, b"hello");
        assert_eq!(e[0], VERSION_PLAIN);
        assert_eq!(e.len(), 5 + PLAIN_OVERHEAD);
        let o = r.open(Place::Datagram, &e).unwrap();
        assert_eq!(
            (o.payload.as_slice(), o.by),
            (&b"hello"[..], OpenedBy::Plain)
        );
    }

    #[test]
    fn every_single_bit_flip_of_a_plain_envelope_is_caught() {
        let r = Keyring::plain();
        for place in [Place::Datagram, chunk(3, false)] {
            let e = r.seal([0; 24], place, b"a plain gossip payload of some length");
            for bit in 0..e.len() * 8 {
                let mut t = e.clone();
                t[bit / 8] ^= 1 << (bit % 8);
                assert!(r.open(place, &t).is_err(), "bit {bit} at {place:?}");
            }
        }
    }

    #[test]
    fn plain_place_is_checked() {
        let r = Keyring::plain();
        let e = r.seal([0; 24], chunk(0, false), b"x");
        assert_eq!(r.open(chunk(1, false), &e), Err(OpenError::Checksum));
        assert_eq!(r.open(chunk(0, true), &e), Err(OpenError::Checksum));
        assert_eq!(r.open(Place::Datagram, &e), Err(OpenError::Checksum));
    }

    #[test]
    fn sealed_round_trip_and_overhead() {
        let k = sealed(7);
        let e = k.seal([3; 24], Place::Datagram, b"hello");
        assert_eq!(e.len(), 5 + SEALED_OVERHEAD);
        assert!(
            !e.windows(5).any(|w| w == b"hello"),
            "payload is not in the clear"
        );
        let o = k.open(Place::Datagram, &e).unwrap();
        assert_eq!(o.payload, b"hello");
        assert_eq!(o.by, OpenedBy::Key(GossipKey::new(&[7; 32])));
    }

    #[test]
    fn wrong_key_tamper_and_place_are_refused() {
        let k = sealed(7);
        let e = k.seal([3; 24], Place::Datagram, b"hello");
        assert_eq!(sealed(8).open(Place::Datagram, &e), Err(OpenError::Forged));
        assert_eq!(k.open(chunk(0, true), &e), Err(OpenError::Forged));
        for i in 0..e.len() {
            let mut t = e.clone();
            t[i] ^= 0x40;
            assert!(k.open(Place::Datagram, &t).is_err(), "byte {i}");
        }
        for n in 0..e.len() {
            assert!(k.open(Place::Datagram, &e[..n]).is_err());
        }
        let c = k.seal([3; 24], chunk(2, false), b"hello");
        assert!(k.open(chunk(2, false), &c).is_ok());
        assert_eq!(k.open(chunk(2, true), &c), Err(OpenError::Forged));
        assert_eq!(k.open(chunk(1, false), &c), Err(OpenError::Forged));
        let other_frame = Place::Chunk(ChunkPos {
            index: 2,
            last: false,
            frame: [8; NONCE_LEN],
        });
        assert_eq!(k.open(other_frame, &c), Err(OpenError::Forged));
    }

    #[test]
    fn opens_with_any_installed_key_and_says_which() {
        let old = sealed(1);
        let both = ring(&[1, 2], Policy::default());
        let new = sealed(2);
        let from_old = old.seal([0; 24], Place::Datagram, b"a");
        let from_new = new.seal([0; 24], Place::Datagram, b"b");
        assert_eq!(
            both.open(Place::Datagram, &from_old).unwrap().by,
            OpenedBy::Key(GossipKey::new(&[1; 32]))
        );
        assert_eq!(
            both.open(Place::Datagram, &from_new).unwrap().by,
            OpenedBy::Key(GossipKey::new(&[2; 32]))
        );
        // Sealed with the primary only.
        let e = both.seal([0; 24], Place::Datagram, b"c");
        assert!(old.open(Place::Datagram, &e).is_ok());
        assert_eq!(new.open(Place::Datagram, &e), Err(OpenError::Forged));
    }

    #[test]
    fn install_use_remove() {
        let r = sealed(1);
        let r = r.install(&[2; 32]).unwrap();
        assert_eq!(r.install(&[2; 32]).unwrap(), r, "install twice is a no-op");
        assert_eq!(r.primary().unwrap().raw(), &[1; 32]);
        assert_eq!(r.remove(&[1; 32]), Err(KeyringError::RemovePrimary));
        assert_eq!(r.use_key(&[3; 32]), Err(KeyringError::NotInstalled));
        let r = r.use_key(&[2; 32]).unwrap();
        assert_eq!(r.primary().unwrap().raw(), &[2; 32]);
        let r = r.remove(&[1; 32]).unwrap();
        assert_eq!(r.keys().count(), 1);
        assert_eq!(
            r.remove(&[9; 32]).unwrap(),
            r,
            "removing an absent key is a no-op"
        );
        let mut full = Keyring::plain();
        for b in 0..MAX_KEYS as u8 {
            full = full.install(&[b; 32]).unwrap();
        }
        assert_eq!(full.install(&[200; 32]), Err(KeyringError::Full));
        assert_eq!(
            Keyring::plain()
                .install(&[5; 32])
                .unwrap()
                .primary()
                .unwrap()
                .raw(),
            &[5; 32]
        );
    }

    #[test]
    fn verify_settings_allow_a_move_from_plain_to_sealed() {
        let relaxed = Policy {
            verify_incoming: false,
            verify_outgoing: false,
        };
        let plain = Keyring::plain();
        let step1 = ring(&[1], relaxed);
        let step2 = ring(
            &[1],
            Policy {
                verify_incoming: false,
                verify_outgoing: true,
            },
        );
        let step3 = sealed(1);
        // Step 1: keys installed, still sending plain, everyone understands everyone.
        let p = step1.seal([0; 24], Place::Datagram, b"x");
        assert_eq!(p[0], VERSION_PLAIN);
        assert!(plain.open(Place::Datagram, &p).is_ok());
        assert!(step1
            .open(Place::Datagram, &plain.seal([0; 24], Place::Datagram, b"x"))
            .is_ok());
        // Step 2: sending sealed; steps 1 and 2 still take plain.
        let s = step2.seal([0; 24], Place::Datagram, b"x");
        assert_eq!(s[0], VERSION_SEALED);
        assert!(step1.open(Place::Datagram, &s).is_ok());
        assert!(step2.open(Place::Datagram, &p).is_ok());
        // Step 3: plain refused.
        assert_eq!(step3.open(Place::Datagram, &p), Err(OpenError::NotSealed));
        assert!(step3.open(Place::Datagram, &s).is_ok());
        assert_eq!(plain.open(Place::Datagram, &s), Err(OpenError::NoKey));
    }

    #[test]
    fn a_frame_cannot_switch_key_or_mode() {
        let both = ring(
            &[1, 2],
            Policy {
                verify_incoming: false,
                verify_outgoing: true,
            },
        );
        let by1 = OpenedBy::Key(GossipKey::new(&[1; 32]));
        let c2 = sealed(2).seal([0; 24], chunk(1, true), b"x");
        assert_eq!(
            both.open_as(&by1, chunk(1, true), &c2),
            Err(OpenError::Forged)
        );
        let p = Keyring::plain().seal([0; 24], chunk(1, true), b"x");
        assert_eq!(
            both.open_as(&by1, chunk(1, true), &p),
            Err(OpenError::ModeChanged("plain", "sealed"))
        );
        assert_eq!(
            both.open_as(&OpenedBy::Plain, chunk(1, true), &c2),
            Err(OpenError::ModeChanged("sealed", "plain"))
        );
        assert_eq!(
            both.open_as(&OpenedBy::Plain, chunk(1, true), &p).unwrap(),
            b"x"
        );
    }

    #[test]
    fn odd_envelopes_are_refused_with_a_reason() {
        let k = sealed(1);
        let plain = Keyring::plain();
        assert_eq!(plain.open(Place::Datagram, &[]), Err(OpenError::Empty));
        assert_eq!(
            plain.open(Place::Datagram, &[9, 1, 2]),
            Err(OpenError::UnknownVersion(9))
        );
        assert_eq!(
            plain.open(Place::Datagram, &[1, 1, 2]),
            Err(OpenError::Unchecked)
        );
        assert_eq!(
            plain.open(Place::Datagram, &[3, 1, 2]),
            Err(OpenError::Truncated)
        );
        assert_eq!(k.open(Place::Datagram, &[2; 10]), Err(OpenError::Truncated));
        let e = k.seal([0; 24], Place::Datagram, b"x");
        assert_eq!(sealed_nonce(&e), Some([0; 24]));
        assert_eq!(
            sealed_nonce(&plain.seal([0; 24], Place::Datagram, b"x")),
            None
        );
    }
}
