//! Bounded memory through the real binary: series caps, their refusals and the offenders list,
//! and expiry of idle series.

mod common;

use common::*;

#[test]
fn past_the_global_cap_new_series_are_refused_counted_and_old_ones_keep_counting() {
    let daemon = Daemon::with_config("[limits]\nmax_series = 3\n");
    daemon.send(&["a:1|c\nb:1|c\nc:1|c\n"]);
    daemon.wait_for(&[("a_total", 1.0), ("b_total", 1.0), ("c_total", 1.0)]);
    daemon.send(&["d:1|c\ne:1|c\na:1|c\n"]);
    let text = daemon.wait_for(&[
        ("a_total", 2.0),
        (r#"tallyd_series_refused_total{reason="global_limit"}"#, 2.0),
        (r#"tallyd_sample_errors_total{reason="series_limit"}"#, 2.0),
    ]);
    assert_absent(&text, &["d_total", "e_total"]);
}

#[test]
fn past_the_per_metric_cap_only_that_metric_is_refused() {
    let daemon = Daemon::with_config("[limits]\nmax_series_per_metric = 2\n");
    daemon.send(&["hot:1|c|#id:1\nhot:1|c|#id:2\nhot:1|c|#id:3\ncalm:1|c|#id:3\n"]);
    let text = daemon.wait_for(&[
        (r#"calm_total{id="3"}"#, 1.0),
        (r#"tallyd_series_refused_total{reason="metric_limit"}"#, 1.0),
    ]);
    assert_eq!(value_of(&text, r#"hot_total{id="3"}"#), None);
}

#[test]
fn the_metrics_with_the_most_series_are_listed_in_a_self_metric_and_on_the_landing_page() {
    let daemon = Daemon::start();
    daemon.send(&["big:1|c|#id:1\nbig:1|c|#id:2\nbig:1|c|#id:3\nsmall:1|g\n"]);
    daemon.wait_for(&[
        (r#"tallyd_family_series{family="big"}"#, 3.0),
        (r#"tallyd_family_series{family="small"}"#, 1.0),
    ]);
    let page = daemon.get("/", &[]).text();
    let big = page.find("<code>big</code>").expect("big is listed");
    let small = page.find("<code>small</code>").expect("small is listed");
    assert!(big < small, "the biggest metric comes first:\n{page}");
}

#[test]
fn an_idle_series_expires_after_its_ttl_and_comes_back_from_zero() {
    let daemon = Daemon::with_config("[limits]\nseries_ttl_seconds = 1\n");
    daemon.send(&["idle:5|c\n"]);
    daemon.wait_for_value("idle_total", 5.0);
    let text = daemon.wait_for_value("tallyd_series_expired_total", 1.0);
    assert_eq!(
        value_of(&text, "idle_total"),
        None,
        "expired series are not served"
    );
    daemon.send(&["idle:2|c\n"]);
    daemon.wait_for_value("idle_total", 2.0);
}
