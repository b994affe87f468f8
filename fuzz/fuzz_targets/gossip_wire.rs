//! Fuzz target for the gossip node's message decoders (`proto/src/gossip/wire.rs`): any
//! bytes parsed as a datagram (a SWIM packet and its trailer, a push, a pull, a last check,
//! an alive) and decoded as a stream request and as a stream reply; the SWIM packet inside
//! goes through foca's own header and member decoders, and every delta a push carries is
//! checked and applied to an empty copy. Nothing may panic; whatever is accepted is within
//! the limits, and encodes again to something that decodes to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::gossip::data::{NodeData, MAX_HELD_NODE_BYTES, MAX_NAME_BYTES, MAX_NODE_ENTRIES};
use muster_proto::gossip::foca::{self, Codec, PostcardCodec};
use muster_proto::gossip::wire::{
    self, Datagram, SyncReply, SyncRequest, MAX_ITEMS, MAX_PAYLOAD, TRAILER_HASHES,
};
use muster_proto::gossip::{Delta, NodeId};

/// What foca would take from a SWIM packet: its header, then its member updates.
fn foca_decode(packet: &[u8]) {
    let mut buf = packet;
    let Ok(header) = Codec::<NodeId>::decode_header(&mut PostcardCodec, &mut buf) else {
        return;
    };
    assert!(header.src.name().len() <= MAX_NAME_BYTES);
    if buf.len() < 2 || header.message == foca::Message::Broadcast {
        return;
    }
    let count = u16::from_be_bytes([buf[0], buf[1]]);
    let mut buf = &buf[2..];
    for _ in 0..count {
        match Codec::<NodeId>::decode_member(&mut PostcardCodec, &mut buf) {
            Ok(m) => assert!(m.id().name().len() <= MAX_NAME_BYTES),
            Err(_) => return,
        }
    }
}

/// A delta as a copy takes it: refused whole, or applied within the bounds.
fn apply(delta: &Delta) {
    let mut copy = NodeData::new();
    match copy.apply(delta) {
        Ok(_) => {
            assert!(copy.bytes() <= MAX_HELD_NODE_BYTES);
            assert!(copy.live() + copy.tombstones() <= MAX_NODE_ENTRIES);
            // Applying it again changes nothing.
            let again = copy.clone();
            assert!(copy.apply(delta).is_ok());
            assert_eq!(copy.live(), again.live());
        }
        Err(_) => assert_eq!(copy, NodeData::new()),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = wire::parse_datagram(data) {
        assert!(data.len() <= MAX_PAYLOAD);
        let again = match &d {
            Datagram::Swim { packet, trailer } => {
                assert!(trailer.len() <= TRAILER_HASHES);
                foca_decode(packet);
                wire::swim_datagram(packet, trailer)
            }
            Datagram::Push(p) => {
                assert!(p.deltas.len() + p.verdicts.len() + p.notices.len() <= MAX_ITEMS);
                for delta in &p.deltas {
                    apply(delta);
                }
                wire::push_datagram(p)
            }
            Datagram::Pull(p) => wire::pull_datagram(p),
            Datagram::Confirm(c) => wire::confirm_datagram(c),
            Datagram::Alive(a) => wire::alive_datagram(a),
        };
        assert_eq!(wire::parse_datagram(&again).as_ref(), Ok(&d));
    }
    if let Ok(r) = wire::decode_request(data) {
        if let SyncRequest::Push { deltas, .. } = &r {
            for delta in deltas {
                apply(delta);
            }
        }
        assert_eq!(wire::decode_request(&wire::encode(&r)), Ok(r));
    }
    if let Ok(r) = wire::decode_reply(data) {
        if let SyncReply::Deltas { deltas, .. } = &r {
            for delta in deltas {
                apply(delta);
            }
        }
        assert_eq!(wire::decode_reply(&wire::encode(&r)), Ok(r));
    }
});
