//! Declared metrics (`[[metric]]`) through the real binary: HELP, UNIT, buckets, the label
//! schema, the declared type, and what a reload does to a changed definition.

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
