//! Native histograms end to end: StatsD timers over UDP into tallyd, and a real Prometheus
//! (Debian's package, 2.42) with `--enable-feature=native-histograms` scraping it every second
//! over the protobuf format; its HTTP API must then answer `histogram_count`, `histogram_sum`
//! and `histogram_quantile` on the native series as the observations say (the quantile within
//! the schema's bucket width). A second Prometheus without the feature scrapes the same tallyd
//! (OpenMetrics) and must find the same histogram's classic `_bucket` series.
//!
//! (Prometheus 2.42 ingests a histogram that has native buckets as native only: keeping both
//! needs `scrape_classic_histograms`, from 2.45. So the Prometheus with native histograms on is
//! checked on a histogram declared without native buckets for the classic series, and the one
//! without the feature on the native histogram's classic buckets.)

mod common;

use std::time::Duration;

use prost::Message;
use tallyd::exposition::proto::{MetricFamily, MetricType};

use common::prometheus::Prometheus;
use common::{InProcess, on_path, require, value_of};

/// Native buckets for every histogram (factor 1.1: schema 3), but not for
/// `classic_latency_seconds`.
const CONFIG: &str = "\
[aggregation]
native_histogram_bucket_factor = 1.1

[[metric]]
name = \"classic_latency_seconds\"
type = \"histogram\"
native_histogram_bucket_factor = 0
";

const PROTOBUF_ACCEPT: &str = "application/vnd.google.protobuf;\
    proto=io.prometheus.client.MetricFamily;encoding=delimited,\
    application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// How long Prometheus may take to start and scrape what tallyd received.
const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// 1 to 100 ms once each, and 200 ms sampled at 10 % (one line, weight 10), for `infer_seconds`;
/// 1 to 100 ms for `classic_latency_seconds`.
fn timer_datagrams() -> Vec<String> {
    let mut lines: Vec<String> = (1..=100)
        .flat_map(|ms| {
            [
                format!("infer_seconds:{ms}|ms|#model:v1"),
                format!("classic_latency_seconds:{ms}|ms"),
            ]
        })
        .collect();
    lines.push("infer_seconds:200|ms|@0.1|#model:v1".into());
    lines.chunks(20).map(|chunk| chunk.join("\n")).collect()
}

/// The observations' total: 1..=100 ms, plus 10 × 200 ms, in seconds.
const INFER_SUM: f64 = 5.05 + 2.0;
const INFER_COUNT: f64 = 110.0;
/// The 55th of the 110 observations, in order: 55 ms.
const INFER_MEDIAN: f64 = 0.055;

#[test]
fn prometheus_reads_native_histograms_over_protobuf() {
    if !require(
        on_path("prometheus"),
        "prometheus (Debian package prometheus)",
    ) {
        return;
    }
    let tallyd = InProcess::with_config(CONFIG);
    tallyd.send(&timer_datagrams());
    tallyd.wait_for(&[
        (r#"infer_seconds_count{model="v1"}"#, INFER_COUNT),
        ("classic_latency_seconds_count", 100.0),
    ]);

    // What Prometheus will get: the protobuf scrape, decoded here.
    let response = tallyd.get("/metrics", &[("Accept", PROTOBUF_ACCEPT)]);
    assert_eq!(
        response.header("content-type"),
        Some(
            "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; \
             encoding=delimited"
        )
    );
    let mut body = &response.body[..];
    let mut families = Vec::new();
    while !body.is_empty() {
        families.push(MetricFamily::decode_length_delimited(&mut body).expect("a MetricFamily"));
    }
    let histogram = |name: &str| {
        let family = families
            .iter()
            .find(|f| f.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in the protobuf scrape"));
        assert_eq!(family.r#type, Some(MetricType::Histogram as i32));
        family.metric[0].histogram.clone().unwrap()
    };
    let infer = histogram("infer_seconds");
    assert_eq!(infer.schema, Some(3));
    assert_eq!(infer.sample_count, Some(INFER_COUNT as u64));
    assert_eq!(infer.bucket.len(), 11, "the classic buckets ride along");
    let classic = histogram("classic_latency_seconds");
    assert_eq!(classic.schema, None);
    // The text formats keep the classic buckets only.
    let text = tallyd.scrape();
    assert_eq!(
        value_of(&text, r#"infer_seconds_bucket{model="v1",le="+Inf"}"#),
        Some(INFER_COUNT)
    );

    let native = Prometheus::start(tallyd.http, &["--enable-feature=native-histograms"]);
    let plain = Prometheus::start(tallyd.http, &[]);

    let targets = native.wait_scraped(PROMETHEUS_TIMEOUT);
    assert!(
        targets.contains(r#""health":"up""#) && targets.contains(r#""lastError":"""#),
        "Prometheus could not scrape tallyd over protobuf:\n{targets}"
    );
    let count = native.wait_for_value(
        r#"histogram_count(infer_seconds{model="v1"})"#,
        PROMETHEUS_TIMEOUT,
        |count| count == INFER_COUNT,
    );
    assert_eq!(count, INFER_COUNT);
    let sum = native.query_values(r#"histogram_sum(infer_seconds{model="v1"})"#);
    assert_eq!(sum.len(), 1, "{sum:?}");
    assert!(
        (sum[0] - INFER_SUM).abs() < 1e-9,
        "histogram_sum = {}",
        sum[0]
    );
    // Schema 3: a bucket spans a factor of 2^(1/8) ≈ 1.09, so an estimate inside the right
    // bucket is within 9 % of the true value.
    let median = native.query_values(r#"histogram_quantile(0.5, infer_seconds{model="v1"})"#);
    assert_eq!(median.len(), 1, "{median:?}");
    let error = (median[0] - INFER_MEDIAN).abs() / INFER_MEDIAN;
    println!(
        "native: histogram_quantile(0.5) = {} (true median {INFER_MEDIAN})",
        median[0]
    );
    assert!(
        error < 0.09,
        "histogram_quantile(0.5) = {} for a median of {INFER_MEDIAN}",
        median[0]
    );
    let p99 = native.query_values(r#"histogram_quantile(0.99, infer_seconds{model="v1"})"#);
    println!("native: histogram_quantile(0.99) = {p99:?} (true 0.2)");
    assert!(
        (p99[0] - 0.2).abs() / 0.2 < 0.09,
        "histogram_quantile(0.99) = {p99:?} (the weighted 200 ms)"
    );
    // The histogram declared without native buckets is ingested as classic series.
    let buckets = native.wait_for_value(
        "count(classic_latency_seconds_bucket)",
        PROMETHEUS_TIMEOUT,
        |n| n == 12.0,
    );
    assert_eq!(buckets, 12.0);
    assert_eq!(
        native.query_values("classic_latency_seconds_count"),
        [100.0]
    );

    // A Prometheus without native histograms gets the same histogram's classic buckets.
    plain.wait_scraped(PROMETHEUS_TIMEOUT);
    plain.wait_for_value(
        r#"infer_seconds_bucket{model="v1",le="+Inf"}"#,
        PROMETHEUS_TIMEOUT,
        |count| count == INFER_COUNT,
    );
    assert_eq!(plain.query_values("count(infer_seconds_bucket)"), [12.0]);
    let classic_median = plain.query_values("histogram_quantile(0.5, infer_seconds_bucket)");
    assert!(
        (0.05..=0.1).contains(&classic_median[0]),
        "the classic estimate falls in the (0.05, 0.1] bucket: {classic_median:?}"
    );
}
