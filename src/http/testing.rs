//! Test support for the server's tests: a real server on a loopback port, raw HTTP/1.1
//! requests written by hand (so the tests see exactly what goes over the wire), and registries
//! to scrape.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{HttpOptions, HttpState, Lifecycle, serve, server};
use crate::registry::{Kind, Registry, RegistrySettings, SeriesKeyBuf, Update};
use crate::telemetry::Telemetry;

pub(super) const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

pub(super) struct TestServer {
    pub(super) addr: SocketAddr,
    pub(super) ready: Arc<AtomicBool>,
    stop: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl TestServer {
    pub(super) async fn start(options: HttpOptions) -> TestServer {
        Self::start_with(Registry::new(RegistrySettings::default()), options).await
    }

    pub(super) async fn start_with(registry: Registry, options: HttpOptions) -> TestServer {
        Self::launch(registry, options, None).await
    }

    /// A server whose lifecycle endpoints send to `daemon`.
    pub(super) async fn with_lifecycle(daemon: mpsc::Sender<Lifecycle>) -> TestServer {
        let registry = Registry::new(RegistrySettings::default());
        Self::launch(registry, HttpOptions::default(), Some(daemon)).await
    }

    async fn launch(
        registry: Registry,
        options: HttpOptions,
        lifecycle: Option<mpsc::Sender<Lifecycle>>,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Arc::new(AtomicBool::new(true));
        let render_threads = options.max_concurrent_scrapes;
        let state = Arc::new(HttpState {
            registry: Arc::new(registry),
            telemetry: Arc::new(Telemetry::default()),
            ready: Arc::clone(&ready),
            options,
            exposition: Default::default(),
            lifecycle,
            api: None,
            renderers: super::Renderers::start(render_threads).unwrap(),
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, state, stop.clone()));
        TestServer {
            addr,
            ready,
            stop,
            task,
        }
    }

    /// A server of `router` alone (the API tests build their own routes).
    pub(super) async fn with_router(router: Router) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            let stats = Arc::default();
            server::run(listener, &HttpOptions::default(), router, stats, shutdown).await
        });
        TestServer {
            addr,
            ready: Arc::new(AtomicBool::new(true)),
            stop,
            task,
        }
    }

    /// Sends `GET path` with extra header lines and `Connection: close`; reads the answer.
    pub(super) async fn get(&self, path: &str, headers: &str) -> RawResponse {
        self.send(&format!(
            "GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n"
        ))
        .await
    }

    pub(super) async fn send(&self, request: &str) -> RawResponse {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        RawResponse::parse(&read_to_close(&mut stream).await)
    }

    /// Stops the server; returns how long `serve` took to return.
    pub(super) async fn shut_down(mut self) -> Duration {
        let started = Instant::now();
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("serve returns")
            .unwrap()
            .unwrap();
        started.elapsed()
    }
}

pub(super) async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the server closes the connection")
        .unwrap();
    bytes
}

#[derive(Debug)]
pub(super) struct RawResponse {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
}

impl RawResponse {
    pub(super) fn parse(bytes: &[u8]) -> RawResponse {
        let end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head");
        let head = std::str::from_utf8(&bytes[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        RawResponse {
            status,
            headers,
            body: bytes[end + 4..].to_vec(),
        }
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

pub(super) fn registry_with_gauges(count: usize, label_len: usize) -> Registry {
    let registry = Registry::new(RegistrySettings::default());
    let padding = "x".repeat(label_len);
    let mut key = SeriesKeyBuf::default();
    for i in 0..count {
        key.start(Kind::Gauge).push_str("temperature");
        key.end_family();
        key.push_label(|out| out.push_str("sensor"), &format!("{padding}{i}"));
        key.finish();
        let series = registry.resolve(&key).unwrap();
        series
            .apply(Update::Set(i as f64), registry.settings())
            .unwrap();
    }
    registry
}

/// The lines that don't change from one scrape to the next.
pub(super) fn stable_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with("tallyd_scrape") && !l.starts_with("process_"))
        .collect()
}
