//! Hostile peers on the TCP, Unix and HTTP listeners: a gigabyte without a newline, ten
//! thousand connection attempts, slow, half-closed and vanishing peers, garbage datagrams, and
//! a scraper that asks for a big `/metrics` and never reads it. tallyd stays up, its memory
//! stays bounded, it keeps serving everyone else, and every refusal is counted.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Daemon, InProcess, SocketDir, TempFile, closed_by_peer, connect_tcp as connect, http_get,
    rss_bytes as rss, tallyd_bin, value_of,
};

const TCP: &str = "[tcp]\nlisten = [\"127.0.0.1:0\"]\n";

/// Raises this process's soft limit on open files to at least `wanted` (up to the hard limit).
fn raise_open_files(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP

#[test]
fn a_gigabyte_without_a_newline_is_refused_once_and_memory_stays_flat() {
    let daemon = Daemon::start_with(&["--tcp-listen", "127.0.0.1:0"], None);
    let mut stream = connect(daemon.tcp[0]);
    stream.write_all(b"hostile_before:1|c\n").unwrap();
    daemon.wait_for_value("hostile_before_total", 1.0);
    let before = rss(daemon.pid());
    let chunk = vec![b'x'; 1 << 20];
    let mut peak = before;
    let started = Instant::now();
    for i in 0..1024 {
        stream.write_all(&chunk).unwrap();
        if i % 32 == 0 {
            peak = peak.max(rss(daemon.pid()));
        }
    }
    // The connection is still open: the next line counts.
    stream.write_all(b"\nhostile_after:1|c\n").unwrap();
    let text = daemon.wait_for(&[
        ("hostile_after_total", 1.0),
        (r#"tallyd_sample_errors_total{reason="line_too_long"}"#, 1.0),
    ]);
    peak = peak.max(rss(daemon.pid()));
    let listener = format!("listener=\"{}\"", daemon.tcp[0]);
    assert_eq!(
        value_of(&text, &format!("tallyd_tcp_lines_total{{{listener}}}")),
        Some(3.0)
    );
    // A connection buffers at most max_line_bytes (64 KiB) of an unfinished line, and the
    // thread reads through one 64 KiB buffer: the gigabyte never accumulates.
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 16 << 20,
        "RSS grew by {} KiB while streaming 1 GiB (from {} KiB)",
        grew >> 10,
        before >> 10
    );
    eprintln!(
        "1 GiB without a newline in {:.1?}: RSS {} KiB before, {} KiB at most",
        started.elapsed(),
        before >> 10,
        peak >> 10
    );
}

/// Opens `attempts` connections to `addr` (keeping every one open, as a flood would) while
/// scraping `http` every 500 attempts; panics if a scrape fails or takes more than 5 s.
fn flood_connections(addr: SocketAddr, http: SocketAddr, attempts: usize) -> Vec<TcpStream> {
    raise_open_files(attempts as u64 + 1000);
    let mut open = Vec::with_capacity(attempts);
    for i in 0..attempts {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connection attempt {i} failed: {e}"));
        stream.write_all_nowait(b"flood:1|c\n");
        open.push(stream);
        if i % 500 == 0 {
            let started = Instant::now();
            let response = http_get(http, "/metrics", &[]);
            assert_eq!(response.status, 200, "scrape during attempt {i}");
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "a scrape during attempt {i} took {:?}",
                started.elapsed()
            );
        }
    }
    open
}

trait WriteNoWait {
    /// Writes what the socket takes at once; a connection tallyd already closed may refuse.
    fn write_all_nowait(&self, bytes: &[u8]);
}

impl WriteNoWait for TcpStream {
    fn write_all_nowait(&self, bytes: &[u8]) {
        let _ = (&*self).write(bytes);
    }
}

#[test]
fn ten_thousand_connection_attempts_against_the_cap_are_each_served_or_refused_and_counted() {
    const CAP: usize = 100;
    const ATTEMPTS: usize = 10_000;
    let daemon = Daemon::with_config(&format!(
        "[tcp]\nlisten = [\"127.0.0.1:0\"]\nmax_connections = {CAP}\n"
    ));
    let addr = daemon.tcp[0];
    let open = flood_connections(addr, daemon.http, ATTEMPTS);
    let listener = format!("listener=\"{addr}\"");
    daemon.wait_for(&[
        (
            format!("tallyd_tcp_connections_total{{{listener}}}"),
            CAP as f64,
        ),
        (
            format!("tallyd_tcp_connections_refused_total{{{listener}}}"),
            (ATTEMPTS - CAP) as f64,
        ),
        ("flood_total".to_owned(), CAP as f64),
    ]);
    // Only the served connections stay open on tallyd's side.
    let fds = value_of(&daemon.scrape(), "process_open_fds").unwrap();
    assert!(fds < (CAP + 100) as f64, "tallyd holds {fds} descriptors");
    drop(open);
    // Once they close, their slots are free again.
    let mut again = connect(addr);
    again.write_all(b"flood_again:1|c\n").unwrap();
    again.shutdown(Shutdown::Write).unwrap();
    daemon.wait_for_value("flood_again_total", 1.0);
}

#[test]
fn running_out_of_descriptors_before_the_cap_refuses_and_counts_and_keeps_metrics_up() {
    // Fewer descriptors than the default max_connections (1024): tallyd must not let TCP take
    // the last ones, or the HTTP server could not accept a scrape, and attempts past the limit
    // would wait in the kernel's queue, neither served nor refused.
    const LIMIT: libc::rlim_t = 256;
    const ATTEMPTS: usize = 2_000;
    let config = TempFile::new(
        "tallyd.toml",
        &format!("{TCP}[http]\nmax_connections = 16\n"),
    );
    let mut command = Command::new(tallyd_bin());
    command.args([
        "--config",
        config.path().to_str().unwrap(),
        "--udp-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(|| {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
            // Hard too: tallyd raises its soft limit to the hard one.
            limit.rlim_cur = LIMIT;
            limit.rlim_max = LIMIT;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let daemon = Daemon::spawn(command, Some(config), |_| {});
    let addr = daemon.tcp[0];
    let open = flood_connections(addr, daemon.http, ATTEMPTS);
    let listener = format!("listener=\"{addr}\"");
    let text = daemon.scrape();
    let served = value_of(
        &text,
        &format!("tallyd_tcp_connections_total{{{listener}}}"),
    );
    let refused = value_of(
        &text,
        &format!("tallyd_tcp_connections_refused_total{{{listener}}}"),
    );
    let (served, refused) = (served.unwrap(), refused.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut total = served + refused;
    while total < ATTEMPTS as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let text = daemon.scrape();
        total = value_of(
            &text,
            &format!("tallyd_tcp_connections_total{{{listener}}}"),
        )
        .unwrap()
            + value_of(
                &text,
                &format!("tallyd_tcp_connections_refused_total{{{listener}}}"),
            )
            .unwrap();
    }
    assert_eq!(
        total,
        ATTEMPTS as f64,
        "attempts neither served nor refused; log:\n{}",
        daemon.log()
    );
    assert!(served < LIMIT as f64 - 16.0, "{served} served");
    assert!(
        daemon
            .log()
            .contains("the limit on open files (RLIMIT_NOFILE) is 256"),
        "{}",
        daemon.log()
    );
    drop(open);
}

#[test]
fn a_slow_peer_does_not_hold_up_the_others() {
    let tallyd = InProcess::with_config(TCP);
    let addr = tallyd.tcp[0];
    let mut slow = connect(addr);
    let line = b"hostile_slow:1|c\n";
    // Half the line, a byte at a time.
    for &byte in &line[..8] {
        slow.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut fast = connect(addr);
    for _ in 0..100 {
        fast.write_all(b"hostile_fast:1|c\n").unwrap();
    }
    let text = tallyd.wait_for_value("hostile_fast_total", 100.0);
    assert_eq!(value_of(&text, "hostile_slow_total"), None);
    for &byte in &line[8..] {
        slow.write_all(&[byte]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    tallyd.wait_for_value("hostile_slow_total", 1.0);
}

#[test]
fn half_closed_and_vanished_peers_are_finished_and_their_slots_freed() {
    const CAP: usize = 50;
    let tallyd = InProcess::with_config(&format!("{TCP}max_connections = {CAP}\n"));
    let addr = tallyd.tcp[0];
    // Half-closed: a final line without newline counts, and tallyd closes its side.
    let mut halves: Vec<TcpStream> = (0..CAP).map(|_| connect(addr)).collect();
    for stream in &mut halves {
        stream.write_all(b"hostile_half:1|c").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
    }
    for stream in &mut halves {
        assert!(
            closed_by_peer(stream),
            "tallyd kept a half-closed peer open"
        );
    }
    tallyd.wait_for_value("hostile_half_total", CAP as f64);
    // Vanished mid-line (a reset): the partial line is dropped, the slot freed.
    for _ in 0..CAP {
        let stream = connect(addr);
        stream.write_all_nowait(b"hostile_reset:1");
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
    }
    // A reset connection may still sit in the accept backlog when the gauge reads 0, and would
    // take a slot from the full set below. The backlog is first in, first out: once a sentinel
    // connected after the resets has been served, every reset ahead of it has been accepted.
    // (A sentinel refused while resets still held every slot is simply sent again.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while value_of(&tallyd.scrape(), "hostile_sentinel_total").is_none() {
        assert!(
            Instant::now() < deadline,
            "the sentinel connection was never served"
        );
        let mut sentinel = connect(addr);
        sentinel.write_all(b"hostile_sentinel:1|c").unwrap();
        sentinel.shutdown(Shutdown::Write).unwrap();
        assert!(
            closed_by_peer(&mut sentinel),
            "tallyd kept the sentinel open"
        );
    }
    let listener = format!("listener=\"{addr}\"");
    tallyd.wait_for(&[(format!("tallyd_tcp_open_connections{{{listener}}}"), 0.0)]);
    let refused_before = value_of(
        &tallyd.scrape(),
        &format!("tallyd_tcp_connections_refused_total{{{listener}}}"),
    )
    .unwrap_or(0.0);
    // Every slot is free: a full set of new connections is served, none refused.
    let mut full: Vec<TcpStream> = (0..CAP).map(|_| connect(addr)).collect();
    for stream in &mut full {
        stream.write_all(b"hostile_full:1|c\n").unwrap();
    }
    let text = tallyd.wait_for(&[
        ("hostile_full_total".to_owned(), CAP as f64),
        (
            format!("tallyd_tcp_open_connections{{{listener}}}"),
            CAP as f64,
        ),
        (
            format!("tallyd_tcp_connections_refused_total{{{listener}}}"),
            refused_before,
        ),
    ]);
    assert_eq!(value_of(&text, "hostile_reset_total"), None);
}

// ---------------------------------------------------------------------------------------------
// Unix datagrams

#[test]
fn garbage_empty_and_oversized_unix_datagrams_are_counted_and_harmless() {
    let dir = SocketDir::new("hostile");
    let path = dir.path();
    let tallyd = InProcess::with_config(&format!(
        "[unix]\nlisten = [{:?}]\nmax_datagram_bytes = 1024\n",
        path.display().to_string()
    ));
    let client = UnixDatagram::unbound().unwrap();
    let mut garbage = Vec::new();
    for i in 0..256u32 {
        garbage.push((i * 7 % 256) as u8);
    }
    for _ in 0..100 {
        client.send_to(b"", &path).unwrap();
        client.send_to(&garbage, &path).unwrap();
        client.send_to(&[b'x'; 2000], &path).unwrap();
        client.send_to(b"hostile_unix:1|c", &path).unwrap();
    }
    let listener = format!("listener=\"{}\"", path.display());
    tallyd.wait_for(&[
        ("hostile_unix_total".to_owned(), 100.0),
        (
            format!("tallyd_unix_oversized_datagrams_total{{{listener}}}"),
            100.0,
        ),
        (format!("tallyd_unix_packets_total{{{listener}}}"), 300.0),
    ]);
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[test]
fn a_scraper_that_never_reads_is_cut_off_and_the_others_are_served() {
    let daemon = Daemon::with_config(
        "[http]\nrequest_timeout_seconds = 2.0\ngzip = false\n\
         [limits]\nmax_series_per_metric = 100000\n",
    );
    // About 10 MB of exposition: 40,000 series with 200-byte label values.
    let value = "v".repeat(200);
    let datagrams: Vec<String> = (0..2000)
        .map(|d| {
            (0..20)
                .map(|l| format!("hostile_big:1|c|#id:{}{value}", d * 20 + l))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    for chunk in datagrams.chunks(100) {
        daemon.send(chunk);
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.wait_for(&[(r#"tallyd_series{type="counter"}"#, 40_000.0)]);

    // The stuck scraper: a small receive buffer, a request, then nothing.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(&daemon.http.into()).unwrap();
    let mut stuck: TcpStream = socket.into();
    stuck
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let stuck_at = Instant::now();
    // Everyone else is served meanwhile.
    while stuck_at.elapsed() < Duration::from_secs(3) {
        let started = Instant::now();
        let response = http_get(daemon.http, "/metrics", &[]);
        assert_eq!(response.status, 200);
        assert!(response.body.len() > 8_000_000, "{}", response.body.len());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // By now the stuck exchange overran request_timeout: its connection was reset, so what
    // is left to read ends early.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stuck.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    assert!(
        received < 8_000_000,
        "the stuck scraper got {received} bytes"
    );
    daemon.wait_for(&[(r#"tallyd_http_timeouts_total{stage="request"}"#, 1.0)]);
}

#[test]
fn http_connections_over_the_cap_are_refused_and_counted() {
    let daemon = Daemon::with_config("[http]\nmax_connections = 4\n");
    // Four connections that send nothing hold every slot.
    let held: Vec<TcpStream> = (0..4).map(|_| connect(daemon.http)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = 0;
    for _ in 0..10 {
        let mut extra = connect(daemon.http);
        let mut answer = String::new();
        let _ = extra.read_to_string(&mut answer);
        if answer.starts_with("HTTP/1.1 503") {
            refused += 1;
        }
    }
    assert_eq!(refused, 10);
    drop(held);
    // The slots free up as tallyd notices the closes; until then a scrape may be refused too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let mut stream = connect(daemon.http);
        let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape served after the slots freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let refusals = text
        .lines()
        .find_map(|line| line.strip_prefix("tallyd_http_connections_refused_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .unwrap();
    // Ten, plus any scrape refused above while the slots were still held.
    assert!(refusals >= 10.0, "{text}");
}

#[test]
fn a_request_head_that_never_ends_is_cut_at_the_header_timeout_and_counted() {
    let daemon = Daemon::with_config("[http]\nheader_read_timeout_seconds = 0.5\n");
    let mut loris = connect(daemon.http);
    loris
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t")
        .unwrap();
    let started = Instant::now();
    assert!(closed_by_peer(&mut loris), "the slow request head was kept");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    daemon.wait_for(&[(r#"tallyd_http_timeouts_total{stage="header"}"#, 1.0)]);
}
