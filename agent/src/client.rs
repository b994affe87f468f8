//! Client commands (SPEC §2): `members`, `services`, `register`, `deregister`, `watch`,
//! `keygen`, `leave`, `reload`, `version`. Each talks to the local agent's HTTP API with a
//! small blocking HTTP/1.1 client, prints a table for people or JSON with `--json`, and on
//! any failure prints one line `muster: <reason>` and exits non-zero.

use crate::cli::ClientArgs;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Largest answer we read from the agent; a catalog bigger than this is not a local agent.
const MAX_RESPONSE: usize = 64 << 20;
/// How long a blocking query in `watch` asks the agent to wait.
const WATCH_WAIT: &str = "5m";

/// Prints the reason and turns a failure into exit code 1.
pub fn finish(r: Result<(), String>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("muster: {reason}");
            ExitCode::FAILURE
        }
    }
}

/// An answer from the agent.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("agent sent a response that is not JSON: {e}"))
    }
}

/// The local agent's HTTP API, as `--http-addr` / `MUSTER_HTTP_ADDR` and `--token` say.
pub struct Agent {
    addr_text: String,
    token: Option<String>,
}

impl Agent {
    pub fn new(args: &ClientArgs) -> Agent {
        let addr = args.http_addr.trim();
        let addr = addr
            .strip_prefix("http://")
            .unwrap_or(addr)
            .trim_end_matches('/');
        Agent {
            addr_text: addr.to_string(),
            token: args.token.clone().filter(|t| !t.is_empty()),
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> String {
        format!("cannot reach agent at {}: {e}", self.addr_text)
    }

    fn resolve(&self) -> Result<SocketAddr, String> {
        self.addr_text
            .to_socket_addrs()
            .map_err(|e| self.unreachable(io_reason(&e)))?
            .next()
            .ok_or_else(|| self.unreachable("address does not resolve"))
    }

    /// One request over a fresh connection. `read_timeout` bounds the wait for the answer.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        read_timeout: Duration,
    ) -> Result<Response, String> {
        let addr = self.resolve()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| self.unreachable(io_reason(&e)))?;
        s.set_read_timeout(Some(read_timeout))
            .and_then(|_| s.set_write_timeout(Some(Duration::from_secs(30))))
            .map_err(|e| self.unreachable(io_reason(&e)))?;
        let body = body.unwrap_or(&[]);
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: muster/{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr_text,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = &self.token {
            if t.contains(['\r', '\n']) {
                return Err("the token contains a line break".into());
            }
            req.push_str(&format!("X-Consul-Token: {t}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .and_then(|_| s.write_all(body))
            .map_err(|e| self.unreachable(io_reason(&e)))?;
        read_response(s).map_err(|e| self.unreachable(e))
    }

    /// A request whose answer must be 2xx; otherwise the agent's message is the reason.
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, String> {
        let r = self.request(method, path, body, Duration::from_secs(60))?;
        expect_ok(r)
    }
}

fn expect_ok(r: Response) -> Result<Response, String> {
    if (200..300).contains(&r.status) {
        return Ok(r);
    }
    let text = String::from_utf8_lossy(&r.body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no message)");
    Err(format!("agent refused the request ({}): {line}", r.status))
}

/// An I/O error in words a person expects ("connection refused", not "os error 111").
fn io_reason(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::TimedOut | K::WouldBlock => "timed out".into(),
        K::ConnectionReset => "connection reset".into(),
        _ => {
            let s = e.to_string();
            match s.find(" (os error") {
                Some(i) => s[..i].to_lowercase(),
                None => s,
            }
        }
    }
}

fn read_response(s: TcpStream) -> Result<Response, String> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| io_reason(&e))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.trim()))?;
    let mut headers = Vec::new();
    let mut len: Option<usize> = None;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).map_err(|e| io_reason(&e))? == 0 {
            return Err("connection closed in the headers".into());
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if headers.len() > 100 {
            return Err("too many headers".into());
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().ok();
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
            headers.push((k, v));
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut sz = String::new();
            r.read_line(&mut sz).map_err(|e| io_reason(&e))?;
            let n = usize::from_str_radix(sz.trim(), 16)
                .map_err(|_| format!("bad chunk size {:?}", sz.trim()))?;
            if n == 0 {
                break;
            }
            if body.len() + n > MAX_RESPONSE {
                return Err("answer too large".into());
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])
                .map_err(|e| io_reason(&e))?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).map_err(|e| io_reason(&e))?;
        }
    } else if let Some(n) = len {
        if n > MAX_RESPONSE {
            return Err("answer too large".into());
        }
        body.resize(n, 0);
        r.read_exact(&mut body).map_err(|e| io_reason(&e))?;
    } else {
        r.take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| io_reason(&e))?;
        if body.len() > MAX_RESPONSE {
            return Err("answer too large".into());
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Escapes a path segment (service ids and names may hold characters URLs reserve).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Columns padded to their widest cell; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            out.push_str(c);
            if i + 1 < n {
                let pad = widths[i] - c.chars().count() + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Serf's member status codes, as `/v1/agent/members` sends them.
fn member_status(code: i64) -> &'static str {
    match code {
        0 => "none",
        1 => "alive",
        2 => "leaving",
        3 => "left",
        4 => "failed",
        _ => "unknown",
    }
}

/// `muster members`
pub fn members(args: &ClientArgs) -> Result<(), String> {
    let agent = Agent::new(args);
    let v = agent.call("GET", "/v1/agent/members", None)?.json()?;
    let list = v
        .as_array()
        .ok_or("agent sent members that are not a list")?;
    if args.json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            let tags = m.get("Tags").cloned().unwrap_or(Value::Null);
            vec![
                str_of(m, "Name").to_string(),
                format!(
                    "{}:{}",
                    str_of(m, "Addr"),
                    m.get("Port").and_then(Value::as_u64).unwrap_or(0)
                ),
                member_status(m.get("Status").and_then(Value::as_i64).unwrap_or(-1)).to_string(),
                str_of(&tags, "dc").to_string(),
            ]
        })
        .collect();
    print!("{}", table(&["Node", "Address", "Status", "DC"], &rows));
    Ok(())
}

/// `muster services [NAME]`: every service with its tags, or the instances of NAME with
/// their health (all instances, including critical ones, so problems are visible).
pub fn services(args: &ClientArgs, name: Option<&str>) -> Result<(), String> {
    let agent = Agent::new(args);
    let Some(name) = name else {
        let v = agent.call("GET", "/v1/catalog/services", None)?.json()?;
        let map = v
            .as_object()
            .ok_or("agent sent services that are not an object")?;
        if args.json {
            print_json(&v);
            return Ok(());
        }
        let rows: Vec<Vec<String>> = map
            .iter()
            .map(|(n, tags)| {
                let tags: Vec<&str> = tags
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                vec![n.clone(), tags.join(",")]
            })
            .collect();
        print!("{}", table(&["Service", "Tags"], &rows));
        return Ok(());
    };
    let v = agent
        .call(
            "GET",
            &format!("/v1/health/service/{}", path_segment(name)),
            None,
        )?
        .json()?;
    let list = v
        .as_array()
        .ok_or("agent sent instances that are not a list")?;
    if list.is_empty() {
        return Err(format!("no instances of service {name:?}"));
    }
    if args.json {
        print_json(&v);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list.iter().map(instance_row).collect();
    print!(
        "{}",
        table(&["Node", "ID", "Address", "Health", "Tags"], &rows)
    );
    Ok(())
}

/// One `/v1/health/service` entry as a table row: node, id, address:port, health, tags.
fn instance_row(e: &Value) -> Vec<String> {
    let node = e.get("Node").cloned().unwrap_or(Value::Null);
    let svc = e.get("Service").cloned().unwrap_or(Value::Null);
    let mut addr = str_of(&svc, "Address").to_string();
    if addr.is_empty() {
        addr = str_of(&node, "Address").to_string();
    }
    let port = svc.get("Port").and_then(Value::as_u64).unwrap_or(0);
    let rank = |s: &str| match s {
        "passing" => 0,
        "warning" => 1,
        _ => 2,
    };
    let health = e
        .get("Checks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| str_of(c, "Status"))
        .max_by_key(|s| rank(s))
        .unwrap_or("passing")
        .to_string();
    let tags: Vec<&str> = svc
        .get("Tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    vec![
        str_of(&node, "Node").to_string(),
        str_of(&svc, "ID").to_string(),
        format!("{addr}:{port}"),
        health,
        tags.join(","),
    ]
}

/// `muster register FILE.toml`: the `[[service]]` tables of a config file, checked with the
/// agent's own rules before anything is sent, then each sent to
/// `PUT /v1/agent/service/register`.
pub fn register(args: &ClientArgs, file: &Path) -> Result<(), String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let root: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("{shown}: not valid TOML: {}", one_line(&e.to_string())))?;
    let mut bodies = Vec::new();
    for (key, v) in &root {
        let items: Vec<&toml::Value> = match (key.as_str(), v) {
            ("service" | "services", toml::Value::Array(a)) => a.iter().collect(),
            ("service" | "services", toml::Value::Table(_)) => vec![v],
            ("service" | "services", _) => {
                return Err(format!("{shown}: key {key}: expected [[service]] tables"))
            }
            _ => {
                return Err(format!(
                    "{shown}: key {key}: unknown key (a service file holds [[service]] tables)"
                ))
            }
        };
        for item in items {
            let i = bodies.len();
            let (def, _) = crate::config::service_from_toml(item).map_err(|(sub, reason)| {
                let k = if sub.is_empty() {
                    format!("service[{i}]")
                } else if sub.starts_with('[') {
                    format!("service[{i}]{sub}")
                } else {
                    format!("service[{i}].{sub}")
                };
                format!("{shown}: key {k}: {reason}")
            })?;
            let body = crate::config::toml_to_json(item);
            bodies.push((def.service.name, def.service.id, body));
        }
    }
    if bodies.is_empty() {
        return Err(format!("{shown}: no [[service]] tables"));
    }
    let agent = Agent::new(args);
    let mut done = Vec::new();
    for (name, id, body) in &bodies {
        let bytes = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        agent
            .call("PUT", "/v1/agent/service/register", Some(&bytes))
            .map_err(|e| format!("service {id:?}: {e}"))?;
        done.push(serde_json::json!({"Name": name, "ID": id}));
        if !args.json {
            println!("registered service {name} (id {id})");
        }
    }
    if args.json {
        print_json(&Value::Array(done));
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `muster deregister ID`
pub fn deregister(args: &ClientArgs, id: &str) -> Result<(), String> {
    let agent = Agent::new(args);
    agent.call(
        "PUT",
        &format!("/v1/agent/service/deregister/{}", path_segment(id)),
        None,
    )?;
    if args.json {
        print_json(&serde_json::json!({"Deregistered": id}));
    } else {
        println!("deregistered service {id}");
    }
    Ok(())
}

/// `muster leave`
pub fn leave(args: &ClientArgs) -> Result<(), String> {
    Agent::new(args).call("PUT", "/v1/agent/leave", None)?;
    if args.json {
        print_json(&serde_json::json!({"Leaving": true}));
    } else {
        println!("agent is leaving the cluster and stopping");
    }
    Ok(())
}

/// `muster reload`
pub fn reload(args: &ClientArgs) -> Result<(), String> {
    Agent::new(args).call("PUT", "/v1/agent/reload", None)?;
    if args.json {
        print_json(&serde_json::json!({"Reloaded": true}));
    } else {
        println!("configuration reloaded");
    }
    Ok(())
}

/// `muster keyring --list | --install KEY | --use KEY | --remove KEY`: the cluster-wide
/// keyring through the local agent's `/v1/operator/keyring`.
pub fn keyring(args: &ClientArgs, op: &crate::cli::KeyringOp) -> Result<(), String> {
    let agent = Agent::new(args);
    let (method, key, done) = match op {
        crate::cli::KeyringOp {
            install: Some(k), ..
        } => ("POST", k, "installed"),
        crate::cli::KeyringOp {
            use_key: Some(k), ..
        } => ("PUT", k, "made primary"),
        crate::cli::KeyringOp {
            remove: Some(k), ..
        } => ("DELETE", k, "removed"),
        _ => {
            let v = agent.call("GET", "/v1/operator/keyring", None)?.json()?;
            if args.json {
                print_json(&v);
            } else {
                print!("{}", keyring_table(&v));
            }
            return keyring_failures(&v);
        }
    };
    // Checked here too, so a typo never reaches the agent.
    crate::config::decode_key(key).map_err(|e| format!("key: {e}"))?;
    let body = serde_json::json!({ "Key": key.trim() }).to_string();
    let v = agent
        .call(method, "/v1/operator/keyring", Some(body.as_bytes()))?
        .json()?;
    if args.json {
        print_json(&v);
    } else {
        let n = v
            .get(0)
            .and_then(|r| r.get("NumNodes"))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        println!("key {done} on {n} member(s)");
    }
    keyring_failures(&v)
}

/// The keyring listing as a table: each key, on how many members, primary on how many.
fn keyring_table(v: &Value) -> String {
    let mut rows = Vec::new();
    for ring in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let n = ring.get("NumNodes").and_then(Value::as_u64).unwrap_or(0);
        let primary = ring.get("PrimaryKeys").cloned().unwrap_or(Value::Null);
        if let Some(keys) = ring.get("Keys").and_then(Value::as_object) {
            for (k, count) in keys {
                let p = primary.get(k).and_then(Value::as_u64).unwrap_or(0);
                rows.push(vec![
                    k.clone(),
                    format!("{}/{n}", count.as_u64().unwrap_or(0)),
                    if p > 0 {
                        format!("{p}/{n}")
                    } else {
                        "-".into()
                    },
                ]);
            }
        }
    }
    table(&["Key", "Installed", "Primary"], &rows)
}

/// Fails (exit non-zero) when some member reported an error or gave no answer.
fn keyring_failures(v: &Value) -> Result<(), String> {
    let mut out = Vec::new();
    for ring in v.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(m) = ring.get("Messages").and_then(Value::as_object) {
            for (node, msg) in m {
                out.push(format!("{node}: {}", msg.as_str().unwrap_or("")));
            }
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} member(s) failed: {}",
            out.len(),
            out.join("; ")
        ))
    }
}

/// `muster keygen`: a new gossip key, 32 random bytes from the OS-seeded CSPRNG in base64.
pub fn keygen() -> Result<(), String> {
    use base64::Engine;
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
    Ok(())
}

/// One healthy instance as `watch` compares them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Healthy {
    node: String,
    id: String,
    address: String,
    port: u64,
}

fn healthy_set(v: &Value) -> Result<BTreeSet<Healthy>, String> {
    let list = v
        .as_array()
        .ok_or("agent sent instances that are not a list")?;
    Ok(list
        .iter()
        .map(|e| {
            let row = instance_row(e);
            let port = e
                .get("Service")
                .and_then(|s| s.get("Port"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let address = row[2]
                .rsplit_once(':')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default();
            Healthy {
                node: row[0].clone(),
                id: row[1].clone(),
                address,
                port,
            }
        })
        .collect())
}

/// `muster watch NAME`: blocking queries on `/v1/health/service/NAME?passing`, printing
/// the healthy set first and then each time it changes. Runs until interrupted or the
/// agent goes away (which is a failure: the watch can no longer be trusted).
pub fn watch(args: &ClientArgs, name: &str) -> Result<(), String> {
    let agent = Agent::new(args);
    let base = format!("/v1/health/service/{}?passing", path_segment(name));
    let mut index: u64 = 0;
    let mut last: Option<BTreeSet<Healthy>> = None;
    loop {
        let path = if index == 0 {
            base.clone()
        } else {
            format!("{base}&index={index}&wait={WATCH_WAIT}")
        };
        // The agent answers by the wait plus its jitter (1/16); allow a margin on top.
        let r = agent.request("GET", &path, None, Duration::from_secs(7 * 60))?;
        let r = expect_ok(r)?;
        let new_index = r
            .header("X-Consul-Index")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        // An index going backwards means the agent restarted: start over from its answer.
        index = if new_index < index { 0 } else { new_index };
        let v = r.json()?;
        let set = healthy_set(&v)?;
        if last.as_ref() != Some(&set) {
            print_change(args.json, name, &set, &v);
            last = Some(set);
        }
    }
}

fn print_change(json: bool, name: &str, set: &BTreeSet<Healthy>, raw: &Value) {
    if json {
        // One JSON document per line, so scripts can read changes as they come.
        println!("{raw}");
    } else {
        let list: Vec<String> = set
            .iter()
            .map(|h| format!("{}:{} ({}/{})", h.address, h.port, h.node, h.id))
            .collect();
        println!(
            "{name}: {} healthy: {}",
            set.len(),
            if list.is_empty() {
                "-".to_string()
            } else {
                list.join(" ")
            }
        );
    }
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["Node", "Status"],
            &[
                vec!["a-long-name".into(), "alive".into()],
                vec!["b".into(), "failed".into()],
            ],
        );
        assert_eq!(
            t,
            "Node         Status\na-long-name  alive\nb            failed\n"
        );
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("web-1"), "web-1");
        assert_eq!(path_segment("a b/c?"), "a%20b%2Fc%3F");
    }

    #[test]
    fn refused_connections_read_plainly() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(io_reason(&e), "connection refused");
    }
}
