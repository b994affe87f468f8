//! foca's timer queue: every timer foca asks for is delivered, in deadline order (ties in
//! submission order), by the task that owns foca.

use foca::Timer;
use muster_proto::gossip::NodeId;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use tokio::time::{Duration, Instant};

#[derive(Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    timers: HashMap<u64, Timer<NodeId>>,
    seq: u64,
}

impl TimerQueue {
    pub fn schedule(&mut self, after: Duration, timer: Timer<NodeId>) {
        self.seq += 1;
        self.heap.push(Reverse((Instant::now() + after, self.seq)));
        self.timers.insert(self.seq, timer);
    }

    /// When the earliest timer is due (far in the future when there is none).
    pub fn next_deadline(&self) -> Instant {
        self.heap
            .peek()
            .map(|Reverse((t, _))| *t)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Removes and returns the timers due at `now`, earliest first.
    pub fn due(&mut self, now: Instant) -> Vec<Timer<NodeId>> {
        let mut out = Vec::new();
        while let Some(Reverse((t, seq))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            if let Some(timer) = self.timers.remove(&seq) {
                out.push(timer);
            }
        }
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.timers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::TimerToken;

    #[test]
    fn timers_come_out_in_deadline_then_submission_order() {
        let start = Instant::now();
        let mut q = TimerQueue::default();
        q.schedule(
            Duration::from_secs(30),
            Timer::PeriodicGossip(0 as TimerToken),
        );
        q.schedule(Duration::from_secs(10), Timer::ProbeRandomMember(1));
        q.schedule(Duration::from_secs(10), Timer::PeriodicAnnounce(2));
        assert!(q.due(start).is_empty());
        assert!(q.next_deadline() >= start + Duration::from_secs(10));
        assert_eq!(
            q.due(start + Duration::from_secs(15)),
            vec![Timer::ProbeRandomMember(1), Timer::PeriodicAnnounce(2)]
        );
        assert_eq!(q.len(), 1);
        assert_eq!(q.due(start + Duration::from_secs(35)).len(), 1);
        assert_eq!(q.len(), 0);
    }
}
