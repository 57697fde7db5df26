//! Who is calling: the `Authorization` header parsed into [`Credentials`], the [`Authenticator`]
//! hook that turns them into a [`Caller`] (tenant and scopes), and [`Access`], the daemon's
//! authenticator over the configured tokens.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use hyper::StatusCode;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::request::Parts;

use super::Problem;
use crate::tokens::{Scope, Scopes, Tokens};

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
    /// The token's id (`anonymous` without tokens).
    pub name: String,
    /// Whose definitions and data the request reaches.
    pub tenant: String,
    pub scopes: Scopes,
    /// No tokens are configured (a loopback-only API): the tenant comes from `X-Tenant-ID`
    /// or, for Deeploy's routes, the workspace in the path.
    pub anonymous: bool,
}

/// The tenant of anonymous requests that name none.
pub const DEFAULT_TENANT: &str = "default";

impl Caller {
    /// The caller of a request without tokens configured: every scope, the default tenant.
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            tenant: DEFAULT_TENANT.into(),
            scopes: Scopes::ALL,
            anonymous: true,
        }
    }

    /// `Ok` if the caller holds `scope`, else a 403 naming it.
    pub fn require(&self, scope: Scope) -> Result<(), Problem> {
        if self.scopes.allows(scope) {
            Ok(())
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("this needs a token with the {:?} scope", scope.name()),
            ))
        }
    }
}

/// Decides whom credentials belong to (`None`: the request sent none), or why not. Installed
/// on an API router as a request extension:
/// `.layer(axum::Extension(Arc::new(access) as Arc<dyn Authenticator>))`.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate(&self, credentials: Option<&Credentials>) -> Result<Caller, &'static str>;
}

/// The daemon's [`Authenticator`]: the `[[api.tokens]]` in force. Without any, every request
/// is an anonymous caller with every scope, but only on a loopback listener.
#[derive(Debug)]
pub struct Access {
    tokens: parking_lot::RwLock<Tokens>,
    loopback: bool,
}

impl Access {
    pub fn new(tokens: Tokens, loopback: bool) -> Access {
        Access {
            tokens: parking_lot::RwLock::new(tokens),
            loopback,
        }
    }

    /// Puts new tokens in force (a reload).
    pub fn replace(&self, tokens: Tokens) {
        *self.tokens.write() = tokens;
    }

    /// Whether the API answers anyone: with tokens, or without on loopback.
    pub fn open(&self) -> bool {
        !self.tokens.read().is_empty() || self.loopback
    }
}

impl Authenticator for Access {
    fn authenticate(&self, credentials: Option<&Credentials>) -> Result<Caller, &'static str> {
        let tokens = self.tokens.read();
        if tokens.is_empty() {
            return if self.loopback {
                Ok(Caller::anonymous())
            } else {
                Err(
                    "no API tokens are configured ([[api.tokens]]), and without them the API \
                     answers only on a loopback address",
                )
            };
        }
        let owner = match credentials {
            None => return Err("this resource needs an Authorization header"),
            Some(Credentials::Bearer(token)) => tokens.check(None, token),
            Some(Credentials::Basic { user, password }) => tokens.check(Some(user), password),
        };
        owner
            .map(|owner| Caller {
                name: owner.id,
                tenant: owner.tenant,
                scopes: owner.scopes,
                anonymous: false,
            })
            .ok_or("the credentials were not accepted")
    }
}

/// A route that takes a [`Caller`] is refused with 401 (and `WWW-Authenticate`) unless the
/// installed [`Authenticator`] accepts the request's credentials. With none installed, nobody
/// is accepted: an API route is never open by mistake. An `X-Tenant-ID` header must name the
/// caller's tenant (403 otherwise); for an anonymous caller it chooses the tenant.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AuthRejection> {
        let unauthorized = |code, reason: &str| {
            AuthRejection(Problem::new(StatusCode::UNAUTHORIZED, code, reason))
        };
        let credentials = Credentials::from_headers(&parts.headers)
            .map_err(|reason| unauthorized("malformed_credentials", reason))?;
        let authenticator = parts
            .extensions
            .get::<Arc<dyn Authenticator>>()
            .ok_or_else(|| {
                unauthorized("invalid_credentials", "the credentials were not accepted")
            })?;
        let mut caller = authenticator
            .authenticate(credentials.as_ref())
            .map_err(|reason| {
                let code = if credentials.is_none() {
                    "missing_credentials"
                } else {
                    "invalid_credentials"
                };
                unauthorized(code, reason)
            })?;
        if let Some(tenant) = parts.headers.get(TENANT_HEADER) {
            let tenant = tenant.to_str().unwrap_or("").trim();
            if caller.anonymous && !tenant.is_empty() {
                caller.tenant = tenant.to_owned();
            } else if tenant != caller.tenant {
                return Err(AuthRejection(Problem::new(
                    StatusCode::FORBIDDEN,
                    "tenant_mismatch",
                    "X-Tenant-ID names another tenant than the token's",
                )));
            }
        }
        Ok(caller)
    }
}

/// The header a client names its tenant in.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// A 401 problem document with the `WWW-Authenticate` challenge RFC 9110 requires.
#[derive(Debug)]
pub struct AuthRejection(pub Problem);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        let challenge = self.0.status == StatusCode::UNAUTHORIZED;
        let mut response = self.0.into_response();
        if !challenge {
            return response;
        }
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
