//! A queue of deadlines on the caller's clock: foca's timers and the node's own, delivered
//! in deadline order (ties in submission order, so a run is reproducible).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

pub struct TimerQueue<T> {
    heap: BinaryHeap<Reverse<(Duration, u64)>>,
    timers: rustc_hash::FxHashMap<u64, T>,
    seq: u64,
}

impl<T> Default for TimerQueue<T> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            timers: Default::default(),
            seq: 0,
        }
    }
}

impl<T> TimerQueue<T> {
    pub fn schedule(&mut self, at: Duration, timer: T) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq)));
        self.timers.insert(self.seq, timer);
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Removes and returns the earliest timer due at `now`, with its deadline.
    pub fn pop_due(&mut self, now: Duration) -> Option<(Duration, T)> {
        let Reverse((t, seq)) = *self.heap.peek()?;
        if t > now {
            return None;
        }
        self.heap.pop();
        self.timers.remove(&seq).map(|timer| (t, timer))
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    pub fn clear(&mut self) {
        self.heap.clear();
        self.timers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_then_submission_order() {
        let mut q = TimerQueue::default();
        q.schedule(Duration::from_secs(30), "c");
        q.schedule(Duration::from_secs(10), "a");
        q.schedule(Duration::from_secs(10), "b");
        assert_eq!(q.next(), Some(Duration::from_secs(10)));
        assert!(q.pop_due(Duration::from_secs(5)).is_none());
        let now = Duration::from_secs(15);
        assert_eq!(q.pop_due(now).map(|x| x.1), Some("a"));
        assert_eq!(q.pop_due(now).map(|x| x.1), Some("b"));
        assert!(q.pop_due(now).is_none());
        assert_eq!(q.len(), 1);
    }
}
