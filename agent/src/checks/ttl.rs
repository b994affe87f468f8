//! TTL checks: the runner that turns a check critical when it is not refreshed in time, and
//! what happens to TTL checks across a restart of the agent.
//!
//! The rule for a restart lives in `muster_proto::ttl` (pure, tested there): the agent
//! stamps the wall clock in `data_dir/alive.json` every few seconds and once more when it
//! stops gracefully; at the next start, restored TTL checks that certainly ran out while it
//! was down turn critical in one batch, before gossip publishes anything, and the others
//! keep running for what they may have left. So a restart never makes every TTL timer start
//! over together, and expiries judged at start cost one batched write instead of a storm of
//! single ones. The expiry output never nests (`muster_proto::ttl::expired_output`).

use crate::state::State;
use muster_proto::model::{CheckKind, HealthStatus};
use muster_proto::ttl::{self, AliveStamp, Restored, ALIVE_STAMP_PERIOD_MS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The file in `data_dir` with the last wall-clock stamp of a running agent.
const STAMP_FILE: &str = "alive.json";
/// Bigger than any stamp this agent writes: such a file is not ours and is ignored.
const MAX_STAMP_FILE: u64 = 4096;

#[derive(serde::Serialize, serde::Deserialize)]
struct StampFile {
    at_ms: u64,
    clean: bool,
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The stamp the previous run left in `dir`, if any (an unreadable one counts as none:
/// restored checks then get a full TTL, the behaviour without a stamp).
pub fn read_stamp(dir: &Path) -> Option<AliveStamp> {
    let path = dir.join(STAMP_FILE);
    let len = std::fs::metadata(&path).ok()?.len();
    if len > MAX_STAMP_FILE {
        tracing::warn!(file = %path.display(), "ignoring an oversized clock stamp");
        return None;
    }
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<StampFile>(&bytes) {
        Ok(s) => Some(AliveStamp {
            at_ms: s.at_ms,
            clean: s.clean,
        }),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable clock stamp");
            None
        }
    }
}

/// Stamps the wall clock now; `clean` when the agent is stopping gracefully. Durable (a
/// stamp older than the truth after a power loss could expire a check too early).
pub fn write_stamp(dir: &Path, clean: bool) {
    let stamp = StampFile {
        at_ms: wall_clock_ms(),
        clean,
    };
    let bytes = serde_json::to_vec(&stamp).unwrap_or_default();
    if let Err(e) = crate::store::write_file_durably(dir, STAMP_FILE, &bytes) {
        tracing::warn!(error = %e, "could not stamp the clock in data_dir (TTL checks restored at the next start get a full TTL)");
    }
}

/// Stamps the clock every period while the agent runs (the graceful stop writes the last,
/// clean, stamp itself). Stops with the runtime.
pub fn spawn_stamper(dir: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(ALIVE_STAMP_PERIOD_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let dir = dir.clone();
            let _ = tokio::task::spawn_blocking(move || write_stamp(&dir, false)).await;
        }
    })
}

/// Judges the TTL checks just restored from `data_dir` (call after `State::restore`, before
/// gossip starts): those that ran out while the agent was down turn critical now, all in
/// one batch; the others are returned with the moment they run out unless refreshed.
pub async fn judge_restored(
    state: &Arc<State>,
    stamp: Option<AliveStamp>,
) -> HashMap<String, Instant> {
    let now_ms = wall_clock_ms();
    let now = Instant::now();
    let mut deadlines = HashMap::new();
    let mut expiries = JoinSet::new();
    for check in state.local().checks.values() {
        let CheckKind::Ttl { ttl_ms } = check.kind else {
            continue;
        };
        let verdict = if check.status == HealthStatus::Critical {
            // Already critical: its timer still runs (a critical note is replaced by the
            // expiry message when it runs out), for a full TTL.
            Restored::Remaining(ttl_ms)
        } else {
            ttl::judge(stamp, now_ms, ttl_ms)
        };
        match verdict {
            Restored::Remaining(ms) => {
                deadlines.insert(check.id.clone(), now + Duration::from_millis(ms));
            }
            Restored::Expired => {
                // Concurrent updates share the committer's batches (one write for all).
                let (state, id) = (state.clone(), check.id.clone());
                let output = ttl::expired_output(&check.output);
                expiries.spawn(async move {
                    state
                        .update_check(&id, HealthStatus::Critical, output)
                        .await
                        .map_err(|e| (id, e))
                });
            }
        }
    }
    let expired = expiries.len();
    while let Some(done) = expiries.join_next().await {
        if let Ok(Err((id, e))) = done {
            tracing::warn!(check = %id, error = %e, "could not mark a restored TTL check expired");
        }
    }
    if expired + deadlines.len() > 0 {
        tracing::info!(
            expired,
            running = deadlines.len(),
            "restored TTL checks judged: expired while the agent was down, or still running"
        );
    }
    deadlines
}

/// A TTL check: critical once its deadline passes without a refresh through the API. The
/// first deadline is `first` (what a restored check has left) or one TTL from now.
pub async fn run(
    state: &State,
    id: &str,
    ttl_ms: u64,
    first: Option<Instant>,
    mut refreshes: broadcast::Receiver<String>,
) {
    let ttl = Duration::from_millis(ttl_ms.max(1));
    let mut deadline = Some(first.unwrap_or_else(|| Instant::now() + ttl));
    loop {
        let expiry = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // A refresh that is ready wins over an expiry at the same moment.
            biased;
            r = refreshes.recv() => match r {
                Ok(refreshed) if refreshed == id => deadline = Some(Instant::now() + ttl),
                Ok(_) => {}
                // Missed announcements may have included ours: count them as a refresh,
                // which at worst delays this expiry by one TTL under a refresh storm.
                Err(broadcast::error::RecvError::Lagged(_)) => deadline = Some(Instant::now() + ttl),
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = expiry => {
                deadline = None;
                let last = state.local().checks.get(id).map(|c| c.output.clone()).unwrap_or_default();
                let output = ttl::expired_output(&last);
                if let Err(e) = state.update_check(id, HealthStatus::Critical, output).await {
                    tracing::debug!(check = %id, error = %e, "TTL expiry not applied");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::model::Check;

    fn ttl_check(id: &str, ttl_ms: u64, status: HealthStatus, output: &str) -> Check {
        Check {
            id: id.into(),
            name: id.into(),
            status,
            notes: String::new(),
            output: output.into(),
            service_id: String::new(),
            kind: CheckKind::Ttl { ttl_ms },
            deregister_critical_after_ms: 0,
            status_changed_ms: 0,
        }
    }

    async fn status(state: &State, id: &str) -> (HealthStatus, String) {
        let c = state.local().checks[id].clone();
        (c.status, c.output.clone())
    }

    /// The TTL timer under tokio's paused clock: expiry, and refreshes that change nothing
    /// in the record still pushing the expiry back.
    #[tokio::test(start_paused = true)]
    async fn ttl_expires_unless_refreshed() {
        let state = State::for_test();
        let c = ttl_check("hb", 10_000, HealthStatus::Passing, "");
        state.register_check(c).await.unwrap();
        let task = tokio::spawn({
            let state = state.clone();
            let rx = state.ttl_refreshes();
            async move { run(&state, "hb", 10_000, None, rx).await }
        });
        // Refresh with the same status and output every 6 s for a minute: never expires.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert_eq!(status(&state, "hb").await.0, HealthStatus::Passing);
            state.ttl_refreshed("hb");
            assert!(!state
                .update_check("hb", HealthStatus::Passing, String::new())
                .await
                .unwrap());
        }
        // Another check's refresh does not count.
        tokio::time::sleep(Duration::from_secs(6)).await;
        state.ttl_refreshed("other");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            status(&state, "hb").await,
            (HealthStatus::Critical, "TTL expired".to_string())
        );
        // A pass brings it back, with its note kept in the expiry message next time.
        state.ttl_refreshed("hb");
        state
            .update_check("hb", HealthStatus::Passing, "alive".into())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(status(&state, "hb").await.0, HealthStatus::Passing);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let expired = (
            HealthStatus::Critical,
            "TTL expired (last output before timeout follows): alive".to_string(),
        );
        assert_eq!(status(&state, "hb").await, expired);
        task.abort();
        // A runner restarted on the expired check (as after a restart) runs out again
        // without nesting the message.
        let task = tokio::spawn({
            let state = state.clone();
            let rx = state.ttl_refreshes();
            async move { run(&state, "hb", 10_000, None, rx).await }
        });
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(status(&state, "hb").await, expired);
        task.abort();
    }

    /// Restored checks: a clean stop longer ago than a check's TTL expires it at once
    /// (critical notes untouched); a shorter one leaves what the TTL has left.
    #[tokio::test(start_paused = true)]
    async fn restored_checks_are_judged_from_the_stamp() {
        let state = State::for_test();
        for c in [
            ttl_check("short", 10_000, HealthStatus::Passing, "ok"),
            ttl_check("long", 600_000, HealthStatus::Warning, "slow"),
            ttl_check("failed", 10_000, HealthStatus::Critical, "broken"),
        ] {
            state.register_check(c).await.unwrap();
        }
        let stopped = AliveStamp {
            at_ms: wall_clock_ms() - 60_000,
            clean: true,
        };
        let before = Instant::now();
        let deadlines = judge_restored(&state, Some(stopped)).await;
        assert_eq!(
            status(&state, "short").await,
            (
                HealthStatus::Critical,
                "TTL expired (last output before timeout follows): ok".into()
            )
        );
        assert_eq!(
            status(&state, "long").await,
            (HealthStatus::Warning, "slow".into())
        );
        assert_eq!(
            status(&state, "failed").await,
            (HealthStatus::Critical, "broken".into())
        );
        assert!(!deadlines.contains_key("short"));
        // About 540 s left of 600 (the wall clock moves on a little during the test).
        let left = deadlines["long"] - before;
        assert!(
            left <= Duration::from_secs(540) && left > Duration::from_secs(530),
            "{left:?}"
        );
        let left = deadlines["failed"] - before;
        assert!(
            left <= Duration::from_secs(10) && left > Duration::from_secs(9),
            "{left:?}"
        );
    }

    #[test]
    fn stamps_round_trip_and_bad_files_count_as_none() {
        let dir = std::env::temp_dir().join(format!("muster-ttl-stamp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_stamp(&dir), None);
        write_stamp(&dir, true);
        let s = read_stamp(&dir).expect("stamp");
        assert!(s.clean);
        assert!(s.at_ms.abs_diff(wall_clock_ms()) < 60_000);
        std::fs::write(dir.join(STAMP_FILE), b"{not json").unwrap();
        assert_eq!(read_stamp(&dir), None);
        std::fs::write(dir.join(STAMP_FILE), vec![b' '; 5000]).unwrap();
        assert_eq!(read_stamp(&dir), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
