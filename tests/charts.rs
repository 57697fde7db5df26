//! The charts page (`/charts`) against a running tallyd with known data: the catalogue route over
//! HTTP, then the page itself in headless Chromium (Debian's, driven by playwright-core through
//! `tests/browser/charts.mjs`), whose report of what it drew is checked here against the data:
//! the listed metrics, every chart's bins and values for every aggregation and range, the
//! baseline, prediction ids on hover, token login, no console errors or failed requests, and no
//! horizontal scroll on a phone. Screenshots land in `target/artifacts/charts/`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::{Daemon, InProcess, api_call as call, http_send, on_path, repo_root, require};
use serde_json::{Value, json};

const TENANT: &str = "acme";
const WRITER: &str = "writer-secret";
const READER: &str = "reader-secret";
const OTHER: &str = "other-secret";
const MATIH: &str = "/api/v1/observability/custom-metrics";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn config() -> String {
    let mut text = String::new();
    for (id, secret, tenant, scopes) in [
        ("writer", WRITER, TENANT, r#""read", "write", "admin""#),
        ("reader", READER, TENANT, r#""read""#),
        (
            "other",
            OTHER,
            "other-tenant",
            r#""read", "write", "admin""#,
        ),
    ] {
        text.push_str(&format!(
            "[[api.tokens]]\nid = \"{id}\"\nsecret_sha256 = \"{}\"\ntenant = \"{tenant}\"\n\
             scopes = [{scopes}]\n\n",
            sha256_hex(secret)
        ));
    }
    text
}

fn iso(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).unwrap().to_string()
}

/// The known data, relative to a ten-minute boundary 20 to 30 minutes ago (inside "last hour").
struct Known {
    base: i64,
    /// Matih gauge `chart_latency{model}`: (label, seconds after base, value).
    matih: Vec<(&'static str, i64, f64)>,
    /// Deeploy timeseries (aggregationMethod max): (seconds after base, y, prediction ids).
    drift: Vec<(i64, f64, Vec<&'static str>)>,
    /// Deeploy line with a baseline: (x label, y, prediction ids), "v2" posted twice.
    accuracy: Vec<(&'static str, f64, Vec<&'static str>)>,
    /// Deeploy bar in another deployment.
    requests: Vec<(&'static str, f64)>,
    ids: BTreeMap<&'static str, String>,
}

fn load_known_data(addr: SocketAddr) -> Known {
    let now = jiff::Timestamp::now().as_second();
    let base = now.div_euclid(600) * 600 - 1200;
    let mut known = Known {
        base,
        matih: vec![
            ("a", 5, 1.0),
            ("a", 20, 3.0),
            ("a", 40, 6.0),
            ("a", 70, 10.0),
            ("b", 10, 4.0),
        ],
        drift: vec![
            (30, 0.5, vec!["p-1"]),
            (90, 0.25, vec![]),
            (100, 0.75, vec!["p-2", "p-3"]),
        ],
        accuracy: vec![
            ("v1", 88.0, vec!["p-10"]),
            ("v2", 91.0, vec![]),
            ("v3", 93.5, vec![]),
            ("v2", 95.0, vec!["p-11"]),
        ],
        requests: vec![("eu", 120.0), ("us", 340.0), ("ap", 75.0)],
        ids: BTreeMap::new(),
    };

    let spec = json!({"name": "chart_latency", "type": "gauge", "unit": "ms",
        "description": "Model latency", "labels": ["model"], "aggregation": "average"});
    let (status, body) = call(addr, "POST", MATIH, WRITER, Some(spec));
    assert_eq!(status, 201, "{body}");
    let samples: Vec<Value> = known
        .matih
        .iter()
        .map(|(model, at, value)| {
            json!({"value": value, "labels": {"model": model}, "timestamp": iso(base + at)})
        })
        .collect();
    let path = format!("{MATIH}/chart_latency/data");
    let (status, body) = call(addr, "POST", &path, WRITER, Some(Value::Array(samples)));
    assert_eq!(status, 200, "{body}");

    let deeploy = |deployment: &str, spec: Value, points: Vec<Value>| -> String {
        let prefix = format!("/workspaces/{TENANT}/deployments/{deployment}");
        let (status, metric) = call(
            addr,
            "POST",
            &format!("{prefix}/customMetric"),
            WRITER,
            Some(spec),
        );
        assert_eq!(status, 201, "{metric}");
        let id = metric["id"].as_str().unwrap().to_owned();
        let path = format!("{prefix}/customMetric/{id}/dataPoints");
        let (status, body) = call(addr, "POST", &path, WRITER, Some(Value::Array(points)));
        assert_eq!(status, 201, "{body}");
        id
    };
    let points = known
        .drift
        .iter()
        .map(|(at, y, ids)| json!({"xValue": iso(base + at), "yValue": y, "predictionLogIds": ids}))
        .collect();
    let spec = json!({"name": "Prediction drift", "graphType": "timeseries",
        "titleYAxis": "Drift", "unitYAxis": "score", "aggregationMethod": "max"});
    known.ids.insert("drift", deeploy("d1", spec, points));
    let points = known
        .accuracy
        .iter()
        .map(|(x, y, ids)| {
            if ids.is_empty() {
                json!({"xValue": x, "yValue": y})
            } else {
                json!({"xValue": x, "yValue": y, "predictionLogIds": ids})
            }
        })
        .collect();
    let spec = json!({"name": "Accuracy by version", "graphType": "line",
        "titleXAxis": "Model version", "titleYAxis": "Accuracy", "unitYAxis": "%",
        "baselineValue": 90.0, "baselineDescription": "target"});
    known.ids.insert("accuracy", deeploy("d1", spec, points));
    let points = known
        .requests
        .iter()
        .map(|(x, y)| json!({"xValue": x, "yValue": y}))
        .collect();
    let spec = json!({"name": "Requests per region", "graphType": "bar",
        "titleXAxis": "Region", "titleYAxis": "Requests"});
    known.ids.insert("requests", deeploy("d2", spec, points));

    // Another tenant's metric, which acme must never see.
    let (status, body) = call(
        addr,
        "POST",
        "/workspaces/other-tenant/deployments/d1/customMetric",
        OTHER,
        Some(json!({"name": "Secret", "graphType": "bar", "titleXAxis": "x", "titleYAxis": "y"})),
    );
    assert_eq!(status, 201, "{body}");
    known
        .ids
        .insert("secret", body["id"].as_str().unwrap().to_owned());
    known
}

/// `points` folded into `step`-second bins aligned to the epoch (as the page asks), sorted.
fn binned(points: &[(i64, f64)], step: i64, aggregation: &str) -> Vec<(i64, f64)> {
    let mut bins: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for &(at, value) in points {
        bins.entry(at.div_euclid(step) * step)
            .or_default()
            .push(value);
    }
    bins.into_iter()
        .map(|(start, values)| (start, fold(&values, aggregation)))
        .collect()
}

/// Folds values in posting (for timeseries: time) order.
fn fold(values: &[f64], aggregation: &str) -> f64 {
    match aggregation {
        "sum" => values.iter().sum(),
        "average" => values.iter().sum::<f64>() / values.len() as f64,
        "min" => values.iter().copied().fold(f64::INFINITY, f64::min),
        "max" => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "count" => values.len() as f64,
        "last" => *values.last().unwrap(),
        other => panic!("unknown aggregation {other}"),
    }
}

const AGGREGATIONS: [&str; 6] = ["average", "sum", "min", "max", "count", "last"];

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A card's rows as (x, value of column `column`), the empty cells left out.
fn column(card: &Value, column: usize) -> Vec<(String, f64)> {
    card["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| {
            let value = row["values"][column].as_f64()?;
            Some((row["x"].as_str().unwrap().to_owned(), value))
        })
        .collect()
}

fn assert_rows(what: &str, got: &[(String, f64)], expected: &[(String, f64)]) {
    let same = got.len() == expected.len()
        && got
            .iter()
            .zip(expected)
            .all(|((gx, gv), (ex, ev))| gx == ex && close(*gv, *ev));
    assert!(same, "{what}:\n  drawn    {got:?}\n  expected {expected:?}");
}

fn timed(rows: Vec<(i64, f64)>) -> Vec<(String, f64)> {
    rows.into_iter().map(|(at, v)| (iso(at), v)).collect()
}

/// Labels folded in first-posted order.
fn by_label(points: &[(&str, f64)], aggregation: &str) -> Vec<(String, f64)> {
    let mut order: Vec<(&str, Vec<f64>)> = Vec::new();
    for &(x, y) in points {
        match order.iter_mut().find(|(label, _)| *label == x) {
            Some((_, values)) => values.push(y),
            None => order.push((x, vec![y])),
        }
    }
    order
        .into_iter()
        .map(|(x, values)| (x.to_owned(), fold(&values, aggregation)))
        .collect()
}

/// What each chart must show for `aggregation` with `step`-second bins (timeseries).
fn expected(
    known: &Known,
    key: &str,
    aggregation: &str,
    step: i64,
) -> BTreeMap<String, Vec<(String, f64)>> {
    let mut out = BTreeMap::new();
    if key == "matih-chart_latency" {
        for model in ["a", "b"] {
            let points: Vec<(i64, f64)> = known
                .matih
                .iter()
                .filter(|(m, ..)| *m == model)
                .map(|(_, at, v)| (known.base + at, *v))
                .collect();
            out.insert(
                format!("{{model=\"{model}\"}}"),
                timed(binned(&points, step, aggregation)),
            );
        }
    } else if key == format!("deeploy-{}", known.ids["drift"]) {
        let points: Vec<(i64, f64)> = known
            .drift
            .iter()
            .map(|(at, y, _)| (known.base + at, *y))
            .collect();
        out.insert(
            "Drift (score)".into(),
            timed(binned(&points, step, aggregation)),
        );
    } else if key == format!("deeploy-{}", known.ids["accuracy"]) {
        let points: Vec<(&str, f64)> = known.accuracy.iter().map(|(x, y, _)| (*x, *y)).collect();
        out.insert("Accuracy (%)".into(), by_label(&points, aggregation));
    } else if key == format!("deeploy-{}", known.ids["requests"]) {
        out.insert("Requests".into(), by_label(&known.requests, aggregation));
    } else {
        panic!("an unexpected chart {key}");
    }
    out
}

/// Checks every series of a card (found by its legend label) against `expected`, and that the
/// uPlot instance holds the same numbers as the table.
fn check_card(what: &str, card: &Value, expected: &BTreeMap<String, Vec<(String, f64)>>) {
    assert_eq!(card["state"], "ready", "{what}: {card}");
    let plot = &card["plot"];
    let labels: Vec<&str> = plot["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for (label, rows) in expected {
        let index = labels
            .iter()
            .position(|l| l == label)
            .unwrap_or_else(|| panic!("{what}: no series {label:?} in {labels:?}"));
        assert_rows(&format!("{what} {label}"), &column(card, index - 1), rows);
        // The drawn data: the table's values, column by column.
        let drawn: Vec<Option<f64>> = plot["data"][index]
            .as_array()
            .unwrap()
            .iter()
            .map(Value::as_f64)
            .collect();
        let table: Vec<Option<f64>> = card["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["values"][index - 1].as_f64())
            .collect();
        assert_eq!(
            drawn, table,
            "{what} {label}: uPlot's data and the table differ"
        );
    }
    let xs: Vec<f64> = plot["data"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let rows = card["rows"].as_array().unwrap();
    assert_eq!(xs.len(), rows.len(), "{what}");
    for (i, (x, row)) in xs.iter().zip(rows).enumerate() {
        let text = row["x"].as_str().unwrap();
        if card["graphType"] == "timeseries" {
            let at = text.parse::<jiff::Timestamp>().unwrap().as_second() as f64;
            assert_eq!(*x, at, "{what}: x of row {i}");
        } else {
            assert_eq!(*x, i as f64, "{what}: category position of row {i}");
        }
    }
}

fn no_errors(what: &str, log: &Value) {
    for kind in ["console", "pageErrors", "failedRequests", "httpErrors"] {
        assert_eq!(log[kind], json!([]), "{what}: {kind}");
    }
}

#[test]
fn the_catalogue_lists_the_tenants_metrics_with_what_a_chart_needs() {
    let tallyd = Daemon::with_config(&config());
    let known = load_known_data(tallyd.http);
    let (status, catalogue) = call(tallyd.http, "GET", "/api/v1/charts", READER, None);
    assert_eq!(status, 200, "{catalogue}");
    assert_eq!(catalogue["tenant"], TENANT);
    assert_eq!(catalogue["aggregations"], json!(AGGREGATIONS));
    assert_eq!(catalogue["matih"][0]["name"], "chart_latency");
    assert_eq!(catalogue["matih"][0]["unit"], "ms");
    assert_eq!(catalogue["matih"][0]["aggregation"], "average");
    let deeploy = catalogue["deeploy"].as_array().unwrap();
    let names: Vec<&str> = deeploy
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Prediction drift",
            "Accuracy by version",
            "Requests per region"
        ]
    );
    assert_eq!(deeploy[0]["aggregation"], "max");
    assert_eq!(deeploy[1]["baselineValue"], 90.0);
    assert_eq!(deeploy[1]["baselineDescription"], "target");
    assert_eq!(deeploy[1]["titleXAxis"], "Model version");
    assert_eq!(deeploy[2]["deploymentId"], "d2");

    // Another tenant's metric is not found; a line chart has no time range.
    let secret = format!("/api/v1/charts/deeploy/{}", known.ids["secret"]);
    let (status, problem) = call(tallyd.http, "GET", &secret, READER, None);
    assert_eq!(
        (status, problem["code"].as_str()),
        (404, Some("metric_not_found"))
    );
    let line = format!("/api/v1/charts/deeploy/{}?start=0", known.ids["accuracy"]);
    let (status, problem) = call(tallyd.http, "GET", &line, READER, None);
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("start")),
        "{problem}"
    );
    let bad = format!(
        "/api/v1/charts/deeploy/{}?aggregation=median",
        known.ids["accuracy"]
    );
    let (status, problem) = call(tallyd.http, "GET", &bad, READER, None);
    assert_eq!(
        (status, problem["field"].as_str()),
        (400, Some("aggregation")),
        "{problem}"
    );
    let line = format!(
        "/api/v1/charts/deeploy/{}?aggregation=sum",
        known.ids["accuracy"]
    );
    let (status, chart) = call(tallyd.http, "GET", &line, READER, None);
    assert_eq!(status, 200, "{chart}");
    assert_eq!(
        chart["points"][1],
        json!({"x": "v2", "y": 186.0, "predictionLogIds": ["p-11"]})
    );
    let (status, _) = call(tallyd.http, "GET", "/api/v1/charts", "wrong", None);
    assert_eq!(status, 401);

    let (_, document) = call(tallyd.http, "GET", "/api/v1/openapi.json", READER, None);
    assert!(
        document["paths"]["/api/v1/charts"]["get"].is_object(),
        "{}",
        document["paths"]
    );
    assert!(document["paths"]["/api/v1/charts/deeploy/{id}"]["get"].is_object());
}

#[test]
fn without_tokens_the_catalogue_answers_anonymously_on_loopback() {
    let tallyd = InProcess::start();
    let response = http_send(
        tallyd.http,
        "GET",
        "/api/v1/charts",
        &[("X-Tenant-ID", "t1")],
        b"",
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let catalogue: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(catalogue["tenant"], "t1");
    assert_eq!(catalogue["deeploy"], json!([]));
}

fn browser_available() -> bool {
    require(on_path("node"), "node")
        && require(
            Path::new("/usr/bin/chromium").is_file(),
            "chromium (Debian package)",
        )
        && require(
            repo_root()
                .join("target/node/node_modules/playwright-core")
                .is_dir(),
            "playwright-core in target/node",
        )
}

/// A `datetime-local` value (the browser runs in UTC).
fn local_input(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M")
        .to_string()
}

#[test]
fn the_charts_page_draws_the_known_data_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let tallyd = Daemon::with_config(&config());
    let known = load_known_data(tallyd.http);
    let artifacts = repo_root().join("target/artifacts/charts");
    // A custom range of 100 minutes: the page picks 30 s bins for it (at most 200 bins).
    let (custom_from, custom_to) = (known.base - 3000, known.base + 3000);
    let output = Command::new("node")
        .arg(repo_root().join("tests/browser/charts.mjs"))
        .env("TALLYD_URL", format!("http://{}", tallyd.http))
        .env("TALLYD_TOKEN", READER)
        .env("ARTIFACTS", &artifacts)
        .env("CUSTOM_FROM", local_input(custom_from))
        .env("CUSTOM_TO", local_input(custom_to))
        .env(
            "PLAYWRIGHT_FROM",
            repo_root().join("target/node/package.json"),
        )
        .env("TZ", "UTC")
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "charts.mjs failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    // Kept beside the screenshots: what the browser saw, for a person reading a failure.
    std::fs::write(artifacts.join("report.json"), &output.stdout).unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).expect("the script's report");
    let phases = &report["phases"];

    // Without a token the page asks for one; the only error is the API's 401.
    assert_eq!(phases["anonymous"]["loginShown"], true);
    let log = &phases["anonymous"]["log"];
    assert_eq!(log["httpErrors"], json!(["401 /api/v1/charts"]), "{log}");
    assert_eq!(log["pageErrors"], json!([]), "{log}");
    // A wrong token shows the problem document's detail, and is not kept.
    let wrong = &phases["wrongToken"];
    let message = wrong["error"].as_str().unwrap();
    assert!(
        message.contains("the credentials were not accepted") && message.contains("401"),
        "{message}"
    );
    assert_eq!(wrong["stored"], Value::Null);

    // The right token: kept in the session, and every metric listed and drawn.
    let page = &phases["loggedIn"];
    assert_eq!(page["stored"], READER);
    assert_eq!(page["loginHidden"], true);
    assert_eq!(page["who"], "Tenant acme");
    assert_eq!(
        page["list"],
        json!([
            "chart_latency · timeseries",
            "Prediction drift · timeseries",
            "Accuracy by version · line",
            "Requests per region · bar"
        ])
    );
    no_errors("logged in", &page["log"]);
    let cards = page["cards"].as_array().unwrap();
    assert_eq!(cards.len(), 4);
    for card in cards {
        let key = card["key"].as_str().unwrap();
        let own = card["aggregation"].as_str().unwrap();
        check_card(key, card, &expected(&known, key, own, 60));
        // Every aggregation the picker offers, as the page drew it.
        for aggregation in AGGREGATIONS {
            let drawn = &page["byAggregation"][key][aggregation];
            let as_card = json!({"state": "ready", "graphType": card["graphType"],
                "rows": drawn["rows"], "plot": {"series": card["plot"]["series"], "data": drawn["plot"]}});
            check_card(
                &format!("{key} {aggregation}"),
                &as_card,
                &expected(&known, key, aggregation, 60),
            );
        }
    }
    let card = |key: &str| cards.iter().find(|c| c["key"] == key).unwrap();
    assert_eq!(card("matih-chart_latency")["aggregation"], "average");
    assert_eq!(
        card("matih-chart_latency")["plot"]["axes"],
        json!(["Time", "chart_latency (ms)"])
    );
    let drift = card(&format!("deeploy-{}", known.ids["drift"]));
    assert_eq!(drift["aggregation"], "max");
    let ids: Vec<&Value> = drift["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["ids"])
        .collect();
    assert_eq!(ids, [&json!("p-1"), &json!("p-2,p-3")]);
    let accuracy = card(&format!("deeploy-{}", known.ids["accuracy"]));
    assert_eq!(
        accuracy["plot"]["axes"],
        json!(["Model version", "Accuracy (%)"])
    );
    assert_eq!(accuracy["plot"]["series"][2], "target");
    let baselines: Vec<Option<f64>> = accuracy["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["baseline"].as_f64())
        .collect();
    assert_eq!(baselines, [Some(90.0); 3]);
    let ids: Vec<&Value> = accuracy["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["ids"])
        .collect();
    assert_eq!(ids, [&json!("p-10"), &json!("p-11"), &json!("")]);
    let requests = card(&format!("deeploy-{}", known.ids["requests"]));
    assert_eq!(requests["plot"]["axes"], json!(["Region", "Requests"]));
    assert_eq!(
        requests["rows"][0]["ids"],
        Value::Null,
        "no prediction ids, no column"
    );

    // Hovering shows the values and a point's prediction ids.
    let hovers = &page["hovers"];
    let tip = hovers[format!("deeploy-{}", known.ids["accuracy"])]["tip"]
        .as_str()
        .unwrap();
    assert!(
        tip.contains("v1") && tip.contains("88 %") && tip.contains("Prediction ids: p-10"),
        "{tip}"
    );
    let tip = hovers[format!("deeploy-{}", known.ids["drift"])]["tip"]
        .as_str()
        .unwrap();
    assert!(
        tip.contains("0.75 score") && tip.contains("Prediction ids: p-2, p-3"),
        "{tip}"
    );
    let legend = hovers["matih-chart_latency"]["legend"].as_str().unwrap();
    assert!(legend.contains("10 ms"), "{legend}");

    // The range picker: 24 hours in 10-minute bins, and a custom range in 30-second bins.
    for (phase, step) in [("day", 600), ("custom", 30)] {
        for card in page[phase]["cards"].as_array().unwrap() {
            let key = card["key"].as_str().unwrap();
            let own = card["aggregation"].as_str().unwrap();
            check_card(
                &format!("{phase} {key}"),
                card,
                &expected(&known, key, own, step),
            );
        }
    }
    // A reload keeps the session.
    assert_eq!(page["reloaded"]["loginHidden"], true);
    assert_eq!(page["reloaded"]["cards"].as_array().unwrap().len(), 4);

    // A phone, as a kiosk: everything drawn, nothing wider than the screen, the token not kept.
    let phone = &phases["phone"];
    no_errors("phone", &phone["log"]);
    assert_eq!(phone["stored"], Value::Null);
    for card in phone["cards"].as_array().unwrap() {
        assert_eq!(card["state"], "ready", "{card}");
        assert!(card["plot"]["width"].as_f64().unwrap() <= 390.0, "{card}");
    }
    let scroll = &phone["scroll"];
    assert!(
        scroll["scrollWidth"].as_f64() <= scroll["clientWidth"].as_f64()
            && scroll["widest"].as_f64().unwrap() <= scroll["clientWidth"].as_f64().unwrap() + 0.5,
        "horizontal scroll on a phone: {scroll}"
    );

    for name in [
        "timeseries.png",
        "timeseries-matih.png",
        "line.png",
        "bar.png",
        "page.png",
        "phone.png",
    ] {
        let bytes = std::fs::read(artifacts.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{name}"
        );
    }
}
