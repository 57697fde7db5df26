//! The remote-write spill end to end, against a real Prometheus (Debian's package, with
//! `--web.enable-remote-write-receiver`): a receiver down for longer than the memory queue
//! holds loses nothing; a tallyd stopped with SIGTERM while the receiver is down sends what it
//! had queued after its restart; a `kill -9` in the middle of spilling, with the newest
//! segment cut short, restarts cleanly and counts the damage; the spill keeps its bound. And
//! without a spill, a gauge recorded through the Matih API while the receiver was down has its
//! points resent from the store, each at its own timestamp, once the receiver is back; so have
//! a StatsD gauge's and counter's samples from the history tiers (the counter as running
//! totals).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::{Daemon, Endpoints, InProcess, TempFile, json_call, on_path, require, value_of};
use serde_json::json;
use tallyd::remote_write::spill;

const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// Seconds between snapshots.
const INTERVAL: f64 = 0.25;

/// Seconds between the values a test sends: two snapshots see each.
const SEND_EVERY: f64 = 0.5;

/// A `[[remote_write]]` table named `spill` whose memory holds six samples (a batch of two in
/// hand, four queued), with `extra` keys.
fn config(url: &str, extra: &str) -> String {
    format!(
        "[[remote_write]]\nurl = \"{url}\"\nname = \"spill\"\ninterval_seconds = {INTERVAL}\n\
         shards = 1\nqueue_samples = 4\nmax_samples_per_send = 2\nmax_backoff_seconds = 0.5\n\
         {extra}"
    )
}

fn start_prometheus() -> Option<Prometheus> {
    if !require(
        on_path("prometheus"),
        "prometheus (Debian package prometheus)",
    ) {
        return None;
    }
    // Its own scrape target is a port nothing listens on: it holds only what tallyd wrote.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Some(Prometheus::start(
        nobody,
        &["--web.enable-remote-write-receiver"],
    ))
}

fn write_url(prometheus: &Prometheus) -> String {
    format!("http://{}/api/v1/write", prometheus.web())
}

/// `tallyd_remote_write_<name>{remote="spill"<more>}` in a scrape of `tallyd`.
fn remote(tallyd: &Endpoints, name: &str, more: &str) -> f64 {
    let series = format!("tallyd_remote_write_{name}{{remote=\"spill\"{more}}}");
    value_of(&tallyd.scrape(), &series).unwrap_or_else(|| panic!("no {series} in the scrape"))
}

fn dropped(tallyd: &Endpoints, reason: &str) -> f64 {
    remote(
        tallyd,
        "samples_dropped_total",
        &format!(",reason=\"{reason}\""),
    )
}

/// Polls `check` for up to a minute.
fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `name:<v>|g` for each value, one every [`SEND_EVERY`].
fn send_values(tallyd: &Endpoints, name: &str, values: std::ops::RangeInclusive<u32>) {
    for value in values {
        tallyd.send(&[format!("{name}:{value}|g")]);
        std::thread::sleep(Duration::from_secs_f64(SEND_EVERY));
    }
}

/// The widest step between the timestamps of `samples`.
fn widest_step(samples: &[(i64, f64)]) -> i64 {
    samples
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .max()
        .unwrap_or(0)
}

/// The values Prometheus holds for `name` over the last five minutes, once it holds `last`.
fn values_once(prometheus: &Prometheus, name: &str, last: f64) -> Vec<(i64, f64)> {
    wait_until(&format!("{name} = {last} in Prometheus"), || {
        prometheus
            .samples(name, "5m")
            .last()
            .is_some_and(|s| s.1 == last)
    });
    prometheus.samples(name, "5m")
}

/// Every value of `1..=last` is among `samples`.
fn assert_all_arrived(samples: &[(i64, f64)], last: u32) {
    let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
    for value in 1..=last {
        assert!(
            values.contains(&f64::from(value)),
            "value {value} was lost: {samples:?}"
        );
    }
}

/// The spill's segment files under `data_dir`, oldest first.
fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let shard = data_dir.join("remote_write/spill/n1/0");
    let mut files: Vec<PathBuf> = std::fs::read_dir(shard)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn daemon_in(data_dir: &Path, config_text: &str) -> Daemon {
    let dir = data_dir.to_str().unwrap();
    Daemon::start_with(
        &["--data-dir", dir],
        Some(TempFile::new("tallyd.toml", config_text)),
    )
}

#[test]
fn a_receiver_down_longer_than_the_queue_holds_loses_nothing() {
    let Some(mut prometheus) = start_prometheus() else {
        return;
    };
    let tallyd = InProcess::with_config(&config(&write_url(&prometheus), "spill = true\n"));
    tallyd.send(&["sp_outage:1|g"]);
    prometheus.wait_for_value("sp_outage", PROMETHEUS_TIMEOUT, |v| v == 1.0);

    prometheus.stop();
    // 46 snapshots or so, for six samples of memory.
    send_values(&tallyd, "sp_outage", 2..=24);
    assert!(remote(&tallyd, "spilled_bytes", "") > 0.0);
    let on_disk: u64 = segments(tallyd.data_dir.path())
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert!(on_disk > 0, "nothing in the spill's directory");
    prometheus.restart();

    let samples = values_once(&prometheus, "sp_outage", 24.0);
    wait_until("the spill emptied", || {
        remote(&tallyd, "spilled_bytes", "") == 0.0
    });
    assert_all_arrived(&samples, 24);
    // A sample per snapshot, no hole: the widest step is the tick's jitter.
    let widest = widest_step(&samples);
    assert!(widest < 600, "a hole of {widest} ms in {samples:?}");
    for reason in [
        "queue_full",
        "rejected",
        "shutdown",
        "spill_full",
        "too_old",
    ] {
        assert_eq!(dropped(&tallyd, reason), 0.0, "{reason}");
    }
}

#[test]
fn a_tallyd_stopped_while_the_receiver_is_down_sends_its_queue_after_a_restart() {
    let Some(mut prometheus) = start_prometheus() else {
        return;
    };
    let data_dir = tempfile::tempdir().unwrap();
    let text = config(&write_url(&prometheus), "spill = true\n");
    let mut first = daemon_in(data_dir.path(), &text);
    first.send(&["sp_restart:1|g"]);
    prometheus.wait_for_value("sp_restart", PROMETHEUS_TIMEOUT, |v| v == 1.0);
    prometheus.stop();
    send_values(&first, "sp_restart", 2..=12);
    first.signal(libc::SIGTERM);
    let status = first.wait_exit(Duration::from_secs(20)).expect("stopped");
    assert!(status.success(), "{status:?}\n{}", first.log());
    assert!(
        first.log().contains("spilled for the next start"),
        "{}",
        first.log()
    );
    assert!(!segments(data_dir.path()).is_empty());

    prometheus.restart();
    let second = daemon_in(data_dir.path(), &text);
    let samples = values_once(&prometheus, "sp_restart", 12.0);
    assert_all_arrived(&samples, 12);
    wait_until("the spill emptied", || {
        remote(&second, "spilled_bytes", "") == 0.0
    });
    assert_eq!(dropped(&second, "rejected"), 0.0);
    assert!(!second.log().contains("panicked"), "{}", second.log());
}

#[test]
fn a_kill_9_mid_spill_restarts_and_counts_the_cut_segment() {
    let Some(mut prometheus) = start_prometheus() else {
        return;
    };
    prometheus.stop();
    let data_dir = tempfile::tempdir().unwrap();
    let text = config(&write_url(&prometheus), "spill = true\n");
    let mut first = daemon_in(data_dir.path(), &text);
    send_values(&first, "sp_killed", 1..=20);
    assert!(remote(&first, "spilled_bytes", "") > 0.0);
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).expect("killed");

    // What the spill holds: the timestamps of its records, oldest first.
    let mut spilled: Vec<i64> = Vec::new();
    for file in segments(data_dir.path()) {
        let data = std::fs::read(&file).unwrap();
        let (records, _) = spill::decode_records(&data[8..]);
        spilled.extend(records.iter().map(|(_, sample)| sample.timestamp));
    }
    assert!(spilled.len() >= 10, "{spilled:?}");
    // A write torn by the kill: the newest segment ends inside a record.
    let newest = segments(data_dir.path()).pop().expect("a segment");
    let length = newest.metadata().unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(length - 5)
        .unwrap();

    prometheus.restart();
    let second = daemon_in(data_dir.path(), &text);
    assert_eq!(remote(&second, "spill_corrupt_segments_total", ""), 1.0);
    wait_until("the spill emptied", || {
        remote(&second, "spilled_bytes", "") == 0.0 && remote(&second, "queue_length", "") == 0.0
    });
    wait_until("samples in Prometheus", || {
        !prometheus.samples("sp_killed", "5m").is_empty()
    });
    // The memory queue died with the process (the oldest values) and the cut record (the
    // newest spilled) is gone; every sample spilled before it arrived, in order.
    wait_until("the spill's samples in Prometheus", || {
        prometheus.samples("sp_killed", "5m").len() >= spilled.len() - 1
    });
    let arrived: Vec<i64> = prometheus
        .samples("sp_killed", "5m")
        .iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(arrived, spilled[..spilled.len() - 1]);
    assert_eq!(dropped(&second, "rejected"), 0.0);
    assert!(!second.log().contains("panicked"), "{}", second.log());
}

#[test]
fn the_spill_keeps_its_bound_and_counts_what_it_drops() {
    // Nothing listens here: every request fails and is retried.
    let down: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    const BOUND: u64 = 65536;
    let tallyd = InProcess::with_config(&config(
        &format!("http://{down}/api/v1/write"),
        &format!("spill_max_bytes = {BOUND}\n"),
    ));
    let lines: Vec<String> = (0..400).map(|i| format!("sp_bound_{i}:1|g")).collect();
    for chunk in lines.chunks(40) {
        tallyd.send(&[chunk.join("\n")]);
    }
    wait_until("the spill dropped its oldest segment", || {
        dropped(&tallyd, "spill_full") > 0.0
    });
    for _ in 0..5 {
        let spilled = remote(&tallyd, "spilled_bytes", "");
        assert!(spilled > 0.0 && spilled <= BOUND as f64, "{spilled}");
        let on_disk: u64 = segments(tallyd.data_dir.path())
            .iter()
            .filter_map(|p| p.metadata().ok())
            .map(|m| m.len())
            .sum();
        assert!(on_disk <= BOUND, "{on_disk} bytes on disk");
        std::thread::sleep(Duration::from_secs_f64(SEND_EVERY));
    }
    assert_eq!(dropped(&tallyd, "queue_full"), 0.0);
}

#[test]
fn bad_spill_settings_are_refused_with_the_key() {
    let refused = |extra: &str| {
        let text = config("http://127.0.0.1:9/api/v1/write", extra);
        match tallyd::config::Settings::parse(&text, Path::new("t.toml")) {
            Ok(_) => panic!("accepted: {extra}"),
            Err(e) => e.to_string(),
        }
    };
    assert!(refused("spill_max_bytes = 100\n").contains("spill_max_bytes"));
    assert!(refused("spill = \"yes\"\n").contains("spill"));
    assert!(refused("max_sample_age_seconds = 0\n").contains("max_sample_age_seconds"));
}

#[test]
fn a_gap_of_a_matih_gauge_is_resent_from_the_store_at_its_own_timestamps() {
    let Some(mut prometheus) = start_prometheus() else {
        return;
    };
    // Memory for two samples (one in hand, one queued), and no spill.
    let text = config(&write_url(&prometheus), "")
        .replace("queue_samples = 4", "queue_samples = 1")
        .replace("max_samples_per_send = 2", "max_samples_per_send = 1");
    let tallyd = InProcess::with_config(&text);
    let base = "/api/v1/observability/custom-metrics";
    let call = |method: &str, path: &str, body: serde_json::Value| {
        json_call(
            tallyd.http,
            method,
            path,
            &[("X-Tenant-ID", "t1")],
            Some(body),
        )
    };
    let spec = json!({"name": "gp_temp", "type": "gauge", "labels": ["room"]});
    let (status, answer) = call("POST", base, spec);
    assert_eq!(status, 201, "{answer}");
    let record = |value: f64, at_ms: Option<i64>| {
        let mut point = json!({"value": value, "labels": {"room": "a"}});
        if let Some(ms) = at_ms {
            point["timestamp"] = json!(format!("{}.{:03}", ms / 1000, ms % 1000));
        }
        let (status, answer) = call("POST", &format!("{base}/gp_temp/data"), json!([point]));
        assert_eq!(status, 200, "{answer}");
    };
    let series = r#"gp_temp{room="a",tenant="t1"}"#;
    record(1.0, None);
    prometheus.wait_for_value(series, PROMETHEUS_TIMEOUT, |v| v == 1.0);

    prometheus.stop();
    // The memory fills at once; what comes after is dropped.
    std::thread::sleep(Duration::from_secs(2));
    let mut points = Vec::new();
    for value in 10..20 {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        record(f64::from(value), Some(at));
        points.push((at, f64::from(value)));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(dropped(&tallyd, "queue_full") > 0.0);
    prometheus.restart();

    wait_until("every point in Prometheus", || {
        let held = prometheus.samples(series, "5m");
        points.iter().all(|point| held.contains(point))
    });
    assert!(remote(&tallyd, "history_samples_total", "") >= points.len() as f64);
    assert_eq!(dropped(&tallyd, "rejected"), 0.0);
}

/// History sampled every second into a 1 s tier, for a gauge and a counter.
const HISTORY: &str = r#"
[history]
interval_seconds = 1
tiers = [{ resolution = "1s", retention = "1h" }]

[[metric]]
name = "tg_temp"
type = "gauge"
history = true

[[metric]]
name = "tg_hits"
type = "counter"
history = true
"#;

/// The 1 s tier samples `(ts, value)` the sampler wrote for the history metric `family` (one
/// series), read from the store's file (loose cells, and packed ones once compacted).
fn sampled(data_dir: &Path, family: &str) -> Vec<(i64, f64)> {
    use tallyd::store::tiers::{Cell, Tier, scan};
    let file = data_dir.join(tallyd::store::sqlite::FILE_NAME);
    let connection =
        rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let metric: i64 = connection
        .query_row(
            "SELECT id FROM metrics WHERE scope = 'history' AND name = ?1",
            [family],
            |row| row.get(0),
        )
        .unwrap();
    let tier = Tier::of_resolution(1000);
    let mut samples: Vec<(i64, f64)> = Vec::new();
    scan(
        &connection,
        tier,
        metric,
        i64::MIN / 2,
        i64::MAX / 2,
        None,
        &mut |_, ts, cell| match cell {
            Cell::Scalar { last, .. } => samples.push((ts, last)),
            other => panic!("not a scalar sample: {other:?}"),
        },
    )
    .unwrap();
    samples.sort_by_key(|&(ts, _)| ts);
    samples
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_gap_of_sampled_statsd_series_is_resent_from_the_history_tiers() {
    let Some(mut prometheus) = start_prometheus() else {
        return;
    };
    // Memory for three snapshots of the two series (a batch of two in hand, four queued), and
    // no spill.
    let tallyd =
        InProcess::with_config(&format!("{}{HISTORY}", config(&write_url(&prometheus), "")));
    tallyd.send(&["tg_temp:1|g", "tg_hits:1|c"]);
    prometheus.wait_for_value("tg_temp", PROMETHEUS_TIMEOUT, |v| v == 1.0);
    prometheus.wait_for_value("tg_hits_total", PROMETHEUS_TIMEOUT, |v| v == 1.0);

    prometheus.stop();
    let stopped = now_ms();
    // The memory fills at once; what comes after is dropped.
    std::thread::sleep(Duration::from_secs(2));
    for k in 1..=8 {
        tallyd.send(&[format!("tg_temp:{}|g", 10 + k), format!("tg_hits:{k}|c")]);
        std::thread::sleep(Duration::from_millis(600));
    }
    // The last values sampled, then a quiet while: the counter's total stays 1 + 36.
    std::thread::sleep(Duration::from_secs(2));
    assert!(dropped(&tallyd, "queue_full") > 0.0);
    // What the receiver missed: the samples of the outage, after what memory held at the
    // stop (three quarters of a second of snapshots) was answered.
    let missed = |samples: Vec<(i64, f64)>| -> Vec<(i64, f64)> {
        samples
            .into_iter()
            .filter(|(ts, _)| *ts >= stopped + 2_000)
            .collect()
    };
    let temps = missed(sampled(tallyd.data_dir.path(), "tg_temp"));
    let increases = sampled(tallyd.data_dir.path(), "tg_hits");
    let in_outage: f64 = (increases.iter().filter(|s| s.0 >= stopped))
        .map(|s| s.1)
        .sum();
    assert_eq!(in_outage, 36.0, "every increase sampled: {increases:?}");
    // The counter's value at each sample's time: 37 less the increases stamped after it.
    let totals: Vec<(i64, f64)> = missed(
        (increases.iter())
            .map(|&(ts, _)| {
                let later: f64 = (increases.iter().filter(|s| s.0 > ts)).map(|s| s.1).sum();
                (ts, 37.0 - later)
            })
            .collect(),
    );
    // A sample a second: the gauge's last value of each (two sends may share one).
    assert!(
        temps.len() >= 4 && temps.last().unwrap().1 == 18.0,
        "the outage was sampled: {temps:?}"
    );
    assert!(totals.len() >= 4, "{totals:?}");
    prometheus.restart();

    for (series, want) in [("tg_temp", &temps), ("tg_hits_total", &totals)] {
        wait_until(&format!("every sample of {series} in Prometheus"), || {
            let held = prometheus.samples(series, "5m");
            want.iter().all(|sample| held.contains(sample))
        });
    }
    assert!(remote(&tallyd, "history_samples_total", "") >= (temps.len() + totals.len()) as f64);
    assert_eq!(dropped(&tallyd, "rejected"), 0.0);
}
