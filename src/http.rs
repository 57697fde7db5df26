//! The HTTP server (hyper 1, HTTP/1.1 only): `/metrics`, `/-/healthy`, `/-/ready`, a landing
//! page and, when `[http] enable_lifecycle` is on, `POST /-/reload` and `POST /-/quit` (handed to
//! the daemon as [`Lifecycle`] requests), with every resource a client can hold bounded.
//!
//! Limits, and what happens at each:
//!
//! - **Connections**: at most `max_connections` are served at once. One more is accepted and
//!   answered at once with a canned `503` and closed, so it neither waits in the kernel's accept
//!   queue until the client gives up nor costs a task: a scraper sees a clear error, and the
//!   limit holds however many arrive.
//! - **Slow clients**: the request head must arrive within `header_read_timeout` (hyper's own
//!   timer; it also runs while a kept-alive connection waits for its next request, so it caps
//!   keep-alive idleness too). Once a request is read, the whole exchange — rendering, waiting
//!   for a render slot, and handing every byte of the response to the kernel — must finish
//!   within `request_timeout`, or the connection is reset (so the kernel also drops what is
//!   still queued for that client). Between requests a connection may
//!   idle for `idle_timeout`. A zero duration disables that limit.
//! - **Headers**: at most 16 KiB of buffered request and 64 header lines (431 beyond).
//! - **Bodies**: no route takes one and none is ever read. A request that announces a body gets
//!   its answer with `Connection: close`; hyper then reads at most what is already buffered and
//!   closes, so a huge upload costs us nothing.
//! - **Renders**: at most `max_concurrent_scrapes` at once, each on the blocking pool (never on
//!   the reactor); further scrapes wait for a slot (inside their `request_timeout`).
//!
//! Shutdown: stop accepting, ask every live connection to finish (hyper's graceful shutdown:
//! idle ones close at once, one mid-exchange finishes its response), wait up to
//! [`SHUTDOWN_GRACE`], then drop whatever is left.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::exposition::{self, ExpositionOptions};
use crate::registry::Registry;
use crate::telemetry::TOP_FAMILIES;
use crate::telemetry::Telemetry;

/// How long shutdown waits for live connections before dropping them: a little under the
/// daemon's own 5 s bound on the server task, so `serve` returns (and logs) before that fires.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Most bytes hyper buffers for one connection's request head (hyper's floor is 8 KiB).
const MAX_BUF_SIZE: usize = 16 * 1024;

/// Most header lines in a request.
const MAX_HEADERS: usize = 64;

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
        }
    }
}

/// Shared by every connection of one server.
struct Server {
    state: Arc<HttpState>,
    scrapes: Arc<Semaphore>,
    builder: http1::Builder,
}

/// Serves HTTP on `listener` until `shutdown` completes, then drains live connections for at
/// most [`SHUTDOWN_GRACE`] and returns. Accept errors (such as running out of file
/// descriptors) are logged and retried, so today this always returns `Ok`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let options = &state.options;
    let connections = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(nonzero(options.header_read_timeout))
        .max_buf_size(MAX_BUF_SIZE)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let server = Arc::new(Server {
        scrapes: Arc::new(Semaphore::new(options.max_concurrent_scrapes.max(1))),
        builder,
        state: Arc::clone(&state),
    });
    let (stop, stopping) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => match Arc::clone(&connections).try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        let server = Arc::clone(&server);
                        let stopping = stopping.clone();
                        tasks.spawn(async move {
                            serve_connection(stream, server, stopping).await;
                            drop(permit);
                        });
                    }
                    Err(_) => refuse(stream),
                },
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning; the
                    // pending connections stay in the kernel's queue meanwhile.
                    tracing::warn!("cannot accept an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = tasks.len(),
            "HTTP connections still open after {SHUTDOWN_GRACE:?}; closing them"
        );
        tasks.abort_all();
    }
    Ok(())
}

fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// Answers a connection over the limit with a canned 503 and closes it, without reading.
fn refuse(stream: TcpStream) {
    const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
        content-length: 21\r\nconnection: close\r\nretry-after: 1\r\n\r\ntoo many connections\n";
    // A fresh socket's send buffer takes this whole; if not, the client just sees a close.
    let _ = stream.try_write(BUSY);
    tracing::debug!("HTTP connection limit reached; refused a connection");
}

async fn serve_connection(
    stream: TcpStream,
    server: Arc<Server>,
    mut stopping: watch::Receiver<bool>,
) {
    let options = &server.state.options;
    let watchdog = Arc::new(Watchdog::new(
        nonzero(options.request_timeout),
        nonzero(options.idle_timeout),
    ));
    let io = TokioIo::new(WatchedStream {
        inner: stream,
        watchdog: Arc::clone(&watchdog),
    });
    let service = {
        let server = Arc::clone(&server);
        let watchdog = Arc::clone(&watchdog);
        service_fn(move |request| {
            let server = Arc::clone(&server);
            let watchdog = Arc::clone(&watchdog);
            async move {
                watchdog.request_started();
                Ok::<_, Infallible>(route(&server, request, watchdog).await)
            }
        })
    };
    let connection = server.builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut shutting_down = *stopping.borrow();
    if shutting_down {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection ended: {e}");
                }
                return;
            }
            _ = watchdog.expired() => {
                tracing::debug!("HTTP connection timed out; closing it");
                watchdog.expire();
                return;
            }
            _ = stopping.changed(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timeouts of a connection's exchanges

const IDLE: u8 = 0;
const BUSY: u8 = 1;
/// The response body is handed to hyper; some of it may still wait for the socket.
const FLUSHING: u8 = 2;
const NO_DEADLINE: u64 = u64::MAX;

/// One connection's deadline: `request_timeout` from a request's head until its response is
/// flushed to the kernel, then `idle_timeout` until the next request.
///
/// Every method runs on the connection's own task (hyper drives the service, the body and the
/// socket from it); the atomics are only there because hyper wants a `Send + Sync` service.
struct Watchdog {
    origin: Instant,
    /// Milliseconds since `origin`, or [`NO_DEADLINE`].
    deadline: AtomicU64,
    phase: AtomicU8,
    /// Wakes [`Watchdog::expired`] when the deadline moves.
    moved: Notify,
    /// Set when an exchange overran: the socket is then reset rather than closed.
    aborted: AtomicBool,
    request_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl Watchdog {
    fn new(request_timeout: Option<Duration>, idle_timeout: Option<Duration>) -> Self {
        let watchdog = Watchdog {
            origin: Instant::now(),
            deadline: AtomicU64::new(NO_DEADLINE),
            phase: AtomicU8::new(IDLE),
            moved: Notify::new(),
            aborted: AtomicBool::new(false),
            request_timeout,
            idle_timeout,
        };
        watchdog.set_deadline(idle_timeout);
        watchdog
    }

    fn set_deadline(&self, after: Option<Duration>) {
        let deadline = after.map_or(NO_DEADLINE, |after| {
            (self.origin.elapsed() + after)
                .as_millis()
                .min(u64::MAX as u128 - 1) as u64
        });
        self.deadline.store(deadline, Ordering::Relaxed);
        // One waiter at most (the connection task); a permit is kept if it is not waiting.
        self.moved.notify_one();
    }

    fn request_started(&self) {
        self.phase.store(BUSY, Ordering::Relaxed);
        self.set_deadline(self.request_timeout);
    }

    /// The response body has been handed to hyper (it drops the body after its last frame).
    fn response_done(&self) {
        let _ = self
            .phase
            .compare_exchange(BUSY, FLUSHING, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// hyper flushed its write buffer to the socket.
    fn flushed(&self) {
        if self
            .phase
            .compare_exchange(FLUSHING, IDLE, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.set_deadline(self.idle_timeout);
        }
    }

    /// Called when the deadline passed: an exchange cut short gets a reset (see
    /// [`WatchedStream`]'s `Drop`); an idle connection a normal close.
    fn expire(&self) {
        if self.phase.load(Ordering::Relaxed) != IDLE {
            self.aborted.store(true, Ordering::Relaxed);
        }
    }

    /// Completes once the current deadline passes; follows the deadline as it moves.
    async fn expired(&self) {
        loop {
            let deadline = self.deadline.load(Ordering::Relaxed);
            if deadline == NO_DEADLINE {
                self.moved.notified().await;
                continue;
            }
            let elapsed = self.origin.elapsed().as_millis() as u64;
            if elapsed >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(deadline - elapsed)) => {}
                _ = self.moved.notified() => {}
            }
        }
    }
}

/// The socket, telling the watchdog when hyper has flushed everything it wrote.
struct WatchedStream {
    inner: TcpStream,
    watchdog: Arc<Watchdog>,
}

impl Drop for WatchedStream {
    fn drop(&mut self) {
        // A response cut short by `request_timeout`: reset the connection so the kernel drops
        // what is still queued for this client at once, instead of keeping an orphaned socket
        // (and up to a send buffer of data) around to trickle it out.
        if self.watchdog.aborted.load(Ordering::Relaxed) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper calls this only once its own write buffer is empty.
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.watchdog.flushed();
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body held whole in memory; tells the watchdog when hyper is done with it.
struct ResponseBody {
    data: Option<Bytes>,
    watchdog: Option<Arc<Watchdog>>,
}

impl ResponseBody {
    fn new(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        ResponseBody {
            data: (!data.is_empty()).then_some(data),
            watchdog: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.response_done();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

async fn route(
    server: &Server,
    request: Request<Incoming>,
    watchdog: Arc<Watchdog>,
) -> Response<ResponseBody> {
    let get_or_head = matches!(*request.method(), Method::GET | Method::HEAD);
    let mut response = match request.uri().path() {
        "/metrics" if get_or_head => metrics(server, request.headers()).await,
        "/-/healthy" if get_or_head => plain(StatusCode::OK, "OK\n"),
        "/-/ready" if get_or_head => {
            if server.state.ready.load(Ordering::Relaxed) {
                plain(StatusCode::OK, "OK\n")
            } else {
                plain(StatusCode::SERVICE_UNAVAILABLE, "Not ready\n")
            }
        }
        "/" if get_or_head => landing_page(&server.state),
        "/metrics" | "/-/healthy" | "/-/ready" | "/" => method_not_allowed("GET, HEAD"),
        path @ ("/-/reload" | "/-/quit")
            if matches!(*request.method(), Method::POST | Method::PUT) =>
        {
            lifecycle(&server.state, path == "/-/quit").await
        }
        "/-/reload" | "/-/quit" => method_not_allowed("POST, PUT"),
        _ => plain(StatusCode::NOT_FOUND, "Not Found\n"),
    };
    if announces_body(request.headers()) {
        // We never read request bodies: close rather than read one to reach the next request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response.body_mut().watchdog = Some(watchdog);
    response
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// `POST /-/reload` (answered once the daemon has tried: 200, or 500 with the reason the file
/// was refused) and `POST /-/quit` (answered at once; shutdown follows).
async fn lifecycle(state: &HttpState, quit: bool) -> Response<ResponseBody> {
    let Some(daemon) = &state.lifecycle else {
        return plain(
            StatusCode::FORBIDDEN,
            "Lifecycle API is not enabled ([http] enable_lifecycle).\n",
        );
    };
    let shutting_down = || plain(StatusCode::SERVICE_UNAVAILABLE, "Shutting down\n");
    if quit {
        return match daemon.send(Lifecycle::Quit).await {
            Ok(()) => plain(StatusCode::OK, "Requesting termination... Goodbye!\n"),
            Err(_) => shutting_down(),
        };
    }
    let (reply, outcome) = oneshot::channel();
    if daemon.send(Lifecycle::Reload(reply)).await.is_err() {
        return shutting_down();
    }
    match outcome.await {
        Ok(Ok(())) => plain(StatusCode::OK, "OK\n"),
        Ok(Err(reason)) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload config: {reason}\n"),
        ),
        Err(_) => shutting_down(),
    }
}

fn announces_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::new(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
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

async fn metrics(server: &Server, headers: &HeaderMap) -> Response<ResponseBody> {
    let state = &server.state;
    let format = exposition::negotiate(header_list(headers, header::ACCEPT).as_deref());
    let compress = state.options.enable_gzip
        && exposition::gzip_allowed(header_list(headers, header::ACCEPT_ENCODING).as_deref());
    // The semaphore is never closed.
    let Ok(permit) = Arc::clone(&server.scrapes).acquire_owned().await else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "Shutting down\n");
    };
    let registry = Arc::clone(&state.registry);
    let telemetry = Arc::clone(&state.telemetry);
    let options = *state.exposition.read();
    let rendered = tokio::task::spawn_blocking(move || {
        // Held until the render ends, even if the client has gone meanwhile.
        let _permit = permit;
        let mut body = Vec::new();
        exposition::render(&registry, &telemetry, format, options, &mut body);
        if compress {
            exposition::gzip(&body)
        } else {
            body
        }
    })
    .await;
    let body = match rendered {
        Ok(body) => body,
        Err(e) => {
            tracing::error!("rendering /metrics failed: {e}");
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "Rendering failed\n");
        }
    };
    let mut response = Response::new(ResponseBody::new(body));
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

fn landing_page(state: &HttpState) -> Response<ResponseBody> {
    let listeners = state.telemetry.listeners();
    let listeners = if listeners.is_empty() {
        "none".to_owned()
    } else {
        listeners
            .iter()
            .map(|l| format!("<code>{}</code>", html_escape(l)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let settings = state.registry.settings();
    let mut top = String::new();
    for (family, count) in state.registry.top_families(TOP_FAMILIES) {
        top.push_str(&format!(
            "<tr><td><code>{}</code></td><td>{count}</td></tr>\n",
            html_escape(family.name())
        ));
    }
    let page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>tallyd</title></head>\n\
         <body>\n<h1>tallyd {version}</h1>\n<p>StatsD / DogStatsD to Prometheus.</p>\n<ul>\n\
         <li>UDP listeners: {listeners}</li>\n\
         <li>Live series: {series} (limit {max_series}; {max_per_metric} per metric)</li>\n\
         <li>Uptime: {uptime}</li>\n</ul>\n\
         <h2>Metrics with the most series</h2>\n\
         <table>\n<tr><th>metric</th><th>series</th></tr>\n{top}</table>\n\
         <p><a href=\"/metrics\">Metrics</a> &middot; <a href=\"/-/healthy\">Health</a> \
         &middot; <a href=\"/-/ready\">Readiness</a></p>\n</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
        series = state.registry.series_count(),
        max_series = settings.max_series,
        max_per_metric = settings.max_series_per_metric,
        uptime = human_duration(state.telemetry.uptime()),
    );
    let mut response = Response::new(ResponseBody::new(page));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `3d 4h 5m 6s`, leading zero units left out.
fn human_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours}h {minutes}m {seconds}s")
    } else if hours > 0 {
        format!("{hours}h {minutes}m {seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::registry::{Kind, RegistrySettings, SeriesKeyBuf, Update};

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
        application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    struct TestServer {
        addr: SocketAddr,
        ready: Arc<AtomicBool>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<io::Result<()>>,
    }

    impl TestServer {
        async fn start(options: HttpOptions) -> TestServer {
            Self::start_with(Registry::new(RegistrySettings::default()), options).await
        }

        async fn start_with(registry: Registry, options: HttpOptions) -> TestServer {
            Self::launch(registry, options, None).await
        }

        /// A server whose lifecycle endpoints send to `daemon`.
        async fn with_lifecycle(daemon: mpsc::Sender<Lifecycle>) -> TestServer {
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
            let state = Arc::new(HttpState {
                registry: Arc::new(registry),
                telemetry: Arc::new(Telemetry::default()),
                ready: Arc::clone(&ready),
                options,
                exposition: Default::default(),
                lifecycle,
            });
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, state, async {
                let _ = stopped.await;
            }));
            TestServer {
                addr,
                ready,
                stop: Some(stop),
                task,
            }
        }

        /// Sends `GET path` with extra header lines and `Connection: close`; reads the answer.
        async fn get(&self, path: &str, headers: &str) -> RawResponse {
            self.send(&format!(
                "GET {path} HTTP/1.1\r\nHost: test\r\n{headers}Connection: close\r\n\r\n"
            ))
            .await
        }

        async fn send(&self, request: &str) -> RawResponse {
            let mut stream = TcpStream::connect(self.addr).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            RawResponse::parse(&read_to_close(&mut stream).await)
        }

        /// Stops the server; returns how long `serve` took to return.
        async fn shut_down(mut self) -> Duration {
            let started = Instant::now();
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(Duration::from_secs(10), &mut self.task)
                .await
                .expect("serve returns")
                .unwrap()
                .unwrap();
            started.elapsed()
        }
    }

    async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut bytes = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
            .await
            .expect("the server closes the connection")
            .unwrap();
        bytes
    }

    #[derive(Debug)]
    struct RawResponse {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl RawResponse {
        fn parse(bytes: &[u8]) -> RawResponse {
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

        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).unwrap()
        }
    }

    fn registry_with_gauges(count: usize, label_len: usize) -> Registry {
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
    fn stable_lines(text: &str) -> Vec<&str> {
        text.lines()
            .filter(|l| !l.starts_with("tallyd_scrape") && !l.starts_with("process_"))
            .collect()
    }

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

    #[tokio::test]
    async fn healthy_answers_ok() {
        let server = TestServer::start(HttpOptions::default()).await;
        let response = server.get("/-/healthy", "").await;
        assert_eq!((response.status, response.text()), (200, "OK\n"));
    }

    #[tokio::test]
    async fn ready_follows_the_flag() {
        let server = TestServer::start(HttpOptions::default()).await;
        assert_eq!(server.get("/-/ready", "").await.status, 200);
        server.ready.store(false, Ordering::SeqCst);
        assert_eq!(server.get("/-/ready", "").await.status, 503);
        server.ready.store(true, Ordering::SeqCst);
        assert_eq!(server.get("/-/ready", "").await.status, 200);
    }

    #[tokio::test]
    async fn landing_page_shows_version_and_links_metrics() {
        let server = TestServer::start(HttpOptions::default()).await;
        let response = server.get("/", "").await;
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let page = response.text();
        assert!(page.contains(env!("CARGO_PKG_VERSION")));
        assert!(page.contains("<a href=\"/metrics\">"));
        assert!(page.contains("Live series: 0"));
        assert!(page.contains("Metrics with the most series"));
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let server = TestServer::start(HttpOptions::default()).await;
        assert_eq!(server.get("/nope", "").await.status, 404);
        assert_eq!(server.get("/metrics/x", "").await.status, 404);
    }

    #[tokio::test]
    async fn wrong_method_is_405_with_allow() {
        let server = TestServer::start(HttpOptions::default()).await;
        let response = server
            .send("DELETE /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await;
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("GET, HEAD"));
    }

    fn post(path: &str) -> String {
        format!("POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    }

    #[tokio::test]
    async fn lifecycle_endpoints_are_forbidden_unless_enabled() {
        let server = TestServer::start(HttpOptions::default()).await;
        for path in ["/-/reload", "/-/quit"] {
            let response = server.send(&post(path)).await;
            assert_eq!(response.status, 403, "{path}");
            assert!(response.text().contains("enable_lifecycle"), "{path}");
        }
    }

    #[tokio::test]
    async fn lifecycle_endpoints_take_post_and_put_only() {
        let (daemon, _requests) = mpsc::channel(1);
        let server = TestServer::with_lifecycle(daemon).await;
        let response = server.get("/-/reload", "").await;
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("POST, PUT"));
    }

    #[tokio::test]
    async fn reload_answers_with_the_daemons_outcome() {
        let (daemon, mut requests) = mpsc::channel(1);
        let server = TestServer::with_lifecycle(daemon).await;
        let outcomes = [Ok(()), Err("t.toml: line 3: unknown field `x`".to_string())];
        let answer = tokio::spawn(async move {
            for outcome in outcomes {
                match requests.recv().await {
                    Some(Lifecycle::Reload(reply)) => reply.send(outcome).unwrap(),
                    other => panic!("expected a reload, got {other:?}"),
                }
            }
        });
        let ok = server.send(&post("/-/reload")).await;
        assert_eq!((ok.status, ok.text()), (200, "OK\n"));
        let put = "PUT /-/reload HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
        let failed = server.send(put).await;
        assert_eq!(failed.status, 500);
        assert!(
            failed.text().contains("line 3: unknown field"),
            "{}",
            failed.text()
        );
        answer.await.unwrap();
    }

    #[tokio::test]
    async fn quit_asks_the_daemon_to_shut_down() {
        let (daemon, mut requests) = mpsc::channel(1);
        let server = TestServer::with_lifecycle(daemon).await;
        let response = server.send(&post("/-/quit")).await;
        assert_eq!(response.status, 200);
        assert!(matches!(requests.recv().await, Some(Lifecycle::Quit)));
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

    /// Sends `head` (a request line and headers, without the blank line) and returns what the
    /// server answers before it closes.
    async fn answer_to_headers(head: &[u8]) -> RawResponse {
        let server = TestServer::start(HttpOptions::default()).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // The server may answer and close before it has read everything: ignore write errors.
        let _ = stream.write_all(head).await;
        let _ = stream.write_all(b"\r\n").await;
        // Closing with unread input makes a reset, which may follow the answer: keep what came.
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(Ok(n @ 1..)) =
            tokio::time::timeout_at(deadline.into(), stream.read(&mut chunk)).await
        {
            bytes.extend_from_slice(&chunk[..n]);
        }
        RawResponse::parse(&bytes)
    }

    #[tokio::test]
    async fn headers_larger_than_the_buffer_are_refused_with_431() {
        let mut head = b"GET /metrics HTTP/1.1\r\nHost: test\r\nX-Junk: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', MAX_BUF_SIZE * 4));
        head.extend_from_slice(b"\r\n");
        let response = answer_to_headers(&head).await;
        assert_eq!(response.status, 431);
    }

    #[tokio::test]
    async fn more_headers_than_the_limit_are_refused_with_431() {
        let mut head = b"GET /metrics HTTP/1.1\r\nHost: test\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        let response = answer_to_headers(&head).await;
        assert_eq!(response.status, 431);
    }

    #[tokio::test]
    async fn headers_within_the_limits_are_served() {
        let mut head = b"GET /-/healthy HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".to_vec();
        for i in 0..MAX_HEADERS - 3 {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        let response = answer_to_headers(&head).await;
        assert_eq!(response.status, 200);
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_on_one_connection() {
        let server = TestServer::start(HttpOptions::default()).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(
                b"GET /-/healthy HTTP/1.1\r\nHost: test\r\n\r\n\
                  GET /-/ready HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let bytes = read_to_close(&mut stream).await;
        let text = String::from_utf8(bytes).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    }

    #[tokio::test]
    async fn a_slow_loris_is_disconnected_after_the_header_timeout() {
        let server = TestServer::start(HttpOptions {
            header_read_timeout: Duration::from_millis(200),
            ..HttpOptions::default()
        })
        .await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: te")
            .await
            .unwrap();
        let started = Instant::now();
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut bytes))
            .await
            .expect("disconnected before 5s");
        // A close (maybe after a 408) or a reset: either way, no request was served.
        if read.is_ok() && !bytes.is_empty() {
            assert!(!String::from_utf8_lossy(&bytes).contains("200 OK"));
        }
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let server = TestServer::start(HttpOptions {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_millis(200),
            ..HttpOptions::default()
        })
        .await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let bytes = read_to_close(&mut stream).await;
        assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 200 OK"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_the_response_is_cut_at_the_request_timeout() {
        // ~21 MB of text (few series, long labels: cheap to render even in a debug build),
        // far more than the socket buffers below hold.
        let registry = registry_with_gauges(40_000, 500);
        let server = TestServer::start_with(
            registry,
            HttpOptions {
                request_timeout: Duration::from_secs(2),
                enable_gzip: false,
                ..HttpOptions::default()
            },
        )
        .await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A fixed receive buffer turns off autotuning (up to 32 MiB here); 256 KiB stays well
        // above the loopback MSS so the transfer does not crawl once we read.
        socket.set_recv_buffer_size(256 * 1024).unwrap();
        let mut stream = socket.connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Don't read until well past the timeout: by then the connection has been reset.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let mut received = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received += n,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the connection is still open");
        assert!(
            received < 20_000_000,
            "received the whole body: {received} bytes"
        );
    }

    #[tokio::test]
    async fn connections_over_the_limit_get_503_and_are_closed() {
        let server = TestServer::start(HttpOptions {
            max_connections: 1,
            ..HttpOptions::default()
        })
        .await;
        // Hold the only slot with a kept-alive connection.
        let mut held = TcpStream::connect(server.addr).await.unwrap();
        held.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = held.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));

        let mut extra = TcpStream::connect(server.addr).await.unwrap();
        let response = RawResponse::parse(&read_to_close(&mut extra).await);
        assert_eq!(response.status, 503);
        assert_eq!(response.text(), "too many connections\n");

        drop(held);
        // Once the slot frees up, connections are served again.
        let mut served = false;
        for _ in 0..50 {
            let response = server.get("/-/healthy", "").await;
            if response.status == 200 {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(served);
    }

    #[tokio::test]
    async fn graceful_shutdown_returns_promptly_with_an_idle_connection_open() {
        let server = TestServer::start(HttpOptions::default()).await;
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let _ = idle.read(&mut buf).await.unwrap();
        let _fresh = TcpStream::connect(server.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let took = server.shut_down().await;
        assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
        // The idle connection was closed.
        let rest = read_to_close(&mut idle).await;
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn graceful_shutdown_is_bounded_by_a_stalled_client() {
        let server = TestServer::start(HttpOptions::default()).await;
        let mut stalled = TcpStream::connect(server.addr).await.unwrap();
        stalled
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let took = server.shut_down().await;
        assert!(
            took <= SHUTDOWN_GRACE + Duration::from_secs(1),
            "shutdown took {took:?}"
        );
    }

    #[tokio::test]
    async fn the_watchdog_follows_a_deadline_moved_while_it_waits() {
        // Regression: `expired` used to sleep until the deadline it saw first (the idle one)
        // and so missed a request deadline set while it slept.
        let watchdog = Arc::new(Watchdog::new(
            Some(Duration::from_millis(100)),
            Some(Duration::from_secs(60)),
        ));
        let waiting = tokio::spawn({
            let watchdog = Arc::clone(&watchdog);
            async move { watchdog.expired().await }
        });
        tokio::task::yield_now().await;
        watchdog.request_started();
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("expired at the request deadline")
            .unwrap();
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

    #[test]
    fn uptime_reads_like_a_person_would_write_it() {
        assert_eq!(human_duration(Duration::from_secs(5)), "5s");
        assert_eq!(human_duration(Duration::from_secs(65)), "1m 5s");
        assert_eq!(
            human_duration(Duration::from_secs(3_600 * 25 + 1)),
            "1d 1h 0m 1s"
        );
    }

    #[test]
    fn listener_names_are_html_escaped() {
        assert_eq!(html_escape("<a&\"'>"), "&lt;a&amp;&quot;&#39;&gt;");
    }
}
