use muster_sim::fleet::{Fleet, FleetConfig};
use std::time::{Duration, Instant};
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(300);
    let mut f = Fleet::new(FleetConfig::new(n, 10, 0.1, 1));
    f.form_warm();
    f.sim.run_for(Duration::from_secs(5));
    let t = Instant::now();
    let e0 = f.sim.handled;
    f.sim.run_for(Duration::from_secs(30));
    println!(
        "30 virtual s in {:.1}s wall; events {}",
        t.elapsed().as_secs_f64(),
        f.sim.handled - e0
    );
}
