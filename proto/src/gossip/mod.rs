//! Cluster gossip, the pure half: wire envelope, SWIM identity, catalog messages and the
//! broadcast handler that foca drives. No sockets and no clock here — the agent's
//! `gossip` module feeds bytes and timer events in, and the simulation test drives whole
//! clusters through the same code on a virtual clock.

pub mod broadcast;
pub mod envelope;
pub mod identity;
pub mod message;

pub use broadcast::{CatalogBroadcasts, Delivery, ItemKey, Ledger, SharedLedger};
pub use envelope::{Channel, GossipKey, OpenError};
pub use identity::NodeId;
pub use message::{Item, MessageError, PushPull};

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// The largest UDP datagram muster sends: below common MTUs even with IP/UDP headers.
pub const MAX_DATAGRAM: usize = 1400;

/// The foca type muster runs.
pub type Swim<R> = foca::Foca<NodeId, foca::PostcardCodec, R, CatalogBroadcasts>;

/// SWIM settings for a cluster of about `cluster_size` members: memberlist's LAN profile
/// (1 s probes, suspicion growing with log(size), retransmissions growing with log(size),
/// gossip to 3 members every 200 ms), with packets sized so that a sealed envelope still
/// fits in [`MAX_DATAGRAM`].
pub fn swim_config(cluster_size: usize) -> foca::Config {
    let size =
        NonZeroU32::new(cluster_size.clamp(1, u32::MAX as usize) as u32).unwrap_or(NonZeroU32::MIN);
    let mut c = foca::Config::new_lan(size);
    c.max_packet_size =
        NonZeroUsize::new(MAX_DATAGRAM - envelope::SEALED_OVERHEAD).unwrap_or(NonZeroUsize::MIN);
    // Identities renew themselves (boot stamps), so down members only need remembering
    // long enough to refute stale rumours about them.
    c.remove_down_after = Some(Duration::from_secs(15 * 60));
    // Recover from partitions sooner than the LAN profile's 65 s.
    if let Some(p) = c.periodic_announce_to_down_members.as_mut() {
        p.frequency = Duration::from_secs(20);
    }
    c
}
