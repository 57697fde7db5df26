//! The operator's pages: `/-/healthy`, `/-/ready`, the `/` landing page, and the lifecycle
//! endpoints `/-/reload` and `/-/quit` (POST or PUT; 403 unless `[http] enable_lifecycle`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use tokio::sync::oneshot;

use super::{HttpState, Lifecycle, method_not_allowed, plain, read_only};
use crate::telemetry::TOP_FAMILIES;

pub(super) fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/-/healthy", get(healthy).fallback(read_only))
        .route("/-/ready", get(ready).fallback(read_only))
        .route("/", get(landing_page).fallback(read_only))
        .route(
            "/-/reload",
            post(reload).put(reload).fallback(lifecycle_only),
        )
        .route("/-/quit", post(quit).put(quit).fallback(lifecycle_only))
}

async fn lifecycle_only() -> Response {
    method_not_allowed("POST, PUT")
}

async fn healthy() -> Response {
    plain(StatusCode::OK, "OK\n")
}

async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        plain(StatusCode::OK, "OK\n")
    } else {
        plain(StatusCode::SERVICE_UNAVAILABLE, "Not ready\n")
    }
}

/// `POST /-/reload`: answered once the daemon has tried: 200, or 500 with the reason the file
/// was refused.
async fn reload(State(state): State<Arc<HttpState>>) -> Response {
    let Some(daemon) = &state.lifecycle else {
        return lifecycle_disabled();
    };
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

/// `POST /-/quit`: answered at once; shutdown follows.
async fn quit(State(state): State<Arc<HttpState>>) -> Response {
    let Some(daemon) = &state.lifecycle else {
        return lifecycle_disabled();
    };
    match daemon.send(Lifecycle::Quit).await {
        Ok(()) => plain(StatusCode::OK, "Requesting termination... Goodbye!\n"),
        Err(_) => shutting_down(),
    }
}

fn lifecycle_disabled() -> Response {
    plain(
        StatusCode::FORBIDDEN,
        "Lifecycle API is not enabled ([http] enable_lifecycle).\n",
    )
}

fn shutting_down() -> Response {
    plain(StatusCode::SERVICE_UNAVAILABLE, "Shutting down\n")
}

async fn landing_page(State(state): State<Arc<HttpState>>) -> Response {
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
         <p><a href=\"/metrics\">Metrics</a> &middot; <a href=\"/charts\">Charts</a> \
         &middot; <a href=\"/-/healthy\">Health</a> \
         &middot; <a href=\"/-/ready\">Readiness</a></p>\n</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
        series = state.registry.series_count(),
        max_series = settings.max_series,
        max_per_metric = settings.max_series_per_metric,
        uptime = human_duration(state.telemetry.uptime()),
    );
    let mut response = plain(StatusCode::OK, page);
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
    use std::sync::atomic::Ordering;

    use tokio::sync::mpsc;

    use super::super::testing::TestServer;
    use super::*;
    use crate::http::HttpOptions;

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
