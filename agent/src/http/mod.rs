//! The HTTP API listener (SPEC §4): hyper connections, routing, and what every endpoint
//! shares — body limits, the write token, Consul's headers, blocking queries.
//!
//! Handlers live in `agent_api` (this agent's own services and checks), `catalog_api`
//! (cluster-wide reads) and `ui_api` (the status page's views; its files are in `ui`).
//! Each returns a [`Reply`]; turning replies and errors into HTTP is done here once, so
//! every endpoint speaks the same status codes.

mod agent_api;
mod auth;
mod cache;
mod catalog_api;
mod operator_api;
mod ui;
mod ui_api;

use crate::shared::{Shared, Stop};
use crate::waiters::Watch;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use muster_proto::Snapshot;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest request body accepted; larger ones get 413 before they are read whole.
pub const MAX_BODY: usize = 1 << 20;
/// Blocking queries: default and longest wait.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Most HTTP connections served at once (blocking queries each hold one); the unit's
/// `LimitNOFILE=65536` leaves room for DNS, gossip and checks beside them.
const MAX_CONNECTIONS: usize = 16_384;
/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub type Body = Full<Bytes>;

/// What a handler produces: a status, a body, and the index for `X-Consul-Index`.
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
    pub content_type: &'static str,
    pub index: Option<u64>,
}

impl Reply {
    pub fn json(value: &serde_json::Value) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
            content_type: "application/json",
            index: None,
        }
    }

    pub fn with_index(mut self, index: u64) -> Reply {
        self.index = Some(index);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Reply {
        self.status = status;
        self
    }

    pub fn text(status: StatusCode, text: impl Into<String>) -> Reply {
        let mut t: String = text.into();
        if !t.ends_with('\n') {
            t.push('\n');
        }
        Reply {
            status,
            body: Bytes::from(t),
            content_type: "text/plain; charset=utf-8",
            index: None,
        }
    }

    pub fn empty() -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::new(),
            content_type: "application/json",
            index: None,
        }
    }
}

/// A refused request, mapped to its status code in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method {0} not allowed")]
    MethodNotAllowed(Method),
    #[error("Permission denied: {0}")]
    Forbidden(String),
    #[error("request body larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<muster_proto::validate::ValidationError> for ApiError {
    fn from(e: muster_proto::validate::ValidationError) -> Self {
        ApiError::BadRequest(format!("Invalid {}: {}", e.field, e.reason))
    }
}

impl From<crate::state::StateError> for ApiError {
    fn from(e: crate::state::StateError) -> Self {
        use crate::state::StateError as S;
        match e {
            S::UnknownService(id) => ApiError::NotFound(format!("Unknown service ID {id:?}")),
            S::UnknownCheck(id) => ApiError::NotFound(format!("Unknown check ID {id:?}")),
            S::Invalid(m) => ApiError::BadRequest(m),
            S::Persist(e) => ApiError::Internal(format!("could not persist: {e}")),
        }
    }
}

pub type ApiResult = Result<Reply, ApiError>;

/// One parsed request, handed to the endpoint handlers.
pub struct Call {
    pub method: Method,
    /// Path segments after `/v1/`, percent-decoded.
    pub segments: Vec<String>,
    pub query: HashMap<String, Vec<String>>,
    pub body: Bytes,
    pub shared: Shared,
}

impl Call {
    /// The first value of a query parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// Whether a flag parameter is present and not explicitly false (`?passing`, `?passing=1`).
    pub fn flag(&self, name: &str) -> bool {
        match self.param(name) {
            None => false,
            Some(v) => !matches!(v, "false" | "0"),
        }
    }

    /// A cache key for this read: the path and every parameter that shapes the answer
    /// (not the blocking-query or consistency ones), in a stable order.
    pub fn cache_key(&self) -> String {
        let mut params: Vec<(&String, &Vec<String>)> = self
            .query
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "index" | "wait" | "stale" | "consistent" | "cached" | "token"
                )
            })
            .collect();
        params.sort();
        format!("{:?}{:?}", self.segments, params)
    }

    /// Serves a JSON body rendered once per `index` of the answer (see `cache`).
    pub fn cached_json(&self, index: u64, render: impl FnOnce() -> serde_json::Value) -> Reply {
        let key = self.cache_key();
        let body = match cache::CACHE.get(&key, index) {
            Some(b) => b,
            None => {
                let b = Bytes::from(serde_json::to_vec(&render()).unwrap_or_default());
                cache::CACHE.put(key, index, b.clone());
                b
            }
        };
        Reply {
            status: StatusCode::OK,
            body,
            content_type: "application/json",
            index: Some(index),
        }
    }

    pub fn params(&self, name: &str) -> &[String] {
        self.query.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The body as JSON (empty body is an error naming what was expected).
    pub fn json_body(&self, what: &str) -> Result<serde_json::Value, ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest(format!(
                "Request body missing: expected {what}"
            )));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
    }

    pub fn require(&self, method: Method) -> Result<(), ApiError> {
        if self.method == method || (method == Method::PUT && self.method == Method::POST) {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed(self.method.clone()))
        }
    }

    /// Rejects a `dc` other than ours, as Consul does for unknown datacenters.
    pub fn check_dc(&self) -> Result<(), ApiError> {
        if let Some(dc) = self.param("dc") {
            if !dc.is_empty() && dc != self.shared.config.load().datacenter {
                return Err(ApiError::Internal(format!("No path to datacenter {dc:?}")));
            }
        }
        Ok(())
    }

    /// A blocking query: waits until the index of what `watch` follows passes `?index=`,
    /// or `?wait=` (default 5m, at most 10m, plus up to 1/16 jitter) runs out, or the agent
    /// stops. Only changes to what it follows wake it.
    pub async fn blocking(&self, watch: Watch<'_>) -> Result<(Arc<Snapshot>, u64), ApiError> {
        let state = &self.shared.state;
        let mut changes = state.follow(watch);
        let snap = state.snapshot();
        let idx = watch.index(&snap);
        // Parameters are checked even when the answer is immediate, so a typo shows at once.
        let wait = match self.param("wait") {
            None => DEFAULT_WAIT,
            Some(w) => muster_proto::duration::parse(w)
                .map_err(|e| ApiError::BadRequest(format!("Invalid wait: {e}")))?,
        }
        .min(MAX_WAIT);
        let Some(min) = self.param("index") else {
            return Ok((snap, idx));
        };
        let min: u64 = min
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("Invalid index {min:?}: not a number")))?;
        // An index from the future (e.g. an agent restart) is answered at once, so that a
        // client never waits on an index that can only be reached by going backwards.
        if idx > min || min > snap.index() {
            return Ok((snap, idx));
        }
        let jitter_ms = (wait.as_millis() as u64 / 16).max(1);
        let wait = wait + Duration::from_millis(rand::random::<u64>() % jitter_ms);
        let deadline = tokio::time::Instant::now() + wait;
        let mut stop = self.shared.stop_rx();
        loop {
            tokio::select! {
                alive = changes.changed() => {
                    if !alive { break; }
                    let snap = state.snapshot();
                    let idx = watch.index(&snap);
                    if idx > min {
                        return Ok((snap, idx));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
                _ = stop.changed() => break,
            }
        }
        let snap = state.snapshot();
        let idx = watch.index(&snap);
        Ok((snap, idx))
    }
}

pub struct Listener {
    listener: TcpListener,
}

/// Binds the HTTP port on `client_addr` (before anything is announced as ready).
pub async fn bind(shared: &Shared) -> anyhow::Result<Listener> {
    let cfg = shared.config.load();
    let addr = SocketAddr::new(cfg.client_addr, cfg.ports.http);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
    Ok(Listener { listener })
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until the agent stops, then stops accepting and drains in-flight requests.
    pub async fn serve(self, shared: Shared) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        // A client that opens a connection and sends nothing (or dribbles headers) must not
        // hold a file descriptor forever; hyper needs a timer to enforce this.
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut stop = shared.stop_rx();
        loop {
            // At the cap, stop accepting until a connection closes; the kernel's backlog
            // holds newcomers meanwhile.
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.changed() => {
                    if *stop.borrow() != Stop::Running { break; }
                    continue;
                }
            };
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "HTTP accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(req, shared).await) }
                    });
                    let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        let _ = conn.await;
                        drop(permit);
                    });
                }
                _ = stop.changed() => {
                    if *stop.borrow() != Stop::Running { break; }
                }
            }
        }
        drop(self.listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("HTTP connections still open after {DRAIN_TIMEOUT:?}; closing");
        }
    }
}

/// Decodes `%XX` escapes. In a query string `+` also means a space (form encoding); in a
/// path it is a literal `+`, as Go's `PathUnescape` treats it, so an id such as `a+b` works.
fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn parse_query(q: Option<&str>) -> Result<HashMap<String, Vec<String>>, ApiError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, true)
            .ok_or_else(|| ApiError::BadRequest(format!("bad query parameter {k:?}")))?;
        let v = percent_decode(v, true)
            .ok_or_else(|| ApiError::BadRequest(format!("bad value for query parameter {k:?}")))?;
        out.entry(k).or_default().push(v);
    }
    Ok(out)
}

fn token_of(req: &Request<Incoming>, query: &HashMap<String, Vec<String>>) -> Option<String> {
    if let Some(t) = req
        .headers()
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
    {
        return Some(t.to_string());
    }
    if let Some(t) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_string());
    }
    query.get("token").and_then(|v| v.first()).cloned()
}

async fn read_body(body: Incoming, declared: Option<u64>) -> Result<Bytes, ApiError> {
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::TooLarge);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ApiError::TooLarge)
            } else {
                Err(ApiError::BadRequest(format!(
                    "could not read request body: {e}"
                )))
            }
        }
    }
}

async fn handle(req: Request<Incoming>, shared: Shared) -> Response<Body> {
    if let Some(page) = ui::serve(&req) {
        return page;
    }
    let route = route_template(req.uri().path());
    let result = prepare_and_route(req, shared.clone()).await;
    let reply = match result {
        Ok(r) => r,
        Err(e) => Reply::text(e.status(), e.to_string()),
    };
    crate::metrics::METRICS.http_request(route, reply.status.as_u16());
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = reply.status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
    if let Some(index) = reply.index {
        if let Ok(v) = HeaderValue::from_str(&index.to_string()) {
            h.insert("X-Consul-Index", v);
        }
        h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
        // In protect mode answers carry peers' last known instances: say so, and say how
        // old that knowledge is the way Consul says how stale a read is (LastContact, ms),
        // so clients with a staleness limit (e.g. consul-template's max_stale) can act.
        match shared.state.snapshot().protect_since_ms() {
            Some(since) => {
                let age = shared.state.now_ms().saturating_sub(since);
                if let Ok(v) = HeaderValue::from_str(&age.to_string()) {
                    h.insert("X-Consul-LastContact", v);
                }
                h.insert("X-Muster-Stale", HeaderValue::from_static("true"));
            }
            None => {
                h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
            }
        }
    }
    resp
}

async fn prepare_and_route(req: Request<Incoming>, shared: Shared) -> ApiResult {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query())?;
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Err(ApiError::NotFound(format!("no such endpoint {path:?}")));
    };
    let segments = rest
        .split('/')
        .map(|s| {
            percent_decode(s, false)
                .ok_or_else(|| ApiError::BadRequest(format!("bad path segment {s:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let method = req.method().clone();
    let is_write = matches!(method, Method::PUT | Method::POST | Method::DELETE);
    let grant = auth::grant(&shared.config.load(), token_of(&req, &query).as_deref());
    if is_write && grant == muster_proto::acl::Grant::Anonymous {
        // Refused before the body is read.
        return Err(ApiError::Forbidden(
            "a token is required for writes (X-Consul-Token or Authorization: Bearer)".into(),
        ));
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = if is_write {
        read_body(req.into_body(), declared).await?
    } else {
        Bytes::new()
    };
    let call = Call {
        method,
        segments,
        query,
        body,
        shared,
    };
    auth::authorize(&call, &grant)?;
    route(call).await
}

async fn route(call: Call) -> ApiResult {
    let segs: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["agent", ..] => agent_api::route(&call).await,
        ["catalog", ..] | ["health", ..] | ["status", ..] => catalog_api::route(&call).await,
        ["internal", "ui", ..] => ui_api::route(&call).await,
        ["operator", ..] => operator_api::route(&call).await,
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint /v1/{}",
            call.segments.join("/")
        ))),
    }
}

/// Every route with its variable segments named, for metrics labels. Matched against the
/// request path so that labels never carry raw ids or names (which would let clients grow
/// the metrics without bound); a path matching none of these counts as "other".
const ROUTE_TEMPLATES: &[&str] = &[
    "/v1/agent/services",
    "/v1/agent/service/register",
    "/v1/agent/service/deregister/:id",
    "/v1/agent/service/maintenance/:id",
    "/v1/agent/service/:id",
    "/v1/agent/maintenance",
    "/v1/agent/checks",
    "/v1/agent/check/register",
    "/v1/agent/check/deregister/:id",
    "/v1/agent/check/pass/:id",
    "/v1/agent/check/warn/:id",
    "/v1/agent/check/fail/:id",
    "/v1/agent/check/update/:id",
    "/v1/agent/health/service/name/:name",
    "/v1/agent/health/service/id/:id",
    "/v1/agent/members",
    "/v1/agent/self",
    "/v1/agent/join/:address",
    "/v1/agent/force-leave/:node",
    "/v1/agent/leave",
    "/v1/agent/reload",
    "/v1/agent/metrics",
    "/v1/catalog/services",
    "/v1/catalog/service/:service",
    "/v1/catalog/nodes",
    "/v1/catalog/node/:node",
    "/v1/catalog/datacenters",
    "/v1/health/service/:service",
    "/v1/health/checks/:service",
    "/v1/health/node/:node",
    "/v1/health/state/:state",
    "/v1/status/leader",
    "/v1/status/peers",
    "/v1/internal/ui/services",
    "/v1/internal/ui/service/:service",
    "/v1/internal/ui/nodes",
    "/v1/operator/keyring",
];

/// The template of `path` from [`ROUTE_TEMPLATES`] (first match wins, so fixed segments
/// listed before a `:param` at the same place take precedence), or "other".
pub fn route_template(path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    ROUTE_TEMPLATES
        .iter()
        .find(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segs.len()
                && ts
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| t.starts_with(':') && !s.is_empty() || t == s)
        })
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn route_templates_hide_ids() {
        assert_eq!(
            route_template("/v1/agent/service/web-1"),
            "/v1/agent/service/:id"
        );
        assert_eq!(
            route_template("/v1/agent/service/register"),
            "/v1/agent/service/register"
        );
        assert_eq!(
            route_template("/v1/agent/service/deregister/x"),
            "/v1/agent/service/deregister/:id"
        );
        assert_eq!(
            route_template("/v1/health/service/db"),
            "/v1/health/service/:service"
        );
        assert_eq!(route_template("/v1/agent/self"), "/v1/agent/self");
        assert_eq!(route_template("/v1/agent/service/"), "other");
        assert_eq!(route_template("/nope/123"), "other");
        assert_eq!(route_template("/v1/agent/service/a/b/c"), "other");
    }
}
