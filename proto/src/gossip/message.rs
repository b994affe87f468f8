//! The catalog messages gossip carries, and their postcard codec with size limits.
//!
//! * [`Item`]: a custom broadcast piggy-backed on SWIM packets — one part of a node's
//!   record, or a node's intent to leave. foca never sends an item larger than the room
//!   left in a packet, so a record is cut into parts of at most [`PART_DATA_BYTES`] each
//!   ([`split_record`]); almost every record fits in one.
//! * [`PushPull`]: the full state one member sends another over a stream (anti-entropy),
//!   so late joiners and healed partitions converge on every record.

use super::identity::NodeId;
use crate::model::{MemberStatus, NodeRecord};
use serde::{Deserialize, Serialize};

/// Record bytes carried by one broadcast item. With the item header and foca's own header
/// (two identities) this keeps an item well inside a 1400-byte packet, leaving room for
/// membership updates in the same packet.
pub const PART_DATA_BYTES: usize = 700;
/// The largest encoded item accepted (a part plus a generous header for long node names).
pub const MAX_ITEM_BYTES: usize = PART_DATA_BYTES + 400;
/// The largest record a node may publish, encoded. Bounds reassembly memory per node.
pub const MAX_RECORD_BYTES: usize = 512 * 1024;
/// Parts of the largest record.
pub const MAX_PARTS: u16 = MAX_RECORD_BYTES.div_ceil(PART_DATA_BYTES) as u16;
/// The largest full-state message accepted from a peer.
pub const MAX_PUSH_PULL_BYTES: usize = 64 * 1024 * 1024;

/// One custom broadcast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    /// Part `part` of `parts` of the postcard encoding of `node`'s record at `version`.
    RecordPart {
        node: String,
        version: u64,
        part: u16,
        parts: u16,
        data: Vec<u8>,
    },
    /// The member is leaving gracefully: drop its services now and list it as left.
    Leave { id: NodeId },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("message of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

impl Item {
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(data: &[u8]) -> Result<Item, MessageError> {
        if data.len() > MAX_ITEM_BYTES {
            return Err(MessageError::TooLarge(data.len(), MAX_ITEM_BYTES));
        }
        let item: Item =
            postcard::from_bytes(data).map_err(|e| MessageError::Decode(e.to_string()))?;
        if let Item::RecordPart {
            part, parts, data, ..
        } = &item
        {
            if *parts == 0 || *parts > MAX_PARTS || part >= parts {
                return Err(MessageError::Invalid("part number out of range"));
            }
            if data.len() > PART_DATA_BYTES {
                return Err(MessageError::Invalid("part larger than a part may be"));
            }
        }
        Ok(item)
    }
}

/// postcard encoding with a size cap: nothing larger than `cap` is ever produced.
fn encode_capped<T: Serialize>(value: &T, cap: usize) -> Result<Vec<u8>, MessageError> {
    let bytes = postcard::to_allocvec(value).map_err(|e| MessageError::Decode(e.to_string()))?;
    if bytes.len() > cap {
        return Err(MessageError::TooLarge(bytes.len(), cap));
    }
    Ok(bytes)
}

/// postcard decoding that refuses input over `cap` before looking at it.
fn decode_capped<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    cap: usize,
) -> Result<T, MessageError> {
    if bytes.len() > cap {
        return Err(MessageError::TooLarge(bytes.len(), cap));
    }
    postcard::from_bytes(bytes).map_err(|e| MessageError::Decode(e.to_string()))
}

/// Encodes a record for the wire (whole, as parts reassemble to).
pub fn encode_record(record: &NodeRecord) -> Result<Vec<u8>, MessageError> {
    encode_capped(record, MAX_RECORD_BYTES)
}

pub fn decode_record(bytes: &[u8]) -> Result<NodeRecord, MessageError> {
    decode_capped(bytes, MAX_RECORD_BYTES)
}

/// Cuts a record into encoded broadcast items, each within [`MAX_ITEM_BYTES`].
pub fn split_record(record: &NodeRecord) -> Result<Vec<Vec<u8>>, MessageError> {
    let bytes = encode_record(record)?;
    let chunks: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[][..]]
    } else {
        bytes.chunks(PART_DATA_BYTES).collect()
    };
    let parts = chunks.len() as u16;
    let items: Vec<Vec<u8>> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Item::RecordPart {
                node: record.name.clone(),
                version: record.version,
                part: i as u16,
                parts,
                data: c.to_vec(),
            }
            .encode()
        })
        .collect();
    if let Some(big) = items.iter().find(|i| i.len() > MAX_ITEM_BYTES) {
        // Only a node name of hundreds of bytes gets here; validation forbids those.
        return Err(MessageError::TooLarge(big.len(), MAX_ITEM_BYTES));
    }
    Ok(items)
}

/// One member's full view, exchanged over a stream: the sender's SWIM membership and every
/// record it holds with the state it holds the node in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushPull {
    pub from: NodeId,
    /// True on the first exchange of a joining node (the receiver answers with its state).
    pub join: bool,
    pub members: Vec<foca::Member<NodeId>>,
    pub records: Vec<(NodeRecord, MemberStatus)>,
}

impl PushPull {
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        encode_capped(self, MAX_PUSH_PULL_BYTES)
    }

    /// Decodes a full view. Records larger than a node may author ([`MAX_RECORD_BYTES`])
    /// are dropped, so one oversized record cannot make our own full state unsendable.
    pub fn decode(bytes: &[u8]) -> Result<PushPull, MessageError> {
        let mut pp: PushPull = decode_capped(bytes, MAX_PUSH_PULL_BYTES)?;
        pp.records.retain(|(r, _)| encode_record(r).is_ok());
        Ok(pp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Service;
    use std::collections::BTreeMap;

    #[test]
    fn push_pull_drops_records_too_large_to_author() {
        let big = record_with("big", 12_000, 1);
        assert!(
            encode_record(&big).is_err(),
            "the test record must be oversized"
        );
        let small = record_with("small", 3, 1);
        let pp = PushPull {
            from: NodeId::new("p", "127.0.0.1:1".parse().unwrap(), 1),
            join: false,
            members: vec![],
            records: vec![
                (big, MemberStatus::Alive),
                (small.clone(), MemberStatus::Alive),
            ],
        };
        let bytes = pp.encode().unwrap();
        let back = PushPull::decode(&bytes).unwrap();
        assert_eq!(back.records, vec![(small, MemberStatus::Alive)]);
    }

    pub(crate) fn record_with(name: &str, services: usize, version: u64) -> NodeRecord {
        let mut r = NodeRecord::new(name, "dc1", "10.0.0.1".parse().unwrap());
        r.version = version;
        for i in 0..services {
            let id = format!("svc-{i}");
            r.services.insert(
                id.clone(),
                Service {
                    id,
                    name: format!("service-number-{i}"),
                    tags: vec!["primary".into(), format!("t{i}")],
                    address: String::new(),
                    port: 8000 + i as u16,
                    meta: BTreeMap::new(),
                    weights: Default::default(),
                    enable_tag_override: false,
                },
            );
        }
        r
    }

    #[test]
    fn small_record_is_one_item() {
        let r = record_with("n1", 2, 5);
        let items = split_record(&r).unwrap();
        assert_eq!(items.len(), 1);
        match Item::decode(&items[0]).unwrap() {
            Item::RecordPart {
                node,
                version,
                part,
                parts,
                data,
            } => {
                assert_eq!((node.as_str(), version, part, parts), ("n1", 5, 0, 1));
                assert_eq!(decode_record(&data).unwrap(), r);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn large_record_splits_within_budget_and_reassembles() {
        let r = record_with("a-rather-long-node-name-for-testing", 300, 9);
        let items = split_record(&r).unwrap();
        assert!(items.len() > 10, "{} items", items.len());
        let mut bytes = Vec::new();
        for (i, it) in items.iter().enumerate() {
            assert!(it.len() <= MAX_ITEM_BYTES);
            let Item::RecordPart { part, data, .. } = Item::decode(it).unwrap() else {
                panic!()
            };
            assert_eq!(part as usize, i);
            bytes.extend(data);
        }
        assert_eq!(decode_record(&bytes).unwrap(), r);
    }

    #[test]
    fn hostile_items_are_errors() {
        assert!(Item::decode(&[]).is_err());
        assert!(Item::decode(&[0xff; 40]).is_err());
        assert!(Item::decode(&vec![0; MAX_ITEM_BYTES + 1]).is_err());
        let bad = Item::RecordPart {
            node: "x".into(),
            version: 1,
            part: 3,
            parts: 3,
            data: vec![],
        };
        assert!(Item::decode(&bad.encode()).is_err());
        // Every truncation of a valid item fails cleanly.
        let good = split_record(&record_with("n", 3, 1)).unwrap().remove(0);
        for n in 0..good.len() {
            let _ = Item::decode(&good[..n]);
        }
        assert!(PushPull::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn oversized_record_is_refused() {
        let r = record_with("n", 12000, 1);
        assert!(matches!(split_record(&r), Err(MessageError::TooLarge(..))));
    }
}
