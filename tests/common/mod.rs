//! Helpers shared by the integration tests: run tallyd on free ports — in-process through the
//! library's runtime ([`InProcess`]), or as the real binary ([`Daemon`]) where a test needs
//! signals, the log or the process — send it StatsD datagrams, scrape it over a small HTTP/1.1
//! client, and compare scraped series with what a test expects, printing a readable table (and
//! the daemon's log) when they differ. Both kinds dereference to [`Endpoints`], which holds
//! everything that only talks to the sockets.
//!
//! Everything here uses the standard library and the crate's own dependencies (`flate2`, `libc`):
//! no HTTP client crate, no temp-file crate.

// Each integration-test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub mod prometheus;

/// How long a daemon may take to bind its listeners and log its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Endpoints::wait_for`] polls before it gives up. UDP is asynchronous: a datagram that
/// `send_to` accepted is processed a little later, so tests poll instead of sleeping.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a command that should exit on its own (`--version`, a refused config) may run.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `Accept` header a Prometheus server sends (2.x), asking for OpenMetrics first.
pub const ACCEPT_OPENMETRICS: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The path of the binary under test.
pub fn tallyd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tallyd")
}

/// The repository root (where `config/`, `tests/clients/` live).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Temporary files

/// A file under Cargo's per-target temp directory, removed on drop.
pub struct TempFile {
    path: PathBuf,
}

impl TempFile {
    pub fn new(name: &str, contents: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "{}-{}-{n}-{name}",
            std::process::id(),
            thread_tag()
        ));
        let file = TempFile { path };
        file.write(contents);
        file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's contents.
    pub fn write(&self, contents: &str) {
        std::fs::write(&self.path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.path.display()));
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn thread_tag() -> String {
    thread::current()
        .name()
        .unwrap_or("main")
        .replace("::", "-")
        .replace(
            |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
            "_",
        )
}

/// A fresh directory for a test's socket files (under the system temp dir, and named without
/// the test's name: a socket path holds at most 107 bytes), removed with them on drop.
pub struct SocketDir(PathBuf);

impl SocketDir {
    pub fn new(name: &str) -> SocketDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("tallyd-sockets-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        SocketDir(dir)
    }

    /// The socket path a test uses, inside the directory.
    pub fn path(&self) -> PathBuf {
        self.0.join("dogstatsd.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// TCP peers and processes

/// A TCP connection whose reads give up after 10 s.
pub fn connect_tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the peer closes; true if it closed (or reset) within the read timeout.
pub fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Resident memory of a process (VmRSS), from /proc.
pub fn rss_bytes(pid: libc::pid_t) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

// ---------------------------------------------------------------------------------------------
// Running the binary

/// A running `tallyd`, listening on ports the kernel picked. Killed on drop; when the test is
/// failing, its log is printed so the failure explains itself.
pub struct Daemon {
    child: Child,
    endpoints: Endpoints,
    log: Arc<Mutex<String>>,
    config: Option<TempFile>,
    /// The store's directory (unused when the test passed `--data-dir`), removed on drop.
    pub data_dir: tempfile::TempDir,
}

impl std::ops::Deref for Daemon {
    type Target = Endpoints;

    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

/// Where a running tallyd listens, and what a test does through its sockets alone.
pub struct Endpoints {
    /// The UDP address(es) bound; [`Endpoints::send`] uses the first.
    pub udp: Vec<SocketAddr>,
    pub http: SocketAddr,
    /// The TCP addresses bound, if `[tcp]` listens.
    pub tcp: Vec<SocketAddr>,
    /// The Unix socket paths bound, if `[unix]` listens.
    pub unix: Vec<PathBuf>,
}

/// tallyd running in this process (`tallyd::runtime::run` on a thread of its own), on free
/// loopback ports. Stopped (and joined) on drop.
pub struct InProcess {
    endpoints: Endpoints,
    /// The store's directory, removed on drop.
    pub data_dir: tempfile::TempDir,
    shutdown: tokio_util::sync::CancellationToken,
    thread: Option<thread::JoinHandle<Result<(), String>>>,
}

impl std::ops::Deref for InProcess {
    type Target = Endpoints;

    fn deref(&self) -> &Endpoints {
        &self.endpoints
    }
}

impl InProcess {
    /// tallyd on the built-in defaults.
    pub fn start() -> InProcess {
        InProcess::with_config("")
    }

    /// tallyd with this configuration text; the listen addresses are free loopback ports.
    pub fn with_config(toml: &str) -> InProcess {
        InProcess::with_control(toml, |_| {})
    }

    /// As [`InProcess::with_config`], letting the test adjust the [`tallyd::runtime::Control`]
    /// (to make reloads load other settings, say) before tallyd runs.
    pub fn with_control(
        toml: &str,
        adjust: impl FnOnce(&mut tallyd::runtime::Control),
    ) -> InProcess {
        use tallyd::config::Settings;
        use tallyd::runtime::{Control, Listeners, run};
        let mut settings =
            Settings::parse(toml, Path::new("in-process.toml")).unwrap_or_else(|e| panic!("{e}"));
        settings.udp.listen = vec!["127.0.0.1:0".parse().unwrap()];
        settings.http_listen = "127.0.0.1:0".parse().unwrap();
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        settings.data_dir = data_dir.path().to_owned();
        // TCP listens on a free port when the configuration asks for TCP at all; Unix socket
        // paths are the test's own.
        if !settings.tcp.listen.is_empty() {
            settings.tcp.listen = vec!["127.0.0.1:0".parse().unwrap()];
        }
        let listeners = Listeners::bind(&settings).expect("bind free loopback ports");
        let endpoints = Endpoints {
            udp: listeners.udp_addrs(),
            http: listeners.http_addr().expect("the HTTP address"),
            tcp: listeners.tcp_addrs(),
            unix: listeners.unix_paths(),
        };
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut control = Control::new(shutdown.clone());
        adjust(&mut control);
        let thread = thread::Builder::new()
            .name("tallyd-in-process".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(run(listeners, settings, control))
            })
            .expect("start tallyd's thread");
        InProcess {
            endpoints,
            data_dir,
            shutdown,
            thread: Some(thread),
        }
    }

    /// The token that stops this tallyd.
    pub fn shutdown_token(&self) -> &tokio_util::sync::CancellationToken {
        &self.shutdown
    }

    /// Waits up to `timeout` for `run` to return (after the token is cancelled, or on its
    /// own); `None` if it is still running.
    pub fn wait_stopped(&mut self, timeout: Duration) -> Option<Result<(), String>> {
        let deadline = Instant::now() + timeout;
        let thread = self.thread.take()?;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                self.thread = Some(thread);
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
        Some(
            thread
                .join()
                .unwrap_or_else(|_| Err("tallyd's thread panicked".into())),
        )
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Daemon {
    /// Starts tallyd on the built-in defaults, with UDP and HTTP on free loopback ports.
    pub fn start() -> Daemon {
        Daemon::start_with(&[], None)
    }

    /// Starts tallyd with this configuration file text (written to a temp file and passed with
    /// `--config`); the listen addresses still come from the command line (free ports).
    pub fn with_config(toml: &str) -> Daemon {
        Daemon::start_with(&[], Some(TempFile::new("tallyd.toml", toml)))
    }

    /// Starts tallyd with extra arguments and an optional config file.
    pub fn start_with(extra_args: &[&str], config: Option<TempFile>) -> Daemon {
        Daemon::start_with_env(extra_args, config, &[])
    }

    /// [`Daemon::start_with`] with extra environment variables (`NOTIFY_SOCKET`, say).
    pub fn start_with_env(
        extra_args: &[&str],
        config: Option<TempFile>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Daemon {
        let mut command = Command::new(tallyd_bin());
        command.envs(env.iter().copied());
        if let Some(file) = &config {
            command.arg("--config").arg(file.path());
        }
        command
            .args([
                "--udp-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ])
            .args(extra_args);
        Daemon::spawn(command, config, |_| {})
    }

    /// Runs `command` — tallyd, or a launcher that execs it (`systemd-socket-activate`) — and
    /// waits for tallyd's ready line, calling `on_line` with every line logged before it (a
    /// launcher that waits for traffic is told when to expect it that way).
    pub fn spawn(
        mut command: Command,
        config: Option<TempFile>,
        mut on_line: impl FnMut(&str),
    ) -> Daemon {
        // Each daemon keeps its store apart, unless the test chose the directory (a launcher
        // passes the trailing arguments on to tallyd).
        let data_dir = tempfile::tempdir().expect("a temporary data directory");
        if !command.get_args().any(|arg| arg == "--data-dir") {
            command.arg("--data-dir").arg(data_dir.path());
        }
        command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));

        let log = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines_rx) = mpsc::channel();
        drain_stderr(
            child.stderr.take().expect("stderr is piped"),
            Arc::clone(&log),
            lines_tx,
        );

        let deadline = Instant::now() + START_TIMEOUT;
        let Ready {
            udp,
            http,
            tcp,
            unix,
        } = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(ready) = parse_ready_line(&line) {
                        break ready;
                    }
                    on_line(&line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stderr closed: the process is exiting.
                    let status = child.wait().ok();
                    panic!(
                        "tallyd exited ({status:?}) before its ready line; its log:\n{}",
                        log.lock().unwrap()
                    );
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                thread::sleep(Duration::from_millis(50)); // let the drain thread catch up
                panic!(
                    "tallyd exited ({status}) before its ready line; its log:\n{}",
                    log.lock().unwrap()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tallyd logged no ready line within {START_TIMEOUT:?}; its log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Daemon {
            child,
            endpoints: Endpoints {
                udp,
                http,
                tcp,
                unix,
            },
            data_dir,
            log,
            config,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// The config file the daemon was started with.
    pub fn config_file(&self) -> &TempFile {
        self.config
            .as_ref()
            .expect("this daemon was started without --config")
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's, which we
        // have not reaped yet, so it cannot name another process.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits up to `timeout` for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Endpoints {
    /// Sends each datagram, as given, to the daemon's (first) UDP address, in order, from one
    /// socket.
    pub fn send<D: AsRef<[u8]>>(&self, datagrams: &[D]) {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP client socket");
        for datagram in datagrams {
            socket
                .send_to(datagram.as_ref(), self.udp[0])
                .expect("send a datagram to tallyd");
        }
    }

    /// `GET path` with these request headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http_get(self.http, path, headers)
    }

    /// `GET /metrics` with no `Accept` header (so text 0.0.4); panics unless it answers 200.
    pub fn scrape(&self) -> String {
        let response = self.get("/metrics", &[]);
        assert_eq!(
            response.status,
            200,
            "GET /metrics answered {}:\n{}",
            response.status,
            response.text()
        );
        response.text()
    }

    /// Polls `/metrics` until `series` (e.g. `x_total{a="b"}`) has exactly `expected`; returns
    /// the last scrape. See [`Endpoints::wait_for`].
    pub fn wait_for_value(&self, series: &str, expected: f64) -> String {
        self.wait_for(&[(series, expected)])
    }

    /// Polls `/metrics` (text 0.0.4) for up to [`SETTLE_TIMEOUT`] until every `(series, value)`
    /// holds exactly, and returns that scrape. Series are written as in the exposition format,
    /// `name{label="value",...}`; label order does not matter and `le` bounds compare as numbers
    /// (`le="1"` is `le="1.0"`). On timeout, panics with a table of expected and scraped values
    /// and the scraped lines of the same families.
    pub fn wait_for<S: AsRef<str>>(&self, expected: &[(S, f64)]) -> String {
        let wanted: Vec<(SeriesId, f64)> = expected
            .iter()
            .map(|(series, value)| (SeriesId::parse(series.as_ref()), *value))
            .collect();
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let text = self.scrape();
            let scraped = parse_exposition(&text);
            let all_match = wanted
                .iter()
                .all(|(id, value)| lookup(&scraped, id).is_some_and(|v| same_value(v, *value)));
            if all_match {
                return text;
            }
            if Instant::now() >= deadline {
                panic!(
                    "after {SETTLE_TIMEOUT:?}, /metrics still differs from what the test expects\n{}",
                    mismatch_report(&wanted, &scraped, &text)
                );
            }
            thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            thread::sleep(Duration::from_millis(50)); // let the drain thread catch up
            eprintln!(
                "----- tallyd log (pid {}) -----\n{}----- end of tallyd log -----",
                self.child.id(),
                self.log.lock().unwrap()
            );
        }
    }
}

/// Reads the daemon's stderr until it closes: every line goes into `log` (so a failing test can
/// print it) and to `lines` (so `start` can find the ready line). Draining for the daemon's whole
/// life keeps the pipe from filling up and blocking it.
fn drain_stderr(stderr: ChildStderr, log: Arc<Mutex<String>>, lines: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(&String::from_utf8_lossy(&raw));
                    log.lock().unwrap().push_str(&line);
                    if !line.ends_with('\n') {
                        log.lock().unwrap().push('\n');
                    }
                    let _ = lines.send(line);
                }
            }
        }
    });
}

/// What the ready line says was bound.
struct Ready {
    udp: Vec<SocketAddr>,
    http: SocketAddr,
    tcp: Vec<SocketAddr>,
    unix: Vec<PathBuf>,
}

/// `... tallyd 0.1.0 ready: udp 127.0.0.1:41234 [more...] http 127.0.0.1:40111
/// [tcp 127.0.0.1:40112 ...] [unix /run/tallyd/dogstatsd.sock ...]`
fn parse_ready_line(line: &str) -> Option<Ready> {
    let rest = &line[line.find("ready: udp ")? + "ready: udp ".len()..];
    let mut words = rest.split_whitespace();
    let mut udp = Vec::new();
    for word in words.by_ref() {
        if word == "http" {
            break;
        }
        udp.push(word.parse().ok()?);
    }
    let http = words.next()?.parse().ok()?;
    let (mut tcp, mut unix) = (Vec::new(), Vec::new());
    let mut section = "";
    for word in words {
        match (word, section) {
            ("tcp" | "unix", _) => section = word,
            (_, "tcp") => tcp.push(word.parse().ok()?),
            (_, "unix") => unix.push(PathBuf::from(word)),
            _ => return None,
        }
    }
    (!udp.is_empty()).then_some(Ready {
        udp,
        http,
        tcp,
        unix,
    })
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `tallyd args...` to completion (it must exit within a few seconds) and returns its exit
/// status and output.
pub fn run_tallyd(args: &[&str]) -> Output {
    let mut child = Command::new(tallyd_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", tallyd_bin()));
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
            panic!(
                "`tallyd {}` did not exit within {EXIT_TIMEOUT:?}; stderr:\n{stderr}",
                args.join(" ")
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: strip_ansi(&String::from_utf8_lossy(&stderr.join().unwrap())).into_bytes(),
    }
}

/// Is `program` on `PATH`?
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let candidate = dir.join(program);
            candidate.is_file()
                && std::fs::metadata(&candidate).is_ok_and(|m| {
                    std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
        })
    })
}

/// `[history]` sampling every second into a 1 s tier, rolled up into a 2 s one.
pub const HISTORY_EVERY_SECOND: &str = r#"
[history]
interval_seconds = 1
tiers = [
    { resolution = "1s", retention = "1h" },
    { resolution = "2s", retention = "1d" },
]
"#;

/// The Unix time in ms.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sleeps until half a second past the whole Unix second `s`. History samples are read just
/// after each whole second (and a Prometheus scraping once a second keeps its own phase), so a
/// line sent then lands, without doubt, in the interval that starts at `s`.
pub fn at_half_past(s: i64) {
    let wait = s * 1000 + 500 - unix_ms();
    assert!(wait > 0, "the test fell {}ms behind", -wait);
    thread::sleep(Duration::from_millis(wait as u64));
}

/// True under CI (`CI` set to anything but empty, `0` or `false`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// For tests that need an outside tool: returns `true` when `available`. Otherwise a missing
/// tool fails the test under CI (the CI script installs it) and skips it, with a notice, on a
/// developer's machine.
pub fn require(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if under_ci() {
        panic!("{what} is missing, and CI is set: run scripts/setup-test-deps");
    }
    eprintln!(
        "NOTICE: skipping this test: {what} is missing (scripts/setup-test-deps installs it)"
    );
    false
}

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 client

/// An HTTP response, with the body already de-chunked (but not decompressed).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, gunzipped first if `Content-Encoding: gzip`.
    pub fn text(&self) -> String {
        let bytes = if self.header("content-encoding") == Some("gzip") {
            gunzip(&self.body)
        } else {
            self.body.clone()
        };
        String::from_utf8(bytes).expect("the body is UTF-8")
    }
}

pub fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("the body is valid gzip");
    out
}

/// `GET path` over a fresh connection (`Connection: close`), with these extra request headers.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    http_request(addr, "GET", path, headers)
}

/// `METHOD path` without a body over a fresh connection (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    http_send(addr, method, path, headers, b"")
}

/// One API call with a bearer token: the status and the JSON body (Null when there is none).
pub fn api_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {token}");
    json_call(
        addr,
        method,
        path,
        &[("Authorization", auth.as_str())],
        body,
    )
}

/// The custom-metrics API's root (the Matih paths).
pub const CUSTOM_METRICS: &str = "/api/v1/observability/custom-metrics";

/// An anonymous call on loopback (a daemon without tokens) as `tenant`; `Null` sends no body.
pub fn tenant_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    tenant: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let body = (!body.is_null()).then_some(body);
    json_call(addr, method, path, &[("X-Tenant-ID", tenant)], body)
}

/// Defines a custom metric for `tenant`, which must succeed.
pub fn define_custom(addr: SocketAddr, tenant: &str, spec: serde_json::Value) {
    let (status, body) = tenant_call(addr, "POST", CUSTOM_METRICS, tenant, spec);
    assert_eq!(status, 201, "{body}");
}

/// Records points (one, or an array) to `tenant`'s metric `name`, which must succeed.
pub fn record_custom(addr: SocketAddr, tenant: &str, name: &str, points: serde_json::Value) {
    let path = format!("{CUSTOM_METRICS}/{name}/data");
    let (status, body) = tenant_call(addr, "POST", &path, tenant, points);
    assert_eq!(status, 200, "{body}");
}

/// One JSON call with `headers`: the status and the JSON body (Null when there is none).
pub fn json_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut headers = headers.to_vec();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let response = http_send(addr, method, path, &headers, body.as_bytes());
    let json = if response.body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", response.text()))
    };
    (response.status, json)
}

/// `METHOD path` with `body` (and its `Content-Length` when not empty) over a fresh connection.
pub fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        write!(request, "{name}: {value}\r\n").unwrap();
    }
    if !body.is_empty() {
        write!(request, "Content-Length: {}\r\n", body.len()).unwrap();
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).expect("send the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the response to {method} {path}: {e}"));
    parse_response(&raw).unwrap_or_else(|e| {
        panic!(
            "{method} {path}: malformed response ({e}):\n{}",
            String::from_utf8_lossy(&raw)
        )
    })
}

pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let rest = &raw[head_end + 4..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| "bad Content-Length")?;
        if rest.len() < length {
            return Err(format!("body has {} of {length} bytes", rest.len()));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("chunk size line without CRLF")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body); // trailers, if any, are ignored
        }
        if rest.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        body.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        rest = &rest[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Reading the exposition format

/// A series' identity: its sample name and its labels, sorted, with `le`/`quantile` bounds in a
/// canonical spelling.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesId {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl SeriesId {
    /// Parses `name` or `name{k="v",...}`.
    pub fn parse(text: &str) -> SeriesId {
        let (id, rest) = parse_series_id(text.trim())
            .unwrap_or_else(|e| panic!("bad series {text:?} in a test: {e}"));
        assert!(rest.trim().is_empty(), "bad series {text:?} in a test");
        id
    }
}

impl std::fmt::Display for SeriesId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            f.write_str("{")?;
            for (i, (k, v)) in self.labels.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{k}={v:?}")?;
            }
            f.write_str("}")?;
        }
        Ok(())
    }
}

/// One sample line of a scrape.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: SeriesId,
    pub value: f64,
    /// The line as scraped.
    pub line: String,
}

/// The sample lines of a scrape (text 0.0.4 or OpenMetrics); comments are skipped. Panics on a
/// line it cannot read, since that is a broken exposition.
pub fn parse_exposition(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (id, rest) = parse_series_id(line)
                .unwrap_or_else(|e| panic!("unreadable sample line {line:?}: {e}\n{text}"));
            let value_text = rest.split_whitespace().next().unwrap_or_default();
            let value = parse_float(value_text)
                .unwrap_or_else(|| panic!("unreadable value in {line:?}\n{text}"));
            Sample {
                id,
                value,
                line: line.to_owned(),
            }
        })
        .collect()
}

/// The value of series `id` in `samples`, if present (panics if present twice).
pub fn lookup(samples: &[Sample], id: &SeriesId) -> Option<f64> {
    let mut found = samples.iter().filter(|s| s.id == *id);
    let first = found.next()?;
    if let Some(second) = found.next() {
        panic!(
            "series {id} is exposed twice:\n  {}\n  {}",
            first.line, second.line
        );
    }
    Some(first.value)
}

/// The value of `series` (written `name{k="v",...}`) in a scrape's text, if present.
pub fn value_of(text: &str, series: &str) -> Option<f64> {
    lookup(&parse_exposition(text), &SeriesId::parse(series))
}

/// Exact comparison, except that NaN equals NaN.
fn same_value(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn parse_float(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

fn canonical_bound(text: &str) -> String {
    match parse_float(text) {
        Some(f) if f == f64::INFINITY => "+Inf".into(),
        Some(f) if f == f64::NEG_INFINITY => "-Inf".into(),
        Some(f) => format!("{f}"),
        None => text.to_owned(),
    }
}

/// Reads `name{k="v",...}` from the front of `text`; returns the id and the rest.
fn parse_series_id(text: &str) -> Result<(SeriesId, &str), String> {
    let name_end = text
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if name.is_empty() {
        return Err("no metric name".into());
    }
    let mut rest = &text[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let key = rest[..eq].trim().to_owned();
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value without opening quote")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next() {
                    None => return Err("label value without closing quote".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("dangling escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            rest = &rest[close + 1..];
            if key == "le" || key == "quantile" {
                value = canonical_bound(&value);
            }
            labels.push((key, value));
        }
    }
    labels.sort();
    Ok((
        SeriesId {
            name: name.to_owned(),
            labels,
        },
        rest,
    ))
}

/// The family a sample name belongs to, for grouping lines in failure reports.
fn family_of(name: &str) -> &str {
    for suffix in ["_total", "_bucket", "_sum", "_count", "_created"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}

fn mismatch_report(wanted: &[(SeriesId, f64)], scraped: &[Sample], text: &str) -> String {
    let mut out = String::new();
    let width = wanted
        .iter()
        .map(|(id, _)| id.to_string().len())
        .max()
        .unwrap_or(0)
        .max(6);
    writeln!(out, "  {:width$}  {:>12}  scraped", "series", "expected").unwrap();
    for (id, value) in wanted {
        let got = lookup(scraped, id);
        let (mark, got) = match got {
            Some(v) if same_value(v, *value) => (' ', v.to_string()),
            Some(v) => ('✗', v.to_string()),
            None => ('✗', "absent".to_owned()),
        };
        writeln!(
            out,
            "{mark} {:width$}  {:>12}  {got}",
            id.to_string(),
            value.to_string()
        )
        .unwrap();
    }
    let families: Vec<&str> = wanted.iter().map(|(id, _)| family_of(&id.name)).collect();
    let related: Vec<&str> = text
        .lines()
        .filter(|line| {
            let name = line
                .trim_start_matches("# HELP ")
                .trim_start_matches("# TYPE ")
                .trim_start_matches("# UNIT ");
            let name = name
                .split(|c: char| c == '{' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            families.contains(&family_of(name))
        })
        .collect();
    if related.is_empty() {
        writeln!(
            out,
            "no line of these families was scraped; the scrape was:"
        )
        .unwrap();
        for line in text.lines() {
            writeln!(out, "  | {line}").unwrap();
        }
    } else {
        writeln!(out, "the scraped lines of these families:").unwrap();
        for line in related {
            writeln!(out, "  | {line}").unwrap();
        }
        let errors: Vec<&Sample> = scraped
            .iter()
            .filter(|s| {
                s.value != 0.0
                    && (s.id.name == "tallyd_sample_errors_total"
                        || s.id.name == "tallyd_extensions_skipped_total")
            })
            .collect();
        if !errors.is_empty() {
            writeln!(out, "and the non-zero error counters:").unwrap();
            for s in errors {
                writeln!(out, "  | {}", s.line).unwrap();
            }
        }
    }
    out
}

/// Panics, listing the offending lines, if any sample in `text` is named one of `names`.
pub fn assert_absent(text: &str, names: &[&str]) {
    let found: Vec<String> = parse_exposition(text)
        .into_iter()
        .filter(|s| names.contains(&s.id.name.as_str()))
        .map(|s| s.line)
        .collect();
    assert!(
        found.is_empty(),
        "expected no sample named {names:?}, but the scrape has:\n  {}",
        found.join("\n  ")
    );
}

/// The `# TYPE` a scrape declares for `family`.
pub fn declared_type<'a>(text: &'a str, family: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("# TYPE ")?;
        let (name, kind) = rest.split_once(' ')?;
        (name == family).then_some(kind.trim())
    })
}

/// Runs promtool with `stdin` as its input; returns whether it succeeded, and what it printed.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .expect("feed promtool");
    drop(pipe);
    let output = child.wait_with_output().expect("promtool's output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// Runs `command` to completion: whether it succeeded, and its stdout followed by its stderr.
pub fn run_command(command: &mut Command) -> (bool, String) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// `tallyd --config <config> --data-dir <dir> history export --metric <metric>`'s output,
/// which must succeed.
pub fn history_export(config: &Path, dir: &str, metric: &str) -> String {
    let output = Command::new(tallyd_bin())
        .arg("--config")
        .arg(config)
        .args(["--data-dir", dir, "history", "export", "--metric", metric])
        .output()
        .expect("run tallyd history export");
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// Imports OpenMetrics `text` with `promtool tsdb create-blocks-from openmetrics` into a
/// temporary directory, which must succeed.
pub fn promtool_import(text: &str) {
    let file = TempFile::new("export.om", text);
    let blocks = tempfile::tempdir().unwrap();
    let output = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(file.path())
        .arg(blocks.path())
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The hex SHA-256 of `text`: what `[[api.tokens]] secret_sha256` holds for the secret `text`.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}
