//! The same seed gives the same run: every event, in the same order, with the same bytes.

use muster_sim::fleet::{Fleet, FleetConfig};
use std::time::Duration;

fn trace(seed: u64) -> (u64, u64) {
    let mut f = Fleet::new(FleetConfig::new(100, 5, 0.10, seed));
    f.form(Duration::from_secs(120)).expect("formed");
    f.churn(20.0, Duration::from_secs(5));
    f.crash_detection(37, Duration::from_secs(60));
    f.sim.run_for(Duration::from_secs(10));
    (f.sim.trace, f.sim.handled)
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let a = trace(7);
    let b = trace(7);
    assert_eq!(a, b, "two runs of one seed differ");
    let c = trace(8);
    assert_ne!(a.0, c.0, "another seed gave the very same run");
}
