use muster_sim::fleet::{Fleet, FleetConfig};
use std::time::Duration;
fn agg(f: &Fleet) -> muster_proto::gossip::Stats {
    let mut s = muster_proto::gossip::Stats::default();
    for h in &f.sim.hosts {
        if let Some(n) = &h.node {
            let t = n.stats();
            s.datagrams_out += t.datagrams_out;
            s.datagram_bytes_out += t.datagram_bytes_out;
            s.push_datagrams += t.push_datagrams;
            s.pull_datagrams += t.pull_datagrams;
            s.stream_requests += t.stream_requests;
            s.stream_bytes_out += t.stream_bytes_out;
            s.syncs_started += t.syncs_started;
            s.syncs_completed += t.syncs_completed;
            s.malformed += t.malformed;
            s.implausible += t.implausible;
            s.self_jumps += t.self_jumps;
            s.changes_applied += t.changes_applied;
        }
    }
    s
}
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(50);
    let loss: f64 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0.0);
    let mut f = Fleet::new(FleetConfig::new(n, 10, loss, 1));
    println!("formed {:?}", f.form(Duration::from_secs(120)));
    let a = agg(&f);
    println!("{a:?}");
    f.sim.run_for(Duration::from_secs(30));
    let b = agg(&f);
    println!(
        "idle 30s: dgrams {} bytes {} push {} pull {} streams {} syncs {}/{}",
        b.datagrams_out - a.datagrams_out,
        b.datagram_bytes_out - a.datagram_bytes_out,
        b.push_datagrams - a.push_datagrams,
        b.pull_datagrams - a.pull_datagrams,
        b.stream_requests - a.stream_requests,
        b.syncs_started - a.syncs_started,
        b.syncs_completed - a.syncs_completed
    );
    let s = f.spread(3, Duration::from_secs(5));
    let c = agg(&f);
    println!(
        "one change: arrivals {:?}\n dgrams {} push {} pull {} streams {}",
        s.iter().flatten().max(),
        c.datagrams_out - b.datagrams_out,
        c.push_datagrams - b.push_datagrams,
        c.pull_datagrams - b.pull_datagrams,
        c.stream_requests - b.stream_requests
    );
    println!(
        "false failed: {:?}",
        f.log
            .borrow()
            .false_failed
            .iter()
            .take(10)
            .collect::<Vec<_>>()
    );
    let t1 = f.sim.now;
    let c = f.churn(20.0, Duration::from_secs(30));
    println!("churn {c:?} at {:?}..{:?}", t1, f.sim.now);
    f.sim.run_for(Duration::from_secs(120));
    println!(
        "false failed after churn+120s: {} {:?}",
        f.log.borrow().false_failed.len(),
        f.log
            .borrow()
            .false_failed
            .iter()
            .take(10)
            .collect::<Vec<_>>()
    );
    let t0 = f.sim.now;
    let r = f.crash_detection(7, Duration::from_secs(60));
    println!("crash: {r:?}");
    let mut v: Vec<(Duration, usize)> = f
        .log
        .borrow()
        .failed
        .iter()
        .filter(|(t, _, n)| *t >= t0 && n.as_str() == "node-7")
        .map(|(t, o, _)| (*t - t0, *o))
        .collect();
    v.sort();
    println!(
        "{:?}",
        v.iter()
            .map(|(t, o)| format!("{o}@{:.1}", t.as_secs_f64()))
            .collect::<Vec<_>>()
    );
}
#[allow(dead_code)]
fn unused() {}
