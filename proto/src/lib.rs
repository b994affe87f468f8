//! muster-proto: the data model, wire formats and pure logic of muster.
//!
//! Nothing in this crate touches a socket, a file or the clock: time comes in as an
//! argument, bytes come in and go out as values. That keeps every rule testable in
//! isolation and lets whole clusters be simulated in one process.

pub mod acl;
pub mod catalog;
pub mod consul;
pub mod dns;
pub mod duration;
pub mod gossip;
pub mod keyring;
pub mod model;
pub mod process;
pub mod protect;
pub mod status_page;
pub mod ttl;
pub mod validate;

pub use catalog::{Catalog, Instance, NodeEntry, Snapshot};
pub use model::{Check, CheckKind, HealthStatus, MemberStatus, NodeRecord, Service, Weights};
