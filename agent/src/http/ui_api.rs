//! `/v1/internal/ui/*`: the read-only views the web status page follows, as Consul's UI
//! reads its own `/v1/internal/ui/*`. The views themselves are computed in
//! `muster_proto::status_page`; here they are served as blocking queries, so a page holds
//! one request open and hears of a change as soon as the catalog publishes it.
//!
//! Which index each view waits on:
//! - `services` and `nodes` show counts that any check or member change can move, so they
//!   follow the catalog's own index (the services view, the same for every client at one
//!   index, is rendered once per index and shared);
//! - `service/:name` follows that name's index, and the node list's, which moves whenever
//!   a member changes status (so the protect-mode banner, read from `X-Muster-Stale`, also
//!   stays current on that page).

use super::{ApiError, ApiResult, Call, Reply};
use crate::waiters::Watch;
use hyper::Method;
use muster_proto::status_page::{self, Clocks};
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

pub async fn route(call: &Call) -> ApiResult {
    call.require(Method::GET)?;
    call.check_dc()?;
    let segs: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["internal", "ui", "services"] => {
            let (snap, idx) = call.blocking(Watch::Catalog).await?;
            Ok(call.cached_json(idx, || to_json(&status_page::services(&snap))))
        }
        ["internal", "ui", "service", name] => {
            let (snap, idx) = call.blocking(Watch::ServiceAndNodes(name)).await?;
            let view = status_page::service(&snap, name, clocks(call));
            Ok(Reply::json(&to_json(&view)).with_index(idx))
        }
        ["internal", "ui", "nodes"] => {
            let (snap, idx) = call.blocking(Watch::Catalog).await?;
            let view = status_page::nodes(&snap, clocks(call));
            Ok(Reply::json(&to_json(&view)).with_index(idx))
        }
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint /v1/{}",
            call.segments.join("/")
        ))),
    }
}

/// Now, on the agent's clock and the wall clock, for the ages the views show.
fn clocks(call: &Call) -> Clocks {
    Clocks {
        agent_ms: call.shared.state.now_ms(),
        wall_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
    }
}

fn to_json(view: &impl Serialize) -> serde_json::Value {
    // The views hold only strings, numbers and maps with string keys: this cannot fail.
    serde_json::to_value(view).unwrap_or(serde_json::Value::Null)
}
