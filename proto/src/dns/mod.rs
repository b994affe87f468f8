//! DNS answers from a catalog snapshot (SPEC §5), as pure functions: bytes or a parsed
//! query in, response bytes out. The agent owns the sockets; everything a client can observe
//! (forms, rcodes, flags, shuffling, truncation) is decided here so it can be tested without
//! a network.
//!
//! The work is split in three steps so the agent can cache the expensive middle one:
//! [`precheck`] (header rules: opcode, question count, class, EDNS version), [`resolve`]
//! (what the catalog says about one name and type: depends only on the snapshot and the
//! settings, so it is cacheable per snapshot index) and [`respond`] (per query: id, flags,
//! question echoed as asked, shuffle, size limits, encoding).

use crate::catalog::{Instance, Snapshot};
use crate::model::HealthStatus;
use hickory_proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_proto::ProtoError;
use rand::seq::SliceRandom;
use rand::Rng;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub mod fast;

/// Largest UDP answer without EDNS (RFC 1035).
pub const PLAIN_UDP_MAX: u16 = 512;
/// Largest UDP answer with EDNS: the DNS Flag Day 2020 size that avoids IP fragmentation.
pub const EDNS_UDP_MAX: u16 = 1232;
/// Encoded size of our OPT record (root name, type, class, ttl, empty rdata).
const OPT_RECORD_LEN: u16 = 11;

/// The `[dns]` settings and domain, in the form the answer logic needs.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsSettings {
    /// The domain D, lowercase and fully qualified (`local.`).
    pub domain: Name,
    /// TTL of service, node and address answers, in seconds.
    pub ttl: u32,
    /// TTL of negative answers (SOA TTL and MINIMUM), in seconds.
    pub negative_ttl: u32,
    /// Serve only passing instances (else passing and warning).
    pub only_passing: bool,
    /// Most answers in a UDP reply without EDNS.
    pub udp_answer_limit: usize,
    /// True when recursors are configured: sets RA and forwards names outside D.
    pub recursion_available: bool,
}

impl DnsSettings {
    /// Builds settings for `domain` (with or without the trailing dot, any case).
    pub fn new(
        domain: &str,
        ttl: u32,
        negative_ttl: u32,
        only_passing: bool,
        udp_answer_limit: usize,
        recursion_available: bool,
    ) -> Result<Self, ProtoError> {
        let mut domain = Name::from_ascii(domain.trim_end_matches('.'))?.to_lowercase();
        domain.set_fqdn(true);
        Ok(DnsSettings {
            domain,
            ttl,
            negative_ttl,
            only_passing,
            udp_answer_limit: udp_answer_limit.max(1),
            recursion_available,
        })
    }
}

/// How the query arrived: decides the size rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What part of the catalog an answer depends on: a cached answer stays good while that
/// part's index does not move, whatever else changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Depends {
    /// The instances of one service name (lowercase).
    Service(String),
    /// The node list (addresses, meta, standing).
    Nodes,
    /// Nothing in the catalog.
    Nothing,
}

impl Depends {
    /// The index of what an answer depends on, in `snapshot`.
    pub fn index(&self, snapshot: &Snapshot) -> u64 {
        match self {
            Depends::Service(name) => snapshot.service_index(name),
            Depends::Nodes => snapshot.nodes_index(),
            Depends::Nothing => 1,
        }
    }
}

/// What the catalog says about one (name, type): independent of the query's id, flags,
/// EDNS and transport, so it can be cached while what it depends on does not change.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    pub rcode: ResponseCode,
    /// Answer records, owned by the canonical (lowercase) name; shuffled per query.
    pub answers: Vec<Record>,
    /// SOA for negative answers.
    pub authority: Option<Record>,
    /// A/AAAA of SRV targets, sent only for the SRV answers that made it into the reply.
    pub glue: Vec<Record>,
    /// What it depends on.
    pub depends: Depends,
}

/// The outcome of [`resolve`].
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    /// The name is inside D: this is the answer.
    Local(Box<Resolution>),
    /// The name is outside D: forward to recursors, or REFUSED.
    Outside,
}

/// What the server should do with a packet.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send these bytes back; `rcode` is what they say (for metrics).
    Reply { bytes: Vec<u8>, rcode: ResponseCode },
    /// The name is outside D and recursors are set: forward the query as received.
    Forward,
    /// Not worth an answer (a response sent to us, or too short to carry an id).
    Drop,
}

/// Parses a packet into a query. Undecodable packets that still carry a query header get
/// FORMERR; responses and runts are dropped (answering them could loop or reflect).
pub fn parse(bytes: &[u8]) -> Result<Message, Action> {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Err(Action::Drop);
    }
    match Message::from_vec(bytes) {
        Ok(m) if m.metadata.message_type == MessageType::Query => Ok(m),
        Ok(_) => Err(Action::Drop),
        Err(_) => {
            let id = u16::from_be_bytes([bytes[0], bytes[1]]);
            let op_code = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
            let mut meta = Metadata::new(id, MessageType::Response, op_code);
            meta.response_code = ResponseCode::FormErr;
            meta.recursion_desired = bytes[2] & 0x01 != 0;
            Err(bare_reply(meta, None, None))
        }
    }
}

/// Header rules that come before any lookup: NOTIMP for opcodes other than QUERY, FORMERR
/// unless there is exactly one question, BADVERS for EDNS versions above 0, REFUSED for
/// classes other than IN (and ANY). Returns the question to look up.
pub fn precheck<'a>(query: &'a Message, settings: &DnsSettings) -> Result<&'a Query, Action> {
    let refuse = |rcode| Err(error_reply(query, rcode, settings));
    if query.metadata.op_code != OpCode::Query {
        return refuse(ResponseCode::NotImp);
    }
    let [question] = query.queries.as_slice() else {
        return refuse(ResponseCode::FormErr);
    };
    if query.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return refuse(ResponseCode::BADVERS);
    }
    if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY) {
        return refuse(ResponseCode::Refused);
    }
    Ok(question)
}

/// The whole path for one parsed query (the agent does the same with a cache in the middle).
pub fn answer<R: Rng + ?Sized>(
    query: &Message,
    settings: &DnsSettings,
    snapshot: &Snapshot,
    transport: Transport,
    rng: &mut R,
) -> Action {
    let question = match precheck(query, settings) {
        Ok(q) => q,
        Err(action) => return action,
    };
    let lookup = resolve(question.name(), question.query_type(), settings, snapshot);
    respond(query, &lookup, settings, transport, rng)
}

/// Parses and answers one packet.
pub fn handle_packet<R: Rng + ?Sized>(
    bytes: &[u8],
    settings: &DnsSettings,
    snapshot: &Snapshot,
    transport: Transport,
    rng: &mut R,
) -> Action {
    match parse(bytes) {
        Ok(query) => answer(&query, settings, snapshot, transport, rng),
        Err(action) => action,
    }
}

/// A reply with only a header, the question (when there was exactly one) and an rcode:
/// REFUSED outside D, SERVFAIL when recursors fail, and the precheck errors.
pub fn error_reply(query: &Message, rcode: ResponseCode, settings: &DnsSettings) -> Action {
    let mut meta = reply_metadata(query, settings);
    meta.response_code = rcode;
    let question = match query.queries.as_slice() {
        [q] => Some(q),
        _ => None,
    };
    bare_reply(meta, question, query.edns.as_ref().map(|_| reply_edns()))
}

fn bare_reply(meta: Metadata, question: Option<&Query>, edns: Option<Edns>) -> Action {
    let parts = Parts {
        meta,
        question,
        answers: &[],
        authority: None,
        glue: &[],
        edns,
        max_size: u16::MAX,
        answer_limit: 0,
    };
    encode(&parts)
}

fn reply_metadata(query: &Message, settings: &DnsSettings) -> Metadata {
    let q = &query.metadata;
    let mut meta = Metadata::new(q.id, MessageType::Response, q.op_code);
    meta.recursion_desired = q.recursion_desired;
    meta.checking_disabled = q.checking_disabled;
    meta.recursion_available = settings.recursion_available;
    meta
}

fn reply_edns() -> Edns {
    let mut e = Edns::new();
    e.set_max_payload(EDNS_UDP_MAX);
    e.set_version(0);
    e
}

/// Builds the reply to `query` from a lookup: id and flags from the query, the question as
/// asked, answers shuffled, then cut to the transport's limits (TC when anything was left
/// out).
pub fn respond<R: Rng + ?Sized>(
    query: &Message,
    lookup: &Lookup,
    settings: &DnsSettings,
    transport: Transport,
    rng: &mut R,
) -> Action {
    let res = match lookup {
        Lookup::Local(res) => res,
        Lookup::Outside if settings.recursion_available => return Action::Forward,
        Lookup::Outside => return error_reply(query, ResponseCode::Refused, settings),
    };
    let Some(question) = query.queries.first() else {
        return error_reply(query, ResponseCode::FormErr, settings);
    };
    let mut meta = reply_metadata(query, settings);
    meta.authoritative = true;
    meta.response_code = res.rcode;
    let asked = question.name();
    // Owner names as asked: the question's case is echoed and every answer's name
    // compresses to a 2-byte pointer at the question.
    let mut answers: Vec<Record> = res
        .answers
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.name = asked.clone();
            r
        })
        .collect();
    answers.shuffle(rng);
    let (max_size, answer_limit) = match (transport, &query.edns) {
        (Transport::Tcp, _) => (u16::MAX, usize::MAX),
        (Transport::Udp, Some(e)) => (
            e.max_payload().clamp(PLAIN_UDP_MAX, EDNS_UDP_MAX),
            usize::MAX,
        ),
        (Transport::Udp, None) => (PLAIN_UDP_MAX, settings.udp_answer_limit),
    };
    let parts = Parts {
        meta,
        question: Some(question),
        answers: &answers,
        authority: res.authority.as_ref(),
        glue: &res.glue,
        edns: query.edns.as_ref().map(|_| reply_edns()),
        max_size,
        answer_limit,
    };
    encode(&parts)
}

/// Everything that goes into one reply, before size limits.
struct Parts<'a> {
    meta: Metadata,
    question: Option<&'a Query>,
    answers: &'a [Record],
    authority: Option<&'a Record>,
    glue: &'a [Record],
    edns: Option<Edns>,
    max_size: u16,
    answer_limit: usize,
}

/// Encodes a reply within its size: answers first (as many as fit, up to the limit), then
/// the SOA, then glue for the SRV answers that were included, then OPT (space for it is
/// reserved up front so the EDNS reply always carries it). TC is set when any answer or
/// glue record was left out.
fn encode(p: &Parts<'_>) -> Action {
    match try_encode(p) {
        Ok(bytes) => Action::Reply {
            bytes,
            rcode: p.meta.response_code,
        },
        // Only reachable if even the header and question do not fit, which a question
        // parsed from a packet of at most 64 KiB cannot cause; answer SERVFAIL bare.
        Err(_) => {
            let mut meta = p.meta;
            meta.response_code = ResponseCode::ServFail;
            meta.truncation = false;
            let mut buf = Vec::with_capacity(12);
            let mut enc = BinEncoder::new(&mut buf);
            let header = Header {
                metadata: meta,
                counts: HeaderCounts::default(),
            };
            match header.emit(&mut enc) {
                Ok(()) => Action::Reply {
                    bytes: buf,
                    rcode: ResponseCode::ServFail,
                },
                Err(_) => Action::Drop,
            }
        }
    }
}

fn try_encode(p: &Parts<'_>) -> Result<Vec<u8>, ProtoError> {
    let mut buf = Vec::with_capacity(512);
    let mut enc = BinEncoder::new(&mut buf);
    let opt_len = if p.edns.is_some() { OPT_RECORD_LEN } else { 0 };
    enc.set_max_size(p.max_size.saturating_sub(opt_len));
    let place = enc.place::<Header>()?;
    let mut counts = HeaderCounts::default();
    let mut truncated = false;
    if let Some(q) = p.question {
        q.emit(&mut enc)?;
        counts.queries = 1;
    }

    let wanted = p.answers.len().min(p.answer_limit);
    truncated |= wanted < p.answers.len();
    let written = emit_records(&mut enc, p.answers[..wanted].iter())?;
    truncated |= written < wanted;
    counts.answers = written as u16;

    if let Some(soa) = p.authority {
        let n = emit_records(&mut enc, std::iter::once(soa))?;
        truncated |= n == 0;
        counts.authorities = n as u16;
    }

    // Glue only for SRV targets that made it in; the rest would be noise.
    let included = &p.answers[..written];
    let glue: Vec<&Record> = if written == p.answers.len() {
        p.glue.iter().collect()
    } else {
        p.glue
            .iter()
            .filter(|g| {
                included
                    .iter()
                    .any(|a| matches!(&a.data, RData::SRV(s) if s.target == g.name))
            })
            .collect()
    };
    let n = emit_records(&mut enc, glue.iter().copied())?;
    truncated |= n < glue.len();
    counts.additionals = n as u16;

    if let Some(edns) = &p.edns {
        enc.set_max_size(p.max_size);
        let mut edns = edns.clone();
        edns.set_rcode_high(p.meta.response_code.high());
        Record::from(&edns).emit(&mut enc)?;
        counts.additionals += 1;
    }

    let mut meta = p.meta;
    meta.truncation = truncated;
    place.replace(
        &mut enc,
        Header {
            metadata: meta,
            counts,
        },
    )?;
    Ok(buf)
}

/// Emits records until one does not fit; returns how many were written.
fn emit_records<'r>(
    enc: &mut BinEncoder<'_>,
    records: impl Iterator<Item = &'r Record>,
) -> Result<usize, ProtoError> {
    let mut it = records;
    match enc.emit_iter(&mut it) {
        Ok(n) => Ok(n),
        Err(ProtoError::NotAllRecordsWritten { count, .. }) => Ok(count),
        Err(e) => Err(e),
    }
}

/// What the catalog says about `name` and `qtype`. Names are matched case-insensitively.
pub fn resolve(
    name: &Name,
    qtype: RecordType,
    settings: &DnsSettings,
    snapshot: &Snapshot,
) -> Lookup {
    let mut fqdn = name.clone();
    fqdn.set_fqdn(true);
    if !settings.domain.zone_of(&fqdn) {
        return Lookup::Outside;
    }
    let depends = |labels: &[&[u8]]| -> Depends {
        let is = |label: &[u8], word: &str| label.eq_ignore_ascii_case(word.as_bytes());
        match labels {
            [svc, kind] if is(kind, "service") => Depends::Service(lower(svc)),
            [first, second, kind] if is(kind, "service") => {
                match (first.strip_prefix(b"_"), second.strip_prefix(b"_")) {
                    (Some(svc), Some(_)) => Depends::Service(lower(svc)),
                    _ => Depends::Service(lower(second)),
                }
            }
            [_, kind] if is(kind, "node") => Depends::Nodes,
            _ => Depends::Nothing,
        }
    };
    let rel = fqdn
        .num_labels()
        .saturating_sub(settings.domain.num_labels()) as usize;
    let deps = depends(&fqdn.iter().take(rel).collect::<Vec<_>>());
    // The SOA serial is the index of what the answer is about, so a cached answer and a
    // fresh one agree.
    let serial = deps.index(snapshot);
    let ctx = Ctx {
        settings,
        snapshot,
        depends: deps,
        serial,
    };
    let rel_count = fqdn
        .num_labels()
        .saturating_sub(settings.domain.num_labels()) as usize;
    let labels: Vec<&[u8]> = fqdn.iter().take(rel_count).collect();
    let is = |label: &[u8], word: &str| label.eq_ignore_ascii_case(word.as_bytes());
    let res = match labels.as_slice() {
        [] => ctx.apex(qtype),
        [svc, kind] if is(kind, "service") => ctx.service(svc, None, qtype),
        [first, second, kind] if is(kind, "service") => {
            match (first.strip_prefix(b"_"), second.strip_prefix(b"_")) {
                // RFC 2782: _NAME._TAG.service.D; `_tcp` means any tag.
                (Some(svc), Some(tag)) if is(tag, "tcp") => ctx.service(svc, None, qtype),
                (Some(svc), Some(tag)) => ctx.service(svc, Some(tag), qtype),
                // TAG.NAME.service.D
                _ => ctx.service(second, Some(first), qtype),
            }
        }
        [node, kind] if is(kind, "node") => ctx.node(node, qtype),
        [hex, kind] if is(kind, "addr") => ctx.addr(hex, qtype),
        _ => ctx.negative(ResponseCode::NXDomain),
    };
    Lookup::Local(Box::new(res))
}

struct Ctx<'a> {
    settings: &'a DnsSettings,
    snapshot: &'a Snapshot,
    depends: Depends,
    serial: u64,
}

fn lower(label: &[u8]) -> String {
    String::from_utf8_lossy(label).to_ascii_lowercase()
}

impl Ctx<'_> {
    fn soa(&self) -> Record {
        let d = &self.settings.domain;
        let child = |l: &str| d.prepend_label(l).unwrap_or_else(|_| d.clone());
        let soa = SOA::new(
            child("ns"),
            child("hostmaster"),
            // The serial follows what the answer is about, so secondaries (if any) see changes.
            self.serial as u32,
            3600,
            600,
            86400,
            self.settings.negative_ttl,
        );
        Record::from_rdata(d.clone(), self.settings.negative_ttl, RData::SOA(soa))
    }

    fn negative(&self, rcode: ResponseCode) -> Resolution {
        Resolution {
            rcode,
            answers: Vec::new(),
            authority: Some(self.soa()),
            glue: Vec::new(),
            depends: self.depends.clone(),
        }
    }

    /// A name that exists: its records, or NODATA (NOERROR + SOA) when there are none.
    fn positive(&self, answers: Vec<Record>, glue: Vec<Record>) -> Resolution {
        if answers.is_empty() {
            return self.negative(ResponseCode::NoError);
        }
        Resolution {
            rcode: ResponseCode::NoError,
            answers,
            authority: None,
            glue,
            depends: self.depends.clone(),
        }
    }

    fn record(&self, name: &Name, data: RData) -> Record {
        Record::from_rdata(name.clone(), self.settings.ttl, data)
    }

    fn apex(&self, qtype: RecordType) -> Resolution {
        match qtype {
            RecordType::SOA | RecordType::ANY => {
                let mut soa = self.soa();
                soa.ttl = self.settings.ttl;
                self.positive(vec![soa], Vec::new())
            }
            _ => self.negative(ResponseCode::NoError),
        }
    }

    fn service(&self, name: &[u8], tag: Option<&[u8]>, qtype: RecordType) -> Resolution {
        let (Ok(name), Ok(tag)) = (
            std::str::from_utf8(name),
            tag.map(std::str::from_utf8).transpose(),
        ) else {
            return self.negative(ResponseCode::NXDomain);
        };
        let tags: Vec<String> = tag.map(|t| vec![t.to_string()]).unwrap_or_default();
        let instances: Vec<Instance<'_>> = self
            .snapshot
            .healthy_instances(name, &tags, self.settings.only_passing)
            .collect();
        if instances.is_empty() {
            return self.negative(ResponseCode::NXDomain);
        }
        let owner = self.owner(tag, name, "service");
        let mut answers = Vec::new();
        let mut glue = Vec::new();
        match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                for i in &instances {
                    if let Ok(ip) = i.address().parse::<IpAddr>() {
                        push_unique(&mut answers, self.address_record(&owner, ip, qtype));
                    }
                }
            }
            RecordType::SRV => {
                for i in &instances {
                    let Some((target, target_ip)) = self.srv_target(i) else {
                        continue;
                    };
                    let weight = match i.health() {
                        HealthStatus::Warning => i.service.weights.warning,
                        _ => i.service.weights.passing,
                    };
                    let srv = SRV::new(
                        1,
                        u16::try_from(weight).unwrap_or(u16::MAX),
                        i.service.port,
                        target.clone(),
                    );
                    push_unique(&mut answers, Some(self.record(&owner, RData::SRV(srv))));
                    if let Some(ip) = target_ip {
                        push_unique(&mut glue, self.address_record(&target, ip, RecordType::ANY));
                    }
                }
            }
            RecordType::TXT => {
                for i in &instances {
                    let txt = meta_txt(&i.service.meta).map(|t| self.record(&owner, t));
                    push_unique(&mut answers, txt);
                }
            }
            _ => {}
        }
        self.positive(answers, glue)
    }

    /// The canonical owner name of a service answer (cached answers are renamed to the
    /// question per query, so this only matters for tests and glue matching).
    fn owner(&self, first: Option<&str>, second: &str, kind: &str) -> Name {
        let mut labels: Vec<String> = Vec::with_capacity(3);
        if let Some(f) = first {
            labels.push(f.to_ascii_lowercase());
        }
        labels.push(second.to_ascii_lowercase());
        labels.push(kind.to_string());
        Name::from_labels(labels.iter().map(|s| s.as_bytes()))
            .and_then(|n| n.append_domain(&self.settings.domain))
            .unwrap_or_else(|_| self.settings.domain.clone())
    }

    /// SRV target of an instance: its node (`NODE.node.D`), or `<hex>.addr.D` when the
    /// service has its own IP, or the service's own host name. With the glue address.
    fn srv_target(&self, i: &Instance<'_>) -> Option<(Name, Option<IpAddr>)> {
        let node_ip = i.node.record.address;
        let own = i.service.address.as_str();
        if own.is_empty() || own.parse::<IpAddr>().ok() == Some(node_ip) {
            if let Ok(n) =
                Name::from_labels([i.node.record.name.to_ascii_lowercase().as_bytes(), b"node"])
                    .and_then(|n| n.append_domain(&self.settings.domain))
            {
                return Some((n, Some(node_ip)));
            }
            return Some((self.addr_name(node_ip)?, Some(node_ip)));
        }
        if let Ok(ip) = own.parse::<IpAddr>() {
            return Some((self.addr_name(ip)?, Some(ip)));
        }
        let mut host = Name::from_ascii(own).ok()?;
        host.set_fqdn(true);
        Some((host.to_lowercase(), None))
    }

    fn addr_name(&self, ip: IpAddr) -> Option<Name> {
        let hex = addr_hex(ip);
        Name::from_labels([hex.as_bytes(), b"addr"])
            .and_then(|n| n.append_domain(&self.settings.domain))
            .ok()
    }

    /// The A or AAAA record for `ip` if the asked type admits its family.
    fn address_record(&self, owner: &Name, ip: IpAddr, qtype: RecordType) -> Option<Record> {
        match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                Some(self.record(owner, RData::A(A(v4))))
            }
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                Some(self.record(owner, RData::AAAA(AAAA(v6))))
            }
            _ => None,
        }
    }

    fn node(&self, name: &[u8], qtype: RecordType) -> Resolution {
        let Ok(name) = std::str::from_utf8(name) else {
            return self.negative(ResponseCode::NXDomain);
        };
        let Some(node) = self.snapshot.node_ignore_case(name).filter(|n| n.serving()) else {
            return self.negative(ResponseCode::NXDomain);
        };
        let owner = self.owner(None, name, "node");
        let answers = match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                self.address_record(&owner, node.record.address, qtype)
            }
            RecordType::TXT => meta_txt(&node.record.meta).map(|t| self.record(&owner, t)),
            _ => None,
        };
        self.positive(answers.into_iter().collect(), Vec::new())
    }

    fn addr(&self, hex: &[u8], qtype: RecordType) -> Resolution {
        let Some(ip) = parse_addr_hex(hex) else {
            return self.negative(ResponseCode::NXDomain);
        };
        let owner = match self.addr_name(ip) {
            Some(n) => n,
            None => return self.negative(ResponseCode::NXDomain),
        };
        let answers = self.address_record(&owner, ip, qtype);
        self.positive(answers.into_iter().collect(), Vec::new())
    }
}

/// Adds a record unless an identical one is there (two instances on one address give one A).
fn push_unique(list: &mut Vec<Record>, r: Option<Record>) {
    if let Some(r) = r {
        if !list.contains(&r) {
            list.push(r);
        }
    }
}

/// TXT from metadata: one `k=v` string per entry; none when there is no metadata.
fn meta_txt(meta: &BTreeMap<String, String>) -> Option<RData> {
    if meta.is_empty() {
        return None;
    }
    let strings: Vec<String> = meta
        .iter()
        .map(|(k, v)| {
            let mut s = format!("{k}={v}");
            // A character-string holds at most 255 bytes; cut on a char boundary.
            if s.len() > 255 {
                let mut end = 255;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
            s
        })
        .collect();
    Some(RData::TXT(TXT::new(strings)))
}

/// The `.addr.D` label of an address: 8 hex digits for IPv4, 32 for IPv6 (Consul's form).
pub fn addr_hex(ip: IpAddr) -> String {
    let octets: Vec<u8> = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_addr_hex(label: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(label).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match text.len() {
        8 => u32::from_str_radix(text, 16)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        32 => u128::from_str_radix(text, 16)
            .ok()
            .map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
