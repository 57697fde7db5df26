//! Custom metrics: definitions declared over the API, their points (durable in the [`Store`],
//! live in the registry) and queries over them. The HTTP routes (Matih's paths today) are thin
//! shells over [`CustomMetrics`]; the rules live here.
//!
//! Tenants: every definition and point belongs to one tenant. A tenant sees and changes only
//! its own, and its series carry a `tenant` label in `/metrics`. Two tenants may define the same
//! name (one family in `/metrics`, told apart by `tenant`), as long as they agree on its type;
//! the config file's `[[metric]]` definitions are visible to every tenant and read-only.
//!
//! Order of a record: validate everything, then make the points durable, then show them in the
//! registry. An answered record is on disk; a refused one changed nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::StatusCode;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::definitions::{Aggregation, Definition, Source};
use crate::http::api::Problem;
use crate::naming::counter_family;
use crate::record::{Recorder, Refusal, SeriesHandle};
use crate::registry::{Kind, SeriesKeyBuf, SeriesOptions, Update};
use crate::store::tiers::{Cell as TierCell, Tier};
use crate::store::{self, Point, Store, StoredMetric, Write, Written};

pub mod backend;
pub mod charts;
pub mod deeploy;
pub mod names;
pub mod query;
pub mod seldon;
pub mod time;

use query::{Asked, Binner, Bins, CellBinner};

pub use crate::record::TENANT_LABEL;

/// The scope of Matih definitions in the store.
const MATIH_SCOPE: &str = "matih";

/// How far ahead of the daemon's clock a point may be stamped.
const MAX_FUTURE_MS: i64 = 10 * 60 * 1000;

const DAY_MS: i64 = 86_400_000;

/// What the naming lint does to a new definition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamingMode {
    /// Define the metric and answer the findings as warnings.
    #[default]
    Warn,
    /// Refuse a definition the lint finds fault with (422).
    Enforce,
}

/// The API's rules an operator sets (`[api]`, `[storage]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiOptions {
    pub naming: NamingMode,
    pub required_prefix: String,
    /// Most points in one request.
    pub max_batch: usize,
    pub default_retention_days: u32,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            naming: NamingMode::Warn,
            required_prefix: String::new(),
            max_batch: 100_000,
            default_retention_days: 90,
        }
    }
}

/// A metric's type as the API spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl MetricType {
    pub fn kind(self) -> Kind {
        match self {
            MetricType::Counter => Kind::Counter,
            MetricType::Gauge => Kind::Gauge,
            MetricType::Histogram => Kind::Histogram,
            MetricType::Summary => Kind::Summary,
        }
    }

    fn of(kind: Kind) -> Option<MetricType> {
        match kind {
            Kind::Counter => Some(MetricType::Counter),
            Kind::Gauge => Some(MetricType::Gauge),
            Kind::Histogram => Some(MetricType::Histogram),
            Kind::Summary => Some(MetricType::Summary),
            Kind::Set => None,
        }
    }

    /// The aggregation of a query that names none, when the definition names none either.
    pub(crate) fn default_aggregation(self) -> Aggregation {
        match self {
            MetricType::Counter => Aggregation::Sum,
            _ => Aggregation::Average,
        }
    }
}

/// A definition as a client declares it (the Matih seed's fields).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    #[schema(pattern = "^[a-zA-Z_:][a-zA-Z0-9_:]*$")]
    pub name: String,
    #[serde(rename = "type")]
    pub kind: MetricType,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub unit: Option<String>,
    /// The label names every point must carry, no more, no less.
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub aggregation: Option<Aggregation>,
    #[serde(default)]
    #[schema(minimum = 1)]
    pub retention_days: Option<u32>,
}

impl MetricSpec {
    /// The aggregation a query gets when it names none: the definition's, else its type's.
    pub fn default_aggregation(&self) -> Aggregation {
        self.aggregation.unwrap_or(self.kind.default_aggregation())
    }
}

/// A definition in force for one tenant.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomMetric {
    /// The store's key for its points.
    pub store_id: i64,
    /// The public id.
    pub uid: String,
    pub tenant: String,
    pub spec: MetricSpec,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Declared in the config file, or a mapping rule's family with history: read-only to the
    /// API.
    pub read_only: bool,
    pub origin: Origin,
}

/// Where a metric the API shows comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Defined through the API by its tenant.
    Api,
    /// A `[[metric]]` of the config file.
    Config,
    /// A family a `[[mapping]]` rule with `history = true` named from StatsD lines.
    Rule,
}

impl CustomMetric {
    fn family(&self) -> &str {
        family_name(&self.spec)
    }

    fn retention_ms(&self, options: &ApiOptions) -> i64 {
        i64::from(
            self.spec
                .retention_days
                .unwrap_or(options.default_retention_days),
        ) * DAY_MS
    }
}

pub(crate) fn family_name(spec: &MetricSpec) -> &str {
    match spec.kind {
        MetricType::Counter => counter_family(&spec.name),
        _ => &spec.name,
    }
}

/// One point a client records.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    pub value: f64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// ISO 8601 with an offset; now when absent.
    #[serde(default)]
    pub timestamp: Option<String>,
}

/// What a query asks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuerySpec {
    pub start: Option<String>,
    pub end: Option<String>,
    pub step: Option<String>,
    pub aggregation: Option<String>,
    /// Label filters: every one must match.
    pub labels: BTreeMap<String, String>,
}

impl QuerySpec {
    /// The bins and the aggregation asked for: `end` defaults to now, `start` to an hour
    /// before it, `step` to a minute, `aggregation` to `default`. Each bad value is a 400
    /// naming its parameter.
    pub fn range(&self, default: Aggregation) -> Result<(Bins, Aggregation), Problem> {
        match self.asked(default)? {
            (bins, Asked::Plain(aggregation)) => Ok((bins, aggregation)),
            (_, Asked::Quantile(_)) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_aggregation",
                "quantile(q) is for histograms and summaries with history".to_string(),
            )
            .with_field("aggregation")),
        }
    }

    /// [`QuerySpec::range`], with `quantile(q)` among the aggregations.
    pub fn asked(&self, default: Aggregation) -> Result<(Bins, Asked), Problem> {
        let bad = |code: &'static str, field: &str, detail: String| {
            Problem::new(StatusCode::BAD_REQUEST, code, detail).with_field(field)
        };
        let end = match &self.end {
            Some(text) => time::parse_instant(text).map_err(|d| bad("invalid_time", "end", d))?,
            // `end` is exclusive: the default takes in a point recorded this very millisecond
            // (a client that records and then queries at once must see its point).
            None => time::now_ms() + 1,
        };
        let start = match &self.start {
            Some(text) => time::parse_instant(text).map_err(|d| bad("invalid_time", "start", d))?,
            None => end - 3_600_000,
        };
        let step = match &self.step {
            Some(text) => time::parse_step(text).map_err(|d| bad("invalid_step", "step", d))?,
            None => 60_000,
        };
        let aggregation = match &self.aggregation {
            Some(text) => {
                Asked::parse(text).map_err(|d| bad("invalid_aggregation", "aggregation", d))?
            }
            None => Asked::Plain(default),
        };
        let bins = Bins::new(start, end, step).map_err(|d| bad("invalid_range", "start", d))?;
        Ok((bins, aggregation))
    }
}

/// A query's answer, with what it used.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct QueryAnswer {
    pub metric: String,
    #[schema(value_type = String, example = "average")]
    pub aggregation: Asked,
    /// The history tier answered from (`1m`), for a metric with history; absent for
    /// recorded points.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    pub start: String,
    pub end: String,
    pub step: String,
    pub labels: BTreeMap<String, String>,
    pub series: Vec<SeriesAnswer>,
}

/// One series of a query's answer: its labels and its non-empty bins.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SeriesAnswer {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<PointAnswer>,
}

impl SeriesAnswer {
    /// A series' answer from its bins, `(bin start in ms, value)` in time order.
    pub fn new(labels: BTreeMap<String, String>, points: Vec<(i64, f64)>) -> SeriesAnswer {
        SeriesAnswer::stamped(labels, points, &mut Stamps::default())
    }

    /// [`SeriesAnswer::new`] with the bins' timestamps formatted once for every series.
    fn stamped(
        labels: BTreeMap<String, String>,
        points: Vec<(i64, f64)>,
        stamps: &mut Stamps,
    ) -> SeriesAnswer {
        SeriesAnswer {
            labels,
            points: points
                .into_iter()
                .map(|(ts, value)| PointAnswer {
                    timestamp: stamps.get(ts),
                    value,
                })
                .collect(),
        }
    }
}

/// Bin starts as RFC 3339, by Unix ms: the series of one answer share their bins, so each is
/// formatted once and shared (a 1,000-series answer has 1,000 of each).
#[derive(Default)]
struct Stamps(HashMap<i64, Stamp, ahash::RandomState>);

impl Stamps {
    fn get(&mut self, ms: i64) -> Stamp {
        (self.0.entry(ms))
            .or_insert_with(|| Stamp::new(&time::format_instant(ms)))
            .clone()
    }
}

/// A bin's start as RFC 3339, held as its JSON string: a large answer writes each one once per
/// series, and copying it raw skips serde_json's scan for characters to escape (4 % of a
/// 1,000-series query).
#[derive(Clone)]
pub struct Stamp(Arc<serde_json::value::RawValue>);

impl Stamp {
    fn new(text: &str) -> Stamp {
        let json = serde_json::to_string(text).expect("a string serialises");
        let raw = serde_json::value::RawValue::from_string(json).expect("a JSON string");
        Stamp(raw.into())
    }

    /// The timestamp, without its quotes.
    pub fn as_str(&self) -> &str {
        let json = self.0.get();
        &json[1..json.len() - 1]
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl std::fmt::Debug for Stamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Stamp) -> bool {
        self.as_str() == other.as_str()
    }
}

/// One bin: its start and its aggregated value.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PointAnswer {
    #[schema(value_type = String)]
    pub timestamp: Stamp,
    pub value: f64,
}

/// (tenant, name) → definition. A hashbrown map, so that a lookup by [`TenantName`] borrows
/// its key from the request instead of allocating one (a Seldon post looks up each metric).
type Catalog = hashbrown::HashMap<(String, String), Arc<CustomMetric>>;

/// A [`Catalog`] key borrowed: `(tenant, name)`. Hashes as the owned key does (a tuple hashes
/// its fields in order, and a `String` as its `str`).
#[derive(Hash)]
struct TenantName<'a>(&'a str, &'a str);

impl hashbrown::Equivalent<(String, String)> for TenantName<'_> {
    fn equivalent(&self, key: &(String, String)) -> bool {
        self.0 == key.0 && self.1 == key.1
    }
}

/// The custom-metrics service.
pub struct CustomMetrics {
    store: Store,
    recorder: Arc<Recorder>,
    options: RwLock<ApiOptions>,
    /// (tenant, name) → definition, for Matih definitions and the store rows of file
    /// definitions a tenant has recorded to.
    catalog: RwLock<Catalog>,
    /// Counts catalog changes, as [`crate::definitions::Definitions::generation`] counts
    /// definitions' ([`CustomMetrics::edit_catalog`]).
    catalog_generation: AtomicU64,
    /// Series handles of the metrics Seldon posts name, so a post like the last one skips the
    /// work of finding them.
    seldon_series: seldon::SeriesCache,
    /// Gauges: the timestamp of the value `/metrics` shows, per store series.
    shown: Mutex<HashMap<(i64, Arc<str>), i64>>,
    /// Definition changes one at a time (checks, store, registry as one step).
    changes: tokio::sync::Mutex<()>,
    /// Deeploy's chart-backed metrics, in the same store.
    deeploy: deeploy::Deeploy,
    /// The metrics sampled into history, once the sampler runs.
    history: std::sync::OnceLock<Arc<crate::history::History>>,
}

impl CustomMetrics {
    /// The service over `store`, with the definitions the store holds put in force.
    pub fn open(
        store: Store,
        recorder: Arc<Recorder>,
        options: ApiOptions,
    ) -> Result<CustomMetrics, String> {
        let stored = store.reader().metrics().map_err(|e| e.to_string())?;
        let deeploy = deeploy::Deeploy::load(store.clone(), Arc::clone(&recorder), &stored);
        let service = CustomMetrics {
            store,
            recorder,
            options: RwLock::new(options),
            catalog: RwLock::default(),
            catalog_generation: AtomicU64::new(0),
            seldon_series: seldon::SeriesCache::default(),
            shown: Mutex::new(HashMap::new()),
            changes: tokio::sync::Mutex::new(()),
            deeploy,
            history: std::sync::OnceLock::new(),
        };
        for row in stored {
            let read_only = row.scope != MATIH_SCOPE;
            if read_only && row.scope != FILE_SCOPE {
                continue;
            }
            let spec: MetricSpec = match serde_json::from_str(&row.document) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(
                        "stored definition {:?} is unreadable, skipped: {e}",
                        row.name
                    );
                    continue;
                }
            };
            let metric = CustomMetric {
                store_id: row.id,
                uid: row.uid,
                tenant: row.tenant,
                spec,
                created_ms: row.created_ms,
                updated_ms: row.updated_ms,
                read_only,
                origin: match read_only {
                    true => Origin::Config,
                    false => Origin::Api,
                },
            };
            if !read_only {
                service.install(&metric);
            }
            service.edit_catalog(|catalog| {
                catalog.insert(
                    (metric.tenant.clone(), metric.spec.name.clone()),
                    Arc::new(metric),
                )
            });
        }
        Ok(service)
    }

    pub fn deeploy(&self) -> &deeploy::Deeploy {
        &self.deeploy
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Queries of the config file's metrics with history answer from it from now on.
    pub fn set_history(&self, history: Arc<crate::history::History>) {
        let _ = self.history.set(history);
    }

    pub fn set_options(&self, options: ApiOptions) {
        *self.options.write() = options;
    }

    pub fn options(&self) -> ApiOptions {
        self.options.read().clone()
    }

    /// The registry definition of an API metric, unless one is in force for its family.
    fn install(&self, metric: &CustomMetric) {
        let family = metric.family();
        if self.recorder.definitions().get(family).is_some() {
            return;
        }
        let spec = &metric.spec;
        let unit = spec
            .unit
            .as_deref()
            .filter(|unit| !unit.is_empty() && family.ends_with(&format!("_{unit}")));
        let definition = Definition {
            kind: spec.kind.kind(),
            // Each tenant's schema is checked here, per request; the registry takes any.
            labels: None,
            options: SeriesOptions {
                help: spec.description.as_deref().map(Arc::from),
                unit: unit.map(Arc::from),
                ..SeriesOptions::default()
            },
            aggregation: spec.aggregation,
        };
        if let Err(e) = self.recorder.define(Source::Api, family, definition) {
            tracing::warn!(
                "API metric {:?} is not in force in /metrics: {e}",
                spec.name
            );
        }
    }

    /// The tenant's definitions, the config file's and the families mapping rules keep history
    /// for, sorted by name; of one name, the tenant's wins, then the file's (as a query finds
    /// them).
    pub fn list(&self, tenant: &str) -> Vec<Arc<CustomMetric>> {
        let mut out: BTreeMap<String, Arc<CustomMetric>> = (self.rule_metrics(tenant))
            .chain(self.file_metrics(tenant))
            .map(|m| (m.spec.name.clone(), m))
            .collect();
        for ((owner, name), metric) in self.catalog.read().iter() {
            if owner == tenant && !metric.read_only {
                out.insert(name.clone(), Arc::clone(metric));
            }
        }
        out.into_values().collect()
    }

    /// One of the tenant's definitions (or the file's), or 404.
    pub fn get(&self, tenant: &str, name: &str) -> Result<Arc<CustomMetric>, Problem> {
        self.find(tenant, name).ok_or_else(|| not_found(name))
    }

    /// What a query over `name` reads: one of the tenant's definitions (or the file's), or a
    /// family a mapping rule keeps history for; or 404.
    pub fn get_queryable(&self, tenant: &str, name: &str) -> Result<Arc<CustomMetric>, Problem> {
        (self.find(tenant, name))
            .or_else(|| self.rule_metric(tenant, name))
            .ok_or_else(|| not_found(name))
    }

    /// Whether a query over `metric` answers from its sampled history, which holds every series
    /// of its family whatever their `tenant` label, rather than from the tenant's recorded
    /// points.
    pub fn answers_from_history(&self, metric: &CustomMetric) -> bool {
        metric.read_only && (self.history.get()).is_some_and(|h| h.wants(metric.family()))
    }

    /// A family a mapping rule with `history = true` keeps history for, as a read-only metric
    /// every tenant sees (as the file's). There is no definition to give its type: it is the
    /// one the registry accepted for the series the rule named
    /// ([`crate::history::ruled`]), and a StatsD set's history (its member count) reads as a
    /// gauge's. A counter answers to its name with and without `_total`.
    fn rule_metric(&self, tenant: &str, name: &str) -> Option<Arc<CustomMetric>> {
        let families = self.history.get()?.rule_families();
        [name, counter_family(name)].into_iter().find_map(|family| {
            let kind = match families.get(family)?.kind {
                Kind::Set => MetricType::Gauge,
                kind => MetricType::of(kind)?,
            };
            let spec_name = match kind {
                MetricType::Counter => format!("{family}_total"),
                _ => family.to_owned(),
            };
            (family == name || spec_name == name).then(|| {
                Arc::new(CustomMetric {
                    store_id: -1,
                    uid: format!("rule:{family}"),
                    tenant: tenant.to_owned(),
                    spec: MetricSpec {
                        name: spec_name,
                        kind,
                        description: None,
                        unit: None,
                        labels: Vec::new(),
                        aggregation: None,
                        retention_days: None,
                    },
                    created_ms: 0,
                    updated_ms: 0,
                    read_only: true,
                    origin: Origin::Rule,
                })
            })
        })
    }

    /// Every family mapping rules keep history for, as [`CustomMetrics::rule_metric`] shows it.
    fn rule_metrics(&self, tenant: &str) -> impl Iterator<Item = Arc<CustomMetric>> {
        let families = (self.history.get())
            .map(|history| history.rule_families().families())
            .unwrap_or_default();
        (families.into_iter()).filter_map(move |(family, _)| self.rule_metric(tenant, &family))
    }

    /// [`CustomMetrics::get`] for callers to whom absence is no error (no problem to build).
    fn find(&self, tenant: &str, name: &str) -> Option<Arc<CustomMetric>> {
        if let Some(metric) = self.file_metric(tenant, name) {
            return Some(metric);
        }
        self.catalog
            .read()
            .get(&TenantName(tenant, name))
            .filter(|m| !m.read_only)
            .cloned()
    }

    /// Changes the catalog, then counts the change (after it is in place, so that whatever
    /// was worked out from the catalog before is seen to be stale).
    fn edit_catalog<R>(&self, edit: impl FnOnce(&mut Catalog) -> R) -> R {
        let result = edit(&mut self.catalog.write());
        self.catalog_generation.fetch_add(1, Ordering::Release);
        result
    }

    /// What the tenants' definitions were when this was called: `declared_labels` answers
    /// the same until it changes.
    fn definitions_generation(&self) -> (u64, u64) {
        (
            self.recorder.definitions().generation(),
            self.catalog_generation.load(Ordering::Acquire),
        )
    }

    /// Defines a metric for `tenant`. Answers the definition and the naming lint's findings.
    pub async fn register(
        &self,
        tenant: &str,
        spec: MetricSpec,
    ) -> Result<(Arc<CustomMetric>, Vec<String>), Problem> {
        let options = self.options();
        check_spec(&spec)?;
        let warnings = names::lint(
            &spec.name,
            spec.kind.kind(),
            spec.unit.as_deref(),
            &options.required_prefix,
        );
        if options.naming == NamingMode::Enforce && !warnings.is_empty() {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "naming",
                format!("the name breaks the naming rules: {}", warnings.join("; ")),
            )
            .with_field("name"));
        }
        let _change = self.changes.lock().await;
        if self.file_metric(tenant, &spec.name).is_some() {
            return Err(read_only(&spec.name));
        }
        let key = (tenant.to_owned(), spec.name.clone());
        if self.catalog.read().get(&key).is_some_and(|m| !m.read_only) {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!(
                    "metric {:?} is already defined; delete it first to change it",
                    spec.name
                ),
            )
            .with_field("name"));
        }
        self.check_family_kind(&spec)?;
        let now = time::now_ms();
        let uid = uuid::Uuid::new_v4().to_string();
        let store_id = self
            .put_definition(&uid, tenant, MATIH_SCOPE, &spec, now)
            .await?;
        let metric = Arc::new(CustomMetric {
            store_id,
            uid,
            tenant: tenant.to_owned(),
            spec,
            created_ms: now,
            updated_ms: now,
            read_only: false,
            origin: Origin::Api,
        });
        self.install(&metric);
        self.edit_catalog(|catalog| catalog.insert(key, Arc::clone(&metric)));
        Ok((metric, warnings))
    }

    /// A family name serves one type in `/metrics`, whoever defined or sent it.
    fn check_family_kind(&self, spec: &MetricSpec) -> Result<(), Problem> {
        let family = family_name(spec);
        let kind = spec.kind.kind();
        let defined = self.recorder.definitions().get(family).map(|d| d.kind);
        let live = self
            .recorder
            .registry()
            .family_named(family)
            .map(|f| f.kind());
        match defined.or(live) {
            Some(other) if other != kind => Err(Problem::new(
                StatusCode::CONFLICT,
                "name_conflict",
                format!(
                    "/metrics already serves {family:?} as a {}; choose another name or type",
                    other.name()
                ),
            )
            .with_field("name")),
            _ => Ok(()),
        }
    }

    /// Deletes one of the tenant's definitions with its stored points and live series.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<(), Problem> {
        let _change = self.changes.lock().await;
        if self.file_metric(tenant, name).is_some() {
            return Err(read_only(name));
        }
        if self.rule_metric(tenant, name).is_some() {
            return Err(rule_read_only(name));
        }
        let key = (tenant.to_owned(), name.to_owned());
        let metric = self
            .catalog
            .read()
            .get(&key)
            .filter(|m| !m.read_only)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        self.store
            .write(Write::DeleteMetric {
                id: metric.store_id,
            })
            .await
            .map_err(storage_failed)?;
        self.edit_catalog(|catalog| catalog.remove(&key));
        self.shown
            .lock()
            .retain(|(id, _), _| *id != metric.store_id);
        let family = metric.family();
        let shared = self
            .catalog
            .read()
            .values()
            .any(|other| !other.read_only && other.family() == family);
        if shared {
            self.recorder.registry().remove_series(family, |series| {
                crate::read::Labels::Escaped(series.labels())
                    .pairs()
                    .any(|(name, value)| name == TENANT_LABEL && value == tenant)
            });
        } else if let Err(e) = self.recorder.undefine(Source::Api, family) {
            tracing::warn!("deleting {name:?}: {e}");
        }
        Ok(())
    }

    /// Records `samples` into the tenant's metric `name`: all of them, or none with the reason.
    pub async fn record(
        &self,
        tenant: &str,
        name: &str,
        samples: Vec<Sample>,
    ) -> Result<usize, Problem> {
        let options = self.options();
        if samples.len() > options.max_batch {
            return Err(Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                format!(
                    "{} points in one request; at most {}",
                    samples.len(),
                    options.max_batch
                ),
            ));
        }
        let metric = self.metric_for_writes(tenant, name).await?;
        let now = time::now_ms();
        let oldest = now - metric.retention_ms(&options);
        let declared: Vec<&str> = metric.spec.labels.iter().map(String::as_str).collect();
        // A point's labels (a BTreeMap) come sorted by name.
        let mut wanted = declared.clone();
        wanted.sort_unstable();
        let mut points = Vec::with_capacity(samples.len());
        let mut labels_keys: HashMap<&BTreeMap<String, String>, Arc<str>, ahash::RandomState> =
            HashMap::default();
        for (i, sample) in samples.iter().enumerate() {
            let field = |name: &str| {
                if samples.len() == 1 {
                    name.to_owned()
                } else {
                    format!("[{i}].{name}")
                }
            };
            if !sample.value.is_finite() {
                return Err(unprocessable(
                    Refusal::NonFiniteValue.label(),
                    "the value must be a finite number",
                    field("value"),
                ));
            }
            if metric.spec.kind == MetricType::Counter && sample.value < 0.0 {
                return Err(unprocessable(
                    Refusal::NegativeCounter.label(),
                    format!(
                        "{name:?} is a counter: a recorded value is an increment and cannot be negative"
                    ),
                    field("value"),
                ));
            }
            if !sample
                .labels
                .keys()
                .map(String::as_str)
                .eq(wanted.iter().copied())
            {
                let given: Vec<&str> = sample.labels.keys().map(String::as_str).collect();
                return Err(unprocessable(
                    "labels_mismatch",
                    format!(
                        "{name:?} takes the labels [{}]; the point has [{}]",
                        declared.join(", "),
                        given.join(", ")
                    ),
                    field("labels"),
                ));
            }
            let ts_ms = match &sample.timestamp {
                None => now,
                Some(text) => time::parse_instant(text).map_err(|detail| {
                    Problem::new(StatusCode::BAD_REQUEST, "invalid_timestamp", detail)
                        .with_field(field("timestamp"))
                })?,
            };
            if ts_ms < oldest {
                return Err(unprocessable(
                    "outside_retention",
                    format!(
                        "{} is older than {name:?} keeps points ({} days)",
                        time::format_instant(ts_ms),
                        (now - oldest) / DAY_MS
                    ),
                    field("timestamp"),
                ));
            }
            if ts_ms > now + MAX_FUTURE_MS {
                return Err(unprocessable(
                    "timestamp_in_future",
                    format!(
                        "{} is more than 10 minutes ahead of this host's clock",
                        time::format_instant(ts_ms)
                    ),
                    field("timestamp"),
                ));
            }
            let labels = labels_keys.entry(&sample.labels).or_insert_with(|| {
                store::labels_key(sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .into()
            });
            points.push(Point {
                labels: Arc::clone(labels),
                ts_ms,
                value: sample.value,
            });
        }
        // Every label set must be able to live in /metrics before anything is stored.
        for sample in labels_keys.keys() {
            self.show(&metric, tenant, sample, None)
                .map_err(|refusal| refused(name, refusal))?;
        }
        let count = points.len();
        self.store
            .write(Write::Points {
                metric: metric.store_id,
                points: points.clone(),
            })
            .await
            .map_err(storage_failed)?;
        self.show_points(&metric, tenant, &samples, &points);
        Ok(count)
    }

    /// Puts stored points in the registry. Counters and histograms take every point, with one
    /// series lookup per label set; a gauge takes only its newest point of the batch (the last
    /// of equal timestamps), as it would one point after another.
    fn show_points(
        &self,
        metric: &CustomMetric,
        tenant: &str,
        samples: &[Sample],
        points: &[Point],
    ) {
        // Label sets by the address of their key text, which their points share.
        let set_of = |point: &Point| Arc::as_ptr(&point.labels).cast::<u8>().addr();
        let not_shown = |refusal: Refusal| {
            // Stored, but /metrics refused it meanwhile (a limit reached by another input).
            tracing::debug!(
                "a stored point of {:?} is not in /metrics: {}",
                metric.spec.name,
                refusal.label()
            );
        };
        let kind = metric.spec.kind.kind();
        if kind == Kind::Gauge {
            let mut newest: HashMap<usize, usize, ahash::RandomState> = HashMap::default();
            for (i, point) in points.iter().enumerate() {
                newest
                    .entry(set_of(point))
                    .and_modify(|best| {
                        if point.ts_ms >= points[*best].ts_ms {
                            *best = i;
                        }
                    })
                    .or_insert(i);
            }
            for &i in newest.values() {
                if let Err(refusal) =
                    self.show(metric, tenant, &samples[i].labels, Some(&points[i]))
                {
                    not_shown(refusal);
                }
            }
            return;
        }
        let now = self.recorder.registry().now_secs();
        let mut handles: HashMap<usize, SeriesHandle, ahash::RandomState> = HashMap::default();
        for (sample, point) in samples.iter().zip(points) {
            let update = match kind {
                Kind::Counter => Update::Add(point.value),
                _ => Update::Observe {
                    value: point.value,
                    weight: 1,
                },
            };
            let set = set_of(point);
            let done = match handles.get(&set) {
                Some(handle) if handle.touch(now) => self.recorder.apply(handle, update),
                _ => {
                    let pairs = std::iter::once((TENANT_LABEL, tenant))
                        .chain(sample.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    self.recorder
                        .record(metric.family(), kind, pairs, update)
                        .map(|handle| {
                            handles.insert(set, handle);
                        })
                }
            };
            if let Err(refusal) = done {
                not_shown(refusal);
            }
        }
    }

    /// Puts a point in the registry (or, without one, only checks its series can exist).
    fn show(
        &self,
        metric: &CustomMetric,
        tenant: &str,
        labels: &BTreeMap<String, String>,
        point: Option<&Point>,
    ) -> Result<(), Refusal> {
        let pairs = std::iter::once((TENANT_LABEL, tenant))
            .chain(labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let kind = metric.spec.kind.kind();
        let Some(point) = point else {
            let mut key = SeriesKeyBuf::default();
            let options = SeriesOptions::default();
            return self
                .recorder
                .series(metric.family(), kind, pairs, &options, &mut key)
                .map(drop);
        };
        let update = match kind {
            Kind::Counter => Update::Add(point.value),
            Kind::Gauge => {
                let mut shown = self.shown.lock();
                let newest = shown
                    .entry((metric.store_id, Arc::clone(&point.labels)))
                    .or_insert(i64::MIN);
                if point.ts_ms < *newest {
                    return Ok(());
                }
                *newest = point.ts_ms;
                Update::Set(point.value)
            }
            _ => Update::Observe {
                value: point.value,
                weight: 1,
            },
        };
        self.recorder
            .record(metric.family(), kind, pairs, update)
            .map(drop)
    }

    /// Answers a query over the tenant's metric `name`: from history for a config-file metric
    /// that keeps it, from its recorded points otherwise.
    pub async fn query(
        &self,
        tenant: &str,
        name: &str,
        spec: QuerySpec,
    ) -> Result<QueryAnswer, Problem> {
        let metric = self.get_queryable(tenant, name)?;
        let default = metric.spec.default_aggregation();
        let history = match self.history.get() {
            Some(history) if self.answers_from_history(&metric) => {
                // Its store row may not be known yet (a query right after start).
                history.resolve(&self.store).await.map_err(storage_failed)?;
                (history.find(metric.family())).map(|found| (history, found))
            }
            _ => None,
        };
        if let Some((history, (id, own))) = history {
            let (bins, asked) = spec.asked(default)?;
            return self
                .query_history(&metric, history, (id, own), bins, asked, spec.labels)
                .await;
        }
        let (bins, aggregation) = spec.range(default)?;
        self.query_points(&metric, bins, aggregation, spec.labels)
            .await
    }

    /// The answer's frame: what was asked, no series yet.
    fn answer_frame(
        metric: &CustomMetric,
        bins: Bins,
        aggregation: Asked,
        labels: &BTreeMap<String, String>,
    ) -> QueryAnswer {
        QueryAnswer {
            metric: metric.spec.name.clone(),
            aggregation,
            resolution: None,
            start: time::format_instant(bins.start_ms),
            end: time::format_instant(bins.end_ms),
            step: time::format_step(bins.step_ms),
            labels: labels.clone(),
            series: Vec::new(),
        }
    }

    /// Answers from the points recorded through the API.
    async fn query_points(
        &self,
        metric: &CustomMetric,
        bins: Bins,
        aggregation: Aggregation,
        filter: BTreeMap<String, String>,
    ) -> Result<QueryAnswer, Problem> {
        let (start, end) = (bins.start_ms, bins.end_ms);
        let answer = Self::answer_frame(metric, bins, Asked::Plain(aggregation), &filter);
        if metric.read_only && metric.store_id < 0 {
            // A file definition nothing was recorded to through the API.
            return Ok(answer);
        }
        let id = metric.store_id;
        let tiers = self.rollup_tiers(bins);
        let resolution = tiers
            .last()
            .map(|tier| time::format_step(tier.resolution_ms));
        let series = self
            .store
            .read(move |reader| {
                let chosen = chosen_series(reader, id, &filter)?;
                let ids: Vec<i64> = chosen.iter().map(|(sid, _)| *sid).collect();
                let Some(&tier) = tiers.last() else {
                    let mut binner = Binner::new(bins);
                    reader.scan(id, start, end, Some(&ids), &mut |sid, ts, value| {
                        binner.add(sid, ts, value)
                    })?;
                    return Ok(series_answers(chosen, binner.finish(aggregation)));
                };
                // The tier's cells where they are exact, the points after: each series' values
                // still fold in time order.
                let until = reader.rolled_until(id, &tiers)?.clamp(start, end);
                let mut binner = CellBinner::new(bins);
                let mut add = |sid, ts, cell| binner.add(sid, ts, cell);
                reader.scan_tier(tier, id, start, until, Some(&ids), &mut add)?;
                reader.scan(id, until, end, Some(&ids), &mut |sid, ts, value| {
                    add(sid, ts, TierCell::scalar(value))
                })?;
                let asked = Asked::Plain(aggregation);
                Ok(series_answers(chosen, binner.finish(asked, &[])))
            })
            .await
            .map_err(storage_failed)?;
        Ok(QueryAnswer {
            series,
            resolution,
            ..answer
        })
    }

    /// The history tiers up to the coarsest whose intervals fall whole into the query's bins
    /// (its resolution divides the step and the start), which answers from the rollups of
    /// recorded points; none when no tier does, and the points answer.
    fn rollup_tiers(&self, bins: Bins) -> Vec<Tier> {
        let Some(history) = self.history.get() else {
            return Vec::new();
        };
        let tiers = history.tiers();
        let fits = |tier: &Tier| {
            bins.step_ms % tier.resolution_ms == 0 && bins.start_ms % tier.resolution_ms == 0
        };
        (tiers.iter().rposition(fits)).map_or_else(Vec::new, |coarsest| tiers[..=coarsest].to_vec())
    }

    /// Answers from the history tier that fits the step and still keeps the start.
    async fn query_history(
        &self,
        metric: &CustomMetric,
        history: &crate::history::History,
        (id, own): (i64, Option<i64>),
        bins: Bins,
        asked: Asked,
        filter: BTreeMap<String, String>,
    ) -> Result<QueryAnswer, Problem> {
        let kind = metric.spec.kind;
        let scalar = matches!(kind, MetricType::Counter | MetricType::Gauge);
        let fits = match asked {
            Asked::Quantile(_) => !scalar,
            Asked::Plain(a) => {
                scalar
                    || matches!(
                        a,
                        Aggregation::Average | Aggregation::Sum | Aggregation::Count
                    )
            }
        };
        if !fits {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_aggregation",
                format!(
                    "a {}'s history answers {}",
                    kind.kind().name(),
                    match scalar {
                        true => "average, sum, min, max, count and last",
                        false => "average, sum, count and quantile(q)",
                    }
                ),
            )
            .with_field("aggregation"));
        }
        let tier = history.tier_for(bins.start_ms, bins.step_ms, time::now_ms(), own);
        let family = metric.family();
        let bounds: Arc<[f64]> = (self.recorder.definitions().get(family))
            .and_then(|definition| definition.options.buckets.clone())
            .or_else(|| (history.rule_families().get(family)).and_then(|ruled| ruled.buckets))
            .unwrap_or_else(|| Arc::clone(&self.recorder.registry().settings().histogram_buckets));
        let answer = QueryAnswer {
            resolution: Some(time::format_step(tier.resolution_ms)),
            ..Self::answer_frame(metric, bins, asked, &filter)
        };
        let series = self
            .store
            .read(move |reader| {
                let chosen = chosen_series(reader, id, &filter)?;
                let ids: Vec<i64> = chosen.iter().map(|(sid, _)| *sid).collect();
                let cells = (ids.len() as i64)
                    .saturating_mul((bins.end_ms - bins.start_ms) / tier.resolution_ms);
                let parts = if cells >= query::PARALLEL_CELLS {
                    query::scan_threads()
                } else {
                    1
                };
                let scan_part = |part: Bins| {
                    let mut binner = CellBinner::new(part);
                    reader.scan_tier(
                        tier,
                        id,
                        part.start_ms,
                        part.end_ms,
                        Some(&ids),
                        &mut |sid, ts, cell| binner.add(sid, ts, cell),
                    )?;
                    Ok(binner.finish(asked, &bounds))
                };
                let points = match &bins.split(parts, |ts| tier.bucket_floor(ts))[..] {
                    [whole] => scan_part(*whole)?,
                    parts => query::scan_in_parallel(parts, scan_part)?,
                };
                Ok(series_answers(chosen, points))
            })
            .await
            .map_err(storage_failed)?;
        Ok(QueryAnswer { series, ..answer })
    }

    /// The tenant's definition of `name` to write points to: an API one, or a file one (whose
    /// store row is made on first use).
    async fn metric_for_writes(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Arc<CustomMetric>, Problem> {
        let metric = self.get_queryable(tenant, name)?;
        if metric.origin == Origin::Rule {
            return Err(rule_read_only(name));
        }
        if !metric.read_only || metric.store_id >= 0 {
            return Ok(metric);
        }
        let _change = self.changes.lock().await;
        let key = (tenant.to_owned(), name.to_owned());
        if let Some(known) = self.catalog.read().get(&key) {
            return Ok(CustomMetric {
                spec: metric.spec.clone(),
                ..(**known).clone()
            }
            .into());
        }
        let uid = format!("file:{tenant}:{name}");
        let store_id = self
            .put_definition(&uid, tenant, FILE_SCOPE, &metric.spec, time::now_ms())
            .await?;
        let stored = Arc::new(CustomMetric {
            store_id,
            ..(*metric).clone()
        });
        self.edit_catalog(|catalog| catalog.insert(key, Arc::clone(&stored)));
        Ok(stored)
    }

    /// Stores a definition (new, or replacing the one with `uid`) and answers its store id.
    async fn put_definition(
        &self,
        uid: &str,
        tenant: &str,
        scope: &str,
        spec: &MetricSpec,
        now: i64,
    ) -> Result<i64, Problem> {
        let written = self
            .store
            .write(Write::PutMetric(StoredMetric {
                id: 0,
                uid: uid.to_owned(),
                tenant: tenant.to_owned(),
                scope: scope.to_owned(),
                name: spec.name.clone(),
                document: serde_json::to_string(spec).expect("a spec serialises"),
                created_ms: now,
                updated_ms: now,
            }))
            .await
            .map_err(storage_failed)?;
        match written {
            Written::Metric(id) => Ok(id),
            _ => Err(storage_failed("the store did not answer an id")),
        }
    }

    /// The config file's definitions, as the tenant sees them.
    fn file_metrics(&self, tenant: &str) -> Vec<Arc<CustomMetric>> {
        self.recorder
            .definitions()
            .list()
            .into_iter()
            .filter(|(_, source, _)| *source == Source::File)
            .filter_map(|(name, _, definition)| self.file_view(tenant, &name, &definition))
            .collect()
    }

    fn file_metric(&self, tenant: &str, name: &str) -> Option<Arc<CustomMetric>> {
        let family = counter_family(name);
        [name, family].into_iter().find_map(|candidate| {
            let definitions = self.recorder.definitions();
            (definitions.source(candidate) == Some(Source::File))
                .then(|| definitions.get(candidate))
                .flatten()
                .and_then(|definition| self.file_view(tenant, candidate, &definition))
                .filter(|metric| metric.spec.name == name)
        })
    }

    /// A file definition as an API metric; its store row, when the tenant has one.
    fn file_view(
        &self,
        tenant: &str,
        family: &str,
        definition: &Definition,
    ) -> Option<Arc<CustomMetric>> {
        let kind = MetricType::of(definition.kind)?;
        let name = match kind {
            MetricType::Counter => format!("{family}_total"),
            _ => family.to_owned(),
        };
        let stored = self.catalog.read().get(&TenantName(tenant, &name)).cloned();
        let spec = MetricSpec {
            name: name.clone(),
            kind,
            description: definition.options.help.as_deref().map(str::to_owned),
            unit: definition.options.unit.as_deref().map(str::to_owned),
            labels: definition
                .labels
                .iter()
                .flat_map(|labels| labels.iter().map(|l| l.to_string()))
                .collect(),
            aggregation: definition.aggregation,
            retention_days: None,
        };
        Some(Arc::new(match stored {
            Some(row) => CustomMetric {
                spec,
                ..(*row).clone()
            },
            None => CustomMetric {
                store_id: -1,
                uid: format!("file:{name}"),
                tenant: tenant.to_owned(),
                spec,
                created_ms: 0,
                updated_ms: 0,
                read_only: true,
                origin: Origin::Config,
            },
        }))
    }

    /// The label names the tenant's definition of family `family` (of `kind`) declares, if it
    /// has one with a schema: what API inputs that carry free-form tags fold theirs into.
    pub fn declared_labels(&self, tenant: &str, family: &str, kind: Kind) -> Option<Vec<String>> {
        let metric = match self.find(tenant, family) {
            Some(metric) => metric,
            None if kind == Kind::Counter => self.find(tenant, &format!("{family}_total"))?,
            None => return None,
        };
        if metric.read_only {
            let definition = self.recorder.definitions().get(metric.family())?;
            return definition
                .labels
                .as_ref()
                .map(|labels| labels.iter().map(|l| l.to_string()).collect());
        }
        Some(metric.spec.labels.clone())
    }

    /// Removes points past each metric's retention. Run now and then, beside everything else:
    /// each metric is one short write.
    pub async fn expire(&self) -> Result<u64, String> {
        let options = self.options();
        let now = time::now_ms();
        let metrics: Vec<Arc<CustomMetric>> = self.catalog.read().values().cloned().collect();
        let mut removed = 0;
        for metric in metrics {
            let before_ms = now - metric.retention_ms(&options);
            if let Ok(Written::Removed(n)) = self
                .store
                .write(Write::Expire {
                    metric: metric.store_id,
                    before_ms,
                })
                .await
                .map_err(|e| e.to_string())
            {
                removed += n;
            }
        }
        Ok(removed)
    }
}

/// A store series: its id and labels.
type Chosen = (i64, BTreeMap<String, String>);

/// The series of store metric `id` whose labels match every one of `filter`.
fn chosen_series(
    reader: &dyn store::Reader,
    id: i64,
    filter: &BTreeMap<String, String>,
) -> Result<Vec<Chosen>, store::StoreError> {
    Ok(reader
        .series(id)?
        .into_iter()
        .map(|(sid, text)| (sid, store::labels_of(&text).into_iter().collect()))
        .filter(|(_, labels): &Chosen| filter.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .collect())
}

/// The answer's series: those of `chosen` with bins, in `chosen`'s order.
fn series_answers(
    chosen: Vec<Chosen>,
    mut points: HashMap<i64, Vec<(i64, f64)>, ahash::RandomState>,
) -> Vec<SeriesAnswer> {
    let mut stamps = Stamps::default();
    chosen
        .into_iter()
        .filter_map(|(sid, labels)| {
            let points = points.remove(&sid)?;
            Some(SeriesAnswer::stamped(labels, points, &mut stamps))
        })
        .collect()
}

/// The store scope of a file definition's rows.
const FILE_SCOPE: &str = "file";

fn check_spec(spec: &MetricSpec) -> Result<(), Problem> {
    if let Some(reason) = names::unusable(&spec.name) {
        return Err(unprocessable("invalid_name", reason, "name".into()));
    }
    for (i, label) in spec.labels.iter().enumerate() {
        let field = format!("labels[{i}]");
        if !crate::naming::is_clean_name(label) || label.starts_with("__") {
            return Err(unprocessable(
                "invalid_label",
                format!("{label:?} is not a Prometheus label name"),
                field,
            ));
        }
        if label == TENANT_LABEL {
            return Err(unprocessable(
                "invalid_label",
                "\"tenant\" is set by tallyd on every API series".to_string(),
                field,
            ));
        }
        if spec.labels[..i].contains(label) {
            return Err(unprocessable(
                "invalid_label",
                format!("{label:?} is listed twice"),
                field,
            ));
        }
    }
    if spec.retention_days == Some(0) {
        return Err(unprocessable(
            "invalid_retention",
            "retentionDays must be at least 1".to_string(),
            "retentionDays".into(),
        ));
    }
    Ok(())
}

fn unprocessable(code: &'static str, detail: impl Into<String>, field: String) -> Problem {
    Problem::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).with_field(field)
}

fn not_found(name: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "metric_not_found",
        format!("there is no custom metric {name:?}"),
    )
}

fn read_only(name: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "read_only",
        format!("{name:?} is defined in the config file and cannot be changed through the API"),
    )
}

/// A family a mapping rule keeps history for: its values come from the StatsD lines the rule
/// maps, not from the API.
fn rule_read_only(name: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "read_only",
        format!(
            "{name:?} is kept by a mapping rule in the config file, from the StatsD lines it \
             maps; it cannot be recorded to, changed or deleted through the API"
        ),
    )
}

fn refused(name: &str, refusal: Refusal) -> Problem {
    let status = match refusal {
        Refusal::TypeConflict => StatusCode::CONFLICT,
        Refusal::SetFull | Refusal::SeriesLimit => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    Problem::new(
        status,
        refusal.label(),
        format!(
            "/metrics cannot take the points of {name:?}: {}",
            refusal.label().replace('_', " ")
        ),
    )
}

fn storage_failed(error: impl std::fmt::Display) -> Problem {
    tracing::error!("{error}");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        format!("the write was not stored: {error}"),
    )
}
