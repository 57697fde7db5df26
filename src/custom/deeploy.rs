//! Deeploy's custom metrics: chart-backed definitions per deployment, their data points and
//! their chart data, with the rules of Deeploy's service and its official Python client (PyPI
//! `deeploy`, `deeploy/models/custom_metric.py`). The HTTP routes
//! (`crate::http::api::deeploy`) are thin shells over [`Deeploy`].
//!
//! - A workspace is a tenant; a deployment needs no registration. A definition is stored with
//!   the scope `deeploy/<deployment>`; its public id is a UUID, and a metric is only ever found
//!   through its own workspace and deployment (anything else is "not found", so the existence
//!   of another tenant's metric does not leak).
//! - Graph types: `timeseries` takes ISO 8601 x values with a zone, binned for its chart by its
//!   `aggregationMethod` (`average` unless set); `line` and `bar` take any string or number as
//!   x, one chart label per point, and need `titleXAxis`. A timeseries takes no x-axis title or
//!   unit and no baseline; `aggregationMethod` is for timeseries only; `baselineDescription`
//!   is at most 20 characters. Updates are checked by the same rules on the merged result.
//! - Data points are stored in posting order, the x value as its JSON text (so a number stays
//!   a number); a batch is stored whole or not at all. Deeploy has no retention: points stay
//!   until they are cleared or their metric is deleted (hard delete, with its points).
//! - `/metrics`: each timeseries metric's latest point (by x time) is the gauge
//!   [`FAMILY`]`{tenant, deployment, metric_id, metric}`, from points posted since start (as
//!   the Matih gauges). Line and bar x values are categories, not times, so they have no
//!   "latest" and are not shown.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::StatusCode;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::query::{Binner, Bins};
use super::{storage_failed, time, unprocessable};
use crate::definitions::{Aggregation, Definition, Source};
use crate::http::api::Problem;
use crate::record::Recorder;
use crate::registry::{Kind, SeriesOptions, Update};
use crate::store::{DataPoint, Store, StoredMetric, Write, Written};

/// The store scope of a deployment's definitions is this prefix and the deployment id.
pub const SCOPE_PREFIX: &str = "deeploy/";

/// The `/metrics` gauge of the timeseries metrics' latest points.
pub const FAMILY: &str = "deeploy_custom_metric";

/// Most characters in `baselineDescription` (Deeploy's documented limit).
pub const MAX_BASELINE_DESCRIPTION: usize = 20;

/// Points spanning at most this long chart in hourly bins, longer in daily ones.
const HOURLY_SPAN_MS: i64 = 48 * HOUR_MS;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphType {
    Line,
    Bar,
    Timeseries,
}

/// How a timeseries chart folds the points of one bin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregationMethod {
    #[default]
    Average,
    Sum,
    Min,
    Max,
}

impl AggregationMethod {
    fn aggregation(self) -> Aggregation {
        match self {
            AggregationMethod::Average => Aggregation::Average,
            AggregationMethod::Sum => Aggregation::Sum,
            AggregationMethod::Min => Aggregation::Min,
            AggregationMethod::Max => Aggregation::Max,
        }
    }
}

/// A definition: the body of a create (absent fields are `null`), and what is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub graph_type: GraphType,
    pub title_x_axis: Option<String>,
    pub title_y_axis: String,
    pub unit_x_axis: Option<String>,
    pub unit_y_axis: Option<String>,
    pub baseline_value: Option<f64>,
    pub baseline_description: Option<String>,
    pub aggregation_method: Option<AggregationMethod>,
}

/// The body of an update: an absent field is left as it is, `null` clears it (the client
/// leaves out what it does not change). The graph type cannot change.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Changes {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    #[serde(default)]
    pub graph_type: Option<GraphType>,
    #[serde(default, deserialize_with = "present")]
    pub title_x_axis: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub title_y_axis: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub unit_x_axis: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub unit_y_axis: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub baseline_value: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    pub baseline_description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub aggregation_method: Option<Option<AggregationMethod>>,
}

/// A field that is present, `null` or not: `Some(None)` for `null`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// One data point as the client posts it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewPoint {
    /// A string or a number; for a timeseries, an ISO 8601 time with a zone.
    pub x_value: Value,
    pub y_value: f64,
    #[serde(default)]
    pub prediction_log_ids: Option<Vec<String>>,
}

/// A definition in force.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// The store's key for its data points.
    pub store_id: i64,
    pub uid: String,
    pub tenant: String,
    pub deployment: String,
    pub spec: Spec,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A metric as the client's `CustomMetric` model reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricDocument {
    pub id: String,
    pub deployment_id: String,
    #[serde(flatten)]
    pub spec: Spec,
    /// `active`; a delete answers the metric once more as `deleted`.
    pub status: &'static str,
    pub created_at: String,
    pub updated_at: String,
}

impl Metric {
    pub fn document(&self) -> MetricDocument {
        self.document_with_status("active")
    }

    fn document_with_status(&self, status: &'static str) -> MetricDocument {
        MetricDocument {
            id: self.uid.clone(),
            deployment_id: self.deployment.clone(),
            spec: self.spec.clone(),
            status,
            created_at: time::format_instant(self.created_ms),
            updated_at: time::format_instant(self.updated_ms),
        }
    }
}

/// A stored data point as the client's `CustomMetricDataPoint` model reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PointDocument {
    /// The point's sequence number in the store.
    pub id: String,
    pub custom_metric_id: String,
    pub x_value: Value,
    pub y_value: f64,
    /// As posted (a flat list; the client's model never reads this key).
    pub prediction_log_ids: Option<Vec<String>>,
    pub created_at: String,
    pub updated_at: String,
}

/// A metric with its chart, as the client's `CustomMetricGraphData` model reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChartDocument {
    #[serde(flatten)]
    pub metric: MetricDocument,
    /// The mean of all the metric's points (0 without points: the model takes no `null`).
    pub average: f64,
    pub data: Vec<f64>,
    pub labels: Vec<Value>,
    /// The prediction log ids of each label's points.
    pub prediction_log_ids: Vec<Vec<String>>,
}

/// The Deeploy custom-metrics service.
pub struct Deeploy {
    store: Store,
    recorder: Arc<Recorder>,
    /// Public id → definition.
    catalog: RwLock<HashMap<String, Arc<Metric>>>,
    /// Data-point writes share it; updates, deletes and clears take it alone, so no point is
    /// stored for (or shown from) a metric being deleted or cleared.
    gate: tokio::sync::RwLock<()>,
    /// Per timeseries metric, the (x time, y) its gauge shows.
    shown: Mutex<HashMap<String, (i64, f64)>>,
    /// [`FAMILY`]'s definition was put in force.
    defined: AtomicBool,
}

impl Deeploy {
    /// The service, with the Deeploy definitions among `stored` in force.
    pub fn load(store: Store, recorder: Arc<Recorder>, stored: &[StoredMetric]) -> Deeploy {
        let mut catalog = HashMap::new();
        for row in stored {
            let Some(deployment) = row.scope.strip_prefix(SCOPE_PREFIX) else {
                continue;
            };
            match serde_json::from_str::<Spec>(&row.document) {
                Ok(spec) => {
                    let metric = Metric {
                        store_id: row.id,
                        uid: row.uid.clone(),
                        tenant: row.tenant.clone(),
                        deployment: deployment.to_owned(),
                        spec,
                        created_ms: row.created_ms,
                        updated_ms: row.updated_ms,
                    };
                    catalog.insert(row.uid.clone(), Arc::new(metric));
                }
                Err(e) => tracing::error!(
                    "stored Deeploy metric {:?} ({}) is unreadable, skipped: {e}",
                    row.name,
                    row.uid
                ),
            }
        }
        Deeploy {
            store,
            recorder,
            catalog: RwLock::new(catalog),
            gate: tokio::sync::RwLock::new(()),
            shown: Mutex::new(HashMap::new()),
            defined: AtomicBool::new(false),
        }
    }

    /// The deployment's metrics, oldest first.
    pub fn list(&self, tenant: &str, deployment: &str) -> Vec<Arc<Metric>> {
        let mut metrics: Vec<Arc<Metric>> = self
            .catalog
            .read()
            .values()
            .filter(|m| m.tenant == tenant && m.deployment == deployment)
            .cloned()
            .collect();
        metrics.sort_by_key(|m| m.store_id);
        metrics
    }

    /// The metric `id` of the deployment, or 404 (the same answer whether it belongs to
    /// someone else or does not exist).
    pub fn get(&self, tenant: &str, deployment: &str, id: &str) -> Result<Arc<Metric>, Problem> {
        self.catalog
            .read()
            .get(id)
            .filter(|m| m.tenant == tenant && m.deployment == deployment)
            .cloned()
            .ok_or_else(|| {
                Problem::new(
                    StatusCode::NOT_FOUND,
                    "metric_not_found",
                    format!("deployment {deployment:?} has no custom metric {id:?}"),
                )
            })
    }

    /// Defines a metric for the deployment.
    pub async fn create(
        &self,
        tenant: &str,
        deployment: &str,
        mut spec: Spec,
    ) -> Result<Arc<Metric>, Problem> {
        if spec.graph_type == GraphType::Timeseries {
            spec.aggregation_method.get_or_insert_default();
        }
        check(&spec)?;
        let now = time::now_ms();
        let metric = Metric {
            store_id: 0,
            uid: uuid::Uuid::new_v4().to_string(),
            tenant: tenant.to_owned(),
            deployment: deployment.to_owned(),
            spec,
            created_ms: now,
            updated_ms: now,
        };
        let metric = Arc::new(self.put(metric).await?);
        self.catalog
            .write()
            .insert(metric.uid.clone(), Arc::clone(&metric));
        Ok(metric)
    }

    /// Changes the fields `changes` names, checking the result as a create would.
    pub async fn update(
        &self,
        tenant: &str,
        deployment: &str,
        id: &str,
        changes: Changes,
    ) -> Result<Arc<Metric>, Problem> {
        let _alone = self.gate.write().await;
        let current = self.get(tenant, deployment, id)?;
        let spec = merge(&current.spec, changes)?;
        check(&spec)?;
        let renamed = spec.name != current.spec.name;
        let metric = Metric {
            spec,
            updated_ms: time::now_ms().max(current.updated_ms),
            ..(*current).clone()
        };
        let metric = Arc::new(self.put(metric).await?);
        self.catalog
            .write()
            .insert(metric.uid.clone(), Arc::clone(&metric));
        if renamed {
            // The gauge's `metric` label names it: show the same point under the new name.
            self.unshow(&metric.uid);
            let latest = self.shown.lock().get(&metric.uid).copied();
            if let Some((_, y)) = latest {
                self.record(&metric, y);
            }
        }
        Ok(metric)
    }

    /// Deletes the metric with its data points. Answers it as it was.
    pub async fn delete(
        &self,
        tenant: &str,
        deployment: &str,
        id: &str,
    ) -> Result<MetricDocument, Problem> {
        let _alone = self.gate.write().await;
        let metric = self.get(tenant, deployment, id)?;
        self.store
            .write(Write::DeleteMetric {
                id: metric.store_id,
            })
            .await
            .map_err(storage_failed)?;
        self.catalog.write().remove(&metric.uid);
        self.unshow(&metric.uid);
        self.shown.lock().remove(&metric.uid);
        Ok(metric.document_with_status("deleted"))
    }

    /// Stores `points` for the metric `id`: all of them, or none with the reason.
    pub async fn add_points(
        &self,
        tenant: &str,
        deployment: &str,
        id: &str,
        points: Vec<NewPoint>,
        max_batch: usize,
    ) -> Result<Vec<PointDocument>, Problem> {
        if points.len() > max_batch {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!(
                    "{} data points in one request; at most {max_batch}",
                    points.len()
                ),
            ));
        }
        let _shared = self.gate.read().await;
        let metric = self.get(tenant, deployment, id)?;
        let timeseries = metric.spec.graph_type == GraphType::Timeseries;
        let mut rows = Vec::with_capacity(points.len());
        // The newest point by x time, for the gauge: (x time, y).
        let mut newest: Option<(i64, f64)> = None;
        for (i, point) in points.iter().enumerate() {
            let field = format!("[{i}].xValue");
            if timeseries {
                let at = point.x_value.as_str().and_then(time::parse_iso8601);
                let Some(at) = at else {
                    return Err(unprocessable(
                        "invalid_x_value",
                        format!(
                            "{} is not an ISO 8601 time with a zone (2026-03-06T10:00:00Z, \
                             …+01:00), which a timeseries metric needs",
                            point.x_value
                        ),
                        field,
                    ));
                };
                if newest.is_none_or(|(t, _)| at >= t) {
                    newest = Some((at, point.y_value));
                }
            } else if !(point.x_value.is_string() || point.x_value.is_number()) {
                return Err(unprocessable(
                    "invalid_x_value",
                    format!("{} is neither a string nor a number", point.x_value),
                    field,
                ));
            }
            rows.push(DataPoint {
                x: point.x_value.to_string(),
                y: point.y_value,
                prediction_ids: point
                    .prediction_log_ids
                    .as_ref()
                    .map(|ids| serde_json::to_string(ids).expect("strings serialise")),
            });
        }
        let written = self
            .store
            .write(Write::DataPoints {
                metric: metric.store_id,
                points: rows,
            })
            .await
            .map_err(storage_failed)?;
        let Written::DataPoints { first_seq } = written else {
            return Err(storage_failed("the store did not answer the points' ids"));
        };
        if let Some((at, y)) = newest {
            self.show(&metric, at, y);
        }
        let now = time::format_instant(time::now_ms());
        Ok(points
            .into_iter()
            .enumerate()
            .map(|(i, point)| PointDocument {
                id: (first_seq + i as i64).to_string(),
                custom_metric_id: metric.uid.clone(),
                x_value: point.x_value,
                y_value: point.y_value,
                prediction_log_ids: point.prediction_log_ids,
                created_at: now.clone(),
                updated_at: now.clone(),
            })
            .collect())
    }

    /// Removes every data point of the metric `id`. Answers how many went.
    pub async fn clear_points(
        &self,
        tenant: &str,
        deployment: &str,
        id: &str,
    ) -> Result<u64, Problem> {
        let _alone = self.gate.write().await;
        let metric = self.get(tenant, deployment, id)?;
        let written = self
            .store
            .write(Write::ClearDataPoints {
                metric: metric.store_id,
            })
            .await
            .map_err(storage_failed)?;
        self.unshow(&metric.uid);
        self.shown.lock().remove(&metric.uid);
        Ok(match written {
            Written::Removed(n) => n,
            _ => 0,
        })
    }

    /// Every metric of the deployment with its chart.
    pub async fn charts(
        &self,
        tenant: &str,
        deployment: &str,
    ) -> Result<Vec<ChartDocument>, Problem> {
        let metrics = self.list(tenant, deployment);
        let ids: Vec<i64> = metrics.iter().map(|m| m.store_id).collect();
        let points: Vec<Vec<DataPoint>> = self
            .store
            .read(move |reader| ids.iter().map(|id| reader.data_points(*id)).collect())
            .await
            .map_err(storage_failed)?;
        Ok(metrics
            .iter()
            .zip(points)
            .map(|(metric, points)| chart(metric, &points))
            .collect())
    }

    /// Writes the definition; answers it with its store id.
    async fn put(&self, metric: Metric) -> Result<Metric, Problem> {
        let written = self
            .store
            .write(Write::PutMetric(StoredMetric {
                id: metric.store_id,
                uid: metric.uid.clone(),
                tenant: metric.tenant.clone(),
                scope: format!("{SCOPE_PREFIX}{}", metric.deployment),
                name: metric.spec.name.clone(),
                document: serde_json::to_string(&metric.spec).expect("a spec serialises"),
                created_ms: metric.created_ms,
                updated_ms: metric.updated_ms,
            }))
            .await
            .map_err(storage_failed)?;
        let Written::Metric(store_id) = written else {
            return Err(storage_failed("the store did not answer an id"));
        };
        Ok(Metric { store_id, ..metric })
    }

    /// Shows a timeseries point in `/metrics` if it is at least as new as the one shown.
    fn show(&self, metric: &Metric, at: i64, y: f64) {
        {
            let mut shown = self.shown.lock();
            let latest = shown.entry(metric.uid.clone()).or_insert((i64::MIN, 0.0));
            if at < latest.0 {
                return;
            }
            *latest = (at, y);
        }
        self.record(metric, y);
    }

    fn record(&self, metric: &Metric, y: f64) {
        if !self.defined.swap(true, Ordering::Relaxed) {
            let definition = Definition {
                kind: Kind::Gauge,
                labels: None,
                options: SeriesOptions {
                    help: Some(Arc::from(
                        "The latest data point (by x time) of each Deeploy timeseries custom metric.",
                    )),
                    // A metric's latest point stays while the metric exists.
                    ttl_secs: Some(0),
                    ..SeriesOptions::default()
                },
                aggregation: None,
            };
            if let Err(e) = self.recorder.define(Source::Api, FAMILY, definition) {
                tracing::warn!("Deeploy metrics in /metrics: {e}");
            }
        }
        let labels = [
            (super::TENANT_LABEL, metric.tenant.as_str()),
            ("deployment", metric.deployment.as_str()),
            ("metric_id", metric.uid.as_str()),
            ("metric", metric.spec.name.as_str()),
        ];
        if let Err(refusal) = self
            .recorder
            .record(FAMILY, Kind::Gauge, labels, Update::Set(y))
        {
            tracing::debug!(
                "Deeploy metric {} is not in /metrics: {}",
                metric.uid,
                refusal.label()
            );
        }
    }

    /// Removes the metric's gauge from `/metrics`.
    fn unshow(&self, uid: &str) {
        self.recorder.registry().remove_series(FAMILY, |series| {
            crate::read::Labels::Escaped(series.labels())
                .pairs()
                .any(|(name, value)| name == "metric_id" && value == uid)
        });
    }
}

/// The rules a definition must follow, after defaults and updates.
pub fn check(spec: &Spec) -> Result<(), Problem> {
    if spec.graph_type == GraphType::Timeseries {
        let not_for_timeseries = [
            ("titleXAxis", spec.title_x_axis.is_some()),
            ("unitXAxis", spec.unit_x_axis.is_some()),
            ("baselineValue", spec.baseline_value.is_some()),
            ("baselineDescription", spec.baseline_description.is_some()),
        ];
        if let Some((field, _)) = not_for_timeseries.iter().find(|(_, set)| *set) {
            return Err(unprocessable(
                "not_for_timeseries",
                format!("a timeseries metric takes no {field} (its x axis is time)"),
                (*field).to_owned(),
            ));
        }
    } else {
        if spec.title_x_axis.is_none() {
            return Err(unprocessable(
                "missing_field",
                "a line or bar metric needs titleXAxis",
                "titleXAxis".to_owned(),
            ));
        }
        if spec.aggregation_method.is_some() {
            return Err(unprocessable(
                "timeseries_only",
                "aggregationMethod is only for timeseries metrics",
                "aggregationMethod".to_owned(),
            ));
        }
    }
    if let Some(description) = &spec.baseline_description {
        let length = description.chars().count();
        if length > MAX_BASELINE_DESCRIPTION {
            return Err(unprocessable(
                "too_long",
                format!(
                    "baselineDescription has {length} characters; at most {MAX_BASELINE_DESCRIPTION}"
                ),
                "baselineDescription".to_owned(),
            ));
        }
    }
    Ok(())
}

/// `current` with `changes` applied. A timeseries whose `aggregationMethod` is cleared goes
/// back to the default.
pub fn merge(current: &Spec, changes: Changes) -> Result<Spec, Problem> {
    if let Some(kind) = changes.graph_type
        && kind != current.graph_type
    {
        return Err(unprocessable(
            "immutable_field",
            "graphType cannot change; create a new metric instead",
            "graphType".to_owned(),
        ));
    }
    let required = |field: &str| {
        unprocessable(
            "missing_field",
            format!("{field} cannot be null"),
            field.to_owned(),
        )
    };
    let mut spec = current.clone();
    if let Some(name) = changes.name {
        spec.name = name.ok_or_else(|| required("name"))?;
    }
    if let Some(title) = changes.title_y_axis {
        spec.title_y_axis = title.ok_or_else(|| required("titleYAxis"))?;
    }
    let apply = |slot: &mut Option<String>, change: Option<Option<String>>| {
        if let Some(value) = change {
            *slot = value;
        }
    };
    apply(&mut spec.title_x_axis, changes.title_x_axis);
    apply(&mut spec.unit_x_axis, changes.unit_x_axis);
    apply(&mut spec.unit_y_axis, changes.unit_y_axis);
    apply(&mut spec.baseline_description, changes.baseline_description);
    if let Some(value) = changes.baseline_value {
        spec.baseline_value = value;
    }
    if let Some(method) = changes.aggregation_method {
        spec.aggregation_method = method;
    }
    if spec.graph_type == GraphType::Timeseries {
        spec.aggregation_method.get_or_insert_default();
    }
    Ok(spec)
}

/// The chart of one metric from its points in posting order.
pub fn chart(metric: &Metric, points: &[DataPoint]) -> ChartDocument {
    let ids = |point: &DataPoint| -> Vec<String> {
        point
            .prediction_ids
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default()
    };
    let average = if points.is_empty() {
        0.0
    } else {
        points.iter().map(|p| p.y).sum::<f64>() / points.len() as f64
    };
    let (labels, data, prediction_log_ids) = match metric.spec.graph_type {
        GraphType::Line | GraphType::Bar => {
            let mut labels = Vec::with_capacity(points.len());
            let mut data = Vec::with_capacity(points.len());
            let mut all_ids = Vec::with_capacity(points.len());
            for point in points {
                labels.push(serde_json::from_str(&point.x).unwrap_or(Value::Null));
                data.push(point.y);
                all_ids.push(ids(point));
            }
            (labels, data, all_ids)
        }
        GraphType::Timeseries => {
            let timed: Vec<(i64, &DataPoint)> = points
                .iter()
                .filter_map(|point| {
                    let x: Value = serde_json::from_str(&point.x).ok()?;
                    Some((time::parse_iso8601(x.as_str()?)?, point))
                })
                .collect();
            let method = metric.spec.aggregation_method.unwrap_or_default();
            let bins = bin(&timed);
            let mut ids_per_bin: BTreeMap<i64, Vec<String>> = BTreeMap::new();
            let step = bins.step_ms;
            for (at, point) in &timed {
                ids_per_bin
                    .entry(at.div_euclid(step) * step)
                    .or_default()
                    .extend(ids(point));
            }
            let mut binner = Binner::new(bins);
            for (at, point) in &timed {
                binner.add(0, *at, point.y);
            }
            let folded = binner
                .finish(method.aggregation())
                .remove(&0)
                .unwrap_or_default();
            let labels = folded
                .iter()
                .map(|(start, _)| Value::String(time::format_instant(*start)))
                .collect();
            let data = folded.iter().map(|(_, value)| *value).collect();
            (labels, data, ids_per_bin.into_values().collect())
        }
    };
    ChartDocument {
        metric: metric.document(),
        average,
        data,
        labels,
        prediction_log_ids,
    }
}

/// UTC-aligned bins covering the points: hourly when they span at most 48 hours, daily beyond.
fn bin(timed: &[(i64, &DataPoint)]) -> Bins {
    let first = timed.iter().map(|(at, _)| *at).min().unwrap_or(0);
    let last = timed.iter().map(|(at, _)| *at).max().unwrap_or(0);
    let step_ms = if last - first <= HOURLY_SPAN_MS {
        HOUR_MS
    } else {
        DAY_MS
    };
    // Not `Bins::new`: its cap is for query answers; these bins hold points by construction.
    Bins {
        start_ms: first.div_euclid(step_ms) * step_ms,
        end_ms: last + 1,
        step_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(graph_type: GraphType) -> Spec {
        Spec {
            name: "m".into(),
            graph_type,
            title_x_axis: (graph_type != GraphType::Timeseries).then(|| "x".into()),
            title_y_axis: "y".into(),
            unit_x_axis: None,
            unit_y_axis: None,
            baseline_value: None,
            baseline_description: None,
            aggregation_method: (graph_type == GraphType::Timeseries)
                .then_some(AggregationMethod::Sum),
        }
    }

    fn changes(json: &str) -> Changes {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_update_keeps_what_it_leaves_out_and_clears_what_it_sends_as_null() {
        let mut bar = spec(GraphType::Bar);
        bar.unit_y_axis = Some("EUR".into());
        bar.baseline_value = Some(1.5);
        let merged = merge(&bar, changes(r#"{"name": "n", "baselineValue": null}"#)).unwrap();
        assert_eq!(merged.name, "n");
        assert_eq!(merged.unit_y_axis.as_deref(), Some("EUR"));
        assert_eq!(merged.baseline_value, None);
        assert_eq!(merge(&bar, Changes::default()).unwrap(), bar);
        let series = spec(GraphType::Timeseries);
        let merged = merge(&series, changes(r#"{"aggregationMethod": null}"#)).unwrap();
        assert_eq!(merged.aggregation_method, Some(AggregationMethod::Average));
        let refused = merge(&series, changes(r#"{"graphType": "bar"}"#)).unwrap_err();
        assert_eq!(refused.code, "immutable_field");
    }

    #[test]
    fn the_rules_name_the_field_at_fault() {
        assert!(check(&spec(GraphType::Line)).is_ok());
        assert!(check(&spec(GraphType::Timeseries)).is_ok());
        let mut series = spec(GraphType::Timeseries);
        series.unit_x_axis = Some("s".into());
        assert_eq!(
            check(&series).unwrap_err().field.as_deref(),
            Some("unitXAxis")
        );
        let mut line = spec(GraphType::Line);
        line.baseline_description = Some("ü".repeat(20));
        assert!(check(&line).is_ok(), "characters, not bytes");
        line.baseline_description = Some("u".repeat(21));
        assert_eq!(check(&line).unwrap_err().code, "too_long");
    }

    fn metric(graph_type: GraphType) -> Metric {
        Metric {
            store_id: 1,
            uid: "u".into(),
            tenant: "t".into(),
            deployment: "d".into(),
            spec: spec(graph_type),
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn point(x: &str, y: f64, ids: Option<&str>) -> DataPoint {
        DataPoint {
            x: serde_json::to_string(x).unwrap(),
            y,
            prediction_ids: ids.map(str::to_owned),
        }
    }

    #[test]
    fn timeseries_bins_are_utc_aligned_before_the_epoch_too() {
        let points = [
            point("1969-12-31T23:59:00Z", 1.0, Some(r#"["a"]"#)),
            point("1970-01-01T00:30:00+01:00", 2.0, None),
            point("1970-01-01T00:00:00Z", 4.0, Some(r#"["b"]"#)),
        ];
        let chart = chart(&metric(GraphType::Timeseries), &points);
        assert_eq!(
            chart.labels,
            [
                Value::from("1969-12-31T23:00:00Z"),
                Value::from("1970-01-01T00:00:00Z")
            ]
        );
        assert_eq!(chart.data, [3.0, 4.0]);
        assert_eq!(
            chart.prediction_log_ids,
            [vec!["a".to_owned()], vec!["b".to_owned()]]
        );
        assert_eq!(chart.average, 7.0 / 3.0);
    }

    #[test]
    fn a_chart_without_points_is_empty_with_a_zero_average() {
        for graph_type in [GraphType::Timeseries, GraphType::Line] {
            let chart = chart(&metric(graph_type), &[]);
            assert!(chart.labels.is_empty() && chart.data.is_empty());
            assert_eq!(chart.average, 0.0);
        }
    }
}
