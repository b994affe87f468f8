//! Runs the health checks of this node's services: one runner task per active check (HTTP,
//! TCP, script, TTL, process), kept in step with the local record by a supervisor, which also reaps
//! services that stayed critical past `deregister_critical_after`.
//!
//! Results go through `State::update_check`, hence into the record that gossip spreads. A
//! status change is applied at once; a change of output alone at most once per
//! [`OUTPUT_UPDATE_INTERVAL`] per check, so a check whose output varies on every run (a
//! timestamp in a body) does not re-gossip the record every interval.

pub mod probe;
pub mod process;
mod tls;
pub mod ttl;

use crate::shared::{Shared, Stop};
use crate::state::State;
use muster_proto::model::{CheckKind, HealthStatus, NodeRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Shortest accepted check interval; shorter ones are raised to it (as Consul does).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// An output-only change (same status) is published at most this often per check.
pub const OUTPUT_UPDATE_INTERVAL: Duration = Duration::from_secs(30);

/// How often the supervisor looks for services to reap.
const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the supervisor. It stops, with all runners, when the agent stops.
/// `restored_ttl`: when each TTL check restored from `data_dir` runs out unless refreshed
/// (see [`ttl::judge_restored`]); other TTL checks get one TTL from their runner's start.
pub fn spawn(shared: Shared, restored_ttl: HashMap<String, Instant>) -> JoinHandle<()> {
    tokio::spawn(supervise(shared, restored_ttl))
}

/// What a runner was started for; a different plan means a restart.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    kind: CheckKind,
    /// Only meaningful for scripts: a reload may flip `enable_script_checks`.
    scripts_enabled: bool,
}

struct Runner {
    plan: Plan,
    task: JoinHandle<()>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Aborting drops the probe in flight; a running script is killed (kill_on_drop).
        self.task.abort();
    }
}

async fn supervise(shared: Shared, mut restored_ttl: HashMap<String, Instant>) {
    let state = shared.state.clone();
    let mut records = state.local_record();
    let mut stop = shared.stop_rx();
    let mut runners: HashMap<String, Runner> = HashMap::new();
    let mut critical_since: HashMap<String, Instant> = HashMap::new();
    let mut reap_tick = tokio::time::interval(REAP_INTERVAL);
    reap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let record = records.borrow_and_update().clone();
        let scripts_enabled = shared.config.load().enable_script_checks;
        reconcile(
            &state,
            &record,
            scripts_enabled,
            &mut runners,
            &mut restored_ttl,
        );
        track_critical(&record, Instant::now(), &mut critical_since);
        tokio::select! {
            r = records.changed() => if r.is_err() { break },
            // (The guard `wait_for` returns must not live across the awaits below.)
            _ = async { stop.wait_for(|s| *s != Stop::Running).await.is_ok() } => break,
            _ = reap_tick.tick() => {
                // Decide on the record as it is now, not as it was at the top of the loop:
                // a check that turned passing meanwhile must not get its service reaped.
                let current = state.local();
                let now = Instant::now();
                track_critical(&current, now, &mut critical_since);
                for service in due_for_reaping(&current, &critical_since, now) {
                    tracing::info!(service = %service, "deregistering service: critical for longer than deregister_critical_after");
                    if let Err(e) = state.deregister_service(&service).await {
                        tracing::warn!(service = %service, error = %e, "could not reap service");
                    }
                }
            }
        }
    }
    // Dropping the runners aborts them.
    runners.clear();
}

/// Makes the runners match the record: one per active check, restarted when its
/// definition changed, stopped when the check is gone. A restored TTL deadline is used by
/// the first runner of its check only.
fn reconcile(
    state: &Arc<State>,
    record: &NodeRecord,
    scripts_enabled: bool,
    runners: &mut HashMap<String, Runner>,
    restored_ttl: &mut HashMap<String, Instant>,
) {
    runners.retain(|id, r| {
        record
            .checks
            .get(id)
            .is_some_and(|c| plan_for(&c.kind, scripts_enabled).as_ref() == Some(&r.plan))
    });
    for (id, check) in &record.checks {
        if runners.contains_key(id) {
            continue;
        }
        let Some(plan) = plan_for(&check.kind, scripts_enabled) else {
            continue;
        };
        tracing::debug!(check = %id, kind = check.kind.type_name(), "starting check runner");
        let task = tokio::spawn(run(
            state.clone(),
            id.clone(),
            plan.clone(),
            restored_ttl.remove(id),
            state.ttl_refreshes(),
        ));
        runners.insert(id.clone(), Runner { plan, task });
    }
}

fn plan_for(kind: &CheckKind, scripts_enabled: bool) -> Option<Plan> {
    match kind {
        CheckKind::Internal => None,
        CheckKind::Script { .. } => Some(Plan {
            kind: kind.clone(),
            scripts_enabled,
        }),
        _ => Some(Plan {
            kind: kind.clone(),
            scripts_enabled: false,
        }),
    }
}

/// One check's life. `refreshes` is subscribed before the task starts so that no TTL
/// refresh between start and first poll is missed; `ttl_deadline` is a restored TTL
/// check's first deadline.
async fn run(
    state: Arc<State>,
    id: String,
    plan: Plan,
    ttl_deadline: Option<Instant>,
    refreshes: broadcast::Receiver<String>,
) {
    let (interval_ms, timeout_ms) = match &plan.kind {
        CheckKind::Ttl { ttl_ms } => {
            return ttl::run(&state, &id, *ttl_ms, ttl_deadline, refreshes).await
        }
        CheckKind::Process { pid, start_time } => {
            return process::run(&state, &id, *pid, *start_time).await
        }
        CheckKind::Internal => return,
        CheckKind::Script { .. } if !plan.scripts_enabled => {
            // Registered while allowed (or restored from data_dir), now disabled: say so
            // instead of silently keeping a stale status.
            let _ = state
                .update_check(
                    &id,
                    HealthStatus::Critical,
                    "script checks are disabled on this agent (enable_script_checks = false)"
                        .into(),
                )
                .await;
            return;
        }
        CheckKind::Http {
            interval_ms,
            timeout_ms,
            ..
        }
        | CheckKind::Tcp {
            interval_ms,
            timeout_ms,
            ..
        }
        | CheckKind::Script {
            interval_ms,
            timeout_ms,
            ..
        } => (*interval_ms, *timeout_ms),
    };
    drop(refreshes);
    let interval = Duration::from_millis(interval_ms).max(MIN_INTERVAL);
    let timeout = Duration::from_millis(timeout_ms.max(1));
    // Spread the first runs of many checks registered together (e.g. at start-up).
    let stagger = rand::random_range(0..=interval.as_millis().min(500) as u64);
    tokio::time::sleep(Duration::from_millis(stagger)).await;
    let mut ticks = tokio::time::interval(interval);
    // A probe that overruns its interval delays the next one rather than bunching them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut limiter = OutputLimiter::default();
    loop {
        ticks.tick().await;
        let (status, output) = match &plan.kind {
            CheckKind::Http {
                url,
                method,
                headers,
                tls_skip_verify,
                ..
            } => probe::http(url, method, headers, *tls_skip_verify, timeout).await,
            CheckKind::Tcp { address, .. } => probe::tcp(address, timeout).await,
            CheckKind::Script { args, .. } => probe::script(args, timeout).await,
            CheckKind::Ttl { .. } | CheckKind::Process { .. } | CheckKind::Internal => return,
        };
        report(&state, &id, status, output, &mut limiter).await;
    }
}

/// Publishes a probe result, subject to the output rate limit.
async fn report(
    state: &State,
    id: &str,
    status: HealthStatus,
    output: String,
    limiter: &mut OutputLimiter,
) {
    let local = state.local();
    let Some(current) = local.checks.get(id) else {
        return; // removed meanwhile; the supervisor stops this runner
    };
    let now = Instant::now();
    if !limiter.should_publish(current.status, &current.output, status, &output, now) {
        return;
    }
    match state.update_check(id, status, output).await {
        Ok(_) => limiter.published(now),
        Err(e) => tracing::debug!(check = %id, error = %e, "check result not applied"),
    }
}

/// The per-check output rate limit. Dropping a limited output loses nothing for good: every
/// run compares against the record again, so the newest output is published once the
/// interval has passed.
#[derive(Default, Debug)]
struct OutputLimiter {
    last_publish: Option<Instant>,
}

impl OutputLimiter {
    fn should_publish(
        &self,
        old_status: HealthStatus,
        old_output: &str,
        status: HealthStatus,
        output: &str,
        now: Instant,
    ) -> bool {
        if status != old_status {
            return true;
        }
        if output == old_output {
            return false;
        }
        self.last_publish
            .is_none_or(|t| now.duration_since(t) >= OUTPUT_UPDATE_INTERVAL)
    }

    fn published(&mut self, now: Instant) {
        self.last_publish = Some(now);
    }
}

/// Keeps, per check with `deregister_critical_after`, the moment it was first seen critical
/// in its current critical spell.
fn track_critical(record: &NodeRecord, now: Instant, since: &mut HashMap<String, Instant>) {
    since.retain(|id, _| {
        record
            .checks
            .get(id)
            .is_some_and(|c| c.status == HealthStatus::Critical)
    });
    for c in record.checks.values() {
        if c.status == HealthStatus::Critical
            && c.deregister_critical_after_ms > 0
            && !c.service_id.is_empty()
        {
            since.entry(c.id.clone()).or_insert(now);
        }
    }
}

/// Services with a check that has been critical for at least its `deregister_critical_after`.
fn due_for_reaping(
    record: &NodeRecord,
    since: &HashMap<String, Instant>,
    now: Instant,
) -> Vec<String> {
    let mut due: Vec<String> = record
        .checks
        .values()
        .filter(|c| c.deregister_critical_after_ms > 0 && c.status == HealthStatus::Critical)
        .filter(|c| record.services.contains_key(&c.service_id))
        .filter(|c| {
            since.get(&c.id).is_some_and(|t| {
                now.duration_since(*t) >= Duration::from_millis(c.deregister_critical_after_ms)
            })
        })
        .map(|c| c.service_id.clone())
        .collect();
    due.sort();
    due.dedup();
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::model::{Check, Service, Weights};
    use std::collections::BTreeMap;

    fn check(id: &str, service: &str, status: HealthStatus, dereg_ms: u64) -> Check {
        Check {
            id: id.into(),
            name: id.into(),
            status,
            notes: String::new(),
            output: String::new(),
            service_id: service.into(),
            kind: CheckKind::Ttl { ttl_ms: 1000 },
            deregister_critical_after_ms: dereg_ms,
            status_changed_ms: 0,
        }
    }

    fn service(id: &str) -> Service {
        Service {
            id: id.into(),
            name: id.into(),
            tags: vec![],
            address: String::new(),
            port: 80,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        }
    }

    fn record(checks: Vec<Check>) -> NodeRecord {
        let mut r = NodeRecord::new("n1", "dc1", "127.0.0.1".parse().unwrap());
        for id in ["web", "db"] {
            r.put_service(std::sync::Arc::new(service(id)));
        }
        for c in checks {
            r.put_check(std::sync::Arc::new(c));
        }
        r
    }

    #[test]
    fn status_changes_publish_at_once_output_changes_are_limited() {
        use HealthStatus::*;
        let t0 = Instant::now();
        let mut l = OutputLimiter::default();
        // Nothing new: nothing to publish.
        assert!(!l.should_publish(Passing, "a", Passing, "a", t0));
        // The first output of a fresh runner goes out.
        assert!(l.should_publish(Passing, "a", Passing, "b", t0));
        l.published(t0);
        // Within the interval: output-only changes wait, status changes do not.
        let soon = t0 + Duration::from_secs(1);
        assert!(!l.should_publish(Passing, "b", Passing, "c", soon));
        assert!(l.should_publish(Passing, "b", Critical, "c", soon));
        assert!(l.should_publish(Passing, "b", Warning, "b", soon));
        // After the interval the newest output goes out.
        let later = t0 + OUTPUT_UPDATE_INTERVAL;
        assert!(l.should_publish(Passing, "b", Passing, "d", later));
    }

    #[test]
    fn reaps_only_after_the_critical_spell_lasts_long_enough() {
        let t0 = Instant::now();
        let mut since = HashMap::new();
        let r = record(vec![
            check("web-ttl", "web", HealthStatus::Critical, 5_000),
            check("db-ttl", "db", HealthStatus::Critical, 0),
            check("node", "", HealthStatus::Critical, 1),
        ]);
        track_critical(&r, t0, &mut since);
        assert_eq!(
            since.len(),
            1,
            "only service checks with a limit are tracked"
        );
        assert!(due_for_reaping(&r, &since, t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(
            due_for_reaping(&r, &since, t0 + Duration::from_secs(5)),
            vec!["web".to_string()]
        );
        // Seen again later: the spell still started at t0.
        track_critical(&r, t0 + Duration::from_secs(3), &mut since);
        assert_eq!(since["web-ttl"], t0);
        // Passing in between starts a new spell.
        let ok = record(vec![check("web-ttl", "web", HealthStatus::Passing, 5_000)]);
        track_critical(&ok, t0 + Duration::from_secs(4), &mut since);
        assert!(since.is_empty());
        let t1 = t0 + Duration::from_secs(6);
        track_critical(&r, t1, &mut since);
        assert!(due_for_reaping(&r, &since, t1 + Duration::from_secs(1)).is_empty());
        assert_eq!(
            due_for_reaping(&r, &since, t1 + Duration::from_secs(5)).len(),
            1
        );
    }

    #[tokio::test]
    async fn one_runner_per_active_check_restarted_on_change() {
        let state = State::for_test();
        let script = |args: &[&str]| CheckKind::Script {
            args: args.iter().map(|a| a.to_string()).collect(),
            interval_ms: 60_000,
            timeout_ms: 1_000,
        };
        let mut maint = check("_service_maintenance:web", "web", HealthStatus::Critical, 0);
        maint.kind = CheckKind::Internal;
        let mut sc = check("sc", "web", HealthStatus::Critical, 0);
        sc.kind = script(&["true"]);
        let mut r = record(vec![
            check("a", "web", HealthStatus::Critical, 0),
            maint,
            sc,
        ]);
        let mut runners = HashMap::new();
        reconcile(&state, &r, true, &mut runners, &mut HashMap::new());
        let mut ids: Vec<&String> = runners.keys().collect();
        ids.sort();
        assert_eq!(ids, ["a", "sc"], "internal checks have no runner");
        let task_id = |runners: &HashMap<String, Runner>, id: &str| runners[id].task.id();
        let a_task = task_id(&runners, "a");
        let sc_task = task_id(&runners, "sc");

        // Same definitions: the same runners stay.
        reconcile(&state, &r, true, &mut runners, &mut HashMap::new());
        assert_eq!(task_id(&runners, "a"), a_task);
        // A changed definition restarts that runner only; so does disabling scripts.
        let mut a = Check::clone(&r.checks["a"]);
        a.kind = CheckKind::Ttl { ttl_ms: 5 };
        r.put_check(std::sync::Arc::new(a));
        reconcile(&state, &r, true, &mut runners, &mut HashMap::new());
        assert_ne!(task_id(&runners, "a"), a_task);
        assert_eq!(task_id(&runners, "sc"), sc_task);
        reconcile(&state, &r, false, &mut runners, &mut HashMap::new());
        assert_ne!(task_id(&runners, "sc"), sc_task);
        // A removed check loses its runner.
        r.remove_check("a");
        reconcile(&state, &r, false, &mut runners, &mut HashMap::new());
        assert!(!runners.contains_key("a"));
        assert!(runners.contains_key("sc"));
    }
}
