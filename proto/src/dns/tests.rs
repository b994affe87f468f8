//! Unit tests of the DNS answer rules: one test per form, rcode, flag and size rule, plus a
//! robustness run over random and mutated packets.

use super::*;
use crate::catalog::Catalog;
use crate::model::{Check, CheckKind, MemberStatus, NodeRecord, Service, Weights};
use hickory_proto::op::Edns;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::collections::BTreeSet;

fn svc(id: &str, name: &str, tags: &[&str], address: &str, port: u16) -> Service {
    Service {
        id: id.into(),
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        address: address.into(),
        port,
        meta: BTreeMap::new(),
        weights: Weights {
            passing: 10,
            warning: 1,
        },
        enable_tag_override: false,
    }
}

fn check(id: &str, service_id: &str, status: HealthStatus) -> Check {
    Check {
        id: id.into(),
        name: id.into(),
        status,
        notes: String::new(),
        output: String::new(),
        service_id: service_id.into(),
        kind: CheckKind::Ttl { ttl_ms: 10_000 },
        deregister_critical_after_ms: 0,
        status_changed_ms: 0,
    }
}

fn node(name: &str, ip: &str, services: Vec<Service>, checks: Vec<Check>) -> NodeRecord {
    let mut r = NodeRecord::new(name, "dc1", ip.parse().unwrap());
    r.version = 1;
    for s in services {
        r.put_service(std::sync::Arc::new(s));
    }
    for c in checks {
        r.put_check(std::sync::Arc::new(c));
    }
    r
}

/// web: three instances on three nodes (a passing, b warning, c critical), one with its own
/// address; db on node a only; node a has meta.
fn catalog() -> Catalog {
    let mut c = Catalog::new();
    let mut web_a = svc("web-a", "web", &["primary", "v1"], "", 8080);
    web_a.meta.insert("version".into(), "1.2".into());
    let mut a = node(
        "alpha",
        "10.0.0.1",
        vec![web_a, svc("db", "db", &[], "", 5432)],
        vec![],
    );
    a.meta.insert("rack".into(), "r1".into());
    let b = node(
        "Bravo",
        "10.0.0.2",
        vec![svc("web-b", "web", &["v1"], "192.168.1.2", 8081)],
        vec![check("warn", "web-b", HealthStatus::Warning)],
    );
    let cc = node(
        "charlie",
        "10.0.0.3",
        vec![svc("web-c", "web", &["v1"], "", 8082)],
        vec![check("crit", "web-c", HealthStatus::Critical)],
    );
    let v6 = node(
        "delta",
        "fd00::4",
        vec![svc("api", "api", &[], "", 9000)],
        vec![],
    );
    for r in [a, b, cc, v6] {
        c.apply_record(r, MemberStatus::Alive, None, 0).unwrap();
    }
    c
}

fn settings() -> DnsSettings {
    DnsSettings::new("Local.", 30, 5, false, 3, false).unwrap()
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn with_edns(mut m: Message, size: u16) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(size);
    m.set_edns(e);
    m
}

struct Reply {
    msg: Message,
    len: usize,
}

fn run_with(q: &Message, s: &DnsSettings, snap: &Snapshot, t: Transport) -> Reply {
    let mut rng = StdRng::seed_from_u64(7);
    match answer(q, s, snap, t, &mut rng) {
        Action::Reply { bytes, rcode } => {
            let msg = Message::from_vec(&bytes).expect("reply decodes");
            // compared as numbers: 16 decodes as BADSIG, the TSIG name of BADVERS
            assert_eq!(
                u16::from(msg.metadata.response_code),
                u16::from(rcode),
                "rcode reported as sent"
            );
            Reply {
                msg,
                len: bytes.len(),
            }
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn run(name: &str, qtype: RecordType) -> Message {
    let snap = catalog().snapshot();
    run_with(&query(name, qtype), &settings(), &snap, Transport::Udp).msg
}

fn a_addrs(m: &Message) -> BTreeSet<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn assert_soa_only(m: &Message, rcode: ResponseCode) {
    assert_eq!(m.metadata.response_code, rcode);
    assert!(m.answers.is_empty(), "no answers: {:?}", m.answers);
    assert_eq!(m.authorities.len(), 1);
    let soa = &m.authorities[0];
    assert_eq!(soa.record_type(), RecordType::SOA);
    assert_eq!(soa.name.to_ascii(), "local.");
    assert_eq!(soa.ttl, 5, "negative TTL");
    match &soa.data {
        RData::SOA(s) => assert_eq!(s.minimum, 5),
        other => panic!("not a SOA: {other:?}"),
    }
}

#[test]
fn service_a_has_healthy_instances_only() {
    let m = run("web.service.local.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    // alpha passing, bravo warning (own address), charlie critical left out
    assert_eq!(
        a_addrs(&m),
        BTreeSet::from(["10.0.0.1".to_string(), "192.168.1.2".to_string()])
    );
    assert!(m.answers.iter().all(|r| r.ttl == 30));
    assert!(m.metadata.authoritative);
    assert!(!m.metadata.recursion_available);
}

#[test]
fn only_passing_drops_warning_instances() {
    let snap = catalog().snapshot();
    let s = DnsSettings::new("local", 30, 5, true, 3, false).unwrap();
    let r = run_with(
        &query("web.service.local.", RecordType::A),
        &s,
        &snap,
        Transport::Udp,
    );
    assert_eq!(a_addrs(&r.msg), BTreeSet::from(["10.0.0.1".to_string()]));
}

#[test]
fn tag_forms_filter_by_tag() {
    let m = run("primary.web.service.local.", RecordType::A);
    assert_eq!(a_addrs(&m), BTreeSet::from(["10.0.0.1".to_string()]));
    let m = run("_web._primary.service.local.", RecordType::A);
    assert_eq!(a_addrs(&m), BTreeSet::from(["10.0.0.1".to_string()]));
    // _tcp means any tag
    let m = run("_web._tcp.service.local.", RecordType::SRV);
    assert_eq!(m.answers.len(), 2);
    // a tag nobody has: no healthy instance
    let m = run("nope.web.service.local.", RecordType::A);
    assert_soa_only(&m, ResponseCode::NXDomain);
    let m = run("_web._nope.service.local.", RecordType::SRV);
    assert_soa_only(&m, ResponseCode::NXDomain);
}

#[test]
fn srv_weights_targets_and_glue() {
    let m = run("web.service.local.", RecordType::SRV);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let mut seen = Vec::new();
    for r in &m.answers {
        let RData::SRV(s) = &r.data else {
            panic!("not SRV: {r:?}")
        };
        assert_eq!(s.priority, 1);
        seen.push((s.target.to_ascii(), s.port, s.weight));
    }
    seen.sort();
    assert_eq!(
        seen,
        vec![
            // node address: node target; passing weight
            ("alpha.node.local.".to_string(), 8080, 10),
            // own address: .addr target; warning weight
            ("c0a80102.addr.local.".to_string(), 8081, 1),
        ]
    );
    let glue: BTreeSet<(String, String)> = m
        .additionals
        .iter()
        .map(|r| (r.name.to_ascii(), r.data.to_string()))
        .collect();
    assert_eq!(
        glue,
        BTreeSet::from([
            ("alpha.node.local.".to_string(), "10.0.0.1".to_string()),
            (
                "c0a80102.addr.local.".to_string(),
                "192.168.1.2".to_string()
            ),
        ])
    );
}

#[test]
fn txt_from_service_and_node_meta() {
    let m = run("web.service.local.", RecordType::TXT);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].data.to_string(), "version=1.2");
    let m = run("alpha.node.local.", RecordType::TXT);
    assert_eq!(m.answers[0].data.to_string(), "rack=r1");
    // db has no meta: the name exists, the type does not
    let m = run("db.service.local.", RecordType::TXT);
    assert_soa_only(&m, ResponseCode::NoError);
}

#[test]
fn node_and_addr_lookups() {
    let m = run("ALPHA.node.local.", RecordType::A);
    assert_eq!(a_addrs(&m), BTreeSet::from(["10.0.0.1".to_string()]));
    let m = run("bravo.node.local.", RecordType::A);
    assert_eq!(a_addrs(&m), BTreeSet::from(["10.0.0.2".to_string()]));
    let m = run("delta.node.local.", RecordType::AAAA);
    assert_eq!(a_addrs(&m), BTreeSet::from(["fd00::4".to_string()]));
    let m = run("delta.node.local.", RecordType::A);
    assert_soa_only(&m, ResponseCode::NoError);
    let m = run("nobody.node.local.", RecordType::A);
    assert_soa_only(&m, ResponseCode::NXDomain);
    let m = run("7f000001.addr.local.", RecordType::A);
    assert_eq!(a_addrs(&m), BTreeSet::from(["127.0.0.1".to_string()]));
    let m = run(
        "fd000000000000000000000000000004.addr.local.",
        RecordType::AAAA,
    );
    assert_eq!(a_addrs(&m), BTreeSet::from(["fd00::4".to_string()]));
    let m = run("7f0001.addr.local.", RecordType::A);
    assert_soa_only(&m, ResponseCode::NXDomain);
    let m = run("zz000001.addr.local.", RecordType::A);
    assert_soa_only(&m, ResponseCode::NXDomain);
}

#[test]
fn failed_node_is_not_served() {
    let mut c = catalog();
    c.set_status("alpha", MemberStatus::Failed, 1).unwrap();
    let snap = c.snapshot();
    let s = settings();
    let r = run_with(
        &query("alpha.node.local.", RecordType::A),
        &s,
        &snap,
        Transport::Udp,
    );
    assert_soa_only(&r.msg, ResponseCode::NXDomain);
    let r = run_with(
        &query("db.service.local.", RecordType::A),
        &s,
        &snap,
        Transport::Udp,
    );
    assert_soa_only(&r.msg, ResponseCode::NXDomain);
}

#[test]
fn ipv6_service_and_nodata() {
    let m = run("api.service.local.", RecordType::AAAA);
    assert_eq!(a_addrs(&m), BTreeSet::from(["fd00::4".to_string()]));
    let m = run("api.service.local.", RecordType::A);
    assert_soa_only(&m, ResponseCode::NoError);
    let m = run("web.service.local.", RecordType::MX);
    assert_soa_only(&m, ResponseCode::NoError);
    let m = run("api.service.local.", RecordType::SRV);
    let glue: Vec<String> = m.additionals.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(glue, vec!["fd00::4".to_string()]);
}

#[test]
fn any_is_answered_with_addresses() {
    let m = run("web.service.local.", RecordType::ANY);
    assert_eq!(a_addrs(&m).len(), 2);
    assert!(m
        .answers
        .iter()
        .all(|r| matches!(r.record_type(), RecordType::A | RecordType::AAAA)));
}

#[test]
fn unknown_names_are_nxdomain_with_soa() {
    for name in [
        "nothing.service.local.",
        "web.services.local.",
        "local-thing.local.",
        "a.b.c.d.service.local.",
        "service.local.",
    ] {
        let m = run(name, RecordType::A);
        assert_soa_only(&m, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative, "{name}");
    }
    // a service whose every instance is critical
    let mut c = Catalog::new();
    c.apply_record(
        node(
            "n",
            "10.1.1.1",
            vec![svc("x", "x", &[], "", 1)],
            vec![check("c", "x", HealthStatus::Critical)],
        ),
        MemberStatus::Alive,
        None,
        0,
    )
    .unwrap();
    let r = run_with(
        &query("x.service.local.", RecordType::A),
        &settings(),
        &c.snapshot(),
        Transport::Udp,
    );
    assert_soa_only(&r.msg, ResponseCode::NXDomain);
}

#[test]
fn apex_answers_soa() {
    let m = run("local.", RecordType::SOA);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let m = run("local.", RecordType::A);
    assert_soa_only(&m, ResponseCode::NoError);
}

#[test]
fn outside_domain_is_refused_or_forwarded() {
    let m = run("example.com.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    assert!(!m.metadata.recursion_available);
    assert_eq!(m.queries.len(), 1);
    // "local" as a label further left is still outside
    let m = run("local.example.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    let snap = catalog().snapshot();
    let s = DnsSettings::new("local", 0, 0, false, 3, true).unwrap();
    let mut rng = StdRng::seed_from_u64(1);
    let q = query("example.com.", RecordType::A);
    assert_eq!(
        answer(&q, &s, &snap, Transport::Udp, &mut rng),
        Action::Forward
    );
    // RA is advertised only with recursors
    let r = run_with(
        &query("web.service.local.", RecordType::A),
        &s,
        &snap,
        Transport::Udp,
    );
    assert!(r.msg.metadata.recursion_available);
}

#[test]
fn header_rules_formerr_notimp_badvers() {
    let snap = catalog().snapshot();
    let s = settings();
    let mut two = query("web.service.local.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("db.service.local.").unwrap(),
        RecordType::A,
    ));
    let r = run_with(&two, &s, &snap, Transport::Udp);
    assert_eq!(r.msg.metadata.response_code, ResponseCode::FormErr);
    assert!(r.msg.queries.is_empty());

    let none = Message::new(9, MessageType::Query, OpCode::Query);
    let r = run_with(&none, &s, &snap, Transport::Udp);
    assert_eq!(r.msg.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.msg.metadata.id, 9);

    for op in [
        OpCode::Status,
        OpCode::Notify,
        OpCode::Update,
        OpCode::Unknown(7),
    ] {
        let mut q = query("web.service.local.", RecordType::A);
        q.metadata.op_code = op;
        let r = run_with(&q, &s, &snap, Transport::Udp);
        assert_eq!(r.msg.metadata.response_code, ResponseCode::NotImp, "{op:?}");
        assert_eq!(r.msg.metadata.op_code, op);
    }

    let mut q = query("web.service.local.", RecordType::A);
    let mut e = Edns::new();
    e.set_version(1);
    q.set_edns(e);
    let r = run_with(&q, &s, &snap, Transport::Udp);
    assert_eq!(u16::from(r.msg.metadata.response_code), 16, "BADVERS");
    assert!(r.msg.edns.is_some());

    let mut q = query("web.service.local.", RecordType::A);
    q.queries[0].set_query_class(DNSClass::CH);
    let r = run_with(&q, &s, &snap, Transport::Udp);
    assert_eq!(r.msg.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn names_are_case_insensitive_and_question_is_echoed() {
    let snap = catalog().snapshot();
    let q = query("WeB.SeRvIcE.LoCaL.", RecordType::A);
    let r = run_with(&q, &settings(), &snap, Transport::Udp);
    assert_eq!(a_addrs(&r.msg).len(), 2);
    assert_eq!(r.msg.metadata.id, 0x1234);
    assert!(r.msg.metadata.recursion_desired);
    assert_eq!(r.msg.queries.len(), 1);
    assert!(r.msg.queries[0]
        .name()
        .eq_case(&Name::from_ascii("WeB.SeRvIcE.LoCaL.").unwrap()));
    assert!(r
        .msg
        .answers
        .iter()
        .all(|a| a.name.to_ascii() == "WeB.SeRvIcE.LoCaL."));
    // tags too
    let r = run_with(
        &query("PRIMARY.web.service.local.", RecordType::A),
        &settings(),
        &snap,
        Transport::Udp,
    );
    assert_eq!(a_addrs(&r.msg).len(), 1);
}

/// A catalog with `n` passing instances of `many` on distinct nodes.
fn many(n: usize) -> Snapshot {
    let mut c = Catalog::new();
    for i in 0..n {
        let ip = format!("10.9.{}.{}", i / 250, i % 250 + 1);
        c.apply_record(
            node(
                &format!("node-with-a-longish-name-{i}"),
                &ip,
                vec![svc("m", "many", &[], "", 1000 + i as u16)],
                vec![],
            ),
            MemberStatus::Alive,
            None,
            0,
        )
        .unwrap();
    }
    c.snapshot()
}

#[test]
fn answers_are_shuffled_per_query() {
    let snap = many(6);
    let s = settings();
    let q = with_edns(query("many.service.local.", RecordType::A), 1232);
    let mut rng = StdRng::seed_from_u64(99);
    let mut orders = BTreeSet::new();
    for _ in 0..50 {
        let Action::Reply { bytes, .. } = answer(&q, &s, &snap, Transport::Udp, &mut rng) else {
            panic!("no reply");
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!(m.answers.len(), 6);
        let order: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        orders.insert(order);
    }
    assert!(orders.len() > 10, "only {} distinct orders", orders.len());
}

#[test]
fn plain_udp_is_limited_by_answer_count_with_tc() {
    let snap = many(5);
    let r = run_with(
        &query("many.service.local.", RecordType::A),
        &settings(),
        &snap,
        Transport::Udp,
    );
    assert_eq!(r.msg.answers.len(), 3);
    assert!(r.msg.metadata.truncation);
    // at or under the limit: complete, no TC
    let small = many(3);
    let r = run_with(
        &query("many.service.local.", RecordType::A),
        &settings(),
        &small,
        Transport::Udp,
    );
    assert_eq!(r.msg.answers.len(), 3);
    assert!(!r.msg.metadata.truncation);
}

#[test]
fn plain_udp_is_limited_to_512_bytes_with_tc() {
    let snap = many(60);
    let s = DnsSettings::new("local", 0, 0, false, 1000, false).unwrap();
    let r = run_with(
        &query("many.service.local.", RecordType::SRV),
        &s,
        &snap,
        Transport::Udp,
    );
    assert!(r.len <= 512, "{} bytes", r.len);
    assert!(r.msg.metadata.truncation);
    assert!(!r.msg.answers.is_empty() && r.msg.answers.len() < 60);
    // glue only for SRV targets that made it in
    let targets: BTreeSet<String> = r
        .msg
        .answers
        .iter()
        .map(|a| match &a.data {
            RData::SRV(s) => s.target.to_ascii(),
            _ => panic!("not SRV"),
        })
        .collect();
    for g in &r.msg.additionals {
        assert!(targets.contains(&g.name.to_ascii()), "stray glue {g:?}");
    }
}

#[test]
fn edns_allows_up_to_1232_bytes() {
    let snap = many(200);
    let s = settings();
    for (asked, cap) in [(4096u16, 1232usize), (800, 800), (100, 512)] {
        let q = with_edns(query("many.service.local.", RecordType::A), asked);
        let r = run_with(&q, &s, &snap, Transport::Udp);
        assert!(r.len <= cap, "asked {asked}: {} bytes", r.len);
        // fuller than the plain limits, and cut by size, not by count
        assert!(r.len > cap - 40, "asked {asked}: only {} bytes", r.len);
        assert!(r.msg.answers.len() > 3);
        assert!(r.msg.metadata.truncation);
        let opt = r.msg.edns.as_ref().expect("OPT in EDNS reply");
        assert_eq!(opt.max_payload(), 1232);
    }
    // a small answer with EDNS: complete, OPT present, no TC
    let q = with_edns(query("web.service.local.", RecordType::A), 4096);
    let r = run_with(&q, &s, &catalog().snapshot(), Transport::Udp);
    assert!(!r.msg.metadata.truncation);
    assert!(r.msg.edns.is_some());
}

#[test]
fn tcp_is_complete() {
    let snap = many(200);
    let r = run_with(
        &query("many.service.local.", RecordType::SRV),
        &settings(),
        &snap,
        Transport::Tcp,
    );
    assert_eq!(r.msg.answers.len(), 200);
    assert_eq!(r.msg.additionals.len(), 200);
    assert!(!r.msg.metadata.truncation);
    assert!(r.len > 1232);
}

#[test]
fn parse_drops_responses_and_runts_and_formerrs_garbage() {
    assert_eq!(parse(&[]).unwrap_err(), Action::Drop);
    assert_eq!(parse(&[1, 2, 3]).unwrap_err(), Action::Drop);
    // a response (QR set)
    let mut resp = query("web.service.local.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert_eq!(parse(&resp.to_vec().unwrap()).unwrap_err(), Action::Drop);
    // a header claiming one question, followed by a compression loop
    let mut pkt = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    pkt.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    match parse(&pkt).unwrap_err() {
        Action::Reply { bytes, rcode } => {
            assert_eq!(rcode, ResponseCode::FormErr);
            let m = Message::from_vec(&bytes).unwrap();
            assert_eq!(m.metadata.id, 0xabcd);
            assert_eq!(m.metadata.message_type, MessageType::Response);
        }
        other => panic!("expected FORMERR, got {other:?}"),
    }
    // a well-formed query parses
    assert!(parse(&query("web.service.local.", RecordType::A).to_vec().unwrap()).is_ok());
}

/// Well-formed queries of every form and type, as seeds for mutation.
fn seed_packets() -> Vec<Vec<u8>> {
    let names = [
        "web.service.local.",
        "primary.web.service.local.",
        "_web._tcp.service.local.",
        "_web._primary.service.local.",
        "alpha.node.local.",
        "7f000001.addr.local.",
        "local.",
        "example.com.",
        "many.service.local.",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::ANY,
        RecordType::SOA,
    ];
    let mut out = Vec::new();
    for n in names {
        for t in types {
            let q = query(n, t);
            out.push(q.to_vec().unwrap());
            out.push(with_edns(q, 4096).to_vec().unwrap());
        }
    }
    out
}

/// Feeds 120,000 random and mutated packets through the whole answer path (both
/// transports): nothing may panic, every reply must decode, carry the query's id, and fit
/// the transport's size.
#[test]
fn random_and_mutated_packets_never_panic() {
    let mut c = catalog();
    let extra = many(40);
    for n in extra.nodes() {
        c.apply_record(n.record.clone(), MemberStatus::Alive, None, 0)
            .unwrap();
    }
    let snap = c.snapshot();
    let plain = settings();
    let recursing = DnsSettings::new("local", 0, 0, true, 2, true).unwrap();
    let seeds = seed_packets();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut replies = 0usize;
    let mut fast = 0usize;
    let mut scratch = super::fast::Scratch::default();
    let mut out = Vec::new();
    for i in 0..120_000usize {
        let pkt: Vec<u8> = if i % 4 == 0 {
            let len = (rng.next_u32() % 600) as usize;
            let mut p = vec![0u8; len];
            rng.fill_bytes(&mut p);
            if len > 2 && i % 8 == 0 {
                p[2] &= 0x7f; // make it look like a query more often
            }
            p
        } else {
            let mut p = seeds[i % seeds.len()].clone();
            let flips = 1 + rng.next_u32() % 6;
            for _ in 0..flips {
                match rng.next_u32() % 4 {
                    0 => {
                        let at = rng.next_u32() as usize % p.len();
                        p[at] = rng.next_u32() as u8;
                    }
                    1 => {
                        let at = rng.next_u32() as usize % (p.len() + 1);
                        p.truncate(at);
                    }
                    2 => {
                        let at = rng.next_u32() as usize % (p.len() + 1);
                        p.insert(at, rng.next_u32() as u8);
                    }
                    _ => {
                        // a compression pointer somewhere
                        if p.len() > 14 {
                            let at = 12 + rng.next_u32() as usize % (p.len() - 13);
                            p[at] = 0xc0;
                            p[at + 1] = rng.next_u32() as u8;
                        }
                    }
                }
                if p.is_empty() {
                    break;
                }
            }
            p
        };
        let s = if i % 3 == 0 { &recursing } else { &plain };
        let transport = if i % 5 == 0 {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        // the fast path too, whenever it takes the packet
        if let Some(q) = super::fast::parse_simple(&pkt) {
            if let Ok(name) = q.decode_name() {
                if let Lookup::Local(res) = resolve(&name, q.record_type(), s, &snap) {
                    let prepared = super::fast::Prepared::new(&res).expect("prepares");
                    super::fast::write_reply(
                        &q,
                        &prepared,
                        s,
                        transport,
                        &mut rng,
                        &mut scratch,
                        &mut out,
                    );
                    let m = Message::from_vec(&out).expect("fast replies decode");
                    assert_eq!(m.metadata.id, q.id);
                    fast += 1;
                }
            }
        }
        if let Action::Reply { bytes, .. } = handle_packet(&pkt, s, &snap, transport, &mut rng) {
            replies += 1;
            let m = Message::from_vec(&bytes).expect("our replies decode");
            assert_eq!(&bytes[..2], &pkt[..2], "id echoed");
            assert_eq!(m.metadata.message_type, MessageType::Response);
            if transport == Transport::Udp {
                assert!(bytes.len() <= EDNS_UDP_MAX as usize);
                if m.edns.is_none() {
                    assert!(bytes.len() <= PLAIN_UDP_MAX as usize);
                }
            }
        }
    }
    assert!(replies > 10_000, "only {replies} replies");
    assert!(fast > 1_000, "only {fast} packets took the fast path");
}

/// The fast path answers exactly like the general path for the simple query shape (same
/// seed, so the same shuffle), and declines everything else.
#[test]
fn fast_path_matches_general_path() {
    use super::fast::{parse_simple, write_reply, Prepared, Scratch};
    let mut c = catalog();
    for n in many(5).nodes() {
        c.apply_record(n.record.clone(), MemberStatus::Alive, None, 0)
            .unwrap();
    }
    let snap = c.snapshot();
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let mut compared = 0;
    for s in [
        settings(),
        DnsSettings::new("local", 0, 9, true, 2, true).unwrap(),
    ] {
        for pkt in seed_packets() {
            for transport in [Transport::Udp, Transport::Tcp] {
                let Some(q) = parse_simple(&pkt) else {
                    panic!("seed query not recognised as simple");
                };
                let name = q.decode_name().unwrap();
                let Lookup::Local(res) = resolve(&name, q.record_type(), &s, &snap) else {
                    // outside the domain: the general path decides
                    continue;
                };
                let prepared = Prepared::new(&res).unwrap();
                write_reply(
                    &q,
                    &prepared,
                    &s,
                    transport,
                    &mut StdRng::seed_from_u64(3),
                    &mut scratch,
                    &mut out,
                );
                let Action::Reply { bytes, .. } =
                    handle_packet(&pkt, &s, &snap, transport, &mut StdRng::seed_from_u64(3))
                else {
                    panic!("general path did not reply");
                };
                let fast = Message::from_vec(&out).expect("fast reply decodes");
                let general = Message::from_vec(&bytes).unwrap();
                assert_eq!(fast, general, "{}", q.decode_name().unwrap());
                compared += 1;
            }
        }
    }
    assert!(compared > 100, "{compared}");

    // shapes the fast path leaves to the general path
    let mut two = query("web.service.local.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("a.local.").unwrap(),
        RecordType::A,
    ));
    let mut notify = query("web.service.local.", RecordType::A);
    notify.metadata.op_code = OpCode::Notify;
    let mut chaos = query("web.service.local.", RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let mut v1 = query("web.service.local.", RecordType::A);
    let mut e = Edns::new();
    e.set_version(1);
    v1.set_edns(e);
    let mut response = query("web.service.local.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    for m in [two, notify, chaos, v1, response] {
        assert!(parse_simple(&m.to_vec().unwrap()).is_none(), "{m:?}");
    }
    let mut trailing = query("web.service.local.", RecordType::A).to_vec().unwrap();
    trailing.push(0);
    assert!(parse_simple(&trailing).is_none());
}

/// Size rules on the fast path: the same limits as the general path.
#[test]
fn fast_path_size_rules() {
    use super::fast::{parse_simple, write_reply, Prepared, Scratch};
    let snap = many(100);
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    let cases = [
        (
            query("many.service.local.", RecordType::A),
            Transport::Udp,
            512,
            Some(3),
        ),
        (
            query("many.service.local.", RecordType::SRV),
            Transport::Udp,
            512,
            None,
        ),
        (
            with_edns(query("many.service.local.", RecordType::SRV), 4096),
            Transport::Udp,
            1232,
            None,
        ),
        (
            with_edns(query("many.service.local.", RecordType::A), 700),
            Transport::Udp,
            700,
            None,
        ),
    ];
    for (m, transport, cap, count) in cases {
        let pkt = m.to_vec().unwrap();
        let q = parse_simple(&pkt).unwrap();
        let Lookup::Local(res) = resolve(
            &q.decode_name().unwrap(),
            q.record_type(),
            &settings(),
            &snap,
        ) else {
            panic!("local name");
        };
        let prepared = Prepared::new(&res).unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        write_reply(
            &q,
            &prepared,
            &settings(),
            transport,
            &mut rng,
            &mut scratch,
            &mut out,
        );
        assert!(out.len() <= cap, "{} > {cap}", out.len());
        let r = Message::from_vec(&out).unwrap();
        assert!(r.metadata.truncation);
        if let Some(n) = count {
            assert_eq!(r.answers.len(), n);
        }
        assert!(r.answers.len() >= 3);
        let targets: BTreeSet<String> = r
            .answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::SRV(s) => Some(s.target.to_ascii()),
                _ => None,
            })
            .collect();
        for g in r
            .additionals
            .iter()
            .filter(|g| g.record_type() != RecordType::OPT)
        {
            assert!(targets.contains(&g.name.to_ascii()), "stray glue");
        }
    }
    // TCP: complete
    let pkt = query("many.service.local.", RecordType::SRV)
        .to_vec()
        .unwrap();
    let q = parse_simple(&pkt).unwrap();
    let Lookup::Local(res) = resolve(
        &q.decode_name().unwrap(),
        q.record_type(),
        &settings(),
        &snap,
    ) else {
        panic!("local name");
    };
    let prepared = Prepared::new(&res).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    write_reply(
        &q,
        &prepared,
        &settings(),
        Transport::Tcp,
        &mut rng,
        &mut scratch,
        &mut out,
    );
    let r = Message::from_vec(&out).unwrap();
    assert_eq!(r.answers.len(), 100);
    assert_eq!(r.additionals.len(), 100);
    assert!(!r.metadata.truncation);
}

#[test]
fn hostname_address_is_the_srv_target_without_glue() {
    let mut c = Catalog::new();
    c.apply_record(
        node(
            "n",
            "10.1.1.1",
            vec![svc("ext", "ext", &[], "db.example.org", 5432)],
            vec![],
        ),
        MemberStatus::Alive,
        None,
        0,
    )
    .unwrap();
    let snap = c.snapshot();
    let r = run_with(
        &query("ext.service.local.", RecordType::SRV),
        &settings(),
        &snap,
        Transport::Udp,
    );
    let RData::SRV(s) = &r.msg.answers[0].data else {
        panic!("not SRV")
    };
    assert_eq!(s.target.to_ascii(), "db.example.org.");
    assert!(r.msg.additionals.is_empty());
    // no address to give for A: the name exists, the type does not
    let r = run_with(
        &query("ext.service.local.", RecordType::A),
        &settings(),
        &snap,
        Transport::Udp,
    );
    assert_soa_only(&r.msg, ResponseCode::NoError);
}

#[test]
fn an_answer_depends_on_its_name_only() {
    use crate::dns::{resolve, Depends, Lookup};
    use crate::gossip::{EntryKey, Value};
    let mut c = catalog();
    let s = settings();
    let name = |n: &str| Name::from_ascii(n).unwrap();
    let dep = |snap: &Snapshot, n: &str| match resolve(&name(n), RecordType::SRV, &s, snap) {
        Lookup::Local(r) => r.depends.clone(),
        Lookup::Outside => panic!("outside"),
    };
    let before = c.snapshot();
    assert_eq!(
        dep(&before, "web.service.local."),
        Depends::Service("web".into())
    );
    assert_eq!(
        dep(&before, "v1.Web.service.local."),
        Depends::Service("web".into())
    );
    assert_eq!(
        dep(&before, "_web._tcp.service.local."),
        Depends::Service("web".into())
    );
    assert_eq!(dep(&before, "alpha.node.local."), Depends::Nodes);
    // A change to db leaves web's answer good; a change to web does not.
    let mut db = svc("db", "db", &[], "", 5433);
    db.port = 5433;
    c.apply_changes(
        "alpha",
        &[(
            EntryKey::Service("db".into()),
            Some(Value::Service(std::sync::Arc::new(db))),
        )],
        5,
    );
    let after = c.snapshot();
    let web = Depends::Service("web".into());
    assert_eq!(web.index(&before), web.index(&after));
    let dbd = Depends::Service("db".into());
    assert_ne!(dbd.index(&before), dbd.index(&after));
}
