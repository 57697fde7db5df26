//! How an API route reads its input. [`ApiJson`] and [`ApiQuery`] do what axum's `Json` and
//! `Query` do, but every rejection is a [`Problem`] naming the field (or line and column) at
//! fault; [`ApiPath`] does the same for path parameters; [`read_body`] reads a body within the
//! router's limit and never past it.

use axum::RequestExt as _;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, LengthLimitError};
use hyper::StatusCode;
use hyper::body::{Body as _, Bytes};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Problem;

/// A JSON request body deserialised into `T`; as a response, `T` serialised as JSON.
///
/// Refusals: 415 without a JSON `Content-Type`, 413 past the body limit, 400 for a body that
/// is not JSON (with the line and column), 422 for JSON that does not fit `T` (with the field).
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let JsonBytes(bytes) = JsonBytes::from_request(request, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON request body as it came, for a handler that parses it borrowing from it (serde's
/// `DeserializeOwned`, which [`ApiJson`] needs, cannot point into the body). Refusals as
/// [`ApiJson`]'s: 415 and 413 here, and [`malformed_json`] for the handler's parse.
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = Problem;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Problem> {
        if !is_json(request.headers()) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        read_body(request).await.map(JsonBytes)
    }
}

/// The problem [`ApiJson`] answers for `bytes` that are not JSON (with the line and column).
pub fn malformed_json(bytes: &[u8]) -> Problem {
    explain_json::<serde_json::Value>(bytes)
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        // Into a `Vec`, not through axum's `Json` (a `BytesMut` writer): serde_json writes a
        // large answer (16 MB for 1,000 series over a day) in millions of small pieces, each a
        // plain copy here and a `BufMut::put_slice` there.
        match serde_json::to_vec(&self.0) {
            Ok(body) => ([(header::CONTENT_TYPE, APPLICATION_JSON)], body).into_response(),
            Err(error) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("the answer could not be written as JSON: {error}"),
            )
            .into_response(),
        }
    }
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `application/json`, or any `application/*+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Reads a request body whole, within the router's `DefaultBodyLimit` (axum's 2 MB when none is
/// set; the server sets [`super::DEFAULT_BODY_LIMIT`]). A `Content-Length` over the limit is
/// refused before reading anything; a chunked body is refused as soon as it crosses it.
pub async fn read_body(request: Request) -> Result<Bytes, Problem> {
    // Before the limit wraps the body, its size hint is the announced `Content-Length`; after,
    // its upper bound is the limit (or the announced length when that is smaller).
    let announced = request.body().size_hint().lower();
    let body = request.with_limited_body().into_body();
    let limit = body.size_hint().upper();
    if let Some(limit) = limit
        && announced > limit
    {
        return Err(too_large(limit));
    }
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if is_length_limit(&e) => Err(too_large(limit.unwrap_or(0))),
        Err(e) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            format!("could not read the request body: {e}"),
        )),
    }
}

fn too_large(limit: u64) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// The limit's error comes wrapped in axum's own error, maybe twice: look down the chain.
fn is_length_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.is::<LengthLimitError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    // Tracking the path costs an allocation per object key (a batch of 1,000 points spent a
    // third of its CPU in it): parse without it, and again with it only to explain a refusal.
    match serde_json::from_slice(bytes) {
        Ok(value) => Ok(value),
        Err(_) => Err(explain_json::<T>(bytes)),
    }
}

/// Why `bytes` is not a `T`: the problem, with the path of the field at fault.
fn explain_json<T: DeserializeOwned>(bytes: &[u8]) -> Problem {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Err(error) => {
            let path = error.path().to_string();
            let problem = json_problem(&error.into_inner());
            // serde_path_to_error spells the root ".".
            if path == "." {
                problem
            } else {
                problem.with_field(path)
            }
        }
        // Trailing bytes after the value make the body malformed too.
        Ok(_) => match deserializer.end() {
            Err(e) => json_problem(&e),
            // Unreachable: the same bytes failed a moment ago.
            Ok(()) => json_problem(&<serde_json::Error as serde::de::Error>::custom(
                "the body could not be read",
            )),
        },
    }
}

fn json_problem(error: &serde_json::Error) -> Problem {
    if error.is_data() {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            error.to_string(),
        )
    } else {
        // serde_json's message ends "at line L column C".
        Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {error}"),
        )
    }
}

/// The query string deserialised into `T`; a value that does not fit is a 400 problem naming
/// the parameter.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        match Query::try_from_uri(&parts.uri) {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_problem(&rejection)),
        }
    }
}

/// axum's rejection flattens the parameter into its text; the serde_path_to_error error it
/// wraps keeps it apart.
fn query_problem(rejection: &QueryRejection) -> Problem {
    type PathError = serde_path_to_error::Error<serde::de::value::Error>;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if let Some(error) = error.downcast_ref::<PathError>() {
            let problem = Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                error.inner().to_string(),
            );
            let path = error.path().to_string();
            return if path == "." {
                problem
            } else {
                problem.with_field(path)
            };
        }
        cause = error.source();
    }
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        rejection.body_text(),
    )
}

/// The path parameters deserialised into `T`; a segment that does not fit (percent-encoding
/// that is not UTF-8, say) is a 400 problem.
#[derive(Clone, Debug, Default)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                rejection.body_text(),
            )),
        }
    }
}

/// A JSON body that is one object or an array of them (a record of one point or of a batch).
/// Errors keep their path (`[3].value`).
#[derive(Clone, Debug, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Either<T>(std::marker::PhantomData<T>);

        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Either<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object or an array of objects")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|one| OneOrMany(vec![one]))
            }
        }

        deserializer.deserialize_any(Either(std::marker::PhantomData))
    }
}
