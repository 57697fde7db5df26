//! The file as written: one serde tree, `deny_unknown_fields` everywhere, a `Default` per
//! section. Every check that can name a key runs inside deserialisation, so a refusal carries
//! the file, line, column and key (the `toml` crate adds them). `config/tallyd.toml` documents
//! every key with its default; a test keeps that file and [`Config::default`] in agreement.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::metric::MetricDefinition;
use crate::custom::{ApiOptions, NamingMode};
use crate::http::HttpOptions;
use crate::ingest::IngestOptions;
use crate::listen::tcp::TcpOptions;
use crate::listen::unix::UnixOptions;
use crate::listen::{Endpoint, Spread, UdpOptions};
use crate::registry::{DEFAULT_BUCKETS, RegistrySettings};
use crate::relay::{LineForm, RelayOptions};
use crate::rules::MappingRule;
use crate::tokens::TokenConfig;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub udp: UdpConfig,
    pub tcp: TcpConfig,
    pub unix: UnixConfig,
    pub http: HttpConfig,
    pub statsd: StatsdConfig,
    pub aggregation: AggregationConfig,
    pub exposition: ExpositionConfig,
    pub limits: LimitsConfig,
    pub lint: LintConfig,
    pub log: LogConfig,
    pub api: ApiConfig,
    pub storage: StorageConfig,
    pub history: HistoryConfig,
    pub relay: RelayConfig,
    pub push: PushConfig,
    /// `[[remote_write]]` endpoints (see `crate::remote_write`).
    pub remote_write: Vec<crate::remote_write::config::RemoteWriteConfig>,
    /// `[query]`: where the query API answers from (see `crate::custom::backend`).
    pub query: crate::custom::backend::QueryConfig,
    /// `[[mapping]]` rules, first match in file order wins (see `rules`).
    pub mapping: Vec<MappingRule>,
    /// `[[metric]]` definitions, by final Prometheus name.
    #[serde(rename = "metric")]
    pub metrics: Vec<toml::Spanned<MetricDefinition>>,
}

/// `[limits]`: the bounds on memory an operator chooses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    #[serde(deserialize_with = "at_least_one")]
    pub max_series: usize,
    #[serde(deserialize_with = "at_least_one")]
    pub max_series_per_metric: usize,
    /// 0 keeps series until restart.
    #[serde(deserialize_with = "ttl_seconds")]
    pub series_ttl_seconds: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let registry = RegistrySettings::default();
        LimitsConfig {
            max_series: registry.max_series,
            max_series_per_metric: registry.max_series_per_metric,
            series_ttl_seconds: registry.series_ttl_secs,
        }
    }
}

/// `[udp]`: the StatsD listeners.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UdpConfig {
    /// Addresses, or `systemd:NAME` for sockets systemd passed (as in every `listen`).
    pub listen: Vec<Endpoint<SocketAddr>>,
    /// Receive threads (and sockets) per address; 0 = one per core.
    pub receivers: usize,
    pub receive_buffer_bytes: usize,
    #[serde(deserialize_with = "datagram_size")]
    pub max_datagram_bytes: usize,
    #[serde(deserialize_with = "batch_size")]
    pub batch: usize,
    pub spread: Spread,
}

impl Default for UdpConfig {
    fn default() -> Self {
        let defaults = UdpOptions::default();
        UdpConfig {
            listen: defaults.listen,
            receivers: defaults.receivers_per_listener,
            receive_buffer_bytes: defaults.receive_buffer_bytes,
            max_datagram_bytes: defaults.max_datagram_bytes,
            batch: defaults.batch,
            spread: defaults.spread,
        }
    }
}

/// `[tcp]`: StatsD lines over TCP streams (off unless `listen` names an address).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    pub listen: Vec<Endpoint<SocketAddr>>,
    /// Longest line accepted (bytes before its `\n`), 64..=65536; longer ones are skipped.
    #[serde(deserialize_with = "line_size")]
    pub max_line_bytes: usize,
    /// Open connections per address at most.
    #[serde(deserialize_with = "at_least_one")]
    pub max_connections: usize,
    #[serde(deserialize_with = "positive_seconds")]
    pub idle_timeout_seconds: f64,
}

impl Default for TcpConfig {
    fn default() -> Self {
        let defaults = TcpOptions::default();
        TcpConfig {
            listen: defaults.listen,
            max_line_bytes: defaults.max_line_bytes,
            max_connections: defaults.max_connections,
            idle_timeout_seconds: defaults.idle_timeout.as_secs_f64(),
        }
    }
}

/// `[unix]`: StatsD datagrams on Unix sockets (off unless `listen` names a path).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnixConfig {
    pub listen: Vec<Endpoint<PathBuf>>,
    /// Permission bits of the socket file, an octal string ("0666").
    #[serde(deserialize_with = "file_mode")]
    pub mode: u32,
    #[serde(deserialize_with = "datagram_size")]
    pub max_datagram_bytes: usize,
    pub receive_buffer_bytes: usize,
}

impl Default for UnixConfig {
    fn default() -> Self {
        let defaults = UnixOptions::default();
        UnixConfig {
            listen: defaults.listen,
            mode: defaults.mode,
            max_datagram_bytes: defaults.max_datagram_bytes,
            receive_buffer_bytes: defaults.receive_buffer_bytes,
        }
    }
}

/// `[relay]`: forward the lines received to upstream StatsD servers (off unless `targets`
/// names one).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// `host:port` of each upstream, resolved at start and at every reload.
    #[serde(deserialize_with = "relay_targets")]
    pub targets: Vec<String>,
    pub lines: LineForm,
    #[serde(deserialize_with = "relay_datagram_size")]
    pub max_datagram_bytes: usize,
    #[serde(deserialize_with = "flush_interval")]
    pub flush_interval_seconds: f64,
    #[serde(deserialize_with = "relay_queue")]
    pub queue_bytes: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        let defaults = RelayOptions::default();
        RelayConfig {
            targets: defaults.targets,
            lines: defaults.lines,
            max_datagram_bytes: defaults.max_datagram_bytes,
            flush_interval_seconds: defaults.flush_interval.as_secs_f64(),
            queue_bytes: defaults.queue_bytes,
        }
    }
}

/// `[push]`: pushes from batch jobs (Pushgateway's `/metrics/job/...`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Seconds a push group lives after its last push; 0 keeps it until deleted.
    #[serde(deserialize_with = "ttl_seconds")]
    pub default_ttl_seconds: u32,
    /// Add pushed counters to their series instead of setting them.
    pub add_counters: bool,
}

/// `[http]`: the server for /metrics and the health endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: Endpoint<SocketAddr>,
    #[serde(deserialize_with = "positive_seconds")]
    pub header_read_timeout_seconds: f64,
    #[serde(deserialize_with = "positive_seconds")]
    pub request_timeout_seconds: f64,
    #[serde(deserialize_with = "positive_seconds")]
    pub idle_timeout_seconds: f64,
    #[serde(deserialize_with = "at_least_one")]
    pub max_connections: usize,
    #[serde(deserialize_with = "at_least_one")]
    pub max_concurrent_scrapes: usize,
    pub gzip: bool,
    /// Serve `POST /-/reload` and `POST /-/quit` (statsd_exporter's `--web.enable-lifecycle`).
    pub enable_lifecycle: bool,
    /// Hex SHA-256 of the bearer token `/metrics` requires; empty: `/metrics` is open.
    #[serde(deserialize_with = "optional_sha256")]
    pub scrape_token_sha256: Option<[u8; 32]>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let defaults = HttpOptions::default();
        HttpConfig {
            listen: Endpoint::Bind(SocketAddr::from(([0, 0, 0, 0], 9102))),
            header_read_timeout_seconds: defaults.header_read_timeout.as_secs_f64(),
            request_timeout_seconds: defaults.request_timeout.as_secs_f64(),
            idle_timeout_seconds: defaults.idle_timeout.as_secs_f64(),
            max_connections: defaults.max_connections,
            max_concurrent_scrapes: defaults.max_concurrent_scrapes,
            gzip: defaults.enable_gzip,
            enable_lifecycle: false,
            scrape_token_sha256: None,
        }
    }
}

/// `[api]`: the REST API under `/api` (custom metrics, Seldon, StatsD over HTTP) and Deeploy's
/// routes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// What the naming lint does to a new definition: `warn` answers its findings, `enforce`
    /// refuses the definition with them.
    pub naming: NamingMode,
    /// A prefix every API-defined name must start with (empty: none).
    pub required_prefix: String,
    #[serde(deserialize_with = "at_least_one")]
    pub max_body_bytes: usize,
    /// Most points in one request.
    #[serde(deserialize_with = "at_least_one")]
    pub max_batch: usize,
    pub tokens: Vec<TokenConfig>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        let defaults = ApiOptions::default();
        ApiConfig {
            naming: defaults.naming,
            required_prefix: defaults.required_prefix,
            max_body_bytes: crate::http::api::DEFAULT_BODY_LIMIT,
            max_batch: defaults.max_batch,
            tokens: Vec::new(),
        }
    }
}

/// `[storage]`: where the API's definitions and points are kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The data directory, relative to the working directory unless absolute.
    pub dir: PathBuf,
    /// How long points are kept when their metric says nothing.
    #[serde(deserialize_with = "at_least_one_u32")]
    pub default_retention_days: u32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            dir: PathBuf::from("data"),
            default_retention_days: ApiOptions::default().default_retention_days,
        }
    }
}

/// `[history]`: how metrics that ask for history (`history = true` in `[[metric]]`) are
/// sampled into the store, and the resolutions kept (see `crate::history`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Seconds between samples: the finest tier's resolution.
    #[serde(deserialize_with = "at_least_one_u32")]
    pub interval_seconds: u32,
    /// Finest first; each resolution a multiple of the one before.
    #[serde(deserialize_with = "history_tiers")]
    pub tiers: Vec<TierConfig>,
}

/// One `[history] tiers` entry, durations as `10s`, `1m`, `1h`, `15d`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub resolution: String,
    pub retention: String,
}

impl TierConfig {
    fn new(resolution: &str, retention: &str) -> TierConfig {
        TierConfig {
            resolution: resolution.into(),
            retention: retention.into(),
        }
    }

    /// The tier, or why not, naming the key of entry `index`.
    pub fn tier(&self, index: usize) -> Result<crate::store::tiers::Tier, String> {
        let parse = |key: &str, text: &str| {
            crate::custom::time::parse_step(text).map_err(|e| format!("tiers[{index}].{key}: {e}"))
        };
        Ok(crate::store::tiers::Tier {
            resolution_ms: parse("resolution", &self.resolution)?,
            retention_ms: parse("retention", &self.retention)?,
        })
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            interval_seconds: 10,
            tiers: vec![
                TierConfig::new("10s", "1d"),
                TierConfig::new("1m", "15d"),
                TierConfig::new("1h", "365d"),
            ],
        }
    }
}

fn history_tiers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<TierConfig>, D::Error> {
    let tiers = Vec::<TierConfig>::deserialize(d)?;
    let parsed = (tiers.iter().enumerate())
        .map(|(i, tier)| tier.tier(i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(serde::de::Error::custom)?;
    crate::store::tiers::check(&parsed).map_err(serde::de::Error::custom)?;
    Ok(tiers)
}

/// `[statsd]`: how StatsD lines are read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdConfig {
    /// Etsy semantics: a gauge value with a leading `+`/`-` is a delta. `false` gives the
    /// DogStatsD agent's meaning (always absolute).
    pub gauge_deltas: bool,
    /// Export the DogStatsD `|c:` container id as label `container_id`.
    pub container_id_label: bool,
    #[serde(deserialize_with = "at_least_one")]
    pub cache_capacity: usize,
    /// Deprecated here: `[aggregation] histogram_buckets`.
    #[serde(deserialize_with = "some_buckets")]
    pub histogram_buckets: Option<Vec<f64>>,
    /// Deprecated here: `[aggregation] set_window_seconds`.
    #[serde(deserialize_with = "some_at_least_one_u32")]
    pub set_window_seconds: Option<u32>,
    /// Deprecated here: `[aggregation] max_set_members`.
    #[serde(deserialize_with = "some_at_least_one")]
    pub max_set_members: Option<usize>,
    /// Deprecated here: `[aggregation] shards`.
    #[serde(deserialize_with = "some_usize")]
    pub shards: Option<usize>,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        let ingest = IngestOptions::default();
        StatsdConfig {
            gauge_deltas: ingest.parse.gauge_deltas,
            container_id_label: ingest.container_id_label,
            cache_capacity: ingest.cache_capacity,
            histogram_buckets: None,
            set_window_seconds: None,
            max_set_members: None,
            shards: None,
        }
    }
}

/// `[aggregation]`: how samples from every input (StatsD today, HTTP next) are kept.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    #[serde(deserialize_with = "buckets")]
    pub histogram_buckets: Vec<f64>,
    #[serde(deserialize_with = "at_least_one_u32")]
    pub set_window_seconds: u32,
    #[serde(deserialize_with = "at_least_one")]
    pub max_set_members: usize,
    /// 0 = 16 per core.
    pub shards: usize,
    /// Native buckets for every histogram that does not say otherwise: 0 = none, above 1 = on.
    #[serde(deserialize_with = "native_bucket_factor")]
    pub native_histogram_bucket_factor: f64,
    #[serde(deserialize_with = "native_max_buckets")]
    pub native_histogram_max_buckets: u32,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        let registry = RegistrySettings::default();
        AggregationConfig {
            histogram_buckets: DEFAULT_BUCKETS.to_vec(),
            set_window_seconds: registry.set_window_secs,
            max_set_members: registry.max_set_members,
            shards: 0,
            native_histogram_bucket_factor: registry.native_bucket_factor,
            native_histogram_max_buckets: registry.native_max_buckets,
        }
    }
}

/// `[exposition]`: how /metrics is written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpositionConfig {
    /// Serve counters under statsd_exporter's names (no `_total`) in the 0.0.4 text format.
    pub statsd_exporter_names: bool,
}

/// `[lint]`: the naming lint (`--check-config` prints its findings with their lines).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LintConfig {
    /// Refuse a configuration with naming warnings or errors, instead of only reporting them.
    pub strict: bool,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    #[serde(deserialize_with = "log_filter")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

fn optional_sha256<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    crate::tokens::parse_sha256(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn positive_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be a number of seconds above 0 and at most 86400, got {value}"
        )))
    }
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

fn at_least_one_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match u32::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

fn datagram_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        n @ 512..=65535 => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "must be between 512 and 65535 bytes, got {n}"
        ))),
    }
}

fn line_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let most = crate::listen::tcp::MAX_LINE_BYTES;
    match usize::deserialize(d)? {
        n if (64..=most).contains(&n) => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "must be between 64 and {most} bytes, got {n}"
        ))),
    }
}

fn file_mode<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    match u32::from_str_radix(&text, 8) {
        Ok(mode) if mode <= 0o777 && !text.is_empty() => Ok(mode),
        _ => Err(serde::de::Error::custom(format!(
            "must be octal permission bits like \"0660\", got {text:?}"
        ))),
    }
}

fn batch_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        n @ 1..=1024 => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "must be between 1 and 1024 datagrams, got {n}"
        ))),
    }
}

fn buckets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let bounds = Vec::<f64>::deserialize(d)?;
    crate::validate::buckets(&bounds).map_err(serde::de::Error::custom)?;
    Ok(bounds)
}

fn native_bucket_factor<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let factor = f64::deserialize(d)?;
    crate::validate::native_bucket_factor(factor).map_err(serde::de::Error::custom)?;
    Ok(factor)
}

fn native_max_buckets<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let max = u32::deserialize(d)?;
    crate::validate::native_max_buckets(max).map_err(serde::de::Error::custom)?;
    Ok(max)
}

fn ttl_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let ttl = u32::deserialize(d)?;
    crate::validate::ttl_seconds(f64::from(ttl)).map_err(serde::de::Error::custom)?;
    Ok(ttl)
}

fn some_buckets<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<f64>>, D::Error> {
    buckets(d).map(Some)
}

fn some_at_least_one_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    at_least_one_u32(d).map(Some)
}

fn some_at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    at_least_one(d).map(Some)
}

fn some_usize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    usize::deserialize(d).map(Some)
}

fn relay_targets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let targets = Vec::<String>::deserialize(d)?;
    crate::relay::check_targets(&targets).map_err(serde::de::Error::custom)?;
    Ok(targets)
}

fn relay_datagram_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    // 65,507 is the largest UDP payload over IPv4.
    match usize::deserialize(d)? {
        n @ 64..=65507 => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "must be between 64 and 65507 bytes, got {n}"
        ))),
    }
}

fn flush_interval<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    if (0.01..=3600.0).contains(&value) {
        Ok(value)
    } else {
        Err(serde::de::Error::custom(format!(
            "must be a number of seconds from 0.01 to 3600, got {value}"
        )))
    }
}

fn relay_queue<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let least = crate::relay::BUFFER_BYTES;
    match usize::deserialize(d)? {
        n if (least..=1 << 30).contains(&n) => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "must be between {least} (one relay buffer) and 1073741824 bytes, got {n}"
        ))),
    }
}

fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    normalize_log_filter(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// Checks a `tracing` filter (`info,tallyd::listen=debug`) and returns it with the blanks
/// around each directive removed, which is the form the daemon hands to `EnvFilter`.
///
/// Why trim here: tracing-subscriber 0.3.23 indexes a directive it trimmed with positions
/// taken from the untrimmed text, and panics when leading blanks meet a non-ASCII character
/// (`"info, é=debug"`, found by fuzz/). Without leading blanks the two texts agree.
pub fn normalize_log_filter(level: &str) -> Result<String, String> {
    let normalized = level
        .split(',')
        .map(str::trim)
        .filter(|directive| !directive.is_empty())
        .collect::<Vec<_>>()
        .join(",");
    tracing_subscriber::EnvFilter::try_new(&normalized)
        .map_err(|e| format!("invalid log filter {level:?}: {e}"))?;
    Ok(normalized)
}
