//! What the benches that run the real binaries share (`e2e.rs`, `api.rs`): finding the release
//! binaries, pinning a process to a CPU at a raised priority in a session of its own, starting
//! tallyd and reading its ready line, `/proc` figures (CPU time, RSS, context switches, the UDP
//! socket's queue and drops), scraping `/metrics`, driving `tallyd-load send`, one UDP load run
//! measured against tallyd, and the Markdown table of medians.
//!
//! Every bench reads its knobs under its own prefix (`E2E_…`, `API_…`); [`Setup`] holds the ones
//! they have in common.

// Each bench uses a different part of this.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Settings every bench has
// ---------------------------------------------------------------------------------------------

/// The pinning, the priority and the binaries, read from `<PREFIX>_DAEMON_CPU`,
/// `<PREFIX>_LOADER_CPU`, `<PREFIX>_NICE`, `<PREFIX>_TALLYD` and `<PREFIX>_LOAD`.
#[derive(Clone)]
pub struct Setup {
    /// What the bench's stderr lines start with (`e2e`, `api`).
    pub tag: &'static str,
    pub daemon_cpu: String,
    pub loader_cpu: String,
    pub nice: i32,
    pub tallyd: PathBuf,
    pub loader: PathBuf,
}

impl Setup {
    pub fn from_env(prefix: &str, tag: &'static str) -> Setup {
        let (tallyd, loader) = binaries(prefix, tag);
        Setup {
            tag,
            daemon_cpu: env_or(&format!("{prefix}_DAEMON_CPU"), "0".to_string()),
            loader_cpu: env_or(&format!("{prefix}_LOADER_CPU"), "1".to_string()),
            nice: nice(prefix),
            tallyd,
            loader,
        }
    }
}

fn nice(prefix: &str) -> i32 {
    env_or(&format!("{prefix}_NICE"), -19)
}

/// Whether this process is to run the bench. `cargo bench` passes `--bench`; `cargo test
/// --benches` runs the bench too, and then it does nothing (`<PREFIX>_FORCE` runs it anyway).
///
/// The bench itself (the HTTP client, the scraper) needs its CPU too: unless `<PREFIX>_NICE` is
/// 0, this re-runs the bench as a child in a session (autogroup) of its own at that niceness,
/// like the daemon and the loader, and exits with the child's status.
pub fn enter(prefix: &str, tag: &str) -> bool {
    if !std::env::args().any(|a| a == "--bench")
        && std::env::var_os(format!("{prefix}_FORCE")).is_none()
    {
        eprintln!("{tag}: not run (use `cargo bench --bench {tag}`)");
        return false;
    }
    let nice = nice(prefix);
    let inner = format!("{prefix}_INNER");
    if nice != 0 && std::env::var_os(&inner).is_none() {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(std::env::current_exe().expect("the bench's own path"));
        command.args(std::env::args_os().skip(1)).env(&inner, "1");
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
    true
}

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not valid")),
        _ => default,
    }
}

/// The release binaries: cargo's own paths when it provides them, else `target/release`
/// (built with `cargo build --release --bins` if missing). `<PREFIX>_TALLYD` / `<PREFIX>_LOAD`
/// override.
fn binaries(prefix: &str, tag: &str) -> (PathBuf, PathBuf) {
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
    let tallyd = pick(
        &format!("{prefix}_TALLYD"),
        option_env!("CARGO_BIN_EXE_tallyd"),
        "tallyd",
    );
    let loader = pick(
        &format!("{prefix}_LOAD"),
        option_env!("CARGO_BIN_EXE_tallyd-load"),
        "tallyd-load",
    );
    if !tallyd.exists() || !loader.exists() {
        eprintln!("{tag}: building the release binaries (cargo build --release --bins)");
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
pub enum Unit {
    Count,
    Rate,
    Micros,
    Percent,
    /// A share in whole percent (CPU use).
    Share,
    Millis,
    /// Milliseconds with two decimals, for latencies under a few ms.
    FineMillis,
    Bytes,
    MiB,
    Times,
    Decimal,
}

#[derive(Clone, Copy)]
pub enum Check {
    None,
    AtLeast(f64),
    AtMost(f64),
}

pub struct Figure {
    pub name: String,
    pub unit: Unit,
    pub runs: Vec<f64>,
    pub target: String,
    pub check: Check,
}

pub struct Table {
    pub tag: &'static str,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl Table {
    pub fn new(tag: &'static str) -> Table {
        Table {
            tag,
            figures: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn add(&mut self, name: &str, unit: Unit, runs: Vec<f64>, target: &str, check: Check) {
        self.figures.push(Figure {
            name: name.to_string(),
            unit,
            runs,
            target: target.to_string(),
            check,
        });
    }

    pub fn note(&mut self, text: String) {
        eprintln!("{}: note: {text}", self.tag);
        self.notes.push(text);
    }

    pub fn render(&self) -> String {
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

pub fn median(values: &[f64]) -> Option<f64> {
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

/// The `p`-th percentile (0..=100) by nearest rank.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

pub fn thousands(value: f64) -> String {
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

pub fn format_value(value: f64, unit: Unit) -> String {
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
        Unit::Share => format!("{value:.0} %"),
        Unit::Millis => format!("{value:.1} ms"),
        Unit::FineMillis => format!("{value:.2} ms"),
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
pub struct Daemon {
    pub child: Child,
    pub pid: u32,
    pub udp: SocketAddr,
    pub http: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub unix: Option<PathBuf>,
    pub log: mpsc::Receiver<String>,
    pub name: &'static str,
    /// The bench's tag, for what this prints.
    pub tag: &'static str,
}

/// `nice -n <PREFIX_NICE> taskset -c <cpu> <program>` (`nice` and `taskset` exec, so the pid is
/// the program's), in a session of its own (so, with autogroup scheduling, a scheduling group of
/// its own, which [`prioritise`] raises), and sent SIGTERM if the bench dies.
pub fn pinned(s: &Setup, cpu: &str, program: &Path) -> Command {
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
pub fn prioritise(s: &Setup, pid: u32) {
    if s.nice != 0 {
        let _ = std::fs::write(format!("/proc/{pid}/autogroup"), s.nice.to_string());
    }
}

pub fn strip_ansi(line: &str) -> String {
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
    /// tallyd on free loopback ports, with `args` added to its command line.
    pub fn tallyd(s: &Setup, args: &[std::ffi::OsString]) -> Daemon {
        Daemon::tallyd_with(s, &s.tallyd, args, "tallyd")
    }

    /// tallyd with one API token (`secret`, every scope, for `tenant`) and its store in
    /// `dir/data`; its config is written to `dir/tallyd.toml`.
    pub fn tallyd_with_token(s: &Setup, dir: &Path, secret: &str, tenant: &str) -> Daemon {
        use sha2::Digest;
        let config = dir.join("tallyd.toml");
        let sha = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
        std::fs::write(
            &config,
            format!(
                "[[api.tokens]]\nid = \"bench\"\nsecret_sha256 = \"{sha}\"\ntenant = \
                 \"{tenant}\"\nscopes = [\"read\", \"write\", \"admin\"]\n"
            ),
        )
        .expect("write the config");
        let args: Vec<std::ffi::OsString> = vec![
            "--config".into(),
            config.into(),
            "--data-dir".into(),
            dir.join("data").into(),
        ];
        Daemon::tallyd(s, &args)
    }

    /// `binary` (tallyd, or a baseline build of it) on free loopback ports, with `args` added.
    pub fn tallyd_with(
        s: &Setup,
        binary: &Path,
        args: &[std::ffi::OsString],
        name: &'static str,
    ) -> Daemon {
        let mut command = pinned(s, &s.daemon_cpu, binary);
        command.args([
            "--udp-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ]);
        command.args(args);
        Daemon::start(s, command, name, None)
    }

    /// tallyd started by `systemd-socket-activate` on a UDP socket it passes as `statsd`, which
    /// tallyd's receive threads then share; `config` sets their number.
    pub fn activated(s: &Setup, config: &Path) -> Daemon {
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

    pub fn floor(s: &Setup) -> Daemon {
        let mut command = pinned(s, &s.daemon_cpu, &s.loader);
        command.args(["floor", "--listen", "127.0.0.1:0"]);
        Daemon::start(s, command, "floor", None)
    }

    /// Runs `command` until its ready line; `trigger` gets one datagram once a launcher that
    /// waits for traffic before starting tallyd has bound it.
    pub fn start(
        s: &Setup,
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
                eprintln!("{}: {name}: {line}", s.tag);
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
                tag: s.tag,
            };
        }
    }

    pub fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(self.pid)
    }

    pub fn rss(&self) -> (u64, u64) {
        proc_rss(self.pid)
    }

    pub fn port(&self) -> u16 {
        self.udp.port()
    }

    /// Waits until the socket queue(s) on our port are empty and the process stops using CPU.
    pub fn drain(&self) {
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
        eprintln!("{}: {} did not drain within 120 s", self.tag, self.name);
    }

    pub fn kernel_drops(&self) -> u64 {
        udp_socket_state(self.port()).1
    }

    pub fn scrape(&self, accept: Option<&str>) -> Scrape {
        scrape(self.http.expect("no http address"), accept)
    }

    pub fn forward_log(&self) {
        while let Ok(line) = self.log.try_recv() {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("{}: {}: {line}", self.tag, self.name);
            }
        }
    }

    /// SIGTERM, then the process's stdout (the floor's JSON).
    pub fn stop(mut self) -> String {
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
pub struct Load {
    pub lines_per_datagram: usize,
    pub series: u64,
    pub families: Option<u64>,
    pub tags: usize,
    pub mix: String,
    pub order: &'static str,
    pub start: u64,
    pub rate: Option<f64>,
    pub line_rate: Option<f64>,
    pub duration: Option<f64>,
    pub lines: Option<u64>,
    pub sockets: usize,
    pub seed: u64,
    pub prefix: &'static str,
}

impl Load {
    /// `series` random series of `tags` tags each, types weighted by `mix`, flat out for
    /// `seconds`.
    pub fn new(
        lines_per_datagram: usize,
        series: u64,
        tags: usize,
        mix: &str,
        seconds: f64,
    ) -> Load {
        Load {
            lines_per_datagram,
            series,
            families: None,
            tags,
            mix: mix.to_string(),
            order: "random",
            start: 0,
            rate: None,
            line_rate: None,
            duration: Some(seconds),
            lines: None,
            sockets: 1,
            seed: 1,
            prefix: "tl",
        }
    }

    /// `target` in the loader's syntax: `HOST:PORT` (UDP), `tcp:HOST:PORT`, `unix:PATH`.
    pub fn command(&self, s: &Setup, target: &str) -> Command {
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

    pub fn run(&self, s: &Setup, target: SocketAddr) -> Sent {
        self.run_to(s, &target.to_string())
    }

    pub fn run_to(&self, s: &Setup, target: &str) -> Sent {
        Sent::from_child(self.spawn_to(s, target))
    }

    pub fn spawn(&self, s: &Setup, target: SocketAddr) -> Child {
        self.spawn_to(s, &target.to_string())
    }

    pub fn spawn_to(&self, s: &Setup, target: &str) -> Child {
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
pub struct Sent {
    pub datagrams: u64,
    pub lines: u64,
    pub counter_sum: u64,
    pub series_touched: u64,
    pub lines_per_s: f64,
    pub datagrams_per_s: f64,
    pub loader_cpu_s: f64,
}

impl Sent {
    pub fn parse(json: &str) -> Sent {
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

    pub fn from_child(child: Child) -> Sent {
        let output = child.wait_with_output().expect("tallyd-load");
        assert!(output.status.success(), "tallyd-load failed");
        Sent::parse(&String::from_utf8_lossy(&output.stdout))
    }
}

/// The number after `"key":` in a flat JSON object.
pub fn json_number(json: &str, key: &str) -> Option<f64> {
    let pattern = format!("\"{key}\":");
    let at = json.find(&pattern)? + pattern.len();
    let rest = &json[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// /proc and HTTP
// ---------------------------------------------------------------------------------------------

pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of the whole process, in seconds.
pub fn proc_cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
}

/// utime + stime of a `/proc/…/stat` line, in seconds.
fn stat_cpu_seconds(stat: &str) -> f64 {
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

/// The names (`/proc/<pid>/task/<tid>/comm`) of tallyd's UDP receive threads start so.
pub const RECEIVE_THREADS: &str = "tallyd-udp";

/// utime + stime, in seconds, of the process's threads whose name starts with `prefix`.
pub fn threads_cpu_seconds(pid: u32, prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return f64::NAN;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .map(|t| {
            stat_cpu_seconds(&std::fs::read_to_string(t.path().join("stat")).unwrap_or_default())
        })
        .sum()
}

/// Voluntary context switches (a blocking receive that found nothing, then a wake-up), summed
/// over the process's threads.
pub fn proc_sleeps(pid: u32) -> u64 {
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
pub fn proc_rss(pid: u32) -> (u64, u64) {
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
pub fn udp_socket_state(port: u16) -> (u64, u64) {
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

pub struct Scrape {
    pub seconds: f64,
    pub body: Vec<u8>,
    pub content_type: String,
}

impl Scrape {
    /// The sum of the samples of `name` (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        metric_sum(&self.body, |n| n == name.as_bytes())
    }
}

/// Adds up the sample values of every metric whose name passes `wanted`.
pub fn metric_sum(body: &[u8], wanted: impl Fn(&[u8]) -> bool) -> f64 {
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
pub fn scrape(addr: SocketAddr, accept: Option<&str>) -> Scrape {
    get(addr, "/metrics", accept)
}

/// GET `path` on a connection of its own (connect to last byte timed), which must answer 200.
pub fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> Scrape {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP port");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(a) = accept {
        request.push_str(&format!("Accept: {a}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::with_capacity(1 << 20);
    stream.read_to_end(&mut raw).expect("read the answer");
    let seconds = start.elapsed().as_secs_f64();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 200"),
        "GET {path} failed: {}: {}",
        head.lines().next().unwrap_or(""),
        String::from_utf8_lossy(&raw[split..])
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

pub fn dechunk(mut data: &[u8]) -> Vec<u8> {
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
// UDP load runs
// ---------------------------------------------------------------------------------------------

/// One load run against tallyd: what the daemon did with it.
pub struct Run {
    pub sent: Sent,
    pub lines_in: u64,
    pub drops: u64,
    pub cpu: f64,
    /// CPU time of the UDP receive threads alone (tallyd's `tallyd-udp-*`; the floor's whole
    /// process): what the UDP path cost, whatever else the process did meanwhile.
    pub receiver_cpu: f64,
    /// Voluntary context switches during the run (the receive thread going to sleep).
    pub sleeps: u64,
}

impl Run {
    pub fn lost_lines(&self) -> u64 {
        self.sent.lines.saturating_sub(self.lines_in)
    }
    pub fn loss_percent(&self) -> f64 {
        100.0 * self.lost_lines() as f64 / self.sent.lines.max(1) as f64
    }
    pub fn lines_per_cpu_second(&self) -> f64 {
        self.lines_in as f64 / self.cpu
    }
    pub fn micros_per_line(&self) -> f64 {
        self.cpu * 1e6 / self.lines_in.max(1) as f64
    }
    pub fn lines_per_receiver_cpu_second(&self) -> f64 {
        self.lines_in as f64 / self.receiver_cpu
    }
    pub fn datagrams_per_sleep(&self) -> f64 {
        self.sent.datagrams as f64 / self.sleeps.max(1) as f64
    }
    pub fn loss_free(&self) -> bool {
        self.lost_lines() == 0 && self.drops == 0
    }
}

/// One search for the highest loss-free line rate of a load.
pub struct Sweep {
    /// The highest rate found loss-free (the flat-out rate if nothing was lost even then).
    pub rate: f64,
    /// Whether nothing was lost flat out (the loader, not tallyd, was the limit).
    pub loader_bound: bool,
    pub flat_rate: f64,
    pub flat_lines_per_cpu_second: f64,
}

/// `load` (its `duration` per step) flat out, then (if that lost anything) a bisection of its
/// line rate between 0 and the flat-out rate, `steps` steps. A step counts as loss-free only if
/// nothing was lost and the loader delivered ≥ 97 % of the rate asked.
pub fn sweep(s: &Setup, daemon: &Daemon, load: &Load, steps: usize) -> Sweep {
    let mut load = load.clone();
    load.rate = None;
    load.line_rate = None;
    // Flat out first: the most one sender core gives.
    eprintln!("{}:  sweep ({}): flat out", s.tag, daemon.name);
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
    for step in 0..steps {
        let mid = if step == 0 {
            max / 2.0
        } else {
            (lo + hi) / 2.0
        };
        load.line_rate = Some(mid);
        eprintln!("{}:  sweep ({}): {:.0} lines/s", s.tag, daemon.name, mid);
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

/// Drives `load` at tallyd's UDP address and measures it (tallyd's registry must be small:
/// this scrapes).
pub fn run_tallyd(s: &Setup, daemon: &Daemon, load: &Load) -> Run {
    run_tallyd_at(s, daemon, load, &daemon.udp.to_string())
}

/// [`run_tallyd`] at `target`, in the loader's syntax (`tcp:…`, `unix:…`).
pub fn run_tallyd_at(s: &Setup, daemon: &Daemon, load: &Load, target: &str) -> Run {
    measure_udp(s, daemon, || load.run_to(s, target))
}

/// Measures what tallyd did with the UDP load `send` sends (it returns once the loader is done,
/// and whatever else it started has stopped): lines counted, kernel drops, CPU of the process
/// and of its receive threads, from before `send` until tallyd has drained its socket.
pub fn measure_udp(s: &Setup, daemon: &Daemon, send: impl FnOnce() -> Sent) -> Run {
    let before = daemon.scrape(None);
    let lines_before = before.sum("tallyd_lines_total") as u64;
    let drops_before = daemon.kernel_drops();
    let cpu_before = daemon.cpu_seconds();
    let receiver_before = threads_cpu_seconds(daemon.pid, RECEIVE_THREADS);
    let sleeps_before = proc_sleeps(daemon.pid);
    let sent = send();
    daemon.drain();
    let cpu = daemon.cpu_seconds() - cpu_before;
    let receiver_cpu = threads_cpu_seconds(daemon.pid, RECEIVE_THREADS) - receiver_before;
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
        receiver_cpu,
        sleeps,
    };
    eprintln!(
        "{}:   {}: sent {} lines in {} datagrams ({:.0} dgram/s, {:.0} lines/s); received \
         {} lines, lost {} ({:.3} %), kernel drops {}; CPU {:.3} s = {:.3} µs/line, {:.0} \
         lines/CPU-s (receive threads {:.3} s, {:.0} lines/CPU-s), {:.1} datagrams per \
         wake-up (loader CPU {:.2} s)",
        s.tag,
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
        run.receiver_cpu,
        run.lines_per_receiver_cpu_second(),
        run.datagrams_per_sleep(),
        run.sent.loader_cpu_s
    );
    run
}

// ---------------------------------------------------------------------------------------------
// The bench's own process and the machine
// ---------------------------------------------------------------------------------------------

pub fn pin_self(cpu: &str) {
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

pub fn machine() -> String {
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

/// Prints `table` on stdout under one line: `title` — the machine; `context` (may be empty);
/// the pinning and priority; the runs; the time taken since `started`; the load average then
/// and now (high means other work shared the CPUs).
pub fn print_table(
    title: &str,
    context: &str,
    setup: &Setup,
    runs: usize,
    started: Instant,
    load_before: &str,
    table: &Table,
) {
    println!();
    println!(
        "{title} — {}; {context}daemon pinned to CPU {}, loaders to CPU {}, all at nice {}; \
         medians of {runs} run(s); {:.0} s; load average {load_before} before, {} after",
        machine(),
        setup.daemon_cpu,
        setup.loader_cpu,
        setup.nice,
        started.elapsed().as_secs_f64(),
        load_average(),
    );
    println!();
    print!("{}", table.render());
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
