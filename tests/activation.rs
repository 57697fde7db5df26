//! systemd socket activation with the real binary, started by systemd's own launcher
//! `systemd-socket-activate` (Debian package systemd): it binds the sockets, waits for the
//! first datagram or connection, then execs tallyd with `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES` set, as a socket unit does. Skipped with a notice outside CI when missing.
//!
//! The launcher takes fixed ports, not port 0, so each test picks free ones first (a port
//! taken by someone else in between makes the launcher fail, and the test says so).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    Daemon, SocketDir, TempFile, http_get, on_path, repo_root, require, run_tallyd, tallyd_bin,
};

const LAUNCHER: &str = "systemd-socket-activate";

fn launcher_available() -> bool {
    require(
        on_path(LAUNCHER),
        "systemd-socket-activate (Debian package systemd)",
    )
}

fn free_udp_addr() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn free_tcp_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `systemd-socket-activate ARGS... tallyd TALLYD_ARGS...`.
fn launch(launcher_args: &[String], tallyd_args: &[&str]) -> Command {
    let mut command = Command::new(LAUNCHER);
    command
        .args(launcher_args)
        .arg(tallyd_bin())
        .args(tallyd_args);
    command
}

/// Starts tallyd through the launcher; `trigger` (the first datagram or connection, which
/// makes the launcher exec tallyd) is called once the launcher has bound its first socket.
fn start(command: Command, trigger: impl FnOnce()) -> Daemon {
    let mut trigger = Some(trigger);
    Daemon::spawn(command, None, |line| {
        if line.contains("Listening on")
            && let Some(trigger) = trigger.take()
        {
            trigger();
        }
    })
}

/// Runs the launcher until tallyd exits (it should refuse to start), triggering it as
/// [`start`] does; returns the exit status and everything logged.
fn run_to_exit(mut command: Command, trigger: impl FnOnce()) -> (ExitStatus, String) {
    let mut child = command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the launcher");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut trigger = Some(trigger);
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if line.contains("Listening on")
                    && let Some(trigger) = trigger.take()
                {
                    trigger();
                }
                log.push_str(&line);
                log.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().unwrap();
                return (status, log);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("tallyd did not exit within 20 s; its log:\n{log}");
        }
    }
}

fn send_udp(to: SocketAddr, datagram: &[u8]) {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(datagram, to)
        .unwrap();
}

/// The names of the daemon's threads, from /proc.
fn thread_names(pid: libc::pid_t) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn udp_and_http_sockets_passed_by_systemd_are_used() {
    if !launcher_available() {
        return;
    }
    let (udp, http) = (free_udp_addr(), free_tcp_addr());
    // One launcher per socket type (`-d` is for all of a launcher's sockets); the inner one
    // hands on the outer one's socket and names both.
    let command = launch(
        &[
            "--datagram".into(),
            format!("--listen={udp}"),
            LAUNCHER.into(),
            format!("--listen={http}"),
            "--fdname=statsd:http".into(),
        ],
        &[
            "--udp-listen",
            "systemd:statsd",
            "--http-listen",
            "systemd:http",
        ],
    );
    // The datagram that wakes tallyd up was sent before tallyd ran: it waits in the socket.
    let daemon = start(command, || send_udp(udp, b"activated_first:1|c"));
    assert_eq!(daemon.udp, [udp]);
    assert_eq!(daemon.http, http);
    for _ in 0..50 {
        send_udp(udp, b"activated_more:2|c\nactivated_gauge:7|g");
    }
    daemon.wait_for(&[
        ("activated_first_total".to_owned(), 1.0),
        ("activated_more_total".to_owned(), 100.0),
        ("activated_gauge".to_owned(), 7.0),
        (
            format!("tallyd_udp_packets_total{{listener=\"{udp}\"}}"),
            51.0,
        ),
    ]);
    let log = daemon.log();
    assert!(
        log.contains("systemd passed 2 socket(s): statsd (descriptor 3), http (descriptor 4)"),
        "{log}"
    );
    assert!(log.contains("socket passed by systemd"), "{log}");
    // Every receive thread (one per core) reads the one passed socket.
    let cores = std::thread::available_parallelism().unwrap().get();
    let receivers = thread_names(daemon.pid())
        .into_iter()
        .filter(|name| name.starts_with("tallyd-udp-"))
        .count();
    assert_eq!(receivers, cores);
    assert!(
        log.contains(&format!("{cores} receiver(s) sharing it")),
        "{log}"
    );
}

#[test]
fn statsd_over_tcp_and_http_are_told_apart_by_name_not_position() {
    if !launcher_available() {
        return;
    }
    for names in ["statsd-tcp:http", "http:statsd-tcp"] {
        let (first, second) = (free_tcp_addr(), free_tcp_addr());
        let (tcp, http) = if names.starts_with("http") {
            (second, first)
        } else {
            (first, second)
        };
        let command = launch(
            &[
                format!("--listen={first}"),
                format!("--listen={second}"),
                format!("--fdname={names}"),
            ],
            &[
                "--udp-listen",
                "127.0.0.1:0",
                "--tcp-listen",
                "systemd:statsd-tcp",
                "--http-listen",
                "systemd:http",
            ],
        );
        // The connection that wakes tallyd up waits in the listen queue until tallyd accepts.
        let mut early = None;
        let daemon = start(command, || {
            let mut stream = TcpStream::connect(tcp).unwrap();
            stream.write_all(b"activated_tcp:1|c\n").unwrap();
            early = Some(stream);
        });
        assert_eq!(daemon.tcp, [tcp], "{names}");
        assert_eq!(daemon.http, http, "{names}");
        let mut stream = early.take().unwrap();
        stream.write_all(b"activated_tcp:2|c\n").unwrap();
        daemon.wait_for(&[
            ("activated_tcp_total".to_owned(), 3.0),
            (
                format!("tallyd_tcp_connections_total{{listener=\"{tcp}\"}}"),
                1.0,
            ),
        ]);
        // The StatsD port does not speak HTTP: a request there is a malformed line.
        let mut wrong = TcpStream::connect(tcp).unwrap();
        wrong.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        wrong.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        wrong
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = wrong.read_to_end(&mut answer);
        assert!(answer.is_empty(), "{names}: the StatsD port answered");
        assert_eq!(http_get(http, "/-/ready", &[]).status, 200);
    }
}

fn send_unix(path: &Path, datagram: &[u8]) {
    UnixDatagram::unbound()
        .unwrap()
        .send_to(datagram, path)
        .unwrap();
}

#[test]
fn a_unix_socket_passed_by_systemd_is_read_and_its_file_left_to_systemd() {
    if !launcher_available() {
        return;
    }
    let dir = SocketDir::new("unix");
    let path = dir.path();
    let command = launch(
        &[
            "--datagram".into(),
            format!("--listen={}", path.display()),
            "--fdname=dogstatsd".into(),
        ],
        &[
            "--udp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--unix-listen",
            "systemd:dogstatsd",
        ],
    );
    let mut daemon = start(command, || send_unix(&path, b"activated_unix:1|c"));
    assert_eq!(daemon.unix, std::slice::from_ref(&path));
    send_unix(&path, b"activated_unix:1|c|#model:v1");
    daemon.wait_for(&[
        ("activated_unix_total".to_owned(), 1.0),
        (r#"activated_unix_total{model="v1"}"#.to_owned(), 1.0),
        (
            format!(
                "tallyd_unix_packets_total{{listener=\"{}\"}}",
                path.display()
            ),
            2.0,
        ),
    ]);
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(5)).expect("exited");
    assert!(status.success(), "{status}");
    assert!(path.exists(), "tallyd removed the socket file systemd owns");
}

#[test]
fn a_passed_socket_of_the_wrong_kind_stops_tallyd_with_code_2() {
    if !launcher_available() {
        return;
    }
    // A stream socket where [udp] wants a datagram one.
    let addr = free_tcp_addr();
    let command = launch(
        &[format!("--listen={addr}"), "--fdname=statsd".into()],
        &[
            "--udp-listen",
            "systemd:statsd",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let mut connection = None;
    let (status, log) = run_to_exit(command, || connection = TcpStream::connect(addr).ok());
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains(
            "[udp] listen names systemd:statsd, but the socket systemd passed under that name \
             (descriptor 3) is an IPv4 listening TCP socket; it needs a UDP socket \
             (ListenDatagram=ADDRESS:PORT)"
        ),
        "{log}"
    );
}

#[test]
fn a_passed_socket_no_listener_claims_stops_tallyd_with_code_2() {
    if !launcher_available() {
        return;
    }
    let addr = free_udp_addr();
    let command = launch(
        &[
            "--datagram".into(),
            format!("--listen={addr}"),
            "--fdname=forgotten".into(),
        ],
        &[
            "--udp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let (status, log) = run_to_exit(command, || send_udp(addr, b"x:1|c"));
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains("no listen address claims: forgotten (descriptor 3)"),
        "{log}"
    );
}

#[test]
fn a_systemd_name_without_socket_activation_stops_tallyd_with_code_2() {
    let output = run_tallyd(&[
        "--udp-listen",
        "systemd:statsd",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("[udp] listen names systemd:statsd, but tallyd was not socket-activated"),
        "{stderr}"
    );
}

#[test]
fn variables_meant_for_another_process_are_ignored_and_named_when_needed() {
    let env = [
        ("LISTEN_PID", std::ffi::OsStr::new("1")),
        ("LISTEN_FDS", std::ffi::OsStr::new("1")),
        ("LISTEN_FDNAMES", std::ffi::OsStr::new("statsd")),
    ];
    // Inherited by mistake: tallyd binds as usual and leaves descriptor 3 alone.
    let daemon = Daemon::start_with_env(&[], None, &env);
    daemon.send(&[b"not_activated:1|c"]);
    daemon.wait_for_value("not_activated_total", 1.0);
    drop(daemon);
    // Asked for: the message says why there is nothing.
    let mut command = Command::new(tallyd_bin());
    command
        .args([
            "--udp-listen",
            "systemd:statsd",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .envs(env);
    let (status, log) = run_to_exit(command, || {});
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("LISTEN_PID=1 names another process"), "{log}");
}

#[test]
fn the_shipped_socket_unit_works_with_the_configuration_it_documents() {
    if !launcher_available() {
        return;
    }
    let unit = std::fs::read_to_string(repo_root().join("systemd/tallyd.socket")).unwrap();
    let setting = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .collect()
    };
    let names = setting("FileDescriptorName");
    assert_eq!(names.len(), 1, "{unit}");
    let listen = setting("ListenDatagram");
    assert_eq!(listen, ["127.0.0.1:8125"], "{unit}");
    // The configuration the unit's header tells the operator to write, taken from it verbatim.
    let documented: String = unit
        .lines()
        .skip_while(|line| !line.ends_with("/etc/tallyd/tallyd.toml must say:"))
        .skip(1)
        .take_while(|line| line.starts_with("#   "))
        .map(|line| format!("{}\n", &line["#   ".len()..]))
        .collect();
    assert!(
        documented.contains(&format!("systemd:{}", names[0])),
        "{documented}"
    );
    let config = TempFile::new("tallyd.toml", &documented);
    // The unit's socket, on a free port.
    let addr = free_udp_addr();
    let command = launch(
        &[
            "--datagram".into(),
            format!("--listen={addr}"),
            format!("--fdname={}", names[0]),
        ],
        &[
            "--config",
            config.path().to_str().unwrap(),
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let daemon = start(command, || send_udp(addr, b"unit_socket:1|c"));
    assert_eq!(daemon.udp, [addr]);
    daemon.wait_for_value("unit_socket_total", 1.0);
}
