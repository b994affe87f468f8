//! Protect mode: when an agent suddenly loses most of its peers at once, the likelier story
//! is that *it* has been cut off, not that most of the cluster died in the same moment. So
//! instead of dropping those peers' instances from every answer (and leaving its clients
//! with nothing), it keeps serving their last known instances, marked stale, until contact
//! returns. Eureka calls this self-preservation.
//!
//! The rule: if, within `window_ms`, at least `min_lost` peers are declared failed and they
//! are more than half of the peers that were up at the start of that burst, the failed ones
//! are *held* (still served, flagged stale) and so is every peer that fails while protect
//! mode lasts. It ends when every held peer is alive (and reconciled) again, or a grace
//! period after half of them are: those still missing then are treated as really failed.
//! (Ending at "half back" would drop the rest unflagged while they, too, are coming back.) A peer that leaves gracefully is never held:
//! it said goodbye.

use std::collections::{BTreeSet, VecDeque};

/// How many failures, how fast, make a burst.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtectPolicy {
    pub window_ms: u64,
    pub min_lost: usize,
    /// How long protect mode lasts once half of the held peers are back.
    pub release_grace_ms: u64,
}

impl Default for ProtectPolicy {
    fn default() -> Self {
        // SWIM declares peers down a few seconds after the fact and at slightly different
        // moments; a cut-off agent sees all of them go within a few probe rounds.
        ProtectPolicy {
            window_ms: 15_000,
            min_lost: 2,
            release_grace_ms: 10_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Active {
    since_ms: u64,
    held: BTreeSet<String>,
    /// Peers held in all since protect mode began (the base for "half are back").
    total: usize,
    returned: usize,
    /// Set once half are back: when protect mode ends.
    ending_at: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Protect {
    policy: ProtectPolicy,
    /// Failures inside the current window, oldest first.
    recent: VecDeque<(u64, String)>,
    active: Option<Active>,
}

impl Protect {
    pub fn new(policy: ProtectPolicy) -> Self {
        Protect {
            policy,
            ..Default::default()
        }
    }

    /// When protect mode began, if it is on.
    pub fn active_since(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.since_ms)
    }

    pub fn is_held(&self, node: &str) -> bool {
        self.active.as_ref().is_some_and(|a| a.held.contains(node))
    }

    /// `node` was declared failed at `now_ms`; `serving_peers` is how many *other* peers are
    /// still served, `suspects` how many of those are suspected right now (a node that is
    /// cut off suspects every peer it probes, so the first failure of a burst already comes
    /// with suspects). Returns the peers to hold (empty: apply the failure normally).
    pub fn on_failure(
        &mut self,
        node: &str,
        now_ms: u64,
        serving_peers: usize,
        suspects: usize,
    ) -> Vec<String> {
        let window = self.policy.window_ms;
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > window)
        {
            self.recent.pop_front();
        }
        if !self.recent.iter().any(|(_, n)| n == node) {
            self.recent.push_back((now_ms, node.to_string()));
        }
        if let Some(a) = &mut self.active {
            if a.held.insert(node.to_string()) {
                a.total += 1;
            }
            return vec![node.to_string()];
        }
        let before = serving_peers + self.recent.len();
        let lost = self.recent.len() + suspects.min(serving_peers);
        if lost >= self.policy.min_lost && lost * 2 > before {
            let held: BTreeSet<String> = self.recent.iter().map(|(_, n)| n.clone()).collect();
            self.active = Some(Active {
                since_ms: now_ms,
                total: held.len(),
                held: held.clone(),
                returned: 0,
                ending_at: None,
            });
            return held.into_iter().collect();
        }
        Vec::new()
    }

    /// `node` is alive (and reconciled) again at `now_ms`. Returns `Some(still held)` when
    /// this ends protect mode (every held peer is back): those are no longer held.
    pub fn on_alive(&mut self, node: &str, now_ms: u64) -> Option<Vec<String>> {
        self.recent.retain(|(_, n)| n != node);
        let a = self.active.as_mut()?;
        if !a.held.remove(node) {
            return None;
        }
        a.returned += 1;
        if a.held.is_empty() {
            self.active = None;
            return Some(Vec::new());
        }
        if a.returned * 2 >= a.total && a.ending_at.is_none() {
            a.ending_at = Some(now_ms + self.policy.release_grace_ms);
        }
        None
    }

    /// Ends protect mode once the grace after half came back has run out. Returns
    /// `Some(still held)` when it ends: their failure now applies.
    pub fn tick(&mut self, now_ms: u64) -> Option<Vec<String>> {
        let a = self.active.as_mut()?;
        if a.ending_at.is_some_and(|t| now_ms >= t) {
            let rest = std::mem::take(&mut a.held).into_iter().collect();
            self.active = None;
            return Some(rest);
        }
        None
    }

    /// `node` left gracefully or was removed: it is no longer a failure to explain.
    pub fn forget(&mut self, node: &str) {
        self.recent.retain(|(_, n)| n != node);
        if let Some(a) = &mut self.active {
            a.held.remove(node);
            if a.held.is_empty() {
                self.active = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Protect {
        Protect::new(ProtectPolicy::default())
    }

    #[test]
    fn scattered_failures_apply_normally() {
        let mut p = p();
        // 10 peers; one fails, then another a minute later: ordinary failures.
        assert!(p.on_failure("a", 0, 9, 0).is_empty());
        assert!(p.on_failure("b", 60_000, 8, 0).is_empty());
        assert!(p.active_since().is_none());
    }

    #[test]
    fn losing_a_minority_at_once_applies_normally() {
        let mut p = p();
        // 10 peers, 3 fail together: not most of them.
        assert!(p.on_failure("a", 0, 9, 0).is_empty());
        assert!(p.on_failure("b", 100, 8, 0).is_empty());
        assert!(p.on_failure("c", 200, 7, 0).is_empty());
        assert!(p.active_since().is_none());
    }

    #[test]
    fn losing_most_peers_at_once_holds_them_until_half_return() {
        let mut p = p();
        // 5 peers: a, b, c fail within a few seconds; d and e still up.
        assert!(p.on_failure("a", 0, 4, 0).is_empty());
        assert!(
            p.on_failure("b", 1_000, 3, 0).is_empty(),
            "2 of 5 is not most"
        );
        let held = p.on_failure("c", 2_000, 2, 0);
        assert_eq!(
            held,
            ["a", "b", "c"].map(String::from).to_vec(),
            "3 of 5 is"
        );
        assert_eq!(p.active_since(), Some(2_000));
        // While it lasts, any further failure is held too.
        assert_eq!(p.on_failure("d", 3_000, 1, 0), vec!["d".to_string()]);
        assert!(p.is_held("a") && p.is_held("d"));
        assert_eq!(p.on_alive("d", 3_500), None);
        // Two of four back: half, so contact has returned; after a grace the failure of those
        // still missing applies (they might have been coming back too).
        assert_eq!(p.on_alive("a", 4_000), None);
        assert!(p.active_since().is_some(), "held through the grace");
        assert_eq!(p.tick(4_000 + 9_999), None);
        assert_eq!(
            p.tick(4_000 + 10_000),
            Some(vec!["b".to_string(), "c".to_string()])
        );
        assert!(p.active_since().is_none());
        assert!(!p.is_held("c"));
    }

    #[test]
    fn a_first_failure_among_many_suspects_is_a_burst() {
        let mut p = p();
        // 5 peers; the first to be declared failed while 3 others are already suspected.
        assert_eq!(p.on_failure("a", 0, 4, 3), vec!["a".to_string()]);
        assert!(p.active_since().is_some());
        // One failure with one suspect among 9 is not.
        let mut q = Protect::new(ProtectPolicy::default());
        assert!(q.on_failure("a", 0, 9, 1).is_empty());
    }

    #[test]
    fn every_held_peer_back_ends_it_at_once() {
        let mut p = p();
        p.on_failure("a", 0, 2, 0);
        p.on_failure("b", 10, 1, 0);
        assert!(p.active_since().is_some());
        assert_eq!(p.on_alive("a", 100), None);
        assert_eq!(p.on_alive("b", 200), Some(vec![]));
        assert!(p.active_since().is_none());
    }

    #[test]
    fn a_two_node_cluster_never_protects() {
        let mut p = p();
        // Only one peer: losing it is indistinguishable from it dying.
        assert!(p.on_failure("a", 0, 0, 0).is_empty());
    }

    #[test]
    fn leaving_peers_are_forgotten() {
        let mut p = p();
        p.on_failure("a", 0, 2, 0);
        p.on_failure("b", 10, 1, 0);
        assert!(p.active_since().is_some());
        p.forget("a");
        p.forget("b");
        assert!(p.active_since().is_none());
    }
}
