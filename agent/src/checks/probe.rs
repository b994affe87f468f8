//! One run of an active check: an HTTP(S) request, a TCP connect or a script, each bounded
//! by the check's timeout, turned into a status and a Consul-style output line.
//!
//! Everything read from the probed target (response bodies, script output) is capped at
//! [`MAX_OUTPUT`] bytes, so a misbehaving target cannot grow the agent's memory or the
//! gossiped record.

use super::tls;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use muster_proto::model::HealthStatus;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

/// Most bytes of a response body or script output kept in a check's output (Consul's 4 KiB).
pub const MAX_OUTPUT: usize = muster_proto::model::MAX_CHECK_OUTPUT;

/// What a probe found.
pub type Outcome = (HealthStatus, String);

/// Consul's mapping of an HTTP status code: 2xx passing, 429 warning, anything else critical.
pub fn http_status(code: u16) -> HealthStatus {
    match code {
        200..=299 => HealthStatus::Passing,
        429 => HealthStatus::Warning,
        _ => HealthStatus::Critical,
    }
}

/// A script's exit: 0 passing, 1 warning, anything else (or death by signal) critical.
pub fn script_status(code: Option<i32>) -> HealthStatus {
    match code {
        Some(0) => HealthStatus::Passing,
        Some(1) => HealthStatus::Warning,
        _ => HealthStatus::Critical,
    }
}

/// Bytes as text for an output, cut to [`MAX_OUTPUT`] bytes on a character boundary.
pub fn output_text(bytes: &[u8]) -> String {
    muster_proto::model::check_output_text(bytes)
}

// ----- HTTP -----

/// `HTTP`: one request, `Connection: close`, body cut at [`MAX_OUTPUT`].
pub async fn http(
    url: &str,
    method: &str,
    headers: &BTreeMap<String, Vec<String>>,
    tls_skip_verify: bool,
    timeout: Duration,
) -> Outcome {
    match tokio::time::timeout(timeout, http_follow(url, method, headers, tls_skip_verify)).await {
        Err(_) => (
            HealthStatus::Critical,
            format!("HTTP {method} {url}: timed out after {}", human(timeout)),
        ),
        Ok(Err(e)) => (HealthStatus::Critical, format!("HTTP {method} {url}: {e}")),
        Ok(Ok(r)) => (
            http_status(r.code),
            format!(
                "HTTP {method} {url}: {} {} Output: {}",
                r.code, r.reason, r.body
            ),
        ),
    }
}

/// Most redirects followed, as Go's HTTP client (which Consul's checks use) does.
const MAX_REDIRECTS: usize = 10;

/// One HTTP answer: status, reason phrase, the start of the body, and where a redirect
/// points (its body is not read).
struct Response {
    code: u16,
    reason: String,
    body: String,
    location: Option<String>,
}

/// Requests `url`, following redirects like Go's client: 301/302/303 continue as GET
/// (HEAD stays HEAD), 307/308 keep the method. Headers go along on every hop.
async fn http_follow(
    url: &str,
    method: &str,
    headers: &BTreeMap<String, Vec<String>>,
    tls_skip_verify: bool,
) -> Result<Response, String> {
    let mut url = url.to_string();
    let mut method = method.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let r = http_request(&url, &method, headers, tls_skip_verify).await?;
        let Some(location) = r.location.as_deref() else {
            return Ok(r);
        };
        url = resolve_location(&url, location)
            .ok_or_else(|| format!("bad redirect Location {location:?}"))?;
        if matches!(r.code, 301..=303) && method != "HEAD" {
            method = "GET".into();
        }
    }
    Err(format!("stopped after {MAX_REDIRECTS} redirects"))
}

/// The absolute URL a `Location` header means, relative to the URL that answered.
fn resolve_location(base: &str, location: &str) -> Option<String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let uri: hyper::Uri = base.parse().ok()?;
    let scheme = uri.scheme_str()?;
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    let authority = uri.authority()?.as_str();
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    // Relative to the current path's directory.
    let path = uri.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some(format!("{scheme}://{authority}{dir}{location}"))
}

/// Aborts the HTTP connection driver when the request is done or abandoned (timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_request(
    url: &str,
    method: &str,
    headers: &BTreeMap<String, Vec<String>>,
    tls_skip_verify: bool,
) -> Result<Response, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => return Err(format!("unsupported scheme {other:?}")),
    };
    let host = uri.host().ok_or("URL has no host")?;
    // IPv6 literals come bracketed in URLs; sockets and TLS names want them bare.
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or(host);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");

    let method = Method::from_bytes(method.as_bytes()).map_err(|_| "invalid method")?;
    let mut req = Request::builder().method(method).uri(path);
    let has = |name: &str| headers.keys().any(|k| k.eq_ignore_ascii_case(name));
    if !has("host") {
        req = req.header(hyper::header::HOST, authority);
    }
    if !has("user-agent") {
        req = req.header(hyper::header::USER_AGENT, "muster health check");
    }
    if !has("accept") {
        req = req.header(hyper::header::ACCEPT, "text/plain, text/*, */*");
    }
    req = req.header(hyper::header::CONNECTION, "close");
    for (name, values) in headers {
        for v in values {
            req = req.header(name.as_str(), v.as_str());
        }
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid request: {e}"))?;

    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("dial tcp {bare_host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if https {
        let config = tls::client_config(tls_skip_verify)?;
        let name = rustls::pki_types::ServerName::try_from(bare_host.to_string())
            .map_err(|e| format!("invalid TLS server name {bare_host:?}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        exchange(stream, req).await
    } else {
        exchange(tcp, req).await
    }
}

async fn exchange<T>(io: T, req: Request<Empty<Bytes>>) -> Result<Response, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let reason = status.canonical_reason().unwrap_or("").to_string();
    if status.is_redirection() {
        let location = resp
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        // 304 and friends without a Location are final answers, as in Go.
        if let Some(location) = location {
            return Ok(Response {
                code: status.as_u16(),
                reason,
                body: String::new(),
                location: Some(location.to_string()),
            });
        }
    }
    let mut body = resp.into_body();
    let mut kept: Vec<u8> = Vec::new();
    // Only the first MAX_OUTPUT bytes matter; stop reading there. A body that breaks
    // off keeps what arrived: the status line already decided the result.
    while kept.len() < MAX_OUTPUT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_OUTPUT - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    Ok(Response {
        code: status.as_u16(),
        reason,
        body: output_text(&kept),
        location: None,
    })
}

// ----- TCP -----

/// `TCP`: passing when a connection opens within the timeout.
pub async fn tcp(address: &str, timeout: Duration) -> Outcome {
    match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(_)) => (
            HealthStatus::Passing,
            format!("TCP connect {address}: Success"),
        ),
        Ok(Err(e)) => (HealthStatus::Critical, format!("dial tcp {address}: {e}")),
        Err(_) => (
            HealthStatus::Critical,
            format!("dial tcp {address}: i/o timeout after {}", human(timeout)),
        ),
    }
}

// ----- scripts -----

/// How long output is still collected after a script exits (see `run_script`).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// `Args`: runs the program (no shell) with stdout and stderr on one pipe, so the output
/// interleaves as a terminal would show it. Killed when the timeout passes.
pub async fn script(args: &[String], timeout: Duration) -> Outcome {
    let Some((program, rest)) = args.split_first() else {
        return (HealthStatus::Critical, "no program to run".into());
    };
    match run_script(program, rest, timeout).await {
        Ok(outcome) => outcome,
        Err(e) => (
            HealthStatus::Critical,
            format!("failed to run {program:?}: {e}"),
        ),
    }
}

async fn run_script(program: &str, args: &[String], timeout: Duration) -> std::io::Result<Outcome> {
    let (reader, writer) = std::io::pipe()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    // The command still holds the pipe's write ends; dropping it leaves only the child's
    // copies, so the reader sees end-of-file when the script is done.
    drop(cmd);
    let mut output = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let mut kept = Vec::new();
    let run = async {
        let reading = read_capped(&mut output, &mut kept);
        tokio::pin!(reading);
        tokio::select! {
            status = child.wait() => {
                // The script is done. What it wrote is in the pipe and read at once, but a
                // background process it started may hold the pipe open forever: do not
                // wait on that.
                let _ = tokio::time::timeout(OUTPUT_GRACE, &mut reading).await;
                status
            }
            () = &mut reading => child.wait().await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(status) => {
            let status = status?;
            Ok((script_status(status.code()), output_text(&kept)))
        }
        Err(_) => {
            // kill_on_drop would also do it; killing here reaps the child right away.
            let _ = child.kill().await;
            Ok((
                HealthStatus::Critical,
                format!("Timed out ({}) running check", human(timeout)),
            ))
        }
    }
}

/// Reads to end-of-file, keeping the first [`MAX_OUTPUT`] bytes and discarding the rest
/// (still reading it, so the script never blocks on a full pipe).
async fn read_capped(r: &mut (impl AsyncRead + Unpin), kept: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// A duration the way Go prints short ones ("10s", "500ms").
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn http_codes_map_like_consul() {
        assert_eq!(http_status(200), HealthStatus::Passing);
        assert_eq!(http_status(204), HealthStatus::Passing);
        assert_eq!(http_status(299), HealthStatus::Passing);
        assert_eq!(http_status(429), HealthStatus::Warning);
        assert_eq!(http_status(301), HealthStatus::Critical);
        assert_eq!(http_status(404), HealthStatus::Critical);
        assert_eq!(http_status(500), HealthStatus::Critical);
        assert_eq!(http_status(199), HealthStatus::Critical);
    }

    #[test]
    fn redirect_locations_resolve_against_the_answering_url() {
        let base = "http://10.0.0.1:8080/app/health?x=1";
        let r = |l| resolve_location(base, l);
        assert_eq!(r("https://other/h").as_deref(), Some("https://other/h"));
        assert_eq!(r("//other:9/h").as_deref(), Some("http://other:9/h"));
        assert_eq!(r("/ok").as_deref(), Some("http://10.0.0.1:8080/ok"));
        assert_eq!(
            r("ready").as_deref(),
            Some("http://10.0.0.1:8080/app/ready")
        );
        assert_eq!(
            resolve_location("http://h", "ready").as_deref(),
            Some("http://h/ready")
        );
    }

    #[test]
    fn exit_codes_map_like_consul() {
        assert_eq!(script_status(Some(0)), HealthStatus::Passing);
        assert_eq!(script_status(Some(1)), HealthStatus::Warning);
        assert_eq!(script_status(Some(2)), HealthStatus::Critical);
        assert_eq!(script_status(Some(-1)), HealthStatus::Critical);
        assert_eq!(script_status(None), HealthStatus::Critical);
    }

    #[test]
    fn output_is_capped_on_a_char_boundary() {
        let long = "é".repeat(5000); // 2 bytes each
        let out = output_text(long.as_bytes());
        assert!(out.len() <= MAX_OUTPUT);
        assert!(out.chars().all(|c| c == 'é'));
        // Invalid UTF-8 grows under lossy decoding; still capped.
        let junk = vec![0xffu8; 10_000];
        assert!(output_text(&junk).len() <= MAX_OUTPUT);
        assert_eq!(output_text(b"ok"), "ok");
    }

    #[tokio::test]
    async fn script_exit_codes_and_combined_output() {
        let t = Duration::from_secs(20);
        let (st, out) = script(&s(&["sh", "-c", "echo up; echo also >&2"]), t).await;
        assert_eq!(st, HealthStatus::Passing);
        assert!(out.contains("up") && out.contains("also"), "{out:?}");
        let (st, out) = script(&s(&["sh", "-c", "echo slow; exit 1"]), t).await;
        assert_eq!((st, out.as_str()), (HealthStatus::Warning, "slow\n"));
        let (st, _) = script(&s(&["sh", "-c", "exit 7"]), t).await;
        assert_eq!(st, HealthStatus::Critical);
        let (st, out) = script(&s(&["/nonexistent/check-script"]), t).await;
        assert_eq!(st, HealthStatus::Critical);
        assert!(out.contains("failed to run"), "{out:?}");
    }

    #[tokio::test]
    async fn script_output_is_capped_and_drained() {
        // 1 MiB of output: more than a pipe holds, so the script only finishes if we drain.
        let (st, out) = script(
            &s(&["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; exit 0"]),
            Duration::from_secs(30),
        )
        .await;
        assert_eq!(st, HealthStatus::Passing);
        assert_eq!(out.len(), MAX_OUTPUT);
    }

    #[tokio::test]
    async fn script_that_leaves_a_background_process_still_finishes() {
        // The background sleep keeps the output pipe open past the script's exit (and past
        // the check's timeout); the result must come from the script's own exit.
        let (st, out) = script(
            &s(&["sh", "-c", "sleep 5 & echo started; exit 1"]),
            Duration::from_secs(4),
        )
        .await;
        assert_eq!((st, out.as_str()), (HealthStatus::Warning, "started\n"));
    }

    #[tokio::test]
    async fn script_is_killed_on_timeout() {
        let (st, out) = script(&s(&["sleep", "30"]), Duration::from_millis(300)).await;
        assert_eq!(st, HealthStatus::Critical);
        assert!(out.starts_with("Timed out (300ms)"), "{out:?}");
    }

    #[tokio::test]
    async fn tcp_passes_on_connect_and_fails_on_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (st, out) = tcp(&addr, Duration::from_secs(10)).await;
        assert_eq!(st, HealthStatus::Passing, "{out}");
        drop(l);
        let (st, out) = tcp(&addr, Duration::from_secs(10)).await;
        assert_eq!(st, HealthStatus::Critical, "{out}");
        assert!(out.starts_with(&format!("dial tcp {addr}")), "{out}");
    }
}
