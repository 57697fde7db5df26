//! `floor`: the receive-only floor. One UDP socket set up as tallyd sets up its own, tallyd's
//! [`BatchReceiver`] (`recvmmsg`, `SO_RXQ_OVFL`), and a minimal scan that adds up counter values
//! where tallyd would ingest; on exit it reports the CPU per line and per datagram.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use tallyd::listen::udp::{self, BatchReceiver, Datagram};

use crate::FloorArgs;
use crate::json::Json;
use crate::os::{rusage, stop_on_signals, stop_requested};

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
pub(crate) fn run(args: FloorArgs) -> Result<(), String> {
    stop_on_signals();
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
        if stop_requested() {
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
    out.print()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_scan_adds_up_counters() {
        let mut s = Scan::default();
        scan(b"a:3|c|#x:y\nb:2.5|g\n\nc:4|c\nd:1|ms", &mut s);
        assert_eq!(s.lines, 4);
        assert_eq!(s.counter_lines, 2);
        assert_eq!(s.counter_sum, 7.0);
        assert_eq!(s.other_sum, 3.5);
    }
}
