//! Fuzz target for the gossip stream reader's decoding path: any bytes decoded as a whole
//! stream frame (magic, chunk words, refusals, chunk envelopes) with a plain and a sealed
//! keyring; and, so that the fuzzer gets past the checksum, the same bytes cut into
//! chunks of a well-formed plain frame whose payload then goes through the frame-kind
//! dispatch (sync → the gossip node's request and reply decoders, keyring → the keyring
//! codec).

#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::gossip::envelope::{ChunkPos, Keyring, Place, Policy};
use muster_proto::gossip::frame::{self, FrameKind, MAGIC};
use muster_proto::gossip::wire;
use std::sync::LazyLock;

const LIMIT: usize = 1 << 20;

static SEALED: LazyLock<Keyring> =
    LazyLock::new(|| Keyring::new([[1; 32]], Policy::default()).unwrap());

fn dispatch(f: &frame::Frame) {
    match f.kind {
        FrameKind::Sync => {
            let _ = wire::decode_request(&f.body);
            let _ = wire::decode_reply(&f.body);
        }
        FrameKind::Keyring => {
            let _ = muster_proto::keyring::Op::decode(&f.body);
            let _ = muster_proto::keyring::Reply::decode(&f.body);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for ring in [&Keyring::plain(), &*SEALED] {
        if let Ok(f) = frame::decode(ring, data, LIMIT) {
            assert!(f.body.len() < LIMIT);
            dispatch(&f);
        }
    }
    // Well-formed plain framing around fuzzed chunk payloads: the first byte picks the
    // chunk size, the rest is the payload (kind byte first).
    let Some((&size, payload)) = data.split_first() else {
        return;
    };
    let size = usize::from(size).max(1) * 4;
    let ring = Keyring::plain();
    let mut wire = MAGIC.to_vec();
    let pieces: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(size).collect()
    };
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let env = ring.seal(
            [0; 24],
            Place::Chunk(ChunkPos {
                index: i as u32,
                last,
                frame: [0; 24],
            }),
            piece,
        );
        let word = (env.len() as u32) | if last { 1 << 31 } else { 0 };
        wire.extend_from_slice(&word.to_be_bytes());
        wire.extend_from_slice(&env);
    }
    match frame::decode(&ring, &wire, LIMIT) {
        Ok(f) => {
            assert_eq!(f.kind as u8, payload[0]);
            assert_eq!(f.body, payload[1..]);
            dispatch(&f);
        }
        Err(_) => assert!(payload
            .first()
            .is_none_or(|k| FrameKind::from_byte(*k).is_none())),
    }
});
