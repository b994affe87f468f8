//! `muster`: parses the command line and hands off to the agent or a client command.

mod agent;
mod checks;
mod cli;
mod client;
mod config;
mod dns;
mod exec;
mod gossip;
mod http;
mod keyring;
mod metrics;
mod shared;
mod state;
mod store;
mod waiters;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    use cli::Command as C;
    match cli.command {
        C::Agent(args) => agent::main(args),
        C::Members(c) => client::finish(client::members(&c)),
        C::Services { name, client: c } => client::finish(client::services(&c, name.as_deref())),
        C::Register { file, client: c } => client::finish(client::register(&c, &file)),
        C::Deregister { id, client: c } => client::finish(client::deregister(&c, &id)),
        C::Watch { name, client: c } => client::finish(client::watch(&c, &name)),
        C::Exec(args) => exec::main(args),
        C::Keygen => client::finish(client::keygen()),
        C::Keyring { op, client: c } => client::finish(client::keyring(&c, &op)),
        C::Leave(c) => client::finish(client::leave(&c)),
        C::Reload(c) => client::finish(client::reload(&c)),
        C::Version => {
            println!("muster {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
    }
}
