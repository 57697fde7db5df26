//! The configuration: one serde tree read from TOML, the command-line flags that override it,
//! and validation.
//!
//! Every check that can name a key runs inside deserialisation, so a refusal carries the
//! file, line, column and key (the `toml` crate adds them). `config/tallyd.toml` documents every
//! key with its default; a test keeps that file and [`Config::default`] in agreement.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Deserializer};

use crate::definitions::{Aggregation, Definition};
use crate::exposition::ExpositionOptions;
use crate::http::HttpOptions;
use crate::ingest::{IngestOptions, SharedRules};
use crate::listen::{Spread, UdpOptions};
use crate::protocol::ParseOptions;
use crate::registry::{DEFAULT_BUCKETS, Kind, RegistrySettings, SeriesOptions};
use crate::rules::{MappingRule, RuleSet};
use crate::summary::SummaryConfig;

/// The command line.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "tallyd",
    version,
    about = "StatsD/DogStatsD over UDP in, Prometheus /metrics out."
)]
pub struct Cli {
    /// The TOML configuration file. Without it, the built-in defaults (those documented in
    /// config/tallyd.toml) apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// UDP address to receive StatsD on (repeat for several); replaces `udp.listen`.
    #[arg(long = "udp-listen", value_name = "ADDR")]
    pub udp_listen: Vec<SocketAddr>,
    /// Address of the HTTP server (/metrics); replaces `http.listen`.
    #[arg(long = "http-listen", value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive);
    /// replaces `log.level`.
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Validate the configuration, print the outcome and exit (0 valid, 2 invalid).
    #[arg(long = "check-config")]
    pub check_config: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands that do a job and exit instead of running the daemon.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Convert a statsd_exporter mapping file (YAML) to a complete tallyd config on stdout;
    /// options with no tallyd equivalent are reported on stderr.
    ImportMapping {
        /// The statsd_exporter mapping YAML file.
        file: PathBuf,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub udp: UdpConfig,
    pub http: HttpConfig,
    pub statsd: StatsdConfig,
    pub exposition: ExpositionConfig,
    pub limits: LimitsConfig,
    pub lint: LintConfig,
    pub log: LogConfig,
    /// `[[mapping]]` rules, first match in file order wins (see `rules`).
    pub mapping: Vec<MappingRule>,
    /// `[[metric]]` definitions, by final Prometheus name.
    #[serde(rename = "metric")]
    pub metrics: Vec<toml::Spanned<MetricDefinition>>,
}

/// `[[metric]]`: a metric declared up front, with its type, help, unit and label schema.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricDefinition {
    /// The Prometheus name (after mapping); a counter may be written with or without `_total`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: DefinedType,
    pub help: Option<String>,
    /// OpenMetrics unit; the name must end with `_<unit>` (before `_total` for counters).
    pub unit: Option<String>,
    /// The label schema: the only label names this metric keeps.
    pub labels: Option<Vec<String>>,
    /// Histogram buckets: a list, `{ linear = { start, width, count } }` or
    /// `{ exponential = { start, factor, count } }`.
    pub buckets: Option<BucketSpec>,
    /// Summary quantiles (default 0.5, 0.9, 0.99), over the last `max_age_seconds` (default
    /// 600) in `age_buckets` steps (default 5).
    pub quantiles: Option<Vec<f64>>,
    pub max_age_seconds: Option<u32>,
    pub age_buckets: Option<u32>,
    /// Remove a series of this metric idle this long (0 = never).
    pub ttl_seconds: Option<u32>,
    /// How a query bins this metric's points by default ([`Definition::aggregation`]; no
    /// effect on /metrics).
    pub aggregation: Option<Aggregation>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefinedType {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum BucketSpec {
    List(Vec<f64>),
    Linear { linear: Generator },
    Exponential { exponential: Generator },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generator {
    pub start: f64,
    #[serde(default)]
    pub width: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    pub count: usize,
}

impl BucketSpec {
    /// The bucket bounds, checked: finite, strictly increasing, 1 to 1000 of them.
    pub fn bounds(&self) -> Result<Vec<f64>, String> {
        let bounds: Vec<f64> = match self {
            BucketSpec::List(list) => list.clone(),
            BucketSpec::Linear { linear } => {
                let width = linear.width.ok_or("linear buckets need `width`")?;
                (0..linear.count)
                    .map(|i| linear.start + width * i as f64)
                    .collect()
            }
            BucketSpec::Exponential { exponential } => {
                let factor = exponential
                    .factor
                    .ok_or("exponential buckets need `factor`")?;
                if exponential.start <= 0.0 || factor <= 1.0 {
                    return Err("exponential buckets need start > 0 and factor > 1".into());
                }
                (0..exponential.count)
                    .map(|i| exponential.start * factor.powi(i as i32))
                    .collect()
            }
        };
        // Generated bounds are rounded to 15 significant digits, so 0.1 + 2 × 0.1 is written
        // 0.3 rather than 0.30000000000000004.
        let round = |b: f64| format!("{b:.14e}").parse().unwrap_or(b);
        let bounds: Vec<f64> = match self {
            BucketSpec::List(_) => bounds,
            _ => bounds.into_iter().map(round).collect(),
        };
        if bounds.is_empty() || bounds.len() > 1000 {
            return Err(format!("needs 1 to 1000 buckets, got {}", bounds.len()));
        }
        if let Some(bad) = bounds.iter().find(|b| !b.is_finite()) {
            return Err(format!("bucket bounds must be finite, got {bad}"));
        }
        if let Some(pair) = bounds.windows(2).find(|w| w[0] >= w[1]) {
            return Err(format!(
                "bucket bounds must increase strictly, but {} is followed by {}",
                pair[0], pair[1]
            ));
        }
        Ok(bounds)
    }
}

impl MetricDefinition {
    /// The summary settings this definition asks for, quantiles in ascending order.
    fn summary_config(&self) -> SummaryConfig {
        let mut config = SummaryConfig::with_quantiles(self.quantiles.as_deref());
        if let Some(max_age) = self.max_age_seconds {
            config.max_age_secs = max_age;
        }
        if let Some(age_buckets) = self.age_buckets {
            config.age_buckets = age_buckets;
        }
        config
    }

    /// The family name (counters without `_total`), or why the definition cannot be used.
    fn check(&self) -> Result<String, String> {
        if !crate::naming::is_clean_name(&self.name) {
            return Err(format!(
                "name {:?} is not a metric name (letters, digits and `_`, not starting with a digit)",
                self.name
            ));
        }
        let family = match self.kind {
            DefinedType::Counter => crate::naming::counter_family(&self.name),
            _ => &self.name,
        };
        if family.is_empty() || crate::telemetry::is_reserved_name(family) {
            return Err(format!("name {:?} is reserved", self.name));
        }
        if let Some(unit) = &self.unit
            && !family.ends_with(&format!("_{unit}"))
        {
            return Err(format!(
                "unit {unit:?} must end the name (OpenMetrics requires it): call it {family}_{unit}"
            ));
        }
        if self.buckets.is_some() && self.kind != DefinedType::Histogram {
            return Err("buckets are only for histograms".into());
        }
        if let Some(buckets) = &self.buckets {
            buckets.bounds()?;
        }
        let summary_keys = self.quantiles.is_some()
            || self.max_age_seconds.is_some()
            || self.age_buckets.is_some();
        if summary_keys && self.kind != DefinedType::Summary {
            return Err("quantiles, max_age_seconds and age_buckets are only for summaries".into());
        }
        if self.kind == DefinedType::Summary {
            self.summary_config().validate()?;
        }
        if let Some(labels) = &self.labels {
            for label in labels {
                let mut renamed = String::new();
                crate::naming::label_name_into(label, &mut renamed);
                if renamed != *label {
                    return Err(format!(
                        "label {label:?} is not a usable label name (it would become {renamed:?})"
                    ));
                }
            }
        }
        Ok(family.to_owned())
    }
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
    pub listen: Vec<SocketAddr>,
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

/// `[http]`: the server for /metrics and the health endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        let defaults = HttpOptions::default();
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9102)),
            header_read_timeout_seconds: defaults.header_read_timeout.as_secs_f64(),
            request_timeout_seconds: defaults.request_timeout.as_secs_f64(),
            idle_timeout_seconds: defaults.idle_timeout.as_secs_f64(),
            max_connections: defaults.max_connections,
            max_concurrent_scrapes: defaults.max_concurrent_scrapes,
            gzip: defaults.enable_gzip,
            enable_lifecycle: false,
        }
    }
}

/// `[statsd]`: how samples are aggregated.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsdConfig {
    /// Etsy semantics: a gauge value with a leading `+`/`-` is a delta. `false` gives the
    /// DogStatsD agent's meaning (always absolute).
    pub gauge_deltas: bool,
    /// Export the DogStatsD `|c:` container id as label `container_id`.
    pub container_id_label: bool,
    #[serde(deserialize_with = "buckets")]
    pub histogram_buckets: Vec<f64>,
    #[serde(deserialize_with = "at_least_one_u32")]
    pub set_window_seconds: u32,
    #[serde(deserialize_with = "at_least_one")]
    pub max_set_members: usize,
    #[serde(deserialize_with = "at_least_one")]
    pub cache_capacity: usize,
    /// 0 = 16 per core.
    pub shards: usize,
}

impl Default for StatsdConfig {
    fn default() -> Self {
        let registry = RegistrySettings::default();
        let ingest = IngestOptions::default();
        StatsdConfig {
            gauge_deltas: ingest.parse.gauge_deltas,
            container_id_label: ingest.container_id_label,
            histogram_buckets: DEFAULT_BUCKETS.to_vec(),
            set_window_seconds: registry.set_window_secs,
            max_set_members: registry.max_set_members,
            cache_capacity: ingest.cache_capacity,
            shards: 0,
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

/// A configuration that could not be used, worded for the operator.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid {
        path: PathBuf,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Invalid { path, message } => {
                write!(
                    f,
                    "invalid config file {}: {}",
                    path.display(),
                    message.trim_end()
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        // Rules that parse one by one may still fail together (compiling the set).
        config.rule_set().map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config
            .definitions_with_lines(text)
            .map_err(|message| ConfigError::Invalid {
                path: path.to_owned(),
                message,
            })?;
        if config.lint.strict {
            let failing: Vec<String> = crate::lint::lint(text)
                .into_iter()
                .filter(|finding| finding.severity.fails_strict())
                .map(|finding| format!("{}: {finding}", finding.severity))
                .collect();
            if !failing.is_empty() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    message: format!(
                        "[lint] strict = true and the naming lint found:\n{}",
                        failing.join("\n")
                    ),
                });
            }
        }
        Ok(config)
    }

    /// The `[[metric]]` definitions for the registry, by family name; an error names the
    /// definition and, given the file's text, its line.
    fn definitions_with_lines(
        &self,
        text: &str,
    ) -> Result<HashMap<Box<str>, Arc<Definition>>, String> {
        let mut out = HashMap::new();
        for (index, spanned) in self.metrics.iter().enumerate() {
            let definition = spanned.get_ref();
            let line = text
                .get(..spanned.span().start)
                .map_or(0, |before| before.matches('\n').count() + 1);
            let fail = |message: String| {
                format!(
                    "line {line}: metric[{index}] {:?}: {message}",
                    definition.name
                )
            };
            let family = definition.check().map_err(fail)?;
            let kind = match definition.kind {
                DefinedType::Counter => Kind::Counter,
                DefinedType::Gauge => Kind::Gauge,
                DefinedType::Histogram => Kind::Histogram,
                DefinedType::Summary => Kind::Summary,
            };
            let buckets = match &definition.buckets {
                Some(spec) => Some(spec.bounds().map_err(fail)?.into()),
                None => None,
            };
            let runtime = Definition {
                kind,
                aggregation: definition.aggregation,
                labels: definition
                    .labels
                    .as_ref()
                    .map(|labels| labels.iter().map(|l| l.as_str().into()).collect()),
                options: SeriesOptions {
                    buckets,
                    help: definition.help.as_deref().map(Arc::from),
                    unit: definition.unit.as_deref().map(Arc::from),
                    ttl_secs: definition.ttl_seconds,
                    summary: (definition.kind == DefinedType::Summary)
                        .then(|| Arc::new(definition.summary_config())),
                },
            };
            if out
                .insert(family.clone().into_boxed_str(), Arc::new(runtime))
                .is_some()
            {
                return Err(fail(format!("{family} is defined twice")));
            }
        }
        Ok(out)
    }

    /// The `[[metric]]` definitions for the registry (validated when the file was parsed).
    pub fn definitions(&self) -> HashMap<Box<str>, Arc<Definition>> {
        self.definitions_with_lines("").unwrap_or_default()
    }

    /// The compiled `[[mapping]]` rules.
    pub fn rule_set(&self) -> Result<RuleSet, crate::rules::RuleError> {
        RuleSet::new(&self.mapping)
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// The configuration the command line asks for: the file (or the defaults) with the
    /// flags applied on top.
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let mut config = match &cli.config {
            Some(path) => Self::load(path)?,
            None => Config::default(),
        };
        if !cli.udp_listen.is_empty() {
            config.udp.listen = cli.udp_listen.clone();
        }
        if let Some(addr) = cli.http_listen {
            config.http.listen = addr;
        }
        if let Some(level) = &cli.log_level {
            config.log.level =
                normalize_log_filter(level).map_err(|message| ConfigError::Invalid {
                    path: "--log-level".into(),
                    message,
                })?;
        }
        Ok(config)
    }

    pub fn udp_options(&self) -> UdpOptions {
        UdpOptions {
            listen: self.udp.listen.clone(),
            receivers_per_listener: self.udp.receivers,
            receive_buffer_bytes: self.udp.receive_buffer_bytes,
            max_datagram_bytes: self.udp.max_datagram_bytes,
            batch: self.udp.batch,
            spread: self.udp.spread,
        }
    }

    /// Ingest options with `rules` (see [`Config::rule_set`]) in force.
    pub fn ingest_options(&self, rules: RuleSet) -> IngestOptions {
        IngestOptions {
            parse: ParseOptions {
                gauge_deltas: self.statsd.gauge_deltas,
            },
            container_id_label: self.statsd.container_id_label,
            cache_capacity: self.statsd.cache_capacity,
            rules: Arc::new(SharedRules::new(rules)),
        }
    }

    pub fn registry_settings(&self) -> RegistrySettings {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        RegistrySettings {
            shards: match self.statsd.shards {
                0 => 16 * cores,
                n => n,
            },
            histogram_buckets: self.statsd.histogram_buckets.as_slice().into(),
            set_window_secs: self.statsd.set_window_seconds,
            max_set_members: self.statsd.max_set_members,
            max_series: self.limits.max_series,
            max_series_per_metric: self.limits.max_series_per_metric,
            series_ttl_secs: self.limits.series_ttl_seconds,
        }
    }

    pub fn http_options(&self) -> HttpOptions {
        let secs = Duration::from_secs_f64;
        HttpOptions {
            header_read_timeout: secs(self.http.header_read_timeout_seconds),
            request_timeout: secs(self.http.request_timeout_seconds),
            idle_timeout: secs(self.http.idle_timeout_seconds),
            max_connections: self.http.max_connections,
            max_concurrent_scrapes: self.http.max_concurrent_scrapes,
            enable_gzip: self.http.gzip,
        }
    }

    pub fn exposition_options(&self) -> ExpositionOptions {
        ExpositionOptions {
            statsd_exporter_names: self.exposition.statsd_exporter_names,
        }
    }

    /// The keys whose new values only take effect after a restart, for a reload to warn about.
    pub fn restart_required_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.udp != new.udp {
            changed.push("udp");
        }
        if self.http != new.http {
            changed.push("http");
        }
        if self.statsd != new.statsd {
            changed.push("statsd");
        }
        if self.limits != new.limits {
            changed.push("limits");
        }
        changed
    }
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
    if bounds.is_empty() {
        return Err(serde::de::Error::custom("needs at least one bucket bound"));
    }
    if let Some(bad) = bounds.iter().find(|b| !b.is_finite()) {
        return Err(serde::de::Error::custom(format!(
            "bucket bounds must be finite (+Inf is always added), got {bad}"
        )));
    }
    if let Some(pair) = bounds.windows(2).find(|w| w[0] >= w[1]) {
        return Err(serde::de::Error::custom(format!(
            "bucket bounds must increase strictly, but {} is followed by {}",
            pair[0], pair[1]
        )));
    }
    Ok(bounds)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_documented_file_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tallyd.toml");
        assert_eq!(Config::load(&path).unwrap(), Config::default());
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name_and_line() {
        let err = parse("[udp]\nlisten = [\"127.0.0.1:8125\"]\nlisen = 1\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn an_unknown_section_is_refused() {
        let err = parse("[udpp]\n").unwrap_err();
        assert!(err.contains("udpp"), "{err}");
    }

    #[test]
    fn a_bad_address_is_refused_with_its_line() {
        let err = parse("\n[http]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unsorted_buckets_are_refused_with_the_offending_pair() {
        let err = parse("[statsd]\nhistogram_buckets = [1.0, 0.5]\n").unwrap_err();
        assert!(err.contains("1 is followed by 0.5"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_bad_log_filter_is_refused() {
        let err = parse("[log]\nlevel = \"info,[\"\n").unwrap_err();
        assert!(err.contains("invalid log filter"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let err = parse("[http]\nidle_timeout_seconds = 0\n").unwrap_err();
        assert!(err.contains("above 0"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli {
            udp_listen: vec!["127.0.0.1:9999".parse().unwrap()],
            http_listen: Some("127.0.0.1:9998".parse().unwrap()),
            log_level: Some("debug".into()),
            ..Cli::default()
        };
        let config = Config::from_cli(&cli).unwrap();
        assert_eq!(config.udp.listen, cli.udp_listen);
        assert_eq!(config.http.listen, cli.http_listen.unwrap());
        assert_eq!(config.log.level, "debug");
    }

    #[test]
    fn spread_accepts_its_two_names_only() {
        assert_eq!(
            parse("[udp]\nspread = \"source\"\n").unwrap().udp.spread,
            Spread::Source
        );
        assert!(parse("[udp]\nspread = \"roundrobin\"\n").is_err());
    }
}
