//! Scoped write tokens end to end (SPEC §11): a token scoped to `web*` registers and
//! deregisters web services and heartbeats their checks, and is refused (403, saying what
//! it may not do) for anything else — another service, replacing another service's
//! instance, join, leave, reload, the keyring; the full `[http] token` can do all of it;
//! a reload applies token changes; the CLI passes `--token`.

use muster_tests::{muster_bin, request, Agent, AgentSpec, HttpResponse, TempDir};
use std::process::{Command, Stdio};
use std::time::Duration;

const CONFIG: &str = r#"
[http]
token = "root-secret"

[[http.tokens]]
secret = "web-secret"
services = ["web*"]

[[http.tokens]]
secret = "ops-secret"
agent = true
"#;

fn put(a: &Agent, path: &str, body: &str, token: Option<&str>) -> HttpResponse {
    let headers: Vec<(&str, &str)> = token
        .map(|t| vec![("X-Consul-Token", t)])
        .unwrap_or_default();
    request(a.http(), "PUT", path, Some(body.as_bytes()), &headers)
}

fn refused(r: &HttpResponse, what: &str) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("Permission denied"), "{}", r.text());
    assert!(r.text().contains(what), "expected {what:?} in {}", r.text());
}

fn cli(a: &Agent, args: &[&str]) -> (i32, String) {
    let out = Command::new(muster_bin())
        .args(args)
        .env("MUSTER_HTTP_ADDR", a.http().to_string())
        .env_remove("MUSTER_HTTP_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn a_web_token_writes_web_services_only_and_the_full_token_everything() {
    let conf = TempDir::new("tokens");
    let file = conf.path().join("muster.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let mut agent = Agent::start(
        AgentSpec::dev("tok", "127.0.4.1").args(&["--config", file.to_str().unwrap()]),
    );
    let web = Some("web-secret");
    let root = Some("root-secret");

    // The full token registers a database with a TTL check.
    let r = put(
        &agent,
        "/v1/agent/service/register",
        r#"{"Name": "db", "ID": "db-1", "Port": 5432, "Check": {"CheckID": "db-ttl", "TTL": "60s"}}"#,
        root,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // No token at all: refused before anything else.
    refused(
        &put(
            &agent,
            "/v1/agent/service/register",
            r#"{"Name": "web"}"#,
            None,
        ),
        "token is required",
    );
    refused(
        &put(
            &agent,
            "/v1/agent/service/register",
            r#"{"Name": "web"}"#,
            Some("guess"),
        ),
        "token is required",
    );

    // In scope: web-1 with its check, heartbeats, maintenance, deregistration of its own.
    let r = put(
        &agent,
        "/v1/agent/service/register",
        r#"{"Name": "web-1", "ID": "web-1", "Port": 8080, "Check": {"CheckID": "web-ttl", "TTL": "60s"}}"#,
        web,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = put(
        &agent,
        "/v1/agent/service/register",
        r#"{"Name": "web", "ID": "web-2"}"#,
        web,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        put(&agent, "/v1/agent/check/pass/web-ttl", "", web).status,
        200
    );
    assert_eq!(
        put(
            &agent,
            "/v1/agent/service/maintenance/web-2?enable=true",
            "",
            web
        )
        .status,
        200
    );
    assert_eq!(
        put(&agent, "/v1/agent/service/deregister/web-2", "", web).status,
        200
    );

    // Out of scope: each refusal names what the token may not do.
    refused(
        &put(
            &agent,
            "/v1/agent/service/register",
            r#"{"Name": "db", "ID": "db-2"}"#,
            web,
        ),
        "may not write service \"db\"",
    );
    refused(
        &put(&agent, "/v1/agent/service/deregister/db-1", "", web),
        "\"db\"",
    );
    refused(
        &put(
            &agent,
            "/v1/agent/service/register",
            r#"{"Name": "web", "ID": "db-1", "Port": 1}"#,
            web,
        ),
        "\"db\"",
    );
    refused(
        &put(&agent, "/v1/agent/check/fail/db-ttl", "", web),
        "\"db\"",
    );
    refused(
        &put(
            &agent,
            "/v1/agent/service/maintenance/db-1?enable=true",
            "",
            web,
        ),
        "\"db\"",
    );
    let join = format!("/v1/agent/join/{}", agent.spec.gossip_addr());
    refused(&put(&agent, &join, "", web), "may not join");
    refused(&put(&agent, "/v1/agent/leave", "", web), "may not leave");
    refused(&put(&agent, "/v1/agent/reload", "", web), "may not reload");
    refused(
        &put(&agent, "/v1/agent/force-leave/x", "", web),
        "may not force-leave",
    );
    refused(
        &put(&agent, "/v1/agent/maintenance?enable=true", "", web),
        "maintenance",
    );
    refused(
        &request(
            agent.http(),
            "GET",
            "/v1/operator/keyring",
            None,
            &[("X-Consul-Token", "web-secret")],
        ),
        "keyring",
    );
    // db is untouched.
    let services = agent.get_json("/v1/agent/services");
    assert!(services.get("db-1").is_some(), "{services}");
    assert_eq!(services["db-1"]["Service"], "db");

    // The CLI passes --token: refused and allowed, with the reason on one line.
    let svc = conf.path().join("db.toml");
    std::fs::write(&svc, "[[service]]\nname = \"db\"\nid = \"db-3\"\n").unwrap();
    let (code, out) = cli(
        &agent,
        &["register", svc.to_str().unwrap(), "--token", "web-secret"],
    );
    assert_ne!(code, 0);
    assert!(out.contains("403") && out.contains("\"db\""), "{out}");
    let (code, out) = cli(&agent, &["reload", "--token", "web-secret"]);
    assert_ne!(code, 0);
    assert!(out.contains("may not reload"), "{out}");
    let (code, out) = cli(&agent, &["reload", "--token", "ops-secret"]);
    assert_eq!(code, 0, "{out}");

    // A reload applies token changes: web-secret may now write db too.
    std::fs::write(&file, CONFIG.replace("[\"web*\"]", "[\"web*\", \"db\"]")).unwrap();
    let (code, out) = cli(&agent, &["reload", "--token", "root-secret"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        put(&agent, "/v1/agent/service/deregister/db-1", "", web).status,
        200
    );

    // The full token can join (itself, trivially) and leave.
    let r = put(&agent, &join, "", root);
    assert_ne!(r.status, 403, "{}", r.text());
    let r = request(
        agent.http(),
        "PUT",
        "/v1/agent/leave",
        None,
        &[("Authorization", "Bearer root-secret")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), Some(0));
}
