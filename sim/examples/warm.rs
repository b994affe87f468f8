use muster_sim::fleet::{Fleet, FleetConfig};
use std::time::{Duration, Instant};
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(300);
    let loss: f64 = std::env::args()
        .nth(2)
        .map(|s| s.parse().unwrap())
        .unwrap_or(0.1);
    let t = Instant::now();
    let r0 = Fleet::rss().unwrap();
    let mut f = Fleet::new(FleetConfig::new(n, 10, loss, 1));
    f.form_warm();
    println!(
        "warm formed in {:.1}s wall, converged={}",
        t.elapsed().as_secs_f64(),
        f.converged()
    );
    let r1 = Fleet::rss().unwrap();
    let t = Instant::now();
    f.sim.run_for(Duration::from_secs(10));
    let r2 = Fleet::rss().unwrap();
    println!(
        "10 virtual s in {:.1}s wall; rss/node {} KiB -> {} KiB; events {}",
        t.elapsed().as_secs_f64(),
        (r1 - r0) / n as u64 / 1024,
        (r2 - r0) / n as u64 / 1024,
        f.sim.handled
    );
    let t = Instant::now();
    let s = f.spread(3, Duration::from_secs(5));
    let got: Vec<Duration> = s.iter().flatten().copied().collect();
    println!(
        "spread: {}/{} max {:?} in {:.1}s wall",
        got.len(),
        s.len(),
        got.iter().max(),
        t.elapsed().as_secs_f64()
    );
    println!("false failed {}", f.log.borrow().false_failed.len());
}
