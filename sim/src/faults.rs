//! An operator's bad days, replayed on the simulator, each with the invariant it must keep:
//!
//! * [`clock_jump`]: a node restarts with a boot stamp guess far below (or far above) what
//!   the cluster remembers of it — its clock was corrected, or set back a day — with or
//!   without a data directory. It must be a full member again, its new state everywhere,
//!   within seconds, after a bounded number of stamp moves.
//! * [`rolling_restart`]: every node restarted in turn, twice, a second apart. Afterwards
//!   every node must list every other as alive and hold its exact state: no "left" ghost.
//! * [`partition_heal`]: the cluster cut in two halves, changes made on both sides, then
//!   healed. Every node must hold every change within seconds, and every answer in between
//!   must be either right or flagged stale.
//!
//! Each returns what it measured, or the first broken invariant.

use crate::fleet::{service, Fleet, FleetConfig};
use muster_proto::gossip::{EntryKey, Value};
use muster_proto::model::MemberStatus;
use std::sync::Arc;
use std::time::Duration;

/// What a scenario measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Until every node held the restarted/healed state (from the last restart or the heal).
    pub converged_after: Duration,
    /// Stamp moves (boot or version jumps) the scenario caused, over all nodes.
    pub stamp_moves: usize,
    /// Samples taken of every node's answers (partition heal).
    pub samples: usize,
    /// Until no node flagged any answer stale any more (partition heal).
    pub unflagged_after: Duration,
}

fn small_fleet(nodes: usize, seed: u64, loss: f64) -> Result<Fleet, String> {
    let mut cfg = FleetConfig::new(nodes, 5, loss, seed);
    cfg.join_every = Duration::from_millis(50);
    let mut f = Fleet::new(cfg);
    f.form(Duration::from_secs(60))
        .ok_or_else(|| format!("seed {seed}: the fleet did not form"))?;
    Ok(f)
}

/// Publishes a service no earlier run of `host` had.
fn new_service(f: &mut Fleet, host: usize, k: usize) {
    let svc = service(host, 100 + k, 7);
    let key = EntryKey::Service(svc.id.as_str().into());
    f.sim
        .publish(host, vec![(key, Some(Value::Service(Arc::new(svc))))]);
}

/// Runs until every node holds the truth about every other (members alive, exact state),
/// checking every 100 ms, up to `limit`.
fn until_exact(f: &mut Fleet, limit: Duration) -> Result<Duration, String> {
    let start = f.sim.now;
    loop {
        if f.converged() && f.check_exact().is_ok() {
            return Ok(f.sim.now - start);
        }
        if f.sim.now - start >= limit {
            return Err(f
                .check_exact()
                .err()
                .unwrap_or_else(|| "members or versions still differ".into()));
        }
        f.sim.run_for(Duration::from_millis(100));
    }
}

/// A node restarts with its boot stamp guess `shift` away from the previous run's (a clock
/// two days ahead, then corrected, is a large negative shift), without a data directory
/// unless `data_dir`.
pub fn clock_jump(seed: u64, shift: i64, data_dir: bool) -> Result<Report, String> {
    let mut f = small_fleet(6, seed, 0.0)?;
    let c = 2;
    let clock = |secs: i64| -> u64 { (1_700_000_000i64 + secs).max(1) as u64 * 1_000_000 };
    // The first run had a clock-based guess; give it one far from the next.
    f.sim.hosts[c].data_dir = data_dir;
    f.sim.crash(c);
    f.sim.hosts[c].boot_guess = clock(0);
    f.sim.start(c, Some(0));
    until_exact(&mut f, Duration::from_secs(10))
        .map_err(|e| format!("seed {seed}: first run did not settle: {e}"))?;
    let moves_before = f.log.borrow().stamps.len();
    f.sim.leave(c);
    f.sim.run_for(Duration::from_secs(1));
    f.sim.hosts[c].boot_guess = clock(shift);
    f.sim.start(c, Some(0));
    new_service(&mut f, c, 1);
    let took = until_exact(&mut f, Duration::from_secs(10)).map_err(|e| {
        format!(
            "seed {seed}: shift {shift}s data_dir={data_dir}: not a full member within 10 s: {e}"
        )
    })?;
    let moves = f.log.borrow().stamps.len() - moves_before;
    if moves > 10 {
        return Err(format!(
            "seed {seed}: shift {shift}s: {moves} stamp moves (a loop, not a jump)"
        ));
    }
    Ok(Report {
        converged_after: took,
        stamp_moves: moves,
        samples: 0,
        unflagged_after: Duration::ZERO,
    })
}

/// Two back-to-back waves of graceful restarts over every node, one node a second.
pub fn rolling_restart(seed: u64, nodes: usize, data_dir: bool) -> Result<Report, String> {
    let mut f = small_fleet(nodes, seed, 0.0)?;
    for h in f.sim.hosts.iter_mut() {
        h.data_dir = data_dir;
    }
    let moves_before = f.log.borrow().stamps.len();
    for wave in 0..2 {
        for i in 0..nodes {
            f.sim.leave(i);
            // A restart takes a moment (process exit, start, bind).
            f.sim.run_for(Duration::from_millis(100));
            let join = (i + 1) % nodes;
            f.sim.hosts[i].boot_guess = 1 + wave as u64;
            f.sim.start(i, Some(join));
            f.sim.run_for(Duration::from_millis(900));
        }
    }
    let took = until_exact(&mut f, Duration::from_secs(10))
        .map_err(|e| format!("seed {seed}: after two waves: {e}"))?;
    for (j, hj) in f.sim.hosts.iter().enumerate() {
        let Some(n) = hj.node.as_ref() else { continue };
        for (x, hx) in f.sim.hosts.iter().enumerate() {
            if j != x && n.member(&hx.name).map(|m| m.status) != Some(MemberStatus::Alive) {
                return Err(format!(
                    "seed {seed}: {} does not list {} as alive",
                    hj.name, hx.name
                ));
            }
        }
    }
    let moves = f.log.borrow().stamps.len() - moves_before;
    Ok(Report {
        converged_after: took,
        stamp_moves: moves,
        samples: 0,
        unflagged_after: Duration::ZERO,
    })
}

/// Whether `j`'s answers about `x` are right or flagged.
fn answer_ok(f: &Fleet, j: usize, x: usize) -> Result<(), String> {
    let hosts = &f.sim.hosts;
    let Some(nj) = hosts[j].node.as_ref() else {
        return Ok(());
    };
    let flagged = nj.protect_active() || nj.members().any(|m| m.stale);
    if flagged {
        return Ok(());
    }
    let view = nj.member(&hosts[x].name);
    let served = view.as_ref().is_some_and(|v| v.served);
    match hosts[x].node.as_ref() {
        Some(nx) if hosts[x].group == hosts[j].group => {
            if !served {
                return Err(format!(
                    "{} leaves out live, reachable {} ({:?}), unflagged",
                    hosts[j].name,
                    hosts[x].name,
                    view.map(|v| v.status)
                ));
            }
            let want: Vec<_> = nx.own_data().values().collect();
            let have: Vec<_> = nj
                .data(&hosts[x].name)
                .map(|d| d.values().collect())
                .unwrap_or_default();
            if want != have {
                return Err(format!(
                    "{} serves an old state of {}, unflagged",
                    hosts[j].name, hosts[x].name
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Splits `nodes` into two halves for `cut`, makes changes on both sides, heals, and checks
/// every 100 ms that every answer is right or flagged until everything converged.
pub fn partition_heal(seed: u64, nodes: usize, cut: Duration) -> Result<Report, String> {
    let mut f = small_fleet(nodes, seed, 0.0)?;
    let half = nodes / 2;
    f.sim.partition(|i| u32::from(i >= half));
    // Let both sides see the other go (SWIM declares it down), then change things.
    f.sim.run_for(cut / 2);
    new_service(&mut f, 0, 1);
    new_service(&mut f, half, 1);
    // A deregistration on each side too.
    for host in [1, half + 1] {
        let key = EntryKey::Service("svc-0".into());
        f.sim.publish(host, vec![(key, None)]);
    }
    f.sim.run_for(cut / 2);
    f.sim.partition(|_| 0);
    let heal = f.sim.now;
    let mut samples = 0;
    loop {
        for j in 0..nodes {
            for x in 0..nodes {
                if j != x {
                    answer_ok(&f, j, x).map_err(|e| {
                        format!(
                            "seed {seed}: {:.1} s after the heal: {e}",
                            (f.sim.now - heal).as_secs_f64()
                        )
                    })?;
                }
            }
        }
        samples += 1;
        if f.converged() && f.check_exact().is_ok() {
            break;
        }
        if f.sim.now - heal > Duration::from_secs(5) {
            return Err(format!(
                "seed {seed}: not converged 5 s after the heal: {}",
                f.check_exact().err().unwrap_or_default()
            ));
        }
        f.sim.run_for(Duration::from_millis(100));
    }
    let converged_after = f.sim.now - heal;
    // Once everything is right, the stale flags go too (an answer flagged for no reason
    // makes clients with a staleness limit look elsewhere).
    let flagged = |f: &Fleet| {
        f.sim.hosts.iter().find_map(|h| {
            let n = h.node.as_ref()?;
            let stale: Vec<String> = n
                .members()
                .filter(|m| m.stale)
                .map(|m| m.name.to_string())
                .collect();
            (n.protect_active() || !stale.is_empty()).then(|| {
                format!(
                    "{} (protect mode {}, stale members {stale:?})",
                    h.name,
                    n.protect_active()
                )
            })
        })
    };
    while let Some(who) = flagged(&f) {
        if f.sim.now - heal > converged_after + UNFLAG_AFTER {
            return Err(format!(
                "seed {seed}: converged {:.1} s after the heal, yet {who} still flags answers stale {:.1} s after it",
                converged_after.as_secs_f64(),
                (f.sim.now - heal).as_secs_f64()
            ));
        }
        f.sim.run_for(Duration::from_millis(100));
    }
    let moves = f.log.borrow().stamps.len();
    Ok(Report {
        converged_after,
        stamp_moves: moves,
        samples,
        unflagged_after: f.sim.now - heal,
    })
}

/// How long after convergence answers may stay flagged stale after a heal.
const UNFLAG_AFTER: Duration = Duration::from_secs(2);
