//! Config files through the real binary: services from files appear at start, SIGHUP and
//! `PUT /v1/agent/reload` apply file changes, a broken file keeps the running config, a bad
//! file stops start-up naming file, key and reason, and every config example starts.

use hickory_proto::op::ResponseCode;
use muster_tests::{dns_a, free_port, muster_bin, request, wait_for, Agent, AgentSpec, TempDir};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn service_ids(agent: &Agent) -> Vec<String> {
    let v = agent.get_json("/v1/agent/services");
    let mut ids: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    ids.sort();
    ids
}

fn catalog_ports(agent: &Agent, name: &str) -> Vec<u64> {
    agent
        .get_json(&format!("/v1/catalog/service/{name}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ServicePort"].as_u64().unwrap())
        .collect()
}

fn metric(agent: &Agent, name: &str) -> f64 {
    let text = agent.get("/v1/agent/metrics?format=prometheus").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn sighup_applies_service_changes_and_a_broken_file_changes_nothing() {
    let dir = TempDir::new("reload");
    let conf = dir.path().join("conf.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-web.toml"),
        "[[service]]\nname = \"web\"\nport = 8080\n",
    )
    .unwrap();
    std::fs::write(
        conf.join("20-db.toml"),
        "[[service]]\nname = \"db\"\nport = 5432\ncheck = { ttl = \"30s\", status = \"passing\" }\n",
    )
    .unwrap();
    let spec =
        AgentSpec::dev("reload1", "127.0.0.1").args(&["--config-dir", conf.to_str().unwrap()]);
    let agent = Agent::start(spec);
    assert_eq!(service_ids(&agent), vec!["db", "web"]);
    assert_eq!(catalog_ports(&agent, "web"), vec![8080]);

    // An HTTP registration is not touched by reloads.
    let r = agent.put(
        "/v1/agent/service/register",
        r#"{"Name": "api", "Port": 9000}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // Change web's port, remove db, add cache; then SIGHUP.
    std::fs::write(
        conf.join("10-web.toml"),
        "[[service]]\nname = \"web\"\nport = 8081\n",
    )
    .unwrap();
    std::fs::remove_file(conf.join("20-db.toml")).unwrap();
    std::fs::write(
        conf.join("30-cache.toml"),
        "[[service]]\nname = \"cache\"\nport = 6379\n",
    )
    .unwrap();
    let reloads_before = metric(&agent, "muster_config_reloads_total");
    agent.signal("HUP");
    let ok = wait_for(Duration::from_secs(10), || {
        service_ids(&agent) == vec!["api", "cache", "web"]
    });
    assert!(
        ok,
        "after SIGHUP: {:?}\n{}",
        service_ids(&agent),
        agent.logs()
    );
    assert_eq!(catalog_ports(&agent, "web"), vec![8081]);
    assert_eq!(catalog_ports(&agent, "db"), Vec::<u64>::new());
    assert_eq!(
        metric(&agent, "muster_config_reloads_total"),
        reloads_before + 1.0
    );

    // A broken file: the reload is refused and the catalog stays exactly as it was.
    let index_before = agent.get("/v1/catalog/services").index();
    std::fs::write(
        conf.join("10-web.toml"),
        "[[service]]\nname = \"web\"\nport = \"eighty\"\n",
    )
    .unwrap();
    let failures_before = metric(&agent, "muster_config_reload_failures_total");
    agent.signal("HUP");
    let ok = wait_for(Duration::from_secs(10), || {
        metric(&agent, "muster_config_reload_failures_total") == failures_before + 1.0
    });
    assert!(ok, "broken reload not counted:\n{}", agent.logs());
    assert_eq!(service_ids(&agent), vec!["api", "cache", "web"]);
    assert_eq!(catalog_ports(&agent, "web"), vec![8081]);
    assert_eq!(agent.get("/v1/catalog/services").index(), index_before);
    let logs = agent.logs();
    assert!(
        logs.contains("10-web.toml: key service[0].port"),
        "the log names file and key:\n{logs}"
    );

    // PUT /v1/agent/reload reports the same refusal to the caller...
    let r = agent.put("/v1/agent/reload", "");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("service[0].port"), "{}", r.text());
    // ...and applies a fixed file.
    std::fs::write(
        conf.join("10-web.toml"),
        "[[service]]\nname = \"web\"\nport = 8082\n",
    )
    .unwrap();
    let r = agent.put("/v1/agent/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(catalog_ports(&agent, "web"), vec![8082]);
    assert_eq!(catalog_ports(&agent, "api"), vec![9000]);
}

/// A reload error names the service by its place in the file it names, not by its place
/// among every file's services (`zz-api.toml` holding one service said `service[4]`).
#[test]
fn a_reload_error_numbers_services_within_the_file_it_names() {
    let dir = TempDir::new("reload-key");
    let conf = dir.path().join("conf.d");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-web.toml"),
        "[[service]]\nname = \"web\"\n[[service]]\nname = \"db\"\n[[service]]\nname = \"cache\"\n",
    )
    .unwrap();
    std::fs::write(conf.join("20-q.toml"), "[[service]]\nname = \"queue\"\n").unwrap();
    let agent = Agent::start(
        AgentSpec::dev("reload2", "127.0.0.1").args(&["--config-dir", conf.to_str().unwrap()]),
    );
    assert_eq!(service_ids(&agent), vec!["cache", "db", "queue", "web"]);
    let api = conf.join("zz-api.toml");
    std::fs::write(&api, "[[service]]\nname = \"api\"\nprot = 9000\n").unwrap();
    let r = agent.put("/v1/agent/reload", "");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.text().trim(),
        format!(
            "reload failed: {}: key service[0].prot: unknown key",
            api.display()
        )
    );
    assert_eq!(service_ids(&agent), vec!["cache", "db", "queue", "web"]);
}

/// Runs `muster agent` expecting it to refuse to start; returns (exit code, stderr).
fn refused_start(args: &[&str]) -> (i32, String) {
    let out = Command::new(muster_bin())
        .arg("agent")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run muster");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_files_stop_start_up_with_file_key_and_reason() {
    let dir = TempDir::new("badconf");
    let f = dir.path().join("muster.toml");
    std::fs::write(&f, "[ports]\nhttp = \"x\"\n").unwrap();
    let (code, err) = refused_start(&["--dev", "--config", f.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_eq!(
        err.trim(),
        format!(
            "muster: {}: key ports.http: expected an integer 0-65535, got \"x\"",
            f.display()
        )
    );
    std::fs::write(&f, "colour = \"blue\"\n").unwrap();
    let (code, err) = refused_start(&["--dev", "--config", f.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("key colour: unknown key"), "{err}");
    let (code, err) = refused_start(&["--dev", "--encrypt", "c2hvcnQ="]);
    assert_ne!(code, 0);
    assert!(err.contains("--encrypt"), "{err}");
}

/// A fatal error after the config loaded (here: the HTTP port is taken) is printed once,
/// as the last line, not as a log line and again as a `muster:` line.
#[test]
fn a_fatal_start_up_error_is_printed_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().port().to_string();
    let dns = free_port("127.0.0.1").to_string();
    let gossip = free_port("127.0.0.1").to_string();
    let base = [
        "--dev",
        "--bind",
        "127.0.0.1",
        "--client",
        "127.0.0.1",
        "--http-port",
        &http,
        "--dns-port",
        &dns,
        "--gossip-port",
        &gossip,
    ];
    let (code, err) = refused_start(&base);
    assert_ne!(code, 0);
    let want =
        format!("muster: cannot listen for HTTP on 127.0.0.1:{http}: Address already in use");
    assert_eq!(err.matches("cannot listen for HTTP").count(), 1, "{err}");
    assert!(
        err.trim_end()
            .lines()
            .last()
            .unwrap_or("")
            .starts_with(&want),
        "{err}"
    );
    // With JSON logs, it is one JSON line at level ERROR.
    let mut json = base.to_vec();
    json.push("--log-json");
    let (code, err) = refused_start(&json);
    assert_ne!(code, 0);
    let hits: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("cannot listen for HTTP"))
        .collect();
    assert_eq!(hits.len(), 1, "{err}");
    let line: serde_json::Value = serde_json::from_str(hits[0]).expect("a JSON log line");
    assert_eq!(line["level"], "ERROR", "{line}");
}

/// Every file in config-examples/ starts a real agent. Addresses and ports come from flags
/// (which win over files) so the agent stays on loopback with free ports; `--join` replaces
/// an example's retry_join so nothing leaves 127.0.0.0/8.
#[test]
fn every_config_example_starts_an_agent() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let data = TempDir::new("example");
        let text = std::fs::read_to_string(&file).unwrap();
        let mut spec = AgentSpec::dev("example", "127.0.0.1");
        spec.dev = false;
        spec = spec
            .data_dir(data.path())
            .args(&["--config", file.to_str().unwrap()]);
        if text.contains("retry_join") {
            let port = free_port("127.0.0.1").to_string();
            spec = spec.args(&["--join", &format!("127.0.0.1:{port}")]);
        }
        let agent = Agent::start(spec);
        let me = agent.get_json("/v1/agent/self");
        assert_eq!(me["Config"]["NodeName"], "example", "{}", file.display());
        // Services in the example are registered.
        let want = text.matches("[[service]]").count();
        let got = agent
            .get_json("/v1/agent/services")
            .as_object()
            .unwrap()
            .len();
        assert_eq!(got, want, "{}", file.display());

        // The example's domain is the one the names are made under: a service answers as
        // web.service.<domain>. A domain that starts with "service" (or "node", "addr")
        // would double the label the agent adds itself.
        let domain = me["Config"]["Domain"].as_str().unwrap().to_string();
        let first = domain.split('.').next().unwrap_or("");
        assert!(
            !["service", "node", "addr"].contains(&first),
            "{}: domain {domain:?} makes names like web.service.{domain}",
            file.display()
        );
        let table: toml::Table = toml::from_str(&text).unwrap();
        let token = table
            .get("http")
            .and_then(|h| h.get("token"))
            .and_then(|t| t.as_str())
            .unwrap_or("");
        let r = request(
            agent.http(),
            "PUT",
            "/v1/agent/service/register",
            Some(br#"{"Name": "probe", "ID": "probe-1", "Port": 9999}"#),
            &[("X-Consul-Token", token)],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let (rcode, addrs) = dns_a(agent.dns(), &format!("probe.service.{domain}."));
        assert_eq!(rcode, ResponseCode::NoError, "{}", file.display());
        assert!(addrs.contains("127.0.0.1"), "{}: {addrs:?}", file.display());

        // Recursors, if an example sets any, stay on the host's own network: an example
        // copied as it is must not send the host's lookups to a third party.
        let recursors = table
            .get("dns")
            .and_then(|d| d.get("recursors"))
            .and_then(|r| r.as_array())
            .cloned()
            .unwrap_or_default();
        for r in recursors {
            let r = r.as_str().unwrap();
            let ip: std::net::IpAddr = r
                .parse()
                .or_else(|_| r.parse::<std::net::SocketAddr>().map(|a| a.ip()))
                .unwrap();
            let local = match ip {
                std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
                std::net::IpAddr::V6(v6) => {
                    v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00
                }
            };
            assert!(
                local,
                "{}: recursor {r} is a public resolver",
                file.display()
            );
        }
    }
    // The README's advice for hosts where `.local` is taken by mDNS: this example's names
    // are the ones it tells resolvers to forward (`~service.internal`).
    let example = examples.join("dns-tuning.toml");
    let agent = Agent::start(
        AgentSpec::dev("dnsex", "127.0.0.1").args(&["--config", example.to_str().unwrap()]),
    );
    let r = agent.put(
        "/v1/agent/service/register",
        r#"{"Name": "web", "ID": "web-1", "Port": 8080}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (rcode, addrs) = dns_a(agent.dns(), "web.service.internal.");
    assert_eq!(rcode, ResponseCode::NoError);
    assert_eq!(addrs.into_iter().collect::<Vec<_>>(), vec!["127.0.0.1"]);
}
