//! `send`: packs generated lines into datagrams (`--lines-per-datagram`, `--pack-bytes`), paces
//! them (`--rate`, `--line-rate`), sends them in `sendmmsg` batches round robin over the sender
//! sockets, retries what the kernel refused, and reports on stdout exactly what it accepted.
//! Over TCP a "datagram" is a run of lines written at once, each ending in `\n`; a batch is one
//! `write_all`, which blocks while tallyd is behind (a stream does not drop).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::generate::{COUNTER, Generator, LineRecord};
use crate::json::Json;
use crate::os::{rusage, set_timer_slack};
use crate::{Order, SendArgs, Target};

/// One sender socket.
enum Sink {
    /// A connected UDP or Unix datagram socket: batches go out with `sendmmsg`.
    Datagrams(std::os::fd::OwnedFd),
    /// A TCP stream, and the buffer a batch is written from.
    Stream(TcpStream, Vec<u8>),
}

impl Sink {
    fn open(target: &Target) -> Result<Sink, String> {
        match target {
            Target::Udp(addr) => {
                let bind_addr: SocketAddr = if addr.is_ipv4() {
                    "0.0.0.0:0".parse().unwrap()
                } else {
                    "[::]:0".parse().unwrap()
                };
                let socket = UdpSocket::bind(bind_addr).map_err(|e| format!("bind: {e}"))?;
                socket
                    .connect(addr)
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                Ok(Sink::Datagrams(socket.into()))
            }
            Target::Unix(path) => {
                let socket = UnixDatagram::unbound().map_err(|e| format!("socket: {e}"))?;
                socket
                    .connect(path)
                    .map_err(|e| format!("connect {}: {e}", path.display()))?;
                Ok(Sink::Datagrams(socket.into()))
            }
            Target::Tcp(addr) => {
                let stream =
                    TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
                let _ = stream.set_nodelay(true);
                Ok(Sink::Stream(stream, Vec::new()))
            }
        }
    }

    /// Sends `slots`; returns how many the kernel took (a stream takes them all or fails).
    fn send(&mut self, slots: &[Slot], buffers: &mut SendBuffers) -> io::Result<usize> {
        match self {
            Sink::Datagrams(socket) => sendmmsg(socket, slots, buffers),
            Sink::Stream(stream, buffer) => {
                buffer.clear();
                for slot in slots {
                    buffer.extend_from_slice(&slot.data);
                    buffer.push(b'\n');
                }
                stream.write_all(buffer)?;
                Ok(slots.len())
            }
        }
    }
}

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

/// A datagram being built: its bytes and the lines it holds.
struct Slot {
    data: Vec<u8>,
    lines: Vec<LineRecord>,
}

/// Runs `tallyd-load send`.
pub(crate) fn run(args: SendArgs) -> Result<(), String> {
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

    let mut sockets = Vec::with_capacity(sockets_wanted);
    for _ in 0..sockets_wanted {
        sockets.push(Sink::open(&args.target)?);
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
        let socket_count = sockets.len();
        let socket = &mut sockets[batch_no % socket_count];
        batch_no = batch_no.wrapping_add(1);
        let mut first = 0;
        while first < count {
            match socket.send(&slots[first..count], &mut send_buffers) {
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
    out.print()
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
fn sendmmsg(socket: &impl AsFd, slots: &[Slot], buffers: &mut SendBuffers) -> io::Result<usize> {
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
    let r = unsafe {
        libc::sendmmsg(
            socket.as_fd().as_raw_fd(),
            buffers.headers.as_mut_ptr(),
            n as _,
            0,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
