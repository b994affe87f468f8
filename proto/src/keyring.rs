//! Keyring operations between agents: the messages (kind-2 stream frames), their strict
//! codec with hard size limits, and the pure rules the caller's agent applies around a
//! cluster-wide operation (what must hold before `use` and `remove`, how replies add up).
//!
//! Request: one op byte, then the 32-byte key for install/use/remove.
//! Reply: `[name len u8][name][key count u8][32-byte keys, primary first][error len u16 BE][error]`.
//! Nothing is accepted past those limits, and trailing bytes are an error: the codec is
//! small enough to check by eye and is fuzzed (`fuzz/fuzz_targets/keyring_codec.rs`).

use crate::gossip::envelope::{KEY_LEN, MAX_KEYS};
use std::collections::BTreeMap;

/// The longest node name a reply carries (node names are DNS labels, 63 bytes).
pub const MAX_NODE_NAME: usize = 63;
/// The longest error text a reply carries.
pub const MAX_ERROR: usize = 512;
/// The largest request and reply on the wire.
pub const MAX_REQUEST: usize = 1 + KEY_LEN;
pub const MAX_REPLY: usize = 1 + MAX_NODE_NAME + 1 + MAX_KEYS * KEY_LEN + 2 + MAX_ERROR;

pub type Key = [u8; KEY_LEN];

/// One keyring operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    List,
    Install(Key),
    Use(Key),
    Remove(Key),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("keyring message of {0} bytes is over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("keyring message ends early")]
    Truncated,
    #[error("keyring message has {0} bytes too many")]
    Trailing(usize),
    #[error("unknown keyring operation {0}")]
    UnknownOp(u8),
    #[error("keyring reply lists {0} keys (at most {MAX_KEYS})")]
    TooManyKeys(usize),
    #[error("keyring reply: {0} is not valid UTF-8 or too long")]
    BadText(&'static str),
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Install(_) => "install",
            Op::Use(_) => "use",
            Op::Remove(_) => "remove",
        }
    }

    pub fn key(&self) -> Option<&Key> {
        match self {
            Op::List => None,
            Op::Install(k) | Op::Use(k) | Op::Remove(k) => Some(k),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (code, key) = match self {
            Op::List => (0u8, None),
            Op::Install(k) => (1, Some(k)),
            Op::Use(k) => (2, Some(k)),
            Op::Remove(k) => (3, Some(k)),
        };
        let mut out = vec![code];
        if let Some(k) = key {
            out.extend_from_slice(k);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Op, CodecError> {
        if bytes.len() > MAX_REQUEST {
            return Err(CodecError::TooLarge(bytes.len(), MAX_REQUEST));
        }
        let (&code, rest) = bytes.split_first().ok_or(CodecError::Truncated)?;
        if code == 0 {
            return if rest.is_empty() {
                Ok(Op::List)
            } else {
                Err(CodecError::Trailing(rest.len()))
            };
        }
        if code > 3 {
            return Err(CodecError::UnknownOp(code));
        }
        let key: Key = rest.try_into().map_err(|_| CodecError::Truncated)?;
        Ok(match code {
            1 => Op::Install(key),
            2 => Op::Use(key),
            _ => Op::Remove(key),
        })
    }
}

/// One agent's answer: its name and its keys after the operation (primary first), or why
/// it refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub node: String,
    pub keys: Vec<Key>,
    pub error: Option<String>,
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Reply {
    /// Encodes, clipping the name and error to their limits and keeping at most
    /// [`MAX_KEYS`] keys (a keyring never holds more).
    pub fn encode(&self) -> Vec<u8> {
        let name = clip(&self.node, MAX_NODE_NAME);
        let err = clip(self.error.as_deref().unwrap_or(""), MAX_ERROR);
        let keys = &self.keys[..self.keys.len().min(MAX_KEYS)];
        let mut out = Vec::with_capacity(4 + name.len() + keys.len() * KEY_LEN + err.len());
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(keys.len() as u8);
        for k in keys {
            out.extend_from_slice(k);
        }
        out.extend_from_slice(&(err.len() as u16).to_be_bytes());
        out.extend_from_slice(err.as_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, CodecError> {
        if bytes.len() > MAX_REPLY {
            return Err(CodecError::TooLarge(bytes.len(), MAX_REPLY));
        }
        let mut r = Reader(bytes);
        let name_len = r.byte()? as usize;
        if name_len > MAX_NODE_NAME {
            return Err(CodecError::BadText("node name"));
        }
        let node = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| CodecError::BadText("node name"))?
            .to_string();
        let n = r.byte()? as usize;
        if n > MAX_KEYS {
            return Err(CodecError::TooManyKeys(n));
        }
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            let k: Key = r
                .take(KEY_LEN)?
                .try_into()
                .map_err(|_| CodecError::Truncated)?;
            keys.push(k);
        }
        let len = r.take(2)?;
        let err_len = u16::from_be_bytes([len[0], len[1]]) as usize;
        if err_len > MAX_ERROR {
            return Err(CodecError::BadText("error"));
        }
        let err =
            std::str::from_utf8(r.take(err_len)?).map_err(|_| CodecError::BadText("error"))?;
        if !r.0.is_empty() {
            return Err(CodecError::Trailing(r.0.len()));
        }
        Ok(Reply {
            node,
            keys,
            error: (!err.is_empty()).then(|| err.to_string()),
        })
    }

    pub fn primary(&self) -> Option<&Key> {
        self.keys.first()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
}

/// What must hold across the cluster before an operation is sent, judged from every
/// member's current keys (a `List` round just before). `use` needs the key installed on
/// every member: a member that cannot open the new primary would be cut off. `remove`
/// needs the key to be nobody's primary: a member still sealing with it would be cut off.
/// Returns the reason, naming the members that are in the way.
pub fn precheck(op: &Op, listing: &[Reply]) -> Result<(), String> {
    let names = |pred: &dyn Fn(&Reply) -> bool| -> Vec<String> {
        listing
            .iter()
            .filter(|r| pred(r))
            .map(|r| r.node.clone())
            .collect()
    };
    match op {
        Op::Use(k) => {
            let missing = names(&|r: &Reply| r.error.is_none() && !r.keys.contains(k));
            if !missing.is_empty() {
                return Err(format!(
                    "key is not installed on {} member(s): {}; install it everywhere first",
                    missing.len(),
                    missing.join(", ")
                ));
            }
        }
        Op::Remove(k) => {
            let primary = names(&|r: &Reply| r.primary() == Some(k));
            if !primary.is_empty() {
                return Err(format!(
                    "key is the primary key on {} member(s): {}; make another key primary (use) first",
                    primary.len(),
                    primary.join(", ")
                ));
            }
        }
        Op::List | Op::Install(_) => {}
    }
    Ok(())
}

/// Consul's keyring answer for a set of replies: how many members hold each key and use
/// each as primary, and a message per member that failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub num_nodes: usize,
    pub keys: BTreeMap<Key, usize>,
    pub primary_keys: BTreeMap<Key, usize>,
    /// Node → what went wrong there.
    pub messages: BTreeMap<String, String>,
}

impl Summary {
    /// Adds up `replies`; `failed` are members that gave no reply at all (name, reason).
    pub fn of(replies: &[Reply], failed: &[(String, String)]) -> Summary {
        let mut s = Summary {
            num_nodes: replies.len() + failed.len(),
            ..Summary::default()
        };
        for r in replies {
            if let Some(e) = &r.error {
                s.messages.insert(r.node.clone(), e.clone());
            }
            for k in &r.keys {
                *s.keys.entry(*k).or_default() += 1;
            }
            if let Some(p) = r.primary() {
                *s.primary_keys.entry(*p).or_default() += 1;
            }
        }
        for (node, why) in failed {
            s.messages.insert(node.clone(), why.clone());
        }
        s
    }

    pub fn errors(&self) -> usize {
        self.messages.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(node: &str, keys: &[u8], error: Option<&str>) -> Reply {
        Reply {
            node: node.into(),
            keys: keys.iter().map(|b| [*b; 32]).collect(),
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn ops_round_trip_and_are_strict() {
        for op in [
            Op::List,
            Op::Install([1; 32]),
            Op::Use([2; 32]),
            Op::Remove([3; 32]),
        ] {
            assert_eq!(Op::decode(&op.encode()), Ok(op));
        }
        assert_eq!(Op::decode(&[]), Err(CodecError::Truncated));
        assert_eq!(Op::decode(&[0, 1]), Err(CodecError::Trailing(1)));
        assert_eq!(Op::decode(&[4; 33]), Err(CodecError::UnknownOp(4)));
        assert_eq!(Op::decode(&[1; 32]), Err(CodecError::Truncated));
        assert_eq!(Op::decode(&[1; 34]), Err(CodecError::TooLarge(34, 33)));
    }

    #[test]
    fn replies_round_trip_and_are_strict() {
        let r = reply("node-1", &[1, 2], Some("could not persist"));
        assert_eq!(Reply::decode(&r.encode()), Ok(r.clone()));
        let ok = reply("n", &[], None);
        assert_eq!(Reply::decode(&ok.encode()), Ok(ok));
        let mut bytes = r.encode();
        bytes.push(0);
        assert_eq!(Reply::decode(&bytes), Err(CodecError::Trailing(1)));
        for n in 0..r.encode().len() {
            assert!(Reply::decode(&r.encode()[..n]).is_err(), "cut at {n}");
        }
        // Overlong fields are clipped when encoding, refused when decoding.
        let long = Reply {
            node: "x".repeat(200),
            keys: vec![[0; 32]; 40],
            error: Some("é".repeat(400)),
        };
        let d = Reply::decode(&long.encode()).unwrap();
        assert_eq!((d.node.len(), d.keys.len()), (MAX_NODE_NAME, MAX_KEYS));
        assert!(d.error.unwrap().len() <= MAX_ERROR);
        assert_eq!(Reply::decode(&[200]), Err(CodecError::BadText("node name")));
        assert_eq!(Reply::decode(&[0, 17]), Err(CodecError::TooManyKeys(17)));
        assert_eq!(
            Reply::decode(&[1, 0xff, 0, 0, 0]),
            Err(CodecError::BadText("node name"))
        );
        assert!(matches!(
            Reply::decode(&vec![0; MAX_REPLY + 1]),
            Err(CodecError::TooLarge(..))
        ));
    }

    #[test]
    fn use_needs_the_key_everywhere_and_remove_needs_it_primary_nowhere() {
        let listing = [reply("a", &[1, 2], None), reply("b", &[1], None)];
        let e = precheck(&Op::Use([2; 32]), &listing).unwrap_err();
        assert!(e.contains("1 member(s): b"), "{e}");
        assert!(precheck(&Op::Use([1; 32]), &listing).is_ok());
        let e = precheck(&Op::Remove([1; 32]), &listing).unwrap_err();
        assert!(e.contains("2 member(s): a, b"), "{e}");
        assert!(precheck(&Op::Remove([2; 32]), &listing).is_ok());
        assert!(precheck(&Op::Install([9; 32]), &listing).is_ok());
    }

    #[test]
    fn summary_counts_keys_primaries_and_failures() {
        let s = Summary::of(
            &[
                reply("a", &[2, 1], None),
                reply("b", &[1, 2], None),
                reply("c", &[1], Some("disk full")),
            ],
            &[("d".into(), "timed out".into())],
        );
        assert_eq!(s.num_nodes, 4);
        assert_eq!(s.keys[&[1; 32]], 3);
        assert_eq!(s.keys[&[2; 32]], 2);
        assert_eq!(s.primary_keys[&[1; 32]], 2);
        assert_eq!(s.primary_keys[&[2; 32]], 1);
        assert_eq!(s.errors(), 2);
        assert_eq!(s.messages["d"], "timed out");
    }
}
