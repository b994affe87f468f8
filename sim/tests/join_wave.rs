//! Fifty nodes joining one member within ten milliseconds (a fleet started by a script, or
//! `tests/bench/gossip.sh`): every node lists every other soon after, not only once its
//! next anti-entropy exchange comes round. Members that joined first are missing from the
//! join replies of none, but the ones that joined a moment later are missing from theirs;
//! SWIM alone carried those later joiners to them in 3–4 s in a tenth of the runs.

use muster_sim::fleet::{Fleet, FleetConfig};
use std::time::Duration;

fn wave(nodes: usize, loss: f64, seeds: std::ops::Range<u64>) -> Vec<Duration> {
    seeds
        .map(|seed| {
            let mut f = Fleet::new(FleetConfig::new(nodes, 0, loss, seed));
            f.form_through_one(Duration::from_micros(200), Duration::from_secs(20))
                .unwrap_or_else(|| panic!("seed {seed}: not every node lists every other"))
        })
        .collect()
}

#[test]
fn fifty_nodes_joining_one_at_once_all_list_each_other_within_a_second() {
    for (loss, times) in [(0.0, wave(50, 0.0, 1..31)), (0.1, wave(50, 0.1, 1..21))] {
        let worst = times.iter().max().copied().unwrap_or_default();
        println!("loss {loss}: worst {worst:?} of {times:?}");
        assert!(
            worst <= Duration::from_secs(1),
            "loss {loss}: a node lacked a member for {worst:?}"
        );
    }
}
