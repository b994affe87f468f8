//! TTL checks across a restart of their agent: which restored checks have already run out,
//! how long the others have left, and the expiry output (which must not nest).
//!
//! A TTL check is refreshed only through its own agent's API, so nothing can refresh it
//! while the agent is down: a check last refreshed before the agent stopped runs out at the
//! latest one TTL after the stop. The agent stamps the wall clock in `data_dir` every
//! [`ALIVE_STAMP_PERIOD_MS`] and once more, marked clean, when it stops gracefully; the
//! latest moment it can have stopped is that stamp (plus one period after a crash). At the
//! next start, a restored check that is not critical has therefore either certainly
//! expired (it turns critical in the restore itself: one batch, before gossip publishes
//! anything, so peers never see it passing) or has at most `latest stop + TTL − now` left.
//! The rule never expires a check that could still be within its TTL. When the clock reads
//! earlier than the stamp (it was set back), the downtime is unknown and every restored
//! check gets one full TTL, as a fresh registration would. A clock set forward can expire
//! checks early; the owner's next refresh (due within the TTL anyway) mends that.

/// How often a running agent stamps the wall clock in `data_dir` (milliseconds).
pub const ALIVE_STAMP_PERIOD_MS: u64 = 5_000;

/// The last wall-clock stamp a previous run of the agent left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AliveStamp {
    /// Unix milliseconds of the stamp.
    pub at_ms: u64,
    /// Written as the agent stopped gracefully: it stopped exactly then.
    pub clean: bool,
}

impl AliveStamp {
    /// The latest moment the run that wrote this stamp can have stopped.
    pub fn latest_stop_ms(&self) -> u64 {
        if self.clean {
            self.at_ms
        } else {
            self.at_ms.saturating_add(ALIVE_STAMP_PERIOD_MS)
        }
    }
}

/// What a restored TTL check that was not critical is judged to be at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restored {
    /// It ran out while the agent was down.
    Expired,
    /// It may still be within its TTL; it runs out after this many milliseconds unless
    /// refreshed (never more than the TTL).
    Remaining(u64),
}

/// Judges a restored TTL check of `ttl_ms` at `now_ms` (Unix milliseconds) from the stamp
/// the previous run left (`None`: no stamp, e.g. the first run with this `data_dir`).
pub fn judge(stamp: Option<AliveStamp>, now_ms: u64, ttl_ms: u64) -> Restored {
    let Some(stamp) = stamp else {
        return Restored::Remaining(ttl_ms);
    };
    if now_ms < stamp.at_ms {
        // The clock was set back: how long the agent was down is unknown.
        return Restored::Remaining(ttl_ms);
    }
    let latest_deadline = stamp.latest_stop_ms().saturating_add(ttl_ms);
    if now_ms >= latest_deadline {
        Restored::Expired
    } else {
        Restored::Remaining((latest_deadline - now_ms).min(ttl_ms))
    }
}

const EXPIRED: &str = "TTL expired";
const EXPIRED_WITH_OUTPUT: &str = "TTL expired (last output before timeout follows): ";

/// The output of a check whose TTL ran out, given its output before. Idempotent: an output
/// that already says the TTL expired is kept as it is, so expiring again (after a restart,
/// the timer of a restored expired check runs out once more) never nests the message.
pub fn expired_output(last: &str) -> String {
    let text = if last.is_empty() {
        EXPIRED.to_string()
    } else if last == EXPIRED || last.starts_with(EXPIRED_WITH_OUTPUT) {
        last.to_string()
    } else {
        format!("{EXPIRED_WITH_OUTPUT}{last}")
    };
    crate::model::check_output_text(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: u64 = 30_000;

    fn stamp(at_ms: u64, clean: bool) -> Option<AliveStamp> {
        Some(AliveStamp { at_ms, clean })
    }

    #[test]
    fn without_a_stamp_a_restored_check_gets_a_full_ttl() {
        assert_eq!(judge(None, 1_000_000, TTL), Restored::Remaining(TTL));
    }

    #[test]
    fn a_clean_stop_longer_ago_than_the_ttl_means_expired() {
        let stop = 1_000_000;
        assert_eq!(judge(stamp(stop, true), stop + TTL, TTL), Restored::Expired);
        assert_eq!(
            judge(stamp(stop, true), stop + 2 * 86_400_000, TTL),
            Restored::Expired
        );
        // Down 10 s of a 30 s TTL: at most 20 s left.
        assert_eq!(
            judge(stamp(stop, true), stop + 10_000, TTL),
            Restored::Remaining(20_000)
        );
    }

    #[test]
    fn after_a_crash_the_agent_may_have_run_one_period_past_its_stamp() {
        let at = 1_000_000;
        // Down for exactly the TTL since the stamp: it may have been refreshed up to one
        // period later, so it is not certainly expired yet.
        assert_eq!(
            judge(stamp(at, false), at + TTL, TTL),
            Restored::Remaining(ALIVE_STAMP_PERIOD_MS)
        );
        assert_eq!(
            judge(stamp(at, false), at + TTL + ALIVE_STAMP_PERIOD_MS, TTL),
            Restored::Expired
        );
        // Restarted within a period of the stamp: never more than one TTL left.
        assert_eq!(
            judge(stamp(at, false), at + 1_000, TTL),
            Restored::Remaining(TTL)
        );
    }

    #[test]
    fn a_clock_set_back_gives_a_full_ttl() {
        let at = 10 * 86_400_000;
        assert_eq!(
            judge(stamp(at, true), at - 86_400_000, TTL),
            Restored::Remaining(TTL)
        );
    }

    #[test]
    fn expiry_output_keeps_the_last_note_once() {
        assert_eq!(expired_output(""), "TTL expired");
        let once = expired_output("alive");
        assert_eq!(
            once,
            "TTL expired (last output before timeout follows): alive"
        );
        assert_eq!(expired_output(&once), once);
        assert_eq!(expired_output("TTL expired"), "TTL expired");
        // Long notes stay within the output limit.
        let long = "x".repeat(crate::model::MAX_CHECK_OUTPUT);
        assert_eq!(expired_output(&long).len(), crate::model::MAX_CHECK_OUTPUT);
    }
}
