//! The hot path for the common query shape: one question of class IN, no records except an
//! optional EDNS(0) OPT. Its reply is assembled from pieces that hickory encoded once per
//! (name, type) and snapshot, so a cached answer costs a header check, a copy of the
//! question, a shuffle of indexes and a few memcpys.
//!
//! Everything else (other opcodes, several questions, compression in the question, EDNS
//! versions above 0, names outside the domain...) returns `None` from [`parse_simple`] or
//! [`Prepared::new`] and goes through the general path in the parent module, which defines
//! the behaviour; tests check that both paths give the same answers.

use super::{DnsSettings, Resolution, Transport, EDNS_UDP_MAX, PLAIN_UDP_MAX};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{
    BinDecodable, BinDecoder, BinEncodable, BinEncoder, NameEncoding,
};
use hickory_proto::ProtoError;
use rand::seq::SliceRandom;
use rand::Rng;

const HEADER_LEN: usize = 12;
const OPT_RECORD_LEN: usize = 11;

/// A query of the simple shape, borrowed from its packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimpleQuery<'a> {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question as it came: name, type and class, in wire form.
    pub question: &'a [u8],
    /// The name part of `question`, in wire form (length-prefixed labels, root byte).
    pub name: &'a [u8],
    pub qtype: u16,
    /// The client's EDNS UDP payload size, when it sent OPT.
    pub edns_payload: Option<u16>,
}

impl SimpleQuery<'_> {
    /// The cache key: the name in wire form, ASCII-lowercased (length bytes are below 64,
    /// so lowercasing cannot touch them), then the type.
    pub fn write_key(&self, key: &mut Vec<u8>) {
        key.clear();
        key.extend(self.name.iter().map(u8::to_ascii_lowercase));
        key.extend_from_slice(&self.qtype.to_be_bytes());
    }

    /// The question name as hickory sees it (only needed on a cache miss).
    pub fn decode_name(&self) -> Result<Name, ProtoError> {
        let mut d = BinDecoder::new(self.name);
        Ok(Name::read(&mut d)?)
    }

    pub fn record_type(&self) -> RecordType {
        RecordType::from(self.qtype)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Recognises the simple shape; anything else is `None` (for the general path).
pub fn parse_simple(p: &[u8]) -> Option<SimpleQuery<'_>> {
    if p.len() < HEADER_LEN + 5 {
        return None;
    }
    // QR = 0 and OPCODE = QUERY
    if p[2] & 0xf8 != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (be16(p, 4)?, be16(p, 6)?, be16(p, 8)?, be16(p, 10)?);
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = *p.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        // A pointer (or the reserved 0x40/0x80 forms) in the question: general path.
        if len > 63 {
            return None;
        }
        at += 1 + len;
        if at - HEADER_LEN > 255 {
            return None;
        }
    }
    let name_end = at;
    let qtype = be16(p, at)?;
    let qclass = be16(p, at + 2)?;
    if qclass != 1 {
        return None;
    }
    at += 4;
    let question = &p[HEADER_LEN..at];
    let edns_payload = if ar == 1 {
        // OPT: root name, type 41, class = payload, ttl = ext-rcode/version/flags, rdata.
        if *p.get(at)? != 0 || be16(p, at + 1)? != 41 {
            return None;
        }
        let payload = be16(p, at + 3)?;
        let version = *p.get(at + 6)?;
        if version != 0 {
            return None;
        }
        let rdlen = be16(p, at + 9)? as usize;
        at += OPT_RECORD_LEN + rdlen;
        Some(payload)
    } else {
        None
    };
    if at != p.len() {
        return None;
    }
    Some(SimpleQuery {
        id: u16::from_be_bytes([p[0], p[1]]),
        recursion_desired: p[2] & 0x01 != 0,
        checking_disabled: p[3] & 0x10 != 0,
        question,
        name: &p[HEADER_LEN..name_end],
        qtype,
        edns_payload,
    })
}

/// A [`Resolution`] encoded once: every record as position-independent bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    rcode: ResponseCode,
    /// Answers, each starting with a compression pointer to the question name (offset 12).
    answers: Vec<Vec<u8>>,
    /// For each answer, the glue records (indexes into `glue`) it needs.
    glue_of: Vec<Vec<usize>>,
    authority: Option<Vec<u8>>,
    /// Glue with full owner names.
    glue: Vec<Vec<u8>>,
    /// What the answer depends on (it stays good while that part's index holds).
    depends: super::Depends,
}

fn encode_uncompressed(r: &Record) -> Result<Vec<u8>, ProtoError> {
    let mut buf = Vec::with_capacity(64);
    let mut enc = BinEncoder::new(&mut buf);
    enc.set_name_encoding(NameEncoding::Uncompressed);
    r.emit(&mut enc)?;
    Ok(buf)
}

impl Prepared {
    pub fn new(res: &Resolution) -> Result<Self, ProtoError> {
        let mut answers = Vec::with_capacity(res.answers.len());
        let mut glue_of = Vec::with_capacity(res.answers.len());
        for a in &res.answers {
            // Encoded with the root as owner (one 0 byte), then that byte swapped for a
            // pointer to the question, which is always at offset 12.
            let mut r = a.clone();
            r.name = Name::root();
            let bytes = encode_uncompressed(&r)?;
            let mut piece = Vec::with_capacity(bytes.len() + 1);
            piece.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
            piece.extend_from_slice(bytes.get(1..).unwrap_or_default());
            answers.push(piece);
            glue_of.push(match &a.data {
                RData::SRV(s) => res
                    .glue
                    .iter()
                    .enumerate()
                    .filter(|(_, g)| g.name == s.target)
                    .map(|(i, _)| i)
                    .collect(),
                _ => Vec::new(),
            });
        }
        Ok(Prepared {
            rcode: res.rcode,
            answers,
            glue_of,
            authority: res
                .authority
                .as_ref()
                .map(encode_uncompressed)
                .transpose()?,
            glue: res
                .glue
                .iter()
                .map(encode_uncompressed)
                .collect::<Result<_, _>>()?,
            depends: res.depends.clone(),
        })
    }

    pub fn rcode(&self) -> ResponseCode {
        self.rcode
    }

    pub fn depends(&self) -> &super::Depends {
        &self.depends
    }
}

/// Reusable per-thread buffers, so a reply allocates nothing but itself.
#[derive(Default, Debug)]
pub struct Scratch {
    order: Vec<usize>,
    glue_used: Vec<bool>,
}

/// Writes the reply to `q` into `out`: the same flags, shuffle and size rules as the
/// general path's `respond`.
pub fn write_reply<R: Rng + ?Sized>(
    q: &SimpleQuery<'_>,
    prepared: &Prepared,
    settings: &DnsSettings,
    transport: Transport,
    rng: &mut R,
    scratch: &mut Scratch,
    out: &mut Vec<u8>,
) {
    let (max_size, answer_limit) = match (transport, q.edns_payload) {
        (Transport::Tcp, _) => (u16::MAX as usize, usize::MAX),
        (Transport::Udp, Some(size)) => {
            (size.clamp(PLAIN_UDP_MAX, EDNS_UDP_MAX) as usize, usize::MAX)
        }
        (Transport::Udp, None) => (PLAIN_UDP_MAX as usize, settings.udp_answer_limit),
    };
    let room = max_size
        - if q.edns_payload.is_some() {
            OPT_RECORD_LEN
        } else {
            0
        };

    out.clear();
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, OPCODE 0, AA, (TC later), RD as asked
    out.push(0x84 | u8::from(q.recursion_desired));
    out.push(
        (if settings.recursion_available {
            0x80
        } else {
            0
        }) | (if q.checking_disabled { 0x10 } else { 0 })
            | prepared.rcode.low(),
    );
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(q.question);

    let order = &mut scratch.order;
    order.clear();
    order.extend(0..prepared.answers.len());
    order.shuffle(rng);
    let wanted = order.len().min(answer_limit);
    let mut truncated = wanted < order.len();
    let mut written = 0usize;
    for &i in &order[..wanted] {
        let piece = &prepared.answers[i];
        if out.len() + piece.len() > room {
            truncated = true;
            break;
        }
        out.extend_from_slice(piece);
        written += 1;
    }

    let mut authorities = 0u16;
    if let Some(soa) = &prepared.authority {
        if out.len() + soa.len() <= room {
            out.extend_from_slice(soa);
            authorities = 1;
        } else {
            truncated = true;
        }
    }

    let used = &mut scratch.glue_used;
    used.clear();
    let all = written == prepared.answers.len();
    used.resize(prepared.glue.len(), all);
    if !all {
        for &i in &order[..written] {
            for &g in &prepared.glue_of[i] {
                used[g] = true;
            }
        }
    }
    let mut additionals = 0u16;
    for (g, piece) in prepared.glue.iter().enumerate() {
        if !used[g] {
            continue;
        }
        if out.len() + piece.len() > room {
            truncated = true;
            break;
        }
        out.extend_from_slice(piece);
        additionals += 1;
    }

    if q.edns_payload.is_some() {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&EDNS_UDP_MAX.to_be_bytes());
        out.extend_from_slice(&[prepared.rcode.high(), 0, 0, 0, 0, 0]);
        additionals += 1;
    }

    if truncated {
        out[2] |= 0x02;
    }
    out[6..8].copy_from_slice(&(written as u16).to_be_bytes());
    out[8..10].copy_from_slice(&authorities.to_be_bytes());
    out[10..12].copy_from_slice(&additionals.to_be_bytes());
}
