//! Process checks (SPEC §10): a registration bound to the life of one process on this host.
//!
//! The agent holds a pidfd of the process and waits for it to become readable, which the
//! kernel makes happen the moment the process exits: no polling interval, no TTL to wait
//! out. The start time recorded at registration (see `muster_proto::process`) guards every
//! look at the PID, so a later process that got the same number is never taken for the
//! owner. When the process is gone the check turns critical and its service is deregistered
//! through `State::deregister_service`, the path an HTTP deregistration takes: persisted,
//! gossiped at once, gone from every node's DNS and HTTP.
//!
//! pidfds exist on Linux ≥ 5.3; elsewhere registering a process check is refused with that
//! reason, and a restored one turns critical saying so (its service is left alone: the
//! agent cannot tell whether the process lives).

use crate::config::ServiceDefinition;
use crate::state::{State, StateError};
use muster_proto::consul;
use muster_proto::model::{CheckKind, HealthStatus};
use muster_proto::process::{self, Liveness, ProcStat};
use std::os::fd::OwnedFd;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How long to wait before trying a failed deregistration again (e.g. `data_dir` full).
const DEREGISTER_RETRY: Duration = Duration::from_secs(1);

/// Opens a pidfd for `pid`: a handle on that very process, which turns readable when it
/// exits and stays pointing at it even if the number is later reused.
#[cfg(target_os = "linux")]
fn pidfd_open(pid: u32) -> rustix::io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(rustix::io::Errno::INVAL)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
}

#[cfg(not(target_os = "linux"))]
fn pidfd_open(_pid: u32) -> rustix::io::Result<OwnedFd> {
    Err(rustix::io::Errno::NOSYS)
}

/// Why a pidfd could not be had, in words; `None` when the process simply does not exist.
fn pidfd_failure(pid: u32, e: rustix::io::Errno) -> Option<String> {
    use rustix::io::Errno;
    match e {
        Errno::SRCH => None,
        Errno::NOSYS => Some(format!(
            "process checks need pidfd_open, which this system lacks (Linux 5.3 or later): {}",
            std::io::Error::from(e)
        )),
        Errno::INVAL => Some(format!(
            "{pid} is not the PID of a process (a thread id, or out of range)"
        )),
        other => Some(format!(
            "cannot watch process {pid}: pidfd_open: {}",
            std::io::Error::from(other)
        )),
    }
}

/// What `/proc/PID/stat` says now; `Ok(None)` when there is no such process.
pub fn observe(pid: u32) -> Result<Option<ProcStat>, String> {
    let path = format!("/proc/{pid}/stat");
    match std::fs::read_to_string(&path) {
        Ok(text) => process::parse_stat(&text)
            .map(Some)
            .map_err(|e| format!("{path}: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // The process went away between opening the file and reading it.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => Ok(None),
        Err(e) => Err(format!("cannot read {path}: {e}")),
    }
}

/// [`observe`] for a new registration: also makes sure the process can be watched, so that
/// a registration this agent could never honour is refused up front.
pub fn observe_watchable(pid: u32) -> Result<Option<ProcStat>, String> {
    match pidfd_open(pid) {
        Ok(_fd) => observe(pid),
        Err(e) => match pidfd_failure(pid, e) {
            None => Ok(None),
            Some(reason) => Err(reason),
        },
    }
}

/// Binds the process checks of config-file services. A service whose process is not
/// running is left out (its registration would be born dead) and named in the returned
/// messages; the files stay valid, so a stale PID in a drop-in cannot stop the agent.
pub fn bind_config_services(defs: Vec<ServiceDefinition>) -> (Vec<ServiceDefinition>, Vec<String>) {
    let mut kept = Vec::with_capacity(defs.len());
    let mut skipped = Vec::new();
    'services: for mut def in defs {
        for check in &mut def.checks {
            if let Err(e) = consul::bind_process(check, "check", observe_watchable) {
                skipped.push(format!(
                    "service {:?} not registered: {}",
                    def.service.id, e.reason
                ));
                continue 'services;
            }
        }
        kept.push(def);
    }
    (kept, skipped)
}

/// Judges the process checks restored from `data_dir` before the agent says anything to
/// anyone, so a service whose process died (or whose PID was reused) while the agent was
/// down is never served again, not even for the moment before its runner starts.
pub async fn judge_restored(state: &State) {
    let local = state.local();
    for check in local.checks.values() {
        let CheckKind::Process { pid, start_time } = check.kind else {
            continue;
        };
        match observe(pid) {
            Ok(seen) => {
                let verdict = process::judge(start_time, seen.as_ref());
                if verdict != Liveness::Running {
                    gone(state, &check.id, pid, start_time, verdict).await;
                }
            }
            // Left to the runner, which reports it on the check.
            Err(e) => {
                tracing::warn!(check = %check.id, error = %e, "cannot judge restored process check")
            }
        }
    }
}

/// One process check's life: watch until the process exits, then act.
pub async fn run(state: &State, id: &str, pid: u32, recorded: u64) {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => match pidfd_failure(pid, e) {
            None => return gone(state, id, pid, recorded, Liveness::Exited).await,
            Some(reason) => return cannot_watch(state, id, reason).await,
        },
    };
    // The pidfd was opened before this look. If the recorded process runs now, it already
    // ran when the pidfd was opened, so the pidfd is its own and not a newcomer's.
    let verdict = match observe(pid) {
        Ok(seen) => process::judge(recorded, seen.as_ref()),
        Err(reason) => return cannot_watch(state, id, reason).await,
    };
    if verdict != Liveness::Running {
        return gone(state, id, pid, recorded, verdict).await;
    }
    let running = process::describe(pid, recorded, Liveness::Running);
    if let Err(e) = state.update_check(id, HealthStatus::Passing, running).await {
        tracing::debug!(check = %id, error = %e, "process check status not applied");
    }
    // SAFETY: `register_with_interest` needs the descriptor to stay open and be the same
    // while the `AsyncFd` owns it. `fd` is an `OwnedFd` moved into the `AsyncFd`: nothing else
    // holds it, so nothing can close or replace it, `OwnedFd::as_raw_fd` always returns the
    // descriptor it was made with, and it is closed only when the `AsyncFd` (having
    // deregistered it) drops it. On a registration error it is handed back and dropped.
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    let fd = match registered {
        Ok(fd) => fd,
        Err(e) => return cannot_watch(state, id, format!("cannot watch pidfd: {e}")).await,
    };
    match fd.readable().await {
        Ok(_) => gone(state, id, pid, recorded, Liveness::Exited).await,
        Err(e) => cannot_watch(state, id, format!("cannot watch pidfd: {e}")).await,
    }
}

/// The agent cannot tell whether the process lives: the check says why, critical, and the
/// service stays (deregistering a possibly live service on a doubt would be worse).
async fn cannot_watch(state: &State, id: &str, reason: String) {
    tracing::warn!(check = %id, "{reason}");
    if let Err(e) = state.update_check(id, HealthStatus::Critical, reason).await {
        tracing::debug!(check = %id, error = %e, "process check status not applied");
    }
}

/// The bound process is gone: the check turns critical (so the instance leaves every
/// healthy answer even if what follows fails) and its service is deregistered, retried
/// until it is done or the check is gone. A node-level check stays critical: there is no
/// service to remove, and a node check is how a node is marked unhealthy.
async fn gone(state: &State, id: &str, pid: u32, recorded: u64, verdict: Liveness) {
    // The check may have been registered anew meanwhile (same id, another process, e.g. a
    // restarted `muster exec --id`): then this verdict is not about it, and its service
    // must stay. Looked at before each change (the runner of a replaced check is being
    // stopped by the supervisor; this closes the gap until it is).
    let bound = CheckKind::Process {
        pid,
        start_time: recorded,
    };
    let still_ours = || {
        let local = state.local();
        local
            .checks
            .get(id)
            .filter(|c| c.kind == bound)
            .map(|c| c.service_id.clone())
    };
    let Some(service) = still_ours() else {
        return;
    };
    let output = process::describe(pid, recorded, verdict);
    if let Err(e) = state
        .update_check(id, HealthStatus::Critical, output.clone())
        .await
    {
        tracing::debug!(check = %id, error = %e, "process check status not applied");
    }
    if service.is_empty() {
        tracing::info!(check = %id, "{output}: node check is now critical");
        return;
    }
    tracing::info!(check = %id, service = %service, "{output}: deregistering the service");
    while still_ours().is_some() {
        match state.deregister_service(&service).await {
            Ok(()) | Err(StateError::UnknownService(_)) => return,
            Err(e) => {
                tracing::warn!(service = %service, error = %e, "could not deregister the service of an exited process; retrying");
                tokio::time::sleep(DEREGISTER_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Source;
    use muster_proto::model::{Check, Service, Weights};
    use std::collections::BTreeMap;

    /// Registers service `id` with a process check on `pid`, bound as the API binds it.
    async fn register(state: &State, id: &str, pid: u32) -> Check {
        let mut check = Check {
            id: format!("service:{id}"),
            name: "p".into(),
            status: HealthStatus::Critical,
            notes: String::new(),
            output: String::new(),
            service_id: id.into(),
            kind: CheckKind::Process { pid, start_time: 0 },
            deregister_critical_after_ms: 0,
            status_changed_ms: 0,
        };
        consul::bind_process(&mut check, "Check", observe_watchable).unwrap();
        let service = Service {
            id: id.into(),
            name: "web".into(),
            tags: vec![],
            address: String::new(),
            port: 80,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        };
        let def = ServiceDefinition {
            service,
            checks: vec![check.clone()],
        };
        state
            .register_service(def, Source::Http, false)
            .await
            .unwrap();
        check
    }

    #[tokio::test]
    async fn the_service_goes_when_its_process_exits() {
        let state = State::for_test();
        let mut child = tokio::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let check = register(&state, "web-1", pid).await;
        let CheckKind::Process { start_time, .. } = check.kind else {
            panic!("not a process check");
        };
        assert_eq!(check.status, HealthStatus::Passing);
        let runner = tokio::spawn({
            let state = state.clone();
            async move { run(&state, "service:web-1", pid, start_time).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(state.local().services.contains_key("web-1"));
        child.kill().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), runner)
            .await
            .expect("the runner acts on the exit")
            .unwrap();
        assert!(state.local().services.is_empty());
    }

    #[tokio::test]
    async fn a_verdict_on_an_earlier_process_leaves_a_new_registration_alone() {
        let state = State::for_test();
        let mut child = tokio::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let now = register(&state, "web-1", pid).await;
        // A verdict about the same id bound to an earlier process (another start time).
        let CheckKind::Process { start_time, .. } = now.kind else {
            panic!("not a process check");
        };
        gone(
            &state,
            "service:web-1",
            pid,
            start_time + 1,
            Liveness::Exited,
        )
        .await;
        let local = state.local();
        assert!(local.services.contains_key("web-1"));
        assert_eq!(local.checks["service:web-1"].status, HealthStatus::Passing);
        child.kill().await.unwrap();
    }

    #[test]
    fn observes_this_process_and_not_a_missing_one() {
        let me = observe(std::process::id())
            .unwrap()
            .expect("this process runs");
        assert!(!me.exited());
        assert_eq!(
            observe(std::process::id()).unwrap().unwrap().start_time,
            me.start_time,
            "a process keeps its start time"
        );
        // PIDs never exceed 2^22 on Linux (pid_max), so this one cannot exist.
        assert_eq!(observe(i32::MAX as u32).unwrap(), None);
        assert_eq!(observe_watchable(i32::MAX as u32).unwrap(), None);
    }
}
