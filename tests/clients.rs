//! Real third-party StatsD clients against a live tallyd: the Python `datadog` (DogStatsD) and
//! `statsd` (Etsy) packages. Each script in `tests/clients/` sends a fixed set of metrics; the
//! test checks the exact series they become.
//!
//! Without Python or the packages the tests are skipped with a notice, except under CI
//! (`scripts/setup-test-deps` installs them), where they fail.

mod common;

use std::process::Command;

use common::{Daemon, repo_root, require};

/// Can `python3` import `module`?
fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Runs `tests/clients/<script> 127.0.0.1 <udp port>` and insists it succeeds.
fn run_client(daemon: &Daemon, script: &str) {
    let path = repo_root().join("tests/clients").join(script);
    let addr = daemon.udp[0];
    let output = Command::new("python3")
        .arg(&path)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn skipped(kind: &str) -> String {
    format!("tallyd_extensions_skipped_total{{kind=\"{kind}\"}}")
}

#[test]
fn the_datadog_dogstatsd_client_is_understood() {
    if !require(python_has("datadog"), "python3 with the `datadog` package") {
        return;
    }
    let daemon = Daemon::start();
    run_client(&daemon, "datadog_client.py");
    daemon.wait_for(&[
        // increment() twice, and once by 3 with other tags
        (r#"predictions_total{model="v1"}"#.to_owned(), 2.0),
        (r#"predictions_total{model="v2"}"#.into(), 3.0),
        // gauge()
        ("queue_depth".into(), 42.0),
        // histogram(): `h`, observed unchanged (100 is above every default bound)
        (r#"latency_ms_bucket{le="10"}"#.into(), 0.0),
        (r#"latency_ms_bucket{le="+Inf"}"#.into(), 1.0),
        ("latency_ms_sum".into(), 100.0),
        ("latency_ms_count".into(), 1.0),
        // timing(): 250 ms is 0.25 s, on a bucket bound
        (r#"infer_bucket{le="0.1"}"#.into(), 0.0),
        (r#"infer_bucket{le="0.25"}"#.into(), 1.0),
        (r#"infer_bucket{le="+Inf"}"#.into(), 1.0),
        ("infer_sum".into(), 0.25),
        ("infer_count".into(), 1.0),
        // distribution(): `d`, observed unchanged
        (r#"tokens_bucket{le="+Inf"}"#.into(), 1.0),
        ("tokens_sum".into(), 512.0),
        ("tokens_count".into(), 1.0),
        // set(): alice, bob, alice
        ("users".into(), 2.0),
        // event() and service_check(): skipped and counted
        (skipped("event"), 1.0),
        (skipped("service_check"), 1.0),
        // nothing refused
        ("tallyd_samples_total".into(), 10.0),
    ]);
}

#[test]
fn the_statsd_package_client_is_understood() {
    if !require(python_has("statsd"), "python3 with the `statsd` package") {
        return;
    }
    let daemon = Daemon::start();
    run_client(&daemon, "statsd_client.py");
    daemon.wait_for(&[
        // incr(), incr(2)
        ("requests_total", 3.0),
        // gauge()
        ("temperature", 21.0),
        // timing(): 40 ms is 0.04 s
        (r#"render_bucket{le="0.025"}"#, 0.0),
        (r#"render_bucket{le="0.05"}"#, 1.0),
        ("render_sum", 0.04),
        ("render_count", 1.0),
        // set()
        ("visitors", 1.0),
        // the pipeline: one datagram of five lines, dots sanitised
        ("batch_jobs_total", 3.0),
        ("level", 3.0),
        (r#"batch_step_bucket{le="1"}"#, 0.0),
        (r#"batch_step_bucket{le="2.5"}"#, 1.0),
        ("batch_step_sum", 1.5),
        // 6 datagrams, 10 lines, nothing refused
        ("tallyd_lines_total", 10.0),
        ("tallyd_samples_total", 10.0),
    ]);
}
