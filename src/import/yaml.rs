//! The statsd_exporter mapping file as read: its serde schema (`defaults`, `mappings` and their
//! options, every unknown key kept in `extra` so it can be warned about), read as leniently as
//! Go's yaml.v2 reads it: scalars as text, YAML 1.1 booleans, Go durations (a bare number is
//! nanoseconds), merge keys.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::ImportError;

/// A scalar read as text, as yaml.v2 does for string fields (`200` → "200", null → "").
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Text(pub(super) String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML 1.1 boolean, as yaml.v2 reads it (`yes`, `on`, `true`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Bool(pub(super) bool);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bool, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Bool, E> {
                Ok(Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Bool, E> {
                Ok(Bool(false))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bool, E> {
                match v {
                    "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On"
                    | "ON" => Ok(Bool(true)),
                    "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off"
                    | "Off" | "OFF" => Ok(Bool(false)),
                    _ => Err(E::custom(format!("expected a boolean, got {v:?}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A Go `time.Duration` as yaml.v2 reads it: a string for `time.ParseDuration`, or a bare
/// integer of nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct GoDuration {
    pub(super) seconds: f64,
    /// Set when the YAML held a bare integer (nanoseconds).
    pub(super) bare: Option<i64>,
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoDuration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration such as \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_go_duration(v)
                    .map(|seconds| GoDuration {
                        seconds,
                        bare: None,
                    })
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                Ok(GoDuration {
                    seconds: v as f64 / 1e9,
                    bare: Some(v),
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                self.visit_i64(i64::try_from(v).map_err(|_| E::custom("duration too long"))?)
            }
            fn visit_unit<E: de::Error>(self) -> Result<GoDuration, E> {
                Ok(GoDuration::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Go's `time.ParseDuration`, in seconds.
fn parse_go_duration(text: &str) -> Result<f64, String> {
    let invalid =
        || format!("invalid duration {text:?} (expected e.g. \"90s\", \"1m30s\", \"2h\")");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        // Sub-second units divide, so that "30ns" is the double nearest 3e-8.
        let (multiply, divide) = match &rest[..unit_len] {
            "ns" => (1.0, 1e9),
            "us" | "µs" | "μs" => (1.0, 1e6),
            "ms" => (1.0, 1e3),
            "s" => (1.0, 1.0),
            "m" => (60.0, 1.0),
            "h" => (3600.0, 1.0),
            "" => return Err(format!("{}: a unit is missing", invalid())),
            unit => return Err(format!("{}: unknown unit {unit:?}", invalid())),
        };
        total += value * multiply / divide;
        rest = &rest[unit_len..];
    }
    Ok(if negative { -total } else { total })
}

pub(super) type Extra = BTreeMap<String, serde_norway::Value>;

/// Reads the file as yaml.v2 would, merge keys (`<<: *anchor`) included. Without merge keys the
/// typed read goes straight from the text, so type errors carry a line.
pub(super) fn read_yaml(yaml: &str) -> Result<YamlFile, ImportError> {
    let error = |e: serde_norway::Error| ImportError::Yaml(e.to_string());
    let mut value: serde_norway::Value = serde_norway::from_str(yaml).map_err(error)?;
    if !has_merge_key(&value) {
        return serde_norway::from_str(yaml).map_err(error);
    }
    value.apply_merge().map_err(error)?;
    serde_norway::from_value(value).map_err(error)
}

fn has_merge_key(value: &serde_norway::Value) -> bool {
    use serde_norway::Value;
    match value {
        Value::Mapping(map) => map
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(items) => items.iter().any(has_merge_key),
        Value::Tagged(tagged) => has_merge_key(&tagged.value),
        _ => false,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct YamlFile {
    pub(super) defaults: Option<YamlDefaults>,
    pub(super) mappings: Option<Vec<YamlMapping>>,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct YamlDefaults {
    pub(super) observer_type: Option<Text>,
    pub(super) timer_type: Option<Text>,
    pub(super) buckets: Option<Vec<f64>>,
    pub(super) quantiles: Option<Vec<Objective>>,
    pub(super) match_type: Option<Text>,
    pub(super) glob_disable_ordering: Option<Bool>,
    pub(super) ttl: Option<GoDuration>,
    pub(super) summary_options: Option<SummaryOptions>,
    pub(super) histogram_options: Option<HistogramOptions>,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct YamlMapping {
    #[serde(rename = "match")]
    pub(super) pattern: Option<Text>,
    pub(super) name: Option<Text>,
    pub(super) labels: Option<BTreeMap<String, Text>>,
    pub(super) match_type: Option<Text>,
    pub(super) match_metric_type: Option<Text>,
    pub(super) action: Option<Text>,
    pub(super) observer_type: Option<Text>,
    pub(super) timer_type: Option<Text>,
    pub(super) buckets: Option<Vec<f64>>,
    pub(super) quantiles: Option<Vec<Objective>>,
    pub(super) histogram_options: Option<HistogramOptions>,
    pub(super) summary_options: Option<SummaryOptions>,
    pub(super) ttl: Option<GoDuration>,
    pub(super) scale: Option<f64>,
    pub(super) help: Option<Text>,
    pub(super) honor_labels: Option<Bool>,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct Objective {
    pub(super) quantile: f64,
    pub(super) error: Option<f64>,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SummaryOptions {
    pub(super) quantiles: Option<Vec<Objective>>,
    pub(super) max_age: Option<GoDuration>,
    pub(super) age_buckets: Option<u32>,
    pub(super) buf_cap: Option<u32>,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct HistogramOptions {
    pub(super) buckets: Option<Vec<f64>>,
    pub(super) native_histogram_bucket_factor: Option<f64>,
    pub(super) native_histogram_max_buckets: Option<u32>,
    #[serde(flatten)]
    pub(super) extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("0"), Ok(0.0));
        assert_eq!(parse_go_duration("90s"), Ok(90.0));
        assert_eq!(parse_go_duration("1m30s"), Ok(90.0));
        assert_eq!(parse_go_duration("1.5h"), Ok(5400.0));
        assert_eq!(parse_go_duration("250ms"), Ok(0.25));
        assert!((parse_go_duration("10µs").unwrap() - 1e-5).abs() < 1e-12);
        assert!(parse_go_duration("30").is_err());
        assert!(parse_go_duration("1d").is_err());
        assert!(parse_go_duration("").is_err());
    }
}
