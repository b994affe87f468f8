//! A digest of everything a member holds, cheap to compare and cheap to keep current.
//!
//! Each node a member counts as up contributes a 64-bit hash of (name, version, run, leave
//! marker) to one of [`BUCKETS`] buckets (chosen by its name); a bucket is the XOR of its
//! nodes' hashes, so one change updates one bucket in constant time, whatever the size of
//! the catalog. Two members compare roots first (8 bytes: a quiet cluster stops there), then
//! the bucket hashes (2 KiB), then the nodes of the buckets that differ — so an exchange
//! costs what differs, not what is held.

use xxhash_rust::xxh3::xxh3_64;

pub const BUCKETS: usize = 256;

/// The bucket a node's name falls in.
pub fn bucket_of(name: &str) -> u8 {
    (xxh3_64(name.as_bytes()) >> 56) as u8
}

/// What a node with this stamp contributes to its bucket (never zero).
pub fn node_hash(name: &str, (version, run, left_boot): Stamp) -> u64 {
    let mut buf = Vec::with_capacity(name.len() + 24);
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&run.to_le_bytes());
    buf.extend_from_slice(&left_boot.to_le_bytes());
    // Never zero, so that a node always shows in its bucket.
    xxh3_64(&buf) | 1
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    buckets: Box<[u64; BUCKETS]>,
}

impl Default for Digest {
    fn default() -> Self {
        Digest {
            buckets: Box::new([0; BUCKETS]),
        }
    }
}

/// What a node contributes: (version, run, leave boot).
pub type Stamp = (u64, u64, u64);

impl Digest {
    /// Replaces a node's contribution (`None`: not counted).
    pub fn update(&mut self, name: &str, old: Option<Stamp>, new: Option<Stamp>) {
        if old == new {
            return;
        }
        let b = bucket_of(name) as usize;
        if let Some(s) = old {
            self.buckets[b] ^= node_hash(name, s);
        }
        if let Some(s) = new {
            self.buckets[b] ^= node_hash(name, s);
        }
    }

    /// Adds or removes (XOR is its own inverse) a contribution made by [`node_hash`].
    pub fn toggle(&mut self, name: &str, contribution: u64) {
        if contribution != 0 {
            self.buckets[bucket_of(name) as usize] ^= contribution;
        }
    }

    pub fn root(&self) -> u64 {
        let mut bytes = Vec::with_capacity(BUCKETS * 8);
        for b in self.buckets.iter() {
            bytes.extend_from_slice(&b.to_le_bytes());
        }
        xxh3_64(&bytes)
    }

    pub fn buckets(&self) -> Vec<u64> {
        self.buckets.to_vec()
    }

    /// The buckets whose hash differs from `theirs` (all of them if `theirs` is malformed).
    pub fn differing(&self, theirs: &[u64]) -> Vec<u8> {
        (0..BUCKETS)
            .filter(|&i| theirs.get(i) != Some(&self.buckets[i]) || theirs.len() != BUCKETS)
            .map(|i| i as u8)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_holdings_same_root_whatever_the_order() {
        let mut a = Digest::default();
        let mut b = Digest::default();
        a.update("x", None, Some((1, 1, 0)));
        a.update("y", None, Some((5, 1, 0)));
        a.update("x", Some((1, 1, 0)), Some((2, 1, 0)));
        b.update("y", None, Some((5, 1, 0)));
        b.update("x", None, Some((2, 1, 0)));
        assert_eq!(a, b);
        assert_eq!(a.root(), b.root());
        b.update("y", Some((5, 1, 0)), Some((6, 1, 0)));
        assert_ne!(a.root(), b.root());
        assert_eq!(a.differing(&b.buckets()), vec![bucket_of("y")]);
        b.update("y", Some((6, 1, 0)), None);
        a.update("y", Some((5, 1, 0)), None);
        assert_eq!(a.root(), b.root());
    }
}
