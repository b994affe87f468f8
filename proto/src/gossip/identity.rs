//! Who a cluster member is, as SWIM (foca) sees it: the node name, the gossip address it
//! answers on, and a boot stamp.
//!
//! SWIM will not let an identity that was declared down come back. The boot stamp makes
//! each run of a node (and each rejoin after a false "down") a fresh identity at the same
//! address; foca keeps the one that wins the address conflict, the higher boot.
//!
//! The boot stamp is a counter, never a clock reading: a node starts from what its data
//! directory remembers (or 1) and, as soon as a peer shows it a higher stamp for its own
//! name (a run it does not remember, or a clock that once ran ahead), it jumps above it in
//! one step (see `node`). So a restarted node is a member again within a round trip,
//! whatever its clock says.
//!
//! An identity is shared (`Arc`, hash-consed on decode): foca keeps one per member in every
//! member's table, so a 10,000-node simulation holds 10^8 of them.

use super::data::{Name, MAX_NAME_BYTES};
use super::intern::{self, Table};
use foca::Identity;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdParts {
    pub name: Name,
    pub addr: SocketAddr,
    pub boot: u64,
}

thread_local! {
    static IDS: RefCell<Table<IdParts, IdParts>> = RefCell::new(Table::default());
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<IdParts>);

impl NodeId {
    pub fn new(name: impl Into<Name>, addr: SocketAddr, boot: u64) -> NodeId {
        Self::from_parts(IdParts {
            name: name.into(),
            addr,
            boot,
        })
    }

    fn from_parts(parts: IdParts) -> NodeId {
        NodeId(intern::with(&IDS, |t| {
            t.get_or_insert(parts.clone(), || Arc::new(parts))
        }))
    }

    pub fn name(&self) -> &Name {
        &self.0.name
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        self.0.addr
    }

    pub fn boot(&self) -> u64 {
        self.0.boot
    }

    /// The same member at another boot stamp.
    pub fn with_boot(&self, boot: u64) -> NodeId {
        NodeId::new(self.0.name.clone(), self.0.addr, boot)
    }

    /// Whether `self` is a later run of the same member than `other`.
    pub fn supersedes(&self, other: &NodeId) -> bool {
        self.win_addr_conflict(other)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.0.name, self.0.addr, self.0.boot)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    /// Refuses names longer than [`MAX_NAME_BYTES`]: every member holds the identities it is
    /// told of, so a name's length is bounded where it enters.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parts = IdParts::deserialize(d)?;
        if parts.name.len() > MAX_NAME_BYTES {
            return Err(serde::de::Error::custom(format!(
                "member name of {} bytes is over the limit of {MAX_NAME_BYTES}",
                parts.name.len()
            )));
        }
        Ok(NodeId::from_parts(parts))
    }
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    /// After being declared down (a long pause, a false positive), come back as the next
    /// boot at once.
    fn renew(&self) -> Option<Self> {
        Some(self.with_boot(self.boot().checked_add(1)?))
    }

    fn addr(&self) -> SocketAddr {
        self.0.addr
    }

    /// The higher boot wins; ties (two different nodes misconfigured onto one address) are
    /// broken by name so that every member picks the same one.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot(), self.name()) > (adversary.boot(), adversary.name())
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
        let restarted = NodeId::new("a", a.addr(), 99);
        assert!(restarted.supersedes(&a));
        assert!(a.with_boot(u64::MAX).renew().is_none());
    }

    #[test]
    fn overlong_names_are_refused_when_decoded() {
        let long = NodeId::new(
            "x".repeat(MAX_NAME_BYTES + 1),
            "127.0.0.1:1".parse().unwrap(),
            1,
        );
        let bytes = postcard::to_allocvec(&long).unwrap();
        assert!(postcard::from_bytes::<NodeId>(&bytes).is_err());
        let fits = NodeId::new(
            "x".repeat(MAX_NAME_BYTES),
            "127.0.0.1:1".parse().unwrap(),
            1,
        );
        let bytes = postcard::to_allocvec(&fits).unwrap();
        assert_eq!(postcard::from_bytes::<NodeId>(&bytes).unwrap(), fits);
    }

    #[test]
    fn decoded_identities_are_shared_and_equal() {
        let a = NodeId::new("a", "127.0.0.1:8301".parse().unwrap(), 10);
        let bytes = postcard::to_allocvec(&a).unwrap();
        let b: NodeId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(a, b);
        assert!(Arc::ptr_eq(&a.0, &b.0));
    }
}
