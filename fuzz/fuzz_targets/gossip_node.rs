//! Fuzz target for the gossip node itself (`proto/src/gossip/node/`): a node that knows two
//! peers is fed a sequence of what peers could send — raw datagrams and stream messages,
//! and well-formed ones built from the fuzzer's choices with proto's own encoders (SWIM
//! packets with member updates and trailers, pushes of deltas, verdicts and notices, pulls,
//! last checks, alives, stream requests, replies to the streams it opened) — with the clock
//! moving and timers firing in between, and a few local commands.
//!
//! Nothing may panic, and after every input:
//! * the node is still itself: its name and address, never listed among its peers, never
//!   reported as a member, its boot stamp within the ceiling;
//! * what it holds stays within the bounds: members (a small `max_members` here, so the
//!   fuzzer reaches it) plus data-only nodes, each node's entries and bytes;
//! * what it sends is well-formed: every datagram parses and fits, every stream request and
//!   reply decodes.

#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use muster_proto::gossip::data::{NodeData, WireEntry, MAX_HELD_NODE_BYTES, MAX_NODE_ENTRIES};
use muster_proto::gossip::foca::{self, Member, Message, State};
use muster_proto::gossip::node::{MAX_STAMP, MAX_UNCONFIRMED};
use muster_proto::gossip::recent::change_hash;
use muster_proto::gossip::wire::{
    self, Alive, Confirm, Pull, Push, Summary, SyncReply, SyncRequest, Verdict, MAX_PAYLOAD,
    MAX_STREAM_FRAME,
};
use muster_proto::gossip::{
    Delta, EntryKey, Event, Node, NodeConfig, NodeId, NodeInfo, Transmit, Value,
};
use muster_proto::model::{Check, CheckKind, HealthStatus, Service, Weights};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A small member table, so that inputs reach its bound.
const MAX_MEMBERS: usize = 24;
const ME: &str = "me";

fn me_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 8301))
}

fn name(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => ME.into(),
        1 | 2 => "p1".into(),
        3 => "p2".into(),
        4 => "ghost".into(),
        5 => String::new(),
        _ => format!("n{}", u.arbitrary::<u8>()?),
    })
}

fn addr(u: &mut Unstructured) -> Result<SocketAddr> {
    Ok(match u.int_in_range(0..=6u8)? {
        0 => me_addr(),
        1 => SocketAddr::from(([10, 0, 0, 2], 8301)),
        2 => SocketAddr::from(([10, 0, 0, 3], 8301)),
        3 => SocketAddr::from(([10, 0, 0, 1], 9)),
        4 => SocketAddr::from(([0, 0, 0, 0], 0)),
        _ => SocketAddr::from(([10, 1, u.arbitrary()?, u.arbitrary()?], 8301)),
    })
}

fn stamp(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0..=7u8)? {
        0 => 0,
        1 | 2 => u.int_in_range(1..=12)?,
        3 => 1 << 32,
        4 => MAX_STAMP,
        5 => u64::MAX,
        _ => u.arbitrary()?,
    })
}

fn id(u: &mut Unstructured) -> Result<NodeId> {
    Ok(NodeId::new(name(u)?, addr(u)?, stamp(u)?))
}

fn key(u: &mut Unstructured) -> Result<EntryKey> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => EntryKey::Node,
        1 => EntryKey::Leave,
        2 | 3 => EntryKey::Service(["a", "b", "c"][u.choose_index(3)?].into()),
        _ => EntryKey::Check(["x", "y"][u.choose_index(2)?].into()),
    })
}

fn value(u: &mut Unstructured, key: &EntryKey) -> Result<Option<Value>> {
    if u.ratio(1, 4)? {
        return Ok(None);
    }
    // Mostly a value that fits its key; sometimes one that does not.
    let key = if u.ratio(1, 8)? {
        self::key(u)?
    } else {
        key.clone()
    };
    Ok(Some(match key {
        EntryKey::Node => Value::Node(Arc::new(NodeInfo {
            datacenter: "dc1".into(),
            address: addr(u)?.ip(),
            meta: BTreeMap::new(),
        })),
        EntryKey::Leave => Value::Leave(stamp(u)?),
        EntryKey::Service(id) => Value::Service(Arc::new(Service {
            id: id.to_string(),
            name: "web".into(),
            tags: vec![],
            address: String::new(),
            port: u.arbitrary()?,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        })),
        EntryKey::Check(id) => Value::Check(Arc::new(Check {
            id: id.to_string(),
            name: "c".into(),
            status: HealthStatus::Passing,
            notes: String::new(),
            output: "x".repeat(u.int_in_range(0..=64)?),
            service_id: "a".into(),
            kind: CheckKind::Ttl { ttl_ms: 1000 },
            deregister_critical_after_ms: 0,
            status_changed_ms: 0,
        })),
    }))
}

fn delta(u: &mut Unstructured) -> Result<Delta> {
    let from = stamp(u)?;
    let to = if u.ratio(7, 8)? {
        from.saturating_add(u.int_in_range(1..=4)?)
    } else {
        stamp(u)?
    };
    let n = u.int_in_range(0..=4)?;
    let mut entries = Vec::new();
    for _ in 0..n {
        let key = key(u)?;
        let version = if u.ratio(7, 8)? {
            u.int_in_range(from.saturating_add(1)..=to.max(from.saturating_add(1)))?
        } else {
            stamp(u)?
        };
        let value = value(u, &key)?;
        entries.push(WireEntry {
            key,
            version,
            value,
        });
    }
    Ok(Delta {
        node: name(u)?.into(),
        run: u.int_in_range(0..=3)?,
        from,
        to,
        full: u.ratio(1, 5)?,
        entries,
    })
}

fn member(u: &mut Unstructured) -> Result<Member<NodeId>> {
    let state = [State::Alive, State::Suspect, State::Down][u.choose_index(3)?];
    Ok(Member::new(id(u)?, u.arbitrary()?, state))
}

fn summary(u: &mut Unstructured) -> Result<Summary> {
    Ok(Summary {
        id: id(u)?,
        version: stamp(u)?,
        run: u.int_in_range(0..=3)?,
        up: u.arbitrary()?,
        left_boot: if u.ratio(1, 4)? { stamp(u)? } else { 0 },
    })
}

fn list<T>(
    u: &mut Unstructured,
    max: usize,
    f: fn(&mut Unstructured) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

/// A hash the node may know (a change it holds) or not.
fn hash(u: &mut Unstructured) -> Result<u64> {
    if u.ratio(1, 3)? {
        u.arbitrary()
    } else {
        Ok(change_hash(&name(u)?, u.int_in_range(0..=12)?))
    }
}

fn swim_message(u: &mut Unstructured) -> Result<Message<NodeId>> {
    let probe = u.arbitrary()?;
    Ok(match u.int_in_range(0..=10u8)? {
        0 => Message::Ping(probe),
        1 => Message::Ack(probe),
        2 => Message::PingReq {
            target: id(u)?,
            probe_number: probe,
        },
        3 => Message::IndirectPing {
            origin: id(u)?,
            probe_number: probe,
        },
        4 => Message::IndirectAck {
            target: id(u)?,
            probe_number: probe,
        },
        5 => Message::ForwardedAck {
            origin: id(u)?,
            probe_number: probe,
        },
        6 => Message::Announce,
        7 => Message::Feed,
        8 => Message::Broadcast,
        9 => Message::TurnUndead,
        _ => Message::Gossip,
    })
}

fn swim_datagram(u: &mut Unstructured, node: &Node) -> Result<Vec<u8>> {
    let header = foca::Header {
        src: id(u)?,
        src_incarnation: u.arbitrary()?,
        dst: if u.ratio(3, 4)? {
            node.id().clone()
        } else {
            id(u)?
        },
        message: swim_message(u)?,
    };
    let updates = list(u, 8, member)?;
    let trailer = list(u, 4, hash)?;
    let packet = wire::swim_packet(&header, &updates).unwrap_or_default();
    Ok(wire::swim_datagram(&packet, &trailer))
}

fn request(u: &mut Unstructured) -> Result<SyncRequest> {
    let from = id(u)?;
    Ok(match u.int_in_range(0..=3u8)? {
        0 => SyncRequest::Open {
            from,
            join: u.arbitrary()?,
            root: u.arbitrary()?,
            you: if u.arbitrary()? {
                Some(summary(u)?)
            } else {
                None
            },
        },
        1 => SyncRequest::Compare {
            from,
            buckets: list(u, 8, |u| u.arbitrary())?,
            nodes: list(u, 8, summary)?,
        },
        2 => SyncRequest::Push {
            from,
            deltas: list(u, 4, delta)?,
        },
        _ => SyncRequest::Fetch {
            from,
            wants: list(u, 6, |u| {
                Ok((name(u)?.into(), stamp(u)?, u.int_in_range(0..=3)?))
            })?,
        },
    })
}

fn reply(u: &mut Unstructured) -> Result<SyncReply> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => SyncReply::Open {
            server: id(u)?,
            you: if u.arbitrary()? {
                Some(summary(u)?)
            } else {
                None
            },
            root: u.arbitrary()?,
            buckets: if u.arbitrary()? {
                Some(list(u, 8, |u| u.arbitrary())?)
            } else {
                None
            },
            members: list(u, 8, member)?,
            departed: list(u, 4, summary)?,
        },
        1 => SyncReply::Deltas {
            deltas: list(u, 4, delta)?,
            wants: list(u, 4, |u| {
                Ok((name(u)?.into(), stamp(u)?, u.int_in_range(0..=3)?))
            })?,
            summaries: list(u, 6, summary)?,
            more: u.arbitrary()?,
        },
        _ => SyncReply::Done,
    })
}

/// A peer's state: node info and a service.
fn peer_state(ip: [u8; 4]) -> Arc<NodeData> {
    let mut d = NodeData::own(1, 0);
    let n = "peer".into();
    d.author(
        &n,
        EntryKey::Node,
        Some(Value::Node(Arc::new(NodeInfo {
            datacenter: "dc1".into(),
            address: ip.into(),
            meta: BTreeMap::new(),
        }))),
    );
    Arc::new(d)
}

struct Harness {
    node: Node,
    now: Duration,
    /// Streams the node opened and has not had a reply for.
    open: Vec<u64>,
}

impl Harness {
    fn new() -> Harness {
        let mut cfg = NodeConfig::new(ME, me_addr());
        cfg.boot = 5;
        cfg.version = 3;
        cfg.run = 7;
        cfg.max_members = MAX_MEMBERS;
        let now = Duration::from_secs(1);
        let mut node = Node::new(cfg, now);
        node.warm_start(
            now,
            vec![
                (
                    NodeId::new("p1", SocketAddr::from(([10, 0, 0, 2], 8301)), 3),
                    peer_state([10, 0, 0, 2]),
                ),
                (
                    NodeId::new("p2", SocketAddr::from(([10, 0, 0, 3], 8301)), 9),
                    peer_state([10, 0, 0, 3]),
                ),
            ],
        );
        let mut h = Harness {
            node,
            now,
            open: Vec::new(),
        };
        h.drain();
        h
    }

    /// Takes what the node wants sent and reports, checking it is well-formed.
    fn drain(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            match t {
                Transmit::Datagram { bytes, .. } => {
                    assert!(
                        bytes.len() <= MAX_PAYLOAD,
                        "datagram of {} bytes",
                        bytes.len()
                    );
                    wire::parse_datagram(&bytes).expect("own datagram parses");
                }
                Transmit::Stream { id, bytes, .. } => {
                    assert!(bytes.len() <= MAX_STREAM_FRAME);
                    wire::decode_request(&bytes).expect("own request decodes");
                    if self.open.len() < 64 {
                        self.open.push(id);
                    }
                }
            }
        }
        while let Some(e) = self.node.poll_event() {
            if let Event::Member(v) = &e {
                assert_ne!(v.name.as_str(), ME, "reported itself as a member: {v:?}");
            }
        }
    }

    fn check(&self) {
        let me = self.node.id();
        assert_eq!(me.name().as_str(), ME);
        assert_eq!(me.gossip_addr(), me_addr(), "took another address");
        assert!(me.boot() < 2 * MAX_STAMP, "boot stamp {}", me.boot());
        assert!(self.node.member(ME).is_none(), "lists itself");
        assert!(self.node.members_up() <= MAX_MEMBERS);
        assert!(self.node.known() <= MAX_MEMBERS + MAX_UNCONFIRMED);
        let mut listed = 0;
        for m in self.node.members() {
            listed += 1;
            let d = self.node.data(&m.name).expect("a member's state");
            assert!(d.bytes() <= MAX_HELD_NODE_BYTES);
            assert!(d.live() + d.tombstones() <= MAX_NODE_ENTRIES);
        }
        assert!(listed <= MAX_MEMBERS);
    }

    fn step(&mut self, u: &mut Unstructured) -> Result<()> {
        let from = addr(u)?;
        let now = self.now;
        match u.int_in_range(0..=11u8)? {
            0 => {
                let len = u.int_in_range(0..=1500)?;
                let bytes = u.bytes(len)?;
                self.node.handle_datagram(now, from, bytes);
            }
            1 | 2 => {
                let d = swim_datagram(u, &self.node)?;
                self.node.handle_datagram(now, from, &d);
            }
            3 => {
                let push = Push {
                    deltas: list(u, 3, delta)?,
                    verdicts: list(u, 2, |u| {
                        Ok(if u.arbitrary()? {
                            Verdict::ForceLeft(id(u)?)
                        } else {
                            Verdict::Joined(id(u)?)
                        })
                    })?,
                    notices: list(u, 3, |u| Ok((name(u)?.into(), stamp(u)?)))?,
                    relay: u.arbitrary()?,
                };
                let d = wire::push_datagram(&push);
                self.node.handle_datagram(now, from, &d);
            }
            4 => {
                let d = wire::pull_datagram(&Pull {
                    hashes: list(u, 16, hash)?,
                });
                self.node.handle_datagram(now, from, &d);
            }
            5 => {
                let target = if u.arbitrary()? {
                    self.node.id().clone()
                } else {
                    id(u)?
                };
                let d = if u.arbitrary()? {
                    wire::confirm_datagram(&Confirm {
                        target,
                        incarnation: u.arbitrary()?,
                    })
                } else {
                    wire::alive_datagram(&Alive {
                        id: target,
                        incarnation: u.arbitrary()?,
                    })
                };
                self.node.handle_datagram(now, from, &d);
            }
            6 | 7 => {
                let bytes = if u.ratio(1, 4)? {
                    let len = u.int_in_range(0..=4096)?;
                    u.bytes(len)?.to_vec()
                } else {
                    wire::encode(&request(u)?)
                };
                if let Some(r) = self.node.handle_stream(now, from, &bytes) {
                    assert!(r.len() <= MAX_STREAM_FRAME);
                    wire::decode_reply(&r).expect("own reply decodes");
                }
            }
            8 => {
                if !self.open.is_empty() {
                    let id = self.open.swap_remove(u.choose_index(self.open.len())?);
                    let answer = match u.int_in_range(0..=3u8)? {
                        0 => Err("refused".to_string()),
                        1 => {
                            let len = u.int_in_range(0..=512)?;
                            Ok(u.bytes(len)?.to_vec())
                        }
                        _ => Ok(wire::encode(&reply(u)?)),
                    };
                    self.node.handle_stream_reply(
                        now,
                        id,
                        answer.as_deref().map_err(|e| e.clone()),
                    );
                }
            }
            9 | 10 => {
                self.now += Duration::from_millis(u.int_in_range(0..=3000)?);
                while self.node.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.node.handle_timeout(self.now);
                    self.drain();
                }
            }
            _ => match u.int_in_range(0..=2u8)? {
                0 => {
                    let k = key(u)?;
                    let v = value(u, &k)?.filter(|v| v.fits(&k));
                    if k != EntryKey::Leave {
                        self.node.publish(now, vec![(k, v)]);
                    }
                }
                1 => {
                    let _ = self.node.force_leave(now, &name(u)?, u.arbitrary()?);
                }
                _ => self.node.join(now, from),
            },
        }
        self.drain();
        self.check();
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut h = Harness::new();
    for _ in 0..256 {
        if u.is_empty() || h.step(&mut u).is_err() {
            break;
        }
    }
});
