//! `[[metric]]`: metrics declared up front in the file (type, help, unit, label schema,
//! buckets, summary window, TTL), checked and built into [`crate::definitions::Definition`]s.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::definitions::{Aggregation, Definition};
use crate::registry::{Kind, NativeOptions, SeriesOptions};
use crate::summary::SummaryConfig;

/// `[[metric]]`: a metric declared up front, with its type, help, unit and label schema.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricDefinition {
    /// The Prometheus name (after mapping); a counter may be written with or without `_total`.
    pub name: String,
    /// `counter`, `gauge`, `histogram` or `summary` (a set cannot be declared).
    #[serde(rename = "type")]
    pub kind: Kind,
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
    /// Native histogram buckets (protobuf scrapes only): 0 for none, above 1 for buckets at most
    /// that factor wider than the one before; by default `[aggregation]`'s.
    pub native_histogram_bucket_factor: Option<f64>,
    /// The most populated native buckets before they widen; by default `[aggregation]`'s.
    pub native_histogram_max_buckets: Option<u32>,
    /// Remove a series of this metric idle this long (0 = never).
    pub ttl_seconds: Option<u32>,
    /// How a query bins this metric's points by default ([`Definition::aggregation`]; no
    /// effect on /metrics).
    pub aggregation: Option<Aggregation>,
    /// Sample its series into the store every `[history] interval_seconds` and keep them at
    /// every `[history] tiers` resolution (see `crate::history`).
    pub history: Option<bool>,
    /// With `history`: keep its samples at most this long (`30d`) in every tier; by default
    /// each tier's own retention.
    pub retention: Option<String>,
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
    /// The bucket bounds, checked ([`crate::validate::buckets`]).
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
        crate::validate::buckets(&bounds)?;
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

    /// The family name (counters without `_total`) and the definition the write seam applies,
    /// or why the definition cannot be used.
    fn build(&self) -> Result<(String, Definition), String> {
        if !crate::naming::is_clean_name(&self.name) {
            return Err(format!(
                "name {:?} is not a metric name (letters, digits and `_`, not starting with a digit)",
                self.name
            ));
        }
        let family = match self.kind {
            Kind::Counter => crate::naming::counter_family(&self.name),
            Kind::Set => return Err("type \"set\" cannot be declared (StatsD sets only)".into()),
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
        if let Some(ttl) = self.ttl_seconds {
            crate::validate::ttl_seconds(f64::from(ttl)).map_err(|e| format!("ttl_seconds {e}"))?;
        }
        if self.buckets.is_some() && self.kind != Kind::Histogram {
            return Err("buckets are only for histograms".into());
        }
        let buckets = match &self.buckets {
            Some(spec) => Some(spec.bounds()?.into()),
            None => None,
        };
        let native = NativeOptions {
            bucket_factor: self.native_histogram_bucket_factor,
            max_buckets: self.native_histogram_max_buckets,
        };
        if native != NativeOptions::default() && self.kind != Kind::Histogram {
            return Err(
                "native_histogram_bucket_factor and native_histogram_max_buckets are only for \
                 histograms"
                    .into(),
            );
        }
        if let Some(factor) = native.bucket_factor {
            crate::validate::native_bucket_factor(factor)
                .map_err(|e| format!("native_histogram_bucket_factor {e}"))?;
        }
        if let Some(max) = native.max_buckets {
            crate::validate::native_max_buckets(max)
                .map_err(|e| format!("native_histogram_max_buckets {e}"))?;
        }
        let summary_keys = self.quantiles.is_some()
            || self.max_age_seconds.is_some()
            || self.age_buckets.is_some();
        if summary_keys && self.kind != Kind::Summary {
            return Err("quantiles, max_age_seconds and age_buckets are only for summaries".into());
        }
        let summary = if self.kind == Kind::Summary {
            let config = self.summary_config();
            config.validate()?;
            Some(Arc::new(config))
        } else {
            None
        };
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
        self.history_retention_ms()?;
        let definition = Definition {
            kind: self.kind,
            labels: self
                .labels
                .as_ref()
                .map(|labels| labels.iter().map(|l| l.as_str().into()).collect()),
            options: SeriesOptions {
                buckets,
                help: self.help.as_deref().map(Arc::from),
                unit: self.unit.as_deref().map(Arc::from),
                ttl_secs: self.ttl_seconds,
                summary,
                native,
                preaggregated: None,
            },
            aggregation: self.aggregation,
        };
        Ok((family.to_owned(), definition))
    }
}

impl MetricDefinition {
    /// `Some(retention)` when the metric asks for history (`None` inside: each tier's own).
    fn history_retention_ms(&self) -> Result<Option<Option<i64>>, String> {
        history_retention_ms(self.history, self.retention.as_deref())
    }
}

/// The `history` and `retention` keys of a `[[metric]]` or a `[[mapping]]` rule, checked:
/// `Some(retention)` when history is asked for (`None` inside: each tier's own retention).
pub fn history_retention_ms(
    history: Option<bool>,
    retention: Option<&str>,
) -> Result<Option<Option<i64>>, String> {
    match (history.unwrap_or(false), retention) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err("retention is only for metrics with history = true".into()),
        (true, None) => Ok(Some(None)),
        (true, Some(text)) => crate::custom::time::parse_step(text)
            .map(|ms| Some(Some(ms)))
            .map_err(|e| format!("retention: {e}")),
    }
}

/// The families of the `[[metric]]` definitions that ask for history, with their own
/// retention in ms if they set one. Call after [`build_definitions`] accepted them.
pub fn history_families(
    metrics: &[toml::Spanned<MetricDefinition>],
) -> std::collections::BTreeMap<String, Option<i64>> {
    metrics
        .iter()
        .filter_map(|spanned| {
            let metric = spanned.get_ref();
            let retention = metric.history_retention_ms().ok()??;
            let family = match metric.kind {
                Kind::Counter => crate::naming::counter_family(&metric.name),
                _ => &metric.name,
            };
            Some((family.to_owned(), retention))
        })
        .collect()
}

/// The `[[metric]]` definitions of a file, by family name, built once; an error names the
/// definition and, given the file's text, its line.
pub fn build_definitions(
    metrics: &[toml::Spanned<MetricDefinition>],
    text: &str,
) -> Result<HashMap<Box<str>, Arc<Definition>>, String> {
    let mut out = HashMap::new();
    for (index, spanned) in metrics.iter().enumerate() {
        let metric = spanned.get_ref();
        let line = text
            .get(..spanned.span().start)
            .map_or(0, |before| before.matches('\n').count() + 1);
        let fail =
            |message: String| format!("line {line}: metric[{index}] {:?}: {message}", metric.name);
        let (family, definition) = metric.build().map_err(fail)?;
        if out
            .insert(family.clone().into_boxed_str(), Arc::new(definition))
            .is_some()
        {
            return Err(fail(format!("{family} is defined twice")));
        }
    }
    Ok(out)
}
