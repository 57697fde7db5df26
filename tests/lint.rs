//! The naming lint on a realistic config full of naming mistakes: every finding, its line, key
//! and severity, exactly.

use tallyd::lint::{Severity, lint};

/// A predictor fleet's config as a team migrating from statsd_exporter might first write it.
const CONFIG: &str = r#"# tallyd for the fraud predictors
[udp]
listen = ["0.0.0.0:8125"]

[http]
listen = "0.0.0.0:9102"

# --- metrics we declare up front ---------------------------------------------

[[metric]]
name = "predictor_requests"
type = "counter"
help = "Prediction requests served."
labels = ["model", "status"]

[[metric]]
name = "Latency"
type = "histogram"
unit = "milliseconds"
labels = ["model", "request_id"]
buckets = [5.0, 10.0, 50.0, 100.0, 500.0]

[[metric]]
name = "predictor_queue_depth_total"
type = "gauge"
help = "Requests waiting in the queue."
labels = ["model"]

[[metric]]
name = "predictor_batch_size"
type = "histogram"
help = "Rows per batch."
unit = "bytes"
labels = [
  "model",
  "le",
  "user-agent",
]

[[metric]]
name = "predictor.cache.hits_count"
type = "counter"
help = "Feature cache hits."

[[metric]]
name = "predictor_gpu_memory_percent"
type = "gauge"
help = ""
labels = ["gpu", "Hostname"]

[[metric]]
name = "predictor_model_load_seconds"
type = "summary"
help = "Time to load a model from the registry."
unit = "seconds"
labels = ["model", "model", "timestamp"]

# --- statsd_exporter rules, converted -----------------------------------------

[[mapping]]
match = "predictor.*.latency"
name = "latency_ms"
match_metric_type = "observer"
labels = { model = "$1" }

[[mapping]]
match = "api.*.*.requests"
name = "${1}_http_requests_total"
match_metric_type = "gauge"
labels = { path = "$2", session_id = "static", quantile = "p99" }

[[mapping]]
match = "worker.*.jobs"
name = "worker__jobs_"
match_metric_type = "counter"

[[mapping]]
match = "scratch.*"
action = "drop"

[[mapping]]
match = '^legacy\.(\w+)\.duration$'
match_type = "regex"
name = "legacy.${1}.Duration_ms"
match_metric_type = "timer"
observer_type = "summary"
[mapping.labels]
trace_id = "$1"
"#;

/// (line, severity, `key "value": message`) for every finding, in order.
const EXPECTED: &[(usize, Severity, &str)] = &[
    (
        11,
        Severity::Note,
        r#"metric[0].name "predictor_requests": a counter named without "_total": fine, tallyd adds it and serves "predictor_requests_total""#,
    ),
    (
        16,
        Severity::Warning,
        r#"metric[1] "Latency": no help text: add help = "..." (it becomes the # HELP line)"#,
    ),
    (
        17,
        Severity::Warning,
        r#"metric[1].name "Latency": not snake_case: write it in lowercase, "latency""#,
    ),
    (
        17,
        Severity::Error,
        r#"metric[1].name "Latency": unit = "milliseconds", but the name does not end in "_milliseconds", which OpenMetrics requires: call it "latency_milliseconds""#,
    ),
    (
        17,
        Severity::Warning,
        r#"metric[1].name "Latency": no namespace: add a namespace prefix such as "predictor_latency_milliseconds""#,
    ),
    (
        19,
        Severity::Warning,
        r#"metric[1].unit "milliseconds": not a base unit: Prometheus uses "seconds""#,
    ),
    (
        20,
        Severity::Warning,
        r#"metric[1].labels[1] "request_id": unbounded cardinality: an id takes one value per user, request or session, and every value is a new series; keep ids in logs or traces"#,
    ),
    (
        24,
        Severity::Warning,
        r#"metric[2].name "predictor_queue_depth_total": "_total" marks counters, but this is a gauge: call it "predictor_queue_depth""#,
    ),
    (
        30,
        Severity::Error,
        r#"metric[3].name "predictor_batch_size": unit = "bytes", but the name does not end in "_bytes", which OpenMetrics requires: call it "predictor_batch_size_bytes""#,
    ),
    (
        36,
        Severity::Error,
        r#"metric[3].labels[1] "le": reserved label name ("le" holds a histogram's bucket bounds): tallyd renames it "exported_le""#,
    ),
    (
        37,
        Severity::Error,
        r#"metric[3].labels[2] "user-agent": invalid character '-' (a label name takes letters, digits and _): tallyd renames it "user_agent""#,
    ),
    (
        41,
        Severity::Error,
        r#"metric[4].name "predictor.cache.hits_count": invalid character '.' (a name takes letters, digits and _): it would be served as "predictor_cache_hits_count""#,
    ),
    (
        41,
        Severity::Note,
        r#"metric[4].name "predictor.cache.hits_count": a counter named without "_total": fine, tallyd adds it and serves "predictor_cache_hits_count_total""#,
    ),
    (
        41,
        Severity::Warning,
        r#"metric[4].name "predictor.cache.hits_count": ends in "_count", a suffix of histogram and summary series (_bucket, _sum, _count, _created): the name collides with them; call the counter "predictor_cache_hits_total""#,
    ),
    (
        46,
        Severity::Warning,
        r#"metric[5].name "predictor_gpu_memory_percent": "_percent" is not a base unit: record a 0-1 ratio and call it "predictor_gpu_memory_ratio""#,
    ),
    (
        48,
        Severity::Warning,
        r#"metric[5].help "": empty help text: say what is measured (it becomes the # HELP line)"#,
    ),
    (
        49,
        Severity::Warning,
        r#"metric[5].labels[1] "Hostname": not snake_case: write it in lowercase, "hostname""#,
    ),
    (
        56,
        Severity::Error,
        r#"metric[6].labels[1] "model": listed twice: a series cannot carry a label twice"#,
    ),
    (
        56,
        Severity::Warning,
        r#"metric[6].labels[2] "timestamp": unbounded cardinality: a time is a new value, so a new series, at every sample; a time belongs in a sample's value (a gauge of unix seconds)"#,
    ),
    (
        62,
        Severity::Warning,
        r#"mapping[0].name "latency_ms": "_ms" is not a base unit, and tallyd already turns StatsD timer milliseconds into seconds: call it "latency_seconds""#,
    ),
    (
        62,
        Severity::Warning,
        r#"mapping[0].name "latency_ms": no namespace: add a namespace prefix such as "predictor_latency_seconds""#,
    ),
    (
        68,
        Severity::Warning,
        r#"mapping[1].name "${1}_http_requests_total": "_total" marks counters, but this is a gauge: call it "${1}_http_requests""#,
    ),
    (
        70,
        Severity::Warning,
        r#"mapping[1].labels.path "path": unbounded cardinality: raw paths and URLs carry ids and query strings, and every value is a new series; label the route template ("/users/{id}") instead"#,
    ),
    (
        70,
        Severity::Error,
        r#"mapping[1].labels.quantile "quantile": reserved label name ("quantile" holds a summary's quantiles): tallyd renames it "exported_quantile""#,
    ),
    (
        74,
        Severity::Warning,
        r#"mapping[2].name "worker__jobs_": double underscore "__": use a single "_" between words"#,
    ),
    (
        74,
        Severity::Warning,
        r#"mapping[2].name "worker__jobs_": ends with "_": drop the trailing underscore"#,
    ),
    (
        74,
        Severity::Note,
        r#"mapping[2].name "worker__jobs_": a counter named without "_total": fine, tallyd adds it and serves "worker__jobs__total""#,
    ),
    (
        84,
        Severity::Error,
        r#"mapping[4].name "legacy.${1}.Duration_ms": invalid character '.' in the template's text (a name takes letters, digits and _): each becomes "_" when the name is served"#,
    ),
    (
        84,
        Severity::Warning,
        r#"mapping[4].name "legacy.${1}.Duration_ms": not snake_case: write the template's text in lowercase"#,
    ),
    (
        84,
        Severity::Warning,
        r#"mapping[4].name "legacy.${1}.Duration_ms": "_ms" is not a base unit, and tallyd already turns StatsD timer milliseconds into seconds: call it "legacy_${1}_duration_seconds""#,
    ),
    (
        88,
        Severity::Warning,
        r#"mapping[4].labels.trace_id "trace_id": unbounded cardinality: an id takes one value per user, request or session, and every value is a new series; keep ids in logs or traces"#,
    ),
];

#[test]
fn a_config_full_of_naming_mistakes_gets_each_finding_on_its_line() {
    let found: Vec<(usize, Severity, String)> = lint(CONFIG)
        .into_iter()
        .map(|w| {
            let display = w.to_string();
            let prefix = format!("line {}: ", w.line);
            assert!(display.starts_with(&prefix), "{display}");
            (w.line, w.severity, display[prefix.len()..].to_owned())
        })
        .collect();
    let expected: Vec<(usize, Severity, String)> = EXPECTED
        .iter()
        .map(|(line, severity, text)| (*line, *severity, (*text).to_owned()))
        .collect();
    for (i, (got, want)) in found.iter().zip(&expected).enumerate() {
        assert_eq!(got, want, "finding {i}");
    }
    assert_eq!(found.len(), expected.len(), "{found:#?}");
}

#[test]
fn the_lines_point_at_the_offending_keys() {
    let lines: Vec<&str> = CONFIG.lines().collect();
    for warning in lint(CONFIG) {
        let line = lines[warning.line - 1];
        let expected = if !warning.key.contains('.') {
            // A missing key is reported on its table's header.
            "[[metric]]".to_owned()
        } else if warning.key.ends_with(']') {
            // A label listed in an array: the element's own line.
            format!("{:?}", warning.value)
        } else {
            warning.key.rsplit('.').next().unwrap_or("").to_owned()
        };
        assert!(
            line.contains(&expected),
            "line {} {line:?} should hold {expected:?} ({warning})",
            warning.line
        );
    }
}

#[test]
fn strict_would_refuse_the_file_but_not_for_its_notes() {
    let findings = lint(CONFIG);
    let count = |severity| findings.iter().filter(|w| w.severity == severity).count();
    assert_eq!(
        (
            count(Severity::Note),
            count(Severity::Warning),
            count(Severity::Error)
        ),
        (3, 20, 8)
    );
    assert!(
        findings
            .iter()
            .filter(|w| w.severity == Severity::Note)
            .all(|w| !w.severity.fails_strict())
    );
}

#[test]
fn the_corrected_config_is_clean() {
    let fixed = r#"
[[metric]]
name = "predictor_requests_total"
type = "counter"
help = "Prediction requests served."
labels = ["model", "status"]

[[metric]]
name = "predictor_latency_seconds"
type = "histogram"
unit = "seconds"
help = "Time to serve a prediction."
labels = ["model"]
buckets = [0.005, 0.01, 0.05, 0.1, 0.5]

[[metric]]
name = "predictor_gpu_memory_ratio"
type = "gauge"
unit = "ratio"
help = "Share of GPU memory in use."
labels = ["gpu", "hostname"]

[[mapping]]
match = "predictor.*.latency"
name = "predictor_latency_seconds"
match_metric_type = "observer"
labels = { model = "$1", request_id = "none" }

[[mapping]]
match = "api.*.*.requests"
name = "${1}_http_requests_total"
match_metric_type = "counter"
labels = { route = "$2" }
"#;
    assert_eq!(lint(fixed), []);
}
