//! The charts page's own routes under `/api/v1/charts`: what the caller's tenant may chart,
//! and a Deeploy metric folded for one chart. Read-only, scope `read`; the rules are
//! [`crate::custom::charts`]'s. Matih metrics are drawn from the Matih query itself.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::matih::parse_query;
use super::openapi::Problems;
use super::{ApiJson, ApiState, Caller, Problem};
use crate::custom::charts::{Catalogue, DeeployChart};
use crate::tokens::Scope;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(catalogue))
        .routes(routes!(deeploy_chart))
}

/// What the caller's tenant may chart: its Matih metrics (and the config file's) and its
/// Deeploy metrics of every deployment, with graph types, axis titles, units and baselines.
#[utoipa::path(
    get,
    path = "/api/v1/charts",
    tag = "charts",
    responses((status = 200, description = "The chartable metrics", body = Catalogue), Problems)
)]
async fn catalogue(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Response, Problem> {
    caller.require(Scope::Read)?;
    Ok(ApiJson(state.custom.catalogue(&caller.tenant)).into_response())
}

/// A Deeploy metric of the caller's tenant folded for a chart: a timeseries in step-aligned
/// bins `[start + i·step, start + (i+1)·step)` (empty bins left out), a line or bar per label
/// (repeated labels folded, in the order first posted); each with its points' prediction ids.
#[utoipa::path(
    get,
    path = "/api/v1/charts/deeploy/{id}",
    tag = "charts",
    params(
        ("id" = String, Path, description = "The metric's id"),
        ("start" = Option<String>, Query, description = "Timeseries only: ISO 8601 with an offset, or unix seconds; default an hour before `end`"),
        ("end" = Option<String>, Query, description = "Timeseries only; exclusive; default now"),
        ("step" = Option<String>, Query, description = "Timeseries only: 30s, 1m, 1h...; default 1m; at most 11,000 bins"),
        ("aggregation" = Option<crate::definitions::Aggregation>, Query, description = "Default: a timeseries' aggregationMethod, else average")
    ),
    responses((status = 200, description = "The chart", body = DeeployChart), Problems)
)]
async fn deeploy_chart(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    caller.require(Scope::Read)?;
    let spec = parse_query(raw.as_deref().unwrap_or(""))?;
    let chart = state
        .custom
        .deeploy_chart(&caller.tenant, &id, spec)
        .await?;
    Ok(ApiJson(chart).into_response())
}
