//! Deeploy's custom-metrics API at the paths its service and official Python client use, from
//! the server root: `/workspaces/{workspace}/deployments/{deployment}/…` — `customMetric`
//! (create), `customMetric/{id}` (`PATCH`, `DELETE`), `customMetric/{id}/dataPoints` (`POST`
//! a list, `DELETE` to clear), `customMetrics` (list) and `customMetricsChartData`. JSON in and
//! out, every answer with a JSON body (the client reads error bodies with `.json()`); the rules
//! are [`crate::custom::deeploy`]'s.
//!
//! A workspace is a tenant. With tokens, the path's workspace must be the token's tenant (403
//! `workspace_mismatch`: the request is refused for what the token is, before anything is
//! looked up, so it tells nothing about the data); a metric of another workspace or deployment
//! is then simply not found (404). Without tokens (a loopback-only API) the workspace is the
//! tenant, and an `X-Tenant-ID` header must name it.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use hyper::StatusCode;
use hyper::header::HeaderMap;
use hyper::http::request::Parts;
use serde::{Deserialize, Serialize};

use super::{ApiJson, ApiPath, ApiState, Caller, Problem, TENANT_HEADER};
use crate::custom::deeploy::{Changes, NewPoint, Spec};
use crate::tokens::Scope;

/// The first segment of every Deeploy path.
const ROOT: &str = "/workspaces";

/// A deployment's resources live under this.
const DEPLOYMENT: &str = "/workspaces/{workspace}/deployments/{deployment}";

pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route(&format!("{DEPLOYMENT}/customMetric"), post(create))
        .route(
            &format!("{DEPLOYMENT}/customMetric/{{id}}"),
            patch(update).delete(delete),
        )
        .route(
            &format!("{DEPLOYMENT}/customMetric/{{id}}/dataPoints"),
            post(add_points).delete(clear_points),
        )
        .route(&format!("{DEPLOYMENT}/customMetrics"), get(list))
        .route(&format!("{DEPLOYMENT}/customMetricsChartData"), get(charts))
}

/// Whether `path` is Deeploy-shaped (its answers, found or not, are JSON problems on failure).
pub fn owns(path: &str) -> bool {
    path.strip_prefix(ROOT)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The path's names: every route has a workspace and a deployment, some a metric id.
#[derive(Deserialize)]
struct Names {
    workspace: String,
    deployment: String,
    #[serde(default)]
    id: String,
}

/// Who asks, and about what: the caller, its tenant for the path's workspace (checked), and
/// the path's deployment and metric id (empty on the deployment's own routes).
struct Target {
    caller: Caller,
    tenant: String,
    deployment: String,
    id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Target {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let caller = Caller::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let ApiPath(names) = ApiPath::<Names>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let tenant = tenant_of(&caller, &parts.headers, &names.workspace)
            .map_err(IntoResponse::into_response)?;
        Ok(Target {
            caller,
            tenant,
            deployment: names.deployment,
            id: names.id,
        })
    }
}

/// The tenant a request reaches through `workspace`, or why it may not.
fn tenant_of(caller: &Caller, headers: &HeaderMap, workspace: &str) -> Result<String, Problem> {
    if !caller.anonymous {
        return if caller.tenant == workspace {
            Ok(workspace.to_owned())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "workspace_mismatch",
                format!("the credentials do not belong to workspace {workspace:?}"),
            ))
        };
    }
    // Anonymous: the caller's tenant is X-Tenant-ID's when one was sent.
    let named = headers
        .get(TENANT_HEADER)
        .is_some_and(|v| !v.as_bytes().trim_ascii().is_empty());
    if named && caller.tenant != workspace {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "tenant_mismatch",
            format!("X-Tenant-ID names another tenant than workspace {workspace:?}"),
        ));
    }
    Ok(workspace.to_owned())
}

type Answer = Result<Response, Problem>;

async fn create(State(state): State<Arc<ApiState>>, to: Target, body: ApiJson<Spec>) -> Answer {
    to.caller.require(Scope::Admin)?;
    let deeploy = state.custom.deeploy();
    let metric = deeploy.create(&to.tenant, &to.deployment, body.0).await?;
    Ok((StatusCode::CREATED, ApiJson(metric.document())).into_response())
}

async fn list(State(state): State<Arc<ApiState>>, to: Target) -> Answer {
    to.caller.require(Scope::Read)?;
    let metrics = state.custom.deeploy().list(&to.tenant, &to.deployment);
    let documents: Vec<_> = metrics.iter().map(|metric| metric.document()).collect();
    Ok(ApiJson(documents).into_response())
}

async fn charts(State(state): State<Arc<ApiState>>, to: Target) -> Answer {
    to.caller.require(Scope::Read)?;
    let charts = state.custom.deeploy().charts(&to.tenant, &to.deployment);
    Ok(ApiJson(charts.await?).into_response())
}

async fn update(State(state): State<Arc<ApiState>>, to: Target, body: ApiJson<Changes>) -> Answer {
    to.caller.require(Scope::Admin)?;
    let deeploy = state.custom.deeploy();
    let metric = deeploy.update(&to.tenant, &to.deployment, &to.id, body.0);
    Ok(ApiJson(metric.await?.document()).into_response())
}

async fn delete(State(state): State<Arc<ApiState>>, to: Target) -> Answer {
    to.caller.require(Scope::Admin)?;
    let deleted = state
        .custom
        .deeploy()
        .delete(&to.tenant, &to.deployment, &to.id);
    Ok(ApiJson(deleted.await?).into_response())
}

async fn add_points(
    State(state): State<Arc<ApiState>>,
    to: Target,
    body: ApiJson<Vec<NewPoint>>,
) -> Answer {
    to.caller.require(Scope::Write)?;
    let max_batch = state.custom.options().max_batch;
    let deeploy = state.custom.deeploy();
    let stored = deeploy.add_points(&to.tenant, &to.deployment, &to.id, body.0, max_batch);
    Ok((StatusCode::CREATED, ApiJson(stored.await?)).into_response())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Cleared {
    custom_metric_id: String,
    deleted: u64,
}

async fn clear_points(State(state): State<Arc<ApiState>>, to: Target) -> Answer {
    to.caller.require(Scope::Write)?;
    let deeploy = state.custom.deeploy();
    let deleted = deeploy
        .clear_points(&to.tenant, &to.deployment, &to.id)
        .await?;
    let cleared = Cleared {
        custom_metric_id: to.id,
        deleted,
    };
    Ok(ApiJson(cleared).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeploy_owns_workspaces_and_what_is_under_it() {
        assert!(owns("/workspaces"));
        assert!(owns("/workspaces/w/deployments/d/customMetrics"));
        assert!(!owns("/workspacesx"));
        assert!(!owns("/api/v1"));
    }

    fn caller(tenant: &str, anonymous: bool) -> Caller {
        Caller {
            tenant: tenant.into(),
            anonymous,
            ..Caller::anonymous()
        }
    }

    #[test]
    fn a_token_reaches_only_its_own_workspace() {
        let headers = HeaderMap::new();
        assert_eq!(
            tenant_of(&caller("ws1", false), &headers, "ws1").unwrap(),
            "ws1"
        );
        let refused = tenant_of(&caller("ws1", false), &headers, "ws2").unwrap_err();
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::FORBIDDEN, "workspace_mismatch")
        );
    }

    #[test]
    fn without_tokens_the_workspace_is_the_tenant_and_a_tenant_header_must_agree() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            tenant_of(&caller("default", true), &headers, "ws2").unwrap(),
            "ws2"
        );
        headers.insert(TENANT_HEADER, "ws2".parse().unwrap());
        assert_eq!(
            tenant_of(&caller("ws2", true), &headers, "ws2").unwrap(),
            "ws2"
        );
        headers.insert(TENANT_HEADER, "ws1".parse().unwrap());
        let refused = tenant_of(&caller("ws1", true), &headers, "ws2").unwrap_err();
        assert_eq!(refused.code, "tenant_mismatch");
    }
}
