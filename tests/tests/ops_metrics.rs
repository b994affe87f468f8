//! `/v1/agent/metrics`: Consul's JSON shape, and the Prometheus text format checked with a
//! real parser (the Python `prometheus_client` package); counters move with traffic.

use muster_tests::{Agent, AgentSpec};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// A Python that has `prometheus_client` (the Debian package installs it for
/// /usr/bin/python3, which a pyenv `python3` may shadow).
fn python_with_prometheus_client() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import prometheus_client"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py.to_string();
        }
    }
    panic!(
        "no python3 with prometheus_client: install python3-prometheus-client (apt) or \
         `pip install prometheus-client` (listed in .ci/packages-ops.txt)"
    );
}

/// Parses exposition text with prometheus_client and returns every sample as
/// `name{label="v",...}` → value, with labels sorted. Fails the test if the parser refuses it.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    const SCRIPT: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(sys.stdin.read()))
for fam in families:
    for s in fam.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        print("%s{%s}\t%s\t%s" % (s.name, labels, repr(float(s.value)), fam.type))
"#;
    let mut child = Command::new(python_with_prometheus_client())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut samples = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let mut parts = line.split('\t');
        let key = parts.next().unwrap().to_string();
        let value: f64 = parts.next().unwrap().parse().unwrap();
        samples.insert(key, value);
    }
    samples
}

fn scrape(agent: &Agent) -> BTreeMap<String, f64> {
    let r = agent.get("/v1/agent/metrics?format=prometheus");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{:?}",
        r.headers
    );
    parse_prometheus(&r.text())
}

fn get(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:#?}", samples.keys()))
}

#[test]
fn prometheus_text_parses_and_counters_move_with_traffic() {
    let agent = Agent::start(AgentSpec::dev("metrics1", "127.0.0.1"));
    let before = scrape(&agent);
    assert_eq!(get(&before, "muster_members{state=\"alive\"}"), 1.0);
    assert_eq!(get(&before, "muster_catalog_service_instances{}"), 0.0);
    assert!(before.contains_key("muster_dns_query_duration_seconds_bucket{le=\"+Inf\"}"));
    assert!(before.contains_key("muster_gossip_bytes_received_total{}"));
    assert!(before.contains_key("muster_gossip_decrypt_failures_total{}"));
    // An idle agent's own timers run on time.
    assert_eq!(get(&before, "muster_gossip_health_score{}"), 0.0);

    // Traffic: two registrations (one with a critical check), a 404, catalog reads.
    for body in [
        r#"{"Name": "web", "ID": "web-1", "Port": 80, "Check": {"TTL": "30s", "Status": "passing"}}"#,
        r#"{"Name": "web", "ID": "web-2", "Port": 81, "Check": {"TTL": "30s"}}"#,
    ] {
        assert_eq!(agent.put("/v1/agent/service/register", body).status, 200);
    }
    assert_eq!(agent.get("/v1/agent/service/no-such-id").status, 404);
    for _ in 0..3 {
        agent.get_json("/v1/health/service/web");
    }
    let after = scrape(&agent);
    let reg = "muster_http_requests_total{route=\"/v1/agent/service/register\",status=\"200\"}";
    assert_eq!(
        get(&after, reg) - before.get(reg).copied().unwrap_or(0.0),
        2.0
    );
    assert_eq!(
        get(
            &after,
            "muster_http_requests_total{route=\"/v1/agent/service/:id\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        get(
            &after,
            "muster_http_requests_total{route=\"/v1/health/service/:service\",status=\"200\"}"
        ),
        3.0
    );
    // No raw id ever becomes a label.
    assert!(after.keys().all(|k| !k.contains("no-such-id")));
    assert_eq!(get(&after, "muster_catalog_services{}"), 1.0);
    assert_eq!(get(&after, "muster_catalog_service_instances{}"), 2.0);
    // serfHealth + web-1's check passing; web-2's check critical.
    assert_eq!(
        get(&after, "muster_catalog_checks{status=\"critical\"}"),
        1.0
    );
    assert!(get(&after, "muster_catalog_checks{status=\"passing\"}") >= 1.0);
}

#[test]
fn json_has_consul_shape() {
    let agent = Agent::start(AgentSpec::dev("metrics2", "127.0.0.1"));
    agent.get_json("/v1/agent/self");
    let v = agent.get_json("/v1/agent/metrics");
    let ts = v["Timestamp"].as_str().unwrap();
    assert!(ts.ends_with(" +0000 UTC") && ts.len() == 29, "{ts}");
    let gauges = v["Gauges"].as_array().unwrap();
    assert!(gauges
        .iter()
        .all(|g| g["Name"].is_string() && g["Value"].is_number() && g["Labels"].is_object()));
    let counters = v["Counters"].as_array().unwrap();
    for c in counters {
        for k in [
            "Name", "Count", "Sum", "Min", "Max", "Mean", "Stddev", "Labels",
        ] {
            assert!(!c[k].is_null(), "counter without {k}: {c}");
        }
    }
    let selfs = counters
        .iter()
        .find(|c| c["Name"] == "muster.http.requests" && c["Labels"]["route"] == "/v1/agent/self")
        .expect("self request counted");
    assert!(selfs["Count"].as_u64().unwrap() >= 1);
    let samples = v["Samples"].as_array().unwrap();
    assert!(samples
        .iter()
        .any(|s| s["Name"] == "muster.dns.query_duration" && s["Count"].is_u64()));
    assert_eq!(agent.get("/v1/agent/metrics?format=xml").status, 400);
}
