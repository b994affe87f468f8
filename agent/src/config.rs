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
    /// The 32-byte gossip key, decoded.
    pub encrypt: Option<[u8; 32]>,
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

/// This host's name, as the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

/// A configuration that could not be loaded: names the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {reason}")]
    File { file: String, reason: String },
    #[error("invalid {key}: {reason}")]
    Value { key: String, reason: String },
}

/// Builds the effective configuration from files and flags (flags win).
pub fn load(args: &crate::cli::AgentArgs) -> Result<Config, ConfigError> {
    let mut c = Config::dev();
    c.dev = args.dev;
    if !args.config.is_empty() || !args.config_dir.is_empty() {
        return Err(ConfigError::File {
            file: "config".into(),
            reason: "config files are not supported yet".into(),
        });
    }
    if let Some(n) = &args.node {
        c.node_name = n.clone();
    }
    if let Some(ip) = args.bind {
        c.bind_addr = ip;
    }
    if let Some(ip) = args.advertise {
        c.advertise_addr = ip;
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
    if let Some(d) = &args.domain {
        c.domain = d.clone();
    }
    if let Some(d) = &args.datacenter {
        c.datacenter = d.clone();
    }
    if let Some(l) = &args.log_level {
        c.log_level = l.clone();
    }
    c.log_json |= args.log_json;
    c.retry_join.extend(args.join.iter().cloned());
    if let Some(k) = &args.encrypt {
        c.encrypt = Some(decode_key(k).map_err(|reason| ConfigError::Value {
            key: "encrypt".into(),
            reason,
        })?);
    }
    Ok(c)
}

/// Decodes a gossip key: base64 of exactly 32 bytes (what `muster keygen` prints).
pub fn decode_key(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("not base64: {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("the key must be 32 bytes, not {}", bytes.len()))
}
