//! The TCP and Unix datagram listeners over real sockets: line framing, the limits a stream
//! needs (line length, connection cap, idle timeout), the socket file's life, and the Python
//! clients that speak them (`statsd`'s `TCPStatsClient`, `datadog`'s `DogStatsd` on a Unix
//! socket; skipped with a notice outside CI when missing).

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    Daemon, InProcess, SocketDir, closed_by_peer, connect_tcp as connect, require, run_tallyd,
};

const TCP: &str = "[tcp]\nlisten = [\"127.0.0.1:0\"]\n";

fn unix_config(path: &Path) -> String {
    format!("[unix]\nlisten = [{:?}]\n", path.display().to_string())
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

fn run_python(code: &str, args: &[&str]) {
    let output = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "python failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// TCP

#[test]
fn tcp_lines_end_in_newline_or_crlf() {
    let tallyd = InProcess::with_config(TCP);
    let mut stream = connect(tallyd.tcp[0]);
    stream
        .write_all(b"tcp_lf:1|c\ntcp_crlf:2|c\r\ntcp_gauge:5|g\r\n")
        .unwrap();
    // A line cut across two writes is joined.
    stream.write_all(b"tcp_lf:").unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    stream.write_all(b"4|c\n").unwrap();
    let listener = format!("listener=\"{}\"", tallyd.tcp[0]);
    tallyd.wait_for(&[
        ("tcp_lf_total".to_owned(), 5.0),
        ("tcp_crlf_total".to_owned(), 2.0),
        ("tcp_gauge".to_owned(), 5.0),
        (format!("tallyd_tcp_connections_total{{{listener}}}"), 1.0),
        (format!("tallyd_tcp_lines_total{{{listener}}}"), 4.0),
    ]);
}

#[test]
fn a_final_line_without_newline_counts_when_the_peer_half_closes() {
    let tallyd = InProcess::with_config(TCP);
    let mut stream = connect(tallyd.tcp[0]);
    stream.write_all(b"tcp_eof:1|c\ntcp_eof:2|c").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    tallyd.wait_for_value("tcp_eof_total", 3.0);
    assert!(
        closed_by_peer(&mut stream),
        "tallyd kept a finished stream open"
    );
}

#[test]
fn an_over_long_line_is_refused_and_the_connection_carries_on() {
    let tallyd = InProcess::with_config(&format!("{TCP}max_line_bytes = 64\n"));
    let mut stream = connect(tallyd.tcp[0]);
    let long = format!("tcp_long_{}:1|c\n", "x".repeat(100));
    stream.write_all(b"tcp_before:1|c\n").unwrap();
    // The long line arrives in pieces, so it is refused while still unterminated.
    for piece in long.as_bytes().chunks(30) {
        stream.write_all(piece).unwrap();
        stream.flush().unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    stream.write_all(b"tcp_after:1|c\n").unwrap();
    // And one inside a single write, between two good lines.
    stream
        .write_all(format!("tcp_after:1|c\n{long}tcp_after:1|c\n").as_bytes())
        .unwrap();
    let text = tallyd.wait_for(&[
        ("tcp_before_total", 1.0),
        ("tcp_after_total", 3.0),
        (r#"tallyd_sample_errors_total{reason="line_too_long"}"#, 2.0),
    ]);
    assert!(!text.contains("tcp_long_"), "a too-long line was ingested");
}

#[test]
fn connections_over_the_cap_are_closed_at_once_and_counted() {
    let tallyd = InProcess::with_config(&format!("{TCP}max_connections = 2\n"));
    let addr = tallyd.tcp[0];
    let mut kept: Vec<TcpStream> = (0..2).map(|_| connect(addr)).collect();
    for stream in &mut kept {
        stream.write_all(b"tcp_capped:1|c\n").unwrap();
    }
    tallyd.wait_for_value("tcp_capped_total", 2.0);
    let mut extra = connect(addr);
    assert!(closed_by_peer(&mut extra), "a third connection stayed open");
    let listener = format!("listener=\"{addr}\"");
    tallyd.wait_for(&[
        (
            format!("tallyd_tcp_connections_refused_total{{{listener}}}"),
            1.0,
        ),
        (format!("tallyd_tcp_connections_total{{{listener}}}"), 2.0),
    ]);
    // Closing one frees its slot.
    drop(kept.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect(addr);
        again.write_all(b"tcp_capped:1|c\n").unwrap();
        again.shutdown(Shutdown::Write).unwrap();
        if closed_by_peer(&mut again) && tallyd.scrape().contains("tcp_capped_total 3") {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_idle_connection_is_closed_after_the_timeout() {
    let tallyd = InProcess::with_config(&format!("{TCP}idle_timeout_seconds = 0.5\n"));
    let mut stream = connect(tallyd.tcp[0]);
    stream.write_all(b"tcp_idle:1|c\n").unwrap();
    let started = Instant::now();
    assert!(
        closed_by_peer(&mut stream),
        "the idle connection stayed open"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    tallyd.wait_for(&[
        ("tcp_idle_total".to_owned(), 1.0),
        (
            format!(
                "tallyd_tcp_idle_timeouts_total{{listener=\"{}\"}}",
                tallyd.tcp[0]
            ),
            1.0,
        ),
    ]);
}

#[test]
fn the_tcp_listen_flag_enables_tcp_and_the_ready_line_names_it() {
    let daemon = Daemon::start_with(&["--tcp-listen", "127.0.0.1:0"], None);
    assert_eq!(daemon.tcp.len(), 1);
    assert_ne!(daemon.tcp[0].port(), 0);
    let mut stream = connect(daemon.tcp[0]);
    stream.write_all(b"tcp_flag:1|c\n").unwrap();
    daemon.wait_for_value("tcp_flag_total", 1.0);
}

#[test]
fn a_tcp_port_in_use_exits_with_code_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_tallyd(&[
        "--udp-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--tcp-listen",
        &addr,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("TCP {addr}")), "{stderr}");
}

#[test]
fn the_statsd_package_tcp_client_is_understood() {
    if !require(python_has("statsd"), "python3 with the `statsd` package") {
        return;
    }
    let tallyd = InProcess::with_config(TCP);
    let addr = tallyd.tcp[0];
    run_python(
        "import sys, statsd\n\
         c = statsd.TCPStatsClient(sys.argv[1], int(sys.argv[2]))\n\
         c.incr('py_tcp.requests')\n\
         c.incr('py_tcp.requests', 2)\n\
         c.gauge('py_tcp.depth', 7)\n\
         c.timing('py_tcp.render', 250)\n\
         c.close()\n",
        &[&addr.ip().to_string(), &addr.port().to_string()],
    );
    tallyd.wait_for(&[
        ("py_tcp_requests_total", 3.0),
        ("py_tcp_depth", 7.0),
        (r#"py_tcp_render_bucket{le="0.1"}"#, 0.0),
        (r#"py_tcp_render_bucket{le="0.25"}"#, 1.0),
        ("py_tcp_render_sum", 0.25),
        ("py_tcp_render_count", 1.0),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Unix datagrams

#[test]
fn unix_datagrams_are_received_and_counted() {
    let dir = SocketDir::new("datagrams");
    let path = dir.path();
    let tallyd = InProcess::with_config(&unix_config(&path));
    assert_eq!(tallyd.unix, std::slice::from_ref(&path));
    let client = UnixDatagram::unbound().unwrap();
    client
        .send_to(b"unix_hits:1|c\nunix_depth:3|g", &path)
        .unwrap();
    client.send_to(b"unix_hits:2|c|#model:v1\n", &path).unwrap();
    let listener = format!("listener=\"{}\"", path.display());
    tallyd.wait_for(&[
        ("unix_hits_total".to_owned(), 1.0),
        (r#"unix_hits_total{model="v1"}"#.to_owned(), 2.0),
        ("unix_depth".to_owned(), 3.0),
        (format!("tallyd_unix_packets_total{{{listener}}}"), 2.0),
    ]);
    // UDP's own counters stay UDP's.
    let text = tallyd.scrape();
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("tallyd_udp_packets_total") && l.contains(&listener)),
        "a Unix socket was counted as UDP:\n{text}"
    );
}

#[test]
fn the_socket_gets_its_mode_and_is_removed_on_shutdown() {
    let dir = SocketDir::new("shutdown");
    let path = dir.path();
    let mut tallyd = InProcess::with_config(&format!("{}mode = \"0660\"\n", unix_config(&path)));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    tallyd.shutdown_token().cancel();
    let stopped = tallyd.wait_stopped(Duration::from_secs(5));
    assert_eq!(stopped, Some(Ok(())));
    assert!(!path.exists(), "the socket file outlived tallyd");
}

#[test]
fn the_daemon_removes_its_socket_on_sigterm() {
    let dir = SocketDir::new("sigterm");
    let path = dir.path();
    let path_text = path.display().to_string();
    let mut daemon = Daemon::start_with(&["--unix-listen", &path_text], None);
    assert_eq!(daemon.unix, std::slice::from_ref(&path));
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"unix_flag:1|c\n", &path)
        .unwrap();
    daemon.wait_for_value("unix_flag_total", 1.0);
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(status.success(), "{status}");
    assert!(!path.exists(), "the socket file outlived tallyd");
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = SocketDir::new("stale");
    let path = dir.path();
    // What a crash leaves: the file of a socket nobody holds any more.
    drop(UnixDatagram::bind(&path).unwrap());
    assert!(path.exists());
    let tallyd = InProcess::with_config(&unix_config(&path));
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"unix_fresh:1|c\n", &path)
        .unwrap();
    tallyd.wait_for_value("unix_fresh_total", 1.0);
}

#[test]
fn a_live_socket_is_not_stolen() {
    let dir = SocketDir::new("live");
    let path = dir.path();
    let owner = UnixDatagram::bind(&path).unwrap();
    let path_text = path.display().to_string();
    let output = run_tallyd(&[
        "--udp-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--unix-listen",
        &path_text,
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&path_text), "{stderr}");
    // The owner still receives on it.
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"still mine", &path)
        .unwrap();
    let mut buf = [0u8; 32];
    owner
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = owner.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still mine");
}

#[test]
fn the_datadog_client_over_a_unix_socket_is_understood() {
    if !require(python_has("datadog"), "python3 with the `datadog` package") {
        return;
    }
    let dir = SocketDir::new("datadog");
    let path = dir.path();
    let tallyd = InProcess::with_config(&unix_config(&path));
    run_python(
        "import sys\n\
         from datadog.dogstatsd import DogStatsd\n\
         d = DogStatsd(socket_path=sys.argv[1])\n\
         d.increment('dd_unix.predictions', tags=['model:v1'])\n\
         d.increment('dd_unix.predictions', 2, tags=['model:v1'])\n\
         d.gauge('dd_unix.queue_depth', 42, tags=['model:v2'])\n\
         d.flush()\n\
         d.close_socket()\n",
        &[&path.display().to_string()],
    );
    tallyd.wait_for(&[
        (r#"dd_unix_predictions_total{model="v1"}"#, 3.0),
        (r#"dd_unix_queue_depth{model="v2"}"#, 42.0),
    ]);
}
