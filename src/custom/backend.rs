//! The Prometheus-compatible store behind the query (`[query] backend = "prometheus"`): the
//! `[query]` section, the translation of a Matih query into PromQL `query_range`, the requests
//! (one deadline for all of them), the answer read back into the local query's shape, and the
//! outcome of every request counted in `tallyd_query_backend_requests_total{outcome}`.
//!
//! What is asked, per metric type (series named as `/metrics` serves them, always filtered on
//! the caller's `tenant` label, so no tenant reads another's series through the backend):
//! - a **gauge**: `<agg>_over_time(name{...}[bin])` for every aggregation;
//! - a **counter** (`name_total`, a running total of the recorded increments): the increments
//!   of a bin are the total at its last sample minus the total before the bin,
//!   `(x - x offset bin) >= 0 or x`, kept only for bins holding a sample. `increase()` is not
//!   used: it extrapolates to the bin's edges, so its answers are never the recorded sums. A
//!   series' first sample counts from zero (as tallyd's counters and `history export` start),
//!   and so does the first sample after a reset (the increments before the reset in that bin
//!   are lost). The total before the bin is found within the backend's lookback delta (5 min by
//!   default): a bin after a longer gap counts the whole total. `sum`, `count` (of samples)
//!   and `average` (their ratio) are answered; `min`, `max` and `last` of the increments are
//!   not, because the backend keeps only totals: those ask for the local store (422);
//! - a **histogram** or **summary**: the same differences over `name_sum` and `name_count`:
//!   `sum` and `count` of the observations and their `average`; `min`, `max` and `last` need
//!   single observations, which the backend does not have (422);
//! - a **histogram**'s `quantile(q)`: the same differences over each `name_bucket` series (the
//!   observations of the bin per bucket, cumulative as the buckets are), summed per label set
//!   without `__name__` (a series' first bin keeps its name, the others lose it in the
//!   subtraction) and given to `histogram_quantile(q, …)`: the interpolation tallyd's own
//!   history uses ([`super::query::histogram_quantile`]), over the same per-bin counts when the
//!   scrapes and tallyd's samples see the same observations in each bin;
//! - a **summary**'s `quantile(q)`: the average over the bin of the `name{quantile="q"}` series
//!   tallyd serves (each scrape's value of the quantile over the summary's sliding window), as
//!   tallyd's history averages its samples of it. All quantiles are asked and the one whose
//!   `quantile` label reads as `q` is kept (a label's spelling may differ from the query's);
//!   a `q` the summary does not serve is refused (422) naming those it serves.
//!
//! A quantile's bin without observations (NaN in Prometheus) is left out, as the local answer
//! leaves it out; a summary's bin in which some scrapes are NaN (its window was empty then) is
//! NaN in Prometheus's average and left out too, where tallyd averages the others.
//!
//! Bins: Matih bins are `[start + i·step, start + (i+1)·step)` stamped with their start. A range
//! selector evaluated at the bin's last millisecond `t = start + (i+1)·step - 1` covers exactly
//! the bin when it reaches back `step - 1 ms` with Prometheus 2's closed ranges
//! `[t - range, t]`, or `step` with the left-open ranges `(t - range, t]` of Prometheus 3 and
//! VictoriaMetrics (`range_selectors`). Answers are stamped back to the bin start. A last bin
//! cut short by `end` is asked separately, as an instant query over its own length.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use parking_lot::RwLock;
use serde::{Deserialize, Deserializer, Serialize};

use super::query::{Asked, Bins};
use super::{
    CustomMetrics, MetricType, QueryAnswer, QuerySpec, SeriesAnswer, TENANT_LABEL, family_name,
    time,
};
use crate::definitions::Aggregation;
use crate::http::api::Problem;
use crate::http::client::{self, HttpClient, error_chain};
use crate::registry::Kind;
use crate::remote_write::Auth;
use crate::remote_write::config::BasicAuthConfig;

/// The most bytes of one backend answer read: 1,000 series of 11,000 points fit.
const MAX_ANSWER_BYTES: usize = 512 << 20;

/// The most of an error answer quoted back to the client.
const MAX_ERROR_CHARS: usize = 1000;

/// Where queries are answered from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tallyd's own store.
    #[default]
    Local,
    /// A Prometheus-compatible `query_range` API.
    Prometheus,
}

/// Whether the backend's range selectors include their start (`[t - range, t]`, Prometheus 2,
/// Mimir 2, Thanos) or not (`(t - range, t]`, Prometheus 3, VictoriaMetrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeSelectors {
    #[default]
    Closed,
    LeftOpen,
}

/// `[query]` as written in the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    pub backend: BackendKind,
    /// The API root (`http://prometheus:9090`, Mimir's `https://mimir/prometheus`).
    #[serde(deserialize_with = "api_root")]
    pub url: Option<String>,
    #[serde(deserialize_with = "timeout")]
    pub timeout_seconds: f64,
    pub basic_auth: Option<BasicAuthConfig>,
    pub bearer_token: Option<String>,
    pub bearer_token_file: Option<PathBuf>,
    /// PEM file of the CAs to trust instead of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// A header carrying the caller's tenant (Mimir's `X-Scope-OrgID`).
    #[serde(deserialize_with = "header_name")]
    pub tenant_header: Option<String>,
    pub range_selectors: RangeSelectors,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            backend: BackendKind::Local,
            url: None,
            timeout_seconds: 10.0,
            basic_auth: None,
            bearer_token: None,
            bearer_token_file: None,
            tls_ca_file: None,
            tenant_header: None,
            range_selectors: RangeSelectors::Closed,
        }
    }
}

fn api_root<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let url = String::deserialize(d)?;
    crate::remote_write::config::check_url(&url).map_err(serde::de::Error::custom)?;
    Ok(Some(url.trim_end_matches('/').to_owned()))
}

fn timeout<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    crate::validate::period_seconds(value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

fn header_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(d)?;
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| serde::de::Error::custom(format!("{name:?} is not an HTTP header name")))?;
    Ok(Some(name))
}

/// The backend a valid `[query]` names, with its secret and CA files read; `None` for local.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOptions {
    pub prometheus: Option<PrometheusOptions>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusOptions {
    pub url: String,
    pub timeout: Duration,
    pub auth: Auth,
    pub ca_pem: Option<String>,
    pub tenant_header: Option<String>,
    pub ranges: RangeSelectors,
}

impl QueryConfig {
    /// The options, or why not, naming the key.
    pub fn build(&self) -> Result<QueryOptions, String> {
        let built = || -> Result<Option<PrometheusOptions>, String> {
            if self.backend == BackendKind::Local {
                return Ok(None);
            }
            let url = self.url.clone().ok_or(
                "url: backend = \"prometheus\" needs the API root, e.g. http://127.0.0.1:9090",
            )?;
            let auth = client::auth_from_keys(
                self.basic_auth.as_ref(),
                self.bearer_token.as_deref(),
                self.bearer_token_file.as_deref(),
            )?;
            let ca_pem = match &self.tls_ca_file {
                Some(path) => Some(client::read_secret("tls_ca_file", path)?),
                None => None,
            };
            Ok(Some(PrometheusOptions {
                url,
                timeout: Duration::from_secs_f64(self.timeout_seconds),
                auth,
                ca_pem,
                tenant_header: self.tenant_header.clone(),
                ranges: self.range_selectors,
            }))
        };
        built()
            .map(|prometheus| QueryOptions { prometheus })
            .map_err(|e| format!("[query] {e}"))
    }
}

/// How a backend request ended: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// No connection (refused, unresolvable, TLS failed).
    Unavailable,
    Timeout,
    /// A non-2xx answer, or a 2xx with `"status": "error"`.
    Error,
    /// An answer that does not read as the query API's JSON.
    BadAnswer,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::Unavailable,
        Outcome::Timeout,
        Outcome::Error,
        Outcome::BadAnswer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Unavailable => "unavailable",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
            Outcome::BadAnswer => "bad_answer",
        }
    }
}

/// `tallyd_query_backend_requests_total{outcome}`.
#[derive(Debug, Default)]
pub struct BackendStats {
    outcomes: [AtomicU64; 5],
}

impl BackendStats {
    fn count(&self, outcome: Outcome) {
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    pub fn self_metrics(&self) -> crate::telemetry::SelfMetric {
        crate::telemetry::SelfMetric {
            name: "tallyd_query_backend_requests",
            help: "Requests to the [query] backend (Prometheus-compatible query API), by outcome.",
            kind: Kind::Counter,
            label: Some("outcome"),
            samples: Outcome::ALL
                .iter()
                .map(|o| (o.label().to_owned(), self.requests(*o) as f64))
                .collect(),
        }
    }
}

/// The backend in force, swapped whole on reload.
pub struct QueryBackend {
    current: RwLock<Option<Arc<Prometheus>>>,
    stats: Arc<BackendStats>,
}

impl QueryBackend {
    pub fn new(options: &QueryOptions, stats: Arc<BackendStats>) -> Result<QueryBackend, String> {
        let backend = QueryBackend {
            current: RwLock::new(None),
            stats,
        };
        backend.install(backend.prepare(options)?);
        Ok(backend)
    }

    /// The backend `options` name, built (client, TLS roots) but not yet in force.
    pub fn prepare(&self, options: &QueryOptions) -> Result<Option<Arc<Prometheus>>, String> {
        match &options.prometheus {
            Some(prometheus) => Ok(Some(Arc::new(Prometheus::new(
                prometheus.clone(),
                Arc::clone(&self.stats),
            )?))),
            None => Ok(None),
        }
    }

    /// Puts a prepared backend in force; queries already running finish on the old one.
    pub fn install(&self, prepared: Option<Arc<Prometheus>>) {
        *self.current.write() = prepared;
    }

    /// The remote backend, when one is configured.
    pub fn current(&self) -> Option<Arc<Prometheus>> {
        self.current.read().clone()
    }
}

/// The answer of a query the backend served: the local shape, plus where it came from.
#[derive(Debug, Serialize)]
pub struct BackendAnswer {
    #[serde(flatten)]
    pub answer: QueryAnswer,
    pub backend: &'static str,
}

/// A Prometheus-compatible query API.
pub struct Prometheus {
    options: PrometheusOptions,
    query_range: Uri,
    query: Uri,
    authorization: Option<HeaderValue>,
    http: HttpClient,
    stats: Arc<BackendStats>,
}

/// One series an answer holds: its labels (without `__name__` and `tenant`) and its points as
/// (milliseconds, value).
type Fetched = (BTreeMap<String, String>, Vec<(i64, f64)>);

/// Fetched series by their labels.
type BySeries = BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>>;

/// Why a request failed.
enum Failure {
    Unavailable(String),
    Error(StatusCode, String),
    BadAnswer(String),
}

impl Prometheus {
    fn new(options: PrometheusOptions, stats: Arc<BackendStats>) -> Result<Prometheus, String> {
        let uri = |path: &str| -> Result<Uri, String> {
            format!("{}{path}", options.url)
                .parse()
                .map_err(|e| format!("[query] url {:?}: {e}", options.url))
        };
        let https = options.url.starts_with("https://");
        Ok(Prometheus {
            query_range: uri("/api/v1/query_range")?,
            query: uri("/api/v1/query")?,
            authorization: client::authorization(&options.auth)
                .map_err(|e| format!("[query] {e}"))?,
            http: client::build(options.ca_pem.as_deref(), https)
                .map_err(|e| format!("[query] {e}"))?,
            options,
            stats,
        })
    }

    /// Answers the Matih query `spec` over the tenant's metric `name` from the backend.
    pub async fn answer(
        &self,
        custom: &CustomMetrics,
        tenant: &str,
        name: &str,
        spec: QuerySpec,
    ) -> Result<BackendAnswer, Problem> {
        let metric = custom.get_queryable(tenant, name)?;
        let default = metric.spec.default_aggregation();
        let (bins, aggregation) = spec.asked(default)?;
        let observed = matches!(
            metric.spec.kind,
            MetricType::Histogram | MetricType::Summary
        );
        if matches!(aggregation, Asked::Quantile(_)) && !observed {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_aggregation",
                "quantile(q) is for histograms and summaries",
            )
            .with_field("aggregation"));
        }
        // As the local answer: a metric with history (a Prometheus that scrapes tallyd holds
        // the same series) is every series of its family, a recorded one the tenant's.
        let mut matchers = Vec::new();
        if !custom.answers_from_history(&metric) {
            matchers.push((TENANT_LABEL, tenant));
        }
        for (key, value) in &spec.labels {
            if !crate::naming::is_clean_name(key) {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!("{key:?} is not a label name"),
                )
                .with_field("labels"));
            }
            matchers.push((key.as_str(), value.as_str()));
        }
        let plan = Plan {
            family: family_name(&metric.spec),
            kind: metric.spec.kind,
            aggregation,
            matchers: selector_matchers(&matchers),
            ranges: self.options.ranges,
        };
        let series =
            match tokio::time::timeout(self.options.timeout, self.fetch(&plan, bins, tenant)).await
            {
                Ok(result) => result?,
                Err(_) => {
                    self.stats.count(Outcome::Timeout);
                    return Err(Problem::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "backend_timeout",
                        format!(
                            "the query backend at {} did not answer within {:?}",
                            self.options.url, self.options.timeout
                        ),
                    ));
                }
            };
        Ok(BackendAnswer {
            answer: QueryAnswer {
                metric: name.to_owned(),
                aggregation,
                resolution: None,
                start: time::format_instant(bins.start_ms),
                end: time::format_instant(bins.end_ms),
                step: time::format_step(bins.step_ms),
                labels: spec.labels,
                series,
            },
            backend: "prometheus",
        })
    }

    /// The full bins with one `query_range`, a last bin cut short by `end` with one instant
    /// query, merged per series.
    async fn fetch(
        &self,
        plan: &Plan<'_>,
        bins: Bins,
        tenant: &str,
    ) -> Result<Vec<SeriesAnswer>, Problem> {
        let step = bins.step_ms;
        let full = (bins.end_ms - bins.start_ms) / step;
        let mut merged = BySeries::new();
        if full > 0 {
            let form = form(&[
                ("query", &plan.expression(step)?),
                ("start", &seconds(bins.start_ms + step - 1)),
                ("end", &seconds(bins.start_ms + full * step - 1)),
                ("step", &format!("{step}ms")),
            ]);
            for (labels, points) in self.request(&self.query_range, form, tenant).await? {
                let points = points.into_iter().map(|(t, v)| (t + 1 - step, v));
                merged.entry(labels).or_default().extend(points);
            }
        }
        let last_start = bins.start_ms + full * step;
        if last_start < bins.end_ms {
            let form = form(&[
                ("query", &plan.expression(bins.end_ms - last_start)?),
                ("time", &seconds(bins.end_ms - 1)),
            ]);
            for (labels, points) in self.request(&self.query, form, tenant).await? {
                let points = points.into_iter().map(|(_, v)| (last_start, v));
                merged.entry(labels).or_default().extend(points);
            }
        }
        if let Asked::Quantile(q) = plan.aggregation {
            if plan.kind == MetricType::Summary {
                merged = served_quantile(merged, q)?;
            }
            for points in merged.values_mut() {
                points.retain(|(_, value)| !value.is_nan());
            }
        }
        // One series may come back as two (its bins with `__name__`, from a counter's first
        // sample, and without): merged above, put back in time order here.
        Ok(merged
            .into_iter()
            .map(|(labels, mut points)| {
                points.sort_by_key(|(ts, _)| *ts);
                SeriesAnswer::new(labels, points)
            })
            .collect())
    }

    /// One request, counted; its series as (labels without `__name__` and `tenant`, points).
    async fn request(
        &self,
        uri: &Uri,
        form: String,
        tenant: &str,
    ) -> Result<Vec<Fetched>, Problem> {
        let result = self.send(uri, form, tenant).await;
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(Failure::Unavailable(_)) => Outcome::Unavailable,
            Err(Failure::Error(..)) => Outcome::Error,
            Err(Failure::BadAnswer(_)) => Outcome::BadAnswer,
        };
        self.stats.count(outcome);
        let url = &self.options.url;
        result.map_err(|failure| match failure {
            Failure::Unavailable(why) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "backend_unavailable",
                format!("the query backend at {url} cannot be reached: {why}"),
            ),
            Failure::Error(status, why) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "backend_error",
                format!("the query backend at {url} answered {status}: {why}"),
            ),
            Failure::BadAnswer(why) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "backend_bad_answer",
                format!("the query backend at {url} answered something unreadable: {why}"),
            ),
        })
    }

    async fn send(&self, uri: &Uri, form: String, tenant: &str) -> Result<Vec<Fetched>, Failure> {
        let mut request = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("tallyd/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        if let Some(name) = &self.options.tenant_header {
            let value = HeaderValue::from_str(tenant).map_err(|_| {
                Failure::Unavailable(format!("the tenant {tenant:?} cannot be a header value"))
            })?;
            request = request.header(name.as_str(), value);
        }
        let request = request
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Failure::Unavailable(format!("cannot build the request: {e}")))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| Failure::Unavailable(error_chain(&e)))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::BadAnswer(format!("reading the answer: {e}")))?
            .to_bytes();
        read_answer(status, &body)
    }
}

/// The parts of an expression every bin length shares.
struct Plan<'a> {
    family: &'a str,
    kind: MetricType,
    aggregation: Asked,
    /// `{tenant="…",…}`.
    matchers: String,
    ranges: RangeSelectors,
}

impl Plan<'_> {
    /// The PromQL for bins of `len_ms`, evaluated at each bin's last millisecond.
    fn expression(&self, len_ms: i64) -> Result<String, Problem> {
        let window = match self.ranges {
            RangeSelectors::Closed => len_ms - 1,
            RangeSelectors::LeftOpen => len_ms,
        };
        if window < 1 {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_step",
                "the query backend needs bins of at least 2 ms",
            )
            .with_field("step"));
        }
        let m = &self.matchers;
        let series = |suffix: &str| format!("{}{suffix}{m}", self.family);
        let samples = |s: &str| format!("count_over_time({s}[{window}ms])");
        // The recorded increments of the bin, where it holds a sample.
        let increments = |s: &str| {
            format!(
                "((({s} - {s} offset {len_ms}ms) >= 0) or {s}) and {}",
                samples(s)
            )
        };
        let unsupported = || {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "aggregation_unsupported",
                format!(
                    "the query backend keeps running totals of a {}, not its single points: \
                     it answers sum, count{}",
                    self.kind.kind().name(),
                    match self.kind {
                        MetricType::Histogram | MetricType::Summary => {
                            ", average and quantile(q)"
                        }
                        _ => " and average",
                    }
                ),
            )
            .with_field("aggregation")
        };
        let aggregation = match self.aggregation {
            Asked::Plain(aggregation) => aggregation,
            Asked::Quantile(q) if self.kind == MetricType::Histogram => {
                return Ok(format!(
                    "histogram_quantile({q}, sum without () ({}))",
                    increments(&series("_bucket"))
                ));
            }
            // Every quantile it serves; [`served_quantile`] keeps the one asked.
            Asked::Quantile(_) => return Ok(format!("avg_over_time({}[{window}ms])", series(""))),
        };
        Ok(match self.kind {
            MetricType::Gauge => {
                let function = match aggregation {
                    Aggregation::Average => "avg",
                    Aggregation::Sum => "sum",
                    Aggregation::Min => "min",
                    Aggregation::Max => "max",
                    Aggregation::Count => "count",
                    Aggregation::Last => "last",
                };
                format!("{function}_over_time({}[{window}ms])", series(""))
            }
            MetricType::Counter => {
                let total = series("_total");
                match aggregation {
                    Aggregation::Sum => increments(&total),
                    Aggregation::Count => samples(&total),
                    Aggregation::Average => {
                        format!("({}) / {}", increments(&total), samples(&total))
                    }
                    _ => return Err(unsupported()),
                }
            }
            MetricType::Histogram | MetricType::Summary => {
                let (sum, count) = (series("_sum"), series("_count"));
                match aggregation {
                    Aggregation::Sum => increments(&sum),
                    Aggregation::Count => increments(&count),
                    Aggregation::Average => {
                        format!("({}) / (({}) > 0)", increments(&sum), increments(&count))
                    }
                    _ => return Err(unsupported()),
                }
            }
        })
    }
}

/// Of a summary's quantile series (labelled `quantile`), the ones of quantile `q`, without
/// that label; a 422 naming the quantiles served when there are series but none of `q`.
fn served_quantile(series: BySeries, q: f64) -> Result<BySeries, Problem> {
    let mut served: Vec<f64> = Vec::new();
    let mut kept = BTreeMap::new();
    for (mut labels, points) in series {
        let Some(quantile) = labels.remove("quantile") else {
            continue;
        };
        let Ok(value) = quantile.parse::<f64>() else {
            continue;
        };
        if (value - q).abs() < 1e-9 {
            kept.insert(labels, points);
        } else if !served.contains(&value) {
            served.push(value);
        }
    }
    if kept.is_empty() && !served.is_empty() {
        served.sort_by(f64::total_cmp);
        let served: Vec<String> = served.iter().map(|q| format!("quantile({q})")).collect();
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "quantile_not_served",
            format!(
                "the summary does not serve quantile {q}; it serves {}",
                served.join(", ")
            ),
        )
        .with_field("aggregation"));
    }
    Ok(kept)
}

/// `{k="v",…}` with each value escaped as a PromQL string.
fn selector_matchers(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(key);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Milliseconds as the API's decimal seconds.
fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// The query API's envelope.
#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<ResultSeries>,
}

#[derive(Deserialize)]
struct ResultSeries {
    metric: BTreeMap<String, String>,
    /// A matrix's points.
    #[serde(default)]
    values: Vec<(f64, String)>,
    /// A vector's point.
    #[serde(default)]
    value: Option<(f64, String)>,
}

/// An answer's series as (labels, (milliseconds, value)); any status but 2xx, or an envelope
/// saying `error`, is the backend's error with its message.
fn read_answer(status: StatusCode, body: &[u8]) -> Result<Vec<Fetched>, Failure> {
    let envelope: Result<Envelope, _> = serde_json::from_slice(body);
    if !status.is_success() {
        let why = match envelope {
            Ok(Envelope {
                error: Some(error), ..
            }) => error,
            _ => String::from_utf8_lossy(body).trim().to_owned(),
        };
        return Err(Failure::Error(status, clip(why)));
    }
    let envelope = envelope.map_err(|e| Failure::BadAnswer(format!("not the API's JSON: {e}")))?;
    if envelope.status != "success" {
        let why = envelope.error.unwrap_or_else(|| "no message".into());
        return Err(Failure::Error(status, clip(why)));
    }
    let data = envelope
        .data
        .ok_or_else(|| Failure::BadAnswer("no data".into()))?;
    if !matches!(data.result_type.as_str(), "matrix" | "vector") {
        return Err(Failure::BadAnswer(format!(
            "a {} where series were expected",
            data.result_type
        )));
    }
    data.result
        .into_iter()
        .map(|series| {
            let mut labels = series.metric;
            labels.remove("__name__");
            labels.remove(TENANT_LABEL);
            let points = series
                .values
                .into_iter()
                .chain(series.value)
                .map(|(t, v)| {
                    let value = v
                        .parse::<f64>()
                        .map_err(|_| Failure::BadAnswer(format!("{v:?} is not a sample value")))?;
                    Ok(((t * 1000.0).round() as i64, value))
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            Ok((labels, points))
        })
        .collect()
}

fn clip(mut text: String) -> String {
    if let Some((cut, _)) = text.char_indices().nth(MAX_ERROR_CHARS) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(kind: MetricType, aggregation: Aggregation, ranges: RangeSelectors) -> Plan<'static> {
        Plan {
            family: "x",
            kind,
            aggregation: Asked::Plain(aggregation),
            matchers: selector_matchers(&[("tenant", "t")]),
            ranges,
        }
    }

    #[test]
    fn label_values_are_escaped_as_promql_strings() {
        assert_eq!(
            selector_matchers(&[("tenant", "a"), ("k", "q\"\\\n\u{1}é")]),
            r#"{tenant="a",k="q\"\\\n\u0001é"}"#
        );
    }

    #[test]
    fn gauge_windows_cover_exactly_one_bin() {
        let closed = plan(MetricType::Gauge, Aggregation::Max, RangeSelectors::Closed);
        assert_eq!(
            closed.expression(60_000).unwrap(),
            r#"max_over_time(x{tenant="t"}[59999ms])"#
        );
        let open = plan(
            MetricType::Gauge,
            Aggregation::Last,
            RangeSelectors::LeftOpen,
        );
        assert_eq!(
            open.expression(60_000).unwrap(),
            r#"last_over_time(x{tenant="t"}[60000ms])"#
        );
        assert_eq!(closed.expression(1).unwrap_err().code, "invalid_step");
    }

    #[test]
    fn counters_answer_differences_of_totals_and_refuse_what_totals_cannot_tell() {
        let sum = plan(
            MetricType::Counter,
            Aggregation::Sum,
            RangeSelectors::Closed,
        );
        assert_eq!(
            sum.expression(1000).unwrap(),
            r#"(((x_total{tenant="t"} - x_total{tenant="t"} offset 1000ms) >= 0) or x_total{tenant="t"}) and count_over_time(x_total{tenant="t"}[999ms])"#
        );
        for aggregation in [Aggregation::Min, Aggregation::Max, Aggregation::Last] {
            let plan = plan(MetricType::Counter, aggregation, RangeSelectors::Closed);
            assert_eq!(
                plan.expression(1000).unwrap_err().code,
                "aggregation_unsupported"
            );
        }
        let average = plan(
            MetricType::Summary,
            Aggregation::Average,
            RangeSelectors::Closed,
        );
        let text = average.expression(1000).unwrap();
        assert!(
            text.contains("x_sum{") && text.contains("x_count{"),
            "{text}"
        );
    }

    #[test]
    fn a_histograms_quantile_ranks_the_bins_bucket_increases() {
        let mut p99 = plan(
            MetricType::Histogram,
            Aggregation::Sum,
            RangeSelectors::Closed,
        );
        p99.aggregation = Asked::Quantile(0.99);
        let b = r#"x_bucket{tenant="t"}"#;
        assert_eq!(
            p99.expression(1000).unwrap(),
            format!(
                "histogram_quantile(0.99, sum without () (((({b} - {b} offset 1000ms) >= 0) \
                 or {b}) and count_over_time({b}[999ms])))"
            )
        );
        let mut median = plan(
            MetricType::Summary,
            Aggregation::Sum,
            RangeSelectors::LeftOpen,
        );
        median.aggregation = Asked::Quantile(0.5);
        assert_eq!(
            median.expression(1000).unwrap(),
            r#"avg_over_time(x{tenant="t"}[1000ms])"#
        );
    }

    #[test]
    fn a_summarys_quantile_is_the_series_labelled_with_it_or_a_422_naming_those_served() {
        let labels = |quantile: &str| {
            BTreeMap::from([
                ("a".to_owned(), "b".to_owned()),
                ("quantile".to_owned(), quantile.to_owned()),
            ])
        };
        let served = BTreeMap::from([
            (labels("0.5"), vec![(1000, 2.0)]),
            (labels("0.90"), vec![(1000, 7.0)]),
        ]);
        let kept = served_quantile(served.clone(), 0.9).ok().unwrap();
        assert_eq!(
            kept,
            BTreeMap::from([(
                BTreeMap::from([("a".to_owned(), "b".to_owned())]),
                vec![(1000, 7.0)]
            )])
        );
        let refused = served_quantile(served, 0.99).unwrap_err();
        assert_eq!(refused.code, "quantile_not_served");
        assert!(
            refused.detail.contains("quantile(0.5), quantile(0.9)"),
            "{}",
            refused.detail
        );
        // Nothing served in the range: nothing to answer, no refusal.
        assert!(
            served_quantile(BTreeMap::new(), 0.99)
                .ok()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn times_are_decimal_seconds() {
        assert_eq!(seconds(1_700_000_000_999), "1700000000.999");
        assert_eq!(seconds(5), "0.005");
        assert_eq!(seconds(-1), "-1.999");
    }

    #[test]
    fn answers_are_read_with_their_labels_and_errors_keep_the_backend_message() {
        let body = br#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"__name__":"x","tenant":"t","a":"b"},"values":[[1.999,"2"],[2.999,"NaN"]]}]}}"#;
        let series = read_answer(StatusCode::OK, body).ok().unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].0, BTreeMap::from([("a".into(), "b".into())]));
        assert_eq!(series[0].1[0], (1999, 2.0));
        assert!(series[0].1[1].1.is_nan());
        let error = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        match read_answer(StatusCode::BAD_REQUEST, error) {
            Err(Failure::Error(status, why)) => {
                assert_eq!(status, StatusCode::BAD_REQUEST);
                assert_eq!(why, "parse error");
            }
            _ => panic!("a 400 is the backend's error"),
        }
        assert!(matches!(
            read_answer(StatusCode::OK, b"<html>"),
            Err(Failure::BadAnswer(_))
        ));
        assert!(matches!(
            read_answer(StatusCode::BAD_GATEWAY, b"upstream down"),
            Err(Failure::Error(_, why)) if why == "upstream down"
        ));
    }

    #[test]
    fn the_section_names_the_key_at_fault() {
        let config = QueryConfig {
            backend: BackendKind::Prometheus,
            ..QueryConfig::default()
        };
        let error = config.build().unwrap_err();
        assert!(error.starts_with("[query] url:"), "{error}");
        let local = QueryConfig::default().build().unwrap();
        assert_eq!(local.prometheus, None);
        let parsed: Result<QueryConfig, _> = toml::from_str("tenant_header = \"bad header\"");
        assert!(parsed.unwrap_err().to_string().contains("tenant_header"));
        let parsed: Result<QueryConfig, _> = toml::from_str("url = \"ftp://x\"");
        assert!(parsed.unwrap_err().to_string().contains("url"));
    }
}
