//! The history benchmark (issue 12's targets): queries of StatsD history through the real
//! `tallyd` binary, the same queries answered by a real Prometheus 2.42 holding the same data,
//! and what the history sampler costs a daemon with 100k history series.
//!
//! The data directory is filled through the library's own path: the bench records synthetic
//! values into a [`Registry`], takes each 10 s tick's samples with the daemon's [`Sampler`] at
//! timestamps of its choosing, and sends them to a [`Store`] as the daemon's history task does
//! (`Write::Samples`, rolled up into the coarser tiers as their intervals close), so the file
//! is in the real format. Then tallyd is started on it. Prometheus gets the same data through
//! `tallyd history export` and `promtool tsdb create-blocks-from openmetrics`.
//!
//! `cargo bench --bench history`; knobs (`HIST_ONLY=…`, …) are in `benches/README.md`.

mod common;

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{
    Check, Daemon, Load, Setup, Table, Unit, env_or, get, load_average, median, percentile,
    pin_self, sweep, thousands,
};
use tallyd::history::History;
use tallyd::history::sampler::Sampler;
use tallyd::record::Recorder;
use tallyd::registry::{Kind, Registry, Update};
use tallyd::store::tiers::SampleBatch;
use tallyd::store::{Store, StoreError, Write, Written};

const BASE: &str = "/api/v1/observability/custom-metrics";
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
/// The finest tier of the default `[history]`: the sampler's interval.
const TICK_MS: i64 = 10_000;

/// The counter with one series over `HIST_DAYS` days (its family; the API names it
/// `bench_requests_total`).
const COUNTER: &str = "bench_requests";
/// The gauge with `HIST_SERIES` series over the last day.
const GAUGE: &str = "bench_load";

/// The query part's config: the default `[history]` tiers (10 s for a day, 1 min for 15 days,
/// 1 h for a year) and the two metrics.
const QUERY_CONFIG: &str = r#"
[[metric]]
name = "bench_requests"
type = "counter"
help = "Requests (one series, 30 days)."
history = true

[[metric]]
name = "bench_load"
type = "gauge"
help = "Load (1,000 series, one day)."
history = true
"#;

const GROUPS: [&str; 3] = ["query", "prometheus", "sampler"];

struct Knobs {
    base: Setup,
    /// The query groups' setup: tallyd and Prometheus on `HIST_QUERY_CPU` (default every CPU,
    /// as on a host of their own: tallyd scans a large query on several threads, and the
    /// client only waits), not on the sampler group's one pinned CPU.
    query_base: Setup,
    groups: Vec<String>,
    /// Timed queries per figure, after `warmup` untimed ones.
    queries: usize,
    warmup: usize,
    series: usize,
    days: i64,
    sampler_series: u64,
    sampler_families: u64,
    idle_seconds: f64,
    sweep_steps: usize,
    sweep_seconds: f64,
    data_parent: PathBuf,
}

impl Knobs {
    fn from_env() -> Knobs {
        let groups = env_or("HIST_ONLY", String::new());
        let groups: Vec<String> = match groups.trim() {
            "" => GROUPS.iter().map(|g| g.to_string()).collect(),
            list => list.split(',').map(|g| g.trim().to_string()).collect(),
        };
        for group in &groups {
            assert!(
                GROUPS.contains(&group.as_str()),
                "HIST_ONLY: unknown group {group:?} (groups: {GROUPS:?})"
            );
        }
        let base = Setup::from_env("HIST", "history");
        let every_cpu = format!(
            "0-{}",
            std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
        );
        Knobs {
            query_base: Setup {
                daemon_cpu: env_or("HIST_QUERY_CPU", every_cpu),
                ..base.clone()
            },
            base,
            groups,
            queries: env_or("HIST_QUERIES", 30),
            warmup: env_or("HIST_WARMUP", 5),
            series: env_or("HIST_SERIES", 1000),
            days: env_or("HIST_DAYS", 30),
            sampler_series: env_or("HIST_SAMPLER_SERIES", 100_000),
            sampler_families: env_or("HIST_SAMPLER_FAMILIES", 10),
            idle_seconds: env_or("HIST_IDLE_SECONDS", 60.0),
            sweep_steps: env_or("HIST_SWEEP_STEPS", 4),
            sweep_seconds: env_or("HIST_SWEEP_SECONDS", 10.0),
            data_parent: PathBuf::from(env_or(
                "HIST_DATA_DIR",
                std::env::temp_dir().display().to_string(),
            )),
        }
    }

    fn wants(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

// ---------------------------------------------------------------------------------------------
// The data
// ---------------------------------------------------------------------------------------------

/// The counter's increase in the interval starting at `ts` (whole numbers: the sums are exact).
fn increase(ts: i64) -> f64 {
    ((ts / TICK_MS).wrapping_mul(31).wrapping_add(7)).rem_euclid(10) as f64
}

/// Gauge series `series`'s value in the interval starting at `ts`: multiples of 1/8, so every
/// sum either side makes is exact.
fn level(series: usize, ts: i64) -> f64 {
    ((series as i64 * 7 + (ts / TICK_MS) * 13).rem_euclid(1000)) as f64 / 8.0
}

fn host(series: usize) -> String {
    format!("h{series:04}")
}

/// What was written.
struct Filled {
    /// The first interval's start and the end of the last one.
    first_ms: i64,
    end_ms: i64,
    gauge_first_ms: i64,
    samples: u64,
    seconds: f64,
}

/// Fills `dir` with `days` of the counter's one series and the last day of `series` gauge
/// series, ending at the last whole 10 s interval before now.
fn fill(dir: &Path, settings: &tallyd::config::Settings, days: i64, series: usize) -> Filled {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let history = History::new(&settings.history);
    let tiers: Arc<[tallyd::store::tiers::Tier]> = Arc::from(history.tiers());
    assert_eq!(tiers[0].resolution_ms, TICK_MS, "the default tiers");
    let registry = Arc::new(Registry::new(settings.registry.clone()));
    let recorder = Recorder::for_registry(&registry);
    let mut sampler = Sampler::new(Arc::clone(&tiers));
    let end_ms = tiers[0].floor(tallyd::custom::time::now_ms());
    // Whole hours, so the oldest hour's rollup is whole too.
    let first_ms = end_ms - end_ms.rem_euclid(HOUR_MS) - days * DAY_MS;
    let gauge_first_ms = end_ms - DAY_MS;
    let hosts: Vec<String> = (0..series).map(host).collect();
    let samples = runtime.block_on(async {
        let store = Store::open(dir).expect("open the bench's store");
        let metrics = history.resolve(&store).await.expect("the history rows");
        let mut samples = 0u64;
        let mut queued = Vec::new();
        let mut ts = first_ms;
        while ts < end_ms {
            recorder
                .record(COUNTER, Kind::Counter, [("job", "api")], {
                    Update::Add(increase(ts))
                })
                .expect("record the counter");
            if ts >= gauge_first_ms {
                for (i, host) in hosts.iter().enumerate() {
                    recorder
                        .record(
                            GAUGE,
                            Kind::Gauge,
                            [("host", host.as_str())],
                            Update::Set(level(i, ts)),
                        )
                        .expect("record the gauge");
                }
            }
            // The tick just after the interval ends samples it, as the daemon's does.
            let batch = sampler.sample(&registry, &metrics, ts + TICK_MS + 5);
            assert_eq!(batch.ts_ms, ts);
            samples += batch.rows.len() as u64;
            queued.push(batch);
            if queued.len() == tallyd::store::MAX_GROUP {
                write_all(&store, std::mem::take(&mut queued)).await;
            }
            ts += TICK_MS;
        }
        write_all(&store, queued).await;
        // What the daemon's first expiry would remove (the 10 s tier past its day).
        history
            .expire(&store, tallyd::custom::time::now_ms())
            .await
            .expect("expire");
        samples
    });
    Filled {
        first_ms,
        end_ms,
        gauge_first_ms,
        samples,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Sends `batches` to the store all at once, in order, and waits for every answer: queued
/// together, the writer commits them in groups (up to its `MAX_GROUP`) in that order, so each
/// rollup sees the samples of the interval it closes.
async fn write_all(store: &Store, batches: Vec<SampleBatch>) {
    type Pending<'a> = Pin<Box<dyn Future<Output = Result<Written, StoreError>> + 'a>>;
    let mut writes: Vec<Option<Pending<'_>>> = batches
        .into_iter()
        .map(|batch| Some(Box::pin(store.write(Write::Samples(Box::new(batch)))) as Pending<'_>))
        .collect();
    // A join of its own: each is first polled in order, so each is queued in order.
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for slot in &mut writes {
            if let Some(write) = slot {
                match write.as_mut().poll(cx) {
                    Poll::Ready(result) => {
                        result.expect("a history write");
                        *slot = None;
                    }
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Timing queries
// ---------------------------------------------------------------------------------------------

/// Waits at least `first` (past the daemon's first sampling tick, which comes within 10 s of
/// its start and may close a bucket to compact; the compaction of what the fill left starts at
/// once) and until `daemon` has used under 2 % of a CPU for two seconds running (at most five
/// minutes), and answers how long that took in seconds.
fn wait_until_idle(daemon: &Daemon, first: Duration) -> f64 {
    let started = Instant::now();
    let mut quiet = 0;
    let mut cpu = daemon.cpu_seconds();
    while (quiet < 2 || started.elapsed() < first) && started.elapsed() < Duration::from_secs(300) {
        std::thread::sleep(Duration::from_secs(1));
        let now = daemon.cpu_seconds();
        quiet = if now - cpu < 0.02 { quiet + 1 } else { 0 };
        cpu = now;
    }
    started.elapsed().as_secs_f64()
}

/// The bench's data directory, removed at the end (also when a check panics) unless kept.
struct Kept {
    dir: Option<tempfile::TempDir>,
    keep: bool,
}

impl Kept {
    fn path(&self) -> &Path {
        self.dir.as_ref().expect("the data directory").path()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take().filter(|_| self.keep) {
            let _kept = dir.keep();
        }
    }
}

/// Query times in ms: `warmup` untimed, then `queries` timed, each a new connection.
fn time_queries(s: &Knobs, addr: SocketAddr, path: &str) -> (Vec<f64>, Vec<u8>) {
    let mut body = Vec::new();
    for _ in 0..s.warmup {
        body = get(addr, path, None).body;
    }
    let times = (0..s.queries)
        .map(|_| {
            let answer = get(addr, path, None);
            body = answer.body;
            answer.seconds * 1e3
        })
        .collect();
    (times, body)
}

fn add_times(table: &mut Table, label: &str, times: &[f64], target: &str, check: Check) {
    let each: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    eprintln!("history:   {label}: each (ms): {}", each.join(" "));
    eprintln!(
        "history:   {label}: median {:.2} ms, p90 {:.2} ms, min {:.2}, max {:.2}",
        median(times).unwrap_or(f64::NAN),
        percentile(times, 90.0).unwrap_or(f64::NAN),
        percentile(times, 0.0).unwrap_or(f64::NAN),
        percentile(times, 100.0).unwrap_or(f64::NAN),
    );
    // One figure of many queries: the median and the p90 of them (each query is on stderr).
    table.add(
        &format!("{label}, median of {}", times.len()),
        Unit::FineMillis,
        vec![median(times).unwrap_or(f64::NAN)],
        target,
        check,
    );
    table.add(
        &format!("{label}, p90"),
        Unit::FineMillis,
        vec![percentile(times, 90.0).unwrap_or(f64::NAN)],
        "",
        Check::None,
    );
}

/// tallyd's answer: series → (bin start ms, value).
fn tallyd_series(body: &[u8]) -> Vec<(String, Vec<(i64, f64)>)> {
    let answer: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
    let series = answer["series"].as_array().expect("series");
    series
        .iter()
        .map(|s| {
            let name = s["labels"].to_string();
            let points = s["points"]
                .as_array()
                .expect("points")
                .iter()
                .map(|p| {
                    let at = tallyd::custom::time::parse_instant(
                        p["timestamp"].as_str().expect("a timestamp"),
                    )
                    .expect("an instant");
                    (at, p["value"].as_f64().expect("a value"))
                })
                .collect();
            (name, points)
        })
        .collect()
}

/// The average of gauge series `series` over `[from, from + step)`, as sent.
fn expected_average(series: usize, from: i64, step: i64) -> f64 {
    let values: Vec<f64> = (0..step / TICK_MS)
        .map(|k| level(series, from + k * TICK_MS))
        .collect();
    values.iter().sum::<f64>() / values.len() as f64
}

/// The query endpoint's path for `name` over `[from, to)` (whole seconds).
fn query_path(name: &str, (from, to): (i64, i64), step: &str, aggregation: &str) -> String {
    format!(
        "{BASE}/{name}/query?start={}&end={}&step={step}&aggregation={aggregation}",
        from / 1000,
        to / 1000
    )
}

struct QueryRun {
    /// The 1,000-series query's median, for the ratio with Prometheus.
    many_median: f64,
    /// The range of the 1,000-series query, for Prometheus's.
    many_range: (i64, i64),
}

fn query_config(dir: &Path) -> PathBuf {
    let path = dir.join("history-bench.toml");
    std::fs::write(&path, QUERY_CONFIG).expect("write the bench's config");
    path
}

fn query_group(s: &Knobs, table: &mut Table, dir: &Path) -> QueryRun {
    let config = query_config(dir);
    let settings = tallyd::config::Settings::parse(QUERY_CONFIG, &config).expect("the config");
    eprintln!(
        "history: == filling {}: {COUNTER} (1 series) over {} days, {GAUGE} ({} series) over \
         the last day, every 10 s",
        dir.display(),
        s.days,
        s.series
    );
    let filled = fill(dir, &settings, s.days, s.series);
    let db = dir.join(tallyd::store::sqlite::FILE_NAME);
    // The file and its write-ahead log.
    let size: u64 = (std::fs::read_dir(dir).expect("the data dir").flatten())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(tallyd::store::sqlite::FILE_NAME)
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "history:   {} samples in {:.1} s ({:.0}/s); {} (with its WAL) is {} bytes",
        thousands(filled.samples as f64),
        filled.seconds,
        filled.samples as f64 / filled.seconds,
        db.display(),
        thousands(size as f64)
    );
    let args: Vec<OsString> = vec![
        "--config".into(),
        config.into(),
        "--data-dir".into(),
        dir.into(),
    ];
    let daemon = Daemon::tallyd(&s.query_base, &args);
    let http = daemon.http.expect("tallyd's HTTP address");
    // The fill leaves the closed buckets' loose rows, which the daemon compacts when it starts
    // (a running daemon compacts each bucket as it closes): the queries time reads of the
    // compacted store, not reads beside the compaction.
    let compacting = wait_until_idle(&daemon, Duration::from_secs(12));
    eprintln!("history:   the daemon compacted what the fill left in {compacting:.1} s");

    // One series over 30 days at 1 h: the 1 h tier.
    let start = filled.first_ms;
    let end = filled.end_ms;
    let path = query_path(&format!("{COUNTER}_total"), (start, end), "1h", "sum");
    let (times, body) = time_queries(s, http, &path);
    let series = tallyd_series(&body);
    assert_eq!(series.len(), 1, "{}", String::from_utf8_lossy(&body));
    let points = &series[0].1;
    // Every closed hour is there (the current one may not be rolled up yet), and its sum is
    // what was sent in it.
    assert!(
        points.len() as i64 >= s.days * 24 - 1,
        "{} bins",
        points.len()
    );
    for (at, value) in points.iter().take(points.len() - 1) {
        let sent: f64 = (0..HOUR_MS / TICK_MS)
            .map(|k| increase(at + k * TICK_MS))
            .sum();
        assert_eq!(*value, sent, "the hour at {at}");
    }
    let label = format!(
        "query one series over {} days, 1 h step ({} bins)",
        s.days,
        points.len()
    );
    add_times(table, &label, &times, "≤ 10 ms", Check::AtMost(10.0));

    // 1,000 series over (about) 24 h at 5 min: the 1 min tier. Whole 5 minutes to the last
    // whole 5 minutes, from what the 10 s tier still keeps a few minutes from now (its day):
    // the export for Prometheus, which comes next, has no older samples (the fill took minutes).
    let step = 5 * MINUTE_MS;
    let kept = filled
        .gauge_first_ms
        .max(tallyd::custom::time::now_ms() - DAY_MS + 5 * MINUTE_MS);
    let from = kept + (step - kept.rem_euclid(step)) % step;
    let to = filled.end_ms - filled.end_ms.rem_euclid(step);
    let path = query_path(GAUGE, (from, to), "5m", "average");
    let cpu_before = daemon.cpu_seconds();
    let (times, body) = time_queries(s, http, &path);
    // CPU, unlike wall time, leaves out what other work on the machine took from tallyd.
    let cpu_ms = (daemon.cpu_seconds() - cpu_before) * 1e3 / (s.warmup + s.queries) as f64;
    let series = tallyd_series(&body);
    assert_eq!(series.len(), s.series, "series in the answer");
    let bins = (to - from) / step;
    for (name, points) in &series {
        assert_eq!(points.len() as i64, bins, "{name}");
    }
    // Spot checks: the first and last bins of the first and last host are the averages sent.
    for i in [0, s.series - 1] {
        let wanted = format!("\"{}\"", host(i));
        let (_, points) = (series.iter())
            .find(|(name, _)| name.contains(&wanted))
            .expect("the host's series");
        for (at, value) in [points[0], points[points.len() - 1]] {
            assert_eq!(value, expected_average(i, at, step), "{wanted} at {at}");
        }
    }
    let label = format!(
        "query {} series over 24 h, 5 min step ({} bins each, {} B)",
        thousands(s.series as f64),
        bins,
        thousands(body.len() as f64)
    );
    let many_median = median(&times).unwrap_or(f64::NAN);
    add_times(table, &label, &times, "≤ 250 ms", Check::AtMost(250.0));
    table.add(
        "tallyd CPU per 1,000-series query (all its threads, mean)",
        Unit::FineMillis,
        vec![cpu_ms],
        "—",
        Check::None,
    );
    daemon.forward_log();
    drop(daemon.stop());
    QueryRun {
        many_median,
        many_range: (from, to),
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus on the same data
// ---------------------------------------------------------------------------------------------

/// A free loopback port (Prometheus cannot report one it picked).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Runs a command to its end, panicking with its output if it fails.
fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{text}");
    text
}

struct Prometheus {
    child: Child,
    web: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_group(s: &Knobs, table: &mut Table, dir: &Path, tallyd: &QueryRun) {
    eprintln!("history: == Prometheus on the same data");
    let export = dir.join("export.om");
    let started = Instant::now();
    let text = run(
        Command::new(&s.base.tallyd)
            .arg("--config")
            .arg(query_config(dir))
            .arg("--data-dir")
            .arg(dir)
            .args(["history", "export", "--metric", GAUGE, "--output"])
            .arg(&export),
        "tallyd history export",
    );
    eprintln!(
        "history:   {} in {:.1} s",
        text.trim(),
        started.elapsed().as_secs_f64()
    );
    let storage = dir.join("prometheus");
    let started = Instant::now();
    run(
        Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&export)
            .arg(&storage),
        "promtool tsdb create-blocks-from openmetrics",
    );
    eprintln!(
        "history:   promtool made blocks in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("prometheus.yml");
    let web = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("prometheus.log");
    let mut command = common::pinned(
        &s.query_base,
        &s.query_base.daemon_cpu,
        Path::new("prometheus"),
    );
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", storage.display()))
        .arg("--storage.tsdb.retention.time=60d")
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let child = command.spawn().expect("run prometheus");
    common::prioritise(&s.base, child.id());
    let prometheus = Prometheus { child, web };
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(prometheus.web).is_err() || !ready(prometheus.web) {
        assert!(Instant::now() < deadline, "Prometheus not ready in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    // tallyd's bin [t, t + 5m) holds the samples stamped t … t + 4m50s; avg_over_time(x[5m])
    // evaluated at T averages the samples in [T − 5m, T] (Prometheus 2.42 includes both ends):
    // at T = t + 5m − 1 ms exactly the same 30 samples.
    let (from, to) = tallyd.many_range;
    let step = 5 * MINUTE_MS;
    let expression = format!("avg_over_time({GAUGE}[5m])");
    let at = |ms: i64| format!("{:.3}", (ms + step - 1) as f64 / 1000.0);
    let path = format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=300",
        percent_encoding::utf8_percent_encode(&expression, percent_encoding::NON_ALPHANUMERIC),
        at(from),
        at(to - step)
    );
    let (times, body) = time_queries(s, prometheus.web, &path);
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("Prometheus's JSON");
    let result = answer["data"]["result"].as_array().expect("a matrix");
    assert_eq!(result.len(), s.series, "Prometheus's series");
    for series in result {
        let values = series["values"].as_array().expect("values");
        assert_eq!(values.len() as i64, (to - from) / step, "{series}");
    }
    // The averages sent, as tallyd's are (first and last host, first and last bin).
    for i in [0, s.series - 1] {
        let series = (result.iter())
            .find(|r| r["metric"]["host"] == host(i).as_str())
            .expect("the host's series");
        let values = series["values"].as_array().expect("values");
        for (k, bin) in [(0, from), (values.len() - 1, to - step)] {
            let value: f64 = (values[k][1].as_str())
                .and_then(|v| v.parse().ok())
                .expect("a value");
            let wanted = expected_average(i, bin, step);
            assert!(
                (value - wanted).abs() <= 1e-9 * wanted.abs(),
                "Prometheus {value} for {} at {bin}, sent {wanted}",
                host(i)
            );
        }
    }
    let label = format!(
        "Prometheus 2.42 query_range `{expression}`, same {} series, range and step",
        thousands(s.series as f64)
    );
    let prometheus_median = median(&times).unwrap_or(f64::NAN);
    add_times(table, &label, &times, "", Check::None);
    table.add(
        "tallyd ÷ Prometheus, 1,000-series query (medians)",
        Unit::Times,
        vec![tallyd.many_median / prometheus_median],
        "≤ 1×",
        Check::AtMost(1.0),
    );
}

fn ready(web: SocketAddr) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect(web) else {
        return false;
    };
    use std::io::{Read, Write};
    let _ = stream.write_all(
        format!("GET /-/ready HTTP/1.1\r\nHost: {web}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

// ---------------------------------------------------------------------------------------------
// The sampler's cost
// ---------------------------------------------------------------------------------------------

/// The load that makes (and then drives) the sampler's series: counters only, in
/// `HIST_SAMPLER_FAMILIES` families, 20 lines per datagram.
fn sampler_load(s: &Knobs) -> Load {
    Load {
        families: Some(s.sampler_families),
        order: "seq",
        lines: Some(s.sampler_series),
        duration: None,
        line_rate: Some(200_000.0),
        seed: 7,
        prefix: "hb",
        ..Load::new(20, s.sampler_series, 2, "c", 0.0)
    }
}

/// A config declaring the load's families as counters, with history or without.
fn sampler_config(s: &Knobs, dir: &Path, history: bool) -> PathBuf {
    let mut text = String::new();
    for family in 0..s.sampler_families {
        text.push_str(&format!(
            "[[metric]]\nname = \"hb_c_m{family}\"\ntype = \"counter\"\nhistory = {history}\n\n"
        ));
    }
    let path = dir.join(format!("sampler-{history}.toml"));
    std::fs::write(&path, text).expect("the sampler config");
    path
}

fn sampler_group(s: &Knobs, table: &mut Table, dir: &Path) {
    eprintln!(
        "history: == sampler: {} counter series in {} families, history on and off",
        thousands(s.sampler_series as f64),
        s.sampler_families
    );
    let daemons: Vec<Daemon> = [true, false]
        .into_iter()
        .map(|history| {
            let data = dir.join(format!("sampler-{history}"));
            std::fs::create_dir_all(&data).expect("a data dir");
            let args: Vec<OsString> = vec![
                "--config".into(),
                sampler_config(s, dir, history).into(),
                "--data-dir".into(),
                data.into(),
            ];
            let mut daemon = Daemon::tallyd(&s.base, &args);
            daemon.name = if history { "history on" } else { "history off" };
            daemon
        })
        .collect();
    for daemon in &daemons {
        let sent = sampler_load(s).run(&s.base, daemon.udp);
        daemon.drain();
        let scrape = daemon.scrape(None);
        let series = scrape.sum("tallyd_series");
        eprintln!(
            "history:   {}: sent {} lines; {} series",
            daemon.name,
            thousands(sent.lines as f64),
            thousands(series)
        );
        assert!(
            series >= s.sampler_series as f64,
            "{}: only {series} series",
            daemon.name
        );
    }
    // Both idle at once, over the same window: the sampler's ticks (and its minute rollups)
    // are the difference.
    let before: Vec<f64> = daemons.iter().map(Daemon::cpu_seconds).collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(s.idle_seconds));
    let seconds = started.elapsed().as_secs_f64();
    let shares: Vec<f64> = (daemons.iter().zip(&before))
        .map(|(d, b)| (d.cpu_seconds() - b) / seconds * 100.0)
        .collect();
    eprintln!(
        "history:   idle {seconds:.1} s: CPU {:.3} % with history, {:.3} % without",
        shares[0], shares[1]
    );
    let label = format!(
        "{} history series, idle UDP, {seconds:.0} s",
        thousands(s.sampler_series as f64)
    );
    table.add(
        &format!("sampler cost (CPU on − off, % of one core), {label}"),
        Unit::Decimal,
        vec![shares[0] - shares[1]],
        "≤ 2 %",
        Check::AtMost(2.0),
    );
    table.add(
        &format!("daemon CPU with history, {label} (% of one core)"),
        Unit::Decimal,
        vec![shares[0]],
        "",
        Check::None,
    );
    table.add(
        &format!("daemon CPU without history, {label} (% of one core)"),
        Unit::Decimal,
        vec![shares[1]],
        "",
        Check::None,
    );
    // The loss-free rate over the same series, each step long enough to hold sampler ticks.
    let mut load = sampler_load(s);
    load.order = "random";
    load.lines = None;
    load.duration = Some(s.sweep_seconds);
    let mut rates = Vec::new();
    for daemon in &daemons {
        let found = sweep(&s.base, daemon, &load, s.sweep_steps);
        if found.loader_bound {
            table.note(format!(
                "sampler sweep ({}): nothing lost even flat out; the figure is the loader's \
                 rate (a lower bound)",
                daemon.name
            ));
        }
        rates.push(found.rate);
    }
    for (daemon, rate) in daemons.iter().zip(&rates) {
        table.add(
            &format!(
                "highest loss-free rate (lines/s), 20 lines/datagram over the {} series, {}",
                thousands(s.sampler_series as f64),
                daemon.name
            ),
            Unit::Rate,
            vec![*rate],
            "",
            Check::None,
        );
    }
    table.add(
        "loss-free rate, history on ÷ off",
        Unit::Times,
        vec![rates[0] / rates[1]],
        "unchanged (≥ 1× within the bisection's resolution)",
        Check::None,
    );
    for daemon in daemons {
        drop(daemon.stop());
    }
}

fn main() {
    if !common::enter("HIST", "history") {
        return;
    }
    let s = Knobs::from_env();
    // The client stays off the daemon's CPU.
    pin_self(&s.base.loader_cpu);
    let started = Instant::now();
    let load_before = load_average();
    let dir = tempfile::Builder::new()
        .prefix("tallyd-history-bench")
        .tempdir_in(&s.data_parent)
        .expect("a temporary directory");
    // To look at the stores afterwards (profile a query against a copy, say), also when a
    // check failed.
    let keep = std::env::var_os("HIST_KEEP").is_some();
    if keep {
        eprintln!(
            "history: HIST_KEEP: the data stays in {}",
            dir.path().display()
        );
    }
    let dir = Kept {
        dir: Some(dir),
        keep,
    };
    eprintln!(
        "history: tallyd {}; daemon on CPU {} (queries: tallyd and Prometheus on CPU {}), client \
         and loader on CPU {}, nice {}; {} queries per figure after {} untimed; data under {}; \
         groups: {:?}",
        s.base.tallyd.display(),
        s.base.daemon_cpu,
        s.query_base.daemon_cpu,
        s.base.loader_cpu,
        s.base.nice,
        s.queries,
        s.warmup,
        dir.path().display(),
        s.groups
    );
    let mut table = Table::new("history");
    if s.wants("query") || s.wants("prometheus") {
        let query = query_group(&s, &mut table, dir.path());
        if s.wants("prometheus") {
            prometheus_group(&s, &mut table, dir.path(), &query);
        }
    }
    if s.wants("sampler") {
        sampler_group(&s, &mut table, dir.path());
    }
    let context = match s.wants("query") || s.wants("prometheus") {
        true => format!(
            "queries on CPU {} (tallyd and Prometheus alike), ",
            s.query_base.daemon_cpu
        ),
        false => String::new(),
    };
    common::print_table(
        "tallyd history benchmark",
        &context,
        &s.base,
        1,
        started,
        &load_before,
        &table,
    );
}
