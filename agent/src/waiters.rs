//! Blocking queries wait on the answer they asked about: a watcher of `web` is woken when
//! `web`'s index moves, not by every change to the catalog. With thousands of open
//! watches and a busy fleet, waking all of them per change (each to find its index
//! unmoved and sleep again) would cost watches × changes; here a change costs what it
//! touched (see `muster_proto::catalog::Touched`).

use muster_proto::catalog::Touched;
use muster_proto::Snapshot;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

/// What a blocking query follows; it decides both the index the answer carries and which
/// changes wake the query.
#[derive(Clone, Copy, Debug)]
pub enum Watch<'a> {
    /// The catalog's own index: any change (composite views).
    Catalog,
    /// `/v1/catalog/services`: the list of names and their tags.
    ServiceList,
    /// The member list (addresses, status, meta, protect mode).
    NodeList,
    /// One service name, in any case.
    Service(&'a str),
    /// One node, by its exact name; a node not listed answers with the node list's index.
    Node(&'a str),
    /// One service name and the member list (the status page's service view).
    ServiceAndNodes(&'a str),
}

impl Watch<'_> {
    /// The index of the answer this watch follows, in `snap`.
    pub fn index(&self, snap: &Snapshot) -> u64 {
        match *self {
            Watch::Catalog => snap.index(),
            Watch::ServiceList => snap.services_index(),
            Watch::NodeList => snap.nodes_index(),
            Watch::Service(name) => snap.service_index(name),
            Watch::Node(name) => snap
                .node(name)
                .map(|n| n.indexes.modify)
                .unwrap_or_else(|| snap.nodes_index()),
            Watch::ServiceAndNodes(name) => snap.service_index(name).max(snap.nodes_index()),
        }
        .max(1)
    }

    /// The keys whose moves can change [`Watch::index`].
    fn keys(&self) -> Vec<Key> {
        match *self {
            Watch::Catalog => vec![Key::Catalog],
            Watch::ServiceList => vec![Key::ServiceList],
            Watch::NodeList => vec![Key::NodeList],
            Watch::Service(name) => vec![Key::Service(name.to_ascii_lowercase())],
            // An unlisted node answers with the node list's index, and the node becoming
            // listed moves the node's own key too, so its own key is enough.
            Watch::Node(name) => vec![Key::Node(name.to_string())],
            Watch::ServiceAndNodes(name) => {
                vec![Key::Service(name.to_ascii_lowercase()), Key::NodeList]
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Catalog,
    ServiceList,
    NodeList,
    Service(String),
    Node(String),
}

/// The open watches, one channel per key that someone waits on.
pub struct Waiters {
    table: Mutex<Table>,
}

struct Table {
    channels: HashMap<Key, watch::Sender<u64>>,
    /// The table's size after the last sweep.
    swept_len: usize,
}

/// The receivers of one blocking query.
pub struct Subscription {
    receivers: Vec<watch::Receiver<u64>>,
}

impl Subscription {
    /// Resolves when any followed key moved; false when the agent is going away.
    pub async fn changed(&mut self) -> bool {
        match self.receivers.as_mut_slice() {
            [a] => a.changed().await.is_ok(),
            [a, b] => tokio::select! {
                r = a.changed() => r.is_ok(),
                r = b.changed() => r.is_ok(),
            },
            _ => std::future::pending().await,
        }
    }
}

/// Channels with no receiver left are swept once the table doubles since the last sweep,
/// so an idle key costs nothing for long and a sweep is paid for by the subscriptions
/// that grew the table.
const MIN_SWEEP: usize = 64;

impl Waiters {
    pub fn new() -> Waiters {
        Waiters {
            table: Mutex::new(Table {
                channels: HashMap::new(),
                swept_len: 0,
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // Every operation under the lock leaves the table consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts following `watch`. Subscribe before reading the snapshot: a publish between
    /// the two then shows as a change, never as a missed one.
    pub fn subscribe(&self, watch: Watch<'_>) -> Subscription {
        let mut table = self.table();
        table.sweep();
        let channels = &mut table.channels;
        let receivers = watch
            .keys()
            .into_iter()
            .map(|k| {
                channels
                    .entry(k)
                    .or_insert_with(|| watch::channel(0).0)
                    .subscribe()
            })
            .collect();
        Subscription { receivers }
    }

    /// Wakes the watches on what `touched` moved (after the snapshot at `index` is stored).
    pub fn wake(&self, index: u64, touched: &Touched, snap: &Snapshot) {
        let mut table = self.table();
        let channels = &mut table.channels;
        if channels.is_empty() {
            return;
        }
        let wake = |channels: &mut HashMap<Key, watch::Sender<u64>>, key: &Key| {
            if let Some(tx) = channels.get(key) {
                if tx.receiver_count() == 0 {
                    channels.remove(key);
                } else {
                    tx.send_replace(index);
                }
            }
        };
        wake(channels, &Key::Catalog);
        if touched.service_list {
            wake(channels, &Key::ServiceList);
        }
        if touched.node_list {
            wake(channels, &Key::NodeList);
        }
        // A forgotten name moves the index of every name not held (rare: the last
        // instance of a name went away); those watches are found by looking.
        if touched.absent_names {
            let absent: Vec<Key> = channels
                .keys()
                .filter(|k| matches!(k, Key::Service(n) if !snap.holds_name(n)))
                .cloned()
                .collect();
            for key in &absent {
                wake(channels, key);
            }
        }
        for name in &touched.names {
            wake(channels, &Key::Service(name.clone()));
        }
        for node in &touched.nodes {
            wake(channels, &Key::Node(node.clone()));
        }
    }

    /// How many keys are followed (tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().channels.len()
    }
}

impl Table {
    /// Drops channels nobody waits on, once the table has grown enough to be worth it.
    fn sweep(&mut self) {
        if self.channels.len() >= (self.swept_len * 2).max(MIN_SWEEP) {
            self.channels.retain(|_, tx| tx.receiver_count() > 0);
            self.swept_len = self.channels.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::catalog::{Catalog, Standing};
    use muster_proto::gossip::{EntryKey, Value};
    use muster_proto::model::{Service, Weights};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn register(c: &mut Catalog, node: &str, id: &str, name: &str) {
        let s = Service {
            id: id.into(),
            name: name.into(),
            tags: vec![],
            address: String::new(),
            port: 80,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        };
        c.apply_changes(
            node,
            &[(
                EntryKey::Service(id.into()),
                Some(Value::Service(Arc::new(s))),
            )],
            0,
        );
    }

    fn publish(c: &mut Catalog, w: &Waiters) {
        let snap = c.snapshot();
        w.wake(snap.index(), &c.take_touched(), &snap);
    }

    #[tokio::test]
    async fn a_change_wakes_only_its_watchers() {
        let w = Waiters::new();
        let mut c = Catalog::new();
        c.set_standing("a", Standing::alive(), 0);
        register(&mut c, "a", "w1", "web");
        publish(&mut c, &w);
        let mut web = w.subscribe(Watch::Service("WEB"));
        let mut db = w.subscribe(Watch::Service("db"));
        let mut node = w.subscribe(Watch::Node("a"));
        let mut other = w.subscribe(Watch::Node("b"));
        let mut any = w.subscribe(Watch::Catalog);
        register(&mut c, "a", "w2", "web");
        publish(&mut c, &w);
        let now = std::future::ready(());
        for (sub, woken) in [
            (&mut web, true),
            (&mut db, false),
            (&mut node, true),
            (&mut other, false),
            (&mut any, true),
        ] {
            let r = tokio::select! {
                biased;
                _ = sub.changed() => true,
                _ = now.clone() => false,
            };
            assert_eq!(r, woken);
        }
        // The first instance of `db` moves db's watchers.
        register(&mut c, "a", "d1", "db");
        publish(&mut c, &w);
        assert!(db.changed().await);
    }

    #[tokio::test]
    async fn forgetting_a_name_wakes_watchers_of_absent_names() {
        let w = Waiters::new();
        let mut c = Catalog::new();
        c.set_standing("a", Standing::alive(), 0);
        register(&mut c, "a", "w1", "web");
        publish(&mut c, &w);
        let mut ghost = w.subscribe(Watch::Service("ghost"));
        let before = Watch::Service("ghost").index(&c.snapshot());
        c.remove_node("a");
        publish(&mut c, &w);
        assert!(ghost.changed().await);
        assert!(Watch::Service("ghost").index(&c.snapshot()) > before);
    }

    #[test]
    fn channels_nobody_waits_on_are_swept() {
        let w = Waiters::new();
        let kept = w.subscribe(Watch::Service("web"));
        for i in 1..MIN_SWEEP {
            drop(w.subscribe(Watch::Node(&format!("n{i}"))));
        }
        // The subscription that finds the table full sweeps it first.
        let _one_more = w.subscribe(Watch::NodeList);
        assert_eq!(w.len(), 2);
        drop(kept);
    }
}
