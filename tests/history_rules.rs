//! History asked for by a mapping rule (`history = true` in `[[mapping]]`), through the real
//! daemon fed over UDP: every family a templated rule names is sampled each second
//! (`interval_seconds = 1`) and the Matih query endpoint answers it bin for bin, with the type
//! the series were registered with (there is no definition); a family of a rule without the
//! option is not sampled; a reload that drops the option forgets the family, and keeps the
//! others.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Daemon, HISTORY_EVERY_SECOND, at_half_past, json_call, unix_ms};
use serde_json::Value;

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
    let path = format!("/api/v1/observability/custom-metrics/{name}/query?{params}");
    json_call(addr, "GET", &path, &[], None)
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
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = query(addr, name, params);
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
