//! The relay (`[relay]`) over real sockets: a UDP socket in the test stands in for the upstream
//! StatsD server and must receive exactly the lines tallyd was sent (raw mode, from UDP, TCP
//! and Unix datagrams alike) or recorded (mapped mode), in datagrams no longer than the limit;
//! a full queue drops and counts without holding up ingestion; a dead target costs nothing
//! but counted send errors; SIGHUP applies new targets.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Daemon, InProcess, TempFile, run_tallyd, value_of};
use tallyd::ingest::{IngestOptions, Ingester};
use tallyd::record::Recorder;
use tallyd::registry::{Registry, RegistrySettings};
use tallyd::relay::{LineForm, Relay, RelayOptions};
use tallyd::telemetry::ReceiverStats;

/// Counts the allocations of the threads that ask it to (the test's own), not the others'.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only keep a tally in
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocations (and reallocations) `work` makes on this thread.
fn allocations(work: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    work();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// A UDP socket standing in for an upstream StatsD server.
struct Upstream {
    socket: UdpSocket,
}

impl Upstream {
    fn new() -> Upstream {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        Upstream { socket }
    }

    fn addr(&self) -> String {
        self.socket.local_addr().unwrap().to_string()
    }

    /// Every datagram received until `lines` lines have come (or 10 s passed), then whatever
    /// else comes in the next 500 ms, so a test also sees lines that should not be there.
    fn datagrams(&self, lines: usize) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut buffer = vec![0; 65536];
        let mut counted = 0;
        loop {
            let now = Instant::now();
            let wait = if counted >= lines || now >= deadline {
                Duration::from_millis(500)
            } else {
                deadline - now
            };
            self.socket.set_read_timeout(Some(wait)).unwrap();
            match self.socket.recv(&mut buffer) {
                Ok(n) => {
                    counted += buffer[..n].split(|&b| b == b'\n').count();
                    out.push(buffer[..n].to_vec());
                }
                Err(_) if counted >= lines || Instant::now() >= deadline => return out,
                Err(e) => panic!("upstream receive failed: {e}"),
            }
        }
    }
}

/// The lines of `datagrams`, each datagram split on `\n`, in arrival order.
fn lines_of(datagrams: &[Vec<u8>]) -> Vec<String> {
    datagrams
        .iter()
        .flat_map(|d| d.split(|&b| b == b'\n'))
        .map(|line| String::from_utf8(line.to_vec()).unwrap())
        .collect()
}

fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

fn relay_config(targets: &[String], extra: &str) -> String {
    format!("[relay]\ntargets = {targets:?}\n{extra}")
}

/// Polls `/metrics` until `check` holds for a scrape (10 s at most); returns that scrape.
fn scrape_until(endpoints: &common::Endpoints, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = endpoints.scrape();
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "never happened; last scrape:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn raw_lines_from_udp_tcp_and_unix_arrive_byte_exact_in_bounded_datagrams() {
    let upstream = Upstream::new();
    // tallyd replaces a stale file there and removes its socket on shutdown.
    let socket_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("relay-{}.sock", std::process::id()));
    let config = format!(
        "{}[tcp]\nlisten = [\"127.0.0.1:0\"]\n[unix]\nlisten = [{:?}]\n",
        relay_config(&[upstream.addr()], "flush_interval_seconds = 0.1\n"),
        socket_path.display().to_string()
    );
    let tallyd = InProcess::with_config(&config);

    let mut expected: Vec<String> = Vec::new();
    // UDP: multi-line datagrams, with what raw mode relays as it came (a malformed line, an
    // event, tags of every style, a packed line) and what it leaves out (the `\r` of `\r\n`,
    // empty lines).
    let mut datagrams: Vec<Vec<u8>> = vec![
        b"raw.a:1|c|#model:v1\r\nraw.b:2.5|g\n\nnot a statsd line\n_e{5,4}:title|text\n".to_vec(),
        b"raw.c,k=v:250|ms|@0.5\nraw.d:1:2:3|h\n".to_vec(),
    ];
    expected.extend(
        [
            "raw.a:1|c|#model:v1",
            "raw.b:2.5|g",
            "not a statsd line",
            "_e{5,4}:title|text",
            "raw.c,k=v:250|ms|@0.5",
            "raw.d:1:2:3|h",
        ]
        .map(String::from),
    );
    // Enough volume for many datagrams.
    for d in 0..50 {
        let lines: Vec<String> = (0..20)
            .map(|i| format!("raw.bulk.m{}:{}|c|#d:{d},i:{i}", i % 7, d * 20 + i))
            .collect();
        datagrams.push(lines.join("\n").into_bytes());
        expected.extend(lines);
    }
    tallyd.send(&datagrams);

    // TCP: lines split across writes, `\r\n` endings, a final line ending at close.
    let mut stream = TcpStream::connect(tallyd.tcp[0]).unwrap();
    stream.write_all(b"raw.tcp.a:1|c\r\nraw.tc").unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    stream.write_all(b"p.b:2|c\nraw.tcp.c:3|g").unwrap();
    drop(stream);
    expected.extend(["raw.tcp.a:1|c", "raw.tcp.b:2|c", "raw.tcp.c:3|g"].map(String::from));

    // Unix datagrams.
    let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
    client
        .send_to(b"raw.unix:1|c|#via:uds\nraw.unix:2|c", &socket_path)
        .unwrap();
    expected.extend(["raw.unix:1|c|#via:uds", "raw.unix:2|c"].map(String::from));

    let received = upstream.datagrams(expected.len());
    for datagram in &received {
        assert!(
            datagram.len() <= 1400,
            "a datagram of {} bytes",
            datagram.len()
        );
        assert!(
            !datagram.ends_with(b"\n"),
            "lines are joined, not terminated"
        );
    }
    assert!(received.len() > 1, "{} datagrams", received.len());
    assert_eq!(sorted(lines_of(&received)), sorted(expected.clone()));
    let target = upstream.addr();
    scrape_until(&tallyd, |text| {
        value_of(
            text,
            &format!("tallyd_relay_lines_total{{target=\"{target}\"}}"),
        ) == Some(expected.len() as f64)
            && value_of(
                text,
                &format!("tallyd_relay_packets_total{{target=\"{target}\"}}"),
            ) == Some(received.len() as f64)
            && value_of(
                text,
                r#"tallyd_relay_dropped_lines_total{reason="queue_full"}"#,
            ) == Some(0.0)
    });
    // Relaying took nothing from ingestion.
    tallyd.wait_for(&[
        (r#"raw_a_total{model="v1"}"#, 1.0),
        ("raw_tcp_b_total", 2.0),
        ("raw_unix_total", 2.0),
        (r#"raw_unix_total{via="uds"}"#, 1.0),
    ]);
}

#[test]
fn datagrams_respect_the_size_limit_and_longer_lines_are_dropped_and_counted() {
    let upstream = Upstream::new();
    let tallyd = InProcess::with_config(&relay_config(
        &[upstream.addr()],
        "max_datagram_bytes = 100\nflush_interval_seconds = 0.1\n",
    ));
    // Lines of 5 to 100 bytes and one of 150: every datagram ends up at most 100 bytes, the
    // long line nowhere.
    let mut expected = Vec::new();
    let mut datagram = Vec::new();
    for len in 5..=100 {
        let line = format!("s{}:1|c", "x".repeat(len - 5));
        assert_eq!(line.len(), len);
        datagram.push(line.clone());
        expected.push(line);
    }
    let long = format!("size.long.{}:1|c", "y".repeat(136));
    assert_eq!(long.len(), 150);
    datagram.insert(40, long.clone());
    tallyd.send(&[datagram.join("\n")]);
    let received = upstream.datagrams(expected.len());
    for d in &received {
        assert!(
            d.len() <= 100,
            "{} bytes: {}",
            d.len(),
            String::from_utf8_lossy(d)
        );
    }
    let lines = lines_of(&received);
    assert!(!lines.contains(&long));
    // One datagram from one client keeps its order.
    assert_eq!(lines, expected);
    scrape_until(&tallyd, |text| {
        value_of(
            text,
            r#"tallyd_relay_dropped_lines_total{reason="too_long"}"#,
        ) == Some(1.0)
    });
}

#[test]
fn mapped_mode_relays_what_was_recorded_under_its_mapped_name_and_labels() {
    let upstream = Upstream::new();
    let config = format!(
        "{}{}",
        relay_config(
            &[upstream.addr()],
            "lines = \"mapped\"\nflush_interval_seconds = 0.1\n"
        ),
        r#"
[[mapping]]
match = "predictor.*.latency"
name = "predictor_latency_seconds"
labels = { model = "$1" }

[[mapping]]
match = "debug.*"
action = "drop"

[[mapping]]
match = "bytes.*"
name = "payload_scaled"
labels = { kind = "$1" }
scale = 0.25
"#
    );
    let tallyd = InProcess::with_config(&config);
    // One datagram, so its lines apply in order: the gauge after the counter of the same name
    // is a type conflict.
    tallyd.send(&[concat!(
        "predictor.fraud-v2.latency:250|ms|#region:eu\n",
        "hits_total:2|c|@0.5\n",
        "hits:1|g\n",
        "debug.noise:1|c\n",
        "not a statsd line\n",
        "bytes.in:10|h|#le:x\n",
        "depth:-3|g\n",
        "depth:+1|g\n",
        "users:alice|s\n",
        "packed:1:2|d\n",
        "_sc|db|0\n",
    )]);
    let expected = [
        "predictor_latency_seconds:250|ms|#model:fraud-v2,region:eu",
        "hits:2|c|@0.5",
        "payload_scaled:2.5|h|#exported_le:x,kind:in",
        "depth:-3|g",
        "depth:+1|g",
        "users:alice|s",
        "packed:1|d",
        "packed:2|d",
    ];
    let lines = lines_of(&upstream.datagrams(expected.len()));
    assert_eq!(lines, expected);
    // What was relayed is what /metrics serves.
    tallyd.wait_for(&[
        (
            r#"predictor_latency_seconds_count{model="fraud-v2",region="eu"}"#,
            1.0,
        ),
        ("hits_total", 4.0),
        ("depth", -2.0),
        (r#"tallyd_sample_errors_total{reason="type_conflict"}"#, 1.0),
        (
            r#"tallyd_sample_errors_total{reason="dropped_by_rule"}"#,
            1.0,
        ),
    ]);
}

#[test]
fn a_full_queue_drops_and_counts_lines_and_ingestion_goes_on() {
    let upstream = Upstream::new();
    // One buffer for two receive threads: whichever does not hold it drops what it receives
    // while the other fills it and the sender empties it.
    let tallyd = InProcess::with_config(&format!(
        "[udp]\nreceivers = 2\n{}",
        relay_config(&[upstream.addr()], "queue_bytes = 131072\n")
    ));
    let datagrams: Vec<String> = (0..1000)
        .map(|d| {
            (0..20)
                .map(|i| format!("flood.m{}:1|c|#d:{}", i % 5, d % 50))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let sent = (datagrams.len() * 20) as f64;
    let start = Instant::now();
    // In bursts, so the kernel never drops what two receive threads cannot keep up with.
    for burst in datagrams.chunks(20) {
        tallyd.send(burst);
        std::thread::sleep(Duration::from_millis(2));
    }
    let target = upstream.addr();
    let text = scrape_until(&tallyd, |text| {
        let relayed = value_of(
            text,
            &format!("tallyd_relay_lines_total{{target=\"{target}\"}}"),
        );
        let dropped = value_of(
            text,
            r#"tallyd_relay_dropped_lines_total{reason="queue_full"}"#,
        );
        value_of(text, "tallyd_lines_total") == Some(sent)
            && relayed.zip(dropped).is_some_and(|(r, d)| r + d == sent)
    });
    let dropped = value_of(
        &text,
        r#"tallyd_relay_dropped_lines_total{reason="queue_full"}"#,
    )
    .unwrap();
    assert!(dropped > 0.0, "nothing dropped:\n{text}");
    let counted: f64 = (0..5)
        .flat_map(|m| (0..50).map(move |d| (m, d)))
        .map(|(m, d)| value_of(&text, &format!("flood_m{m}_total{{d=\"{d}\"}}")).unwrap_or(0.0))
        .sum();
    assert_eq!(counted, sent, "every line was ingested");
    eprintln!(
        "{sent} lines ingested, {dropped} not relayed (queue_full), in {:?}",
        start.elapsed()
    );
}

#[test]
fn a_dead_target_costs_counted_send_errors_and_nothing_else() {
    let live = Upstream::new();
    // A port nothing listens on: the kernel answers with ICMP port unreachable, which the
    // connected socket reports on a later send.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let tallyd = InProcess::with_config(&relay_config(
        &[dead.clone(), live.addr()],
        "flush_interval_seconds = 0.02\n",
    ));
    let mut expected = Vec::new();
    for round in 0..20 {
        let line = format!("dead.hits:1|c|#round:{round}");
        tallyd.send(&[&line]);
        expected.push(line);
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(
        sorted(lines_of(&live.datagrams(expected.len()))),
        sorted(expected)
    );
    let text = scrape_until(&tallyd, |text| {
        value_of(
            text,
            &format!("tallyd_relay_send_errors_total{{target=\"{dead}\"}}"),
        )
        .is_some_and(|errors| errors > 0.0)
    });
    let live_lines = value_of(
        &text,
        &format!("tallyd_relay_lines_total{{target=\"{}\"}}", live.addr()),
    );
    assert_eq!(live_lines, Some(20.0));
    let rounds: f64 = (0..20)
        .map(|r| value_of(&text, &format!("dead_hits_total{{round=\"{r}\"}}")).unwrap())
        .sum();
    assert_eq!(rounds, 20.0);
}

#[test]
fn sighup_applies_new_targets_and_a_target_that_does_not_resolve_fails_the_reload() {
    let first = Upstream::new();
    let second = Upstream::new();
    let extra = "flush_interval_seconds = 0.05\n";
    let daemon = Daemon::with_config(&relay_config(&[first.addr()], extra));
    daemon.send(&["hup.before:1|c"]);
    assert_eq!(lines_of(&first.datagrams(1)), ["hup.before:1|c"]);

    daemon
        .config_file()
        .write(&relay_config(&["no-such-host.invalid:8125".into()], extra));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_value(r#"tallyd_config_reloads_total{outcome="failure"}"#, 1.0);
    daemon.send(&["hup.kept:1|c"]);
    assert_eq!(lines_of(&first.datagrams(1)), ["hup.kept:1|c"]);

    daemon
        .config_file()
        .write(&relay_config(&[second.addr()], extra));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_value(r#"tallyd_config_reloads_total{outcome="success"}"#, 1.0);
    daemon.send(&["hup.after:1|c"]);
    assert_eq!(lines_of(&second.datagrams(1)), ["hup.after:1|c"]);
    assert!(first.datagrams(0).is_empty(), "the old target got more");
    assert!(
        !daemon.log().contains("take effect on restart"),
        "new targets need no restart:\n{}",
        daemon.log()
    );

    // Other [relay] keys wait for a restart, and the log says so.
    daemon.config_file().write(&relay_config(
        &[second.addr()],
        "flush_interval_seconds = 0.05\nlines = \"mapped\"\n",
    ));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_value(r#"tallyd_config_reloads_total{outcome="success"}"#, 2.0);
    daemon.send(&["hup.still.raw:1|c|#x:y"]);
    assert_eq!(lines_of(&second.datagrams(1)), ["hup.still.raw:1|c|#x:y"]);
    let log = daemon.log();
    assert!(
        log.contains("take effect on restart") && log.contains("relay"),
        "{log}"
    );
}

#[test]
fn the_relay_target_flag_turns_the_relay_on_and_a_bad_one_is_refused() {
    let upstream = Upstream::new();
    let target = upstream.addr();
    let daemon = Daemon::start_with(&["--relay-target", &target], None);
    daemon.send(&["flag.hits:1|c\nflag.hits:2|c"]);
    assert_eq!(
        lines_of(&upstream.datagrams(2)),
        ["flag.hits:1|c", "flag.hits:2|c"]
    );

    let output = run_tallyd(&["--relay-target", "statsd", "--check-config"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--relay-target") && stderr.contains("host:port"),
        "{stderr}"
    );

    let file = TempFile::new("relay-bad.toml", "[relay]\ntargets = [\"host:0\"]\n");
    let output = run_tallyd(&["--config", file.path().to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("targets") && stderr.contains("line 2"),
        "{stderr}"
    );
}

#[test]
fn relaying_allocates_nothing_on_the_receive_thread_once_warm() {
    for lines in [LineForm::Raw, LineForm::Mapped] {
        let upstream = Upstream::new();
        // One buffer: the tap allocates it once, then gets it back from the sender or drops
        // lines while the sender holds it; either way without allocating.
        let relay = Relay::start(&RelayOptions {
            targets: vec![upstream.addr()],
            lines,
            queue_bytes: tallyd::relay::BUFFER_BYTES,
            flush_interval: Duration::from_millis(20),
            ..RelayOptions::default()
        })
        .unwrap();
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        let mut ingester = Ingester::new(
            Recorder::for_registry(&registry),
            Arc::new(ReceiverStats::new("test")),
            IngestOptions {
                relay: Some(relay.hub().clone()),
                ..IngestOptions::default()
            },
        );
        let datagram: String = (0..20)
            .map(|i| {
                format!(
                    "alloc.m{}:{i}|{}|#model:v{},region:eu\n",
                    i % 4,
                    ["c", "g", "ms", "h"][i % 4],
                    i % 3
                )
            })
            .collect();
        let mut run = |datagrams: usize| {
            for _ in 0..datagrams {
                ingester.ingest(datagram.as_bytes());
                ingester.flush_stats();
            }
        };
        run(1000);
        let start = Instant::now();
        let mut counted = 0;
        // Long enough for several hand-overs, by fullness and by the sender's tick.
        while start.elapsed() < Duration::from_millis(200) {
            counted += allocations(|| run(1000));
        }
        assert_eq!(counted, 0, "{lines:?}: allocations while relaying");
        drop(ingester);
        let stats = Arc::clone(relay.hub().stats());
        relay.stop();
        let metrics = stats.self_metrics();
        let relayed = metrics[0].samples[0].1;
        assert!(relayed > 0.0, "{lines:?}: nothing relayed: {metrics:?}");
    }
}
