//! The custom-metrics API at the Matih seed's paths, over real HTTP against a running tallyd with
//! its real store on disk: the seed's own curl requests, tenants, validation, queries, and
//! durability across `kill -9`.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{Daemon, InProcess, api_call as call, http_send, on_path, require, value_of};
use serde_json::{Value, json};

const BASE: &str = "/api/v1/observability/custom-metrics";

/// The SHA-256 of "writer-secret", "other-secret" and "reader-secret".
const TOKENS: &str = r#"
[[api.tokens]]
id = "ci-writer"
secret_sha256 = "SHA_WRITER"
tenant = "550e8400"
scopes = ["read", "write", "admin"]

[[api.tokens]]
id = "other"
secret_sha256 = "SHA_OTHER"
tenant = "other-tenant"
scopes = ["read", "write", "admin"]

[[api.tokens]]
id = "reader"
secret_sha256 = "SHA_READER"
tenant = "550e8400"
scopes = ["read"]
"#;

const WRITER: &str = "writer-secret";
const OTHER: &str = "other-secret";
const READER: &str = "reader-secret";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn config(extra: &str) -> String {
    let tokens = TOKENS
        .replace("SHA_WRITER", &sha256_hex(WRITER))
        .replace("SHA_OTHER", &sha256_hex(OTHER))
        .replace("SHA_READER", &sha256_hex(READER));
    format!("{extra}\n{tokens}")
}

fn register_gauge(addr: SocketAddr, token: &str, name: &str) -> Value {
    let (status, body) = call(
        addr,
        "POST",
        BASE,
        token,
        Some(
            json!({"name": name, "type": "gauge", "labels": ["service", "model"], "unit": "score", "aggregation": "average"}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    body
}

#[test]
fn the_seed_curl_requests_work_as_written() {
    if !require(on_path("curl"), "curl") {
        return;
    }
    let tallyd = InProcess::with_config(&config(""));
    let base = format!("http://{}", tallyd.http);
    let curl = |args: &[&str]| -> (u16, Value) {
        let output = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("run curl");
        let text = String::from_utf8(output.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (
            code.parse().unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    };
    let auth = format!("Authorization: Bearer {WRITER}");
    // The seed's register request, verbatim but for the host.
    let (status, metric) = curl(&[
        "-X",
        "POST",
        &format!("{base}/api/v1/observability/custom-metrics"),
        "-H",
        "Content-Type: application/json",
        "-H",
        &auth,
        "-H",
        "X-Tenant-ID: 550e8400",
        "-d",
        r#"{
"name": "conversation_satisfaction_score",
"type": "gauge",
"description": "Average user satisfaction score for AI conversations",
"unit": "score",
"labels": ["service", "model"],
"aggregation": "average"
}"#,
    ]);
    assert_eq!(status, 201, "{metric}");
    assert_eq!(metric["name"], "conversation_satisfaction_score");
    assert_eq!(metric["type"], "gauge");
    assert_eq!(metric["labels"], json!(["service", "model"]));
    assert_eq!(metric["retentionDays"], 90);
    assert!(metric["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(metric["createdAt"].as_str().is_some());

    // The seed's record request, with a timestamp of now (the seed's date is outside retention
    // or in the future depending on the day this runs).
    let now = jiff::Timestamp::now();
    let stamp = now.to_string();
    let (status, recorded) = curl(&[
        "-X",
        "POST",
        &format!("{base}/api/v1/observability/custom-metrics/conversation_satisfaction_score/data"),
        "-H",
        "Content-Type: application/json",
        "-H",
        &auth,
        "-H",
        "X-Tenant-ID: 550e8400",
        "-d",
        &format!(
            r#"{{
"value": 4.5,
"labels": {{
"service": "ai-service",
"model": "gpt-4"
}},
"timestamp": "{stamp}"
}}"#
        ),
    ]);
    assert_eq!(status, 200, "{recorded}");
    assert_eq!(recorded["recorded"], 1);

    let (status, answer) = curl(&[
        "-G",
        &format!(
            "{base}/api/v1/observability/custom-metrics/conversation_satisfaction_score/query"
        ),
        "-H",
        &auth,
        "-H",
        "X-Tenant-ID: 550e8400",
        "--data-urlencode",
        "labels=service:ai-service,model:gpt-4",
        "--data-urlencode",
        "step=1m",
    ]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["aggregation"], "average");
    assert_eq!(answer["step"], "1m");
    let series = answer["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{answer}");
    assert_eq!(
        series[0]["labels"],
        json!({"service": "ai-service", "model": "gpt-4"})
    );
    assert_eq!(series[0]["points"][0]["value"], 4.5);

    // The live value is in /metrics, with the tenant.
    let text = tallyd.scrape();
    assert_eq!(
        value_of(
            &text,
            r#"conversation_satisfaction_score{tenant="550e8400",model="gpt-4",service="ai-service"}"#
        ),
        Some(4.5),
        "{text}"
    );

    let (status, list) = curl(&[
        &format!("{base}/api/v1/observability/custom-metrics"),
        "-H",
        &auth,
    ]);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, _) = curl(&[
        "-X",
        "DELETE",
        &format!("{base}/api/v1/observability/custom-metrics/conversation_satisfaction_score"),
        "-H",
        &auth,
    ]);
    assert_eq!(status, 200);
    let (status, problem) = curl(&[
        &format!("{base}/api/v1/observability/custom-metrics/conversation_satisfaction_score"),
        "-H",
        &auth,
    ]);
    assert_eq!(status, 404);
    assert_eq!(problem["code"], "metric_not_found");
    assert!(!tallyd.scrape().contains("conversation_satisfaction_score"));
}

#[test]
fn a_tenant_cannot_see_or_touch_another_tenants_metrics() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    register_gauge(addr, WRITER, "shared_score");
    let path = format!("{BASE}/shared_score");
    let point = json!({"value": 1.0, "labels": {"service": "a", "model": "b"}});
    // Another tenant: the metric does not exist for it, whatever it tries.
    assert_eq!(call(addr, "GET", &path, OTHER, None).0, 404);
    assert_eq!(
        call(addr, "GET", &format!("{path}/query"), OTHER, None).0,
        404
    );
    assert_eq!(
        call(
            addr,
            "POST",
            &format!("{path}/data"),
            OTHER,
            Some(point.clone())
        )
        .0,
        404
    );
    assert_eq!(call(addr, "DELETE", &path, OTHER, None).0, 404);
    let (_, list) = call(addr, "GET", BASE, OTHER, None);
    assert_eq!(list, json!([]));
    // It may define the same name: one family in /metrics, told apart by tenant.
    register_gauge(addr, OTHER, "shared_score");
    assert_eq!(
        call(
            addr,
            "POST",
            &format!("{path}/data"),
            OTHER,
            Some(json!({"value": 2.0, "labels": {"service": "a", "model": "b"}}))
        )
        .0,
        200
    );
    assert_eq!(
        call(addr, "POST", &format!("{path}/data"), WRITER, Some(point)).0,
        200
    );
    let text = tallyd.scrape();
    assert_eq!(
        value_of(
            &text,
            r#"shared_score{tenant="550e8400",model="b",service="a"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            r#"shared_score{tenant="other-tenant",model="b",service="a"}"#
        ),
        Some(2.0),
        "{text}"
    );
    // Deleting one tenant's metric leaves the other's series and definition.
    assert_eq!(call(addr, "DELETE", &path, OTHER, None).0, 200);
    let text = tallyd.scrape();
    assert!(!text.contains("other-tenant"), "{text}");
    assert_eq!(
        value_of(
            &text,
            r#"shared_score{tenant="550e8400",model="b",service="a"}"#
        ),
        Some(1.0)
    );
    assert_eq!(call(addr, "GET", &path, WRITER, None).0, 200);
    // The tenant header must match the token's.
    let auth = format!("Bearer {WRITER}");
    let response = http_send(
        addr,
        "GET",
        BASE,
        &[("Authorization", &auth), ("X-Tenant-ID", "other-tenant")],
        b"",
    );
    assert_eq!(response.status, 403, "{}", response.text());
}

#[test]
fn scopes_and_credentials_are_enforced() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    let spec = json!({"name": "x_total", "type": "counter"});
    let (status, problem) = call(addr, "POST", BASE, READER, Some(spec.clone()));
    assert_eq!(
        (status, problem["code"].as_str()),
        (403, Some("insufficient_scope"))
    );
    let (status, problem) = call(addr, "POST", BASE, "wrong", Some(spec));
    assert_eq!(
        (status, problem["code"].as_str()),
        (401, Some("invalid_credentials"))
    );
    let response = http_send(addr, "GET", BASE, &[], b"");
    assert_eq!(response.status, 401);
    assert!(response.header("www-authenticate").is_some());
    // Basic auth: the token id and the secret (how Deeploy's client sends its keys).
    let basic = {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("reader:{READER}"))
        )
    };
    assert_eq!(
        http_send(addr, "GET", BASE, &[("Authorization", &basic)], b"").status,
        200
    );
}

#[test]
fn bad_definitions_and_points_are_refused_with_the_field_at_fault() {
    let tallyd = InProcess::with_config(&config("[api]\nrequired_prefix = \"matih_custom_\""));
    let addr = tallyd.http;
    let refused = |body: Value| call(addr, "POST", BASE, WRITER, Some(body));
    let (status, p) = refused(json!({"name": "bad name!", "type": "gauge"}));
    assert_eq!(
        (status, p["code"].as_str(), p["field"].as_str()),
        (422, Some("invalid_name"), Some("name"))
    );
    let (status, p) = refused(
        json!({"name": "matih_custom_x_seconds", "type": "gauge", "labels": ["ok", "tenant"]}),
    );
    assert_eq!((status, p["field"].as_str()), (422, Some("labels[1]")));
    let (status, p) = refused(json!({"name": "matih_custom_x_seconds", "type": "rate"}));
    assert_eq!((status, p["field"].as_str()), (422, Some("type")), "{p}");
    // The lint warns by default.
    let (status, metric) = refused(json!({"name": "RequestCount", "type": "counter"}));
    assert_eq!(status, 201);
    let warnings = metric["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("matih_custom_")),
        "{metric}"
    );
    assert_eq!(
        refused(json!({"name": "RequestCount", "type": "counter"})).0,
        409
    );

    let (_, _) = refused(
        json!({"name": "matih_custom_tokens_total", "type": "counter", "labels": ["model"]}),
    );
    let data = format!("{BASE}/matih_custom_tokens_total/data");
    let record = |body: Value| call(addr, "POST", &data, WRITER, Some(body));
    let (status, p) = record(json!({"value": 1, "labels": {"service": "x"}}));
    assert_eq!(
        (status, p["code"].as_str(), p["field"].as_str()),
        (422, Some("labels_mismatch"), Some("labels"))
    );
    assert!(
        p["detail"].as_str().unwrap().contains("[model]")
            && p["detail"].as_str().unwrap().contains("[service]"),
        "{p}"
    );
    let (status, p) = record(json!({"value": -1, "labels": {"model": "m"}}));
    assert_eq!(
        (status, p["code"].as_str()),
        (422, Some("negative_counter"))
    );
    let (status, p) = record(
        json!([{"value": 1, "labels": {"model": "m"}}, {"value": 1, "labels": {"model": "m"}, "timestamp": "yesterday"}]),
    );
    assert_eq!(
        (status, p["code"].as_str(), p["field"].as_str()),
        (400, Some("invalid_timestamp"), Some("[1].timestamp"))
    );
    let (status, p) =
        record(json!({"value": 1, "labels": {"model": "m"}, "timestamp": "2000-01-01T00:00:00Z"}));
    assert_eq!(
        (status, p["code"].as_str()),
        (422, Some("outside_retention"))
    );
    let (status, p) =
        record(json!({"value": 1, "labels": {"model": "m"}, "timestamp": "2999-01-01T00:00:00Z"}));
    assert_eq!(
        (status, p["code"].as_str()),
        (422, Some("timestamp_in_future"))
    );
    let (status, p) = record(json!({"value": "high", "labels": {"model": "m"}}));
    assert_eq!((status, p["field"].as_str()), (422, Some("value")), "{p}");
    // Nothing of the refused batches was recorded.
    assert_eq!(
        value_of(
            &tallyd.scrape(),
            r#"matih_custom_tokens_total{tenant="550e8400",model="m"}"#
        ),
        None
    );
    assert_eq!(record(json!({"value": 3, "labels": {"model": "m"}})).0, 200);
    assert_eq!(
        value_of(
            &tallyd.scrape(),
            r#"matih_custom_tokens_total{tenant="550e8400",model="m"}"#
        ),
        Some(3.0)
    );
}

#[test]
fn naming_enforce_refuses_what_warn_allows() {
    let tallyd = InProcess::with_config(&config("[api]\nnaming = \"enforce\""));
    let (status, p) = call(
        tallyd.http,
        "POST",
        BASE,
        WRITER,
        Some(json!({"name": "requests", "type": "counter"})),
    );
    assert_eq!((status, p["code"].as_str()), (422, Some("naming")));
    assert!(p["detail"].as_str().unwrap().contains("_total"), "{p}");
}

#[test]
fn queries_bin_by_step_and_filter_by_labels() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    register_gauge(addr, WRITER, "latency_score");
    let start = (jiff::Timestamp::now().as_second() / 3600 - 2) * 3600;
    let at = |seconds: i64| {
        jiff::Timestamp::from_second(start + seconds)
            .unwrap()
            .to_string()
    };
    let points = json!([
        {"value": 1, "labels": {"service": "a", "model": "x"}, "timestamp": at(0)},
        {"value": 3, "labels": {"service": "a", "model": "x"}, "timestamp": at(59)},
        {"value": 10, "labels": {"service": "a", "model": "x"}, "timestamp": at(120)},
        {"value": 100, "labels": {"service": "b", "model": "x"}, "timestamp": at(0)},
    ]);
    assert_eq!(
        call(
            addr,
            "POST",
            &format!("{BASE}/latency_score/data"),
            WRITER,
            Some(points)
        )
        .0,
        200
    );
    let query = |params: &str| {
        let (status, body) = call(
            addr,
            "GET",
            &format!(
                "{BASE}/latency_score/query?start={start}&end={}&{params}",
                start + 180
            ),
            WRITER,
            None,
        );
        assert_eq!(status, 200, "{body}");
        body
    };
    let answer = query("step=1m&labels=service:a");
    assert_eq!(answer["series"].as_array().unwrap().len(), 1);
    let values: Vec<(String, f64)> = answer["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["timestamp"].as_str().unwrap().to_owned(),
                p["value"].as_f64().unwrap(),
            )
        })
        .collect();
    // Bin [0, 60) averages 1 and 3; bin [60, 120) is empty and left out; bin [120, 180) has 10.
    assert_eq!(values, [(at(0), 2.0), (at(120), 10.0)]);
    let answer = query("step=3m&aggregation=max&labels%5Bservice%5D=b");
    assert_eq!(
        answer["series"][0]["points"],
        json!([{"timestamp": at(0), "value": 100.0}])
    );
    assert_eq!(answer["aggregation"], "max");
    let answer = query("step=3m&aggregation=count");
    assert_eq!(answer["series"].as_array().unwrap().len(), 2);
    let (status, p) = call(
        addr,
        "GET",
        &format!("{BASE}/latency_score/query?step=1s&start=0&end=100000"),
        WRITER,
        None,
    );
    assert_eq!((status, p["code"].as_str()), (400, Some("invalid_range")));
    let (status, p) = call(
        addr,
        "GET",
        &format!("{BASE}/latency_score/query?aggregation=median"),
        WRITER,
        None,
    );
    assert_eq!((status, p["field"].as_str()), (400, Some("aggregation")));
}

#[test]
fn a_batch_shows_in_metrics_as_its_points_would_one_by_one() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    for spec in [
        json!({"name": "served_total", "type": "counter", "labels": ["model"]}),
        json!({"name": "queue_depth", "type": "gauge", "labels": ["model"]}),
        json!({"name": "wait_seconds", "type": "histogram", "labels": ["model"]}),
    ] {
        let (status, body) = call(addr, "POST", BASE, WRITER, Some(spec));
        assert_eq!(status, 201, "{body}");
    }
    let now = jiff::Timestamp::now().as_second();
    let ago = |seconds: i64| {
        jiff::Timestamp::from_second(now - seconds)
            .unwrap()
            .to_string()
    };
    let record = |name: &str, points: Value| {
        let path = format!("{BASE}/{name}/data");
        let (status, body) = call(addr, "POST", &path, WRITER, Some(points));
        assert_eq!(status, 200, "{body}");
    };
    // A counter adds every increment, label sets interleaved.
    record(
        "served_total",
        json!([
            {"value": 1, "labels": {"model": "a"}},
            {"value": 4, "labels": {"model": "b"}},
            {"value": 2, "labels": {"model": "a"}},
            {"value": 3, "labels": {"model": "a"}},
        ]),
    );
    // A gauge shows its latest point; of two with the same timestamp, the later in the batch.
    record(
        "queue_depth",
        json!([
            {"value": 1, "labels": {"model": "a"}, "timestamp": ago(20)},
            {"value": 2, "labels": {"model": "a"}, "timestamp": ago(10)},
            {"value": 7, "labels": {"model": "b"}, "timestamp": ago(10)},
            {"value": 3, "labels": {"model": "a"}, "timestamp": ago(10)},
            {"value": 4, "labels": {"model": "a"}, "timestamp": ago(30)},
        ]),
    );
    // An older point afterwards changes nothing.
    record(
        "queue_depth",
        json!({"value": 9, "labels": {"model": "a"}, "timestamp": ago(15)}),
    );
    // A histogram observes every value.
    record(
        "wait_seconds",
        json!([
            {"value": 0.5, "labels": {"model": "a"}},
            {"value": 0.1, "labels": {"model": "b"}},
            {"value": 1.5, "labels": {"model": "a"}},
        ]),
    );
    let text = tallyd.scrape();
    let value = |series: &str| value_of(&text, &series.replace("}", r#",tenant="550e8400"}"#));
    assert_eq!(value(r#"served_total{model="a"}"#), Some(6.0), "{text}");
    assert_eq!(value(r#"served_total{model="b"}"#), Some(4.0), "{text}");
    assert_eq!(value(r#"queue_depth{model="a"}"#), Some(3.0), "{text}");
    assert_eq!(value(r#"queue_depth{model="b"}"#), Some(7.0), "{text}");
    assert_eq!(
        value(r#"wait_seconds_count{model="a"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(value(r#"wait_seconds_sum{model="a"}"#), Some(2.0), "{text}");
    assert_eq!(
        value(r#"wait_seconds_count{model="b"}"#),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn file_definitions_are_visible_to_every_tenant_and_read_only() {
    let tallyd = InProcess::with_config(&config(
        "[[metric]]\nname = \"queue_depth\"\ntype = \"gauge\"\nhelp = \"Jobs waiting.\"\nlabels = [\"queue\"]",
    ));
    let addr = tallyd.http;
    for token in [WRITER, OTHER] {
        let (status, metric) = call(addr, "GET", &format!("{BASE}/queue_depth"), token, None);
        assert_eq!(status, 200, "{metric}");
        assert_eq!(metric["readOnly"], true);
        assert_eq!(metric["description"], "Jobs waiting.");
    }
    let (status, p) = call(addr, "DELETE", &format!("{BASE}/queue_depth"), WRITER, None);
    assert_eq!((status, p["code"].as_str()), (409, Some("read_only")));
    let (status, p) = call(
        addr,
        "POST",
        BASE,
        WRITER,
        Some(json!({"name": "queue_depth", "type": "gauge"})),
    );
    assert_eq!((status, p["code"].as_str()), (409, Some("read_only")));
    // Points may be recorded to it, and queried back.
    let point = json!({"value": 7, "labels": {"queue": "q1"}});
    assert_eq!(
        call(
            addr,
            "POST",
            &format!("{BASE}/queue_depth/data"),
            WRITER,
            Some(point)
        )
        .0,
        200
    );
    let (_, answer) = call(
        addr,
        "GET",
        &format!("{BASE}/queue_depth/query"),
        WRITER,
        None,
    );
    assert_eq!(answer["series"][0]["points"][0]["value"], 7.0, "{answer}");
    let (_, answer) = call(
        addr,
        "GET",
        &format!("{BASE}/queue_depth/query"),
        OTHER,
        None,
    );
    assert_eq!(answer["series"], json!([]));
}

#[test]
fn without_tokens_the_loopback_api_takes_the_tenant_from_the_header() {
    let tallyd = InProcess::start();
    let addr = tallyd.http;
    let body = json!({"name": "free_ratio", "type": "gauge"}).to_string();
    let response = http_send(
        addr,
        "POST",
        BASE,
        &[("Content-Type", "application/json"), ("X-Tenant-ID", "t9")],
        body.as_bytes(),
    );
    assert_eq!(response.status, 201, "{}", response.text());
    assert_eq!(
        http_send(
            addr,
            "GET",
            &format!("{BASE}/free_ratio"),
            &[("X-Tenant-ID", "t9")],
            b""
        )
        .status,
        200
    );
    assert_eq!(
        http_send(addr, "GET", &format!("{BASE}/free_ratio"), &[], b"").status,
        404
    );
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let file = common::TempFile::new("tallyd.toml", &config(""));
    let mut tallyd = Daemon::start_with(&["--data-dir", dir], Some(file));
    let addr = tallyd.http;
    register_gauge(addr, WRITER, "durable_score");
    for i in 0..50 {
        let point = json!({"value": i, "labels": {"service": "s", "model": "m"}});
        assert_eq!(
            call(
                addr,
                "POST",
                &format!("{BASE}/durable_score/data"),
                WRITER,
                Some(point)
            )
            .0,
            200
        );
    }
    tallyd.signal(libc::SIGKILL);
    tallyd
        .wait_exit(std::time::Duration::from_secs(5))
        .expect("killed");

    let file = common::TempFile::new("tallyd.toml", &config(""));
    let tallyd = Daemon::start_with(&["--data-dir", dir], Some(file));
    let (status, metric) = call(
        tallyd.http,
        "GET",
        &format!("{BASE}/durable_score"),
        WRITER,
        None,
    );
    assert_eq!(status, 200, "{metric}");
    let (_, answer) = call(
        tallyd.http,
        "GET",
        &format!("{BASE}/durable_score/query?step=1h&aggregation=count"),
        WRITER,
        None,
    );
    let counted: f64 = answer["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .sum();
    assert_eq!(counted, 50.0, "{answer}");
}

fn post_raw(
    addr: SocketAddr,
    path: &str,
    token: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let response = http_send(
        addr,
        "POST",
        path,
        &[("Authorization", &auth), ("Content-Type", content_type)],
        body.as_bytes(),
    );
    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, json)
}

#[test]
fn seldon_responses_become_series_with_the_tenant() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    // A SeldonMessage as a model's microservice answers it (REST path), a SeldonMessageList,
    // and the gRPC path's JSON, whose COUNTER has no "type".
    let message = json!({"data": {"names": ["t:0"], "ndarray": [[1]]}, "meta": {"metrics": [
        {"key": "mycounter", "tags": {"method": "predict", "mytag": "mytagvalue"}, "type": "COUNTER", "value": 1},
        {"key": "mygauge", "type": "GAUGE", "value": 22.0},
        {"key": "mytimer", "type": "TIMER", "value": 250.0}
    ]}});
    let (status, answer) = call(
        addr,
        "POST",
        "/api/v1/seldon/metrics",
        WRITER,
        Some(message),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 3);
    assert_eq!(answer["refused"], json!([]));
    let list = json!({"seldonMessages": [
        {"meta": {"metrics": [{"key": "mycounter", "tags": {"method": "predict", "mytag": "mytagvalue"}, "value": 2.0}]}},
        {"meta": {"metrics": [{"key": "mytimer", "type": "TIMER", "value": 750, "tags": {"region": "eu"}}]}},
        {"data": {"ndarray": []}}
    ]});
    let (status, answer) = call(addr, "POST", "/api/v1/seldon/metrics", WRITER, Some(list));
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (200, Some(2)),
        "{answer}"
    );
    let bare = json!({"metrics": [
        {"key": "mygauge", "type": "GAUGE", "value": 5},
        {"key": "weird", "type": "HISTOGRAM", "value": 1},
        {"key": "mygauge", "type": "GAUGE", "value": "high"}
    ]});
    let (status, answer) = call(addr, "POST", "/api/v1/seldon/metrics", WRITER, Some(bare));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    let refused = answer["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{answer}");
    assert_eq!(
        (
            refused[0]["key"].as_str(),
            refused[0]["code"].as_str(),
            refused[0]["at"].as_str()
        ),
        (Some("weird"), Some("invalid_type"), Some("metrics[1]"))
    );
    assert_eq!(refused[1]["code"], "invalid_value");

    let text = tallyd.scrape();
    let tenant = "tenant=\"550e8400\"";
    assert_eq!(
        value_of(
            &text,
            &format!("mycounter_total{{method=\"predict\",mytag=\"mytagvalue\",{tenant}}}")
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value_of(&text, &format!("mygauge{{{tenant}}}")),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        value_of(&text, &format!("mytimer_count{{{tenant}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value_of(&text, &format!("mytimer_sum{{{tenant}}}")),
        Some(0.25),
        "{text}"
    );
    // Another tag key set is another series of the same family.
    assert_eq!(
        value_of(&text, &format!("mytimer_sum{{region=\"eu\",{tenant}}}")),
        Some(0.75),
        "{text}"
    );
    assert_eq!(common::declared_type(&text, "mytimer"), Some("histogram"));

    // Not a Seldon body at all.
    let (status, p) = call(
        addr,
        "POST",
        "/api/v1/seldon/metrics",
        WRITER,
        Some(json!({"x": 1})),
    );
    assert_eq!((status, p["code"].as_str()), (422, Some("no_metrics")));
    let (status, p) = post_raw(
        addr,
        "/api/v1/seldon/metrics",
        WRITER,
        "application/json",
        "{not json",
    );
    assert_eq!((status, p["code"].as_str()), (400, Some("malformed_json")));
}

#[test]
fn seldon_tags_fold_into_a_declared_schema() {
    let tallyd = InProcess::with_config(&config(""));
    let addr = tallyd.http;
    let (status, _) = call(
        addr,
        "POST",
        BASE,
        WRITER,
        Some(json!({"name": "served_total", "type": "counter", "labels": ["model"]})),
    );
    assert_eq!(status, 201);
    let post = json!({"meta": {"metrics": [{"key": "served", "type": "COUNTER", "value": 4, "tags": {"model": "m1", "method": "predict"}}]}});
    let (status, answer) = call(addr, "POST", "/api/v1/seldon/metrics", WRITER, Some(post));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    let warning = answer["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("[method]") && warning.contains("[model]"),
        "{warning}"
    );
    assert_eq!(
        value_of(
            &tallyd.scrape(),
            r#"served_total{model="m1",tenant="550e8400"}"#
        ),
        Some(4.0)
    );

    // tallyd keeps the series a post found for the next post like it. What it kept must give
    // way when the definitions change. Another tenant, with no definition of its own yet,
    // posts the same metric twice: its tags are not folded, and the two posts add up.
    let post = |value: u32| {
        let body = json!({"meta": {"metrics": [{"key": "served", "type": "COUNTER", "value": value, "tags": {"model": "m1", "method": "predict"}}]}});
        call(addr, "POST", "/api/v1/seldon/metrics", OTHER, Some(body))
    };
    for value in [1, 2] {
        let (status, answer) = post(value);
        assert_eq!((status, &answer["warnings"]), (200, &json!([])), "{answer}");
    }
    let unfolded = r#"served_total{method="predict",model="m1",tenant="other-tenant"}"#;
    assert_eq!(value_of(&tallyd.scrape(), unfolded), Some(3.0));
    // It declares the metric: the family's definition in /metrics is the first tenant's and
    // does not change, so the series lives on. The next post is folded all the same.
    let (status, _) = call(
        addr,
        "POST",
        BASE,
        OTHER,
        Some(json!({"name": "served_total", "type": "counter", "labels": ["model"]})),
    );
    assert_eq!(status, 201);
    let (status, answer) = post(5);
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["warnings"][0].as_str().unwrap().contains("[method]"),
        "{answer}"
    );
    let text = tallyd.scrape();
    assert_eq!(
        value_of(&text, r#"served_total{model="m1",tenant="other-tenant"}"#),
        Some(5.0),
        "{text}"
    );
    assert_eq!(value_of(&text, unfolded), Some(3.0), "{text}");
    // It deletes its definition, and its series with it: the next post starts a new one,
    // unfolded again.
    let (status, _) = call(addr, "DELETE", &format!("{BASE}/served_total"), OTHER, None);
    assert_eq!(status, 200);
    let (status, answer) = post(7);
    assert_eq!((status, &answer["warnings"]), (200, &json!([])), "{answer}");
    let text = tallyd.scrape();
    assert_eq!(value_of(&text, unfolded), Some(7.0), "{text}");
    assert_eq!(
        value_of(&text, r#"served_total{model="m1",tenant="other-tenant"}"#),
        None,
        "{text}"
    );
}

#[test]
fn statsd_lines_over_http_go_through_the_parser_and_rules() {
    let tallyd = InProcess::with_config(&config(
        "[[mapping]]\nmatch = \"job.*.duration\"\nname = \"job_duration_seconds\"\nlabels = { job = \"$1\" }",
    ));
    let addr = tallyd.http;
    let body = "jobs.done:1|c|#queue:q1\r\njob.nightly.duration:1500|ms\nbroken line\nx:1|zz\n\n";
    let (status, answer) = post_raw(addr, "/api/v1/statsd", WRITER, "text/plain", body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(
        answer["refused"],
        json!({"missing_colon": 1, "unknown_type": 1}),
        "{answer}"
    );
    let text = tallyd.scrape();
    assert_eq!(
        value_of(&text, r#"jobs_done_total{queue="q1",tenant="550e8400"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            r#"job_duration_seconds_sum{job="nightly",tenant="550e8400"}"#
        ),
        Some(1.5),
        "{text}"
    );
    assert_eq!(
        post_raw(addr, "/api/v1/statsd", WRITER, "application/json", "a:1|c").0,
        415
    );
    assert_eq!(
        post_raw(addr, "/api/v1/statsd", READER, "text/plain", "a:1|c").0,
        403
    );
    // Every answer is counted by route and code.
    let text = tallyd.scrape();
    assert_eq!(
        value_of(
            &text,
            r#"tallyd_api_requests_total{route="/api/v1/statsd",code="200"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value_of(
            &text,
            r#"tallyd_api_requests_total{route="/api/v1/statsd",code="415"}"#
        ),
        Some(1.0),
        "{text}"
    );
}

/// The Python of a client's virtualenv (made by `scripts/setup-test-deps`), if it is there.
fn venv_python(name: &str) -> Option<std::path::PathBuf> {
    let python = common::repo_root()
        .join("target/venvs")
        .join(name)
        .join("bin/python");
    python.exists().then_some(python)
}

#[test]
fn a_real_seldon_core_model_s_responses_are_served() {
    let Some(python) = venv_python("seldon_core") else {
        require(
            false,
            "the seldon-core virtualenv (scripts/setup-test-deps)",
        );
        return;
    };
    let tallyd = InProcess::with_config(&config(""));
    let output = Command::new(python)
        .arg(common::repo_root().join("tests/clients/seldon_flow.py"))
        .env("TALLYD_URL", format!("http://{}", tallyd.http))
        .env("TALLYD_TOKEN", WRITER)
        .env("TALLYD_TENANT", "550e8400")
        .output()
        .expect("run seldon_flow.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "seldon_flow.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn schemathesis_finds_the_live_api_true_to_its_openapi_document() {
    let Some(python) = venv_python("schemathesis") else {
        require(
            false,
            "the schemathesis virtualenv (scripts/setup-test-deps)",
        );
        return;
    };
    let tallyd = InProcess::with_config(&config(""));
    // The document is readable without a token.
    let response = http_send(tallyd.http, "GET", "/api/v1/openapi.json", &[], b"");
    assert_eq!(response.status, 200);
    let document: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(
        document["paths"]["/api/v1/observability/custom-metrics/{name}/query"]["get"].is_object()
    );

    let schemathesis = python.with_file_name("schemathesis");
    let output = Command::new(schemathesis)
        .args([
            "run",
            &format!("http://{}/api/v1/openapi.json", tallyd.http),
        ])
        // No 5xx; every status, content type, body and header as documented; auth enforced.
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance,ignored_auth",
        ])
        .args(["--max-examples", "25", "--no-color"])
        .args(["-H", &format!("Authorization: Bearer {WRITER}")])
        // schemathesis keeps a `.schemathesis/` cache in its working directory: not the checkout.
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_scrape_token_closes_metrics_and_only_metrics() {
    let tallyd = InProcess::with_config(&format!(
        "[http]\nscrape_token_sha256 = \"{}\"",
        sha256_hex("scrape-me")
    ));
    let addr = tallyd.http;
    let response = http_send(addr, "GET", "/metrics", &[], b"");
    assert_eq!(response.status, 401);
    assert_eq!(
        response.header("www-authenticate"),
        Some("Bearer realm=\"tallyd\"")
    );
    assert_eq!(
        http_send(
            addr,
            "GET",
            "/metrics",
            &[("Authorization", "Bearer wrong")],
            b""
        )
        .status,
        401
    );
    let response = http_send(
        addr,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer scrape-me")],
        b"",
    );
    assert_eq!(response.status, 200);
    assert!(response.text().contains("tallyd_lines_total"));
    assert_eq!(http_send(addr, "GET", "/-/healthy", &[], b"").status, 200);
    let bad = tallyd::config::Settings::parse(
        "[http]\nscrape_token_sha256 = \"abc\"",
        std::path::Path::new("t.toml"),
    );
    assert!(bad.unwrap_err().to_string().contains("scrape_token_sha256"));
}

#[test]
fn a_reload_puts_new_tokens_in_force() {
    let reloaded = config("");
    let mut requests = None;
    // Start with one token only (the reader's), then reload the three.
    let first = format!(
        "[[api.tokens]]\nid = \"reader\"\nsecret_sha256 = \"{}\"\ntenant = \"550e8400\"\nscopes = [\"read\"]\n",
        sha256_hex(READER)
    );
    let tallyd = InProcess::with_control(&first, |control| {
        control.reload = Box::new(move || {
            tallyd::config::Settings::parse(&reloaded, std::path::Path::new("reloaded.toml"))
        });
        requests = Some(control.requests.0.clone());
    });
    assert_eq!(call(tallyd.http, "GET", BASE, WRITER, None).0, 401);
    let (reply, outcome) = tokio::sync::oneshot::channel();
    requests
        .expect("the control's sender")
        .blocking_send(tallyd::http::Lifecycle::Reload(reply))
        .expect("tallyd takes requests");
    assert_eq!(outcome.blocking_recv(), Ok(Ok(())));
    assert_eq!(call(tallyd.http, "GET", BASE, WRITER, None).0, 200);
}

#[test]
fn a_method_a_route_does_not_take_is_a_405_problem_with_allow() {
    let tallyd = InProcess::with_config(&config(""));
    let response = http_send(
        tallyd.http,
        "PUT",
        BASE,
        &[("Authorization", &format!("Bearer {WRITER}"))],
        b"",
    );
    assert_eq!(response.status, 405);
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json")
    );
    let allow = response.header("allow").unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let problem: Value = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(problem["code"], "method_not_allowed");
}
