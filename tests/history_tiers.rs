//! History of StatsD metrics through the real daemon: `[[metric]] history = true` series sent
//! over UDP are sampled every second (`interval_seconds = 1`) into the 1 s tier, rolled up into
//! the 2 s one, and the Matih query endpoint answers from the tier that fits the step — counter
//! increases that add up to what was sent, a histogram's `quantile(q)` — and again after a
//! restart; `tallyd history export` writes their finest tier as OpenMetrics that promtool
//! imports.

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

[[metric]]
name = "queue_depth"
type = "gauge"
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

/// One exported sample: name, value, timestamp in seconds.
type Exported = (String, f64, f64);

/// `tallyd history export --metric <metric>`'s text and samples, after checking the header and
/// the `# EOF`.
fn export(config: &TempFile, dir: &str, metric: &str, header: &str) -> (String, Vec<Exported>) {
    let text = common::history_export(config.path(), dir, metric);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header), "{text}");
    assert_eq!(text.lines().last(), Some("# EOF"), "{text}");
    let samples = lines
        .take_while(|line| *line != "# EOF")
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 3, "{line}");
            (
                fields[0].to_owned(),
                fields[1].parse().unwrap(),
                fields[2].parse().unwrap(),
            )
        })
        .collect();
    (text, samples)
}

#[test]
fn history_export_writes_the_finest_tier_of_statsd_metrics_as_openmetrics_promtool_imports() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let config = TempFile::new("tallyd.toml", CONFIG);
    let tallyd = Daemon::start_with(
        &[
            "--data-dir",
            &dir,
            "--config",
            config.path().to_str().unwrap(),
        ],
        None,
    );
    tallyd.send(&["jobs:5|c", "queue_depth:3|g", "job_seconds:0.5|h"]);
    tallyd.wait_for(&[("jobs_total", 5.0)]);
    std::thread::sleep(Duration::from_millis(2_500));
    tallyd.send(&["jobs:7|c", "queue_depth:4|g", "job_seconds:5|h"]);
    tallyd.wait_for(&[("jobs_total", 12.0)]);
    let start = now_s() - 60;
    let range = format!(
        "start={start}&end={}&step=1s&aggregation=sum",
        start + 3_600
    );
    wait_for_answer(tallyd.http, "jobs_total", &range, |a| total(a) == 12.0);
    // The gauge's and the histogram's samples of the same tick are in by now.
    std::thread::sleep(Duration::from_millis(1_500));

    // The counter as its running total, by its API name or its family's; one sample a second.
    let (text, jobs) = export(&config, &dir, "jobs_total", "# TYPE jobs counter");
    assert_eq!(jobs, export(&config, &dir, "jobs", "# TYPE jobs counter").1);
    assert!(
        jobs.iter().all(|(name, ..)| name == "jobs_total"),
        "{jobs:?}"
    );
    // Whole seconds apart (a tick the sampler was late for has no sample), never falling.
    assert!(
        (jobs.windows(2)).all(|w| w[0].1 <= w[1].1 && w[1].2 - w[0].2 >= 1.0),
        "{jobs:?}"
    );
    assert!(jobs.iter().any(|s| s.1 == 5.0), "{jobs:?}");
    assert_eq!(jobs.last().unwrap().1, 12.0, "{jobs:?}");
    // The gauge as sampled.
    let (_, depth) = export(&config, &dir, "queue_depth", "# TYPE queue_depth gauge");
    assert!(depth.iter().all(|s| s.1 == 3.0 || s.1 == 4.0), "{depth:?}");
    assert_eq!(depth.last().unwrap().1, 4.0, "{depth:?}");
    // The histogram as a running count and sum.
    let (_, seconds) = export(&config, &dir, "job_seconds", "# TYPE job_seconds summary");
    let last = |name: &str| seconds.iter().rev().find(|s| s.0 == name).unwrap().1;
    assert_eq!(last("job_seconds_count"), 2.0, "{seconds:?}");
    assert_eq!(last("job_seconds_sum"), 5.5, "{seconds:?}");

    // Prometheus's own importer takes it.
    common::promtool_import(&text);
}
