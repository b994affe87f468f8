//! What every listener of the agent gets, and nothing else: the state, the config, the
//! shutdown signal, and the handles to reach the gossip task, the reload loop and the
//! keyring. Kept apart from `agent` (which wires the listeners) so that every module depends
//! on this one and this one on none of them: the arrows run one way.

use crate::config::Config;
use crate::keyring::KeyringHandle;
use crate::state::State;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

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
    pub reload_tx: mpsc::Sender<oneshot::Sender<Result<String, String>>>,
    /// Join and force-leave requests to the gossip task.
    pub gossip: GossipHandle,
    /// The gossip keyring (read by the transport, changed by keyring operations).
    pub keyring: KeyringHandle,
}

impl Shared {
    pub fn stop_rx(&self) -> watch::Receiver<Stop> {
        self.stop_tx.subscribe()
    }
}

/// A request to the gossip task from the HTTP API.
pub enum Command {
    Join {
        addrs: Vec<String>,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    ForceLeave {
        node: String,
        prune: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// What the HTTP API holds to reach the gossip task.
#[derive(Clone)]
pub struct GossipHandle {
    tx: mpsc::Sender<Command>,
}

impl GossipHandle {
    /// A handle and the receiving end the gossip task is started with.
    pub fn channel() -> (GossipHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(64);
        (GossipHandle { tx }, rx)
    }

    /// Joins the cluster through `addr` ("ip:port" or "ip"); returns how many were joined.
    pub async fn join(&self, addr: &str) -> Result<usize, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Join {
                addrs: vec![addr.to_string()],
                reply,
            })
            .await
            .map_err(|_| "gossip is not running".to_string())?;
        rx.await
            .map_err(|_| "gossip stopped before the join finished".to_string())?
    }

    /// Marks a failed member as left (or forgets it entirely with `prune`).
    pub async fn force_leave(&self, node: &str, prune: bool) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::ForceLeave {
                node: node.to_string(),
                prune,
                reply,
            })
            .await
            .map_err(|_| "gossip is not running".to_string())?;
        rx.await
            .map_err(|_| "gossip stopped before force-leave finished".to_string())?
    }
}
