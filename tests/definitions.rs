//! Declared metrics (`[[metric]]`) through the real binary: HELP, UNIT, buckets, the label
//! schema, the declared type, summaries, and what a reload does to a changed definition.

mod common;

use common::*;

const OPENMETRICS: (&str, &str) = ("Accept", "application/openmetrics-text;version=1.0.0");

#[test]
fn a_declared_histogram_carries_its_help_unit_and_buckets() {
    let daemon = Daemon::with_config(
        r#"
[[metric]]
name = "predictor_latency_seconds"
type = "histogram"
help = "Time to answer one prediction."
unit = "seconds"
buckets = { linear = { start = 0.1, width = 0.1, count = 3 } }
"#,
    );
    daemon.send(&["predictor.latency.seconds:150|ms\n"]);
    let text = daemon.wait_for(&[
        (r#"predictor_latency_seconds_bucket{le="0.1"}"#, 0.0),
        (r#"predictor_latency_seconds_bucket{le="0.2"}"#, 1.0),
        (r#"predictor_latency_seconds_bucket{le="0.3"}"#, 1.0),
        (r#"predictor_latency_seconds_bucket{le="+Inf"}"#, 1.0),
    ]);
    assert!(
        text.contains("# HELP predictor_latency_seconds Time to answer one prediction.\n"),
        "{text}"
    );
    let open = daemon.get("/metrics", &[OPENMETRICS]).text();
    assert!(
        open.contains("# UNIT predictor_latency_seconds seconds\n"),
        "{open}"
    );
}

#[test]
fn tags_outside_the_label_schema_are_dropped_and_counted_per_sample() {
    let daemon = Daemon::with_config(
        "[[metric]]\nname = \"predictions_total\"\ntype = \"counter\"\nlabels = [\"model\"]\n",
    );
    daemon
        .send(&["predictions:1|c|#model:a,request_id:1\npredictions:1|c|#model:a,request_id:2\n"]);
    let text = daemon.wait_for(&[
        (r#"predictions_total{model="a"}"#, 2.0),
        (
            r#"tallyd_sample_errors_total{reason="label_not_in_schema"}"#,
            2.0,
        ),
    ]);
    assert!(!text.contains("request_id"), "{text}");
}

#[test]
fn a_missing_schema_label_is_simply_absent() {
    let daemon = Daemon::with_config(
        "[[metric]]\nname = \"queue_depth\"\ntype = \"gauge\"\nlabels = [\"queue\", \"region\"]\n",
    );
    daemon.send(&["queue_depth:4|g|#queue:jobs\n"]);
    daemon.wait_for_value(r#"queue_depth{queue="jobs"}"#, 4.0);
}

#[test]
fn a_sample_of_another_type_than_declared_is_a_type_conflict() {
    let daemon = Daemon::with_config("[[metric]]\nname = \"temperature\"\ntype = \"gauge\"\n");
    daemon.send(&["temperature:1|c\ntemperature:21|g\n"]);
    let text = daemon.wait_for(&[
        ("temperature", 21.0),
        (r#"tallyd_sample_errors_total{reason="type_conflict"}"#, 1.0),
    ]);
    assert_absent(&text, &["temperature_total"]);
}

#[test]
fn a_unit_that_does_not_end_the_name_is_refused_with_its_line() {
    let config = TempFile::new(
        "bad-unit.toml",
        "[udp]\nbatch = 8\n\n[[metric]]\nname = \"latency\"\ntype = \"histogram\"\nunit = \"seconds\"\n",
    );
    let output = run_tallyd(&[
        "--config",
        config.path().to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(
        stderr.contains("latency_seconds"),
        "the message suggests a name: {stderr}"
    );
}

#[test]
fn a_reload_resets_a_changed_definition_and_keeps_unchanged_ones() {
    let before = "\
[[metric]]\nname = \"kept_total\"\ntype = \"counter\"\nhelp = \"Kept.\"\n\n\
[[metric]]\nname = \"reshaped\"\ntype = \"histogram\"\nbuckets = [1.0]\n";
    let daemon = Daemon::with_config(before);
    daemon.send(&["kept:5|c\nreshaped:0.5|h\n"]);
    daemon.wait_for(&[("kept_total", 5.0), (r#"reshaped_bucket{le="1"}"#, 1.0)]);
    daemon
        .config_file()
        .write(&before.replace("buckets = [1.0]", "buckets = [2.0]"));
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_value(r#"tallyd_config_reloads_total{outcome="success"}"#, 1.0);
    daemon.send(&["reshaped:0.5|h\n"]);
    let text = daemon.wait_for(&[
        ("kept_total", 5.0),
        (r#"reshaped_bucket{le="2"}"#, 1.0),
        ("reshaped_count", 1.0),
    ]);
    assert_eq!(
        value_of(&text, r#"reshaped_bucket{le="1"}"#),
        None,
        "{text}"
    );
}

const NAMING_MISTAKES: &str = "\
[[metric]]
name = \"Latency\"
type = \"histogram\"
help = \"Time.\"

[[metric]]
name = \"predictor_queue_depth_total\"
type = \"gauge\"
help = \"Waiting requests.\"
";

#[test]
fn check_config_prints_naming_warnings_with_their_lines() {
    let config = TempFile::new("naming.toml", NAMING_MISTAKES);
    let output = run_tallyd(&[
        "--config",
        config.path().to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(r#"warning: line 2: metric[0].name "Latency": not snake_case"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"warning: line 7: metric[1].name "predictor_queue_depth_total": "_total" marks counters"#),
        "{stdout}"
    );
}

#[test]
fn strict_lint_turns_naming_warnings_into_a_refusal() {
    let config = TempFile::new(
        "strict.toml",
        &format!("[lint]\nstrict = true\n\n{NAMING_MISTAKES}"),
    );
    let output = run_tallyd(&[
        "--config",
        config.path().to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 5: metric[0].name"), "{stderr}");
}

/// The scraped value of `series`, which must be there.
fn scraped(text: &str, series: &str) -> f64 {
    value_of(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

/// `|value − exact| ≤ 1 %` of `exact`: the sketch's documented error bound (`src/summary.rs`).
fn assert_within_one_percent(value: f64, exact: f64, what: &str) {
    assert!(
        (value - exact).abs() <= 0.01 * exact.abs(),
        "{what}: {value} is not within 1% of {exact}"
    );
}

#[test]
fn a_declared_summary_serves_windowed_quantiles_with_cumulative_sum_and_count() {
    let daemon = Daemon::with_config(
        r#"
[[metric]]
name = "answer_seconds"
type = "summary"
help = "Time to answer."
unit = "seconds"
quantiles = [0.99, 0.5, 1.0]
"#,
    );
    // 1 ms … 100 ms, one observation each, as a timer.
    let lines: String = (1..=100)
        .map(|ms| format!("answer.seconds:{ms}|ms\n"))
        .collect();
    daemon.send(&[lines]);
    let text = daemon.wait_for_value("answer_seconds_count", 100.0);
    assert_eq!(declared_type(&text, "answer_seconds"), Some("summary"));
    // Exact ranks: q = 0.5 → the 50th value (50 ms), q = 0.99 → the 99th, q = 1 → the maximum.
    let median = scraped(&text, r#"answer_seconds{quantile="0.5"}"#);
    assert_within_one_percent(median, 0.050, "p50");
    let p99 = scraped(&text, r#"answer_seconds{quantile="0.99"}"#);
    assert_within_one_percent(p99, 0.099, "p99");
    assert_eq!(scraped(&text, r#"answer_seconds{quantile="1"}"#), 0.1);
    assert_within_one_percent(scraped(&text, "answer_seconds_sum"), 5.05, "sum");
    // Quantiles are listed in ascending order, as Prometheus client libraries do.
    let order: Vec<usize> = ["0.5", "0.99", "1"]
        .iter()
        .map(|q| {
            text.find(&format!("answer_seconds{{quantile=\"{q}\"}}"))
                .unwrap()
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    let open = daemon.get("/metrics", &[OPENMETRICS]).text();
    assert!(open.contains("# TYPE answer_seconds summary\n"), "{open}");
    assert!(open.contains("# UNIT answer_seconds seconds\n"), "{open}");
    assert!(open.contains("\nanswer_seconds_created "), "{open}");
}

#[test]
fn a_mapping_rule_with_observer_type_summary_makes_a_summary_per_label_set() {
    let daemon = Daemon::with_config(
        r#"
[[mapping]]
match = "predictor.*.latency"
name = "predictor_latency_seconds"
labels = { model = "$1" }
observer_type = "summary"
quantiles = [0.9]
"#,
    );
    daemon.send(&[
        "predictor.fraud-v2.latency:250|ms\npredictor.fraud-v2.latency:250|ms\n\
         predictor.fraud-v2.latency:500|ms\npredictor.churn.latency:40|ms|@0.5\n",
    ]);
    let text = daemon.wait_for(&[
        (r#"predictor_latency_seconds_count{model="fraud-v2"}"#, 3.0),
        // Sampled at 0.5: one observation of weight 2.
        (r#"predictor_latency_seconds_count{model="churn"}"#, 2.0),
    ]);
    assert_eq!(
        declared_type(&text, "predictor_latency_seconds"),
        Some("summary")
    );
    let p90 = scraped(
        &text,
        r#"predictor_latency_seconds{model="fraud-v2",quantile="0.9"}"#,
    );
    assert_within_one_percent(p90, 0.25, "p90 of 250, 250, 500 ms");
    let churn = scraped(
        &text,
        r#"predictor_latency_seconds{model="churn",quantile="0.9"}"#,
    );
    assert_within_one_percent(churn, 0.04, "p90 of churn");
    assert_within_one_percent(
        scraped(&text, r#"predictor_latency_seconds_sum{model="churn"}"#),
        0.08,
        "a weighted observation counts its weight in the sum",
    );
    assert!(
        !text.contains("predictor_latency_seconds_bucket"),
        "a summary has no buckets:\n{text}"
    );
}
