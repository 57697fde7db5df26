//! The Matih custom-metrics API, at the seed's paths under
//! `/api/v1/observability/custom-metrics`: register, list, get, delete, record and query. JSON in
//! and out; the rules are [`crate::custom`]'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use hyper::StatusCode;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::Problems;
use super::{ApiJson, ApiState, Caller, OneOrMany, Problem};
use crate::custom::{
    CustomMetric, MetricSpec, MetricType, Origin, QueryAnswer, QuerySpec, Sample, time,
};
use crate::definitions::Aggregation;
use crate::tokens::Scope;

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(register, list))
        .routes(routes!(show, delete))
        .routes(routes!(record))
        .routes(routes!(query))
}

/// A definition as the API answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricDocument {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: MetricType,
    description: Option<String>,
    unit: Option<String>,
    labels: Vec<String>,
    aggregation: Option<Aggregation>,
    retention_days: u32,
    /// Declared in the config file, or a mapping rule's family with history: read-only here.
    read_only: bool,
    /// `api` (the tenant's), `config` (a `[[metric]]`) or `rule` (a `[[mapping]]` family with
    /// history).
    origin: Origin,
    created_at: Option<String>,
    updated_at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

impl MetricDocument {
    fn of(metric: &CustomMetric, default_retention_days: u32, warnings: Vec<String>) -> Self {
        let spec = &metric.spec;
        let stamp = |ms: i64| (ms > 0).then(|| time::format_instant(ms));
        MetricDocument {
            id: metric.uid.clone(),
            name: spec.name.clone(),
            kind: spec.kind,
            description: spec.description.clone(),
            unit: spec.unit.clone(),
            labels: spec.labels.clone(),
            aggregation: spec.aggregation,
            retention_days: spec.retention_days.unwrap_or(default_retention_days),
            read_only: metric.read_only,
            origin: metric.origin,
            created_at: stamp(metric.created_ms),
            updated_at: stamp(metric.updated_ms),
            warnings,
        }
    }
}

fn document(state: &ApiState, metric: &CustomMetric, warnings: Vec<String>) -> MetricDocument {
    let days = state.custom.options().default_retention_days;
    MetricDocument::of(metric, days, warnings)
}

/// Defines a custom metric for the caller's tenant (scope `admin`). The answer carries the
/// naming lint's findings as `warnings` (or, with `[api] naming = "enforce"`, refuses with them).
#[utoipa::path(
    post,
    path = "/api/v1/observability/custom-metrics",
    tag = "custom metrics",
    request_body = MetricSpec,
    responses((status = 201, description = "Defined", body = MetricDocument), Problems)
)]
async fn register(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    ApiJson(spec): ApiJson<MetricSpec>,
) -> Result<Response, Problem> {
    caller.require(Scope::Admin)?;
    let (metric, warnings) = state.custom.register(&caller.tenant, spec).await?;
    let body = document(&state, &metric, warnings);
    Ok((StatusCode::CREATED, ApiJson(body)).into_response())
}

/// The caller's tenant's definitions, the config file's and the families mapping rules keep
/// history for (both read-only, every tenant's).
#[utoipa::path(
    get,
    path = "/api/v1/observability/custom-metrics",
    tag = "custom metrics",
    responses((status = 200, description = "The definitions", body = [MetricDocument]), Problems)
)]
async fn list(State(state): State<Arc<ApiState>>, caller: Caller) -> Result<Response, Problem> {
    caller.require(Scope::Read)?;
    let metrics: Vec<MetricDocument> = state
        .custom
        .list(&caller.tenant)
        .iter()
        .map(|metric| document(&state, metric, Vec::new()))
        .collect();
    Ok(ApiJson(metrics).into_response())
}

/// One definition (the tenant's, the config file's or a mapping rule's family with history).
#[utoipa::path(
    get,
    path = "/api/v1/observability/custom-metrics/{name}",
    tag = "custom metrics",
    params(("name" = String, Path, description = "The metric's name")),
    responses((status = 200, description = "The definition", body = MetricDocument), Problems)
)]
async fn show(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Scope::Read)?;
    let metric = state.custom.get_queryable(&caller.tenant, &name)?;
    Ok(ApiJson(document(&state, &metric, Vec::new())).into_response())
}

/// A deletion done.
#[derive(Serialize, utoipa::ToSchema)]
struct Deleted {
    name: String,
    deleted: bool,
}

/// Deletes a definition with its stored points and its series in `/metrics` (scope `admin`).
#[utoipa::path(
    delete,
    path = "/api/v1/observability/custom-metrics/{name}",
    tag = "custom metrics",
    params(("name" = String, Path, description = "The metric's name")),
    responses((status = 200, description = "Deleted", body = Deleted), Problems)
)]
async fn delete(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    caller.require(Scope::Admin)?;
    state.custom.delete(&caller.tenant, &name).await?;
    Ok(ApiJson(Deleted {
        name,
        deleted: true,
    })
    .into_response())
}

/// Points recorded.
#[derive(Serialize, utoipa::ToSchema)]
struct Recorded {
    metric: String,
    recorded: usize,
}

/// One point, or an array of them: all recorded (durably) or none (scope `write`). A counter
/// adds, a gauge sets, a histogram or summary observes.
#[utoipa::path(
    post,
    path = "/api/v1/observability/custom-metrics/{name}/data",
    tag = "custom metrics",
    params(("name" = String, Path, description = "The metric's name")),
    request_body = SampleBody,
    responses((status = 200, description = "Recorded", body = Recorded), Problems)
)]
async fn record(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(OneOrMany(samples)): ApiJson<OneOrMany<Sample>>,
) -> Result<Response, Problem> {
    caller.require(Scope::Write)?;
    let recorded = state.custom.record(&caller.tenant, &name, samples).await?;
    Ok(ApiJson(Recorded {
        metric: name,
        recorded,
    })
    .into_response())
}

/// The metric's stored points in step-aligned bins `[start + i·step, start + (i+1)·step)`, one
/// series per label set, empty bins left out (scope `read`).
#[utoipa::path(
    get,
    path = "/api/v1/observability/custom-metrics/{name}/query",
    tag = "custom metrics",
    params(
        ("name" = String, Path, description = "The metric's name"),
        ("start" = Option<String>, Query, description = "ISO 8601 with an offset, or unix seconds; default an hour before `end`"),
        ("end" = Option<String>, Query, description = "Exclusive; default now"),
        ("step" = Option<String>, Query, description = "30s, 1m, 1h, 1d...; default 1m; at most 11,000 bins"),
        ("aggregation" = Option<String>, Query, description = "average, sum, min, max, count or last; quantile(q), q in [0, 1], for a histogram or summary with history. Default: the metric's own"),
        ("labels" = Option<String>, Query, description = "Filters as `name:value,name:value` (or repeated `labels[name]=value`)")
    ),
    responses((status = 200, description = "The bins; with `\"backend\": \"prometheus\"` added when `[query]` answers from a Prometheus-compatible store", body = QueryAnswer), Problems)
)]
async fn query(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    caller.require(Scope::Read)?;
    let spec = parse_query(raw.as_deref().unwrap_or(""))?;
    // `[query] backend`: a remote store answers instead of the local one, in the same shape.
    if let Some(backend) = state.query.current() {
        let answer = backend
            .answer(&state.custom, &caller.tenant, &name, spec)
            .await?;
        return Ok(ApiJson(answer).into_response());
    }
    let answer = state.custom.query(&caller.tenant, &name, spec).await?;
    Ok(ApiJson(answer).into_response())
}

/// The body of a record, for the document: one point or an array of them.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum SampleBody {
    One(Sample),
    Many(Vec<Sample>),
}

/// Reads the query string by hand: `labels` comes as `labels=service:a,model:b` or as
/// `labels[service]=a` (any number of them), which `Query` cannot take.
pub fn parse_query(raw: &str) -> Result<QuerySpec, Problem> {
    let bad = |field: &str, detail: String| {
        Problem::new(StatusCode::BAD_REQUEST, "invalid_query", detail).with_field(field)
    };
    let mut spec = QuerySpec::default();
    let mut labels = BTreeMap::new();
    // Two values for one label could only mean an empty answer; said, not silently narrowed.
    let filter = |labels: &mut BTreeMap<String, String>, name: &str, wanted: &str| match labels
        .insert(name.to_owned(), wanted.to_owned())
    {
        Some(before) => Err(bad(
            "labels",
            format!("label {name:?} is filtered twice ({before:?} and {wanted:?})"),
        )),
        None => Ok(()),
    };
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        let slot = match key.as_ref() {
            "start" => &mut spec.start,
            "end" => &mut spec.end,
            "step" => &mut spec.step,
            "aggregation" => &mut spec.aggregation,
            "labels" => {
                for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
                    let (name, wanted) = pair
                        .split_once(':')
                        .ok_or_else(|| bad("labels", format!("{pair:?} is not name:value")))?;
                    filter(&mut labels, name.trim(), wanted.trim())?;
                }
                continue;
            }
            other => {
                if let Some(name) = other
                    .strip_prefix("labels[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    filter(&mut labels, name, &value)?;
                    continue;
                }
                return Err(bad(other, format!("unknown query parameter {other:?}")));
            }
        };
        if slot.is_some() {
            return Err(bad(&key, format!("{key:?} is given twice")));
        }
        *slot = Some(value.into_owned());
    }
    spec.labels = labels;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_filters_in_both_forms() {
        let spec = parse_query("labels=service:ai-service,model:gpt-4&step=5m").unwrap();
        assert_eq!(spec.labels.len(), 2);
        assert_eq!(spec.labels["model"], "gpt-4");
        assert_eq!(spec.step.as_deref(), Some("5m"));
        let spec = parse_query("labels%5Bservice%5D=ai-service&labels[model]=gpt-4").unwrap();
        assert_eq!(spec.labels["service"], "ai-service");
        assert_eq!(spec.labels["model"], "gpt-4");
        assert_eq!(parse_query("").unwrap(), QuerySpec::default());
    }

    #[test]
    fn bad_parameters_are_named() {
        let problem = parse_query("stepp=1m").unwrap_err();
        assert_eq!(problem.field.as_deref(), Some("stepp"));
        let problem = parse_query("labels=nocolon").unwrap_err();
        assert_eq!(problem.field.as_deref(), Some("labels"));
        assert!(parse_query("step=1m&step=2m").is_err());
        for twice in [
            "labels=model:a,model:b",
            "labels=model:a&labels[model]=b",
            "labels[model]=a&labels[model]=a",
        ] {
            let problem = parse_query(twice).unwrap_err();
            assert_eq!(problem.field.as_deref(), Some("labels"), "{twice}");
            assert!(
                problem.detail.contains("\"model\""),
                "{twice}: {}",
                problem.detail
            );
        }
    }
}
