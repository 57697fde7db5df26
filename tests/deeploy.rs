//! Deeploy's custom-metrics API over real HTTP against a running tallyd with its store on disk:
//! definitions and their rules, data points, chart data, workspaces as tenants, scopes, hard
//! deletes, durability across `kill -9`, the `/metrics` gauge, and the seed's flow run by the
//! official `deeploy` Python client (`tests/clients/deeploy_flow.py`).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use common::{Daemon, InProcess, TempFile, http_send, repo_root, require, value_of};
use serde_json::{Value, json};

const WORKSPACE: &str = "ws-550e8400";
const OTHER_WORKSPACE: &str = "ws-other";

/// Token ids and secrets: the admin of WORKSPACE (Deeploy's access key and secret key), a
/// read+write token of it (a deployment token), a read-only one, and another workspace's admin.
const ADMIN: (&str, &str) = ("ci-writer", "admin-secret");
const PUSHER: (&str, &str) = ("pusher", "pusher-secret");
const READER: (&str, &str) = ("reader", "reader-secret");
const OTHER: (&str, &str) = ("other", "other-secret");

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// A config with the four tokens, after `extra`.
fn config(extra: &str) -> String {
    let mut text = format!("{extra}\n");
    for ((id, secret), tenant, scopes) in [
        (ADMIN, WORKSPACE, r#""read", "write", "admin""#),
        (PUSHER, WORKSPACE, r#""read", "write""#),
        (READER, WORKSPACE, r#""read""#),
        (OTHER, OTHER_WORKSPACE, r#""read", "write", "admin""#),
    ] {
        text.push_str(&format!(
            "[[api.tokens]]\nid = \"{id}\"\nsecret_sha256 = \"{}\"\ntenant = \"{tenant}\"\n\
             scopes = [{scopes}]\n\n",
            sha256_hex(secret)
        ));
    }
    text
}

/// `Authorization: Basic` with a token's id and secret, as the client sends its key pair.
fn basic((id, secret): (&str, &str)) -> String {
    use base64::Engine as _;
    let pair = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
    format!("Basic {pair}")
}

fn bearer((_, secret): (&str, &str)) -> String {
    format!("Bearer {secret}")
}

fn deployment(workspace: &str, deployment: &str) -> String {
    format!("/workspaces/{workspace}/deployments/{deployment}")
}

/// One request: the status and the JSON body. Every answer must have one, and every error
/// must be a problem document.
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut headers = Vec::new();
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    let response = http_send(addr, method, path, &headers, body.as_bytes());
    let json: Value = serde_json::from_slice(&response.body).unwrap_or_else(|e| {
        panic!(
            "{method} {path} answered {} without a JSON body ({e}): {:?}",
            response.status,
            response.text()
        )
    });
    if response.status >= 400 {
        assert_eq!(
            response.header("content-type"),
            Some("application/problem+json"),
            "{method} {path}: {json}"
        );
        assert_eq!(json["status"], response.status, "{json}");
    }
    (response.status, json)
}

/// A Deeploy deployment as one caller sees it.
struct Client {
    addr: SocketAddr,
    prefix: String,
    auth: Option<String>,
}

impl Client {
    fn new(addr: SocketAddr, workspace: &str, dep: &str, auth: Option<String>) -> Client {
        Client {
            addr,
            prefix: deployment(workspace, dep),
            auth,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let path = format!("{}{path}", self.prefix);
        call(self.addr, method, &path, self.auth.as_deref(), body)
    }

    fn create(&self, spec: Value) -> Value {
        let (status, metric) = self.call("POST", "/customMetric", Some(spec));
        assert_eq!(status, 201, "{metric}");
        metric
    }

    fn push(&self, id: &Value, points: Value) -> Value {
        let path = format!("/customMetric/{}/dataPoints", id.as_str().unwrap());
        let (status, answer) = self.call("POST", &path, Some(points));
        assert_eq!(status, 201, "{answer}");
        answer
    }

    fn list(&self) -> Vec<Value> {
        let (status, list) = self.call("GET", "/customMetrics", None);
        assert_eq!(status, 200, "{list}");
        list.as_array().unwrap().clone()
    }

    /// The chart entry of metric `id`.
    fn chart(&self, id: &Value) -> Value {
        let (status, charts) = self.call("GET", "/customMetricsChartData", None);
        assert_eq!(status, 200, "{charts}");
        charts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == *id)
            .unwrap_or_else(|| panic!("no chart for {id} in {charts}"))
            .clone()
    }
}

fn admin(addr: SocketAddr, dep: &str) -> Client {
    Client::new(addr, WORKSPACE, dep, Some(basic(ADMIN)))
}

fn timeseries(name: &str) -> Value {
    json!({"name": name, "graphType": "timeseries", "titleYAxis": "tokens"})
}

#[test]
fn a_metric_is_created_listed_updated_and_deleted_for_good() {
    let tallyd = InProcess::with_config(&config(""));
    let client = admin(tallyd.http, "dep-1");
    let metric = client.create(timeseries("Token Usage"));
    let id = metric["id"].clone();
    assert_eq!(id.as_str().unwrap().len(), 36, "a UUID: {metric}");
    assert_eq!(metric["deploymentId"], "dep-1");
    assert_eq!(metric["name"], "Token Usage");
    assert_eq!(metric["graphType"], "timeseries");
    assert_eq!(metric["titleYAxis"], "tokens");
    assert_eq!(metric["titleXAxis"], Value::Null);
    assert_eq!(metric["aggregationMethod"], "average", "the default");
    assert_eq!(metric["status"], "active");
    let created = metric["createdAt"].as_str().unwrap();
    assert!(created.parse::<jiff::Timestamp>().is_ok(), "{created}");
    assert_eq!(client.list(), std::slice::from_ref(&metric));

    let path = format!("/customMetric/{}", id.as_str().unwrap());
    let (status, updated) = client.call(
        "PATCH",
        &path,
        Some(json!({"name": "Token Usage (max)", "aggregationMethod": "max"})),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["name"], "Token Usage (max)");
    assert_eq!(updated["aggregationMethod"], "max");
    assert_eq!(updated["titleYAxis"], "tokens", "untouched fields stay");
    assert_eq!(updated["createdAt"], metric["createdAt"]);
    assert!(updated["updatedAt"].as_str().unwrap() >= created);
    assert_eq!(client.list(), std::slice::from_ref(&updated));

    client.push(
        &id,
        json!([{"xValue": "2026-03-01T10:00:00Z", "yValue": 1.0}]),
    );
    // A DELETE without a body or a Content-Type, as the client sends it.
    let (status, deleted) = client.call("DELETE", &path, None);
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["status"], "deleted");
    assert_eq!(deleted["id"], id);
    assert!(client.list().is_empty());
    let (status, charts) = client.call("GET", "/customMetricsChartData", None);
    assert_eq!((status, charts), (200, json!([])));
    for (method, path, body) in [
        ("PATCH", path.clone(), Some(json!({"name": "ghost"}))),
        ("DELETE", path.clone(), None),
        (
            "POST",
            format!("{path}/dataPoints"),
            Some(json!([{"xValue": "2026-03-01T10:00:00Z", "yValue": 1.0}])),
        ),
        ("DELETE", format!("{path}/dataPoints"), None),
    ] {
        let (status, problem) = client.call(method, &path, body);
        assert_eq!(
            (status, problem["code"].as_str()),
            (404, Some("metric_not_found")),
            "{method} {path}"
        );
    }
    // Its points went with it: a new metric starts empty.
    let again = client.create(timeseries("Token Usage"));
    assert_ne!(again["id"], id);
    assert_eq!(client.chart(&again["id"])["data"], json!([]));
}

#[test]
fn definitions_follow_the_clients_rules_on_create_and_update() {
    let tallyd = InProcess::with_config(&config(""));
    let client = admin(tallyd.http, "dep-rules");
    let line = json!({"name": "l", "graphType": "line", "titleXAxis": "x", "titleYAxis": "y"});
    let with = |base: &Value, key: &str, value: Value| {
        let mut body = base.clone();
        body[key] = value;
        body
    };
    let ts = timeseries("t");
    for (body, code, field) in [
        (
            with(&ts, "titleXAxis", json!("time")),
            "not_for_timeseries",
            "titleXAxis",
        ),
        (
            with(&ts, "unitXAxis", json!("s")),
            "not_for_timeseries",
            "unitXAxis",
        ),
        (
            with(&ts, "baselineValue", json!(3)),
            "not_for_timeseries",
            "baselineValue",
        ),
        (
            with(&ts, "baselineDescription", json!("b")),
            "not_for_timeseries",
            "baselineDescription",
        ),
        (
            json!({"name": "l", "graphType": "bar", "titleYAxis": "y"}),
            "missing_field",
            "titleXAxis",
        ),
        (
            with(&line, "aggregationMethod", json!("sum")),
            "timeseries_only",
            "aggregationMethod",
        ),
        (
            with(&line, "baselineDescription", json!("x".repeat(21))),
            "too_long",
            "baselineDescription",
        ),
        (
            with(&line, "graphType", json!("pie")),
            "invalid_field",
            "graphType",
        ),
        (
            with(&ts, "aggregationMethod", json!("median")),
            "invalid_field",
            "aggregationMethod",
        ),
        (
            with(&ts, "aggregationMethod", json!("last")),
            "invalid_field",
            "aggregationMethod",
        ),
        (
            with(&ts, "title_y_axis", json!("snake")),
            "invalid_field",
            "title_y_axis",
        ),
    ] {
        let (status, problem) = client.call("POST", "/customMetric", Some(body.clone()));
        assert_eq!(
            (status, problem["code"].as_str(), problem["field"].as_str()),
            (422, Some(code), Some(field)),
            "{body} → {problem}"
        );
    }
    let (status, problem) = client.call("POST", "/customMetric", Some(json!({"name": "t"})));
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_field"))
    );
    assert!(client.list().is_empty(), "refused creates leave nothing");

    // 20 characters (not bytes) is the limit.
    let bar = client.create(json!({
        "name": "Cost", "graphType": "bar", "titleXAxis": "Model", "titleYAxis": "EUR",
        "baselineValue": 12.5, "baselineDescription": "é".repeat(20)
    }));
    assert_eq!(bar["baselineValue"], 12.5);
    assert_eq!(bar["aggregationMethod"], Value::Null);

    let metric = client.create(with(&ts, "aggregationMethod", json!("sum")));
    let path = format!("/customMetric/{}", metric["id"].as_str().unwrap());
    let bar_path = format!("/customMetric/{}", bar["id"].as_str().unwrap());
    for (path, body, code, field) in [
        (
            &path,
            json!({"titleXAxis": "time"}),
            "not_for_timeseries",
            "titleXAxis",
        ),
        (
            &path,
            json!({"graphType": "line"}),
            "immutable_field",
            "graphType",
        ),
        (&path, json!({"name": null}), "missing_field", "name"),
        (
            &path,
            json!({"titleYAxis": null}),
            "missing_field",
            "titleYAxis",
        ),
        (
            &bar_path,
            json!({"aggregationMethod": "max"}),
            "timeseries_only",
            "aggregationMethod",
        ),
        (
            &bar_path,
            json!({"titleXAxis": null}),
            "missing_field",
            "titleXAxis",
        ),
        (
            &bar_path,
            json!({"baselineDescription": "y".repeat(21)}),
            "too_long",
            "baselineDescription",
        ),
    ] {
        let (status, problem) = client.call("PATCH", path, Some(body.clone()));
        assert_eq!(
            (status, problem["code"].as_str(), problem["field"].as_str()),
            (422, Some(code), Some(field)),
            "{body} → {problem}"
        );
    }
    // A refused update changed nothing.
    assert_eq!(client.list(), [bar.clone(), metric.clone()]);

    // The same graph type may be repeated; `null` clears an optional field, and a cleared
    // aggregation is the default again.
    let (status, updated) = client.call(
        "PATCH",
        &path,
        Some(json!({"graphType": "timeseries", "aggregationMethod": null, "unitYAxis": "n"})),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["aggregationMethod"], "average");
    assert_eq!(updated["unitYAxis"], "n");
    let (status, updated) = client.call(
        "PATCH",
        &bar_path,
        Some(json!({"baselineValue": null, "baselineDescription": null})),
    );
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["baselineValue"], Value::Null);
    assert_eq!(updated["baselineDescription"], Value::Null);
    // An empty update is no change.
    let (status, same) = client.call("PATCH", &bar_path, Some(json!({})));
    assert_eq!(status, 200);
    assert_eq!(same["name"], "Cost");
}

#[test]
fn data_points_are_checked_and_a_refused_batch_stores_nothing() {
    let tallyd = InProcess::with_config(&config("[api]\nmax_batch = 3"));
    let client = admin(tallyd.http, "dep-points");
    let metric = client.create(timeseries("t"));
    let points = format!(
        "/customMetric/{}/dataPoints",
        metric["id"].as_str().unwrap()
    );
    let good = json!({"xValue": "2026-03-01T10:00:00Z", "yValue": 1.0});
    for (bad, code, field) in [
        (
            json!({"xValue": "Monday", "yValue": 1}),
            "invalid_x_value",
            "[1].xValue",
        ),
        (
            json!({"xValue": 5, "yValue": 1}),
            "invalid_x_value",
            "[1].xValue",
        ),
        (
            json!({"xValue": "2026-03-01T10:00:00", "yValue": 1}),
            "invalid_x_value",
            "[1].xValue",
        ),
        (
            json!({"xValue": "2026-03-01", "yValue": 1}),
            "invalid_x_value",
            "[1].xValue",
        ),
        (
            json!({"xValue": "2026-03-01T10:00:00Z", "yValue": "1"}),
            "invalid_field",
            "[1].yValue",
        ),
        (
            json!({"xValue": "2026-03-01T10:00:00Z", "y": 1}),
            "invalid_field",
            "[1].y",
        ),
        (
            json!({"xValue": "2026-03-01T10:00:00Z", "yValue": 1, "predictionLogIds": [1]}),
            "invalid_field",
            "[1].predictionLogIds[0]",
        ),
    ] {
        let (status, problem) = client.call("POST", &points, Some(json!([good, bad])));
        assert_eq!(
            (status, problem["code"].as_str(), problem["field"].as_str()),
            (422, Some(code), Some(field)),
            "{bad} → {problem}"
        );
    }
    let (status, problem) = client.call("POST", &points, Some(json!([good, {"xValue": "x"}])));
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_field"))
    );
    let (status, problem) = client.call("POST", &points, Some(good.clone()));
    assert_eq!(
        (status, problem["code"].as_str()),
        (422, Some("invalid_field")),
        "an array"
    );
    let (status, problem) = client.call("POST", &points, Some(json!([good, good, good, good])));
    assert_eq!(
        (status, problem["code"].as_str()),
        (413, Some("batch_too_large"))
    );
    assert_eq!(
        client.chart(&metric["id"])["data"],
        json!([]),
        "nothing stored"
    );

    let line = client
        .create(json!({"name": "l", "graphType": "bar", "titleXAxis": "x", "titleYAxis": "y"}));
    let line_points = format!("/customMetric/{}/dataPoints", line["id"].as_str().unwrap());
    for bad in [json!(true), json!(null), json!({"a": 1}), json!(["a"])] {
        let (status, problem) = client.call(
            "POST",
            &line_points,
            Some(json!([{"xValue": bad, "yValue": 1}])),
        );
        assert_eq!(
            (status, problem["field"].as_str()),
            (422, Some("[0].xValue")),
            "{bad} → {problem}"
        );
    }
    // Any zone, with or without fractions; the answer echoes each point in order.
    let answer = client.push(
        &metric["id"],
        json!([
            {"xValue": "2026-03-01T10:00:00.123456+00:00", "yValue": 1, "predictionLogIds": ["a", "b"]},
            {"xValue": "2026-03-01T12:30:00+02:00", "yValue": 2.5},
            {"xValue": "2026-03-01T10:59:59Z", "yValue": 3},
        ]),
    );
    let answer = answer.as_array().unwrap();
    assert_eq!(answer.len(), 3);
    assert_eq!(answer[0]["xValue"], "2026-03-01T10:00:00.123456+00:00");
    assert_eq!(answer[0]["predictionLogIds"], json!(["a", "b"]));
    assert_eq!(answer[1]["yValue"], 2.5);
    assert!(answer.iter().all(|p| p["customMetricId"] == metric["id"]));
    let ids: Vec<i64> = answer
        .iter()
        .map(|p| p["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        [ids[0], ids[0] + 1, ids[0] + 2],
        "ids in posting order"
    );
    let chart = client.chart(&metric["id"]);
    assert_eq!(chart["labels"], json!(["2026-03-01T10:00:00Z"]));
    assert_eq!(chart["data"], json!([2.1666666666666665]));

    let (status, cleared) = client.call("DELETE", &points, None);
    assert_eq!(
        (status, cleared["deleted"].as_u64()),
        (200, Some(3)),
        "{cleared}"
    );
    let chart = client.chart(&metric["id"]);
    assert_eq!(
        (&chart["labels"], &chart["average"]),
        (&json!([]), &json!(0.0))
    );
    // An empty batch is fine and stores nothing.
    assert_eq!(client.push(&metric["id"], json!([])), json!([]));
}

/// Points at `(minutes after 2026-03-01T00:00Z, y, ids)`, written with a +02:00 offset for odd
/// minutes so zones are converted before binning.
fn points_at(points: &[(i64, f64, &[&str])]) -> Value {
    let origin: jiff::Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
    Value::Array(
        points
            .iter()
            .map(|(minutes, y, ids)| {
                let at = origin + jiff::SignedDuration::from_mins(*minutes);
                let x = if minutes % 2 == 1 {
                    // The same instant, as its +02:00 wall-clock time.
                    let wall = (at + jiff::SignedDuration::from_hours(2)).to_string();
                    format!("{}+02:00", wall.strip_suffix('Z').unwrap())
                } else {
                    at.to_string()
                };
                json!({"xValue": x, "yValue": y, "predictionLogIds": ids})
            })
            .collect(),
    )
}

#[test]
fn timeseries_charts_bin_hourly_up_to_48_hours_and_daily_beyond() {
    let tallyd = InProcess::with_config(&config(""));
    let client = admin(tallyd.http, "dep-charts");
    let chart_of = |aggregation: &str, points: &[(i64, f64, &[&str])]| {
        let metric = client.create(json!({
            "name": aggregation, "graphType": "timeseries", "titleYAxis": "n",
            "aggregationMethod": aggregation
        }));
        client.push(&metric["id"], points_at(points));
        let chart = client.chart(&metric["id"]);
        assert_eq!(
            chart["name"], aggregation,
            "the metric's own fields: {chart}"
        );
        chart
    };
    // Exactly 48 h from first to last point: hourly bins, UTC hours, empty ones left out.
    let hourly: &[(i64, f64, &[&str])] = &[
        (10, 5.0, &["a"]),
        (41, 3.0, &["b", "c"]),
        (59, 4.0, &[]),
        (125, 1.0, &["d"]),
        (10 + 48 * 60, 9.0, &["e"]),
    ];
    let chart = chart_of("sum", hourly);
    assert_eq!(
        chart["labels"],
        json!([
            "2026-03-01T00:00:00Z",
            "2026-03-01T02:00:00Z",
            "2026-03-03T00:00:00Z"
        ])
    );
    assert_eq!(chart["data"], json!([12.0, 1.0, 9.0]));
    assert_eq!(
        chart["predictionLogIds"],
        json!([["a", "b", "c"], ["d"], ["e"]])
    );
    assert_eq!(chart["average"], json!(22.0 / 5.0));
    assert_eq!(chart_of("min", hourly)["data"], json!([3.0, 1.0, 9.0]));
    assert_eq!(chart_of("max", hourly)["data"], json!([5.0, 1.0, 9.0]));
    assert_eq!(chart_of("average", hourly)["data"], json!([4.0, 1.0, 9.0]));

    // One minute more: daily bins at UTC midnight.
    let daily: &[(i64, f64, &[&str])] = &[
        (10, 5.0, &["a"]),
        (23 * 60 + 59, 3.0, &["b"]),
        (24 * 60, 2.0, &[]),
        (11 + 48 * 60, 9.0, &["e"]),
    ];
    let chart = chart_of("sum", daily);
    assert_eq!(
        chart["labels"],
        json!([
            "2026-03-01T00:00:00Z",
            "2026-03-02T00:00:00Z",
            "2026-03-03T00:00:00Z"
        ])
    );
    assert_eq!(chart["data"], json!([8.0, 2.0, 9.0]));
    assert_eq!(chart["predictionLogIds"], json!([["a", "b"], [], ["e"]]));

    // The 23:59+02:00 point is 21:59 UTC: binned by UTC, not by its own offset.
    let chart = chart_of("max", &[(21 * 60 + 59, 1.0, &[]), (23 * 60 + 58, 2.0, &[])]);
    assert_eq!(
        chart["labels"],
        json!(["2026-03-01T21:00:00Z", "2026-03-01T23:00:00Z"])
    );
}

#[test]
fn line_and_bar_charts_keep_each_point_with_its_x_as_sent() {
    let tallyd = InProcess::with_config(&config(""));
    let client = admin(tallyd.http, "dep-line");
    let line = client.create(json!({
        "name": "Daily Token Usage", "graphType": "line", "titleXAxis": "Date",
        "titleYAxis": "Total tokens", "unitXAxis": "day"
    }));
    assert_eq!(line["unitXAxis"], "day");
    client.push(
        &line["id"],
        json!([
            {"xValue": "2026-03-07T00:00:00+00:00", "yValue": 289.1},
            {"xValue": "2026-03-06T00:00:00+00:00", "yValue": 312.4},
            {"xValue": "Total", "yValue": 601.5, "predictionLogIds": ["p1"]},
            {"xValue": 3.0, "yValue": 7},
            {"xValue": 4, "yValue": 0},
        ]),
    );
    let chart = client.chart(&line["id"]);
    let text = chart.to_string();
    assert_eq!(
        chart["labels"],
        json!([
            "2026-03-07T00:00:00+00:00",
            "2026-03-06T00:00:00+00:00",
            "Total",
            3.0,
            4
        ])
    );
    assert!(
        text.contains(r#""Total",3.0,4]"#),
        "numbers stay as sent: {text}"
    );
    assert_eq!(chart["data"], json!([289.1, 312.4, 601.5, 7.0, 0.0]));
    assert_eq!(chart["predictionLogIds"], json!([[], [], ["p1"], [], []]));
    assert_eq!(chart["average"], json!((289.1 + 312.4 + 601.5 + 7.0) / 5.0));
}

#[test]
fn a_workspace_is_a_tenant() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    let mine = admin(addr, "dep-t");
    let metric = mine.create(timeseries("secret"));
    let id = metric["id"].as_str().unwrap();
    // A token used on another workspace's paths is refused for what it is.
    let intruder = Client::new(addr, WORKSPACE, "dep-t", Some(basic(OTHER)));
    for (method, path, body) in [
        ("GET", "/customMetrics".to_owned(), None),
        ("GET", "/customMetricsChartData".to_owned(), None),
        ("POST", "/customMetric".to_owned(), Some(timeseries("x"))),
        (
            "PATCH",
            format!("/customMetric/{id}"),
            Some(json!({"name": "x"})),
        ),
        ("DELETE", format!("/customMetric/{id}"), None),
        ("DELETE", format!("/customMetric/{id}/dataPoints"), None),
    ] {
        let (status, problem) = intruder.call(method, &path, body);
        assert_eq!(
            (status, problem["code"].as_str()),
            (403, Some("workspace_mismatch")),
            "{method} {path}"
        );
    }
    // On its own workspace, the other tenant's metric does not exist, id or not; so it does
    // not on another deployment of the same workspace either.
    let other = Client::new(addr, OTHER_WORKSPACE, "dep-t", Some(basic(OTHER)));
    let elsewhere = admin(addr, "dep-elsewhere");
    for client in [&other, &elsewhere] {
        assert!(client.list().is_empty());
        for (method, path, body) in [
            (
                "PATCH",
                format!("/customMetric/{id}"),
                Some(json!({"name": "x"})),
            ),
            ("DELETE", format!("/customMetric/{id}"), None),
            (
                "POST",
                format!("/customMetric/{id}/dataPoints"),
                Some(json!([{"xValue": "2026-03-01T00:00:00Z", "yValue": 1}])),
            ),
            ("DELETE", format!("/customMetric/{id}/dataPoints"), None),
        ] {
            let (status, missing) = client.call(method, &path, body.clone());
            let (_, unknown) = client.call(
                method,
                &path.replace(id, "00000000-0000-0000-0000-000000000000"),
                body,
            );
            assert_eq!(status, 404, "{method} {path}");
            assert_eq!(
                missing["detail"].as_str().map(|d| d.replace(id, "ID")),
                unknown["detail"]
                    .as_str()
                    .map(|d| d.replace("00000000-0000-0000-0000-000000000000", "ID")),
                "the same answer as for an id nobody has"
            );
        }
    }
    // Nothing the others tried changed it.
    assert_eq!(mine.list(), [metric]);
    // X-Tenant-ID must name the token's tenant.
    let path = format!("{}/customMetrics", deployment(WORKSPACE, "dep-t"));
    let auth = basic(ADMIN);
    let response = http_send(
        addr,
        "GET",
        &path,
        &[("Authorization", &auth), ("X-Tenant-ID", OTHER_WORKSPACE)],
        b"",
    );
    assert_eq!(response.status, 403, "{}", response.text());
}

#[test]
fn scopes_decide_who_reads_writes_and_defines() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    let metric = admin(addr, "dep-s").create(timeseries("m"));
    let id = metric["id"].as_str().unwrap();
    let point = json!([{"xValue": "2026-03-01T00:00:00Z", "yValue": 1}]);
    let requests = [
        ("GET", "/customMetrics".to_owned(), None, "read"),
        ("GET", "/customMetricsChartData".to_owned(), None, "read"),
        (
            "POST",
            format!("/customMetric/{id}/dataPoints"),
            Some(point),
            "write",
        ),
        (
            "DELETE",
            format!("/customMetric/{id}/dataPoints"),
            None,
            "write",
        ),
        (
            "PATCH",
            format!("/customMetric/{id}"),
            Some(json!({"unitYAxis": "n"})),
            "admin",
        ),
        (
            "POST",
            "/customMetric".to_owned(),
            Some(timeseries("n")),
            "admin",
        ),
    ];
    // Basic (id and secret) and Bearer (the secret) are the same token.
    for (token, granted) in [
        (READER, &["read"][..]),
        (PUSHER, &["read", "write"][..]),
        (ADMIN, &["read", "write", "admin"][..]),
    ] {
        for auth in [basic(token), bearer(token)] {
            let client = Client::new(addr, WORKSPACE, "dep-s", Some(auth.clone()));
            for (method, path, body, scope) in &requests {
                let (status, answer) = client.call(method, path, body.clone());
                if granted.contains(scope) {
                    assert!(status < 300, "{} {method} {path}: {answer}", token.0);
                } else {
                    assert_eq!(
                        (status, answer["code"].as_str()),
                        (403, Some("insufficient_scope")),
                        "{} {method} {path}",
                        token.0
                    );
                }
            }
        }
    }
    // No credentials, or wrong ones: 401 with a challenge and a JSON body.
    let path = format!("{}/customMetrics", deployment(WORKSPACE, "dep-s"));
    let wrong = basic((ADMIN.0, "not-the-secret"));
    for (auth, code) in [
        (None, "missing_credentials"),
        (Some(wrong.as_str()), "invalid_credentials"),
    ] {
        let (status, problem) = call(addr, "GET", &path, auth, None);
        assert_eq!((status, problem["code"].as_str()), (401, Some(code)));
    }
    let response = http_send(addr, "GET", &path, &[], b"");
    assert!(response.header("www-authenticate").is_some());
}

#[test]
fn without_tokens_the_workspace_is_the_tenant() {
    let tallyd = InProcess::start();
    let addr = tallyd.http;
    let first = Client::new(addr, "ws-a", "dep", None);
    let metric = first.create(timeseries("m"));
    assert_eq!(first.list().len(), 1);
    let second = Client::new(addr, "ws-b", "dep", None);
    assert!(second.list().is_empty());
    let path = format!("/customMetric/{}", metric["id"].as_str().unwrap());
    assert_eq!(second.call("DELETE", &path, None).0, 404);
    // A tenant header must agree with the workspace.
    let list = format!("{}/customMetrics", deployment("ws-a", "dep"));
    assert_eq!(
        http_send(addr, "GET", &list, &[("X-Tenant-ID", "ws-a")], b"").status,
        200
    );
    let response = http_send(addr, "GET", &list, &[("X-Tenant-ID", "ws-b")], b"");
    assert_eq!(response.status, 403, "{}", response.text());
    assert_eq!(first.call("DELETE", &path, None).0, 200);
}

#[test]
fn unknown_paths_methods_and_bodies_answer_problem_documents() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    let auth = basic(ADMIN);
    let prefix = deployment(WORKSPACE, "dep-p");
    for path in [
        format!("{prefix}/nope"),
        "/workspaces".to_owned(),
        format!("{prefix}/customMetric/a/b/c"),
    ] {
        let (status, problem) = call(addr, "GET", &path, Some(&auth), None);
        assert_eq!(
            (status, problem["code"].as_str()),
            (404, Some("not_found")),
            "{path}"
        );
    }
    for (method, path, allow) in [
        ("GET", format!("{prefix}/customMetric"), "POST"),
        ("PUT", format!("{prefix}/customMetric/x"), "PATCH,DELETE"),
        (
            "GET",
            format!("{prefix}/customMetric/x/dataPoints"),
            "POST,DELETE",
        ),
        ("POST", format!("{prefix}/customMetrics"), "GET,HEAD"),
    ] {
        let response = http_send(addr, method, &path, &[("Authorization", &auth)], b"");
        assert_eq!(response.status, 405, "{method} {path}");
        assert_eq!(
            response.header("content-type"),
            Some("application/problem+json")
        );
        let mut allowed: Vec<&str> = response
            .header("allow")
            .unwrap()
            .split(',')
            .map(str::trim)
            .collect();
        allowed.sort_unstable();
        let mut expected: Vec<&str> = allow.split(',').collect();
        expected.sort_unstable();
        assert_eq!(allowed, expected, "{method} {path}");
        let problem: Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(problem["code"], "method_not_allowed");
    }
    let create = format!("{prefix}/customMetric");
    let body = timeseries("t").to_string();
    let response = http_send(
        addr,
        "POST",
        &create,
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(response.status, 415, "no Content-Type");
    let response = http_send(
        addr,
        "POST",
        &create,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        b"{nope",
    );
    assert_eq!(response.status, 400);
    let problem: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(problem["code"], "malformed_json");
}

#[test]
fn a_connection_stays_open_across_posts_as_the_clients_session_expects() {
    use std::io::{Read, Write};
    let tallyd = InProcess::with_config(&config(""));
    let metric = admin(tallyd.http, "dep-k").create(timeseries("k"));
    let path = format!(
        "{}/customMetric/{}/dataPoints",
        deployment(WORKSPACE, "dep-k"),
        metric["id"].as_str().unwrap()
    );
    let body = json!([{"xValue": "2026-03-01T00:00:00Z", "yValue": 1}]).to_string();
    let post = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        basic(ADMIN),
        body.len()
    );
    let last = format!(
        "GET {} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
        path.replace(
            &format!("customMetric/{}/dataPoints", metric["id"].as_str().unwrap()),
            "customMetrics"
        ),
        basic(ADMIN)
    );
    let mut stream = std::net::TcpStream::connect(tallyd.http).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(format!("{post}{post}{last}").as_bytes())
        .unwrap();
    let mut answers = String::new();
    stream.read_to_string(&mut answers).unwrap();
    assert_eq!(
        answers.matches("HTTP/1.1 201 Created\r\n").count(),
        2,
        "{answers}"
    );
    assert_eq!(
        answers.matches("HTTP/1.1 200 OK\r\n").count(),
        1,
        "{answers}"
    );
}

#[test]
fn the_latest_timeseries_point_is_a_gauge_in_metrics() {
    let tallyd = InProcess::with_config(&config(""));
    let client = admin(tallyd.http, "dep-g");
    let metric = client.create(timeseries("Token Usage"));
    let id = metric["id"].as_str().unwrap().to_owned();
    let series = |name: &str| {
        format!(
            r#"deeploy_custom_metric{{tenant="{WORKSPACE}",deployment="dep-g",metric_id="{id}",metric="{name}"}}"#
        )
    };
    // The latest by x time, not the last posted.
    client.push(
        &metric["id"],
        json!([
            {"xValue": "2026-03-01T10:00:00Z", "yValue": 5},
            {"xValue": "2026-03-01T12:00:00+02:00", "yValue": 7},
            {"xValue": "2026-03-01T09:00:00Z", "yValue": 1},
        ]),
    );
    let text = tallyd.scrape();
    assert_eq!(value_of(&text, &series("Token Usage")), Some(7.0), "{text}");
    assert!(
        text.contains("# TYPE deeploy_custom_metric gauge"),
        "{text}"
    );
    client.push(
        &metric["id"],
        json!([{"xValue": "2026-02-01T00:00:00Z", "yValue": 99}]),
    );
    assert_eq!(
        value_of(&tallyd.scrape(), &series("Token Usage")),
        Some(7.0)
    );
    client.push(
        &metric["id"],
        json!([{"xValue": "2026-03-02T00:00:00Z", "yValue": 8}]),
    );
    assert_eq!(
        value_of(&tallyd.scrape(), &series("Token Usage")),
        Some(8.0)
    );
    // A rename moves the series; a clear removes it.
    let path = format!("/customMetric/{id}");
    assert_eq!(
        client
            .call("PATCH", &path, Some(json!({"name": "Tokens"})))
            .0,
        200
    );
    let text = tallyd.scrape();
    assert_eq!(value_of(&text, &series("Tokens")), Some(8.0), "{text}");
    assert_eq!(value_of(&text, &series("Token Usage")), None, "{text}");
    assert_eq!(
        client.call("DELETE", &format!("{path}/dataPoints"), None).0,
        200
    );
    assert!(!tallyd.scrape().contains(&id));
    client.push(
        &metric["id"],
        json!([{"xValue": "2026-01-01T00:00:00Z", "yValue": 2}]),
    );
    assert_eq!(value_of(&tallyd.scrape(), &series("Tokens")), Some(2.0));
    // Line and bar points are categories: not shown.
    let bar = client
        .create(json!({"name": "b", "graphType": "bar", "titleXAxis": "x", "titleYAxis": "y"}));
    client.push(&bar["id"], json!([{"xValue": "a", "yValue": 1}]));
    assert!(!tallyd.scrape().contains(bar["id"].as_str().unwrap()));
    // Deleting the metric removes its series.
    assert_eq!(client.call("DELETE", &path, None).0, 200);
    assert!(!tallyd.scrape().contains(&id));
}

#[test]
fn definitions_and_points_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let start = || {
        let file = TempFile::new("tallyd.toml", &config(""));
        Daemon::start_with(&["--data-dir", dir], Some(file))
    };
    let mut tallyd = start();
    let client = admin(tallyd.http, "dep-d");
    let kept = client.create(timeseries("kept"));
    let gone = client.create(timeseries("gone"));
    for day in 1..=20 {
        client.push(
            &kept["id"],
            json!([{"xValue": format!("2026-03-{day:02}T12:00:00Z"), "yValue": day, "predictionLogIds": [format!("p{day}")]}]),
        );
    }
    let path = format!("/customMetric/{}", kept["id"].as_str().unwrap());
    let (_, renamed) = client.call(
        "PATCH",
        &path,
        Some(json!({"name": "kept (sum)", "aggregationMethod": "sum"})),
    );
    assert_eq!(
        client
            .call(
                "DELETE",
                &format!("/customMetric/{}", gone["id"].as_str().unwrap()),
                None
            )
            .0,
        200
    );
    let before = client.chart(&kept["id"]);
    tallyd.signal(libc::SIGKILL);
    tallyd
        .wait_exit(std::time::Duration::from_secs(5))
        .expect("killed");

    let tallyd = start();
    let client = admin(tallyd.http, "dep-d");
    assert_eq!(client.list(), [renamed]);
    let after = client.chart(&kept["id"]);
    assert_eq!(after, before);
    assert_eq!(after["data"].as_array().unwrap().len(), 20);
    assert_eq!(after["predictionLogIds"][19], json!(["p20"]));
}

// ---------------------------------------------------------------------------------------------
// The official client

/// The venv `scripts/setup-test-deps` installs `deeploy` into: its own, since `deeploy` needs
/// numpy 2 and `seldon-core` pins numpy below 2.
fn deeploy_python() -> PathBuf {
    repo_root().join("target/venvs/deeploy/bin/python")
}

fn has_deeploy(python: &PathBuf) -> bool {
    Command::new(python)
        .args(["-c", "import deeploy"])
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn the_official_deeploy_client_runs_the_seed_flow() {
    let python = deeploy_python();
    if !require(
        has_deeploy(&python),
        "the `deeploy` client in target/venvs/deeploy",
    ) {
        return;
    }
    let tallyd = Daemon::with_config(&config(""));
    let output = Command::new(&python)
        .arg(repo_root().join("tests/clients/deeploy_flow.py"))
        .env("TALLYD_URL", format!("http://{}", tallyd.http))
        .env("DEEPLOY_ACCESS_KEY", ADMIN.0)
        .env("DEEPLOY_SECRET_KEY", ADMIN.1)
        .env("DEEPLOY_WORKSPACE_ID", WORKSPACE)
        .env("DEEPLOY_TOKEN", PUSHER.1)
        .env("DEEPLOY_FOREIGN_WORKSPACE_ID", OTHER_WORKSPACE)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .output()
        .expect("run deeploy_flow.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(" passed, 0 failed"),
        "deeploy_flow.py ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // It ran the whole flow, not a prefix of it.
    let passed: usize = stdout
        .lines()
        .filter(|line| line.starts_with("ok "))
        .count();
    assert!(passed >= 60, "only {passed} checks ran:\n{stdout}");
}
