//! Fuzz target for the DNS query path: any bytes through parse, precheck, resolve, respond
//! and encode, over both transports, against a small catalog with every kind of answer.
//! Run with `cargo +nightly fuzz run dns_query` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use muster_proto::dns::fast::{parse_simple, write_reply, Prepared, Scratch};
use muster_proto::dns::{handle_packet, resolve, Action, DnsSettings, Lookup, Transport};
use muster_proto::model::{
    Check, CheckKind, HealthStatus, MemberStatus, NodeRecord, Service, Weights,
};
use muster_proto::{Catalog, Snapshot};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::sync::LazyLock;

static CATALOG: LazyLock<Snapshot> = LazyLock::new(|| {
    let mut c = Catalog::new();
    for (i, ip) in ["10.0.0.1", "10.0.0.2", "fd00::3"].iter().enumerate() {
        let mut r = NodeRecord::new(format!("node{i}"), "dc1", ip.parse().unwrap());
        r.version = 1;
        r.meta.insert("rack".into(), format!("r{i}"));
        for j in 0..4 {
            let id = format!("web-{j}");
            let mut meta = std::collections::BTreeMap::new();
            meta.insert("v".into(), j.to_string());
            r.put_service(std::sync::Arc::new(Service {
                id: id.clone(),
                name: "web".into(),
                tags: vec![format!("t{j}")],
                address: if j == 1 {
                    "192.168.0.9".into()
                } else if j == 2 {
                    "host.example".into()
                } else {
                    String::new()
                },
                port: 8000 + j,
                meta,
                weights: Weights {
                    passing: 5,
                    warning: 1,
                },
                enable_tag_override: false,
            }));
            if j == 3 {
                r.put_check(std::sync::Arc::new(Check {
                    id: "c".into(),
                    name: "c".into(),
                    status: HealthStatus::Warning,
                    notes: String::new(),
                    output: String::new(),
                    service_id: id,
                    kind: CheckKind::Ttl { ttl_ms: 1000 },
                    deregister_critical_after_ms: 0,
                    status_changed_ms: 0,
                }));
            }
        }
        let _ = c.apply_record(r, MemberStatus::Alive, None, 0);
    }
    c.snapshot()
});

static PLAIN: LazyLock<DnsSettings> =
    LazyLock::new(|| DnsSettings::new("local", 30, 5, false, 3, false).unwrap());
static RECURSING: LazyLock<DnsSettings> =
    LazyLock::new(|| DnsSettings::new("local", 0, 0, true, 1, true).unwrap());

fuzz_target!(|data: &[u8]| {
    let mut rng = SmallRng::seed_from_u64(data.len() as u64);
    // The fast path, when it takes the packet: its reply must decode too.
    if let Some(q) = parse_simple(data) {
        if let Ok(name) = q.decode_name() {
            if let Lookup::Local(res) = resolve(&name, q.record_type(), &PLAIN, &CATALOG) {
                let prepared = Prepared::new(&res).expect("prepares");
                let mut out = Vec::new();
                write_reply(
                    &q,
                    &prepared,
                    &PLAIN,
                    Transport::Udp,
                    &mut rng,
                    &mut Scratch::default(),
                    &mut out,
                );
                let m = hickory_proto::op::Message::from_vec(&out).expect("fast reply decodes");
                assert_eq!(m.metadata.id, q.id);
                assert!(out.len() <= 1232);
            }
        }
    }
    for (settings, transport) in [(&*PLAIN, Transport::Udp), (&*RECURSING, Transport::Tcp)] {
        if let Action::Reply { bytes, .. } =
            handle_packet(data, settings, &CATALOG, transport, &mut rng)
        {
            // Our own replies must always decode and echo the id.
            let m = hickory_proto::op::Message::from_vec(&bytes).expect("reply decodes");
            assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]));
            if transport == Transport::Udp {
                assert!(bytes.len() <= 1232);
            }
        }
    }
});
