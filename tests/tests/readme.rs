//! The README's commands, run as written against a real agent: the tour's curl lines, and
//! the user guide's "Your first service" (an HTTP registration with a TTL heartbeat,
//! `muster register` with the guide's own file, then finding the service over DNS, HTTP and
//! the CLI). The README is read at build time, so a test run checks the README as it is.
//! Only addresses change (`localhost:8500` and `127.0.0.1 -p 8600` become the test agent's);
//! curl gets `-sS --fail-with-body` so an HTTP error fails the command.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use muster_tests::{muster_bin, wait_for, Agent, AgentSpec, TempDir};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const README: &str = include_str!("../../README.md");

/// One command of a ```sh block: its line (continuations joined) and its here-document.
#[derive(Debug, Clone)]
struct ShellCommand {
    line: String,
    heredoc: Option<String>,
}

/// The ```sh blocks under the heading `heading` (up to the next heading of the same or a
/// higher level), each as its commands; comment-only and blank lines are left out.
fn sh_blocks(heading: &str) -> Vec<Vec<ShellCommand>> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    // The section's lines: a heading ends it only outside code blocks (shell comments
    // start with '#' too).
    let mut in_fence = false;
    let section: Vec<&str> = README
        .lines()
        .skip_while(|l| l.trim_end() != heading)
        .skip(1)
        .take_while(|l| {
            if l.trim_start().starts_with("```") {
                in_fence = !in_fence;
            }
            let hashes = l.chars().take_while(|c| *c == '#').count();
            in_fence || !(hashes > 0 && hashes <= level && l[hashes..].starts_with(' '))
        })
        .collect();
    let mut lines = section.into_iter();
    let mut blocks = Vec::new();
    while let Some(l) = lines.next() {
        if l.trim() != "```sh" {
            continue;
        }
        let mut block: Vec<ShellCommand> = Vec::new();
        let mut pending = String::new();
        while let Some(l) = lines.next() {
            if l.trim() == "```" {
                break;
            }
            let trimmed = l.trim();
            if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
                continue;
            }
            if let Some(head) = trimmed.strip_suffix('\\') {
                pending.push_str(head);
                pending.push(' ');
                continue;
            }
            pending.push_str(trimmed);
            let line = std::mem::take(&mut pending);
            let heredoc = line.split_once("<<'").map(|(_, tag)| {
                let tag = tag.split('\'').next().unwrap_or_default().to_string();
                let mut body = String::new();
                for l in lines.by_ref() {
                    if l.trim() == tag {
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                body
            });
            block.push(ShellCommand { line, heredoc });
        }
        blocks.push(block);
    }
    assert!(!blocks.is_empty(), "no ```sh block under {heading:?}");
    blocks
}

/// Runs README lines against one agent: in a scratch directory, with the agent's address.
struct Shell {
    agent: Agent,
    dir: TempDir,
    vars: Vec<(String, String)>,
}

impl Shell {
    fn new(name: &str) -> Shell {
        Shell {
            agent: Agent::start(AgentSpec::dev(name, "127.0.0.1")),
            dir: TempDir::new("readme"),
            vars: Vec::new(),
        }
    }

    /// The line as it runs here: this agent's address, curl failing on HTTP errors, the
    /// muster binary under test.
    fn adapt(&self, line: &str) -> String {
        let mut l = line
            .replace("localhost:8500", &self.agent.http().to_string())
            .replace("curl ", "curl -sS --fail-with-body ");
        if let Some(rest) = l.strip_prefix("muster ") {
            l = format!("'{}' {rest}", muster_bin().display());
        }
        l
    }

    fn command(&self, line: &str) -> Command {
        let mut c = Command::new("bash");
        c.args(["-c", &self.adapt(line)])
            .current_dir(self.dir.path())
            .env("MUSTER_HTTP_ADDR", self.agent.http().to_string())
            .env_remove("MUSTER_HTTP_TOKEN")
            .envs(self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        c
    }

    /// Runs a line to its end; it must succeed. `name=$(...)` lines set `name` for the
    /// lines after them, as in a shell session.
    fn run(&mut self, line: &str) -> String {
        if let Some((var, inner)) = assignment(line) {
            let value = self.run(inner).trim().to_string();
            assert!(!value.is_empty(), "`{line}` gave {var} no value");
            self.vars.push((var.to_string(), value));
            return String::new();
        }
        let out: Output = self.command(line).output().expect("run bash");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "README line failed: {line}\nran: {}\nstdout: {stdout}\nstderr: {}\nagent log:\n{}",
            self.adapt(line),
            String::from_utf8_lossy(&out.stderr),
            self.agent.logs()
        );
        stdout
    }

    fn spawn(&self, line: &str) -> Child {
        self.command(line)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn bash")
    }

    fn service_ids(&self) -> Vec<String> {
        let v = self.agent.get_json("/v1/agent/services");
        v.as_object().unwrap().keys().cloned().collect()
    }
}

/// `name=$(command)` → (name, command).
fn assignment(line: &str) -> Option<(&str, &str)> {
    let (var, rest) = line.split_once("=$(")?;
    let inner = rest.strip_suffix(')')?;
    var.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        .then_some((var, inner))
}

fn is_read(line: &str) -> bool {
    line.starts_with("curl ") && !line.contains("-X ")
}

#[test]
fn the_tour_runs_as_written() {
    let blocks = sh_blocks("## A short tour");
    assert_eq!(blocks.len(), 1, "the tour is one block");
    let mut sh = Shell::new("tour");
    let mut blocked = false;
    for cmd in &blocks[0] {
        let line = cmd.line.as_str();
        assert!(
            line.contains("localhost:8500"),
            "a tour line that does not talk to the agent: {line}"
        );
        if line.contains("index=") && line.contains("wait=") && assignment(line).is_none() {
            // A blocking query on the index just read: it must wait, and return once the
            // service changes (the README says: register a web-2 from another shell).
            let mut child = sh.spawn(line);
            std::thread::sleep(Duration::from_secs(1));
            assert!(
                child.try_wait().unwrap().is_none(),
                "the tour's blocking query returned before anything changed: {line}"
            );
            let r = sh.agent.put(
                "/v1/agent/service/register",
                r#"{"Name": "web", "ID": "web-2", "Port": 8081}"#,
            );
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(
                wait_for(Duration::from_secs(30), || child
                    .try_wait()
                    .unwrap()
                    .is_some()),
                "the blocking query did not return after web changed"
            );
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{line}: {out:?}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let ids: Vec<&str> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["Service"]["ID"].as_str().unwrap())
                .collect();
            assert!(ids.contains(&"web-1") && ids.contains(&"web-2"), "{ids:?}");
            blocked = true;
            continue;
        }
        let before = sh.service_ids();
        let out = sh.run(line);
        if is_read(line) && assignment(line).is_none() {
            let v: serde_json::Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("{line}: not JSON ({e}): {out}"));
            assert!(v.to_string().contains("web-1"), "{line}: {out}");
        }
        if line.contains("/service/register") {
            assert!(sh.service_ids().contains(&"web-1".to_string()));
        }
        if line.contains("/service/deregister/web-1") {
            assert!(before.contains(&"web-1".to_string()));
            assert!(!sh.service_ids().contains(&"web-1".to_string()));
        }
    }
    assert!(blocked, "the tour shows no blocking query");
}

/// `dig @SERVER -p PORT NAME SRV`, asked of `server` instead with a real DNS message over
/// UDP; returns the rcode and the SRV ports.
fn dig_srv(line: &str, server: SocketAddr) -> (ResponseCode, Vec<u16>) {
    let words: Vec<&str> = line.split('#').next().unwrap().split_whitespace().collect();
    assert!(
        words.len() == 6 && words[0] == "dig" && words[2] == "-p" && words[5] == "SRV",
        "a dig line this test does not know: {line}"
    );
    let mut q = Message::new(0x5eed, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_ascii(words[4]).unwrap(),
        RecordType::SRV,
    ));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&q.to_vec().unwrap(), server).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut buf).expect("DNS reply");
    let m = Message::from_vec(&buf[..n]).unwrap();
    let ports = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some(srv.port),
            _ => None,
        })
        .collect();
    (m.metadata.response_code, ports)
}

/// The guide's path through files: `single-host.toml` installed as
/// `/etc/muster/muster.toml`, then the guide's `web.toml` beside it, read as the unit reads
/// them (`--config-dir`). The two must not clash (the example once declared a `web` too).
#[test]
fn the_guides_files_work_together() {
    let blocks = sh_blocks("### Your first service");
    let web = blocks[0]
        .iter()
        .find_map(|c| c.heredoc.clone())
        .expect("the guide's web.toml");
    let dir = TempDir::new("guide-files");
    let etc = dir.path().join("etc-muster");
    std::fs::create_dir_all(&etc).unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config-examples/single-host.toml"
    );
    std::fs::copy(example, etc.join("muster.toml")).unwrap();
    std::fs::write(etc.join("web.toml"), web).unwrap();
    let data = dir.path().join("data");
    let mut spec = AgentSpec::dev("guide-files", "127.0.0.1");
    spec.dev = false;
    let agent = Agent::start(
        spec.data_dir(&data)
            .args(&["--config-dir", etc.to_str().unwrap()]),
    );
    let v = agent.get_json("/v1/agent/services");
    assert_eq!(v["web"]["Port"], 8080, "{v}");
}

#[test]
fn your_first_service_runs_as_written() {
    let blocks = sh_blocks("### Your first service");
    assert_eq!(blocks.len(), 3, "file, register, find: {blocks:#?}");
    let mut sh = Shell::new("guide");
    // The file of the first block, which `muster register web.toml` sends.
    let file = blocks[0]
        .iter()
        .find_map(|c| c.heredoc.clone())
        .expect("the guide's web.toml");
    std::fs::write(sh.dir.path().join("web.toml"), &file).unwrap();

    for cmd in &blocks[1] {
        let out = sh.run(&cmd.line);
        if cmd.line.starts_with("muster register") {
            assert!(out.contains("registered service web"), "{out}");
        }
    }
    let ids = sh.service_ids();
    assert!(ids.contains(&"web-1".to_string()), "{ids:?}");
    let checks = sh.agent.get_json("/v1/agent/checks");
    assert_eq!(
        checks["service:web-1"]["Status"], "passing",
        "the heartbeat passed the TTL check: {checks}"
    );

    let node = sh.agent.spec.name.clone();
    for cmd in &blocks[2] {
        let line = cmd.line.as_str();
        if line.starts_with("dig ") {
            let (rcode, ports) = dig_srv(line, sh.agent.dns());
            assert_eq!(rcode, ResponseCode::NoError, "{line}");
            assert_eq!(ports, vec![8080], "{line}: the healthy web-1 only");
        } else if line.starts_with("muster watch") {
            // Runs until interrupted: its first line is the healthy set.
            let mut child = sh.spawn(line);
            let stdout = child.stdout.take().unwrap();
            let first = BufReader::new(stdout).lines().next();
            let _ = child.kill();
            let _ = child.wait();
            let first = first.expect("watch printed a line").unwrap();
            assert_eq!(
                first,
                format!("web: 1 healthy: 127.0.0.1:8080 ({node}/web-1)")
            );
        } else {
            let out = sh.run(line);
            assert!(out.contains("web-1"), "{line}: {out}");
        }
    }
}
