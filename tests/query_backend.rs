//! `[query] backend = "prometheus"` against a real Prometheus 2.42 (Debian's package) holding
//! the same data as tallyd's store: points recorded with timestamps through the Matih API,
//! exported with `tallyd history export`, imported with `promtool tsdb create-blocks-from
//! openmetrics` into Prometheus's storage. The same daemon answers each query from its store,
//! then (after a reload naming the backend) from Prometheus: the answers agree, bin for bin.
//! Then what goes wrong: a backend that is down (502), one that never answers (504 within the
//! timeout), each counted by outcome.

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::{
    CUSTOM_METRICS as BASE, Daemon, HISTORY_EVERY_SECOND, at_half_past, define_custom as define,
    record_custom, require, tallyd_bin, tenant_call as call, unix_ms, value_of,
};
use serde_json::{Value, json};

fn record(addr: SocketAddr, tenant: &str, name: &str, points: Vec<Value>) {
    record_custom(addr, tenant, name, Value::Array(points));
}

fn query(addr: SocketAddr, tenant: &str, name: &str, params: &str) -> (u16, Value) {
    let path = format!("{BASE}/{name}/query?{params}");
    call(addr, "GET", &path, tenant, Value::Null)
}

/// Rewrites the daemon's config file and reloads it, waiting for the reload to count.
fn reload(tallyd: &Daemon, toml: &str, reloads: &mut u32) {
    tallyd.config_file().write(toml);
    tallyd.signal(libc::SIGHUP);
    *reloads += 1;
    tallyd.wait_for_value(
        r#"tallyd_config_reloads_total{outcome="success"}"#,
        f64::from(*reloads),
    );
}

fn backend_config(url: &str, timeout_seconds: f64) -> String {
    format!(
        "[query]\nbackend = \"prometheus\"\nurl = \"{url}\"\ntimeout_seconds = {timeout_seconds}\n"
    )
}

/// A gauge in two tenants, a counter and a histogram, recorded at irregular times over seven
/// minutes from `base_s` (a whole minute, half an hour ago), a point at least every 100 s
/// (well inside Prometheus's 5-minute lookback) and never two in one millisecond.
fn record_history(addr: SocketAddr) -> i64 {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let base_s = (now_s - 1800) / 60 * 60;
    let at = |ms: i64| {
        let total = base_s * 1000 + ms;
        format!("{}.{:03}", total / 1000, total % 1000)
    };
    // Offsets in ms: on a bin's first and last millisecond too, where an off-by-one shows.
    let offsets = [
        0, 13_250, 59_999, 60_000, 95_500, 150_001, 179_999, 240_000, 301_500, 330_000, 389_999,
        401_000,
    ];
    for (tenant, shift) in [("t1", 0.0), ("t2", 100.0)] {
        define(
            addr,
            tenant,
            json!({"name": "queue_depth", "type": "gauge", "labels": ["model"]}),
        );
        let points = offsets
            .iter()
            .enumerate()
            .flat_map(|(i, &ms)| {
                let i = i as f64;
                [
                    json!({"value": shift + (i * 7.0) % 11.0 + 0.5, "labels": {"model": "a"}, "timestamp": at(ms)}),
                    json!({"value": shift - i * 2.25, "labels": {"model": "b \"q\"\\"}, "timestamp": at(ms + 7)}),
                ]
            })
            .collect();
        record(addr, tenant, "queue_depth", points);
    }
    define(
        addr,
        "t1",
        json!({"name": "jobs_done", "type": "counter", "labels": ["model"]}),
    );
    let points = offsets
        .iter()
        .enumerate()
        .map(|(i, &ms)| {
            let model = if i % 3 == 0 { "b" } else { "a" };
            json!({"value": (i % 4 + 1) as f64, "labels": {"model": model}, "timestamp": at(ms + 3)})
        })
        .collect();
    record(addr, "t1", "jobs_done", points);
    define(
        addr,
        "t1",
        json!({"name": "latency_seconds", "type": "histogram", "labels": []}),
    );
    let points = offsets
        .iter()
        .enumerate()
        .map(|(i, &ms)| json!({"value": 0.25 * (i % 5 + 1) as f64, "timestamp": at(ms + 11)}))
        .collect();
    record(addr, "t1", "latency_seconds", points);
    // A tenant that defines the counter but records nothing: the backend holds t1's points
    // under the same name, which t2 must never see.
    define(
        addr,
        "t2",
        json!({"name": "jobs_done", "type": "counter", "labels": ["model"]}),
    );
    base_s
}

/// Exports each metric and imports it into the (stopped) Prometheus's storage.
fn import(tallyd: &Daemon, prometheus: &mut Prometheus) {
    let work = tempfile::tempdir().unwrap();
    prometheus.stop();
    for metric in ["queue_depth", "jobs_done", "latency_seconds"] {
        let file = work.path().join(format!("{metric}.om"));
        let output = Command::new(tallyd_bin())
            .arg("--data-dir")
            .arg(tallyd.data_dir.path())
            .args(["history", "export", "--metric", metric, "--output"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let imported = Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&file)
            .arg(prometheus.storage())
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "promtool refused {metric}:\n{}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    prometheus.restart();
    // It answers 503 until its storage is open.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !prometheus.api("/-/ready").contains("Ready") {
        assert!(Instant::now() < deadline, "{}", prometheus.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One bin of an answer.
#[derive(Debug, serde::Deserialize)]
struct Bin {
    timestamp: String,
    value: f64,
}

/// The series of an answer as (labels, bins), sorted by labels.
fn series(answer: &Value) -> Vec<(Value, Vec<Bin>)> {
    let mut out: Vec<(Value, Vec<Bin>)> = answer["series"]
        .as_array()
        .unwrap_or_else(|| panic!("no series in {answer}"))
        .iter()
        .map(|s| {
            let bins = serde_json::from_value(s["points"].clone()).unwrap();
            (s["labels"].clone(), bins)
        })
        .collect();
    out.sort_by_key(|(labels, _)| labels.to_string());
    out
}

/// Equal bin for bin; values within a relative 1e-12 when `close` (a mean computed
/// incrementally by Prometheus may differ from sum/count in its last bits), else exactly.
fn assert_agree(what: &str, local: &Value, remote: &Value, close: bool) {
    let (l, r) = (series(local), series(remote));
    assert!(!l.is_empty(), "{what}: the local answer is empty: {local}");
    let same = l.len() == r.len()
        && l.iter().zip(&r).all(|((ll, lp), (rl, rp))| {
            ll == rl
                && lp.len() == rp.len()
                && lp.iter().zip(rp).all(|(l, r)| {
                    l.timestamp == r.timestamp
                        && if close {
                            (l.value - r.value).abs() <= 1e-12 * l.value.abs().max(1.0)
                        } else {
                            l.value == r.value
                        }
                })
        });
    assert!(same, "{what}:\nlocal   {local}\nbackend {remote}");
    for field in ["metric", "aggregation", "start", "end", "step", "labels"] {
        assert_eq!(local[field], remote[field], "{what}: {field}");
    }
    assert_eq!(remote["backend"], "prometheus", "{what}");
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn local_and_prometheus_answers_agree_and_backend_failures_are_problems() {
    if !require(
        common::on_path("prometheus") && common::on_path("promtool"),
        "prometheus and promtool (Debian's prometheus package; scripts/setup-test-deps)",
    ) {
        return;
    }
    let tallyd = Daemon::with_config("");
    let addr = tallyd.http;
    let base = record_history(addr);
    // Prometheus scrapes nothing (its target is a closed port): it holds only the import.
    let mut prometheus = Prometheus::start(closed_port(), &[]);
    prometheus.wait_scraped(Duration::from_secs(30));
    import(&tallyd, &mut prometheus);

    let full = format!("start={base}&end={}&step=1m", base + 420);
    // 6.5 minutes in 90 s bins: the last bin is cut short by `end`.
    let ragged = format!("start={base}&end={}&step=90s", base + 390);
    let mut cases: Vec<(&str, &str, String, bool)> = Vec::new();
    for range in [&full, &ragged] {
        for aggregation in ["average", "sum", "min", "max", "count", "last"] {
            let close = aggregation == "average";
            for tenant in ["t1", "t2"] {
                cases.push((
                    tenant,
                    "queue_depth",
                    format!("{range}&aggregation={aggregation}"),
                    close,
                ));
            }
            cases.push((
                "t1",
                "queue_depth",
                format!("{range}&aggregation={aggregation}&labels=model:a"),
                close,
            ));
        }
        for aggregation in ["sum", "count", "average"] {
            let close = aggregation == "average";
            for name in ["jobs_done", "latency_seconds"] {
                cases.push((
                    "t1",
                    name,
                    format!("{range}&aggregation={aggregation}"),
                    close,
                ));
            }
            cases.push((
                "t1",
                "jobs_done",
                format!("{range}&aggregation={aggregation}&labels=model:b"),
                close,
            ));
        }
    }
    let local: Vec<Value> = cases
        .iter()
        .map(|(tenant, name, params, _)| {
            let (status, body) = query(addr, tenant, name, params);
            assert_eq!(status, 200, "{name}?{params}: {body}");
            body
        })
        .collect();
    let (_, empty) = query(addr, "t2", "jobs_done", &full);
    assert_eq!(empty["series"], json!([]), "{empty}");

    let mut reloads = 0;
    let url = format!("http://{}", prometheus.web());
    reload(&tallyd, &backend_config(&url, 10.0), &mut reloads);
    for ((tenant, name, params, close), local) in cases.iter().zip(&local) {
        let (status, remote) = query(addr, tenant, name, params);
        assert_eq!(status, 200, "{tenant} {name}?{params}: {remote}");
        assert_agree(&format!("{tenant} {name}?{params}"), local, &remote, *close);
    }
    // t2 defined jobs_done too; t1's points under that name stay t1's.
    let (status, isolated) = query(addr, "t2", "jobs_done", &full);
    assert_eq!(status, 200, "{isolated}");
    assert_eq!(isolated["series"], json!([]), "{isolated}");
    assert_eq!(isolated["backend"], "prometheus");
    // A filter value that tries to close the matcher is only a value.
    let (status, injected) = query(
        addr,
        "t2",
        "queue_depth",
        &format!("{full}&labels=model:x%22%7Dor%20queue_depth%7Btenant%3D%22t1"),
    );
    assert_eq!(status, 200, "{injected}");
    assert_eq!(injected["series"], json!([]), "{injected}");
    // What running totals cannot tell is refused, naming the field.
    let (status, problem) = query(addr, "t1", "jobs_done", &format!("{full}&aggregation=max"));
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["code"], "aggregation_unsupported");
    assert_eq!(problem["field"], "aggregation");

    // Down: nothing listens.
    reload(
        &tallyd,
        &backend_config(&format!("http://{}", closed_port()), 10.0),
        &mut reloads,
    );
    let (status, problem) = query(addr, "t1", "queue_depth", &full);
    assert_eq!(status, 502, "{problem}");
    assert_eq!(problem["code"], "backend_unavailable", "{problem}");

    // A black hole: accepts, reads, never answers.
    let hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_addr = hole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hole.incoming() {
            held.push(stream);
        }
    });
    reload(
        &tallyd,
        &backend_config(&format!("http://{hole_addr}"), 1.0),
        &mut reloads,
    );
    let started = Instant::now();
    let (status, problem) = query(addr, "t1", "queue_depth", &full);
    let took = started.elapsed();
    assert_eq!(status, 504, "{problem}");
    assert_eq!(problem["code"], "backend_timeout", "{problem}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );

    let text = tallyd.scrape();
    let outcome = |o: &str| {
        value_of(
            &text,
            &format!("tallyd_query_backend_requests_total{{outcome=\"{o}\"}}"),
        )
    };
    // Every case asked once or twice (a ragged range asks its last bin apart), the isolation
    // and injection queries once each.
    assert!(
        outcome("success").unwrap() >= (cases.len() + 2) as f64,
        "{text}"
    );
    assert_eq!(outcome("unavailable"), Some(1.0));
    assert_eq!(outcome("timeout"), Some(1.0));
    assert_eq!(outcome("error"), Some(0.0));
}

/// `[[metric]]`s with history, for the scraped test (with [`HISTORY_EVERY_SECOND`]).
const SAMPLED: &str = r#"
[[metric]]
name = "queue_depth"
type = "gauge"
history = true

[[metric]]
name = "jobs_done_total"
type = "counter"
history = true
"#;

/// Each series' labels (without the `job` and `instance` labels Prometheus gives what it
/// scrapes) and its bins as (start, value).
fn bins_of(answer: &Value) -> BTreeMap<String, BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for (mut labels, bins) in series(answer) {
        if let Some(labels) = labels.as_object_mut() {
            labels.remove("job");
            labels.remove("instance");
        }
        let bins = bins.into_iter().map(|b| (b.timestamp, b.value)).collect();
        out.insert(labels.to_string(), bins);
    }
    out
}

/// A Prometheus 2.42 scraping a tallyd every second, and that tallyd sampling its
/// `[[metric]]`s with history every second: its local answers and its answers through
/// `[query] backend = "prometheus"` agree on every bin where the data leaves no doubt. A gauge
/// is set three times and held six seconds each time; a counter is increased at the same
/// moments and left alone in between. Each change is half a second from any sample or scrape.
#[test]
fn a_prometheus_scraping_tallyd_answers_its_sampled_history_as_tallyd_does() {
    if !require(
        common::on_path("prometheus"),
        "prometheus (Debian's prometheus package; scripts/setup-test-deps)",
    ) {
        return;
    }
    let sampled = format!("{HISTORY_EVERY_SECOND}{SAMPLED}");
    let tallyd = Daemon::with_config(&sampled);
    let prometheus = Prometheus::start(tallyd.http, &[]);
    let targets = prometheus.wait_scraped(Duration::from_secs(30));
    assert!(targets.contains(r#""health":"up""#), "{targets}");

    // Changes at k + 0.5 s for k = k0, k0 + 6, k0 + 12.
    let steps = [(10.25, 3.0), (20.5, 5.0), (7.75, 2.0)];
    // An even second: the 2 s bins are the 2 s tier's intervals, which answer locally.
    let k0 = (unix_ms() / 1000 + 2) / 2 * 2;
    for (i, (gauge, increase)) in steps.iter().enumerate() {
        at_half_past(k0 + 6 * i as i64);
        tallyd.send(&[
            format!("queue_depth:{gauge}|g"),
            format!("jobs_done:{increase}|c"),
        ]);
    }
    let end = k0 + 18;
    let range = format!("start={k0}&end={end}&step=2s");
    // 2 s bins from k0: a change falls in the first of each three, 1.5 s from its end; the
    // other two see one value throughout, for tallyd's samples (each is the value at the end of
    // its second) and Prometheus's scrapes alike.
    let held: Vec<usize> = (0..9).filter(|j: &usize| !j.is_multiple_of(3)).collect();
    let cases = [
        ("queue_depth", "average"),
        ("queue_depth", "min"),
        ("queue_depth", "max"),
        ("queue_depth", "last"),
        ("jobs_done_total", "sum"),
    ];
    // The last bin's samples are written at `end` and scraped before it.
    let deadline = Instant::now() + Duration::from_secs(15);
    let local: Vec<Value> = cases
        .iter()
        .map(|(name, aggregation)| {
            loop {
                let params = format!("{range}&aggregation={aggregation}");
                let (status, answer) = query(tallyd.http, "t1", name, &params);
                assert_eq!(status, 200, "{name}?{params}: {answer}");
                let bins = bins_of(&answer);
                if bins.values().next().is_some_and(|b| b.len() == 9) {
                    break answer;
                }
                assert!(Instant::now() < deadline, "{name}?{params}: {answer}");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .collect();
    // Prometheus has scraped past `end` too.
    prometheus.wait_for_value(
        &format!("timestamp(jobs_done_total) >= {}", end),
        Duration::from_secs(10),
        |_| true,
    );

    let mut reloads = 0;
    let url = format!("http://{}", prometheus.web());
    reload(
        &tallyd,
        &format!("{sampled}{}", backend_config(&url, 10.0)),
        &mut reloads,
    );
    for ((name, aggregation), local) in cases.iter().zip(&local) {
        let params = format!("{range}&aggregation={aggregation}");
        let (status, remote) = query(tallyd.http, "t1", name, &params);
        assert_eq!(status, 200, "{name}?{params}: {remote}");
        assert_eq!(remote["backend"], "prometheus", "{remote}");
        assert_eq!(local["resolution"], "2s", "{local}");
        let (l, r) = (bins_of(local), bins_of(&remote));
        let what = format!("{name}?{params}\nlocal   {local}\nbackend {remote}");
        assert_eq!(
            l.keys().collect::<Vec<_>>(),
            r.keys().collect::<Vec<_>>(),
            "{what}"
        );
        let (l, r) = (l.values().next().unwrap(), r.values().next().unwrap());
        // The local answer has all nine bins (waited for above), in time order.
        let stamps: Vec<&String> = l.keys().collect();
        // The values are the ones sent: a gauge's in each bin of its stretch, a counter's
        // increase in the bin of its change.
        let expected: Vec<f64> = (0..9)
            .map(|j: usize| match *name {
                "jobs_done_total" if j.is_multiple_of(3) => steps[j / 3].1,
                "jobs_done_total" => 0.0,
                _ => steps[j / 3].0,
            })
            .collect();
        assert_eq!(
            l.values().copied().collect::<Vec<f64>>(),
            expected,
            "{what}"
        );
        // A counter's sum agrees on every bin (its changes fall well inside one); a gauge's on
        // those it holds still.
        let compared: Vec<usize> = match *name {
            "jobs_done_total" => (0..9).collect(),
            _ => held.clone(),
        };
        for j in compared {
            let bin = stamps[j];
            let (Some(lv), Some(rv)) = (l.get(bin), r.get(bin)) else {
                panic!("{bin}: the backend has no value: {what}");
            };
            assert!((lv - rv).abs() <= 1e-9, "{bin}: {lv} != {rv}: {what}");
        }
    }
}
