//! muster-sim: runs many of muster's gossip nodes — `muster_proto::gossip::Node`, the very
//! code the agent runs — in one process, on a virtual clock, over a network that delays,
//! loses, partitions and lags. See `README.md` in this directory.
//!
//! * `net`: the network model.
//! * `cluster`: the event loop and the hosts (start, crash, restart, leave, partition).
//! * `fleet`: a cluster of N hosts with S services each, and what it measures.
//! * `faults`: the operator's bad days (clock jumps, rolling restarts, healed partitions)
//!   with the invariants they must keep.

pub mod cluster;
pub mod faults;
pub mod fleet;
pub mod net;

pub use cluster::Sim;
pub use fleet::{Fleet, FleetConfig};
pub use net::NetConfig;
