//! Remote-write end to end: tallyd's `[[remote_write]]` sends what it received over UDP to a
//! real Prometheus (Debian's package, started with `--web.enable-remote-write-receiver`),
//! whose PromQL answers must give the values back exactly, also across a 30 s outage of
//! Prometheus and from endpoints configured for 2.0 (Prometheus 2.42 reads 1.0 only); and to a
//! receiver in this test (hyper on a loopback port, over HTTPS when a case needs it) that
//! answers what each case needs: 400s that must not wedge the queue, 429 with `Retry-After`
//! and 503 that must be retried, a staleness marker for a series that expired, 2.0 decoded
//! symbol by symbol, a 415 or a bare 204 to 2.0, TLS with and without the CA, credentials.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use tallyd::remote_write::v2;
use tallyd::remote_write::wire::{self, WriteRequest};

use common::prometheus::Prometheus;
use common::{Daemon, InProcess, on_path, require, value_of};

const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(60);

/// A loopback port nothing listens on, for Prometheus's own scrape config: the series it holds
/// are then only those tallyd wrote.
fn dead_target() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `[[remote_write]]` table named `test` sending to `url` every `interval` seconds.
fn remote_write_config(url: &str, interval: f64, extra: &str) -> String {
    format!(
        "[[remote_write]]\nurl = \"{url}\"\nname = \"test\"\ninterval_seconds = {interval}\n\
         external_labels = {{ site = \"rwtest\" }}\n{extra}"
    )
}

fn self_metric(tallyd: &InProcess, series: &str) -> f64 {
    value_of(&tallyd.scrape(), series).unwrap_or_else(|| panic!("no {series} in the scrape"))
}

/// `tallyd_remote_write_<name>{remote="test"}`.
fn remote(tallyd: &InProcess, name: &str) -> f64 {
    self_metric(
        tallyd,
        &format!("tallyd_remote_write_{name}{{remote=\"test\"}}"),
    )
}

fn start_prometheus() -> Option<Prometheus> {
    if !require(
        on_path("prometheus"),
        "prometheus (Debian package prometheus)",
    ) {
        return None;
    }
    Some(Prometheus::start(
        dead_target(),
        &["--web.enable-remote-write-receiver"],
    ))
}

#[test]
fn prometheus_receives_counters_gauges_histograms_and_external_labels_exactly() {
    let Some(prometheus) = start_prometheus() else {
        return;
    };
    let url = format!("http://{}/api/v1/write", prometheus.web());
    let tallyd = InProcess::with_config(&remote_write_config(&url, 1.0, ""));
    tallyd.send(&[
        "rw_jobs:3|c|#model:a\nrw_jobs:4.5|c|#model:a\nrw_temp:21.5|g",
        "rw_lat:0.2|h\nrw_lat:0.2|h\nrw_lat:3|h",
    ]);
    tallyd.wait_for(&[
        (r#"rw_jobs_total{model="a"}"#, 7.5),
        ("rw_temp", 21.5),
        ("rw_lat_count", 3.0),
    ]);
    let exactly = |promql: &str, expected: f64| {
        let got = prometheus.wait_for_value(promql, PROMETHEUS_TIMEOUT, |v| v == expected);
        assert_eq!(got, expected, "{promql}");
    };
    exactly(r#"rw_jobs_total{model="a",site="rwtest"}"#, 7.5);
    exactly(r#"rw_temp{site="rwtest"}"#, 21.5);
    exactly(r#"rw_lat_bucket{le="0.1",site="rwtest"}"#, 0.0);
    exactly(r#"rw_lat_bucket{le="0.25",site="rwtest"}"#, 2.0);
    exactly(r#"rw_lat_bucket{le="2.5",site="rwtest"}"#, 2.0);
    exactly(r#"rw_lat_bucket{le="5",site="rwtest"}"#, 3.0);
    exactly(r#"rw_lat_bucket{le="+Inf",site="rwtest"}"#, 3.0);
    exactly(r#"rw_lat_count{site="rwtest"}"#, 3.0);
    // Added in observation order, as tallyd does.
    exactly(r#"rw_lat_sum{site="rwtest"}"#, 0.2 + 0.2 + 3.0);
    // A counter that moves arrives moved.
    tallyd.send(&["rw_jobs:1|c|#model:a"]);
    exactly(r#"rw_jobs_total{model="a",site="rwtest"}"#, 8.5);
    assert!(remote(&tallyd, "samples_total") > 0.0);
    assert_eq!(remote(&tallyd, "samples_failed_total"), 0.0);
    assert!(remote(&tallyd, "highest_sent_timestamp_seconds") > 1.7e9);
}

#[test]
fn an_outage_of_30_seconds_loses_nothing_that_fitted_the_queue() {
    let Some(mut prometheus) = start_prometheus() else {
        return;
    };
    let url = format!("http://{}/api/v1/write", prometheus.web());
    let tallyd =
        InProcess::with_config(&remote_write_config(&url, 1.0, "max_backoff_seconds = 1\n"));
    tallyd.send(&["rw_outage:1|g"]);
    prometheus.wait_for_value(r#"rw_outage{site="rwtest"}"#, PROMETHEUS_TIMEOUT, |v| {
        v == 1.0
    });

    prometheus.stop();
    let outage_start = Instant::now();
    // A value per second while the receiver is down.
    for value in 2..=30 {
        tallyd.send(&[format!("rw_outage:{value}|g")]);
        std::thread::sleep(Duration::from_secs(1));
    }
    let outage = outage_start.elapsed();
    prometheus.restart();
    prometheus.wait_for_value(r#"rw_outage{site="rwtest"}"#, PROMETHEUS_TIMEOUT, |v| {
        v == 30.0
    });
    // Wait for the queue to drain, then read every sample of the last two minutes.
    let deadline = Instant::now() + PROMETHEUS_TIMEOUT;
    while remote(&tallyd, "queue_length") > 0.0 {
        assert!(Instant::now() < deadline, "the queue never drained");
        std::thread::sleep(Duration::from_millis(200));
    }
    let samples = prometheus.samples(r#"rw_outage{site="rwtest"}"#, "2m");
    let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
    for value in 1..=30 {
        assert!(
            values.contains(&f64::from(value)),
            "value {value} was lost: {samples:?}"
        );
    }
    // One sample per snapshot (1 s) with no hole: the largest gap is the tick's jitter.
    let gaps: Vec<i64> = samples.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let widest = gaps.iter().copied().max().unwrap_or(0);
    assert!(widest < 1800, "a hole of {widest} ms in {samples:?}");
    assert!(
        samples.len() as f64 >= outage.as_secs_f64() - 1.0,
        "{} samples across an outage of {outage:?}",
        samples.len()
    );
    assert!(remote(&tallyd, "samples_retried_total") > 0.0);
    for reason in ["queue_full", "rejected", "shutdown"] {
        let series = format!(
            r#"tallyd_remote_write_samples_dropped_total{{remote="test",reason="{reason}"}}"#
        );
        assert_eq!(self_metric(&tallyd, &series), 0.0, "{series}");
    }
}

/// One request the test receiver answered.
#[derive(Clone)]
struct Got {
    at: Instant,
    wall: SystemTime,
    /// Bytes of the (compressed) body.
    bytes: usize,
    /// The body read as 1.0 (a 2.0 body reads as empty; not read when the receiver reads 2.0).
    request: WriteRequest,
    /// The body read as 2.0, when it was sent as 2.0.
    v2: Option<v2::Request>,
    /// Sent with the 2.0 `Content-Type`.
    sent_v2: bool,
    authorization: Option<String>,
    status: u16,
}

/// What the test receiver saw.
#[derive(Default)]
struct Seen {
    requests: Vec<Got>,
    /// TLS handshakes that failed.
    tls_failures: usize,
}

/// Which messages the test receiver reads.
#[derive(Clone, Copy, Default, PartialEq)]
enum Speaks {
    /// 1.0, reading every body as 1.0 whatever its `Content-Type`, as Prometheus 2.42 does: a
    /// 2.0 body reads as an empty request and is answered as any other.
    #[default]
    V1Lax,
    /// 1.0, answering 415 to the 2.0 `Content-Type`.
    V1Strict,
    /// 2.0 (and 1.0), with the written-count headers in the answers to 2.0.
    V2,
}

/// What the test receiver is: the messages it reads, and its TLS certificate if any.
#[derive(Default)]
struct Setup {
    speaks: Speaks,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// A remote-write receiver on a loopback port, answering request number `n` (from 0) with
/// `answer(n)`: a status and an optional `Retry-After`.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    _runtime: tokio::runtime::Runtime,
}

impl Receiver {
    fn start(
        answer: impl Fn(usize) -> (u16, Option<&'static str>) + Send + Sync + 'static,
    ) -> Receiver {
        Receiver::with(Setup::default(), answer)
    }

    fn with(
        setup: Setup,
        answer: impl Fn(usize) -> (u16, Option<&'static str>) + Send + Sync + 'static,
    ) -> Receiver {
        let Setup { speaks, tls } = setup;
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let answer = Arc::new(answer);
        let shared = Arc::clone(&seen);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = Arc::clone(&shared);
                let answer = Arc::clone(&answer);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let failures = Arc::clone(&seen);
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let seen = Arc::clone(&seen);
                        let answer = Arc::clone(&answer);
                        async move {
                            let headers = request.headers().clone();
                            let body = request.into_body().collect().await?.to_bytes();
                            assert_eq!(headers["content-encoding"], "snappy");
                            let sent_v2 = headers["content-type"] == v2::CONTENT_TYPE;
                            let (content_type, version) = if sent_v2 {
                                (v2::CONTENT_TYPE, "2.0.0")
                            } else {
                                ("application/x-protobuf", "0.1.0")
                            };
                            assert_eq!(headers["content-type"], content_type);
                            assert_eq!(headers["x-prometheus-remote-write-version"], version);
                            let decoded = if sent_v2 && speaks == Speaks::V2 {
                                WriteRequest::default()
                            } else {
                                wire::decode(&body).expect("a valid remote-write body")
                            };
                            // Also when the receiver under test does not read 2.0: for the
                            // test to compare with what is resent as 1.0.
                            let decoded_v2 =
                                sent_v2.then(|| v2::decode(&body).expect("a valid 2.0 body"));
                            let mut seen = seen.lock().unwrap();
                            let (status, retry_after) = if sent_v2 && speaks == Speaks::V1Strict {
                                (415, None)
                            } else {
                                answer(seen.requests.len())
                            };
                            let written: Option<usize> = decoded_v2
                                .as_ref()
                                .filter(|_| speaks == Speaks::V2)
                                .map(|r| r.timeseries.iter().map(|t| t.samples.len()).sum());
                            seen.requests.push(Got {
                                at: Instant::now(),
                                wall: SystemTime::now(),
                                bytes: body.len(),
                                request: decoded,
                                v2: decoded_v2,
                                sent_v2,
                                authorization: headers
                                    .get("authorization")
                                    .map(|v| v.to_str().unwrap().to_owned()),
                                status,
                            });
                            let mut response = Response::builder().status(status);
                            if let Some(seconds) = retry_after {
                                response = response.header("Retry-After", seconds);
                            }
                            if let Some(samples) = written {
                                let samples = if status < 300 { samples } else { 0 };
                                response = response
                                    .header(v2::WRITTEN_HEADERS[0], samples)
                                    .header(v2::WRITTEN_HEADERS[1], 0)
                                    .header(v2::WRITTEN_HEADERS[2], 0);
                            }
                            Ok::<_, hyper::Error>(
                                response
                                    .body(Full::new(Bytes::from_static(b"test says so")))
                                    .unwrap(),
                            )
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match acceptor {
                        None => {
                            let io = hyper_util::rt::TokioIo::new(stream);
                            http.serve_connection(io, service).await
                        }
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => {
                                let io = hyper_util::rt::TokioIo::new(tls);
                                http.serve_connection(io, service).await
                            }
                            Err(_) => {
                                failures.lock().unwrap().tls_failures += 1;
                                Ok(())
                            }
                        },
                    };
                });
            }
        });
        Receiver {
            addr,
            seen,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    fn https_url(&self) -> String {
        format!("https://{}/api/v1/write", self.addr)
    }

    fn tls_failures(&self) -> usize {
        self.seen.lock().unwrap().tls_failures
    }

    fn requests(&self) -> Vec<Got> {
        self.seen.lock().unwrap().requests.clone()
    }

    /// Waits until `done` holds for the requests seen.
    fn wait_until(&self, what: &str, done: impl Fn(&[Got]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if done(&self.requests()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never: {what}; saw {} requests",
                self.requests().len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn sample_count(request: &WriteRequest) -> usize {
    request.timeseries.iter().map(|t| t.samples.len()).sum()
}

/// `(series name, timestamp)` of every sample of a request.
fn sample_ids(request: &WriteRequest) -> Vec<(String, i64)> {
    request
        .timeseries
        .iter()
        .flat_map(|t| {
            let name = t
                .labels
                .iter()
                .find(|l| l.name == "__name__")
                .unwrap()
                .value
                .clone();
            t.samples.iter().map(move |s| (name.clone(), s.timestamp))
        })
        .collect()
}

/// Asserts that no (series, timestamp) came twice (nothing refused was sent again); returns
/// how many samples came.
fn each_sample_once(requests: &[Got]) -> usize {
    let mut ids: Vec<(String, i64)> = requests
        .iter()
        .flat_map(|g| sample_ids(&g.request))
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "a refused sample was sent again");
    all
}

#[test]
fn a_receiver_answering_400_does_not_wedge_the_queue() {
    let receiver = Receiver::start(|n| if n < 3 { (400, None) } else { (204, None) });
    let tallyd = InProcess::with_config(&remote_write_config(&receiver.url(), 0.2, "shards = 1\n"));
    tallyd.send(&["rw_refused:1|g"]);
    receiver.wait_until("two requests accepted after three refused", |r| {
        r.iter().filter(|got| got.status == 204).count() >= 2
    });
    let requests = receiver.requests();
    let refused: usize = requests[..3].iter().map(|g| sample_count(&g.request)).sum();
    // Nothing refused was sent again: every (series, timestamp) arrived once.
    each_sample_once(&requests);
    let failed = remote(&tallyd, "samples_failed_total");
    assert_eq!(failed, refused as f64);
    assert_eq!(
        self_metric(
            &tallyd,
            r#"tallyd_remote_write_samples_dropped_total{remote="test",reason="rejected"}"#
        ),
        failed
    );
    assert_eq!(remote(&tallyd, "samples_retried_total"), 0.0);
    assert!(remote(&tallyd, "samples_total") >= 2.0);
}

#[test]
fn a_429_with_retry_after_and_a_503_are_retried_with_the_same_samples() {
    let receiver = Receiver::start(|n| match n {
        0 => (429, Some("1")),
        1 => (503, None),
        _ => (200, None),
    });
    let tallyd = InProcess::with_config(&remote_write_config(
        &receiver.url(),
        0.2,
        "shards = 1\nmin_backoff_seconds = 0.05\n",
    ));
    tallyd.send(&["rw_retried:1|g"]);
    receiver.wait_until("the batch accepted on its third try", |r| r.len() >= 3);
    let requests = receiver.requests();
    let first = &requests[0].request;
    assert_eq!(
        &requests[1].request, first,
        "the 429'd batch was not resent as it was"
    );
    assert_eq!(
        &requests[2].request, first,
        "the 503'd batch was not resent as it was"
    );
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 honoured after {waited:?}"
    );
    let retried = remote(&tallyd, "samples_retried_total");
    assert_eq!(retried, 2.0 * sample_count(first) as f64);
    assert_eq!(remote(&tallyd, "samples_failed_total"), 0.0);
    assert!(remote(&tallyd, "samples_total") >= sample_count(first) as f64);
}

#[test]
fn an_expired_series_is_marked_stale_once() {
    let receiver = Receiver::start(|_| (204, None));
    let config = remote_write_config(&receiver.url(), 0.2, "");
    let tallyd = InProcess::with_config(&format!("[limits]\nseries_ttl_seconds = 1\n\n{config}"));
    tallyd.send(&["rw_gone:5|g"]);
    let values_of_gone = |requests: &[Got]| -> Vec<f64> {
        requests
            .iter()
            .flat_map(|g| g.request.timeseries.iter())
            .filter(|t| {
                t.labels
                    .iter()
                    .any(|l| l.name == "__name__" && l.value == "rw_gone")
            })
            .flat_map(|t| t.samples.iter().map(|s| s.value))
            .collect()
    };
    receiver.wait_until("rw_gone marked stale", |r| {
        values_of_gone(r).iter().any(|v| wire::is_stale_marker(*v))
    });
    // A few more snapshots: no second marker, and no value after it.
    std::thread::sleep(Duration::from_secs(1));
    let values = values_of_gone(&receiver.requests());
    let stale: Vec<usize> = (0..values.len())
        .filter(|&i| wire::is_stale_marker(values[i]))
        .collect();
    assert_eq!(stale, [values.len() - 1], "{values:?}");
    assert!(
        values[..values.len() - 1].iter().all(|v| *v == 5.0),
        "{values:?}"
    );
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: libc::pid_t) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The timestamps of the samples of a request, whichever message it carried.
fn stamps(got: &Got) -> Vec<i64> {
    match &got.v2 {
        Some(request) => request
            .timeseries
            .iter()
            .flat_map(|t| &t.samples)
            .map(|s| s.timestamp)
            .collect(),
        None => got
            .request
            .timeseries
            .iter()
            .flat_map(|t| &t.samples)
            .map(|s| s.timestamp)
            .collect(),
    }
}

/// The issue's targets for 1.0.
/// `cargo test --release --test remote_write -- --ignored --nocapture --test-threads 1 cost`
#[test]
#[ignore = "a measurement: about 90 s"]
fn cost_of_remote_write_for_100k_series() {
    cost_of_remote_write("v1", Speaks::V1Lax);
}

/// The issue's targets for 2.0 (a receiver that reads it, so no fall back).
#[test]
#[ignore = "a measurement: about 90 s"]
fn cost_of_remote_write_2_0_for_100k_series() {
    cost_of_remote_write("v2", Speaks::V2);
}

/// The issue's targets, measured on the built binary: 100,000 gauges, remote-write every 5 s
/// to the test receiver. Prints the CPU per snapshot and as a share of a core at the 15 s
/// default (against the same daemon before remote-write was switched on by a reload), bytes on
/// the wire per sample, and the latest arrival of a snapshot's samples after its tick.
fn cost_of_remote_write(message: &str, speaks: Speaks) {
    const SERIES: usize = 100_000;
    const INTERVAL: f64 = 5.0;
    let receiver = Receiver::with(
        Setup {
            speaks,
            ..Setup::default()
        },
        |_| (204, None),
    );
    let daemon =
        Daemon::with_config("[limits]\nmax_series = 200000\nmax_series_per_metric = 200000\n");
    let lines: Vec<String> = (0..SERIES)
        .map(|i| format!("rwb_gauge:{i}|g|#i:{i}"))
        .collect();
    for chunk in lines.chunks(50) {
        daemon.send(&[chunk.join("\n")]);
        std::thread::sleep(Duration::from_micros(200));
    }
    daemon.wait_for(&[(r#"tallyd_series{type="gauge"}"#, SERIES as f64)]);
    let idle_from = cpu_seconds(daemon.pid());
    std::thread::sleep(Duration::from_secs(15));
    let idle = (cpu_seconds(daemon.pid()) - idle_from) / 15.0;

    let config = format!(
        "[limits]\nmax_series = 200000\nmax_series_per_metric = 200000\n\n{}",
        remote_write_config(
            &receiver.url(),
            INTERVAL,
            &format!("protobuf_message = \"{message}\"\n")
        )
    );
    daemon.config_file().write(&config);
    daemon.signal(libc::SIGHUP);
    receiver.wait_until("the first snapshot", |r| {
        r.iter().map(|g| stamps(g).len()).sum::<usize>() >= SERIES
    });
    let from = cpu_seconds(daemon.pid());
    let seen_before = receiver.requests().len();
    let snapshots = 6;
    std::thread::sleep(Duration::from_secs_f64(INTERVAL * snapshots as f64));
    let busy = cpu_seconds(daemon.pid()) - from;
    let per_snapshot = (busy - idle * INTERVAL * snapshots as f64) / snapshots as f64;

    let requests = receiver.requests();
    let measured = &requests[seen_before..];
    let samples: usize = measured.iter().map(|g| stamps(g).len()).sum();
    assert!(measured.iter().all(|g| g.sent_v2 == (message == "v2")));
    let bytes: usize = measured.iter().map(|g| g.bytes).sum();
    // Latest arrival of each snapshot's samples after the snapshot's timestamp.
    let mut latest: std::collections::BTreeMap<i64, f64> = Default::default();
    for got in &requests {
        let arrived = got.wall.duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0;
        for ts in stamps(got) {
            let lag = arrived - ts as f64;
            let slot = latest.entry(ts).or_insert(lag);
            *slot = slot.max(lag);
        }
    }
    // The first snapshot also builds every series' label set; the others only look them up.
    let lags: Vec<f64> = latest.values().copied().collect();
    let first_lag = lags[0];
    let worst_lag = lags[1..].iter().copied().fold(0.0, f64::max);
    println!(
        "remote-write {message}, {SERIES} series: {per_snapshot:.3} CPU-s per snapshot (idle {idle:.4} CPU-s/s \
         subtracted) = {:.2} % of a core at a 15 s interval; {:.2} bytes/sample on the wire \
         ({samples} samples, {bytes} bytes, {} requests); latest arrival after a tick {worst_lag:.0} ms \
         over the {} snapshots after the first ({first_lag:.0} ms)",
        per_snapshot / 15.0 * 100.0,
        bytes as f64 / samples as f64,
        measured.len(),
        lags.len() - 1
    );
    assert!(samples >= SERIES * (snapshots - 1), "{samples} samples");
}

#[test]
fn a_reload_moves_the_endpoint_and_a_bad_table_is_refused() {
    use tallyd::config::Settings;
    let (first, second) = (
        Receiver::start(|_| (204, None)),
        Receiver::start(|_| (204, None)),
    );
    let with = |url: &str, extra: &str| {
        format!(
            "[http]\nenable_lifecycle = true\n\n{}",
            remote_write_config(url, 0.2, extra)
        )
    };
    let text = Arc::new(Mutex::new(with(&first.url(), "")));
    let reread = Arc::clone(&text);
    let tallyd = InProcess::with_control(&with(&first.url(), ""), move |control| {
        control.reload = Box::new(move || {
            Settings::parse(&reread.lock().unwrap(), std::path::Path::new("reload.toml"))
        });
    });
    tallyd.send(&["rw_moved:1|g"]);
    first.wait_until("samples at the first receiver", |r| !r.is_empty());

    *text.lock().unwrap() = with(&second.url(), "");
    let reloaded = common::http_request(tallyd.http, "POST", "/-/reload", &[]);
    assert_eq!(reloaded.status, 200, "{}", reloaded.text());
    second.wait_until("samples at the second receiver", |r| r.len() >= 2);
    let settled = first.requests().len();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        first.requests().len(),
        settled,
        "the old endpoint still sends"
    );

    *text.lock().unwrap() = with(&second.url(), "tls_ca_file = \"/nonexistent/ca.pem\"\n");
    let refused = common::http_request(tallyd.http, "POST", "/-/reload", &[]);
    assert_eq!(refused.status, 500);
    assert!(refused.text().contains("tls_ca_file"), "{}", refused.text());
    let before = second.requests().len();
    second.wait_until("the running endpoint still sending", |r| {
        r.len() > before + 1
    });
}

/// `(name, value)` pairs, owned, for comparing label sets.
fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

/// One series of a 2.0 request as the receiver reads it: labels, values, and metadata type,
/// help and unit as strings.
type ReadV2 = (Vec<(String, String)>, Vec<f64>, (i32, String, String));

fn read_v2(request: &v2::Request) -> Vec<ReadV2> {
    assert_eq!(request.symbols[0], "", "the symbols table starts with \"\"");
    let mut unique = request.symbols.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), request.symbols.len(), "a symbol twice");
    request
        .timeseries
        .iter()
        .map(|t| {
            let labels = request.labels(t).unwrap();
            let meta = t.metadata.expect("every series carries metadata");
            let text = |r: u32| request.symbol(r).unwrap().to_owned();
            let values = t.samples.iter().map(|s| s.value).collect();
            (
                labels,
                values,
                (meta.r#type, text(meta.help_ref), text(meta.unit_ref)),
            )
        })
        .collect()
}

#[test]
fn a_2_0_receiver_gets_symbols_labels_samples_and_metadata_exactly() {
    let receiver = Receiver::with(
        Setup {
            speaks: Speaks::V2,
            ..Setup::default()
        },
        |_| (204, None),
    );
    let config = format!(
        "[[metric]]\nname = \"rw2_wait_seconds\"\ntype = \"histogram\"\n\
         help = \"Time waited.\"\nunit = \"seconds\"\nbuckets = [0.5, 2.0]\n\n{}",
        remote_write_config(
            &receiver.url(),
            0.2,
            "shards = 1\nprotobuf_message = \"v2\"\n"
        )
    );
    let tallyd = InProcess::with_config(&config);
    tallyd.send(&["rw2_jobs:3|c|#model:a\nrw2_temp:-2.5|g\nrw2_wait_seconds:1|h"]);
    // The first request that holds all three families.
    let holds_all = |got: &Got| {
        got.v2.as_ref().is_some_and(|r| {
            let names: Vec<String> = read_v2(r)
                .iter()
                .flat_map(|(labels, _, _)| labels.iter())
                .filter(|(n, _)| n == "__name__")
                .map(|(_, v)| v.clone())
                .collect();
            ["rw2_jobs_total", "rw2_temp", "rw2_wait_seconds_count"]
                .iter()
                .all(|n| names.iter().any(|got| got == n))
        })
    };
    receiver.wait_until("a 2.0 request with every family", |r| {
        r.iter().any(holds_all)
    });
    let requests = receiver.requests();
    assert!(requests.iter().all(|g| g.sent_v2), "a 1.0 request was sent");
    let got = requests.iter().find(|g| holds_all(g)).unwrap();
    let series = read_v2(got.v2.as_ref().unwrap());
    let find = |labels: &[(&str, &str)]| {
        series
            .iter()
            .find(|(l, _, _)| *l == owned(labels))
            .unwrap_or_else(|| panic!("no series {labels:?} in {series:?}"))
    };
    let (counter, gauge, histogram) = (1, 2, 3);
    let none = String::new;
    assert_eq!(
        find(&[
            ("__name__", "rw2_jobs_total"),
            ("model", "a"),
            ("site", "rwtest")
        ])
        .1,
        [3.0]
    );
    assert_eq!(
        find(&[
            ("__name__", "rw2_jobs_total"),
            ("model", "a"),
            ("site", "rwtest")
        ])
        .2,
        (counter, none(), none())
    );
    let temp = find(&[("__name__", "rw2_temp"), ("site", "rwtest")]);
    assert_eq!((&temp.1, &temp.2), (&vec![-2.5], &(gauge, none(), none())));
    let meta = (histogram, "Time waited.".to_owned(), "seconds".to_owned());
    for (le, count) in [("0.5", 0.0), ("2", 1.0), ("+Inf", 1.0)] {
        let bucket = find(&[
            ("__name__", "rw2_wait_seconds_bucket"),
            ("le", le),
            ("site", "rwtest"),
        ]);
        assert_eq!((&bucket.1, &bucket.2), (&vec![count], &meta), "le={le}");
    }
    for (suffix, value) in [("_sum", 1.0), ("_count", 1.0)] {
        let name = format!("rw2_wait_seconds{suffix}");
        let one = find(&[("__name__", name.as_str()), ("site", "rwtest")]);
        assert_eq!((&one.1, &one.2), (&vec![value], &meta), "{name}");
    }
    assert_eq!(remote(&tallyd, "protocol_fallbacks_total"), 0.0);
    assert_eq!(remote(&tallyd, "samples_failed_total"), 0.0);
    let written: usize = requests.iter().map(|g| stamps(g).len()).sum();
    wait_for_remote(&tallyd, "samples_total", written as f64);
}

/// Waits until `tallyd_remote_write_<name>{remote="test"}` reaches `least`: the receiver sees
/// a request before tallyd has read its answer.
fn wait_for_remote(tallyd: &InProcess, name: &str, least: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while remote(tallyd, name) < least {
        assert!(Instant::now() < deadline, "{name} stays below {least}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(series name, timestamp)` of every sample of a 2.0 request.
fn sample_ids_v2(request: &v2::Request) -> Vec<(String, i64)> {
    request
        .timeseries
        .iter()
        .flat_map(|t| {
            let labels = request.labels(t).unwrap();
            let name = labels.into_iter().find(|(n, _)| n == "__name__").unwrap().1;
            t.samples.iter().map(move |s| (name.clone(), s.timestamp))
        })
        .collect()
}

/// A 2.0 endpoint in front of a 1.0 receiver (`speaks`): the first request, 2.0, is not
/// written; the endpoint falls back once, resends that very batch as 1.0, and sends 1.0 from
/// then on, losing nothing.
fn falls_back_to_1_0(speaks: Speaks, message: &str, first_status: u16) {
    // A 2.0 reader to see what the 2.0 request held, answering like the receiver under test.
    let receiver = Receiver::with(
        Setup {
            speaks,
            ..Setup::default()
        },
        |_| (204, None),
    );
    let tallyd = InProcess::with_config(&remote_write_config(
        &receiver.url(),
        0.2,
        &format!("shards = 1\nprotobuf_message = \"{message}\"\n"),
    ));
    tallyd.send(&["rw_fallback:7|g"]);
    receiver.wait_until("1.0 requests after the fall back", |r| {
        r.iter().filter(|g| !g.sent_v2).count() >= 3
    });
    let requests = receiver.requests();
    assert!(requests[0].sent_v2, "the first request was 1.0");
    assert_eq!(requests[0].status, first_status);
    assert!(
        requests[1..].iter().all(|g| !g.sent_v2),
        "2.0 again after the fall back"
    );
    // The batch of the 2.0 request came again, whole, as the first 1.0 request.
    let resent = sample_ids(&requests[1].request);
    assert_eq!(resent, sample_ids_v2(requests[0].v2.as_ref().unwrap()));
    assert_eq!(resent[0].0, "rw_fallback");
    let first_stamp = resent[0].1;
    assert!(
        requests[1..]
            .iter()
            .flat_map(|g| sample_ids(&g.request))
            .all(|(_, t)| t >= first_stamp),
        "the resent batch is not the oldest"
    );
    let values: Vec<f64> = requests[1]
        .request
        .timeseries
        .iter()
        .flat_map(|t| t.samples.iter().map(|s| s.value))
        .collect();
    assert!(values.iter().all(|v| *v == 7.0), "{values:?}");
    assert_eq!(remote(&tallyd, "protocol_fallbacks_total"), 1.0);
    assert_eq!(remote(&tallyd, "samples_failed_total"), 0.0);
    assert_eq!(remote(&tallyd, "samples_retried_total"), 0.0);
    let delivered: usize = requests[1..].iter().map(|g| sample_count(&g.request)).sum();
    wait_for_remote(&tallyd, "samples_total", delivered as f64);
}

#[test]
fn a_415_to_2_0_makes_the_endpoint_resend_the_batch_as_1_0() {
    falls_back_to_1_0(Speaks::V1Strict, "v2", 415);
}

#[test]
fn a_bare_204_to_2_0_is_not_taken_as_written_and_the_batch_goes_again_as_1_0() {
    falls_back_to_1_0(Speaks::V1Lax, "auto", 204);
}

#[test]
fn auto_takes_an_early_400_to_2_0_as_a_1_0_receiver() {
    // The answer the closure gives to request 0 (the 2.0 one), then 204s.
    let receiver = Receiver::start(|n| if n == 0 { (400, None) } else { (204, None) });
    let tallyd = InProcess::with_config(&remote_write_config(
        &receiver.url(),
        0.2,
        "shards = 1\nprotobuf_message = \"auto\"\n",
    ));
    tallyd.send(&["rw_early:1|g"]);
    receiver.wait_until("1.0 accepted after the 400", |r| {
        r.iter().filter(|g| !g.sent_v2 && g.status == 204).count() >= 1
    });
    let requests = receiver.requests();
    assert!(requests[0].sent_v2 && requests[0].status == 400);
    assert_eq!(sample_ids(&requests[1].request)[0].0, "rw_early");
    assert_eq!(remote(&tallyd, "protocol_fallbacks_total"), 1.0);
    assert_eq!(remote(&tallyd, "samples_failed_total"), 0.0);
}

#[test]
fn prometheus_2_42_gets_the_exact_values_from_v2_and_auto_endpoints_through_the_fall_back() {
    let Some(prometheus) = start_prometheus() else {
        return;
    };
    let url = format!("http://{}/api/v1/write", prometheus.web());
    let table = |message: &str| {
        format!(
            "[[remote_write]]\nurl = \"{url}\"\nname = \"{message}\"\ninterval_seconds = 0.5\n\
             protobuf_message = \"{message}\"\nexternal_labels = {{ site = \"{message}\" }}\n"
        )
    };
    let tallyd = InProcess::with_config(&format!("{}\n{}", table("v2"), table("auto")));
    tallyd.send(&["rw2_jobs:3|c|#model:a\nrw2_jobs:4.5|c|#model:a\nrw2_temp:21.5|g"]);
    for site in ["v2", "auto"] {
        let exactly = |promql: String, expected: f64| {
            let got = prometheus.wait_for_value(&promql, PROMETHEUS_TIMEOUT, |v| v == expected);
            assert_eq!(got, expected, "{promql}");
        };
        exactly(format!(r#"rw2_jobs_total{{model="a",site="{site}"}}"#), 7.5);
        exactly(format!(r#"rw2_temp{{site="{site}"}}"#), 21.5);
        let fallbacks =
            format!(r#"tallyd_remote_write_protocol_fallbacks_total{{remote="{site}"}}"#);
        assert_eq!(self_metric(&tallyd, &fallbacks), 1.0, "{fallbacks}");
        let failed = format!(r#"tallyd_remote_write_samples_failed_total{{remote="{site}"}}"#);
        assert_eq!(self_metric(&tallyd, &failed), 0.0, "{failed}");
    }
    // A value that moves arrives moved, over 1.0 now.
    tallyd.send(&["rw2_temp:22|g"]);
    for site in ["v2", "auto"] {
        let promql = format!(r#"rw2_temp{{site="{site}"}}"#);
        let got = prometheus.wait_for_value(&promql, PROMETHEUS_TIMEOUT, |v| v == 22.0);
        assert_eq!(got, 22.0, "{promql}");
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the `openssl` command line:
/// the CA's PEM file and the server's rustls configuration.
fn test_ca(dir: &std::path::Path) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tallyd test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    // ring, as tallyd's client uses (see src/remote_write/send.rs).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    (dir.join("ca.pem"), Arc::new(config))
}

/// A receiver over HTTPS answering 204, its certificate signed by a test CA: the directory the
/// CA's PEM file is in, the file, and the receiver; None without `openssl`.
fn https_receiver() -> Option<(tempfile::TempDir, std::path::PathBuf, Receiver)> {
    if !require(on_path("openssl"), "openssl (Debian package openssl)") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = test_ca(dir.path());
    let receiver = Receiver::with(
        Setup {
            tls: Some(tls),
            ..Setup::default()
        },
        |_| (204, None),
    );
    Some((dir, ca, receiver))
}

#[test]
fn https_with_the_ca_file_delivers_each_credential_as_the_exact_authorization_header() {
    let Some((dir, ca, receiver)) = https_receiver() else {
        return;
    };
    let secret = |name: &str, text: &str| {
        let path = dir.path().join(name);
        // A trailing newline, as editors write: not part of the secret.
        std::fs::write(&path, format!("{text}\n")).unwrap();
        path.display().to_string()
    };
    let password_file = secret("password", "s3cret:with colon");
    let token_file = secret("token", "tok-from-file");
    let tables = [
        (
            "basic",
            r#"basic_auth = { username = "tenant", password = "pa ss" }"#.to_owned(),
        ),
        (
            "basic_file",
            format!(
                r#"basic_auth = {{ username = "tenant2", password_file = "{password_file}" }}"#
            ),
        ),
        ("bearer", r#"bearer_token = "tok-inline""#.to_owned()),
        (
            "bearer_file",
            format!(r#"bearer_token_file = "{token_file}""#),
        ),
    ];
    let config: String = tables
        .iter()
        .map(|(name, auth)| {
            format!(
                "[[remote_write]]\nurl = \"{}\"\nname = \"{name}\"\ninterval_seconds = 0.2\n\
                 tls_ca_file = \"{}\"\nexternal_labels = {{ table = \"{name}\" }}\n{auth}\n\n",
                receiver.https_url(),
                ca.display()
            )
        })
        .collect();
    let tallyd = InProcess::with_config(&config);
    tallyd.send(&["rw_tls:1|g"]);
    let table_of = |got: &Got| {
        got.request.timeseries.first().and_then(|t| {
            t.labels
                .iter()
                .find(|l| l.name == "table")
                .map(|l| l.value.clone())
        })
    };
    receiver.wait_until("requests from every table", |r| {
        tables
            .iter()
            .all(|(name, _)| r.iter().any(|g| table_of(g).as_deref() == Some(*name)))
    });
    let basic = |user: &str, password: &str| {
        use base64::Engine;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {pair}")
    };
    let expected = [
        ("basic", basic("tenant", "pa ss")),
        ("basic_file", basic("tenant2", "s3cret:with colon")),
        ("bearer", "Bearer tok-inline".to_owned()),
        ("bearer_file", "Bearer tok-from-file".to_owned()),
    ];
    for got in receiver.requests() {
        let table = table_of(&got).expect("a request with a series");
        let want = &expected.iter().find(|(t, _)| *t == table).unwrap().1;
        assert_eq!(got.authorization.as_deref(), Some(want.as_str()), "{table}");
    }
    assert_eq!(receiver.tls_failures(), 0);
    for (name, _) in &tables {
        let delivered = format!(r#"tallyd_remote_write_samples_total{{remote="{name}"}}"#);
        assert!(self_metric(&tallyd, &delivered) > 0.0, "{delivered}");
    }
}

#[test]
fn https_without_the_ca_file_is_a_certificate_error_retried_never_a_panic() {
    let Some((_dir, _, receiver)) = https_receiver() else {
        return;
    };
    // The error text, from the client itself: the operator reads it in the log.
    let options = toml::from_str::<tallyd::remote_write::config::RemoteWriteConfig>(&format!(
        "url = \"{}\"\ntimeout_seconds = 5\n",
        receiver.https_url()
    ))
    .unwrap()
    .build()
    .unwrap();
    let client = tallyd::remote_write::send::Client::new(&options)
        .expect("the system's CA certificates load");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (outcome, _) = runtime.block_on(client.send(
        Bytes::from(wire::encode(&WriteRequest::default(), &mut Vec::new())),
        tallyd::remote_write::send::Protocol::V1,
    ));
    let tallyd::remote_write::send::Outcome::Retry { why, .. } = outcome else {
        panic!("not retried: {outcome:?}");
    };
    assert!(
        why.contains("certificate") && why.contains("UnknownIssuer"),
        "{why}"
    );

    let tallyd = InProcess::with_config(&remote_write_config(
        &receiver.https_url(),
        0.2,
        "max_backoff_seconds = 0.2\n",
    ));
    tallyd.send(&["rw_untrusted:1|g"]);
    wait_for_remote(&tallyd, "samples_retried_total", 3.0);
    assert!(receiver.requests().is_empty(), "a request got through");
    assert!(receiver.tls_failures() >= 2);
    assert_eq!(remote(&tallyd, "samples_total"), 0.0);
    assert_eq!(remote(&tallyd, "samples_failed_total"), 0.0);
    // Still serving, and still queueing what it cannot deliver.
    assert!(remote(&tallyd, "queue_length") > 0.0);
}

#[test]
fn a_wrong_credential_answered_401_is_dropped_and_counted_not_retried() {
    let receiver = Receiver::start(|_| (401, None));
    let tallyd = InProcess::with_config(&remote_write_config(
        &receiver.url(),
        0.2,
        "shards = 1\nbearer_token = \"wrong\"\n",
    ));
    tallyd.send(&["rw_denied:1|g"]);
    receiver.wait_until("five refused requests", |r| r.len() >= 5);
    std::thread::sleep(Duration::from_millis(300));
    let requests = receiver.requests();
    assert!(
        requests
            .iter()
            .all(|g| g.authorization.as_deref() == Some("Bearer wrong"))
    );
    let all = each_sample_once(&requests);
    // One scrape for both: refusals go on while the test reads.
    let scrape = tallyd.scrape();
    let read = |series: &str| value_of(&scrape, series).unwrap();
    assert_eq!(
        read(r#"tallyd_remote_write_samples_retried_total{remote="test"}"#),
        0.0
    );
    let failed = read(r#"tallyd_remote_write_samples_failed_total{remote="test"}"#);
    assert!(failed >= all as f64, "{failed} failed of {all} refused");
    let dropped = r#"tallyd_remote_write_samples_dropped_total{remote="test",reason="rejected"}"#;
    assert_eq!(read(dropped), failed);
    assert_eq!(
        read(r#"tallyd_remote_write_samples_total{remote="test"}"#),
        0.0
    );
}
