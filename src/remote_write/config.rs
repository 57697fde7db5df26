//! `[[remote_write]]` as written in the file, and its checks: what serde can check per key
//! runs while deserialising (so the error names the key and line); what needs several keys or
//! the file system (auth, CA file) runs in [`RemoteWriteConfig::build`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::RemoteWriteOptions;
use super::select::Selector;

/// One `[[remote_write]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// `http://` or `https://` URL of the receiver's write endpoint.
    #[serde(deserialize_with = "url")]
    pub url: String,
    /// The `remote` label of the self-metrics; the URL when absent.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default = "default_interval", deserialize_with = "interval")]
    pub interval_seconds: f64,
    #[serde(default = "default_timeout", deserialize_with = "interval")]
    pub timeout_seconds: f64,
    /// Family-name patterns (`*` = any run); empty sends every family.
    #[serde(default, rename = "match")]
    pub match_names: Vec<String>,
    /// Label pairs a series must carry to be sent.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Labels added to every series sent (a series' own label of the same name wins).
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    #[serde(default)]
    pub bearer_token: Option<String>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// PEM file of the CAs to trust instead of the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(default = "default_shards", deserialize_with = "shards")]
    pub shards: usize,
    #[serde(default = "default_max_samples", deserialize_with = "max_samples")]
    pub max_samples_per_send: usize,
    #[serde(default = "default_queue", deserialize_with = "queue")]
    pub queue_samples: usize,
    #[serde(default = "default_min_backoff", deserialize_with = "interval")]
    pub min_backoff_seconds: f64,
    #[serde(default = "default_max_backoff", deserialize_with = "interval")]
    pub max_backoff_seconds: f64,
    /// The protocol: `v1` (remote-write 1.0), `v2` or `auto` (2.0, falling back to 1.0).
    #[serde(default)]
    pub protobuf_message: ProtobufMessage,
    /// Samples the memory queue has no room for go to the data directory instead of being
    /// dropped (bounded by `spill_max_bytes`, which also turns it on).
    #[serde(default)]
    pub spill: bool,
    #[serde(default, deserialize_with = "spill_bytes")]
    pub spill_max_bytes: Option<u64>,
    /// Older samples are not sent (Mimir and Cortex refuse them with a 400).
    #[serde(default = "default_max_sample_age", deserialize_with = "sample_age")]
    pub max_sample_age_seconds: f64,
}

/// The spill's bound when `spill = true` names none: 256 MiB.
pub const DEFAULT_SPILL_BYTES: u64 = 256 << 20;

fn default_max_sample_age() -> f64 {
    3600.0
}

fn spill_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    const LEAST: u64 = 64 << 10;
    match u64::deserialize(d)? {
        n if n >= LEAST => Ok(Some(n)),
        n => Err(serde::de::Error::custom(format!(
            "must be at least {LEAST} (64 KiB), got {n}"
        ))),
    }
}

fn sample_age<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    match f64::deserialize(d)? {
        n if (1.0..=31.0 * 86400.0).contains(&n) => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "must be between 1 and 2678400 (31 days), got {n}"
        ))),
    }
}

/// `protobuf_message`: which message the endpoint is sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtobufMessage {
    /// `prometheus.WriteRequest` (remote-write 1.0), which every receiver reads.
    #[default]
    V1,
    /// `io.prometheus.write.v2.Request`, with metadata; a receiver that turns out to read
    /// only 1.0 (a 415, or a 2xx without the written-count headers) gets 1.0 from then on.
    V2,
    /// As `v2`, and a 400 to a 2.0 request before the receiver ever confirmed one is also
    /// taken as "1.0 only" (1.x receivers may answer 400 to a body they cannot read), so the
    /// batch is resent as 1.0 rather than dropped.
    Auto,
}

/// `basic_auth = { username = "...", password = "..." }` (or `password_file`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

fn default_interval() -> f64 {
    15.0
}
fn default_timeout() -> f64 {
    30.0
}
fn default_shards() -> usize {
    2
}
fn default_max_samples() -> usize {
    2000
}
fn default_queue() -> usize {
    500_000
}
fn default_min_backoff() -> f64 {
    0.03
}
fn default_max_backoff() -> f64 {
    5.0
}

fn url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    check_url(&url).map_err(serde::de::Error::custom)?;
    Ok(url)
}

/// An absolute `http://` or `https://` URL with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} names no host"));
    }
    Ok(())
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let value = f64::deserialize(d)?;
    crate::validate::period_seconds(value).map_err(serde::de::Error::custom)?;
    Ok(value)
}

fn bounded<'de, D: Deserializer<'de>>(d: D, least: usize, most: usize) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        n if (least..=most).contains(&n) => Ok(n),
        n => Err(serde::de::Error::custom(format!(
            "must be between {least} and {most}, got {n}"
        ))),
    }
}

fn shards<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    bounded(d, 1, 64)
}

fn max_samples<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    bounded(d, 1, 100_000)
}

fn queue<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    bounded(d, 1, 100_000_000)
}

impl RemoteWriteConfig {
    /// The endpoint's options, with the secret files read; the error names the key.
    pub fn build(&self) -> Result<RemoteWriteOptions, String> {
        let auth = crate::http::client::auth_from_keys(
            self.basic_auth.as_ref(),
            self.bearer_token.as_deref(),
            self.bearer_token_file.as_deref(),
        )?;
        if self.min_backoff_seconds > self.max_backoff_seconds {
            return Err(format!(
                "min_backoff_seconds ({}) is above max_backoff_seconds ({})",
                self.min_backoff_seconds, self.max_backoff_seconds
            ));
        }
        if self.queue_samples < self.shards {
            return Err(format!(
                "queue_samples ({}) must give each of the {} shards room for a sample",
                self.queue_samples, self.shards
            ));
        }
        for name in self.external_labels.keys() {
            if !crate::naming::is_clean_name(name) || name.starts_with("__") {
                return Err(format!(
                    "external_labels: {name:?} is not a usable label name"
                ));
            }
        }
        let ca = match &self.tls_ca_file {
            Some(path) => Some(crate::http::client::read_secret("tls_ca_file", path)?),
            None => None,
        };
        Ok(RemoteWriteOptions {
            url: self.url.clone(),
            remote: self.name.clone().unwrap_or_else(|| self.url.clone()),
            interval: Duration::from_secs_f64(self.interval_seconds),
            timeout: Duration::from_secs_f64(self.timeout_seconds),
            selector: Selector::new(&self.match_names, &self.match_labels)
                .map_err(|e| e.to_string())?,
            external_labels: self
                .external_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            auth,
            ca_pem: ca,
            shards: self.shards,
            max_samples_per_send: self.max_samples_per_send,
            queue_samples: self.queue_samples,
            min_backoff: Duration::from_secs_f64(self.min_backoff_seconds),
            max_backoff: Duration::from_secs_f64(self.max_backoff_seconds),
            protobuf_message: self.protobuf_message,
            spill_max_bytes: match (self.spill, self.spill_max_bytes) {
                (_, Some(bytes)) => Some(bytes),
                (true, None) => Some(DEFAULT_SPILL_BYTES),
                (false, None) => None,
            },
            max_sample_age: Duration::from_secs_f64(self.max_sample_age_seconds),
        })
    }
}

/// Every table built; two with the same `remote` label would share counters, so that is
/// refused.
pub fn build_all(tables: &[RemoteWriteConfig]) -> Result<Vec<RemoteWriteOptions>, String> {
    let mut built: Vec<RemoteWriteOptions> = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let options = table
            .build()
            .map_err(|e| format!("[[remote_write]] #{} ({}): {e}", i + 1, table.url))?;
        if built.iter().any(|b| b.remote == options.remote) {
            return Err(format!(
                "[[remote_write]] #{} ({}): another table has the same name (or URL) {:?}; \
                 set name to tell them apart",
                i + 1,
                table.url,
                options.remote
            ));
        }
        built.push(options);
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(extra: &str) -> Result<RemoteWriteOptions, String> {
        let text = format!("url = 'http://127.0.0.1:9/write'\n{extra}");
        toml::from_str::<RemoteWriteConfig>(&text)
            .map_err(|e| e.to_string())?
            .build()
    }

    #[test]
    fn protobuf_message_is_v1_unless_set_to_v2_or_auto() {
        assert_eq!(table("").unwrap().protobuf_message, ProtobufMessage::V1);
        for (text, message) in [
            ("v1", ProtobufMessage::V1),
            ("v2", ProtobufMessage::V2),
            ("auto", ProtobufMessage::Auto),
        ] {
            let options = table(&format!("protobuf_message = '{text}'")).unwrap();
            assert_eq!(options.protobuf_message, message);
        }
    }

    #[test]
    fn an_unknown_protobuf_message_is_refused_with_the_key_and_the_choices() {
        let text = "[[remote_write]]\nurl = 'http://127.0.0.1:9/write'\nprotobuf_message = 'v3'\n";
        let err = crate::config::Settings::parse(text, std::path::Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        for part in ["protobuf_message", "v3", "v1", "v2", "auto"] {
            assert!(err.contains(part), "{part} missing from: {err}");
        }
    }
}
