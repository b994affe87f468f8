use muster_sim::fleet::{Fleet, FleetConfig};
use std::time::Duration;
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(300);
    let r0 = Fleet::rss().unwrap();
    let mut f = Fleet::new(FleetConfig::new(n, 10, 0.0, 1));
    println!("formed {:?}", f.form(Duration::from_secs(300)));
    let r1 = Fleet::rss().unwrap();
    f.sim.run_for(Duration::from_secs(20));
    let r2 = Fleet::rss().unwrap();
    println!(
        "rss per node: after form {} KiB, after 20s more {} KiB",
        (r1 - r0) / n as u64 / 1024,
        (r2 - r0) / n as u64 / 1024
    );
    let mut distinct = std::collections::HashSet::new();
    let mut settled = 0;
    let mut total = 0;
    for h in &f.sim.hosts {
        if let Some(node) = &h.node {
            for x in &f.sim.hosts {
                if x.name == h.name {
                    continue;
                }
                if let Some(d) = node.data(&x.name) {
                    total += 1;
                    if d.is_settled() {
                        settled += 1;
                    }
                    distinct.insert(d as *const _ as usize);
                }
            }
        }
    }
    println!(
        "copies {total}, settled {settled}, distinct objects {}",
        distinct.len()
    );
}
