//! Connections: the accept loop, the connection cap, the per-connection timeouts and the
//! graceful drain. Each connection is hyper's HTTP/1.1 serving the axum [`Router`] built in
//! `mod.rs`, wrapped so the watchdog sees each request start and its response finish.
//!
//! Limits, and what happens at each:
//!
//! - **Connections**: at most `max_connections` are served at once. One more is accepted and
//!   answered at once with a canned `503` and closed, so it neither waits in the kernel's accept
//!   queue until the client gives up nor costs a task: a scraper sees a clear error, and the
//!   limit holds however many arrive. Each refusal is counted
//!   (`tallyd_http_connections_refused_total`), and so is each connection a timeout below
//!   closes (`tallyd_http_timeouts_total{stage="header"|"request"}`).
//! - **Slow clients**: the request head must arrive within `header_read_timeout` (hyper's own
//!   timer; it also runs while a kept-alive connection waits for its next request, so it caps
//!   keep-alive idleness too). Once a request is read, the whole exchange — rendering, waiting
//!   for a render slot, and handing every byte of the response to the kernel — must finish
//!   within `request_timeout`, or the connection is reset (so the kernel also drops what is
//!   still queued for that client). Between requests a connection may
//!   idle for `idle_timeout`. A zero duration disables that limit.
//! - **Headers**: at most 16 KiB of buffered request and 64 header lines (431 beyond).
//! - **Bodies**: a request that announces a body outside `/api`, or whose `/api` answer is an
//!   error, is answered with `Connection: close`: the body may be unread, and reading it just to
//!   reach the next request could cost anything.
//!
//! Shutdown: stop accepting, ask every live connection to finish (hyper's graceful shutdown:
//! idle ones close at once, one mid-exchange finishes its response), wait up to
//! [`SHUTDOWN_GRACE`], then drop whatever is left.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::Request;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::{HttpOptions, SHUTDOWN_GRACE, api};
use crate::telemetry::HttpStats;

/// Most bytes hyper buffers for one connection's request head (hyper's floor is 8 KiB).
pub(super) const MAX_BUF_SIZE: usize = 16 * 1024;

/// Most header lines in a request.
pub(super) const MAX_HEADERS: usize = 64;

/// Shared by every connection of one server.
struct Server {
    options: HttpOptions,
    router: Router,
    builder: http1::Builder,
    stats: Arc<HttpStats>,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains live connections for
/// at most [`SHUTDOWN_GRACE`]. Every connection watches the same token: on cancel it finishes
/// the exchange in flight (hyper's graceful shutdown) and closes.
pub(super) async fn run(
    listener: TcpListener,
    options: &HttpOptions,
    router: Router,
    stats: Arc<HttpStats>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let connections = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(nonzero(options.header_read_timeout))
        .max_buf_size(MAX_BUF_SIZE)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let server = Arc::new(Server {
        options: options.clone(),
        router,
        builder,
        stats,
    });
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Reap finished connections so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => match Arc::clone(&connections).try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        let server = Arc::clone(&server);
                        let stopping = shutdown.clone();
                        tasks.spawn(async move {
                            serve_connection(stream, server, stopping).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        server.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
                        refuse(stream);
                    }
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

async fn serve_connection(stream: TcpStream, server: Arc<Server>, stopping: CancellationToken) {
    let options = &server.options;
    let watchdog = Arc::new(Watchdog::new(
        nonzero(options.request_timeout),
        nonzero(options.idle_timeout),
    ));
    let io = TokioIo::new(WatchedStream {
        inner: stream,
        watchdog: Arc::clone(&watchdog),
    });
    let service = {
        let router = server.router.clone();
        let watchdog = Arc::clone(&watchdog);
        tower::service_fn(move |request: Request<Incoming>| {
            watchdog.request_started();
            let watchdog = Arc::clone(&watchdog);
            let announced_body = announces_body(request.headers());
            let api = api::owns(request.uri().path());
            // The router's clone is a reference count; it is always ready.
            let response = router.clone().oneshot(request);
            async move {
                let Ok(mut response) = response.await;
                if announced_body && (!api || !response.status().is_success()) {
                    // The body may be unread: close rather than read it to reach the next
                    // request.
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response.map(|body| WatchedBody { body, watchdog }))
            }
        })
    };
    let connection = server
        .builder
        .serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(connection);
    let mut shutting_down = stopping.is_cancelled();
    if shutting_down {
        connection.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    // hyper's own timer: the request head did not arrive in time.
                    if e.is_timeout() {
                        server.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!("HTTP connection ended: {e}");
                }
                return;
            }
            _ = watchdog.expired() => {
                tracing::debug!("HTTP connection timed out; closing it");
                if watchdog.expire() {
                    server.stats.request_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            _ = stopping.cancelled(), if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

fn announces_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
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
    /// [`WatchedStream`]'s `Drop`), and `true` is returned; an idle connection a normal close.
    fn expire(&self) -> bool {
        let cut_short = self.phase.load(Ordering::Relaxed) != IDLE;
        if cut_short {
            self.aborted.store(true, Ordering::Relaxed);
        }
        cut_short
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

/// A response body; tells the watchdog when hyper is done with it (hyper drops the body after
/// its last frame).
struct WatchedBody {
    body: axum::body::Body,
    watchdog: Arc<Watchdog>,
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for WatchedBody {
    fn drop(&mut self) {
        self.watchdog.response_done();
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::testing::{RawResponse, TestServer, read_to_close, registry_with_gauges};
    use super::*;

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
}
