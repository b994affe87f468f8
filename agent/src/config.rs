//! The agent's effective configuration: SPEC §3 keys with their defaults.
//!
//! `Config` is what every other module reads; how it is assembled from files and flags
//! lives in `config::load` (files merged in lexical order, flags win, strict checking).

use muster_proto::model::{Check, Service};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq)]
pub struct Ports {
    pub http: u16,
    pub dns: u16,
    pub gossip: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            http: 8500,
            dns: 8600,
            gossip: 8301,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct DnsConfig {
    /// TTL of service and node answers.
    pub ttl: Duration,
    /// TTL of negative answers (the SOA minimum).
    pub negative_ttl: Duration,
    pub only_passing: bool,
    pub udp_answer_limit: usize,
    /// Upstream servers for names outside the domain (`ip:port`, port 53 if omitted).
    pub recursors: Vec<std::net::SocketAddr>,
    pub recursor_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            only_passing: false,
            udp_answer_limit: 3,
            recursors: Vec::new(),
            recursor_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct HttpConfig {
    /// When set, writes need this token (`X-Consul-Token` or `Authorization: Bearer`).
    pub token: Option<String>,
    /// `[[http.tokens]]`: tokens that may write only within their scope.
    pub tokens: Vec<ScopedToken>,
}

/// A `[[http.tokens]]` entry: a secret that may write the services whose names match
/// `services` (exact names or globs with `*`), and with `agent` also the agent-wide
/// operations (join, leave, reload, node maintenance, keyring).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ScopedToken {
    pub secret: String,
    pub services: Vec<String>,
    pub agent: bool,
}

/// A service from a config file, with its checks (already validated).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceDefinition {
    pub service: Service,
    pub checks: Vec<Check>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub node_name: String,
    pub datacenter: String,
    pub data_dir: Option<PathBuf>,
    pub bind_addr: IpAddr,
    pub advertise_addr: IpAddr,
    pub client_addr: IpAddr,
    pub domain: String,
    pub retry_join: Vec<String>,
    /// The 32-byte gossip key, decoded: seeds the keyring when `data_dir` holds none.
    pub encrypt: Option<[u8; 32]>,
    /// Consul's `encrypt_verify_incoming` / `encrypt_verify_outgoing` (default true).
    pub encrypt_verify_incoming: bool,
    pub encrypt_verify_outgoing: bool,
    /// Allows gossip on a non-loopback address without a key.
    pub gossip_insecure: bool,
    pub log_level: String,
    pub log_json: bool,
    pub node_meta: BTreeMap<String, String>,
    pub ports: Ports,
    pub dns: DnsConfig,
    pub http: HttpConfig,
    pub enable_script_checks: bool,
    /// How long a failed or left node stays listed before it is forgotten.
    pub reconnect_timeout: Duration,
    pub services: Vec<ServiceDefinition>,
    /// True with `--dev`.
    pub dev: bool,
    /// The files and directories this config came from, re-read on reload.
    pub sources: Sources,
}

/// Where the configuration came from, kept so that a reload reads the same places.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Sources {
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
}

impl Config {
    /// The `--dev` configuration: one node, nothing on disk, everything on 127.0.0.1.
    pub fn dev() -> Self {
        let lo = IpAddr::from([127, 0, 0, 1]);
        Config {
            node_name: hostname(),
            datacenter: "dc1".into(),
            data_dir: None,
            bind_addr: lo,
            advertise_addr: lo,
            client_addr: lo,
            domain: "local".into(),
            retry_join: Vec::new(),
            encrypt: None,
            encrypt_verify_incoming: true,
            encrypt_verify_outgoing: true,
            gossip_insecure: false,
            log_level: "info".into(),
            log_json: false,
            node_meta: BTreeMap::new(),
            ports: Ports::default(),
            dns: DnsConfig::default(),
            http: HttpConfig::default(),
            enable_script_checks: false,
            reconnect_timeout: Duration::from_secs(72 * 3600),
            services: Vec::new(),
            dev: true,
            sources: Sources::default(),
        }
    }
}

/// This host's short name (up to the first dot), as the default node name: node names are
/// DNS labels under `node.<domain>`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .and_then(|s| s.trim().split('.').next().map(str::to_string))
        .filter(|s| check_name_label(s).is_ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A configuration that could not be loaded: names the file (or flag), the key and the reason.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not valid TOML.
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    /// A key in a file is unknown, has the wrong type or a bad value.
    #[error("{file}: key {key}: {reason}")]
    Key {
        file: String,
        key: String,
        reason: String,
    },
    /// A command-line flag has a bad value.
    #[error("flag {flag}: {reason}")]
    Flag { flag: String, reason: String },
}

/// The default configuration without `--dev`: gossip on every interface, HTTP and DNS on
/// loopback, nothing on disk unless `data_dir` is set (the systemd unit sets it).
fn production_defaults() -> Config {
    Config {
        bind_addr: IpAddr::from([0, 0, 0, 0]),
        dev: false,
        ..Config::dev()
    }
}

/// Builds the effective configuration: defaults, then each file in order (`--config` files
/// as given, then each `--config-dir`'s `*.toml` in lexical order), then flags.
///
/// Later files override scalar keys, tables (`ports`, `dns`, `node_meta`...) merge key by
/// key, and `[[service]]` tables accumulate. Service ids must be unique across files.
pub fn load(args: &crate::cli::AgentArgs) -> Result<Config, ConfigError> {
    let mut c = if args.dev {
        Config::dev()
    } else {
        production_defaults()
    };
    c.sources = Sources {
        files: args.config.clone(),
        dirs: args.config_dir.clone(),
    };
    let mut advertise_set = false;
    let mut services: Vec<PendingService> = Vec::new();
    for file in config_files(args)? {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| ConfigError::File {
            file: name.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
            file: name.clone(),
            reason: format!("not valid TOML: {}", e.to_string().trim_end()),
        })?;
        let mut f = FileApplier {
            file: name,
            file_services: 0,
            config: &mut c,
            advertise_set: &mut advertise_set,
            services: &mut services,
        };
        f.apply(&table)?;
    }
    apply_flags(&mut c, args, &mut advertise_set)?;
    if !advertise_set {
        c.advertise_addr = default_advertise(c.bind_addr);
    }
    let mut seen = std::collections::BTreeMap::<String, String>::new();
    for p in services {
        if p.uses_script && !c.enable_script_checks {
            return Err(ConfigError::Key {
                file: p.file,
                key: format!("{}.checks", p.key),
                reason: "script checks (args) are disabled: set enable_script_checks = true".into(),
            });
        }
        let id = p.def.service.id.clone();
        if let Some(first) = seen.insert(id.clone(), p.file.clone()) {
            return Err(ConfigError::Key {
                file: p.file,
                key: format!("{}.id", p.key),
                reason: format!("service id {id:?} is already defined in {first}"),
            });
        }
        c.services.push(p.def);
    }
    Ok(c)
}

/// The files to read, in merge order.
fn config_files(args: &crate::cli::AgentArgs) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = args.config.clone();
    for dir in &args.config_dir {
        let entries = std::fs::read_dir(dir).map_err(|e| ConfigError::File {
            file: dir.display().to_string(),
            reason: format!("cannot read config directory: {e}"),
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// A service read from a file, checked once every file is read (script checks depend on
/// `enable_script_checks`, which a later file may set; ids must be unique across files).
struct PendingService {
    file: String,
    key: String,
    uses_script: bool,
    def: ServiceDefinition,
}

/// Applies one parsed file onto the configuration, naming the file in every error.
struct FileApplier<'a> {
    file: String,
    /// Services read so far from this file: errors number them within the file they name.
    file_services: usize,
    config: &'a mut Config,
    advertise_set: &'a mut bool,
    services: &'a mut Vec<PendingService>,
}

/// How a value is shown in errors: as it was written in TOML.
fn shown(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(_) => "a table".into(),
        toml::Value::Array(a) if a.len() > 8 => format!("a list of {} items", a.len()),
        other => other.to_string(),
    }
}

impl FileApplier<'_> {
    fn err(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Key {
            file: self.file.clone(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn expected(&self, key: &str, what: &str, got: &toml::Value) -> ConfigError {
        self.err(key, format!("expected {what}, got {}", shown(got)))
    }

    fn string(&self, key: &str, v: &toml::Value) -> Result<String, ConfigError> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            other => Err(self.expected(key, "a string", other)),
        }
    }

    fn bool(&self, key: &str, v: &toml::Value) -> Result<bool, ConfigError> {
        match v {
            toml::Value::Boolean(b) => Ok(*b),
            other => Err(self.expected(key, "true or false", other)),
        }
    }

    fn port(&self, key: &str, v: &toml::Value) -> Result<u16, ConfigError> {
        match v {
            toml::Value::Integer(i) => {
                u16::try_from(*i).map_err(|_| self.expected(key, "an integer 0-65535", v))
            }
            other => Err(self.expected(key, "an integer 0-65535", other)),
        }
    }

    fn ip(&self, key: &str, v: &toml::Value) -> Result<IpAddr, ConfigError> {
        let s = self.string(key, v)?;
        s.parse()
            .map_err(|_| self.expected(key, "an IP address such as \"10.0.0.5\"", v))
    }

    fn duration(&self, key: &str, v: &toml::Value) -> Result<Duration, ConfigError> {
        let s = self.string(key, v)?;
        muster_proto::duration::parse(&s)
            .map_err(|e| self.err(key, format!("{s:?} is not a duration such as \"10s\": {e}")))
    }

    fn strings(&self, key: &str, v: &toml::Value) -> Result<Vec<String>, ConfigError> {
        let what = "a list of strings";
        match v {
            toml::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => Ok(s.clone()),
                    _ => Err(self.expected(key, what, v)),
                })
                .collect(),
            other => Err(self.expected(key, what, other)),
        }
    }

    fn table<'t>(&self, key: &str, v: &'t toml::Value) -> Result<&'t toml::Table, ConfigError> {
        match v {
            toml::Value::Table(t) => Ok(t),
            other => Err(self.expected(key, "a table", other)),
        }
    }

    fn apply(&mut self, root: &toml::Table) -> Result<(), ConfigError> {
        for (key, v) in root {
            let k = key.as_str();
            match k {
                "node_name" => {
                    let s = self.string(k, v)?;
                    check_name_label(&s).map_err(|r| self.err(k, r))?;
                    self.config.node_name = s;
                }
                "datacenter" => {
                    let s = self.string(k, v)?;
                    check_name_label(&s).map_err(|r| self.err(k, r))?;
                    self.config.datacenter = s;
                }
                "data_dir" => {
                    let s = self.string(k, v)?;
                    if s.is_empty() {
                        return Err(self.err(k, "must not be empty"));
                    }
                    self.config.data_dir = Some(PathBuf::from(s));
                }
                "bind_addr" => self.config.bind_addr = self.ip(k, v)?,
                "advertise_addr" => {
                    let ip = self.ip(k, v)?;
                    if ip.is_unspecified() {
                        return Err(self.err(k, "must be a specific address, not 0.0.0.0"));
                    }
                    self.config.advertise_addr = ip;
                    *self.advertise_set = true;
                }
                "client_addr" => self.config.client_addr = self.ip(k, v)?,
                "domain" => {
                    let s = self.string(k, v)?;
                    self.config.domain = normalize_domain(&s).map_err(|r| self.err(k, r))?;
                }
                "retry_join" => {
                    let list = self.strings(k, v)?;
                    for a in &list {
                        check_join_addr(a).map_err(|r| self.err(k, r))?;
                    }
                    self.config.retry_join = list;
                }
                "encrypt" => {
                    let s = self.string(k, v)?;
                    self.config.encrypt = Some(decode_key(&s).map_err(|r| self.err(k, r))?);
                }
                "encrypt_verify_incoming" => {
                    self.config.encrypt_verify_incoming = self.bool(k, v)?
                }
                "encrypt_verify_outgoing" => {
                    self.config.encrypt_verify_outgoing = self.bool(k, v)?
                }
                "gossip_insecure" => self.config.gossip_insecure = self.bool(k, v)?,
                "log_level" => {
                    let s = self.string(k, v)?;
                    self.config.log_level = check_log_level(&s).map_err(|r| self.err(k, r))?;
                }
                "log_json" => self.config.log_json = self.bool(k, v)?,
                "node_meta" => {
                    let t = self.table(k, v)?;
                    for (mk, mv) in t {
                        let key = format!("node_meta.{mk}");
                        let s = self.string(&key, mv)?;
                        self.config.node_meta.insert(mk.clone(), s);
                    }
                    muster_proto::validate::meta("node_meta", &self.config.node_meta)
                        .map_err(|e| self.err(k, e.reason))?;
                }
                "enable_script_checks" => self.config.enable_script_checks = self.bool(k, v)?,
                "reconnect_timeout" => {
                    let d = self.duration(k, v)?;
                    if d < Duration::from_secs(8 * 3600) {
                        return Err(self.err(k, "must be at least \"8h\" (as in Consul)"));
                    }
                    self.config.reconnect_timeout = d;
                }
                "ports" => self.apply_ports(self.table(k, v)?)?,
                "dns" => self.apply_dns(self.table(k, v)?)?,
                "http" => self.apply_http(self.table(k, v)?)?,
                "service" | "services" => match v {
                    toml::Value::Array(items) => {
                        for item in items {
                            self.add_service(k, item)?;
                        }
                    }
                    toml::Value::Table(_) => self.add_service(k, v)?,
                    other => {
                        return Err(self.expected(k, "[[service]] tables", other));
                    }
                },
                _ => return Err(self.err(k, "unknown key")),
            }
        }
        Ok(())
    }

    fn apply_ports(&mut self, t: &toml::Table) -> Result<(), ConfigError> {
        for (key, v) in t {
            let k = format!("ports.{key}");
            let p = self.port(&k, v)?;
            match key.as_str() {
                "http" => self.config.ports.http = p,
                "dns" => self.config.ports.dns = p,
                "gossip" => self.config.ports.gossip = p,
                _ => return Err(self.err(&k, "unknown key (http, dns or gossip)")),
            }
        }
        Ok(())
    }

    fn apply_dns(&mut self, t: &toml::Table) -> Result<(), ConfigError> {
        for (key, v) in t {
            let k = format!("dns.{key}");
            match key.as_str() {
                "ttl" => self.config.dns.ttl = self.duration(&k, v)?,
                "negative_ttl" => self.config.dns.negative_ttl = self.duration(&k, v)?,
                "only_passing" => self.config.dns.only_passing = self.bool(&k, v)?,
                "udp_answer_limit" => {
                    self.config.dns.udp_answer_limit = match v {
                        toml::Value::Integer(i) if (1..=64).contains(i) => *i as usize,
                        other => return Err(self.expected(&k, "an integer 1-64", other)),
                    }
                }
                "recursors" => {
                    let list = self.strings(&k, v)?;
                    let mut out = Vec::with_capacity(list.len());
                    for r in &list {
                        out.push(parse_recursor(r).map_err(|reason| self.err(&k, reason))?);
                    }
                    self.config.dns.recursors = out;
                }
                "recursor_timeout" => {
                    let d = self.duration(&k, v)?;
                    if d.is_zero() {
                        return Err(self.err(&k, "must be more than 0s"));
                    }
                    self.config.dns.recursor_timeout = d;
                }
                _ => return Err(self.err(&k, "unknown key")),
            }
        }
        Ok(())
    }

    fn apply_http(&mut self, t: &toml::Table) -> Result<(), ConfigError> {
        for (key, v) in t {
            let k = format!("http.{key}");
            match key.as_str() {
                "token" => {
                    let s = self.string(&k, v)?;
                    if s.is_empty() {
                        return Err(self.err(&k, "must not be empty (leave it out for none)"));
                    }
                    self.config.http.token = Some(s);
                }
                "tokens" => {
                    let items = match v {
                        toml::Value::Array(items) => items,
                        other => {
                            return Err(self.expected(&k, "[[http.tokens]] tables", other));
                        }
                    };
                    self.config.http.tokens.clear();
                    for (i, item) in items.iter().enumerate() {
                        let key = format!("{k}[{i}]");
                        let t = self.scoped_token(&key, item)?;
                        if self.config.http.tokens.iter().any(|o| o.secret == t.secret) {
                            return Err(self
                                .err(&format!("{key}.secret"), "repeats another token's secret"));
                        }
                        self.config.http.tokens.push(t);
                    }
                }
                _ => return Err(self.err(&k, "unknown key (token or tokens)")),
            }
        }
        Ok(())
    }

    /// One `[[http.tokens]]` table: `secret` (required), `services` (names or globs with
    /// `*`), `agent` (default false).
    fn scoped_token(&self, key: &str, v: &toml::Value) -> Result<ScopedToken, ConfigError> {
        let t = self.table(key, v)?;
        let mut token = ScopedToken::default();
        let mut secret = None;
        for (name, val) in t {
            let k = format!("{key}.{name}");
            match name.as_str() {
                "secret" => {
                    let s = self.string(&k, val)?;
                    if s.trim().is_empty() || s.contains(['\r', '\n']) {
                        return Err(self.err(&k, "must be a non-empty line of text"));
                    }
                    secret = Some(s);
                }
                "services" => {
                    let list = self.strings(&k, val)?;
                    for p in &list {
                        check_service_pattern(p).map_err(|r| self.err(&k, r))?;
                    }
                    token.services = list;
                }
                "agent" => token.agent = self.bool(&k, val)?,
                _ => return Err(self.err(&k, "unknown key (secret, services or agent)")),
            }
        }
        token.secret = secret.ok_or_else(|| self.err(&format!("{key}.secret"), "missing"))?;
        Ok(token)
    }

    fn add_service(&mut self, list_key: &str, v: &toml::Value) -> Result<(), ConfigError> {
        let key = format!("{list_key}[{}]", self.file_services);
        self.file_services += 1;
        let (def, uses_script) = service_from_toml(v)
            .map_err(|(sub, reason)| self.err(&join_key(&key, &sub), reason))?;
        self.services.push(PendingService {
            file: self.file.clone(),
            key,
            uses_script,
            def,
        });
        Ok(())
    }
}

fn join_key(base: &str, sub: &str) -> String {
    if sub.is_empty() {
        base.to_string()
    } else if sub.starts_with('[') {
        format!("{base}{sub}")
    } else {
        format!("{base}.{sub}")
    }
}

const SERVICE_KEYS: &[&str] = &[
    "name",
    "id",
    "tags",
    "address",
    "port",
    "meta",
    "weights",
    "check",
    "checks",
    "enable_tag_override",
];
const WEIGHT_KEYS: &[&str] = &["passing", "warning"];
const CHECK_KEYS: &[&str] = &[
    "id",
    "check_id",
    "name",
    "http",
    "tcp",
    "ttl",
    "args",
    "interval",
    "timeout",
    "deregister_critical_after",
    "deregister_critical_service_after",
    "method",
    "header",
    "tls_skip_verify",
    "status",
    "notes",
    "pid",
];

/// Converts one `[[service]]` table (also the format of `muster register FILE`) into a
/// validated definition, with the same rules as `PUT /v1/agent/service/register`: the table
/// becomes JSON and goes through [`muster_proto::consul::parse_registration`]. Unknown keys
/// are refused here first (the HTTP API, like Consul's, ignores them). Errors are
/// (key below the service, reason). Also says whether a check runs a script.
pub fn service_from_toml(v: &toml::Value) -> Result<(ServiceDefinition, bool), (String, String)> {
    let t = match v {
        toml::Value::Table(t) => t,
        other => {
            return Err((
                String::new(),
                format!("expected a table, got {}", shown(other)),
            ))
        }
    };
    for (k, val) in t {
        if !SERVICE_KEYS.contains(&k.as_str()) {
            return Err((k.clone(), "unknown key".into()));
        }
        if k == "weights" {
            if let toml::Value::Table(w) = val {
                if let Some(bad) = w.keys().find(|x| !WEIGHT_KEYS.contains(&x.as_str())) {
                    return Err((format!("weights.{bad}"), "unknown key".into()));
                }
            }
        }
    }
    let check_tables: Vec<(String, &toml::Value)> = match (t.get("check"), t.get("checks")) {
        (Some(_), Some(_)) => {
            return Err((
                "checks".into(),
                "use either `check` or `checks`, not both".into(),
            ))
        }
        (Some(c), None) => vec![("check".into(), c)],
        (None, Some(toml::Value::Array(items))) => items
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("checks[{i}]"), c))
            .collect(),
        (None, Some(other)) => {
            return Err((
                "checks".into(),
                format!("expected a list of check tables, got {}", shown(other)),
            ))
        }
        (None, None) => vec![],
    };
    let mut uses_script = false;
    for (ck, c) in &check_tables {
        let ct = match c {
            toml::Value::Table(ct) => ct,
            other => {
                return Err((
                    ck.clone(),
                    format!("expected a table, got {}", shown(other)),
                ))
            }
        };
        if let Some(bad) = ct.keys().find(|x| !CHECK_KEYS.contains(&x.as_str())) {
            return Err((format!("{ck}.{bad}"), "unknown key".into()));
        }
        uses_script |= ct.contains_key("args");
    }
    let json = toml_to_json(v);
    let reg = muster_proto::consul::parse_registration(&json)
        .map_err(|e| (consul_field_to_key(&e.field, &check_tables), e.reason))?;
    Ok((
        ServiceDefinition {
            service: reg.service,
            checks: reg.checks,
        },
        uses_script,
    ))
}

/// Maps a field name from the Consul parser ("Checks[1].Interval", "Weights.Passing") back
/// to the snake_case key a config file uses.
fn consul_field_to_key(field: &str, checks: &[(String, &toml::Value)]) -> String {
    // parse_registration calls a lone check "Check" even when written as `checks = [...]`.
    let field = match field.strip_prefix("Check") {
        Some(rest) if !rest.starts_with('s') && !rest.starts_with("ID") => {
            let first = checks.first().map(|(k, _)| k.as_str()).unwrap_or("check");
            return snake(&format!("{first}{rest}"));
        }
        _ => field,
    };
    snake(field)
}

fn snake(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let chars: Vec<char> = s.chars().collect();
    for (i, &ch) in chars.iter().enumerate() {
        if ch.is_ascii_uppercase() {
            let prev_lower = i > 0 && chars[i - 1].is_ascii_lowercase();
            if prev_lower {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// TOML to JSON, for the Consul-shaped parsers (datetimes become strings).
pub fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// Flags override whatever the files said.
fn apply_flags(
    c: &mut Config,
    args: &crate::cli::AgentArgs,
    advertise_set: &mut bool,
) -> Result<(), ConfigError> {
    let flag = |flag: &str, reason: String| ConfigError::Flag {
        flag: flag.into(),
        reason,
    };
    if let Some(n) = &args.node {
        check_name_label(n).map_err(|r| flag("--node", r))?;
        c.node_name = n.clone();
    }
    if let Some(ip) = args.bind {
        c.bind_addr = ip;
    }
    if let Some(ip) = args.advertise {
        if ip.is_unspecified() {
            return Err(flag(
                "--advertise",
                "must be a specific address, not 0.0.0.0".into(),
            ));
        }
        c.advertise_addr = ip;
        *advertise_set = true;
    }
    if let Some(ip) = args.client {
        c.client_addr = ip;
    }
    if let Some(p) = args.http_port {
        c.ports.http = p;
    }
    if let Some(p) = args.dns_port {
        c.ports.dns = p;
    }
    if let Some(p) = args.gossip_port {
        c.ports.gossip = p;
    }
    if let Some(d) = &args.data_dir {
        c.data_dir = Some(d.clone());
    }
    if !args.join.is_empty() {
        for a in &args.join {
            check_join_addr(a).map_err(|r| flag("--join", r))?;
        }
        c.retry_join = args.join.clone();
    }
    if let Some(k) = &args.encrypt {
        c.encrypt = Some(decode_key(k).map_err(|r| flag("--encrypt", r))?);
    }
    if let Some(d) = &args.domain {
        c.domain = normalize_domain(d).map_err(|r| flag("--domain", r))?;
    }
    if let Some(d) = &args.datacenter {
        check_name_label(d).map_err(|r| flag("--datacenter", r))?;
        c.datacenter = d.clone();
    }
    if let Some(l) = &args.log_level {
        c.log_level = check_log_level(l).map_err(|r| flag("--log-level", r))?;
    }
    c.log_json |= args.log_json;
    Ok(())
}

/// A node name or datacenter: both appear as DNS labels (`NODE.node.<domain>`), so
/// 1–63 of `[A-Za-z0-9_-]`.
fn check_name_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("{s:?} must be 1-63 characters"));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(bad) => Err(format!(
            "{s:?} contains {bad:?}; only letters, digits, '-' and '_' are allowed"
        )),
        None => Ok(()),
    }
}

/// The DNS domain, lower-cased, without a trailing dot; each label 1–63 of `[a-z0-9-]`.
fn normalize_domain(s: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() {
        return Err("must not be empty".into());
    }
    if d.len() > 200 {
        return Err(format!("{s:?} is longer than 200 characters"));
    }
    for label in d.split('.') {
        if label.is_empty()
            || label.len() > 63
            || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "{s:?} is not a domain name (labels of 1-63 letters, digits or '-')"
            ));
        }
    }
    Ok(d)
}

/// A service name pattern of a scoped token: a service name, possibly with `*` (any run
/// of characters) in it, e.g. `web`, `api-*`, `*-cache`.
fn check_service_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("a service pattern must not be empty".into());
    }
    match p
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '*'))
    {
        Some(bad) => Err(format!(
            "service pattern {p:?} contains {bad:?}; use service-name characters and '*'"
        )),
        None => Ok(()),
    }
}

/// A join address: `host` or `host:port` (IPv6 as `[::1]:8301`).
fn check_join_addr(s: &str) -> Result<(), String> {
    if s.trim().is_empty() || s.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{s:?} is not an address such as \"10.0.0.5:8301\""));
    }
    if let Some((_, port)) = s.rsplit_once(':') {
        if !s.contains(']') && s.matches(':').count() > 1 {
            // A bare IPv6 address without a port.
            return s
                .parse::<IpAddr>()
                .map(|_| ())
                .map_err(|_| format!("{s:?} is not an address such as \"10.0.0.5:8301\""));
        }
        port.parse::<u16>()
            .map_err(|_| format!("{s:?} has a bad port {port:?}"))?;
    }
    Ok(())
}

/// The gossip key: standard base64 of exactly 32 bytes (what `muster keygen` prints).
pub fn decode_key(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("not valid base64 ({e}); generate one with `muster keygen`"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "decodes to {} bytes, expected 32; generate one with `muster keygen`",
            bytes.len()
        )
    })
}

fn check_log_level(s: &str) -> Result<String, String> {
    let l = s.to_ascii_lowercase();
    match l.as_str() {
        "trace" | "debug" | "info" | "warn" | "error" => Ok(l),
        "warning" => Ok("warn".into()),
        "err" => Ok("error".into()),
        _ => Err(format!(
            "{s:?} is not one of trace, debug, info, warn, error"
        )),
    }
}

/// A recursor: `ip` (port 53) or `ip:port` (`[v6]:port`).
fn parse_recursor(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok(sa);
    }
    s.parse::<IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not an address such as \"1.1.1.1\" or \"1.1.1.1:53\""))
}

/// The default advertise address: `bind` when gossip is bound to one specific address
/// (advertising any other would be unreachable, and `--dev` stays on loopback), else the
/// first private IPv4 of this host, else loopback.
fn default_advertise(bind: IpAddr) -> IpAddr {
    if !bind.is_unspecified() {
        return bind;
    }
    let text = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    match first_private_ipv4(&text) {
        Some(ip) => IpAddr::V4(ip),
        None => IpAddr::from([127, 0, 0, 1]),
    }
}

/// Finds the lowest private (RFC 1918) address this host owns in `/proc/net/fib_trie`,
/// where each local address is a line `|-- A.B.C.D` followed by `/32 host LOCAL`.
fn first_private_ipv4(fib_trie: &str) -> Option<std::net::Ipv4Addr> {
    let mut last: Option<std::net::Ipv4Addr> = None;
    let mut found = std::collections::BTreeSet::new();
    for line in fib_trie.lines() {
        let t = line.trim_start_matches([' ', '|', '+', '-']).trim();
        if let Ok(ip) = t.parse::<std::net::Ipv4Addr>() {
            last = Some(ip);
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                if ip.is_private() {
                    found.insert(ip);
                }
            }
        }
    }
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::AgentArgs;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A scratch directory for config files, removed on drop.
    struct Dir(PathBuf);
    static N: AtomicU32 = AtomicU32::new(0);
    impl Dir {
        fn new() -> Dir {
            let p = std::env::temp_dir().join(format!(
                "muster-config-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn with_files(files: &[PathBuf]) -> AgentArgs {
        AgentArgs {
            config: files.to_vec(),
            ..AgentArgs::default()
        }
    }

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let d = Dir::new();
        let f = d.file("c.toml", text);
        load(&with_files(&[f]))
    }

    fn key_error(text: &str) -> (String, String) {
        match load_text(text) {
            Err(ConfigError::Key { key, reason, .. }) => (key, reason),
            other => panic!("expected a key error for {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn defaults_without_files() {
        let c = load(&AgentArgs::default()).unwrap();
        assert!(!c.dev);
        assert_eq!(c.datacenter, "dc1");
        assert_eq!(c.bind_addr, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.client_addr, IpAddr::from([127, 0, 0, 1]));
        assert!(!c.advertise_addr.is_unspecified());
        assert_eq!(c.domain, "local");
        assert_eq!(c.ports, Ports::default());
        assert_eq!(c.dns, DnsConfig::default());
        assert_eq!(c.data_dir, None);
        assert_eq!(c.reconnect_timeout, Duration::from_secs(72 * 3600));
        assert_eq!(c.log_level, "info");
    }

    #[test]
    fn dev_without_files_is_config_dev() {
        let args = AgentArgs {
            dev: true,
            ..AgentArgs::default()
        };
        let mut want = Config::dev();
        want.sources = Sources::default();
        assert_eq!(load(&args).unwrap(), want);
    }

    #[test]
    fn every_key_is_read() {
        let c = load_text(
            r#"
node_name = "web-1"
datacenter = "east"
data_dir = "/var/lib/muster"
bind_addr = "10.0.0.5"
advertise_addr = "10.0.0.6"
client_addr = "0.0.0.0"
domain = "Consul."
retry_join = ["10.0.0.7", "10.0.0.8:8301"]
encrypt = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
log_level = "debug"
log_json = true
node_meta = { rack = "r1" }
enable_script_checks = true
reconnect_timeout = "24h"
[ports]
http = 18500
dns = 18600
gossip = 18301
[dns]
ttl = "5s"
negative_ttl = "30s"
only_passing = true
udp_answer_limit = 5
recursors = ["1.1.1.1", "9.9.9.9:5353"]
recursor_timeout = "500ms"
[http]
token = "s3cret"
"#,
        )
        .unwrap();
        assert_eq!(c.node_name, "web-1");
        assert_eq!(c.datacenter, "east");
        assert_eq!(c.data_dir, Some(PathBuf::from("/var/lib/muster")));
        assert_eq!(c.bind_addr, IpAddr::from([10, 0, 0, 5]));
        assert_eq!(c.advertise_addr, IpAddr::from([10, 0, 0, 6]));
        assert_eq!(c.client_addr, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.domain, "consul");
        assert_eq!(c.retry_join, vec!["10.0.0.7", "10.0.0.8:8301"]);
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(c.encrypt, Some(key));
        assert_eq!(c.log_level, "debug");
        assert!(c.log_json);
        assert_eq!(c.node_meta.get("rack").map(String::as_str), Some("r1"));
        assert!(c.enable_script_checks);
        assert_eq!(c.reconnect_timeout, Duration::from_secs(24 * 3600));
        assert_eq!(
            c.ports,
            Ports {
                http: 18500,
                dns: 18600,
                gossip: 18301
            }
        );
        assert_eq!(c.dns.ttl, Duration::from_secs(5));
        assert_eq!(c.dns.negative_ttl, Duration::from_secs(30));
        assert!(c.dns.only_passing);
        assert_eq!(c.dns.udp_answer_limit, 5);
        assert_eq!(
            c.dns.recursors,
            vec![
                "1.1.1.1:53".parse().unwrap(),
                "9.9.9.9:5353".parse().unwrap()
            ]
        );
        assert_eq!(c.dns.recursor_timeout, Duration::from_millis(500));
        assert_eq!(c.http.token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn services_with_checks_use_the_http_rules() {
        let c = load_text(
            r#"
[[service]]
name = "web"
id = "web-1"
tags = ["v1", "primary"]
address = "10.0.0.9"
port = 8080
meta = { version = "1.2" }
weights = { passing = 10, warning = 1 }
checks = [
  { http = "http://127.0.0.1:8080/health", interval = "10s", timeout = "2s", method = "HEAD", header = { X-A = ["b"] }, tls_skip_verify = true },
  { tcp = "127.0.0.1:8080", interval = "5s", deregister_critical_after = "1m" },
]

[[service]]
name = "worker"
check = { ttl = "30s", status = "passing", notes = "heartbeat", name = "beat", id = "worker-ttl" }
"#,
        )
        .unwrap();
        assert_eq!(c.services.len(), 2);
        let web = &c.services[0];
        assert_eq!(web.service.id, "web-1");
        assert_eq!(web.service.port, 8080);
        assert_eq!(web.service.tags, vec!["v1", "primary"]);
        assert_eq!(web.service.weights.passing, 10);
        assert_eq!(web.checks.len(), 2);
        assert_eq!(web.checks[0].id, "service:web-1:1");
        assert!(matches!(
            &web.checks[0].kind,
            muster_proto::CheckKind::Http { method, tls_skip_verify: true, interval_ms: 10_000, timeout_ms: 2_000, .. } if method == "HEAD"
        ));
        assert_eq!(web.checks[1].deregister_critical_after_ms, 60_000);
        let worker = &c.services[1];
        assert_eq!(worker.service.id, "worker");
        assert_eq!(worker.checks[0].id, "worker-ttl");
        assert_eq!(worker.checks[0].name, "beat");
        assert_eq!(worker.checks[0].status, muster_proto::HealthStatus::Passing);
    }

    #[test]
    fn process_checks_in_files_name_a_pid() {
        let c = load_text("[[service]]\nname = \"web\"\ncheck = { pid = 1234 }\n").unwrap();
        // Parsed only: the agent binds the start time when it applies the service.
        assert_eq!(
            c.services[0].checks[0].kind,
            muster_proto::CheckKind::Process {
                pid: 1234,
                start_time: 0
            }
        );
        let (k, r) = key_error("[[service]]\nname = \"web\"\ncheck = { pid = 0 }\n");
        assert_eq!(
            (k.as_str(), r.as_str()),
            ("service[0].check.pid", "0 is not a process id")
        );
        let (k, _) = key_error(
            "[[service]]\nname = \"web\"\nchecks = [{ ttl = \"5s\" }, { pid = \"12\" }]\n",
        );
        assert_eq!(k, "service[0].checks[1].pid");
    }

    #[test]
    fn files_merge_in_order_and_dirs_in_lexical_order() {
        let d = Dir::new();
        let conf = Dir::new();
        let base = d.file(
            "base.toml",
            "datacenter = \"one\"\nnode_meta = { a = \"1\", b = \"1\" }\n[ports]\nhttp = 1000\ndns = 2000\n[[service]]\nname = \"a\"\n",
        );
        // "20-" sorts after "10-" whatever order the directory lists them in.
        conf.file(
            "20-late.toml",
            "datacenter = \"three\"\n[ports]\ndns = 3001\n[[service]]\nname = \"c\"\n",
        );
        conf.file(
            "10-early.toml",
            "datacenter = \"two\"\nnode_meta = { b = \"2\" }\n[ports]\ndns = 3000\n[[service]]\nname = \"b\"\n",
        );
        conf.file("ignored.json", "{ not toml");
        let args = AgentArgs {
            config: vec![base],
            config_dir: vec![conf.0.clone()],
            ..AgentArgs::default()
        };
        let c = load(&args).unwrap();
        assert_eq!(c.datacenter, "three", "later files override scalars");
        assert_eq!(c.ports.http, 1000, "tables merge key by key");
        assert_eq!(c.ports.dns, 3001);
        assert_eq!(c.node_meta.get("a").map(String::as_str), Some("1"));
        assert_eq!(c.node_meta.get("b").map(String::as_str), Some("2"));
        let names: Vec<&str> = c.services.iter().map(|s| s.service.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"], "[[service]] accumulates");
        assert_eq!(c.sources.dirs, vec![conf.0.clone()]);
    }

    #[test]
    fn flags_win_over_files() {
        let d = Dir::new();
        let f = d.file(
            "c.toml",
            "node_name = \"file\"\ndatacenter = \"filedc\"\nretry_join = [\"10.0.0.1\"]\n[ports]\nhttp = 1000\n",
        );
        let args = AgentArgs {
            config: vec![f],
            node: Some("flag".into()),
            http_port: Some(2000),
            join: vec!["10.0.0.2:8301".into()],
            advertise: Some(IpAddr::from([10, 1, 1, 1])),
            domain: Some("example.".into()),
            ..AgentArgs::default()
        };
        let c = load(&args).unwrap();
        assert_eq!(c.node_name, "flag");
        assert_eq!(c.datacenter, "filedc");
        assert_eq!(c.ports.http, 2000);
        assert_eq!(c.retry_join, vec!["10.0.0.2:8301"]);
        assert_eq!(c.advertise_addr, IpAddr::from([10, 1, 1, 1]));
        assert_eq!(c.domain, "example");
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let d = Dir::new();
        let f = d.file("muster.toml", "[ports]\nhttp = \"x\"\n");
        let e = load(&with_files(std::slice::from_ref(&f))).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: key ports.http: expected an integer 0-65535, got \"x\"",
                f.display()
            )
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert_eq!(key_error("nodename = \"x\"").0, "nodename");
        assert_eq!(key_error("[ports]\nhttps = 1").0, "ports.https");
        assert_eq!(key_error("[dns]\nttl2 = \"1s\"").0, "dns.ttl2");
        assert_eq!(key_error("[http]\ntokens = \"1\"").0, "http.tokens");
        assert_eq!(
            key_error("[[service]]\nname = \"a\"\nprot = 80").0,
            "service[0].prot"
        );
        assert_eq!(
            key_error("[[service]]\nname = \"a\"\ncheck = { ttl = \"5s\", intervall = \"1s\" }").0,
            "service[0].check.intervall"
        );
        assert_eq!(
            key_error("[[service]]\nname = \"a\"\nweights = { passing = 1, failing = 1 }").0,
            "service[0].weights.failing"
        );
    }

    #[test]
    fn wrong_types_are_refused() {
        let (k, r) = key_error("datacenter = 5");
        assert_eq!(
            (k.as_str(), r.as_str()),
            ("datacenter", "expected a string, got 5")
        );
        let (k, r) = key_error("enable_script_checks = \"yes\"");
        assert_eq!(k, "enable_script_checks");
        assert!(r.contains("true or false"), "{r}");
        assert_eq!(key_error("retry_join = \"10.0.0.1\"").0, "retry_join");
        assert_eq!(key_error("ports = 5").0, "ports");
        assert_eq!(key_error("node_meta = { a = 1 }").0, "node_meta.a");
        let (k, r) = key_error("[[service]]\nname = \"a\"\nport = \"80\"");
        assert_eq!(k, "service[0].port");
        assert!(r.contains("number"), "{r}");
        assert_eq!(key_error("service = 3").0, "service");
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(key_error("[ports]\nhttp = 70000").0, "ports.http");
        assert_eq!(key_error("bind_addr = \"10.0.0\"").0, "bind_addr");
        assert_eq!(
            key_error("advertise_addr = \"0.0.0.0\"").0,
            "advertise_addr"
        );
        let (k, r) = key_error("encrypt = \"c2hvcnQ=\"");
        assert_eq!(k, "encrypt");
        assert!(r.contains("expected 32"), "{r}");
        assert_eq!(key_error("encrypt = \"!!!\"").0, "encrypt");
        assert_eq!(key_error("log_level = \"loud\"").0, "log_level");
        assert_eq!(key_error("domain = \"a..b\"").0, "domain");
        assert_eq!(key_error("node_name = \"a b\"").0, "node_name");
        assert_eq!(
            key_error("reconnect_timeout = \"soon\"").0,
            "reconnect_timeout"
        );
        assert_eq!(key_error("[dns]\nttl = \"5 parsecs\"").0, "dns.ttl");
        assert_eq!(
            key_error("[dns]\nudp_answer_limit = 0").0,
            "dns.udp_answer_limit"
        );
        assert_eq!(
            key_error("[dns]\nrecursors = [\"dns.google\"]").0,
            "dns.recursors"
        );
        assert_eq!(
            key_error("retry_join = [\"10.0.0.1:http\"]").0,
            "retry_join"
        );
        assert_eq!(key_error("node_meta = { \"a b\" = \"1\" }").0, "node_meta");
        let (k, r) = key_error("[[service]]\nname = \"web_1\"");
        assert_eq!(k, "service[0].name");
        assert!(r.contains("'_'"), "{r}");
        assert_eq!(
            key_error(
                "[[service]]\nname = \"a\"\ncheck = { http = \"ftp://x\", interval = \"1s\" }"
            )
            .0,
            "service[0].check.http"
        );
        assert_eq!(
            key_error("[[service]]\nname = \"a\"\nchecks = [{ tcp = \"x:1\", interval = \"1s\" }, { tcp = \"x:1\" }]").0,
            "service[0].checks[1].interval"
        );
        assert_eq!(
            key_error(
                "[[service]]\nname = \"a\"\ncheck = { args = [\"/bin/true\"], interval = \"5s\" }"
            )
            .0,
            "service[0].checks"
        );
        assert_eq!(
            key_error("[[service]]\nname = \"a\"\n[[service]]\nname = \"a\"").0,
            "service[1].id"
        );
        let (k, r) = key_error(
            "[[service]]\nname = \"a\"\ncheck = { ttl = \"30s\", http = \"http://x\", interval = \"1s\" }",
        );
        assert_eq!(k, "service[0].check");
        assert!(r.starts_with("ttl and http are both set"), "{r}");
    }

    #[test]
    fn services_are_numbered_within_the_file_an_error_names() {
        let d = Dir::new();
        let a = d.file(
            "10-web.toml",
            "[[service]]\nname = \"a\"\n[[service]]\nname = \"b\"\n[[service]]\nname = \"c\"\n",
        );
        let b = d.file("zz-api.toml", "[[service]]\nname = \"api\"\nprot = 80\n");
        let e = load(&with_files(&[a.clone(), b.clone()])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: key service[0].prot: unknown key", b.display())
        );
        // A duplicate id is named by its place in its own file too.
        let c = d.file(
            "zz-dup.toml",
            "[[service]]\nname = \"x\"\n[[service]]\nname = \"b\"\n",
        );
        let e = load(&with_files(&[a.clone(), c.clone()])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: key service[1].id: service id \"b\" is already defined in {}",
                c.display(),
                a.display()
            )
        );
    }

    #[test]
    fn script_checks_allowed_when_enabled_in_any_file() {
        let d = Dir::new();
        let a = d.file(
            "a.toml",
            "[[service]]\nname = \"a\"\ncheck = { args = [\"/bin/true\"], interval = \"5s\" }\n",
        );
        let b = d.file("b.toml", "enable_script_checks = true\n");
        let c = load(&with_files(&[a, b])).unwrap();
        assert_eq!(c.services.len(), 1);
    }

    #[test]
    fn unreadable_and_invalid_files_are_refused() {
        let d = Dir::new();
        let missing = d.0.join("nope.toml");
        match load(&with_files(std::slice::from_ref(&missing))) {
            Err(ConfigError::File { file, reason }) => {
                assert_eq!(file, missing.display().to_string());
                assert!(reason.contains("cannot read"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let bad = d.file("bad.toml", "ports = [\n");
        match load(&with_files(&[bad])) {
            Err(ConfigError::File { reason, .. }) => assert!(reason.contains("TOML"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let args = AgentArgs {
            config_dir: vec![d.0.join("no-such-dir")],
            ..AgentArgs::default()
        };
        assert!(matches!(load(&args), Err(ConfigError::File { .. })));
    }

    #[test]
    fn bad_flags_are_refused() {
        let args = AgentArgs {
            encrypt: Some("short".into()),
            ..AgentArgs::default()
        };
        assert!(matches!(load(&args), Err(ConfigError::Flag { flag, .. }) if flag == "--encrypt"));
        let args = AgentArgs {
            join: vec!["a b".into()],
            ..AgentArgs::default()
        };
        assert!(matches!(load(&args), Err(ConfigError::Flag { flag, .. }) if flag == "--join"));
    }

    #[test]
    fn advertise_follows_a_specific_bind_address() {
        let c = load_text("bind_addr = \"127.0.0.7\"").unwrap();
        assert_eq!(c.advertise_addr, IpAddr::from([127, 0, 0, 7]));
        let dev = load(&AgentArgs {
            dev: true,
            ..AgentArgs::default()
        })
        .unwrap();
        assert_eq!(dev.advertise_addr, IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn advertise_prefers_a_private_address() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.1.2.3\n        /32 host LOCAL\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 8.8.8.8\n        /32 host LOCAL\n";
        assert_eq!(
            first_private_ipv4(trie),
            Some(std::net::Ipv4Addr::new(10, 1, 2, 3))
        );
        assert_eq!(first_private_ipv4("|-- 127.0.0.1\n /32 host LOCAL\n"), None);
    }

    #[test]
    fn scoped_tokens_and_gossip_security_keys() {
        let c = load_text(
            r#"
gossip_insecure = true
encrypt_verify_incoming = false
encrypt_verify_outgoing = false
[http]
token = "root"
[[http.tokens]]
secret = "web-writer"
services = ["web", "api-*"]
[[http.tokens]]
secret = "ops"
agent = true
"#,
        )
        .unwrap();
        assert!(c.gossip_insecure);
        assert!(!c.encrypt_verify_incoming && !c.encrypt_verify_outgoing);
        assert_eq!(c.http.tokens.len(), 2);
        assert_eq!(c.http.tokens[0].services, vec!["web", "api-*"]);
        assert!(!c.http.tokens[0].agent);
        assert!(c.http.tokens[1].agent && c.http.tokens[1].services.is_empty());
        let d = load_text("").unwrap();
        assert!(d.encrypt_verify_incoming && d.encrypt_verify_outgoing && !d.gossip_insecure);
        assert_eq!(
            key_error("[[http.tokens]]\nservices = [\"web\"]").0,
            "http.tokens[0].secret"
        );
        assert_eq!(
            key_error("[[http.tokens]]\nsecret = \"a\"\nservice = [\"web\"]").0,
            "http.tokens[0].service"
        );
        let (k, r) = key_error("[[http.tokens]]\nsecret = \"a\"\nservices = [\"web/1\"]");
        assert_eq!(k, "http.tokens[0].services");
        assert!(r.contains("'/'"), "{r}");
        assert_eq!(
            key_error("[[http.tokens]]\nsecret = \"a\"\n[[http.tokens]]\nsecret = \"a\"").0,
            "http.tokens[1].secret"
        );
        assert_eq!(key_error("gossip_insecure = \"yes\"").0, "gossip_insecure");
    }

    #[test]
    fn every_example_loads() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config-examples");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let c = load(&with_files(std::slice::from_ref(&p)))
                    .unwrap_or_else(|e| panic!("{} does not load: {e}", p.display()));
                assert!(!c.dev);
                n += 1;
            }
        }
        assert!(n >= 4, "expected the four examples, found {n}");
    }
}
