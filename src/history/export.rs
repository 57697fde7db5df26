//! `tallyd history export`: one stored metric's points as OpenMetrics text, in the shape
//! `promtool tsdb create-blocks-from openmetrics` turns into Prometheus blocks, so history
//! recorded through the API can move into a Prometheus (or anything that imports its blocks).
//!
//! What each type becomes, named as `/metrics` names it (with the `tenant` label):
//! - a **gauge**: its points as they are;
//! - a **counter**: the running total of the recorded increments, from 0 at the start of the
//!   range, as `<name>_total` (rates over it are the recorded rates);
//! - a **histogram** or **summary**: the running count and sum of its observations, as a
//!   summary without quantiles (`<name>_count`, `<name>_sum`; single observations carry no
//!   buckets to rebuild).
//!
//! A `[[metric]]` with `history = true` that no API definition names, or a family a mapping
//! rule with `history = true` kept history for (its type from its history row,
//! [`super::ruled::Persisted`]), is exported from its finest history tier ([`Sampled`]; the
//! last day by default), one sample per interval at the interval's start as history queries
//! show it: a gauge's last sampled value, a counter's running total of its sampled increases,
//! a histogram's or summary's running count and sum.
//! Its labels are the StatsD series' own (no tenant).
//!
//! Points recorded at the same millisecond become one sample (the last gauge value, the total
//! after all of them), since a TSDB keeps one sample per series and timestamp. Each series is
//! written whole, oldest first, as OpenMetrics requires. Deeploy's data points (x/y pairs, not
//! time series) are not exported.

use std::collections::BTreeMap;
use std::io::Write;

use crate::custom::{MetricSpec, MetricType, TENANT_LABEL, family_name};
use crate::exposition::{Format, write_help_text, write_timestamp, write_value};
use crate::registry::escape_label_value;
use crate::store::tiers::{Cell, Tier};
use crate::store::{Reader, StoreError, StoredMetric, labels_of};

/// Scopes of the definitions whose points are time series (Matih's, and the config file's).
const EXPORTED_SCOPES: [&str; 2] = ["matih", "file"];

/// What to export.
#[derive(Clone, Debug)]
pub struct Export {
    pub metric: String,
    /// Only this tenant's series; every tenant's when `None`.
    pub tenant: Option<String>,
    /// Points with `start_ms <= timestamp < end_ms`.
    pub start_ms: i64,
    pub end_ms: i64,
    /// The history of the `[[metric]]` or rule family of that name, when it keeps some.
    pub sampled: Option<Sampled>,
}

/// A `[[metric]]` or a rule family with history: where its samples are.
#[derive(Clone, Debug)]
pub struct Sampled {
    /// Its registry family (a counter's without `_total`): the store row's name.
    pub family: String,
    pub kind: MetricType,
    /// The finest tier, whose samples are exported.
    pub tier: Tier,
    /// What the tier keeps as of now, `[now − its retention, the current interval's end)`: the
    /// export reads no further either way (a range read of one series over an open range
    /// would scan every series' samples).
    pub kept: (i64, i64),
}

/// Where the exported series come from.
struct Source<'a> {
    family: String,
    kind: MetricType,
    help: Option<String>,
    /// Store rows with their tenant (none for history).
    metrics: Vec<(i64, Option<&'a str>)>,
    /// The tier of a history metric; recorded points otherwise.
    tier: Option<Tier>,
    /// The range a history metric's tier keeps ([`Sampled::kept`]).
    kept: (i64, i64),
}

/// What an export wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    pub series: usize,
    pub samples: usize,
}

/// Why an export failed.
#[derive(Debug)]
pub enum ExportError {
    /// No stored definition has that name (for that tenant); the names there are.
    NotFound {
        known: Vec<String>,
    },
    Store(StoreError),
    /// A stored definition that does not read as one (a newer tallyd's, say).
    Definition(String),
    Output(std::io::Error),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::NotFound { known } if known.is_empty() => {
                write!(
                    f,
                    "no metric by that name; the store holds no exportable metric"
                )
            }
            ExportError::NotFound { known } => write!(
                f,
                "no metric by that name; the store holds: {}",
                known.join(", ")
            ),
            ExportError::Store(e) => write!(f, "reading the store: {e}"),
            ExportError::Definition(e) => write!(f, "a stored definition does not read: {e}"),
            ExportError::Output(e) => write!(f, "writing the export: {e}"),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<StoreError> for ExportError {
    fn from(e: StoreError) -> Self {
        ExportError::Store(e)
    }
}

/// Writes the export of `request` from `reader` to `out`, ending with `# EOF`.
pub fn export(
    reader: &dyn Reader,
    request: &Export,
    out: &mut dyn Write,
) -> Result<Exported, ExportError> {
    let stored: Vec<StoredMetric> = reader.metrics()?;
    let api: Vec<&StoredMetric> = (stored.iter())
        .filter(|m| EXPORTED_SCOPES.contains(&m.scope.as_str()))
        .filter(|m| request.tenant.as_ref().is_none_or(|t| *t == m.tenant))
        .collect();
    let chosen: Vec<&StoredMetric> = api
        .iter()
        .copied()
        .filter(|m| m.name == request.metric)
        .collect();
    // StatsD history has no tenant: a tenant's export is of API metrics only.
    let sampled = (request.sampled.as_ref())
        .filter(|_| request.tenant.is_none())
        .and_then(|sampled| {
            let row = (stored.iter())
                .find(|m| m.scope == super::HISTORY_SCOPE && m.name == sampled.family)?;
            Some((sampled, row.id))
        });
    let source = match (chosen.first(), sampled) {
        (Some(first), _) => {
            // Tenants agree on a name's type (the API refuses otherwise); the first
            // definition's description is the family's HELP, as in `/metrics`.
            let spec: MetricSpec = serde_json::from_str(&first.document)
                .map_err(|e| ExportError::Definition(format!("{}: {e}", first.name)))?;
            Source {
                family: family_name(&spec).to_owned(),
                kind: spec.kind,
                help: spec.description.filter(|h| !h.is_empty()),
                metrics: (chosen.iter())
                    .map(|m| (m.id, Some(m.tenant.as_str())))
                    .collect(),
                tier: None,
                kept: (i64::MIN, i64::MAX),
            }
        }
        (None, Some((sampled, id))) => Source {
            family: sampled.family.clone(),
            kind: sampled.kind,
            help: None,
            metrics: vec![(id, None)],
            tier: Some(sampled.tier),
            kept: sampled.kept,
        },
        (None, None) => {
            let mut known: Vec<String> = api.into_iter().map(|m| m.name.clone()).collect();
            known.sort();
            known.dedup();
            return Err(ExportError::NotFound { known });
        }
    };
    let family = &source.family;
    let mut text = Vec::with_capacity(64 * 1024);
    let (kind, suffixes): (&str, &[&str]) = match source.kind {
        MetricType::Gauge => ("gauge", &[""]),
        MetricType::Counter => ("counter", &["_total"]),
        MetricType::Histogram | MetricType::Summary => ("summary", &["_count", "_sum"]),
    };
    text.extend_from_slice(format!("# TYPE {family} {kind}\n").as_bytes());
    if let Some(help) = &source.help {
        text.extend_from_slice(format!("# HELP {family} ").as_bytes());
        write_help_text(&mut text, help, Format::OpenMetrics);
        text.push(b'\n');
    }
    let mut exported = Exported::default();
    for &(metric, tenant) in &source.metrics {
        for (series, labels_json) in reader.series(metric)? {
            let labels = series_labels(&labels_json, tenant);
            let samples = match source.tier {
                Some(tier) => {
                    let range = (
                        request.start_ms.max(source.kept.0),
                        request.end_ms.min(source.kept.1),
                    );
                    read_samples(reader, (tier, metric, series), range, source.kind)?
                }
                None => read_series(reader, metric, series, request, source.kind)?,
            };
            if samples.is_empty() {
                continue;
            }
            exported.series += 1;
            exported.samples += samples.len();
            for (ts_ms, values) in &samples {
                for (suffix, value) in suffixes.iter().zip(values) {
                    text.extend_from_slice(family.as_bytes());
                    text.extend_from_slice(suffix.as_bytes());
                    text.extend_from_slice(labels.as_bytes());
                    text.push(b' ');
                    write_value(&mut text, *value);
                    text.push(b' ');
                    write_timestamp(&mut text, *ts_ms as f64 / 1000.0);
                    text.push(b'\n');
                }
            }
            if text.len() >= 1 << 20 {
                out.write_all(&text).map_err(ExportError::Output)?;
                text.clear();
            }
        }
    }
    text.extend_from_slice(b"# EOF\n");
    out.write_all(&text).map_err(ExportError::Output)?;
    out.flush().map_err(ExportError::Output)?;
    Ok(exported)
}

/// `{label="value",…,tenant="…"}`, sorted by name, as `/metrics` labels API series (StatsD
/// series have no tenant; one without labels has no braces).
fn series_labels(labels_json: &str, tenant: Option<&str>) -> String {
    let mut labels: BTreeMap<String, String> = labels_of(labels_json).into_iter().collect();
    if let Some(tenant) = tenant {
        labels.insert(TENANT_LABEL.to_owned(), tenant.to_owned());
    }
    if labels.is_empty() {
        return String::new();
    }
    let mut text = String::from("{");
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(name);
        text.push_str("=\"");
        escape_label_value(value, &mut text);
        text.push('"');
    }
    text.push('}');
    text
}

/// One series' samples in time order, one per millisecond: `[value]` for gauges and counters
/// (a counter's running total), `[count, sum]` for histograms and summaries.
fn read_series(
    reader: &dyn Reader,
    metric: i64,
    series: i64,
    request: &Export,
    kind: MetricType,
) -> Result<Vec<(i64, [f64; 2])>, StoreError> {
    let mut samples: Vec<(i64, [f64; 2])> = Vec::new();
    let (mut count, mut total) = (0.0, 0.0);
    reader.scan(
        metric,
        request.start_ms,
        request.end_ms,
        Some(&[series]),
        &mut |_, ts_ms, value| {
            let sample = match kind {
                MetricType::Gauge => [value, 0.0],
                MetricType::Counter => {
                    total += value;
                    [total, 0.0]
                }
                MetricType::Histogram | MetricType::Summary => {
                    count += 1.0;
                    total += value;
                    [count, total]
                }
            };
            match samples.last_mut() {
                Some((last, values)) if *last == ts_ms => *values = sample,
                _ => samples.push((ts_ms, sample)),
            }
        },
    )?;
    Ok(samples)
}

/// One history series' samples in `tier`, in time order: a gauge's last value, a counter's
/// running total of its increases from the range's start, a histogram's or summary's running
/// count and sum.
fn read_samples(
    reader: &dyn Reader,
    (tier, metric, series): (Tier, i64, i64),
    (start_ms, end_ms): (i64, i64),
    kind: MetricType,
) -> Result<Vec<(i64, [f64; 2])>, StoreError> {
    let mut samples: Vec<(i64, [f64; 2])> = Vec::new();
    let (mut count, mut total) = (0.0, 0.0);
    reader.scan_tier(
        tier,
        metric,
        start_ms,
        end_ms,
        Some(&[series]),
        &mut |_, ts_ms, cell| {
            let sample = match (kind, cell) {
                (MetricType::Gauge, Cell::Scalar { last, .. }) => [last, 0.0],
                (MetricType::Counter, Cell::Scalar { sum, .. }) => {
                    total += sum;
                    [total, 0.0]
                }
                (
                    MetricType::Histogram | MetricType::Summary,
                    Cell::Histogram { count: n, sum, .. } | Cell::Summary { count: n, sum, .. },
                ) => {
                    count += n as f64;
                    total += sum;
                    [count, total]
                }
                // A sample of another type (the definition changed): not this metric's.
                _ => return,
            };
            samples.push((ts_ms, sample));
        },
    )?;
    Ok(samples)
}
