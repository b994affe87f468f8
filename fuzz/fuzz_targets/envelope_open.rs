//! Fuzz target for the gossip envelope opener: any bytes opened as a datagram and as a
//! stream chunk by keyrings of every shape (no key, one key, two keys, relaxed verify
//! settings). Nothing may panic; anything that opens must re-seal to something that
//! opens to the same payload. See the README's "Fuzzing" section for how it is run.

#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::gossip::envelope::{ChunkPos, Keyring, OpenedBy, Place, Policy};
use std::sync::LazyLock;

static RINGS: LazyLock<Vec<Keyring>> = LazyLock::new(|| {
    let relaxed = Policy {
        verify_incoming: false,
        verify_outgoing: false,
    };
    vec![
        Keyring::plain(),
        Keyring::new([[1; 32]], Policy::default()).unwrap(),
        Keyring::new([[1; 32], [2; 32]], Policy::default()).unwrap(),
        Keyring::new([[2; 32]], relaxed).unwrap(),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let ring = &RINGS[sel as usize % RINGS.len()];
    let places = [
        Place::Datagram,
        Place::Chunk(ChunkPos {
            index: u32::from(sel >> 2),
            last: sel & 2 != 0,
            frame: [0; 24],
        }),
    ];
    for place in places {
        if let Ok(opened) = ring.open(place, rest) {
            // What opened re-seals and opens again to the same payload.
            let again = ring.seal([7; 24], place, &opened.payload);
            let back = ring.open(place, &again).expect("re-sealed envelope opens");
            assert_eq!(back.payload, opened.payload);
            if let OpenedBy::Key(k) = &opened.by {
                assert!(ring.contains(k.raw()));
            }
        }
        let _ = ring.open_as(&OpenedBy::Plain, place, rest);
    }
});
