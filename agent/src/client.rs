//! Client commands (SPEC §2): `members`, `services`, `register`, `deregister`, `watch`,
//! `keygen`, `leave`, `reload`, `version`. Each talks to the local agent's HTTP API with a
//! HTTP/1.1 client (hyper's), prints a table for people or JSON with `--json`, and on
//! any failure prints one line `muster: <reason>` and exits non-zero.

use crate::cli::ClientArgs;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Largest answer we read from the agent; a catalog bigger than this is not a local agent.
const MAX_RESPONSE: usize = 64 << 20;
/// How long a blocking query in `watch` asks the agent to wait.
const WATCH_WAIT: &str = "5m";
/// How long we wait for a TCP connection to the agent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long we wait for the head of an ordinary answer. A local agent answers in
/// milliseconds; a port that stays silent this long is not a muster agent's HTTP port (the
/// DNS port, for one, reads our request as the start of a large DNS message and says
/// nothing), and a person is told so instead of waiting on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the body of an answer may take once its head has arrived.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

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
pub(crate) struct Response {
    status: u16,
    headers: hyper::HeaderMap,
    body: Bytes,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("agent sent a response that is not JSON: {e}"))
    }
}

/// The local agent's HTTP API, as `--http-addr` / `MUSTER_HTTP_ADDR` and `--token` say,
/// reached with hyper's HTTP/1.1 client on a small single-threaded runtime (one command
/// makes a few requests in turn; nothing runs alongside them).
pub struct Agent {
    addr_text: String,
    token: Option<String>,
    runtime: tokio::runtime::Runtime,
}

/// Why one exchange with the agent failed, before it is put into words.
enum Failure {
    /// Could not connect (or resolve): the agent is not there.
    Unreachable(String),
    /// Something listens but did not answer in HTTP: not an agent's HTTP port.
    NotHttp(String),
    /// Anything else, already in words.
    Other(String),
}

impl Agent {
    pub fn new(args: &ClientArgs) -> Result<Agent, String> {
        let addr = args.http_addr.trim();
        let addr = addr
            .strip_prefix("http://")
            .unwrap_or(addr)
            .trim_end_matches('/');
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the HTTP client: {e}"))?;
        Ok(Agent {
            addr_text: addr.to_string(),
            token: args.token.clone().filter(|t| !t.is_empty()),
            runtime,
        })
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

    /// One request over a fresh connection. `answer_timeout` bounds the wait for the head
    /// of the answer (a blocking query needs longer than the default).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        answer_timeout: Duration,
    ) -> Result<Response, String> {
        let addr = self.resolve()?;
        let req = self.build(method, path, body)?;
        let a = &self.addr_text;
        match self.runtime.block_on(exchange(addr, req, answer_timeout)) {
            Ok(r) => Ok(r),
            Err(Failure::Unreachable(why)) => Err(self.unreachable(why)),
            Err(Failure::NotHttp(why)) => Err(format!(
                "{a} is not a muster agent's HTTP address: {why} \
                 (an agent serves HTTP on its [ports] http, 8500 by default)"
            )),
            Err(Failure::Other(why)) => Err(format!("agent at {a}: {why}")),
        }
    }

    fn build(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<hyper::Request<Full<Bytes>>, String> {
        let method = hyper::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let body = body.unwrap_or(&[]);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.addr_text)
            .header(
                hyper::header::USER_AGENT,
                concat!("muster/", env!("CARGO_PKG_VERSION")),
            )
            .header(hyper::header::CONNECTION, "close");
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            let v = hyper::header::HeaderValue::from_str(t)
                .map_err(|_| "the token holds a character a header cannot carry (a line break?)")?;
            req = req.header("X-Consul-Token", v);
        }
        req.body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| format!("cannot build the request: {e}"))
    }

    /// A request whose answer must be 2xx; otherwise the agent's message is the reason.
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, String> {
        let r = self.request(method, path, body, ANSWER_TIMEOUT)?;
        expect_ok(r)
    }
}

/// Connects, sends `req` and reads the whole answer, each step under its own deadline.
async fn exchange(
    addr: SocketAddr,
    req: hyper::Request<Full<Bytes>>,
    answer_timeout: Duration,
) -> Result<Response, Failure> {
    let tcp =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(Failure::Unreachable(format!(
                    "no connection within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(e)) => return Err(Failure::Unreachable(io_reason(&e))),
            Ok(Ok(s)) => s,
        };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Failure::Other(e.to_string()))?;
    // The connection is driven on this runtime while we wait; it ends with the exchange.
    let driver = tokio::spawn(conn);
    let head = tokio::time::timeout(answer_timeout, sender.send_request(req)).await;
    let result = match head {
        Err(_) => Err(Failure::NotHttp(format!(
            "no HTTP answer within {}s",
            answer_timeout.as_secs()
        ))),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE).collect();
            match tokio::time::timeout(BODY_TIMEOUT, body).await {
                Err(_) => Err(Failure::Other("the answer's body stalled".into())),
                Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Failure::Other(format!(
                    "answer larger than {} MiB",
                    MAX_RESPONSE >> 20
                ))),
                Ok(Err(e)) => Err(Failure::Other(format!("answer broke off: {e}"))),
                Ok(Ok(collected)) => Ok(Response {
                    status,
                    headers: parts.headers,
                    body: collected.to_bytes(),
                }),
            }
        }
    };
    driver.abort();
    result
}

/// A failed exchange in a person's words: a reply that is not HTTP, or a connection closed
/// with no reply at all, means `--http-addr` names something other than an agent.
fn classify(e: &hyper::Error) -> Failure {
    if e.is_parse() || e.is_parse_status() {
        return Failure::NotHttp(format!("its reply is not HTTP ({e})"));
    }
    if e.is_incomplete_message() {
        return Failure::NotHttp("it closed the connection without an HTTP answer".into());
    }
    let source = std::error::Error::source(e);
    if let Some(io) = source.and_then(|s| s.downcast_ref::<std::io::Error>()) {
        if io.kind() == std::io::ErrorKind::ConnectionReset {
            return Failure::NotHttp("it reset the connection without an HTTP answer".into());
        }
        return Failure::Other(io_reason(io));
    }
    // A request "canceled" because the connection failed first carries the connection's
    // error; a server that speaks before it is asked (sshd, SMTP) shows up that way.
    if let Some(inner) = source.and_then(|s| s.downcast_ref::<hyper::Error>()) {
        return match classify(inner) {
            Failure::Other(_) => Failure::NotHttp(format!("its reply is not HTTP ({inner})")),
            f => f,
        };
    }
    Failure::Other(e.to_string())
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

/// Escapes a path segment (service ids and names may hold characters URLs reserve).
pub(crate) fn path_segment(s: &str) -> String {
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
    let agent = Agent::new(args)?;
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
    let agent = Agent::new(args)?;
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
    let agent = Agent::new(args)?;
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
    let agent = Agent::new(args)?;
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
    Agent::new(args)?.call("PUT", "/v1/agent/leave", None)?;
    if args.json {
        print_json(&serde_json::json!({"Leaving": true}));
    } else {
        println!("agent is leaving the cluster and stopping");
    }
    Ok(())
}

/// `muster reload`
pub fn reload(args: &ClientArgs) -> Result<(), String> {
    Agent::new(args)?.call("PUT", "/v1/agent/reload", None)?;
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
    let agent = Agent::new(args)?;
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
    let agent = Agent::new(args)?;
    let base = format!("/v1/health/service/{}?passing", path_segment(name));
    let mut index: u64 = 0;
    let mut last: Option<BTreeSet<Healthy>> = None;
    loop {
        let path = if index == 0 {
            base.clone()
        } else {
            format!("{base}&index={index}&wait={WATCH_WAIT}")
        };
        // A blocking query is answered by the wait plus its jitter (1/16): allow a margin on
        // top. The first query does not block, so a wrong address is told at once.
        let timeout = if index == 0 {
            ANSWER_TIMEOUT
        } else {
            Duration::from_secs(7 * 60)
        };
        let r = agent.request("GET", &path, None, timeout)?;
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
