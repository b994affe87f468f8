//! Who a cluster member is, as SWIM (foca) sees it: the node name, the gossip address it
//! answers on, and a boot stamp.
//!
//! SWIM will not let an identity that was declared down come back for a long while. The
//! boot stamp (wall-clock microseconds at start, chosen by the agent) makes each run of a
//! node a fresh identity at the same address; foca keeps the one that wins the address
//! conflict (the newer boot), so a restarted node is alive again at once.

use foca::Identity;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub addr: SocketAddr,
    pub boot: u64,
}

impl NodeId {
    pub fn new(name: impl Into<String>, addr: SocketAddr, boot: u64) -> NodeId {
        NodeId {
            name: name.into(),
            addr,
            boot,
        }
    }

    /// Whether `self` is a later run of the same member than `other`.
    pub fn supersedes(&self, other: &NodeId) -> bool {
        self.win_addr_conflict(other)
    }
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    /// After being declared down (say, a long pause), come back as a newer boot at once.
    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            name: self.name.clone(),
            addr: self.addr,
            boot: self.boot.wrapping_add(1),
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The newer boot wins; ties (two different nodes misconfigured onto one address) are
    /// broken by name so that every member picks the same one.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot, &self.name) > (adversary.boot, &adversary.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewed_identity_wins_the_conflict() {
        let a = NodeId::new("a", "127.0.0.1:8301".parse().unwrap(), 10);
        let r = a.renew().unwrap();
        assert_eq!(r.addr(), a.addr());
        assert!(r.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&r));
        let restarted = NodeId::new("a", a.addr, 99);
        assert!(restarted.supersedes(&a));
    }
}
