//! The command line (SPEC §2): `muster agent` with its flags, and the client commands that
//! talk to a running agent over HTTP.

use clap::{Args, Parser, Subcommand};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "muster",
    version,
    about = "Per-host service-discovery agent (Consul-compatible API, DNS, SWIM gossip)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process, so the size of the `Agent` variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent.
    Agent(AgentArgs),
    /// List cluster members.
    Members(ClientArgs),
    /// List services, or the instances of one service.
    Services {
        /// Service name; without it, every service name with its tags.
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Register the services defined in a TOML file with the local agent.
    Register {
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deregister a service by id.
    Deregister {
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print each change of a service's healthy instances.
    Watch {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run PROGRAM and keep it registered as a service exactly while it runs.
    Exec(ExecArgs),
    /// Print a new gossip encryption key.
    Keygen,
    /// List or change the gossip keys of the whole cluster (through the local agent).
    Keyring {
        #[command(flatten)]
        op: KeyringOp,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Ask the local agent to leave the cluster and stop.
    Leave(ClientArgs),
    /// Ask the local agent to re-read its config files.
    Reload(ClientArgs),
    /// Print the version.
    Version,
}

/// Flags of `muster agent`; each overrides the same key from config files.
#[derive(Args, Debug, Default, Clone)]
pub struct AgentArgs {
    /// One node, nothing on disk, everything on 127.0.0.1, no config file needed.
    #[arg(long)]
    pub dev: bool,
    /// A config file (repeatable; merged in the order given).
    #[arg(long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// A directory of *.toml config files, merged in lexical order (repeatable).
    #[arg(long = "config-dir", value_name = "DIR")]
    pub config_dir: Vec<PathBuf>,
    #[arg(long = "node", value_name = "NAME")]
    pub node: Option<String>,
    /// Address to bind gossip to.
    #[arg(long = "bind", value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Address other nodes reach this one at.
    #[arg(long = "advertise", value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Address for HTTP and DNS.
    #[arg(long = "client", value_name = "IP")]
    pub client: Option<IpAddr>,
    #[arg(long = "http-port")]
    pub http_port: Option<u16>,
    #[arg(long = "dns-port")]
    pub dns_port: Option<u16>,
    #[arg(long = "gossip-port")]
    pub gossip_port: Option<u16>,
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of a member to join (repeatable).
    #[arg(long = "join", value_name = "ADDR")]
    pub join: Vec<String>,
    /// Base64 32-byte gossip key (`muster keygen`).
    #[arg(long = "encrypt", value_name = "KEY")]
    pub encrypt: Option<String>,
    #[arg(long = "domain")]
    pub domain: Option<String>,
    #[arg(long = "datacenter")]
    pub datacenter: Option<String>,
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[arg(long = "log-json")]
    pub log_json: bool,
}

/// Exactly one keyring operation.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct KeyringOp {
    /// List the installed keys, with how many members hold each and use it as primary.
    #[arg(long)]
    pub list: bool,
    /// Install a key on every member (it opens packets at once; sealing needs --use).
    #[arg(long, value_name = "KEY")]
    pub install: Option<String>,
    /// Make an installed key the primary key (the one packets are sealed with) everywhere.
    #[arg(long = "use", value_name = "KEY")]
    pub use_key: Option<String>,
    /// Remove a key that no member uses as primary from every member.
    #[arg(long, value_name = "KEY")]
    pub remove: Option<String>,
}

/// How client commands reach the agent.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The agent's HTTP address.
    #[arg(
        long = "http-addr",
        env = "MUSTER_HTTP_ADDR",
        default_value = "127.0.0.1:8500"
    )]
    pub http_addr: String,
    /// ACL token for writes.
    #[arg(long = "token", env = "MUSTER_HTTP_TOKEN")]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long = "json")]
    pub json: bool,
}

/// Flags of `muster exec` (SPEC §10).
#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Service name [default: PROGRAM's file name].
    #[arg(long = "service", value_name = "NAME")]
    pub service: Option<String>,
    /// Service id [default: NAME-PID, PID being PROGRAM's: unique per run].
    #[arg(long = "id", value_name = "ID")]
    pub id: Option<String>,
    /// The port PROGRAM serves on.
    #[arg(long = "port", value_name = "P")]
    pub port: Option<u16>,
    /// The address the service is reached at [default: the node's address].
    #[arg(long = "address", value_name = "A")]
    pub address: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "T")]
    pub tags: Vec<String>,
    /// A metadata pair (repeatable).
    #[arg(long = "meta", value_name = "K=V")]
    pub meta: Vec<String>,
    /// When PROGRAM counts as ready to be registered: `tcp` (its --port accepts a
    /// connection; the default with --port), an http(s):// URL that answers 2xx, or `none`
    /// (at once; the default without --port).
    #[arg(long = "ready", value_name = "tcp|URL|none")]
    pub ready: Option<String>,
    /// How long PROGRAM may take to become ready before it is stopped; 0 waits forever.
    #[arg(long = "ready-timeout", value_name = "D", default_value = "60s")]
    pub ready_timeout: String,
    /// An HTTP health check to register along with the process check.
    #[arg(long = "check-http", value_name = "URL")]
    pub check_http: Option<String>,
    /// Interval of the --check-http check [default: 10s].
    #[arg(long = "interval", value_name = "D")]
    pub interval: Option<String>,
    /// The agent's HTTP address.
    #[arg(
        long = "http-addr",
        env = "MUSTER_HTTP_ADDR",
        default_value = "127.0.0.1:8500"
    )]
    pub http_addr: String,
    /// ACL token for the registration.
    #[arg(long = "token", env = "MUSTER_HTTP_TOKEN")]
    pub token: Option<String>,
    /// The program to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub command: Vec<String>,
}
