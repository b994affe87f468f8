//! Stream frames: how one message travels over a gossip TCP connection, in envelopes of
//! at most [`CHUNK_DATA`] bytes each, so that nothing is held whole before it is opened.
//!
//! ```text
//! frame := MAGIC chunk* | MAGIC refusal
//! chunk := word(u32 BE: bit 31 last, bit 30 clear, bits 0-29 length) envelope
//! refusal := word(bit 30 set, length <= MAX_REFUSAL) UTF-8 reason   (never sealed)
//! ```
//!
//! Each chunk is its own envelope (see `envelope`): sealed chunks are authenticated one by
//! one, bound to their index, to whether they are last and to the frame's first nonce, so a
//! peer without a key is refused after at most one chunk instead of after the whole frame,
//! and a frame cannot be cut short, reordered or spliced. The opened payload starts with a
//! [`FrameKind`] byte. The magic opens every frame in both directions; its first two zero
//! bytes make a DNS-over-TCP server see an empty query and close at once, and an HTTP
//! server answer `HTTP/1.1 400`, both of which the reader names as "not a muster gossip
//! port". A server that cannot or will not take a frame answers with a refusal, so a
//! muster peer always answers something.
//!
//! This module is pure (no I/O): [`FrameEncoder`] yields the wire bytes chunk by chunk and
//! [`FrameDecoder`] takes chunks as they arrive; the agent's transport moves the bytes and
//! enforces time and memory budgets around them.

use super::envelope::{
    sealed_nonce, ChunkPos, Keyring, OpenError, OpenedBy, Place, NONCE_LEN, SEALED_OVERHEAD,
};

/// Opens every frame: two zero bytes (an empty DNS-over-TCP query), 'M', format 1.
pub const MAGIC: [u8; 4] = [0x00, 0x00, b'M', 0x01];
/// Payload bytes per chunk.
pub const CHUNK_DATA: usize = 64 * 1024;
/// The largest chunk envelope on the wire.
pub const MAX_CHUNK: usize = CHUNK_DATA + SEALED_OVERHEAD;
/// The longest refusal reason.
pub const MAX_REFUSAL: usize = 256;
/// The largest frame payload (kind byte included) a reader accepts by default: the kind
/// byte and the largest message the gossip node decodes ([`super::wire::MAX_STREAM_FRAME`]),
/// so that no frame is read whole only to be refused once it is in.
pub const MAX_FRAME_PAYLOAD: usize = 1 + super::wire::MAX_STREAM_FRAME;

const LAST: u32 = 1 << 31;
const REFUSAL: u32 = 1 << 30;
const LEN_MASK: u32 = REFUSAL - 1;

/// What a frame carries; the first payload byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Gossip state sync (push-pull and what replaces it).
    Sync = 1,
    /// Keyring operations (list, install, use, remove) and their replies.
    Keyring = 2,
}

impl FrameKind {
    pub fn from_byte(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Sync),
            2 => Some(FrameKind::Keyring),
            _ => None,
        }
    }
}

/// Why a frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("this is not a muster gossip port: {0}")]
    NotGossip(String),
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("chunk of {0} bytes is over the limit of {MAX_CHUNK}")]
    ChunkTooLarge(usize),
    #[error("frame is over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame without payload")]
    Empty,
    #[error("frame ended before its last chunk")]
    Truncated,
}

impl FrameError {
    /// A short name for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::NotGossip(_) => "not_gossip",
            FrameError::Refused(_) => "refused",
            FrameError::ChunkTooLarge(_) | FrameError::TooLarge(_) => "oversized",
            FrameError::Open(e) => e.reason(),
            FrameError::UnknownKind(_) | FrameError::Empty | FrameError::Truncated => "malformed",
        }
    }
}

/// A chunk header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Word {
    Chunk { len: usize, last: bool },
    Refusal { len: usize },
}

impl Word {
    pub fn parse(bytes: [u8; 4]) -> Result<Word, FrameError> {
        let w = u32::from_be_bytes(bytes);
        let len = (w & LEN_MASK) as usize;
        if w & REFUSAL != 0 {
            if len > MAX_REFUSAL {
                return Err(FrameError::ChunkTooLarge(len));
            }
            return Ok(Word::Refusal { len });
        }
        if len > MAX_CHUNK {
            return Err(FrameError::ChunkTooLarge(len));
        }
        Ok(Word::Chunk {
            len,
            last: w & LAST != 0,
        })
    }

    fn encode(self) -> [u8; 4] {
        let w = match self {
            Word::Chunk { len, last } => (len as u32 & LEN_MASK) | if last { LAST } else { 0 },
            Word::Refusal { len } => (len as u32 & LEN_MASK) | REFUSAL,
        };
        w.to_be_bytes()
    }
}

/// Checks the first four bytes a peer sent; names what answered when it is not muster.
pub fn check_magic(first: [u8; 4]) -> Result<(), FrameError> {
    if first == MAGIC {
        return Ok(());
    }
    let what = if &first == b"HTTP" {
        "it answered like an HTTP server".to_string()
    } else if first.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!(
            "it sent text ({:?}...)",
            String::from_utf8_lossy(&first).into_owned()
        )
    } else {
        format!(
            "it sent bytes {:02x} {:02x} {:02x} {:02x}",
            first[0], first[1], first[2], first[3]
        )
    };
    Err(FrameError::NotGossip(what))
}

/// The whole wire form of a refusal with `reason` (cut to [`MAX_REFUSAL`] bytes).
pub fn refusal(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REFUSAL);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let text = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(8 + text.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&Word::Refusal { len: text.len() }.encode());
    out.extend_from_slice(text);
    out
}

/// The text of a refusal body, made safe to log.
pub fn refusal_text(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Cuts `kind` + `body` into sealed chunks, one at a time.
pub struct FrameEncoder<'a> {
    keyring: &'a Keyring,
    kind: FrameKind,
    body: &'a [u8],
    /// Payload bytes already sent (the kind byte counts as one).
    sent: usize,
    index: u32,
    frame: [u8; NONCE_LEN],
    done: bool,
}

impl<'a> FrameEncoder<'a> {
    /// Fails when the payload is over `max_payload` (the receiver would refuse it).
    pub fn new(
        keyring: &'a Keyring,
        kind: FrameKind,
        body: &'a [u8],
        max_payload: usize,
    ) -> Result<FrameEncoder<'a>, FrameError> {
        if body.len() + 1 > max_payload {
            return Err(FrameError::TooLarge(max_payload));
        }
        Ok(FrameEncoder {
            keyring,
            kind,
            body,
            sent: 0,
            index: 0,
            frame: [0; NONCE_LEN],
            done: false,
        })
    }

    /// The next piece of wire bytes (the first one starts with the magic), sealed with
    /// `nonce`, or None when the frame is complete.
    pub fn next_chunk(&mut self, nonce: [u8; NONCE_LEN]) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let total = self.body.len() + 1;
        let take = (total - self.sent).min(CHUNK_DATA);
        let last = self.sent + take == total;
        let mut data = Vec::with_capacity(take);
        if self.sent == 0 {
            data.push(self.kind as u8);
            data.extend_from_slice(&self.body[..take - 1]);
        } else {
            let from = self.sent - 1;
            data.extend_from_slice(&self.body[from..from + take]);
        }
        if self.index == 0 {
            // The first chunk's nonce names the frame (a plain frame has none: zeros).
            let sealing = self.keyring.sealing_key().is_some();
            self.frame = if sealing { nonce } else { [0; NONCE_LEN] };
        }
        let place = Place::Chunk(ChunkPos {
            index: self.index,
            last,
            frame: self.frame,
        });
        let envelope = self.keyring.seal(nonce, place, &data);
        let mut out = Vec::with_capacity(8 + envelope.len());
        if self.index == 0 {
            out.extend_from_slice(&MAGIC);
        }
        out.extend_from_slice(
            &Word::Chunk {
                len: envelope.len(),
                last,
            }
            .encode(),
        );
        out.extend_from_slice(&envelope);
        self.sent += take;
        self.index += 1;
        self.done = last;
        Some(out)
    }
}

/// A received frame: its kind, the payload after the kind byte, and what opened it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub body: Vec<u8>,
    pub by: OpenedBy,
}

/// Opens a frame's chunks as they arrive (the magic and each word are checked by the
/// caller with [`check_magic`] and [`Word::parse`]).
pub struct FrameDecoder<'a> {
    keyring: &'a Keyring,
    max_payload: usize,
    index: u32,
    frame: [u8; NONCE_LEN],
    by: Option<OpenedBy>,
    kind: Option<FrameKind>,
    body: Vec<u8>,
    done: bool,
}

impl<'a> FrameDecoder<'a> {
    pub fn new(keyring: &'a Keyring, max_payload: usize) -> FrameDecoder<'a> {
        FrameDecoder {
            keyring,
            max_payload,
            index: 0,
            frame: [0; NONCE_LEN],
            by: None,
            kind: None,
            body: Vec::new(),
            done: false,
        }
    }

    /// Payload bytes held so far.
    pub fn held(&self) -> usize {
        self.body.len()
    }

    /// Takes one chunk's envelope; true once the last chunk is in.
    pub fn push(&mut self, last: bool, envelope: &[u8]) -> Result<bool, FrameError> {
        if self.done {
            return Ok(true);
        }
        let data = match &self.by {
            None => {
                let frame = sealed_nonce(envelope).unwrap_or([0; NONCE_LEN]);
                let place = Place::Chunk(ChunkPos {
                    index: 0,
                    last,
                    frame,
                });
                let opened = self.keyring.open(place, envelope)?;
                let (&kind, rest) = opened.payload.split_first().ok_or(FrameError::Empty)?;
                let kind = FrameKind::from_byte(kind).ok_or(FrameError::UnknownKind(kind))?;
                self.kind = Some(kind);
                self.frame = frame;
                self.by = Some(opened.by);
                rest.to_vec()
            }
            Some(by) => {
                let place = Place::Chunk(ChunkPos {
                    index: self.index,
                    last,
                    frame: self.frame,
                });
                self.keyring.open_as(by, place, envelope)?
            }
        };
        if self.body.len() + data.len() + 1 > self.max_payload {
            return Err(FrameError::TooLarge(self.max_payload));
        }
        self.body.extend_from_slice(&data);
        self.index = self.index.wrapping_add(1);
        self.done = last;
        Ok(last)
    }

    /// The frame, once its last chunk is in.
    pub fn finish(self) -> Result<Frame, FrameError> {
        match (self.done, self.kind, self.by) {
            (true, Some(kind), Some(by)) => Ok(Frame {
                kind,
                body: self.body,
                by,
            }),
            _ => Err(FrameError::Truncated),
        }
    }
}

/// Decodes one whole frame held in memory (tests, fuzzing); the agent's transport reads
/// the same way chunk by chunk from a socket.
pub fn decode(keyring: &Keyring, bytes: &[u8], max_payload: usize) -> Result<Frame, FrameError> {
    let take4 =
        |at: usize| -> Option<[u8; 4]> { bytes.get(at..at + 4).map(|s| [s[0], s[1], s[2], s[3]]) };
    check_magic(take4(0).ok_or(FrameError::Truncated)?)?;
    let mut at = 4;
    let mut dec = FrameDecoder::new(keyring, max_payload);
    loop {
        let word = Word::parse(take4(at).ok_or(FrameError::Truncated)?)?;
        at += 4;
        match word {
            Word::Refusal { len } => {
                let body = bytes.get(at..at + len).ok_or(FrameError::Truncated)?;
                return Err(FrameError::Refused(refusal_text(body)));
            }
            Word::Chunk { len, last } => {
                let env = bytes.get(at..at + len).ok_or(FrameError::Truncated)?;
                at += len;
                if dec.push(last, env)? {
                    return dec.finish();
                }
            }
        }
    }
}

/// Encodes one whole frame into memory (tests, fuzzing); `nonce` is called per chunk.
pub fn encode(
    keyring: &Keyring,
    kind: FrameKind,
    body: &[u8],
    max_payload: usize,
    mut nonce: impl FnMut() -> [u8; NONCE_LEN],
) -> Result<Vec<u8>, FrameError> {
    let mut enc = FrameEncoder::new(keyring, kind, body, max_payload)?;
    let mut out = Vec::with_capacity(body.len() + 64);
    while let Some(c) = enc.next_chunk(nonce()) {
        out.extend_from_slice(&c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::envelope::{GossipKey, Policy};

    fn counter() -> impl FnMut() -> [u8; NONCE_LEN] {
        let mut n = 0u64;
        move || {
            n += 1;
            let mut out = [0u8; NONCE_LEN];
            out[..8].copy_from_slice(&n.to_be_bytes());
            out
        }
    }

    fn sealed(b: u8) -> Keyring {
        Keyring::new([[b; 32]], Policy::default()).unwrap()
    }

    #[test]
    fn round_trips_small_and_multi_chunk_frames() {
        for ring in [Keyring::plain(), sealed(1)] {
            for len in [0, 1, CHUNK_DATA - 1, CHUNK_DATA, 3 * CHUNK_DATA + 17] {
                let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let wire =
                    encode(&ring, FrameKind::Sync, &body, MAX_FRAME_PAYLOAD, counter()).unwrap();
                let f = decode(&ring, &wire, MAX_FRAME_PAYLOAD).unwrap();
                assert_eq!(f.kind, FrameKind::Sync);
                assert_eq!(f.body, body, "len {len}");
                assert_eq!(f.by == OpenedBy::Plain, ring.is_empty());
            }
        }
        let f = decode(
            &sealed(1),
            &encode(&sealed(1), FrameKind::Keyring, b"x", 100, counter()).unwrap(),
            100,
        )
        .unwrap();
        assert_eq!((f.kind, f.body.as_slice()), (FrameKind::Keyring, &b"x"[..]));
        assert_eq!(f.by, OpenedBy::Key(GossipKey::new(&[1; 32])));
    }

    #[test]
    fn size_limits_hold_on_both_sides() {
        assert_eq!(
            encode(
                &Keyring::plain(),
                FrameKind::Sync,
                &[0; 100],
                100,
                counter()
            )
            .err(),
            Some(FrameError::TooLarge(100))
        );
        let wire = encode(
            &Keyring::plain(),
            FrameKind::Sync,
            &[0; 300_000],
            400_000,
            counter(),
        )
        .unwrap();
        assert_eq!(
            decode(&Keyring::plain(), &wire, 200_000).err(),
            Some(FrameError::TooLarge(200_000))
        );
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&(MAX_CHUNK as u32 + 1).to_be_bytes());
        assert_eq!(
            decode(&Keyring::plain(), &big, MAX_FRAME_PAYLOAD).err(),
            Some(FrameError::ChunkTooLarge(MAX_CHUNK + 1))
        );
    }

    #[test]
    fn a_keyless_peer_is_refused_at_the_first_chunk() {
        // A frame sealed with another key fails on chunk 0, before the rest is read.
        let wire = encode(
            &sealed(2),
            FrameKind::Sync,
            &[0; 200_000],
            MAX_FRAME_PAYLOAD,
            counter(),
        )
        .unwrap();
        let first_chunk_end = 4 + 4 + MAX_CHUNK;
        assert_eq!(
            decode(&sealed(1), &wire[..first_chunk_end], MAX_FRAME_PAYLOAD).err(),
            Some(FrameError::Open(OpenError::Forged))
        );
    }

    #[test]
    fn chunks_cannot_be_dropped_reordered_or_cut() {
        let ring = sealed(1);
        let wire = encode(
            &ring,
            FrameKind::Sync,
            &[5; 3 * CHUNK_DATA],
            MAX_FRAME_PAYLOAD,
            counter(),
        )
        .unwrap();
        let chunk = 4 + MAX_CHUNK;
        let (head, rest) = wire.split_at(4);
        let chunks: Vec<&[u8]> = rest.chunks(chunk).collect();
        assert_eq!(chunks.len(), 4);
        let glue = |order: &[usize]| {
            let mut w = head.to_vec();
            for i in order {
                w.extend_from_slice(chunks[*i]);
            }
            w
        };
        assert!(decode(&ring, &glue(&[0, 1, 2, 3]), MAX_FRAME_PAYLOAD).is_ok());
        assert!(decode(&ring, &glue(&[0, 2, 1, 3]), MAX_FRAME_PAYLOAD).is_err());
        assert!(decode(&ring, &glue(&[0, 1, 3]), MAX_FRAME_PAYLOAD).is_err());
        assert!(decode(&ring, &glue(&[0, 1, 2]), MAX_FRAME_PAYLOAD).is_err());
        // A chunk from another frame under the same key does not fit either.
        let other = encode(
            &ring,
            FrameKind::Sync,
            &[5; 3 * CHUNK_DATA],
            MAX_FRAME_PAYLOAD,
            || [9; 24],
        )
        .unwrap();
        let mut w = glue(&[0]);
        w.extend_from_slice(&other[4 + chunk..4 + 2 * chunk]);
        w.extend_from_slice(chunks[2]);
        w.extend_from_slice(chunks[3]);
        assert!(decode(&ring, &w, MAX_FRAME_PAYLOAD).is_err());
    }

    #[test]
    fn bit_flips_in_a_plain_frame_are_caught() {
        let ring = Keyring::plain();
        let wire = encode(
            &ring,
            FrameKind::Sync,
            b"some push-pull bytes",
            1000,
            counter(),
        )
        .unwrap();
        for bit in 0..wire.len() * 8 {
            let mut t = wire.clone();
            t[bit / 8] ^= 1 << (bit % 8);
            let r = decode(&ring, &t, 1000);
            // A flip of the "last" bit leaves a frame that never ends: also refused.
            assert!(r.is_err(), "bit {bit} went through: {r:?}");
        }
    }

    #[test]
    fn magic_names_what_answered() {
        assert!(check_magic(MAGIC).is_ok());
        let e = check_magic(*b"HTTP").unwrap_err().to_string();
        assert!(
            e.contains("not a muster gossip port") && e.contains("HTTP"),
            "{e}"
        );
        let e = check_magic(*b"SSH-").unwrap_err().to_string();
        assert!(e.contains("text"), "{e}");
        let e = check_magic([0, 12, 1, 2]).unwrap_err().to_string();
        assert!(e.contains("00 0c 01 02"), "{e}");
    }

    #[test]
    fn refusals_are_read_and_bounded() {
        let r = refusal("no key here\n");
        assert_eq!(
            decode(&Keyring::plain(), &r, 100).err(),
            Some(FrameError::Refused("no key here ".into()))
        );
        let long = "é".repeat(300);
        let r = refusal(&long);
        assert!(r.len() <= 8 + MAX_REFUSAL);
        assert!(matches!(
            decode(&sealed(1), &r, 100),
            Err(FrameError::Refused(_))
        ));
    }

    #[test]
    fn unknown_kind_and_empty_payload_are_refused() {
        let ring = Keyring::plain();
        let mut w = encode(&ring, FrameKind::Sync, b"", 10, counter()).unwrap();
        // Rebuild chunk 0 with kind 9.
        let env = ring.seal(
            [0; 24],
            Place::Chunk(ChunkPos {
                index: 0,
                last: true,
                frame: [0; 24],
            }),
            &[9],
        );
        w.truncate(4);
        w.extend_from_slice(
            &Word::Chunk {
                len: env.len(),
                last: true,
            }
            .encode(),
        );
        w.extend_from_slice(&env);
        assert_eq!(
            decode(&ring, &w, 10).err(),
            Some(FrameError::UnknownKind(9))
        );
    }
}
