//! Durable storage of what was registered over HTTP, in `data_dir`.
//!
//! One JSON file per service (with its checks and their last status) under
//! `services/`, one per node-level check under `checks/`. File names are the SHA-256 of
//! the id, so any id maps to a safe, fixed-length name. A record that cannot be read at
//! start is moved into `quarantine/` and start-up goes on.
//!
//! Writes come in batches ([`Store::commit`]: everything concurrent registrations changed
//! while the previous batch was being written) and share one flush to disk — a group
//! commit. Each file is written to a temporary name, then one `syncfs` makes every temporary
//! file durable, then each is renamed over its old one, and each directory is fsynced once.
//! A crash at any moment leaves each record old or new, never torn, and nothing of a batch
//! was acknowledged before the last fsync returned.
//!
//! Old versions are not dropped inside the batch: dropping a file's last link makes the
//! filesystem free its blocks, which costs milliseconds per file on some disks (3 ms
//! measured on ext4 with online discard: 1,000 TTL expiries, each rewriting its service's
//! record, held a batch — and every registration behind it — for 3 s). So a record about
//! to be replaced is first hard-linked into `retired/` (the rename over it then frees
//! nothing), a removed one is renamed there, and a thread of the store's own unlinks them
//! after the batch. Whatever a crash leaves in `retired/` is dropped at the next open.

use muster_proto::model::{Check, Service};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

const FORMAT_VERSION: u32 = 1;
/// The largest record file read at start: a node's whole record may be 512 KiB encoded,
/// so a bigger file was not written by this agent.
const MAX_FILE: u64 = 1024 * 1024;

/// One file a batch of local changes writes or removes.
pub enum FileJob {
    SaveService(StoredService),
    RemoveService(String),
    SaveCheck(Check),
    RemoveCheck(String),
}

/// A service as stored on disk, with the checks that belong to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredService {
    pub format: u32,
    pub service: Service,
    pub checks: Vec<Check>,
    /// Maintenance reason, when the service is in maintenance mode.
    #[serde(default)]
    pub maintenance: Option<String>,
}

impl StoredService {
    pub fn new(service: Service, checks: Vec<Check>, maintenance: Option<String>) -> Self {
        StoredService {
            format: FORMAT_VERSION,
            service,
            checks,
            maintenance,
        }
    }
}

/// A node-level check as stored on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredCheck {
    pub format: u32,
    pub check: Check,
}

/// What was found in `data_dir` at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub services: Vec<StoredService>,
    pub checks: Vec<Check>,
    /// Files that could not be read, with the reason; already moved aside.
    pub quarantined: Vec<(PathBuf, String)>,
}

#[derive(Debug)]
pub struct Store {
    services: PathBuf,
    checks: PathBuf,
    quarantine: PathBuf,
    retired: Retired,
}

impl Store {
    /// Opens (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> io::Result<Store> {
        let services = data_dir.join("services");
        let checks = data_dir.join("checks");
        let quarantine = data_dir.join("quarantine");
        for dir in [&services, &checks, &quarantine] {
            fs::create_dir_all(dir)?;
        }
        Ok(Store {
            services,
            checks,
            quarantine,
            retired: Retired::open(&data_dir.join("retired"))?,
        })
    }

    fn file_name(id: &str) -> String {
        let digest = Sha256::digest(id.as_bytes());
        let mut name = String::with_capacity(69);
        for b in digest.iter() {
            name.push_str(&format!("{b:02x}"));
        }
        name.push_str(".json");
        name
    }

    /// Carries out a batch of writes and removals with one flush to disk for all of them
    /// (see the module comment). Blocking: call it off the async threads.
    pub fn commit(&self, jobs: Vec<FileJob>) -> io::Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        // What each touched file becomes: written anew (from its temporary file) or
        // removed. A later job of the same batch for the same file wins. A map, so that a
        // batch of a thousand expiries costs n log n, not n² path comparisons.
        let mut plan: BTreeMap<PathBuf, Option<PathBuf>> = BTreeMap::new();
        let mut dirs: Vec<&Path> = Vec::new();
        for job in jobs {
            let (dir, name, bytes) = match job {
                FileJob::SaveService(stored) => {
                    let bytes = serde_json::to_vec_pretty(&stored).map_err(io::Error::other)?;
                    (
                        &self.services,
                        Self::file_name(&stored.service.id),
                        Some(bytes),
                    )
                }
                FileJob::RemoveService(id) => (&self.services, Self::file_name(&id), None),
                FileJob::SaveCheck(check) => {
                    let stored = StoredCheck {
                        format: FORMAT_VERSION,
                        check,
                    };
                    let bytes = serde_json::to_vec_pretty(&stored).map_err(io::Error::other)?;
                    (&self.checks, Self::file_name(&stored.check.id), Some(bytes))
                }
                FileJob::RemoveCheck(id) => (&self.checks, Self::file_name(&id), None),
            };
            if !dirs.contains(&dir.as_path()) {
                dirs.push(dir);
            }
            let target = dir.join(&name);
            match bytes {
                Some(bytes) => {
                    let tmp = dir.join(format!(".tmp-{name}"));
                    let mut f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&tmp)?;
                    f.write_all(&bytes)?;
                    plan.insert(target, Some(tmp));
                }
                None => {
                    plan.insert(target, None);
                }
            }
        }
        // One flush makes every temporary file's content durable.
        if plan.values().any(Option::is_some) {
            let dir = File::open(&self.services)?;
            rustix::fs::syncfs(&dir).map_err(io::Error::from)?;
        }
        let mut old = Vec::new();
        for (to, tmp) in &plan {
            match tmp {
                Some(tmp) => {
                    old.extend(self.retired.keep(to));
                    fs::rename(tmp, to)?;
                }
                None => old.extend(self.retired.take(to)?),
            }
        }
        for dir in dirs {
            File::open(dir)?.sync_all()?;
        }
        self.retired.drop_later(old);
        Ok(())
    }

    /// Reads every stored record. Unreadable ones are moved to `quarantine/` and reported;
    /// leftover temporary files from an interrupted write are removed.
    pub fn load(&self) -> io::Result<Loaded> {
        let mut loaded = Loaded::default();
        for path in self.list(&self.services)? {
            match read_json::<StoredService>(&path) {
                Ok(s) if s.format == FORMAT_VERSION => match valid_service(&s) {
                    Ok(()) => loaded.services.push(s),
                    Err(reason) => self.quarantine(&path, reason, &mut loaded),
                },
                Ok(s) => {
                    self.quarantine(&path, format!("unknown format {}", s.format), &mut loaded)
                }
                Err(e) => self.quarantine(&path, e, &mut loaded),
            }
        }
        for path in self.list(&self.checks)? {
            match read_json::<StoredCheck>(&path) {
                Ok(c) if c.format == FORMAT_VERSION => match valid_check(&c.check, "") {
                    Ok(()) => loaded.checks.push(c.check),
                    Err(reason) => self.quarantine(&path, reason, &mut loaded),
                },
                Ok(c) => {
                    self.quarantine(&path, format!("unknown format {}", c.format), &mut loaded)
                }
                Err(e) => self.quarantine(&path, e, &mut loaded),
            }
        }
        Ok(loaded)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.starts_with(".tmp-") {
                // An interrupted write: the rename never happened, so the old file (if
                // any) is still the acknowledged state.
                let _ = fs::remove_file(&path);
            } else if name.ends_with(".json") {
                out.push(path);
            }
        }
        out.sort();
        Ok(out)
    }

    fn quarantine(&self, path: &Path, reason: String, loaded: &mut Loaded) {
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let dest = self.quarantine.join(name);
        if let Err(e) = fs::rename(path, &dest) {
            tracing::error!(file = %path.display(), error = %e, "could not move unreadable record aside");
        }
        loaded.quarantined.push((path.to_path_buf(), reason));
    }
}

/// Old versions waiting in `retired/` beyond which they are dropped on the spot (a disk
/// slower at freeing than the agent is at replacing must not fill up with them).
const MAX_RETIRED_BACKLOG: usize = 10_000;

/// Old versions of replaced and removed records, dropped off the commit path (see the
/// module comment).
#[derive(Debug)]
struct Retired {
    dir: PathBuf,
    /// Names in `dir` are `<prefix>-<seq>`: the prefix (the open time) keeps them apart
    /// from what an earlier run left, which the thread is still dropping.
    prefix: u128,
    seq: AtomicU64,
    backlog: Arc<AtomicUsize>,
    tx: mpsc::Sender<PathBuf>,
}

impl Retired {
    /// Creates `dir` and starts the thread that drops what is put there, beginning with
    /// what an earlier run left. The thread ends with the store.
    fn open(dir: &Path) -> io::Result<Retired> {
        fs::create_dir_all(dir)?;
        let leftovers: Vec<PathBuf> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let backlog = Arc::new(AtomicUsize::new(0));
        let pending = backlog.clone();
        std::thread::Builder::new()
            .name("muster-retired".into())
            .spawn(move || {
                for p in leftovers {
                    let _ = fs::remove_file(p);
                }
                for p in rx {
                    let _ = fs::remove_file(p);
                    pending.fetch_sub(1, Ordering::Relaxed);
                }
            })?;
        let prefix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Retired {
            dir: dir.to_path_buf(),
            prefix,
            seq: AtomicU64::new(0),
            backlog,
            tx,
        })
    }

    fn next_name(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{}-{n}", self.prefix))
    }

    /// Hard-links `live` (about to be replaced) into `retired/`. None when there is no
    /// old version, or the link failed: the replace then frees it on the spot, as it would
    /// without this.
    fn keep(&self, live: &Path) -> Option<PathBuf> {
        let name = self.next_name();
        fs::hard_link(live, &name).ok().map(|()| name)
    }

    /// Removes `live` by moving it into `retired/` (None: it was not there).
    fn take(&self, live: &Path) -> io::Result<Option<PathBuf>> {
        let name = self.next_name();
        match fs::rename(live, &name) {
            Ok(()) => Ok(Some(name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(_) => match fs::remove_file(live) {
                Ok(()) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Hands old versions to the thread (or drops them now, past the backlog limit).
    fn drop_later(&self, old: Vec<PathBuf>) {
        for p in old {
            if self.backlog.load(Ordering::Relaxed) >= MAX_RETIRED_BACKLOG {
                let _ = fs::remove_file(&p);
                continue;
            }
            self.backlog.fetch_add(1, Ordering::Relaxed);
            if let Err(mpsc::SendError(p)) = self.tx.send(p) {
                self.backlog.fetch_sub(1, Ordering::Relaxed);
                let _ = fs::remove_file(p);
            }
        }
    }
}

/// Reads a record file, refusing one larger than [`MAX_FILE`] before holding it.
fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, String> {
    use std::io::Read;
    let f = File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// What the HTTP API would have refused is refused from disk too (a file edited by hand
/// or damaged must not put into the catalog what no client could register).
fn valid_service(s: &StoredService) -> Result<(), String> {
    muster_proto::validate::service(&s.service)
        .map_err(|e| format!("{}: {}", e.field, e.reason))?;
    if s.checks.len() > muster_proto::validate::MAX_CHECKS_PER_SERVICE {
        return Err(format!("{} checks on one service", s.checks.len()));
    }
    for c in &s.checks {
        valid_check(c, &s.service.id)?;
    }
    if let Some(reason) = &s.maintenance {
        muster_proto::validate::text(
            "maintenance reason",
            reason,
            muster_proto::model::MAX_CHECK_OUTPUT,
        )
        .map_err(|e| format!("{}: {}", e.field, e.reason))?;
    }
    Ok(())
}

/// A stored check: a valid id, bounded texts, and the service it says it belongs to.
fn valid_check(c: &Check, service_id: &str) -> Result<(), String> {
    let bad = |e: muster_proto::validate::ValidationError| {
        format!("check {:?}: {}: {}", c.id, e.field, e.reason)
    };
    muster_proto::validate::id("CheckID", &c.id).map_err(bad)?;
    let max = muster_proto::model::MAX_CHECK_OUTPUT;
    muster_proto::validate::text("Output", &c.output, max).map_err(bad)?;
    muster_proto::validate::text("Notes", &c.notes, max).map_err(bad)?;
    muster_proto::validate::text("Name", &c.name, max).map_err(bad)?;
    if c.service_id != service_id {
        return Err(format!(
            "check {:?} belongs to service {:?}, stored with {:?}",
            c.id, c.service_id, service_id
        ));
    }
    Ok(())
}

/// Writes `bytes` as `dir/name` so that a crash leaves the old or the new content whole
/// (temporary file, fsync, rename, directory fsync).
pub fn write_file_durably(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    write_atomic(dir, name, bytes)
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".tmp-{name}"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_proto::model::Weights;
    use std::collections::BTreeMap;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("muster-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn svc(id: &str) -> Service {
        Service {
            id: id.into(),
            name: "web".into(),
            tags: vec![],
            address: String::new(),
            port: 80,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        }
    }

    /// Replaced and removed records leave their old versions in `retired/` only until the
    /// store's thread drops them; within one batch the later job for a file wins; what a
    /// crash left in `retired/` is dropped at the next open and never loaded.
    #[test]
    fn old_versions_are_retired_off_the_batch_and_dropped() {
        let d = tmpdir("retired");
        let retired = d.join("retired");
        let count = |dir: &Path| fs::read_dir(dir).map_or(0, |r| r.count());
        let settle = |dir: &Path| {
            for _ in 0..200 {
                if count(dir) == 0 {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            false
        };
        {
            let store = Store::open(&d).unwrap();
            let save = |id: &str, port: u16| {
                let mut s = svc(id);
                s.port = port;
                FileJob::SaveService(StoredService::new(s, vec![], None))
            };
            store
                .commit((0..50).map(|i| save(&format!("s{i}"), 1)).collect())
                .unwrap();
            // Replace them all, remove a few, and in one batch: save-then-remove and
            // remove-then-save of the same record.
            let mut jobs: Vec<FileJob> = (0..50).map(|i| save(&format!("s{i}"), 2)).collect();
            jobs.extend((0..5).map(|i| FileJob::RemoveService(format!("s{i}"))));
            jobs.push(FileJob::RemoveService("s10".into()));
            jobs.push(save("s10", 3));
            store.commit(jobs).unwrap();
            let loaded = store.load().unwrap();
            let mut ports: Vec<(String, u16)> = loaded
                .services
                .iter()
                .map(|s| (s.service.id.clone(), s.service.port))
                .collect();
            ports.sort();
            assert_eq!(ports.len(), 45);
            assert!(ports.contains(&("s10".into(), 3)));
            assert!(ports.iter().all(|(id, p)| *p == 2 || id == "s10"));
            assert!(settle(&retired), "old versions never dropped");
            assert_eq!(count(&d.join("services")), 45);
        }
        // A crash between the link and the drop leaves files in retired/.
        fs::write(retired.join("1-0"), b"old").unwrap();
        let store = Store::open(&d).unwrap();
        assert_eq!(store.load().unwrap().services.len(), 45);
        assert!(settle(&retired), "leftovers never dropped");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn round_trip_and_remove() {
        let d = tmpdir("rt");
        let store = Store::open(&d).unwrap();
        store
            .commit(vec![FileJob::SaveService(StoredService::new(
                svc("..\\b ?*"),
                vec![],
                None,
            ))])
            .unwrap();
        store
            .commit(vec![FileJob::SaveService(StoredService::new(
                svc("x"),
                vec![],
                Some("m".into()),
            ))])
            .unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.services.len(), 2);
        store
            .commit(vec![FileJob::RemoveService("x".into())])
            .unwrap();
        store
            .commit(vec![FileJob::RemoveService("never".into())])
            .unwrap();
        assert_eq!(store.load().unwrap().services.len(), 1);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn check_files_from_before_status_times_still_load() {
        // A node-level check as stored before `status_changed_ms` existed.
        let d = tmpdir("old-check");
        let store = Store::open(&d).unwrap();
        let old = r#"{"format": 1, "check": {"id": "disk", "name": "disk", "status": "warning",
            "notes": "", "output": "92% full", "service_id": "", "kind": {"Ttl": {"ttl_ms": 60000}},
            "deregister_critical_after_ms": 0}}"#;
        fs::write(d.join("checks/old.json"), old).unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.quarantined.is_empty(), "{:?}", loaded.quarantined);
        assert_eq!(loaded.checks.len(), 1);
        assert_eq!(loaded.checks[0].output, "92% full");
        assert_eq!(
            loaded.checks[0].status_changed_ms, 0,
            "unknown, not invented"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_record_is_moved_aside() {
        let d = tmpdir("corrupt");
        let store = Store::open(&d).unwrap();
        store
            .commit(vec![FileJob::SaveService(StoredService::new(
                svc("good"),
                vec![],
                None,
            ))])
            .unwrap();
        fs::write(d.join("services/bad.json"), b"{not json").unwrap();
        // Well-formed JSON the API would refuse (a service name with a space), and a file
        // too large to be a record, are refused too.
        let mut invalid = StoredService::new(svc("odd"), vec![], None);
        invalid.service.name = "not a name".into();
        fs::write(
            d.join("services/invalid.json"),
            serde_json::to_vec(&invalid).unwrap(),
        )
        .unwrap();
        fs::write(d.join("services/huge.json"), vec![b' '; 2 << 20]).unwrap();
        fs::write(d.join("services/.tmp-half.json"), b"{\"half").unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.services.len(), 1);
        assert_eq!(loaded.quarantined.len(), 3, "{:?}", loaded.quarantined);
        assert!(d.join("quarantine/bad.json").exists());
        assert!(d.join("quarantine/invalid.json").exists());
        assert!(loaded
            .quarantined
            .iter()
            .any(|(_, r)| r.contains("larger than")));
        assert!(!d.join("services/.tmp-half.json").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
