//! `/v1/operator/keyring` (Consul's shape): GET lists the gossip keys of every member
//! with how many hold each and use it as primary; POST installs a key, PUT makes it
//! primary, DELETE removes it — each carried to the whole cluster by this agent (see
//! `crate::keyring`). A refusal that changed nothing is 400; an operation that some
//! members could not apply is 500, naming them.

use super::{ApiError, ApiResult, Call, Reply};
use crate::keyring::{encode_key, ClusterError};
use hyper::Method;
use muster_proto::keyring::{Op, Summary};
use serde_json::{json, Map, Value};

pub async fn route(call: &Call) -> ApiResult {
    let segs: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        ["operator", "keyring"] => keyring(call).await,
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint /v1/{}",
            call.segments.join("/")
        ))),
    }
}

fn key_of(call: &Call) -> Result<[u8; 32], ApiError> {
    let body = call.json_body("{\"Key\": \"<base64 key>\"}")?;
    let f = muster_proto::consul::Fields::new(&body, "body")?;
    let key = f
        .string(&["Key"])?
        .ok_or_else(|| ApiError::BadRequest("Invalid Key: missing".into()))?;
    crate::config::decode_key(&key).map_err(|e| ApiError::BadRequest(format!("Invalid Key: {e}")))
}

fn summary_json(call: &Call, s: &Summary) -> Value {
    let counts = |m: &std::collections::BTreeMap<[u8; 32], usize>| -> Value {
        Value::Object(
            m.iter()
                .map(|(k, n)| (encode_key(k), json!(n)))
                .collect::<Map<String, Value>>(),
        )
    };
    json!([{
        "WAN": false,
        "Datacenter": call.shared.config.load().datacenter,
        "Segment": "",
        "Messages": s.messages,
        "Keys": counts(&s.keys),
        "PrimaryKeys": counts(&s.primary_keys),
        "NumNodes": s.num_nodes,
    }])
}

async fn keyring(call: &Call) -> ApiResult {
    call.check_dc()?;
    let op = match call.method {
        Method::GET => Op::List,
        Method::POST => Op::Install(key_of(call)?),
        Method::PUT => Op::Use(key_of(call)?),
        Method::DELETE => Op::Remove(key_of(call)?),
        ref other => return Err(ApiError::MethodNotAllowed(other.clone())),
    };
    let summary = crate::keyring::cluster(&call.shared.keyring, &call.shared.state, op)
        .await
        .map_err(|ClusterError::Refused(m)| {
            ApiError::BadRequest(format!("keyring {}: {m}; nothing was changed", op.name()))
        })?;
    if op != Op::List && summary.errors() > 0 {
        let list: Vec<String> = summary
            .messages
            .iter()
            .map(|(n, m)| format!("{n}: {m}"))
            .collect();
        return Err(ApiError::Internal(format!(
            "keyring {} failed on {} of {} members: {}",
            op.name(),
            summary.errors(),
            summary.num_nodes,
            list.join("; ")
        )));
    }
    Ok(Reply::json(&summary_json(call, &summary)))
}
