//! A real Prometheus server (Debian's package `prometheus`) scraping one target every second,
//! for the tests that check what Prometheus itself makes of tallyd's scrapes: started on a free
//! loopback port with a temporary config and storage, queried over its HTTP API, and killed on
//! drop whatever happens (its storage and log removed; the log printed if the test failed).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempFile, http_get};

pub struct Prometheus {
    child: Child,
    web: SocketAddr,
    storage: PathBuf,
    log: PathBuf,
    /// The command line, to start it again after [`Prometheus::stop`].
    args: Vec<String>,
    _config: TempFile,
}

impl Prometheus {
    /// Prometheus scraping `target` every second, with these extra flags (such as
    /// `--enable-feature=native-histograms`).
    pub fn start(target: SocketAddr, flags: &[&str]) -> Prometheus {
        // Prometheus cannot report a port it picked, so take a free one and hand it over.
        let web = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let config = TempFile::new(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: tallyd\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        );
        let storage = config.path().with_extension("tsdb");
        let log = config.path().with_extension("log");
        let mut args = vec![
            format!("--config.file={}", config.path().display()),
            format!("--storage.tsdb.path={}", storage.display()),
            format!("--web.listen-address={web}"),
        ];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let child = spawn(&args, &log, false);
        Prometheus {
            child,
            web,
            storage,
            log,
            args,
            _config: config,
        }
    }

    /// Its storage directory (blocks made by `promtool tsdb create-blocks-from` go there,
    /// between [`Prometheus::stop`] and [`Prometheus::restart`]).
    pub fn storage(&self) -> &std::path::Path {
        &self.storage
    }

    /// The address of its web port (remote-write goes to `/api/v1/write` there).
    pub fn web(&self) -> SocketAddr {
        self.web
    }

    /// Stops it as systemd would (SIGTERM: it closes its storage cleanly), keeping the port and
    /// the storage for [`Prometheus::restart`].
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "Prometheus ignored SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts it again after [`Prometheus::stop`], on the same port and storage.
    pub fn restart(&mut self) {
        self.child = spawn(&self.args, &self.log, true);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on Prometheus's web port; an empty string while it is not listening yet.
    pub fn api(&self, path: &str) -> String {
        if TcpStream::connect(self.web).is_err() {
            return String::new();
        }
        http_get(self.web, path, &[]).text()
    }

    /// Waits up to `timeout` for Prometheus's first scrape of the target, and returns its
    /// `/api/v1/targets` answer (the target's `health` is then `up` or `down`).
    pub fn wait_scraped(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let targets = self.api("/api/v1/targets");
            if targets.contains(r#""health":"up""#) || targets.contains(r#""health":"down""#) {
                return targets;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped its target:\n{targets}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The raw answer to the instant query `promql`.
    pub fn query(&self, promql: &str) -> String {
        self.api(&format!("/api/v1/query?query={}", percent_encode(promql)))
    }

    /// The values of the instant query `promql`'s results (a vector or a scalar), in the
    /// order Prometheus gives them; empty while it has none.
    pub fn query_values(&self, promql: &str) -> Vec<f64> {
        let answer = self.query(promql);
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&answer) else {
            return Vec::new();
        };
        let data = &json["data"];
        let value_of = |value: &serde_json::Value| value[1].as_str()?.parse::<f64>().ok();
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|sample| value_of(&sample["value"]))
                .collect(),
            Some("scalar") => value_of(&data["result"]).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The raw samples, `(Unix ms, value)` in time order, of the one series `selector` picks
    /// over the last `window` (such as `5m`); empty while there are none.
    pub fn samples(&self, selector: &str, window: &str) -> Vec<(i64, f64)> {
        let answer = self.query(&format!("{selector}[{window}]"));
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        let mut samples: Vec<(i64, f64)> = json["data"]["result"][0]["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pair| {
                let t = pair[0].as_f64()?;
                let v = pair[1].as_str()?.parse().ok()?;
                Some(((t * 1000.0).round() as i64, v))
            })
            .collect();
        samples.sort_by_key(|s| s.0);
        samples
    }

    /// Polls the query `promql` for up to `timeout` until its one result satisfies `done`;
    /// returns that value, or panics with what Prometheus last answered.
    pub fn wait_for_value(
        &self,
        promql: &str,
        timeout: Duration,
        done: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            if let [value] = self.query_values(promql)[..]
                && done(value)
            {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "after {timeout:?}, Prometheus answers {promql:?} with:\n{}\n{}",
                self.query(promql),
                self.api("/api/v1/targets")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs `prometheus` with `args`, its log going to `log` (appended to on a restart).
fn spawn(args: &[String], log: &std::path::Path, append: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(log)
        .unwrap();
    Command::new("prometheus")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("run prometheus")
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- prometheus log -----\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.storage);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `text` as a URL query value: everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
