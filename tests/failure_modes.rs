//! What happens when the world misbehaves around tallyd: its config file vanishes, signals
//! arrive in storms or in the middle of a scrape, its log goes to a full disk. Each case has a
//! defined outcome, checked through the real binary.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_config_file_that_vanishes_before_a_reload_keeps_the_running_config() {
    let mut daemon = Daemon::with_config("[statsd]\ngauge_deltas = false\n");
    std::fs::remove_file(daemon.config_file().path()).expect("remove the config file");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_value(r#"tallyd_config_reloads_total{outcome="failure"}"#, 1.0);
    // The log is read by another thread; give it a moment to catch up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log().contains("cannot read config file") {
        assert!(
            Instant::now() < deadline,
            "the log names the problem:\n{}",
            daemon.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Still the old config: a signed gauge value is absolute, not a delta.
    daemon.send(&["g:5|g\ng:-2|g\n"]);
    daemon.wait_for_value("g", -2.0);
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_storm_of_sighups_reloads_and_keeps_serving() {
    let daemon = Daemon::with_config("");
    for _ in 0..200 {
        daemon.signal(libc::SIGHUP);
    }
    daemon.send(&["after_storm:1|c\n"]);
    daemon.wait_for_value("after_storm_total", 1.0);
    // Reloads run beside ingestion, and signals coalesce: poll until at least one is done.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = daemon.scrape();
        let successes = value_of(&text, r#"tallyd_config_reloads_total{outcome="success"}"#);
        if successes.is_some_and(|n| n >= 1.0) {
            break text;
        }
        assert!(Instant::now() < deadline, "no reload succeeded:\n{text}");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        value_of(&text, r#"tallyd_config_reloads_total{outcome="failure"}"#),
        Some(0.0)
    );
}

#[test]
fn sigterm_during_a_scrape_finishes_the_scrape_then_exits_0() {
    let mut daemon = Daemon::start();
    // Enough series that the response cannot sit in the socket buffers at once.
    let datagrams: Vec<String> = (0..2_000)
        .map(|d| {
            (0..50)
                .map(|i| format!("big:1|c|#id:{}\n", d * 50 + i))
                .collect()
        })
        .collect();
    daemon.send(&datagrams);
    daemon.wait_for_value(r#"tallyd_series{type="counter"}"#, 100_000.0);

    let mut stream = TcpStream::connect(daemon.http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: tallyd\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Let the request arrive and the render start; the response now waits on us to read.
    thread::sleep(Duration::from_millis(500));
    daemon.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(200));
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .expect("read the whole response");
    let response = parse_response(&raw).expect("a complete HTTP response");
    assert_eq!(response.status, 200);
    let text = response.text();
    assert_eq!(
        parse_exposition(&text)
            .iter()
            .filter(|s| s.id.name == "big_total")
            .count(),
        100_000,
        "every series of the scrape in flight is delivered"
    );
    let status = daemon.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_log_on_a_full_disk_does_not_stop_the_daemon() {
    // The ready line cannot be read from /dev/full, so the ports are chosen here.
    let udp_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(tallyd_bin())
        .args(["--udp-listen", &udp_port.to_string()])
        .args(["--http-listen", &http_port.to_string()])
        .args(["--log-level", "debug"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::options()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .spawn()
        .expect("start tallyd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(http_port).is_err() {
        assert!(Instant::now() < deadline, "tallyd never answered HTTP");
        assert!(child.try_wait().unwrap().is_none(), "tallyd died");
        thread::sleep(Duration::from_millis(50));
    }
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Type conflicts log a warning: logging must fail quietly, not take the receiver down.
    socket.send_to(b"full:1|c\nfull:1|g\n", udp_port).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = http_get(http_port, "/metrics", &[]).text();
        if value_of(&text, "full_total") == Some(1.0) {
            assert_eq!(
                value_of(
                    &text,
                    r#"tallyd_sample_errors_total{reason="type_conflict"}"#
                ),
                Some(1.0)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sample never arrived:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child's.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}
