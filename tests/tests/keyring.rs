//! Gossip keys end to end (SPEC §11): a live five-agent cluster rolls to a new key with
//! `muster keyring` (install, use, remove) while a registration spreads, and no member is
//! ever listed as anything but alive on any agent during the roll; afterwards only the new
//! key gets in, and a restarted agent keeps it. A plaintext cluster moves to encryption
//! with `encrypt_verify_*` and reloads, again without losing a member.

use muster_tests::{muster_bin, wait_for, Agent, AgentSpec, TempDir};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SPREAD: Duration = Duration::from_secs(30);

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn muster(agent: &Agent, args: &[&str]) -> Out {
    let out = Command::new(muster_bin())
        .args(args)
        .env("MUSTER_HTTP_ADDR", agent.http().to_string())
        .env_remove("MUSTER_HTTP_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("run muster");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(o: Out) -> String {
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    o.stdout
}

fn keygen() -> String {
    let out = Command::new(muster_bin()).arg("keygen").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// (name, Status) of every member `a` lists.
fn members(a: &Agent) -> Vec<(String, u64)> {
    let v = a.get_json("/v1/agent/members");
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Name"].as_str().unwrap_or_default().to_string(),
                m["Status"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn status_of(a: &Agent, node: &str) -> Option<u64> {
    members(a)
        .into_iter()
        .find(|(n, _)| n == node)
        .map(|(_, s)| s)
}

fn all_alive(a: &Agent, n: usize) -> bool {
    let m = members(a);
    m.len() == n && m.iter().all(|(_, s)| *s == 1)
}

fn has_service(a: &Agent, name: &str) -> bool {
    a.get_json(&format!("/v1/catalog/service/{name}"))
        .as_array()
        .is_some_and(|l| !l.is_empty())
}

/// Samples `/v1/agent/members` on every agent until stopped; remembers every sighting of
/// a member listed as anything but alive, and any agent that listed fewer members.
struct Sampler {
    stop: Arc<AtomicBool>,
    bad: Arc<Mutex<Vec<String>>>,
    samples: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(addrs: Vec<(String, std::net::SocketAddr)>, expect: usize) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let (s, b, n) = (stop.clone(), bad.clone(), samples.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for (name, addr) in &addrs {
                    let Ok(r) =
                        muster_tests::try_request(*addr, "GET", "/v1/agent/members", None, &[])
                    else {
                        b.lock()
                            .unwrap()
                            .push(format!("{name}: API did not answer"));
                        continue;
                    };
                    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                    let list = v.as_array().cloned().unwrap_or_default();
                    if list.len() < expect {
                        b.lock()
                            .unwrap()
                            .push(format!("{name} listed {} members", list.len()));
                    }
                    for m in list {
                        if m["Status"] != 1 {
                            b.lock().unwrap().push(format!(
                                "{name} listed {} with status {}",
                                m["Name"], m["Status"]
                            ));
                        }
                    }
                    *n.lock().unwrap() += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            bad,
            samples,
            thread: Some(thread),
        }
    }

    /// Stops and returns (samples taken, bad sightings).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let n = *self.samples.lock().unwrap();
        let bad = self.bad.lock().unwrap().clone();
        (n, bad)
    }
}

fn logs(agents: &[&Agent]) -> String {
    agents
        .iter()
        .map(|a| format!("--- {} ---\n{}", a.spec.name, a.logs()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The keyring listing as (key → (installed on, primary on), NumNodes).
fn listing(a: &Agent) -> (Vec<(String, u64, u64)>, u64) {
    let v: Value = serde_json::from_str(&ok(muster(a, &["keyring", "--list", "--json"]))).unwrap();
    let ring = &v[0];
    let mut out: Vec<(String, u64, u64)> = ring["Keys"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| {
            (
                k.clone(),
                n.as_u64().unwrap(),
                ring["PrimaryKeys"][k].as_u64().unwrap_or(0),
            )
        })
        .collect();
    out.sort();
    (out, ring["NumNodes"].as_u64().unwrap())
}

#[test]
fn five_encrypted_agents_roll_a_new_key_without_losing_a_member() {
    let old = keygen();
    let new = keygen();
    let dirs: Vec<TempDir> = (0..5).map(|_| TempDir::new("keyring")).collect();
    let spec = |i: usize| {
        let mut s = AgentSpec::dev(&format!("k{i}"), &format!("127.0.3.{}", i + 1))
            .args(&["--encrypt", &old])
            .data_dir(dirs[i].path());
        s.dev = false;
        s
    };
    let first = Agent::start(spec(0));
    let join = first.spec.gossip_addr();
    let mut agents = vec![first];
    for i in 1..5 {
        agents.push(Agent::start(spec(i).args(&["--join", &join])));
    }
    let refs: Vec<&Agent> = agents.iter().collect();
    // Formed: everyone lists everyone, and knows everyone's gossip address (a member
    // whose address is not known yet would rightly make `use` refuse).
    assert!(
        wait_for(SPREAD, || agents.iter().all(
            |a| all_alive(a, 5) && muster(a, &["keyring", "--list"]).code == 0
        )),
        "cluster never formed\n{}",
        logs(&refs)
    );
    let (keys, n) = listing(&agents[0]);
    assert_eq!((keys, n), (vec![(old.clone(), 5, 5)], 5));

    let sampler = Sampler::start(
        agents
            .iter()
            .map(|a| (a.spec.name.clone(), a.http()))
            .collect(),
        5,
    );
    // The roll, each step through a different agent, with a registration in the middle.
    let out = ok(muster(&agents[0], &["keyring", "--install", &new]));
    assert!(out.contains("installed on 5 member(s)"), "{out}");
    let r = agents[2].put(
        "/v1/agent/service/register",
        r#"{"Name": "during-roll", "Port": 7000}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let out = ok(muster(&agents[1], &["keyring", "--use", &new]));
    assert!(out.contains("made primary on 5 member(s)"), "{out}");
    // The old key may not go while it is still someone's primary... it is nobody's now.
    let out = ok(muster(&agents[3], &["keyring", "--remove", &old]));
    assert!(out.contains("removed on 5 member(s)"), "{out}");
    assert!(
        wait_for(SPREAD, || agents
            .iter()
            .all(|a| has_service(a, "during-roll"))),
        "registration did not spread during the roll\n{}",
        logs(&refs)
    );
    // Gossip goes on under the new key alone for a while.
    std::thread::sleep(Duration::from_secs(5));
    let (samples, bad) = sampler.finish();
    println!(
        "members sampled {samples} times on 5 agents during the roll; not alive: {}",
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "members lost during the roll: {bad:?}\n{}",
        logs(&refs)
    );
    assert!(samples > 20, "too few samples ({samples})");
    let (keys, n) = listing(&agents[4]);
    assert_eq!((keys, n), (vec![(new.clone(), 5, 5)], 5));
    // The primary cannot be removed: 400, nothing changed.
    let r = muster_tests::request(
        agents[0].http(),
        "DELETE",
        "/v1/operator/keyring",
        Some(format!(r#"{{"Key": "{new}"}}"#).as_bytes()),
        &[],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("primary"), "{}", r.text());

    // Only the new key gets in.
    let outsider = Agent::start(AgentSpec::dev("old-key", "127.0.3.10").args(&[
        "--encrypt",
        &old,
        "--join",
        &join,
    ]));
    let newcomer = Agent::start(AgentSpec::dev("new-key", "127.0.3.11").args(&[
        "--encrypt",
        &new,
        "--join",
        &join,
    ]));
    assert!(
        wait_for(SPREAD, || agents.iter().all(|a| all_alive(a, 6))
            && all_alive(&newcomer, 6)
            && has_service(&newcomer, "during-roll")),
        "the new-key agent did not join\n{}",
        logs(&[&agents[0], &newcomer])
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        members(&agents[0]).iter().all(|(n, _)| n != "old-key"),
        "an agent with only the old key got in"
    );
    assert_eq!(members(&outsider).len(), 1, "{:?}", members(&outsider));
    drop(outsider);
    // Leaves gracefully, so no member counts it as up (and asks it) any more.
    let mut newcomer = newcomer;
    newcomer.signal("TERM");
    assert_eq!(newcomer.wait_exit(Duration::from_secs(20)), Some(0));

    // A restart keeps the new key, even though its command line still says the old one.
    let restarted = {
        let a = agents.remove(2);
        a.signal("TERM");
        let mut a = a;
        assert_eq!(a.wait_exit(Duration::from_secs(20)), Some(0));
        Agent::start(spec(2).args(&["--join", &join]))
    };
    assert!(
        restarted
            .logs()
            .contains("not in the keyring kept in data_dir"),
        "{}",
        restarted.logs()
    );
    assert!(
        wait_for(SPREAD, || status_of(&agents[0], "k2") == Some(1)
            && status_of(&restarted, "k0") == Some(1)),
        "restarted agent did not rejoin with the new key\n{}",
        logs(&[&agents[0], &restarted])
    );
    let (keys, _) = listing(&restarted);
    assert_eq!(keys, vec![(new.clone(), 5, 5)]);
}

#[test]
fn a_plaintext_cluster_moves_to_encryption_without_losing_a_member() {
    let key = keygen();
    let confs: Vec<TempDir> = (0..3).map(|_| TempDir::new("plain2enc")).collect();
    let write_conf = |i: usize, text: &str| {
        std::fs::write(confs[i].path().join("gossip.toml"), text).unwrap();
    };
    for i in 0..3 {
        write_conf(i, "");
    }
    let spec = |i: usize| {
        AgentSpec::dev(&format!("p{i}"), &format!("127.0.3.{}", 21 + i))
            .args(&["--config-dir", confs[i].path().to_str().unwrap()])
    };
    let first = Agent::start(spec(0));
    let join = first.spec.gossip_addr();
    let agents = [
        first,
        Agent::start(spec(1).args(&["--join", &join])),
        Agent::start(spec(2).args(&["--join", &join])),
    ];
    let refs: Vec<&Agent> = agents.iter().collect();
    assert!(
        wait_for(SPREAD, || agents.iter().all(
            |a| all_alive(a, 3) && muster(a, &["keyring", "--list"]).code == 0
        )),
        "cluster never formed\n{}",
        logs(&refs)
    );
    // A first key with the default verify settings would cut the cluster in two: refused
    // by every member, nothing changed.
    let o = muster(&agents[0], &["keyring", "--install", &key]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("encrypt_verify_incoming"), "{}", o.stderr);
    assert_eq!(listing(&agents[1]).0, vec![]);

    let sampler = Sampler::start(
        agents
            .iter()
            .map(|a| (a.spec.name.clone(), a.http()))
            .collect(),
        3,
    );
    let reload_all = |text: &str| {
        for (i, a) in agents.iter().enumerate() {
            write_conf(i, text);
            ok(muster(a, &["reload"]));
        }
        // Let gossip run under the new settings before the next step.
        std::thread::sleep(Duration::from_secs(3));
    };
    // 1. Accept and send plaintext while holding the key; install it everywhere.
    reload_all("encrypt_verify_incoming = false\nencrypt_verify_outgoing = false\n");
    let out = ok(muster(&agents[2], &["keyring", "--install", &key]));
    assert!(out.contains("installed on 3 member(s)"), "{out}");
    std::thread::sleep(Duration::from_secs(3));
    // 2. Seal what is sent (everyone still accepts plaintext from the others).
    reload_all("encrypt_verify_incoming = false\nencrypt_verify_outgoing = true\n");
    // 3. Refuse plaintext.
    reload_all("encrypt_verify_incoming = true\nencrypt_verify_outgoing = true\n");
    let r = agents[1].put(
        "/v1/agent/service/register",
        r#"{"Name": "sealed-now", "Port": 7001}"#,
    );
    assert_eq!(r.status, 200);
    assert!(
        wait_for(SPREAD, || agents
            .iter()
            .all(|a| has_service(a, "sealed-now"))),
        "registration did not spread after the move\n{}",
        logs(&refs)
    );
    let (samples, bad) = sampler.finish();
    println!(
        "members sampled {samples} times on 3 agents during the move; not alive: {}",
        bad.len()
    );
    assert!(
        bad.is_empty(),
        "members lost during the move: {bad:?}\n{}",
        logs(&refs)
    );
    assert_eq!(listing(&agents[0]).0, vec![(key.clone(), 3, 3)]);
    // Plaintext no longer gets in.
    let outsider =
        Agent::start(AgentSpec::dev("plain-late", "127.0.3.30").args(&["--join", &join]));
    std::thread::sleep(Duration::from_secs(4));
    assert!(members(&agents[0]).iter().all(|(n, _)| n != "plain-late"));
    assert_eq!(members(&outsider).len(), 1);
    assert!(agents.iter().all(|a| all_alive(a, 3)));
}
