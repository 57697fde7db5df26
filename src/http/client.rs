//! The one outbound HTTP client stack tallyd has (hyper-util's pooled client over
//! hyper-rustls), shared by remote-write and the query backend: how TLS roots are chosen, and
//! how configured credentials become an `Authorization` header and are read from their files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::remote_write::Auth;
use crate::remote_write::config::BasicAuthConfig;

/// A pooled client for `http://` and `https://` URLs, with whole bodies.
pub type HttpClient = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client whose TLS trusts `ca_pem`'s certificates when given, else the system's roots (read
/// only when `https` is true: plain HTTP never uses TLS, so a host without roots still works).
pub fn build(ca_pem: Option<&str>, https: bool) -> Result<HttpClient, String> {
    // ring rather than aws-lc-rs: it builds with the C compiler alone (no cmake, no Go).
    // rustls 0.23.48 deprecates its default set for lacking post-quantum key exchange,
    // which metrics in transit can do without; the suites and checks are unchanged.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match (ca_pem, https) {
        (Some(pem), _) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("tls_ca_file: not PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("tls_ca_file: a certificate is unusable: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_ca_file: holds no certificate".into());
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
        (None, true) => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| format!("cannot load the system's CA certificates: {e}"))?,
        (None, false) => {
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// The `Authorization` header `auth` sends, if any.
pub fn authorization(auth: &Auth) -> Result<Option<HeaderValue>, String> {
    let value = match auth {
        Auth::None => return Ok(None),
        Auth::Basic { username, password } => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            format!("Basic {encoded}")
        }
        Auth::Bearer(token) => format!("Bearer {token}"),
    };
    HeaderValue::from_str(&value)
        .map(Some)
        .map_err(|_| "the credentials hold characters a header cannot carry".into())
}

/// A secret file's text without its trailing newline; the error names `key`.
pub fn read_secret(key: &str, path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

/// The credentials the keys shared by `[[remote_write]]` and `[query]` name: `basic_auth`
/// (`username` with `password` or `password_file`) or a bearer token (inline or from a file),
/// at most one of them. The error names the key at fault.
pub fn auth_from_keys(
    basic: Option<&BasicAuthConfig>,
    bearer_token: Option<&str>,
    bearer_token_file: Option<&Path>,
) -> Result<Auth, String> {
    let bearer = match (bearer_token, bearer_token_file) {
        (Some(_), Some(_)) => {
            return Err("bearer_token and bearer_token_file are both set: keep one".into());
        }
        (Some(token), None) => Some(token.to_owned()),
        (None, Some(path)) => Some(read_secret("bearer_token_file", path)?),
        (None, None) => None,
    };
    let basic = match basic {
        None => None,
        Some(basic) => {
            let password = match (&basic.password, &basic.password_file) {
                (Some(_), Some(_)) => {
                    return Err(
                        "basic_auth: password and password_file are both set: keep one".into(),
                    );
                }
                (Some(p), None) => p.clone(),
                (None, Some(path)) => read_secret("basic_auth.password_file", path)?,
                (None, None) => return Err("basic_auth: needs password or password_file".into()),
            };
            Some((basic.username.clone(), password))
        }
    };
    match (basic, bearer) {
        (Some(_), Some(_)) => Err("basic_auth and a bearer token are both set: keep one".into()),
        (Some((username, password)), None) => Ok(Auth::Basic { username, password }),
        (None, Some(token)) => Ok(Auth::Bearer(token)),
        (None, None) => Ok(Auth::None),
    }
}

/// An error and its causes on one line (hyper's own message alone is often just "error").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_the_authorization_header() {
        let basic = Auth::Basic {
            username: "a".into(),
            password: "b".into(),
        };
        assert_eq!(
            authorization(&basic).unwrap().unwrap(),
            HeaderValue::from_static("Basic YTpi")
        );
        assert_eq!(
            authorization(&Auth::Bearer("t".into())).unwrap().unwrap(),
            HeaderValue::from_static("Bearer t")
        );
        assert_eq!(authorization(&Auth::None).unwrap(), None);
        assert!(authorization(&Auth::Bearer("a\nb".into())).is_err());
    }

    #[test]
    fn one_kind_of_credentials_at_most() {
        let basic = |password: Option<&str>| BasicAuthConfig {
            username: "u".into(),
            password: password.map(str::to_owned),
            password_file: None,
        };
        let error = auth_from_keys(Some(&basic(Some("p"))), Some("t"), None).unwrap_err();
        assert!(error.contains("keep one"), "{error}");
        let error = auth_from_keys(Some(&basic(None)), None, None).unwrap_err();
        assert!(error.contains("basic_auth"), "{error}");
        let missing = Path::new("/nonexistent/secret");
        let error = auth_from_keys(None, None, Some(missing)).unwrap_err();
        assert!(
            error.starts_with("bearer_token_file: cannot read"),
            "{error}"
        );
        assert!(matches!(
            auth_from_keys(None, None, None).unwrap(),
            Auth::None
        ));
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let error = build(Some("not a certificate"), true).err().unwrap();
        assert!(error.contains("tls_ca_file"), "{error}");
        assert!(build(None, false).is_ok());
    }
}
