//! `muster agent`: builds the configuration, restores state, opens the listeners and runs
//! until a signal (or `leave`) says stop. Each listener is its own module; this one only
//! wires them together and owns the shutdown sequence.

use crate::cli::AgentArgs;
use crate::config::{self, Config};
use crate::shared::{GossipHandle, Shared, Stop};
use crate::state::State;
use crate::store::Store;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;

pub fn main(args: AgentArgs) -> ExitCode {
    let config = match config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("muster: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let log_json = config.log_json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("muster: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, args)) {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: as a log line when logs are JSON (collectors parse every line), else
        // as the `muster: <reason>` line every command ends with.
        Err(e) if log_json => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("muster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(format!("{},hickory_proto=warn", config.log_level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(config: Config, args: AgentArgs) -> anyhow::Result<()> {
    // The keyring (from data_dir, else `encrypt`) decides whether gossip may start at all.
    let keyring = crate::keyring::KeyringHandle::open(&config)?;
    crate::keyring::check_secure(&config, &keyring.current())?;
    let store = match &config.data_dir {
        Some(dir) => Some(
            Store::open(dir)
                .map_err(|e| anyhow::anyhow!("cannot open data_dir {}: {e}", dir.display()))?,
        ),
        None => None,
    };
    let loaded = match &store {
        Some(s) => Some(s.load()?),
        None => None,
    };
    let state = State::new(
        config.node_name.clone(),
        config.datacenter.clone(),
        config.advertise_addr,
        config.node_meta.clone(),
        store,
    );
    if let Some(loaded) = loaded {
        for (path, reason) in &loaded.quarantined {
            tracing::error!(file = %path.display(), %reason, "unreadable record moved to quarantine/");
        }
        tracing::info!(
            services = loaded.services.len(),
            checks = loaded.checks.len(),
            "restored registrations from data_dir"
        );
        state.restore(loaded).await;
        crate::checks::process::judge_restored(&state).await;
    }
    let (services, skipped) = crate::checks::process::bind_config_services(config.services.clone());
    for reason in &skipped {
        tracing::warn!("config: {reason}");
    }
    state
        .apply_config_services(services)
        .await
        .map_err(|e| anyhow::anyhow!("config services: {e}"))?;

    let (stop_tx, _) = watch::channel(Stop::Running);
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(4);
    let (gossip, gossip_commands) = GossipHandle::channel();
    let shared = Shared {
        state: state.clone(),
        config: Arc::new(arc_swap::ArcSwap::from_pointee(config.clone())),
        stop_tx: Arc::new(stop_tx),
        reload_tx,
        gossip,
        keyring,
    };
    // Signal handlers go in before anything listens: once a client (or systemd) can see us,
    // a SIGTERM must mean "leave gracefully", never the default of dying on the spot.
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;

    let crate::gossip::Started {
        task: gossip_task,
        mut first_join,
    } = crate::gossip::start(&shared, gossip_commands).await?;

    let http = crate::http::bind(&shared).await?;
    let dns = crate::dns::bind(&shared).await?;
    tracing::info!(
        node = %config.node_name,
        http = %http.local_addr(),
        dns = %dns.local_addr(),
        "muster agent running"
    );
    let http_task = tokio::spawn(http.serve(shared.clone()));
    let dns_task = tokio::spawn(dns.serve(shared.clone()));
    let checks_task = crate::checks::spawn(shared.clone());

    // ---- Readiness (systemd Type=notify) ----
    // Every listener (gossip, HTTP, DNS) is bound above this point: READY=1 tells systemd,
    // and units ordered after muster, that the API and DNS answer.
    // With `retry_join`, READY also means "has tried to reach the cluster": wait for the
    // first join attempt (successful or not), bounded so a slow peer cannot hold us.
    let _ = tokio::time::timeout(
        crate::gossip::FIRST_JOIN_WAIT,
        first_join.wait_for(|tried| *tried),
    )
    .await;
    notify_ready();

    let mut stop_rx = shared.stop_rx();
    loop {
        tokio::select! {
            _ = sigint.recv() => { tracing::info!("SIGINT: leaving"); break; }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: leaving"); break; }
            _ = sighup.recv() => {
                match reload(&shared, &args).await {
                    Ok(msg) => tracing::info!("reload: {msg}"),
                    Err(e) => tracing::error!("reload failed, keeping the running config: {e}"),
                }
            }
            Some(reply) = reload_rx.recv() => {
                let r = reload(&shared, &args).await;
                match &r {
                    Ok(msg) => tracing::info!("reload: {msg}"),
                    Err(e) => tracing::error!("reload failed, keeping the running config: {e}"),
                }
                let _ = reply.send(r);
            }
            r = stop_rx.changed() => {
                if r.is_err() || *stop_rx.borrow() != Stop::Running { break; }
            }
        }
    }
    notify_stopping();
    // A reload asked for from now on is answered "shutting down" at once instead of
    // holding its HTTP request until the drain times out.
    drop(reload_rx);
    shared.stop_tx.send_replace(Stop::Leave);
    // Give the cluster our leave notice before the process goes away.
    if tokio::time::timeout(crate::gossip::LEAVE_GRACE * 4, gossip_task)
        .await
        .is_err()
    {
        tracing::warn!("leave notice not confirmed sent before shutdown");
    }
    // Listeners stop accepting and finish what is in flight.
    let _ = http_task.await;
    let _ = dns_task.await;
    let _ = checks_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// Tells systemd the agent is ready (no-op without `NOTIFY_SOCKET`).
fn notify_ready() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd (READY=1)");
    }
}

/// Tells systemd the agent is shutting down (no-op without `NOTIFY_SOCKET`).
fn notify_stopping() {
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Stopping]) {
        tracing::warn!(error = %e, "could not notify systemd (STOPPING=1)");
    }
}

/// Re-reads config files and applies their services. A bad file changes nothing: the
/// error is returned (and logged by the caller) and the running config stays.
pub async fn reload(shared: &Shared, args: &AgentArgs) -> Result<String, String> {
    use std::sync::atomic::Ordering::Relaxed;
    let mut new = match config::load(args) {
        Ok(c) => c,
        Err(e) => {
            crate::metrics::METRICS
                .reload_failures
                .fetch_add(1, Relaxed);
            return Err(e.to_string());
        }
    };
    let old = shared.config.load_full();
    let restart_needed = restart_only_changes(&old, &new);
    if !restart_needed.is_empty() {
        tracing::warn!(
            settings = %restart_needed.join(", "),
            "these settings changed in the files but only take effect after a restart"
        );
        // Keep what the running sockets, catalog and store were built with, so that
        // /v1/agent/self and friends describe the agent as it really runs.
        new.node_name = old.node_name.clone();
        new.datacenter = old.datacenter.clone();
        new.data_dir = old.data_dir.clone();
        new.bind_addr = old.bind_addr;
        new.advertise_addr = old.advertise_addr;
        new.client_addr = old.client_addr;
        new.ports = old.ports.clone();
        new.encrypt = old.encrypt;
        new.gossip_insecure = old.gossip_insecure;
        new.log_level = old.log_level.clone();
        new.log_json = old.log_json;
    }
    let (services, skipped) = crate::checks::process::bind_config_services(new.services.clone());
    let (added, changed, removed) = match shared.state.apply_config_services(services).await {
        Ok(counts) => counts,
        Err(e) => {
            crate::metrics::METRICS
                .reload_failures
                .fetch_add(1, Relaxed);
            return Err(format!("config services not applied: {e}"));
        }
    };
    crate::metrics::METRICS.reloads.fetch_add(1, Relaxed);
    // encrypt_verify_* apply at once; token changes are read from the config per request.
    shared.keyring.set_policy(&new);
    shared.config.store(Arc::new(new));
    let mut msg = format!("config services: {added} added, {changed} changed, {removed} removed");
    for reason in skipped {
        msg.push_str("; ");
        msg.push_str(&reason);
    }
    Ok(msg)
}

/// Settings a reload cannot apply to a running agent (sockets, identity, storage).
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.node_name != new.node_name {
        out.push("node_name");
    }
    if old.datacenter != new.datacenter {
        out.push("datacenter");
    }
    if old.data_dir != new.data_dir {
        out.push("data_dir");
    }
    if (old.bind_addr, old.advertise_addr, old.client_addr)
        != (new.bind_addr, new.advertise_addr, new.client_addr)
    {
        out.push("addresses");
    }
    if old.ports != new.ports {
        out.push("ports");
    }
    if old.encrypt != new.encrypt {
        out.push("encrypt");
    }
    if old.gossip_insecure != new.gossip_insecure {
        out.push("gossip_insecure");
    }
    if old.log_level != new.log_level || old.log_json != new.log_json {
        out.push("log_level");
    }
    out
}
