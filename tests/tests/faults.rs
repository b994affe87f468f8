//! An operator's bad day on real agents (issue 15: membership that never lies), each fault
//! with the contract it must keep. Agents run on 127.0.15.x; answers are read as clients
//! read them: `/v1/agent/members`, catalog and health over HTTP, DNS over TCP.
//!
//! * A node restarted with its clock 2 days ahead (libfaketime preloaded into the agent),
//!   then with the clock corrected, then 1 day behind, with and without a `data_dir`: each
//!   time it is alive on every peer, and its new service in every peer's DNS, within 10 s;
//!   its log stays under 100 lines.
//! * Two back-to-back rolling-restart waves over 8 agents, ten times: each time every agent
//!   lists 8 alive members and serves every service exactly once (HTTP and DNS SRV) within
//!   10 s of the last restart, and still does a few seconds later (no ghost).
//! * A 3/3 partition (iptables on the gossip ports), changes on both sides, healed: every
//!   agent serves the full catalog within 5 s, and every answer sampled every 100 ms from
//!   the heal on is exactly right or flagged `X-Muster-Stale: true`.
//! * 1,000 TTL checks across restarts: expiries do not stall the agent, a peer sees them
//!   critical soon, and the expiry output does not nest.
//!
//! The deadlines are the contract; the measured times are printed. The tests take
//! turns (one lock), so that each has the shared machine's two cores to itself.

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use muster_tests::{try_request, wait_for, Agent, AgentSpec, DropChain, TempDir};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The contract: a restarted node is a full member again, its new state everywhere.
const REJOIN: Duration = Duration::from_secs(10);
/// The contract: after a heal every agent serves the full catalog.
const HEAL: Duration = Duration::from_secs(5);
/// Generous: for setting up (forming a cluster, spreading a thousand services).
const SETTLE: Duration = Duration::from_secs(60);
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- reading answers (tolerant: an agent may be restarting) -----

/// A GET's JSON body and whether the answer was flagged stale; None if it did not answer.
fn read(a: &Agent, path: &str) -> Option<(Value, bool)> {
    let r = try_request(a.http(), "GET", path, None, &[]).ok()?;
    if r.status != 200 {
        return None;
    }
    let stale = r.header("X-Muster-Stale") == Some("true");
    let v = serde_json::from_slice(&r.body).ok()?;
    Some((v, stale))
}

/// (name, Status) of every member `a` lists.
fn members(a: &Agent) -> Option<BTreeSet<(String, u64)>> {
    let (v, _) = read(a, "/v1/agent/members")?;
    v.as_array().map(|l| {
        l.iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap_or_default().to_string(),
                    m["Status"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    })
}

fn all_alive(a: &Agent, names: &[String]) -> bool {
    let want: BTreeSet<(String, u64)> = names.iter().map(|n| (n.clone(), 1)).collect();
    members(a) == Some(want)
}

/// Nodes `a` answers with for service `name`, one entry per instance (duplicates kept).
fn health_nodes(a: &Agent, name: &str) -> Option<Vec<String>> {
    let (v, _) = read(a, &format!("/v1/health/service/{name}"))?;
    let mut nodes: Vec<String> = v
        .as_array()?
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap_or_default().to_string())
        .collect();
    nodes.sort();
    Some(nodes)
}

static IDS: AtomicU16 = AtomicU16::new(1);

/// One DNS query over TCP (no UDP answer limit); None if the agent did not answer.
fn dns_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Option<Message> {
    let mut q = Message::new(
        IDS.fetch_add(1, Ordering::Relaxed),
        MessageType::Query,
        OpCode::Query,
    );
    q.add_query(Query::query(Name::from_ascii(name).ok()?, qtype));
    let bytes = q.to_vec().ok()?;
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(&(bytes.len() as u16).to_be_bytes()).ok()?;
    s.write_all(&bytes).ok()?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).ok()?;
    let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).ok()?;
    let m = Message::from_vec(&reply).ok()?;
    (m.metadata.id == q.metadata.id).then_some(m)
}

/// A records of `NAME.service.local`, sorted.
fn dns_addrs(a: &Agent, name: &str) -> Option<Vec<String>> {
    let m = dns_tcp(a.dns(), &format!("{name}.service.local."), RecordType::A)?;
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(x) => Some(x.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    Some(v)
}

/// SRV answers of `NAME.service.local` as (target, port), duplicates kept, sorted.
fn dns_srv(a: &Agent, name: &str) -> Option<Vec<(String, u16)>> {
    let m = dns_tcp(a.dns(), &format!("{name}.service.local."), RecordType::SRV)?;
    let mut v: Vec<(String, u16)> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some((s.target.to_ascii(), s.port)),
            _ => None,
        })
        .collect();
    v.sort();
    Some(v)
}

fn register(a: &Agent, body: &Value) {
    let r = a.put("/v1/agent/service/register", &body.to_string());
    assert_eq!(r.status, 200, "register {body}: {}", r.text());
}

fn all_logs(agents: &[&Agent]) -> String {
    agents
        .iter()
        .map(|a| {
            let logs = a.logs();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- {} (last lines) ---\n{}", a.spec.name, tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Stops an agent gracefully (SIGTERM) and starts it again with `spec`; returns the new
/// agent and when it was spawned.
fn restart(a: &mut Agent, spec: AgentSpec) -> Instant {
    a.signal("TERM");
    assert_eq!(
        a.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{} did not stop cleanly",
        a.spec.name
    );
    let at = Instant::now();
    *a = Agent::start(spec);
    at
}

fn names(agents: &[Agent]) -> Vec<String> {
    let mut v: Vec<String> = agents.iter().map(|a| a.spec.name.clone()).collect();
    v.sort();
    v
}

fn form(agents: &[Agent]) {
    let everyone = names(agents);
    for a in agents {
        assert!(
            wait_for(SETTLE, || all_alive(a, &everyone)),
            "{} never saw everyone alive: {:?}\n{}",
            a.spec.name,
            members(a),
            all_logs(&[a])
        );
    }
}

// ----- clock jumps -----

fn faketime(spec: &AgentSpec, offset: Option<&str>) -> AgentSpec {
    let mut spec = spec.clone();
    spec.env.clear();
    if let Some(offset) = offset {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} missing: install the faketime package (tests/run.sh does)"
        );
        spec = spec.env("LD_PRELOAD", LIBFAKETIME).env("FAKETIME", offset);
    }
    spec
}

/// How far ahead of the real clock the agent's clock runs, in seconds, read from the time
/// stamp of its first log line (so a test cannot pass with the clock unmoved).
fn clock_offset(a: &Agent) -> i64 {
    let logs = a.logs();
    let line = logs.lines().next().unwrap_or_default();
    let at = line
        .char_indices()
        .find_map(|(i, _)| {
            // "2026-11-22T04:15:49": ASCII, so cutting it is safe once it matched.
            let s = line.get(i..i + 19)?;
            let b = s.as_bytes();
            (b.is_ascii()
                && b[4] == b'-'
                && b[7] == b'-'
                && b[10] == b'T'
                && b[..4].iter().all(u8::is_ascii_digit))
            .then_some(s)
        })
        .unwrap_or_else(|| panic!("no time stamp in the log line {line:?}"));
    let out = Command::new("date")
        .args(["-u", "-d", &format!("{at}Z"), "+%s"])
        .output()
        .expect("date");
    let logged: i64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("date said {:?}: {e}", out));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    logged - now
}

/// Four agents; the third is restarted with its clock 2 days ahead, then corrected, then
/// 1 day behind (SIGTERM each time), then crashed and restarted 2 days ahead and corrected
/// again, registering a new service after each restart.
fn clock_jumps(tag: &str, first_ip: u8, data_dir: bool) {
    let ips: Vec<String> = (0..4)
        .map(|i| format!("127.0.15.{}", first_ip + i))
        .collect();
    let dir = TempDir::new(&format!("clock-{tag}"));
    let spec = |i: usize| {
        let s = AgentSpec::dev(&format!("{tag}{i}"), &ips[i]);
        if data_dir {
            let d = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&d).unwrap();
            s.data_dir(&d)
        } else {
            s
        }
    };
    let seed = Agent::start(spec(0));
    let join = seed.spec.gossip_addr();
    let mut agents = vec![seed];
    for i in 1..4 {
        agents.push(Agent::start(spec(i).args(&["--join", &join])));
    }
    form(&agents);
    let c = 2;
    let c_ip = ips[c].clone();
    register(
        &agents[c],
        &json!({"Name": format!("{tag}-jump-0"), "Port": 7000}),
    );
    let everyone = names(&agents);

    // (step, clock offset, crash instead of a graceful stop)
    let steps = [
        (1, Some("+2d"), false),
        (2, None, false),
        (3, Some("-1d"), false),
        (4, Some("+2d"), true),
        (5, None, true),
    ];
    for (step, offset, crash) in steps {
        let clock = offset.unwrap_or("corrected");
        let how = if crash { "kill -9" } else { "SIGTERM" };
        let spec = faketime(&agents[c].spec, offset);
        let started = if crash {
            agents[c].kill9();
            let at = Instant::now();
            agents[c] = Agent::start(spec);
            at
        } else {
            restart(&mut agents[c], spec)
        };
        let offset_s = clock_offset(&agents[c]);
        let want_s = match offset {
            Some("+2d") => 2 * 86_400,
            Some("-1d") => -86_400,
            _ => 0,
        };
        assert!(
            (offset_s - want_s).abs() < 600,
            "{tag}: the agent's clock is {offset_s} s off, not {want_s} s: is libfaketime working?"
        );
        let service = format!("{tag}-jump-{step}");
        register(&agents[c], &json!({"Name": service, "Port": 7000 + step}));
        // What C holds now: with a data_dir every earlier service, without only the new one.
        let held: Vec<usize> = if data_dir {
            (0..=step).collect()
        } else {
            vec![step]
        };
        let right = |a: &Agent| -> bool {
            if !all_alive(a, &everyone) {
                return false;
            }
            if dns_addrs(a, &service).as_deref() != Some(std::slice::from_ref(&c_ip)) {
                return false;
            }
            // Every earlier service exactly as C holds it now: no stale version kept.
            (0..=step).all(|k| {
                let want: Vec<String> = if held.contains(&k) {
                    vec![format!("{tag}{c}")]
                } else {
                    vec![]
                };
                health_nodes(a, &format!("{tag}-jump-{k}")) == Some(want)
            })
        };
        let ok = wait_for(REJOIN * 3, || agents.iter().all(right));
        let took = started.elapsed();
        let describe = || {
            agents
                .iter()
                .map(|a| {
                    format!(
                        "{}: members {:?}, dns {:?}",
                        a.spec.name,
                        members(a),
                        dns_addrs(a, &service)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            ok,
            "{tag}: after the restart ({how}) with clock {clock}, not every agent has {} back:\n{}\n{}",
            agents[c].spec.name,
            describe(),
            all_logs(&agents.iter().collect::<Vec<_>>())
        );
        // Anything still looping would show in the log by now.
        std::thread::sleep(Duration::from_secs(3));
        let lines = agents[c].logs().lines().count();
        println!(
            "clock jump ({tag}, data_dir {data_dir}): {how}, clock {clock} ({offset_s:+} s): member everywhere with its new service in {:.2} s; {lines} log lines since the restart",
            took.as_secs_f64()
        );
        assert!(
            took <= REJOIN,
            "{tag}: clock {clock}: took {took:?}, the contract is {REJOIN:?}\n{}",
            describe()
        );
        assert!(
            lines < 100,
            "{tag}: clock {clock}: {lines} log lines since the restart:\n{}",
            agents[c].logs()
        );
    }
}

#[test]
fn a_node_restarted_with_its_clock_far_off_is_a_member_again_at_once_without_data_dir() {
    let _turn = one_at_a_time();
    clock_jumps("cj", 1, false);
}

#[test]
fn a_node_restarted_with_its_clock_far_off_is_a_member_again_at_once_with_data_dir() {
    let _turn = one_at_a_time();
    clock_jumps("cd", 11, true);
}

// ----- rolling restarts -----

const ROLLING_AGENTS: usize = 8;
const SERVICES_PER_AGENT: usize = 5;

/// Every agent lists all 8 alive and serves each service exactly once per agent, over HTTP
/// and DNS SRV; or what is wrong.
fn rolling_state_right(agents: &[Agent], everyone: &[String]) -> Result<(), String> {
    let want_nodes: Vec<String> = everyone.to_vec();
    for a in agents {
        if !all_alive(a, everyone) {
            return Err(format!("{} lists {:?}", a.spec.name, members(a)));
        }
        for s in 1..=SERVICES_PER_AGENT {
            let name = format!("svc{s}");
            let nodes = health_nodes(a, &name);
            if nodes.as_ref() != Some(&want_nodes) {
                return Err(format!("{} HTTP {name}: {nodes:?}", a.spec.name));
            }
            let srv = dns_srv(a, &name);
            let want_srv: Vec<(String, u16)> = everyone
                .iter()
                .map(|n| (format!("{n}.node.local."), 9000 + s as u16))
                .collect();
            if srv.as_ref() != Some(&want_srv) {
                return Err(format!("{} DNS SRV {name}: {srv:?}", a.spec.name));
            }
        }
    }
    Ok(())
}

#[test]
fn rolling_restarts_leave_no_ghost() {
    let _turn = one_at_a_time();
    let dir = TempDir::new("rolling");
    // Half the agents keep their services in a data_dir (registered over HTTP), half read
    // them from a config file (no data_dir): both ways an operator runs them.
    let config = dir.path().join("services.toml");
    let mut toml = String::new();
    for s in 1..=SERVICES_PER_AGENT {
        toml.push_str(&format!(
            "[[service]]\nname = \"svc{s}\"\nport = {}\n\n",
            9000 + s
        ));
    }
    std::fs::write(&config, toml).unwrap();
    let spec = |i: usize| {
        let s = AgentSpec::dev(&format!("r{i}"), &format!("127.0.15.{}", 20 + i));
        if i.is_multiple_of(2) {
            let d = dir.path().join(format!("r{i}"));
            std::fs::create_dir_all(&d).unwrap();
            s.data_dir(&d)
        } else {
            s.args(&["--config", config.to_str().unwrap()])
        }
    };
    // Every agent is told two members to join (retried until they answer), as an operator
    // configures them, so that restarting the first one is no different from the others.
    let specs: Vec<AgentSpec> = (0..ROLLING_AGENTS).map(spec).collect();
    let seeds = [specs[0].gossip_addr(), specs[1].gossip_addr()];
    let mut agents: Vec<Agent> = Vec::new();
    for s in specs {
        agents.push(Agent::start(
            s.args(&["--join", &seeds[0], "--join", &seeds[1]]),
        ));
    }
    for (i, a) in agents.iter().enumerate() {
        if i.is_multiple_of(2) {
            for s in 1..=SERVICES_PER_AGENT {
                register(a, &json!({"Name": format!("svc{s}"), "Port": 9000 + s}));
            }
        }
    }
    let everyone = names(&agents);
    let ok = wait_for(SETTLE, || rolling_state_right(&agents, &everyone).is_ok());
    assert!(
        ok,
        "the cluster never formed: {:?}",
        rolling_state_right(&agents, &everyone)
    );

    let mut times = Vec::new();
    for rep in 1..=10 {
        let mut last = Instant::now();
        let began = Instant::now();
        let restarts = 2 * agents.len();
        for k in 0..restarts {
            let a = &mut agents[k % ROLLING_AGENTS];
            let spec = a.spec.clone();
            last = restart(a, spec);
            // The next restart a second after this one began (none after the last).
            let next = last + Duration::from_secs(1);
            if let (Some(wait), true) = (
                next.checked_duration_since(Instant::now()),
                k + 1 < restarts,
            ) {
                std::thread::sleep(wait);
            }
        }
        let spacing = (last - began) / (restarts as u32 - 1);
        let ok = wait_for(REJOIN * 3, || {
            rolling_state_right(&agents, &everyone).is_ok()
        });
        let took = last.elapsed();
        assert!(
            ok,
            "repetition {rep}: not converged {:?} after the last restart: {:?}\n{}",
            took,
            rolling_state_right(&agents, &everyone),
            all_logs(&agents.iter().collect::<Vec<_>>())
        );
        // Still right a little later: no ghost turns up once things look settled.
        std::thread::sleep(Duration::from_secs(3));
        if let Err(e) = rolling_state_right(&agents, &everyone) {
            panic!("repetition {rep}: right after {took:?}, then wrong again: {e}");
        }
        println!(
            "rolling restart, repetition {rep}: restarts {:.2} s apart; converged {:.2} s after the last restart",
            spacing.as_secs_f64(),
            took.as_secs_f64()
        );
        times.push(took);
    }
    let worst = times.iter().max().copied().unwrap_or_default();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "rolling restart: 10 × two waves over {ROLLING_AGENTS} agents: converged after {:.2} s on average, {:.2} s at worst",
        mean.as_secs_f64(),
        worst.as_secs_f64()
    );
    for (rep, took) in times.iter().enumerate() {
        assert!(
            *took <= REJOIN,
            "repetition {}: converged only after {took:?}, the contract is {REJOIN:?}",
            rep + 1
        );
    }
}

// ----- a healed partition -----

/// Drops gossip (UDP and TCP to the gossip ports) between two groups of agents while it
/// lives. Only these agents' gossip ports are cut, so other agents on the same addresses
/// (another test run) are not touched.
fn cut_between(a: &[&Agent], b: &[&Agent]) -> DropChain {
    let cut = DropChain::new("F");
    for (from, to) in a
        .iter()
        .flat_map(|x| b.iter().map(move |y| (x, y)))
        .flat_map(|(x, y)| [(x, y), (y, x)])
    {
        let port = to.spec.gossip_port.to_string();
        for proto in ["udp", "tcp"] {
            cut.drop_matching(&[
                "-s",
                &from.spec.ip,
                "-d",
                &to.spec.ip,
                "-p",
                proto,
                "--dport",
                &port,
            ]);
        }
    }
    cut
}

/// One agent's answers at one moment: the service names of `/v1/catalog/services` and the
/// nodes of the services registered during the cut, each with its stale flag.
#[derive(Debug)]
struct Sample {
    services: Option<(BTreeSet<String>, bool)>,
    split: Vec<Option<(Vec<String>, bool)>>,
}

fn sample(a: &Agent, split: &[&str]) -> Sample {
    let services = read(a, "/v1/catalog/services")
        .and_then(|(v, stale)| Some((v.as_object()?.keys().cloned().collect(), stale)));
    let split = split
        .iter()
        .map(|s| {
            let (v, stale) = read(a, &format!("/v1/health/service/{s}"))?;
            let nodes = v
                .as_array()?
                .iter()
                .map(|e| e["Node"]["Node"].as_str().unwrap_or_default().to_string())
                .collect();
            Some((nodes, stale))
        })
        .collect();
    Sample { services, split }
}

#[test]
fn a_healed_partition_converges_in_seconds_and_never_answers_wrong_unflagged() {
    let _turn = one_at_a_time();
    let n = 6;
    let spec = |i: usize| AgentSpec::dev(&format!("h{i}"), &format!("127.0.15.{}", 40 + i));
    let seed = Agent::start(spec(0));
    let join = seed.spec.gossip_addr();
    let mut agents = vec![seed];
    for i in 1..n {
        agents.push(Agent::start(spec(i).args(&["--join", &join])));
    }
    form(&agents);
    for (i, a) in agents.iter().enumerate() {
        register(a, &json!({"Name": format!("base-{i}"), "Port": 8000 + i}));
    }
    let base: BTreeSet<String> = (0..n).map(|i| format!("base-{i}")).collect();
    for a in &agents {
        assert!(
            wait_for(SETTLE, || sample(a, &[])
                .services
                .is_some_and(|(s, _)| s == base)),
            "{} never saw every service: {:?}",
            a.spec.name,
            sample(a, &[])
        );
    }
    let everyone = names(&agents);
    let (left, right) = agents.split_at(3);
    let left: Vec<&Agent> = left.iter().collect();
    let right: Vec<&Agent> = right.iter().collect();

    let cut = cut_between(&left, &right);
    // Each side declares the other down.
    for (side, other) in [(&left, &right), (&right, &left)] {
        let gone: BTreeSet<String> = other.iter().map(|a| a.spec.name.clone()).collect();
        for a in side.iter() {
            assert!(
                wait_for(SETTLE, || members(a).is_some_and(|m| m
                    .iter()
                    .filter(|(name, s)| gone.contains(name) && *s == 4)
                    .count()
                    == gone.len())),
                "{} never saw the other side down: {:?}",
                a.spec.name,
                members(a)
            );
        }
    }
    // Changes on both sides during the cut: a new service and a deregistration each.
    register(left[0], &json!({"Name": "split-a", "Port": 8100}));
    register(right[0], &json!({"Name": "split-b", "Port": 8101}));
    for (a, id) in [(left[1], "base-1"), (right[1], "base-4")] {
        let r = a.put(&format!("/v1/agent/service/deregister/{id}"), "");
        assert_eq!(r.status, 200, "deregister {id}: {}", r.text());
    }
    // Each side learns its own changes.
    for (side, new, gone) in [(&left, "split-a", "base-1"), (&right, "split-b", "base-4")] {
        for a in side.iter() {
            assert!(
                wait_for(SETTLE, || sample(a, &[])
                    .services
                    .is_some_and(|(s, _)| s.contains(new) && !s.contains(gone))),
                "{} never saw its own side's changes: {:?}",
                a.spec.name,
                sample(a, &[])
            );
        }
    }

    let want: BTreeSet<String> = ["base-0", "base-2", "base-3", "base-5", "split-a", "split-b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let split_nodes = [vec!["h0".to_string()], vec!["h3".to_string()]];
    let exact = |s: &Sample| -> bool {
        s.services.as_ref().is_some_and(|(v, _)| *v == want)
            && s.split
                .iter()
                .zip(&split_nodes)
                .all(|(got, want)| got.as_ref().is_some_and(|(v, _)| v == want))
    };
    // Each answer on its own must be right or flagged (the flag is per answer: it may go
    // and come back between two reads, e.g. when a member renews its boot stamp).
    let right_or_flagged = |s: &Sample| -> bool {
        let services = s
            .services
            .as_ref()
            .is_some_and(|(v, stale)| *stale || *v == want);
        let split = s
            .split
            .iter()
            .zip(&split_nodes)
            .all(|(got, want)| got.as_ref().is_some_and(|(v, stale)| *stale || v == want));
        services && split
    };

    // Just before the heal, the cut still holds: neither side has the other's news.
    for (side, theirs) in [(&left, "split-b"), (&right, "split-a")] {
        for a in side.iter() {
            let s = sample(a, &[]);
            assert!(
                s.services
                    .as_ref()
                    .is_some_and(|(v, _)| !v.contains(theirs)),
                "{} learnt {theirs} through the cut: {s:?}",
                a.spec.name
            );
        }
    }

    let healed = Instant::now();
    drop(cut);
    let mut unflagged_wrong: Vec<String> = Vec::new();
    let mut converged: Option<Duration> = None;
    let mut unflagged_from: Option<Duration> = None;
    let mut samples = 0;
    let mut exact_at: Vec<Option<Duration>> = vec![None; n];
    let mut unstale_at: Vec<Option<Duration>> = vec![None; n];
    loop {
        let tick = Instant::now();
        let round: Vec<Sample> = std::thread::scope(|scope| {
            let handles: Vec<_> = agents
                .iter()
                .map(|a| scope.spawn(move || sample(a, &["split-a", "split-b"])))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("sampler"))
                .collect()
        });
        // When this round of answers was complete: an upper bound for each of them.
        let at = healed.elapsed();
        samples += 1;
        for (i, s) in round.iter().enumerate() {
            if exact_at[i].is_none() && exact(s) {
                exact_at[i] = Some(at);
            }
            if unstale_at[i].is_none() && s.services.as_ref().is_some_and(|(_, st)| !st) {
                unstale_at[i] = Some(at);
            }
        }
        for (a, s) in agents.iter().zip(&round) {
            if !right_or_flagged(s) {
                unflagged_wrong.push(format!("{:.1} s: {}: {s:?}", at.as_secs_f64(), a.spec.name));
            }
        }
        if converged.is_none() && round.iter().all(exact) {
            converged = Some(at);
        }
        let none_flagged = round
            .iter()
            .all(|s| s.services.as_ref().is_some_and(|(_, st)| !st));
        if converged.is_some() && none_flagged {
            unflagged_from = Some(at);
            break;
        }
        if at > SETTLE {
            break;
        }
        if let Some(rest) = Duration::from_millis(100).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let describe = || {
        agents
            .iter()
            .map(|a| format!("{}: {:?}", a.spec.name, sample(a, &["split-a", "split-b"])))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let converged = converged.unwrap_or_else(|| {
        panic!(
            "not every agent had the full catalog {SETTLE:?} after the heal:\n{}\n{}",
            describe(),
            all_logs(&agents.iter().collect::<Vec<_>>())
        )
    });
    println!(
        "partition 3/3 healed: every agent exact {:.2} s after the heal, no answer flagged stale after {:.2} s; {samples} samples of 6 agents",
        converged.as_secs_f64(),
        unflagged_from.map_or(f64::NAN, |d| d.as_secs_f64())
    );
    for (i, a) in agents.iter().enumerate() {
        println!(
            "  {}: exact after {:.2} s, unflagged after {:.2} s",
            a.spec.name,
            exact_at[i].map_or(f64::NAN, |d| d.as_secs_f64()),
            unstale_at[i].map_or(f64::NAN, |d| d.as_secs_f64())
        );
    }
    assert!(
        unflagged_wrong.is_empty(),
        "{} wrong answers not flagged stale after the heal, the first: {:#?}",
        unflagged_wrong.len(),
        &unflagged_wrong[..unflagged_wrong.len().min(10)]
    );
    assert!(
        unflagged_from.is_some(),
        "answers still flagged stale {SETTLE:?} after the heal:\n{}",
        describe()
    );
    // Members and DNS agree with the catalog.
    for a in &agents {
        assert!(all_alive(a, &everyone), "{}: {:?}", a.spec.name, members(a));
        assert_eq!(
            dns_addrs(a, "split-a"),
            Some(vec!["127.0.15.40".to_string()])
        );
        assert_eq!(
            dns_addrs(a, "split-b"),
            Some(vec!["127.0.15.43".to_string()])
        );
        assert_eq!(dns_addrs(a, "base-1"), Some(vec![]));
        assert_eq!(dns_addrs(a, "base-4"), Some(vec![]));
    }
    assert!(
        converged <= HEAL,
        "full catalog everywhere only {converged:?} after the heal, the contract is {HEAL:?}"
    );
}

// ----- a thousand TTL checks across restarts -----

const TTL_CHECKS: usize = 1000;
const TTL: Duration = Duration::from_secs(30);

/// Runs `f(0..n)` on 8 threads.
fn in_parallel(n: usize, f: impl Fn(usize) + Sync) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..8 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                f(i);
            });
        }
    });
}

fn pass(a: &Agent, i: usize, note: &str) {
    let path = format!("/v1/agent/check/pass/service:ttl-{i}?note={note}");
    let r = a.put(&path, "");
    assert_eq!(r.status, 200, "{path}: {}", r.text());
}

/// (passing, critical) counts of `node`'s TTL checks in `from`'s `/v1/health/state/*`.
fn ttl_counts(from: &Agent, node: &str) -> Option<(usize, usize)> {
    let count = |state: &str| -> Option<usize> {
        let (v, _) = read(from, &format!("/v1/health/state/{state}"))?;
        Some(
            v.as_array()?
                .iter()
                .filter(|c| {
                    c["Node"] == node
                        && c["CheckID"]
                            .as_str()
                            .is_some_and(|id| id.starts_with("service:ttl-"))
                })
                .count(),
        )
    };
    Some((count("passing")?, count("critical")?))
}

/// Status and output of check `id` as `from` answers for `node`.
fn check_seen(from: &Agent, node: &str, id: &str) -> Option<(String, String)> {
    let (v, _) = read(from, &format!("/v1/health/node/{node}"))?;
    let c = v.as_array()?.iter().find(|c| c["CheckID"] == id)?;
    Some((
        c["Status"].as_str()?.to_string(),
        c["Output"].as_str()?.to_string(),
    ))
}

/// Registers services back to back (20 ms apart) until `stop`; returns when each was sent
/// and how long its answer took, both from `t0`.
fn probe_registrations(
    a: &Agent,
    t0: Instant,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<(Duration, Duration)> {
    let mut took = Vec::new();
    let mut k = 0;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let body = json!({"Name": format!("probe-{k}"), "Port": 1}).to_string();
        let r = try_request(
            a.http(),
            "PUT",
            "/v1/agent/service/register",
            Some(body.as_bytes()),
            &[],
        )
        .unwrap_or_else(|e| panic!("registration probe-{k}: {e}"));
        assert_eq!(r.status, 200, "registration probe-{k}: {}", r.text());
        took.push((t - t0, t.elapsed()));
        // Keep the node's record small: each probe goes again once answered.
        let r = a.put(&format!("/v1/agent/service/deregister/probe-{k}"), "");
        assert_eq!(r.status, 200, "deregistration probe-{k}: {}", r.text());
        k += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    took
}

#[test]
fn a_thousand_ttl_checks_across_restarts_neither_stall_the_agent_nor_nest() {
    let _turn = one_at_a_time();
    let dir = TempDir::new("ttl");
    let data = dir.path().join("t0");
    std::fs::create_dir_all(&data).unwrap();
    let mut a = Agent::start(AgentSpec::dev("t0", "127.0.15.60").data_dir(&data));
    let b =
        Agent::start(AgentSpec::dev("t1", "127.0.15.61").args(&["--join", &a.spec.gossip_addr()]));
    // Restarts of A find the cluster through B.
    a.spec = a.spec.clone().args(&["--join", &b.spec.gossip_addr()]);
    let everyone = vec!["t0".to_string(), "t1".to_string()];
    assert!(wait_for(SETTLE, || all_alive(&b, &everyone)));
    let ttl = format!("{}s", TTL.as_secs());
    in_parallel(TTL_CHECKS, |i| {
        register(
            &a,
            &json!({"Name": format!("ttl-{i}"), "Port": 1000 + i,
                    "Check": {"TTL": ttl, "Status": "passing"}}),
        )
    });
    pass(&a, 0, "alive");
    assert!(
        wait_for(SETTLE, || ttl_counts(&b, "t0") == Some((TTL_CHECKS, 0))),
        "the peer never saw {TTL_CHECKS} passing checks: {:?}",
        ttl_counts(&b, "t0")
    );
    let expired = (
        "critical".to_string(),
        "TTL expired (last output before timeout follows): alive".to_string(),
    );

    // 1. A restart after 10 s down: every restored check has what is left of its TTL (the
    //    20 s after the restart that a refresh just before the stop would leave), and all
    //    run out at once while registrations go on.
    in_parallel(TTL_CHECKS, |i| {
        pass(&a, i, if i == 0 { "alive" } else { "" })
    });
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(30)), Some(0));
    std::thread::sleep(Duration::from_secs(10));
    let spec = a.spec.clone();
    let restarted = Instant::now();
    a = Agent::start(spec);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (latencies, first, all, peer) = std::thread::scope(|scope| {
        let prober = scope.spawn(|| probe_registrations(&a, restarted, &stop));
        let mut first = None;
        let all = loop {
            let critical = read(&a, "/v1/agent/checks")
                .and_then(|(v, _)| {
                    Some(
                        v.as_object()?
                            .values()
                            .filter(|c| {
                                c["Status"] == "critical"
                                    && c["CheckID"]
                                        .as_str()
                                        .is_some_and(|id| id.starts_with("service:ttl-"))
                            })
                            .count(),
                    )
                })
                .unwrap_or(0);
            if critical > 0 && first.is_none() {
                first = Some(restarted.elapsed());
            }
            if critical == TTL_CHECKS {
                break restarted.elapsed();
            }
            assert!(
                restarted.elapsed() < TTL * 3,
                "only {critical} of {TTL_CHECKS} TTL checks expired {:?} after the restart",
                restarted.elapsed()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let peer_ok = wait_for(SETTLE, || ttl_counts(&b, "t0") == Some((0, TTL_CHECKS)));
        let peer = restarted.elapsed();
        stop.store(true, Ordering::Relaxed);
        assert!(
            peer_ok,
            "the peer never saw all {TTL_CHECKS} critical: {:?}",
            ttl_counts(&b, "t0")
        );
        let latencies = prober.join().expect("prober");
        (latencies, first.unwrap_or(all), all, peer)
    });
    // The registrations in flight while the checks ran out (a poll late: `first` is when
    // the first expiry was seen, up to 100 ms after it happened).
    let during: Vec<Duration> = latencies
        .iter()
        .filter(|(sent, took)| *sent + *took + Duration::from_millis(100) >= first && *sent <= all)
        .map(|(_, took)| *took)
        .collect();
    let slowest = during.iter().max().copied().unwrap_or_default();
    let slowest_any = latencies.iter().map(|(_, t)| *t).max().unwrap_or_default();
    println!(
        "TTL, restart after 10 s down: {TTL_CHECKS} checks ran out {:.2}-{:.2} s after the restart (TTL {TTL:?}); \
         {} registrations while they ran out, the slowest answered in {:.3} s ({:.3} s the slowest of all {}); \
         the peer saw all critical {:.2} s after the last expired",
        first.as_secs_f64(),
        all.as_secs_f64(),
        during.len(),
        slowest.as_secs_f64(),
        slowest_any.as_secs_f64(),
        latencies.len(),
        (peer - all).as_secs_f64()
    );
    assert!(
        !during.is_empty(),
        "no registration was made while the checks ran out: the test did not test that"
    );
    assert!(
        slowest_any < Duration::from_secs(2),
        "a registration took {slowest_any:?} while the TTL checks expired"
    );
    assert!(
        all < TTL,
        "restored checks got a full TTL again ({all:?}) although the agent was down for a moment only"
    );
    assert_eq!(check_seen(&a, "t0", "service:ttl-0"), Some(expired.clone()));
    assert_eq!(check_seen(&b, "t0", "service:ttl-0"), Some(expired.clone()));

    // 2. All passing again, then a restart after a downtime longer than the TTL: the
    //    checks are judged expired from the stored clock stamp as the agent starts, so the
    //    peer never sees them passing again.
    in_parallel(TTL_CHECKS, |i| {
        pass(&a, i, if i == 0 { "alive" } else { "" })
    });
    assert!(
        wait_for(SETTLE, || ttl_counts(&b, "t0") == Some((TTL_CHECKS, 0))),
        "the peer never saw the checks passing again: {:?}",
        ttl_counts(&b, "t0")
    );
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(30)), Some(0));
    std::thread::sleep(TTL + Duration::from_secs(1));
    let spec = a.spec.clone();
    let started = Instant::now();
    a = Agent::start(spec);
    let ready = started.elapsed();
    // Until the peer has the restarted agent's state it may serve the state it remembers
    // (all passing), flagged stale; never unflagged.
    let passing_seen = std::sync::atomic::AtomicUsize::new(0);
    let flagged_seen = std::sync::atomic::AtomicUsize::new(0);
    let peer_ok = wait_for(SETTLE, || {
        for s in ["ttl-0", "ttl-999"] {
            match read(&b, &format!("/v1/health/service/{s}?passing")) {
                Some((v, stale)) if v.as_array().is_some_and(|l| !l.is_empty()) => {
                    let seen = if stale { &flagged_seen } else { &passing_seen };
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        all_alive(&b, &everyone) && ttl_counts(&b, "t0") == Some((0, TTL_CHECKS))
    });
    let peer = started.elapsed();
    assert!(
        peer_ok,
        "the peer never saw the restarted agent's checks critical: {:?}",
        ttl_counts(&b, "t0")
    );
    println!(
        "TTL, restart after {:?} down: the agent answered {:.2} s after its start with the checks already expired; the peer saw all {TTL_CHECKS} critical {:.2} s after the start ({} answers with the remembered passing instance in between, all flagged stale)",
        TTL + Duration::from_secs(1),
        ready.as_secs_f64(),
        peer.as_secs_f64(),
        flagged_seen.load(Ordering::Relaxed)
    );
    assert_eq!(
        passing_seen.load(Ordering::Relaxed),
        0,
        "the peer served an expired instance as passing, unflagged, after the restart"
    );
    // Past one more TTL, the restored timers have run out again: still not nested.
    std::thread::sleep(TTL + Duration::from_secs(2));
    assert_eq!(check_seen(&a, "t0", "service:ttl-0"), Some(expired.clone()));
    assert_eq!(check_seen(&b, "t0", "service:ttl-0"), Some(expired));
    assert_eq!(ttl_counts(&a, "t0"), Some((0, TTL_CHECKS)));
}
