//! How a change spreads: each member that first receives it pushes it to `fanout` random
//! members (eagerly, at once), announces its hash in the trailer of the SWIM datagrams it
//! sends in the next seconds, and hands it out to whoever asks for it by hash. A member that
//! sees a hash it does not know, and does not receive the change on its own shortly after,
//! pulls it from the member that announced it.
//!
//! The eager pushes reach almost every member within a few network trips at `fanout` sends
//! per member; the announcements ride on packets SWIM sends anyway, so repairing what the
//! pushes missed costs only the pulls themselves. What even that misses, anti-entropy
//! (`sync`) repairs.

use super::super::data::Delta;
use super::super::recent::{change_hash, verdict_hash, Content};
use super::super::wire::{self, Datagram, Pull, Push, Verdict, Want, MAX_PAYLOAD};
use super::{Node, Tick};
use foca::AccumulatingRuntime;
use std::net::SocketAddr;
use std::time::Duration;

impl Node {
    /// A datagram arrived.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        if self.left {
            return;
        }
        let datagram = match wire::parse_datagram(bytes) {
            Ok(d) => d,
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match datagram {
            Datagram::Swim { packet, trailer } => {
                if !self.admits_swim_packet(packet) {
                    self.stats.members_refused += 1;
                    return;
                }
                self.peek_swim_header(now, packet);
                for h in trailer {
                    if !self.recent.knows(h) {
                        self.wants.note(now, h, from);
                        if !self.pulls_scheduled {
                            self.pulls_scheduled = true;
                            self.timers
                                .schedule(now + super::super::recent::PULL_DELAY, Tick::Pulls);
                        }
                    }
                }
                let mut rt = AccumulatingRuntime::new();
                if self.swim.handle_data(packet, &mut rt).is_err() {
                    self.stats.malformed += 1;
                }
                self.drain_swim(now, rt);
            }
            Datagram::Push(push) => self.receive_push(now, from, push),
            Datagram::Pull(pull) => self.answer_pull(now, from, pull),
            Datagram::Confirm(c) => self.answer_confirm(now, from, c),
            Datagram::Alive(a) => {
                if a.id.name() != self.cfg.name && self.admit(&a.id) {
                    // Only the member itself says this; it clears a suspicion that raced
                    // its refutation (the incarnation is above the suspected one).
                    let mut rt = AccumulatingRuntime::new();
                    let member = foca::Member::new(a.id, a.incarnation, foca::State::Alive);
                    let _ = self.swim.apply_many(std::iter::once(member), true, &mut rt);
                    self.drain_swim(now, rt);
                }
            }
        }
    }

    /// A SWIM packet addressed to an earlier run of us (a higher boot than ours at our
    /// address and name) tells us what the cluster remembers: move above it.
    fn peek_swim_header(&mut self, now: Duration, packet: &[u8]) {
        let mut buf = packet;
        let mut codec = foca::PostcardCodec;
        let Ok(header) =
            foca::Codec::<super::super::identity::NodeId>::decode_header(&mut codec, &mut buf)
        else {
            return;
        };
        let dst = &header.dst;
        if dst.name() == self.cfg.name
            && dst.gossip_addr() == self.cfg.gossip_addr
            && dst.boot() > self.id().boot()
        {
            self.learn_self(
                now,
                super::Claim {
                    boot: dst.boot(),
                    ..super::Claim::default()
                },
            );
        }
    }

    fn receive_push(&mut self, now: Duration, from: SocketAddr, push: Push) {
        for delta in push.deltas {
            let hash = change_hash(&delta.node, delta.to);
            let first = !self.recent.knows(hash);
            let changed = self.apply_data(now, &delta, Some(from));
            // Only news is announced and passed on: a change that altered nothing here
            // (held already, or about ourselves) is remembered as seen, so that it does not
            // circle back and forth between members that keep relearning it.
            let content = if changed {
                Content::Change {
                    node: delta.node.clone(),
                    to: delta.to,
                }
            } else {
                Content::Seen
            };
            self.recent.insert(now, hash, content);
            if first && changed && push.relay {
                self.push_to(now, &delta, self.cfg.fanout, Some(from));
            }
        }
        for v in push.verdicts {
            let hash = verdict_hash(&v);
            if self.recent.knows(hash) {
                continue;
            }
            // A refused verdict is remembered as seen: neither passed on nor handed out.
            let accepted = self.apply_verdict(now, &v);
            let content = if accepted {
                Content::Verdict(v.clone())
            } else {
                Content::Seen
            };
            self.recent.insert(now, hash, content);
            if accepted && push.relay {
                self.spread_verdict_to(now, &v, Some(from));
            }
        }
        for (node, version) in push.notices {
            let hash = change_hash(&node, version);
            let behind = self
                .data(&node)
                .is_none_or(|d| d.version < version && d.ahead < version);
            if node != self.cfg.name
                && node.len() <= super::super::data::MAX_NAME_BYTES
                && behind
                && !self.recent.knows(hash)
            {
                self.recent.insert(now, hash, Content::Seen);
                self.note_gap(now, node, from, Duration::ZERO, version);
            }
        }
    }

    /// We are suspected: refute through SWIM (our incarnation rises and is spread) and tell
    /// the one who asked.
    fn answer_confirm(&mut self, now: Duration, from: SocketAddr, c: super::super::wire::Confirm) {
        if &c.target != self.id() {
            return; // an earlier run of ours, rightly declared down
        }
        let mut rt = AccumulatingRuntime::new();
        let suspected = foca::Member::new(c.target.clone(), c.incarnation, foca::State::Suspect);
        let _ = self
            .swim
            .apply_many(std::iter::once(suspected), true, &mut rt);
        self.drain_swim(now, rt);
        // Our incarnation is now above the suspected one.
        let bytes = wire::alive_datagram(&super::super::wire::Alive {
            id: self.id().clone(),
            incarnation: c.incarnation.saturating_add(1),
        });
        self.send_datagram(from, bytes);
    }

    fn answer_pull(&mut self, _now: Duration, from: SocketAddr, pull: Pull) {
        let mut reply = Push::default();
        let mut asked = rustc_hash::FxHashSet::default();
        for h in pull.hashes.into_iter().take(wire::MAX_ITEMS) {
            if !asked.insert(h) {
                continue; // each change once, however often it is asked for
            }
            match self.recent.get(h) {
                Some(Content::Change { node, to }) => {
                    // From the state we hold: the change, and whatever followed it.
                    let d = self
                        .data(node)
                        .filter(|d| d.version >= *to)
                        .and_then(|d| d.delta_since(node, to.saturating_sub(1), d.run));
                    reply.deltas.extend(d);
                }
                Some(Content::Verdict(v)) => reply.verdicts.push(v.clone()),
                _ => {}
            }
        }
        for bytes in pack(reply, false).into_iter().take(super::MAX_PULL_REPLY) {
            self.stats.push_datagrams += 1;
            self.send_datagram(from, bytes);
        }
    }

    /// Sends `push` to `to` in as many datagrams as it takes.
    fn send_pushes(&mut self, _now: Duration, to: SocketAddr, push: Push, relay: bool) {
        for bytes in pack(push, relay) {
            self.stats.push_datagrams += 1;
            self.send_datagram(to, bytes);
        }
    }

    /// A change we authored (or learnt first-hand from its author by sync): remember it for
    /// pulls and push it.
    pub(super) fn spread_new(&mut self, now: Duration, delta: Delta, except: Option<SocketAddr>) {
        let hash = change_hash(&delta.node, delta.to);
        self.recent.insert(
            now,
            hash,
            Content::Change {
                node: delta.node.clone(),
                to: delta.to,
            },
        );
        self.push_to(now, &delta, self.cfg.fanout, except);
    }

    /// Pushes a change to `n` random members (encoded once, sent to each).
    pub(super) fn push_to(
        &mut self,
        _now: Duration,
        delta: &Delta,
        n: usize,
        except: Option<SocketAddr>,
    ) {
        let targets = self.random_members(n, except);
        if targets.is_empty() {
            return;
        }
        let datagrams = pack(
            Push {
                deltas: vec![delta.clone()],
                ..Push::default()
            },
            true,
        );
        for t in targets {
            for bytes in &datagrams {
                self.stats.push_datagrams += 1;
                self.send_datagram(t.gossip_addr(), bytes.clone());
            }
        }
    }

    pub(super) fn spread_verdict(&mut self, now: Duration, v: Verdict, except: Option<SocketAddr>) {
        self.recent
            .insert(now, verdict_hash(&v), Content::Verdict(v.clone()));
        self.spread_verdict_to(now, &v, except);
    }

    fn spread_verdict_to(&mut self, now: Duration, v: &Verdict, except: Option<SocketAddr>) {
        let targets = self.random_members(self.cfg.fanout, except);
        for t in targets {
            self.send_pushes(
                now,
                t.gossip_addr(),
                Push {
                    verdicts: vec![v.clone()],
                    ..Push::default()
                },
                true,
            );
        }
    }

    /// Asks for announced changes that did not arrive on their own.
    pub(super) fn send_pulls(&mut self, now: Duration) {
        let recent = &self.recent;
        let due = self.wants.due(now, |h| recent.knows(h));
        for (to, hashes) in due {
            for chunk in hashes.chunks(wire::PULL_HASHES) {
                let bytes = wire::pull_datagram(&Pull {
                    hashes: chunk.to_vec(),
                });
                self.stats.pull_datagrams += 1;
                self.send_datagram(to, bytes);
            }
        }
        if !self.wants.is_empty() && !self.pulls_scheduled {
            self.pulls_scheduled = true;
            self.timers
                .schedule(now + super::super::recent::PULL_DELAY, Tick::Pulls);
        }
    }

    /// Starts the fetches that are due: members back from a failure (reconcile at once),
    /// then nodes with a gap or without any state, within the session budget.
    pub(super) fn run_fetches(&mut self, now: Duration) {
        while self.sessions.len() < super::MAX_SESSIONS {
            let Some(name) = self.to_sync.pop_front() else {
                break;
            };
            let Some(addr) = self
                .peers
                .get(&name)
                .filter(|p| p.status.is_some_and(|s| s.is_up()))
                .map(|p| p.id.gossip_addr())
            else {
                continue;
            };
            self.start_sync(now, addr, Some(name), false);
        }
        let mut later = None;
        let mut due: Vec<super::Gap> = Vec::new();
        while let Some(gap) = self.gaps.front() {
            if gap.at > now {
                later = Some(gap.at);
                break;
            }
            due.extend(self.gaps.pop_front());
        }
        // One fetch per member asked, for every node still missing changes.
        let mut by_peer: Vec<(SocketAddr, Vec<Want>)> = Vec::new();
        for super::Gap {
            node, from, want, ..
        } in due
        {
            let (have, run, filled) = match self.data(&node) {
                Some(d) => (d.version, d.run, d.version >= want.max(1) && d.is_settled()),
                None => (0, 0, false),
            };
            if filled {
                continue;
            }
            match by_peer.iter_mut().find(|(p, _)| *p == from) {
                Some((_, w)) => w.push((node, have, run)),
                None => by_peer.push((from, vec![(node, have, run)])),
            }
        }
        for (from, wants) in by_peer {
            if self.sessions.len() >= super::MAX_SESSIONS {
                // Over budget: try again shortly.
                for (node, have, _) in wants {
                    self.gaps.push_back(super::Gap {
                        node,
                        from,
                        at: now + Duration::from_millis(100),
                        want: have + 1,
                    });
                }
                continue;
            }
            self.start_fetch(now, from, wants);
        }
        if let Some(at) = later.or_else(|| {
            (!self.to_sync.is_empty() || !self.gaps.is_empty())
                .then_some(now + Duration::from_millis(100))
        }) {
            self.schedule_fetch(at);
        }
    }
}

/// Packs changes into as few datagrams as fit; a change too large for a datagram goes as a
/// notice (the receiver fetches it over a stream). Each item is encoded once to size it.
fn pack(push: Push, relay: bool) -> Vec<Vec<u8>> {
    /// Room for the kind byte, the three list lengths and the flag.
    const OVERHEAD: usize = 16;
    let budget = MAX_PAYLOAD - OVERHEAD;
    let mut out = Vec::new();
    let mut batch = Push {
        relay,
        ..Push::default()
    };
    let mut used = 0;
    let mut flush = |batch: &mut Push, used: &mut usize| {
        if batch.deltas.is_empty() && batch.verdicts.is_empty() && batch.notices.is_empty() {
            return;
        }
        out.push(wire::push_datagram(batch));
        *batch = Push {
            relay,
            ..Push::default()
        };
        *used = 0;
    };
    for d in push.deltas {
        let size = wire::encode(&d).len();
        if size > budget {
            let notice = (d.node.clone(), d.to);
            let nsize = wire::encode(&notice).len();
            if used + nsize > budget {
                flush(&mut batch, &mut used);
            }
            used += nsize;
            batch.notices.push(notice);
            continue;
        }
        if used + size > budget {
            flush(&mut batch, &mut used);
        }
        used += size;
        batch.deltas.push(d);
    }
    for v in push.verdicts {
        let size = wire::encode(&v).len();
        if used + size > budget {
            flush(&mut batch, &mut used);
        }
        used += size;
        batch.verdicts.push(v);
    }
    flush(&mut batch, &mut used);
    out
}
