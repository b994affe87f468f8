//! `/v1/catalog/*`, `/v1/health/*`, `/v1/status/*`: cluster-wide reads, all answered from
//! the current snapshot, all blocking queries with a per-answer index.

use super::{ApiError, ApiResult, Call, Reply};
use crate::waiters::Watch;
use hyper::Method;
use muster_proto::catalog::Instance;
use muster_proto::consul;
use muster_proto::model::HealthStatus;
use muster_proto::{NodeEntry, Snapshot};
use serde_json::{json, Map, Value};

pub async fn route(call: &Call) -> ApiResult {
    call.require(Method::GET)?;
    call.check_dc()?;
    let segs: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["catalog", "services"] => {
            let (snap, idx) = call.blocking(Watch::ServiceList).await?;
            let mut out = Map::new();
            for (name, tags) in snap.service_names() {
                out.insert(name, json!(tags));
            }
            Ok(Reply::json(&Value::Object(out)).with_index(idx))
        }
        ["catalog", "service", name] => {
            let (snap, idx) = call.blocking(Watch::Service(name)).await?;
            Ok(call.cached_json(idx, || {
                Value::Array(
                    instances(call, &snap, name)
                        .filter(|i| i.node.serving())
                        .map(|i| consul::catalog_service(&i))
                        .collect(),
                )
            }))
        }
        ["catalog", "nodes"] => {
            let (snap, idx) = call.blocking(Watch::NodeList).await?;
            let list: Vec<Value> = snap
                .nodes()
                .filter(|n| n.serving() && node_meta_matches(call, n))
                .map(consul::node)
                .collect();
            Ok(Reply::json(&Value::Array(list)).with_index(idx))
        }
        ["catalog", "node", node] => {
            let (snap, idx) = call.blocking(Watch::Node(node)).await?;
            let Some(entry) = snap.node(node).filter(|n| n.serving()) else {
                // Consul answers an unknown node with 200 and null.
                return Ok(Reply::json(&Value::Null).with_index(idx));
            };
            let mut services = Map::new();
            for (id, s) in &entry.record.services {
                services.insert(
                    id.clone(),
                    consul::indexed_service(s, entry.service_indexes(id)),
                );
            }
            Ok(
                Reply::json(&json!({ "Node": consul::node(entry), "Services": services }))
                    .with_index(idx),
            )
        }
        ["catalog", "datacenters"] => {
            let dc = call.shared.config.load().datacenter.clone();
            Ok(Reply::json(&json!([dc])).with_index(call.shared.state.snapshot().index()))
        }
        ["health", "service", name] => {
            let (snap, idx) = call.blocking(Watch::Service(name)).await?;
            let passing = call.flag("passing");
            Ok(call.cached_json(idx, || {
                Value::Array(
                    instances(call, &snap, name)
                        .filter(|i| i.node.serving())
                        .filter(|i| !passing || i.health() == HealthStatus::Passing)
                        .map(|i| consul::health_entry(&i))
                        .collect(),
                )
            }))
        }
        ["health", "checks", name] => {
            let (snap, idx) = call.blocking(Watch::Service(name)).await?;
            let mut list = Vec::new();
            for i in instances(call, &snap, name).filter(|i| i.node.serving()) {
                let node = &i.node.record.name;
                for c in i
                    .node
                    .record
                    .checks
                    .values()
                    .filter(|c| c.service_id == i.service.id)
                {
                    list.push(consul::health_check(
                        node,
                        c,
                        Some(i.service),
                        i.node.check_indexes(&c.id),
                    ));
                }
            }
            Ok(Reply::json(&Value::Array(list)).with_index(idx))
        }
        ["health", "node", node] => {
            let (snap, idx) = call.blocking(Watch::Node(node)).await?;
            let list = snap.node(node).map(consul::node_checks).unwrap_or_default();
            Ok(Reply::json(&Value::Array(list)).with_index(idx))
        }
        ["health", "state", state] => {
            let want = match *state {
                "any" => None,
                s => Some(HealthStatus::parse(s).ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "Invalid state {s:?}: use any, passing, warning or critical"
                    ))
                })?),
            };
            let (snap, idx) = call.blocking(Watch::Catalog).await?;
            let mut list = Vec::new();
            for n in snap.nodes() {
                let serf = consul::serf_health(n);
                let checks = std::iter::once(&serf).chain(n.record.checks.values().map(|c| &**c));
                for c in checks {
                    if want.is_none_or(|w| w == c.status) {
                        let ix = if c.id == serf.id {
                            n.indexes
                        } else {
                            n.check_indexes(&c.id)
                        };
                        list.push(consul::health_check(
                            &n.record.name,
                            c,
                            n.record.services.get(&c.service_id).map(|s| &**s),
                            ix,
                        ));
                    }
                }
            }
            Ok(Reply::json(&Value::Array(list)).with_index(idx))
        }
        ["status", "leader"] => {
            // No servers: every agent answers for itself, so it names itself the leader.
            Ok(Reply::json(&json!(self_addr(call)))
                .with_index(call.shared.state.snapshot().index()))
        }
        ["status", "peers"] => {
            Ok(Reply::json(&json!([self_addr(call)]))
                .with_index(call.shared.state.snapshot().index()))
        }
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint /v1/{}",
            call.segments.join("/")
        ))),
    }
}

fn self_addr(call: &Call) -> String {
    let cfg = call.shared.config.load();
    std::net::SocketAddr::new(cfg.advertise_addr, cfg.ports.gossip).to_string()
}

/// `?node-meta=key:value` (repeatable, all must match).
fn node_meta_matches(call: &Call, n: &NodeEntry) -> bool {
    call.params("node-meta").iter().all(|kv| {
        let (k, v) = kv.split_once(':').unwrap_or((kv.as_str(), ""));
        n.record.meta.get(k).is_some_and(|have| have == v)
    })
}

/// Instances of `name` filtered by `?tag=` (repeatable, all must match) and `?node-meta=`.
fn instances<'a>(
    call: &'a Call,
    snap: &'a Snapshot,
    name: &str,
) -> impl Iterator<Item = Instance<'a>> + 'a {
    let tags = call.params("tag");
    snap.instances(name)
        .filter(move |i| i.has_tags(tags) && node_meta_matches(call, i.node))
}
