//! Rendered bodies of hot catalog reads, reused while the answer's index stays the same.
//!
//! Rendering 100 instances as Consul JSON costs far more than serving bytes, and reads
//! outnumber changes by orders of magnitude. An entry is valid exactly as long as the
//! index of the answer it renders (e.g. `service_index(name)`) has not moved, because
//! every change that shows in such an answer moves that index (see `proto::catalog`).

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Bound on entries; past it the cache starts over (cheap, and keeps memory bounded
/// whatever names and parameters clients send).
const MAX_ENTRIES: usize = 2048;

#[derive(Default)]
pub struct BodyCache {
    map: Mutex<HashMap<String, (u64, Bytes)>>,
}

pub static CACHE: LazyLock<BodyCache> = LazyLock::new(BodyCache::default);

impl BodyCache {
    pub fn get(&self, key: &str, index: u64) -> Option<Bytes> {
        let map = self.map.lock().ok()?;
        match map.get(key) {
            Some((i, body)) if *i == index => Some(body.clone()),
            _ => None,
        }
    }

    pub fn put(&self, key: String, index: u64, body: Bytes) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
                map.clear();
            }
            map.insert(key, (index, body));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_valid_only_at_its_index_and_bounded() {
        let c = BodyCache::default();
        c.put("a".into(), 5, Bytes::from_static(b"x"));
        assert_eq!(c.get("a", 5).as_deref(), Some(&b"x"[..]));
        assert!(c.get("a", 6).is_none());
        for i in 0..(MAX_ENTRIES + 10) {
            c.put(format!("k{i}"), 1, Bytes::new());
        }
        assert!(c.map.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
