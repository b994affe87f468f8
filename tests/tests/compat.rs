//! Compatibility with real Consul client libraries: the Python `py-consul` package drives
//! the agents (suite in `tests/compat/py_consul_suite.py`; `tests/run.sh` installs py-consul).

use muster_tests::{Agent, AgentSpec};
use std::process::Command;

fn run_suite(agents: &[&Agent]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/compat/py_consul_suite.py");
    let addrs: Vec<String> = agents.iter().map(|a| a.http().to_string()).collect();
    let out = Command::new("python3")
        .arg(script)
        .args(&addrs)
        .output()
        .expect("python3 must be installed");
    assert!(
        out.status.success(),
        "py-consul suite failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn py_consul_against_one_agent() {
    let a = Agent::start(AgentSpec::dev("py-single", "127.0.0.1"));
    run_suite(&[&a]);
}

#[test]
fn npm_consul_against_one_agent() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/compat");
    assert!(
        std::path::Path::new(dir)
            .join("node_modules/consul")
            .exists(),
        "run `npm ci --prefix tests/compat` first (tests/run.sh does)"
    );
    let a = Agent::start(AgentSpec::dev("npm-single", "127.0.0.1"));
    let out = Command::new("node")
        .arg(format!("{dir}/npm_consul_suite.js"))
        .arg(a.http().to_string())
        .output()
        .expect("node must be installed");
    assert!(
        out.status.success(),
        "npm consul suite failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn py_consul_against_a_three_agent_cluster() {
    let a = Agent::start(AgentSpec::dev("py-a", "127.0.0.21"));
    let join = a.spec.gossip_addr();
    let b = Agent::start(AgentSpec::dev("py-b", "127.0.0.22").args(&["--join", &join]));
    let c = Agent::start(AgentSpec::dev("py-c", "127.0.0.23").args(&["--join", &join]));
    // Writes go to b; a and c must answer for the whole cluster.
    run_suite(&[&b, &a, &c]);
}
