//! The building blocks of the REST API under `/api`: what every route answers on failure (an
//! RFC 9457 [`Problem`] document), how a route reads its input ([`ApiJson`], [`ApiQuery`],
//! bodies bounded by [`DEFAULT_BODY_LIMIT`]) and who is calling ([`Caller`], decided by an
//! [`Authenticator`]).
//!
//! - `problem.rs`: the problem document and its response;
//! - `extract.rs`: JSON and query extractors whose every rejection is a problem document;
//! - `auth.rs`: the `Authorization` header and the authentication hook.
//!
//! - `matih.rs`: the custom-metrics routes at the Matih seed's paths;
//! - `charts.rs`: the charts page's catalogue of chartable metrics and Deeploy chart data;
//! - `deeploy.rs`: Deeploy's custom-metrics routes, at the server root (`/workspaces/…`) where
//!   its client calls them;
//! - `pushgateway.rs`: Pushgateway's push routes (`/metrics/job/...`), outside `/api` but
//!   under the same auth, body limit and problem documents.
//!
//! An unknown `/api` or `/workspaces` path answers a 404 problem document.

mod auth;
pub mod charts;
pub mod deeploy;
mod extract;
pub mod inputs;
pub mod matih;
pub mod openapi;
mod problem;
pub mod pushgateway;

pub use auth::{
    Access, AuthRejection, Authenticator, Caller, Credentials, DEFAULT_TENANT, TENANT_HEADER,
};
pub use extract::OneOrMany;
pub use extract::{ApiJson, ApiPath, ApiQuery, JsonBytes, malformed_json, read_body};
pub use problem::Problem;

use std::sync::Arc;

/// The most bytes of request body an API route reads, unless its router sets another limit
/// with `axum::extract::DefaultBodyLimit::max`. Beyond it the request is refused with 413 as
/// soon as the limit is crossed (or at once, when `Content-Length` announces more), so a body
/// is never buffered whole.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// What the API routes serve.
pub struct ApiState {
    pub custom: crate::custom::CustomMetrics,
    pub access: Arc<Access>,
    /// The most bytes of request body a route reads (`[api] max_body_bytes`).
    pub body_limit: usize,
    /// Where StatsD lines posted over HTTP go.
    pub statsd: StatsdIntake,
    /// Counts every answer in `tallyd_api_requests_total{route,code}`.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    /// Pushes from batch jobs (Pushgateway's routes).
    pub push: Arc<crate::push::Pushes>,
    /// `[query]`: the remote store the query answers from, when one is configured.
    pub query: crate::custom::backend::QueryBackend,
}

/// What an ingester for StatsD lines over HTTP is made of (one per request).
pub struct StatsdIntake {
    pub recorder: Arc<crate::record::Recorder>,
    /// Shared by all requests: their lines count in `tallyd_lines_total` and the error
    /// counters like any listener's.
    pub stats: Arc<crate::telemetry::ReceiverStats>,
    pub options: crate::ingest::IngestOptions,
}

/// The API's routes, with their authenticator, body limit and request counter.
pub fn routes(state: Arc<ApiState>) -> axum::Router {
    use utoipa::OpenApi as _;
    let (router, document) =
        utoipa_axum::router::OpenApiRouter::with_openapi(openapi::Doc::openapi())
            .merge(matih::routes())
            .merge(inputs::routes())
            .merge(charts::routes())
            .split_for_parts();
    let document = document.to_json().expect("the OpenAPI document serialises");
    router
        .route(
            openapi::PATH,
            axum::routing::get(move || async move {
                (
                    [(hyper::header::CONTENT_TYPE, "application/json")],
                    document,
                )
            }),
        )
        // Deeploy's and Pushgateway's routes are their clients' contracts, not ours: they are
        // not in the document.
        .merge(deeploy::routes())
        .merge(pushgateway::routes())
        // One layer of four, outermost first: each `Router::layer` boxes every route again, and
        // a request clones each box (callgrind: 18 `clone_box`es a record with four layers, 5
        // with one).
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::Extension(
                    Arc::clone(&state.access) as Arc<dyn Authenticator>
                ))
                .layer(axum::extract::DefaultBodyLimit::max(state.body_limit))
                .layer(axum::middleware::from_fn_with_state(
                    Arc::clone(&state.telemetry),
                    count_request,
                ))
                .layer(axum::middleware::map_response(problem::method_problem)),
        )
        .with_state(state)
}

/// Counts the answer by route pattern and status.
async fn count_request(
    axum::extract::State(telemetry): axum::extract::State<Arc<crate::telemetry::Telemetry>>,
    route: Option<axum::extract::MatchedPath>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    telemetry.record_api_request(route, response.status().as_u16());
    response
}

/// Whether `path` belongs to the API (whose answers are JSON, and whose routes may read bodies):
/// `/api`, `/workspaces` for Deeploy's client, and the push routes (`/metrics/job/…`).
pub fn owns(path: &str) -> bool {
    path.strip_prefix("/api")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        || deeploy::owns(path)
        || pushgateway::owns(path)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use axum::extract::DefaultBodyLimit;
    use axum::routing::{get, post};
    use axum::{Extension, Router};
    use serde::{Deserialize, Serialize};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;

    use super::super::testing::{RawResponse, TestServer, read_to_close};
    use super::*;

    #[test]
    fn the_api_owns_api_and_what_is_under_it() {
        assert!(owns("/api"));
        assert!(owns("/api/"));
        assert!(owns("/api/v1/tokens"));
        assert!(!owns("/apis"));
        assert!(owns("/workspaces/w/deployments/d/customMetrics"));
        assert!(!owns("/metrics"));
        assert!(!owns("/"));
    }

    #[derive(Debug, Deserialize, Serialize)]
    struct Thing {
        name: String,
        count: u32,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(Deserialize)]
    struct Search {
        limit: u32,
    }

    /// Accepts one bearer token.
    struct OneToken;

    impl Authenticator for OneToken {
        fn authenticate(&self, credentials: Option<&Credentials>) -> Result<Caller, &'static str> {
            match credentials {
                Some(Credentials::Bearer(token)) if token == "s3cret" => Ok(Caller {
                    name: "ci".into(),
                    ..Caller::anonymous()
                }),
                None => Err("this resource needs an Authorization header"),
                _ => Err("the credentials were not accepted"),
            }
        }
    }

    async fn create(ApiJson(thing): ApiJson<Thing>) -> ApiJson<Thing> {
        ApiJson(thing)
    }

    async fn search(ApiQuery(search): ApiQuery<Search>) -> String {
        search.limit.to_string()
    }

    async fn whoami(caller: Caller) -> String {
        caller.name
    }

    /// Test routes under /api, with a 1 KiB body limit and one accepted token.
    async fn api_server() -> TestServer {
        let router = Router::new()
            .route("/api/test/things", post(create))
            .route("/api/test/search", get(search))
            .route("/api/test/whoami", get(whoami))
            .layer(DefaultBodyLimit::max(1024))
            .layer(Extension(Arc::new(OneToken) as Arc<dyn Authenticator>));
        TestServer::with_router(router).await
    }

    fn post_json(body: &str) -> String {
        format!(
            "POST /api/test/things HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn problem(response: &RawResponse) -> serde_json::Value {
        assert_eq!(
            response.header("content-type"),
            Some("application/problem+json"),
            "{}",
            response.text()
        );
        serde_json::from_slice(&response.body).unwrap()
    }

    /// Sends raw bytes on a fresh connection and reads the answer up to the close.
    async fn exchange(server: &TestServer, bytes: &[u8]) -> RawResponse {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(bytes).await;
        RawResponse::parse(&read_to_close(&mut stream).await)
    }

    #[tokio::test]
    async fn a_json_body_is_read_into_its_type() {
        let server = api_server().await;
        let request = post_json(r#"{"name": "a", "count": 2}"#)
            .replace("Host: test\r\n", "Host: test\r\nConnection: close\r\n");
        let response = server.send(&request).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("content-type"), Some("application/json"));
        assert_eq!(response.text(), r#"{"name":"a","count":2,"tags":[]}"#);
    }

    #[tokio::test]
    async fn a_read_body_keeps_the_connection_alive() {
        let server = api_server().await;
        let body = r#"{"name": "a", "count": 2}"#;
        let two = format!(
            "{}{}",
            post_json(body),
            post_json(body).replace("Host: test\r\n", "Host: test\r\nConnection: close\r\n",)
        );
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(two.as_bytes()).await.unwrap();
        let text = String::from_utf8(read_to_close(&mut stream).await).unwrap();
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");
    }

    #[tokio::test]
    async fn malformed_json_is_400_with_line_and_column() {
        let server = api_server().await;
        let response = server
            .send(&post_json("{\"name\": \"a\",\n \"count\": }"))
            .await;
        assert_eq!(response.status, 400);
        let problem = problem(&response);
        assert_eq!(problem["code"], "malformed_json");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("line 2 column"), "{detail}");
        // An error answer to a request with a body closes: the body may be unread.
        assert_eq!(response.header("connection"), Some("close"));
    }

    #[tokio::test]
    async fn trailing_bytes_after_the_json_are_malformed() {
        let server = api_server().await;
        let response = server
            .send(&post_json(r#"{"name": "a", "count": 2} x"#))
            .await;
        assert_eq!(response.status, 400);
        assert_eq!(problem(&response)["code"], "malformed_json");
    }

    #[tokio::test]
    async fn json_that_does_not_fit_the_type_is_422_naming_the_field() {
        let server = api_server().await;
        for (body, field) in [
            (r#"{"name": "a", "count": "x"}"#, "count"),
            (r#"{"name": "a", "count": 1, "tags": ["ok", 7]}"#, "tags[1]"),
        ] {
            let response = server.send(&post_json(body)).await;
            assert_eq!(response.status, 422, "{body}");
            let problem = problem(&response);
            assert_eq!(problem["code"], "invalid_field");
            assert_eq!(problem["field"], field, "{problem}");
            assert_eq!(problem["status"], 422);
            assert_eq!(problem["type"], "about:blank");
        }
        let response = server.send(&post_json(r#"{"name": "a"}"#)).await;
        assert_eq!(response.status, 422);
        assert!(
            problem(&response)["detail"]
                .as_str()
                .unwrap()
                .contains("missing field `count`")
        );
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_is_415() {
        let server = api_server().await;
        for content_type in ["Content-Type: text/plain\r\n", ""] {
            let request =
                post_json("{}").replace("Content-Type: application/json\r\n", content_type);
            let response = server.send(&request).await;
            assert_eq!(response.status, 415, "{content_type:?}");
            assert_eq!(problem(&response)["code"], "unsupported_media_type");
        }
        let request = post_json(r#"{"name": "a", "count": 2}"#)
            .replace(
                "application/json",
                "application/merge-patch+json; charset=utf-8",
            )
            .replace("Host: test\r\n", "Host: test\r\nConnection: close\r\n");
        assert_eq!(server.send(&request).await.status, 200);
    }

    #[tokio::test]
    async fn a_body_announced_over_the_limit_is_413_before_it_is_read() {
        let server = api_server().await;
        let started = Instant::now();
        let response = exchange(
            &server,
            b"POST /api/test/things HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
              Content-Length: 10000000000\r\n\r\n{\"name\"",
        )
        .await;
        assert_eq!(response.status, 413);
        assert_eq!(problem(&response)["code"], "body_too_large");
        assert_eq!(response.header("connection"), Some("close"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_chunked_body_is_cut_at_the_limit_with_413() {
        let server = api_server().await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(
                b"POST /api/test/things HTTP/1.1\r\nHost: test\r\n\
                  Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
            )
            .await
            .unwrap();
        // 3 KiB in 512-byte chunks, never the last chunk: the answer cannot wait for the end.
        let chunk = format!("200\r\n{}\r\n", " ".repeat(512));
        for _ in 0..6 {
            let _ = stream.write_all(chunk.as_bytes()).await;
        }
        let response = RawResponse::parse(&read_to_close(&mut stream).await);
        assert_eq!(response.status, 413);
        let problem = problem(&response);
        assert_eq!(problem["code"], "body_too_large");
        assert!(problem["detail"].as_str().unwrap().contains("1024 bytes"));
    }

    #[tokio::test]
    async fn query_parameters_are_read_into_their_type() {
        let server = api_server().await;
        let response = server.get("/api/test/search?limit=5", "").await;
        assert_eq!((response.status, response.text()), (200, "5"));
        let response = server.get("/api/test/search?limit=x", "").await;
        assert_eq!(response.status, 400);
        let problem = problem(&response);
        assert_eq!(problem["code"], "invalid_query");
        assert_eq!(problem["field"], "limit", "{problem}");
        let response = server.get("/api/test/search", "").await;
        assert_eq!(response.status, 400);
        assert!(problem_detail(&response).contains("limit"));
    }

    fn problem_detail(response: &RawResponse) -> String {
        problem(response)["detail"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_caller_needs_accepted_credentials() {
        let server = api_server().await;
        for (header, code) in [
            ("", "missing_credentials"),
            ("Authorization: Bearer wrong\r\n", "invalid_credentials"),
            ("Authorization: Digest x\r\n", "malformed_credentials"),
        ] {
            let response = server.get("/api/test/whoami", header).await;
            assert_eq!(response.status, 401, "{header}");
            assert_eq!(
                response.header("www-authenticate"),
                Some("Bearer realm=\"tallyd\"")
            );
            assert_eq!(problem(&response)["code"], code);
        }
        let response = server
            .get("/api/test/whoami", "Authorization: Bearer s3cret\r\n")
            .await;
        assert_eq!((response.status, response.text()), (200, "ci"));
    }

    #[tokio::test]
    async fn without_an_authenticator_nobody_is_accepted() {
        let router = Router::new().route("/api/test/whoami", get(whoami));
        let server = TestServer::with_router(router).await;
        let response = server
            .get("/api/test/whoami", "Authorization: Bearer s3cret\r\n")
            .await;
        assert_eq!(response.status, 401);
        assert_eq!(problem(&response)["code"], "invalid_credentials");
    }
}
