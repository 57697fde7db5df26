//! History asked for by a mapping rule (`history = true` in `[[mapping]]`), through the real
//! daemon fed over UDP: every family a templated rule names is sampled each second
//! (`interval_seconds = 1`) and the Matih query endpoint answers it bin for bin, with the type
//! the series were registered with (there is no definition); a family of a rule without the
//! option is not sampled; a reload that drops the option forgets the family, and keeps the
//! others. After a restart a family answers from the store, is listed (read-only, every
//! tenant's, as `origin: "rule"`) and is exported before any line names it again, while its
//! rule still asks for history.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{
    Daemon, HISTORY_EVERY_SECOND, TempFile, api_call, at_half_past, history_export, json_call,
    promtool_import, sha256_hex, unix_ms,
};
use serde_json::{Value, json};

/// `temperature` keeps history when `with_temperature`.
fn config(with_temperature: bool) -> String {
    let temperature = match with_temperature {
        true => "history = true\nretention = \"2d\"\n",
        false => "",
    };
    format!(
        r#"{HISTORY_EVERY_SECOND}
[[mapping]]
match = "app.*.requests"
name = "${{1}}_requests"
labels = {{ source = "rule" }}
history = true

[[mapping]]
match = "app.*.temp"
match_metric_type = "gauge"
name = "${{1}}_temperature"
{temperature}
[[mapping]]
match = "other.*"
name = "other_${{1}}"
"#
    )
}

fn query(addr: SocketAddr, name: &str, params: &str) -> (u16, Value) {
    query_as(addr, None, name, params)
}

/// A query with the bearer `token`, or anonymous.
fn query_as(addr: SocketAddr, token: Option<&str>, name: &str, params: &str) -> (u16, Value) {
    let path = format!("/api/v1/observability/custom-metrics/{name}/query?{params}");
    let auth = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = (auth.iter())
        .map(|a| ("Authorization", a.as_str()))
        .collect();
    json_call(addr, "GET", &path, &headers, None)
}

/// Each series' labels and its points' values, in order.
fn values(answer: &Value) -> Vec<(Value, Vec<f64>)> {
    answer["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|series| {
            let points = series["points"].as_array().unwrap();
            let values = points.iter().map(|p| p["value"].as_f64().unwrap());
            (series["labels"].clone(), values.collect())
        })
        .collect()
}

/// Queries until every series holds `bins` points (one sample per 1 s bin), or fails after
/// 10 s with the last answer.
fn wait_for_bins(addr: SocketAddr, name: &str, params: &str, bins: usize) -> Value {
    wait_for_bins_as(addr, None, name, params, bins)
}

/// [`wait_for_bins`] with the bearer `token`, or anonymous.
fn wait_for_bins_as(
    addr: SocketAddr,
    token: Option<&str>,
    name: &str,
    params: &str,
    bins: usize,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = query_as(addr, token, name, params);
        assert_eq!(status, 200, "{name}?{params}: {answer}");
        let series = values(&answer);
        if !series.is_empty() && series.iter().all(|(_, v)| v.len() >= bins) {
            return answer;
        }
        assert!(Instant::now() < deadline, "{name}?{params}: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn every_family_a_rule_with_history_names_is_sampled_and_answers_bin_for_bin() {
    let tallyd = Daemon::with_config(&config(true));
    // An even second, so that 2 s bins from it are the 2 s tier's intervals.
    let k0 = (unix_ms() / 1000 + 2) / 2 * 2;
    at_half_past(k0);
    tallyd.send(&[
        "app.api.requests:3|c",
        "app.web.requests:2|c",
        "app.db.temp:21.5|g",
        "other.jobs:5|c",
    ]);
    at_half_past(k0 + 2);
    tallyd.send(&["app.api.requests:4|c", "app.db.temp:25|g"]);
    let range = format!("start={k0}&end={}&step=1s", k0 + 4);

    // A counter's per-second increases, under its name with `_total` and without; the rule's
    // label is there.
    let sum = format!("{range}&aggregation=sum");
    let api = wait_for_bins(tallyd.http, "api_requests_total", &sum, 4);
    assert_eq!(api["resolution"], "1s", "{api}");
    assert_eq!(
        values(&api),
        [(
            serde_json::json!({"source": "rule"}),
            vec![3.0, 0.0, 4.0, 0.0]
        )],
        "{api}"
    );
    let (status, bare) = query(tallyd.http, "api_requests", &sum);
    assert_eq!((status, values(&bare)), (200, values(&api)), "{bare}");
    // The same rule named a second family from another line.
    let web = wait_for_bins(tallyd.http, "web_requests_total", &sum, 4);
    assert_eq!(values(&web)[0].1, [2.0, 0.0, 0.0, 0.0], "{web}");
    // A counter's default aggregation is its sum; a gauge's its average.
    let (_, default) = query(tallyd.http, "api_requests_total", &range);
    assert_eq!(default["aggregation"], "sum", "{default}");
    let temperature = wait_for_bins(tallyd.http, "db_temperature", &range, 4);
    assert_eq!(temperature["aggregation"], "average", "{temperature}");
    assert_eq!(
        values(&temperature)[0].1,
        [21.5, 21.5, 25.0, 25.0],
        "{temperature}"
    );
    // Over 2 s bins, from the 2 s tier (rolled up).
    let coarse = format!("start={k0}&end={}&step=2s&aggregation=max", k0 + 4);
    let (status, rolled) = query(tallyd.http, "db_temperature", &coarse);
    assert_eq!(status, 200, "{rolled}");
    assert_eq!(rolled["resolution"], "2s", "{rolled}");
    // A gauge's history answers as a gauge's: a counter's total-only refusal does not apply.
    let (status, min) = query(
        tallyd.http,
        "db_temperature",
        &format!("{range}&aggregation=min"),
    );
    assert_eq!(
        (status, values(&min)[0].1.clone()),
        (200, vec![21.5, 21.5, 25.0, 25.0])
    );

    // The rule without the option: in /metrics, never sampled.
    tallyd.wait_for(&[("other_jobs_total", 5.0)]);
    let (status, other) = query(tallyd.http, "other_jobs_total", &sum);
    assert_eq!(status, 404, "{other}");
    let text = tallyd.wait_for(&[("tallyd_history_rule_families", 3.0)]);
    assert!(
        text.contains(r#"tallyd_history_rule_families_refused_total{reason="limit"} 0"#),
        "{text}"
    );

    // A reload that drops the option from the temperature rule forgets its family; the
    // requests rule keeps history for both of its.
    tallyd.config_file().write(&config(false));
    tallyd.signal(libc::SIGHUP);
    tallyd.wait_for(&[
        (r#"tallyd_config_reloads_total{outcome="success"}"#, 1.0),
        ("tallyd_history_rule_families", 2.0),
    ]);
    let (status, gone) = query(tallyd.http, "db_temperature", &range);
    assert_eq!(status, 404, "{gone}");
    let k1 = unix_ms() / 1000 + 1;
    at_half_past(k1);
    tallyd.send(&["app.api.requests:6|c", "app.db.temp:30|g"]);
    let later = format!("start={k1}&end={}&step=1s&aggregation=sum", k1 + 2);
    let api = wait_for_bins(tallyd.http, "api_requests_total", &later, 2);
    assert_eq!(values(&api)[0].1, [6.0, 0.0], "{api}");
    tallyd.wait_for(&[
        ("db_temperature", 30.0),
        ("tallyd_history_rule_families", 2.0),
    ]);
}

const WRITER: &str = "writer-secret";
const OTHER: &str = "other-secret";

/// Rules keeping history for a counter and a histogram (with its own buckets), a `[[metric]]`,
/// and two tenants' tokens; `history` false drops the option from the counter's rule.
fn restart_config(history: bool) -> String {
    format!(
        r#"{HISTORY_EVERY_SECOND}
[[mapping]]
match = "app.*.requests"
name = "${{1}}_requests"
history = {history}

[[mapping]]
match = "app.*.wait"
name = "${{1}}_wait_seconds"
observer_type = "histogram"
buckets = [0.1, 0.5, 1.0]
history = true

[[metric]]
name = "queue_depth"
type = "gauge"

[[api.tokens]]
id = "writer"
secret_sha256 = "{}"
tenant = "t1"
scopes = ["read", "write", "admin"]

[[api.tokens]]
id = "other"
secret_sha256 = "{}"
tenant = "t2"
scopes = ["read"]
"#,
        sha256_hex(WRITER),
        sha256_hex(OTHER)
    )
}

fn start(dir: &str, config: &str) -> Daemon {
    Daemon::start_with(
        &["--data-dir", dir],
        Some(TempFile::new("tallyd.toml", config)),
    )
}

/// The listing as `token` sees it: name → (origin, readOnly, type).
fn listed(
    addr: SocketAddr,
    token: &str,
) -> std::collections::BTreeMap<String, (Value, Value, Value)> {
    let (status, list) = api_call(
        addr,
        "GET",
        "/api/v1/observability/custom-metrics",
        token,
        None,
    );
    assert_eq!(status, 200, "{list}");
    (list.as_array().unwrap().iter())
        .map(|m| {
            let name = m["name"].as_str().unwrap().to_owned();
            (
                name,
                (
                    m["origin"].clone(),
                    m["readOnly"].clone(),
                    m["type"].clone(),
                ),
            )
        })
        .collect()
}

/// `tallyd history export --metric <metric>` against the data directory: its text.
fn export(dir: &str, config: &str, metric: &str) -> String {
    let config = TempFile::new("export.toml", config);
    history_export(config.path(), dir, metric)
}

/// The last value of each sample name in an export's text.
fn last_values(text: &str) -> std::collections::BTreeMap<String, f64> {
    (text.lines())
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields[0].to_owned(), fields[1].parse().unwrap())
        })
        .collect()
}

#[test]
fn a_rule_familys_history_answers_lists_and_exports_after_a_restart_before_any_new_line() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_owned();
    let config = restart_config(true);
    let tallyd = start(&dir, &config);
    let k0 = (unix_ms() / 1000 + 2) / 2 * 2;
    at_half_past(k0);
    tallyd.send(&[
        "app.api.requests:3|c",
        "app.api.wait:0.05|h",
        "app.api.wait:0.3|h",
        "app.api.wait:0.7|h",
    ]);
    at_half_past(k0 + 2);
    tallyd.send(&["app.api.requests:4|c", "app.api.wait:0.2|h"]);
    let sum = format!("start={k0}&end={}&step=1s&aggregation=sum", k0 + 4);
    let before = wait_for_bins_as(tallyd.http, Some(WRITER), "api_requests_total", &sum, 4);
    assert_eq!(values(&before)[0].1, [3.0, 0.0, 4.0, 0.0], "{before}");
    // One bin over the four observations: the median is rank 2 of 4, in (0.1, 0.5] with the
    // 0.3 and the 0.2, half way in with the rule's buckets (the default buckets would put
    // it elsewhere).
    let median = format!(
        "start={k0}&end={}&step=4s&aggregation=quantile(0.5)",
        k0 + 4
    );
    let count = format!("start={k0}&end={}&step=4s&aggregation=count", k0 + 4);
    let counted = wait_for_bins_as(tallyd.http, Some(WRITER), "api_wait_seconds", &count, 1);
    assert_eq!(values(&counted)[0].1, [4.0], "{counted}");
    let (status, p50) = query_as(tallyd.http, Some(WRITER), "api_wait_seconds", &median);
    assert_eq!(status, 200, "{p50}");
    let median_value = values(&p50)[0].1.clone();
    assert!(
        median_value.len() == 1 && (median_value[0] - 0.3).abs() < 1e-12,
        "{p50}"
    );

    // Listed read-only for every tenant, with where each comes from; a tenant's own metric
    // only for it.
    let (status, defined) = api_call(
        tallyd.http,
        "POST",
        "/api/v1/observability/custom-metrics",
        WRITER,
        Some(json!({"name": "t1_score", "type": "gauge"})),
    );
    assert_eq!(status, 201, "{defined}");
    let rule = |kind: &str| (json!("rule"), json!(true), json!(kind));
    let t1 = listed(tallyd.http, WRITER);
    assert_eq!(
        t1.get("api_requests_total"),
        Some(&rule("counter")),
        "{t1:?}"
    );
    assert_eq!(
        t1.get("api_wait_seconds"),
        Some(&rule("histogram")),
        "{t1:?}"
    );
    assert_eq!(
        t1.get("queue_depth"),
        Some(&(json!("config"), json!(true), json!("gauge"))),
        "{t1:?}"
    );
    assert_eq!(
        t1.get("t1_score"),
        Some(&(json!("api"), json!(false), json!("gauge"))),
        "{t1:?}"
    );
    let t2 = listed(tallyd.http, OTHER);
    assert_eq!(
        t2.keys().collect::<Vec<_>>(),
        ["api_requests_total", "api_wait_seconds", "queue_depth"],
        "{t2:?}"
    );
    let (status, shown) = api_call(
        tallyd.http,
        "GET",
        "/api/v1/observability/custom-metrics/api_requests_total",
        OTHER,
        None,
    );
    assert_eq!((status, &shown["origin"]), (200, &json!("rule")), "{shown}");
    let (status, before_p50) = query_as(tallyd.http, Some(OTHER), "api_wait_seconds", &median);
    assert_eq!((status, values(&before_p50)), (200, values(&p50)));
    // Its values come from StatsD: not recorded to, not deleted through the API (409, not a
    // 404 for a metric the list shows), and nothing changed by trying.
    let path = "/api/v1/observability/custom-metrics/api_requests_total";
    for (method, at, body) in [
        ("POST", format!("{path}/data"), Some(json!({"value": 5}))),
        ("DELETE", path.to_owned(), None),
    ] {
        let (status, problem) = api_call(tallyd.http, method, &at, WRITER, body);
        assert_eq!(
            (status, &problem["code"]),
            (409, &json!("read_only")),
            "{method} {at}: {problem}"
        );
        assert!(
            problem["detail"].as_str().unwrap().contains("mapping rule"),
            "{problem}"
        );
    }
    let (status, unchanged) = query_as(tallyd.http, Some(WRITER), "api_requests_total", &sum);
    assert_eq!((status, values(&unchanged)), (200, values(&before)));

    // A restart, and no line since: the same answers, from the store.
    drop(tallyd);
    let tallyd = start(&dir, &config);
    let (status, after) = query_as(tallyd.http, Some(WRITER), "api_requests_total", &sum);
    assert_eq!(status, 200, "{after}");
    assert_eq!(values(&after), values(&before), "{after}");
    let (status, after_p50) = query_as(tallyd.http, Some(OTHER), "api_wait_seconds", &median);
    assert_eq!(
        (status, values(&after_p50)),
        (200, values(&p50)),
        "{after_p50}"
    );
    assert_eq!(listed(tallyd.http, OTHER), t2);
    tallyd.wait_for(&[("tallyd_history_rule_families", 2.0)]);
    let text = tallyd.scrape();
    assert!(
        !text.lines().any(|line| line.starts_with("api_requests")),
        "no line was sent: {text}"
    );
    drop(tallyd);

    // Exported by the family's name, as the store typed it, while no daemon runs.
    let requests = export(&dir, &config, "api_requests_total");
    assert!(
        requests.starts_with("# TYPE api_requests counter\n"),
        "{requests}"
    );
    assert_eq!(
        last_values(&requests),
        [("api_requests_total".to_owned(), 7.0)].into(),
        "{requests}"
    );
    let wait = export(&dir, &config, "api_wait_seconds");
    assert!(
        wait.starts_with("# TYPE api_wait_seconds summary\n"),
        "{wait}"
    );
    let last = last_values(&wait);
    assert_eq!(last["api_wait_seconds_count"], 4.0, "{wait}");
    assert!((last["api_wait_seconds_sum"] - 1.25).abs() < 1e-9, "{wait}");
    if common::require(
        common::on_path("promtool"),
        "promtool (Debian's prometheus package; scripts/setup-test-deps)",
    ) {
        promtool_import(&requests);
    }

    // Once its rule no longer asks for history, the family is not put back: not queried, not
    // listed (its rows age out by the tiers' retention); the other rule's family is.
    let without = restart_config(false);
    let tallyd = start(&dir, &without);
    let (status, gone) = query_as(tallyd.http, Some(WRITER), "api_requests_total", &sum);
    assert_eq!(status, 404, "{gone}");
    let t2 = listed(tallyd.http, OTHER);
    assert_eq!(
        t2.keys().collect::<Vec<_>>(),
        ["api_wait_seconds", "queue_depth"],
        "{t2:?}"
    );
}
