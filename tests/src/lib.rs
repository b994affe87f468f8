//! Helpers shared by the end-to-end tests: start the real `muster` binary on a 127.0.0.x
//! address with free ports, talk to it over real HTTP, wait for conditions, clean up.
//!
//! The binary is `target/<profile>/muster` next to the test executable (build it with
//! `cargo build --bins` first; the README's test command does), or `$MUSTER_BIN`.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Path of the `muster` binary under test.
pub fn muster_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MUSTER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/<test> -> target/debug/muster
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("muster");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --bins` before the tests (or set MUSTER_BIN)",
        bin.display()
    );
    bin
}

/// A port that was free on `ip` a moment ago (TCP and UDP).
pub fn free_port(ip: &str) -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind((ip, 0)).expect("bind for a free port");
        let port = l.local_addr().unwrap().port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip}");
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

static DIRS: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = DIRS.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("muster-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start one agent.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub name: String,
    pub ip: String,
    pub http_port: u16,
    pub dns_port: u16,
    pub gossip_port: u16,
    pub dev: bool,
    pub data_dir: Option<PathBuf>,
    pub extra: Vec<String>,
    /// Environment variables set for the agent's process (e.g. to preload libfaketime).
    pub env: Vec<(String, String)>,
}

impl AgentSpec {
    /// A `--dev` agent on `ip` (e.g. "127.0.0.1") with fresh ports.
    pub fn dev(name: &str, ip: &str) -> AgentSpec {
        AgentSpec {
            name: name.into(),
            ip: ip.into(),
            http_port: free_port(ip),
            dns_port: free_port(ip),
            gossip_port: free_port(ip),
            dev: true,
            data_dir: None,
            extra: vec![],
            env: vec![],
        }
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    pub fn args(mut self, a: &[&str]) -> Self {
        self.extra.extend(a.iter().map(|s| s.to_string()));
        self
    }

    /// Sets an environment variable for the agent's process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn data_dir(mut self, d: &Path) -> Self {
        self.data_dir = Some(d.to_path_buf());
        self
    }

    pub fn gossip_addr(&self) -> String {
        format!("{}:{}", self.ip, self.gossip_port)
    }

    pub fn command_args(&self) -> Vec<String> {
        let mut a = vec!["agent".to_string()];
        if self.dev {
            a.push("--dev".into());
        }
        for (k, v) in [
            ("--node", self.name.clone()),
            ("--bind", self.ip.clone()),
            ("--advertise", self.ip.clone()),
            ("--client", self.ip.clone()),
            ("--http-port", self.http_port.to_string()),
            ("--dns-port", self.dns_port.to_string()),
            ("--gossip-port", self.gossip_port.to_string()),
        ] {
            a.push(k.into());
            a.push(v);
        }
        if let Some(d) = &self.data_dir {
            a.push("--data-dir".into());
            a.push(d.display().to_string());
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// A running agent; killed (SIGKILL) on drop if still running.
pub struct Agent {
    pub spec: AgentSpec,
    pub child: Option<Child>,
    pub log: PathBuf,
    _logdir: TempDir,
}

impl Agent {
    /// Starts the agent and waits until its HTTP API answers. Ports from `free_port` can be
    /// taken by someone else between the probe and the agent's bind (tests run in
    /// parallel); when the agent exits because a port is in use, it is retried on fresh ports.
    pub fn start(mut spec: AgentSpec) -> Agent {
        for _ in 0..3 {
            let mut a = Agent::spawn(spec.clone());
            let http = a.http();
            let ready = wait_for(Duration::from_secs(20), || {
                try_request(http, "GET", "/v1/agent/self", None, &[]).is_ok_and(|r| r.status == 200)
                    || a.child
                        .as_mut()
                        .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
            });
            let exited = a
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if ready && !exited {
                return a;
            }
            if exited && a.logs().contains("Address already in use") {
                spec.http_port = free_port(&spec.ip);
                spec.dns_port = free_port(&spec.ip);
                spec.gossip_port = free_port(&spec.ip);
                continue;
            }
            panic!("agent {} never became ready; log:\n{}", spec.name, a.logs());
        }
        panic!("agent {} could not find free ports", spec.name);
    }

    /// Starts the agent without waiting.
    pub fn spawn(spec: AgentSpec) -> Agent {
        let logdir = TempDir::new("log");
        let log = logdir.path().join("agent.log");
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new(muster_bin())
            .args(spec.command_args())
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .env("RUST_BACKTRACE", "1")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .spawn()
            .expect("spawn muster");
        Agent {
            spec,
            child: Some(child),
            log,
            _logdir: logdir,
        }
    }

    pub fn http(&self) -> SocketAddr {
        SocketAddr::new(self.spec.ip.parse::<IpAddr>().unwrap(), self.spec.http_port)
    }

    pub fn dns(&self) -> SocketAddr {
        SocketAddr::new(self.spec.ip.parse::<IpAddr>().unwrap(), self.spec.dns_port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn wait_ready(&self) {
        let http = self.http();
        let ok = wait_for(Duration::from_secs(20), || {
            try_request(http, "GET", "/v1/agent/self", None, &[]).is_ok_and(|r| r.status == 200)
        });
        assert!(
            ok,
            "agent {} never became ready; log:\n{}",
            self.spec.name,
            self.logs()
        );
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        request(self.http(), "GET", path, None, &[])
    }

    pub fn put(&self, path: &str, body: &str) -> HttpResponse {
        request(self.http(), "PUT", path, Some(body.as_bytes()), &[])
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Sends a signal by name ("TERM", "KILL", "HUP", "INT").
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its exit code (None if killed by signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("agent already reaped");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.child = None;
                return st.code();
            }
            if Instant::now() > deadline {
                panic!(
                    "agent {} did not exit in {timeout:?}; log:\n{}",
                    self.spec.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no X-Consul-Index in {:?}", self.headers))
    }
}

/// One HTTP/1.1 request over a fresh TCP connection; panics on transport errors.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> HttpResponse {
    try_request(addr, method, path, body, headers)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// How long a test waits for a TCP connection to the agent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a test waits for a whole answer: longer than any blocking query a test makes.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(700);

/// One HTTP/1.1 request over a fresh TCP connection, made with hyper's client: a
/// well-kept HTTP implementation rather than a parser of our own, so a test never passes
/// or fails because two hand-written halves of HTTP happen to agree.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    // Each call has its own small runtime: tests call this from plain threads, often
    // several at once, and never from inside a runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(exchange(addr, method, path, body.unwrap_or(&[]), headers))
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    use http_body_util::{BodyExt, Full};
    use std::io::{Error, ErrorKind};
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "connect timed out"))??;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(Error::other)?;
    let driver = tokio::spawn(conn);
    let method = hyper::Method::from_bytes(method.as_bytes()).map_err(Error::other)?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::copy_from_slice(body)))
        .map_err(Error::other)?;
    let answer = async {
        let resp = sender.send_request(req).await.map_err(Error::other)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(Error::other)?
            .to_bytes()
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    };
    let r = tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "no answer in time"))?;
    driver.abort();
    r
}

/// Asks `server` over UDP for the A records of `name`; returns the rcode and the addresses.
pub fn dns_a(
    server: SocketAddr,
    name: &str,
) -> (
    hickory_proto::op::ResponseCode,
    std::collections::BTreeSet<String>,
) {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let id: u16 = (std::process::id() as u16) ^ (DIRS.fetch_add(1, Ordering::SeqCst) as u16);
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_ascii(name).expect("query name"),
        RecordType::A,
    ));
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind UDP client");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(&q.to_vec().expect("encode query"), server)
        .expect("send DNS query");
    let mut buf = vec![0u8; 4096];
    let n = s.recv(&mut buf).expect("DNS reply");
    let m = Message::from_vec(&buf[..n]).expect("reply decodes");
    assert_eq!(m.metadata.id, id);
    let addrs = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    (m.metadata.response_code, addrs)
}

/// Runs `iptables` with `args`; whether it succeeded. Panics when iptables is missing.
pub fn iptables(args: &[&str]) -> bool {
    Command::new("iptables")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("iptables must be installed (tests/run.sh installs it): {e}"))
        .success()
}

/// An iptables chain of our own, jumped to from INPUT, whose rules drop traffic while it
/// lives; removed on drop, pass or fail. Named after the test process (plus `tag`, so two
/// test files running at once keep apart); a chain left by an earlier process of the same
/// id is removed first.
pub struct DropChain {
    chain: String,
}

impl DropChain {
    pub fn new(tag: &str) -> DropChain {
        let chain = format!("MUSTER_{tag}{}", std::process::id());
        DropChain::remove(&chain);
        assert!(
            iptables(&["-N", &chain]),
            "cannot create iptables chain {chain}"
        );
        assert!(iptables(&["-I", "INPUT", "-j", &chain]));
        DropChain { chain }
    }

    /// Drops packets that match `rule` (iptables match arguments, e.g. `-s A -d B`).
    pub fn drop_matching(&self, rule: &[&str]) {
        let mut args = vec!["-A", self.chain.as_str()];
        args.extend_from_slice(rule);
        args.extend_from_slice(&["-j", "DROP"]);
        assert!(iptables(&args), "iptables {args:?} failed");
    }

    /// Removes the chain and the jump to it, if they exist (quietly: they may not).
    fn remove(chain: &str) {
        for args in [
            &["-D", "INPUT", "-j", chain][..],
            &["-F", chain][..],
            &["-X", chain][..],
        ] {
            let _ = Command::new("iptables")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for DropChain {
    fn drop(&mut self) {
        DropChain::remove(&self.chain);
    }
}
