//! Anti-entropy over streams: two members compare digests and exchange only what differs.
//!
//! A client opens with its digest root; a server whose root matches answers "in sync" (a
//! quiet cluster's whole exchange: two small frames). Otherwise the server sends its bucket
//! hashes, the client lists its nodes in the buckets that differ (name, version, standing),
//! and the server answers with the changes the client lacks — within a budget, asking to be
//! asked again for more — and names what it lacks itself, which the client pushes. A join
//! is the same exchange plus the server's member table; a fetch asks for named nodes only.
//!
//! Every round is one request and one reply; the server keeps no state between rounds.

use super::super::data::{Delta, Name};
use super::super::digest::bucket_of;
use super::super::wire::{self, Summary, SyncReply, SyncRequest, Want, SYNC_BUDGET};
use super::{Claim, Event, Node, Tick, Transmit, EARLY_SETTLE, SETTLE_AFTER};
use crate::model::MemberStatus;
use foca::{AccumulatingRuntime, Member};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// Rounds one exchange may take before it is cut short (the next one continues).
const MAX_ROUNDS: u32 = 64;

pub(super) struct Session {
    to: SocketAddr,
    kind: Kind,
    rounds: u32,
}

enum Kind {
    Sync {
        join: bool,
        server: Option<Name>,
        buckets: Vec<u8>,
        /// The server has more for us: compare again after our push.
        more: bool,
    },
    Fetch {
        wants: Vec<Want>,
    },
}

impl Node {
    /// Opens an anti-entropy exchange (a join, with `join`) with the member at `to`
    /// (`server`, if we know its name).
    pub(super) fn start_sync(
        &mut self,
        now: Duration,
        to: SocketAddr,
        server: Option<Name>,
        join: bool,
    ) {
        if !join && self.sessions.len() >= super::MAX_SESSIONS {
            return;
        }
        let req = SyncRequest::Open {
            from: self.id().clone(),
            join,
            root: self.digest.root(),
            you: server.as_deref().and_then(|n| self.summary_of(n)),
        };
        self.stats.syncs_started += 1;
        self.open_stream(
            now,
            to,
            &req,
            Session {
                to,
                kind: Kind::Sync {
                    join,
                    server,
                    buckets: Vec::new(),
                    more: false,
                },
                rounds: 0,
            },
        );
    }

    /// Asks `to` for the changes of named nodes (gaps, notices, members without state).
    pub(super) fn start_fetch(&mut self, now: Duration, to: SocketAddr, wants: Vec<Want>) {
        let req = SyncRequest::Fetch {
            from: self.id().clone(),
            wants: wants.clone(),
        };
        self.open_stream(
            now,
            to,
            &req,
            Session {
                to,
                kind: Kind::Fetch { wants },
                rounds: 0,
            },
        );
    }

    fn open_stream(&mut self, _now: Duration, to: SocketAddr, req: &SyncRequest, session: Session) {
        let id = self.next_session;
        self.next_session += 1;
        let bytes = wire::encode(req);
        self.stats.stream_requests += 1;
        self.stats.stream_bytes_out += bytes.len() as u64;
        self.sessions.insert(id, session);
        self.out.push_back(Transmit::Stream { to, id, bytes });
    }

    fn continue_stream(&mut self, id: u64, mut session: Session, req: &SyncRequest) {
        session.rounds += 1;
        if session.rounds > MAX_ROUNDS {
            return;
        }
        let bytes = wire::encode(req);
        self.stats.stream_requests += 1;
        self.stats.stream_bytes_out += bytes.len() as u64;
        let to = session.to;
        self.sessions.insert(id, session);
        self.out.push_back(Transmit::Stream { to, id, bytes });
    }

    /// The reply to a stream we opened (or why there is none).
    pub fn handle_stream_reply(&mut self, now: Duration, id: u64, reply: Result<&[u8], String>) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        if self.left {
            return;
        }
        let joining = matches!(session.kind, Kind::Sync { join: true, .. });
        let reply = match reply {
            Ok(bytes) => match wire::decode_reply(bytes) {
                Ok(r) => r,
                Err(e) => {
                    self.stats.malformed += 1;
                    if joining {
                        self.joined(session.to, Err(format!("not a muster gossip reply: {e}")));
                    }
                    return;
                }
            },
            Err(e) => {
                if joining {
                    self.joined(session.to, Err(e));
                }
                self.run_fetches(now);
                return;
            }
        };
        match (session.kind, reply) {
            (
                Kind::Sync {
                    join, server: _, ..
                },
                SyncReply::Open {
                    server,
                    you,
                    root: _,
                    buckets,
                    members,
                    departed,
                },
            ) => {
                if let Some(you) = you {
                    // A server that holds this very identity as down: move past it now
                    // rather than through SWIM's one-step-per-round-trip rejoin.
                    self.learn_self(
                        now,
                        Claim {
                            boot: you.id.boot(),
                            version: you.version,
                            run: you.run,
                            left_boot: you.left_boot,
                            down: !you.up,
                        },
                    );
                }
                let members = self.admit_members(members);
                let server_alive = self.admit_members([Member::alive(server.clone())]);
                let mut rt = AccumulatingRuntime::new();
                // The join's member table is no news to anyone; the server being alive (a
                // later run of it, after a healed partition) may be.
                let _ = self.swim.apply_many(members.into_iter(), false, &mut rt);
                let _ = self
                    .swim
                    .apply_many(server_alive.into_iter(), true, &mut rt);
                self.drain_swim(now, rt);
                for s in &departed {
                    self.learn_departed(now, s);
                }
                let server_name = server.name().clone();
                if join {
                    self.joined(session.to, Ok(()));
                    self.timers.schedule(
                        now + EARLY_SETTLE,
                        Tick::EarlySettle {
                            to: session.to,
                            server: server_name.clone(),
                        },
                    );
                    self.timers.schedule(now + SETTLE_AFTER, Tick::Settle);
                    // Tell every member we are here, the way changes travel (see
                    // `Verdict::Joined`).
                    self.spread_verdict(now, wire::Verdict::Joined(self.id().clone()), None);
                    // Now that we know members, push our state to them as news.
                    let full = self.own.full(&self.cfg.name);
                    if !full.entries.is_empty() {
                        self.spread_new(now, full, None);
                    }
                }
                match buckets {
                    None => self.sync_done(now, &server_name),
                    Some(theirs) => {
                        let differing = self.digest.differing(&theirs);
                        let req = SyncRequest::Compare {
                            from: self.id().clone(),
                            nodes: self.summaries_in(&differing),
                            buckets: differing.clone(),
                        };
                        let next = Session {
                            to: session.to,
                            kind: Kind::Sync {
                                join,
                                server: Some(server_name),
                                buckets: differing,
                                more: false,
                            },
                            rounds: session.rounds,
                        };
                        self.continue_stream(id, next, &req);
                    }
                }
            }
            (
                Kind::Sync {
                    join,
                    server,
                    buckets,
                    ..
                },
                SyncReply::Deltas {
                    deltas,
                    wants,
                    summaries,
                    more,
                },
            ) => {
                for s in &summaries {
                    self.learn_summary(now, s);
                }
                for d in &deltas {
                    self.apply_data(now, d, Some(session.to));
                }
                let push = self.deltas_for(&wants, None);
                let next = Session {
                    to: session.to,
                    kind: Kind::Sync {
                        join,
                        server: server.clone(),
                        buckets: buckets.clone(),
                        more,
                    },
                    rounds: session.rounds,
                };
                if !push.0.is_empty() {
                    let req = SyncRequest::Push {
                        from: self.id().clone(),
                        deltas: push.0,
                    };
                    self.continue_stream(id, next, &req);
                } else if more {
                    let req = SyncRequest::Compare {
                        from: self.id().clone(),
                        nodes: self.summaries_in(&buckets),
                        buckets,
                    };
                    self.continue_stream(id, next, &req);
                } else if let Some(s) = server {
                    self.sync_done(now, &s);
                }
            }
            (
                Kind::Sync {
                    join,
                    server,
                    buckets,
                    more,
                },
                SyncReply::Done,
            ) => {
                if more {
                    let req = SyncRequest::Compare {
                        from: self.id().clone(),
                        nodes: self.summaries_in(&buckets),
                        buckets: buckets.clone(),
                    };
                    let next = Session {
                        to: session.to,
                        kind: Kind::Sync {
                            join,
                            server,
                            buckets,
                            more: false,
                        },
                        rounds: session.rounds,
                    };
                    self.continue_stream(id, next, &req);
                } else if let Some(s) = server {
                    self.sync_done(now, &s);
                }
            }
            (Kind::Fetch { wants }, SyncReply::Deltas { deltas, more, .. }) => {
                for d in &deltas {
                    self.apply_data(now, d, Some(session.to));
                }
                if more {
                    let got: BTreeSet<&Name> = deltas.iter().map(|d| &d.node).collect();
                    let rest: Vec<Want> = wants
                        .into_iter()
                        .filter(|(n, _, _)| !got.contains(n))
                        .map(|(n, _, _)| {
                            let (have, run) = self.data(&n).map_or((0, 0), |d| d.stamp());
                            (n, have, run)
                        })
                        .collect();
                    if !rest.is_empty() {
                        let req = SyncRequest::Fetch {
                            from: self.id().clone(),
                            wants: rest.clone(),
                        };
                        let next = Session {
                            to: session.to,
                            kind: Kind::Fetch { wants: rest },
                            rounds: session.rounds,
                        };
                        self.continue_stream(id, next, &req);
                    }
                }
            }
            _ => {
                self.stats.malformed += 1;
            }
        }
        self.run_fetches(now);
    }

    fn joined(&mut self, addr: SocketAddr, result: Result<(), String>) {
        self.events.push_back(Event::Joined { addr, result });
    }

    fn sync_done(&mut self, now: Duration, server: &str) {
        self.stats.syncs_completed += 1;
        self.reconciled(now, server);
    }

    /// A stream request from a peer; returns the reply to send (`None`: malformed, close).
    pub fn handle_stream(
        &mut self,
        now: Duration,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Option<Vec<u8>> {
        if self.left {
            return None;
        }
        let req = match wire::decode_request(bytes) {
            Ok(r) => r,
            Err(_) => {
                self.stats.malformed += 1;
                return None;
            }
        };
        // Whoever opens a stream to us is alive (a joiner whose announce was lost, a member
        // back from the other side of a partition under a new boot stamp).
        let client = req.from().clone();
        if client.name() != self.cfg.name && self.admit(&client) {
            let mut rt = AccumulatingRuntime::new();
            let _ = self
                .swim
                .apply_many(std::iter::once(Member::alive(client)), true, &mut rt);
            self.drain_swim(now, rt);
        }
        let reply = match req {
            SyncRequest::Open {
                from: client,
                join,
                root,
                you,
            } => {
                if let Some(me) = you {
                    // The client holds us as down (or a later run of us): move past it.
                    self.learn_summary(now, &me);
                }
                let you = self.summary_of(client.name());
                let ours = self.digest.root();
                SyncReply::Open {
                    server: self.id().clone(),
                    you,
                    root: ours,
                    buckets: (ours != root).then(|| self.digest.buckets()),
                    members: if join {
                        self.swim.iter_membership_state().cloned().collect()
                    } else {
                        Vec::new()
                    },
                    departed: if join {
                        self.departed_summaries()
                    } else {
                        Vec::new()
                    },
                }
            }
            SyncRequest::Compare {
                from: _,
                buckets,
                nodes,
            } => self.compare(now, &buckets, &nodes),
            SyncRequest::Push {
                from: client,
                deltas,
            } => {
                for d in &deltas {
                    let news = self.apply_data(now, d, Some(from));
                    if news && d.node == *client.name() {
                        // A member handing us its own changes (a joiner, mostly): they are
                        // news to the cluster, and the joiner knows few members yet.
                        self.spread_new(now, d.clone(), Some(from));
                    }
                }
                SyncReply::Done
            }
            SyncRequest::Fetch { from: _, wants } => {
                let (deltas, more) = self.deltas_for(&wants, None);
                SyncReply::Deltas {
                    deltas,
                    wants: Vec::new(),
                    summaries: Vec::new(),
                    more,
                }
            }
        };
        Some(wire::encode(&reply))
    }

    /// The server's half of a comparison: what the client lacks, what we lack.
    fn compare(&mut self, now: Duration, buckets: &[u8], nodes: &[Summary]) -> SyncReply {
        let mut lacking: Vec<Want> = Vec::new();
        let mut wants: Vec<Want> = Vec::new();
        let mut listed: BTreeSet<Name> = BTreeSet::new();
        for s in nodes.iter().take(wire::MAX_ITEMS) {
            self.learn_summary(now, s);
            let name = s.id.name().clone();
            listed.insert(name.clone());
            let theirs = (s.version, s.run);
            match self.data(&name).map(|d| d.stamp()) {
                Some(ours) if ours > theirs => lacking.push((name, s.version, s.run)),
                Some(ours) if ours < theirs => wants.push((name, ours.0, ours.1)),
                None if name != self.cfg.name => wants.push((name, 0, 0)),
                _ => {}
            }
        }
        // Nodes we count in those buckets that the client did not list: it lacks them.
        let set: BTreeSet<u8> = buckets.iter().copied().collect();
        let mut summaries = Vec::new();
        let mut extra: Vec<Name> = self
            .counted_names()
            .into_iter()
            .filter(|n| set.contains(&bucket_of(n)) && !listed.contains(n))
            .collect();
        extra.sort();
        for n in extra {
            if let Some(s) = self.summary_of(&n) {
                summaries.push(s);
            }
            lacking.push((n, 0, 0));
        }
        let (deltas, more) = self.deltas_for(&lacking, Some(SYNC_BUDGET));
        SyncReply::Deltas {
            deltas,
            wants,
            summaries,
            more,
        }
    }

    /// Deltas for nodes a peer holds at the given versions, within the sync budget.
    fn deltas_for(&self, wants: &[Want], budget: Option<usize>) -> (Vec<Delta>, bool) {
        let budget = budget.unwrap_or(SYNC_BUDGET);
        let mut out = Vec::new();
        let mut bytes = 0;
        for (name, have, run) in wants.iter().take(wire::MAX_ITEMS) {
            let Some(d) = self
                .data(name)
                .and_then(|d| d.delta_since(name, *have, *run))
            else {
                continue;
            };
            let size = wire::encode(&d).len();
            if !out.is_empty() && bytes + size > budget {
                return (out, true);
            }
            bytes += size;
            out.push(d);
        }
        (out, false)
    }

    /// Names this node counts in its digest (itself and every member that is up).
    fn counted_names(&self) -> Vec<Name> {
        let mut v: Vec<Name> = self
            .peers
            .iter()
            .filter(|p| p.status == Some(MemberStatus::Alive))
            .map(|p| p.id.name().clone())
            .collect();
        v.push(self.cfg.name.clone());
        v
    }

    /// Our summaries of the nodes we count in the given buckets, in name order.
    fn summaries_in(&self, buckets: &[u8]) -> Vec<Summary> {
        let set: BTreeSet<u8> = buckets.iter().copied().collect();
        let mut names: Vec<Name> = self
            .counted_names()
            .into_iter()
            .filter(|n| set.contains(&bucket_of(n)))
            .collect();
        names.sort();
        names.iter().filter_map(|n| self.summary_of(n)).collect()
    }

    fn summary_of(&self, name: &str) -> Option<Summary> {
        if name == self.cfg.name.as_str() {
            return Some(Summary {
                id: self.id().clone(),
                version: self.own.version,
                run: self.own.run,
                up: !self.left,
                left_boot: self.own_left,
            });
        }
        let p = self.peers.get(name)?;
        p.status?;
        Some(Summary {
            id: p.id.clone(),
            version: p.data.version,
            run: p.data.run,
            up: p.status.is_some_and(|s| s.is_up()),
            left_boot: p.left_boot(),
        })
    }

    /// Summaries of the members we hold as failed or left, in name order.
    fn departed_summaries(&self) -> Vec<Summary> {
        self.peers
            .names_sorted()
            .iter()
            .filter(|n| {
                self.peers
                    .get(n)
                    .is_some_and(|p| p.status.is_some_and(|s| !s.is_up()))
            })
            .filter_map(|n| self.summary_of(n))
            .collect()
    }

    /// A joiner learns who failed or left before it came: listed as such (SWIM probes
    /// none of them; reconnecting tries the failed ones, and a member that is in fact up
    /// shows itself as a later run).
    fn learn_departed(&mut self, now: Duration, s: &Summary) {
        if s.up || s.id.name() == self.cfg.name || self.peers.get(s.id.name()).is_some() {
            return;
        }
        if self.peers.len() >= self.cfg.max_members {
            self.stats.members_refused += 1;
            return;
        }
        self.peers.departed(&s.id, s.left_boot, now);
        self.refresh(now, s.id.name());
    }

    /// What a peer's summary teaches us: a member we did not know (or a later run of one),
    /// a force-leave we missed, or what the cluster holds of us.
    fn learn_summary(&mut self, now: Duration, s: &Summary) {
        if s.id.name() == self.cfg.name {
            self.learn_self(
                now,
                Claim {
                    boot: s.id.boot(),
                    version: s.version,
                    run: s.run,
                    left_boot: s.left_boot,
                    down: !s.up,
                },
            );
            return;
        }
        let known = self
            .peers
            .get(s.id.name())
            .map(|p| (p.id.boot(), p.status, p.left_boot()));
        let newer_run =
            known.is_none_or(|(boot, status, _)| status.is_none() || s.id.boot() > boot);
        if s.up && newer_run && self.admit(&s.id) {
            // Hearsay of a live member: SWIM takes it from here (probes it, and declares it
            // down if it does not answer), and passes a later run of it on. Failed or left
            // hearsay never creates a member.
            let mut rt = AccumulatingRuntime::new();
            let _ =
                self.swim
                    .apply_many(std::iter::once(Member::alive(s.id.clone())), true, &mut rt);
            self.drain_swim(now, rt);
        }
        if let Some((boot, _, left)) = known {
            if s.left_boot > left && s.left_boot >= boot && !s.up {
                let v = super::super::wire::Verdict::ForceLeft(s.id.with_boot(s.left_boot));
                self.apply_verdict(now, &v);
            }
        }
    }
}
