//! The HTTP server: `/metrics`, `/-/healthy`, `/-/ready`, a landing page and, when `[http]
//! enable_lifecycle` is on, `POST /-/reload` and `POST /-/quit` (handed to the daemon as
//! [`Lifecycle`] requests), with every resource a client can hold bounded.
//!
//! The folder, one job per file:
//!
//! - this file: the shared state and options, and the route table (one axum [`Router`] built
//!   once per server);
//! - `server`: connections — hyper's HTTP/1.1 on our own accept loop, the connection cap,
//!   the header, request and idle timeouts, graceful drain. axum only routes: `axum::serve` has
//!   neither a connection cap nor a header timeout;
//! - `scrape`: `/metrics` — negotiation, the render slots, gzip;
//! - `admin`: health, readiness, the landing page and the lifecycle endpoints;
//! - `charts`: the charts page at `/charts` and its embedded assets;
//! - [`api`]: the REST API under `/api`, Deeploy's under `/workspaces`, and Pushgateway's push
//!   routes (`PUT`/`POST`/`DELETE /metrics/job/...`): problem documents, JSON and query
//!   extractors with bounded bodies, the authentication hook, the routes.
//!
//! Bodies: outside the API's paths ([`api::owns`]) no route takes one and none is ever read. A
//! request that announces a body there gets its answer with `Connection: close`; hyper then
//! reads at most what is already buffered and closes, so a huge upload costs us nothing. On the
//! API's paths (the push routes among them) a body is read up to the `[api] max_body_bytes`
//! limit and refused with 413 beyond it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::exposition::ExpositionOptions;
use crate::registry::Registry;
use crate::telemetry::Telemetry;

mod admin;
pub mod api;
mod charts;
pub mod client;
mod scrape;
mod server;
#[cfg(test)]
mod testing;

pub use scrape::Renderers;

/// How long shutdown waits for live connections before dropping them: a little under the
/// daemon's own 5 s bound on the server task, so `serve` returns (and logs) before that fires.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// What the server serves.
pub struct HttpState {
    pub registry: Arc<Registry>,
    pub telemetry: Arc<Telemetry>,
    /// `/-/ready` answers 200 while this is true.
    pub ready: Arc<AtomicBool>,
    pub options: HttpOptions,
    /// How /metrics is written; a reload may change it while the server runs.
    pub exposition: parking_lot::RwLock<ExpositionOptions>,
    /// Where `/-/reload` and `/-/quit` send their requests; `None` while the lifecycle API is
    /// off (they answer 403).
    pub lifecycle: Option<mpsc::Sender<Lifecycle>>,
    /// The REST API; `None` serves none of it (404 under `/api`).
    pub api: Option<Arc<api::ApiState>>,
    /// Where `/metrics` renders.
    pub renderers: Renderers,
}

/// What the lifecycle endpoints ask of the daemon.
#[derive(Debug)]
pub enum Lifecycle {
    /// Reload the configuration as SIGHUP does, and answer with the outcome.
    Reload(oneshot::Sender<Result<(), String>>),
    /// Shut down as SIGTERM does.
    Quit,
}

/// Server limits and switches. A zero duration disables that timeout.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Time allowed to receive a request's head (slow-loris protection).
    pub header_read_timeout: Duration,
    /// Cap on one request/response exchange, from the request head to the last response byte.
    pub request_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Renders of `/metrics` at once; more wait.
    pub max_concurrent_scrapes: usize,
    /// Compress `/metrics` when the client accepts gzip.
    pub enable_gzip: bool,
    /// The SHA-256 of the bearer token `/metrics` requires (`None`: open).
    pub scrape_token_sha256: Option<[u8; 32]>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
            max_concurrent_scrapes: 4,
            enable_gzip: true,
            scrape_token_sha256: None,
        }
    }
}

/// Serves HTTP on `listener` until `shutdown` is cancelled, then drains live connections for at
/// most [`SHUTDOWN_GRACE`] and returns. Accept errors (such as running out of file
/// descriptors) are logged and retried, so today this always returns `Ok`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let router = routes(&state);
    let stats = Arc::clone(&state.telemetry.http);
    server::run(listener, &state.options, router, stats, shutdown).await
}

/// The route table. Built once per server: the scrape slots live in it.
fn routes(state: &Arc<HttpState>) -> Router {
    let router = Router::new()
        .merge(scrape::routes(&state.options))
        .merge(admin::routes())
        .merge(charts::routes())
        .fallback(not_found)
        // Only `/api` handlers read bodies; the limit is theirs.
        .layer(DefaultBodyLimit::max(api::DEFAULT_BODY_LIMIT))
        .with_state(Arc::clone(state));
    match &state.api {
        Some(api) => router.merge(api::routes(Arc::clone(api))),
        None => router,
    }
}

/// Unknown paths: a problem document on the API's paths (API clients parse those), plain
/// text elsewhere.
async fn not_found(request: Request) -> Response {
    let path = request.uri().path();
    if api::owns(path) {
        api::Problem::not_found(path).into_response()
    } else {
        plain(StatusCode::NOT_FOUND, "Not Found\n")
    }
}

/// A `405` naming the allowed methods; axum would write its own `Allow` without the spaces.
fn method_not_allowed(allow: &'static str) -> Response {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// The `405` of a route that only reads.
async fn read_only() -> Response {
    method_not_allowed("GET, HEAD")
}

fn plain(status: StatusCode, text: impl Into<Body>) -> Response {
    let mut response = Response::new(text.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::testing::{RawResponse, TestServer, read_to_close};
    use super::*;

    #[tokio::test]
    async fn unknown_path_is_404() {
        let server = TestServer::start(HttpOptions::default()).await;
        for path in ["/nope", "/metrics/x", "/apis"] {
            let response = server.get(path, "").await;
            assert_eq!(response.status, 404, "{path}");
            assert_eq!(
                response.header("content-type"),
                Some("text/plain; charset=utf-8")
            );
            assert_eq!(response.text(), "Not Found\n");
        }
    }

    #[tokio::test]
    async fn unknown_api_path_is_a_404_problem() {
        let server = TestServer::start(HttpOptions::default()).await;
        for path in ["/api", "/api/v1/nope", "/workspaces/w/deployments/d/nope"] {
            let response = server.get(path, "").await;
            assert_eq!(response.status, 404, "{path}");
            assert_eq!(
                response.header("content-type"),
                Some("application/problem+json")
            );
            let problem: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(problem["status"], 404);
            assert_eq!(problem["code"], "not_found");
        }
    }

    #[tokio::test]
    async fn wrong_method_is_405_with_allow() {
        let server = TestServer::start(HttpOptions::default()).await;
        for path in ["/metrics", "/-/healthy", "/-/ready", "/"] {
            let response = server
                .send(&format!(
                    "DELETE {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
                ))
                .await;
            assert_eq!(response.status, 405, "{path}");
            assert_eq!(response.header("allow"), Some("GET, HEAD"), "{path}");
        }
    }

    #[tokio::test]
    async fn a_huge_request_body_is_never_read() {
        let server = TestServer::start(HttpOptions::default()).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // Announce 10 GB, send a little, and keep the connection open: we get an answer and
        // a close without the server waiting for (or buffering) the rest.
        stream
            .write_all(
                b"POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 10000000000\r\n\r\nabc",
            )
            .await
            .unwrap();
        let response = RawResponse::parse(&read_to_close(&mut stream).await);
        assert_eq!(response.status, 405);
        assert_eq!(response.header("connection"), Some("close"));
    }

    #[tokio::test]
    async fn a_chunked_body_on_a_read_route_closes_the_connection() {
        let server = TestServer::start(HttpOptions::default()).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await
            .unwrap();
        let response = RawResponse::parse(&read_to_close(&mut stream).await);
        assert_eq!(response.status, 200);
        assert_eq!(response.header("connection"), Some("close"));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let options = HttpOptions::default();
        assert_eq!(options.header_read_timeout, Duration::from_secs(10));
        assert_eq!(options.request_timeout, Duration::from_secs(60));
        assert_eq!(options.idle_timeout, Duration::from_secs(60));
        assert_eq!(options.max_connections, 256);
        assert_eq!(options.max_concurrent_scrapes, 4);
        assert!(options.enable_gzip);
    }
}
