//! Process-wide counters that every listener bumps (lock-free atomics on the hot paths),
//! rendered by `/v1/agent/metrics` in Consul's JSON shape or Prometheus text.
//!
//! Gauges that can be derived from the catalog (members by state, services, instances,
//! checks by status) are not kept here: they are computed from the snapshot when rendered.

use muster_proto::model::{HealthStatus, MemberStatus};
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
pub struct Histogram {
    buckets: [AtomicU64; 10],
    overflow: AtomicU64,
    sum_ns: AtomicU64,
    /// Sum of squared microseconds, for the standard deviation in the JSON rendering.
    sum_sq_us: AtomicU64,
    min_ns: AtomicU64,
    max_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: Default::default(),
            overflow: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            sum_sq_us: AtomicU64::new(0),
            min_ns: AtomicU64::new(u64::MAX),
            max_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|b| s <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let us = ns / 1000;
        self.sum_ns.fetch_add(ns, Relaxed);
        self.sum_sq_us.fetch_add(us.saturating_mul(us), Relaxed);
        self.min_ns.fetch_min(ns, Relaxed);
        self.max_ns.fetch_max(ns, Relaxed);
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
    /// (channel, reason) → gossip datagrams and stream frames dropped before decoding.
    /// Both labels are fixed strings from the transport, so the map stays small.
    pub gossip_dropped: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// The gossip node's local health score (0 = healthy; see `muster_proto::gossip::health`).
    pub gossip_health_score: AtomicU64,
    /// Keyring operations applied on this agent, and those it refused.
    pub keyring_ops: AtomicU64,
    pub keyring_op_failures: AtomicU64,
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

    /// Counts one datagram or stream frame dropped before it was decoded.
    pub fn gossip_dropped(&self, channel: &'static str, reason: &'static str) {
        self.gossip_dropped_n(channel, reason, 1);
    }

    pub fn gossip_dropped_n(&self, channel: &'static str, reason: &'static str, n: u64) {
        if let Ok(mut m) = self.gossip_dropped.lock() {
            *m.entry((channel, reason)).or_insert(0) += n;
        }
    }

    pub fn gossip_out(&self, bytes: usize) {
        self.gossip_packets_out.fetch_add(1, Relaxed);
        self.gossip_bytes_out.fetch_add(bytes as u64, Relaxed);
    }
}

/// One rendered series: a name in Consul's dotted form ("muster.dns.queries"), its labels,
/// and the value. Counters also carry how many events made up the total (`count`), so that
/// byte counters report packets as Consul's `Count` and bytes as `Sum`.
struct Series {
    name: &'static str,
    help: &'static str,
    labels: Vec<(&'static str, String)>,
    value: f64,
    count: u64,
}

/// Everything `/v1/agent/metrics` reports, read once so both renderings agree.
pub struct Report {
    gauges: Vec<Series>,
    counters: Vec<Series>,
    dns_latency: (Vec<(f64, u64)>, f64, u64),
    dns_latency_extra: (u64, u64, u64),
}

const DNS_LATENCY_NAME: &str = "muster.dns.query_duration";
const DNS_LATENCY_HELP: &str = "Time to answer a DNS query, in seconds.";

fn counter(name: &'static str, help: &'static str, v: u64) -> Series {
    Series {
        name,
        help,
        labels: vec![],
        value: v as f64,
        count: v,
    }
}

impl Metrics {
    /// Reads the counters and derives the catalog gauges from `snap`.
    pub fn report(&self, snap: &muster_proto::Snapshot) -> Report {
        let mut counters = Vec::new();
        for (i, rcode) in DNS_RCODES.iter().enumerate() {
            let v = self.dns_by_rcode[i].load(Relaxed);
            counters.push(Series {
                labels: vec![("rcode", rcode.to_string())],
                ..counter(
                    "muster.dns.queries",
                    "DNS queries answered, by response code.",
                    v,
                )
            });
        }
        if let Ok(m) = self.http_requests.lock() {
            for ((route, status), n) in m.iter() {
                counters.push(Series {
                    labels: vec![("route", route.clone()), ("status", status.to_string())],
                    ..counter(
                        "muster.http.requests",
                        "HTTP API requests, by route template and status code.",
                        *n,
                    )
                });
            }
        }
        let (pin, pout) = (
            self.gossip_packets_in.load(Relaxed),
            self.gossip_packets_out.load(Relaxed),
        );
        counters.push(counter(
            "muster.gossip.packets_received",
            "Gossip packets received.",
            pin,
        ));
        counters.push(counter(
            "muster.gossip.packets_sent",
            "Gossip packets sent.",
            pout,
        ));
        counters.push(Series {
            count: pin,
            ..counter(
                "muster.gossip.bytes_received",
                "Gossip bytes received.",
                self.gossip_bytes_in.load(Relaxed),
            )
        });
        counters.push(Series {
            count: pout,
            ..counter(
                "muster.gossip.bytes_sent",
                "Gossip bytes sent.",
                self.gossip_bytes_out.load(Relaxed),
            )
        });
        counters.push(counter(
            "muster.gossip.decrypt_failures",
            "Gossip packets and stream frames dropped because they did not open: no installed key opens them, a wrong checksum, or plaintext where encryption is required.",
            self.gossip_decrypt_failures.load(Relaxed),
        ));
        counters.push(counter(
            "muster.gossip.malformed",
            "Gossip packets dropped because they did not decode.",
            self.gossip_malformed.load(Relaxed),
        ));
        if let Ok(m) = self.gossip_dropped.lock() {
            for ((channel, reason), n) in m.iter() {
                counters.push(Series {
                    labels: vec![("channel", channel.to_string()), ("reason", reason.to_string())],
                    ..counter(
                        "muster.gossip.dropped",
                        "Gossip datagrams and stream frames dropped before decoding, by channel and reason.",
                        *n,
                    )
                });
            }
        }
        counters.push(counter(
            "muster.keyring.operations",
            "Keyring operations (install, use, remove) applied on this agent.",
            self.keyring_ops.load(Relaxed),
        ));
        counters.push(counter(
            "muster.keyring.operation_failures",
            "Keyring operations this agent refused or could not persist.",
            self.keyring_op_failures.load(Relaxed),
        ));
        counters.push(counter(
            "muster.config.reloads",
            "Successful configuration reloads (SIGHUP or PUT /v1/agent/reload).",
            self.reloads.load(Relaxed),
        ));
        counters.push(counter(
            "muster.config.reload_failures",
            "Reloads refused because a config file was bad (the running config was kept).",
            self.reload_failures.load(Relaxed),
        ));

        let mut members: BTreeMap<&'static str, u64> = [
            MemberStatus::Alive,
            MemberStatus::Suspect,
            MemberStatus::Left,
            MemberStatus::Failed,
        ]
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        let mut checks: BTreeMap<&'static str, u64> = [
            HealthStatus::Passing,
            HealthStatus::Warning,
            HealthStatus::Critical,
        ]
        .iter()
        .map(|s| (s.as_str(), 0))
        .collect();
        let mut instances = 0u64;
        for node in snap.nodes() {
            *members.entry(node.status.as_str()).or_insert(0) += 1;
            if node.status.is_up() {
                instances += node.record.services.size() as u64;
            }
            for c in node.record.checks.values() {
                *checks.entry(c.status.as_str()).or_insert(0) += 1;
            }
        }
        let mut gauges = Vec::new();
        for (state, n) in members {
            gauges.push(Series {
                name: "muster.members",
                help: "Cluster members known to this agent, by state.",
                labels: vec![("state", state.to_string())],
                value: n as f64,
                count: 1,
            });
        }
        gauges.push(Series {
            name: "muster.catalog.services",
            help: "Distinct service names on members that are up.",
            labels: vec![],
            value: snap.service_names().len() as f64,
            count: 1,
        });
        gauges.push(Series {
            name: "muster.catalog.service_instances",
            help: "Service instances on members that are up.",
            labels: vec![],
            value: instances as f64,
            count: 1,
        });
        for (status, n) in checks {
            gauges.push(Series {
                name: "muster.catalog.checks",
                help: "Health checks in the catalog, by status.",
                labels: vec![("status", status.to_string())],
                value: n as f64,
                count: 1,
            });
        }
        gauges.push(Series {
            name: "muster.protect_mode",
            help: "1 while this agent serves peers' last known instances after losing most of them at once.",
            labels: vec![],
            value: if snap.protect_since_ms().is_some() { 1.0 } else { 0.0 },
            count: 1,
        });
        gauges.push(Series {
            name: "muster.gossip.health_score",
            help: "Local health score: 0 is healthy; above 0 this agent's own timers ran late and it gives peers that many more probe and suspicion periods.",
            labels: vec![],
            value: self.gossip_health_score.load(Relaxed) as f64,
            count: 1,
        });
        gauges.push(Series {
            name: "muster.catalog.index",
            help: "The catalog's current index (X-Consul-Index).",
            labels: vec![],
            value: snap.index() as f64,
            count: 1,
        });
        let h = &self.dns_latency;
        Report {
            gauges,
            counters,
            dns_latency: h.cumulative(),
            dns_latency_extra: (
                h.min_ns.load(Relaxed),
                h.max_ns.load(Relaxed),
                h.sum_sq_us.load(Relaxed),
            ),
        }
    }
}

fn labels_json(labels: &[(&'static str, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

impl Report {
    /// Consul's `/v1/agent/metrics` JSON. Counters are totals since start (Consul reports
    /// the last interval); the DNS latency sample is in milliseconds, as Consul's are.
    pub fn to_json(&self, now: std::time::SystemTime) -> serde_json::Value {
        use serde_json::json;
        let gauges: Vec<_> = self
            .gauges
            .iter()
            .map(|g| json!({"Name": g.name, "Value": g.value, "Labels": labels_json(&g.labels)}))
            .collect();
        let counters: Vec<_> = self
            .counters
            .iter()
            .map(|c| {
                let mean = if c.count > 0 {
                    c.value / c.count as f64
                } else {
                    0.0
                };
                json!({
                    "Name": c.name,
                    "Count": c.count,
                    "Rate": 0.0,
                    "Sum": c.value,
                    "Min": if c.count > 0 { mean } else { 0.0 },
                    "Max": if c.count > 0 { mean } else { 0.0 },
                    "Mean": mean,
                    "Stddev": 0.0,
                    "Labels": labels_json(&c.labels),
                })
            })
            .collect();
        let (_, sum_s, count) = &self.dns_latency;
        let (min_ns, max_ns, sum_sq_us) = self.dns_latency_extra;
        let (mean_ms, min_ms, max_ms, stddev_ms) = if *count > 0 {
            let n = *count as f64;
            let mean_ms = sum_s * 1000.0 / n;
            let mean_us = mean_ms * 1000.0;
            let var_us = (sum_sq_us as f64 / n - mean_us * mean_us).max(0.0);
            (
                mean_ms,
                min_ns as f64 / 1e6,
                max_ns as f64 / 1e6,
                var_us.sqrt() / 1000.0,
            )
        } else {
            (0.0, 0.0, 0.0, 0.0)
        };
        json!({
            "Timestamp": consul_timestamp(now),
            "Gauges": gauges,
            "Points": [],
            "Counters": counters,
            "Samples": [{
                "Name": DNS_LATENCY_NAME,
                "Count": count,
                "Rate": 0.0,
                "Sum": sum_s * 1000.0,
                "Min": min_ms,
                "Max": max_ms,
                "Mean": mean_ms,
                "Stddev": stddev_ms,
                "Labels": {},
            }],
        })
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(4096);
        let mut last = "";
        for (series, kind) in self
            .counters
            .iter()
            .map(|s| (s, "counter"))
            .chain(self.gauges.iter().map(|s| (s, "gauge")))
        {
            let mut name = series.name.replace('.', "_");
            if kind == "counter" {
                name.push_str("_total");
            }
            if series.name != last {
                let _ = writeln!(out, "# HELP {name} {}", series.help);
                let _ = writeln!(out, "# TYPE {name} {kind}");
                last = series.name;
            }
            let _ = writeln!(
                out,
                "{name}{} {}",
                prom_labels(&series.labels),
                series.value
            );
        }
        let name = format!("{}_seconds", DNS_LATENCY_NAME.replace('.', "_"));
        let _ = writeln!(out, "# HELP {name} {DNS_LATENCY_HELP}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let (buckets, sum, count) = &self.dns_latency;
        for (le, n) in buckets {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

fn prom_labels(labels: &[(&'static str, String)]) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", prom_escape(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Label values escape backslash, double quote and newline.
fn prom_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Consul's metrics timestamp: "2026-11-21 05:10:00 +0000 UTC".
fn consul_timestamp(now: std::time::SystemTime) -> String {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's civil_from_days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_consul_shaped() {
        let t = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(consul_timestamp(t), "2023-11-14 22:13:20 +0000 UTC");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn histogram_is_cumulative_and_tracks_extremes() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(20));
        h.observe(Duration::from_micros(600));
        h.observe(Duration::from_secs(1));
        let (buckets, sum, count) = h.cumulative();
        assert_eq!(count, 3);
        assert_eq!(buckets[0].1, 0);
        assert_eq!(buckets[1].1, 1);
        assert_eq!(buckets[5].1, 2);
        assert_eq!(buckets[9].1, 2, "1s is above every bucket");
        assert!((sum - 1.00062).abs() < 1e-9);
        assert_eq!(h.min_ns.load(Relaxed), 20_000);
        assert_eq!(h.max_ns.load(Relaxed), 1_000_000_000);
    }

    #[test]
    fn prometheus_text_groups_series_under_one_header() {
        let m = Metrics::default();
        m.dns_query("nxdomain", Duration::from_micros(30));
        m.http_request("/v1/agent/service/:id", 404);
        m.http_request("/v1/agent/service/:id", 404);
        m.gossip_in(100);
        let text = m.report(&muster_proto::Snapshot::default()).to_prometheus();
        assert_eq!(
            text.matches("# TYPE muster_dns_queries_total counter")
                .count(),
            1
        );
        assert!(text.contains("muster_dns_queries_total{rcode=\"nxdomain\"} 1\n"));
        assert!(text.contains(
            "muster_http_requests_total{route=\"/v1/agent/service/:id\",status=\"404\"} 2\n"
        ));
        assert!(text.contains("muster_gossip_bytes_received_total 100\n"));
        assert!(text.contains("muster_dns_query_duration_seconds_bucket{le=\"+Inf\"} 1\n"));
        let json = m
            .report(&muster_proto::Snapshot::default())
            .to_json(std::time::UNIX_EPOCH);
        let bytes = json["Counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["Name"] == "muster.gossip.bytes_received")
            .unwrap();
        assert_eq!(bytes["Count"], 1);
        assert_eq!(bytes["Sum"], 100.0);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(prom_escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
