//! History of StatsD metrics through the real daemon: `[[metric]] history = true` series sent
//! over UDP are sampled every second (`interval_seconds = 1`) into the 1 s tier, rolled up into
//! the 2 s one, and the Matih query endpoint answers from the tier that fits the step — counter
//! increases that add up to what was sent, a histogram's `quantile(q)` — and again after a
//! restart.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Daemon, TempFile, json_call};
use serde_json::Value;

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

[[metric]]
name = "job_seconds"
type = "histogram"
buckets = [0.1, 1.0, 10.0]
history = true
"#;

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The query's answer (status 200 asserted).
fn query(addr: SocketAddr, name: &str, params: &str) -> Value {
    let path = format!("/api/v1/observability/custom-metrics/{name}/query?{params}");
    let (status, body) = json_call(addr, "GET", &path, &[], None);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// The sum of the values of every point of every series of an answer.
fn total(answer: &Value) -> f64 {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["points"].as_array().unwrap())
        .map(|p| p["value"].as_f64().unwrap())
        .sum()
}

/// Queries until `done` holds of the answer (samples land each second; a 2 s interval is
/// rolled up once it closes), or fails after 15 s with the last answer.
fn wait_for_answer(
    addr: SocketAddr,
    name: &str,
    params: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = query(addr, name, params);
        if done(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{name}?{params}: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn statsd_metrics_with_history_are_queried_from_the_tier_that_fits_and_kept_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let tallyd = Daemon::start_with(
        &["--data-dir", &dir],
        Some(TempFile::new("tallyd.toml", CONFIG)),
    );
    tallyd.send(&["jobs:5|c", "job_seconds:0.05|h", "job_seconds:0.05|h"]);
    tallyd.wait_for(&[("jobs_total", 5.0)]);
    // Over more than one sampling interval.
    std::thread::sleep(Duration::from_millis(2_500));
    tallyd.send(&["jobs:7|c", "job_seconds:0.05|h", "job_seconds:5|h"]);
    tallyd.wait_for(&[("jobs_total", 12.0)]);

    // Even: the 2 s bins below are the 2 s tier's intervals (else the 1 s tier answers).
    let start = (now_s() - 60) / 2 * 2;
    let range = format!("start={start}&end={}", start + 3_600);
    // Per-second increases add up to what was sent, from the 1 s tier.
    let fine = wait_for_answer(
        tallyd.http,
        "jobs_total",
        &format!("{range}&step=1s&aggregation=sum"),
        |a| total(a) == 12.0,
    );
    assert_eq!(fine["resolution"], "1s", "{fine}");
    assert_eq!(fine["aggregation"], "sum");
    let points = fine["series"][0]["points"].as_array().unwrap();
    assert!(
        points.len() >= 2,
        "two increases, a second apart at least: {fine}"
    );
    assert!(points.iter().any(|p| p["value"] == 5.0), "{fine}");
    assert!(points.iter().any(|p| p["value"] == 7.0), "{fine}");
    // A 2 s step reads the 2 s tier, rolled up from the 1 s one.
    let coarse = wait_for_answer(
        tallyd.http,
        "jobs_total",
        &format!("{range}&step=2s"),
        |a| total(a) == 12.0,
    );
    assert_eq!(coarse["resolution"], "2s", "{coarse}");

    // The histogram over one bin: 3 of 4 observations in (0, 0.1], the median two thirds in.
    let params = format!("{range}&step=1h&aggregation=quantile(0.5)");
    let answer = wait_for_answer(
        tallyd.http,
        "job_seconds",
        &format!("{range}&step=1h&aggregation=count"),
        |a| total(a) == 4.0,
    );
    assert_eq!(answer["resolution"], "2s", "{answer}");
    let median = query(tallyd.http, "job_seconds", &params);
    assert_eq!(median["aggregation"], "quantile(0.5)");
    let value = median["series"][0]["points"][0]["value"].as_f64().unwrap();
    assert!((value - 0.1 * 2.0 / 3.0).abs() < 1e-9, "{median}");
    let p99 = query(
        tallyd.http,
        "job_seconds",
        &format!("{range}&step=1h&aggregation=quantile(0.99)"),
    );
    let value = p99["series"][0]["points"][0]["value"].as_f64().unwrap();
    // Rank 3.96 of 4: in (1, 10], 0.96 of the way.
    assert!((value - (1.0 + 9.0 * 0.96)).abs() < 1e-9, "{p99}");

    // What a histogram's history cannot answer is refused, naming the parameter.
    let path =
        format!("/api/v1/observability/custom-metrics/job_seconds/query?{range}&aggregation=min");
    let (status, body) = json_call(tallyd.http, "GET", &path, &[], None);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "aggregation", "{body}");
    let path = format!(
        "/api/v1/observability/custom-metrics/jobs_total/query?{range}&aggregation=quantile(1.5)"
    );
    let (status, body) = json_call(tallyd.http, "GET", &path, &[], None);
    assert_eq!(status, 400, "{body}");

    // A restart keeps the history.
    drop(tallyd);
    let tallyd = Daemon::start_with(
        &["--data-dir", &dir],
        Some(TempFile::new("tallyd.toml", CONFIG)),
    );
    let again = query(
        tallyd.http,
        "jobs_total",
        &format!("{range}&step=1s&aggregation=sum"),
    );
    assert_eq!(total(&again), 12.0, "{again}");
}
