//! Pushes from batch jobs, as Pushgateway takes them: a job that ends before any scrape sends
//! its metrics (`PUT`/`POST`/`DELETE /metrics/job/<job>{/<label>/<value>}`), and they stay in
//! `/metrics` until replaced, deleted or expired. The HTTP routes
//! (`crate::http::api::pushgateway`) are thin shells over [`Pushes`]; the rules live here.
//!
//! - [`path`] reads the grouping key from the URL, [`text`] and [`proto`] read the body into
//!   [`model`]'s families (values the client already aggregated, checked).
//! - **Groups.** A group is the tenant and the grouping key's labels (those with a value). It
//!   is the unit a push changes: `PUT` replaces all its series, `POST` only those of the metric
//!   names it pushes, `DELETE` removes the group. The grouping key's labels are set on every
//!   series pushed (over the pushed labels of the same names; an empty value removes the
//!   label), and `tenant` on top, as on every API input. A series belongs to one group: a push
//!   that would write another group's series is refused, as Pushgateway refuses an inconsistent
//!   push. Each group also gets `push_time_seconds` and `push_failure_time_seconds`, the gauges
//!   Pushgateway keeps (the last successful and the last refused push, Unix seconds, 0 never);
//!   a group exists only with them, so the series caps bound the number of groups too.
//! - **Values.** A pushed counter or gauge sets the series; a histogram replaces its buckets and
//!   a summary its quantiles (series made for pushes keep the client's bucket bounds and
//!   quantiles: registry cells of their own shape, [`Preaggregated`]). With counter adding on
//!   (`[push] add_counters`, or `?counters=add` on one push), a pushed counter is added to the
//!   series instead, and a histogram's buckets, sum and count too when its bounds are the same,
//!   so many short jobs can count into one series.
//! - **Expiry.** A group pushed with a TTL (`[push] default_ttl_seconds`, or `?ttl=` on one
//!   push) is removed that long after its last successful push; 0 keeps it until deleted.
//!   Pushgateway keeps every group forever.
//! - **All or nothing.** Every series of a push is resolved and checked before any value is
//!   written; a refused push changes no value (series it had to create are removed again), and
//!   only stamps `push_failure_time_seconds`.
//!
//! One mutex orders the pushes; a push holds it while it writes the registry, never while it
//! reads or parses its body. Scrapes read the registry as ever and never wait for it.

pub mod model;
pub mod path;
pub mod proto;
pub mod text;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::naming::counter_family;
use crate::record::{Recorder, Refusal, SeriesHandle, TENANT_LABEL};
use crate::registry::{Cell, Kind, Preaggregated, Series, SeriesKeyBuf, SeriesOptions};
use model::{BodyError, Place, PushedFamily, PushedKind, PushedValue};

/// The gauge of a group's last successful push.
pub const PUSH_TIME: &str = "push_time_seconds";
/// The gauge of a group's last refused push.
pub const PUSH_FAILURE_TIME: &str = "push_failure_time_seconds";

const PUSH_TIME_HELP: &str = "Last Unix time when changing this group succeeded.";
const PUSH_FAILURE_TIME_HELP: &str = "Last Unix time when changing this group failed.";

/// What an operator sets (`[push]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushOptions {
    /// Seconds a group lives after its last push; 0 = until deleted.
    pub default_ttl_secs: u32,
    /// Add pushed counters (and same-bounds histograms) to the series instead of setting them.
    pub add_counters: bool,
}

/// What a push does to its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `PUT`: the push is the whole group.
    Replace,
    /// `POST`: the push replaces the metric names it holds; the group's others stay.
    Merge,
}

/// How a pushed counter meets the series it lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Counters {
    /// The pushed total is the series' value (Pushgateway).
    Set,
    /// The pushed value is added to the series.
    Add,
}

/// One push, read and ready to apply.
#[derive(Debug)]
pub struct Push {
    pub tenant: String,
    /// The grouping key, sorted by name (`job` included; empty values too).
    pub grouping: Vec<(String, String)>,
    pub method: Method,
    pub families: Vec<PushedFamily>,
    /// This push's TTL instead of the default.
    pub ttl_secs: Option<u32>,
    /// This push's counter mode instead of the default.
    pub counters: Option<Counters>,
}

/// What a successful push did.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    /// Series the push wrote.
    pub series: usize,
    /// Series of the group the push removed (not pushed again).
    pub removed: usize,
    /// Seconds the group lives from now without another push; 0 = until deleted.
    pub ttl_seconds: u32,
    pub counters: Counters,
    /// Families left out, with the reason (`_created` gauges, Pushgateway's own names).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

crate::closed_set! {
    /// Why a push was refused: `tallyd_push_refused_total{reason}`.
    PushRefusal;
    /// The URL's grouping key is malformed.
    InvalidGroupingKey => "invalid_grouping_key",
    /// The body is not a valid push (syntax, a timestamp, a value a series cannot take).
    InvalidBody => "invalid_body",
    /// A `Content-Encoding` or body format tallyd does not read.
    UnsupportedEncoding => "unsupported_encoding",
    /// Larger than `[api] max_body_bytes` (after decompression, too).
    BodyTooLarge => "body_too_large",
    /// A metric name `/metrics` already serves with another type.
    TypeConflict => "type_conflict",
    /// A name tallyd cannot serve (its own `tallyd_*`, or invalid).
    InvalidName => "invalid_name",
    /// A series another group owns.
    GroupConflict => "group_conflict",
    /// A `[limits]` series cap.
    SeriesLimit => "series_limit",
}

/// Why a push was refused.
#[derive(Debug)]
pub enum PushError {
    Body(BodyError),
    /// The registry refused a series of family `family`.
    Refused {
        at: Place,
        family: String,
        refusal: Refusal,
    },
    /// The series at `at` belongs to another group.
    Conflict {
        at: Place,
        family: String,
        owner: String,
    },
    /// The group's `push_time_seconds` or `push_failure_time_seconds` cannot be kept.
    Bookkeeping(Refusal),
}

impl PushError {
    pub fn reason(&self) -> PushRefusal {
        match self {
            PushError::Body(_) => PushRefusal::InvalidBody,
            PushError::Conflict { .. } => PushRefusal::GroupConflict,
            PushError::Refused { refusal, .. } | PushError::Bookkeeping(refusal) => match refusal {
                Refusal::TypeConflict => PushRefusal::TypeConflict,
                Refusal::SeriesLimit => PushRefusal::SeriesLimit,
                _ => PushRefusal::InvalidName,
            },
        }
    }
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Body(error) => error.fmt(f),
            PushError::Refused {
                at,
                family,
                refusal: Refusal::TypeConflict,
            } => write!(
                f,
                "{at}: /metrics already serves {family:?} (or a name its samples take) with \
                 another type"
            ),
            PushError::Refused {
                at,
                family,
                refusal: Refusal::SeriesLimit,
            } => write!(
                f,
                "{at}: a new series of {family:?} would pass a series cap ([limits])"
            ),
            PushError::Refused {
                at,
                family,
                refusal,
            } => write!(
                f,
                "{at}: {family:?} cannot be served: {}",
                refusal.label().replace('_', " ")
            ),
            PushError::Conflict { at, family, owner } => write!(
                f,
                "{at}: this series of {family:?} belongs to the group {owner}; a series has one \
                 group"
            ),
            PushError::Bookkeeping(refusal) => write!(
                f,
                "the group's {PUSH_TIME} and {PUSH_FAILURE_TIME} cannot be kept: {}",
                refusal.label().replace('_', " ")
            ),
        }
    }
}

/// Counters for `tallyd_push_*`.
#[derive(Debug, Default)]
pub struct PushStats {
    groups: AtomicUsize,
    expired: AtomicU64,
    /// Successful pushes: PUT, POST, DELETE.
    done: [AtomicU64; 3],
    refused: [AtomicU64; PushRefusal::ALL.len()],
}

impl PushStats {
    pub fn refused(&self, reason: PushRefusal) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused_count(&self, reason: PushRefusal) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    /// Live groups.
    pub fn groups(&self) -> usize {
        self.groups.load(Ordering::Relaxed)
    }

    /// Groups removed by their TTL so far.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// `tallyd_push*` for the self-metrics.
    pub fn self_metrics(&self) -> Vec<crate::telemetry::SelfMetric> {
        use crate::telemetry::SelfMetric;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let metric = |name, kind, help, label, samples| SelfMetric {
            name,
            help,
            kind,
            label,
            samples,
        };
        vec![
            metric(
                "tallyd_pushes",
                Kind::Counter,
                "Pushes (Pushgateway's /metrics/job/...) applied, by method.",
                Some("method"),
                ["put", "post", "delete"]
                    .iter()
                    .zip(&self.done)
                    .map(|(method, count)| (method.to_string(), load(count)))
                    .collect(),
            ),
            metric(
                "tallyd_push_refused",
                Kind::Counter,
                "Pushes refused, by reason.",
                Some("reason"),
                PushRefusal::ALL
                    .iter()
                    .map(|r| (r.label().to_owned(), load(&self.refused[*r as usize])))
                    .collect(),
            ),
            metric(
                "tallyd_push_groups",
                Kind::Gauge,
                "Push groups (tenant and grouping key) in /metrics.",
                None,
                vec![(String::new(), self.groups() as f64)],
            ),
            metric(
                "tallyd_push_groups_expired",
                Kind::Counter,
                "Push groups removed after their TTL without a push.",
                None,
                vec![(String::new(), self.expired() as f64)],
            ),
        ]
    }
}

/// A group's identity: the tenant and the grouping key's labels that have a value, sorted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct GroupKey {
    tenant: String,
    labels: Vec<(String, String)>,
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{")?;
        for (i, (name, value)) in self.labels.iter().enumerate() {
            let comma = if i > 0 { "," } else { "" };
            write!(f, "{comma}{name}={value:?}")?;
        }
        write!(f, "}} of tenant {:?}", self.tenant)
    }
}

#[derive(Default)]
struct Group {
    /// Registry family name → the group's series of it.
    families: HashMap<Box<str>, Vec<Arc<Series>>>,
    push_time: Option<SeriesHandle>,
    failure_time: Option<SeriesHandle>,
    /// When the group expires without another push.
    deadline: Option<Instant>,
}

impl Group {
    fn all_series(&self) -> impl Iterator<Item = &Arc<Series>> {
        self.families.values().flatten().chain(
            [&self.push_time, &self.failure_time]
                .into_iter()
                .flatten()
                .map(SeriesHandle::series),
        )
    }
}

#[derive(Default)]
struct Groups {
    by_key: HashMap<GroupKey, Group>,
    /// Series key → the group that owns the series.
    owners: HashMap<Box<str>, GroupKey>,
}

/// The push groups over one recorder.
pub struct Pushes {
    recorder: Arc<Recorder>,
    options: RwLock<PushOptions>,
    groups: Mutex<Groups>,
    stats: Arc<PushStats>,
}

/// A series resolved for a push, and what to write to it.
struct Resolved<'a> {
    handle: SeriesHandle,
    value: &'a PushedValue,
    at: Place,
    /// A histogram whose bounds differ from its series': the series is made again.
    remake: Option<Remake<'a>>,
}

/// What it takes to make a series again.
struct Remake<'a> {
    family: &'a str,
    kind: Kind,
    labels: Vec<(String, String)>,
    options: SeriesOptions,
}

impl Pushes {
    pub fn new(recorder: Arc<Recorder>, options: PushOptions) -> Pushes {
        Pushes {
            recorder,
            options: RwLock::new(options),
            groups: Mutex::default(),
            stats: Arc::default(),
        }
    }

    pub fn set_options(&self, options: PushOptions) {
        *self.options.write() = options;
    }

    pub fn options(&self) -> PushOptions {
        self.options.read().clone()
    }

    pub fn stats(&self) -> &Arc<PushStats> {
        &self.stats
    }

    /// Applies a push: all of it, or (with the reason) none of it.
    pub fn push(&self, push: Push) -> Result<Pushed, PushError> {
        let options = self.options();
        let ttl_secs = push.ttl_secs.unwrap_or(options.default_ttl_secs);
        let counters = push.counters.unwrap_or(if options.add_counters {
            Counters::Add
        } else {
            Counters::Set
        });
        let key = group_key(&push.tenant, &push.grouping);
        let (families, skipped) = chosen_families(&push.families);
        let mut groups = self.groups.lock();
        // A group exists only with its push-time gauges: they bound the number of groups by
        // the series caps, and a name taken by another type refuses the push here.
        if let Err(refusal) = self.open_group(&mut groups, &key, &push.grouping, ttl_secs) {
            let error = PushError::Bookkeeping(refusal);
            self.stats.refused(error.reason());
            return Err(error);
        }
        let result = self.apply(&mut groups, &key, &push, &families, counters);
        match result {
            Ok((series, removed)) => {
                let group = groups.by_key.entry(key.clone()).or_default();
                group.deadline = deadline(ttl_secs);
                set_stamp(group, Stamp::Success);
                let slot = match push.method {
                    Method::Replace => 0,
                    Method::Merge => 1,
                };
                self.stats.done[slot].fetch_add(1, Ordering::Relaxed);
                Ok(Pushed {
                    series,
                    removed,
                    ttl_seconds: ttl_secs,
                    counters,
                    skipped,
                })
            }
            Err(error) => {
                self.stats.refused(error.reason());
                self.failed(&mut groups, &key, &push.grouping, ttl_secs);
                Err(error)
            }
        }
    }

    /// Stamps `push_failure_time_seconds` of the group `grouping` names (making the group if
    /// it is new, as Pushgateway does): a push to it was refused for `reason`.
    pub fn refused(&self, tenant: &str, grouping: &[(String, String)], reason: PushRefusal) {
        self.stats.refused(reason);
        let ttl_secs = self.options().default_ttl_secs;
        let key = group_key(tenant, grouping);
        let mut groups = self.groups.lock();
        self.failed(&mut groups, &key, grouping, ttl_secs);
    }

    fn failed(
        &self,
        groups: &mut Groups,
        key: &GroupKey,
        grouping: &[(String, String)],
        ttl_secs: u32,
    ) {
        match self.open_group(groups, key, grouping, ttl_secs) {
            Ok(group) => set_stamp(group, Stamp::Failure),
            Err(refusal) => tracing::debug!(
                "push_failure_time_seconds of {key} not written: {}",
                refusal.label()
            ),
        }
    }

    /// The group `key`, made (with `ttl_secs` from now) if new, with its `push_time_seconds`
    /// and `push_failure_time_seconds` (0 when made, as Pushgateway starts them). A new group
    /// whose gauges cannot be made is not kept.
    fn open_group<'g>(
        &self,
        groups: &'g mut Groups,
        key: &GroupKey,
        grouping: &[(String, String)],
        ttl_secs: u32,
    ) -> Result<&'g mut Group, Refusal> {
        let new = !groups.by_key.contains_key(key);
        let made = {
            let group = groups.by_key.entry(key.clone()).or_default();
            if new {
                group.deadline = deadline(ttl_secs);
            }
            self.make_stamps(group, key, grouping)
        };
        if made.is_err() && new {
            groups.by_key.remove(key);
        }
        self.stats
            .groups
            .store(groups.by_key.len(), Ordering::Relaxed);
        made?;
        Ok(groups.by_key.get_mut(key).expect("kept above"))
    }

    /// Removes the group `grouping` names and its series; false if there was none.
    pub fn delete(&self, tenant: &str, grouping: &[(String, String)]) -> bool {
        let key = group_key(tenant, grouping);
        let mut groups = self.groups.lock();
        let existed = self.remove_group(&mut groups, &key);
        self.stats.done[2].fetch_add(1, Ordering::Relaxed);
        existed
    }

    /// Removes the groups whose TTL has run out by `now`; returns how many went.
    pub fn expire(&self, now: Instant) -> usize {
        let mut groups = self.groups.lock();
        let due: Vec<GroupKey> = groups
            .by_key
            .iter()
            .filter(|(_, group)| group.deadline.is_some_and(|d| d <= now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &due {
            self.remove_group(&mut groups, key);
        }
        self.stats
            .expired
            .fetch_add(due.len() as u64, Ordering::Relaxed);
        due.len()
    }

    fn remove_group(&self, groups: &mut Groups, key: &GroupKey) -> bool {
        let Some(group) = groups.by_key.remove(key) else {
            return false;
        };
        for series in group.families.values().flatten() {
            groups.owners.remove(series.key());
        }
        let doomed: Vec<Arc<Series>> = group.all_series().cloned().collect();
        self.recorder.registry().remove_exact(&doomed);
        self.stats
            .groups
            .store(groups.by_key.len(), Ordering::Relaxed);
        true
    }

    /// Resolves, checks and writes the push's series, then removes the group's series the push
    /// replaces. Returns (series written, series removed).
    fn apply(
        &self,
        groups: &mut Groups,
        key: &GroupKey,
        push: &Push,
        families: &[&PushedFamily],
        counters: Counters,
    ) -> Result<(usize, usize), PushError> {
        let mut created: Vec<Arc<Series>> = Vec::new();
        let resolved = self.resolve(groups, key, push, families, &mut created);
        let mut resolved = match resolved {
            Ok(resolved) => resolved,
            Err(error) => {
                // Nothing of a refused push stays: the series it made go again.
                self.recorder.registry().remove_exact(&created);
                return Err(error);
            }
        };
        let registry = self.recorder.registry();
        // Histograms whose bounds changed: their series are made again with the new bounds.
        // Everything is checked by now, so this is the first change a push makes.
        for item in resolved.iter_mut() {
            let Some(Remake {
                family,
                kind,
                labels,
                options,
            }) = item.remake.take()
            else {
                continue;
            };
            registry.remove_exact(std::slice::from_ref(item.handle.series()));
            let pairs = labels.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            let mut buf = SeriesKeyBuf::default();
            match self
                .recorder
                .series(family, kind, pairs, &options, &mut buf)
            {
                Ok(handle) => {
                    handle.touch(registry.now_secs());
                    item.handle = handle;
                }
                Err(refusal) => {
                    // Only a race with another input can get here; that histogram is left out
                    // (its removed series fails the touch below).
                    tracing::warn!(
                        "{}: re-making histogram {family:?} with new bounds failed: {}",
                        item.at,
                        refusal.label()
                    );
                }
            }
        }
        let now = registry.now_secs();
        resolved.retain(|item| item.handle.touch(now));
        for item in &resolved {
            write(item.handle.series(), item.value, counters);
        }
        // The group's series that this push replaces and did not push again.
        let group = groups.by_key.entry(key.clone()).or_default();
        let kept: HashSet<*const Series> = resolved
            .iter()
            .map(|item| Arc::as_ptr(item.handle.series()))
            .collect();
        let replaced: HashSet<Box<str>> = match push.method {
            Method::Replace => group.families.keys().cloned().collect(),
            // The registry's names: `x_total` and `x` are one counter family.
            Method::Merge => families
                .iter()
                .map(|f| Box::from(registry_family(f)))
                .collect(),
        };
        let mut doomed: Vec<Arc<Series>> = Vec::new();
        for name in &replaced {
            if let Some(list) = group.families.remove(name) {
                doomed.extend(
                    list.into_iter()
                        .filter(|series| !kept.contains(&Arc::as_ptr(series))),
                );
            }
        }
        for item in &resolved {
            let series = item.handle.series();
            group
                .families
                .entry(Box::from(series.family_name()))
                .or_default()
                .push(Arc::clone(series));
        }
        for series in &doomed {
            groups.owners.remove(series.key());
        }
        for item in &resolved {
            groups
                .owners
                .insert(Box::from(item.handle.series().key()), key.clone());
        }
        let removed = registry.remove_exact(&doomed);
        Ok((resolved.len(), removed))
    }

    /// Every series of the push, resolved (made if new; those made are added to `created`) and
    /// checked: kind, owner, no series twice.
    fn resolve<'p>(
        &self,
        groups: &Groups,
        key: &GroupKey,
        push: &Push,
        families: &[&'p PushedFamily],
        created: &mut Vec<Arc<Series>>,
    ) -> Result<Vec<Resolved<'p>>, PushError> {
        let registry = self.recorder.registry();
        let now = registry.now_secs();
        let mut buf = SeriesKeyBuf::default();
        let mut resolved = Vec::new();
        let mut seen: HashMap<*const Series, Place> = HashMap::new();
        for family in families {
            let kind = match family.kind {
                PushedKind::Counter => Kind::Counter,
                PushedKind::Gauge | PushedKind::Untyped => Kind::Gauge,
                PushedKind::Histogram => Kind::Histogram,
                PushedKind::Summary => Kind::Summary,
            };
            let help: Option<Arc<str>> = family.help.as_deref().map(Arc::from);
            let mut last_bounds: Option<Arc<[f64]>> = None;
            for series in &family.series {
                let preaggregated = match &series.value {
                    PushedValue::Histogram(h) => {
                        // Series of one family mostly share their bounds: share the allocation.
                        let bounds = match &last_bounds {
                            Some(b) if **b == *h.bounds => Arc::clone(b),
                            _ => Arc::from(h.bounds.as_slice()),
                        };
                        last_bounds = Some(Arc::clone(&bounds));
                        Some(Preaggregated::Histogram(bounds))
                    }
                    PushedValue::Summary(_) => Some(Preaggregated::Summary),
                    _ => None,
                };
                let options = SeriesOptions {
                    help: help.clone(),
                    buckets: match &preaggregated {
                        Some(Preaggregated::Histogram(bounds)) => Some(Arc::clone(bounds)),
                        _ => None,
                    },
                    // The group decides when its series go, not idle expiry.
                    ttl_secs: Some(0),
                    preaggregated,
                    ..SeriesOptions::default()
                };
                let labels = series_labels(&series.labels, &push.grouping, &push.tenant);
                let refused = |refusal| PushError::Refused {
                    at: series.at,
                    family: family.name.clone(),
                    refusal,
                };
                let mut handle = None;
                // A series expired between lookup and touch is looked up again, once.
                for _ in 0..2 {
                    let pairs = labels.iter().map(|(n, v)| (n.as_str(), v.as_str()));
                    let found = self
                        .recorder
                        .series(&family.name, kind, pairs, &options, &mut buf)
                        .map_err(refused)?;
                    if found.created() {
                        created.push(Arc::clone(found.series()));
                    }
                    if found.touch(now) {
                        handle = Some(found);
                        break;
                    }
                }
                let handle = handle.ok_or_else(|| refused(Refusal::TypeConflict))?;
                let series_ref = handle.series();
                if let Some(owner) = groups.owners.get(series_ref.key())
                    && owner != key
                {
                    return Err(PushError::Conflict {
                        at: series.at,
                        family: family.name.clone(),
                        owner: owner.to_string(),
                    });
                }
                if let Some(first) = seen.insert(Arc::as_ptr(series_ref), series.at) {
                    return Err(PushError::Body(BodyError::at(
                        series.at,
                        format!(
                            "{} is the same series as at {first} once the grouping key's labels \
                             are set",
                            family.name
                        ),
                    )));
                }
                let remake = match (series_ref.cell(), &series.value) {
                    (Cell::Counter(_), PushedValue::Counter(_))
                    | (Cell::Gauge(_), PushedValue::Gauge(_)) => None,
                    (Cell::Summary(cell), PushedValue::Summary(_)) if cell.is_pushed() => None,
                    (Cell::Histogram(cell), PushedValue::Histogram(h)) => {
                        (cell.bounds() != h.bounds.as_slice()).then(|| Remake {
                            family: &family.name,
                            kind,
                            labels: labels.clone(),
                            options: options.clone(),
                        })
                    }
                    // A windowed summary (made by StatsD) or a definition's other kind.
                    _ => return Err(refused(Refusal::TypeConflict)),
                };
                resolved.push(Resolved {
                    handle,
                    value: &series.value,
                    at: series.at,
                    remake,
                });
            }
        }
        Ok(resolved)
    }

    /// Makes the group's push-time gauges that it lacks (or that a reset of their family
    /// removed), at 0.
    fn make_stamps(
        &self,
        group: &mut Group,
        key: &GroupKey,
        grouping: &[(String, String)],
    ) -> Result<(), Refusal> {
        let labels = series_labels(&[], grouping, &key.tenant);
        let now = self.recorder.registry().now_secs();
        for (name, help, slot) in [
            (PUSH_TIME, PUSH_TIME_HELP, &mut group.push_time),
            (
                PUSH_FAILURE_TIME,
                PUSH_FAILURE_TIME_HELP,
                &mut group.failure_time,
            ),
        ] {
            if slot.as_ref().is_some_and(|h| h.touch(now)) {
                continue;
            }
            let options = SeriesOptions {
                help: Some(help.into()),
                ttl_secs: Some(0),
                ..SeriesOptions::default()
            };
            let pairs = labels.iter().map(|(n, v)| (n.as_str(), v.as_str()));
            let handle = self.recorder.series(
                name,
                Kind::Gauge,
                pairs,
                &options,
                &mut SeriesKeyBuf::default(),
            )?;
            handle.touch(now);
            if let Cell::Gauge(value) = handle.series().cell() {
                value.set(0.0);
            }
            *slot = Some(handle);
        }
        Ok(())
    }

    /// The number of groups and of series they hold.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let groups = self.groups.lock();
        let series = groups.by_key.values().map(|g| g.all_series().count()).sum();
        (groups.by_key.len(), series)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stamp {
    Success,
    Failure,
}

/// Sets the group's `push_time_seconds` (or `push_failure_time_seconds`) to now.
fn set_stamp(group: &Group, stamp: Stamp) {
    let slot = match stamp {
        Stamp::Success => &group.push_time,
        Stamp::Failure => &group.failure_time,
    };
    if let Some(Cell::Gauge(value)) = slot.as_ref().map(|h| h.series().cell()) {
        value.set(unix_now());
    }
}

/// Runs group expiry every second until `stop` is cancelled.
pub async fn expire_groups(pushes: Arc<Pushes>, stop: tokio_util::sync::CancellationToken) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let removed = pushes.expire(Instant::now());
        if removed > 0 {
            tracing::debug!(removed, "push groups expired");
        }
    }
}

fn group_key(tenant: &str, grouping: &[(String, String)]) -> GroupKey {
    GroupKey {
        tenant: tenant.to_owned(),
        labels: grouping
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .cloned()
            .collect(),
    }
}

fn deadline(ttl_secs: u32) -> Option<Instant> {
    (ttl_secs > 0).then(|| Instant::now() + Duration::from_secs(u64::from(ttl_secs)))
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A series' labels in the order the write seam takes them (the later of two names wins):
/// the pushed ones but those the grouping key names, then the key's (an empty value removes
/// the label), then the tenant.
fn series_labels(
    pushed: &[(String, String)],
    grouping: &[(String, String)],
    tenant: &str,
) -> Vec<(String, String)> {
    let named = |name: &str| name == TENANT_LABEL || grouping.iter().any(|(n, _)| n == name);
    pushed
        .iter()
        .filter(|(name, value)| !value.is_empty() && !named(name))
        .chain(grouping.iter().filter(|(_, value)| !value.is_empty()))
        .cloned()
        .chain([(TENANT_LABEL.to_owned(), tenant.to_owned())])
        .collect()
}

/// The registry's name for a pushed family (a counter's without `_total`).
fn registry_family(family: &PushedFamily) -> &str {
    match family.kind {
        PushedKind::Counter => counter_family(&family.name),
        _ => &family.name,
    }
}

/// The families a push records, and those it leaves out with the reason: Pushgateway's own
/// `push_time_seconds` and `push_failure_time_seconds` (tallyd sets them, as Pushgateway
/// does), and the `<name>_created` gauges `prometheus_client` writes beside each counter,
/// histogram and summary in the text format (tallyd serves `_created` itself in OpenMetrics,
/// and a gauge of that name would clash with the metric's own samples).
fn chosen_families(families: &[PushedFamily]) -> (Vec<&PushedFamily>, Vec<String>) {
    let bases: HashSet<&str> = families
        .iter()
        .filter(|f| {
            matches!(
                f.kind,
                PushedKind::Counter | PushedKind::Histogram | PushedKind::Summary
            )
        })
        .map(registry_family)
        .collect();
    let mut chosen = Vec::with_capacity(families.len());
    let mut skipped = Vec::new();
    for family in families {
        let created_of = family
            .name
            .strip_suffix("_created")
            .filter(|base| matches!(family.kind, PushedKind::Gauge) && bases.contains(base));
        if family.name == PUSH_TIME || family.name == PUSH_FAILURE_TIME {
            skipped.push(format!("{}: set by tallyd", family.name));
        } else if let Some(base) = created_of {
            skipped.push(format!(
                "{}: the creation time of {base}, which OpenMetrics scrapes get as {base}_created",
                family.name
            ));
        } else {
            chosen.push(family);
        }
    }
    (chosen, skipped)
}

/// Writes a checked value to a series whose cell fits it (see `Pushes::resolve`).
fn write(series: &Series, value: &PushedValue, counters: Counters) {
    let add = counters == Counters::Add;
    match (series.cell(), value) {
        (Cell::Counter(cell), PushedValue::Counter(v)) if add => cell.add(*v),
        (Cell::Counter(cell), PushedValue::Counter(v))
        | (Cell::Gauge(cell), PushedValue::Gauge(v)) => cell.set(*v),
        (Cell::Histogram(cell), PushedValue::Histogram(h)) => {
            if add && cell.bounds() == h.bounds.as_slice() {
                cell.accumulate(&h.counts, h.sum);
            } else {
                cell.assign(&h.counts, h.sum);
            }
        }
        (Cell::Summary(cell), PushedValue::Summary(s)) => {
            cell.assign(&s.quantiles, s.sum, s.count);
        }
        _ => debug_assert!(false, "resolve checked every cell"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::read::{self, Value};
    use crate::registry::{Registry, RegistrySettings, Update};

    fn pushes() -> Pushes {
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        Pushes::new(Recorder::for_registry(&registry), PushOptions::default())
    }

    /// A grouping key as the path reader gives it: sorted.
    fn key(labels: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut out = crate::record::tests::pairs(labels);
        out.sort();
        out
    }

    fn push(pushes: &Pushes, grouping: &[(&str, &str)], method: Method, body: &str) -> Pushed {
        try_push(pushes, grouping, method, body, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_push(
        pushes: &Pushes,
        grouping: &[(&str, &str)],
        method: Method,
        body: &str,
        counters: Option<Counters>,
    ) -> Result<Pushed, PushError> {
        pushes.push(Push {
            tenant: "t".into(),
            grouping: key(grouping),
            method,
            families: text::parse(body.as_bytes()).unwrap(),
            ttl_secs: None,
            counters,
        })
    }

    /// `family{labels}` → value, for every series of the registry but the push-time gauges.
    fn values(pushes: &Pushes) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for family in read::snapshot(pushes.recorder.registry()) {
            if family.name.starts_with("push_") {
                continue;
            }
            for series in family.series {
                let labels: Vec<String> = series
                    .labels
                    .iter()
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                out.push((
                    format!("{}{{{}}}", family.name, labels.join(",")),
                    series.value,
                ));
            }
        }
        out
    }

    fn value_of(pushes: &Pushes, series: &str) -> Option<Value> {
        values(pushes)
            .into_iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| v)
    }

    #[test]
    fn grouping_labels_override_pushed_ones_and_tenant_overrides_all() {
        let pushes = pushes();
        push(
            &pushes,
            &[("job", "j"), ("instance", "i"), ("gone", "")],
            Method::Replace,
            "x{job=\"other\",gone=\"1\",tenant=\"evil\",k=\"v\"} 3\n",
        );
        assert_eq!(
            values(&pushes),
            [("x{instance=i,job=j,k=v,tenant=t}".into(), Value::Gauge(3.0))]
        );
    }

    #[test]
    fn put_replaces_the_group_and_post_only_the_names_it_pushes() {
        let pushes = pushes();
        let group = [("job", "j")];
        push(&pushes, &group, Method::Replace, "a 1\nb 2\n");
        push(&pushes, &[("job", "other")], Method::Replace, "a 9\n");
        push(&pushes, &group, Method::Merge, "b 3\nc 4\n");
        assert_eq!(
            value_of(&pushes, "a{job=j,tenant=t}"),
            Some(Value::Gauge(1.0))
        );
        assert_eq!(
            value_of(&pushes, "b{job=j,tenant=t}"),
            Some(Value::Gauge(3.0))
        );
        assert_eq!(
            value_of(&pushes, "c{job=j,tenant=t}"),
            Some(Value::Gauge(4.0))
        );
        let pushed = push(&pushes, &group, Method::Replace, "c 5\n");
        assert_eq!((pushed.series, pushed.removed), (1, 2));
        let names: Vec<String> = values(&pushes).into_iter().map(|(s, _)| s).collect();
        assert_eq!(names, ["a{job=other,tenant=t}", "c{job=j,tenant=t}"]);
        // POST replaces a name's series that are not pushed again.
        push(
            &pushes,
            &group,
            Method::Merge,
            "d{k=\"1\"} 1\nd{k=\"2\"} 2\n",
        );
        push(&pushes, &group, Method::Merge, "d{k=\"2\"} 3\n");
        assert_eq!(value_of(&pushes, "d{job=j,k=1,tenant=t}"), None);
        assert_eq!(
            value_of(&pushes, "d{job=j,k=2,tenant=t}"),
            Some(Value::Gauge(3.0))
        );
        // An empty PUT empties the group, but keeps its push time.
        push(&pushes, &group, Method::Replace, "");
        assert_eq!(values(&pushes).len(), 1);
        assert_eq!(pushes.counts(), (2, 5));
    }

    #[test]
    fn delete_and_expiry_remove_the_group_and_its_push_times() {
        let pushes = pushes();
        push(&pushes, &[("job", "a")], Method::Replace, "x 1\n");
        push(&pushes, &[("job", "b")], Method::Replace, "x 2\n");
        assert!(pushes.delete("t", &key(&[("job", "a")])));
        assert!(!pushes.delete("t", &key(&[("job", "a")])));
        assert!(!pushes.delete("other-tenant", &key(&[("job", "b")])));
        assert_eq!(pushes.counts(), (1, 3));
        let mut pushed = Push {
            tenant: "t".into(),
            grouping: key(&[("job", "c")]),
            method: Method::Replace,
            families: text::parse(b"y 1\n").unwrap(),
            ttl_secs: Some(5),
            counters: None,
        };
        pushes.push(pushed).unwrap();
        assert_eq!(pushes.expire(Instant::now()), 0);
        assert_eq!(pushes.expire(Instant::now() + Duration::from_secs(6)), 1);
        assert_eq!(pushes.stats().expired(), 1);
        assert_eq!(value_of(&pushes, "y{job=c,tenant=t}"), None);
        // The family went with its last series: the name is free for another type.
        pushed = Push {
            tenant: "t".into(),
            grouping: key(&[("job", "c")]),
            method: Method::Replace,
            families: text::parse(b"# TYPE y counter\ny 1\n").unwrap(),
            ttl_secs: None,
            counters: None,
        };
        pushes.push(pushed).unwrap();
        assert_eq!(
            value_of(&pushes, "y{job=c,tenant=t}"),
            Some(Value::Counter(1.0))
        );
        let registry = pushes.recorder.registry();
        let stamps: Vec<String> = read::snapshot(registry)
            .into_iter()
            .filter(|f| f.name.starts_with("push_"))
            .flat_map(|f| {
                f.series
                    .into_iter()
                    .map(move |s| format!("{}{:?}", f.name, s.labels))
            })
            .collect();
        assert_eq!(stamps.len(), 4, "{stamps:?}");
    }

    #[test]
    fn counters_set_or_add_and_histograms_add_with_the_same_bounds() {
        let pushes = pushes();
        let group = [("job", "j")];
        let body = "# TYPE c_total counter\nc_total 2\n# TYPE h histogram\n\
                    h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 5\nh_count 2\n";
        for _ in 0..2 {
            try_push(&pushes, &group, Method::Replace, body, Some(Counters::Add)).unwrap();
        }
        assert_eq!(
            value_of(&pushes, "c{job=j,tenant=t}"),
            Some(Value::Counter(4.0))
        );
        assert_eq!(
            value_of(&pushes, "h{job=j,tenant=t}"),
            Some(Value::Histogram {
                buckets: vec![(1.0, 2), (f64::INFINITY, 4)],
                sum: 10.0,
                count: 4,
                native: None,
            })
        );
        try_push(&pushes, &group, Method::Replace, body, Some(Counters::Set)).unwrap();
        assert_eq!(
            value_of(&pushes, "c{job=j,tenant=t}"),
            Some(Value::Counter(2.0))
        );
        // New bounds make the histogram afresh, whatever the mode.
        let rebucketed = "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"2\"} 3\n\
                          h_bucket{le=\"+Inf\"} 3\nh_sum 4\nh_count 3\n";
        try_push(
            &pushes,
            &group,
            Method::Merge,
            rebucketed,
            Some(Counters::Add),
        )
        .unwrap();
        assert_eq!(
            value_of(&pushes, "h{job=j,tenant=t}"),
            Some(Value::Histogram {
                buckets: vec![(0.5, 1), (2.0, 3), (f64::INFINITY, 3)],
                sum: 4.0,
                count: 3,
                native: None,
            })
        );
        // The default comes from the options.
        pushes.set_options(PushOptions {
            add_counters: true,
            ..PushOptions::default()
        });
        push(&pushes, &group, Method::Merge, "# TYPE c counter\nc 1\n");
        assert_eq!(
            value_of(&pushes, "c{job=j,tenant=t}"),
            Some(Value::Counter(3.0))
        );
    }

    #[test]
    fn a_summary_keeps_the_clients_quantiles() {
        let pushes = pushes();
        push(
            &pushes,
            &[("job", "j")],
            Method::Replace,
            "# TYPE s summary\ns{quantile=\"0.5\"} 2\ns{quantile=\"0.99\"} 9\ns_sum 30\ns_count 6\n",
        );
        assert_eq!(
            value_of(&pushes, "s{job=j,tenant=t}"),
            Some(Value::Summary {
                quantiles: vec![(0.5, 2.0), (0.99, 9.0)],
                sum: 30.0,
                count: 6,
            })
        );
    }

    #[test]
    fn a_refused_push_changes_no_value_and_removes_what_it_made() {
        let pushes = pushes();
        let recorder = &pushes.recorder;
        recorder
            .record("taken", Kind::Counter, [], Update::Add(1.0))
            .unwrap();
        push(&pushes, &[("job", "j")], Method::Replace, "kept 1\n");
        let error = try_push(
            &pushes,
            &[("job", "j")],
            Method::Replace,
            "fresh 1\nkept 2\n# TYPE taken gauge\ntaken 3\n",
            None,
        )
        .unwrap_err();
        assert_eq!(error.reason(), PushRefusal::TypeConflict);
        assert!(error.to_string().starts_with("line 4: "), "{error}");
        assert_eq!(
            value_of(&pushes, "kept{job=j,tenant=t}"),
            Some(Value::Gauge(1.0))
        );
        assert_eq!(value_of(&pushes, "fresh{job=j,tenant=t}"), None);
        assert!(recorder.registry().family_named("fresh").is_none());
        assert_eq!(pushes.stats().refused_count(PushRefusal::TypeConflict), 1);
        let stamp = read::snapshot(recorder.registry())
            .into_iter()
            .find(|f| f.name == PUSH_FAILURE_TIME)
            .unwrap();
        assert!(matches!(stamp.series[0].value, Value::Gauge(t) if t > 1e9));
    }

    #[test]
    fn a_series_belongs_to_one_group_and_appears_once_per_push() {
        let pushes = pushes();
        push(&pushes, &[("job", "j")], Method::Replace, "x{k=\"v\"} 1\n");
        let error = try_push(
            &pushes,
            &[("job", "j"), ("k", "v")],
            Method::Replace,
            "x 2\n",
            None,
        )
        .unwrap_err();
        assert_eq!(error.reason(), PushRefusal::GroupConflict);
        assert!(error.to_string().contains("job=\"j\""), "{error}");
        let error = try_push(
            &pushes,
            &[("job", "j2")],
            Method::Replace,
            "y{job=\"a\"} 1\ny{job=\"b\"} 2\n",
            None,
        )
        .unwrap_err();
        assert_eq!(error.reason(), PushRefusal::InvalidBody);
        assert!(
            error.to_string().contains("same series as at line 1"),
            "{error}"
        );
        assert_eq!(
            value_of(&pushes, "x{job=j,k=v,tenant=t}"),
            Some(Value::Gauge(1.0))
        );
    }

    #[test]
    fn created_gauges_and_pushgateways_own_names_are_skipped() {
        let pushes = pushes();
        let pushed = push(
            &pushes,
            &[("job", "j")],
            Method::Replace,
            "# TYPE a_total counter\na_total 1\n# TYPE a_created gauge\na_created 1.7e9\n\
             # TYPE b_created gauge\nb_created 5\npush_time_seconds 1\n",
        );
        assert_eq!(pushed.series, 2);
        assert_eq!(pushed.skipped.len(), 2, "{:?}", pushed.skipped);
        let names: Vec<String> = values(&pushes).into_iter().map(|(s, _)| s).collect();
        assert_eq!(names, ["a{job=j,tenant=t}", "b_created{job=j,tenant=t}"]);
    }

    #[test]
    fn a_group_exists_only_with_its_push_time_gauges() {
        let registry = Arc::new(Registry::new(RegistrySettings {
            max_series: 2,
            ..RegistrySettings::default()
        }));
        let pushes = Pushes::new(Recorder::for_registry(&registry), PushOptions::default());
        push(&pushes, &[("job", "a")], Method::Replace, "");
        // At the cap, neither a push nor a refused body makes another group.
        let error = try_push(&pushes, &[("job", "b")], Method::Replace, "", None).unwrap_err();
        assert_eq!(error.reason(), PushRefusal::SeriesLimit);
        pushes.refused("t", &key(&[("job", "c")]), PushRefusal::InvalidBody);
        assert_eq!(pushes.counts(), (1, 2));
        assert_eq!(pushes.stats().groups(), 1);

        let pushes = self::pushes();
        pushes
            .recorder
            .record(PUSH_TIME, Kind::Counter, [], Update::Add(1.0))
            .unwrap();
        let error = try_push(&pushes, &[("job", "a")], Method::Replace, "x 1\n", None).unwrap_err();
        assert_eq!(error.reason(), PushRefusal::TypeConflict);
        assert!(error.to_string().contains(PUSH_TIME), "{error}");
        assert_eq!(pushes.counts(), (0, 0));
    }

    #[test]
    fn a_summary_made_by_statsd_is_not_a_pushed_one() {
        let pushes = pushes();
        let recorder = &pushes.recorder;
        let labels = [("job", "j"), ("tenant", "t")];
        recorder
            .record(
                "s",
                Kind::Summary,
                labels,
                Update::Observe {
                    value: 1.0,
                    weight: 1,
                },
            )
            .unwrap();
        let error = try_push(
            &pushes,
            &[("job", "j")],
            Method::Replace,
            "# TYPE s summary\ns_sum 1\ns_count 1\n",
            None,
        )
        .unwrap_err();
        assert_eq!(error.reason(), PushRefusal::TypeConflict);
    }
}
