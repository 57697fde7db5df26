//! The Grafana dashboard deploy/grafana/tallyd.json: it has the shape of Grafana's dashboard
//! model and imports anywhere (a templated Prometheus data source, no fixed uid), every panel
//! query is valid PromQL by `promtool check rules`, and every metric a query names is one a
//! running tallyd serves (or one Prometheus records itself about a scrape).

mod common;

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::process::Command;

use common::{InProcess, SocketDir, TempFile, on_path, repo_root, require, run_command};
use serde_json::Value;

const DASHBOARD: &str = "deploy/grafana/tallyd.json";

/// Series Prometheus writes itself for each scrape (not tallyd's to serve).
const PROMETHEUS_OWN: &[&str] = &["scrape_duration_seconds"];

fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo_root().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

/// The panels that query something (rows only group them).
fn query_panels(dashboard: &Value) -> Vec<&Value> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|p| p["type"] != "row")
        .collect()
}

/// Every PromQL expression: the panels' targets, then the variables' `label_values` selectors.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in query_panels(dashboard) {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().expect("a target with an expr");
            out.push((panel["title"].to_string(), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"].as_str().unwrap();
        // label_values(SELECTOR, label): the selector is PromQL.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _)| selector)
            .unwrap_or_else(|| panic!("variable query not label_values(...): {query}"));
        out.push((format!("variable {}", variable["name"]), inner.to_owned()));
    }
    out
}

/// The expression as Prometheus will receive it, with Grafana's variables filled in.
fn as_sent(expr: &str) -> String {
    let sent = expr
        .replace("$__rate_interval", "1m")
        .replace("$job", ".+")
        .replace("$instance", ".+");
    assert!(!sent.contains('$'), "an unknown variable in: {expr}");
    sent
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_a_templated_prometheus_source() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(!dashboard["title"].as_str().unwrap().is_empty());
    assert!(!dashboard["uid"].as_str().unwrap().is_empty());
    assert!(
        dashboard.get("__inputs").is_none(),
        "no import-time inputs: the data source is a variable"
    );
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let source = variables
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(source["type"], "datasource");
    assert_eq!(source["query"], "prometheus");
    let templated = |owner: &str, datasource: &Value| {
        assert_eq!(datasource["type"], "prometheus", "{owner}");
        assert_eq!(datasource["uid"], "${datasource}", "{owner}");
    };
    for variable in variables.iter().filter(|v| v["type"] == "query") {
        templated(&variable["name"].to_string(), &variable["datasource"]);
    }

    let panels = query_panels(&dashboard);
    assert!(panels.len() >= 20, "{} panels", panels.len());
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let id = panel["id"].as_u64().expect("a numeric panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24 && grid["h"].as_u64().unwrap() > 0, "{grid}");
    }
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(!title.is_empty());
        assert!(panel["type"].is_string(), "{title}");
        templated(title, &panel["datasource"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        let mut refs = BTreeSet::new();
        for target in targets {
            templated(title, &target["datasource"]);
            let ref_id = target["refId"].as_str().unwrap();
            assert!(refs.insert(ref_id), "{title}: refId {ref_id} twice");
            assert!(
                !target["expr"].as_str().unwrap().trim().is_empty(),
                "{title}"
            );
        }
    }
}

/// `promtool check rules` on one recording rule per expression: success and the report.
fn promtool_check(exprs: &[String]) -> (bool, String) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        // A JSON string is a valid YAML scalar, quotes and backslashes included.
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let file = TempFile::new("dashboard-rules.yml", &rules);
    let (ok, report) = run_command(Command::new("promtool").args([
        "check",
        "rules",
        file.path().to_str().unwrap(),
    ]));
    (ok, format!("{report}\nrules:\n{rules}"))
}

#[test]
fn every_query_is_valid_promql() {
    if !require(on_path("promtool"), "promtool (Debian package prometheus)") {
        return;
    }
    let exprs: Vec<String> = expressions(&dashboard())
        .iter()
        .map(|(_, expr)| as_sent(expr))
        .collect();
    let (ok, report) = promtool_check(&exprs);
    assert!(ok, "promtool check rules:\n{report}");
    assert!(
        report.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{report}"
    );
    // And promtool does refuse a broken query (the check above can fail).
    let (ok, report) = promtool_check(&["sum by (reason) (rate(tallyd_lines_total[1m])".into()]);
    assert!(!ok, "promtool accepted a missing parenthesis:\n{report}");
}

/// The metric names a PromQL expression selects: every identifier that opens a `{` matcher,
/// and every `tallyd_…` or `process_…` name, with a matcher or bare.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let selector = regex::Regex::new(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{").unwrap();
    let ours = regex::Regex::new(r"\b(?:tallyd|process)_[A-Za-z0-9_:]*").unwrap();
    selector
        .captures_iter(expr)
        .map(|c| c[1].to_owned())
        .chain(ours.find_iter(expr).map(|m| m.as_str().to_owned()))
        .collect()
}

/// A tallyd with every family it can serve on show: UDP, TCP and Unix listeners that have
/// received a line, a relay target, a remote-write receiver (one that is not there: its
/// families are served all the same), an API request answered. Returns the sample names of its
/// scrape.
fn served_names() -> BTreeSet<String> {
    let relay_target = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = SocketDir::new("dashboard");
    let socket = dir.path();
    let config = format!(
        "[tcp]\nlisten = [\"127.0.0.1:0\"]\n[unix]\nlisten = [{:?}]\n[relay]\ntargets = [\"{}\"]\n\
         [[remote_write]]\nurl = \"http://127.0.0.1:9/api/v1/write\"\n",
        socket.display().to_string(),
        relay_target.local_addr().unwrap()
    );
    let tallyd = InProcess::with_config(&config);
    tallyd.send(&["dashboard_udp:1|c"]);
    UnixDatagram::unbound()
        .unwrap()
        .send_to(b"dashboard_unix:1|c", &socket)
        .unwrap();
    {
        use std::io::Write;
        let mut tcp = common::connect_tcp(tallyd.tcp[0]);
        tcp.write_all(b"dashboard_tcp:1|c\n").unwrap();
    }
    // Any answer counts in tallyd_api_requests_total (without [api] tokens the list is open).
    tallyd.get("/api/v1/observability/custom-metrics", &[]);
    tallyd.wait_for(&[
        ("dashboard_udp_total", 1.0),
        ("dashboard_unix_total", 1.0),
        ("dashboard_tcp_total", 1.0),
    ]);
    let text = tallyd.scrape();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn every_metric_the_dashboard_queries_is_one_tallyd_serves() {
    let dashboard = dashboard();
    let mut wanted = BTreeSet::new();
    for (_, expr) in expressions(&dashboard) {
        wanted.extend(metric_names(&expr));
    }
    assert!(
        wanted.len() >= 25,
        "only {} metric names: {wanted:?}",
        wanted.len()
    );
    let served = served_names();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !served.contains(*name) && !PROMETHEUS_OWN.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:?}\nserved: {served:?}"
    );
}
