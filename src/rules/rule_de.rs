//! Deserialising one `[[mapping]]` rule by hand, with every option's check inside, so that the
//! `toml` crate reports a refused value with its key and line.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::{Action, MappingRule, MatchType, MetricClass, ObserverType, check_scale, compile};

const FIELDS: &[&str] = &[
    "match",
    "match_type",
    "match_metric_type",
    "name",
    "labels",
    "action",
    "honor_labels",
    "observer_type",
    "buckets",
    "quantiles",
    "native_histogram_bucket_factor",
    "native_histogram_max_buckets",
    "ttl_seconds",
    "scale",
    "help",
    "history",
    "retention",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    #[serde(rename = "match")]
    Match,
    MatchType,
    MatchMetricType,
    Name,
    Labels,
    Action,
    HonorLabels,
    ObserverType,
    Buckets,
    Quantiles,
    NativeHistogramBucketFactor,
    NativeHistogramMaxBuckets,
    TtlSeconds,
    Scale,
    Help,
    History,
    Retention,
}

#[derive(Default)]
struct Partial {
    pattern: Option<String>,
    match_type: MatchType,
    match_metric_type: Option<MetricClass>,
    name: Option<String>,
    labels: BTreeMap<String, String>,
    action: Action,
    honor_labels: bool,
    observer_type: Option<ObserverType>,
    buckets: Option<Vec<f64>>,
    quantiles: Option<Vec<f64>>,
    native_histogram_bucket_factor: Option<f64>,
    native_histogram_max_buckets: Option<u32>,
    ttl_seconds: Option<f64>,
    scale: Option<f64>,
    help: Option<String>,
    history: Option<bool>,
    retention: Option<String>,
}

fn checked<T, E: de::Error>(value: T, check: impl Fn(&T) -> Result<(), String>) -> Result<T, E> {
    check(&value).map(|()| value).map_err(E::custom)
}

impl Partial {
    fn set<'de, D: Deserializer<'de>>(&mut self, field: Field, d: D) -> Result<(), D::Error> {
        match field {
            Field::Match => self.pattern = Some(String::deserialize(d)?),
            Field::MatchType => self.match_type = MatchType::deserialize(d)?,
            Field::MatchMetricType => self.match_metric_type = Some(MetricClass::deserialize(d)?),
            Field::Name => self.name = Some(String::deserialize(d)?),
            Field::Labels => self.labels = BTreeMap::deserialize(d)?,
            Field::Action => self.action = Action::deserialize(d)?,
            Field::HonorLabels => self.honor_labels = bool::deserialize(d)?,
            Field::ObserverType => self.observer_type = Some(ObserverType::deserialize(d)?),
            Field::Buckets => {
                self.buckets = Some(checked(Vec::deserialize(d)?, |b: &Vec<f64>| {
                    crate::validate::buckets(b)
                })?)
            }
            Field::Quantiles => {
                self.quantiles = Some(checked(Vec::deserialize(d)?, |q: &Vec<f64>| {
                    crate::validate::quantiles(q)
                })?)
            }
            Field::NativeHistogramBucketFactor => {
                self.native_histogram_bucket_factor = Some(checked(f64::deserialize(d)?, |f| {
                    crate::validate::native_bucket_factor(*f)
                })?)
            }
            Field::NativeHistogramMaxBuckets => {
                self.native_histogram_max_buckets = Some(checked(u32::deserialize(d)?, |m| {
                    crate::validate::native_max_buckets(*m)
                })?)
            }
            Field::TtlSeconds => {
                self.ttl_seconds = Some(checked(f64::deserialize(d)?, |t| {
                    crate::validate::ttl_seconds(*t)
                })?)
            }
            Field::Scale => self.scale = Some(checked(f64::deserialize(d)?, |s| check_scale(*s))?),
            Field::Help => self.help = Some(String::deserialize(d)?),
            Field::History => self.history = Some(bool::deserialize(d)?),
            Field::Retention => self.retention = Some(String::deserialize(d)?),
        }
        Ok(())
    }

    fn finish(self) -> Result<MappingRule, String> {
        let Some(pattern) = self.pattern else {
            return Err("[[mapping]] needs `match`".into());
        };
        let rule = MappingRule {
            pattern,
            match_type: self.match_type,
            match_metric_type: self.match_metric_type,
            name: self.name,
            labels: self.labels,
            action: self.action,
            honor_labels: self.honor_labels,
            observer_type: self.observer_type,
            buckets: self.buckets,
            native_histogram_bucket_factor: self.native_histogram_bucket_factor,
            native_histogram_max_buckets: self.native_histogram_max_buckets,
            quantiles: self.quantiles,
            ttl_seconds: self.ttl_seconds,
            scale: self.scale,
            help: self.help,
            history: self.history,
            retention: self.retention,
        };
        match compile(&rule) {
            Ok(_) => Ok(rule),
            Err(message) => Err(format!(
                "[[mapping]] with match = {:?}: {message}",
                rule.pattern
            )),
        }
    }
}

/// Deserialises one field's value; for the table's last field, then checks the whole rule, so
/// that an error carries a line inside the rule: toml attaches the span of the value being
/// read, while an error raised after the table would point at the start of the whole
/// `[[mapping]]` array. (toml hands keys over in its own order, alphabetical without its
/// `preserve_order` feature, so the line is that of one of the rule's keys, not necessarily
/// the offending one; the message names the rule and the field.)
struct FieldSeed<'a> {
    field: Field,
    partial: &'a mut Partial,
    finish_into: Option<&'a mut Option<MappingRule>>,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.partial.set(self.field, d)?;
        if let Some(out) = self.finish_into {
            let rule = std::mem::take(self.partial)
                .finish()
                .map_err(<D::Error as de::Error>::custom)?;
            *out = Some(rule);
        }
        Ok(())
    }
}

struct RuleVisitor;

impl<'de> Visitor<'de> for RuleVisitor {
    type Value = MappingRule;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping rule table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MappingRule, A::Error> {
        let mut partial = Partial::default();
        let mut seen = 0u32;
        let mut done = None;
        while let Some(field) = map.next_key::<Field>()? {
            let bit = 1 << field as u32;
            if seen & bit != 0 {
                return Err(de::Error::duplicate_field(FIELDS[field as usize]));
            }
            seen |= bit;
            // toml reports the entries still to come exactly; other formats may not, and then
            // the rule is checked after the table.
            let last = map.size_hint() == Some(0);
            map.next_value_seed(FieldSeed {
                field,
                partial: &mut partial,
                finish_into: if last { Some(&mut done) } else { None },
            })?;
        }
        match done {
            Some(rule) => Ok(rule),
            None => partial.finish().map_err(de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for MappingRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MappingRule, D::Error> {
        d.deserialize_struct("MappingRule", FIELDS, RuleVisitor)
    }
}
