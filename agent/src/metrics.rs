//! Process-wide counters that every listener bumps (lock-free atomics on the hot paths),
//! rendered by `/v1/agent/metrics` in Consul's JSON shape or Prometheus text.
//!
//! Gauges that can be derived from the catalog (members by state, services, instances,
//! checks by status) are not kept here: they are computed from the snapshot when rendered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

/// DNS response codes we count separately.
pub const DNS_RCODES: [&str; 6] = [
    "noerror", "formerr", "servfail", "nxdomain", "notimp", "refused",
];

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.25,
];

/// A fixed-bucket latency histogram (Prometheus semantics: cumulative at render time).
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; 10],
    overflow: AtomicU64,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum_ns.fetch_add(d.as_nanos() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// (upper bound, cumulative count) pairs, then the sum in seconds and the count.
    pub fn cumulative(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let mut acc = 0;
        let mut out = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            acc += self.buckets[i].load(Relaxed);
            out.push((*b, acc));
        }
        (
            out,
            self.sum_ns.load(Relaxed) as f64 / 1e9,
            self.count.load(Relaxed),
        )
    }
}

#[derive(Default)]
pub struct Metrics {
    pub dns_by_rcode: [AtomicU64; 6],
    pub dns_latency: Histogram,
    /// (route, status) → count. Routes are templates ("/v1/agent/service/:id"), so the map
    /// stays small whatever ids clients send.
    pub http_requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub gossip_packets_in: AtomicU64,
    pub gossip_packets_out: AtomicU64,
    pub gossip_bytes_in: AtomicU64,
    pub gossip_bytes_out: AtomicU64,
    pub gossip_decrypt_failures: AtomicU64,
    pub gossip_malformed: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

impl Metrics {
    /// Counts one DNS answer. `rcode` is one of [`DNS_RCODES`]; others count as servfail.
    pub fn dns_query(&self, rcode: &str, latency: Duration) {
        let i = DNS_RCODES.iter().position(|r| *r == rcode).unwrap_or(2);
        self.dns_by_rcode[i].fetch_add(1, Relaxed);
        self.dns_latency.observe(latency);
    }

    pub fn http_request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.http_requests.lock() {
            *m.entry((route.to_string(), status)).or_insert(0) += 1;
        }
    }

    pub fn gossip_in(&self, bytes: usize) {
        self.gossip_packets_in.fetch_add(1, Relaxed);
        self.gossip_bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    pub fn gossip_out(&self, bytes: usize) {
        self.gossip_packets_out.fetch_add(1, Relaxed);
        self.gossip_bytes_out.fetch_add(bytes as u64, Relaxed);
    }
}
