//! `/v1/agent/*`: this agent's own services, checks and membership view.

use super::{ApiError, ApiResult, Call, Reply};
use crate::checks::process;
use crate::config::ServiceDefinition;
use crate::state::Source;
use hyper::{Method, StatusCode};
use muster_proto::consul;
use muster_proto::model::{CheckKind, HealthStatus, NodeRecord};
use muster_proto::NodeEntry;
use serde_json::{json, Map, Value};

pub async fn route(call: &Call) -> ApiResult {
    let segs: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["agent", "services"] => {
            call.require(Method::GET)?;
            services(call)
        }
        ["agent", "service", "register"] => {
            call.require(Method::PUT)?;
            register(call).await
        }
        ["agent", "service", "deregister", id] => {
            call.require(Method::PUT)?;
            call.shared.state.deregister_service(id).await?;
            Ok(Reply::empty())
        }
        ["agent", "service", "maintenance", id] => {
            call.require(Method::PUT)?;
            let enable = enable_param(call)?;
            let reason = call.param("reason").unwrap_or("");
            call.shared
                .state
                .set_service_maintenance(id, enable, reason)
                .await?;
            Ok(Reply::empty())
        }
        ["agent", "maintenance"] => {
            call.require(Method::PUT)?;
            let enable = enable_param(call)?;
            let reason = call.param("reason").unwrap_or("");
            call.shared
                .state
                .set_node_maintenance(enable, reason)
                .await?;
            Ok(Reply::empty())
        }
        ["agent", "service", id] => {
            call.require(Method::GET)?;
            service(call, id)
        }
        ["agent", "checks"] => {
            call.require(Method::GET)?;
            checks(call)
        }
        ["agent", "check", "register"] => {
            call.require(Method::PUT)?;
            register_check(call).await
        }
        ["agent", "check", "deregister", id] => {
            call.require(Method::PUT)?;
            call.shared.state.deregister_check(id).await?;
            Ok(Reply::empty())
        }
        ["agent", "check", verb @ ("pass" | "warn" | "fail"), id] => {
            call.require(Method::PUT)?;
            let status = match *verb {
                "pass" => HealthStatus::Passing,
                "warn" => HealthStatus::Warning,
                _ => HealthStatus::Critical,
            };
            let note = call.param("note").unwrap_or("").to_string();
            ttl_update(call, id, status, note).await
        }
        ["agent", "check", "update", id] => {
            call.require(Method::PUT)?;
            let body = call.json_body("{\"Status\": ..., \"Output\": ...}")?;
            let f = consul::Fields::new(&body, "body")?;
            let status = f.string(&["Status"])?.ok_or_else(|| {
                ApiError::BadRequest(
                    "Invalid Status: missing (passing, warning or critical)".into(),
                )
            })?;
            let status = HealthStatus::parse(&status).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Invalid Status: {status:?} is not passing, warning or critical"
                ))
            })?;
            let output = f.string(&["Output"])?.unwrap_or_default();
            ttl_update(call, id, status, output).await
        }
        ["agent", "health", "service", "name", name] => {
            call.require(Method::GET)?;
            local_health(call, |s| s.name.eq_ignore_ascii_case(name), name, false)
        }
        ["agent", "health", "service", "id", id] => {
            call.require(Method::GET)?;
            local_health(call, |s| s.id == *id, id, true)
        }
        ["agent", "members"] => {
            call.require(Method::GET)?;
            members(call)
        }
        ["agent", "self"] => {
            call.require(Method::GET)?;
            self_info(call)
        }
        ["agent", "leave"] => {
            call.require(Method::PUT)?;
            call.shared.stop_tx.send_replace(crate::shared::Stop::Leave);
            Ok(Reply::empty())
        }
        ["agent", "join", addr] => {
            call.require(Method::PUT)?;
            call.shared
                .gossip
                .join(addr)
                .await
                .map_err(ApiError::Internal)?;
            Ok(Reply::empty())
        }
        ["agent", "force-leave", node] => {
            call.require(Method::PUT)?;
            let prune = call.flag("prune");
            call.shared
                .gossip
                .force_leave(node, prune)
                .await
                .map_err(ApiError::Internal)?;
            Ok(Reply::empty())
        }
        ["agent", "metrics"] => {
            call.require(Method::GET)?;
            metrics(call)
        }
        ["agent", "reload"] => {
            call.require(Method::PUT)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            call.shared
                .reload_tx
                .send(tx)
                .await
                .map_err(|_| ApiError::Internal("agent is shutting down".into()))?;
            match rx.await {
                Ok(Ok(_)) => Ok(Reply::empty()),
                Ok(Err(e)) => Err(ApiError::BadRequest(format!("reload failed: {e}"))),
                Err(_) => Err(ApiError::Internal("agent is shutting down".into())),
            }
        }
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint /v1/{}",
            call.segments.join("/")
        ))),
    }
}

fn enable_param(call: &Call) -> Result<bool, ApiError> {
    match call.param("enable") {
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(ApiError::BadRequest(format!(
            "Invalid enable: {v:?} is not true or false"
        ))),
        None => Err(ApiError::BadRequest(
            "Missing value for enable (true or false)".into(),
        )),
    }
}

fn services(call: &Call) -> ApiResult {
    let local = call.shared.state.local();
    let mut out = Map::new();
    for s in local.services.values() {
        out.insert(s.id.clone(), consul::agent_service(s, &local.datacenter));
    }
    Ok(Reply::json(&Value::Object(out)).with_index(call.shared.state.snapshot().index()))
}

fn service(call: &Call, id: &str) -> ApiResult {
    let local = call.shared.state.local();
    let s = local
        .services
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
    let mut v = consul::agent_service(s, &local.datacenter);
    v["ContentHash"] = json!(format!("{:016x}", local.version));
    Ok(Reply::json(&v).with_index(call.shared.state.snapshot().index()))
}

async fn register(call: &Call) -> ApiResult {
    let body = call.json_body("a service definition")?;
    let mut reg = consul::parse_registration(&body)?;
    consul::bind_processes(&mut reg, process::observe_watchable)?;
    refuse_scripts(call, reg.checks.iter().map(|c| &c.kind))?;
    let replace = call.flag("replace-existing-checks");
    call.shared
        .state
        .register_service(
            ServiceDefinition {
                service: reg.service,
                checks: reg.checks,
            },
            Source::Http,
            replace,
        )
        .await?;
    Ok(Reply::empty())
}

fn refuse_scripts<'a>(
    call: &Call,
    kinds: impl Iterator<Item = &'a CheckKind>,
) -> Result<(), ApiError> {
    let allowed = call.shared.config.load().enable_script_checks;
    for k in kinds {
        if matches!(k, CheckKind::Script { .. }) && !allowed {
            return Err(ApiError::BadRequest(
                "Invalid Check.Args: script checks are disabled on this agent (set enable_script_checks = true)".into(),
            ));
        }
    }
    Ok(())
}

fn checks(call: &Call) -> ApiResult {
    let snap = call.shared.state.snapshot();
    let local = call.shared.state.local();
    let entry = snap.node(&local.name);
    let mut out = Map::new();
    for c in local.checks.values() {
        let ix = entry.map(|e| e.check_indexes(&c.id)).unwrap_or_default();
        out.insert(
            c.id.clone(),
            consul::health_check(
                &local.name,
                c,
                local.services.get(&c.service_id).map(|s| &**s),
                ix,
            ),
        );
    }
    Ok(Reply::json(&Value::Object(out)).with_index(snap.index()))
}

async fn register_check(call: &Call) -> ApiResult {
    let body = call.json_body("a check definition")?;
    let mut check = consul::parse_check(&body, "body", "", "")?;
    consul::bind_process(&mut check, "body", process::observe_watchable)?;
    if check.name.is_empty() {
        return Err(ApiError::BadRequest(
            "Invalid Name: missing check name".into(),
        ));
    }
    refuse_scripts(call, std::iter::once(&check.kind))?;
    call.shared.state.register_check(check).await?;
    Ok(Reply::empty())
}

async fn ttl_update(call: &Call, id: &str, status: HealthStatus, output: String) -> ApiResult {
    let local = call.shared.state.local();
    let check = local
        .checks
        .get(id)
        .ok_or_else(|| ApiError::NotFound(format!("Unknown check ID {id:?}")))?;
    if !matches!(check.kind, CheckKind::Ttl { .. }) {
        return Err(ApiError::BadRequest(format!(
            "check {id:?} is not a TTL check"
        )));
    }
    // Restart the TTL timer even when status and output repeat (no record change then).
    call.shared.state.ttl_refreshed(id);
    call.shared.state.update_check(id, status, output).await?;
    Ok(Reply::empty())
}

/// `/v1/agent/health/service/{name,id}/…`: 200 passing, 429 warning, 503 critical.
fn local_health(
    call: &Call,
    pick: impl Fn(&muster_proto::Service) -> bool,
    what: &str,
    single: bool,
) -> ApiResult {
    let snap = call.shared.state.snapshot();
    let node = call.shared.state.node_name.clone();
    let entry = snap
        .node(&node)
        .ok_or_else(|| ApiError::Internal("local node missing from catalog".into()))?;
    let mut worst = HealthStatus::Passing;
    let mut items = Vec::new();
    for s in entry.record.services.values().filter(|s| pick(s)) {
        let status = entry
            .record
            .checks_for_service(&s.id)
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Passing);
        worst = worst.max(status);
        let checks: Vec<Value> = entry
            .record
            .checks_for_service(&s.id)
            .map(|c| consul::health_check(&node, c, Some(s), entry.check_indexes(&c.id)))
            .collect();
        items.push(json!({
            "AggregatedStatus": status.as_str(),
            "Service": consul::agent_service(s, &entry.record.datacenter),
            "Checks": checks,
        }));
    }
    if items.is_empty() {
        return Err(ApiError::NotFound(format!(
            "ServiceName {what:?} not found on this agent"
        )));
    }
    let code = match worst {
        HealthStatus::Passing => StatusCode::OK,
        HealthStatus::Warning => StatusCode::TOO_MANY_REQUESTS,
        HealthStatus::Critical => StatusCode::SERVICE_UNAVAILABLE,
    };
    let body = if single {
        items.into_iter().next().unwrap_or(Value::Null)
    } else {
        Value::Array(items)
    };
    Ok(Reply::json(&body)
        .with_status(code)
        .with_index(snap.index()))
}

/// A member in Consul's `/v1/agent/members` shape.
pub fn member_json(entry: &NodeEntry, gossip_port: u16) -> Value {
    let rec: &NodeRecord = &entry.record;
    let (addr, port) = match entry.gossip_addr {
        Some(a) => (a.ip().to_string(), a.port()),
        None => (rec.address.to_string(), gossip_port),
    };
    let mut tags = Map::new();
    tags.insert("role".into(), json!("node"));
    tags.insert("dc".into(), json!(rec.datacenter));
    tags.insert("build".into(), json!(env!("CARGO_PKG_VERSION")));
    tags.insert("vsn".into(), json!("2"));
    tags.insert("id".into(), json!(consul::node_id(&rec.name)));
    for (k, v) in &rec.meta {
        tags.insert(format!("meta_{k}"), json!(v));
    }
    json!({
        "Name": rec.name,
        "Addr": addr,
        "Port": port,
        "Tags": tags,
        "Status": entry.status.code(),
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

fn members(call: &Call) -> ApiResult {
    let snap = call.shared.state.snapshot();
    let port = call.shared.config.load().ports.gossip;
    let list: Vec<Value> = snap.nodes().map(|n| member_json(n, port)).collect();
    Ok(Reply::json(&Value::Array(list)).with_index(snap.nodes_index()))
}

fn self_info(call: &Call) -> ApiResult {
    let cfg = call.shared.config.load();
    let snap = call.shared.state.snapshot();
    let member = snap
        .node(&cfg.node_name)
        .map(|n| member_json(n, cfg.ports.gossip))
        .unwrap_or(Value::Null);
    Ok(Reply::json(&json!({
        "Config": {
            "Datacenter": cfg.datacenter,
            "NodeName": cfg.node_name,
            "NodeID": consul::node_id(&cfg.node_name),
            "Server": false,
            "Revision": "",
            "Version": env!("CARGO_PKG_VERSION"),
            "Domain": cfg.domain,
        },
        "DebugConfig": {
            "Datacenter": cfg.datacenter,
            "NodeName": cfg.node_name,
            "ClientAddrs": [cfg.client_addr.to_string()],
            "AdvertiseAddrLAN": cfg.advertise_addr.to_string(),
            "DNSDomain": cfg.domain,
        },
        "Member": member,
        "Meta": cfg.node_meta,
        "Stats": {},
    }))
    .with_index(snap.index()))
}

/// `/v1/agent/metrics`: Consul's JSON, or `?format=prometheus` for the text format.
fn metrics(call: &Call) -> ApiResult {
    let report = crate::metrics::METRICS.report(&call.shared.state.snapshot());
    match call.param("format") {
        None | Some("") | Some("json") => {
            Ok(Reply::json(&report.to_json(std::time::SystemTime::now())))
        }
        Some("prometheus") => Ok(Reply {
            status: StatusCode::OK,
            body: report.to_prometheus().into(),
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            index: None,
        }),
        Some(other) => Err(ApiError::BadRequest(format!(
            "Invalid format {other:?}: json or prometheus"
        ))),
    }
}
