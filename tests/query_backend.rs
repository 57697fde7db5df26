//! `[query] backend = "prometheus"` against a real Prometheus 2.42 (Debian's package) holding
//! the same data as tallyd's store: points recorded with timestamps through the Matih API,
//! exported with `tallyd history export`, imported with `promtool tsdb create-blocks-from
//! openmetrics` into Prometheus's storage. The same daemon answers each query from its store,
//! then (after a reload naming the backend) from Prometheus: the answers agree, bin for bin.
//! Then what goes wrong: a backend that is down (502), one that never answers (504 within the
//! timeout), each counted by outcome. And a Prometheus scraping tallyd: its answers for sampled
//! history (gauges, counters, a histogram's and a summary's `quantile(q)`) agree with tallyd's.

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

/// The backend's answer to `name?params` (asked after a reload naming it) beside `local`: the
/// one series' bins of each, as (start, value), asserted to be the same series, with a message
/// showing both answers.
fn beside_backend(
    tallyd: &Daemon,
    name: &str,
    params: &str,
    local: &Value,
) -> (BTreeMap<String, f64>, BTreeMap<String, f64>, String) {
    let (status, remote) = query(tallyd.http, "t1", name, params);
    assert_eq!(status, 200, "{name}?{params}: {remote}");
    assert_eq!(remote["backend"], "prometheus", "{remote}");
    assert_eq!(remote["aggregation"], local["aggregation"], "{remote}");
    let (l, r) = (bins_of(local), bins_of(&remote));
    let what = format!("{name}?{params}\nlocal   {local}\nbackend {remote}");
    assert_eq!(
        l.keys().collect::<Vec<_>>(),
        r.keys().collect::<Vec<_>>(),
        "{what}"
    );
    let one = |mut bins: BTreeMap<String, BTreeMap<String, f64>>| bins.pop_first().unwrap().1;
    (one(l), one(r), what)
}

/// The backend's value of bin `bin` is the local one, within 1e-9; answers it.
fn agrees(bin: &str, l: &BTreeMap<String, f64>, r: &BTreeMap<String, f64>, what: &str) -> f64 {
    let (Some(lv), Some(rv)) = (l.get(bin), r.get(bin)) else {
        panic!("{bin}: the backend has no value: {what}");
    };
    assert!((lv - rv).abs() <= 1e-9, "{bin}: {lv} != {rv}: {what}");
    *rv
}

/// Reloads `tallyd` with its `config` and `[query]` naming `prometheus` as the backend.
fn to_backend(tallyd: &Daemon, config: &str, prometheus: &Prometheus) {
    let url = format!("http://{}", prometheus.web());
    let mut reloads = 0;
    reload(
        tallyd,
        &format!("{config}{}", backend_config(&url, 10.0)),
        &mut reloads,
    );
}

/// A tallyd with `config` and a Prometheus scraping it every second, once it has; `None` (the
/// test skipped) without Prometheus.
fn scraped(config: &str) -> Option<(Daemon, Prometheus)> {
    if !require(
        common::on_path("prometheus"),
        "prometheus (Debian's prometheus package; scripts/setup-test-deps)",
    ) {
        return None;
    }
    let tallyd = Daemon::with_config(config);
    let prometheus = Prometheus::start(tallyd.http, &[]);
    let targets = prometheus.wait_scraped(Duration::from_secs(30));
    assert!(targets.contains(r#""health":"up""#), "{targets}");
    Some((tallyd, prometheus))
}

/// A Prometheus 2.42 scraping a tallyd every second, and that tallyd sampling its
/// `[[metric]]`s with history every second: its local answers and its answers through
/// `[query] backend = "prometheus"` agree on every bin where the data leaves no doubt. A gauge
/// is set three times and held six seconds each time; a counter is increased at the same
/// moments and left alone in between. Each change is half a second from any sample or scrape.
#[test]
fn a_prometheus_scraping_tallyd_answers_its_sampled_history_as_tallyd_does() {
    let sampled = format!("{HISTORY_EVERY_SECOND}{SAMPLED}");
    let Some((tallyd, prometheus)) = scraped(&sampled) else {
        return;
    };

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

    to_backend(&tallyd, &sampled, &prometheus);
    for ((name, aggregation), local) in cases.iter().zip(&local) {
        let params = format!("{range}&aggregation={aggregation}");
        assert_eq!(local["resolution"], "2s", "{local}");
        let (l, r, what) = beside_backend(&tallyd, name, &params, local);
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
            agrees(stamps[j], &l, &r, &what);
        }
    }
}

/// A histogram and a summary with history, for the quantile test.
const OBSERVED: &str = r#"
[[metric]]
name = "wait_seconds"
type = "histogram"
buckets = [0.1, 0.5, 1.0, 5.0]
history = true

[[metric]]
name = "rpc_seconds"
type = "summary"
quantiles = [0.5, 0.9]
history = true
"#;

/// A local answer with all nine 2 s bins of `name` — or, for a histogram's quantile, the three
/// that hold observations (the others have none to rank); waits up to 15 s.
fn wait_local(tallyd: &Daemon, name: &str, params: &str, bins: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, answer) = query(tallyd.http, "t1", name, params);
        assert_eq!(status, 200, "{name}?{params}: {answer}");
        if bins_of(&answer)
            .values()
            .next()
            .is_some_and(|b| b.len() == bins)
        {
            return answer;
        }
        assert!(Instant::now() < deadline, "{name}?{params}: {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A Prometheus 2.42 scraping a tallyd every second, and that tallyd sampling a histogram and a
/// summary with history every second: `quantile(q)` through `[query] backend = "prometheus"`
/// (`histogram_quantile` over the bins' bucket increases; the average of the summary's served
/// quantile) agrees with the local answer, and both are the values the observations make.
///
/// Tolerance: the histogram's quantiles are computed by the same interpolation from the same
/// integer counts, in another order of floating-point operations, so they may differ in their
/// last bits: 1e-9 is far below what one observation in another bucket changes (≥ 0.02 here).
/// The summary's values are the same served numbers averaged, within the same 1e-9.
#[test]
fn a_prometheus_scraping_tallyd_answers_histogram_and_summary_quantiles_as_tallyd_does() {
    let sampled = format!("{HISTORY_EVERY_SECOND}{OBSERVED}");
    let Some((tallyd, prometheus)) = scraped(&sampled) else {
        return;
    };

    // Three batches of observations at k + 0.5 s for k = k0, k0 + 6, k0 + 12, with the
    // medians and 0.9-quantiles the buckets [0.1, 0.5, 1, 5] make of each.
    let batches: [(&[f64], f64, f64); 3] = [
        // Counts 1, 2, 1, 1, 0: rank 2.5 in (0.1, 0.5] (3/4 in), rank 4.5 in (1, 5] (half).
        (&[0.05, 0.2, 0.3, 0.7, 3.0], 0.1 + 0.4 * 0.75, 3.0),
        // Counts 3, 0, 0, 1, 0: rank 2 in (0, 0.1] (2/3 in), rank 3.6 in (1, 5] (0.6 in).
        (&[0.01, 0.02, 0.03, 2.0], 0.1 * 2.0 / 3.0, 1.0 + 4.0 * 0.6),
        // Counts 0, 0, 2, 0, 1: rank 1.5 in (0.5, 1] (3/4 in), rank 2.7 in +Inf's: 5.
        (&[0.6, 0.8, 9.0], 0.5 + 0.5 * 0.75, 5.0),
    ];
    let k0 = (unix_ms() / 1000 + 2) / 2 * 2;
    for (i, (observations, ..)) in batches.iter().enumerate() {
        at_half_past(k0 + 6 * i as i64);
        let lines: Vec<String> = (observations.iter())
            .flat_map(|v| [format!("wait_seconds:{v}|h"), format!("rpc_seconds:{v}|h")])
            .collect();
        tallyd.send(&lines);
    }
    let end = k0 + 18;
    let range = format!("start={k0}&end={end}&step=2s");
    let with_observations: Vec<usize> = vec![0, 3, 6];
    let held: Vec<usize> = (1..9).filter(|j: &usize| !j.is_multiple_of(3)).collect();
    // (name, q, bins the local answer has, bins compared).
    let cases: Vec<(&str, f64, usize, Vec<usize>)> = vec![
        ("wait_seconds", 0.5, 3, with_observations.clone()),
        ("wait_seconds", 0.9, 3, with_observations.clone()),
        // The summary serves its quantiles from the first batch on; a bin with a batch sees
        // the quantile change inside it, at another moment for tallyd and Prometheus.
        ("rpc_seconds", 0.5, 9, held.clone()),
        ("rpc_seconds", 0.9, 9, held.clone()),
    ];
    let local: Vec<Value> = (cases.iter())
        .map(|(name, q, bins, _)| {
            let params = format!("{range}&aggregation=quantile({q})");
            wait_local(&tallyd, name, &params, *bins)
        })
        .collect();
    prometheus.wait_for_value(
        &format!("timestamp(wait_seconds_count) >= {end}"),
        Duration::from_secs(10),
        |_| true,
    );

    // The local histogram answers are the values the observations make.
    for (case, local) in cases.iter().zip(&local).take(2) {
        let q = case.1;
        let got: Vec<f64> = bins_of(local)
            .values()
            .next()
            .unwrap()
            .values()
            .copied()
            .collect();
        let expected: Vec<f64> = (batches.iter())
            .map(|(_, p50, p90)| if q == 0.5 { *p50 } else { *p90 })
            .collect();
        assert!(
            got.len() == 3 && got.iter().zip(&expected).all(|(g, e)| (g - e).abs() < 1e-9),
            "quantile({q}): {got:?} != {expected:?}: {local}"
        );
    }

    to_backend(&tallyd, &sampled, &prometheus);
    let mut remote_values = Vec::new();
    for ((name, q, _, compared), local) in cases.iter().zip(&local) {
        let params = format!("{range}&aggregation=quantile({q})");
        assert_eq!(local["aggregation"], format!("quantile({q})"), "{local}");
        let (l, r, what) = beside_backend(&tallyd, name, &params, local);
        let local_stamps: Vec<&String> = l.keys().collect();
        for j in compared {
            // A histogram's local answer holds only the bins with observations, in order.
            let bin = match *name {
                "wait_seconds" => local_stamps[j / 3],
                _ => local_stamps[*j],
            };
            remote_values.push(agrees(bin, &l, &r, &what));
        }
        if *name == "wait_seconds" {
            // Bins without observations are left out by both.
            assert_eq!(r.len(), 3, "{what}");
        }
    }
    // The comparison tells quantiles apart: the backend's medians are not its 0.9-quantiles.
    assert_ne!(remote_values[0..3], remote_values[3..6]);

    // A quantile the summary does not serve is refused, naming those it does; a histogram's
    // minimum needs single observations, which Prometheus does not keep.
    for (name, aggregation, code, names) in [
        (
            "rpc_seconds",
            "quantile(0.99)",
            "quantile_not_served",
            "quantile(0.5), quantile(0.9)",
        ),
        (
            "wait_seconds",
            "min",
            "aggregation_unsupported",
            "quantile(q)",
        ),
    ] {
        let params = format!("{range}&aggregation={aggregation}");
        let (status, refused) = query(tallyd.http, "t1", name, &params);
        assert_eq!((status, &refused["code"]), (422, &json!(code)), "{refused}");
        let detail = refused["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(names), "{refused}");
    }
}
