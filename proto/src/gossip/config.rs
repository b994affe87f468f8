//! The settings of a gossip node, and how they scale with the size of the cluster.

use super::data::Name;
use super::wire::MAX_SWIM_PACKET;
use crate::protect::ProtectPolicy;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: Name,
    /// The address other members reach this node's gossip port at.
    pub gossip_addr: SocketAddr,
    /// Boot stamp to start from: above any the data directory remembers (or 1).
    pub boot: u64,
    /// Version to start counting changes from: what the data directory remembers (or 0).
    /// Peers that hold more for this node teach it at the first exchange.
    pub version: u64,
    /// This run's id: random, drawn at start (see `data`).
    pub run: u64,
    /// Seed of every random choice the node makes.
    pub seed: u64,
    /// Members each new change is pushed to by every member that first receives it.
    pub fanout: usize,
    /// Anti-entropy period for clusters of up to 32 members (scaled up beyond, as
    /// memberlist's push-pull is).
    pub sync_interval: Duration,
    /// How long failed and left members stay listed before they are forgotten.
    pub reconnect_timeout: Duration,
    /// Local health awareness (see `health`). Off only to measure what it changes.
    pub lifeguard: bool,
    /// Ask a suspect directly before declaring it down (see `Node::last_check`). Off only to
    /// measure what it changes.
    pub last_check: bool,
    pub protect: ProtectPolicy,
    /// The most members (of every standing, SWIM's down ones included) this node holds.
    /// At the limit, identities it does not hold are refused until some are forgotten; a
    /// peer cannot make it hold more, whatever it claims. Default [`MAX_MEMBERS`].
    pub max_members: usize,
}

/// Default of [`NodeConfig::max_members`]: six times the 10,000 hosts muster is built for,
/// and as many as one join reply may list (`wire::MAX_ITEMS`). A member costs a few
/// hundred bytes here, so this bounds the table to tens of MiB.
pub const MAX_MEMBERS: usize = super::wire::MAX_ITEMS;

impl NodeConfig {
    pub fn new(name: impl Into<Name>, gossip_addr: SocketAddr) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            gossip_addr,
            boot: 1,
            version: 0,
            run: 1,
            seed: 0,
            fanout: 6,
            sync_interval: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(72 * 3600),
            lifeguard: true,
            last_check: true,
            protect: ProtectPolicy::default(),
            max_members: MAX_MEMBERS,
        }
    }
}

/// The anti-entropy period for `members` members: memberlist's pushPullScale (the base up
/// to 32 members, then one more base period per doubling).
pub fn sync_interval(base: Duration, members: usize) -> Duration {
    if members <= 32 {
        return base;
    }
    let mult = ((members as f64).log2() - 32f64.log2()).ceil() + 1.0;
    base.mul_f64(mult)
}

/// SWIM settings for a cluster of about `cluster_size` members: memberlist's LAN profile
/// (1 s probes, suspicion growing with log(size), retransmissions growing with log(size),
/// gossip to 3 members every 200 ms), with packets sized so that the trailer and a sealed
/// envelope still fit in a datagram.
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
    // lasting (it renews its boot stamp and is alive again at once), and a node that is
    // itself slow stretches its own suspicions (see `health`).
    c.suspect_to_down_after = Duration::from_secs_f64(
        3.0 * f64::from(size.get()).log10().max(1.0) * c.probe_period.as_secs_f64(),
    );
    // Five indirect probes, not three: at 10% packet loss one indirect path of four hops
    // fails a third of the time, so three let 4% of failed direct probes turn into
    // suspicions (and cluster-wide gossip of the suspicion and its refutation); five, 0.5%.
    // They are only sent when a direct probe failed.
    c.num_indirect_probes = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
    c.max_packet_size = NonZeroUsize::new(MAX_SWIM_PACKET).unwrap_or(NonZeroUsize::MIN);
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
        assert_eq!(swim_config(50).max_transmissions.get(), 8);
        assert_eq!(swim_config(200).max_transmissions.get(), 12);
        assert!(swim_config(200).suspect_to_down_after > swim_config(5).suspect_to_down_after);
        assert!(swim_config(5).max_packet_size.get() <= MAX_SWIM_PACKET);
    }

    #[test]
    fn sync_interval_scales_like_memberlist() {
        let b = Duration::from_secs(30);
        assert_eq!(sync_interval(b, 3), b);
        assert_eq!(sync_interval(b, 32), b);
        assert_eq!(sync_interval(b, 64), b * 2);
        assert_eq!(sync_interval(b, 10_000), b * 10);
    }
}
