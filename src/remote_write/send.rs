//! Talking to a receiver: the hyper client over rustls, one request per batch, what each answer
//! means (sent, retry, give up, or "this receiver reads 1.0 only"), and how long to wait
//! before a retry.
//!
//! Remote-write 2.0 negotiation follows the spec's words: a 415 to a 2.0 request, or a 2xx
//! without any `X-Prometheus-Remote-Write-*-Written` header (a 1.0 receiver that ignored the
//! `Content-Type` and read the body as an empty 1.0 request, as Prometheus 2.42 does), means
//! the batch was not written; the endpoint then sends 1.0 for as long as it runs, and the
//! batch is sent again as 1.0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode, Uri};

use super::RemoteWriteOptions;
use super::config::ProtobufMessage;
use super::v2;
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
    /// A 2.0 request the receiver did not read as 2.0: send the batch again as 1.0.
    Unsupported { why: String },
}

/// The message a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `prometheus.WriteRequest`.
    V1,
    /// `io.prometheus.write.v2.Request`.
    V2,
}

/// One endpoint's client: the URL, the headers every request carries, and the connection pool.
pub struct Client {
    uri: Uri,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    http: HttpClient,
    message: ProtobufMessage,
    /// Set once the receiver showed it reads 1.0 only; shared by the endpoint's shards.
    fell_back: AtomicBool,
    /// Set once the receiver confirmed a 2.0 request with a written-count header.
    confirmed: AtomicBool,
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
            message: options.protobuf_message,
            fell_back: AtomicBool::new(false),
            confirmed: AtomicBool::new(false),
        })
    }

    /// The message to encode the next batch as.
    pub fn protocol(&self) -> Protocol {
        if self.message == ProtobufMessage::V1 || self.fell_back.load(Ordering::Relaxed) {
            Protocol::V1
        } else {
            Protocol::V2
        }
    }

    /// Sends 1.0 from now on; true for the one call that made the switch (to log and count
    /// it once, whichever shard saw the answer first).
    pub fn fall_back(&self) -> bool {
        self.message != ProtobufMessage::V1 && !self.fell_back.swap(true, Ordering::Relaxed)
    }

    /// Sends one snappy-compressed request body encoded as `protocol`, waiting at most the
    /// timeout for the answer.
    pub async fn send(&self, body: Bytes, protocol: Protocol) -> (Outcome, Duration) {
        let started = Instant::now();
        let request = self.request(body, protocol);
        let outcome = match tokio::time::timeout(self.timeout, request).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retry {
                why: format!("no answer within {:?}", self.timeout),
                retry_after: None,
            },
        };
        (outcome, started.elapsed())
    }

    async fn request(&self, body: Bytes, protocol: Protocol) -> Outcome {
        let (content_type, version) = match protocol {
            Protocol::V1 => ("application/x-protobuf", "0.1.0"),
            Protocol::V2 => (v2::CONTENT_TYPE, "2.0.0"),
        };
        let mut request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CONTENT_ENCODING, "snappy")
            .header("X-Prometheus-Remote-Write-Version", version)
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
        let written = v2::WRITTEN_HEADERS
            .iter()
            .any(|name| response.headers().contains_key(*name));
        // Read the body (a little of it) so the connection can be reused, and to say why.
        let text = match Limited::new(response.into_body(), ERROR_BODY_BYTES)
            .collect()
            .await
        {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
            Err(_) => String::new(),
        };
        let outcome = classify(status, retry_after, text);
        if protocol == Protocol::V1 {
            return outcome;
        }
        if written {
            self.confirmed.store(true, Ordering::Relaxed);
        }
        let confirmed = self.confirmed.load(Ordering::Relaxed);
        negotiate(self.message, confirmed, status, written, outcome)
    }
}

/// What the answer to a 2.0 request means once the protocol is taken into account: the
/// spec's "assume 415" for a 2xx without written-count headers, and under `auto` a 400 before
/// any 2.0 request was confirmed (1.x receivers may answer 400 to a body they cannot read).
pub fn negotiate(
    message: ProtobufMessage,
    confirmed: bool,
    status: StatusCode,
    written: bool,
    outcome: Outcome,
) -> Outcome {
    let unsupported = |why: String| Outcome::Unsupported { why };
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return unsupported(format!("answered {status} to a 2.0 request"));
    }
    if status.is_success() && !written {
        return unsupported(format!(
            "answered {status} to a 2.0 request without any X-Prometheus-Remote-Write-*-Written \
             header: a 1.0 receiver, which read it as an empty 1.0 request"
        ));
    }
    match outcome {
        Outcome::Refused { status: 400, why } if message == ProtobufMessage::Auto && !confirmed => {
            unsupported(format!(
                "{why}, to a 2.0 request before the receiver confirmed any: taken as a 1.0 receiver"
            ))
        }
        outcome => outcome,
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

    fn answer_to_v2(
        message: ProtobufMessage,
        confirmed: bool,
        code: u16,
        written: bool,
    ) -> Outcome {
        let status = StatusCode::from_u16(code).unwrap();
        let outcome = classify(status, None, "no".into());
        negotiate(message, confirmed, status, written, outcome)
    }

    #[test]
    fn a_2_0_request_counts_as_written_only_with_a_written_header() {
        use ProtobufMessage::{Auto, V2};
        for message in [V2, Auto] {
            assert_eq!(answer_to_v2(message, false, 204, true), Outcome::Sent);
            let unconfirmed = answer_to_v2(message, false, 204, false);
            let Outcome::Unsupported { why } = unconfirmed else {
                panic!("a bare 204 taken as written: {unconfirmed:?}");
            };
            assert!(why.contains("Written"), "{why}");
            assert!(matches!(
                answer_to_v2(message, true, 415, false),
                Outcome::Unsupported { .. }
            ));
            // Retries and other refusals keep their meaning.
            assert!(matches!(
                answer_to_v2(message, false, 503, true),
                Outcome::Retry { .. }
            ));
            assert!(matches!(
                answer_to_v2(message, true, 401, false),
                Outcome::Refused { status: 401, .. }
            ));
        }
    }

    #[test]
    fn only_auto_takes_an_early_400_as_a_1_0_receiver() {
        use ProtobufMessage::{Auto, V2};
        assert!(matches!(
            answer_to_v2(Auto, false, 400, false),
            Outcome::Unsupported { .. }
        ));
        // Once the receiver confirmed 2.0, a 400 is a refusal of the samples.
        assert!(matches!(
            answer_to_v2(Auto, true, 400, true),
            Outcome::Refused { status: 400, .. }
        ));
        assert!(matches!(
            answer_to_v2(V2, false, 400, false),
            Outcome::Refused { status: 400, .. }
        ));
    }
}
