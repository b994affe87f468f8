//! Local health awareness (Lifeguard's "LHA"), which foca does not have.
//!
//! A member whose own processing lags (a starved CPU, a long pause) sees acks arrive late
//! and takes healthy peers for dead: most SWIM false positives come from such a member, not
//! from the network. The node measures its own lag as how late its timers are handled, and
//! keeps a score from 0 (healthy) to [`MAX_SCORE`]. While the score is above 0 it stretches
//! its probe timeouts and its suspicion timeouts by (1 + score): it gives peers more time
//! exactly when it is the one most likely to be wrong. The score rises by one per late timer
//! and falls by one per [`DECAY`] without one.

use std::time::Duration;

pub const MAX_SCORE: u32 = 8;
/// A timer handled this much later than its deadline counts as a sign of lag.
pub const LATE: Duration = Duration::from_millis(150);
/// Without a late timer for this long, the score drops by one.
pub const DECAY: Duration = Duration::from_secs(4);

#[derive(Clone, Debug, Default)]
pub struct Health {
    score: u32,
    last_change: Duration,
    enabled: bool,
}

impl Health {
    pub fn new(enabled: bool) -> Health {
        Health {
            enabled,
            ..Health::default()
        }
    }

    pub fn score(&self) -> u32 {
        self.score
    }

    /// A timer due at `deadline` is being handled at `now`.
    pub fn observe(&mut self, deadline: Duration, now: Duration) {
        if !self.enabled {
            return;
        }
        self.decay(now);
        if now.saturating_sub(deadline) >= LATE {
            if self.score < MAX_SCORE {
                self.score += 1;
            }
            self.last_change = now;
        }
    }

    fn decay(&mut self, now: Duration) {
        while self.score > 0 && now.saturating_sub(self.last_change) >= DECAY {
            self.score -= 1;
            self.last_change += DECAY;
        }
    }

    /// How much longer a timeout of `d` should be now.
    pub fn stretch(&mut self, now: Duration, d: Duration) -> Duration {
        self.decay(now);
        d * (1 + self.score)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn lag_raises_the_score_and_calm_lowers_it() {
        let mut h = Health::new(true);
        h.observe(ms(1000), ms(1010));
        assert_eq!(h.score(), 0);
        h.observe(ms(1000), ms(1500));
        h.observe(ms(2000), ms(2900));
        assert_eq!(h.score(), 2);
        assert_eq!(h.stretch(ms(3000), ms(500)), ms(1500));
        assert_eq!(h.stretch(ms(2900) + DECAY, ms(500)), ms(1000));
        assert_eq!(h.stretch(ms(2900) + DECAY * 5, ms(500)), ms(500));
        let mut off = Health::new(false);
        off.observe(ms(0), ms(5000));
        assert_eq!(off.score(), 0);
    }
}
