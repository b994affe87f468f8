//! The client commands of SPEC §2 against a running agent: tables for people, `--json` for
//! scripts, one-line reasons and non-zero exits on failure (including no agent at all).

use muster_tests::{free_port, muster_bin, wait_for, Agent, AgentSpec, TempDir};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `muster ARGS` against `addr` (through MUSTER_HTTP_ADDR, as a user would set it).
fn muster(addr: &str, args: &[&str]) -> Out {
    muster_env(addr, args, &[])
}

fn muster_env(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Out {
    let out = Command::new(muster_bin())
        .args(args)
        .env("MUSTER_HTTP_ADDR", addr)
        .env_remove("MUSTER_HTTP_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run muster");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(o: Out) -> String {
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    o.stdout
}

/// A failure: non-zero, nothing on stdout, exactly one line on stderr starting "muster: ".
fn failed(o: Out) -> String {
    assert_ne!(o.code, 0, "expected failure; stdout: {}", o.stdout);
    let err = o.stderr.trim_end().to_string();
    assert_eq!(err.lines().count(), 1, "one-line reason expected: {err:?}");
    assert!(err.starts_with("muster: "), "{err:?}");
    err
}

fn addr_of(agent: &Agent) -> String {
    agent.http().to_string()
}

#[test]
fn without_an_agent_every_command_fails_with_one_line() {
    let port = free_port("127.0.0.1");
    let addr = format!("127.0.0.1:{port}");
    let want = format!("muster: cannot reach agent at {addr}: connection refused");
    for args in [
        vec!["members"],
        vec!["services"],
        vec!["services", "web"],
        vec!["deregister", "web"],
        vec!["watch", "web"],
        vec!["leave"],
        vec!["reload"],
    ] {
        assert_eq!(failed(muster(&addr, &args)), want, "{args:?}");
    }
    // The default address when nothing is set.
    let o = Command::new(muster_bin())
        .args(["members", "--http-addr", &addr])
        .env_remove("MUSTER_HTTP_ADDR")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stderr).trim(), want);
}

#[test]
fn members_services_register_deregister_and_reload() {
    let agent = Agent::start(AgentSpec::dev("cli1", "127.0.0.1"));
    let addr = addr_of(&agent);

    let table = ok(muster(&addr, &["members"]));
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, vec!["Node", "Address", "Status", "DC"]);
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[0], "cli1");
    assert_eq!(row[2], "alive");
    assert_eq!(row[3], "dc1");
    let json: serde_json::Value =
        serde_json::from_str(&ok(muster(&addr, &["members", "--json"]))).unwrap();
    assert_eq!(json[0]["Name"], "cli1");

    // register FILE.toml: the config file format, each [[service]] sent to the agent.
    let dir = TempDir::new("cli");
    let file = dir.path().join("web.toml");
    std::fs::write(
        &file,
        r#"
[[service]]
name = "web"
id = "web-1"
port = 8080
tags = ["v1"]
check = { ttl = "30s", status = "passing" }

[[service]]
name = "web"
id = "web-2"
port = 8081
"#,
    )
    .unwrap();
    let out = ok(muster(&addr, &["register", file.to_str().unwrap()]));
    assert!(out.contains("registered service web (id web-1)"), "{out}");
    assert!(out.contains("registered service web (id web-2)"), "{out}");
    let services = agent.get_json("/v1/agent/services");
    assert_eq!(services["web-1"]["Port"], 8080);
    assert_eq!(services["web-2"]["Port"], 8081);

    let out = ok(muster(&addr, &["services"]));
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["web", "v1"]),
        "{out}"
    );
    let out = ok(muster(&addr, &["services", "web"]));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0][..4], ["cli1", "web-1", "127.0.0.1:8080", "passing"]);
    let json: serde_json::Value =
        serde_json::from_str(&ok(muster(&addr, &["services", "web", "--json"]))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);
    let err = failed(muster(&addr, &["services", "nosuch"]));
    assert!(err.contains("no instances of service \"nosuch\""), "{err}");

    // A bad file is refused before anything is sent, naming file, key and reason.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[service]]\nname = \"db\"\nport = 99999\n").unwrap();
    let err = failed(muster(&addr, &["register", bad.to_str().unwrap()]));
    assert!(
        err.contains(&format!("{}: key service[0].port", bad.display())),
        "{err}"
    );
    assert!(agent.get_json("/v1/agent/services").get("db").is_none());
    let err = failed(muster(&addr, &["register", "/nonexistent/x.toml"]));
    assert!(err.contains("cannot read"), "{err}");

    let out = ok(muster(&addr, &["deregister", "web-2"]));
    assert_eq!(out.trim(), "deregistered service web-2");
    assert!(agent.get_json("/v1/agent/services").get("web-2").is_none());
    let err = failed(muster(&addr, &["deregister", "web-2"]));
    assert!(err.contains("404"), "{err}");

    assert_eq!(
        ok(muster(&addr, &["reload"])).trim(),
        "configuration reloaded"
    );
}

#[test]
fn writes_carry_the_token_from_flag_or_environment() {
    let dir = TempDir::new("cli-token");
    let conf = dir.path().join("muster.toml");
    std::fs::write(&conf, "[http]\ntoken = \"s3cret\"\n").unwrap();
    let agent = Agent::start(
        AgentSpec::dev("cli2", "127.0.0.1").args(&["--config", conf.to_str().unwrap()]),
    );
    let addr = addr_of(&agent);
    let err = failed(muster(&addr, &["reload"]));
    assert!(err.contains("403"), "{err}");
    ok(muster(&addr, &["reload", "--token", "s3cret"]));
    ok(muster_env(
        &addr,
        &["reload"],
        &[("MUSTER_HTTP_TOKEN", "s3cret")],
    ));
    // Reads need no token.
    ok(muster(&addr, &["members"]));
}

#[test]
fn watch_prints_each_change_of_the_healthy_set() {
    let agent = Agent::start(AgentSpec::dev("cli3", "127.0.0.1"));
    let addr = addr_of(&agent);
    let mut child = Command::new(muster_bin())
        .args(["watch", "api", "--http-addr", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| -> String {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("watch printed nothing for {what}"))
    };
    assert_eq!(next("the first answer"), "api: 0 healthy: -");
    let r = agent.put(
        "/v1/agent/service/register",
        r#"{"Name": "api", "ID": "api-1", "Port": 7000, "Check": {"CheckID": "api-ttl", "TTL": "60s", "Status": "passing"}}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        next("a registration"),
        "api: 1 healthy: 127.0.0.1:7000 (cli3/api-1)"
    );
    // A change that does not touch the healthy set prints nothing; a failing check does.
    let r = agent.put(
        "/v1/agent/service/register",
        r#"{"Name": "other", "Port": 7001}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(agent.put("/v1/agent/check/fail/api-ttl", "").status, 200);
    assert_eq!(next("a failing check"), "api: 0 healthy: -");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn keygen_version_and_leave() {
    let k1 = ok(muster("127.0.0.1:1", &["keygen"]));
    let k2 = ok(muster("127.0.0.1:1", &["keygen"]));
    assert_ne!(k1, k2);
    // A generated key is accepted by the agent as --encrypt (32 bytes of base64).
    assert_eq!(k1.trim().len(), 44);
    let mut agent =
        Agent::start(AgentSpec::dev("cli4", "127.0.0.1").args(&["--encrypt", k1.trim()]));
    let v = ok(muster("127.0.0.1:1", &["version"]));
    assert!(v.starts_with("muster "), "{v}");
    let addr = addr_of(&agent);
    let out = ok(muster(&addr, &["leave"]));
    assert!(out.contains("leaving"), "{out}");
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), Some(0));
    assert!(wait_for(Duration::from_secs(5), || {
        muster(&addr, &["members"]).code != 0
    }));
}

/// `--http-addr` naming something that is not an agent's HTTP port (the DNS port, a port
/// that answers in another protocol, one that accepts and stays silent) fails on its own
/// short deadline with a reason that says so, instead of hanging until the far side gives
/// up and printing `not an HTTP answer: ""`.
#[test]
fn a_port_that_is_not_an_agent_is_named_as_such_without_hanging() {
    use std::io::Write;
    let agent = Agent::start(AgentSpec::dev("cli5", "127.0.0.1"));
    // A server that greets in another protocol, and one that accepts and says nothing.
    let ssh = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ssh_addr = ssh.local_addr().unwrap().to_string();
    let silent_addr = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        // Greets at once and keeps the connection, as sshd does.
        let mut held = Vec::new();
        for mut s in ssh.incoming().map_while(Result::ok) {
            let _ = s.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
            held.push(s);
        }
    });
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().map_while(Result::ok) {
            held.push(s);
        }
    });
    let dns = agent.dns().to_string();
    for (what, addr, args, why) in [
        (
            "the DNS port",
            &dns,
            vec!["services"],
            "no HTTP answer within",
        ),
        (
            "the DNS port",
            &dns,
            vec!["watch", "web"],
            "no HTTP answer within",
        ),
        (
            "an SSH-like server",
            &ssh_addr,
            vec!["members"],
            "its reply is not HTTP",
        ),
        (
            "a silent server",
            &silent_addr,
            vec!["services"],
            "no HTTP answer within",
        ),
    ] {
        let t = std::time::Instant::now();
        let err = failed(muster(addr, &args));
        let took = t.elapsed();
        println!("{what}, {args:?}: {took:?}: {err}");
        assert!(
            err.starts_with(&format!(
                "muster: {addr} is not a muster agent's HTTP address: {why}"
            )),
            "{what}: {err}"
        );
        // Before: 10 s (until the DNS server dropped the idle connection), or for ever.
        assert!(
            took < Duration::from_secs(9),
            "{what}: took {took:?} to give up"
        );
    }
}
