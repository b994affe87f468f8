use muster_sim::faults;
use std::time::Duration;
fn main() {
    let seeds: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(5);
    for seed in 0..seeds {
        for (shift, dd) in [
            (-2 * 86400i64, false),
            (-86400, false),
            (2 * 86400, false),
            (-86400, true),
        ] {
            match faults::clock_jump(seed, shift, dd) {
                Ok(r) => println!(
                    "clock {seed} {shift} {dd}: {:?} moves {}",
                    r.converged_after, r.stamp_moves
                ),
                Err(e) => println!("FAIL {e}"),
            }
        }
        for dd in [false, true] {
            match faults::rolling_restart(seed, 8, dd) {
                Ok(r) => println!(
                    "rolling {seed} {dd}: {:?} moves {}",
                    r.converged_after, r.stamp_moves
                ),
                Err(e) => println!("FAIL {e}"),
            }
        }
        match faults::partition_heal(seed, 6, Duration::from_secs(20)) {
            Ok(r) => println!("heal {seed}: {:?} samples {}", r.converged_after, r.samples),
            Err(e) => println!("FAIL {e}"),
        }
    }
}
