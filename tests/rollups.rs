//! Rollups of points recorded through the Matih API, through the real daemon and its store on
//! disk: a day of synthetic points posted with timestamps loads in seconds, is rolled into every
//! history tier, and the query endpoint answers exactly the expected bins for every aggregation
//! from the tier that fits the step — still so after the points themselves are gone from the
//! file, which shows the answer came from the tiers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Daemon, TempFile, json_call};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[history]
interval_seconds = 1
tiers = [
    { resolution = "1s", retention = "2d" },
    { resolution = "1m", retention = "15d" },
    { resolution = "1h", retention = "365d" },
]
"#;

const BASE: &str = "/api/v1/observability/custom-metrics";
const TENANT: (&str, &str) = ("X-Tenant-ID", "t1");
const HOUR: i64 = 3_600;
/// Seconds between two points of a series.
const EVERY: i64 = 10;

fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    json_call(addr, method, path, &[TENANT], body)
}

/// A series' value at `ts`: deterministic, varied, with repeats and negative values, so sums,
/// minima, maxima and lasts all differ from bin to bin.
fn value(series: usize, ts: i64) -> f64 {
    let x = (ts / EVERY) as u64 * 2_654_435_761 + series as u64 * 40_503;
    ((x % 1_000) as f64 - 300.0) / 8.0
}

/// What a bin of `points` should answer.
fn fold(points: &[f64], aggregation: &str) -> f64 {
    match aggregation {
        "average" => points.iter().sum::<f64>() / points.len() as f64,
        "sum" => points.iter().sum(),
        "min" => points.iter().copied().fold(f64::INFINITY, f64::min),
        "max" => points.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "count" => points.len() as f64,
        "last" => *points.last().unwrap(),
        other => panic!("{other}"),
    }
}

/// Asserts the answer's bins for `series` are the expected ones over `[start, end)` at `step`.
fn check(answer: &Value, series: usize, start: i64, end: i64, step: i64, aggregation: &str) {
    let label = format!("s{series}");
    let got = answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["labels"]["series"] == label.as_str())
        .unwrap_or_else(|| panic!("no series {label}: {answer}"));
    let points = got["points"].as_array().unwrap();
    let mut expected = Vec::new();
    let mut bin = start;
    while bin < end {
        let values: Vec<f64> = (bin..bin + step)
            .filter(|ts| ts % EVERY == 0)
            .map(|ts| value(series, ts))
            .collect();
        if !values.is_empty() {
            expected.push((bin, fold(&values, aggregation)));
        }
        bin += step;
    }
    assert_eq!(
        points.len(),
        expected.len(),
        "{aggregation} step {step}: {answer}"
    );
    for (point, (bin, want)) in points.iter().zip(expected) {
        let at = jiff::Timestamp::from_second(bin).unwrap().to_string();
        assert_eq!(point["timestamp"], at.as_str(), "{aggregation} step {step}");
        let have = point["value"].as_f64().unwrap();
        // Sums fold cell by cell here, point by point in the test: the last bits may differ.
        assert!(
            (have - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{aggregation} step {step} bin {bin}: {have} != {want}"
        );
    }
}

fn query(
    addr: SocketAddr,
    start: impl std::fmt::Display,
    end: i64,
    step: &str,
    aggregation: &str,
) -> Value {
    let path = format!(
        "{BASE}/latency_score/query?start={start}&end={end}&step={step}&aggregation={aggregation}"
    );
    let (status, answer) = call(addr, "GET", &path, None);
    assert_eq!(status, 200, "{path}: {answer}");
    answer
}

/// Due rollup intervals left in the store (read beside the daemon, as `sqlite3` would).
fn due(dir: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("tallyd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT COUNT(*) FROM rollups_due", [], |row| row.get(0))
        .unwrap()
}

#[test]
fn a_day_of_recorded_points_rolls_into_every_tier_and_answers_exact_bins() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let mut tallyd = Daemon::start_with(
        &["--data-dir", &dir],
        Some(TempFile::new("tallyd.toml", CONFIG)),
    );
    let addr = tallyd.http;
    let (status, body) = call(
        addr,
        "POST",
        BASE,
        Some(json!({"name": "latency_score", "type": "gauge", "labels": ["series"]})),
    );
    assert_eq!(status, 201, "{body}");

    // A day, ending on an hour two hours ago: two series, a point every 10 s, posted with ISO
    // 8601 timestamps in batches of 1,000.
    let now = jiff::Timestamp::now().as_second();
    let end = now - now % HOUR - HOUR;
    let start = end - 24 * HOUR;
    let points: Vec<Value> = (start..end)
        .step_by(EVERY as usize)
        .flat_map(|ts| {
            (0..2).map(move |series| {
                json!({
                    "value": value(series, ts),
                    "labels": {"series": format!("s{series}")},
                    "timestamp": jiff::Timestamp::from_second(ts).unwrap().to_string(),
                })
            })
        })
        .collect();
    let loading = Instant::now();
    for batch in points.chunks(1_000) {
        let (status, body) = call(
            addr,
            "POST",
            &format!("{BASE}/latency_score/data"),
            Some(Value::Array(batch.to_vec())),
        );
        assert_eq!(status, 200, "{body}");
    }
    let loaded = loading.elapsed();
    eprintln!("{} points loaded in {loaded:?}", points.len());
    assert!(loaded < Duration::from_secs(30), "{loaded:?}");

    // A read moves the journaled points into the points table, marking their intervals due;
    // the rollups are made a slice at a time each tick. Wait until none is due.
    query(addr, start, end, "1h", "sum");
    let deadline = Instant::now() + Duration::from_secs(60);
    while due(data.path()) > 0 {
        assert!(Instant::now() < deadline, "rollups still due after 60 s");
        std::thread::sleep(Duration::from_millis(250));
    }

    // (step, the tier it reads, the range): every tier, and steps that are multiples of one.
    let cases = [
        ("10s", "1s", end - 2 * HOUR, end),
        ("1m", "1m", start, end),
        ("5m", "1m", start + HOUR, end - HOUR),
        ("1h", "1h", start, end),
        ("2h", "1h", start, end),
    ];
    let aggregations = ["average", "sum", "min", "max", "count", "last"];
    let check_all = |addr| {
        for (step, tier, from, to) in cases {
            let step_s = match step {
                "10s" => 10,
                "1m" => 60,
                "5m" => 300,
                "1h" => HOUR,
                _ => 2 * HOUR,
            };
            for aggregation in aggregations {
                let answer = query(addr, from, to, step, aggregation);
                assert_eq!(answer["resolution"], tier, "{step} {aggregation}: {answer}");
                for series in 0..2 {
                    check(&answer, series, from, to, step_s, aggregation);
                }
            }
        }
    };
    check_all(addr);

    // Take the points out of the file: the same queries now can only be answered from the
    // tiers, and still answer the same bins.
    tallyd.signal(libc::SIGTERM);
    tallyd.wait_exit(Duration::from_secs(10)).expect("stopped");
    let db = rusqlite::Connection::open(data.path().join("tallyd.db")).unwrap();
    let removed = db.execute("DELETE FROM points", []).unwrap();
    assert_eq!(removed, points.len());
    drop(db);
    let tallyd = Daemon::start_with(
        &["--data-dir", &dir],
        Some(TempFile::new("tallyd.toml", CONFIG)),
    );
    check_all(tallyd.http);
    // A start that no tier's intervals align with reads the points: none are left.
    let answer = query(tallyd.http, format!("{start}.5"), end, "1m", "sum");
    assert!(
        answer.get("resolution").is_none_or(Value::is_null),
        "{answer}"
    );
    assert_eq!(answer["series"].as_array().unwrap().len(), 0, "{answer}");
}
