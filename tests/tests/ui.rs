//! The web status page (SPEC §9). The HTTP side (redirect, security headers, read-only and
//! open reads under a write token, blocking views, check status times) is checked here over
//! plain HTTP; what a person sees is checked in a real headless Chromium by
//! `tests/ui/ui_suite.js` (playwright-core driving Debian's `/usr/bin/chromium`; `.ci/run`
//! installs both), which these tests start against real agents.
//!
//! Screenshots go to a temporary directory, or to `$MUSTER_UI_SCREENSHOTS` when set (the
//! README's pictures are made with `MUSTER_UI_SCREENSHOTS=docs`). Run with `--nocapture`
//! to see the measured delays and load times.

use muster_tests::{request, wait_for, Agent, AgentSpec, HttpResponse, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One browser at a time: the machine has two cores, and the suites print timings.
static BROWSER: Mutex<()> = Mutex::new(());

const TOKEN: &str = "ui-test-write-token";

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// Where screenshots go: `$MUSTER_UI_SCREENSHOTS` (relative to the repository root), or a
/// temporary directory that lives as long as the returned guard.
fn shots_dir() -> (PathBuf, Option<TempDir>) {
    match std::env::var("MUSTER_UI_SCREENSHOTS") {
        Ok(d) if !d.is_empty() => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let dir = root.join(d);
            std::fs::create_dir_all(&dir).expect("create screenshot dir");
            (dir, None)
        }
        _ => {
            let t = TempDir::new("ui-shots");
            (t.path().to_path_buf(), Some(t))
        }
    }
}

/// Runs one mode of the browser suite; its output is printed, and a failure fails the test.
fn run_browser(mode: &str, cfg: Value) {
    let dir = suite_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "run `npm ci --prefix tests/ui` first (.ci/run does)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} not found: install Debian's chromium (.ci/packages-ui.txt)"
    );
    let _one = BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let out = Command::new("node")
        .arg(dir.join("ui_suite.js"))
        .arg(mode)
        .arg(cfg.to_string())
        .current_dir(&dir)
        .output()
        .expect("node must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    println!("[ui {mode}] browser suite took {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "browser suite {mode} failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn put(agent: &Agent, path: &str, body: &Value) -> HttpResponse {
    let body = body.to_string();
    let r = request(
        agent.http(),
        "PUT",
        path,
        Some(body.as_bytes()),
        &[("X-Consul-Token", TOKEN)],
    );
    assert_eq!(r.status, 200, "PUT {path}: {}", r.text());
    r
}

/// An agent whose config file sets the write token and `node_meta`.
fn agent_with_token(name: &str, ip: &str, meta: &str, join: Option<&str>) -> (Agent, TempDir) {
    let dir = TempDir::new("ui-conf");
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        format!("node_meta = {{ {meta} }}\n[http]\ntoken = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let mut spec = AgentSpec::dev(name, ip).args(&["--config", &file.display().to_string()]);
    if let Some(j) = join {
        spec = spec.args(&["--join", j]);
    }
    (Agent::start(spec), dir)
}

fn passing_count(agent: &Agent, service: &str) -> usize {
    let r = agent.get(&format!("/v1/health/service/{service}?passing"));
    r.json().as_array().map_or(0, Vec::len)
}

#[test]
fn browser_follows_a_two_agent_cluster() {
    let (a, _ca) = agent_with_token("ui-a", "127.0.0.41", "rack = \"r1\"", None);
    let (b, _cb) = agent_with_token(
        "ui-b",
        "127.0.0.42",
        "rack = \"r2\"",
        Some(&a.spec.gossip_addr()),
    );
    put(
        &a,
        "/v1/agent/service/register",
        &json!({"Name": "web", "ID": "web-a", "Port": 8080, "Tags": ["v1"],
                "Check": {"CheckID": "web-a-ttl", "TTL": "10m", "Status": "passing"}}),
    );
    put(
        &a,
        "/v1/agent/service/register",
        &json!({"Name": "api", "ID": "api-1", "Port": 9000, "Tags": ["canary"]}),
    );
    put(
        &a,
        "/v1/agent/service/register",
        &json!({"Name": "db", "ID": "db-1", "Port": 5432,
                "Meta": {"note": "<script>alert(1)</script>"},
                "Check": {"CheckID": "db-ttl", "TTL": "10m"}}),
    );
    put(
        &a,
        "/v1/agent/check/update/db-ttl",
        &json!({"Status": "passing", "Output": "<img src=x onerror=\"window.__pwned=1\">"}),
    );
    put(
        &b,
        "/v1/agent/service/register",
        &json!({"Name": "web", "ID": "web-b", "Port": 8081, "Tags": ["v1"],
                "Meta": {"zone": "eu-1"}, "Weights": {"Passing": 5, "Warning": 2},
                "Check": {"CheckID": "web-b-ttl", "TTL": "10m", "Status": "passing"}}),
    );
    assert!(
        wait_for(Duration::from_secs(20), || passing_count(&a, "web") == 2
            && passing_count(&a, "db") == 1),
        "the cluster never converged: {}",
        a.get("/v1/health/service/web").text()
    );
    let (shots, _guard) = shots_dir();
    run_browser(
        "cluster",
        json!({
            "a": a.http().to_string(), "b": b.http().to_string(),
            "nodeA": "ui-a", "nodeB": "ui-b", "pidB": b.pid(),
            "token": TOKEN, "shots": shots,
        }),
    );
}

#[test]
fn browser_loads_a_thousand_services() {
    const N: usize = 1000;
    // From a config file: one change at start, rather than a thousand registrations.
    let conf = TempDir::new("ui-load-conf");
    let mut toml = String::new();
    for i in 0..N {
        toml.push_str(&format!(
            "[[service]]\nname = \"svc-{i:04}\"\nport = {}\ntags = [\"prod\", \"shard-{}\"]\n\
             meta = {{ version = \"1.2.3\" }}\n\
             check = {{ id = \"ttl-{i:04}\", ttl = \"10m\", status = \"passing\" }}\n\n",
            10_000 + i,
            i % 16
        ));
    }
    let file = conf.path().join("services.toml");
    std::fs::write(&file, toml).unwrap();
    let a = Agent::start(
        AgentSpec::dev("ui-load", "127.0.0.43").args(&["--config", &file.display().to_string()]),
    );
    let listed = a.get_json("/v1/catalog/services");
    assert_eq!(listed.as_object().map(|m| m.len()), Some(N));
    let (shots, _guard) = shots_dir();
    run_browser(
        "load",
        json!({ "a": a.http().to_string(), "services": N, "shots": shots }),
    );
}

#[test]
fn browser_shows_the_protect_mode_banner() {
    let a = Agent::start(AgentSpec::dev("ui-p0", "127.0.0.44"));
    let join = a.spec.gossip_addr();
    let peers: Vec<Agent> = (1..=3)
        .map(|i| {
            let p = Agent::start(
                AgentSpec::dev(&format!("ui-p{i}"), &format!("127.0.0.{}", 44 + i))
                    .args(&["--join", &join]),
            );
            let body = json!({"Name": "web", "ID": format!("web-{i}"), "Port": 8080}).to_string();
            let r = request(
                p.http(),
                "PUT",
                "/v1/agent/service/register",
                Some(body.as_bytes()),
                &[],
            );
            assert_eq!(r.status, 200);
            p
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(20), || passing_count(&a, "web") == 3),
        "peers' services never arrived"
    );
    let (shots, _guard) = shots_dir();
    let pids: Vec<u32> = peers.iter().map(Agent::pid).collect();
    run_browser(
        "protect",
        json!({ "a": a.http().to_string(), "pids": pids, "shots": shots }),
    );
}

#[test]
fn page_is_served_built_in_with_a_strict_policy() {
    let (a, _c) = agent_with_token("ui-http", "127.0.0.49", "rack = \"r9\"", None);
    for path in ["/", "/ui"] {
        let r = a.get(path);
        assert_eq!(r.status, 302, "GET {path}");
        assert_eq!(r.header("Location"), Some("/ui/"));
    }
    // Reads are open under a write token: no token is sent here.
    let page = a.get("/ui/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("text/html")));
    let csp = page.header("Content-Security-Policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert_eq!(page.header("X-Content-Type-Options"), Some("nosniff"));
    let html = page.text();
    assert!(html.contains("<script src=\"app.js\""));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no outside fetch"
    );
    for (path, kind) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let r = a.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r
            .header("Content-Type")
            .is_some_and(|t| t.starts_with(kind)));
        // Revalidation answers 304 while the binary is the same.
        let etag = r.header("ETag").expect("an ETag").to_string();
        let again = request(a.http(), "GET", path, None, &[("If-None-Match", &etag)]);
        assert_eq!(again.status, 304, "{path}");
    }
    assert_eq!(a.get("/ui/missing.js").status, 404);
    let post = request(a.http(), "POST", "/ui/", Some(b"x"), &[]);
    assert_eq!(post.status, 405);
    for path in [
        "/v1/internal/ui/services",
        "/v1/internal/ui/nodes",
        "/v1/internal/ui/service/web",
    ] {
        let r = a.get(path);
        assert_eq!(r.status, 200, "GET {path} without a token: {}", r.text());
        r.index();
    }
    let r = a.get("/v1/internal/ui/nope");
    assert_eq!(r.status, 404);
    let r = a.get("/v1/internal/ui/services?index=1&wait=soon");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("wait"), "{}", r.text());
    // Writes still need the token.
    let r = request(
        a.http(),
        "PUT",
        "/v1/agent/service/register",
        Some(br#"{"Name":"web"}"#),
        &[],
    );
    assert_eq!(r.status, 403);
}

#[test]
fn views_block_until_a_change_and_tell_when_a_check_changed() {
    let data = TempDir::new("ui-data");
    let spec = AgentSpec::dev("ui-views", "127.0.0.50").data_dir(data.path());
    let mut a = Agent::start(spec.clone());
    let reg = json!({"Name": "web", "ID": "web-1", "Port": 80,
        "Check": {"CheckID": "web-ttl", "TTL": "10m", "Status": "passing"}})
    .to_string();
    let r = request(
        a.http(),
        "PUT",
        "/v1/agent/service/register",
        Some(reg.as_bytes()),
        &[],
    );
    assert_eq!(r.status, 200);

    // A blocking read of the services view returns when a check changes.
    for (view, path) in [
        ("services", "/v1/internal/ui/services"),
        ("service", "/v1/internal/ui/service/web"),
    ] {
        let first = a.get(path);
        let index = first.index();
        let http = a.http();
        let status = if view == "services" { "warn" } else { "fail" };
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            request(
                http,
                "PUT",
                &format!("/v1/agent/check/{status}/web-ttl"),
                None,
                &[],
            )
        });
        let t0 = Instant::now();
        let next = a.get(&format!("{path}?index={index}&wait=30s"));
        let waited = t0.elapsed();
        assert_eq!(writer.join().unwrap().status, 200);
        assert!(next.index() > index, "{view}: index moved");
        assert!(
            waited < Duration::from_secs(25),
            "{view}: answered on the change, not at the end of the wait ({waited:?})"
        );
        println!("[ui views] {view}: blocking read answered {waited:?} after it started (change made at 300 ms)");
    }
    let view = a.get_json("/v1/internal/ui/service/web");
    let check = &view["Instances"][0]["Checks"][0];
    assert_eq!(check["CheckID"], "web-ttl");
    assert_eq!(check["Status"], "critical");
    let age = check["StatusAgeMs"].as_u64().expect("an age");
    assert!(age < 60_000, "changed moments ago: {age} ms");
    // Registering the same service again keeps the check, its status and when it began.
    std::thread::sleep(Duration::from_millis(1100));
    let r = request(
        a.http(),
        "PUT",
        "/v1/agent/service/register",
        Some(reg.as_bytes()),
        &[],
    );
    assert_eq!(r.status, 200);
    let view = a.get_json("/v1/internal/ui/service/web");
    let check = &view["Instances"][0]["Checks"][0];
    assert_eq!(check["Status"], "critical");
    let kept = check["StatusAgeMs"].as_u64().expect("an age");
    assert!(
        kept >= age + 1000,
        "re-registering kept the time ({age} ms, then {kept} ms)"
    );
    // Consul's check JSON has no such field, so the agent API does not grow one.
    let checks = a.get_json("/v1/agent/checks");
    assert!(checks["web-ttl"].get("StatusChangedMs").is_none());
    assert!(!checks.to_string().contains("status_changed"));

    // The time of the change is kept with the check: after a restart it is not reset.
    std::thread::sleep(Duration::from_millis(1500));
    a.signal("TERM");
    a.wait_exit(Duration::from_secs(20));
    let a = Agent::start(spec);
    let view = a.get_json("/v1/internal/ui/service/web");
    let check = &view["Instances"][0]["Checks"][0];
    assert_eq!(check["Status"], "critical");
    let after = check["StatusAgeMs"].as_u64().expect("an age after restart");
    assert!(
        after >= age + 1000,
        "restart kept when the status changed ({age} ms, then {after} ms)"
    );
}
