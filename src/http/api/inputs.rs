//! The API's push inputs, for processes that cannot send UDP: Seldon's `meta.metrics`
//! (`POST /api/v1/seldon/metrics`) and StatsD lines (`POST /api/v1/statsd`). Both record
//! into `/metrics` only (live values, like the StatsD listeners), with the caller's `tenant`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use hyper::StatusCode;
use hyper::header;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::Problems;
use super::{ApiJson, ApiState, Caller, JsonBytes, Problem, malformed_json, read_body};
use crate::custom::seldon::{SeldonAnswer, SeldonBody, metrics_of};
use crate::ingest::Ingester;
use crate::protocol::Reason;
use crate::record::Refusal;
use crate::tokens::Scope;

/// The listener name StatsD lines over HTTP count under in the self-metrics.
pub const STATSD_PATH: &str = "/api/v1/statsd";

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(seldon))
        .routes(routes!(statsd))
}

/// A Seldon response (`{"meta": {"metrics": [...]}, "data": ...}`), a SeldonMessageList
/// (`{"seldonMessages": [...]}`) or `{"metrics": [...]}`: each metric is recorded or refused
/// with its place and reason (scope `write`).
#[utoipa::path(
    post,
    path = "/api/v1/seldon/metrics",
    tag = "push",
    request_body(content = Object, description = "A SeldonMessage, a SeldonMessageList or {\"metrics\": [...]}"),
    responses((status = 200, description = "What became of each metric", body = SeldonAnswer), Problems)
)]
async fn seldon(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    JsonBytes(bytes): JsonBytes,
) -> Result<Response, Problem> {
    // Malformed JSON is refused before the scope is checked, as every JSON body is.
    let body = SeldonBody::parse(&bytes).map_err(|_| malformed_json(&bytes))?;
    caller.require(Scope::Write)?;
    let no_metrics =
        |detail: String| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "no_metrics", detail);
    let body = body.ok_or_else(|| no_metrics("the body must be a JSON object".into()))?;
    let metrics = metrics_of(&body).map_err(no_metrics)?;
    let limit = state.custom.options().max_batch;
    if metrics.len() > limit {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("{} metrics in one request; at most {limit}", metrics.len()),
        ));
    }
    let answer = state.custom.record_seldon(&caller.tenant, &metrics);
    Ok(ApiJson(answer).into_response())
}

/// What became of the lines of one request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StatsdAnswer {
    /// Samples recorded (a packed line gives several).
    accepted: u64,
    /// Lines or samples not recorded, by reason (the `reason` labels of
    /// `tallyd_sample_errors_total`).
    refused: BTreeMap<&'static str, u64>,
}

/// StatsD lines, one per line, through the same parser and mapping rules as the listeners
/// (scope `write`).
#[utoipa::path(
    post,
    path = "/api/v1/statsd",
    tag = "push",
    request_body(content = String, content_type = "text/plain", description = "StatsD / DogStatsD lines"),
    responses((status = 200, description = "Samples accepted, and refusals by reason", body = StatsdAnswer), Problems)
)]
async fn statsd(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    request: Request,
) -> Result<Response, Problem> {
    caller.require(Scope::Write)?;
    let plain = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/plain"));
    if !plain {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be StatsD lines, sent with Content-Type: text/plain",
        ));
    }
    let body = read_body(request).await?;
    let mut ingester = Ingester::new(
        Arc::clone(&state.statsd.recorder),
        Arc::clone(&state.statsd.stats),
        state.statsd.options.clone(),
    )
    .with_tenant(&caller.tenant);
    for line in body.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            ingester.ingest(line);
        }
    }
    let counts = ingester.flush_stats();
    let mut refused = BTreeMap::new();
    for (reason, count) in Reason::ALL.iter().zip(counts.errors) {
        if count > 0 {
            refused.insert(reason.label(), count);
        }
    }
    let mut not_recorded = 0;
    for (refusal, count) in Refusal::ALL.iter().zip(counts.refusals) {
        if count > 0 {
            refused.insert(refusal.label(), count);
            // A sample whose extra labels a schema dropped is still recorded.
            if *refusal != Refusal::LabelNotInSchema {
                not_recorded += count;
            }
        }
    }
    Ok(ApiJson(StatsdAnswer {
        accepted: counts.samples.saturating_sub(not_recorded),
        refused,
    })
    .into_response())
}
