//! DNS end to end (SPEC §5): a real DNS client over UDP and TCP against `muster agent --dev`,
//! after registering services over HTTP. One test per group of rules: forms, rcodes, sizes,
//! shuffling, and malformed input through the real socket.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use muster_tests::{Agent, AgentSpec};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

static IDS: AtomicU16 = AtomicU16::new(1);

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new(
        IDS.fetch_add(1, Ordering::Relaxed),
        MessageType::Query,
        OpCode::Query,
    );
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn edns(mut m: Message, size: u16) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(size);
    m.set_edns(e);
    m
}

/// Sends raw bytes over UDP and returns the raw reply (None on timeout).
fn udp_raw(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(packet, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// One query over UDP; returns the decoded reply and its size on the wire.
fn udp(server: SocketAddr, q: &Message) -> (Message, usize) {
    let raw = udp_raw(server, &q.to_vec().unwrap()).expect("UDP reply");
    let m = Message::from_vec(&raw).expect("reply decodes");
    assert_eq!(m.metadata.id, q.metadata.id);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    (m, raw.len())
}

/// Several queries over one TCP connection, answered in order.
fn tcp(server: SocketAddr, queries: &[Message]) -> Vec<Message> {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = Vec::new();
    for q in queries {
        let bytes = q.to_vec().unwrap();
        s.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
        s.write_all(&bytes).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut reply).unwrap();
        let m = Message::from_vec(&reply).expect("reply decodes");
        assert_eq!(m.metadata.id, q.metadata.id);
        out.push(m);
    }
    out
}

fn addrs(m: &Message) -> BTreeSet<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn srvs(m: &Message) -> BTreeSet<(String, u16, u16)> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.target.to_ascii(), s.port, s.weight)),
            _ => None,
        })
        .collect()
}

fn assert_negative(m: &Message, rcode: ResponseCode, domain: &str) {
    assert_eq!(m.metadata.response_code, rcode, "{m}");
    assert!(m.answers.is_empty(), "{m}");
    assert_eq!(m.authorities.len(), 1, "{m}");
    assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(m.authorities[0].name.to_ascii(), domain);
    assert!(m.metadata.authoritative);
}

fn register(agent: &Agent, body: &str) {
    let r = agent.put("/v1/agent/service/register", body);
    assert_eq!(r.status, 200, "register {body}: {}", r.text());
}

fn set_check(agent: &Agent, verb: &str, id: &str) {
    let r = agent.put(&format!("/v1/agent/check/{verb}/{id}"), "");
    assert_eq!(r.status, 200, "{verb} {id}: {}", r.text());
}

/// web: on the node (passing, meta), with its own address (warning, weights), and a
/// critical one that must never show; db on the node.
fn web_agent(name: &str, ip: &str, extra: &[&str]) -> Agent {
    let agent = Agent::start(AgentSpec::dev(name, ip).args(extra));
    register(
        &agent,
        r#"{"Name":"web","ID":"web-1","Port":8080,"Tags":["primary","v1"],"Meta":{"version":"1.2"}}"#,
    );
    register(
        &agent,
        r#"{"Name":"web","ID":"web-2","Port":8081,"Address":"127.0.0.99","Tags":["v1"],
            "Weights":{"Passing":10,"Warning":3},
            "Check":{"CheckID":"web-2-ttl","TTL":"300s"}}"#,
    );
    set_check(&agent, "warn", "web-2-ttl");
    register(
        &agent,
        r#"{"Name":"web","ID":"web-3","Port":8082,"Address":"127.0.0.98",
            "Check":{"CheckID":"web-3-ttl","TTL":"300s"}}"#,
    );
    set_check(&agent, "fail", "web-3-ttl");
    register(&agent, r#"{"Name":"db","ID":"db","Port":5432}"#);
    agent
}

#[test]
fn every_form_over_udp_and_tcp() {
    let agent = web_agent("dns-forms", "127.0.0.31", &[]);
    let dns = agent.dns();
    let ip = agent.spec.ip.clone();
    let both = BTreeSet::from([ip.clone(), "127.0.0.99".to_string()]);

    for transport in ["udp", "tcp"] {
        let ask = |q: Message| -> Message {
            if transport == "udp" {
                udp(dns, &q).0
            } else {
                tcp(dns, &[q]).remove(0)
            }
        };
        // NAME.service.D: passing and warning, never critical
        let m = ask(query("web.service.local.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addrs(&m), both, "{transport}");
        assert!(m.metadata.authoritative);
        assert!(!m.metadata.recursion_available);
        // TAG.NAME.service.D
        let m = ask(query("primary.web.service.local.", RecordType::A));
        assert_eq!(addrs(&m), BTreeSet::from([ip.clone()]));
        // _NAME._TAG.service.D
        let m = ask(query("_web._primary.service.local.", RecordType::SRV));
        assert_eq!(
            srvs(&m),
            BTreeSet::from([("dns-forms.node.local.".to_string(), 8080, 1)])
        );
        // _NAME._tcp.service.D: any tag; weights by health; .addr target for own address
        let m = ask(query("_web._tcp.service.local.", RecordType::SRV));
        assert_eq!(
            srvs(&m),
            BTreeSet::from([
                ("7f000063.addr.local.".to_string(), 8081, 3),
                ("dns-forms.node.local.".to_string(), 8080, 1),
            ])
        );
        let glue: BTreeSet<(String, String)> = m
            .additionals
            .iter()
            .filter(|r| r.record_type() == RecordType::A)
            .map(|r| (r.name.to_ascii(), r.data.to_string()))
            .collect();
        assert_eq!(
            glue,
            BTreeSet::from([
                ("7f000063.addr.local.".to_string(), "127.0.0.99".to_string()),
                ("dns-forms.node.local.".to_string(), ip.clone()),
            ])
        );
        // TXT from meta
        let m = ask(query("web.service.local.", RecordType::TXT));
        let txt: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(txt, vec!["version=1.2".to_string()]);
        // NODE.node.D
        let m = ask(query("dns-forms.node.local.", RecordType::A));
        assert_eq!(addrs(&m), BTreeSet::from([ip.clone()]));
        // the .addr.D target resolves
        let m = ask(query("7f000063.addr.local.", RecordType::A));
        assert_eq!(addrs(&m), BTreeSet::from(["127.0.0.99".to_string()]));
        // ANY: the addresses
        let m = ask(query("web.service.local.", RecordType::ANY));
        assert_eq!(addrs(&m), both);
        // case-insensitive, question echoed as asked
        let asked = "WeB.SERVICE.Local.";
        let m = ask(query(asked, RecordType::A));
        assert_eq!(addrs(&m), both);
        assert!(m.queries[0]
            .name()
            .eq_case(&Name::from_ascii(asked).unwrap()));
        assert_eq!(m.queries[0].query_type(), RecordType::A);
    }

    // health changes show at once: web-2 goes critical, web-3 passing
    set_check(&agent, "fail", "web-2-ttl");
    set_check(&agent, "pass", "web-3-ttl");
    let m = udp(dns, &query("web.service.local.", RecordType::A)).0;
    assert_eq!(
        addrs(&m),
        BTreeSet::from([ip.clone(), "127.0.0.98".to_string()])
    );
}

#[test]
fn rcodes_and_flags() {
    // a configured domain, in mixed case
    let agent = web_agent("dns-rcodes", "127.0.0.32", &["--domain", "Muster.Test"]);
    let dns = agent.dns();
    let d = "muster.test.";

    let m = udp(dns, &query("web.service.muster.test.", RecordType::A)).0;
    assert_eq!(addrs(&m).len(), 2);
    // the default domain is not served any more
    let m = udp(dns, &query("web.service.local.", RecordType::A)).0;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.authoritative);
    assert!(!m.metadata.recursion_available);

    // unknown names: NXDOMAIN + SOA
    for name in [
        "nothing.service.muster.test.",
        "nobody.node.muster.test.",
        "x.y.z.muster.test.",
        "nope.web.service.muster.test.",
    ] {
        let m = udp(dns, &query(name, RecordType::A)).0;
        assert_negative(&m, ResponseCode::NXDomain, d);
    }
    // a service whose only instance is critical: NXDOMAIN + SOA
    register(
        &agent,
        r#"{"Name":"down","ID":"down","Port":1,"Check":{"CheckID":"down-ttl","TTL":"300s"}}"#,
    );
    let m = udp(dns, &query("down.service.muster.test.", RecordType::A)).0;
    assert_negative(&m, ResponseCode::NXDomain, d);
    // known name without the type: NOERROR, empty, SOA
    let m = udp(dns, &query("web.service.muster.test.", RecordType::AAAA)).0;
    assert_negative(&m, ResponseCode::NoError, d);
    let m = udp(dns, &query("db.service.muster.test.", RecordType::TXT)).0;
    assert_negative(&m, ResponseCode::NoError, d);
    // outside the domain without recursors: REFUSED
    let m = udp(dns, &query("example.com.", RecordType::A)).0;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // more than one question: FORMERR
    let mut two = query("web.service.muster.test.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("db.service.muster.test.").unwrap(),
        RecordType::A,
    ));
    let m = udp(dns, &two).0;
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    let m = tcp(dns, &[two]).remove(0);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // other opcodes: NOTIMP
    for op in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut q = query("web.service.muster.test.", RecordType::A);
        q.metadata.op_code = op;
        let m = udp(dns, &q).0;
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp, "{op:?}");
    }
    // a header with a question that does not decode: FORMERR with the id
    let mut pkt = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    pkt.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]); // compression loop
    let raw = udp_raw(dns, &pkt).expect("FORMERR reply");
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.id, 0xbeef);
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // a response sent to us: no answer at all
    let mut resp = query("web.service.muster.test.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert!(udp_raw(dns, &resp.to_vec().unwrap()).is_none());

    // every answer above was counted by rcode
    let text = agent.get("/v1/agent/metrics?format=prometheus").text();
    let count = |rcode: &str| -> u64 {
        let series = format!("muster_dns_queries_total{{rcode=\"{rcode}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(count("noerror") >= 3, "{text}");
    assert!(count("nxdomain") >= 5);
    assert!(count("refused") >= 2);
    assert!(count("formerr") >= 3);
    assert!(count("notimp") >= 3);
}

#[test]
fn size_rules_udp_edns_tcp() {
    let agent = Agent::start(AgentSpec::dev("dns-sizes", "127.0.0.33"));
    let dns = agent.dns();
    for i in 0..5 {
        register(
            &agent,
            &format!(
                r#"{{"Name":"five","ID":"five-{i}","Port":{},"Address":"127.1.0.{}"}}"#,
                100 + i,
                i + 1
            ),
        );
    }
    for i in 0..70 {
        register(
            &agent,
            &format!(
                r#"{{"Name":"big","ID":"big-{i}","Port":{},"Address":"127.2.{}.{}"}}"#,
                2000 + i,
                i / 200,
                i % 200 + 1
            ),
        );
    }

    // no EDNS: udp_answer_limit (3) answers, TC because two were left out
    let (m, _) = udp(dns, &query("five.service.local.", RecordType::A));
    assert_eq!(m.answers.len(), 3);
    assert!(m.metadata.truncation);
    assert!(m.edns.is_none());
    // no EDNS, SRV with glue: still within 512 bytes
    let (m, len) = udp(dns, &query("big.service.local.", RecordType::SRV));
    assert!(len <= 512, "{len} bytes");
    assert!(m.metadata.truncation);
    // EDNS: by size, up to 1232 whatever the client offers
    let (m, len) = udp(
        dns,
        &edns(query("five.service.local.", RecordType::A), 4096),
    );
    assert_eq!(m.answers.len(), 5);
    assert!(!m.metadata.truncation);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    assert!(len <= 1232);
    let (m, len) = udp(
        dns,
        &edns(query("big.service.local.", RecordType::SRV), 4096),
    );
    assert!(len <= 1232, "{len} bytes");
    assert!(len > 900, "EDNS reply only {len} bytes");
    assert!(m.answers.len() > 3 && m.answers.len() < 70);
    assert!(m.metadata.truncation);
    // EDNS with a smaller client size
    let (m, len) = udp(dns, &edns(query("big.service.local.", RecordType::A), 700));
    assert!(len <= 700, "{len} bytes");
    assert!(m.metadata.truncation);
    // TCP: complete, several queries on one connection
    let replies = tcp(
        dns,
        &[
            query("big.service.local.", RecordType::SRV),
            query("big.service.local.", RecordType::A),
            query("five.service.local.", RecordType::A),
        ],
    );
    assert_eq!(replies[0].answers.len(), 70);
    assert_eq!(replies[0].additionals.len(), 70);
    assert!(!replies[0].metadata.truncation);
    assert_eq!(replies[1].answers.len(), 70);
    assert_eq!(replies[2].answers.len(), 5);
}

#[test]
fn answers_are_shuffled() {
    let agent = Agent::start(AgentSpec::dev("dns-shuffle", "127.0.0.34"));
    let dns = agent.dns();
    for i in 0..6 {
        register(
            &agent,
            &format!(
                r#"{{"Name":"pool","ID":"pool-{i}","Port":80,"Address":"127.3.0.{}"}}"#,
                i + 1
            ),
        );
    }
    let mut orders = BTreeSet::new();
    let mut firsts = BTreeSet::new();
    for _ in 0..40 {
        let (m, _) = udp(
            dns,
            &edns(query("pool.service.local.", RecordType::A), 1232),
        );
        let order: Vec<String> = m.answers.iter().map(|r| r.data.to_string()).collect();
        assert_eq!(order.len(), 6);
        firsts.insert(order[0].clone());
        orders.insert(order);
    }
    assert!(orders.len() > 5, "{} distinct orders in 40", orders.len());
    assert!(firsts.len() > 2, "first answer always among {firsts:?}");
    // without EDNS, which 3 of the 6 are served varies too
    let mut served = BTreeSet::new();
    for _ in 0..30 {
        served.extend(addrs(
            &udp(dns, &query("pool.service.local.", RecordType::A)).0,
        ));
    }
    assert!(served.len() > 3, "only {served:?} ever served");
}

/// A small xorshift generator: the test needs varied bytes, not good randomness.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn malformed_packets_do_not_hurt_the_server() {
    let agent = web_agent("dns-fuzz", "127.0.0.35", &[]);
    let dns = agent.dns();
    let seeds: Vec<Vec<u8>> = [
        ("web.service.local.", RecordType::SRV),
        ("primary.web.service.local.", RecordType::A),
        ("_web._tcp.service.local.", RecordType::SRV),
        ("dns-fuzz.node.local.", RecordType::TXT),
        ("7f000063.addr.local.", RecordType::A),
        ("example.com.", RecordType::A),
    ]
    .iter()
    .flat_map(|(n, t)| {
        let q = query(n, *t);
        [q.to_vec().unwrap(), edns(q, 4096).to_vec().unwrap()]
    })
    .collect();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let mut sink = vec![0u8; 65535];
    for i in 0..20_000usize {
        let pkt = if i % 3 == 0 {
            let len = (noise.next() % 300) as usize;
            (0..len).map(|_| noise.next() as u8).collect::<Vec<u8>>()
        } else {
            let mut p = seeds[i % seeds.len()].clone();
            for _ in 0..(1 + noise.next() % 4) {
                let at = (noise.next() as usize) % p.len();
                match noise.next() % 3 {
                    0 => p[at] = noise.next() as u8,
                    1 => p.truncate(at.max(1)),
                    _ => p.insert(at, noise.next() as u8),
                }
            }
            p
        };
        let _ = sock.send_to(&pkt, dns);
        // drain replies so our receive buffer never fills
        while sock.recv(&mut sink).is_ok() {}
    }
    // a datagram longer than any query (a valid query padded past 4 KiB): dropped
    let mut long = query("web.service.local.", RecordType::A).to_vec().unwrap();
    long.resize(5000, 0);
    assert!(udp_raw(dns, &long).is_none());
    // garbage over TCP: a frame that is not DNS, then a truncated frame
    for junk in [&[0u8, 5, 1, 2, 3, 4, 5][..], &[0x40, 0x00, 1, 2][..]] {
        let mut s = TcpStream::connect(dns).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(junk).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    // still alive and still right, on both transports (the flood may still fill the
    // socket buffer for a moment, and UDP may drop what does not fit: ask until answered)
    let mut answered = None;
    for _ in 0..20 {
        let q = query("web.service.local.", RecordType::A);
        if let Some(raw) = udp_raw(dns, &q.to_vec().unwrap()) {
            answered = Some(Message::from_vec(&raw).unwrap());
            break;
        }
    }
    let m = answered.expect("no UDP answer after the flood");
    assert_eq!(addrs(&m).len(), 2);
    let m = tcp(dns, &[query("web.service.local.", RecordType::SRV)]).remove(0);
    assert_eq!(m.answers.len(), 2);
    assert!(agent.logs().contains("muster agent running"));
    assert!(!agent.logs().contains("panicked"), "{}", agent.logs());
}

/// The fake upstream's answer to `packet`: one A record (127.9.9.9), RA set.
fn fake_answer(packet: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(packet).ok()?;
    let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.add_queries(q.queries.iter().cloned());
    let question = q.queries.first()?;
    r.add_answer(hickory_proto::rr::Record::from_rdata(
        question.name().clone(),
        60,
        RData::A(hickory_proto::rr::rdata::A::new(127, 9, 9, 9)),
    ));
    r.to_vec().ok()
}

/// A fake upstream resolver on one loopback port, UDP and TCP. Runs until the test process
/// ends.
fn fake_recursor(ip: &str) -> SocketAddr {
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind((ip, 0)).unwrap();
        if let Ok(tcp) = std::net::TcpListener::bind(udp.local_addr().unwrap()) {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            if let Some(reply) = fake_answer(&buf[..n]) {
                let _ = udp.send_to(&reply, peer);
            }
        }
    });
    std::thread::spawn(move || {
        for mut s in tcp.incoming().flatten() {
            let mut len = [0u8; 2];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if s.read_exact(&mut q).is_err() {
                continue;
            }
            if let Some(reply) = fake_answer(&q) {
                let _ = s.write_all(&(reply.len() as u16).to_be_bytes());
                let _ = s.write_all(&reply);
            }
        }
    });
    addr
}

#[test]
fn dns_settings_from_config_file() {
    let ip = "127.0.0.36";
    let upstream = fake_recursor(ip);
    // a recursor that never answers: the next one must be asked
    let silent = UdpSocket::bind((ip, 0)).unwrap();
    let dir = muster_tests::TempDir::new("dns-config");
    let file = dir.path().join("dns.toml");
    std::fs::write(
        &file,
        format!(
            "[dns]\nttl = \"30s\"\nnegative_ttl = \"7s\"\nonly_passing = true\nudp_answer_limit = 2\n\
             recursors = [\"{}\", \"{upstream}\"]\nrecursor_timeout = \"300ms\"\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let agent = web_agent("dns-config", ip, &["--config", file.to_str().unwrap()]);
    let dns = agent.dns();
    for i in 0..4 {
        register(
            &agent,
            &format!(
                r#"{{"Name":"four","ID":"four-{i}","Port":80,"Address":"127.4.0.{}"}}"#,
                i + 1
            ),
        );
    }

    // only_passing: the warning instance (127.0.0.99) is left out; service TTL 30s
    let m = udp(dns, &query("web.service.local.", RecordType::A)).0;
    assert_eq!(addrs(&m), BTreeSet::from([ip.to_string()]));
    assert!(m.answers.iter().all(|r| r.ttl == 30));
    // RA with recursors
    assert!(m.metadata.recursion_available);
    // negative TTL on the SOA
    let m = udp(dns, &query("nothing.service.local.", RecordType::A)).0;
    assert_negative(&m, ResponseCode::NXDomain, "local.");
    assert_eq!(m.authorities[0].ttl, 7);
    // udp_answer_limit = 2
    let m = udp(dns, &query("four.service.local.", RecordType::A)).0;
    assert_eq!(m.answers.len(), 2);
    assert!(m.metadata.truncation);
    // outside the domain: forwarded (past the silent recursor), over UDP and TCP
    let q = query("example.com.", RecordType::A);
    let m = udp(dns, &q).0;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), BTreeSet::from(["127.9.9.9".to_string()]));
    assert!(m.queries[0].name().eq_case(q.queries[0].name()));
    let m = tcp(dns, &[query("example.net.", RecordType::A)]).remove(0);
    assert_eq!(addrs(&m), BTreeSet::from(["127.9.9.9".to_string()]));

    // a reload applies new [dns] settings to the running listener
    std::fs::write(&file, "[dns]\nttl = \"12s\"\n").unwrap();
    let r = agent.put("/v1/agent/reload", "");
    assert_eq!(r.status, 200, "reload: {}", r.text());
    let m = udp(dns, &query("web.service.local.", RecordType::A)).0;
    assert_eq!(addrs(&m).len(), 2, "only_passing is off again");
    assert!(m.answers.iter().all(|r| r.ttl == 12));
    assert!(!m.metadata.recursion_available);
    let m = udp(dns, &query("example.com.", RecordType::A)).0;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn servfail_when_recursors_fail() {
    let ip = "127.0.0.37";
    let silent = UdpSocket::bind((ip, 0)).unwrap();
    let dir = muster_tests::TempDir::new("dns-servfail");
    let file = dir.path().join("dns.toml");
    std::fs::write(
        &file,
        format!(
            "[dns]\nrecursors = [\"{}\"]\nrecursor_timeout = \"200ms\"\n",
            silent.local_addr().unwrap()
        ),
    )
    .unwrap();
    let agent = Agent::start(
        AgentSpec::dev("dns-servfail", ip).args(&["--config", file.to_str().unwrap()]),
    );
    let m = udp(agent.dns(), &query("example.org.", RecordType::A)).0;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(m.metadata.recursion_available);
    let m = tcp(agent.dns(), &[query("example.org.", RecordType::AAAA)]).remove(0);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn tcp_connection_cap_closes_the_excess_only() {
    let agent = Agent::start(AgentSpec::dev("dns-tcpcap", "127.0.0.38"));
    let dns = agent.dns();
    register(&agent, r#"{"Name":"db","ID":"db","Port":5432}"#);
    // fill the cap (256) with idle connections that each proved they are served
    let mut held = Vec::new();
    for _ in 0..256 {
        let mut s = TcpStream::connect(dns).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let bytes = query("db.service.local.", RecordType::A).to_vec().unwrap();
        s.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
        s.write_all(&bytes).unwrap();
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut reply).unwrap();
        held.push(s);
    }
    // one more: accepted by the kernel, closed by the server without an answer
    let mut extra = TcpStream::connect(dns).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let bytes = query("db.service.local.", RecordType::A).to_vec().unwrap();
    let _ = extra.write_all(&(bytes.len() as u16).to_be_bytes());
    let _ = extra.write_all(&bytes);
    let mut buf = [0u8; 2];
    assert!(
        !matches!(extra.read(&mut buf), Ok(n) if n > 0),
        "a connection over the cap was served"
    );
    // UDP is unaffected, and closing held connections frees room for new ones
    assert_eq!(
        udp(dns, &query("db.service.local.", RecordType::A))
            .0
            .answers
            .len(),
        1
    );
    held.truncate(200);
    let ok = muster_tests::wait_for(Duration::from_secs(10), || {
        std::panic::catch_unwind(|| tcp(dns, &[query("db.service.local.", RecordType::A)])).is_ok()
    });
    assert!(ok, "no TCP service after connections were closed");
}

#[test]
fn idle_tcp_connections_are_closed() {
    let agent = Agent::start(AgentSpec::dev("dns-idle", "127.0.0.39"));
    let dns = agent.dns();
    // a connection that answered once, then stays silent: the server closes it (after its
    // 10 s idle timeout; the bound here is only a generous upper limit)
    let mut s = TcpStream::connect(dns).unwrap();
    let bytes = query("dns-idle.node.local.", RecordType::A)
        .to_vec()
        .unwrap();
    s.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
    s.write_all(&bytes).unwrap();
    let mut len = [0u8; 2];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut rest = [0u8; 1];
    match s.read(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("idle connection not closed: {other:?}"),
    }
}
