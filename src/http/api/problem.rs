//! RFC 9457 problem documents: the one shape every API error takes, so a client handles
//! failures by `code` (stable, snake_case) and shows `detail` to a person.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use hyper::StatusCode;
use hyper::header::{self, HeaderValue};
use serde::Serialize;

/// An API error, answered as `application/problem+json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable, snake_case: what clients match on (titles and details may be reworded).
    pub code: &'static str,
    /// A short summary of this kind of problem; the status' reason phrase unless set.
    pub title: &'static str,
    /// What went wrong this time, for a person.
    pub detail: String,
    /// The input field at fault, as a path (`rules[2].match`), when one is.
    pub field: Option<String>,
}

/// The `type` URI prefix of problems with their own title. A `tag:` URI names the kind
/// without promising a page to dereference.
const TYPE_PREFIX: &str = "tag:tallyd,2026:problem:";

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            title: status.canonical_reason().unwrap_or("Error"),
            detail: detail.into(),
            field: None,
        }
    }

    /// A title of its own: the document's `type` then names `code` instead of `about:blank`
    /// (whose title must be the status' reason phrase).
    pub fn with_title(mut self, title: &'static str) -> Self {
        self.title = title;
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn not_found(path: &str) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no API resource at {path}"),
        )
    }

    /// The document's `type` member.
    pub fn type_uri(&self) -> Cow<'static, str> {
        if Some(self.title) == self.status.canonical_reason() {
            Cow::Borrowed("about:blank")
        } else {
            Cow::Owned(format!("{TYPE_PREFIX}{}", self.code))
        }
    }
}

/// An RFC 9457 problem document, as every API error is answered (`application/problem+json`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct Document<'a> {
    /// `about:blank`, or a `tag:` URI naming the kind of problem.
    #[serde(rename = "type")]
    #[schema(value_type = String)]
    type_uri: Cow<'static, str>,
    title: &'a str,
    /// The HTTP status code.
    status: u16,
    /// What went wrong this time, for a person.
    detail: &'a str,
    /// Stable, snake_case: what clients match on.
    code: &'a str,
    /// The input field at fault, as a path (`[2].labels`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let document = Document {
            type_uri: self.type_uri(),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            field: self.field.as_deref(),
        };
        // Strings and a number: serialising cannot fail.
        let body = serde_json::to_vec(&document).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

/// axum answers a method a route does not take with an empty 405; API clients read every error
/// body as JSON (Deeploy's client does), so it becomes a problem document (keeping `Allow`).
pub async fn method_problem(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let detail = match allow.as_ref().and_then(|methods| methods.to_str().ok()) {
        Some(methods) => format!("this resource takes {methods}"),
        None => "this resource does not take that method".to_owned(),
    };
    let mut problem =
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", detail).into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn document(problem: Problem) -> (Response, serde_json::Value) {
        let response = problem.into_response();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, axum::body::Body::empty()),
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn a_problem_is_a_problem_json_document() {
        let problem = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "invalid type: string \"x\", expected u32",
        )
        .with_field("rules[2].count");
        let (response, document) = document(problem).await;
        assert_eq!(response.status(), 422);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(
            document,
            serde_json::json!({
                "type": "about:blank",
                "title": "Unprocessable Entity",
                "status": 422,
                "detail": "invalid type: string \"x\", expected u32",
                "code": "invalid_field",
                "field": "rules[2].count",
            })
        );
    }

    #[tokio::test]
    async fn a_problem_without_a_field_leaves_it_out() {
        let (_, document) = document(Problem::not_found("/api/x")).await;
        assert!(document.get("field").is_none(), "{document}");
        assert_eq!(document["code"], "not_found");
    }

    #[tokio::test]
    async fn a_problem_with_its_own_title_gets_a_tallyd_type() {
        let problem = Problem::new(StatusCode::CONFLICT, "type_conflict", "gauge, not counter")
            .with_title("Metric type conflict");
        let (_, document) = document(problem).await;
        assert_eq!(document["type"], "tag:tallyd,2026:problem:type_conflict");
        assert_eq!(document["title"], "Metric type conflict");
    }
}
