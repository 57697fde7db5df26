//! The command line: the flags that override the file's common keys, and the subcommands that
//! do a job and exit.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::listen::Endpoint;

/// The command line.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "tallyd",
    version,
    about = "StatsD/DogStatsD over UDP, TCP or Unix sockets in, Prometheus /metrics out."
)]
pub struct Cli {
    /// The TOML configuration file. Without it, the built-in defaults (those documented in
    /// config/tallyd.toml) apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// UDP address to receive StatsD on (repeat for several); replaces `udp.listen`. Every
    /// listen flag also takes `systemd:NAME`: the sockets systemd passed under that name.
    #[arg(long = "udp-listen", value_name = "ADDR")]
    pub udp_listen: Vec<Endpoint<SocketAddr>>,
    /// TCP address to accept StatsD lines on (repeat for several); replaces `tcp.listen`.
    #[arg(long = "tcp-listen", value_name = "ADDR")]
    pub tcp_listen: Vec<Endpoint<SocketAddr>>,
    /// Unix datagram socket path to receive StatsD on (repeat for several); replaces
    /// `unix.listen`.
    #[arg(long = "unix-listen", value_name = "PATH")]
    pub unix_listen: Vec<Endpoint<PathBuf>>,
    /// Upstream StatsD server (`host:port`) to relay the lines received to over UDP (repeat
    /// for several); replaces `relay.targets`. statsd_exporter's `--statsd.relay.address`.
    #[arg(long = "relay-target", value_name = "ADDR")]
    pub relay_target: Vec<String>,
    /// Address of the HTTP server (/metrics); replaces `http.listen`.
    #[arg(long = "http-listen", value_name = "ADDR")]
    pub http_listen: Option<Endpoint<SocketAddr>>,
    /// Directory of the API's durable store; replaces `storage.dir`.
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive);
    /// replaces `log.level`.
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Validate the configuration, print the outcome and exit (0 valid, 2 invalid).
    #[arg(long = "check-config")]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands that do a job and exit instead of running the daemon.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Convert a statsd_exporter mapping file (YAML) to a complete tallyd config on stdout;
    /// options with no tallyd equivalent are reported on stderr.
    ImportMapping {
        /// The statsd_exporter mapping YAML file.
        file: PathBuf,
    },
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `tallyd token ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Print a fresh random secret and the `[[api.tokens]]` stanza (with only its SHA-256) to
    /// paste into the config file.
    New {
        /// The tenant the token reaches.
        #[arg(long)]
        tenant: String,
        /// Comma-separated scopes: read, write, admin.
        #[arg(long, value_delimiter = ',', default_value = "read,write")]
        scopes: Vec<crate::tokens::Scope>,
        /// The token's id (the user name of Basic auth); a random one by default.
        #[arg(long)]
        id: Option<String>,
    },
}
