//! A thousand nodes of the agent's own gossip code, 10% of datagrams lost: the fleet forms by
//! joins with every node holding every record, a change reaches every node, a crash is
//! declared down by every node, and no live node is ever declared down.

use muster_sim::fleet::{Fleet, FleetConfig};
use std::time::{Duration, Instant};

#[test]
fn a_thousand_nodes_at_ten_percent_loss() {
    let wall = Instant::now();
    let mut f = Fleet::new(FleetConfig::new(1000, 10, 0.10, 2026));
    let formed = f
        .form(Duration::from_secs(300))
        .expect("every node holds every member and record");
    println!("formed in {:.1} s (virtual)", formed.as_secs_f64());

    for host in [3, 500, 999] {
        let arrivals = f.spread(host, Duration::from_secs(10));
        let worst = arrivals.iter().max().copied().flatten();
        assert!(
            arrivals.iter().all(|a| a.is_some()),
            "a change from node {host} did not reach every node"
        );
        println!("change from {host} reached all in {worst:?}");
    }
    f.churn(20.0, Duration::from_secs(20));

    let (first, all) = f.crash_detection(123, Duration::from_secs(60));
    let all = all.expect("the crashed node is declared down by every other node");
    println!("crash declared down by the first after {first:?}, by all after {all:?}");

    // Five virtual minutes of steady state (with some churn), counted for false positives.
    for _ in 0..10 {
        f.churn(2.0, Duration::from_secs(30));
    }
    let log = f.log.borrow();
    assert!(
        log.false_failed.is_empty(),
        "live nodes declared down: {:?}",
        &log.false_failed[..log.false_failed.len().min(5)]
    );
    drop(log);
    f.run_until_converged(f.sim.now + Duration::from_secs(30))
        .expect("converged again after the churn");
    println!("wall time {:.0} s", wall.elapsed().as_secs_f64());
}
