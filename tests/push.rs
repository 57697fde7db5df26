//! Pushes from batch jobs, Pushgateway-compatible: the real `prometheus_client` (PyPI, in the
//! virtualenv `scripts/setup-test-deps` makes) pushes to a live tallyd with `push_to_gateway`,
//! `pushadd_to_gateway` and `delete_from_gateway` (`tests/clients/push_client.py`), and the test
//! scrapes `/metrics` for the series, their grouping labels and values, then checks replacement,
//! deletion, expiry, counter adding and tokens. Raw HTTP covers what the client never sends:
//! refusals, protobuf bodies, conflicts.
//!
//! Without the virtualenv the client tests are skipped with a notice, except under CI.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    InProcess, http_send, on_path, parse_exposition, promtool, repo_root, require, value_of,
};

/// Labels every series of the client's group carries: the grouping key (job, instance and
/// stage sent as base64, step percent-encoded) and the tenant.
const GROUP: &str =
    r#"instance="host/1",job="nightly/etl",stage="eu west",step="load&check",tenant="default""#;

fn python() -> Option<PathBuf> {
    let python = repo_root().join("target/venvs/prometheus_client/bin/python");
    python.exists().then_some(python)
}

fn have_client() -> bool {
    require(
        python().is_some(),
        "the prometheus_client virtualenv (scripts/setup-test-deps)",
    )
}

/// Runs `push_client.py <gateway> <action> [value]` with `env`.
fn client(tallyd: &InProcess, action: &str, value: Option<f64>, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(python().expect("checked by have_client"));
    command
        .arg(repo_root().join("tests/clients/push_client.py"))
        .arg(tallyd.http.to_string())
        .arg(action);
    if let Some(value) = value {
        command.arg(value.to_string());
    }
    command.envs(env.iter().copied());
    command.output().expect("run push_client.py")
}

/// As [`client`], insisting the push succeeds.
fn push(tallyd: &InProcess, action: &str, value: Option<f64>) {
    let output = client(tallyd, action, value, &[]);
    assert!(
        output.status.success(),
        "push_client.py {action} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn series(name: &str, extra: &str) -> String {
    let comma = if extra.is_empty() { "" } else { "," };
    format!("{name}{{{GROUP}{comma}{extra}}}")
}

/// Polls `/metrics` until none of `names` has a sample left, or panics.
fn wait_gone(tallyd: &InProcess, names: &[&str], within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let text = tallyd.scrape();
        let left: Vec<String> = parse_exposition(&text)
            .into_iter()
            .filter(|s| names.iter().any(|n| s.id.name.starts_with(n)))
            .map(|s| s.line)
            .collect();
        if left.is_empty() {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "still in /metrics after {within:?}:\n{}",
            left.join("\n")
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_prometheus_client_push_is_scraped_with_its_grouping_labels() {
    if !have_client() {
        return;
    }
    let tallyd = InProcess::start();
    push(&tallyd, "push", None);
    let text = tallyd.wait_for(&[
        (series("batch_rows_total", r#"kind="csv""#), 5.0),
        (series("batch_last_success_unixtime", ""), 1_700_000_000.0),
        (series("batch_duration_seconds_bucket", r#"le="0.1""#), 1.0),
        (series("batch_duration_seconds_bucket", r#"le="1""#), 2.0),
        (series("batch_duration_seconds_bucket", r#"le="10""#), 3.0),
        (series("batch_duration_seconds_bucket", r#"le="+Inf""#), 4.0),
        (series("batch_duration_seconds_count", ""), 4.0),
        (series("batch_duration_seconds_sum", ""), 55.55),
        (series("batch_payload_bytes_count", ""), 2.0),
        (series("batch_payload_bytes_sum", ""), 400.0),
        (series("push_failure_time_seconds", ""), 0.0),
        ("tallyd_push_groups".into(), 1.0),
        (r#"tallyd_pushes_total{method="put"}"#.into(), 1.0),
    ]);
    let pushed_at = value_of(&text, &series("push_time_seconds", "")).expect("push_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - pushed_at).abs() < 60.0,
        "push_time_seconds {pushed_at}, now {now}"
    );
    // The client's `_created` gauges are left out; HELP and TYPE are the client's.
    assert!(!text.contains("_created"), "{text}");
    assert!(
        text.contains("# HELP batch_rows_total Rows the job processed.\n"),
        "{text}"
    );
    assert!(
        text.contains("# TYPE batch_payload_bytes summary\n"),
        "{text}"
    );
    if require(on_path("promtool"), "promtool (Debian package prometheus)") {
        let (ok, report) = promtool(&["check", "metrics"], Some(&text));
        assert!(
            ok && report.trim().is_empty(),
            "promtool check metrics:\n{report}\non:\n{text}"
        );
    }
}

#[test]
fn pushadd_replaces_only_the_names_it_pushes_and_push_replaces_the_group() {
    if !have_client() {
        return;
    }
    let tallyd = InProcess::start();
    push(&tallyd, "push", None);
    tallyd.wait_for(&[(series("batch_rows_total", r#"kind="csv""#), 5.0)]);
    push(&tallyd, "pushadd", Some(7.0));
    tallyd.wait_for(&[
        (series("batch_last_success_unixtime", ""), 7.0),
        (series("batch_rows_total", r#"kind="csv""#), 5.0),
        (series("batch_duration_seconds_count", ""), 4.0),
        (series("batch_payload_bytes_count", ""), 2.0),
    ]);
    // PUT is the whole group: the gauge, histogram and summary go.
    push(&tallyd, "counter", Some(9.0));
    let text = tallyd.wait_for(&[(series("batch_rows_total", r#"kind="csv""#), 9.0)]);
    for gone in ["batch_last_success", "batch_duration", "batch_payload"] {
        assert!(!text.contains(gone), "{gone} should be gone:\n{text}");
    }
    assert!(
        value_of(&text, &series("push_time_seconds", "")).is_some(),
        "{text}"
    );
}

#[test]
fn delete_from_gateway_removes_the_group() {
    if !have_client() {
        return;
    }
    let tallyd = InProcess::start();
    push(&tallyd, "push", None);
    tallyd.wait_for(&[(series("batch_rows_total", r#"kind="csv""#), 5.0)]);
    push(&tallyd, "delete", None);
    let text = wait_gone(&tallyd, &["batch_", "push_"], Duration::from_secs(5));
    assert_eq!(value_of(&text, "tallyd_push_groups"), Some(0.0), "{text}");
    assert_eq!(
        value_of(&text, r#"tallyd_pushes_total{method="delete"}"#),
        Some(1.0)
    );
}

#[test]
fn a_group_pushed_with_a_ttl_expires() {
    if !have_client() {
        return;
    }
    let tallyd = InProcess::start();
    push(&tallyd, "ttl", Some(1.0));
    tallyd.wait_for(&[(series("batch_last_success_unixtime", ""), 1.0)]);
    let text = wait_gone(&tallyd, &["batch_", "push_"], Duration::from_secs(10));
    let text = if value_of(&text, "tallyd_push_groups_expired_total") == Some(1.0) {
        text
    } else {
        tallyd.wait_for(&[("tallyd_push_groups_expired_total", 1.0)])
    };
    assert_eq!(value_of(&text, "tallyd_push_groups"), Some(0.0), "{text}");
}

#[test]
fn the_default_ttl_applies_to_groups_pushed_without_one() {
    if !have_client() {
        return;
    }
    let tallyd = InProcess::with_config("[push]\ndefault_ttl_seconds = 1\n");
    push(&tallyd, "counter", Some(2.0));
    tallyd.wait_for(&[(series("batch_rows_total", r#"kind="csv""#), 2.0)]);
    wait_gone(&tallyd, &["batch_", "push_"], Duration::from_secs(10));
}

#[test]
fn counters_add_across_pushes_when_asked() {
    if !have_client() {
        return;
    }
    let tallyd = InProcess::start();
    push(&tallyd, "add", Some(3.0));
    push(&tallyd, "add", Some(4.0));
    tallyd.wait_for(&[(series("batch_rows_total", r#"kind="csv""#), 7.0)]);
    // Without the opt-in, a push sets the total again (Pushgateway's meaning).
    push(&tallyd, "counter", Some(2.0));
    tallyd.wait_for(&[(series("batch_rows_total", r#"kind="csv""#), 2.0)]);

    let tallyd = InProcess::with_config("[push]\nadd_counters = true\n");
    for _ in 0..3 {
        push(&tallyd, "counter", Some(5.0));
    }
    tallyd.wait_for(&[(series("batch_rows_total", r#"kind="csv""#), 15.0)]);
}

#[test]
fn a_gzip_compressed_push_is_read() {
    if !have_client() {
        return;
    }
    let tallyd = InProcess::start();
    push(&tallyd, "gzip", Some(42.0));
    tallyd.wait_for(&[(series("batch_last_success_unixtime", ""), 42.0)]);
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

/// Tokens: a writer and a reader of tenant `t1`.
fn with_tokens() -> InProcess {
    InProcess::with_config(&format!(
        "[[api.tokens]]\nid = \"batch\"\nsecret_sha256 = \"{}\"\ntenant = \"t1\"\nscopes = [\"write\"]\n\n\
         [[api.tokens]]\nid = \"reader\"\nsecret_sha256 = \"{}\"\ntenant = \"t1\"\nscopes = [\"read\"]\n",
        sha256_hex("batch-secret"),
        sha256_hex("reader-secret"),
    ))
}

#[test]
fn with_tokens_a_push_needs_the_write_scope_and_gets_its_tenant() {
    if !have_client() {
        return;
    }
    let tallyd = with_tokens();
    let writer = [
        ("TALLYD_TOKEN_ID", "batch"),
        ("TALLYD_TOKEN", "batch-secret"),
    ];
    let output = client(&tallyd, "auth", Some(3.0), &writer);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let labels = GROUP.replace("tenant=\"default\"", "tenant=\"t1\"");
    tallyd.wait_for(&[(format!("batch_last_success_unixtime{{{labels}}}"), 3.0)]);
    for env in [
        [
            ("TALLYD_TOKEN_ID", "reader"),
            ("TALLYD_TOKEN", "reader-secret"),
        ],
        [("TALLYD_TOKEN_ID", "batch"), ("TALLYD_TOKEN", "wrong")],
    ] {
        let output = client(&tallyd, "auth", Some(4.0), &env);
        assert!(!output.status.success(), "{env:?} was let through");
    }
    // Without credentials at all.
    let output = client(&tallyd, "pushadd", Some(5.0), &[]);
    assert!(
        !output.status.success(),
        "an anonymous push was let through"
    );
    let text = tallyd.scrape();
    assert_eq!(
        value_of(&text, &format!("batch_last_success_unixtime{{{labels}}}")),
        Some(3.0),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP: what a client library never sends

const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

fn send(
    tallyd: &InProcess,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> common::Response {
    http_send(
        tallyd.http,
        method,
        path,
        &[("Content-Type", content_type)],
        body,
    )
}

fn problem(response: &common::Response) -> serde_json::Value {
    assert_eq!(
        response.header("content-type"),
        Some("application/problem+json"),
        "{}",
        response.text()
    );
    serde_json::from_slice(&response.body).unwrap()
}

#[test]
fn a_bad_body_is_a_400_naming_the_line_and_stamps_the_failure_time() {
    let tallyd = InProcess::start();
    let ok = send(
        &tallyd,
        "PUT",
        "/metrics/job/j",
        TEXT,
        b"# TYPE a gauge\na 1\n",
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    for (body, words) in [
        (&b"a 1\nb{x=\"1\" 2\n"[..], "line 2: "),
        (b"a 1\nb 2 1700000000000\n", "timestamp"),
        (b"# TYPE c counter\nc -3\n", "at least 0"),
    ] {
        let response = send(&tallyd, "POST", "/metrics/job/j", TEXT, body);
        assert_eq!(response.status, 400, "{}", response.text());
        let problem = problem(&response);
        assert_eq!(problem["code"], "invalid_body");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(words), "{detail}");
    }
    let text = tallyd.scrape();
    // Nothing of the refused pushes, the first push intact, the failure stamped.
    assert_eq!(
        value_of(&text, r#"a{job="j",tenant="default"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("\nb{") && !text.contains("\nc_total"),
        "{text}"
    );
    let failed = value_of(
        &text,
        r#"push_failure_time_seconds{job="j",tenant="default"}"#,
    );
    assert!(failed.is_some_and(|t| t > 1e9), "{text}");
    assert_eq!(
        value_of(&text, r#"tallyd_push_refused_total{reason="invalid_body"}"#),
        Some(3.0),
        "{text}"
    );
}

#[test]
fn bad_grouping_keys_and_methods_are_refused() {
    let tallyd = InProcess::start();
    for (path, code) in [
        ("/metrics/job/j/instance", "invalid_grouping_key"),
        ("/metrics/job/j/tenant/x", "invalid_grouping_key"),
        ("/metrics/job@base64/!!", "invalid_grouping_key"),
        ("/metrics/job/j?ttl=x", "invalid_query"),
        ("/metrics/job/j?counters=sum", "invalid_query"),
        ("/metrics/job/j?tll=5", "invalid_query"),
    ] {
        let response = send(&tallyd, "PUT", path, TEXT, b"a 1\n");
        assert_eq!(response.status, 400, "{path}: {}", response.text());
        assert_eq!(problem(&response)["code"], code, "{path}");
    }
    let response = http_send(tallyd.http, "GET", "/metrics/job/j", &[], b"");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("PUT, POST, DELETE"));
    // /metrics itself and other paths under it are untouched.
    assert_eq!(
        http_send(tallyd.http, "GET", "/metrics", &[], b"").status,
        200
    );
    assert_eq!(
        http_send(tallyd.http, "PUT", "/metrics", &[], b"").status,
        405
    );
    assert_eq!(
        http_send(tallyd.http, "GET", "/metrics/x", &[], b"").status,
        404
    );
    let response = send(&tallyd, "PUT", "/metrics/job/j", "text/plain", b"a 1\n");
    assert_eq!(response.status, 200);
    let response = http_send(
        tallyd.http,
        "PUT",
        "/metrics/job/j",
        &[("Content-Encoding", "snappy")],
        b"a 1\n",
    );
    assert_eq!(response.status, 415);
    assert_eq!(problem(&response)["code"], "unsupported_encoding");
}

#[test]
fn a_push_that_conflicts_with_metrics_is_refused_whole() {
    let tallyd = InProcess::start();
    tallyd.send(&["requests:1|c\n"]);
    tallyd.wait_for(&[("requests_total", 1.0)]);
    // A gauge named like the StatsD counter: 409, and none of the push's other series stay.
    let response = send(
        &tallyd,
        "PUT",
        "/metrics/job/j",
        TEXT,
        b"# TYPE fresh gauge\nfresh 1\n# TYPE requests gauge\nrequests 2\n",
    );
    assert_eq!(response.status, 409, "{}", response.text());
    let problem = problem(&response);
    assert_eq!(problem["code"], "type_conflict");
    assert!(
        problem["detail"].as_str().unwrap().starts_with("line 4: "),
        "{problem}"
    );
    let text = tallyd.scrape();
    assert!(!text.contains("fresh"), "{text}");

    // A series belongs to one group: {job=j} pushing `x{k="v"}` takes it, and {job=j,k=v}
    // pushing `x` (the same series once its key is set) is refused.
    let ok = send(&tallyd, "PUT", "/metrics/job/j", TEXT, b"x{k=\"v\"} 1\n");
    assert_eq!(ok.status, 200, "{}", ok.text());
    let response = send(&tallyd, "PUT", "/metrics/job/j/k/v", TEXT, b"x 2\n");
    assert_eq!(response.status, 409, "{}", response.text());
    assert_eq!(problem_code(&response), "group_conflict");
    // Two series of one push that the grouping key makes one.
    let response = send(
        &tallyd,
        "PUT",
        "/metrics/job/j2",
        TEXT,
        b"y{job=\"a\"} 1\ny{job=\"b\"} 2\n",
    );
    assert_eq!(response.status, 400, "{}", response.text());
    let text = tallyd.scrape();
    assert_eq!(
        value_of(&text, r#"x{job="j",k="v",tenant="default"}"#),
        Some(1.0),
        "{text}"
    );
}

fn problem_code(response: &common::Response) -> String {
    problem(response)["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_delimited_protobuf_push_is_read() {
    let tallyd = InProcess::start();
    // Pushgateway's handler test family, by hand from the wire format: `some_metric`, UNTYPED,
    // one metric `untyped { value: 1.234 }`, with a label pair `instance="a"`.
    let mut untyped = vec![0x09];
    untyped.extend_from_slice(&1.234f64.to_le_bytes());
    // LabelPair { name: "instance" (field 1), value: "a" (field 2) }, as Metric.label (field 1).
    let pair = [&[0x0a, 8][..], b"instance", &[0x12, 1], b"a"].concat();
    let mut metric = vec![0x0a, pair.len() as u8];
    metric.extend_from_slice(&pair);
    // Metric.untyped (field 5).
    metric.extend_from_slice(&[0x2a, untyped.len() as u8]);
    metric.extend_from_slice(&untyped);
    let mut family = vec![0x0a, 11];
    family.extend_from_slice(b"some_metric");
    family.extend_from_slice(&[0x18, 3, 0x22, metric.len() as u8]);
    family.extend_from_slice(&metric);
    let mut body = vec![family.len() as u8];
    body.extend_from_slice(&family);
    let response = send(
        &tallyd,
        "POST",
        "/metrics/job/pb",
        "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited",
        &body,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    tallyd.wait_for(&[(
        r#"some_metric{instance="a",job="pb",tenant="default"}"#,
        1.234,
    )]);
}

#[test]
fn the_readme_snippet_pushes_what_it_says() {
    if !have_client() {
        return;
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Pushes from batch jobs")
        .expect("the README's push section")..];
    let start = section.find("```python\n").expect("a Python snippet") + "```python\n".len();
    let snippet = &section[start..start + section[start..].find("```").unwrap()];
    // The snippet's last comment is the series it promises.
    let promised = snippet
        .lines()
        .filter_map(|line| line.strip_prefix("# "))
        .next_back()
        .expect("the series the snippet promises");
    let (series, value) = promised.rsplit_once(' ').unwrap();
    let tallyd = InProcess::start();
    let code = snippet.replace("localhost:9102", &tallyd.http.to_string());
    let output = Command::new(python().unwrap())
        .args(["-c", &code])
        .output()
        .expect("run the README's snippet");
    assert!(
        output.status.success(),
        "the README's snippet failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    tallyd.wait_for(&[(series, value.parse::<f64>().unwrap())]);
}
