//! `muster agent`: builds the configuration, restores state, opens the listeners and runs
//! until a signal (or `leave`) says stop. Each listener is its own module; this one only
//! wires them together and owns the shutdown sequence.

use crate::cli::AgentArgs;
use crate::config::{self, Config};
use crate::state::{Source, State};
use crate::store::Store;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;

/// Why the agent is stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// SIGTERM, SIGINT or `leave`: tell the cluster, then exit 0.
    Leave,
}

/// Things every listener gets: the state, the config, and the shutdown signal.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<State>,
    pub config: Arc<arc_swap::ArcSwap<Config>>,
    pub stop_tx: Arc<watch::Sender<Stop>>,
    /// Reload requests (SIGHUP, `PUT /v1/agent/reload`): the reply says what happened.
    pub reload_tx: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<String, String>>>,
    /// Join and force-leave requests to the gossip task.
    pub gossip: crate::gossip::Handle,
}

impl Shared {
    pub fn stop_rx(&self) -> watch::Receiver<Stop> {
        self.stop_tx.subscribe()
    }
}

pub fn main(args: AgentArgs) -> ExitCode {
    let config = match config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("muster: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
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
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("muster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!(
        "{},hickory_server=warn,hickory_proto=warn",
        config.log_level
    ))
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
    }
    for def in config.services.clone() {
        state
            .register_service(def, Source::Config, true)
            .await
            .map_err(|e| anyhow::anyhow!("config service: {e}"))?;
    }

    let (stop_tx, _) = watch::channel(Stop::Running);
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel(4);
    let (gossip, gossip_commands) = crate::gossip::Handle::channel();
    let shared = Shared {
        state: state.clone(),
        config: Arc::new(arc_swap::ArcSwap::from_pointee(config.clone())),
        stop_tx: Arc::new(stop_tx),
        reload_tx,
        gossip,
    };
    let gossip_task = crate::gossip::start(&shared, gossip_commands).await?;

    let http = crate::http::bind(&shared).await?;
    tracing::info!(
        node = %config.node_name,
        http = %http.local_addr(),
        "muster agent running"
    );
    let http_task = tokio::spawn(http.serve(shared.clone()));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut stop_rx = shared.stop_rx();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: leaving"); break; }
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
    tracing::info!("stopped");
    Ok(())
}

/// Re-reads config files and applies their services. A bad file changes nothing.
pub async fn reload(shared: &Shared, args: &AgentArgs) -> Result<String, String> {
    let new = config::load(args).map_err(|e| e.to_string())?;
    let (added, changed, removed) = shared
        .state
        .apply_config_services(new.services.clone())
        .await;
    shared.config.store(Arc::new(new));
    Ok(format!(
        "config services: {added} added, {changed} changed, {removed} removed"
    ))
}
