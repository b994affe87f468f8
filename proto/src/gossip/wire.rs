//! What travels between members, and its codec with limits checked before anything is held.
//!
//! Datagrams (UDP, one envelope each) start with a kind byte:
//! * [`KIND_SWIM`]: a foca packet, then a *trailer* of recent-change hashes (see `recent`):
//!   `[kind][foca length u16][foca bytes][count u8][count × u64]`. The trailer rides on
//!   SWIM traffic that is sent anyway, so announcing a change costs no packet of its own.
//! * [`KIND_PUSH`]: changes pushed eagerly (a [`Push`]); also the answer to a pull.
//! * [`KIND_PULL`]: a [`Pull`]: "send me these changes", by hash.
//! * [`KIND_CONFIRM`] / [`KIND_ALIVE`]: the last check before a suspect is declared down
//!   ([`Confirm`]: "you are suspected at this incarnation"; [`Alive`]: "I am, at this one").
//!
//! Streams (TCP, request then reply, each one envelope) carry the anti-entropy exchange
//! ([`SyncRequest`], [`SyncReply`]) and record fetches.
//!
//! Every decoder refuses input over its size limit before parsing, and postcard never
//! allocates more than the input could fill, so a peer cannot make us hold more than it sends.

use super::data::{Delta, Name};
use super::identity::NodeId;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const KIND_SWIM: u8 = 1;
pub const KIND_PUSH: u8 = 2;
pub const KIND_PULL: u8 = 3;
pub const KIND_CONFIRM: u8 = 4;
pub const KIND_ALIVE: u8 = 5;

/// The largest datagram payload muster sends or accepts (the envelope adds its overhead;
/// the whole stays below common MTUs).
pub const MAX_PAYLOAD: usize = 1400 - super::envelope::SEALED_OVERHEAD;
/// Room kept in every SWIM datagram for the trailer.
pub const TRAILER_HASHES: usize = 24;
pub const TRAILER_BYTES: usize = 1 + 8 * TRAILER_HASHES;
/// What foca may fill in a SWIM datagram.
pub const MAX_SWIM_PACKET: usize = MAX_PAYLOAD - 3 - TRAILER_BYTES;
/// The largest stream message (request or reply) accepted, before it is decoded; the
/// transport reads no larger frame (`frame::MAX_FRAME_PAYLOAD`). What a node sends stays
/// well below: a reply carries [`SYNC_BUDGET`] of changes plus at most one node's state
/// (`data::MAX_HELD_NODE_BYTES`), a join reply at most [`MAX_ITEMS`] members.
pub const MAX_STREAM_FRAME: usize = 8 * 1024 * 1024;
/// A sync reply stops adding node changes once it has this many bytes (it always carries at
/// least one node's, which may be up to a node's largest state).
pub const SYNC_BUDGET: usize = 2 * 1024 * 1024;
/// Most items (deltas, wants, summaries, hashes) one message may carry.
pub const MAX_ITEMS: usize = 65_536;
/// Most hashes one pull datagram asks for: each takes up to 10 bytes encoded, and the
/// whole must fit in [`MAX_PAYLOAD`] (the receiver refuses a larger datagram unread).
pub const PULL_HASHES: usize = (MAX_PAYLOAD - 8) / 10;

/// A word about a member's standing that travels like a change (pushed eagerly, announced by
/// hash, pulled), not through SWIM's piggy-backing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// An operator forced this (failed) member out: list it as left.
    ForceLeft(NodeId),
    /// This member has just joined (said by the joiner once its join exchange is done): know
    /// it as alive now. SWIM spreads a joiner only through members to whom it is news, and
    /// members that learnt it from a join reply's table are not: when many join at once, the
    /// ones that joined first could miss the later ones until their next exchange.
    Joined(NodeId),
}

/// Changes pushed to a member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    pub deltas: Vec<Delta>,
    pub verdicts: Vec<Verdict>,
    /// Changes too large for a datagram: (node, version) to fetch over a stream.
    pub notices: Vec<(Name, u64)>,
    /// An eager push (the receiver passes news on); false for answers to pulls.
    pub relay: bool,
}

/// A request for changes announced by hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    pub hashes: Vec<u64>,
}

/// "You are suspected at this incarnation": sent to a suspect before it is declared down.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirm {
    pub target: NodeId,
    pub incarnation: u16,
}

/// The answer of a live suspect: an incarnation above the one suspected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    pub id: NodeId,
    pub incarnation: u16,
}

/// What one member holds of a node, as digests compare it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub id: NodeId,
    pub version: u64,
    /// The run of the owner that state follows.
    pub run: u64,
    /// Whether the sender counts the node as up (alive or suspect).
    pub up: bool,
    /// The boot stamp the node left (or was forced out) under, 0 if none.
    pub left_boot: u64,
}

/// A node whose changes the sender lacks, and what it holds of it: (name, version, run).
pub type Want = (Name, u64, u64);

/// A stream request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Opens an anti-entropy exchange (or a join): the sender's digest root, and what the
    /// sender holds of the server itself (a server held as down learns it here).
    Open {
        from: NodeId,
        join: bool,
        root: u64,
        you: Option<Summary>,
    },
    /// The sender's summaries of every node in the buckets whose hashes differ.
    Compare {
        from: NodeId,
        buckets: Vec<u8>,
        nodes: Vec<Summary>,
    },
    /// Changes the server said it lacks.
    Push { from: NodeId, deltas: Vec<Delta> },
    /// Named nodes the sender lacks changes of, with what it holds of each.
    Fetch { from: NodeId, wants: Vec<Want> },
}

impl SyncRequest {
    pub fn from(&self) -> &NodeId {
        match self {
            SyncRequest::Open { from, .. }
            | SyncRequest::Compare { from, .. }
            | SyncRequest::Push { from, .. }
            | SyncRequest::Fetch { from, .. } => from,
        }
    }
}

/// A stream reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncReply {
    Open {
        server: NodeId,
        /// What the server holds of the client itself (a restarted client learns its
        /// previous boot stamp and version from this).
        you: Option<Summary>,
        root: u64,
        /// The server's bucket hashes, when the roots differ.
        buckets: Option<Vec<u64>>,
        /// The server's member table, on a join.
        members: Vec<foca::Member<NodeId>>,
        /// On a join, the members the server holds as failed or left (a joiner lists them
        /// too, as every member does).
        departed: Vec<Summary>,
    },
    Deltas {
        /// What the client lacks (within the budget).
        deltas: Vec<Delta>,
        /// Nodes the server lacks changes of, with what it holds of each.
        wants: Vec<Want>,
        /// The server's summaries of nodes the client did not list (it does not know them).
        summaries: Vec<Summary>,
        /// The budget ran out: ask again for the rest.
        more: bool,
    },
    Done,
}

/// Why a message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("empty message")]
    Empty,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("truncated message")]
    Truncated,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("message carries {0} items, over the limit of {MAX_ITEMS}")]
    TooManyItems(usize),
    #[error("unencodable message: {0}")]
    Encode(String),
}

/// postcard encoding (plain data into a Vec cannot fail).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// postcard decoding that refuses input over `cap` before looking at it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], cap: usize) -> Result<T, WireError> {
    if bytes.len() > cap {
        return Err(WireError::TooLarge(bytes.len(), cap));
    }
    postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))
}

/// A datagram, split into its parts.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    Swim { packet: &'a [u8], trailer: Vec<u64> },
    Push(Push),
    Pull(Pull),
    Confirm(Confirm),
    Alive(Alive),
}

/// Builds a SWIM datagram: the foca packet and up to [`TRAILER_HASHES`] hashes.
pub fn swim_datagram(packet: &[u8], trailer: &[u64]) -> Vec<u8> {
    let n = trailer.len().min(TRAILER_HASHES);
    let mut out = Vec::with_capacity(3 + packet.len() + 1 + 8 * n);
    out.push(KIND_SWIM);
    out.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    out.extend_from_slice(packet);
    if n > 0 {
        out.push(n as u8);
        for h in &trailer[..n] {
            out.extend_from_slice(&h.to_le_bytes());
        }
    }
    out
}

pub fn push_datagram(push: &Push) -> Vec<u8> {
    let mut out = vec![KIND_PUSH];
    out.extend(encode(push));
    out
}

pub fn pull_datagram(pull: &Pull) -> Vec<u8> {
    let mut out = vec![KIND_PULL];
    out.extend(encode(pull));
    out
}

pub fn confirm_datagram(c: &Confirm) -> Vec<u8> {
    let mut out = vec![KIND_CONFIRM];
    out.extend(encode(c));
    out
}

pub fn alive_datagram(a: &Alive) -> Vec<u8> {
    let mut out = vec![KIND_ALIVE];
    out.extend(encode(a));
    out
}

/// Encodes a SWIM packet as foca does: its header, then the member updates it carries
/// (`[header][count u16][member]*`). The node never needs it (foca encodes its own); tools
/// and tests that speak to a node as a peer would do.
pub fn swim_packet(
    header: &foca::Header<NodeId>,
    updates: &[foca::Member<NodeId>],
) -> Result<Vec<u8>, WireError> {
    let mut out = postcard::to_allocvec(header).map_err(|e| WireError::Encode(e.to_string()))?;
    if !updates.is_empty() {
        let n = u16::try_from(updates.len()).map_err(|_| WireError::TooManyItems(updates.len()))?;
        out.extend_from_slice(&n.to_be_bytes());
        for m in updates {
            out = postcard::to_extend(m, out).map_err(|e| WireError::Encode(e.to_string()))?;
        }
    }
    Ok(out)
}

/// Parses a datagram payload (after the envelope is opened).
pub fn parse_datagram(bytes: &[u8]) -> Result<Datagram<'_>, WireError> {
    if bytes.len() > MAX_PAYLOAD {
        return Err(WireError::TooLarge(bytes.len(), MAX_PAYLOAD));
    }
    let (&kind, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    match kind {
        KIND_SWIM => {
            if rest.len() < 2 {
                return Err(WireError::Truncated);
            }
            let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let rest = &rest[2..];
            if rest.len() < len {
                return Err(WireError::Truncated);
            }
            let (packet, tail) = rest.split_at(len);
            let mut trailer = Vec::new();
            if let Some((&n, hashes)) = tail.split_first() {
                let n = n as usize;
                if n > TRAILER_HASHES || hashes.len() != 8 * n {
                    return Err(WireError::Truncated);
                }
                trailer = hashes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                    .collect();
            }
            Ok(Datagram::Swim { packet, trailer })
        }
        KIND_PUSH => {
            let push: Push = decode(rest, MAX_PAYLOAD)?;
            let items = push.deltas.len() + push.verdicts.len() + push.notices.len();
            if items > MAX_ITEMS {
                return Err(WireError::TooManyItems(items));
            }
            Ok(Datagram::Push(push))
        }
        KIND_PULL => Ok(Datagram::Pull(decode(rest, MAX_PAYLOAD)?)),
        KIND_CONFIRM => Ok(Datagram::Confirm(decode(rest, MAX_PAYLOAD)?)),
        KIND_ALIVE => Ok(Datagram::Alive(decode(rest, MAX_PAYLOAD)?)),
        k => Err(WireError::UnknownKind(k)),
    }
}

pub fn decode_request(bytes: &[u8]) -> Result<SyncRequest, WireError> {
    let r: SyncRequest = decode(bytes, MAX_STREAM_FRAME)?;
    let items = match &r {
        SyncRequest::Open { .. } => 0,
        SyncRequest::Compare { buckets, nodes, .. } => buckets.len() + nodes.len(),
        SyncRequest::Push { deltas, .. } => deltas.len(),
        SyncRequest::Fetch { wants, .. } => wants.len(),
    };
    if items > MAX_ITEMS {
        return Err(WireError::TooManyItems(items));
    }
    Ok(r)
}

pub fn decode_reply(bytes: &[u8]) -> Result<SyncReply, WireError> {
    let r: SyncReply = decode(bytes, MAX_STREAM_FRAME)?;
    let items = match &r {
        SyncReply::Open {
            buckets,
            members,
            departed,
            ..
        } => buckets.as_ref().map_or(0, |b| b.len()) + members.len() + departed.len(),
        SyncReply::Deltas {
            deltas,
            wants,
            summaries,
            ..
        } => deltas.len() + wants.len() + summaries.len(),
        SyncReply::Done => 0,
    };
    if items > MAX_ITEMS {
        return Err(WireError::TooManyItems(items));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::data::{EntryKey, Value, WireEntry};

    fn id() -> NodeId {
        NodeId::new("n", "127.0.0.1:8301".parse().unwrap(), 1)
    }

    #[test]
    fn datagrams_round_trip() {
        let d = swim_datagram(b"foca", &[1, 2, 3]);
        assert_eq!(
            parse_datagram(&d).unwrap(),
            Datagram::Swim {
                packet: b"foca",
                trailer: vec![1, 2, 3]
            }
        );
        let d = swim_datagram(b"foca", &[]);
        assert_eq!(
            parse_datagram(&d).unwrap(),
            Datagram::Swim {
                packet: b"foca",
                trailer: vec![]
            }
        );
        let push = Push {
            deltas: vec![Delta {
                node: "n".into(),
                run: 1,
                from: 1,
                to: 2,
                full: false,
                entries: vec![WireEntry {
                    key: EntryKey::Leave,
                    version: 2,
                    value: Some(Value::Leave(7)),
                }],
            }],
            verdicts: vec![Verdict::ForceLeft(id())],
            notices: vec![("m".into(), 9)],
            relay: true,
        };
        assert_eq!(
            parse_datagram(&push_datagram(&push)).unwrap(),
            Datagram::Push(push)
        );
        let pull = Pull { hashes: vec![5, 6] };
        assert_eq!(
            parse_datagram(&pull_datagram(&pull)).unwrap(),
            Datagram::Pull(pull)
        );
        let c = Confirm {
            target: id(),
            incarnation: 3,
        };
        assert_eq!(
            parse_datagram(&confirm_datagram(&c)).unwrap(),
            Datagram::Confirm(c)
        );
        let a = Alive {
            id: id(),
            incarnation: 4,
        };
        assert_eq!(
            parse_datagram(&alive_datagram(&a)).unwrap(),
            Datagram::Alive(a)
        );
    }

    #[test]
    fn hostile_datagrams_are_errors() {
        assert!(parse_datagram(&[]).is_err());
        assert!(parse_datagram(&[9]).is_err());
        assert!(parse_datagram(&[KIND_SWIM, 0xff, 0xff, 1]).is_err());
        assert!(parse_datagram(&[KIND_SWIM, 0, 1, 7, 3, 1]).is_err());
        assert!(parse_datagram(&vec![KIND_PUSH; MAX_PAYLOAD + 1]).is_err());
        assert!(parse_datagram(&[KIND_PUSH, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        let good = push_datagram(&Push::default());
        for n in 0..good.len() {
            let _ = parse_datagram(&good[..n]);
        }
    }

    #[test]
    fn a_full_pull_fits_in_a_datagram() {
        let pull = Pull {
            hashes: vec![u64::MAX; PULL_HASHES],
        };
        let d = pull_datagram(&pull);
        assert!(d.len() <= MAX_PAYLOAD, "{} bytes", d.len());
        assert_eq!(parse_datagram(&d).unwrap(), Datagram::Pull(pull));
    }

    #[test]
    fn stream_messages_round_trip_and_refuse_oversize() {
        let r = SyncRequest::Fetch {
            from: id(),
            wants: vec![("a".into(), 3, 1)],
        };
        assert_eq!(decode_request(&encode(&r)).unwrap(), r);
        let reply = SyncReply::Deltas {
            deltas: vec![],
            wants: vec![],
            summaries: vec![Summary {
                id: id(),
                version: 4,
                run: 1,
                up: true,
                left_boot: 0,
            }],
            more: false,
        };
        assert_eq!(decode_reply(&encode(&reply)).unwrap(), reply);
        assert!(decode_reply(&vec![0; MAX_STREAM_FRAME + 1]).is_err());
        assert!(decode_request(&[7, 7, 7]).is_err());
    }
}
