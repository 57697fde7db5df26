//! End-to-end tests of tallyd: StatsD datagrams in over UDP, Prometheus text out over HTTP, and
//! the process's life (flags, exit codes, signals, readiness).
//!
//! Each test states one behaviour of DESIGN.md §3–§6 and checks it on free loopback ports: send
//! one datagram, then poll `/metrics` until the expected series hold (UDP is asynchronous) and
//! compare exact values. What only needs the sockets runs tallyd in-process (`InProcess`: the
//! library's `runtime::run`, stopped by the test's own token); what needs the process — flags,
//! exit codes, signals, the log, the README's commands, real Prometheus parsers against the
//! binary — runs the real binary (`Daemon`). Helpers live in `common`.

mod common;

use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::{
    ACCEPT_OPENMETRICS, CONTENT_TYPE_OPENMETRICS, CONTENT_TYPE_TEXT, Daemon, InProcess, TempFile,
    assert_absent, declared_type, http_request, on_path, parse_exposition, promtool, repo_root,
    require, run_tallyd, value_of,
};

/// `tallyd_sample_errors_total{reason="<reason>"}`
fn errors(reason: &str) -> String {
    format!("tallyd_sample_errors_total{{reason=\"{reason}\"}}")
}

/// `tallyd_extensions_skipped_total{kind="<kind>"}`
fn skipped(kind: &str) -> String {
    format!("tallyd_extensions_skipped_total{{kind=\"{kind}\"}}")
}

fn reloads(outcome: &str) -> String {
    format!("tallyd_config_reloads_total{{outcome=\"{outcome}\"}}")
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// ---------------------------------------------------------------------------------------------
// The README's done-check

#[test]
fn a_tagged_counter_is_served_with_a_total_suffix() {
    let daemon = InProcess::start();
    daemon.send(&["x:1|c|#a:b\n"]);
    let text = daemon.wait_for_value(r#"x_total{a="b"}"#, 1.0);
    assert!(
        text.lines().any(|line| line == r#"x_total{a="b"} 1"#),
        "the README promises the exact line `x_total{{a=\"b\"}} 1`; the scrape was:\n{text}"
    );
}

#[test]
fn the_documented_config_file_runs_the_daemon() {
    let config = repo_root().join("config/tallyd.toml");
    let daemon = Daemon::start_with(&["--config", config.to_str().unwrap()], None);
    daemon.send(&["x:1|c|#a:b\n"]);
    daemon.wait_for_value(r#"x_total{a="b"}"#, 1.0);
}

/// The README's first command is `cargo run --release -- --config config/tallyd.toml`: with two
/// binaries in the package, `cargo run` must know to start the daemon.
#[test]
fn the_readme_cargo_run_command_starts_the_daemon() {
    let output = std::process::Command::new(env!("CARGO"))
        .args(["run", "--release", "--quiet", "--"])
        .args(["--config", "config/tallyd.toml", "--check-config"])
        .current_dir(repo_root())
        .output()
        .expect("run cargo");
    assert!(
        output.status.success() && stdout_of(&output).contains("configuration is valid"),
        "cargo run: {}\n{}",
        output.status,
        stderr_of(&output)
    );
}

// ---------------------------------------------------------------------------------------------
// Counters

/// The niceness of process `pid`'s main thread, and each thread's by name (field 19 of
/// `/proc/…/stat`).
fn thread_niceness(pid: libc::pid_t) -> (i64, Vec<(String, i64)>) {
    let parse = |stat: String| {
        let (head, rest) = stat.rsplit_once(')').expect("(comm) in stat");
        let name = head.split_once('(').expect("(comm) in stat").1.to_owned();
        // After the name come fields 3, 4, …: niceness is field 19.
        let nice = rest.split_whitespace().nth(16).expect("field 19");
        (name, nice.parse::<i64>().expect("a niceness"))
    };
    let main = parse(std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap()).1;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .map(parse)
        .collect();
    (main, threads)
}

/// Runs `f` with the calling thread allowed only on `cpus`; a process it starts inherits that.
fn on_cpus<T>(cpus: &[usize], f: impl FnOnce() -> T) -> T {
    // SAFETY: plain calls on a zeroed `cpu_set_t` owned here, for the calling thread (pid 0).
    unsafe {
        let mut before: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, size, &mut before), 0);
        let mut only: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut only);
        }
        assert_eq!(libc::sched_setaffinity(0, size, &only), 0);
        let result = f();
        assert_eq!(libc::sched_setaffinity(0, size, &before), 0);
        result
    }
}

#[test]
fn a_daemon_on_one_cpu_runs_one_async_worker() {
    let pinned = on_cpus(&[0], Daemon::start);
    assert!(
        pinned
            .log()
            .contains("async runtime workers=1 usable_cpus=1"),
        "{}",
        pinned.log()
    );
    assert!(pinned.scrape().contains("tallyd_"), "it serves");
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        let free = Daemon::start();
        assert!(
            free.log().contains("async runtime workers=2 usable_cpus="),
            "{}",
            free.log()
        );
    }
}

#[test]
fn api_and_store_threads_yield_the_cpu_to_the_receive_threads_and_the_scrape() {
    let daemon = Daemon::start();
    // The store's threads start with the first API request.
    daemon.get("/api/v1/observability/custom-metrics", &[]);
    assert_eq!(daemon.get("/metrics", &[]).status, 200);
    let (main, threads) = thread_niceness(daemon.pid());
    let lower = (main + i64::from(tallyd::priority::BACKGROUND_NICENESS)).min(19);
    let count = |prefix: &str, nice: i64| {
        (threads.iter())
            .filter(|(name, n)| name.starts_with(prefix) && *n == nice)
            .count()
    };
    let all = |prefix: &str| {
        threads
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .count()
    };
    for kept in ["tallyd-udp", "tallyd-render"] {
        assert!(all(kept) > 0, "no {kept} thread: {threads:?}");
        assert_eq!(count(kept, main), all(kept), "{kept}: {threads:?}");
    }
    // The runtime's workers (and the blocking threads they start), the store's two.
    assert!(all("tallyd-http") >= 2, "{threads:?}");
    for background in ["tallyd-http", "tallyd-store", "tallyd-checkpoi"] {
        assert_eq!(
            count(background, lower),
            all(background),
            "{background}: {threads:?}"
        );
    }
}

#[test]
fn a_counter_adds_every_increment() {
    let daemon = InProcess::start();
    daemon.send(&["hits:1|c\nhits:2|c\n"]);
    daemon.wait_for_value("hits_total", 3.0);
}

#[test]
fn a_sampled_counter_adds_value_divided_by_rate() {
    let daemon = InProcess::start();
    daemon.send(&["sampled:1|c|@0.1\n"]);
    daemon.wait_for_value("sampled_total", 10.0);
}

#[test]
fn a_name_already_ending_in_total_is_not_suffixed_twice() {
    let daemon = InProcess::start();
    daemon.send(&["jobs_total:1|c\n"]);
    let text = daemon.wait_for_value("jobs_total", 1.0);
    assert_absent(&text, &["jobs_total_total"]);
}

#[test]
fn a_negative_counter_is_refused_and_counted() {
    let daemon = InProcess::start();
    daemon.send(&["down:-1|c\nup:1|c\n"]);
    let text = daemon.wait_for(&[(errors("negative_counter"), 1.0), ("up_total".into(), 1.0)]);
    assert_absent(&text, &["down_total"]);
}

// ---------------------------------------------------------------------------------------------
// Gauges

#[test]
fn a_gauge_takes_the_last_value() {
    let daemon = InProcess::start();
    daemon.send(&["depth:5|g\ndepth:7|g\n"]);
    daemon.wait_for_value("depth", 7.0);
}

#[test]
fn a_signed_gauge_value_adds_to_the_gauge_by_default() {
    let daemon = InProcess::start();
    daemon.send(&["level:10|g\nlevel:+5|g\nlevel:-3|g\n"]);
    daemon.wait_for_value("level", 12.0);
}

#[test]
fn a_signed_gauge_value_is_absolute_when_gauge_deltas_is_off() {
    let daemon = InProcess::with_config("[statsd]\ngauge_deltas = false\n");
    daemon.send(&["level:10|g\nlevel:+5|g\nlevel:-3|g\n"]);
    daemon.wait_for_value("level", -3.0);
}

// ---------------------------------------------------------------------------------------------
// Timers, histograms, distributions

#[test]
fn a_timer_observes_seconds_into_the_default_buckets() {
    let daemon = InProcess::start();
    daemon.send(&["infer:250|ms\n"]);
    let text = daemon.wait_for(&[
        (r#"infer_bucket{le="0.005"}"#, 0.0),
        (r#"infer_bucket{le="0.01"}"#, 0.0),
        (r#"infer_bucket{le="0.025"}"#, 0.0),
        (r#"infer_bucket{le="0.05"}"#, 0.0),
        (r#"infer_bucket{le="0.1"}"#, 0.0),
        (r#"infer_bucket{le="0.25"}"#, 1.0),
        (r#"infer_bucket{le="0.5"}"#, 1.0),
        (r#"infer_bucket{le="1"}"#, 1.0),
        (r#"infer_bucket{le="2.5"}"#, 1.0),
        (r#"infer_bucket{le="5"}"#, 1.0),
        (r#"infer_bucket{le="10"}"#, 1.0),
        (r#"infer_bucket{le="+Inf"}"#, 1.0),
        ("infer_sum", 0.25),
        ("infer_count", 1.0),
    ]);
    assert_eq!(declared_type(&text, "infer"), Some("histogram"), "{text}");
    let buckets = parse_exposition(&text)
        .iter()
        .filter(|s| s.id.name == "infer_bucket")
        .count();
    assert_eq!(buckets, 12, "11 default bounds and +Inf:\n{text}");
}

#[test]
fn a_histogram_value_is_observed_unchanged() {
    let daemon = InProcess::start();
    daemon.send(&["size:3|h\n"]);
    daemon.wait_for(&[
        (r#"size_bucket{le="2.5"}"#, 0.0),
        (r#"size_bucket{le="5"}"#, 1.0),
        (r#"size_bucket{le="+Inf"}"#, 1.0),
        ("size_sum", 3.0),
        ("size_count", 1.0),
    ]);
}

#[test]
fn a_distribution_value_is_observed_unchanged() {
    let daemon = InProcess::start();
    daemon.send(&["tokens:0.3|d\n"]);
    daemon.wait_for(&[
        (r#"tokens_bucket{le="0.25"}"#, 0.0),
        (r#"tokens_bucket{le="0.5"}"#, 1.0),
        (r#"tokens_bucket{le="+Inf"}"#, 1.0),
        ("tokens_sum", 0.3),
        ("tokens_count", 1.0),
    ]);
}

#[test]
fn a_sampled_timer_is_one_observation_weighted_one_over_rate() {
    let daemon = InProcess::start();
    daemon.send(&["lat:500|ms|@0.25\n"]);
    daemon.wait_for(&[
        (r#"lat_bucket{le="0.25"}"#, 0.0),
        (r#"lat_bucket{le="0.5"}"#, 4.0),
        (r#"lat_bucket{le="+Inf"}"#, 4.0),
        ("lat_sum", 2.0),
        ("lat_count", 4.0),
    ]);
}

#[test]
fn a_sampled_observation_weight_is_rounded() {
    // 1 / 0.3 = 3.33…, rounded to 3.
    let daemon = InProcess::start();
    daemon.send(&["batch:1|h|@0.3\n"]);
    daemon.wait_for(&[
        (r#"batch_bucket{le="1"}"#, 3.0),
        ("batch_sum", 3.0),
        ("batch_count", 3.0),
    ]);
}

#[test]
fn packed_values_are_one_observation_each() {
    let daemon = InProcess::start();
    daemon.send(&["sizes:1:2:3|h\n"]);
    daemon.wait_for(&[
        (r#"sizes_bucket{le="0.5"}"#, 0.0),
        (r#"sizes_bucket{le="1"}"#, 1.0),
        (r#"sizes_bucket{le="2.5"}"#, 2.0),
        (r#"sizes_bucket{le="5"}"#, 3.0),
        ("sizes_sum", 6.0),
        ("sizes_count", 3.0),
    ]);
}

#[test]
fn packed_counter_values_each_add() {
    let daemon = InProcess::start();
    daemon.send(&["packed:1:2:4|c\n"]);
    daemon.wait_for_value("packed_total", 7.0);
}

#[test]
fn histogram_buckets_are_configurable() {
    let daemon = InProcess::with_config("[aggregation]\nhistogram_buckets = [1.0, 2.0]\n");
    daemon.send(&["custom:1.5|h\n"]);
    let text = daemon.wait_for(&[
        (r#"custom_bucket{le="1"}"#, 0.0),
        (r#"custom_bucket{le="2"}"#, 1.0),
        (r#"custom_bucket{le="+Inf"}"#, 1.0),
        ("custom_count", 1.0),
    ]);
    let buckets = parse_exposition(&text)
        .iter()
        .filter(|s| s.id.name == "custom_bucket")
        .count();
    assert_eq!(buckets, 3, "two configured bounds and +Inf:\n{text}");
}

// ---------------------------------------------------------------------------------------------
// Sets

#[test]
fn a_set_is_a_gauge_of_distinct_members() {
    let daemon = InProcess::start();
    daemon.send(&["users:alice|s\nusers:bob|s\nusers:alice|s\n"]);
    let text = daemon.wait_for_value("users", 2.0);
    assert_eq!(declared_type(&text, "users"), Some("gauge"), "{text}");
}

/// The key's old place (`[statsd]`, before `[aggregation]`) still works.
#[test]
fn a_full_set_drops_new_members_and_counts_them() {
    let daemon = InProcess::with_config("[statsd]\nmax_set_members = 2\n");
    daemon.send(&["seen:a|s\nseen:b|s\nseen:c|s\n"]);
    daemon.wait_for(&[("seen".to_owned(), 2.0), (errors("set_full"), 1.0)]);
}

// ---------------------------------------------------------------------------------------------
// Names and tags

#[test]
fn dots_and_dashes_in_a_name_become_underscores() {
    let daemon = InProcess::start();
    daemon.send(&["a.b-c:1|c\n"]);
    daemon.wait_for_value("a_b_c_total", 1.0);
}

#[test]
fn a_run_of_dashes_in_a_name_becomes_one_underscore() {
    let daemon = InProcess::start();
    daemon.send(&["fraud--v2:1|c\n"]);
    daemon.wait_for_value("fraud_v2_total", 1.0);
}

#[test]
fn a_name_starting_with_a_digit_gets_an_underscore_prefix() {
    let daemon = InProcess::start();
    daemon.send(&["9lives:1|c\n"]);
    daemon.wait_for_value("_9lives_total", 1.0);
}

#[test]
fn tag_keys_are_sanitised_like_names() {
    let daemon = InProcess::start();
    daemon.send(&["tagged:1|c|#model.version:v1,team-name:ml\n"]);
    daemon.wait_for_value(r#"tagged_total{model_version="v1",team_name="ml"}"#, 1.0);
}

#[test]
fn reserved_tag_keys_are_exported_under_another_name() {
    let daemon = InProcess::start();
    daemon.send(&["reserved:1|h|#le:a,quantile:b,__x:c\n"]);
    daemon.wait_for_value(
        r#"reserved_count{exported_le="a",exported_quantile="b",exported___x="c"}"#,
        1.0,
    );
}

#[test]
fn a_tag_value_may_contain_colons() {
    let daemon = InProcess::start();
    daemon.send(&["fetch:1|c|#url:http://example.com:8080/x\n"]);
    daemon.wait_for_value(r#"fetch_total{url="http://example.com:8080/x"}"#, 1.0);
}

#[test]
fn the_last_of_duplicate_tag_keys_wins() {
    let daemon = InProcess::start();
    daemon.send(&["dup:1|c|#a:first,a:second\n"]);
    let text = daemon.wait_for_value(r#"dup_total{a="second"}"#, 1.0);
    assert_eq!(
        parse_exposition(&text)
            .iter()
            .filter(|s| s.id.name == "dup_total")
            .count(),
        1,
        "{text}"
    );
}

#[test]
fn a_valueless_tag_is_dropped_and_counted() {
    let daemon = InProcess::start();
    daemon.send(&["flagged:1|c|#canary,a:b\n"]);
    daemon.wait_for(&[
        (r#"flagged_total{a="b"}"#.to_owned(), 1.0),
        (errors("tag_without_value"), 1.0),
    ]);
}

#[test]
fn an_empty_tag_value_is_dropped_and_counted() {
    let daemon = InProcess::start();
    daemon.send(&["emptied:1|c|#k:,a:b\n"]);
    daemon.wait_for(&[
        (r#"emptied_total{a="b"}"#.to_owned(), 1.0),
        (errors("empty_tag_value"), 1.0),
    ]);
}

#[test]
fn influxdb_name_tags_become_labels() {
    let daemon = InProcess::start();
    daemon.send(&["influx,k=v,k2=v2:1|c\n"]);
    daemon.wait_for_value(r#"influx_total{k="v",k2="v2"}"#, 1.0);
}

#[test]
fn librato_name_tags_become_labels() {
    let daemon = InProcess::start();
    daemon.send(&["librato#k=v,k2=v2:1|c\n"]);
    daemon.wait_for_value(r#"librato_total{k="v",k2="v2"}"#, 1.0);
}

#[test]
fn signalfx_name_tags_become_labels() {
    let daemon = InProcess::start();
    daemon.send(&["signalfx[k=v,k2=v2]:1|c\n"]);
    daemon.wait_for_value(r#"signalfx_total{k="v",k2="v2"}"#, 1.0);
}

#[test]
fn name_tags_mixed_with_dogstatsd_tags_refuse_the_line() {
    let daemon = InProcess::start();
    daemon.send(&["mixed,k=v:1|c|#a:b\nafter:1|c\n"]);
    let text = daemon.wait_for(&[(errors("malformed_tags"), 1.0), ("after_total".into(), 1.0)]);
    assert_absent(&text, &["mixed_total"]);
}

#[test]
fn a_container_id_becomes_the_container_id_label() {
    let daemon = InProcess::start();
    daemon.send(&["boxed:1|c|#a:b|c:abc123\n"]);
    daemon.wait_for_value(r#"boxed_total{a="b",container_id="abc123"}"#, 1.0);
}

#[test]
fn the_container_id_label_can_be_turned_off() {
    let daemon = InProcess::with_config("[statsd]\ncontainer_id_label = false\n");
    daemon.send(&["boxed:1|c|c:abc123\n"]);
    daemon.wait_for_value("boxed_total", 1.0);
}

#[test]
fn an_empty_container_id_refuses_the_line() {
    let daemon = InProcess::start();
    daemon.send(&["boxed:1|c|c:\nafter:1|c\n"]);
    let text = daemon.wait_for(&[
        (errors("empty_container_id"), 1.0),
        ("after_total".into(), 1.0),
    ]);
    assert_absent(&text, &["boxed_total"]);
}

#[test]
fn timestamp_external_data_and_cardinality_fields_are_ignored() {
    let daemon = InProcess::start();
    daemon.send(&["modern:1|c|#a:b|T1700000000|e:it-false,cn-app|card:high\n"]);
    daemon.wait_for_value(r#"modern_total{a="b"}"#, 1.0);
}

// ---------------------------------------------------------------------------------------------
// What is refused, and what is spared

#[test]
fn events_and_service_checks_are_skipped_and_counted() {
    let daemon = InProcess::start();
    daemon.send(&["_e{5,4}:title|text|#a:b\n_sc|model.up|0|#a:b\nafter:1|c\n"]);
    daemon.wait_for(&[
        (skipped("event"), 1.0),
        (skipped("service_check"), 1.0),
        ("after_total".into(), 1.0),
    ]);
}

#[test]
fn a_bad_line_in_a_datagram_spares_its_neighbours() {
    let daemon = InProcess::start();
    daemon.send(&["before:1|c\nbroken:oops|c\nafter:2|c\n"]);
    let text = daemon.wait_for(&[
        ("before_total".to_owned(), 1.0),
        ("after_total".into(), 2.0),
        (errors("invalid_value"), 1.0),
    ]);
    assert_absent(&text, &["broken_total"]);
}

#[test]
fn malformed_lines_are_counted_by_reason() {
    let daemon = InProcess::start();
    daemon.send(&[concat!(
        "no_colon|c\n",
        "no_type:1\n",
        "bad_type:1|x\n",
        "bad_value:abc|c\n",
        "tallyd_mine:1|c\n",
        "after:1|c\n",
    )]);
    let text = daemon.wait_for(&[
        (errors("missing_colon"), 1.0),
        (errors("missing_type"), 1.0),
        (errors("unknown_type"), 1.0),
        (errors("invalid_value"), 1.0),
        (errors("invalid_name"), 1.0),
        ("after_total".into(), 1.0),
    ]);
    assert_absent(
        &text,
        &[
            "no_type_total",
            "bad_type",
            "bad_value_total",
            "tallyd_mine_total",
        ],
    );
}

#[test]
fn non_finite_values_are_refused() {
    let daemon = InProcess::start();
    daemon.send(&["nan_gauge:NaN|g\ninf_histogram:+Inf|h\nafter:1|c\n"]);
    let text = daemon.wait_for(&[
        (errors("non_finite_value"), 2.0),
        ("after_total".into(), 1.0),
    ]);
    assert_absent(&text, &["nan_gauge", "inf_histogram_count"]);
}

#[test]
fn an_invalid_sample_rate_counts_as_one_and_is_counted() {
    let daemon = InProcess::start();
    daemon.send(&["too_high:1|c|@2\nnot_a_rate:1|c|@abc\n"]);
    daemon.wait_for(&[
        ("too_high_total".to_owned(), 1.0),
        ("not_a_rate_total".into(), 1.0),
        (errors("invalid_sample_rate"), 2.0),
    ]);
}

#[test]
fn invalid_utf8_refuses_the_line() {
    let daemon = InProcess::start();
    daemon.send(&[b"bad\xffname:1|c\nafter:1|c\n".as_slice()]);
    daemon.wait_for(&[(errors("invalid_utf8"), 1.0), ("after_total".into(), 1.0)]);
}

#[test]
fn a_type_conflict_is_refused_and_the_scrape_still_succeeds() {
    let daemon = InProcess::start();
    daemon.send(&["clash:1|c\nclash:2|g\nclash:3|ms\n"]);
    // `wait_for` scrapes and insists on 200 every time.
    let text = daemon.wait_for(&[
        ("clash_total".to_owned(), 1.0),
        (errors("type_conflict"), 2.0),
    ]);
    assert_absent(&text, &["clash", "clash_count"]);
    assert_eq!(
        declared_type(&text, "clash_total"),
        Some("counter"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// tallyd's own metrics

#[test]
fn packets_bytes_lines_samples_and_series_are_counted() {
    let daemon = InProcess::start();
    let datagram = "one:1|c\ntwo:1:2|h\n";
    daemon.send(&[datagram]);
    let listener = daemon.udp[0];
    let text = daemon.wait_for(&[
        (
            format!(r#"tallyd_udp_packets_total{{listener="{listener}"}}"#),
            1.0,
        ),
        (
            format!(r#"tallyd_udp_bytes_total{{listener="{listener}"}}"#),
            datagram.len() as f64,
        ),
        ("tallyd_lines_total".into(), 2.0),
        ("tallyd_samples_total".into(), 3.0),
        (r#"tallyd_series{type="counter"}"#.into(), 1.0),
        (r#"tallyd_series{type="histogram"}"#.into(), 1.0),
        (r#"tallyd_series{type="gauge"}"#.into(), 0.0),
        (
            format!(
                r#"tallyd_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ]);
    let names: Vec<String> = parse_exposition(&text)
        .into_iter()
        .map(|s| s.id.name)
        .collect();
    for process_metric in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            names.iter().any(|n| n == process_metric),
            "no {process_metric} in the scrape:\n{text}"
        );
    }
}

#[test]
fn statsd_exporter_names_drop_the_total_suffix_in_text_format_only() {
    let daemon = InProcess::with_config("[exposition]\nstatsd_exporter_names = true\n");
    daemon.send(&["legacy:1|c\n"]);
    let text = daemon.wait_for_value("legacy", 1.0);
    assert_absent(&text, &["legacy_total"]);
    assert_eq!(declared_type(&text, "legacy"), Some("counter"), "{text}");

    let openmetrics = daemon.get("/metrics", &[("Accept", ACCEPT_OPENMETRICS)]);
    let text = openmetrics.text();
    assert_eq!(
        value_of(&text, "legacy_total"),
        Some(1.0),
        "OpenMetrics always uses _total:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[test]
fn metrics_defaults_to_the_text_format() {
    let daemon = InProcess::start();
    daemon.send(&["plain:1|c\n"]);
    daemon.wait_for_value("plain_total", 1.0);
    let response = daemon.get("/metrics", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(CONTENT_TYPE_TEXT));
    assert_eq!(response.header("content-encoding"), None);
    let text = response.text();
    // In 0.0.4 the TYPE line names the sample itself, or parsers see an untyped `plain_total`.
    assert_eq!(
        declared_type(&text, "plain_total"),
        Some("counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"), "{text}");
}

#[test]
fn metrics_serves_openmetrics_to_a_prometheus_accept_header() {
    let daemon = InProcess::start();
    daemon.send(&["open:1|c|#a:b\n"]);
    daemon.wait_for_value(r#"open_total{a="b"}"#, 1.0);
    let response = daemon.get("/metrics", &[("Accept", ACCEPT_OPENMETRICS)]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some(CONTENT_TYPE_OPENMETRICS)
    );
    let text = response.text();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics ends with `# EOF`:\n{text}"
    );
    assert_eq!(declared_type(&text, "open"), Some("counter"), "{text}");
    assert_eq!(value_of(&text, r#"open_total{a="b"}"#), Some(1.0), "{text}");
}

#[test]
fn metrics_serves_openmetrics_to_a_bare_openmetrics_accept() {
    let daemon = InProcess::start();
    let response = daemon.get("/metrics", &[("Accept", "application/openmetrics-text")]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some(CONTENT_TYPE_OPENMETRICS)
    );
    assert!(response.text().ends_with("# EOF\n"));
}

#[test]
fn metrics_is_gzipped_when_the_scraper_accepts_gzip() {
    let daemon = InProcess::start();
    daemon.send(&["zipped:1|c\n"]);
    daemon.wait_for_value("zipped_total", 1.0);
    let response = daemon.get("/metrics", &[("Accept-Encoding", "gzip")]);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-encoding"), Some("gzip"));
    assert_eq!(response.header("content-type"), Some(CONTENT_TYPE_TEXT));
    assert_eq!(
        &response.body[..2],
        &[0x1f, 0x8b],
        "a gzip stream starts 1f 8b"
    );
    let text = response.text(); // gunzips
    assert!(
        text.lines().any(|line| line.starts_with("zipped_total ")),
        "{text}"
    );
}

#[test]
fn the_landing_page_shows_the_version_and_links_to_metrics() {
    let daemon = InProcess::start();
    let response = daemon.get("/", &[]);
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text();
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "{page}");
    assert!(
        [
            "href=\"/metrics\"",
            "href=\"metrics\"",
            "href=\"./metrics\""
        ]
        .iter()
        .any(|link| page.contains(link)),
        "no link to /metrics:\n{page}"
    );
}

#[test]
fn healthy_answers_200() {
    let daemon = InProcess::start();
    assert_eq!(daemon.get("/-/healthy", &[]).status, 200);
}

#[test]
fn ready_answers_200_once_listening() {
    let daemon = InProcess::start();
    assert_eq!(daemon.get("/-/ready", &[]).status, 200);
}

// ---------------------------------------------------------------------------------------------
// Command line and configuration

#[test]
fn version_prints_the_crate_version() {
    let output = run_tallyd(&["--version"]);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert_eq!(
        stdout_of(&output).trim(),
        format!("tallyd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn check_config_accepts_the_documented_file() {
    let config = repo_root().join("config/tallyd.toml");
    let output = run_tallyd(&["--config", config.to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(&output));
    assert!(
        stdout_of(&output).contains("configuration is valid"),
        "stdout: {}",
        stdout_of(&output)
    );
}

#[test]
fn check_config_refuses_a_bad_value_naming_the_key_and_line() {
    let file = TempFile::new("bad.toml", "# batch must be 1..=1024\n[udp]\nbatch = 0\n");
    let output = run_tallyd(&["--config", file.path().to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(stderr.contains("batch"), "the key is not named:\n{stderr}");
    assert!(
        stderr.contains("line 3"),
        "the line is not named:\n{stderr}"
    );
    assert!(!stdout_of(&output).contains("configuration is valid"));
}

#[test]
fn check_config_refuses_a_missing_file() {
    let missing = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-tallyd.toml");
    let output = run_tallyd(&["--config", missing.to_str().unwrap(), "--check-config"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    assert!(
        stderr_of(&output).contains("no-such-tallyd.toml"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn an_unknown_key_is_refused_at_start_with_exit_code_2() {
    let file = TempFile::new("typo.toml", "[statsd]\ngauge_delta = false\n");
    let output = run_tallyd(&[
        "--config",
        file.path().to_str().unwrap(),
        "--udp-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr_of(&output));
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("gauge_delta"),
        "the key is not named:\n{stderr}"
    );
    assert!(
        stderr.contains("line 2"),
        "the line is not named:\n{stderr}"
    );
}

#[test]
fn an_http_port_in_use_exits_with_code_1_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_tallyd(&["--udp-listen", "127.0.0.1:0", "--http-listen", &addr]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains(&addr), "{}", stderr_of(&output));
}

#[test]
fn a_udp_port_in_use_exits_with_code_1_naming_the_address() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_tallyd(&["--udp-listen", &addr, "--http-listen", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr_of(&output));
    assert!(stderr_of(&output).contains(&addr), "{}", stderr_of(&output));
}

// ---------------------------------------------------------------------------------------------
// Signals

fn assert_exits_cleanly_on(signal: libc::c_int) {
    let mut daemon = Daemon::start();
    daemon.send(&["before_exit:1|c\n"]);
    daemon.wait_for_value("before_exit_total", 1.0);
    let sent = Instant::now();
    daemon.signal(signal);
    let status = daemon.wait_exit(Duration::from_secs(5));
    let status = status.unwrap_or_else(|| {
        panic!(
            "tallyd still runs 5 s after signal {signal}; its log:\n{}",
            daemon.log()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status} after signal {signal}; its log:\n{}",
        daemon.log()
    );
    eprintln!("exited {:?} after signal {signal}", sent.elapsed());
}

#[test]
fn sigterm_exits_0_within_a_few_seconds() {
    assert_exits_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_exits_0_within_a_few_seconds() {
    assert_exits_cleanly_on(libc::SIGINT);
}

/// config/tallyd.toml: "Keys under [udp], [http], [statsd], [aggregation] and [limits] take
/// effect on restart", so the
/// `[exposition]` switch takes effect on reload.
#[test]
fn sighup_applies_a_new_exposition_setting() {
    let daemon = Daemon::with_config("[exposition]\nstatsd_exporter_names = false\n");
    daemon.send(&["legacy:1|c\n"]);
    daemon.wait_for_value("legacy_total", 1.0);

    daemon
        .config_file()
        .write("[exposition]\nstatsd_exporter_names = true\n");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_value(&reloads("success"), 1.0);
    let text = daemon.wait_for_value("legacy", 1.0);
    assert_absent(&text, &["legacy_total"]);
}

/// systemd may signal a service the moment it reports ready (a `systemctl stop` or `reload`
/// queued during start-up), so the signal handlers must be in place before the ready line. A
/// race shows only sometimes, hence several rounds.
#[test]
fn sigterm_right_after_the_ready_line_exits_0() {
    for round in 1..=25 {
        let mut daemon = Daemon::start();
        daemon.signal(libc::SIGTERM);
        let status = daemon.wait_exit(Duration::from_secs(5));
        assert!(
            status.is_some_and(|s| s.code() == Some(0)),
            "round {round}: {} after SIGTERM sent right after the ready line (\"signal: 15\" \
             means the signal's default action killed it: no handler yet); its log:\n{}",
            status.map_or("still running 5 s".to_owned(), |s| s.to_string()),
            daemon.log()
        );
    }
}

#[test]
fn sighup_right_after_the_ready_line_reloads() {
    for round in 1..=5 {
        let mut daemon = Daemon::start();
        daemon.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(50));
        if let Some(status) = daemon.wait_exit(Duration::ZERO) {
            panic!(
                "round {round}: SIGHUP sent right after the ready line ended the daemon \
                 ({status}); its log:\n{}",
                daemon.log()
            );
        }
        daemon.wait_for(&[(reloads("success"), 1.0)]);
    }
}

/// Polls the daemon's log until it contains `needle`.
fn wait_for_log(daemon: &Daemon, needle: &str) {
    let deadline = Instant::now() + common::SETTLE_TIMEOUT;
    while !daemon.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the log never mentioned {needle:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_with_a_bad_file_keeps_serving_and_a_good_file_reloads() {
    let daemon = Daemon::with_config("[statsd]\ngauge_deltas = true\n");
    daemon.send(&["kept:1|c\n"]);
    daemon.wait_for_value("kept_total", 1.0);

    daemon
        .config_file()
        .write("[statsd]\ngauge_deltas = \"maybe\"\n");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(&[
        (reloads("failure"), 1.0),
        (reloads("success"), 0.0),
        ("kept_total".into(), 1.0),
    ]);
    wait_for_log(&daemon, "gauge_deltas");
    assert_eq!(daemon.get("/-/ready", &[]).status, 200);
    daemon.send(&["kept:1|c\n"]);
    daemon.wait_for_value("kept_total", 2.0);

    daemon
        .config_file()
        .write("[statsd]\ngauge_deltas = true\n[log]\nlevel = \"debug\"\n");
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(&[
        (reloads("failure"), 1.0),
        (reloads("success"), 1.0),
        ("kept_total".into(), 2.0),
    ]);
}

const LIFECYCLE_ON: &str = "[http]\nenable_lifecycle = true\n";

#[test]
fn post_reload_applies_new_mapping_rules_and_answers_with_the_outcome() {
    let daemon = Daemon::with_config(LIFECYCLE_ON);
    daemon.send(&["predictor.fraud.latency:250|ms\n"]);
    daemon.wait_for_value("predictor_fraud_latency_count", 1.0);

    // A refused file: 500 with the reason, the running config stays.
    daemon.config_file().write(&format!(
        "{LIFECYCLE_ON}[[mapping]]\nmatch = \"predictor.*.latency\"\n"
    ));
    let refused = http_request(daemon.http, "POST", "/-/reload", &[]);
    assert_eq!(refused.status, 500, "{}", refused.text());
    assert!(refused.text().contains("name"), "{}", refused.text());
    daemon.wait_for_value(&reloads("failure"), 1.0);

    daemon.config_file().write(&format!(
        "{LIFECYCLE_ON}[[mapping]]\nmatch = \"predictor.*.latency\"\n\
         name = \"predictor_latency_seconds\"\nlabels = {{ model = \"$1\" }}\n"
    ));
    let reloaded = http_request(daemon.http, "POST", "/-/reload", &[]);
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    daemon.send(&["predictor.fraud.latency:250|ms\n"]);
    daemon.wait_for(&[
        (
            r#"predictor_latency_seconds_count{model="fraud"}"#.to_string(),
            1.0,
        ),
        ("predictor_fraud_latency_count".to_string(), 1.0),
        (reloads("success"), 1.0),
    ]);
}

#[test]
fn lifecycle_endpoints_are_forbidden_by_default() {
    let daemon = InProcess::start();
    for path in ["/-/reload", "/-/quit"] {
        assert_eq!(http_request(daemon.http, "POST", path, &[]).status, 403);
    }
    assert_eq!(daemon.get("/-/ready", &[]).status, 200);
}

#[test]
fn post_quit_shuts_down_cleanly() {
    let mut daemon = Daemon::with_config(LIFECYCLE_ON);
    let response = http_request(daemon.http, "POST", "/-/quit", &[]);
    assert_eq!(response.status, 200);
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("tallyd exits after /-/quit");
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
}

/// `Type=notify`: systemd learns READY=1 once every listener is bound (the ready line has been
/// logged by then), RELOADING=1 then READY=1 around a SIGHUP reload, and STOPPING=1 on SIGTERM.
#[test]
fn systemd_is_told_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind a notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let next = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut daemon = Daemon::start_with_env(
        &[],
        Some(TempFile::new("notify.toml", "")),
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    assert_eq!(next(), "READY=1");
    daemon.signal(libc::SIGHUP);
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    daemon.signal(libc::SIGTERM);
    assert_eq!(next(), "STOPPING=1");
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("tallyd exits");
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let _ = std::fs::remove_file(&path);
}

// ---------------------------------------------------------------------------------------------
// The library runtime, driven in-process

#[test]
fn run_returns_promptly_once_its_token_is_cancelled() {
    let mut tallyd = InProcess::start();
    tallyd.send(&["x:1|c\n"]);
    tallyd.wait_for_value("x_total", 1.0);
    let started = Instant::now();
    tallyd.shutdown_token().cancel();
    let outcome = tallyd
        .wait_stopped(Duration::from_secs(5))
        .expect("run returns within 5 s of the cancel");
    assert_eq!(outcome, Ok(()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_reload_request_puts_the_settings_the_control_loads_in_force() {
    let reloaded =
        "[[mapping]]\nmatch = \"app.*.hits\"\nname = \"app_hits\"\nlabels = { app = \"$1\" }\n";
    let mut requests = None;
    let tallyd = InProcess::with_control("", |control| {
        control.reload = Box::new(move || {
            tallyd::config::Settings::parse(reloaded, std::path::Path::new("reloaded.toml"))
        });
        requests = Some(control.requests.0.clone());
    });
    tallyd.send(&["app.web.hits:1|c\n"]);
    tallyd.wait_for_value("app_web_hits_total", 1.0);

    let (reply, outcome) = tokio::sync::oneshot::channel();
    requests
        .expect("the control's sender")
        .blocking_send(tallyd::http::Lifecycle::Reload(reply))
        .expect("tallyd takes requests");
    assert_eq!(outcome.blocking_recv(), Ok(Ok(())));
    tallyd.send(&["app.web.hits:1|c\n"]);
    tallyd.wait_for(&[
        (r#"app_hits_total{app="web"}"#, 1.0),
        (&reloads("success"), 1.0),
    ]);
}

#[test]
fn a_reload_that_fails_keeps_the_running_settings_and_says_why() {
    let mut requests = None;
    let tallyd = InProcess::with_control(
        "[[mapping]]\nmatch = \"a.*\"\nname = \"mapped\"\n",
        |control| {
            requests = Some(control.requests.0.clone());
        },
    );
    let (reply, outcome) = tokio::sync::oneshot::channel();
    requests
        .expect("the control's sender")
        .blocking_send(tallyd::http::Lifecycle::Reload(reply))
        .expect("tallyd takes requests");
    let refused = outcome.blocking_recv().expect("an answer");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("no configuration file")),
        "{refused:?}"
    );
    tallyd.send(&["a.b:1|c\n"]);
    tallyd.wait_for(&[("mapped_total", 1.0), (&reloads("failure"), 1.0)]);
}

#[test]
fn post_quit_ends_run_in_process() {
    let mut tallyd = InProcess::with_config(LIFECYCLE_ON);
    let response = http_request(tallyd.http, "POST", "/-/quit", &[]);
    assert_eq!(response.status, 200);
    let outcome = tallyd
        .wait_stopped(Duration::from_secs(10))
        .expect("run returns after /-/quit");
    assert_eq!(outcome, Ok(()));
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus parser

/// One datagram of every kind tallyd serves, with names promtool's linter accepts.
const EVERY_KIND: &str = concat!(
    "requests:1|c|#model:v1,region:eu\n",
    "requests:1|c|@0.5|#model:v2,region:eu\n",
    "jobs_total:2|c\n",
    "queue_depth:42|g\n",
    "queue_depth:-2|g\n",
    "infer:250|ms|#model:v1\n",
    "payload:512|h\n",
    "tokens:100:200|d\n",
    "users:alice|s\n",
    "users:bob|s\n",
    "answer.seconds:120|ms|#model:v1\n",
    "boxed:1|c|c:abc123\n",
    "influx,k=v:1|g\n",
    "escaped:1|c|#path:C:\\dir \"quoted\"\n",
    "_e{5,4}:title|text\n",
    "broken:oops|c\n",
);

/// Summaries need a declaration (or a rule); everything else is tallyd's default config.
const SUMMARY_DECLARED: &str = "[[metric]]\nname = \"answer_seconds\"\ntype = \"summary\"\n";

fn daemon_with_every_kind() -> Daemon {
    let daemon = Daemon::with_config(SUMMARY_DECLARED);
    daemon.send(&[EVERY_KIND]);
    daemon.wait_for(&[
        (r#"requests_total{model="v1",region="eu"}"#, 1.0),
        (r#"requests_total{model="v2",region="eu"}"#, 2.0),
        ("jobs_total", 2.0),
        ("queue_depth", 40.0),
        (r#"infer_count{model="v1"}"#, 1.0),
        ("payload_count", 1.0),
        ("tokens_count", 2.0),
        ("users", 2.0),
        (r#"answer_seconds_count{model="v1"}"#, 1.0),
        (r#"boxed_total{container_id="abc123"}"#, 1.0),
        (r#"influx{k="v"}"#, 1.0),
        (r#"escaped_total{path="C:\\dir \"quoted\""}"#, 1.0),
    ]);
    daemon
}

#[test]
fn promtool_accepts_the_text_format() {
    if !require(on_path("promtool"), "promtool (Debian package prometheus)") {
        return;
    }
    let daemon = daemon_with_every_kind();
    let response = daemon.get("/metrics", &[]);
    assert_eq!(response.header("content-type"), Some(CONTENT_TYPE_TEXT));
    let text = response.text();
    // Lint problems are printed (and make the exit status non-zero); a clean scrape prints
    // nothing.
    let (ok, report) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && report.trim().is_empty(),
        "promtool check metrics:\n{report}\non:\n{text}"
    );
}

#[test]
fn prometheus_openmetrics_parser_accepts_the_openmetrics_format() {
    if !require(on_path("promtool"), "promtool (Debian package prometheus)") {
        return;
    }
    let daemon = daemon_with_every_kind();
    let response = daemon.get("/metrics", &[("Accept", ACCEPT_OPENMETRICS)]);
    assert_eq!(
        response.header("content-type"),
        Some(CONTENT_TYPE_OPENMETRICS)
    );
    let text = response.text();
    assert!(text.ends_with("# EOF\n"), "{text}");

    // OpenMetrics counters are declared by family name and sampled as `<family>_total`
    // (and optionally `_created`).
    let counters: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    assert!(counters.contains(&"requests"), "{text}");
    assert!(
        counters.contains(&"jobs"),
        "`jobs_total` is family `jobs`:\n{text}"
    );
    for sample in parse_exposition(&text) {
        assert!(
            !counters.contains(&sample.id.name.as_str()),
            "counter sample without _total: {}\n{text}",
            sample.line
        );
    }

    // `promtool check metrics` (2.42) reads only the 0.0.4 format. Prometheus's OpenMetrics
    // parser is reachable through promtool's backfill, which wants a timestamp on every sample,
    // so add one: everything else is parsed as scraped.
    let stamped: String = text
        .lines()
        .map(|line| {
            if line.starts_with('#') {
                format!("{line}\n")
            } else {
                format!("{line} 1700000000\n")
            }
        })
        .collect();
    let input = TempFile::new("scrape.om", &stamped);
    let blocks = input.path().with_extension("blocks");
    let (ok, report) = promtool(
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            input.path().to_str().unwrap(),
            blocks.to_str().unwrap(),
        ],
        None,
    );
    let _ = std::fs::remove_dir_all(&blocks);
    assert!(
        ok,
        "Prometheus's OpenMetrics parser refused the scrape:\n{report}\non:\n{text}"
    );
}

#[test]
fn a_real_prometheus_scrapes_it_without_error() {
    if !require(
        on_path("prometheus"),
        "prometheus (Debian package prometheus)",
    ) {
        return;
    }
    let daemon = daemon_with_every_kind();
    let prometheus = Prometheus::start(daemon.http, &[]);

    // Prometheus asks for OpenMetrics first; a target whose scrape it cannot parse is "down"
    // with the parser's complaint in lastError.
    let targets = prometheus.wait_scraped(Duration::from_secs(30));
    assert!(
        targets.contains(r#""health":"up""#) && targets.contains(r#""lastError":"""#),
        "Prometheus could not scrape tallyd:\n{targets}"
    );
    let result = prometheus.api("/api/v1/query?query=requests_total");
    assert!(
        result.contains(r#""model":"v1""#) && result.contains(r#""model":"v2""#),
        "Prometheus has no requests_total series:\n{result}"
    );
}
