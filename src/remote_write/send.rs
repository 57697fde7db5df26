//! Talking to a receiver: the hyper client over rustls, one request per batch, what each answer
//! means (sent, retry, give up), and how long to wait before a retry.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};

use super::RemoteWriteOptions;
use crate::http::client::{HttpClient, error_chain};

/// Most of an error answer's body read (for the log line); the rest is not waited for.
const ERROR_BODY_BYTES: usize = 4096;

/// The longest `Retry-After` honoured; a receiver asking for more gets retried after this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// What one request came to.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// 2xx: the samples are the receiver's.
    Sent,
    /// 5xx, 429, a connection error or the timeout: send the same batch again, after
    /// `retry_after` when the receiver said so.
    Retry {
        why: String,
        retry_after: Option<Duration>,
    },
    /// Any other status: sending it again would be refused again.
    Refused { status: u16, why: String },
}

/// One endpoint's client: the URL, the headers every request carries, and the connection pool.
pub struct Client {
    uri: Uri,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    http: HttpClient,
}

impl Client {
    /// A client for `options`: TLS trusts the CA file's certificates when one is given, else
    /// the system's roots (read only for an `https://` URL).
    pub fn new(options: &RemoteWriteOptions) -> Result<Client, String> {
        let uri: Uri = options
            .url
            .parse()
            .map_err(|e| format!("url {:?}: {e}", options.url))?;
        let http = crate::http::client::build(
            options.ca_pem.as_deref(),
            uri.scheme_str() == Some("https"),
        )?;
        let authorization = crate::http::client::authorization(&options.auth)?;
        Ok(Client {
            uri,
            authorization,
            timeout: options.timeout,
            http,
        })
    }

    /// Sends one snappy-compressed `WriteRequest`, waiting at most the timeout for the answer.
    pub async fn send(&self, body: Bytes) -> (Outcome, Duration) {
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, self.request(body)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                why: format!("no answer within {:?}", self.timeout),
                retry_after: None,
            },
        };
        (outcome, started.elapsed())
    }

    async fn request(&self, body: Bytes) -> Outcome {
        let mut request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(header::CONTENT_ENCODING, "snappy")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header(
                header::USER_AGENT,
                concat!("tallyd/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = match request.body(Full::new(body)) {
            Ok(request) => request,
            Err(e) => {
                return Outcome::Refused {
                    status: 0,
                    why: format!("cannot build the request: {e}"),
                };
            }
        };
        let response = match self.http.request(request).await {
            Ok(response) => response,
            Err(e) => {
                return Outcome::Retry {
                    why: format!("request failed: {}", error_chain(&e)),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Read the body (a little of it) so the connection can be reused, and to say why.
        let text = match Limited::new(response.into_body(), ERROR_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
            Err(_) => String::new(),
        };
        classify(status, retry_after, text)
    }
}

/// What an answer means for the batch: 2xx sent, 5xx and 429 retried, every other status
/// refused for good (Mimir and Cortex answer 400 to samples too old or out of order: resending
/// them would wedge the queue).
pub fn classify(status: StatusCode, retry_after: Option<Duration>, body: String) -> Outcome {
    let why = || {
        if body.is_empty() {
            format!("answered {status}")
        } else {
            format!("answered {status}: {body}")
        }
    };
    if status.is_success() {
        Outcome::Sent
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Outcome::Retry {
            why: why(),
            retry_after,
        }
    } else {
        Outcome::Refused {
            status: status.as_u16(),
            why: why(),
        }
    }
}

/// `Retry-After` in delay-seconds form, capped at [`MAX_RETRY_AFTER`]. The HTTP-date form is
/// not read (the backoff applies instead): receivers of remote-write send seconds.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The wait before retry number `attempt` (0 for the first retry): `min` doubled per attempt,
/// capped at `max`, then scaled by a random factor in [0.5, 1] so that shards and tallyds that
/// failed together do not retry together.
pub fn backoff(min: Duration, max: Duration, attempt: u32, random: u64) -> Duration {
    let doubled = min.saturating_mul(1u32 << attempt.min(20));
    let capped = doubled.min(max);
    // 53 random bits as a fraction in [0, 1).
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    capped.mul_f64(0.5 + fraction / 2.0)
}

/// Random bits for [`backoff`]'s jitter; a fixed value if the system has none to give.
pub fn jitter_bits() -> u64 {
    getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_from_min_up_to_max_within_the_jitter() {
        let (min, max) = (30 * MS, 5000 * MS);
        for (attempt, full) in [(0, 30), (1, 60), (2, 120), (5, 960), (8, 5000), (60, 5000)] {
            let full = full * MS;
            let low = backoff(min, max, attempt, 0);
            assert_eq!(low, full / 2, "attempt {attempt}");
            let high = backoff(min, max, attempt, u64::MAX);
            assert!(
                high <= full && high > full.mul_f64(0.99),
                "attempt {attempt}: {high:?}"
            );
        }
    }

    #[test]
    fn jitter_spreads_the_wait() {
        let waits: std::collections::HashSet<Duration> = (0..20)
            .map(|_| backoff(MS * 100, MS * 100, 0, jitter_bits()))
            .collect();
        assert!(waits.len() > 1, "{waits:?}");
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn only_5xx_and_429_are_retried() {
        let retry = |code: u16| {
            matches!(
                classify(StatusCode::from_u16(code).unwrap(), None, String::new()),
                Outcome::Retry { .. }
            )
        };
        for code in [500, 502, 503, 504, 429] {
            assert!(retry(code), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413, 415] {
            assert!(!retry(code), "{code}");
        }
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None, String::new()),
            Outcome::Sent
        );
        let Outcome::Refused { status, why } =
            classify(StatusCode::BAD_REQUEST, None, "out of order sample".into())
        else {
            panic!("a 400 is not retried");
        };
        assert_eq!(status, 400);
        assert!(why.contains("out of order sample"), "{why}");
    }
}
