//! The end-to-end benchmark (issue 5, DESIGN.md §8): the real `tallyd` binary pinned to one CPU,
//! `tallyd-load` pinned to the other, figures read from `/metrics`, `/proc/<pid>` and
//! `/proc/net/udp`, compared with the receive-only floor (`tallyd-load floor`) under the same
//! pinning. Prints a Markdown table of medians on stdout; progress goes to stderr.
//!
//! `cargo bench --bench e2e`; knobs (`E2E_QUICK=1`, `E2E_ONLY=…`, …) are in `benches/README.md`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MIX: &str = "c:40,g:20,ms:25,h:5,d:5,s:5";
const OPENMETRICS: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

struct Settings {
    runs: usize,
    seconds: f64,
    daemon_cpu: String,
    loader_cpu: String,
    nice: i32,
    mix: String,
    tags: usize,
    cpu_series: u64,
    rate20: f64,
    rate1: f64,
    sockets1: usize,
    sweep_steps: usize,
    sweep_seconds: f64,
    mid_series: u64,
    big_series: u64,
    fill_rate: f64,
    load_under_scrape: f64,
    hot_series: u64,
    groups: BTreeSet<&'static str>,
    tallyd: PathBuf,
    loader: PathBuf,
    /// Another tallyd binary run beside ours in the UDP groups (`E2E_BASELINE`).
    baseline: Option<PathBuf>,
    shared_receivers: usize,
}

const GROUPS: [&str; 7] = [
    "cpu20",
    "cpu1",
    "flat",
    "sweep",
    "transports",
    "shared",
    "big",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("E2E_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut groups = BTreeSet::new();
        match std::env::var("E2E_ONLY") {
            Ok(list) if !list.trim().is_empty() => {
                for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    let chosen: &[&'static str] = match word {
                        "cpu" | "floor" => &["cpu20", "cpu1"],
                        "cpu20" => &["cpu20"],
                        "cpu1" => &["cpu1"],
                        "flat" | "loss" => &["flat"],
                        "sweep" => &["sweep"],
                        "transports" | "tcp" | "unix" => &["transports"],
                        "shared" | "activation" => &["shared"],
                        "big" | "scrape" | "rss" | "memory" => &["big"],
                        "all" => &GROUPS,
                        other => panic!(
                            "E2E_ONLY: unknown group {other:?} (cpu20, cpu1, cpu, floor, flat, \
                             sweep, transports, tcp, unix, shared, activation, big, scrape, rss, \
                             all)"
                        ),
                    };
                    groups.extend(chosen.iter().copied());
                }
            }
            _ => groups.extend(GROUPS),
        }
        let (tallyd, loader) = binaries();
        Settings {
            runs: env_or("E2E_RUNS", if quick { 1 } else { 3 }).max(1),
            seconds: env_or("E2E_SECONDS", if quick { 1.5 } else { 3.0 }),
            daemon_cpu: env_or("E2E_DAEMON_CPU", "0".to_string()),
            loader_cpu: env_or("E2E_LOADER_CPU", "1".to_string()),
            nice: env_or("E2E_NICE", -19),
            mix: env_or("E2E_MIX", MIX.to_string()),
            tags: env_or("E2E_TAGS", 3),
            cpu_series: env_or("E2E_CPU_SERIES", 1000),
            rate20: env_or("E2E_RATE20", 100_000.0),
            rate1: env_or("E2E_RATE1", 200_000.0),
            sockets1: env_or("E2E_SOCKETS1", 100),
            sweep_steps: env_or("E2E_SWEEP_STEPS", if quick { 3 } else { 5 }),
            sweep_seconds: env_or("E2E_SWEEP_SECONDS", if quick { 1.5 } else { 2.0 }),
            mid_series: env_or("E2E_MID_SERIES", 200_000),
            big_series: env_or("E2E_BIG_SERIES", 1_000_000),
            fill_rate: env_or("E2E_FILL_RATE", 400_000.0),
            load_under_scrape: env_or("E2E_SCRAPE_LOAD", 500_000.0),
            hot_series: env_or("E2E_HOT_SERIES", 50_000),
            groups,
            tallyd,
            loader,
            baseline: std::env::var_os("E2E_BASELINE").map(PathBuf::from),
            shared_receivers: env_or("E2E_SHARED_RECEIVERS", 2),
        }
    }

    fn wants(&self, group: &str) -> bool {
        self.groups.contains(group)
    }
}

/// The release binaries: cargo's own paths when it provides them, else `target/release`
/// (built with `cargo build --release --bins` if missing). `E2E_TALLYD` / `E2E_LOAD` override.
fn binaries() -> (PathBuf, PathBuf) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"))
        .join("release");
    let pick = |over: &str, from_cargo: Option<&str>, name: &str| -> PathBuf {
        if let Some(path) = std::env::var_os(over) {
            return PathBuf::from(path);
        }
        match from_cargo {
            Some(path) if Path::new(path).exists() => PathBuf::from(path),
            _ => target.join(name),
        }
    };
    let tallyd = pick("E2E_TALLYD", option_env!("CARGO_BIN_EXE_tallyd"), "tallyd");
    let loader = pick(
        "E2E_LOAD",
        option_env!("CARGO_BIN_EXE_tallyd-load"),
        "tallyd-load",
    );
    if !tallyd.exists() || !loader.exists() {
        eprintln!("e2e: building the release binaries (cargo build --release --bins)");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bins"])
            .current_dir(manifest)
            .status()
            .expect("cannot run cargo");
        assert!(status.success(), "cargo build --release --bins failed");
    }
    (tallyd, loader)
}

// ---------------------------------------------------------------------------------------------
// Figures and the table
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Unit {
    Count,
    Rate,
    Micros,
    Percent,
    Millis,
    Bytes,
    MiB,
    Times,
    Decimal,
}

#[derive(Clone, Copy)]
enum Check {
    None,
    AtLeast(f64),
    AtMost(f64),
}

struct Figure {
    name: String,
    unit: Unit,
    runs: Vec<f64>,
    target: String,
    check: Check,
}

#[derive(Default)]
struct Table {
    figures: Vec<Figure>,
    notes: Vec<String>,
}

impl Table {
    fn add(&mut self, name: &str, unit: Unit, runs: Vec<f64>, target: &str, check: Check) {
        self.figures.push(Figure {
            name: name.to_string(),
            unit,
            runs,
            target: target.to_string(),
            check,
        });
    }

    fn note(&mut self, text: String) {
        eprintln!("e2e: note: {text}");
        self.notes.push(text);
    }

    fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("| figure | median | runs | target |\n|---|---|---|---|\n");
        for f in &self.figures {
            let valid: Vec<f64> = f.runs.iter().copied().filter(|v| !v.is_nan()).collect();
            let median = median(&valid);
            let runs = f
                .runs
                .iter()
                .map(|&v| format_value(v, f.unit))
                .collect::<Vec<_>>()
                .join(", ");
            let verdict = match (f.check, median) {
                (_, None) => "",
                (Check::None, _) => "",
                (Check::AtLeast(t), Some(m)) if m >= t => " ✅",
                (Check::AtMost(t), Some(m)) if m <= t => " ✅",
                _ => " ❌",
            };
            let target = if f.target.is_empty() {
                "—".to_string()
            } else {
                format!("{}{verdict}", f.target)
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                f.name,
                median.map_or("n/a".into(), |m| format!("**{}**", format_value(m, f.unit))),
                runs,
                target
            ));
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }
}

fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

fn thousands(value: f64) -> String {
    let negative = value < 0.0;
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if negative { format!("-{out}") } else { out }
}

fn format_value(value: f64, unit: Unit) -> String {
    if value.is_nan() {
        return "error".into();
    }
    match unit {
        Unit::Count => thousands(value),
        Unit::Rate => format!("{}/s", thousands(value)),
        Unit::Micros => format!("{value:.3} µs"),
        Unit::Percent => {
            if value == 0.0 {
                "0 %".into()
            } else {
                format!("{value:.3} %")
            }
        }
        Unit::Millis => format!("{value:.1} ms"),
        Unit::Bytes => format!("{} B", thousands(value)),
        Unit::MiB => format!("{value:.1} MiB"),
        Unit::Times => format!("{value:.2}×"),
        Unit::Decimal => format!("{value:.1}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Processes: tallyd, the floor, the loader
// ---------------------------------------------------------------------------------------------

/// A receiver under test (tallyd or the floor), pinned with taskset.
struct Daemon {
    child: Child,
    pid: u32,
    udp: SocketAddr,
    http: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    unix: Option<PathBuf>,
    log: mpsc::Receiver<String>,
    name: &'static str,
}

/// `nice -n <E2E_NICE> taskset -c <cpu> <program>` (`nice` and `taskset` exec, so the pid is
/// the program's), in a session of its own (so, with autogroup scheduling, a scheduling group of
/// its own, which [`prioritise`] raises), and sent SIGTERM if the bench dies.
fn pinned(s: &Settings, cpu: &str, program: &Path) -> Command {
    let mut c = if s.nice != 0 {
        let mut c = Command::new("nice");
        c.arg("-n").arg(s.nice.to_string()).arg("taskset");
        c
    } else {
        Command::new("taskset")
    };
    c.arg("-c").arg(cpu).arg(program);
    if s.nice != 0 {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    c
}

/// With autogroup scheduling (`kernel.sched_autogroup_enabled`), `nice` only ranks a process
/// within its session's group, and every other session (other people's builds on this shared
/// machine) gets an equal share of the CPU whatever its niceness. Giving the new session's group
/// the same niceness keeps the daemon and the loader ahead of them on their CPUs.
fn prioritise(s: &Settings, pid: u32) {
    if s.nice != 0 {
        let _ = std::fs::write(format!("/proc/{pid}/autogroup"), s.nice.to_string());
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
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

impl Daemon {
    fn tallyd(s: &Settings) -> Daemon {
        Daemon::tallyd_with(s, &s.tallyd, &[], "tallyd")
    }

    /// `binary` (tallyd, or the baseline) on free loopback ports, with `extra` arguments.
    fn tallyd_with(s: &Settings, binary: &Path, extra: &[String], name: &'static str) -> Daemon {
        let mut command = pinned(s, &s.daemon_cpu, binary);
        command.args(tallyd_args(extra));
        Daemon::start(s, command, name, None)
    }

    /// tallyd started by `systemd-socket-activate` on a UDP socket it passes as `statsd`, which
    /// tallyd's receive threads then share; `config` sets their number.
    fn activated(s: &Settings, config: &Path) -> Daemon {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|socket| socket.local_addr())
            .expect("a free UDP port")
            .port();
        let udp: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = pinned(s, &s.daemon_cpu, Path::new("systemd-socket-activate"));
        command
            .args(["--datagram", &format!("--listen={udp}"), "--fdname=statsd"])
            .arg(&s.tallyd)
            .args(["--config", &config.display().to_string()])
            .args([
                "--udp-listen",
                "systemd:statsd",
                "--http-listen",
                "127.0.0.1:0",
            ]);
        Daemon::start(s, command, "shared", Some(udp))
    }

    fn floor(s: &Settings) -> Daemon {
        let mut command = pinned(s, &s.daemon_cpu, &s.loader);
        command.args(["floor", "--listen", "127.0.0.1:0"]);
        Daemon::start(s, command, "floor", None)
    }

    /// Runs `command` until its ready line; `trigger` gets one datagram once a launcher that
    /// waits for traffic before starting tallyd has bound it.
    fn start(
        s: &Settings,
        mut command: Command,
        name: &'static str,
        trigger: Option<SocketAddr>,
    ) -> Daemon {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let pid = child.id();
        prioritise(s, pid);
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(strip_ansi(&line)).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    panic!("{name} did not report ready within 20 s");
                }
            };
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("e2e: {name}: {line}");
            }
            if line.contains("Listening on")
                && let Some(to) = trigger
            {
                let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                sender.send_to(b"e2e_trigger:1|c", to).unwrap();
            }
            let Some(at) = line.find("ready: udp ") else {
                continue;
            };
            let mut words = line[at + "ready: udp ".len()..].split_whitespace();
            let udp: SocketAddr = words.next().unwrap().parse().unwrap();
            let (mut http, mut tcp, mut unix) = (None, None, None);
            while let Some(w) = words.next() {
                match w {
                    "http" => http = words.next().and_then(|a| a.parse().ok()),
                    "tcp" => tcp = words.next().and_then(|a| a.parse().ok()),
                    "unix" => unix = words.next().map(PathBuf::from),
                    _ => {}
                }
            }
            return Daemon {
                child,
                pid,
                udp,
                http,
                tcp,
                unix,
                log: rx,
                name,
            };
        }
    }

    fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid)
    }

    fn rss(&self) -> (u64, u64) {
        proc_rss(self.pid)
    }

    fn port(&self) -> u16 {
        self.udp.port()
    }

    /// Waits until the socket queue(s) on our port are empty and the process stops using CPU.
    fn drain(&self) {
        let start = Instant::now();
        let mut last_cpu = self.cpu_seconds();
        let mut quiet = 0;
        while start.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(50));
            let (queued, _) = udp_socket_state(self.port());
            let cpu = self.cpu_seconds();
            if queued == 0 && cpu == last_cpu {
                quiet += 1;
                if quiet >= 3 {
                    return;
                }
            } else {
                quiet = 0;
            }
            last_cpu = cpu;
        }
        eprintln!("e2e: {} did not drain within 120 s", self.name);
    }

    fn kernel_drops(&self) -> u64 {
        udp_socket_state(self.port()).1
    }

    fn scrape(&self, accept: Option<&str>) -> Scrape {
        scrape(self.http.expect("no http address"), accept)
    }

    fn forward_log(&self) {
        while let Ok(line) = self.log.try_recv() {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("e2e: {}: {line}", self.name);
            }
        }
    }

    /// SIGTERM, then the process's stdout (the floor's JSON).
    fn stop(mut self) -> String {
        self.forward_log();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        stdout
    }
}

/// tallyd's arguments in the bench: free loopback ports, `E2E_CONFIG` if set, then `extra`.
fn tallyd_args(extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--udp-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec();
    if let Ok(config) = std::env::var("E2E_CONFIG") {
        args.extend(["--config".to_string(), config]);
    }
    args.extend_from_slice(extra);
    args
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `tallyd-load send` arguments for one run.
#[derive(Clone)]
struct Load {
    lines_per_datagram: usize,
    series: u64,
    families: Option<u64>,
    tags: usize,
    mix: String,
    order: &'static str,
    start: u64,
    rate: Option<f64>,
    line_rate: Option<f64>,
    duration: Option<f64>,
    lines: Option<u64>,
    sockets: usize,
    seed: u64,
    prefix: &'static str,
}

impl Load {
    fn new(s: &Settings, lines_per_datagram: usize) -> Load {
        Load {
            lines_per_datagram,
            series: s.cpu_series,
            families: None,
            tags: s.tags,
            mix: s.mix.clone(),
            order: "random",
            start: 0,
            rate: None,
            line_rate: None,
            duration: Some(s.seconds),
            lines: None,
            sockets: 1,
            seed: 1,
            prefix: "tl",
        }
    }

    /// `target` in the loader's syntax: `HOST:PORT` (UDP), `tcp:HOST:PORT`, `unix:PATH`.
    fn command(&self, s: &Settings, target: &str) -> Command {
        let mut c = pinned(s, &s.loader_cpu, &s.loader);
        c.arg("send");
        c.arg("--target").arg(target);
        c.arg("--lines-per-datagram")
            .arg(self.lines_per_datagram.to_string());
        c.arg("--series").arg(self.series.to_string());
        if let Some(f) = self.families {
            c.arg("--families").arg(f.to_string());
        }
        c.arg("--tags").arg(self.tags.to_string());
        c.arg("--mix").arg(&self.mix);
        c.arg("--order").arg(self.order);
        c.arg("--start").arg(self.start.to_string());
        c.arg("--sockets").arg(self.sockets.to_string());
        c.arg("--seed").arg(self.seed.to_string());
        c.arg("--prefix").arg(self.prefix);
        if let Some(r) = self.rate {
            c.arg("--rate").arg(r.to_string());
        }
        if let Some(r) = self.line_rate {
            c.arg("--line-rate").arg(r.to_string());
        }
        if let Some(d) = self.duration {
            c.arg("--duration").arg(d.to_string());
        }
        if let Some(n) = self.lines {
            c.arg("--lines").arg(n.to_string());
        }
        c.stdout(Stdio::piped()).stderr(Stdio::inherit());
        c
    }

    fn run(&self, s: &Settings, target: SocketAddr) -> Sent {
        self.run_to(s, &target.to_string())
    }

    fn run_to(&self, s: &Settings, target: &str) -> Sent {
        Sent::from_child(self.spawn_to(s, target))
    }

    fn spawn(&self, s: &Settings, target: SocketAddr) -> Child {
        self.spawn_to(s, &target.to_string())
    }

    fn spawn_to(&self, s: &Settings, target: &str) -> Child {
        let child = self
            .command(s, target)
            .spawn()
            .expect("cannot run tallyd-load");
        prioritise(s, child.id());
        child
    }
}

/// What `tallyd-load send` reported.
#[derive(Debug, Clone, Default)]
struct Sent {
    datagrams: u64,
    lines: u64,
    counter_sum: u64,
    series_touched: u64,
    lines_per_s: f64,
    datagrams_per_s: f64,
    loader_cpu_s: f64,
}

impl Sent {
    fn parse(json: &str) -> Sent {
        let n = |key: &str| json_number(json, key).unwrap_or_else(|| panic!("no {key} in {json}"));
        Sent {
            datagrams: n("datagrams") as u64,
            lines: n("lines") as u64,
            counter_sum: n("counter_sum") as u64,
            series_touched: n("series_touched") as u64,
            lines_per_s: n("lines_per_s"),
            datagrams_per_s: n("datagrams_per_s"),
            loader_cpu_s: n("loader_cpu_s"),
        }
    }

    fn from_child(child: Child) -> Sent {
        let output = child.wait_with_output().expect("tallyd-load");
        assert!(output.status.success(), "tallyd-load failed");
        Sent::parse(&String::from_utf8_lossy(&output.stdout))
    }
}

/// The number after `"key":` in a flat JSON object.
fn json_number(json: &str, key: &str) -> Option<f64> {
    let pattern = format!("\"{key}\":");
    let at = json.find(&pattern)? + pattern.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// /proc and HTTP
// ---------------------------------------------------------------------------------------------

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of the whole process, in seconds.
fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let Some(close) = stat.rfind(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let utime: f64 = fields
        .get(11)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let stime: f64 = fields
        .get(12)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    (utime + stime) / clock_ticks()
}

/// Voluntary context switches (a blocking receive that found nothing, then a wake-up), summed
/// over the process's threads.
fn proc_sleeps(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// (VmRSS, VmHWM) in bytes.
fn proc_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// (bytes queued, datagrams dropped) summed over the IPv4 UDP sockets bound to `port`.
fn udp_socket_state(port: u16) -> (u64, u64) {
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    let mut queued = 0;
    let mut drops = 0;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 13 {
            continue;
        }
        let local_port = fields[1]
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if local_port != Some(port) {
            continue;
        }
        if let Some((_, rx)) = fields[4].split_once(':') {
            queued += u64::from_str_radix(rx, 16).unwrap_or(0);
        }
        drops += fields[12].parse::<u64>().unwrap_or(0);
    }
    (queued, drops)
}

struct Scrape {
    seconds: f64,
    body: Vec<u8>,
    content_type: String,
}

impl Scrape {
    /// The sum of the samples of `name` (any labels).
    fn sum(&self, name: &str) -> f64 {
        metric_sum(&self.body, |n| n == name.as_bytes())
    }
}

/// Adds up the sample values of every metric whose name passes `wanted`.
fn metric_sum(body: &[u8], wanted: impl Fn(&[u8]) -> bool) -> f64 {
    let mut total = 0.0;
    for line in body.split(|&b| b == b'\n') {
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let name_end = line
            .iter()
            .position(|&b| b == b'{' || b == b' ')
            .unwrap_or(line.len());
        if !wanted(&line[..name_end]) {
            continue;
        }
        // The value follows the last `} ` (labels may hold spaces) or the first space.
        let after_labels = match line[name_end..].first() {
            Some(b'{') => match line.iter().rposition(|&b| b == b'}') {
                Some(p) => p + 1,
                None => continue,
            },
            _ => name_end,
        };
        let value = std::str::from_utf8(&line[after_labels..])
            .ok()
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        if let Some(v) = value {
            total += v;
        }
    }
    total
}

/// GET /metrics, uncompressed, with the given Accept header; times the whole exchange.
fn scrape(addr: SocketAddr, accept: Option<&str>) -> Scrape {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect to tallyd's HTTP port");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = accept {
        request.push_str(&format!("Accept: {a}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::with_capacity(1 << 20);
    stream.read_to_end(&mut raw).expect("read the scrape");
    let seconds = start.elapsed().as_secs_f64();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "scrape failed: {}",
        head.lines().next().unwrap_or("")
    );
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .unwrap_or("")
        .trim()
        .to_string();
    let mut body = raw.split_off(split + 4);
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Scrape {
        seconds,
        body,
        content_type,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&data[..eol]).unwrap_or("0");
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = &data[(end + 2).min(data.len())..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// One load run against tallyd: what the daemon did with it.
struct Run {
    sent: Sent,
    lines_in: u64,
    drops: u64,
    cpu: f64,
    /// Voluntary context switches during the run (the receive thread going to sleep).
    sleeps: u64,
}

impl Run {
    fn lost_lines(&self) -> u64 {
        self.sent.lines.saturating_sub(self.lines_in)
    }
    fn loss_percent(&self) -> f64 {
        100.0 * self.lost_lines() as f64 / self.sent.lines.max(1) as f64
    }
    fn lines_per_cpu_second(&self) -> f64 {
        self.lines_in as f64 / self.cpu
    }
    fn micros_per_line(&self) -> f64 {
        self.cpu * 1e6 / self.lines_in.max(1) as f64
    }
    fn datagrams_per_sleep(&self) -> f64 {
        self.sent.datagrams as f64 / self.sleeps.max(1) as f64
    }
    fn loss_free(&self) -> bool {
        self.lost_lines() == 0 && self.drops == 0
    }
}

/// Drives `load` at tallyd's UDP address and measures it (tallyd's registry must be small:
/// this scrapes).
fn run_tallyd(s: &Settings, daemon: &Daemon, load: &Load) -> Run {
    run_tallyd_at(s, daemon, load, &daemon.udp.to_string())
}

/// [`run_tallyd`] at `target`, in the loader's syntax (`tcp:…`, `unix:…`).
fn run_tallyd_at(s: &Settings, daemon: &Daemon, load: &Load, target: &str) -> Run {
    let before = daemon.scrape(None);
    let lines_before = before.sum("tallyd_lines_total") as u64;
    let drops_before = daemon.kernel_drops();
    let cpu_before = daemon.cpu_seconds();
    let sleeps_before = proc_sleeps(daemon.pid);
    let sent = load.run_to(s, target);
    daemon.drain();
    let cpu = daemon.cpu_seconds() - cpu_before;
    let sleeps = proc_sleeps(daemon.pid) - sleeps_before;
    let drops = daemon.kernel_drops() - drops_before;
    let after = daemon.scrape(None);
    let lines_in = after.sum("tallyd_lines_total") as u64 - lines_before;
    daemon.forward_log();
    let run = Run {
        sent,
        lines_in,
        drops,
        cpu,
        sleeps,
    };
    eprintln!(
        "e2e:   {} at {target}: sent {} lines in {} datagrams ({:.0} dgram/s, {:.0} lines/s); received \
         {} lines, lost {} ({:.3} %), kernel drops {}; CPU {:.3} s = {:.3} µs/line, {:.0} \
         lines/CPU-s, {:.1} datagrams per wake-up (loader CPU {:.2} s)",
        daemon.name,
        run.sent.lines,
        run.sent.datagrams,
        run.sent.datagrams_per_s,
        run.sent.lines_per_s,
        run.lines_in,
        run.lost_lines(),
        run.loss_percent(),
        run.drops,
        run.cpu,
        run.micros_per_line(),
        run.lines_per_cpu_second(),
        run.datagrams_per_sleep(),
        run.sent.loader_cpu_s
    );
    run
}

/// The same load against the receive-only floor.
fn run_floor(s: &Settings, load: &Load) -> Run {
    let floor = Daemon::floor(s);
    let cpu_before = floor.cpu_seconds();
    let sleeps_before = proc_sleeps(floor.pid);
    let sent = load.run(s, floor.udp);
    floor.drain();
    let cpu = floor.cpu_seconds() - cpu_before;
    let sleeps = proc_sleeps(floor.pid) - sleeps_before;
    let drops = floor.kernel_drops();
    let json = floor.stop();
    let lines_in = json_number(&json, "lines").unwrap_or(0.0) as u64;
    let counter_sum = json_number(&json, "counter_sum").unwrap_or(0.0) as u64;
    let run = Run {
        sent,
        lines_in,
        drops,
        cpu,
        sleeps,
    };
    if run.loss_free() && counter_sum != run.sent.counter_sum {
        eprintln!(
            "e2e:   floor counter sum {counter_sum} != sent {}",
            run.sent.counter_sum
        );
    }
    eprintln!(
        "e2e:   floor:  sent {} lines ({:.0} dgram/s); received {} lost {} ({:.3} %); CPU \
         {:.3} s = {:.3} µs/line, {:.0} lines/CPU-s, {:.1} datagrams per wake-up (own rusage: \
         {} µs/line)",
        run.sent.lines,
        run.sent.datagrams_per_s,
        run.lines_in,
        run.lost_lines(),
        run.loss_percent(),
        run.cpu,
        run.micros_per_line(),
        run.lines_per_cpu_second(),
        run.datagrams_per_sleep(),
        json_number(&json, "cpu_us_per_line").map_or("?".into(), |v| format!("{v:.3}")),
    );
    run
}

/// Sum of the sample values of every counter family `<prefix>_c_m*_total`.
fn counter_total(scrape: &Scrape, prefix: &str) -> f64 {
    let start = format!("{prefix}_c_m");
    metric_sum(&scrape.body, |n| {
        n.starts_with(start.as_bytes()) && n.ends_with(b"_total")
    })
}

/// The CPU scenarios: tallyd and the floor, interleaved, `runs` times.
fn cpu_group(s: &Settings, table: &mut Table, lines_per_datagram: usize) {
    let (label, rate, sockets) = if lines_per_datagram == 1 {
        (
            format!(
                "1 line/datagram, {} tags, {}k series, {} sockets, {}k datagrams/s",
                s.tags,
                s.cpu_series / 1000,
                s.sockets1,
                s.rate1 / 1000.0
            ),
            s.rate1,
            s.sockets1,
        )
    } else {
        (
            format!(
                "{lines_per_datagram} lines/datagram, {} tags, {}k series, {}M lines/s",
                s.tags,
                s.cpu_series / 1000,
                s.rate20 * lines_per_datagram as f64 / 1e6
            ),
            s.rate20,
            1,
        )
    };
    eprintln!("e2e: == CPU per line: {label}");
    let daemon = Daemon::tallyd(s);
    let baseline = s
        .baseline
        .as_ref()
        .map(|binary| Daemon::tallyd_with(s, binary, &[], "baseline"));
    let mut load = Load::new(s, lines_per_datagram);
    load.rate = Some(rate);
    load.sockets = sockets;
    let mut tallyd_runs = Vec::new();
    let mut floor_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    let mut expected_counters = 0u64;
    let mut all_loss_free = true;
    for run in 0..s.runs {
        load.seed = 1 + run as u64;
        let t = run_tallyd(s, &daemon, &load);
        expected_counters += t.sent.counter_sum;
        all_loss_free &= t.loss_free();
        tallyd_runs.push(t);
        floor_runs.push(run_floor(s, &load));
        if let Some(baseline) = &baseline {
            baseline_runs.push(run_tallyd(s, baseline, &load));
        }
    }
    if let Some(baseline) = baseline {
        drop(baseline.stop());
    }
    // Counter totals: exact when nothing was lost.
    let final_scrape = daemon.scrape(None);
    let got = counter_total(&final_scrape, "tl") as u64;
    if all_loss_free {
        let verdict = if got == expected_counters {
            "match"
        } else {
            "MISMATCH"
        };
        table.note(format!(
            "{label}: counter totals in /metrics {verdict} what was sent ({got} vs {expected_counters})"
        ));
    }
    drop(daemon.stop());

    let t_lps: Vec<f64> = tallyd_runs.iter().map(Run::lines_per_cpu_second).collect();
    let f_lps: Vec<f64> = floor_runs.iter().map(Run::lines_per_cpu_second).collect();
    let ratio: Vec<f64> = tallyd_runs
        .iter()
        .zip(&floor_runs)
        .map(|(t, f)| t.micros_per_line() / f.micros_per_line())
        .collect();
    let floor_median = median(&f_lps).unwrap_or(0.0);
    if lines_per_datagram == 1 {
        table.add(
            &format!("tallyd lines per CPU-second, {label}"),
            Unit::Count,
            t_lps,
            &format!("≥ ½ floor = {}", thousands(floor_median / 2.0)),
            Check::AtLeast(floor_median / 2.0),
        );
    } else {
        table.add(
            &format!("tallyd lines per CPU-second, {label}"),
            Unit::Count,
            t_lps,
            "≥ 3,000,000",
            Check::AtLeast(3e6),
        );
    }
    table.add(
        &format!("tallyd CPU per line, {label}"),
        Unit::Micros,
        tallyd_runs.iter().map(Run::micros_per_line).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("floor lines per CPU-second, {label}"),
        Unit::Count,
        f_lps,
        "",
        Check::None,
    );
    table.add(
        &format!("floor CPU per line, {label}"),
        Unit::Micros,
        floor_runs.iter().map(Run::micros_per_line).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("datagrams per receiver wake-up, tallyd, {label}"),
        Unit::Decimal,
        tallyd_runs.iter().map(Run::datagrams_per_sleep).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("datagrams per receiver wake-up, floor, {label}"),
        Unit::Decimal,
        floor_runs.iter().map(Run::datagrams_per_sleep).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("tallyd CPU per line ÷ floor, {label}"),
        Unit::Times,
        ratio,
        "≤ 2×",
        Check::AtMost(2.0),
    );
    table.add(
        &format!("loss, {label}"),
        Unit::Percent,
        tallyd_runs.iter().map(Run::loss_percent).collect(),
        "0 %",
        Check::AtMost(0.0),
    );
    table.add(
        &format!("send rate achieved, {label}"),
        Unit::Rate,
        tallyd_runs.iter().map(|r| r.sent.datagrams_per_s).collect(),
        "",
        Check::None,
    );
    if !baseline_runs.is_empty() {
        add_baseline_rows(table, &label, &tallyd_runs, &baseline_runs);
    }
}

/// Flat out, 1 line per datagram: does tallyd keep up with everything one sender core sends?
fn flat_group(s: &Settings, table: &mut Table) {
    for sockets in [1usize, s.sockets1] {
        let label = if sockets == 1 {
            "1 line/datagram, flat out, one hot socket".to_string()
        } else {
            format!("1 line/datagram, flat out, {sockets} sockets")
        };
        eprintln!("e2e: == loss: {label}");
        let daemon = Daemon::tallyd(s);
        let baseline = s
            .baseline
            .as_ref()
            .map(|binary| Daemon::tallyd_with(s, binary, &[], "baseline"));
        let mut load = Load::new(s, 1);
        load.sockets = sockets;
        let mut runs = Vec::new();
        let mut baseline_runs = Vec::new();
        for run in 0..s.runs {
            load.seed = 1 + run as u64;
            runs.push(run_tallyd(s, &daemon, &load));
            if let Some(baseline) = &baseline {
                baseline_runs.push(run_tallyd(s, baseline, &load));
            }
        }
        drop(daemon.stop());
        if let Some(baseline) = baseline {
            drop(baseline.stop());
            table.add(
                &format!("baseline loss, {label}"),
                Unit::Percent,
                baseline_runs.iter().map(Run::loss_percent).collect(),
                "",
                Check::None,
            );
        }
        table.add(
            &format!("loss, {label}"),
            Unit::Percent,
            runs.iter().map(Run::loss_percent).collect(),
            "0 %",
            Check::AtMost(0.0),
        );
        table.add(
            &format!("send rate achieved, {label}"),
            Unit::Rate,
            runs.iter().map(|r| r.sent.datagrams_per_s).collect(),
            "",
            Check::None,
        );
    }
}

/// One search for the highest loss-free line rate at 20 lines per datagram.
struct Sweep {
    /// The highest rate found loss-free (the flat-out rate if nothing was lost even then).
    rate: f64,
    /// Whether nothing was lost flat out (the loader, not tallyd, was the limit).
    loader_bound: bool,
    flat_rate: f64,
    flat_lines_per_cpu_second: f64,
}

/// Flat out for `E2E_SWEEP_SECONDS`, then (if that lost anything) a bisection between 0 and
/// the flat-out rate, `E2E_SWEEP_STEPS` steps.
fn sweep(s: &Settings, daemon: &Daemon, seed: u64) -> Sweep {
    let mut load = Load::new(s, 20);
    load.duration = Some(s.sweep_seconds);
    load.seed = seed;
    // Flat out first: the most one sender core gives.
    eprintln!("e2e:  sweep ({}): flat out", daemon.name);
    let probe = run_tallyd(s, daemon, &load);
    let max = probe.sent.lines_per_s;
    let mut sweep = Sweep {
        rate: max,
        loader_bound: probe.loss_free(),
        flat_rate: max,
        flat_lines_per_cpu_second: probe.lines_per_cpu_second(),
    };
    if sweep.loader_bound {
        return sweep;
    }
    let (mut lo, mut hi) = (0.0f64, max);
    for step in 0..s.sweep_steps {
        let mid = if step == 0 {
            max / 2.0
        } else {
            (lo + hi) / 2.0
        };
        load.line_rate = Some(mid);
        eprintln!("e2e:  sweep ({}): {:.0} lines/s", daemon.name, mid);
        let r = run_tallyd(s, daemon, &load);
        // The loader must have delivered the rate asked for, or the step says nothing.
        let delivered = r.sent.lines_per_s >= 0.97 * mid;
        if r.loss_free() && delivered {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    sweep.rate = lo;
    sweep
}

/// Bisection for the highest loss-free line rate at 20 lines per datagram.
fn sweep_group(s: &Settings, table: &mut Table) {
    let label = format!(
        "20 lines/datagram, {} tags, {}k series",
        s.tags,
        s.cpu_series / 1000
    );
    eprintln!("e2e: == loss-free sweep: {label}");
    let mut sweeps = Vec::new();
    for run in 0..s.runs {
        let daemon = Daemon::tallyd(s);
        sweeps.push(sweep(s, &daemon, 100 + run as u64));
        drop(daemon.stop());
    }
    add_sweep_rows(s, table, &label, "", &sweeps);
}

/// The rows of a set of sweeps; `mode` qualifies the label (empty for plain tallyd).
fn add_sweep_rows(s: &Settings, table: &mut Table, label: &str, mode: &str, sweeps: &[Sweep]) {
    let loader_bound = sweeps.iter().filter(|w| w.loader_bound).count();
    if loader_bound > 0 {
        table.note(format!(
            "sweep{mode}: in {loader_bound} of {} runs tallyd lost nothing even flat out; the \
             figure is then the loader's rate (a lower bound)",
            s.runs
        ));
    }
    table.add(
        &format!("highest loss-free rate (lines/s), {label}{mode}"),
        Unit::Rate,
        sweeps.iter().map(|w| w.rate).collect(),
        "≥ 2,000,000/s",
        Check::AtLeast(2e6),
    );
    table.add(
        &format!("loader's flat-out rate (lines/s), {label}{mode}"),
        Unit::Rate,
        sweeps.iter().map(|w| w.flat_rate).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("tallyd lines per CPU-second at that flat-out rate, {label}{mode}"),
        Unit::Count,
        sweeps.iter().map(|w| w.flat_lines_per_cpu_second).collect(),
        "",
        Check::None,
    );
}

/// Rows comparing `E2E_BASELINE` with tallyd, run by run under the same load.
fn add_baseline_rows(table: &mut Table, label: &str, tallyd: &[Run], baseline: &[Run]) {
    table.add(
        &format!("baseline lines per CPU-second, {label}"),
        Unit::Count,
        baseline.iter().map(Run::lines_per_cpu_second).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("tallyd CPU per line ÷ baseline, {label}"),
        Unit::Times,
        tallyd
            .iter()
            .zip(baseline)
            .map(|(t, b)| t.micros_per_line() / b.micros_per_line())
            .collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("baseline loss, {label}"),
        Unit::Percent,
        baseline.iter().map(Run::loss_percent).collect(),
        "",
        Check::None,
    );
}

/// UDP, TCP and Unix datagrams into one tallyd, the same lines at the same rate, interleaved:
/// what each transport costs per line, and what it loses.
fn transports_group(s: &Settings, table: &mut Table) {
    let socket = std::env::temp_dir().join(format!("tallyd-e2e-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let daemon = Daemon::tallyd_with(
        s,
        &s.tallyd,
        &[
            "--tcp-listen".into(),
            "127.0.0.1:0".into(),
            "--unix-listen".into(),
            socket.display().to_string(),
        ],
        "tallyd",
    );
    let targets = [
        ("UDP", daemon.udp.to_string()),
        (
            "TCP",
            format!("tcp:{}", daemon.tcp.expect("a TCP listener")),
        ),
        (
            "Unix datagrams",
            format!(
                "unix:{}",
                daemon.unix.as_ref().expect("a Unix socket").display()
            ),
        ),
    ];
    let rated = format!(
        "20 lines per datagram (or write), {} tags, {}k series, {}M lines/s",
        s.tags,
        s.cpu_series / 1000,
        s.rate20 * 20.0 / 1e6
    );
    let flat = format!(
        "20 lines per datagram (or write), {} tags, {}k series, flat out",
        s.tags,
        s.cpu_series / 1000
    );
    eprintln!("e2e: == transports: {rated}; then {flat}");
    let mut at_rate: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    let mut flat_out: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for run in 0..s.runs {
        for (i, (_, target)) in targets.iter().enumerate() {
            let mut load = Load::new(s, 20);
            load.seed = 1 + run as u64;
            load.rate = Some(s.rate20);
            at_rate[i].push(run_tallyd_at(s, &daemon, &load, target));
            load.rate = None;
            flat_out[i].push(run_tallyd_at(s, &daemon, &load, target));
        }
    }
    drop(daemon.stop());
    let _ = std::fs::remove_file(&socket);
    for ((transport, _), runs) in targets.iter().zip(&at_rate) {
        table.add(
            &format!("lines per CPU-second, {transport}, {rated}"),
            Unit::Count,
            runs.iter().map(Run::lines_per_cpu_second).collect(),
            "",
            Check::None,
        );
        table.add(
            &format!("loss, {transport}, {rated}"),
            Unit::Percent,
            runs.iter().map(Run::loss_percent).collect(),
            "0 %",
            Check::AtMost(0.0),
        );
    }
    for ((transport, _), runs) in targets.iter().zip(&flat_out) {
        table.add(
            &format!("lines per CPU-second, {transport}, {flat}"),
            Unit::Count,
            runs.iter().map(Run::lines_per_cpu_second).collect(),
            "",
            Check::None,
        );
        table.add(
            &format!("send rate achieved (lines/s), {transport}, {flat}"),
            Unit::Rate,
            runs.iter().map(|r| r.sent.lines_per_s).collect(),
            "",
            Check::None,
        );
        table.add(
            &format!("loss, {transport}, {flat}"),
            Unit::Percent,
            runs.iter().map(Run::loss_percent).collect(),
            "",
            Check::None,
        );
    }
    table.note(
        "transports: a TCP stream and a blocking Unix datagram socket slow the sender down \
         instead of dropping, so their flat-out loss is 0 by construction; their send rate is \
         what tallyd kept up with"
            .into(),
    );
}

/// A UDP reuse-port group against the same number of receive threads sharing one socket
/// passed by systemd (`systemd-socket-activate`), same loads, interleaved.
fn shared_group(s: &Settings, table: &mut Table) {
    let n = s.shared_receivers;
    let config = std::env::temp_dir().join(format!("tallyd-e2e-{}.toml", std::process::id()));
    std::fs::write(&config, format!("[udp]\nreceivers = {n}\n")).expect("write a config");
    let modes = [
        (
            format!("reuse-port group of {n} sockets"),
            Daemon::tallyd_with(
                s,
                &s.tallyd,
                &["--config".into(), config.display().to_string()],
                "reuse-port",
            ),
        ),
        (
            format!("{n} threads on one passed socket"),
            Daemon::activated(s, &config),
        ),
    ];
    let rated20 = format!(
        "20 lines/datagram, {}M lines/s, {n} receive threads on CPU {}",
        s.rate20 * 20.0 / 1e6,
        s.daemon_cpu
    );
    let rated1 = format!(
        "1 line/datagram, {} sockets, {}k datagrams/s, {n} receive threads on CPU {}",
        s.sockets1,
        s.rate1 / 1000.0,
        s.daemon_cpu
    );
    eprintln!("e2e: == shared socket vs reuse-port group: {rated20}; {rated1}; sweep");
    let mut runs20: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    let mut runs1: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    let mut sweeps: Vec<Vec<Sweep>> = vec![Vec::new(), Vec::new()];
    for run in 0..s.runs {
        for (i, (_, daemon)) in modes.iter().enumerate() {
            let mut load = Load::new(s, 20);
            load.seed = 1 + run as u64;
            load.rate = Some(s.rate20);
            runs20[i].push(run_tallyd(s, daemon, &load));
            let mut load = Load::new(s, 1);
            load.seed = 1 + run as u64;
            load.rate = Some(s.rate1);
            load.sockets = s.sockets1;
            runs1[i].push(run_tallyd(s, daemon, &load));
            sweeps[i].push(sweep(s, daemon, 100 + run as u64));
        }
    }
    let names: Vec<String> = modes.iter().map(|(name, _)| name.clone()).collect();
    for (_, daemon) in modes {
        drop(daemon.stop());
    }
    let _ = std::fs::remove_file(&config);
    for (label, runs) in [(&rated20, &runs20), (&rated1, &runs1)] {
        for (name, runs) in names.iter().zip(runs) {
            table.add(
                &format!("lines per CPU-second, {name}, {label}"),
                Unit::Count,
                runs.iter().map(Run::lines_per_cpu_second).collect(),
                "",
                Check::None,
            );
            table.add(
                &format!("loss, {name}, {label}"),
                Unit::Percent,
                runs.iter().map(Run::loss_percent).collect(),
                "0 %",
                Check::AtMost(0.0),
            );
        }
        table.add(
            &format!("CPU per line, shared socket ÷ reuse-port group, {label}"),
            Unit::Times,
            runs[1]
                .iter()
                .zip(&runs[0])
                .map(|(shared, group)| shared.micros_per_line() / group.micros_per_line())
                .collect(),
            "",
            Check::None,
        );
    }
    let label = format!(
        "20 lines/datagram, {n} receive threads on CPU {}",
        s.daemon_cpu
    );
    for (name, sweeps) in names.iter().zip(&sweeps) {
        add_sweep_rows(s, table, &label, &format!(", {name}"), sweeps);
    }
}

/// Series per metric name in the big registries: 20 names, so 1M series are 50k per name, under
/// tallyd's default `max_series_per_metric`.
const BIG_FAMILIES: u64 = 20;

/// The counters (2 tags, prefix `big`) that make up the big registries.
fn big_load(s: &Settings, total: u64) -> Load {
    Load {
        lines_per_datagram: 20,
        series: total,
        families: Some(BIG_FAMILIES),
        tags: 2,
        mix: "c".into(),
        order: "seq",
        start: 0,
        rate: None,
        line_rate: Some(s.fill_rate),
        duration: None,
        lines: Some(total),
        sockets: 1,
        seed: 7,
        prefix: "big",
    }
}

/// Creates every series of the big set (each once, 20 lines/datagram, paced); again, slower, while
/// the kernel drops some. Returns the rate that worked.
fn fill(s: &Settings, daemon: &Daemon, total: u64) -> f64 {
    let mut load = big_load(s, total);
    for _ in 0..5 {
        let drops_before = daemon.kernel_drops();
        let t = Instant::now();
        let sent = load.run(s, daemon.udp);
        daemon.drain();
        let drops = daemon.kernel_drops() - drops_before;
        let rate = load.line_rate.unwrap();
        eprintln!(
            "e2e:   fill {total} series at {rate:.0} lines/s: {:.1} s, {} series touched, \
             kernel drops {drops}",
            t.elapsed().as_secs_f64(),
            sent.series_touched
        );
        if drops == 0 {
            return rate;
        }
        load.line_rate = Some(rate / 2.0);
    }
    panic!("could not create {total} series without kernel drops");
}

/// Touches the receive buffers and creates series 0 of the big set, so that "RSS before" is a
/// running daemon's, not a fresh process's.
fn warm_up(s: &Settings, daemon: &Daemon) {
    let mut load = big_load(s, 1);
    load.lines = Some(2000);
    load.line_rate = Some(100_000.0);
    load.run(s, daemon.udp);
    daemon.drain();
    std::thread::sleep(Duration::from_millis(300));
}

fn live_series(scrape: &Scrape) -> f64 {
    scrape.sum("tallyd_series")
}

/// Scrapes `n` times in each format, alternating: the median wall time of each, in ms (the
/// first scrape after new series appear is slower, see the "first scrape" rows).
fn warm_scrapes(daemon: &Daemon, n: usize) -> (f64, f64) {
    let mut text = Vec::new();
    let mut om = Vec::new();
    for _ in 0..n {
        text.push(daemon.scrape(None).seconds * 1e3);
        om.push(daemon.scrape(Some(OPENMETRICS)).seconds * 1e3);
    }
    (
        median(&text).unwrap_or(f64::NAN),
        median(&om).unwrap_or(f64::NAN),
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Accumulated runs of the big group.
#[derive(Default)]
struct BigRuns {
    mid_bytes: Vec<f64>,
    mid_text: Vec<f64>,
    mid_text_cold: Vec<f64>,
    mid_om_cold: Vec<f64>,
    big_text_cold: Vec<f64>,
    big_om_cold: Vec<f64>,
    mid_om: Vec<f64>,
    mid_text_size: Vec<f64>,
    mid_om_size: Vec<f64>,
    big_bytes: Vec<f64>,
    big_text: Vec<f64>,
    big_om: Vec<f64>,
    big_text_size: Vec<f64>,
    big_om_size: Vec<f64>,
    big_rss_after_scrape: Vec<f64>,
    fill_rate: Vec<f64>,
    ingest_loss: Vec<f64>,
    ingest_us: Vec<f64>,
    load_scrape: Vec<f64>,
    load_loss: Vec<f64>,
    load_rate: Vec<f64>,
    hot_scrape: Vec<f64>,
    hot_loss: Vec<f64>,
    hwm: Vec<f64>,
}

/// Memory per series and scrape time at `mid_series` and `big_series`, ingest over the big
/// registry, and a scrape of it while ingesting.
fn big_group(s: &Settings, table: &mut Table) {
    let mut r = BigRuns::default();
    let mid_k = s.mid_series / 1000;
    let big_label = if s.big_series.is_multiple_of(1_000_000) {
        format!("{}M", s.big_series / 1_000_000)
    } else {
        format!("{}k", s.big_series / 1000)
    };
    let k = s.load_under_scrape / 1000.0;
    for run in 0..s.runs {
        // The mid-size registry.
        eprintln!(
            "e2e: == memory and scrape, {mid_k}k series (run {})",
            run + 1
        );
        let daemon = Daemon::tallyd(s);
        warm_up(s, &daemon);
        let (rss0, _) = daemon.rss();
        fill(s, &daemon, s.mid_series);
        std::thread::sleep(Duration::from_millis(200));
        let (rss1, _) = daemon.rss();
        let text = daemon.scrape(None);
        let om = daemon.scrape(Some(OPENMETRICS));
        let live = live_series(&text);
        eprintln!(
            "e2e:   {live} series: RSS {:.1} → {:.1} MiB; scrape text {:.1} ms {} B, \
             OpenMetrics {:.1} ms {} B ({})",
            mib(rss0),
            mib(rss1),
            text.seconds * 1e3,
            text.body.len(),
            om.seconds * 1e3,
            om.body.len(),
            om.content_type
        );
        r.mid_bytes.push((rss1 as f64 - rss0 as f64) / live);
        r.mid_text_cold.push(text.seconds * 1e3);
        r.mid_om_cold.push(om.seconds * 1e3);
        let (warm_text, warm_om) = warm_scrapes(&daemon, 3);
        eprintln!(
            "e2e:   then (median of 3 each) text {warm_text:.1} ms, OpenMetrics {warm_om:.1} ms"
        );
        r.mid_text.push(warm_text);
        r.mid_om.push(warm_om);
        r.mid_text_size.push(mib(text.body.len() as u64));
        r.mid_om_size.push(mib(om.body.len() as u64));
        drop((text, om));
        drop(daemon.stop());

        // The big one.
        eprintln!(
            "e2e: == memory and scrape, {big_label} series (run {})",
            run + 1
        );
        let daemon = Daemon::tallyd(s);
        warm_up(s, &daemon);
        let (rss0, _) = daemon.rss();
        r.fill_rate.push(fill(s, &daemon, s.big_series));
        std::thread::sleep(Duration::from_millis(200));
        let (rss1, _) = daemon.rss();
        let text = daemon.scrape(None);
        let live = live_series(&text);
        let refused = text.sum("tallyd_series_refused_total");
        let om = daemon.scrape(Some(OPENMETRICS));
        let (rss2, _) = daemon.rss();
        eprintln!(
            "e2e:   {live} series ({refused} refused): RSS {:.1} → {:.1} MiB ({:.1} after \
             scrapes); scrape text {:.1} ms {} B, OpenMetrics {:.1} ms {} B",
            mib(rss0),
            mib(rss1),
            mib(rss2),
            text.seconds * 1e3,
            text.body.len(),
            om.seconds * 1e3,
            om.body.len()
        );
        if live < s.big_series as f64 {
            table.note(format!(
                "run {}: only {live} of {} series live after the fill ({refused} refused by \
                 limits)",
                run + 1,
                s.big_series
            ));
        }
        r.big_bytes.push((rss1 as f64 - rss0 as f64) / live);
        r.big_text_cold.push(text.seconds * 1e3);
        r.big_om_cold.push(om.seconds * 1e3);
        let (warm_text, warm_om) = warm_scrapes(&daemon, 3);
        eprintln!(
            "e2e:   then (median of 3 each) text {warm_text:.1} ms, OpenMetrics {warm_om:.1} ms"
        );
        r.big_text.push(warm_text);
        r.big_om.push(warm_om);
        r.big_text_size.push(mib(text.body.len() as u64));
        r.big_om_size.push(mib(om.body.len() as u64));
        r.big_rss_after_scrape.push(mib(rss2));
        let mut lines_before = om.sum("tallyd_lines_total");
        drop((text, om));

        // Updates spread over the whole big registry, first without a scrape, then with one;
        // then updates of a hot subset only, with a scrape.
        let phases = [
            (s.big_series, false),
            (s.big_series, true),
            (s.hot_series.min(s.big_series), true),
        ];
        for (phase, &(over, scraping)) in phases.iter().enumerate() {
            let mut load = big_load(s, over);
            load.order = "random";
            load.lines = None;
            load.line_rate = Some(s.load_under_scrape);
            load.seed = 11 + 3 * run as u64 + phase as u64;
            load.duration = Some(if scraping {
                s.seconds.max(3.0) + 1.0
            } else {
                s.seconds
            });
            let drops_before = daemon.kernel_drops();
            let cpu_before = daemon.cpu_seconds();
            let child = load.spawn(s, daemon.udp);
            let during = scraping.then(|| {
                std::thread::sleep(Duration::from_secs_f64(1.0));
                daemon.scrape(None)
            });
            let sent = Sent::from_child(child);
            daemon.drain();
            let cpu = daemon.cpu_seconds() - cpu_before;
            let drops = daemon.kernel_drops() - drops_before;
            let after = daemon.scrape(None);
            let lines_after = after.sum("tallyd_lines_total");
            let lines_in = lines_after - lines_before;
            lines_before = lines_after;
            let lost = (sent.lines as f64 - lines_in).max(0.0);
            let loss = 100.0 * lost / sent.lines.max(1) as f64;
            drop(after);
            let us = cpu * 1e6 / lines_in.max(1.0);
            match during {
                None => {
                    eprintln!(
                        "e2e:   {:.0} lines/s over {over} series, no scrape: sent {}, received \
                         {lines_in}, lost {lost} (kernel drops {drops}); CPU {cpu:.3} s = \
                         {us:.3} µs/line",
                        sent.lines_per_s, sent.lines
                    );
                    r.ingest_loss.push(loss);
                    r.ingest_us.push(us);
                }
                Some(during) => {
                    let (_, peak) = daemon.rss();
                    eprintln!(
                        "e2e:   {:.0} lines/s over {over} series, scrape during it: {:.1} ms, \
                         {} B; sent {} lines, received {lines_in}, lost {lost} (kernel drops \
                         {drops}); CPU {cpu:.3} s; VmHWM {:.1} MiB",
                        sent.lines_per_s,
                        during.seconds * 1e3,
                        during.body.len(),
                        sent.lines,
                        mib(peak)
                    );
                    if over == s.big_series {
                        r.load_scrape.push(during.seconds * 1e3);
                        r.load_loss.push(loss);
                        r.load_rate.push(sent.lines_per_s);
                    } else {
                        r.hot_scrape.push(during.seconds * 1e3);
                        r.hot_loss.push(loss);
                    }
                }
            }
        }
        r.hwm.push(mib(daemon.rss().1));
        drop(daemon.stop());
    }

    table.add(
        &format!("RSS per live series, {mid_k}k series (counters, 2 tags)"),
        Unit::Bytes,
        r.mid_bytes,
        "",
        Check::None,
    );
    table.add(
        &format!("RSS per live series, {big_label} series (counters, 2 tags)"),
        Unit::Bytes,
        r.big_bytes,
        "≤ 250 B",
        Check::AtMost(250.0),
    );
    table.add(
        &format!("RSS after two scrapes (first text, first OpenMetrics), {big_label} series"),
        Unit::MiB,
        r.big_rss_after_scrape,
        "",
        Check::None,
    );
    table.add(
        &format!("peak RSS (VmHWM), {big_label} series, after all scrapes"),
        Unit::MiB,
        r.hwm,
        "",
        Check::None,
    );
    table.add(
        &format!(
            "new-series rate with no kernel drop (of {}k lines/s tried first)",
            s.fill_rate / 1000.0
        ),
        Unit::Rate,
        r.fill_rate,
        "",
        Check::None,
    );
    let scrapes = [
        (
            format!("{mid_k}k"),
            "text 0.0.4",
            r.mid_text,
            r.mid_text_cold,
            r.mid_text_size,
            true,
        ),
        (
            format!("{mid_k}k"),
            "OpenMetrics",
            r.mid_om,
            r.mid_om_cold,
            r.mid_om_size,
            true,
        ),
        (
            big_label.clone(),
            "text 0.0.4",
            r.big_text,
            r.big_text_cold,
            r.big_text_size,
            false,
        ),
        (
            big_label.clone(),
            "OpenMetrics",
            r.big_om,
            r.big_om_cold,
            r.big_om_size,
            false,
        ),
    ];
    for (series, format, warm, cold, sizes, targeted) in scrapes {
        let (target_text, check) = if targeted {
            ("≤ 100 ms", Check::AtMost(100.0))
        } else {
            ("", Check::None)
        };
        table.add(
            &format!("scrape {series} series, {format}, uncompressed (median of 3 in a row)"),
            Unit::Millis,
            warm,
            target_text,
            check,
        );
        table.add(
            &format!("first scrape after the {series} series appeared, {format}"),
            Unit::Millis,
            cold,
            "",
            Check::None,
        );
        table.add(
            &format!("scrape {series} series, {format}, size"),
            Unit::MiB,
            sizes,
            "",
            Check::None,
        );
    }
    table.add(
        &format!("tallyd CPU per line, 20 lines/datagram at {k}k lines/s over {big_label} series"),
        Unit::Micros,
        r.ingest_us,
        "",
        Check::None,
    );
    table.add(
        &format!("loss at {k}k lines/s over {big_label} series, no scrape"),
        Unit::Percent,
        r.ingest_loss,
        "",
        Check::None,
    );
    table.add(
        &format!("scrape {big_label} series while ingesting {k}k lines/s (text)"),
        Unit::Millis,
        r.load_scrape,
        "≤ 1000 ms",
        Check::AtMost(1000.0),
    );
    table.add(
        &format!("loss while scraping {big_label} series at {k}k lines/s"),
        Unit::Percent,
        r.load_loss,
        "0 %",
        Check::AtMost(0.0),
    );
    table.add(
        "ingest rate achieved during that scrape",
        Unit::Rate,
        r.load_rate,
        "",
        Check::None,
    );
    let hot_k = s.hot_series.min(s.big_series) / 1000;
    table.add(
        &format!(
            "scrape {big_label} series while ingesting {k}k lines/s over {hot_k}k hot series (text)"
        ),
        Unit::Millis,
        r.hot_scrape,
        "≤ 1000 ms",
        Check::AtMost(1000.0),
    );
    table.add(
        &format!("loss while scraping {big_label} series at {k}k lines/s over {hot_k}k hot series"),
        Unit::Percent,
        r.hot_loss,
        "0 %",
        Check::AtMost(0.0),
    );
}

// ---------------------------------------------------------------------------------------------

fn pin_self(cpu: &str) {
    let Ok(cpu) = cpu.parse::<usize>() else {
        return;
    };
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity take it by pointer.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn machine() -> String {
    // SAFETY: sysconf has no preconditions. (Not available_parallelism: we are pinned.)
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rmem = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), Linux {}, net.core.rmem_max {}",
        kernel.trim(),
        rmem.trim()
    )
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too: do nothing then.
    if !std::env::args().any(|a| a == "--bench") && std::env::var_os("E2E_FORCE").is_none() {
        eprintln!("e2e: not run (use `cargo bench --bench e2e`)");
        return;
    }
    // The bench is the scraper: it too needs its CPU, so it runs again as a child in a session
    // (autogroup) of its own, at the same niceness as the daemon and the loader.
    let nice: i32 = env_or("E2E_NICE", -19);
    if nice != 0 && std::env::var_os("E2E_INNER").is_none() {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(std::env::current_exe().expect("the bench's own path"));
        command
            .args(std::env::args_os().skip(1))
            .env("E2E_INNER", "1");
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("cannot re-run the bench");
        let _ = std::fs::write(format!("/proc/{}/autogroup", child.id()), nice.to_string());
        let status = child.wait().expect("the bench");
        std::process::exit(status.code().unwrap_or(1));
    }
    let s = Settings::from_env();
    // The bench itself (the scraper) stays off the daemon's CPU.
    pin_self(&s.loader_cpu);
    let started = Instant::now();
    let load_before = load_average();
    eprintln!(
        "e2e: tallyd {} and {}; daemon on CPU {}, loader on CPU {}, nice {}; {} run(s) per figure; groups: {:?}",
        s.tallyd.display(),
        s.loader.display(),
        s.daemon_cpu,
        s.loader_cpu,
        s.nice,
        s.runs,
        s.groups
    );
    let mut table = Table::default();
    if s.wants("cpu20") {
        cpu_group(&s, &mut table, 20);
    }
    if s.wants("cpu1") {
        cpu_group(&s, &mut table, 1);
    }
    if s.wants("flat") {
        flat_group(&s, &mut table);
    }
    if s.wants("sweep") {
        sweep_group(&s, &mut table);
    }
    if s.wants("transports") {
        transports_group(&s, &mut table);
    }
    if s.wants("shared") {
        shared_group(&s, &mut table);
    }
    if s.wants("big") {
        big_group(&s, &mut table);
    }
    let load_after = load_average();
    println!();
    println!(
        "tallyd end-to-end benchmark — {}; daemon pinned to CPU {}, loader to CPU {}, both at nice {}; medians of {} run(s); {:.0} s; load average {} before, {} after",
        machine(),
        s.daemon_cpu,
        s.loader_cpu,
        s.nice,
        s.runs,
        started.elapsed().as_secs_f64(),
        load_before,
        load_after,
    );
    println!();
    print!("{}", table.render());
}
