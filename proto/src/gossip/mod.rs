//! Cluster gossip, the pure half: the whole protocol as a state machine ([`Node`]), its
//! wire format, and the pieces it is built from. No sockets and no clock here — the
//! agent's `gossip` module feeds bytes and timer events in, and the simulator (`sim/`)
//! drives thousands of the same nodes on a virtual clock.
//!
//! * `data`: a node's state as versioned entries, deltas, and how copies apply them.
//! * `identity`: who a member is to SWIM (name, address, boot stamp).
//! * `node`: the state machine — SWIM via foca, the member table, spreading changes,
//!   anti-entropy.
//! * `wire`, `envelope`: what travels, and the (sealed) envelope around it.
//! * `digest`, `recent`, `health`, `timers`, `intern`, `config`: its parts.

pub mod config;
pub mod data;
pub mod digest;
pub mod envelope;
pub mod frame;
pub mod health;
pub mod identity;
pub mod intern;
pub mod node;
pub mod recent;
pub mod timers;
pub mod wire;

/// foca's types (headers, messages, member updates), for tools and tests that speak SWIM
/// to a node.
pub use foca;

pub use config::{swim_config, sync_interval, NodeConfig};
pub use data::{Change, Delta, EntryKey, Name, NodeData, NodeInfo, Value};
pub use envelope::{Channel, GossipKey, OpenError};
pub use identity::NodeId;
pub use node::{Event, MemberView, Node, Stats, Transmit};

/// The largest UDP datagram muster sends: below common MTUs even with IP/UDP headers.
pub const MAX_DATAGRAM: usize = 1400;
