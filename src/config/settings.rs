//! [`Settings`]: the file (or the defaults) with the flags applied, validated and built once into
//! what the daemon runs on — the mapping rules compiled, the `[[metric]]` definitions built, the
//! naming lint run on the text read, the options of every part — or a [`ConfigError`] naming the
//! file, the key and the line. A reload builds a new one and applies it, or keeps the old.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::cli::Cli;
use super::file::{AggregationConfig, Config, RelayConfig, normalize_log_filter};
use super::metric::build_definitions;
use crate::custom::ApiOptions;
use crate::definitions::Definition;
use crate::exposition::ExpositionOptions;
use crate::http::HttpOptions;
use crate::ingest::{IngestOptions, SharedRules};
use crate::lint::LintWarning;
use crate::listen::tcp::TcpOptions;
use crate::listen::unix::UnixOptions;
use crate::listen::{Endpoint, Role, UdpOptions, activation};
use crate::protocol::ParseOptions;
use crate::push::PushOptions;
use crate::registry::RegistrySettings;
use crate::relay::RelayOptions;
use crate::rules::RuleSet;
use crate::tokens::Tokens;

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

/// Everything the daemon runs on, validated.
#[derive(Debug)]
pub struct Settings {
    /// The file as read, with the flags applied: what a reload compares against.
    pub file: Config,
    /// The mapping rules, compiled.
    pub rules: Arc<RuleSet>,
    /// The `[[metric]]` definitions, by family name.
    pub definitions: HashMap<Box<str>, Arc<Definition>>,
    /// What the naming lint says about the file (nothing without one).
    pub lint: Vec<LintWarning>,
    /// Keys that still work but have moved, with where to put them.
    pub deprecations: Vec<String>,
    pub udp: UdpOptions,
    pub tcp: TcpOptions,
    pub unix: UnixOptions,
    pub http_listen: Endpoint<SocketAddr>,
    pub http: HttpOptions,
    /// Serve `POST /-/reload` and `POST /-/quit`.
    pub enable_lifecycle: bool,
    pub registry: RegistrySettings,
    pub parse: ParseOptions,
    pub container_id_label: bool,
    pub cache_capacity: usize,
    pub exposition: ExpositionOptions,
    /// The `tracing` filter.
    pub log_level: String,
    /// The REST API's rules.
    pub api: ApiOptions,
    /// The `[[api.tokens]]` in force.
    pub tokens: Tokens,
    /// The most bytes of request body an API route reads.
    pub api_body_limit: usize,
    /// Where the store lives (`[storage] dir`, or `--data-dir`).
    pub data_dir: PathBuf,
    pub relay: RelayOptions,
    /// `[push]`: pushes from batch jobs.
    pub push: PushOptions,
    /// The `[[remote_write]]` endpoints, with their secret and CA files read.
    pub remote_write: Vec<crate::remote_write::RemoteWriteOptions>,
    /// `[query]`: the backend behind the query API, with its secret and CA files read.
    pub query: crate::custom::backend::QueryOptions,
    /// `[history]` and the `[[metric]]`s that ask for it.
    pub history: crate::history::HistoryOptions,
}

impl Settings {
    /// The settings the command line asks for: its file (or the defaults) with its flags
    /// applied on top.
    pub fn from_cli(cli: &Cli) -> Result<Settings, ConfigError> {
        let (text, path) = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                (text, path.clone())
            }
            None => (String::new(), PathBuf::new()),
        };
        let mut file = parse_file(&text, &path)?;
        if !cli.udp_listen.is_empty() {
            file.udp.listen = cli.udp_listen.clone();
        }
        if !cli.tcp_listen.is_empty() {
            file.tcp.listen = cli.tcp_listen.clone();
        }
        if !cli.unix_listen.is_empty() {
            file.unix.listen = cli.unix_listen.clone();
        }
        if !cli.relay_target.is_empty() {
            crate::relay::check_targets(&cli.relay_target).map_err(|message| {
                ConfigError::Invalid {
                    path: "--relay-target".into(),
                    message,
                }
            })?;
            file.relay.targets = cli.relay_target.clone();
        }
        if let Some(addr) = &cli.http_listen {
            file.http.listen = addr.clone();
        }
        if let Some(dir) = &cli.data_dir {
            file.storage.dir = dir.clone();
        }
        if let Some(level) = &cli.log_level {
            file.log.level =
                normalize_log_filter(level).map_err(|message| ConfigError::Invalid {
                    path: "--log-level".into(),
                    message,
                })?;
        }
        Settings::build(file, &text, &path)
    }

    /// Parses and validates TOML text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        Settings::build(parse_file(text, path)?, text, path)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Settings::parse(&text, path)
    }

    fn build(file: Config, text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        // Rules that parse one by one may still fail together (compiling the set).
        let rules = RuleSet::new(&file.mapping).map_err(|e| invalid(e.to_string()))?;
        let definitions = build_definitions(&file.metrics, text).map_err(invalid)?;
        let remote_write =
            crate::remote_write::config::build_all(&file.remote_write).map_err(invalid)?;
        let query = file.query.build().map_err(invalid)?;
        let lint = crate::lint::lint(text);
        if file.lint.strict {
            let failing: Vec<String> = lint
                .iter()
                .filter(|finding| finding.severity.fails_strict())
                .map(|finding| format!("{}: {finding}", finding.severity))
                .collect();
            if !failing.is_empty() {
                return Err(invalid(format!(
                    "[lint] strict = true and the naming lint found:\n{}",
                    failing.join("\n")
                )));
            }
        }
        let history =
            crate::history::HistoryOptions::new(&file.history, &file.metrics).map_err(invalid)?;
        let (aggregation, deprecations) = aggregation(&file).map_err(invalid)?;
        crate::tokens::check_unique(&file.api.tokens).map_err(invalid)?;
        let cores = crate::priority::usable_cpus();
        let secs = Duration::from_secs_f64;
        let settings = Settings {
            rules: Arc::new(rules),
            definitions,
            lint,
            deprecations,
            udp: UdpOptions {
                listen: file.udp.listen.clone(),
                receivers_per_listener: file.udp.receivers,
                receive_buffer_bytes: file.udp.receive_buffer_bytes,
                max_datagram_bytes: file.udp.max_datagram_bytes,
                batch: file.udp.batch,
                spread: file.udp.spread,
            },
            tcp: TcpOptions {
                listen: file.tcp.listen.clone(),
                max_line_bytes: file.tcp.max_line_bytes,
                max_connections: file.tcp.max_connections,
                idle_timeout: secs(file.tcp.idle_timeout_seconds),
            },
            unix: UnixOptions {
                listen: file.unix.listen.clone(),
                mode: file.unix.mode,
                max_datagram_bytes: file.unix.max_datagram_bytes,
                receive_buffer_bytes: file.unix.receive_buffer_bytes,
            },
            http_listen: file.http.listen.clone(),
            http: HttpOptions {
                header_read_timeout: secs(file.http.header_read_timeout_seconds),
                request_timeout: secs(file.http.request_timeout_seconds),
                idle_timeout: secs(file.http.idle_timeout_seconds),
                max_connections: file.http.max_connections,
                max_concurrent_scrapes: file.http.max_concurrent_scrapes,
                enable_gzip: file.http.gzip,
                scrape_token_sha256: file.http.scrape_token_sha256,
            },
            enable_lifecycle: file.http.enable_lifecycle,
            registry: RegistrySettings {
                shards: match aggregation.shards {
                    0 => 16 * cores,
                    n => n,
                },
                histogram_buckets: aggregation.histogram_buckets.as_slice().into(),
                set_window_secs: aggregation.set_window_seconds,
                max_set_members: aggregation.max_set_members,
                max_series: file.limits.max_series,
                max_series_per_metric: file.limits.max_series_per_metric,
                series_ttl_secs: file.limits.series_ttl_seconds,
                native_bucket_factor: aggregation.native_histogram_bucket_factor,
                native_max_buckets: aggregation.native_histogram_max_buckets,
            },
            parse: ParseOptions {
                gauge_deltas: file.statsd.gauge_deltas,
            },
            container_id_label: file.statsd.container_id_label,
            cache_capacity: file.statsd.cache_capacity,
            exposition: ExpositionOptions {
                statsd_exporter_names: file.exposition.statsd_exporter_names,
            },
            log_level: file.log.level.clone(),
            api: ApiOptions {
                naming: file.api.naming,
                required_prefix: file.api.required_prefix.clone(),
                max_batch: file.api.max_batch,
                default_retention_days: file.storage.default_retention_days,
            },
            tokens: Tokens::new(file.api.tokens.clone()),
            api_body_limit: file.api.max_body_bytes,
            data_dir: file.storage.dir.clone(),
            relay: RelayOptions {
                targets: file.relay.targets.clone(),
                lines: file.relay.lines,
                max_datagram_bytes: file.relay.max_datagram_bytes,
                flush_interval: secs(file.relay.flush_interval_seconds),
                queue_bytes: file.relay.queue_bytes,
            },
            push: PushOptions {
                default_ttl_secs: file.push.default_ttl_seconds,
                add_counters: file.push.add_counters,
            },
            remote_write,
            query,
            history,
            file,
        };
        if let Some(shared) = activation::shared_name(settings.systemd_names()) {
            return Err(invalid(shared));
        }
        Ok(settings)
    }

    /// Every `systemd:NAME` the listen addresses claim, with the listener that claims it.
    pub fn systemd_names(&self) -> impl Iterator<Item = (Role, &str)> {
        let udp = self
            .udp
            .listen
            .iter()
            .map(|e| (Role::Udp, e.systemd_name()));
        let tcp = self
            .tcp
            .listen
            .iter()
            .map(|e| (Role::Tcp, e.systemd_name()));
        let unix = self
            .unix
            .listen
            .iter()
            .map(|e| (Role::Unix, e.systemd_name()));
        let http = std::iter::once((Role::Http, self.http_listen.systemd_name()));
        udp.chain(tcp)
            .chain(unix)
            .chain(http)
            .filter_map(|(role, name)| Some((role, name?)))
    }

    /// Ingest options over `rules` (the daemon's swappable copy of [`Settings::rules`]).
    pub fn ingest_options(&self, rules: Arc<SharedRules>) -> IngestOptions {
        IngestOptions {
            parse: self.parse,
            container_id_label: self.container_id_label,
            cache_capacity: self.cache_capacity,
            rules,
            relay: None,
            history: None,
        }
    }

    /// The sections whose new values only take effect after a restart, for a reload to warn
    /// about.
    pub fn restart_required_changes(&self, new: &Settings) -> Vec<&'static str> {
        let (old, new) = (&self.file, &new.file);
        let mut changed = Vec::new();
        if old.udp != new.udp {
            changed.push("udp");
        }
        if old.tcp != new.tcp {
            changed.push("tcp");
        }
        if old.unix != new.unix {
            changed.push("unix");
        }
        if old.http != new.http {
            changed.push("http");
        }
        if old.statsd != new.statsd {
            changed.push("statsd");
        }
        if old.aggregation != new.aggregation {
            changed.push("aggregation");
        }
        if old.limits != new.limits {
            changed.push("limits");
        }
        if old.api.max_body_bytes != new.api.max_body_bytes {
            changed.push("api.max_body_bytes");
        }
        if old.storage.dir != new.storage.dir {
            changed.push("storage.dir");
        }
        // Which metrics keep history changes on reload; the sampling and tiers do not.
        if old.history != new.history {
            changed.push("history");
        }
        // A reload re-resolves and applies `targets` while the relay stays on; turning it on
        // or off, and its other keys, wait for a restart.
        let shape = |relay: &RelayConfig| {
            (
                relay.targets.is_empty(),
                RelayConfig {
                    targets: Vec::new(),
                    ..relay.clone()
                },
            )
        };
        if shape(&old.relay) != shape(&new.relay) {
            changed.push("relay");
        }
        changed
    }
}

fn parse_file(text: &str, path: &Path) -> Result<Config, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `[aggregation]`, with the keys that used to live in `[statsd]` taken from there (and a
/// deprecation notice each) where `[aggregation]` leaves them at their default. A key set in
/// both places is refused: which one was meant cannot be told.
fn aggregation(file: &Config) -> Result<(AggregationConfig, Vec<String>), String> {
    let mut aggregation = file.aggregation.clone();
    let defaults = AggregationConfig::default();
    let old = &file.statsd;
    let mut notices = Vec::new();
    moved_key(
        "histogram_buckets",
        &old.histogram_buckets,
        &mut aggregation.histogram_buckets,
        &defaults.histogram_buckets,
        &mut notices,
    )?;
    moved_key(
        "set_window_seconds",
        &old.set_window_seconds,
        &mut aggregation.set_window_seconds,
        &defaults.set_window_seconds,
        &mut notices,
    )?;
    moved_key(
        "max_set_members",
        &old.max_set_members,
        &mut aggregation.max_set_members,
        &defaults.max_set_members,
        &mut notices,
    )?;
    moved_key(
        "shards",
        &old.shards,
        &mut aggregation.shards,
        &defaults.shards,
        &mut notices,
    )?;
    Ok((aggregation, notices))
}

/// One key that moved from `[statsd]` to `[aggregation]`: the old value, if set, goes into
/// `new` (still at its `default`).
fn moved_key<T: Clone + PartialEq>(
    key: &str,
    old: &Option<T>,
    new: &mut T,
    default: &T,
    notices: &mut Vec<String>,
) -> Result<(), String> {
    let Some(old) = old else { return Ok(()) };
    if new != default {
        return Err(format!(
            "[statsd] {key} and [aggregation] {key} are both set; [statsd] is the key's old \
             place: remove it there"
        ));
    }
    notices.push(format!(
        "[statsd] {key} is deprecated: it applies to every input, so it now lives in \
         [aggregation] (the value is used for now)"
    ));
    *new = old.clone();
    Ok(())
}
