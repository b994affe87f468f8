//! Cluster gossip, the pure half: wire envelope, SWIM identity, catalog messages and the
//! broadcast handler that foca drives. No sockets and no clock here — the agent's
//! `gossip` module feeds bytes and timer events in, and the simulation test drives whole
//! clusters through the same code on a virtual clock.

pub mod broadcast;
pub mod envelope;
pub mod frame;
pub mod identity;
pub mod message;

pub use broadcast::{CatalogBroadcasts, Delivery, ItemKey, Ledger, SharedLedger};
pub use envelope::{Channel, GossipKey, OpenError};
pub use identity::NodeId;
pub use message::{Item, MessageError, PushPull};

use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
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
    // memberlist's retransmit limit, 4 × ⌈log10(n + 1)⌉: foca's LAN profile truncates
    // 4 × log10(n + 1) instead, which sends an update only once or twice in small clusters
    // and lets news of a joiner die out before it reaches everyone.
    let digits = (f64::from(size.get()) + 1.0).log10().ceil().max(1.0);
    c.max_transmissions = NonZeroU8::new((4.0 * digits).min(255.0) as u8).unwrap_or(NonZeroU8::MIN);
    // Suspicion of 3 (not 4) probe periods × max(1, log10(n)): a crash is declared a little
    // sooner than memberlist's LAN profile. A member wrongly declared down loses nothing
    // lasting: it renews its identity (boot stamp) and is alive again at once.
    c.suspect_to_down_after = Duration::from_secs_f64(
        3.0 * f64::from(size.get()).log10().max(1.0) * c.probe_period.as_secs_f64(),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmissions_and_suspicion_grow_with_the_cluster() {
        assert_eq!(swim_config(1).max_transmissions.get(), 4);
        assert_eq!(swim_config(5).max_transmissions.get(), 4);
        assert_eq!(swim_config(50).max_transmissions.get(), 8);
        assert_eq!(swim_config(200).max_transmissions.get(), 12);
        assert!(swim_config(200).suspect_to_down_after > swim_config(5).suspect_to_down_after);
        assert!(swim_config(5).max_packet_size.get() + envelope::SEALED_OVERHEAD <= MAX_DATAGRAM);
    }
}
