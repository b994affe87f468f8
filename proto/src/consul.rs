//! Consul's JSON shapes: reading registration bodies and writing every object the HTTP API
//! returns, with Consul's exact field names, so that Consul clients work unchanged.
//!
//! Bodies are read field by field from a `serde_json::Value` rather than derived: Consul
//! matches keys case-insensitively (and its config accepts snake_case), and a user who sends
//! `"Port": "80"` deserves an error naming `Port`, not a column number.

use crate::catalog::{Indexes, Instance, NodeEntry};
use crate::duration;
use crate::model::{
    Check, CheckKind, HealthStatus, NodeRecord, Service, Weights, SERF_HEALTH_CHECK,
};
use crate::process::{self, Liveness, ProcStat};
use crate::validate::{self, ValidationError};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Default check timeout, as in Consul.
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 10_000;

/// A JSON object whose keys are matched ignoring case and underscores.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    /// Prefix for field names in errors (e.g. "Check.").
    prefix: String,
}

fn norm(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

impl<'a> Fields<'a> {
    pub fn new(v: &'a Value, what: &str) -> Result<Self, ValidationError> {
        match v {
            Value::Object(map) => Ok(Fields {
                map,
                prefix: String::new(),
            }),
            _ => Err(ValidationError::new(what, "must be a JSON object")),
        }
    }

    fn nested(map: &'a Map<String, Value>, prefix: String) -> Self {
        Fields { map, prefix }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{}", self.prefix, field)
    }

    /// The value under any of `names` (ignoring case/underscores); JSON null counts as absent.
    pub fn get(&self, names: &[&str]) -> Option<&'a Value> {
        let wanted: Vec<String> = names.iter().map(|n| norm(n)).collect();
        self.map
            .iter()
            .find(|(k, _)| wanted.contains(&norm(k)))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    pub fn string(&self, names: &[&str]) -> Result<Option<String>, ValidationError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ValidationError::new(
                self.name(names[0]),
                "must be a string",
            )),
        }
    }

    pub fn bool(&self, names: &[&str]) -> Result<Option<bool>, ValidationError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ValidationError::new(
                self.name(names[0]),
                "must be true or false",
            )),
        }
    }

    pub fn int(&self, names: &[&str]) -> Result<Option<i64>, ValidationError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
                ValidationError::new(self.name(names[0]), format!("{n} is not an integer"))
            }),
            Some(_) => Err(ValidationError::new(
                self.name(names[0]),
                "must be a number",
            )),
        }
    }

    pub fn strings(&self, names: &[&str]) -> Result<Option<Vec<String>>, ValidationError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(ValidationError::new(
                        self.name(names[0]),
                        "must be a list of strings",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(ValidationError::new(
                self.name(names[0]),
                "must be a list of strings",
            )),
        }
    }

    pub fn string_map(
        &self,
        names: &[&str],
    ) -> Result<Option<BTreeMap<String, String>>, ValidationError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k.clone(), s.clone())),
                    _ => Err(ValidationError::new(
                        self.name(names[0]),
                        format!("value of {k:?} must be a string"),
                    )),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(Some),
            Some(_) => Err(ValidationError::new(
                self.name(names[0]),
                "must be an object of strings",
            )),
        }
    }

    pub fn object(&self, names: &[&str]) -> Result<Option<Fields<'a>>, ValidationError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Fields::nested(
                m,
                format!("{}{}.", self.prefix, names[0]),
            ))),
            Some(_) => Err(ValidationError::new(
                self.name(names[0]),
                "must be an object",
            )),
        }
    }

    pub fn duration_ms(&self, names: &[&str]) -> Result<Option<u64>, ValidationError> {
        match self.get(names) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => duration::parse(s)
                .map_err(|e| ValidationError::new(self.name(names[0]), e.to_string()))
                .and_then(|d| {
                    u64::try_from(d.as_millis()).map(Some).map_err(|_| {
                        ValidationError::new(self.name(names[0]), format!("{s:?} is too long"))
                    })
                }),
            // Consul also accepts nanoseconds as a number.
            Some(Value::Number(n)) => n
                .as_u64()
                .map(|ns| Some(ns / 1_000_000))
                .ok_or_else(|| ValidationError::new(self.name(names[0]), "must be a duration")),
            Some(_) => Err(ValidationError::new(
                self.name(names[0]),
                "must be a duration such as \"10s\"",
            )),
        }
    }
}

/// A parsed `PUT /v1/agent/service/register` body.
#[derive(Clone, Debug, PartialEq)]
pub struct Registration {
    pub service: Service,
    pub checks: Vec<Check>,
}

/// Reads and validates a service registration.
pub fn parse_registration(body: &Value) -> Result<Registration, ValidationError> {
    let f = Fields::new(body, "body")?;
    let name = f
        .string(&["Name"])?
        .ok_or_else(|| ValidationError::new("Name", "missing service name"))?;
    let id = f
        .string(&["ID"])?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.clone());
    let port = match f.int(&["Port"])? {
        Some(p) => validate::port("Port", p)?,
        None => 0,
    };
    let weights = match f.object(&["Weights"])? {
        Some(w) => Weights {
            passing: weight(&w, "Passing")?,
            warning: weight(&w, "Warning")?,
        },
        None => Weights::default(),
    };
    let service = Service {
        id: id.clone(),
        name: name.clone(),
        tags: f.strings(&["Tags"])?.unwrap_or_default(),
        address: f.string(&["Address"])?.unwrap_or_default(),
        port,
        meta: f.string_map(&["Meta"])?.unwrap_or_default(),
        weights,
        enable_tag_override: f.bool(&["EnableTagOverride"])?.unwrap_or(false),
    };
    validate::service(&service)?;
    let mut defs: Vec<&Value> = Vec::new();
    if let Some(c) = f.get(&["Check"]) {
        defs.push(c);
    }
    match f.get(&["Checks"]) {
        None => {}
        Some(Value::Array(items)) => defs.extend(items.iter().filter(|v| !v.is_null())),
        Some(_) => return Err(ValidationError::new("Checks", "must be a list of checks")),
    }
    if defs.len() > validate::MAX_CHECKS_PER_SERVICE {
        return Err(ValidationError::new(
            "Checks",
            format!(
                "{} checks, at most {} allowed",
                defs.len(),
                validate::MAX_CHECKS_PER_SERVICE
            ),
        ));
    }
    let many = defs.len() > 1;
    let mut checks = Vec::with_capacity(defs.len());
    for (i, def) in defs.into_iter().enumerate() {
        let field = check_field(i, many);
        let default_id = if many {
            format!("service:{id}:{}", i + 1)
        } else {
            format!("service:{id}")
        };
        let mut check = parse_check(def, &field, &default_id, &format!("Service '{name}' check"))?;
        check.service_id = id.clone();
        checks.push(check);
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in &checks {
        if !seen.insert(c.id.clone()) {
            return Err(ValidationError::new(
                "Checks",
                format!("duplicate check id {:?}", c.id),
            ));
        }
    }
    Ok(Registration { service, checks })
}

/// The field a registration's `i`-th check is named by in errors: `Check` when there is
/// only one (however it was written), `Checks[i]` otherwise.
fn check_field(i: usize, many: bool) -> String {
    if many {
        format!("Checks[{i}]")
    } else {
        "Check".to_string()
    }
}

/// Binds the process checks of a parsed registration to the processes they name (see
/// [`bind_process`]), naming the check's field in any refusal.
pub fn bind_processes(
    reg: &mut Registration,
    observe: impl Fn(u32) -> Result<Option<ProcStat>, String>,
) -> Result<(), ValidationError> {
    let many = reg.checks.len() > 1;
    for (i, check) in reg.checks.iter_mut().enumerate() {
        bind_process(check, &check_field(i, many), &observe)?;
    }
    Ok(())
}

/// Binds a process check to the process its PID names now: records that process's start
/// time and makes the check passing. `observe` is the host's word on a PID (`Ok(None)`: no
/// such process; `Err`: it cannot tell, e.g. no pidfd support). A process that is not running
/// is refused: a registration bound to a dead process would be born dead. Checks of other
/// kinds are left alone. `field` prefixes error names, as in [`parse_check`].
pub fn bind_process(
    check: &mut Check,
    field: &str,
    observe: impl Fn(u32) -> Result<Option<ProcStat>, String>,
) -> Result<(), ValidationError> {
    let CheckKind::Process { pid, start_time } = &mut check.kind else {
        return Ok(());
    };
    let pid_field = format!("{field}.PID");
    match observe(*pid).map_err(|reason| ValidationError::new(&pid_field, reason))? {
        None => Err(ValidationError::new(
            pid_field,
            format!("no process with PID {pid} is running"),
        )),
        Some(stat) if stat.exited() => Err(ValidationError::new(
            pid_field,
            format!("process {pid} has exited (only its zombie is left)"),
        )),
        Some(stat) => {
            *start_time = stat.start_time;
            check.status = HealthStatus::Passing;
            check.output = process::describe(*pid, stat.start_time, Liveness::Running);
            Ok(())
        }
    }
}

fn weight(w: &Fields<'_>, name: &str) -> Result<u32, ValidationError> {
    match w.int(&[name])? {
        None => Ok(1),
        Some(v) if v >= 1 && v <= u32::MAX as i64 => Ok(v as u32),
        Some(v) => Err(ValidationError::new(
            format!("Weights.{name}"),
            format!("{v} is not at least 1"),
        )),
    }
}

/// Reads a check definition (`Check`, `Checks[i]`, or a `/v1/agent/check/register` body).
/// `field` prefixes error names; `default_id`/`default_name` apply when absent.
pub fn parse_check(
    def: &Value,
    field: &str,
    default_id: &str,
    default_name: &str,
) -> Result<Check, ValidationError> {
    let f = match def {
        Value::Object(m) => Fields::nested(m, format!("{field}.")),
        _ => return Err(ValidationError::new(field, "must be a JSON object")),
    };
    let fname = |n: &str| format!("{field}.{n}");
    let name = f.string(&["Name"])?.filter(|s| !s.is_empty());
    let id = f
        .string(&["CheckID", "ID"])?
        .filter(|s| !s.is_empty())
        .or_else(|| {
            if default_id.is_empty() {
                name.clone()
            } else {
                None
            }
        })
        .unwrap_or_else(|| default_id.to_string());
    validate::id(&fname("CheckID"), &id)?;
    validate::check_id_not_reserved(&fname("CheckID"), &id)?;
    let name = name.unwrap_or_else(|| default_name.to_string());
    validate::text(&fname("Name"), &name, validate::MAX_CHECK_NAME_LEN)?;
    let status = match f.string(&["Status"])? {
        None => HealthStatus::Critical,
        Some(s) if s.is_empty() => HealthStatus::Critical,
        Some(s) => HealthStatus::parse(&s).ok_or_else(|| {
            ValidationError::new(
                fname("Status"),
                format!("{s:?} is not passing, warning or critical"),
            )
        })?,
    };
    let interval = f.duration_ms(&["Interval"])?;
    let timeout = f
        .duration_ms(&["Timeout"])?
        .unwrap_or(DEFAULT_CHECK_TIMEOUT_MS);
    let need_interval = |kind: &str| -> Result<u64, ValidationError> {
        match interval {
            Some(ms) if ms > 0 => Ok(ms),
            _ => Err(ValidationError::new(
                fname("Interval"),
                format!("required for a {kind} check"),
            )),
        }
    };
    check_one_kind(&f, field)?;
    let kind = if let Some(ttl) = f.duration_ms(&["TTL"])? {
        if ttl == 0 {
            return Err(ValidationError::new(fname("TTL"), "must be more than 0"));
        }
        CheckKind::Ttl { ttl_ms: ttl }
    } else if let Some(url) = f.string(&["HTTP"])? {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ValidationError::new(
                fname("HTTP"),
                format!("{url:?} is not an http:// or https:// URL"),
            ));
        }
        let headers = match f.object(&["Header"])? {
            None => BTreeMap::new(),
            Some(h) => {
                let mut out = BTreeMap::new();
                for (k, v) in h.map {
                    let vals = match v {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(a) => a
                            .iter()
                            .map(|x| x.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                ValidationError::new(
                                    fname("Header"),
                                    "values must be strings or lists of strings",
                                )
                            })?,
                        _ => {
                            return Err(ValidationError::new(
                                fname("Header"),
                                "values must be strings or lists of strings",
                            ))
                        }
                    };
                    out.insert(k.clone(), vals);
                }
                out
            }
        };
        CheckKind::Http {
            url,
            method: f
                .string(&["Method"])?
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "GET".into()),
            headers,
            tls_skip_verify: f.bool(&["TLSSkipVerify"])?.unwrap_or(false),
            interval_ms: need_interval("HTTP")?,
            timeout_ms: timeout,
        }
    } else if let Some(address) = f.string(&["TCP"])? {
        if address
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(ValidationError::new(
                fname("TCP"),
                format!("{address:?} is not host:port"),
            ));
        }
        CheckKind::Tcp {
            address,
            interval_ms: need_interval("TCP")?,
            timeout_ms: timeout,
        }
    } else if let Some(args) = f.strings(&["Args", "ScriptArgs"])? {
        if args.is_empty() {
            return Err(ValidationError::new(fname("Args"), "must not be empty"));
        }
        CheckKind::Script {
            args,
            interval_ms: need_interval("script")?,
            timeout_ms: timeout,
        }
    } else if let Some(pid) = f.int(&["PID"])? {
        let pid = u32::try_from(pid)
            .ok()
            .filter(|p| *p > 0 && i32::try_from(*p).is_ok())
            .ok_or_else(|| {
                ValidationError::new(fname("PID"), format!("{pid} is not a process id"))
            })?;
        // The start time is the agent's to record (`bind_process`), never the caller's.
        CheckKind::Process { pid, start_time: 0 }
    } else {
        return Err(ValidationError::new(
            field,
            "one of TTL, HTTP, TCP, Args or PID is required",
        ));
    };
    Ok(Check {
        id,
        name,
        status,
        notes: match f.string(&["Notes"])? {
            Some(n) => {
                validate::text(&fname("Notes"), &n, crate::model::MAX_CHECK_OUTPUT)?;
                n
            }
            None => String::new(),
        },
        output: String::new(),
        service_id: f.string(&["ServiceID"])?.unwrap_or_default(),
        kind,
        deregister_critical_after_ms: f
            .duration_ms(&["DeregisterCriticalServiceAfter", "DeregisterCriticalAfter"])?
            .unwrap_or(0),
        // Stamped by the agent when the check is put in place.
        status_changed_ms: 0,
    })
}

/// The fields that make a check of one kind, as muster runs them.
const CHECK_KINDS: &[&[&str]] = &[&["TTL"], &["HTTP"], &["TCP"], &["Args", "ScriptArgs"]];
/// Consul's other kinds, which muster does not run.
const OTHER_CHECK_KINDS: &[&str] = &[
    "GRPC",
    "H2PING",
    "UDP",
    "OSService",
    "AliasService",
    "AliasNode",
    "DockerContainerID",
];

/// A check is of exactly one kind: a definition that sets two (`TTL` with `HTTP`, say)
/// is refused rather than quietly run as whichever is looked at first, and a kind muster
/// does not run is named rather than reported as missing. Fields named in the error are
/// spelled as the client wrote them; empty values count as unset, as Consul's decoder
/// leaves them.
fn check_one_kind(f: &Fields<'_>, field: &str) -> Result<(), ValidationError> {
    let written = |names: &[&str]| -> Option<&str> {
        let wanted: Vec<String> = names.iter().map(|n| norm(n)).collect();
        f.map
            .iter()
            .find(|(k, v)| {
                wanted.contains(&norm(k))
                    && match v {
                        Value::Null => false,
                        Value::String(s) => !s.is_empty(),
                        Value::Array(a) => !a.is_empty(),
                        _ => true,
                    }
            })
            .map(|(k, _)| k.as_str())
    };
    let set: Vec<&str> = CHECK_KINDS.iter().filter_map(|k| written(k)).collect();
    if let Some((last, rest)) = set.split_last().filter(|_| set.len() > 1) {
        let both = if rest.len() == 1 { "both" } else { "all" };
        return Err(ValidationError::new(
            field,
            format!(
                "{} and {last} are {both} set, but a check has one kind: \
                 give only one of TTL, HTTP, TCP or Args",
                rest.join(", ")
            ),
        ));
    }
    if let Some(other) = OTHER_CHECK_KINDS.iter().find_map(|k| written(&[k])) {
        return Err(ValidationError::new(
            format!("{field}.{other}"),
            "muster does not run this kind of check (only TTL, HTTP, TCP and Args)",
        ));
    }
    Ok(())
}

// ----- rendering -----

/// A stable UUID-shaped node id derived from the node name (Consul clients expect `ID`).
pub fn node_id(name: &str) -> String {
    let h1 = fnv64(name.as_bytes(), 0xcbf29ce484222325);
    let h2 = fnv64(name.as_bytes(), 0x84222325cbf29ce4);
    let b: Vec<u8> = h1
        .to_be_bytes()
        .into_iter()
        .chain(h2.to_be_bytes())
        .collect();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn fnv64(data: &[u8], seed: u64) -> u64 {
    let mut h = seed;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn tagged_addresses(rec: &NodeRecord) -> Value {
    let a = rec.address.to_string();
    json!({ "lan": a, "lan_ipv4": a, "wan": a, "wan_ipv4": a })
}

fn weights_json(w: &Weights) -> Value {
    json!({ "Passing": w.passing, "Warning": w.warning })
}

/// `/v1/agent/services` values and `/v1/agent/service/:id`.
pub fn agent_service(s: &Service, datacenter: &str) -> Value {
    json!({
        "Kind": "",
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Meta": s.meta,
        "Port": s.port,
        "Address": s.address,
        "TaggedAddresses": {},
        "Weights": weights_json(&s.weights),
        "EnableTagOverride": s.enable_tag_override,
        "Datacenter": datacenter,
    })
}

/// The `Service` object inside health entries and `/v1/catalog/node/:node`.
pub fn indexed_service(s: &Service, ix: Indexes) -> Value {
    json!({
        "Kind": "",
        "ID": s.id,
        "Service": s.name,
        "Tags": s.tags,
        "Address": s.address,
        "Meta": s.meta,
        "Port": s.port,
        "Weights": weights_json(&s.weights),
        "EnableTagOverride": s.enable_tag_override,
        "CreateIndex": ix.create,
        "ModifyIndex": ix.modify,
    })
}

/// A node object (`/v1/catalog/nodes`, `Node` in health entries).
pub fn node(entry: &NodeEntry) -> Value {
    let rec = &entry.record;
    json!({
        "ID": node_id(&rec.name),
        "Node": rec.name,
        "Address": rec.address.to_string(),
        "Datacenter": rec.datacenter,
        "TaggedAddresses": tagged_addresses(rec),
        "Meta": rec.meta,
        "CreateIndex": entry.indexes.create,
        "ModifyIndex": entry.indexes.modify,
    })
}

/// One entry of `/v1/catalog/service/:name`.
pub fn catalog_service(i: &Instance<'_>) -> Value {
    let rec = &i.node.record;
    let s = i.service;
    let ix = i.indexes();
    json!({
        "ID": node_id(&rec.name),
        "Node": rec.name,
        "Address": rec.address.to_string(),
        "Datacenter": rec.datacenter,
        "TaggedAddresses": tagged_addresses(rec),
        "NodeMeta": rec.meta,
        "ServiceKind": "",
        "ServiceID": s.id,
        "ServiceName": s.name,
        "ServiceTags": s.tags,
        "ServiceAddress": s.address,
        "ServiceTaggedAddresses": {},
        "ServiceWeights": weights_json(&s.weights),
        "ServiceMeta": s.meta,
        "ServicePort": s.port,
        "ServiceEnableTagOverride": s.enable_tag_override,
        "CreateIndex": ix.create,
        "ModifyIndex": ix.modify,
    })
}

/// The synthetic `serfHealth` check every node carries: passing while the member is up, or
/// held in protect mode (then its output says the instances are the last known ones).
pub fn serf_health(entry: &NodeEntry) -> Check {
    let (status, output) = if entry.status.is_up() {
        (HealthStatus::Passing, "Agent alive and reachable")
    } else if entry.stale {
        (
            HealthStatus::Passing,
            "Agent unreachable; this agent lost most of its peers at once (protect mode) and serves the last known state",
        )
    } else {
        (HealthStatus::Critical, "Agent not live or unreachable")
    };
    Check {
        id: SERF_HEALTH_CHECK.into(),
        name: "Serf Health Status".into(),
        status,
        notes: String::new(),
        output: output.into(),
        service_id: String::new(),
        kind: CheckKind::Internal,
        deregister_critical_after_ms: 0,
        status_changed_ms: 0,
    }
}

fn check_definition(c: &Check) -> Value {
    let ms = |v: u64| duration::format(std::time::Duration::from_millis(v));
    let mut d = match &c.kind {
        CheckKind::Ttl { ttl_ms } => json!({ "TTL": ms(*ttl_ms) }),
        CheckKind::Http {
            url,
            method,
            headers,
            tls_skip_verify,
            interval_ms,
            timeout_ms,
        } => json!({
            "HTTP": url, "Method": method, "Header": headers, "TLSSkipVerify": tls_skip_verify,
            "Interval": ms(*interval_ms), "Timeout": ms(*timeout_ms),
        }),
        CheckKind::Tcp {
            address,
            interval_ms,
            timeout_ms,
        } => json!({
            "TCP": address, "Interval": ms(*interval_ms), "Timeout": ms(*timeout_ms),
        }),
        CheckKind::Script {
            args,
            interval_ms,
            timeout_ms,
        } => json!({
            "ScriptArgs": args, "Interval": ms(*interval_ms), "Timeout": ms(*timeout_ms),
        }),
        CheckKind::Internal => json!({}),
        CheckKind::Process { pid, .. } => json!({ "PID": pid }),
    };
    if c.deregister_critical_after_ms > 0 {
        d["DeregisterCriticalServiceAfter"] = json!(ms(c.deregister_critical_after_ms));
    }
    d
}

/// A check object (`/v1/agent/checks` values, `/v1/health/*`, `Checks` in health entries).
pub fn health_check(node: &str, c: &Check, service: Option<&Service>, ix: Indexes) -> Value {
    json!({
        "Node": node,
        "CheckID": c.id,
        "Name": c.name,
        "Status": c.status.as_str(),
        "Notes": c.notes,
        "Output": c.output,
        "ServiceID": c.service_id,
        "ServiceName": service.map(|s| s.name.as_str()).unwrap_or(""),
        "ServiceTags": service.map(|s| s.tags.clone()).unwrap_or_default(),
        "Type": c.kind.type_name(),
        "Interval": match &c.kind {
            CheckKind::Http { interval_ms, .. } | CheckKind::Tcp { interval_ms, .. } | CheckKind::Script { interval_ms, .. } =>
                duration::format(std::time::Duration::from_millis(*interval_ms)),
            _ => String::new(),
        },
        "Timeout": match &c.kind {
            CheckKind::Http { timeout_ms, .. } | CheckKind::Tcp { timeout_ms, .. } | CheckKind::Script { timeout_ms, .. } =>
                duration::format(std::time::Duration::from_millis(*timeout_ms)),
            _ => String::new(),
        },
        "ExposedPort": 0,
        "Definition": check_definition(c),
        "CreateIndex": ix.create,
        "ModifyIndex": ix.modify,
    })
}

/// Every check of a node (stored ones plus `serfHealth`), rendered.
pub fn node_checks(entry: &NodeEntry) -> Vec<Value> {
    let serf = serf_health(entry);
    let name = &entry.record.name;
    std::iter::once(health_check(name, &serf, None, entry.indexes))
        .chain(entry.record.checks.values().map(|c| {
            health_check(
                name,
                c,
                entry.record.services.get(&c.service_id).map(|s| &**s),
                entry.check_indexes(&c.id),
            )
        }))
        .collect()
}

/// Checks that apply to one instance (serfHealth, node checks, its own), as health entries
/// list them, with their statuses.
pub fn instance_checks(i: &Instance<'_>) -> Vec<(HealthStatus, Value)> {
    let entry = i.node;
    let name = &entry.record.name;
    let serf = serf_health(entry);
    std::iter::once((serf.status, health_check(name, &serf, None, entry.indexes)))
        .chain(i.checks().map(|c| {
            let svc = if c.service_id.is_empty() {
                None
            } else {
                Some(i.service)
            };
            (
                c.status,
                health_check(name, c, svc, entry.check_indexes(&c.id)),
            )
        }))
        .collect()
}

/// One entry of `/v1/health/service/:name`.
pub fn health_entry(i: &Instance<'_>) -> Value {
    let checks: Vec<Value> = instance_checks(i).into_iter().map(|(_, v)| v).collect();
    json!({
        "Node": node(i.node),
        "Service": indexed_service(i.service, i.indexes()),
        "Checks": checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_minimal_and_case_insensitive() {
        let r = parse_registration(&json!({"name": "web", "port": 80})).unwrap();
        assert_eq!(r.service.id, "web");
        assert_eq!(r.service.port, 80);
        let r = parse_registration(&json!({"Name": "web", "ID": "w1", "Tags": null, "Meta": {"a": "b"}, "Weights": {"Passing": 3}})).unwrap();
        assert_eq!(r.service.id, "w1");
        assert_eq!(
            r.service.weights,
            Weights {
                passing: 3,
                warning: 1
            }
        );
    }

    #[test]
    fn registration_errors_name_the_field() {
        let e = |v: Value| parse_registration(&v).unwrap_err().field;
        assert_eq!(e(json!({"Port": 1})), "Name");
        assert_eq!(e(json!({"Name": "web", "Port": "80"})), "Port");
        assert_eq!(e(json!({"Name": "web", "Port": 70000})), "Port");
        assert_eq!(e(json!({"Name": "web", "Tags": "x"})), "Tags");
        assert_eq!(
            e(json!({"Name": "web", "Weights": {"Warning": 0}})),
            "Weights.Warning"
        );
        assert_eq!(
            e(json!({"Name": "web", "Check": {"HTTP": "http://x", "Interval": "bogus"}})),
            "Check.Interval"
        );
        assert_eq!(
            e(json!({"Name": "web", "Check": {"HTTP": "http://x"}})),
            "Check.Interval"
        );
        assert_eq!(e(json!({"Name": "web", "Check": {}})), "Check");
        assert_eq!(e(json!([1, 2])), "body");
    }

    #[test]
    fn a_check_of_two_kinds_is_refused_naming_both() {
        let e = |v: Value| {
            let e = parse_registration(&v).unwrap_err();
            (e.field, e.reason)
        };
        let (field, reason) = e(json!({"Name": "web",
            "Check": {"TTL": "30s", "HTTP": "http://x", "Interval": "1s"}}));
        assert_eq!(field, "Check");
        assert_eq!(
            reason,
            "TTL and HTTP are both set, but a check has one kind: \
             give only one of TTL, HTTP, TCP or Args"
        );
        // Named as written, in any case; in a list, the check's place.
        let (field, reason) = e(json!({"Name": "web", "Checks": [{"TTL": "5s"},
            {"tcp": "x:1", "script_args": ["/bin/true"], "http": "http://x", "interval": "1s"}]}));
        assert_eq!(field, "Checks[1]");
        assert!(
            reason.starts_with("http, tcp and script_args are all set"),
            "{reason}"
        );
        // Empty values are unset, as clients that send every field leave them.
        let r = parse_registration(&json!({"Name": "web",
            "Check": {"TTL": "5s", "HTTP": "", "TCP": "", "Args": [], "GRPC": ""}}))
        .unwrap();
        assert_eq!(r.checks[0].kind, CheckKind::Ttl { ttl_ms: 5_000 });
        // Consul's kinds that muster does not run are named, not mistaken for another.
        let (field, reason) = e(json!({"Name": "web", "Check": {"TTL": "5s", "GRPC": "x:1"}}));
        assert_eq!(field, "Check.GRPC");
        assert!(reason.contains("does not run"), "{reason}");
        // The same rule for a check registered on its own.
        let e = parse_check(
            &json!({"Name": "c", "TCP": "x:1", "TTL": "5s"}),
            "check",
            "",
            "",
        )
        .unwrap_err();
        assert_eq!(e.field, "check");
    }

    #[test]
    fn check_defaults() {
        let r = parse_registration(&json!({"Name": "web", "ID": "w1", "Check": {"TTL": "10s"}}))
            .unwrap();
        assert_eq!(r.checks[0].id, "service:w1");
        assert_eq!(r.checks[0].status, HealthStatus::Critical);
        assert_eq!(r.checks[0].kind, CheckKind::Ttl { ttl_ms: 10_000 });
        let r = parse_registration(&json!({"Name": "web", "Checks": [
            {"TTL": "10s", "Status": "passing"},
            {"TCP": "127.0.0.1:80", "Interval": "5s", "DeregisterCriticalServiceAfter": "1m"}
        ]}))
        .unwrap();
        assert_eq!(r.checks[0].id, "service:web:1");
        assert_eq!(r.checks[0].status, HealthStatus::Passing);
        assert_eq!(r.checks[1].deregister_critical_after_ms, 60_000);
    }

    #[test]
    fn process_checks_are_bound_to_a_running_process() {
        let running = |pid: u32| {
            Ok(Some(ProcStat {
                state: 'S',
                start_time: u64::from(pid) * 10,
            }))
        };
        let body = json!({"Name": "web", "ID": "w1", "Check": {"PID": 1234}});
        let mut r = parse_registration(&body).unwrap();
        assert_eq!(
            r.checks[0].kind,
            CheckKind::Process {
                pid: 1234,
                start_time: 0
            }
        );
        bind_processes(&mut r, running).unwrap();
        assert_eq!(
            r.checks[0].kind,
            CheckKind::Process {
                pid: 1234,
                start_time: 12340
            }
        );
        assert_eq!(r.checks[0].status, HealthStatus::Passing);
        assert_eq!(check_definition(&r.checks[0]), json!({"PID": 1234}));
        assert_eq!(r.checks[0].kind.type_name(), "process");

        // Refusals name the check's field.
        let gone = |_: u32| Ok(None);
        let mut r = parse_registration(&body).unwrap();
        let e = bind_processes(&mut r, gone).unwrap_err();
        assert_eq!(e.field, "Check.PID");
        assert!(e.reason.contains("no process with PID 1234"), "{e}");
        let zombie = |_: u32| {
            Ok(Some(ProcStat {
                state: 'Z',
                start_time: 1,
            }))
        };
        let two = json!({"Name": "web", "Checks": [{"TTL": "5s"}, {"PID": 7}]});
        let mut r = parse_registration(&two).unwrap();
        assert_eq!(
            bind_processes(&mut r, zombie).unwrap_err().field,
            "Checks[1].PID"
        );
        let unsupported = |_: u32| Err("pidfd_open: not supported".to_string());
        let mut c = parse_check(&json!({"Name": "p", "PID": 9}), "body", "", "").unwrap();
        let e = bind_process(&mut c, "body", unsupported).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("body.PID", "pidfd_open: not supported")
        );

        let e = |v: Value| parse_registration(&v).unwrap_err().field;
        assert_eq!(e(json!({"Name": "web", "Check": {"PID": 0}})), "Check.PID");
        assert_eq!(e(json!({"Name": "web", "Check": {"PID": -5}})), "Check.PID");
        assert_eq!(
            e(json!({"Name": "web", "Check": {"PID": 4294967296u64}})),
            "Check.PID"
        );
        assert_eq!(
            e(json!({"Name": "web", "Check": {"PID": "12"}})),
            "Check.PID"
        );
    }

    #[test]
    fn node_id_is_stable_uuid_shape() {
        let a = node_id("n1");
        assert_eq!(a, node_id("n1"));
        assert_ne!(a, node_id("n2"));
        assert_eq!(a.len(), 36);
    }
}
