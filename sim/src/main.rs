//! `muster-sim`: runs a fleet of muster gossip nodes on a virtual clock and prints what it
//! measured. See `sim/README.md`.

use clap::{Parser, Subcommand};
use muster_sim::fleet::{Fleet, FleetConfig};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "muster-sim", about = "Simulates a muster cluster (the agent's own gossip code) on a virtual clock")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N nodes × S services: spread, crash detection, false positives, bytes, memory.
    Fleet {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10)]
        services: usize,
        #[arg(long, default_value_t = 0.10)]
        loss: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Virtual seconds of steady state over which false positives are counted.
        #[arg(long, default_value_t = 300)]
        minutes_secs: u64,
        /// Changes followed one by one to every node.
        #[arg(long, default_value_t = 20)]
        changes: usize,
        #[arg(long, default_value_t = 6)]
        fanout: usize,
        /// Turn local health awareness off (to measure what it changes).
        #[arg(long)]
        no_lifeguard: bool,
    },
}

fn pct(mut v: Vec<Duration>, p: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

fn fmt(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.3} s", d.as_secs_f64()),
        None => "never".into(),
    }
}

fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Fleet {
            nodes,
            services,
            loss,
            seed,
            minutes_secs,
            changes,
            fanout,
            no_lifeguard,
        } => {
            let wall = Instant::now();
            let rss0 = Fleet::rss().unwrap_or(0);
            let mut cfg = FleetConfig::new(nodes, services, loss, seed);
            cfg.fanout = fanout;
            cfg.lifeguard = !no_lifeguard;
            let mut f = Fleet::new(cfg);
            let formed = f.form(Duration::from_secs(600));
            let rss1 = Fleet::rss().unwrap_or(0);
            println!("formed: {} (wall {:.1} s)", fmt(formed), wall.elapsed().as_secs_f64());
            let idle = f.idle_bytes(Duration::from_secs(30));
            let mut arrivals: Vec<Vec<Option<Duration>>> = Vec::new();
            let (_, _, p0) = f.counters();
            for _ in 0..changes {
                let host = (f.sim.now.as_nanos() as usize) % nodes;
                arrivals.push(f.spread(host, Duration::from_secs(10)));
                f.sim.run_for(Duration::from_secs(2));
            }
            let (_, _, p1) = f.counters();
            let per_change = (p1 - p0) as f64 / changes.max(1) as f64 / nodes as f64;
            let (made, churn_bytes, sends) = f.churn(20.0, Duration::from_secs(30));
            let victim = nodes / 2;
            let (first, all) = f.crash_detection(victim, Duration::from_secs(120));
            let steady = f.sim.now;
            f.sim.run_for(Duration::from_secs(minutes_secs));
            let fp = f.log.borrow().false_failed.len();
            if std::env::var("SIM_DEBUG").is_ok() {
                for (t, h, r) in f.log.borrow().stamps.iter().take(20) {
                    eprintln!("stamp: host {h} at {:.2} s: {r}", t.as_secs_f64());
                }
                for (t, o, n) in f.log.borrow().false_failed.iter().take(20) {
                    eprintln!("false down: {n} by host {o} at {:.2} s", t.as_secs_f64());
                }
            }
            let node_hours = nodes as f64 * f.sim.now.as_secs_f64() / 3600.0;
            let _ = steady;
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            let mut p999 = Vec::new();
            let mut p100 = Vec::new();
            let mut missing = 0;
            for a in &arrivals {
                let got: Vec<Duration> = a.iter().flatten().copied().collect();
                missing += a.len() - got.len();
                let n = a.len();
                let at = |q: f64| -> Option<Duration> {
                    let need = ((n as f64) * q).ceil() as usize;
                    if got.len() < need { None } else { pct(got.clone(), need as f64 / got.len() as f64) }
                };
                p50.extend(at(0.5));
                p99.extend(at(0.99));
                p999.extend(at(0.999));
                p100.extend(at(1.0));
            }
            println!("| figure | value |");
            println!("|---|---|");
            println!("| nodes × services, loss | {nodes} × {services}, {:.0}% |", loss * 100.0);
            println!("| one change to 50% / 99% / 99.9% / 100% of nodes (median of {changes}) | {} / {} / {} / {} |",
                fmt(pct(p50, 0.5)), fmt(pct(p99, 0.5)), fmt(pct(p999, 0.5)), fmt(pct(p100.clone(), 0.5)));
            println!("| one change to 100%, worst of {changes} | {} ({missing} arrivals missing) |", fmt(p100.iter().max().copied()));
            println!("| change datagrams per node per change | {per_change:.2} |");
            println!("| crash declared down: first / all | {} / {} |", fmt(first), fmt(all));
            println!("| false down declarations per node-hour | {:.4} ({fp} in {:.1} node-hours) |", fp as f64 / node_hours, node_hours);
            println!("| gossip bytes per node per second, idle | {idle:.0} |");
            println!("| gossip bytes per node per second, 20 changes/s ({made} changes) | {churn_bytes:.0} ({sends:.1} change datagrams per change) |");
            println!("| memory per simulated node | {:.0} KiB |", (rss1.saturating_sub(rss0)) as f64 / nodes as f64 / 1024.0);
            println!("| events handled | {} |", f.sim.handled);
            println!("| wall time | {:.1} s |", wall.elapsed().as_secs_f64());
        }
    }
}
