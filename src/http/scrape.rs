//! `GET /metrics` (and `HEAD`): negotiates the format and the compression, waits for one of
//! `max_concurrent_scrapes` render slots, renders on a [`Renderers`] thread (never on the
//! reactor) and hands the rendered buffer to the response as it is.

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, mpsc};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::get;
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use super::{HttpOptions, HttpState, plain, read_only};
use crate::exposition;

/// The `/metrics` route. Its render slots are made here, once per server: further scrapes wait
/// for a slot (inside their `request_timeout`).
pub(super) fn routes(options: &HttpOptions) -> Router<Arc<HttpState>> {
    let slots = Arc::new(Semaphore::new(options.max_concurrent_scrapes.max(1)));
    // The whole request rather than a `HeaderMap` extractor, which would copy the headers.
    let handler = move |State(state): State<Arc<HttpState>>, request: Request| {
        let slots = Arc::clone(&slots);
        async move { metrics(&state, slots, request.headers()).await }
    };
    Router::new().route("/metrics", get(handler).fallback(read_only))
}

async fn metrics(state: &HttpState, slots: Arc<Semaphore>, headers: &HeaderMap) -> Response {
    if let Some(hash) = &state.options.scrape_token_sha256
        && !bearer_matches(headers, hash)
    {
        let mut response = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tallyd\""),
        );
        return response;
    }
    let format = exposition::negotiate(header_list(headers, header::ACCEPT).as_deref());
    let compress = state.options.enable_gzip
        && exposition::gzip_allowed(header_list(headers, header::ACCEPT_ENCODING).as_deref());
    // The semaphore is never closed.
    let Ok(permit) = slots.acquire_owned().await else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "Shutting down\n");
    };
    let registry = Arc::clone(&state.registry);
    let telemetry = Arc::clone(&state.telemetry);
    let options = *state.exposition.read();
    let rendered = state.renderers.run(move || {
        // Held until the render ends, even if the client has gone meanwhile.
        let _permit = permit;
        let mut body = Vec::new();
        exposition::render(&registry, &telemetry, format, options, &mut body);
        if compress {
            exposition::gzip(&body)
        } else {
            body
        }
    });
    let Some(body) = rendered.await else {
        tracing::error!("rendering /metrics failed: the render panicked");
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "Rendering failed\n");
    };
    // `Bytes::from(Vec)` takes the buffer over: the body is never copied.
    let mut response = Response::new(Body::from(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if compress {
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

/// Whether the request's `Authorization: Bearer` token hashes to `hash` (`[http]
/// scrape_token_sha256`).
fn bearer_matches(headers: &HeaderMap, hash: &[u8; 32]) -> bool {
    matches!(
        super::api::Credentials::from_headers(headers),
        Ok(Some(super::api::Credentials::Bearer(token))) if crate::tokens::secret_matches(hash, &token)
    )
}

/// All values of a header, joined with commas (a list header may be split over several lines).
fn header_list(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    let mut joined: Option<String> = None;
    for value in headers.get_all(name) {
        let Ok(value) = value.to_str() else { continue };
        match &mut joined {
            Some(joined) => {
                joined.push(',');
                joined.push_str(value);
            }
            None => joined = Some(value.to_owned()),
        }
    }
    joined
}

/// A render, run under `catch_unwind`. What it returns delivers its output (`None` when it
/// panicked), and is called once the thread is back among the idle ones, so the scrape that
/// follows this one finds it there.
type Job = Box<dyn FnOnce() -> Box<dyn FnOnce() + Send> + Send>;

/// The threads `/metrics` renders on. They are started by the caller of [`Renderers::start`]
/// and take its priority: the daemon starts them from its main thread, so they keep the
/// process's while the async runtime's threads run lower ([`crate::priority`]). A scrape has a
/// deadline; an API client only waits.
///
/// A render goes to the thread that finished last: its allocator still holds the pages of a
/// body that size (handing renders round to four threads made each scrape of 200k series
/// 20-25 % slower, every body's pages touched afresh).
pub struct Renderers {
    shared: Arc<Shared>,
}

struct Shared {
    threads: parking_lot::Mutex<Threads>,
    /// Wakes a render waiting for a thread to come back.
    returned: tokio::sync::Notify,
}

struct Threads {
    /// Each waiting thread's job channel, the last to finish on top.
    idle: Vec<mpsc::Sender<Option<Job>>>,
    /// Set when the [`Renderers`] are dropped: a thread that finishes then ends.
    closed: bool,
}

impl Renderers {
    /// Starts `threads` render threads (at least one); they end when this is dropped.
    pub fn start(threads: usize) -> io::Result<Renderers> {
        let shared = Arc::new(Shared {
            threads: parking_lot::Mutex::new(Threads {
                idle: Vec::new(),
                closed: false,
            }),
            returned: tokio::sync::Notify::new(),
        });
        for index in 0..threads.max(1) {
            let shared = Arc::clone(&shared);
            let (mine, jobs) = mpsc::channel::<Option<Job>>();
            shared.threads.lock().idle.push(mine.clone());
            std::thread::Builder::new()
                .name(format!("tallyd-render-{index}"))
                .spawn(move || {
                    while let Ok(Some(job)) = jobs.recv() {
                        let deliver = job();
                        let mut threads = shared.threads.lock();
                        let closed = threads.closed;
                        if !closed {
                            threads.idle.push(mine.clone());
                        }
                        drop(threads);
                        shared.returned.notify_one();
                        deliver();
                        if closed {
                            return;
                        }
                    }
                })?;
        }
        Ok(Renderers { shared })
    }

    /// Runs `render` on a render thread, waiting for one to be free; `None` when it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        render: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, answered) = tokio::sync::oneshot::channel::<Option<T>>();
        let job: Job = Box::new(move || {
            // A render that panics fails its scrape, not the thread.
            let rendered = std::panic::catch_unwind(AssertUnwindSafe(render)).ok();
            Box::new(move || {
                let _ = answer.send(rendered);
            })
        });
        let thread = loop {
            let returned = self.shared.returned.notified();
            if let Some(thread) = self.shared.threads.lock().idle.pop() {
                break thread;
            }
            returned.await;
        };
        thread.send(Some(job)).ok()?;
        answered.await.ok().flatten()
    }
}

impl Drop for Renderers {
    fn drop(&mut self) {
        let mut threads = self.shared.threads.lock();
        threads.closed = true;
        for idle in threads.idle.drain(..) {
            let _ = idle.send(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::sync::Arc;

    use super::super::testing::{
        PROMETHEUS_ACCEPT, TestServer, registry_with_gauges, stable_lines,
    };
    use super::Renderers;
    use crate::http::HttpOptions;

    #[tokio::test]
    async fn metrics_serves_text_without_an_accept_header() {
        let server = TestServer::start(HttpOptions::default()).await;
        let response = server.get("/metrics", "").await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert_eq!(response.header("vary"), Some("Accept, Accept-Encoding"));
        assert_eq!(response.header("content-encoding"), None);
        assert!(
            response
                .text()
                .contains("\n# TYPE tallyd_build_info gauge\n")
        );
        assert!(!response.text().contains("# EOF"));
    }

    #[tokio::test]
    async fn metrics_serves_open_metrics_to_prometheus() {
        let server = TestServer::start(HttpOptions::default()).await;
        let response = server
            .get("/metrics", &format!("Accept: {PROMETHEUS_ACCEPT}\r\n"))
            .await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        assert!(response.text().ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn metrics_serves_gzipped_protobuf_to_a_prometheus_with_native_histograms() {
        use prost::Message;

        use crate::exposition::proto::MetricFamily;

        let server =
            TestServer::start_with(registry_with_gauges(3, 2), HttpOptions::default()).await;
        let accept = "Accept: application/vnd.google.protobuf;\
            proto=io.prometheus.client.MetricFamily;encoding=delimited,\
            application/openmetrics-text;version=1.0.0;q=0.8,*/*;q=0.1\r\n\
            Accept-Encoding: gzip\r\n";
        let response = server.get("/metrics", accept).await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some(
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; \
                 encoding=delimited"
            )
        );
        assert_eq!(response.header("content-encoding"), Some("gzip"));
        let mut body = Vec::new();
        flate2::read::GzDecoder::new(&response.body[..])
            .read_to_end(&mut body)
            .unwrap();
        let mut rest = &body[..];
        let mut families = Vec::new();
        while !rest.is_empty() {
            families.push(MetricFamily::decode_length_delimited(&mut rest).unwrap());
        }
        let named = |name: &str| families.iter().find(|f| f.name.as_deref() == Some(name));
        assert_eq!(named("temperature").map(|f| f.metric.len()), Some(3));
        assert!(named("tallyd_build_info").is_some(), "{families:?}");
    }

    #[tokio::test]
    async fn metrics_serves_text_to_a_text_accept_header() {
        let server = TestServer::start(HttpOptions::default()).await;
        let response = server
            .get("/metrics", "Accept: text/plain;version=0.0.4\r\n")
            .await;
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
    }

    #[tokio::test]
    async fn gzip_body_decompresses_to_the_same_text() {
        let server =
            TestServer::start_with(registry_with_gauges(100, 4), HttpOptions::default()).await;
        let plain = server.get("/metrics", "").await;
        let zipped = server
            .get("/metrics", "Accept-Encoding: gzip, deflate\r\n")
            .await;
        assert_eq!(zipped.header("content-encoding"), Some("gzip"));
        assert_eq!(
            zipped.header("content-length"),
            Some(zipped.body.len().to_string().as_str())
        );
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&zipped.body[..])
            .read_to_string(&mut decoded)
            .unwrap();
        assert!(zipped.body.len() < decoded.len());
        assert_eq!(stable_lines(&decoded), stable_lines(plain.text()));
    }

    #[tokio::test]
    async fn gzip_is_not_used_when_refused_or_disabled() {
        let server = TestServer::start(HttpOptions::default()).await;
        let refused = server
            .get("/metrics", "Accept-Encoding: gzip;q=0\r\n")
            .await;
        assert_eq!(refused.header("content-encoding"), None);
        let disabled = TestServer::start(HttpOptions {
            enable_gzip: false,
            ..HttpOptions::default()
        })
        .await;
        let response = disabled.get("/metrics", "Accept-Encoding: gzip\r\n").await;
        assert_eq!(response.header("content-encoding"), None);
        assert!(response.text().contains("tallyd_build_info"));
    }

    #[tokio::test]
    async fn head_metrics_sends_headers_without_a_body() {
        let server = TestServer::start(HttpOptions::default()).await;
        let response = server
            .send("HEAD /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(response.body.is_empty());
    }

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_render_goes_to_the_thread_that_finished_last_and_a_panic_fails_only_its_own() {
        let renderers = Renderers::start(4).unwrap();
        let first = renderers.run(thread_name).await.unwrap();
        assert!(first.starts_with("tallyd-render-"), "{first}");
        let panicked = renderers.run(|| panic!("a broken render")).await;
        assert_eq!(panicked, None::<()>);
        for _ in 0..3 {
            assert_eq!(renderers.run(thread_name).await.unwrap(), first);
        }
    }

    #[tokio::test]
    async fn as_many_renders_as_threads_run_at_once() {
        let renderers = Arc::new(Renderers::start(4).unwrap());
        // Each render waits for the other three: only four threads at once get past it.
        let together = Arc::new(std::sync::Barrier::new(4));
        let renders: Vec<_> = (0..4)
            .map(|_| {
                let (renderers, together) = (Arc::clone(&renderers), Arc::clone(&together));
                tokio::spawn(async move {
                    renderers
                        .run(move || {
                            together.wait();
                            thread_name()
                        })
                        .await
                })
            })
            .collect();
        let mut names = std::collections::HashSet::new();
        for render in renders {
            let name = tokio::time::timeout(std::time::Duration::from_secs(10), render)
                .await
                .expect("four renders at once");
            names.insert(name.unwrap().unwrap());
        }
        assert_eq!(names.len(), 4);
    }
}
