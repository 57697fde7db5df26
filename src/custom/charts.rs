//! What the charts page (`/charts`) may draw for a tenant, in one answer: the [`Catalogue`] of
//! its Matih metrics and its Deeploy metrics of every deployment, each with what a chart needs
//! (graph type, axis titles, units, baseline, default aggregation); and a Deeploy metric's
//! points folded for one chart ([`DeeployChart`]) by any aggregation, a timeseries over a range.
//!
//! Matih metrics need nothing new: the page draws them from the Matih query. Deeploy's own
//! `customMetricsChartData` bins a timeseries over all its points by the metric's fixed method,
//! and lists line and bar points one by one; a chart with a range and an aggregation picker
//! needs the points folded on request, which is what [`CustomMetrics::deeploy_chart`] does.

use std::collections::{BTreeMap, HashMap};

use hyper::StatusCode;
use serde::Serialize;
use serde_json::Value;

use super::deeploy::{self, GraphType, Metric};
use super::query::{Binner, Bins};
use super::{CustomMetrics, MetricType, QuerySpec, time};
use crate::definitions::Aggregation;
use crate::http::api::Problem;

/// Every aggregation a chart can ask for, in the order a picker lists them.
pub const AGGREGATIONS: [Aggregation; 6] = [
    Aggregation::Average,
    Aggregation::Sum,
    Aggregation::Min,
    Aggregation::Max,
    Aggregation::Count,
    Aggregation::Last,
];

/// What a tenant may chart.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Catalogue {
    pub tenant: String,
    /// The aggregations every chart takes.
    pub aggregations: Vec<Aggregation>,
    /// Matih metrics (API-defined, and the config file's): always timeseries, drawn from
    /// `GET /api/v1/observability/custom-metrics/{name}/query`.
    pub matih: Vec<MatihEntry>,
    /// Deeploy metrics of every deployment, drawn from `GET /api/v1/charts/deeploy/{id}`.
    pub deeploy: Vec<DeeployEntry>,
}

/// A Matih metric as a chart needs it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MatihEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: MetricType,
    pub description: Option<String>,
    pub unit: Option<String>,
    pub labels: Vec<String>,
    /// What a query uses when it names none.
    pub aggregation: Aggregation,
}

/// A Deeploy metric as a chart needs it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeeployEntry {
    pub id: String,
    pub deployment_id: String,
    /// The definition as Deeploy's routes answer it: name, graph type, axis titles and units,
    /// baseline, aggregation method.
    #[serde(flatten)]
    pub spec: deeploy::Spec,
    /// What a chart uses when it names none: a timeseries' `aggregationMethod`, else average.
    pub aggregation: Aggregation,
}

/// A Deeploy metric's points folded for a chart.
#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeeployChart {
    pub id: String,
    pub graph_type: GraphType,
    pub aggregation: Aggregation,
    /// The range and step of a timeseries (absent for line and bar).
    pub start: Option<String>,
    pub end: Option<String>,
    pub step: Option<String>,
    pub points: Vec<ChartPoint>,
}

/// One x of a chart: a line or bar label (all points posted with that label, in the order the
/// labels were first posted), or a timeseries bin's start (its points; empty bins left out).
#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartPoint {
    /// A label as posted (a string or a number), or a bin's start (RFC 3339).
    #[schema(value_type = Value)]
    pub x: Value,
    pub y: f64,
    /// The prediction log ids of the points folded into this one.
    pub prediction_log_ids: Vec<String>,
}

impl CustomMetrics {
    /// What `tenant` may chart.
    pub fn catalogue(&self, tenant: &str) -> Catalogue {
        let matih = self
            .list(tenant)
            .iter()
            .map(|metric| {
                let spec = &metric.spec;
                MatihEntry {
                    name: spec.name.clone(),
                    kind: spec.kind,
                    description: spec.description.clone(),
                    unit: spec.unit.clone(),
                    labels: spec.labels.clone(),
                    aggregation: spec.default_aggregation(),
                }
            })
            .collect();
        let deeploy = self
            .deeploy()
            .all(tenant)
            .iter()
            .map(|metric| DeeployEntry {
                id: metric.uid.clone(),
                deployment_id: metric.deployment.clone(),
                spec: metric.spec.clone(),
                aggregation: default_aggregation(metric),
            })
            .collect();
        Catalogue {
            tenant: tenant.to_owned(),
            aggregations: AGGREGATIONS.to_vec(),
            matih,
            deeploy,
        }
    }

    /// The tenant's Deeploy metric `id` folded for a chart: a timeseries over the range of
    /// `spec` (defaults as a Matih query's), a line or bar over its labels. `spec` takes no
    /// label filters (Deeploy points have none).
    pub async fn deeploy_chart(
        &self,
        tenant: &str,
        id: &str,
        spec: QuerySpec,
    ) -> Result<DeeployChart, Problem> {
        if !spec.labels.is_empty() {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "Deeploy data points have no labels to filter by",
            )
            .with_field("labels"));
        }
        let metric = self.deeploy().find(tenant, id)?;
        let timeseries = metric.spec.graph_type == GraphType::Timeseries;
        if !timeseries && (spec.start.is_some() || spec.end.is_some() || spec.step.is_some()) {
            let field = ["start", "end", "step"]
                .into_iter()
                .zip([&spec.start, &spec.end, &spec.step])
                .find_map(|(name, value)| value.is_some().then_some(name))
                .unwrap_or("start");
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "a line or bar chart has no time range: its x values are labels",
            )
            .with_field(field));
        }
        let (bins, aggregation) = spec.range(default_aggregation(&metric))?;
        let points = self.deeploy().points(&metric).await?;
        let mut chart = DeeployChart {
            id: metric.uid.clone(),
            graph_type: metric.spec.graph_type,
            aggregation,
            start: None,
            end: None,
            step: None,
            points: Vec::new(),
        };
        if timeseries {
            chart.start = Some(time::format_instant(bins.start_ms));
            chart.end = Some(time::format_instant(bins.end_ms));
            chart.step = Some(time::format_step(bins.step_ms));
            chart.points = over_time(&points, bins, aggregation);
        } else {
            chart.points = over_labels(&points, aggregation);
        }
        Ok(chart)
    }
}

fn default_aggregation(metric: &Metric) -> Aggregation {
    metric
        .spec
        .aggregation_method
        .map_or(Aggregation::Average, |method| method.aggregation())
}

/// Timeseries points in the bins of `bins`, folded by `aggregation`.
fn over_time(
    points: &[crate::store::DataPoint],
    bins: Bins,
    aggregation: Aggregation,
) -> Vec<ChartPoint> {
    let mut binner = Binner::new(bins);
    let mut ids: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for point in points {
        let Some(at) = deeploy::x_time(point) else {
            continue;
        };
        if !(bins.start_ms..bins.end_ms).contains(&at) {
            continue;
        }
        binner.add(0, at, point.y);
        let start = bins.start_ms + (at - bins.start_ms) / bins.step_ms * bins.step_ms;
        ids.entry(start)
            .or_default()
            .extend(deeploy::prediction_ids(point));
    }
    let folded = binner.finish(aggregation).remove(&0).unwrap_or_default();
    folded
        .into_iter()
        .map(|(start, y)| ChartPoint {
            x: Value::String(time::format_instant(start)),
            y,
            prediction_log_ids: ids.remove(&start).unwrap_or_default(),
        })
        .collect()
}

/// Line or bar points grouped by label, in the order the labels were first posted, each group
/// folded by `aggregation` (`last`: the latest posted).
fn over_labels(points: &[crate::store::DataPoint], aggregation: Aggregation) -> Vec<ChartPoint> {
    // Each label is a series of the binner, posting order its clock, and one bin spans it all.
    let span = i64::try_from(points.len()).unwrap_or(i64::MAX).max(1);
    let all = Bins {
        start_ms: 0,
        end_ms: span,
        step_ms: span,
    };
    let mut binner = Binner::new(all);
    let mut order: HashMap<&str, usize> = HashMap::new();
    let mut groups: Vec<(Value, Vec<String>)> = Vec::new();
    for (posted, point) in points.iter().enumerate() {
        let group = *order.entry(point.x.as_str()).or_insert_with(|| {
            groups.push((deeploy::x_value(point), Vec::new()));
            groups.len() - 1
        });
        binner.add(group as i64, posted as i64, point.y);
        groups[group].1.extend(deeploy::prediction_ids(point));
    }
    let mut folded = binner.finish(aggregation);
    groups
        .into_iter()
        .enumerate()
        .filter_map(|(group, (x, prediction_log_ids))| {
            let (_, y) = *folded.remove(&(group as i64))?.first()?;
            Some(ChartPoint {
                x,
                y,
                prediction_log_ids,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DataPoint;

    fn point(x: &str, y: f64, ids: &[&str]) -> DataPoint {
        DataPoint {
            x: x.to_owned(),
            y,
            prediction_ids: (!ids.is_empty()).then(|| serde_json::to_string(ids).unwrap()),
        }
    }

    fn ys(points: &[ChartPoint]) -> Vec<f64> {
        points.iter().map(|p| p.y).collect()
    }

    #[test]
    fn labels_keep_their_first_posted_order_and_fold_repeats() {
        let points = [
            point(r#""b""#, 4.0, &["p1"]),
            point("7", 1.0, &[]),
            point(r#""b""#, 2.0, &["p2", "p3"]),
        ];
        let sum = over_labels(&points, Aggregation::Sum);
        assert_eq!(
            sum.iter().map(|p| p.x.clone()).collect::<Vec<_>>(),
            [Value::from("b"), Value::from(7)]
        );
        assert_eq!(ys(&sum), [6.0, 1.0]);
        assert_eq!(sum[0].prediction_log_ids, ["p1", "p2", "p3"]);
        assert!(sum[1].prediction_log_ids.is_empty());
        assert_eq!(ys(&over_labels(&points, Aggregation::Average)), [3.0, 1.0]);
        assert_eq!(ys(&over_labels(&points, Aggregation::Min)), [2.0, 1.0]);
        assert_eq!(ys(&over_labels(&points, Aggregation::Max)), [4.0, 1.0]);
        assert_eq!(ys(&over_labels(&points, Aggregation::Count)), [2.0, 1.0]);
        assert_eq!(ys(&over_labels(&points, Aggregation::Last)), [2.0, 1.0]);
        assert!(over_labels(&[], Aggregation::Sum).is_empty());
    }

    #[test]
    fn timeseries_points_fall_in_their_bins_with_their_prediction_ids() {
        let points = [
            point(r#""2026-03-06T10:00:05Z""#, 1.0, &["a"]),
            point(r#""2026-03-06T11:00:20+01:00""#, 3.0, &["b"]),
            point(r#""2026-03-06T10:01:10Z""#, 10.0, &[]),
            point(r#""2026-03-06T10:05:00Z""#, 99.0, &["outside"]),
        ];
        let start = time::parse_iso8601("2026-03-06T10:00:00Z").unwrap();
        let bins = Bins::new(start, start + 300_000, 60_000).unwrap();
        let chart = over_time(&points, bins, Aggregation::Average);
        assert_eq!(
            chart,
            [
                ChartPoint {
                    x: Value::from("2026-03-06T10:00:00Z"),
                    y: 2.0,
                    prediction_log_ids: vec!["a".into(), "b".into()],
                },
                ChartPoint {
                    x: Value::from("2026-03-06T10:01:00Z"),
                    y: 10.0,
                    prediction_log_ids: vec![],
                },
            ]
        );
        assert_eq!(
            ys(&over_time(&points, bins, Aggregation::Count)),
            [2.0, 1.0]
        );
    }
}
