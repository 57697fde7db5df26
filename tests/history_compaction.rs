//! History compaction through the real daemon: a data directory holding twelve minutes of
//! sampled history, written 40–52 minutes ago as the sampler writes it (so its buckets are closed),
//! is compacted by the daemon's store writer once its sampler ticks; the Matih query endpoint
//! answers the same bins, exactly the ones written, before and after; and a daemon killed with
//! SIGKILL while compacting leaves a store that the next one reads and finishes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Daemon, TempFile, json_call};
use serde_json::Value;
use tallyd::store::tiers::{Cell, SampleBatch, Tier};
use tallyd::store::{Store, Write, Written, labels_key};

const CONFIG: &str = r#"
[history]
interval_seconds = 1
tiers = [
    { resolution = "1s", retention = "1h" },
    { resolution = "2s", retention = "1d" },
]

[[metric]]
name = "jobs_total"
type = "counter"
history = true
"#;

const STEPS: [&str; 3] = ["1s", "2s", "10s"];

/// Series of the kill test.
const SERIES: usize = 1500;

/// Ticks written before the daemon starts: two buckets of the 1 s tier (360 s each).
const TICKS: i64 = 720;

fn tiers() -> Arc<[Tier]> {
    Arc::from(vec![
        Tier {
            resolution_ms: 1_000,
            retention_ms: 3_600_000,
        },
        Tier {
            resolution_ms: 2_000,
            retention_ms: 86_400_000,
        },
    ])
}

/// The increase of series `s` at tick `k`.
fn increase(s: usize, k: i64) -> f64 {
    ((k * 7 + s as i64) % 11) as f64
}

/// Writes `series` counter series of `jobs_total`, `TICKS` seconds from `t0_ms`, as the
/// sampler does (one write per tick, rolled up into the 2 s tier).
fn preload(dir: &Path, series: usize, t0_ms: i64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(dir).unwrap();
        // As the daemon names a counter's history: its family, without `_total`.
        let put = Write::PutMetric(tallyd::history::stored_family("jobs"));
        let Written::Metric(id) = store.write(put).await.unwrap() else {
            panic!("no metric id");
        };
        let labels: Vec<Arc<str>> = (0..series)
            .map(|s| Arc::from(labels_key([("shard", s.to_string().as_str())])))
            .collect();
        for k in 0..TICKS {
            let mut batch = SampleBatch {
                tiers: tiers(),
                metrics: vec![id],
                ts_ms: t0_ms + k * 1_000,
                ..SampleBatch::default()
            };
            for (s, labels) in labels.iter().enumerate() {
                batch.push(id, Arc::clone(labels), |out| {
                    Cell::scalar(increase(s, k)).encode(out)
                });
            }
            store.write(Write::Samples(Box::new(batch))).await.unwrap();
        }
    });
}

/// `[t0, t0 + TICKS s)`'s bins of every series at `step` by `aggregation`, by labels.
fn bins(addr: SocketAddr, t0_ms: i64, step: &str, aggregation: &str) -> Vec<(String, Value)> {
    let path = format!(
        "/api/v1/observability/custom-metrics/jobs_total/query?start={}&end={}&step={step}\
         &aggregation={aggregation}",
        t0_ms / 1000,
        t0_ms / 1000 + TICKS
    );
    let (status, body) = json_call(addr, "GET", &path, &[], None);
    assert_eq!(status, 200, "{path}: {body}");
    let mut series: Vec<(String, Value)> = (body["series"].as_array().unwrap().iter())
        .map(|s| (s["labels"].to_string(), s["points"].clone()))
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}

/// [`every_answer`] once the daemon knows the metric (its sampler's first tick registers it).
fn first_answer(
    addr: SocketAddr,
    t0_ms: i64,
    series: usize,
    steps: &[&str],
) -> Vec<Vec<(String, Value)>> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while bins(addr, t0_ms, "10s", "sum").len() < series {
        assert!(Instant::now() < deadline, "the daemon answers no history");
        std::thread::sleep(Duration::from_millis(100));
    }
    every_answer(addr, t0_ms, steps)
}

fn every_answer(addr: SocketAddr, t0_ms: i64, steps: &[&str]) -> Vec<Vec<(String, Value)>> {
    let mut out = Vec::new();
    for &step in steps {
        for aggregation in ["sum", "average", "min", "max", "last", "count"] {
            out.push(bins(addr, t0_ms, step, aggregation));
        }
    }
    out
}

/// Loose rows left in the preloaded (closed) buckets, read beside the daemon.
fn loose_rows(dir: &Path, t0_ms: i64) -> i64 {
    let connection = rusqlite::Connection::open_with_flags(
        dir.join(tallyd::store::sqlite::FILE_NAME),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    connection
        .query_row(
            "SELECT count(*) FROM tier_loose WHERE ts >= ?1 AND ts < ?2",
            [t0_ms, t0_ms + TICKS * 1_000],
            |row| row.get(0),
        )
        .unwrap()
}

fn wait_compacted(dir: &Path, t0_ms: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while loose_rows(dir, t0_ms) > 0 {
        assert!(Instant::now() < deadline, "not compacted after a minute");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// 40 to 52 minutes ago, on two 1 s tier buckets' start (buckets are 360 s from the epoch): the
/// twelve minutes from there are closed and well within the 1 s tier's hour (older samples
/// would be expired by the daemon, and a 1 s step answered from the 2 s tier).
fn closed_start_ms() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t = now - 2_400_000;
    t - t.rem_euclid(720_000)
}

fn start(dir: &Path) -> Daemon {
    Daemon::start_with(
        &["--data-dir", dir.to_str().unwrap()],
        Some(TempFile::new("tallyd.toml", CONFIG)),
    )
}

/// Asserts that the 10 s sums of every series are what was written.
fn assert_written(sums: &[(String, Value)], series: usize) {
    assert_eq!(sums.len(), series);
    for (labels, points) in sums {
        let labels: Value = serde_json::from_str(labels).unwrap();
        let s: usize = labels["shard"].as_str().unwrap().parse().unwrap();
        let points = points.as_array().unwrap();
        assert_eq!(points.len(), (TICKS / 10) as usize);
        for (bin, point) in points.iter().enumerate() {
            let want: f64 = (0..10).map(|i| increase(s, bin as i64 * 10 + i)).sum();
            assert_eq!(point["value"].as_f64(), Some(want), "series {s} bin {bin}");
        }
    }
}

#[test]
fn the_daemon_compacts_closed_history_and_answers_the_same_bins() {
    let data = tempfile::tempdir().unwrap();
    let t0 = closed_start_ms();
    preload(data.path(), 3, t0);
    // The preloading store's writer compacted what its own ticks closed; the last 1 s bucket
    // (its end is after the last tick) and 2 s bucket are left to the daemon: a loose row per
    // interval, the 3 series in it.
    assert!(loose_rows(data.path(), t0) >= 360);
    let tallyd = start(data.path());
    let before = first_answer(tallyd.http, t0, 3, &STEPS);
    assert_eq!(before[0][0].1.as_array().unwrap().len(), TICKS as usize);
    assert_written(&before[12], 3);
    wait_compacted(data.path(), t0);
    assert_eq!(every_answer(tallyd.http, t0, &STEPS), before);
    // What it did is in the self-metrics: the 3 series of each bucket it packed, every loose
    // cell replaced, nothing unreadable.
    let text = tallyd.scrape();
    let value = |series: &str| common::value_of(&text, series).unwrap_or(f64::NAN);
    let packed = value("tallyd_history_compacted_series_total");
    assert!(packed >= 3.0 && packed % 3.0 == 0.0, "{packed}: {text}");
    assert!(
        value("tallyd_history_compacted_cells_total") >= 360.0 * 3.0,
        "{text}"
    );
    assert_eq!(value("tallyd_history_compaction_unreadable_total"), 0.0);
    assert!(
        value("tallyd_history_compaction_seconds_total") > 0.0,
        "{text}"
    );
}

#[test]
fn a_daemon_killed_while_compacting_leaves_a_store_the_next_one_finishes() {
    let data = tempfile::tempdir().unwrap();
    let t0 = closed_start_ms();
    preload(data.path(), SERIES, t0);
    let loose = loose_rows(data.path(), t0);
    let tallyd = start(data.path());
    // Killed once compaction has begun (its first tick closed the buckets) and before it ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while loose_rows(data.path(), t0) == loose {
        assert!(Instant::now() < deadline, "no compaction after 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    tallyd.signal(libc::SIGKILL);
    drop(tallyd);
    let left = loose_rows(data.path(), t0);
    assert!(
        left > 0 && left < loose,
        "killed too late: {left} of {loose} loose rows left"
    );

    let tallyd = start(data.path());
    let after_kill = first_answer(tallyd.http, t0, SERIES, &["10s"]);
    assert_written(&after_kill[0], SERIES);
    wait_compacted(data.path(), t0);
    assert_eq!(every_answer(tallyd.http, t0, &["10s"]), after_kill);
    let connection =
        rusqlite::Connection::open(data.path().join(tallyd::store::sqlite::FILE_NAME)).unwrap();
    let check: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
