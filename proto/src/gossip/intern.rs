//! Hash-consing of values that many members hold identically: member identities and settled
//! node states.
//!
//! Every member of a 10,000-node cluster holds 10,000 identities and 10,000 node states. One
//! agent holds each once anyway; the simulator runs 10,000 members in one process, where
//! the same identity or the same settled state of a node would otherwise be held 10,000
//! times. Decoding and applying look values up here and share one allocation per distinct
//! value. The table is per thread (a cache, not shared state: a value found here is equal
//! to the one looked up, so nothing observable depends on it) and holds only weak
//! references, swept as it grows.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Weak};

/// A per-thread table of weakly held shared values.
pub struct Table<K, V> {
    map: HashMap<K, Weak<V>, rustc_hash::FxBuildHasher>,
    /// Size after the last sweep; the next sweep runs when the table has doubled.
    swept_at: usize,
}

impl<K: Eq + Hash, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            map: HashMap::default(),
            swept_at: 1024,
        }
    }
}

impl<K: Eq + Hash, V> Table<K, V> {
    /// The shared value for `key`, or `make()` shared from now on.
    pub fn get_or_insert(&mut self, key: K, make: impl FnOnce() -> Arc<V>) -> Arc<V> {
        if let Some(v) = self.map.get(&key).and_then(Weak::upgrade) {
            return v;
        }
        let v = make();
        self.map.insert(key, Arc::downgrade(&v));
        if self.map.len() >= self.swept_at * 2 {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.swept_at = self.map.len().max(1024);
        }
        v
    }
}

/// Runs `f` with this thread's table for `K`/`V`.
pub fn with<K: Eq + Hash + 'static, V: 'static, R>(
    local: &'static std::thread::LocalKey<RefCell<Table<K, V>>>,
    f: impl FnOnce(&mut Table<K, V>) -> R,
) -> R {
    local.with(|t| f(&mut t.borrow_mut()))
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static T: RefCell<Table<u32, String>> = RefCell::new(Table::default());
    }

    #[test]
    fn equal_keys_share_and_dead_values_are_swept() {
        let a = with(&T, |t| t.get_or_insert(1, || Arc::new("one".into())));
        let b = with(&T, |t| t.get_or_insert(1, || Arc::new("uno".into())));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        let c = with(&T, |t| t.get_or_insert(1, || Arc::new("again".into())));
        assert_eq!(*c, "again");
        for i in 0..10_000 {
            let _ = with(&T, |t| t.get_or_insert(i + 10, || Arc::new(String::new())));
        }
        assert!(T.with(|t| t.borrow().map.len()) < 5_000);
    }
}
