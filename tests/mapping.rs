//! Mapping rules through the real binary: `[[mapping]]` in the config turns dotted StatsD names
//! into Prometheus names and labels, and `tallyd import-mapping` converts statsd_exporter files.

mod common;

use common::*;

#[test]
fn a_glob_rule_names_the_metric_and_captures_a_label() {
    let daemon = Daemon::with_config(
        r#"
[[mapping]]
match = "predictor.*.latency"
name = "predictor_latency_seconds"
labels = { model = "$1" }
"#,
    );
    daemon.send(&["predictor.fraud-v2.latency:250|ms\n"]);
    daemon.wait_for(&[
        (
            r#"predictor_latency_seconds_bucket{model="fraud-v2",le="0.25"}"#,
            1.0,
        ),
        (r#"predictor_latency_seconds_count{model="fraud-v2"}"#, 1.0),
    ]);
}

#[test]
fn a_drop_rule_drops_and_counts() {
    let daemon = Daemon::with_config("[[mapping]]\nmatch = \"debug.*\"\naction = \"drop\"\n");
    daemon.send(&["debug.noise:1|c\nkept:1|c\n"]);
    let text = daemon.wait_for(&[
        ("kept_total", 1.0),
        (
            r#"tallyd_sample_errors_total{reason="dropped_by_rule"}"#,
            1.0,
        ),
    ]);
    assert_absent(&text, &["debug_noise_total"]);
}

#[test]
fn a_regex_rule_with_named_groups_labels_the_series() {
    let daemon = Daemon::with_config(
        r#"
[[mapping]]
match = '^(?P<service>[a-z]+)\.http\.(\d{3})$'
match_type = "regex"
name = "http_responses"
labels = { service = "${service}", code = "$2" }
"#,
    );
    daemon.send(&["api.http.503:2|c\n"]);
    daemon.wait_for_value(r#"http_responses_total{code="503",service="api"}"#, 2.0);
}

#[test]
fn the_first_matching_rule_wins_and_type_filters_skip_rules() {
    let daemon = Daemon::with_config(
        r#"
[[mapping]]
match = "jobs.*"
match_metric_type = "gauge"
name = "jobs_gauge"

[[mapping]]
match = "jobs.*"
name = "jobs_first"
labels = { kind = "$1" }

[[mapping]]
match = "jobs.done"
name = "jobs_never"
"#,
    );
    daemon.send(&["jobs.done:3|c\njobs.queued:7|g\n"]);
    let text = daemon.wait_for(&[
        (r#"jobs_first_total{kind="done"}"#, 3.0),
        ("jobs_gauge", 7.0),
    ]);
    assert_absent(&text, &["jobs_never_total"]);
}

#[test]
fn rule_labels_override_tags_unless_the_rule_honours_them() {
    let daemon = Daemon::with_config(
        r#"
[[mapping]]
match = "override.*"
name = "override"
labels = { env = "rule" }

[[mapping]]
match = "honor.*"
name = "honor"
labels = { env = "rule" }
honor_labels = true
"#,
    );
    daemon.send(&["override.x:1|c|#env:tag\nhonor.x:1|c|#env:tag\n"]);
    daemon.wait_for(&[
        (r#"override_total{env="rule"}"#, 1.0),
        (r#"honor_total{env="tag"}"#, 1.0),
    ]);
}

#[test]
fn scale_help_and_buckets_come_from_the_rule() {
    let daemon = Daemon::with_config(
        r#"
[[mapping]]
match = "payload.bytes"
name = "payload_kilobytes"
help = "Request payloads, in kilobytes."
scale = 0.001
observer_type = "histogram"
buckets = [1.0, 10.0, 100.0]
"#,
    );
    daemon.send(&["payload.bytes:5000|h\n"]);
    let text = daemon.wait_for(&[
        (r#"payload_kilobytes_bucket{le="1"}"#, 0.0),
        (r#"payload_kilobytes_bucket{le="10"}"#, 1.0),
        ("payload_kilobytes_sum", 5.0),
    ]);
    assert!(
        text.contains("# HELP payload_kilobytes Request payloads, in kilobytes.\n"),
        "{text}"
    );
}

/// A negative `scale` may turn a gauge around, but never makes a counter go down: the write
/// seam refuses the negative increment and counts it.
#[test]
fn a_negative_scale_cannot_make_a_counter_decrease() {
    let daemon = Daemon::with_config(
        "[[mapping]]\nmatch = \"flip.*\"\nname = \"flipped_$1\"\nscale = -1.0\n",
    );
    daemon.send(&["flip.count:5|c\nflip.level:5|g\n"]);
    daemon.wait_for(&[
        ("flipped_level", -5.0),
        // The series exists (the refusal comes after it is found), at zero.
        ("flipped_count_total", 0.0),
        (
            r#"tallyd_sample_errors_total{reason="negative_counter"}"#,
            1.0,
        ),
    ]);
}

#[test]
fn sighup_replaces_the_rules_for_new_samples() {
    let daemon = Daemon::with_config("[[mapping]]\nmatch = \"svc.*\"\nname = \"old_name\"\n");
    daemon.send(&["svc.a:1|c\n"]);
    daemon.wait_for_value("old_name_total", 1.0);
    daemon
        .config_file()
        .write("[[mapping]]\nmatch = \"svc.*\"\nname = \"new_name\"\n");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_value(r#"tallyd_config_reloads_total{outcome="success"}"#, 1.0);
    daemon.send(&["svc.a:1|c\n"]);
    let text = daemon.wait_for_value("new_name_total", 1.0);
    assert_eq!(
        value_of(&text, "old_name_total"),
        Some(1.0),
        "old series keep their value"
    );
}

#[test]
fn a_bad_rule_is_refused_at_start_with_its_line() {
    let config = TempFile::new(
        "bad-mapping.toml",
        "\n[[mapping]]\nmatch = \"a.*\"\nname = \"$1_total\"\n",
    );
    let output = run_tallyd(&[
        "--config",
        config.path().to_str().unwrap(),
        "--check-config",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("${1}_total"),
        "the message says how to fix it: {stderr}"
    );
    assert!(stderr.contains("line"), "{stderr}");
}

#[test]
fn an_imported_statsd_exporter_mapping_serves_the_same_series() {
    let fixture = repo_root().join("tests/fixtures/mappings/glob_labels.yml");
    let output = run_tallyd(&["import-mapping", fixture.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let toml = String::from_utf8(output.stdout).unwrap();
    let daemon = Daemon::with_config(&toml);
    daemon.send(&["checkout.dispatcher.stripe.charge.ok:1|c\nqueue.eu.jobs.depth:12|g\n"]);
    daemon.wait_for(&[
        (
            r#"dispatcher_events_total{action="charge",job="checkout_dispatcher",outcome="ok",processor="stripe"}"#,
            1.0,
        ),
        (r#"queue_depth{queue="jobs",region="eu"}"#, 12.0),
    ]);
}

#[test]
fn import_mapping_of_a_missing_file_exits_2() {
    let output = run_tallyd(&["import-mapping", "/nonexistent/mapping.yml"]);
    assert_eq!(output.status.code(), Some(2));
}
