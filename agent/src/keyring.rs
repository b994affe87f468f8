//! The gossip keyring of this agent: where it lives (`data_dir/keyring.json`, primary key
//! first, written atomically with fsync before any change takes effect), how it starts
//! (that file, else seeded from `encrypt`), how one operation is applied here, and how an
//! operation asked for through the HTTP API is carried to the whole cluster.
//!
//! Cluster-wide operations are carried by the caller's agent, not by gossip: it sends the
//! operation as a kind-2 stream frame to every member it knows as up (alive or suspect),
//! a few at a time, applies it to itself, and adds up the replies (each member answers
//! with its keys after the operation). `use` and `remove` first ask every member for its
//! keys and go ahead only when the result cannot cut anyone off: `use` only when every
//! member holds the key, `remove` only when no member seals with it. Why this is safe,
//! and what to do about a member that missed an operation, is in the README ("Gossip
//! keys").
//!
//! The keyring itself (`Keys`) is shared with the transport, which reads it for every
//! packet and frame, so a change applies at once.

use crate::gossip::transport::{self, FrameKind, Keys};
use crate::metrics::METRICS;
use crate::state::State;
use arc_swap::ArcSwap;
use muster_proto::gossip::envelope::{Keyring, KeyringError, OpenedBy, Policy, KEY_LEN};
use muster_proto::gossip::frame::Frame;
use muster_proto::keyring::{precheck, Op, Reply, Summary};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::{Mutex, Semaphore};

/// The keyring's file name inside `data_dir`.
pub const FILE: &str = "keyring.json";
/// The largest keyring file read (16 keys in base64 take under 1 KiB).
const MAX_FILE: u64 = 16 * 1024;
/// Members asked at once during a cluster-wide operation.
const FAN_OUT: usize = 16;

/// This agent's keyring, shared by the transport, the HTTP API and the stream server.
#[derive(Clone)]
pub struct KeyringHandle {
    keys: Keys,
    file: Option<PathBuf>,
    node: String,
    /// One local change at a time (read, persist, swap).
    apply_lock: Arc<Mutex<()>>,
    /// One cluster-wide operation at a time from this agent's API.
    cluster_lock: Arc<Mutex<()>>,
}

pub fn encode_key(key: &[u8; KEY_LEN]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn policy_of(config: &crate::config::Config) -> Policy {
    Policy {
        verify_incoming: config.encrypt_verify_incoming,
        verify_outgoing: config.encrypt_verify_outgoing,
    }
}

/// Reads a keyring file: a JSON list of base64 keys, primary first (Consul's layout).
fn read_file(path: &Path, policy: Policy) -> Result<Keyring, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut text = String::new();
    f.take(MAX_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes: not a keyring"));
    }
    let list: Vec<String> =
        serde_json::from_str(&text).map_err(|e| format!("not a JSON list of base64 keys: {e}"))?;
    if list.is_empty() {
        return Err("holds no key (delete it to start again from `encrypt`)".into());
    }
    let mut keys = Vec::with_capacity(list.len());
    for (i, k) in list.iter().enumerate() {
        keys.push(crate::config::decode_key(k).map_err(|e| format!("key {i}: {e}"))?);
    }
    Keyring::new(keys, policy).map_err(|e| e.to_string())
}

/// Writes the keyring so that a crash leaves the old or the new file whole; readable by
/// the agent's user only (the keys are secrets).
fn write_file(path: &Path, ring: &Keyring) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let list: Vec<String> = ring.keys().map(|k| encode_key(k.raw())).collect();
    let bytes = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".tmp-{FILE}"));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl KeyringHandle {
    /// The keyring this run starts with: `data_dir/keyring.json` when it exists (a
    /// differing `encrypt` is then ignored, with a warning, as Consul does); else the
    /// `encrypt` key, written to `data_dir` so later runs keep what keyring operations
    /// make of it; else no key.
    pub fn open(config: &crate::config::Config) -> anyhow::Result<KeyringHandle> {
        let policy = policy_of(config);
        let file = config.data_dir.as_ref().map(|d| d.join(FILE));
        let ring = match &file {
            Some(path) if path.exists() => {
                let ring = read_file(path, policy)
                    .map_err(|e| anyhow::anyhow!("keyring {}: {e}", path.display()))?;
                if let Some(seed) = &config.encrypt {
                    if !ring.contains(seed) {
                        tracing::warn!(
                            file = %path.display(),
                            "`encrypt` is not in the keyring kept in data_dir; using the keyring (manage keys with `muster keyring`)"
                        );
                    } else if ring.primary().map(|p| p.raw()) != Some(seed) {
                        tracing::info!(
                            file = %path.display(),
                            "`encrypt` is installed but not primary in the keyring kept in data_dir; using the keyring"
                        );
                    }
                }
                ring
            }
            _ => {
                let ring = Keyring::new(config.encrypt, policy)
                    .map_err(|e| anyhow::anyhow!("keyring: {e}"))?;
                if let (Some(path), false) = (&file, ring.is_empty()) {
                    write_file(path, &ring).map_err(|e| {
                        anyhow::anyhow!("cannot write keyring {}: {e}", path.display())
                    })?;
                }
                ring
            }
        };
        Ok(KeyringHandle {
            keys: Arc::new(ArcSwap::from_pointee(ring)),
            file,
            node: config.node_name.clone(),
            apply_lock: Arc::default(),
            cluster_lock: Arc::default(),
        })
    }

    /// The shared keyring the transport reads.
    pub fn keys(&self) -> Keys {
        self.keys.clone()
    }

    pub fn current(&self) -> Arc<Keyring> {
        self.keys.load_full()
    }

    /// Applies `encrypt_verify_*` from a reloaded config.
    pub fn set_policy(&self, config: &crate::config::Config) {
        let policy = policy_of(config);
        let cur = self.keys.load();
        if cur.policy() != policy {
            tracing::info!(
                verify_incoming = policy.verify_incoming,
                verify_outgoing = policy.verify_outgoing,
                "gossip encryption policy changed"
            );
            self.keys.store(Arc::new(cur.with_policy(policy)));
        }
    }

    fn reply(&self, ring: &Keyring, error: Option<String>) -> Reply {
        Reply {
            node: self.node.clone(),
            keys: ring.keys().map(|k| *k.raw()).collect(),
            error,
        }
    }

    /// Applies one operation to this agent's keyring: checked, written to `data_dir`,
    /// then swapped in. The reply carries the keys afterwards, or why nothing changed.
    pub async fn apply(&self, op: &Op) -> Reply {
        let _g = self.apply_lock.lock().await;
        let cur = self.keys.load_full();
        let next: Result<Keyring, String> = match op {
            Op::List => return self.reply(&cur, None),
            Op::Install(k) => {
                if cur.is_empty() && (cur.policy().verify_incoming || cur.policy().verify_outgoing)
                {
                    Err("this agent gossips in plaintext; a first key would make it seal and require encryption at once and cut it off from its plaintext peers: set encrypt_verify_incoming = false and encrypt_verify_outgoing = false on every agent first (then reload)".into())
                } else {
                    cur.install(k).map_err(|e| e.to_string())
                }
            }
            Op::Use(k) => cur.use_key(k).map_err(|e| e.to_string()),
            Op::Remove(k) => cur.remove(k).map_err(|e: KeyringError| e.to_string()),
        };
        let next = match next {
            Ok(n) => n,
            Err(e) => {
                METRICS.keyring_op_failures.fetch_add(1, Relaxed);
                return self.reply(&cur, Some(e));
            }
        };
        if next == *cur {
            return self.reply(&cur, None);
        }
        if let Some(path) = self.file.clone() {
            let ring = next.clone();
            let written = tokio::task::spawn_blocking(move || write_file(&path, &ring)).await;
            let failed = match written {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                METRICS.keyring_op_failures.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "keyring not changed: could not write it to data_dir");
                return self.reply(
                    &cur,
                    Some(format!("could not write the keyring to data_dir: {e}")),
                );
            }
        }
        self.keys.store(Arc::new(next.clone()));
        METRICS.keyring_ops.fetch_add(1, Relaxed);
        tracing::info!(
            op = op.name(),
            keys = next.keys().count(),
            "keyring changed"
        );
        self.reply(&next, None)
    }
}

/// Secure by default: gossip on an address other hosts can reach needs a key, unless the
/// configuration says `gossip_insecure = true` (warned at every start). Plaintext allowed
/// by `encrypt_verify_*` (a move to encryption under way) is warned about too.
pub fn check_secure(config: &crate::config::Config, ring: &Keyring) -> anyhow::Result<()> {
    let bind = std::net::SocketAddr::new(config.bind_addr, config.ports.gossip);
    if ring.is_empty() {
        if config.bind_addr.is_loopback() {
            return Ok(());
        }
        if config.gossip_insecure {
            tracing::warn!(
                %bind,
                "gossip runs WITHOUT a key on a non-loopback address (gossip_insecure = true): anyone who can reach this port can read the catalog, join the cluster and change what it answers; create a key with `muster keygen` and set `encrypt`"
            );
            return Ok(());
        }
        anyhow::bail!(
            "refusing to gossip on {bind} without a key: that address is reachable from other hosts, and unencrypted gossip lets anyone who can reach it read the whole catalog, join the cluster and rewrite what every agent answers. Create a key with `muster keygen` and set `encrypt = \"<key>\"` in the config (the same key on every agent) or pass `--encrypt <key>`; or bind gossip to loopback (`bind_addr = \"127.0.0.1\"`); or, to run without a key anyway, set `gossip_insecure = true`"
        );
    }
    let p = ring.policy();
    if !p.verify_incoming || !p.verify_outgoing {
        tracing::warn!(
            verify_incoming = p.verify_incoming,
            verify_outgoing = p.verify_outgoing,
            "gossip still accepts or sends plaintext (encrypt_verify_* = false): finish the move to encryption by setting both to true"
        );
    }
    Ok(())
}

/// Answers a keyring frame from a peer. Once this agent holds a key, only sealed frames
/// may change or list its keys (with `encrypt_verify_incoming = false` plain frames are
/// accepted for gossip, but never for keyring operations) — except a plain install of a
/// key it already holds, which changes nothing and is answered as done, so a first
/// install that reached only some members can be repeated through a member still
/// without a key (whose frames are plain).
pub async fn serve(handle: &KeyringHandle, frame: &Frame) -> Vec<u8> {
    let cur = handle.current();
    let op = Op::decode(&frame.body);
    let reply = match op {
        Err(e) => handle.reply(&Keyring::plain(), Some(e.to_string())),
        Ok(Op::Install(k)) if frame.by == OpenedBy::Plain && cur.contains(&k) => {
            handle.reply(&Keyring::plain(), None)
        }
        Ok(_) if !cur.is_empty() && frame.by == OpenedBy::Plain => handle.reply(
            &Keyring::plain(),
            Some("keyring operations must be sealed with a cluster key".into()),
        ),
        Ok(op) => handle.apply(&op).await,
    };
    reply.encode()
}

/// Members this agent knows as up, other than itself, with their gossip addresses (None
/// while only a peer's record has been heard of it, before SWIM reported it up: its port
/// is not known then, and guessing could ask the wrong process).
fn up_members(state: &State) -> Vec<(String, Option<SocketAddr>)> {
    let snap = state.snapshot();
    let me = state.node_name.clone();
    snap.nodes()
        .filter(|n| n.status.is_up() && n.record.name != me)
        .map(|n| (n.record.name.clone(), n.gossip_addr))
        .collect()
}

/// Sends `op` to every member and applies it here; returns the replies and the members
/// that gave none (with why).
async fn fan_out(
    keyring: &KeyringHandle,
    members: &[(String, Option<SocketAddr>)],
    op: Op,
) -> (Vec<Reply>, Vec<(String, String)>) {
    let keys = keyring.keys();
    let permits = Arc::new(Semaphore::new(FAN_OUT));
    let mut tasks = tokio::task::JoinSet::new();
    for (name, addr) in members.iter().cloned() {
        let keys = keys.clone();
        let permits = permits.clone();
        let body = op.encode();
        tasks.spawn(async move {
            let Some(addr) = addr else {
                return (
                    name,
                    Err("its gossip address is not known yet; try again".into()),
                );
            };
            let _p = permits.acquire_owned().await;
            let r = match transport::exchange_kind(addr, &keys, FrameKind::Keyring, &body).await {
                Ok(frame) => Reply::decode(&frame.body).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (name, r)
        });
    }
    let mut replies = Vec::with_capacity(members.len() + 1);
    let mut failed = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((_, Ok(reply))) => replies.push(reply),
            Ok((name, Err(e))) => failed.push((name, e)),
            Err(e) => failed.push(("?".into(), e.to_string())),
        }
    }
    // Here last: every frame above went out under the keyring as it was before the
    // operation (a first key installed here early would seal frames that the members
    // still without a key cannot open).
    replies.push(keyring.apply(&op).await);
    (replies, failed)
}

/// Why a cluster-wide operation did not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// It would cut members off, or their keys could not be checked: nothing was changed.
    #[error("{0}")]
    Refused(String),
}

/// Carries `op` to the whole cluster (see the module comment) and adds up the answers.
pub async fn cluster(
    keyring: &KeyringHandle,
    state: &State,
    op: Op,
) -> Result<Summary, ClusterError> {
    let _g = keyring.cluster_lock.lock().await;
    let members = up_members(state);
    if matches!(op, Op::Use(_) | Op::Remove(_)) {
        let (listing, failed) = fan_out(keyring, &members, Op::List).await;
        if !failed.is_empty() {
            let names: Vec<String> = failed.iter().map(|(n, e)| format!("{n} ({e})")).collect();
            return Err(ClusterError::Refused(format!(
                "could not ask {} member(s) for their keys: {}",
                failed.len(),
                names.join(", ")
            )));
        }
        precheck(&op, &listing).map_err(ClusterError::Refused)?;
    }
    let (replies, failed) = fan_out(keyring, &members, op).await;
    let summary = Summary::of(&replies, &failed);
    if summary.errors() > 0 {
        tracing::warn!(op = op.name(), failures = summary.errors(), messages = ?summary.messages, "keyring operation failed on some members");
    } else {
        tracing::info!(
            op = op.name(),
            members = summary.num_nodes,
            "keyring operation done cluster-wide"
        );
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("muster-keyring-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn config(data: Option<&Path>, encrypt: Option<[u8; 32]>) -> crate::config::Config {
        let mut c = crate::config::Config::dev();
        c.data_dir = data.map(Path::to_path_buf);
        c.encrypt = encrypt;
        c
    }

    #[tokio::test]
    async fn seeded_from_encrypt_then_kept_in_data_dir() {
        let d = dir("seed");
        let h = KeyringHandle::open(&config(Some(&d), Some([1; 32]))).unwrap();
        assert_eq!(h.current().primary().unwrap().raw(), &[1; 32]);
        assert!(d.join(FILE).exists());
        let r = h.apply(&Op::Install([2; 32])).await;
        assert_eq!(r.error, None);
        assert_eq!(h.apply(&Op::Use([2; 32])).await.error, None);
        assert_eq!(h.apply(&Op::Remove([1; 32])).await.error, None);
        // A restart with the old `encrypt` keeps the rotated keyring.
        let again = KeyringHandle::open(&config(Some(&d), Some([1; 32]))).unwrap();
        let keys: Vec<[u8; 32]> = again.current().keys().map(|k| *k.raw()).collect();
        assert_eq!(keys, vec![[2; 32]]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn refusals_change_nothing() {
        let h = KeyringHandle::open(&config(None, Some([1; 32]))).unwrap();
        let r = h.apply(&Op::Remove([1; 32])).await;
        assert!(r.error.unwrap().contains("primary"));
        let r = h.apply(&Op::Use([3; 32])).await;
        assert!(r.error.unwrap().contains("not installed"));
        assert_eq!(r.keys, vec![[1; 32]]);
        // A plaintext agent with the default verify settings refuses a first key.
        let plain = KeyringHandle::open(&config(None, None)).unwrap();
        let r = plain.apply(&Op::Install([1; 32])).await;
        assert!(r.error.unwrap().contains("encrypt_verify_incoming"));
        assert!(plain.current().is_empty());
    }

    #[test]
    fn bad_files_stop_start_up_with_the_reason() {
        let d = dir("bad");
        let f = d.join(FILE);
        for (text, want) in [
            ("[]", "holds no key"),
            ("{", "not a JSON list"),
            ("[\"c2hvcnQ=\"]", "key 0"),
        ] {
            std::fs::write(&f, text).unwrap();
            let e = KeyringHandle::open(&config(Some(&d), None))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(want) && e.contains(FILE), "{text}: {e}");
        }
        std::fs::write(&f, vec![b' '; 20_000]).unwrap();
        let e = KeyringHandle::open(&config(Some(&d), None))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("larger than"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
