//! Changes learnt in the last few seconds: what a member can hand out when asked by hash,
//! and which hashes it announces in the trailer of its SWIM datagrams.
//!
//! Eager pushes reach almost every member in a few network trips; this is how the rest
//! catch up within a second or so instead of waiting for anti-entropy. A member that sees
//! a hash it does not know in a trailer asks the sender for it (see [`Wants`]). The table
//! and the wants are bounded; anything older than the window is left to anti-entropy. A
//! burst of more changes than a trailer carries is reported ([`Recent::take_saturated`]):
//! the node then makes one anti-entropy exchange once the burst has left the window.

use super::data::Name;
use super::wire::Verdict;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use xxhash_rust::xxh3::xxh3_64;

/// How long a change is announced after this member learnt it.
pub const WINDOW: Duration = Duration::from_secs(3);
/// How long a change is remembered (and handed out): longer than it is announced, so that a
/// member does not ask for a change it had, announced by one that learnt it later.
pub const KEEP: Duration = Duration::from_secs(9);
/// Most changes kept at once.
pub const MAX_RECENT: usize = 2048;
/// How long to wait for an announced change to arrive on its own before pulling it.
pub const PULL_DELAY: Duration = Duration::from_millis(60);
/// Announced hashes waiting to be pulled, at most.
pub const MAX_WANTS: usize = 2048;

/// The hash a change is announced by.
pub fn change_hash(node: &str, version: u64) -> u64 {
    let mut buf = Vec::with_capacity(node.len() + 9);
    buf.push(b'c');
    buf.extend_from_slice(node.as_bytes());
    buf.extend_from_slice(&version.to_le_bytes());
    xxh3_64(&buf)
}

pub fn verdict_hash(v: &Verdict) -> u64 {
    let (tag, id) = match v {
        Verdict::ForceLeft(id) => (b'f', id),
        Verdict::Joined(id) => (b'j', id),
    };
    let mut buf = Vec::with_capacity(id.name().len() + 9);
    buf.push(tag);
    buf.extend_from_slice(id.name().as_bytes());
    buf.extend_from_slice(&id.boot().to_le_bytes());
    xxh3_64(&buf)
}

/// What can be handed out for a hash.
#[derive(Clone, Debug)]
pub enum Content {
    /// The change of `node` that ended at version `to`: handed out from the node's state we
    /// hold (the change itself is not kept twice).
    Change {
        node: Name,
        to: u64,
    },
    Verdict(Verdict),
    /// Known (learnt by anti-entropy), nothing to hand out.
    Seen,
}

#[derive(Default)]
pub struct Recent {
    map: rustc_hash::FxHashMap<u64, Content>,
    /// (learnt at, hash), oldest first.
    order: VecDeque<(Duration, u64)>,
    cursor: usize,
    /// When the changes of a burst (more in the window than one trailer carries) leave
    /// the window, if one was seen since the last [`Recent::take_saturated`].
    saturated_until: Option<Duration>,
}

impl Recent {
    pub fn knows(&self, hash: u64) -> bool {
        self.map.contains_key(&hash)
    }

    pub fn get(&self, hash: u64) -> Option<&Content> {
        self.map.get(&hash)
    }

    /// Records a change; returns false if it was already known.
    pub fn insert(&mut self, now: Duration, hash: u64, content: Content) -> bool {
        self.expire(now);
        if let Some(held) = self.map.get_mut(&hash) {
            if matches!(held, Content::Seen) && !matches!(content, Content::Seen) {
                *held = content;
            }
            return false;
        }
        if self.order.len() >= MAX_RECENT {
            if let Some((_, h)) = self.order.pop_front() {
                self.map.remove(&h);
            }
        }
        self.map.insert(hash, content);
        self.order.push_back((now, hash));
        true
    }

    fn expire(&mut self, now: Duration) {
        while let Some(&(at, h)) = self.order.front() {
            if now.saturating_sub(at) <= KEEP {
                break;
            }
            self.order.pop_front();
            self.map.remove(&h);
        }
    }

    /// Up to `max` hashes to announce: the newest half, then a rotating share of the rest,
    /// so that over a few datagrams every change in the window is announced.
    pub fn announce(&mut self, now: Duration, max: usize) -> Vec<u64> {
        self.expire(now);
        let servable: Vec<(Duration, u64)> = self
            .order
            .iter()
            .rev()
            .take_while(|(at, _)| now.saturating_sub(*at) <= WINDOW)
            .filter(|(_, h)| !matches!(self.map.get(h), Some(Content::Seen) | None))
            .copied()
            .collect();
        if servable.len() <= max {
            return servable.into_iter().map(|(_, h)| h).collect();
        }
        let until = servable[0].0 + WINDOW;
        self.saturated_until = Some(self.saturated_until.map_or(until, |u| u.max(until)));
        let servable: Vec<u64> = servable.into_iter().map(|(_, h)| h).collect();
        let newest = max / 2;
        let mut out: Vec<u64> = servable[..newest].to_vec();
        let rest = &servable[newest..];
        for i in 0..(max - newest) {
            out.push(rest[(self.cursor + i) % rest.len()]);
        }
        self.cursor = (self.cursor + max - newest) % rest.len();
        out
    }

    /// Whether announcements fell behind (more changes in the window than a trailer
    /// carries) since the last call, and if so when those changes leave the window:
    /// members that missed the push of one may never hear of it.
    pub fn take_saturated(&mut self) -> Option<Duration> {
        self.saturated_until.take()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Announced hashes this member does not know yet, and who announced them.
#[derive(Default)]
pub struct Wants {
    map: rustc_hash::FxHashMap<u64, Want>,
}

struct Want {
    from: SocketAddr,
    first_seen: Duration,
    asked: Option<Duration>,
}

impl Wants {
    pub fn note(&mut self, now: Duration, hash: u64, from: SocketAddr) {
        if self.map.len() >= MAX_WANTS && !self.map.contains_key(&hash) {
            return;
        }
        let w = self.map.entry(hash).or_insert(Want {
            from,
            first_seen: now,
            asked: None,
        });
        // Asked once and still missing a while later: ask whoever announces it next.
        if w.asked
            .is_some_and(|at| now.saturating_sub(at) > Duration::from_millis(500))
        {
            w.from = from;
            w.asked = None;
            w.first_seen = now;
        }
    }

    /// Hashes due to be pulled, grouped by who announced them. `known` filters out what
    /// arrived meanwhile.
    pub fn due(
        &mut self,
        now: Duration,
        known: impl Fn(u64) -> bool,
    ) -> Vec<(SocketAddr, Vec<u64>)> {
        self.map
            .retain(|h, w| !known(*h) && now.saturating_sub(w.first_seen) <= WINDOW * 2);
        let mut by_peer: Vec<(SocketAddr, Vec<u64>)> = Vec::new();
        let mut hashes: Vec<(&u64, &mut Want)> = self.map.iter_mut().collect();
        // Deterministic order (the map's is not meaningful).
        hashes.sort_by_key(|(h, _)| **h);
        for (h, w) in hashes {
            if w.asked.is_none() && now.saturating_sub(w.first_seen) >= PULL_DELAY {
                w.asked = Some(now);
                match by_peer.iter_mut().find(|(p, _)| *p == w.from) {
                    Some((_, v)) => v.push(*h),
                    None => by_peer.push((w.from, vec![*h])),
                }
            }
        }
        by_peer.sort_by_key(|(p, _)| *p);
        by_peer
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn changes_are_announced_then_forgotten_after_the_window() {
        let mut r = Recent::default();
        for i in 0..40u64 {
            assert!(r.insert(
                at(i),
                i,
                Content::Verdict(super::super::wire::Verdict::ForceLeft(
                    super::super::identity::NodeId::new("x", "127.0.0.1:1".parse().unwrap(), i)
                ))
            ));
        }
        assert!(!r.insert(at(50), 3, Content::Seen));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            let a = r.announce(at(60), 24);
            assert_eq!(a.len(), 24);
            assert_eq!(a[0], 39, "newest first");
            seen.extend(a);
        }
        assert_eq!(
            seen.len(),
            40,
            "every change announced over a few datagrams"
        );
        assert!(r.announce(at(5_000), 24).is_empty(), "no longer announced");
        assert!(r.knows(39), "still remembered");
        assert!(r.announce(at(20_000), 24).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn a_burst_larger_than_a_trailer_is_reported_with_when_it_leaves_the_window() {
        let mut r = Recent::default();
        let v = |i: u64| {
            Content::Verdict(super::super::wire::Verdict::ForceLeft(
                super::super::identity::NodeId::new("x", "127.0.0.1:1".parse().unwrap(), i),
            ))
        };
        for i in 0..24u64 {
            r.insert(at(i), i, v(i));
        }
        r.announce(at(30), 24);
        assert_eq!(r.take_saturated(), None, "one trailer carries them all");
        for i in 24..40u64 {
            r.insert(at(i), i, v(i));
        }
        r.announce(at(50), 24);
        r.announce(at(60), 24);
        assert_eq!(r.take_saturated(), Some(at(39) + WINDOW));
        assert_eq!(r.take_saturated(), None, "taken");
        r.announce(at(39) + WINDOW + at(1), 24);
        assert_eq!(r.take_saturated(), None, "the burst has left the window");
    }

    #[test]
    fn wants_wait_then_ask_once_then_ask_another() {
        let mut w = Wants::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        w.note(at(0), 7, a);
        assert!(
            w.due(at(10), |_| false).is_empty(),
            "waits for the change to arrive"
        );
        assert_eq!(w.due(at(100), |_| false), vec![(a, vec![7])]);
        assert!(w.due(at(200), |_| false).is_empty(), "asked once");
        w.note(at(700), 7, b);
        assert_eq!(w.due(at(800), |_| false), vec![(b, vec![7])]);
        assert!(w.due(at(900), |h| h == 7).is_empty());
        assert!(w.is_empty());
    }
}
