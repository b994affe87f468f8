//! Fuzz target for the HTTP registration body parser: any bytes as the body of
//! `PUT /v1/agent/service/register` (JSON, then Consul's field rules and validation) and
//! of `PUT /v1/agent/check/register`. Nothing may panic, and an accepted registration
//! must be valid by the same rules the catalog applies.

#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::consul::{parse_check, parse_registration};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(reg) = parse_registration(&body) {
        muster_proto::validate::service(&reg.service).expect("accepted service is valid");
        assert!(!reg.service.id.is_empty());
        for c in &reg.checks {
            assert_eq!(c.service_id, reg.service.id);
        }
    }
    let _ = parse_check(&body, "body", "", "");
});
