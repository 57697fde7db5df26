//! Who is calling: the `Authorization` header parsed into [`Credentials`], and the
//! [`Authenticator`] hook that turns them into a [`Caller`]. There is no token store yet: until
//! one is installed (the next issue reads tokens from the config), every request is refused.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;

use super::Problem;

/// What a client presented in `Authorization`.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Bearer <token>`.
    Bearer(String),
    /// `Basic <base64(user:password)>`.
    Basic { user: String, password: String },
}

// Secrets stay out of logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Bearer(_) => f.write_str("Bearer(..)"),
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, ..)"),
        }
    }
}

impl Credentials {
    /// The request's credentials: `Ok(None)` when it has no `Authorization` header, `Err` when
    /// the header is not a scheme we read.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Credentials>, &'static str> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| "the Authorization header is not ASCII")?;
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
        let rest = rest.trim();
        if rest.is_empty() {
            return Err("the Authorization header has no credentials");
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            Ok(Some(Credentials::Bearer(rest.to_owned())))
        } else if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(rest).ok_or("Basic credentials are not base64")?;
            let decoded =
                String::from_utf8(decoded).map_err(|_| "Basic credentials are not UTF-8")?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or("Basic credentials have no ':' between user and password")?;
            Ok(Some(Credentials::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            }))
        } else {
            Err("the Authorization scheme is neither Bearer nor Basic")
        }
    }
}

/// An authenticated client, as an [`Authenticator`] named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
}

/// Decides whom credentials belong to; `None` refuses them. Installed on an API router as a
/// request extension: `.layer(axum::Extension(Arc::new(store) as Arc<dyn Authenticator>))`.
/// The token store of the next issue implements this.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, credentials: &Credentials) -> Option<Caller>;
}

/// A route that takes a [`Caller`] is refused with 401 (and `WWW-Authenticate`) unless the
/// installed [`Authenticator`] accepts the request's credentials. With none installed, nobody
/// is accepted: an API route is never open by mistake.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AuthRejection> {
        let credentials = Credentials::from_headers(&parts.headers).map_err(|reason| {
            AuthRejection(Problem::new(
                StatusCode::UNAUTHORIZED,
                "malformed_credentials",
                reason,
            ))
        })?;
        let Some(credentials) = credentials else {
            return Err(AuthRejection(Problem::new(
                StatusCode::UNAUTHORIZED,
                "missing_credentials",
                "this resource needs an Authorization header",
            )));
        };
        parts
            .extensions
            .get::<Arc<dyn Authenticator>>()
            .and_then(|authenticator| authenticator.authenticate(&credentials))
            .ok_or_else(|| {
                AuthRejection(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_credentials",
                    "the credentials were not accepted",
                ))
            })
    }
}

/// A 401 problem document with the `WWW-Authenticate` challenge RFC 9110 requires.
#[derive(Debug)]
pub struct AuthRejection(pub Problem);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tallyd\""),
        );
        response
    }
}

/// Standard base64 with optional padding; `None` on anything else. (Short: one header's worth.)
/// Standard base64, padded or not (clients differ; both spellings mean the same bytes).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    STANDARD_ANY_PADDING.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Result<Option<Credentials>, &'static str> {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        Credentials::from_headers(&headers)
    }

    #[test]
    fn no_header_is_no_credentials() {
        assert_eq!(Credentials::from_headers(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn a_bearer_token_is_read_whatever_the_scheme_case() {
        for value in ["Bearer abc.def", "bearer abc.def", "BEARER  abc.def "] {
            assert_eq!(
                parse(value),
                Ok(Some(Credentials::Bearer("abc.def".into()))),
                "{value}"
            );
        }
    }

    #[test]
    fn basic_credentials_are_decoded() {
        // "aladdin:open sesame"
        assert_eq!(
            parse("Basic YWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Ok(Some(Credentials::Basic {
                user: "aladdin".into(),
                password: "open sesame".into(),
            }))
        );
        // "a:b:c": the password may hold ':'.
        assert_eq!(
            parse("Basic YTpiOmM="),
            Ok(Some(Credentials::Basic {
                user: "a".into(),
                password: "b:c".into(),
            }))
        );
    }

    #[test]
    fn other_schemes_and_bad_encodings_are_refused() {
        for value in ["Digest x", "Bearer", "Basic", "Basic !!!!", "Basic YWJj"] {
            assert!(parse(value).is_err(), "{value}");
        }
    }

    #[test]
    fn base64_decodes_every_padding_length() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYg").unwrap(), b"foob");
        assert_eq!(base64_decode("Zm9vYmE=").unwrap(), b"fooba");
        assert!(base64_decode("Z").is_none());
    }

    #[test]
    fn credentials_never_show_their_secret() {
        let basic = Credentials::Basic {
            user: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{basic:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::Bearer("t0ken".into())).contains("t0ken"));
    }
}
