//! Pushgateway's push routes, at its paths: `PUT`, `POST` and `DELETE
//! /metrics/job/<job>{/<label>/<value>}` (and `/metrics/job@base64/<job>...`), as
//! `prometheus_client`'s `push_to_gateway`, `pushadd_to_gateway` and `delete_from_gateway`
//! (and Go's `push` package) send them. Thin over [`crate::push`]: the path, the query, the
//! encoding and the format are read here, the rules applied there.
//!
//! Like the rest of the API: a token with the `write` scope when `[[api.tokens]]` are
//! configured (`Authorization: Bearer`, or Basic with the token's id as user, which is what
//! `prometheus_client`'s `basic_auth_handler` sends), anyone on a loopback listener without
//! tokens; the caller's tenant as the `tenant` label; errors as problem documents; bodies up to
//! `[api] max_body_bytes`, after decompression too. The query may add `ttl=<seconds>` (the
//! group's TTL from this push) and `counters=add|set` (how this push's counters count).
//! `GET` on these paths is 405: the pushed series are in `/metrics`.

use std::borrow::Cow;
use std::io::Read as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use serde::Deserialize;

use super::{ApiJson, ApiQuery, ApiState, Caller, Problem, read_body};
use crate::push::{
    self, Counters, Method, Push, PushError, PushRefusal, Pushed, Pushes, proto, text,
};
use crate::tokens::Scope;

/// The push routes.
pub fn routes() -> Router<Arc<ApiState>> {
    let methods = put(push_request)
        .post(push_request)
        .delete(delete)
        .fallback(not_allowed);
    Router::new()
        .route("/metrics/job/{*grouping}", methods.clone())
        .route("/metrics/job@base64/{*grouping}", methods)
}

/// Whether `path` is a push route's (its body is read; its errors are problem documents).
pub fn owns(path: &str) -> bool {
    ["/metrics/job/", "/metrics/job@base64/"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// What a push's query may say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushQuery {
    /// Seconds the group lives after this push without another; 0 = until deleted.
    ttl: Option<u32>,
    /// `add` or `set`: how this push's counters meet their series.
    counters: Option<Counters>,
}

/// `PUT` replaces the group, `POST` the metric names it pushes (scope `write`).
async fn push_request(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PushQuery>,
    request: Request,
) -> Result<Response, Problem> {
    caller.require(Scope::Write)?;
    let method = match *request.method() {
        hyper::Method::PUT => Method::Replace,
        _ => Method::Merge,
    };
    let pushes = Arc::clone(&state.push);
    let grouping = grouping_key(&pushes, &request)?;
    if let Some(ttl) = query.ttl {
        crate::validate::ttl_seconds(f64::from(ttl)).map_err(|reason| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("ttl {reason}"),
            )
            .with_field("ttl")
        })?;
    }
    let headers = request.headers().clone();
    let limit = state.body_limit;
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(problem) => {
            if problem.status == StatusCode::PAYLOAD_TOO_LARGE {
                pushes.stats().refused(PushRefusal::BodyTooLarge);
            }
            return Err(problem);
        }
    };
    let tenant = caller.tenant;
    // Decompressing, parsing and writing the registry take CPU: off the reactor.
    let answer = tokio::task::spawn_blocking(move || {
        let fail = |reason, problem: Problem| {
            pushes.refused(&tenant, &grouping, reason);
            Err(problem)
        };
        let body = match decode(&headers, &body, limit) {
            Ok(body) => body,
            Err((reason, problem)) => return fail(reason, problem),
        };
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // Pushgateway's rule: delimited protobuf when the type says so, else the text format.
        let families = if proto::is_delimited_protobuf(content_type) {
            proto::parse(&body)
        } else {
            text::parse(&body)
        };
        let families = match families {
            Ok(families) => families,
            Err(error) => {
                return fail(
                    PushRefusal::InvalidBody,
                    body_problem(&PushError::Body(error)),
                );
            }
        };
        pushes
            .push(Push {
                tenant,
                grouping,
                method,
                families,
                ttl_secs: query.ttl,
                counters: query.counters,
            })
            .map_err(|error| body_problem(&error))
    })
    .await
    .map_err(|e| {
        tracing::error!("a push failed: {e}");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the push could not be applied",
        )
    })??;
    Ok(ApiJson::<Pushed>(answer).into_response())
}

/// Deletes the group (scope `write`). Answers 200 whether or not it existed, as Pushgateway
/// answers 202 either way.
async fn delete(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    request: Request,
) -> Result<Response, Problem> {
    caller.require(Scope::Write)?;
    let grouping = grouping_key(&state.push, &request)?;
    let deleted = state.push.delete(&caller.tenant, &grouping);
    Ok(ApiJson(serde_json::json!({ "deleted": deleted })).into_response())
}

async fn not_allowed() -> Response {
    let mut response = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "a push path takes PUT, POST and DELETE; the pushed series are in /metrics",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("PUT, POST, DELETE"));
    response
}

fn grouping_key(pushes: &Pushes, request: &Request) -> Result<Vec<(String, String)>, Problem> {
    push::path::grouping_key(request.uri().path()).map_err(|detail| {
        pushes.stats().refused(PushRefusal::InvalidGroupingKey);
        Problem::new(StatusCode::BAD_REQUEST, "invalid_grouping_key", detail)
    })
}

/// The body as sent, or gunzipped (`Content-Encoding: gzip`, as `prometheus_client` sends
/// with `compression='gzip'`), at most `limit` bytes either way.
fn decode<'b>(
    headers: &hyper::HeaderMap,
    body: &'b [u8],
    limit: usize,
) -> Result<Cow<'b, [u8]>, (PushRefusal, Problem)> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or("");
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok(Cow::Borrowed(body));
    }
    if !encoding.eq_ignore_ascii_case("gzip") {
        return Err((
            PushRefusal::UnsupportedEncoding,
            Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {encoding:?}: tallyd reads gzip or none"),
            ),
        ));
    }
    let mut out = Vec::new();
    // One byte past the limit tells a body that is too large from one that just fits.
    let read = flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out);
    match read {
        Err(e) => Err((
            PushRefusal::InvalidBody,
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("the body is not valid gzip: {e}"),
            ),
        )),
        Ok(n) if n > limit => Err((
            PushRefusal::BodyTooLarge,
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than the limit of {limit} bytes once decompressed"),
            ),
        )),
        Ok(_) => Ok(Cow::Owned(out)),
    }
}

/// The problem document of a refused push: 400 for the body's own faults (naming the line),
/// 409 when it conflicts with what `/metrics` holds, 429 at a series cap.
fn body_problem(error: &PushError) -> Problem {
    let reason = error.reason();
    let status = match reason {
        PushRefusal::TypeConflict | PushRefusal::GroupConflict => StatusCode::CONFLICT,
        PushRefusal::SeriesLimit => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    };
    Problem::new(status, reason.label(), error.to_string())
}
