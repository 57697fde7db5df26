//! `tallyd-load`: deterministic StatsD/DogStatsD traffic over UDP, TCP or a Unix datagram socket
//! (`send`), and the receive-only floor (`floor`) that tallyd's CPU per line is judged against.
//!
//! `send` writes a JSON object on stdout describing exactly what the kernel accepted (datagrams,
//! lines, lines per type, the sum of every counter increment, optionally per series), so the
//! end-to-end benchmark computes loss instead of guessing it. `floor` binds a UDP socket,
//! receives with tallyd's own batch receiver (`tallyd::listen::udp::BatchReceiver`: `recvmmsg`,
//! `SO_RXQ_OVFL`), adds up counter values with a minimal scan instead of ingesting, and reports
//! its CPU per line; see `benches/README.md`.
//!
//! This file holds the command line and the dispatch; the rest is one module per concern:
//!
//! - [`generate`]: the deterministic line generator (series picks, types, values, the
//!   Prometheus text of a counter series);
//! - [`send`]: packing lines into datagrams, pacing, `sendmmsg` (or stream writes for TCP), and
//!   the `send` report;
//! - [`floor`]: the receive-only floor, its minimal scan, and the `floor` report;
//! - [`json`]: the one-line JSON writer both reports use;
//! - [`os`]: CPU time (`getrusage`), timer slack, and the stop-on-signal flag.

mod floor;
mod generate;
mod json;
mod os;
mod send;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "tallyd-load",
    version,
    about = "Deterministic StatsD/DogStatsD load (UDP, TCP, Unix datagrams), and the receive-only floor."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send traffic and print what was sent (JSON on stdout).
    Send(SendArgs),
    /// Receive-only floor: recvmmsg + a minimal scan; prints JSON on exit (SIGTERM/SIGINT,
    /// --duration or --idle-exit).
    Floor(FloorArgs),
}

#[derive(Args, Debug, Clone)]
struct SendArgs {
    /// Where to send: `HOST:PORT` (UDP), `tcp:HOST:PORT` (newline-terminated lines over one
    /// stream per --sockets) or `unix:PATH` (Unix datagrams).
    #[arg(long, default_value = "127.0.0.1:8125")]
    target: Target,
    /// Lines per datagram (the most, with --pack-bytes). Default 1, or unlimited with
    /// --pack-bytes.
    #[arg(long, value_name = "N")]
    lines_per_datagram: Option<usize>,
    /// Pack lines into datagrams of at most this many bytes (e.g. 1432, as buffered clients do).
    #[arg(long, value_name = "BYTES")]
    pack_bytes: Option<usize>,
    /// Distinct series the traffic draws from.
    #[arg(long, default_value_t = 1000)]
    series: u64,
    /// Distinct metric names per type; series beyond that differ by the `series` tag. Default:
    /// min(series, 10), or `series` when --tags 0.
    #[arg(long)]
    families: Option<u64>,
    /// DogStatsD tags per line (`|#series:N,tag1:value3,...`); 0 sends plain StatsD.
    #[arg(long, default_value_t = 2)]
    tags: usize,
    /// Type weights, e.g. `c:40,g:20,ms:25,h:5,d:5,s:5` (a series keeps one type).
    #[arg(long, default_value = "c")]
    mix: String,
    /// Which series each line hits: `random` (uniform, seeded) or `seq` (round robin from
    /// --start, so --lines equal to --series touches every series once).
    #[arg(long, value_enum, default_value_t = Order::Random)]
    order: Order,
    /// First series for --order seq.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Datagrams per second; absent (with --line-rate absent) means flat out.
    #[arg(long, conflicts_with = "line_rate")]
    rate: Option<f64>,
    /// Lines per second instead of datagrams per second.
    #[arg(long)]
    line_rate: Option<f64>,
    /// Stop after this many seconds (default 5 unless --datagrams or --lines is given).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many datagrams.
    #[arg(long)]
    datagrams: Option<u64>,
    /// Stop after exactly this many lines (the last datagram may be short).
    #[arg(long)]
    lines: Option<u64>,
    /// Sender sockets (each its own source port, like separate client processes); batches go
    /// round robin. 1 = one hot client.
    #[arg(long, default_value_t = 1)]
    sockets: usize,
    /// Datagrams per sendmmsg call at most.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed of everything random (series picks, types, values).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Metric name prefix (names are `<prefix>.<type>.m<family>`).
    #[arg(long, default_value = "tl")]
    prefix: String,
    /// Also print the expected total of every counter series, keyed by its Prometheus series
    /// text (`tl_c_m0_total{series="3",tag1="value1"}`).
    #[arg(long)]
    per_series_totals: bool,
}

/// Where `send` sends, and over what.
#[derive(Clone, Debug)]
enum Target {
    Udp(SocketAddr),
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let addr = |a: &str| {
            a.parse::<SocketAddr>()
                .map_err(|e| format!("{a:?} is not HOST:PORT: {e}"))
        };
        if let Some(rest) = text.strip_prefix("tcp:") {
            addr(rest).map(Target::Tcp)
        } else if let Some(path) = text.strip_prefix("unix:") {
            Ok(Target::Unix(path.into()))
        } else {
            addr(text.strip_prefix("udp:").unwrap_or(text)).map(Target::Udp)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Udp(addr) => write!(f, "{addr}"),
            Target::Tcp(addr) => write!(f, "tcp:{addr}"),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Order {
    Random,
    Seq,
}

#[derive(Args, Debug, Clone)]
struct FloorArgs {
    /// Address to receive on (port 0 picks one; the bound address is printed on stderr as
    /// `floor ready: udp <addr>`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Datagrams per recvmmsg call (tallyd's default is 32).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Requested receive buffer (tallyd's default is 8 MiB): SO_RCVBUFFORCE when permitted, as
    /// tallyd does, else SO_RCVBUF (capped at net.core.rmem_max).
    #[arg(long, default_value_t = 8 << 20)]
    rcvbuf: usize,
    /// Receive buffer per datagram slot (tallyd's default is 65535).
    #[arg(long, default_value_t = 65535)]
    max_datagram: usize,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many seconds without a datagram, once one has arrived.
    #[arg(long)]
    idle_exit: Option<f64>,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Send(args) => send::run(args),
        Command::Floor(args) => floor::run(args),
    };
    if let Err(e) = result {
        eprintln!("tallyd-load: {e}");
        std::process::exit(1);
    }
}
