//! The simulated network: latency, loss, partitions, and hosts that lag.
//!
//! Datagrams take a random latency in the LAN range and are lost with a fixed probability;
//! streams (TCP) are reliable and cost latency plus transfer time. A partition assigns each
//! host a group: nothing crosses between groups (a stream to the other side fails after a
//! connect timeout, as a dropped SYN does). A slow host handles every event it receives
//! (datagram, stream, timer) up to `max_lag` late, in no particular order: a starved CPU.

use rand10::rngs::StdRng;
use rand10::RngExt;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Datagram latency is uniform in this range.
    pub latency: (Duration, Duration),
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Stream transfer rate, bytes per second.
    pub bandwidth: f64,
    /// How long a stream to an unreachable host takes to fail.
    pub connect_timeout: Duration,
}

impl Default for NetConfig {
    /// A LAN: 0.2–1 ms, no loss, 1 Gbit/s.
    fn default() -> Self {
        NetConfig {
            latency: (Duration::from_micros(200), Duration::from_micros(1000)),
            loss: 0.0,
            bandwidth: 125_000_000.0,
            connect_timeout: Duration::from_secs(2),
        }
    }
}

impl NetConfig {
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    pub fn latency(&self, rng: &mut StdRng) -> Duration {
        let (lo, hi) = self.latency;
        if hi <= lo {
            return lo;
        }
        lo + Duration::from_nanos(rng.random_range(0..(hi - lo).as_nanos() as u64))
    }

    pub fn lost(&self, rng: &mut StdRng) -> bool {
        self.loss > 0.0 && rng.random::<f64>() < self.loss
    }

    pub fn transfer(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bandwidth)
    }
}
