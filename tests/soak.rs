//! Long-running checks, ignored by default (minutes, not seconds). Run them with
//! `cargo test --release --test soak -- --ignored --nocapture`; `SOAK_SECONDS` sets the soak's
//! length (default 120).
//!
//! - `soak`: steady and churning series over UDP while scraping every second and reloading
//!   every three; counters must be exact (loss only where the kernel reports drops), no scrape
//!   may fail, and RSS must stay flat.
//! - `flood_of_distinct_series_stays_at_the_cap`: 5 million distinct series against a 100k cap.

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const STEADY: usize = 10;

#[test]
#[ignore = "minutes long; run with --ignored"]
fn soak() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let config = "[limits]\nseries_ttl_seconds = 3\nmax_series = 200000\n";
    let daemon = Arc::new(Daemon::with_config(config));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));

    // Sender: every datagram adds 1 to each steady series and creates or refreshes 10
    // churning series whose generation moves every second (so old ones expire).
    let sender = {
        let (udp, stop, sent) = (daemon.udp[0], Arc::clone(&stop), Arc::clone(&sent));
        thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
            let start = Instant::now();
            let mut datagram = String::new();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                let generation = start.elapsed().as_secs();
                datagram.clear();
                for k in 0..STEADY {
                    datagram.push_str(&format!("soak.steady:1|c|#k:{k}\n"));
                }
                for j in 0..10 {
                    let id = (n * 10 + j) % 5_000;
                    datagram.push_str(&format!("soak.churn:1|c|#gen:{generation},id:{id}\n"));
                }
                socket.send_to(datagram.as_bytes(), udp).unwrap();
                n += 1;
                sent.store(n, Ordering::Relaxed);
                // About 20k datagrams (400k lines) per second.
                if n.is_multiple_of(200) {
                    let due = start + Duration::from_micros(n * 50);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
            }
        })
    };

    let mut scrapes = 0;
    let mut reloads = 0;
    let mut mid_rss = None;
    let started = Instant::now();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_secs(1));
        let text = daemon.scrape(); // panics unless 200
        assert!(text.contains("tallyd_build_info"), "a whole scrape");
        scrapes += 1;
        if scrapes % 3 == 0 {
            daemon.config_file().write(config);
            daemon.signal(libc::SIGHUP);
            reloads += 1;
        }
        if mid_rss.is_none() && started.elapsed() >= Duration::from_secs(seconds / 3) {
            mid_rss = Some(rss_bytes(daemon.pid()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let datagrams = sent.load(Ordering::Relaxed);

    // Settle: the receivers have read everything once tallyd_udp_packets_total stops moving.
    let mut last = -1.0;
    let text = loop {
        thread::sleep(Duration::from_millis(500));
        let text = daemon.scrape();
        let packets = value_of(
            &text,
            &format!("tallyd_udp_packets_total{{listener=\"{}\"}}", daemon.udp[0]),
        )
        .unwrap();
        if packets == last {
            break text;
        }
        last = packets;
    };
    let drops = value_of(
        &text,
        &format!(
            "tallyd_udp_kernel_drops_total{{listener=\"{}\"}}",
            daemon.udp[0]
        ),
    )
    .unwrap();
    assert_eq!(
        last + drops,
        datagrams as f64,
        "every datagram is received or counted as dropped"
    );
    for k in 0..STEADY {
        let value = value_of(&text, &format!("soak_steady_total{{k=\"{k}\"}}")).unwrap();
        assert_eq!(
            value,
            datagrams as f64 - drops,
            "steady series k={k} is exact"
        );
    }
    let end_rss = rss_bytes(daemon.pid());
    let mid_rss = mid_rss.expect("measured mid-run");
    println!(
        "soak: {seconds}s, {datagrams} datagrams ({} lines), {drops} dropped by the kernel, \
         {scrapes} scrapes, {reloads} reloads, RSS {:.1} MiB at a third, {:.1} MiB at the end",
        datagrams * 20,
        mid_rss as f64 / 1048576.0,
        end_rss as f64 / 1048576.0
    );
    assert!(
        end_rss <= mid_rss + mid_rss / 4 + 8 * 1048576,
        "RSS grew from {mid_rss} to {end_rss}"
    );
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

#[test]
#[ignore = "sends 5 million lines; run with --ignored"]
fn flood_of_distinct_series_stays_at_the_cap() {
    let cap = 100_000;
    let daemon = Daemon::with_config(&format!(
        "[limits]\nmax_series = {cap}\nmax_series_per_metric = {cap}\n"
    ));
    let before = rss_bytes(daemon.pid());
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let lines_per_datagram = 40;
    let total_lines = 5_000_000u64;
    let start = Instant::now();
    let mut datagram = String::new();
    let mut line = 0u64;
    let mut datagrams = 0u64;
    while line < total_lines {
        datagram.clear();
        for _ in 0..lines_per_datagram {
            datagram.push_str(&format!("flood:1|c|#id:{line}\n"));
            line += 1;
        }
        socket.send_to(datagram.as_bytes(), daemon.udp[0]).unwrap();
        datagrams += 1;
        // Paced at about 25k datagrams (1M lines) per second, so the kernel rarely drops.
        if datagrams.is_multiple_of(100) {
            let due = start + Duration::from_micros(datagrams * 40);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
    }
    let mut last = -1.0;
    let text = loop {
        thread::sleep(Duration::from_millis(500));
        let text = daemon.scrape();
        let lines = value_of(&text, "tallyd_lines_total").unwrap();
        if lines == last {
            break text;
        }
        last = lines;
    };
    let after = rss_bytes(daemon.pid());
    let series = value_of(&text, r#"tallyd_series{type="counter"}"#).unwrap();
    let refused = value_of(
        &text,
        r#"tallyd_series_refused_total{reason="global_limit"}"#,
    )
    .unwrap();
    println!(
        "flood: {total_lines} lines sent, {last} received in {:.1}s; {series} series, {refused} \
         refused; RSS {:.1} MiB before, {:.1} MiB after ({:.0} bytes per live series)",
        start.elapsed().as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / series
    );
    assert_eq!(series, cap as f64);
    assert_eq!(
        refused,
        last - cap as f64,
        "every line past the cap is refused and counted"
    );
    // The documented bound (README "Memory and limits"): 100k counters with one tag fit in
    // well under 64 MiB over the idle daemon.
    assert!(
        after - before < 64 * 1048576,
        "RSS grew by {} bytes",
        after - before
    );
}
