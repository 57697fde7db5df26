//! `tallyd-load`: deterministic StatsD/DogStatsD traffic over UDP (`send`), and the
//! receive-only floor (`floor`) that tallyd's CPU per line is judged against.
//!
//! `send` writes a JSON object on stdout describing exactly what the kernel accepted (datagrams,
//! lines, lines per type, the sum of every counter increment, optionally per series), so the
//! end-to-end benchmark computes loss instead of guessing it. `floor` binds a UDP socket,
//! receives with tallyd's own batch receiver (`tallyd::listen::udp::BatchReceiver`: `recvmmsg`,
//! `SO_RXQ_OVFL`), adds up counter values with a minimal scan instead of ingesting, and reports
//! its CPU per line; see `benches/README.md`.

use std::io::{self, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tallyd::listen::udp::{self, BatchReceiver, Datagram};

#[derive(Parser, Debug)]
#[command(
    name = "tallyd-load",
    version,
    about = "Deterministic StatsD/DogStatsD UDP load, and the receive-only floor."
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
    /// Where to send.
    #[arg(long, default_value = "127.0.0.1:8125")]
    target: SocketAddr,
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
        Command::Send(args) => send(args),
        Command::Floor(args) => floor(args),
    };
    if let Err(e) = result {
        eprintln!("tallyd-load: {e}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Deterministic generation
// ---------------------------------------------------------------------------------------------

/// splitmix64: the stream of values, and the hash of a series number.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in 0..n (Lemire's multiply-shift; the bias is far below anything measurable).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const TYPES: [&str; 6] = ["c", "g", "ms", "h", "d", "s"];
const COUNTER: u8 = 0;

fn parse_mix(text: &str) -> Result<[u64; 6], String> {
    let mut weights = [0u64; 6];
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, weight) = match part.split_once([':', '=']) {
            Some((n, w)) => (
                n.trim(),
                w.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("--mix: bad weight in {part:?}"))?,
            ),
            None => (part, 1),
        };
        let index = TYPES
            .iter()
            .position(|t| *t == name)
            .ok_or_else(|| format!("--mix: unknown type {name:?} (c, g, ms, h, d, s)"))?;
        weights[index] += weight;
    }
    if weights.iter().sum::<u64>() == 0 {
        return Err("--mix: all weights are zero".into());
    }
    Ok(weights)
}

/// What one line was, for the accounting once its datagram is accepted.
#[derive(Clone, Copy)]
struct LineRecord {
    series: u64,
    kind: u8,
    value: u32,
}

struct Generator {
    prefix: Vec<u8>,
    series: u64,
    families: u64,
    tags: usize,
    /// Cumulative type weights.
    cumulative: [u64; 6],
    seed: u64,
    order: Order,
    next_seq: u64,
    rng: Rng,
}

impl Generator {
    fn new(args: &SendArgs) -> Result<Self, String> {
        if args.series == 0 {
            return Err("--series must be at least 1".into());
        }
        let weights = parse_mix(&args.mix)?;
        let mut cumulative = [0u64; 6];
        let mut sum = 0;
        for (c, w) in cumulative.iter_mut().zip(weights) {
            sum += w;
            *c = sum;
        }
        let families = if args.tags == 0 {
            args.series
        } else {
            args.families
                .unwrap_or(args.series.min(10))
                .clamp(1, args.series)
        };
        Ok(Generator {
            prefix: args.prefix.as_bytes().to_vec(),
            series: args.series,
            families,
            tags: args.tags,
            cumulative,
            seed: args.seed,
            order: args.order,
            next_seq: args.start % args.series,
            rng: Rng(mix64(args.seed ^ 0x7461_6C6C_7964)),
        })
    }

    /// The type of a series: a weighted pick from a hash of the seed and the series number, so
    /// a series never changes type.
    fn kind_of(&self, series: u64) -> u8 {
        let total = self.cumulative[5];
        let pick = mix64(self.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ series) % total;
        self.cumulative.iter().position(|&c| pick < c).unwrap() as u8
    }

    fn tag_value(n: u64, j: usize) -> u64 {
        (n.wrapping_mul(31).wrapping_add(j as u64 * 7)) % 10
    }

    /// Appends the next line (without newline) to `out`.
    fn line(&mut self, out: &mut Vec<u8>) -> LineRecord {
        let series = match self.order {
            Order::Seq => {
                let s = self.next_seq;
                self.next_seq += 1;
                if self.next_seq == self.series {
                    self.next_seq = 0;
                }
                s
            }
            Order::Random => self.rng.below(self.series),
        };
        let kind = self.kind_of(series);
        let r = self.rng.next();
        let mut buffer = itoa::Buffer::new();
        let family = series % self.families;
        let n = series / self.families;
        let type_name = TYPES[kind as usize].as_bytes();
        out.extend_from_slice(&self.prefix);
        out.push(b'.');
        out.extend_from_slice(type_name);
        out.extend_from_slice(b".m");
        out.extend_from_slice(buffer.format(family).as_bytes());
        out.push(b':');
        let value = match kind {
            COUNTER => (r % 9 + 1) as u32,
            1 => (r % 1000) as u32,
            2 => (r % 1000) as u32,
            3 | 4 => (r % 10_000) as u32,
            _ => (r % 1000) as u32,
        };
        if kind == 5 {
            out.push(b'u');
        }
        out.extend_from_slice(buffer.format(value).as_bytes());
        out.push(b'|');
        out.extend_from_slice(type_name);
        if self.tags > 0 {
            out.extend_from_slice(b"|#series:");
            out.extend_from_slice(buffer.format(n).as_bytes());
            for j in 1..self.tags {
                out.extend_from_slice(b",tag");
                out.extend_from_slice(buffer.format(j).as_bytes());
                out.extend_from_slice(b":value");
                out.extend_from_slice(buffer.format(Self::tag_value(n, j)).as_bytes());
            }
        }
        LineRecord {
            series,
            kind,
            value,
        }
    }

    /// The Prometheus series text of a counter series, as tallyd exposes it.
    fn counter_series_text(&self, series: u64) -> String {
        let family = series % self.families;
        let n = series / self.families;
        let prefix: String = String::from_utf8_lossy(&self.prefix)
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut text = format!("{prefix}_c_m{family}_total");
        if self.tags > 0 {
            let mut labels = vec![format!("series=\"{n}\"")];
            for j in 1..self.tags {
                labels.push(format!("tag{j}=\"value{}\"", Self::tag_value(n, j)));
            }
            labels.sort();
            text.push('{');
            text.push_str(&labels.join(","));
            text.push('}');
        }
        text
    }
}

// ---------------------------------------------------------------------------------------------
// send
// ---------------------------------------------------------------------------------------------

/// Everything the kernel accepted.
#[derive(Default)]
struct Sent {
    datagrams: u64,
    lines: u64,
    bytes: u64,
    by_type: [u64; 6],
    counter_sum: u64,
    send_errors: u64,
    refused: u64,
}

/// A datagram being built: where its bytes sit in the arena and which lines it holds.
struct Slot {
    data: Vec<u8>,
    lines: Vec<LineRecord>,
}

fn send(args: SendArgs) -> Result<(), String> {
    let mut generator = Generator::new(&args)?;
    let max_lines = match (args.lines_per_datagram, args.pack_bytes) {
        (Some(n), _) => n.max(1),
        (None, Some(_)) => usize::MAX,
        (None, None) => 1,
    };
    let pack_bytes = args.pack_bytes.unwrap_or(usize::MAX).max(1);
    let batch = args.batch.clamp(1, 1024);
    let sockets_wanted = args.sockets.max(1);
    let duration = match (args.duration, args.datagrams, args.lines) {
        (None, None, None) => Some(5.0),
        (d, _, _) => d,
    };
    set_timer_slack();

    let bind_addr: SocketAddr = if args.target.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let mut sockets = Vec::with_capacity(sockets_wanted);
    for _ in 0..sockets_wanted {
        let socket = UdpSocket::bind(bind_addr).map_err(|e| format!("bind: {e}"))?;
        socket
            .connect(args.target)
            .map_err(|e| format!("connect {}: {e}", args.target))?;
        sockets.push(socket);
    }

    let mut slots: Vec<Slot> = (0..batch)
        .map(|_| Slot {
            data: Vec::with_capacity(pack_bytes.clamp(512, 65_507)),
            lines: Vec::new(),
        })
        .collect();
    let mut pending_line: Vec<u8> = Vec::with_capacity(4096);
    let mut pending: Option<LineRecord> = None;
    let mut touched = vec![0u64; args.series.div_ceil(64) as usize];
    let mut per_series = if args.per_series_totals {
        vec![0u64; args.series as usize]
    } else {
        Vec::new()
    };

    // Pacing: the units are datagrams (--rate) or lines (--line-rate).
    let pace_lines = args.line_rate.is_some();
    let rate = args.rate.or(args.line_rate).filter(|r| *r > 0.0);
    // Wait until a batch worth ~100 µs of traffic is due, so a paced run is smooth without a
    // syscall per datagram.
    let min_due = rate.map_or(1, |r| ((r * 100e-6) as u64).max(1));

    let mut sent = Sent::default();
    let mut send_buffers = SendBuffers::default();
    let mut lines_built: u64 = 0;
    let mut batch_no: usize = 0;
    let cpu_before = rusage(libc::RUSAGE_SELF);
    let start = Instant::now();
    'outer: loop {
        let elapsed = start.elapsed().as_secs_f64();
        if duration.is_some_and(|d| elapsed >= d)
            || args.datagrams.is_some_and(|n| sent.datagrams >= n)
            || args.lines.is_some_and(|n| sent.lines >= n)
        {
            break;
        }
        // How much may go now.
        let mut budget = u64::MAX;
        if let Some(r) = rate {
            let done = if pace_lines {
                sent.lines
            } else {
                sent.datagrams
            };
            let due = (r * elapsed) as u64 + 1;
            let allowed = due.saturating_sub(done);
            if allowed < min_due {
                let wait = (done + min_due) as f64 / r - elapsed;
                if wait > 20e-6 {
                    std::thread::sleep(Duration::from_secs_f64(wait.min(0.01)));
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
            budget = allowed;
        }

        // Build up to `batch` datagrams within the budget.
        let mut count = 0;
        let mut budget_used = 0u64;
        let mut datagram_limit = args.datagrams.map_or(u64::MAX, |n| n - sent.datagrams);
        while count < batch && budget_used < budget && datagram_limit > 0 {
            let slot = &mut slots[count];
            slot.data.clear();
            slot.lines.clear();
            loop {
                if slot.lines.len() >= max_lines {
                    break;
                }
                if args.lines.is_some_and(|n| lines_built >= n) {
                    break;
                }
                if pending.is_none() {
                    pending_line.clear();
                    pending = Some(generator.line(&mut pending_line));
                }
                let extra = pending_line.len() + usize::from(!slot.data.is_empty());
                if !slot.data.is_empty() && slot.data.len() + extra > pack_bytes {
                    break;
                }
                if !slot.data.is_empty() {
                    slot.data.push(b'\n');
                }
                slot.data.extend_from_slice(&pending_line);
                slot.lines.push(pending.take().unwrap());
                lines_built += 1;
            }
            if slot.lines.is_empty() {
                break;
            }
            budget_used += if pace_lines {
                slot.lines.len() as u64
            } else {
                1
            };
            datagram_limit -= 1;
            count += 1;
        }
        if count == 0 {
            break;
        }

        // Send them, retrying what the kernel did not take.
        let socket = &sockets[batch_no % sockets.len()];
        batch_no = batch_no.wrapping_add(1);
        let mut first = 0;
        while first < count {
            match sendmmsg(socket, &slots[first..count], &mut send_buffers) {
                Ok(n) => {
                    for slot in &slots[first..first + n] {
                        commit(slot, &mut sent, &mut touched, &mut per_series);
                    }
                    first += n;
                }
                Err(e) => {
                    sent.send_errors += 1;
                    match e.raw_os_error() {
                        // A pending ICMP error from an earlier datagram: nobody listens (yet).
                        // The error is consumed; the datagram itself was not sent, retry it.
                        Some(libc::ECONNREFUSED) => {
                            sent.refused += 1;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR) => {
                            std::thread::yield_now();
                        }
                        _ => {
                            eprintln!("tallyd-load: sendmmsg: {e}; skipping one datagram");
                            first += 1;
                        }
                    }
                    if sent.send_errors > 1_000_000 {
                        eprintln!("tallyd-load: too many send errors, stopping");
                        break 'outer;
                    }
                }
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_after = rusage(libc::RUSAGE_SELF);

    let series_touched: u64 = touched.iter().map(|w| u64::from(w.count_ones())).sum();
    let mut out = Json::object();
    out.str("mode", "send")
        .str("target", &args.target.to_string())
        .u64("seed", args.seed)
        .u64("series", args.series)
        .u64("families", generator.families)
        .u64("tags", args.tags as u64)
        .str("mix", &args.mix)
        .str(
            "order",
            match args.order {
                Order::Random => "random",
                Order::Seq => "seq",
            },
        )
        .opt_u64(
            "lines_per_datagram_max",
            (max_lines != usize::MAX).then_some(max_lines as u64),
        )
        .opt_u64("pack_bytes", args.pack_bytes.map(|b| b as u64))
        .u64("sockets", sockets.len() as u64)
        .u64("batch", batch as u64)
        .opt_f64("rate_datagrams_target", args.rate)
        .opt_f64("rate_lines_target", args.line_rate)
        .u64("datagrams", sent.datagrams)
        .u64("lines", sent.lines)
        .u64("bytes", sent.bytes)
        .u64("counter_lines", sent.by_type[0])
        .u64("gauge_lines", sent.by_type[1])
        .u64("timer_lines", sent.by_type[2])
        .u64("histogram_lines", sent.by_type[3])
        .u64("distribution_lines", sent.by_type[4])
        .u64("set_lines", sent.by_type[5])
        .u64("counter_sum", sent.counter_sum)
        .u64("series_touched", series_touched)
        .u64("send_errors", sent.send_errors)
        .u64("send_refused", sent.refused)
        .f64("elapsed_s", elapsed)
        .f64("datagrams_per_s", sent.datagrams as f64 / elapsed)
        .f64("lines_per_s", sent.lines as f64 / elapsed)
        .f64("loader_cpu_s", cpu_after.total() - cpu_before.total());
    if args.per_series_totals {
        let mut totals = Json::object();
        for (series, &total) in per_series.iter().enumerate() {
            if total > 0 {
                totals.u64(&generator.counter_series_text(series as u64), total);
            }
        }
        out.raw("counter_totals", &totals.finish());
    }
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", out.finish()).map_err(|e| e.to_string())?;
    Ok(())
}

fn commit(slot: &Slot, sent: &mut Sent, touched: &mut [u64], per_series: &mut [u64]) {
    sent.datagrams += 1;
    sent.bytes += slot.data.len() as u64;
    sent.lines += slot.lines.len() as u64;
    for line in &slot.lines {
        sent.by_type[line.kind as usize] += 1;
        touched[(line.series / 64) as usize] |= 1 << (line.series % 64);
        if line.kind == COUNTER {
            sent.counter_sum += u64::from(line.value);
            if let Some(total) = per_series.get_mut(line.series as usize) {
                *total += u64::from(line.value);
            }
        }
    }
}

/// Reused `sendmmsg` headers.
#[derive(Default)]
struct SendBuffers {
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

/// One `sendmmsg` of `slots` on a connected socket: how many the kernel took.
fn sendmmsg(socket: &UdpSocket, slots: &[Slot], buffers: &mut SendBuffers) -> io::Result<usize> {
    let n = slots.len().min(1024);
    buffers.iovecs.clear();
    buffers
        .iovecs
        .extend(slots[..n].iter().map(|slot| libc::iovec {
            iov_base: slot.data.as_ptr() as *mut libc::c_void,
            iov_len: slot.data.len(),
        }));
    buffers.headers.clear();
    for iovec in buffers.iovecs.iter_mut() {
        // SAFETY: mmsghdr is integers and pointers; all-zero is a valid value.
        let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        header.msg_hdr.msg_iov = iovec;
        header.msg_hdr.msg_iovlen = 1;
        buffers.headers.push(header);
    }
    // SAFETY: every header points at one iovec (not moved since: `iovecs` is not touched
    // until the next call), every iovec at a live buffer; the kernel only reads them (and
    // writes msg_len).
    let r = unsafe { libc::sendmmsg(socket.as_raw_fd(), buffers.headers.as_mut_ptr(), n as _, 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

// ---------------------------------------------------------------------------------------------
// floor
// ---------------------------------------------------------------------------------------------

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// What the minimal scan found.
#[derive(Default)]
struct Scan {
    lines: u64,
    counter_lines: u64,
    counter_sum: f64,
    other_sum: f64,
}

/// Splits on `\n`, finds `:` and `|`, parses the number; adds it up for counters (`|c`).
fn scan(datagram: &[u8], out: &mut Scan) {
    for line in datagram.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        out.lines += 1;
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let rest = &line[colon + 1..];
        let Some(bar) = memchr::memchr(b'|', rest) else {
            continue;
        };
        let value = parse_number(&rest[..bar]);
        let kind = &rest[bar + 1..];
        if kind.first() == Some(&b'c') && kind.get(1).is_none_or(|&b| b == b'|') {
            out.counter_lines += 1;
            out.counter_sum += value;
        } else {
            out.other_sum += value;
        }
    }
}

/// Digits, an optional fraction; stops at anything else.
fn parse_number(text: &[u8]) -> f64 {
    let mut whole: u64 = 0;
    let mut i = 0;
    while i < text.len() && text[i].is_ascii_digit() {
        whole = whole
            .wrapping_mul(10)
            .wrapping_add(u64::from(text[i] - b'0'));
        i += 1;
    }
    let mut value = whole as f64;
    if i < text.len() && text[i] == b'.' {
        let mut scale = 0.1;
        i += 1;
        while i < text.len() && text[i].is_ascii_digit() {
            value += f64::from(text[i] - b'0') * scale;
            scale *= 0.1;
            i += 1;
        }
    }
    value
}

/// The floor's receive loop is tallyd's: the same [`BatchReceiver`] (one `recvmmsg` per batch
/// into buffers allocated once, `SO_RXQ_OVFL` drop counts), with [`scan`] where tallyd ingests.
fn floor(args: FloorArgs) -> Result<(), String> {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    // One plain socket: the floor measures one receiver, so tallyd's reuse-port group and its
    // port probe have nothing to do here.
    let socket = UdpSocket::bind(args.listen).map_err(|e| format!("bind {}: {e}", args.listen))?;
    // As tallyd does: SO_RCVBUFFORCE (not capped by net.core.rmem_max, needs CAP_NET_ADMIN),
    // else SO_RCVBUF.
    let granted =
        udp::set_receive_buffer(&socket, args.rcvbuf).map_err(|e| format!("SO_RCVBUF: {e}"))?;
    udp::enable_drop_reports(&socket).map_err(|e| format!("SO_RXQ_OVFL: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    eprintln!("floor ready: udp {local} (SO_RCVBUF granted {granted})");

    let batch = args.batch.clamp(1, udp::MAX_BATCH);
    let mut receiver = BatchReceiver::new(batch, args.max_datagram);

    let mut result = Scan::default();
    let mut datagrams: u64 = 0;
    let mut bytes: u64 = 0;
    let mut calls: u64 = 0;
    let mut drops: u64 = 0;
    let started = Instant::now();
    let mut first_at: Option<Instant> = None;
    let mut last_at = Instant::now();
    let cpu_start = rusage(libc::RUSAGE_THREAD);
    loop {
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        if args
            .duration
            .is_some_and(|d| started.elapsed().as_secs_f64() >= d)
        {
            break;
        }
        if let (Some(idle), Some(_)) = (args.idle_exit, first_at)
            && last_at.elapsed().as_secs_f64() >= idle
        {
            break;
        }
        let received = receiver.receive(&socket, |datagram| {
            // A truncated datagram is scanned as far as it got: the floor only measures the
            // cost of receiving and looking at the bytes.
            let (Datagram::Whole(bytes_in) | Datagram::Truncated(bytes_in)) = datagram;
            datagrams += 1;
            bytes += bytes_in.len() as u64;
            scan(bytes_in, &mut result);
        });
        let batch = match received {
            Ok(batch) => batch,
            Err(e) if udp::is_timeout(&e) => continue,
            Err(e) => return Err(format!("recvmmsg: {e}")),
        };
        calls += 1;
        let now = Instant::now();
        first_at.get_or_insert(now);
        last_at = now;
        if let Some(total) = batch.kernel_drops {
            drops = total;
        }
    }
    let cpu = rusage(libc::RUSAGE_THREAD);
    let cpu_s = cpu.total() - cpu_start.total();
    let busy_s = match first_at {
        Some(first) => last_at.duration_since(first).as_secs_f64(),
        None => 0.0,
    };
    let per = |n: u64| if n > 0 { cpu_s * 1e6 / n as f64 } else { 0.0 };
    let mut out = Json::object();
    out.str("mode", "floor")
        .str("listen", &local.to_string())
        .u64("batch", batch as u64)
        .u64("rcvbuf_granted", granted as u64)
        .u64("datagrams", datagrams)
        .u64("lines", result.lines)
        .u64("bytes", bytes)
        .u64("recvmmsg_calls", calls)
        .u64("counter_lines", result.counter_lines)
        .u64("counter_sum", result.counter_sum as u64)
        .f64("other_sum", result.other_sum)
        .u64("kernel_drops", drops)
        .f64("cpu_user_s", cpu.user - cpu_start.user)
        .f64("cpu_sys_s", cpu.system - cpu_start.system)
        .f64("cpu_s", cpu_s)
        .f64("busy_s", busy_s)
        .f64("cpu_us_per_line", per(result.lines))
        .f64("cpu_us_per_datagram", per(datagrams))
        .f64(
            "lines_per_cpu_second",
            if cpu_s > 0.0 {
                result.lines as f64 / cpu_s
            } else {
                0.0
            },
        );
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "{}", out.finish()).map_err(|e| e.to_string())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// OS helpers
// ---------------------------------------------------------------------------------------------

struct Cpu {
    user: f64,
    system: f64,
}

impl Cpu {
    fn total(&self) -> f64 {
        self.user + self.system
    }
}

fn rusage(who: libc::c_int) -> Cpu {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Cpu {
        user: seconds(usage.ru_utime),
        system: seconds(usage.ru_stime),
    }
}

fn set_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer; 1 ns makes short sleeps accurate.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

/// A one-line JSON object writer: enough for flat objects of numbers and strings.
struct Json {
    text: String,
}

impl Json {
    fn object() -> Self {
        Json {
            text: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) -> &mut Self {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        self.string(key);
        self.text.push(':');
        self
    }

    fn string(&mut self, value: &str) {
        self.text.push('"');
        for c in value.chars() {
            match c {
                '"' => self.text.push_str("\\\""),
                '\\' => self.text.push_str("\\\\"),
                c if (c as u32) < 0x20 => self.text.push_str(&format!("\\u{:04x}", c as u32)),
                c => self.text.push(c),
            }
        }
        self.text.push('"');
    }

    fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key).string(value);
        self
    }

    fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key).text.push_str(&value.to_string());
        self
    }

    fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        let text = if value.is_finite() {
            format!("{value}")
        } else {
            "null".into()
        };
        self.key(key).text.push_str(&text);
        self
    }

    fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.u64(key, v),
            None => self.raw(key, "null"),
        }
    }

    fn opt_f64(&mut self, key: &str, value: Option<f64>) -> &mut Self {
        match value {
            Some(v) => self.f64(key, v),
            None => self.raw(key, "null"),
        }
    }

    fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key).text.push_str(json);
        self
    }

    fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.text);
        text.push('}');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> SendArgs {
        let mut argv = vec!["tallyd-load", "send"];
        argv.extend_from_slice(extra);
        match Cli::parse_from(argv).command {
            Command::Send(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn lines_are_deterministic_and_well_formed() {
        let a = args(&[
            "--series",
            "100",
            "--tags",
            "3",
            "--mix",
            "c:1,g:1,ms:1,h:1,d:1,s:1",
        ]);
        let mut g1 = Generator::new(&a).unwrap();
        let mut g2 = Generator::new(&a).unwrap();
        for _ in 0..1000 {
            let (mut l1, mut l2) = (Vec::new(), Vec::new());
            g1.line(&mut l1);
            g2.line(&mut l2);
            assert_eq!(l1, l2);
            let text = String::from_utf8(l1).unwrap();
            assert!(text.starts_with("tl."), "{text}");
            assert_eq!(text.matches("|#").count(), 1, "{text}");
            assert_eq!(text.matches(',').count(), 2, "{text}");
        }
    }

    #[test]
    fn the_floor_scan_adds_up_counters() {
        let mut s = Scan::default();
        scan(b"a:3|c|#x:y\nb:2.5|g\n\nc:4|c\nd:1|ms", &mut s);
        assert_eq!(s.lines, 4);
        assert_eq!(s.counter_lines, 2);
        assert_eq!(s.counter_sum, 7.0);
        assert_eq!(s.other_sum, 3.5);
    }

    #[test]
    fn seq_order_touches_every_series_once() {
        let a = args(&["--series", "50", "--order", "seq"]);
        let mut g = Generator::new(&a).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            assert!(seen.insert(g.line(&mut Vec::new()).series));
        }
    }
}
