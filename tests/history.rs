//! `tallyd history export` and `tallyd history backup` against a running daemon's store: the
//! export is exact OpenMetrics that Debian's `promtool tsdb create-blocks-from openmetrics`
//! imports, sample for sample; a backup taken while tallyd writes exports the same; mistakes
//! get a message and an exit code, and change nothing.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{
    Daemon, define_custom as define, record_custom as record, require, tallyd_bin,
    tenant_call as call,
};
use serde_json::{Value, json};

const BASE: &str = "/api/v1/observability/custom-metrics";

fn history(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(tallyd_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .arg("history")
        .args(args)
        .output()
        .expect("run tallyd history")
}

fn export(data_dir: &Path, args: &[&str]) -> String {
    let mut all = vec!["export"];
    all.extend_from_slice(args);
    let output = history(data_dir, &all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A daemon with a counter, a gauge (in two tenants) and a histogram recorded at known times,
/// `base_s` (a whole minute, half an hour ago) and the minutes after it.
fn daemon_with_history() -> (Daemon, i64) {
    let tallyd = Daemon::start_with(&[], None);
    let addr = tallyd.http;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let base_s = (now_s - 1800) / 60 * 60;
    let at = |minute: i64| (base_s + minute * 60).to_string();
    define(
        addr,
        "t1",
        json!({"name": "jobs_done", "type": "counter", "labels": ["model"]}),
    );
    record(
        addr,
        "t1",
        "jobs_done",
        json!([
            {"value": 1, "labels": {"model": "a"}, "timestamp": at(0)},
            {"value": 2, "labels": {"model": "a"}, "timestamp": at(1)},
            // The same millisecond: one sample, the total after both.
            {"value": 3, "labels": {"model": "a"}, "timestamp": at(1)},
            {"value": 4, "labels": {"model": "a"}, "timestamp": at(2)},
            {"value": 5, "labels": {"model": "b"}, "timestamp": at(0)},
        ]),
    );
    for (tenant, offset) in [("t1", 0.0), ("t2", 100.0)] {
        define(
            addr,
            tenant,
            json!({"name": "queue_depth", "type": "gauge", "labels": ["model"],
                   "description": "Requests \"waiting\"\nin the queue."}),
        );
        record(
            addr,
            tenant,
            "queue_depth",
            json!([
                {"value": offset + 5.0, "labels": {"model": "a"}, "timestamp": at(0)},
                {"value": offset + 7.5, "labels": {"model": "a"}, "timestamp": at(1)},
                {"value": offset + 0.25, "labels": {"model": "a"}, "timestamp": at(2)},
            ]),
        );
    }
    define(
        addr,
        "t1",
        json!({"name": "latency_seconds", "type": "histogram", "labels": []}),
    );
    record(
        addr,
        "t1",
        "latency_seconds",
        json!([
            {"value": 0.25, "timestamp": at(0)},
            {"value": 0.5, "timestamp": at(0)},
            {"value": 1.5, "timestamp": at(3)},
        ]),
    );
    (tallyd, base_s)
}

#[test]
fn an_export_is_exact_openmetrics_by_type_tenant_and_range() {
    let (tallyd, base) = daemon_with_history();
    let dir = tallyd.data_dir.path();
    let t = |minute: i64| format!("{}.000", base + minute * 60);

    assert_eq!(
        export(dir, &["--metric", "jobs_done"]),
        format!(
            "# TYPE jobs_done counter\n\
             jobs_done_total{{model=\"a\",tenant=\"t1\"}} 1 {}\n\
             jobs_done_total{{model=\"a\",tenant=\"t1\"}} 6 {}\n\
             jobs_done_total{{model=\"a\",tenant=\"t1\"}} 10 {}\n\
             jobs_done_total{{model=\"b\",tenant=\"t1\"}} 5 {}\n\
             # EOF\n",
            t(0),
            t(1),
            t(2),
            t(0)
        )
    );
    assert_eq!(
        export(dir, &["--metric", "queue_depth", "--tenant", "t2"]),
        format!(
            "# TYPE queue_depth gauge\n\
             # HELP queue_depth Requests \\\"waiting\\\"\\nin the queue.\n\
             queue_depth{{model=\"a\",tenant=\"t2\"}} 105 {}\n\
             queue_depth{{model=\"a\",tenant=\"t2\"}} 107.5 {}\n\
             queue_depth{{model=\"a\",tenant=\"t2\"}} 100.25 {}\n\
             # EOF\n",
            t(0),
            t(1),
            t(2)
        )
    );
    // Both tenants under one family header; a range cuts at its start (inclusive) and end.
    let both = export(
        dir,
        &[
            "--metric",
            "queue_depth",
            "--start",
            &(base + 60).to_string(),
            "--end",
            &(base + 120).to_string(),
        ],
    );
    assert_eq!(both.matches("# TYPE").count(), 1, "{both}");
    assert!(
        both.contains(&format!("tenant=\"t1\"}} 7.5 {}\n", t(1))),
        "{both}"
    );
    assert!(
        both.contains(&format!("tenant=\"t2\"}} 107.5 {}\n", t(1))),
        "{both}"
    );
    assert_eq!(
        both.lines()
            .filter(|l| l.starts_with("queue_depth{"))
            .count(),
        2
    );
    // Histograms: running count and sum, as a summary.
    assert_eq!(
        export(dir, &["--metric", "latency_seconds"]),
        format!(
            "# TYPE latency_seconds summary\n\
             latency_seconds_count{{tenant=\"t1\"}} 2 {0}\n\
             latency_seconds_sum{{tenant=\"t1\"}} 0.75 {0}\n\
             latency_seconds_count{{tenant=\"t1\"}} 3 {1}\n\
             latency_seconds_sum{{tenant=\"t1\"}} 2.25 {1}\n\
             # EOF\n",
            t(0),
            t(3)
        )
    );
}

#[test]
fn promtool_imports_an_export_sample_for_sample() {
    if !require(
        common::on_path("promtool"),
        "promtool (Debian's prometheus package; scripts/setup-test-deps)",
    ) {
        return;
    }
    let (tallyd, base) = daemon_with_history();
    let work = tempfile::tempdir().unwrap();
    for metric in ["jobs_done", "queue_depth", "latency_seconds"] {
        let file = work.path().join(format!("{metric}.om"));
        let output = history(
            tallyd.data_dir.path(),
            &[
                "export",
                "--metric",
                metric,
                "--output",
                file.to_str().unwrap(),
            ],
        );
        assert!(output.status.success());
        let blocks = work.path().join("blocks");
        let imported = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&file)
            .arg(&blocks)
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "promtool refused the export of {metric}:\n{}{}",
            String::from_utf8_lossy(&imported.stdout),
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    // promtool 2.42's dump opens the directory as a whole TSDB, which has a WAL.
    std::fs::create_dir_all(work.path().join("blocks/wal")).unwrap();
    let dump = Command::new("promtool")
        .args(["tsdb", "dump"])
        .arg(work.path().join("blocks"))
        .output()
        .unwrap();
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    // `{__name__="…", label="…"} value milliseconds`, one line per sample.
    let ms = |minute: i64| (base + minute * 60) * 1000;
    let expected = [
        format!(
            "{{__name__=\"jobs_done_total\", model=\"a\", tenant=\"t1\"}} 6 {}",
            ms(1)
        ),
        format!(
            "{{__name__=\"jobs_done_total\", model=\"b\", tenant=\"t1\"}} 5 {}",
            ms(0)
        ),
        format!(
            "{{__name__=\"queue_depth\", model=\"a\", tenant=\"t2\"}} 100.25 {}",
            ms(2)
        ),
        format!(
            "{{__name__=\"latency_seconds_sum\", tenant=\"t1\"}} 2.25 {}",
            ms(3)
        ),
    ];
    for sample in &expected {
        assert!(
            dump.contains(sample.as_str()),
            "{sample} is not in:\n{dump}"
        );
    }
    // 4 counter samples, 6 gauge samples, 2 × 2 summary samples: nothing more, nothing less.
    let samples = dump.lines().filter(|l| l.starts_with("{__name__=")).count();
    assert_eq!(samples, 14, "{dump}");
}

#[test]
fn a_backup_taken_while_tallyd_runs_is_a_whole_store() {
    let (tallyd, base) = daemon_with_history();
    let dir = tallyd.data_dir.path();
    let restored = tempfile::tempdir().unwrap();
    let copy = restored.path().join("tallyd.db");
    let output = history(dir, &["backup", "--to", copy.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for metric in ["jobs_done", "queue_depth", "latency_seconds"] {
        assert_eq!(
            export(restored.path(), &["--metric", metric]),
            export(dir, &["--metric", metric])
        );
    }
    // A backup never overwrites.
    let again = history(dir, &["backup", "--to", copy.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
    // The restored store serves: a daemon started on it answers the query.
    let daemon = Daemon::start_with(&["--data-dir", restored.path().to_str().unwrap()], None);
    let (status, answer) = call(
        daemon.http,
        "GET",
        &format!(
            "{BASE}/queue_depth/query?start={base}&end={}&step=1h&aggregation=count",
            base + 600
        ),
        "t2",
        Value::Null,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["series"][0]["points"][0]["value"], 3.0, "{answer}");
}

#[test]
fn mistakes_get_a_message_and_change_nothing() {
    let (tallyd, _) = daemon_with_history();
    let dir = tallyd.data_dir.path();
    let unknown = history(dir, &["export", "--metric", "nope"]);
    assert_eq!(unknown.status.code(), Some(1));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        message.contains("jobs_done, latency_seconds, queue_depth"),
        "{message}"
    );
    let bad_time = history(
        dir,
        &["export", "--metric", "jobs_done", "--start", "yesterday"],
    );
    assert_eq!(bad_time.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("--start"));
    // No store: an error, and nothing created.
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("absent");
    let output = history(&missing, &["export", "--metric", "jobs_done"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));
    assert!(!missing.exists());
    // A failed export to a file leaves no file behind.
    let file = empty.path().join("out.om");
    let output = history(
        dir,
        &[
            "export",
            "--metric",
            "nope",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(!file.exists());
}
