//! The operator's bad days (see `muster_sim::faults`), each over 100 seeds.

use muster_sim::faults;
use std::time::Duration;

const SEEDS: u64 = 100;

fn all_seeds(name: &str, f: impl Fn(u64) -> Result<faults::Report, String>) {
    let mut worst = Duration::ZERO;
    let mut unflagged = Duration::ZERO;
    let mut moves = 0;
    for seed in 0..SEEDS {
        let r = f(seed).unwrap_or_else(|e| panic!("{name}: {e}"));
        worst = worst.max(r.converged_after);
        unflagged = unflagged.max(r.unflagged_after);
        moves = moves.max(r.stamp_moves);
    }
    println!(
        "{name}: {SEEDS} seeds, converged within {worst:?}, unflagged within {unflagged:?}, at most {moves} stamp moves"
    );
}

#[test]
fn a_node_restarted_with_its_clock_far_off_is_a_member_again_at_once() {
    all_seeds("2 days behind, no data_dir", |s| {
        faults::clock_jump(s, -2 * 86_400, false)
    });
    all_seeds("1 day behind, no data_dir", |s| {
        faults::clock_jump(s, -86_400, false)
    });
    all_seeds("2 days ahead, no data_dir", |s| {
        faults::clock_jump(s, 2 * 86_400, false)
    });
    all_seeds("1 day behind, data_dir", |s| {
        faults::clock_jump(s, -86_400, true)
    });
}

#[test]
fn rolling_restarts_leave_no_ghost() {
    all_seeds("two waves over 8, no data_dir", |s| {
        faults::rolling_restart(s, 8, false)
    });
    all_seeds("two waves over 8, data_dir", |s| {
        faults::rolling_restart(s, 8, true)
    });
}

#[test]
fn a_healed_partition_converges_in_seconds_and_never_answers_wrong_unflagged() {
    all_seeds("3/3 cut for 20 s", |s| {
        faults::partition_heal(s, 6, Duration::from_secs(20))
    });
}
