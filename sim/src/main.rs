//! `muster-sim`: runs a fleet of muster gossip nodes (the agent's own `gossip::Node`) on a
//! virtual clock and prints what it measured. See `sim/README.md`.

use clap::{Parser, Subcommand};
use muster_sim::faults;
use muster_sim::fleet::{host_name, host_state, Fleet, FleetConfig};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "muster-sim",
    about = "Simulates a muster cluster (the agent's own gossip code) on a virtual clock"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N nodes × S services: spread of a change, crash detection, false positives, bytes,
    /// a joiner, memory, wall time.
    Fleet(FleetArgs),
    /// The fault scenarios (clock jumps, rolling restarts, healed partitions) over many seeds.
    Faults {
        #[arg(long, default_value_t = 100)]
        seeds: u64,
    },
}

#[derive(clap::Args)]
struct FleetArgs {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 10)]
    services: usize,
    /// Datagram loss, 0..1.
    #[arg(long, default_value_t = 0.10)]
    loss: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Changes followed one by one to every node.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Members each new change is pushed to by each member that first receives it.
    #[arg(long, default_value_t = 6)]
    fanout: usize,
    /// Start from a formed fleet (every node knows every member and state) instead of
    /// forming it by joins; the way to set up thousands of nodes in one process.
    #[arg(long)]
    warm: bool,
    /// One node handles everything it receives up to this many ms late (a starved CPU).
    #[arg(long)]
    slow_ms: Option<u64>,
    /// Turn local health awareness off (to measure what it changes).
    #[arg(long)]
    no_lifeguard: bool,
    /// Turn the last check before a down verdict off (to measure what it changes).
    #[arg(long)]
    no_last_check: bool,
    /// Extra virtual seconds of steady state (counted for false positives).
    #[arg(long, default_value_t = 0)]
    soak_secs: u64,
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

fn secs(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.3} s", d.as_secs_f64()),
        None => "never".into(),
    }
}

/// For one followed change: when it reached `q` of the other nodes (None: never did).
fn reach(arrivals: &[Option<Duration>], q: f64) -> Option<Duration> {
    let n = arrivals.len();
    let need = ((n as f64) * q).ceil().max(1.0) as usize;
    let mut got: Vec<Duration> = arrivals.iter().flatten().copied().collect();
    if got.len() < need {
        return None;
    }
    got.sort();
    Some(got[need - 1])
}

fn fleet(args: &FleetArgs) {
    let FleetArgs {
        nodes,
        services,
        loss,
        seed,
        changes,
        fanout,
        warm,
        ..
    } = *args;
    let slow = args.slow_ms.map(Duration::from_millis);
    let soak = Duration::from_secs(args.soak_secs);
    let wall = Instant::now();
    let rss0 = Fleet::rss().unwrap_or(0);
    let mut cfg = FleetConfig::new(nodes, services, loss, seed);
    cfg.fanout = fanout;
    cfg.lifeguard = !args.no_lifeguard;
    cfg.last_check = !args.no_last_check;
    let mut f = Fleet::new(cfg);
    let formed = if warm {
        f.form_warm();
        None
    } else {
        f.form(Duration::from_secs(600))
    };
    let rss1 = Fleet::rss().unwrap_or(0);
    let slow_host = nodes / 3;
    if let Some(lag) = slow {
        f.sim.hosts[slow_host].lag = Some(lag);
    }
    eprintln!(
        "formed ({}) after {:.0} s of wall time",
        if warm { "warm".into() } else { secs(formed) },
        wall.elapsed().as_secs_f64()
    );
    f.sim.run_for(Duration::from_secs(10));
    let idle = f.idle_bytes(Duration::from_secs(20));
    eprintln!("idle measured after {:.0} s", wall.elapsed().as_secs_f64());

    // One change at a time, each followed to every node.
    let (_, _, pushes0) = f.counters();
    let mut followed = Vec::new();
    for i in 0..changes {
        let host = (i * 7919 + 13) % nodes;
        if host == slow_host && slow.is_some() {
            continue;
        }
        followed.push(f.spread(host, Duration::from_secs(10)));
        f.sim.run_for(Duration::from_millis(500));
    }
    let (_, _, pushes1) = f.counters();
    let per_change = (pushes1 - pushes0) as f64 / followed.len().max(1) as f64 / nodes as f64;
    eprintln!(
        "spread measured after {:.0} s",
        wall.elapsed().as_secs_f64()
    );

    let (made, churn_bytes, churn_sends) = f.churn(20.0, Duration::from_secs(20));
    eprintln!("churn measured after {:.0} s", wall.elapsed().as_secs_f64());

    let victim = nodes / 2;
    let (first, all) = f.crash_detection(victim, Duration::from_secs(120));
    eprintln!("crash measured after {:.0} s", wall.elapsed().as_secs_f64());

    // A node joins the formed fleet: time to the whole catalog, and its stream round trips.
    let joiner = f
        .sim
        .add_host(&host_name(nodes), host_state(nodes, services));
    let seed_host = (victim + 1) % nodes;
    let t0 = f.sim.now;
    f.sim.start(joiner, Some(seed_host));
    let mut joined = None;
    while f.sim.now - t0 < Duration::from_secs(60) {
        f.sim.run_for(Duration::from_millis(50));
        if f.holds_all(joiner) {
            joined = Some(f.sim.now - t0);
            break;
        }
    }
    let join_rounds = f.sim.hosts[joiner]
        .node
        .as_ref()
        .map_or(0, |n| n.stats().stream_requests);
    eprintln!(
        "joiner measured after {:.0} s",
        wall.elapsed().as_secs_f64()
    );

    if soak > Duration::ZERO {
        f.sim.run_for(soak);
    }
    let log = f.log.borrow();
    let healthy_down = |subject_slow: bool| {
        log.false_failed
            .iter()
            .filter(|(_, _, n)| (n.as_str() == host_name(slow_host)) == subject_slow)
            .count()
    };
    let incidents = |subject_slow: bool| {
        let mut v: Vec<&str> = log
            .false_failed
            .iter()
            .filter(|(_, _, n)| (n.as_str() == host_name(slow_host)) == subject_slow)
            .map(|(_, _, n)| n.as_str())
            .collect();
        v.sort();
        v.dedup();
        v.len()
    };
    let node_hours = nodes as f64 * f.sim.now.as_secs_f64() / 3600.0;
    let cut = |q: f64| -> Vec<Duration> { followed.iter().filter_map(|a| reach(a, q)).collect() };
    let missing: usize = followed
        .iter()
        .map(|a| a.iter().filter(|x| x.is_none()).count())
        .sum();
    let worst_all: Option<Duration> = if followed.iter().all(|a| reach(a, 1.0).is_some()) {
        cut(1.0).into_iter().max()
    } else {
        None
    };

    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| nodes × services, datagram loss | {nodes} × {services}, {:.0}% |",
        loss * 100.0
    );
    if !warm {
        println!(
            "| formed by joins, every record everywhere | {} |",
            secs(formed)
        );
    }
    println!(
        "| one change reaching 50% / 99% / 99.9% / 100% of nodes (median of {}) | {} / {} / {} / {} |",
        followed.len(),
        secs(percentile(cut(0.5), 0.5)),
        secs(percentile(cut(0.99), 0.5)),
        secs(percentile(cut(0.999), 0.5)),
        secs(percentile(cut(1.0), 0.5))
    );
    println!(
        "| worst of those changes reaching 100% | {} ({missing} arrivals missing at 10 s) |",
        secs(worst_all)
    );
    println!("| change datagrams sent per node per change | {per_change:.2} |");
    println!(
        "| crash declared down by the first / by all | {} / {} |",
        secs(first),
        secs(all)
    );
    println!(
        "| false down declarations of healthy nodes | {} by any node ({} nodes wrongly declared), {:.5} per node-hour over {:.0} node-hours |",
        healthy_down(false),
        incidents(false),
        healthy_down(false) as f64 / node_hours,
        node_hours
    );
    if slow.is_some() {
        println!(
            "| the slow node itself declared down | {} times |",
            healthy_down(true)
        );
    }
    println!("| gossip bytes per node per second, idle | {idle:.0} |");
    println!(
        "| gossip bytes per node per second, 20 changes/s ({made} changes) | {churn_bytes:.0} ({:.2} change datagrams per node per change) |",
        churn_sends / nodes as f64
    );
    println!(
        "| a joiner holding the whole catalog | {} after {join_rounds} stream requests |",
        secs(joined)
    );
    println!(
        "| memory per simulated node | {:.0} KiB |",
        rss1.saturating_sub(rss0) as f64 / nodes as f64 / 1024.0
    );
    println!(
        "| events / virtual time | {} / {:.0} s |",
        f.sim.handled,
        f.sim.now.as_secs_f64()
    );
    println!("| wall time | {:.0} s |", wall.elapsed().as_secs_f64());
}

fn faults_table(seeds: u64) {
    let wall = Instant::now();
    let mut rows: Vec<(String, Vec<Duration>, usize, Vec<String>)> = Vec::new();
    let mut run = |name: &str, f: &dyn Fn(u64) -> Result<faults::Report, String>| {
        let mut times = Vec::new();
        let mut moves = 0;
        let mut fails = Vec::new();
        for seed in 0..seeds {
            match f(seed) {
                Ok(r) => {
                    times.push(r.converged_after);
                    moves = moves.max(r.stamp_moves);
                }
                Err(e) => fails.push(e),
            }
        }
        rows.push((name.to_string(), times, moves, fails));
    };
    run(
        "restart, clock 2 days behind the previous run, no data_dir",
        &|s| faults::clock_jump(s, -2 * 86_400, false),
    );
    run("restart, clock 1 day behind, no data_dir", &|s| {
        faults::clock_jump(s, -86_400, false)
    });
    run("restart, clock 2 days ahead, no data_dir", &|s| {
        faults::clock_jump(s, 2 * 86_400, false)
    });
    run("restart, clock 1 day behind, with data_dir", &|s| {
        faults::clock_jump(s, -86_400, true)
    });
    run(
        "two rolling-restart waves over 8 nodes, no data_dir",
        &|s| faults::rolling_restart(s, 8, false),
    );
    run(
        "two rolling-restart waves over 8 nodes, with data_dir",
        &|s| faults::rolling_restart(s, 8, true),
    );
    run("6 nodes cut 3/3 for 20 s, then healed", &|s| {
        faults::partition_heal(s, 6, Duration::from_secs(20))
    });
    println!("| scenario ({seeds} seeds each) | failed seeds | converged: median / worst | most stamp moves |");
    println!("|---|---|---|---|");
    for (name, times, moves, fails) in &rows {
        println!(
            "| {name} | {} | {} / {} | {moves} |",
            fails.len(),
            secs(percentile(times.clone(), 0.5)),
            secs(times.iter().max().copied()),
        );
        for e in fails.iter().take(3) {
            eprintln!("  {e}");
        }
    }
    eprintln!("wall time {:.1} s", wall.elapsed().as_secs_f64());
}

fn main() {
    match Cli::parse().cmd {
        Cmd::Fleet(args) => fleet(&args),
        Cmd::Faults { seeds } => faults_table(seeds),
    }
}
