//! Fuzz target for the keyring operation codec (kind-2 stream frames): any bytes decoded
//! as a request and as a reply; whatever decodes must encode back to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::keyring::{Op, Reply, Summary, MAX_REPLY, MAX_REQUEST};

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = Op::decode(data) {
        assert!(data.len() <= MAX_REQUEST);
        assert_eq!(op.encode(), data);
    }
    if let Ok(reply) = Reply::decode(data) {
        assert!(data.len() <= MAX_REPLY);
        assert_eq!(reply.encode(), data);
        let s = Summary::of(std::slice::from_ref(&reply), &[]);
        assert_eq!(s.num_nodes, 1);
        let _ = muster_proto::keyring::precheck(&Op::Use([0; 32]), &[reply]);
    }
});
