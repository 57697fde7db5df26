//! The OpenAPI 3.1 document at `/api/v1/openapi.json`. Its paths come from the routes themselves
//! (`utoipa-axum` registers a handler and its `#[utoipa::path]` together), so the document and
//! the routes cannot drift; this module adds what is common to all of them: the problem
//! responses, the security schemes and the document's metadata.

use std::collections::BTreeMap;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::problem::Document;

/// Where the document is served (readable without a token).
pub const PATH: &str = "/api/v1/openapi.json";

/// The document's fixed parts.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tallyd API",
        description = "Custom metrics (the Matih paths), Seldon meta.metrics and StatsD lines \
                       over HTTP. Errors are RFC 9457 problem documents with a stable `code`.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(Document)),
    modifiers(&Security),
    security(("bearer" = []), ("basic" = []))
)]
pub struct Doc;

/// Bearer (the token's secret) or Basic (the token's id and secret).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// Every problem status an API route may answer, each a problem document. Listed on every
/// route (`responses(..., Problems)`): a route that cannot answer one of them simply never does.
pub struct Problems;

impl utoipa::IntoResponses for Problems {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        [
            ("400", "Malformed: JSON, a time, a step, a query parameter"),
            ("401", "No credentials, or credentials not accepted"),
            ("403", "The token lacks the scope, or names another tenant"),
            ("404", "No such metric (for this tenant)"),
            (
                "409",
                "Already defined, read-only, or a name /metrics serves with another type",
            ),
            ("413", "Body or batch too large"),
            ("415", "Wrong Content-Type"),
            (
                "422",
                "Well-formed but refused: the field at fault is named",
            ),
            ("429", "A series limit is reached"),
            (
                "502",
                "The query backend ([query]) cannot be reached, answered an error, or answered \
                 something unreadable (codes backend_unavailable, backend_error, \
                 backend_bad_answer)",
            ),
            ("503", "The store could not take the write"),
            (
                "504",
                "The query backend ([query]) did not answer within its timeout \
                 (code backend_timeout)",
            ),
        ]
        .into_iter()
        .map(|(status, description)| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content("application/problem+json", content)
                .build();
            (status.to_owned(), RefOr::T(response))
        })
        .collect()
    }
}
