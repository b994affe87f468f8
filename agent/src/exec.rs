//! `muster exec` (SPEC §10): runs PROGRAM as a child and keeps it registered with the local
//! agent exactly while it runs, for programs that never call an API.
//!
//! The order of events is the contract: start PROGRAM; wait until it is ready (its port
//! accepts a connection, or a URL answers 2xx); register it with a process check on its PID
//! (plus an HTTP check if asked); forward SIGTERM, SIGINT and SIGHUP to it; when it exits,
//! deregister and exit with its status. The process check is what makes the registration
//! ephemeral: the agent watches the PID itself, so the instance goes away the moment PROGRAM
//! dies even if this wrapper is killed with it, and the explicit deregistration at the end
//! only makes "gone before `muster exec` exits" certain.
//!
//! PROGRAM runs in its own process group, so a signal meant for the group of `muster exec`
//! (Ctrl-C in a terminal) reaches PROGRAM once, through the forwarding, not twice. An agent
//! that cannot be reached never stops PROGRAM: registration is retried with backoff, saying
//! so on stderr.
//!
//! The agent is reached through the blocking CLI client, behind [`agent_register`] and
//! [`agent_deregister`], run on tokio's blocking pool.

use crate::cli::{ClientArgs, ExecArgs};
use crate::client;
use muster_proto::consul;
use muster_proto::duration;
use muster_proto::model::HealthStatus;
use serde_json::{json, Map, Value};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

/// Pause between readiness probes.
const READY_POLL: Duration = Duration::from_millis(100);
/// Bound on one readiness probe.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest pause between registration attempts.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long to keep trying to deregister after PROGRAM exited. The agent's process check
/// removes the instance on its own, so this only bounds how long we try to confirm it.
const DEREGISTER_FOR: Duration = Duration::from_secs(5);
/// After stopping a PROGRAM that never became ready, how long before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Interval of `--check-http` when `--interval` is not given.
const DEFAULT_CHECK_INTERVAL: &str = "10s";

/// Exit code for bad flags (as clap uses), for a PROGRAM that cannot be run (as shells do)
/// and for a PROGRAM stopped because it never became ready.
const EXIT_USAGE: u8 = 2;
const EXIT_NOT_FOUND: u8 = 127;
const EXIT_CANNOT_RUN: u8 = 126;
const EXIT_NOT_READY: u8 = 1;

/// When PROGRAM counts as ready to be registered.
#[derive(Clone, Debug, PartialEq)]
enum Ready {
    /// At once.
    Now,
    /// A TCP connection to this address succeeds.
    Tcp(String),
    /// A GET of this URL answers 2xx.
    Http(String),
}

/// Everything the flags say, checked before PROGRAM starts.
#[derive(Debug)]
struct Plan {
    program: String,
    args: Vec<String>,
    service: String,
    id: Option<String>,
    port: Option<u16>,
    address: Option<String>,
    tags: Vec<String>,
    meta: BTreeMap<String, String>,
    ready: Ready,
    /// `None`: wait forever.
    ready_timeout: Option<Duration>,
    /// (URL, interval as given).
    check_http: Option<(String, String)>,
    client: ClientArgs,
}

pub fn main(args: ExecArgs) -> ExitCode {
    let plan = match Plan::from_args(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("muster exec: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("muster exec: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(plan))
}

impl Plan {
    fn from_args(a: ExecArgs) -> Result<Plan, String> {
        let mut command = a.command.into_iter();
        let program = command.next().ok_or("PROGRAM is missing after `--`")?;
        let service = match a.service {
            Some(s) => s,
            None => {
                let base = Path::new(&program)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                muster_proto::validate::dns_label("--service", &base).map_err(|e| {
                    format!(
                        "--service is needed: PROGRAM's name cannot be the service name ({})",
                        e.reason
                    )
                })?;
                base
            }
        };
        let mut meta = BTreeMap::new();
        for pair in &a.meta {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("--meta: expected KEY=VALUE, got {pair:?}"))?;
            meta.insert(k.to_string(), v.to_string());
        }
        let ready = match a.ready.as_deref() {
            None if a.port.is_none() => Ready::Now,
            None | Some("tcp") => {
                let port = a
                    .port
                    .ok_or("--ready tcp: needs --port (the port to try)")?;
                Ready::Tcp(probe_address(a.address.as_deref(), port))
            }
            Some("none") => Ready::Now,
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                Ready::Http(url.to_string())
            }
            Some(other) => {
                return Err(format!(
                    "--ready: expected tcp, none or an http(s):// URL, got {other:?}"
                ))
            }
        };
        let ready_timeout =
            duration::parse(&a.ready_timeout).map_err(|e| format!("--ready-timeout: {e}"))?;
        let ready_timeout = (!ready_timeout.is_zero()).then_some(ready_timeout);
        let check_http = match (a.check_http, a.interval) {
            (Some(url), interval) => Some((
                url,
                interval.unwrap_or_else(|| DEFAULT_CHECK_INTERVAL.to_string()),
            )),
            (None, Some(_)) => return Err("--interval: only with --check-http".into()),
            (None, None) => None,
        };
        let plan = Plan {
            program,
            args: command.collect(),
            service,
            id: a.id,
            port: a.port,
            address: a.address,
            tags: a.tags,
            meta,
            ready,
            ready_timeout,
            check_http,
            client: ClientArgs {
                http_addr: a.http_addr,
                token: a.token,
                json: false,
            },
        };
        // The agent's own rules, now, so a typo is reported before PROGRAM starts. (The PID
        // is a stand-in: it is bound by the agent, not here.)
        consul::parse_registration(&plan.registration(&plan.service_id(1), 1))
            .map_err(|e| format!("{}: {}", flag_of(&e.field), e.reason))?;
        Ok(plan)
    }

    /// The id this run registers under.
    fn service_id(&self, pid: u32) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("{}-{pid}", self.service))
    }

    /// The `PUT /v1/agent/service/register` body for PROGRAM running as `pid`.
    fn registration(&self, id: &str, pid: u32) -> Value {
        let program = Path::new(&self.program)
            .file_name()
            .map(|n| n.to_string_lossy().chars().take(100).collect::<String>())
            .unwrap_or_default();
        let mut checks = vec![json!({
            "Name": format!("process {pid} ({program})"),
            "PID": pid,
        })];
        if let Some((url, interval)) = &self.check_http {
            checks.push(json!({
                "Name": format!("HTTP GET {}", url.chars().take(200).collect::<String>()),
                "HTTP": url,
                "Interval": interval,
            }));
        }
        let mut body = Map::new();
        body.insert("Name".into(), json!(self.service));
        body.insert("ID".into(), json!(id));
        body.insert("Tags".into(), json!(self.tags));
        body.insert("Meta".into(), json!(self.meta));
        if let Some(p) = self.port {
            body.insert("Port".into(), json!(p));
        }
        if let Some(a) = &self.address {
            body.insert("Address".into(), json!(a));
        }
        body.insert("Checks".into(), Value::Array(checks));
        Value::Object(body)
    }
}

/// Where `--ready tcp` connects: the service address if given, else this host's loopback.
fn probe_address(address: Option<&str>, port: u16) -> String {
    match address {
        Some(a) if a.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{a}]:{port}"),
        Some(a) if !a.is_empty() => format!("{a}:{port}"),
        _ => format!("127.0.0.1:{port}"),
    }
}

/// The flag behind a field of the registration body, for error messages.
fn flag_of(field: &str) -> &str {
    match field {
        "Name" => "--service",
        "ID" => "--id",
        "Tags" => "--tag",
        "Meta" => "--meta",
        "Address" => "--address",
        "Port" => "--port",
        f if f.ends_with(".HTTP") => "--check-http",
        f if f.ends_with(".Interval") => "--interval",
        f if f.ends_with(".CheckID") => "--id",
        f => f,
    }
}

/// PROGRAM's exit as a shell reports it: its code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

async fn run(plan: Plan) -> ExitCode {
    // Handlers first: from the moment PROGRAM exists, a SIGTERM for us must reach it rather
    // than kill us and leave it running.
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("muster exec: cannot handle signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut child = match tokio::process::Command::new(&plan.program)
        .args(&plan.args)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("muster exec: cannot run {}: {e}", plan.program);
            return ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
                EXIT_NOT_FOUND
            } else {
                EXIT_CANNOT_RUN
            });
        }
    };
    let Some(pid) = child.id() else {
        // Only possible once the child has been reaped, which nothing has done yet.
        eprintln!("muster exec: {} has no PID", plan.program);
        return ExitCode::FAILURE;
    };
    let id = plan.service_id(pid);
    let body = plan.registration(&id, pid);
    // Whether a registration may be in the agent (one succeeded, or one is in flight): then
    // we deregister at the end. A failed attempt registered nothing.
    let maybe_registered = Cell::new(false);
    let lifecycle = async {
        wait_ready(&plan.ready, plan.ready_timeout).await?;
        register_until_done(&plan, &id, &body, &maybe_registered).await;
        Ok::<(), String>(())
    };
    tokio::pin!(lifecycle);
    let mut lifecycle_done = false;
    let mut not_ready = false;
    let mut kill_at: Option<Instant> = None;
    let status = loop {
        tokio::select! {
            // Once this has returned the child is reaped and its PID may be reused, so the
            // loop ends here and nothing is forwarded after it.
            st = child.wait() => break st,
            _ = term.recv() => forward(pid, rustix::process::Signal::TERM),
            _ = int.recv() => forward(pid, rustix::process::Signal::INT),
            _ = hup.recv() => forward(pid, rustix::process::Signal::HUP),
            r = &mut lifecycle, if !lifecycle_done => {
                lifecycle_done = true;
                if let Err(reason) = r {
                    eprintln!(
                        "muster exec: {} was not ready within {} ({reason}); stopping it",
                        plan.program,
                        plan.ready_timeout.map(duration::format).unwrap_or_default()
                    );
                    not_ready = true;
                    forward(pid, rustix::process::Signal::TERM);
                    kill_at = Some(Instant::now() + STOP_GRACE);
                }
            }
            _ = sleep_until_some(kill_at) => {
                kill_at = None;
                forward(pid, rustix::process::Signal::KILL);
            }
        }
    };
    if maybe_registered.get() {
        deregister_until_done(&plan.client, &id).await;
    }
    match status {
        Ok(_) if not_ready => ExitCode::from(EXIT_NOT_READY),
        Ok(st) => ExitCode::from(exit_code(st)),
        Err(e) => {
            eprintln!("muster exec: cannot wait for {}: {e}", plan.program);
            ExitCode::FAILURE
        }
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Sends `sig` to PROGRAM. Only called before PROGRAM is reaped, so the PID is still its.
fn forward(pid: u32, sig: rustix::process::Signal) {
    let Some(target) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(target, sig) {
        eprintln!(
            "muster exec: cannot forward signal {} to PID {pid}: {}",
            sig.as_raw(),
            std::io::Error::from(e)
        );
    }
}

/// Waits until PROGRAM is ready; `Err` with the last probe's reason once `timeout` passed.
async fn wait_ready(ready: &Ready, timeout: Option<Duration>) -> Result<(), String> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let reason = match ready {
            Ready::Now => return Ok(()),
            Ready::Tcp(addr) => {
                match tokio::time::timeout(
                    READY_PROBE_TIMEOUT,
                    tokio::net::TcpStream::connect(addr),
                )
                .await
                {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => format!("{addr}: {e}"),
                    Err(_) => format!("{addr}: connect timed out"),
                }
            }
            Ready::Http(url) => {
                let (status, output) = crate::checks::probe::http(
                    url,
                    "GET",
                    &BTreeMap::new(),
                    false,
                    READY_PROBE_TIMEOUT,
                )
                .await;
                if status == HealthStatus::Passing {
                    return Ok(());
                }
                output
            }
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(reason);
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// Registers, retrying with backoff for as long as it takes (PROGRAM keeps running).
async fn register_until_done(plan: &Plan, id: &str, body: &Value, maybe_registered: &Cell<bool>) {
    let mut delay = RETRY_FIRST;
    loop {
        maybe_registered.set(true);
        let (client, b) = (plan.client.clone(), body.clone());
        let r = tokio::task::spawn_blocking(move || agent_register(&client, &b))
            .await
            .unwrap_or_else(|e| Err(format!("registration task failed: {e}")));
        match r {
            Ok(()) => {
                eprintln!(
                    "muster exec: registered service {} (id {id}) with the agent at {}",
                    plan.service, plan.client.http_addr
                );
                return;
            }
            Err(e) => {
                maybe_registered.set(false);
                eprintln!(
                    "muster exec: cannot register service {id}: {e}; retrying in {} ({} keeps running)",
                    duration::format(delay),
                    plan.program
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Deregisters after PROGRAM exited, retrying for [`DEREGISTER_FOR`] at most.
async fn deregister_until_done(client: &ClientArgs, id: &str) {
    let give_up = Instant::now() + DEREGISTER_FOR;
    let mut delay = RETRY_FIRST;
    loop {
        let (c, i) = (client.clone(), id.to_string());
        let r = tokio::task::spawn_blocking(move || agent_deregister(&c, &i))
            .await
            .unwrap_or_else(|e| Err(format!("deregistration task failed: {e}")));
        match r {
            Ok(()) => return,
            Err(e) if Instant::now() + delay >= give_up => {
                eprintln!(
                    "muster exec: could not deregister service {id}: {e}; the agent removes it when it sees the process gone"
                );
                return;
            }
            Err(e) => {
                eprintln!(
                    "muster exec: cannot deregister service {id}: {e}; retrying in {}",
                    duration::format(delay)
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

// ----- the agent calls (blocking; kept to these two so the HTTP client can change) -----

/// `PUT /v1/agent/service/register` with `body`.
fn agent_register(args: &ClientArgs, body: &Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    client::Agent::new(args)?
        .call("PUT", "/v1/agent/service/register", Some(&bytes))
        .map(|_| ())
}

/// Removes service `id`; done also when the agent refuses because it is already gone (its
/// process check may well have been faster).
fn agent_deregister(args: &ClientArgs, id: &str) -> Result<(), String> {
    let agent = client::Agent::new(args)?;
    let path = format!("/v1/agent/service/deregister/{}", client::path_segment(id));
    let Err(refused) = agent.call("PUT", &path, None) else {
        return Ok(());
    };
    let services = agent.call("GET", "/v1/agent/services", None)?.json()?;
    match services.get(id) {
        None if services.is_object() => Ok(()),
        _ => Err(refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> ExecArgs {
        use clap::Parser;
        let argv = ["muster", "exec"].iter().chain(flags);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Exec(a) => a,
            other => panic!("not exec: {other:?}"),
        }
    }

    fn plan(flags: &[&str]) -> Result<Plan, String> {
        Plan::from_args(args(flags))
    }

    #[test]
    fn defaults_follow_the_program_and_port() {
        let p = plan(&[
            "--port",
            "8080",
            "--",
            "/usr/bin/python3",
            "-m",
            "http.server",
        ])
        .unwrap();
        assert_eq!(p.service, "python3");
        assert_eq!(p.args, ["-m", "http.server"]);
        assert_eq!(p.ready, Ready::Tcp("127.0.0.1:8080".into()));
        assert_eq!(p.ready_timeout, Some(Duration::from_secs(60)));
        assert_eq!(p.service_id(77), "python3-77");
        let p = plan(&["--service", "w", "--", "prog"]).unwrap();
        assert_eq!(p.ready, Ready::Now);
        let p = plan(&[
            "--service",
            "w",
            "--port",
            "1",
            "--address",
            "::1",
            "--ready-timeout",
            "0",
            "--",
            "p",
        ])
        .unwrap();
        assert_eq!(p.ready, Ready::Tcp("[::1]:1".into()));
        assert_eq!(p.ready_timeout, None);
    }

    #[test]
    fn registration_binds_the_pid_and_carries_the_flags() {
        let p = plan(&[
            "--service",
            "web",
            "--id",
            "web-a",
            "--port",
            "8080",
            "--tag",
            "v1",
            "--tag",
            "blue",
            "--meta",
            "version=1.2=3",
            "--check-http",
            "http://127.0.0.1:8080/health",
            "--interval",
            "5s",
            "--ready",
            "http://127.0.0.1:8080/",
            "--",
            "srv",
        ])
        .unwrap();
        assert_eq!(p.ready, Ready::Http("http://127.0.0.1:8080/".into()));
        let body = p.registration("web-a", 4321);
        let reg = consul::parse_registration(&body).unwrap();
        assert_eq!(reg.service.id, "web-a");
        assert_eq!(reg.service.tags, ["v1", "blue"]);
        assert_eq!(reg.service.meta["version"], "1.2=3");
        assert_eq!(reg.checks.len(), 2);
        assert_eq!(
            reg.checks[0].kind,
            muster_proto::CheckKind::Process {
                pid: 4321,
                start_time: 0
            }
        );
        assert!(matches!(
            &reg.checks[1].kind,
            muster_proto::CheckKind::Http {
                interval_ms: 5000,
                ..
            }
        ));
    }

    #[test]
    fn bad_flags_are_named_before_anything_runs() {
        let e = |flags: &[&str]| plan(flags).unwrap_err();
        assert!(e(&["--", "my_server.py"]).starts_with("--service is needed"));
        assert!(e(&["--service", "a_b", "--", "p"]).starts_with("--service:"));
        assert!(e(&["--service", "w", "--meta", "novalue", "--", "p"]).starts_with("--meta:"));
        assert!(e(&["--service", "w", "--meta", "bad key=v", "--", "p"]).starts_with("--meta:"));
        assert!(e(&["--service", "w", "--ready", "tcp", "--", "p"]).contains("needs --port"));
        assert!(e(&["--service", "w", "--ready", "udp", "--", "p"]).starts_with("--ready:"));
        assert!(e(&["--service", "w", "--ready-timeout", "soon", "--", "p"])
            .starts_with("--ready-timeout:"));
        assert!(e(&["--service", "w", "--interval", "5s", "--", "p"]).starts_with("--interval:"));
        assert!(e(&["--service", "w", "--check-http", "ftp://x", "--", "p"])
            .starts_with("--check-http:"));
        assert!(e(&[
            "--service",
            "w",
            "--check-http",
            "http://x",
            "--interval",
            "x",
            "--",
            "p"
        ])
        .starts_with("--interval:"));
        assert!(e(&["--service", "w", "--id", "a/b", "--", "p"]).starts_with("--id:"));
        assert!(
            e(&["--service", "w", "--address", "not an address", "--", "p"])
                .starts_with("--address:")
        );
    }

    #[test]
    fn exit_codes_are_the_programs() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        // Killed by SIGKILL (9): 128 + 9.
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
