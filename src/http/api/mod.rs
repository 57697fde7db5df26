//! The building blocks of the REST API under `/api`: what every route answers on failure (an
//! RFC 9457 [`Problem`] document), how a route reads its input ([`ApiJson`], [`ApiQuery`],
//! bodies bounded by [`DEFAULT_BODY_LIMIT`]) and who is calling ([`Caller`], decided by an
//! [`Authenticator`]).
//!
//! - `problem.rs`: the problem document and its response;
//! - `extract.rs`: JSON and query extractors whose every rejection is a problem document;
//! - `auth.rs`: the `Authorization` header and the authentication hook.
//!
//! No public route is mounted yet; an unknown `/api` path answers a 404 problem document.

mod auth;
mod extract;
mod problem;

pub use auth::{AuthRejection, Authenticator, Caller, Credentials};
pub use extract::{ApiJson, ApiQuery, read_body};
pub use problem::Problem;

/// The most bytes of request body an API route reads, unless its router sets another limit
/// with `axum::extract::DefaultBodyLimit::max`. Beyond it the request is refused with 413 as
/// soon as the limit is crossed (or at once, when `Content-Length` announces more), so a body
/// is never buffered whole.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// Whether `path` belongs to the API (whose answers are JSON, and whose routes may read bodies).
pub fn owns(path: &str) -> bool {
    path.strip_prefix("/api")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_owns_api_and_what_is_under_it() {
        assert!(owns("/api"));
        assert!(owns("/api/"));
        assert!(owns("/api/v1/tokens"));
        assert!(!owns("/apis"));
        assert!(!owns("/metrics"));
        assert!(!owns("/"));
    }
}
