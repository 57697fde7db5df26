//! Series state and its sharding: counters, gauges, histograms and sets, grouped in families.
//!
//! A series is identified by a canonical key (its kind, family name and sorted labels; see
//! [`SeriesKeyBuf`]). The key's hash picks one of a power-of-two number of shards, each a hash
//! table behind its own `RwLock`, so a lookup takes one short read lock and a new series one
//! short write lock on one shard. Values are atomics: updating an existing series takes no lock
//! and allocates nothing (histograms and sets too, except a set's first sight of a member).
//!
//! Families hold the type, help and buckets, and the list of their series for exposition. A
//! name has one type: the first one seen wins, and a later sample of another type is refused
//! with [`Refusal::TypeConflict`] instead of producing a family a scraper would reject. The
//! names a family will expose (`x_total`, `x_bucket`, ...) are claimed too, so a gauge called
//! `x_total` cannot collide with the samples of counter `x`.
//!
//! Lock order, to rule out deadlock: shard → family table → one family's series list. A scrape
//! takes only the last two, one family at a time.
//!
//! `key.rs` assembles a series' identity; `series.rs` holds one series' state and its updates;
//! this file, the shards, the families and the limits.

mod key;
pub mod native;
mod series;

pub use key::{NativeOptions, Preaggregated, SeriesKeyBuf, SeriesOptions, escape_label_value};
pub use native::{NativeConfig, NativeSnapshot};
pub use series::{AtomicF64, Cell, HistogramCell, Series, SetCell, SummaryCell, Update};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hashbrown::HashTable;
use parking_lot::{Mutex, RwLock};

use crate::record::Refusal;
use crate::summary::{SummaryConfig, SummaryState};
use series::{DEAD, SummaryValue};

/// The Prometheus default buckets, in seconds: what timers observe into unless configured.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a family is: the one metric-kind enum, used by every input, definition and output.
/// (The StatsD type letters, `protocol::MetricType`, are the wire's own; sets are exposed as
/// gauges.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// A StatsD set: the number of distinct members seen in the recent window, exposed as a gauge.
    Set,
    /// Quantiles over a sliding window (`crate::sketch`), with cumulative `_sum` and `_count`.
    Summary,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 5] = [
        Kind::Counter,
        Kind::Gauge,
        Kind::Histogram,
        Kind::Set,
        Kind::Summary,
    ];

    /// The kind's name in config files and labels: `counter`, `gauge`, `histogram`, `set`,
    /// `summary`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Set => "set",
            Kind::Summary => "summary",
        }
    }

    /// True for the kinds that take observations (histograms and summaries).
    pub fn observes(self) -> bool {
        matches!(self, Kind::Histogram | Kind::Summary)
    }

    fn key_letter(self) -> char {
        match self {
            Kind::Counter => 'c',
            Kind::Gauge => 'g',
            Kind::Histogram => 'h',
            Kind::Set => 's',
            Kind::Summary => 'q',
        }
    }

    /// The sample names a family of this kind exposes besides its own name.
    fn exposed_suffixes(self) -> &'static [&'static str] {
        match self {
            Kind::Counter => &["_total", "_created"],
            Kind::Gauge | Kind::Set => &[],
            Kind::Histogram => &["_bucket", "_sum", "_count", "_created"],
            Kind::Summary => &["_sum", "_count", "_created"],
        }
    }
}

/// Registry-wide settings, fixed at start.
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    /// Number of shards; rounded up to a power of two.
    pub shards: usize,
    /// Bucket upper bounds for histograms without a definition of their own.
    pub histogram_buckets: Arc<[f64]>,
    /// How long a set member counts after it was last seen.
    pub set_window_secs: u32,
    /// Most distinct members one set tracks; more are dropped with [`Refusal::SetFull`].
    pub max_set_members: usize,
    /// Most live series in all; a new series beyond it is refused.
    pub max_series: usize,
    /// Most live series in one family; a new series beyond it is refused.
    pub max_series_per_metric: usize,
    /// A series not updated for this many seconds is removed; 0 keeps series forever.
    pub series_ttl_secs: u32,
    /// Native buckets for histograms that say nothing of their own: a factor above 1 turns
    /// them on (0: off), with at most `native_max_buckets` populated.
    pub native_bucket_factor: f64,
    pub native_max_buckets: u32,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            shards: 64,
            histogram_buckets: DEFAULT_BUCKETS.into(),
            set_window_secs: 60,
            max_set_members: 100_000,
            max_series: 1_000_000,
            max_series_per_metric: 100_000,
            series_ttl_secs: 0,
            native_bucket_factor: 0.0,
            native_max_buckets: native::DEFAULT_MAX_BUCKETS,
        }
    }
}

/// A metric family: one name, one kind, many series.
#[derive(Debug)]
pub struct Family {
    name: Box<str>,
    kind: Kind,
    help: Option<Arc<str>>,
    unit: Option<Arc<str>>,
    buckets: Arc<[f64]>,
    summary: Arc<SummaryConfig>,
    /// Native buckets of the family's histograms, if any.
    native: Option<NativeConfig>,
    series: RwLock<Vec<Arc<Series>>>,
}

impl Family {
    /// The family name: for counters, without the `_total` its samples carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }

    pub fn unit(&self) -> Option<&str> {
        self.unit.as_deref()
    }

    pub fn buckets(&self) -> &[f64] {
        &self.buckets
    }

    /// How the family's histograms keep native buckets; `None` for none (and other kinds).
    pub fn native(&self) -> Option<&NativeConfig> {
        self.native.as_ref()
    }

    pub fn series_count(&self) -> usize {
        self.series.read().len()
    }

    /// Visits every series under the family's read lock. Keep `visit` to copying bytes into a
    /// buffer: a new series of this family waits for it (updates of existing ones do not).
    pub fn for_each_series(&self, mut visit: impl FnMut(&Series)) {
        for series in self.series.read().iter() {
            visit(series);
        }
    }
}

#[derive(Default)]
struct FamilyTable {
    by_name: BTreeMap<Box<str>, Arc<Family>>,
    /// Every sample name a family exposes → the family that owns it.
    claims: HashMap<Box<str>, Arc<Family>>,
}

type Shard = RwLock<HashTable<Arc<Series>>>;

/// All series, sharded by key hash, and their families.
pub struct Registry {
    settings: RegistrySettings,
    hasher: ahash::RandomState,
    shards: Box<[Shard]>,
    shard_shift: u32,
    families: RwLock<FamilyTable>,
    epoch: Instant,
    /// Seconds since `epoch`, advanced by [`Registry::tick`]: a clock the hot path reads
    /// with one relaxed load instead of a system call.
    clock: Arc<AtomicU32>,
    series_count: AtomicUsize,
    refused_global: AtomicU64,
    refused_per_metric: AtomicU64,
    expired: AtomicU64,
    /// The shortest TTL of any series created so far (`u32::MAX`: none expires).
    min_ttl: AtomicU32,
}

/// Which cap refused a new series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeriesLimit {
    /// `max_series`
    Global,
    /// `max_series_per_metric`
    PerMetric,
}

impl SeriesLimit {
    pub fn label(self) -> &'static str {
        match self {
            SeriesLimit::Global => "global_limit",
            SeriesLimit::PerMetric => "metric_limit",
        }
    }
}

impl Registry {
    pub fn new(settings: RegistrySettings) -> Self {
        let shard_count = settings.shards.clamp(1, 1 << 12).next_power_of_two();
        Registry {
            shards: (0..shard_count).map(|_| Shard::default()).collect(),
            // The shard comes from the hash's top bits; hashbrown uses the low bits (and the
            // top 7) inside a shard, so the two choices stay independent enough.
            shard_shift: 64 - shard_count.trailing_zeros(),
            hasher: ahash::RandomState::new(),
            families: RwLock::default(),
            epoch: Instant::now(),
            clock: Arc::new(AtomicU32::new(0)),
            series_count: AtomicUsize::new(0),
            refused_global: AtomicU64::new(0),
            refused_per_metric: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            min_ttl: AtomicU32::new(match settings.series_ttl_secs {
                0 => u32::MAX,
                ttl => ttl,
            }),
            settings,
        }
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// Seconds since the registry started: the clock of set windows and expiry. Read from a
    /// cached value that [`Registry::tick`] advances (the daemon ticks it every second).
    pub fn now_secs(&self) -> u32 {
        self.clock.load(Ordering::Relaxed)
    }

    /// Advances the registry clock to the real elapsed time.
    pub fn tick(&self) {
        let elapsed = self.epoch.elapsed().as_secs().min(u64::from(DEAD - 1)) as u32;
        self.clock.fetch_max(elapsed, Ordering::Relaxed);
    }

    /// New series refused so far by `limit`.
    pub fn refused(&self, limit: SeriesLimit) -> u64 {
        match limit {
            SeriesLimit::Global => &self.refused_global,
            SeriesLimit::PerMetric => &self.refused_per_metric,
        }
        .load(Ordering::Relaxed)
    }

    /// Removes family `name` and all its series; false if there was none. Handles kept by
    /// inputs learn it at their next [`Series::touch`].
    pub fn remove_family(&self, name: &str) -> bool {
        let Some(family) = ({
            let mut table = self.families.write();
            let family = table.by_name.remove(name);
            if family.is_some() {
                table
                    .claims
                    .retain(|_, owner| !family.as_ref().is_some_and(|f| Arc::ptr_eq(owner, f)));
            }
            family
        }) else {
            return false;
        };
        let series = std::mem::take(&mut *family.series.write());
        self.unlink(&series);
        true
    }

    /// Takes series already out of their family's list out of the shards and the count.
    fn unlink(&self, series: &[Arc<Series>]) {
        for series in series {
            // Cached handles learn the series is gone at their next touch.
            series.last_seen.store(DEAD, Ordering::Release);
            let hash = self.hasher.hash_one(&*series.key);
            if let Ok(entry) = self
                .shard(hash)
                .write()
                .find_entry(hash, |s| Arc::ptr_eq(s, series))
            {
                entry.remove();
            }
        }
        self.series_count.fetch_sub(series.len(), Ordering::Relaxed);
    }

    /// True once any series can expire (a default TTL, or a mapping rule's).
    pub fn expiry_enabled(&self) -> bool {
        self.min_ttl.load(Ordering::Relaxed) != u32::MAX
    }

    /// How often expiry should sweep: often enough that a series outlives its TTL by at most
    /// a quarter of it (between 1 and 30 seconds).
    pub fn sweep_interval_secs(&self) -> u32 {
        (self.min_ttl.load(Ordering::Relaxed) / 4).clamp(1, 30)
    }

    /// Series removed by expiry so far.
    pub fn expired(&self) -> u64 {
        self.expired.load(Ordering::Relaxed)
    }

    /// The hasher a caller may use for its own caches of this registry's series.
    pub fn hasher(&self) -> &ahash::RandomState {
        &self.hasher
    }

    pub fn series_count(&self) -> usize {
        self.series_count.load(Ordering::Relaxed)
    }

    fn shard(&self, hash: u64) -> &Shard {
        let index = if self.shard_shift == 64 {
            0
        } else {
            (hash >> self.shard_shift) as usize
        };
        &self.shards[index]
    }

    /// The series for `key`, created if new. Does not allocate when the series exists.
    pub fn resolve(&self, key: &SeriesKeyBuf) -> Result<Arc<Series>, Refusal> {
        self.lookup_or_create(key).map(|(series, _)| series)
    }

    /// As [`Registry::resolve`], and whether this call created the series (an input that must
    /// undo its work, such as a refused push, removes only what it made).
    pub fn lookup_or_create(&self, key: &SeriesKeyBuf) -> Result<(Arc<Series>, bool), Refusal> {
        let kind = key.kind().expect("SeriesKeyBuf::start was called");
        let hash = self.hasher.hash_one(key.key());
        let shard = self.shard(hash);
        let matches = |series: &Arc<Series>| &*series.key == key.key();
        if let Some(series) = shard.read().find(hash, matches) {
            return Ok((Arc::clone(series), false));
        }
        if self.series_count.load(Ordering::Relaxed) >= self.settings.max_series {
            // At the cap, refuse before any write lock: under a flood of new names this is
            // the common path and must stay cheap.
            self.refused_global.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::SeriesLimit);
        }
        let mut table = shard.write();
        // Another thread may have inserted it between our two locks.
        if let Some(series) = table.find(hash, matches) {
            return Ok((Arc::clone(series), false));
        }
        let family = self.family(kind, key.family(), &key.options)?;
        // Reserve a place under the global cap first; the reservation is exact even with
        // inserts racing in other shards.
        if self.series_count.fetch_add(1, Ordering::Relaxed) >= self.settings.max_series {
            self.series_count.fetch_sub(1, Ordering::Relaxed);
            self.refused_global.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::SeriesLimit);
        }
        let mut family_series = family.series.write();
        if family_series.len() >= self.settings.max_series_per_metric {
            drop(family_series);
            self.series_count.fetch_sub(1, Ordering::Relaxed);
            self.refused_per_metric.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::SeriesLimit);
        }
        let series = Arc::new(Series {
            key: key.key().into(),
            labels_at: key.key().find('{').map_or(0, |i| i as u32 + 1),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            last_seen: AtomicU32::new(self.now_secs()),
            ttl_secs: {
                let ttl = key
                    .options
                    .ttl_secs
                    .unwrap_or(self.settings.series_ttl_secs);
                if ttl > 0 {
                    self.min_ttl.fetch_min(ttl, Ordering::Relaxed);
                }
                ttl
            },
            cell: match kind {
                Kind::Counter => Cell::Counter(AtomicF64::default()),
                Kind::Gauge => Cell::Gauge(AtomicF64::default()),
                Kind::Histogram => Cell::Histogram(Box::new(match &key.options.preaggregated {
                    // A pushed histogram keeps the client's buckets, and has no observations
                    // to place in native buckets.
                    Some(Preaggregated::Histogram(bounds)) => {
                        HistogramCell::new(Arc::clone(bounds), None)
                    }
                    _ => HistogramCell::new(Arc::clone(&family.buckets), family.native),
                })),
                Kind::Set => Cell::Set(Box::new(SetCell {
                    members: Mutex::new(HashMap::default()),
                })),
                Kind::Summary => Cell::Summary(Box::new(SummaryCell {
                    state: Mutex::new(match key.options.preaggregated {
                        Some(Preaggregated::Summary) => SummaryValue::Pushed {
                            quantiles: Vec::new(),
                            sum: 0.0,
                            count: 0,
                        },
                        _ => SummaryValue::Windowed(SummaryState::new(
                            &family.summary,
                            self.now_secs(),
                        )),
                    }),
                    clock: Arc::clone(&self.clock),
                })),
            },
        });
        table.insert_unique(hash, Arc::clone(&series), |s| self.hasher.hash_one(&*s.key));
        family_series.push(Arc::clone(&series));
        Ok((series, true))
    }

    /// The family called `name`, created with `kind` if new; a type conflict if `name` (or one
    /// of the sample names it would expose) belongs to a family of another kind.
    fn family(
        &self,
        kind: Kind,
        name: &str,
        options: &SeriesOptions,
    ) -> Result<Arc<Family>, Refusal> {
        if let Some(family) = self.families.read().by_name.get(name) {
            return if family.kind == kind {
                Ok(Arc::clone(family))
            } else {
                Err(Refusal::TypeConflict)
            };
        }
        let mut table = self.families.write();
        if let Some(family) = table.by_name.get(name) {
            return if family.kind == kind {
                Ok(Arc::clone(family))
            } else {
                Err(Refusal::TypeConflict)
            };
        }
        let exposed = std::iter::once(name.to_owned()).chain(
            kind.exposed_suffixes()
                .iter()
                .map(|suffix| format!("{name}{suffix}")),
        );
        let exposed: Vec<String> = exposed.collect();
        if exposed
            .iter()
            .any(|n| table.claims.contains_key(n.as_str()))
        {
            return Err(Refusal::TypeConflict);
        }
        let family = Arc::new(Family {
            name: name.into(),
            kind,
            help: options.help.clone(),
            unit: options.unit.clone(),
            buckets: options
                .buckets
                .clone()
                .unwrap_or_else(|| Arc::clone(&self.settings.histogram_buckets)),
            summary: options.summary.clone().unwrap_or_default(),
            native: match kind {
                Kind::Histogram => NativeConfig::new(
                    options
                        .native
                        .bucket_factor
                        .unwrap_or(self.settings.native_bucket_factor),
                    options
                        .native
                        .max_buckets
                        .unwrap_or(self.settings.native_max_buckets),
                ),
                _ => None,
            },
            series: RwLock::default(),
        });
        for claimed in exposed {
            table.claims.insert(claimed.into(), Arc::clone(&family));
        }
        table.by_name.insert(name.into(), Arc::clone(&family));
        Ok(family)
    }

    /// Removes the series idle for longer than the TTL, one shard at a time, and returns how
    /// many went. Ingestion and scrapes go on meanwhile: a shard is write-locked only while
    /// its own table is filtered, then each affected family's list once.
    ///
    /// The trade-off: a counter that expires and comes back starts again from zero. Prometheus
    /// reads that as a counter reset (its `rate()` copes); OpenMetrics scrapers also see the new
    /// `_created` timestamp. Without expiry, every series ever seen stays until restart.
    pub fn expire_idle(&self) -> usize {
        if !self.expiry_enabled() {
            return 0;
        }
        let now = self.now_secs();
        let mut removed_total = 0;
        let mut removed: Vec<Arc<Series>> = Vec::new();
        for shard in self.shards.iter() {
            shard.write().retain(|series| {
                if series.expire(now) {
                    removed.push(Arc::clone(series));
                    false
                } else {
                    true
                }
            });
            if removed.is_empty() {
                continue;
            }
            // Group by family (the key spells it) so each family's list is filtered once.
            let mut by_family: HashMap<&str, Vec<*const Series>> = HashMap::new();
            for series in &removed {
                by_family
                    .entry(series.family_name())
                    .or_default()
                    .push(Arc::as_ptr(series));
            }
            let families = self.families.read();
            for (name, dead) in by_family {
                let Some(family) = families.by_name.get(name) else {
                    continue;
                };
                family
                    .series
                    .write()
                    .retain(|series| !dead.contains(&Arc::as_ptr(series)));
            }
            drop(families);
            removed_total += removed.len();
            self.series_count
                .fetch_sub(removed.len(), Ordering::Relaxed);
            removed.clear();
        }
        self.expired
            .fetch_add(removed_total as u64, Ordering::Relaxed);
        removed_total
    }

    /// Removes exactly the series in `doomed` (by identity, not by key), and each family they
    /// leave without series. Series already gone (expired, their family reset) are skipped.
    /// Returns how many were removed. Handles kept by inputs learn it at their next
    /// [`Series::touch`].
    pub fn remove_exact(&self, doomed: &[Arc<Series>]) -> usize {
        let mut by_family: HashMap<&str, HashSet<*const Series>> = HashMap::new();
        for series in doomed {
            by_family
                .entry(series.family_name())
                .or_default()
                .insert(Arc::as_ptr(series));
        }
        let mut removed: Vec<Arc<Series>> = Vec::new();
        for (name, dead) in by_family {
            let Some(family) = self.family_named(name) else {
                continue;
            };
            let emptied = {
                let mut list = family.series.write();
                list.retain(|series| {
                    if !dead.contains(&Arc::as_ptr(series)) {
                        return true;
                    }
                    // Expiry may have claimed it already (it then does the accounting).
                    if series.last_seen.swap(DEAD, Ordering::AcqRel) != DEAD {
                        removed.push(Arc::clone(series));
                    }
                    false
                });
                list.is_empty()
            };
            if emptied {
                self.remove_family_if_empty(&family);
            }
        }
        for series in &removed {
            let hash = self.hasher.hash_one(&*series.key);
            if let Ok(entry) = self
                .shard(hash)
                .write()
                .find_entry(hash, |s| Arc::ptr_eq(s, series))
            {
                entry.remove();
            }
        }
        self.series_count
            .fetch_sub(removed.len(), Ordering::Relaxed);
        removed.len()
    }

    /// Takes `family` out of the table if it still has no series (checked under the table's
    /// lock, so a family that got a series meanwhile stays).
    fn remove_family_if_empty(&self, family: &Arc<Family>) {
        let mut table = self.families.write();
        let current = table.by_name.get(family.name());
        if !current.is_some_and(|f| Arc::ptr_eq(f, family)) || family.series_count() > 0 {
            return;
        }
        table.by_name.remove(family.name());
        table.claims.retain(|_, owner| !Arc::ptr_eq(owner, family));
    }

    /// The `n` families with the most series, most first: where cardinality goes.
    pub fn top_families(&self, n: usize) -> Vec<(Arc<Family>, usize)> {
        let mut counts: Vec<(Arc<Family>, usize)> = self
            .families()
            .into_iter()
            .map(|family| {
                let count = family.series_count();
                (family, count)
            })
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name)));
        counts.truncate(n);
        counts
    }

    /// A snapshot of the families in name order, for a scrape.
    pub fn families(&self) -> Vec<Arc<Family>> {
        self.families.read().by_name.values().cloned().collect()
    }

    /// The family named `name` (for counters, without `_total`), if it exists.
    pub fn family_named(&self, name: &str) -> Option<Arc<Family>> {
        self.families.read().by_name.get(name).cloned()
    }

    /// Removes the series of family `name` for which `doomed` holds (one tenant's series, say),
    /// and the family with them when none is left. Returns how many went. Handles kept by inputs
    /// learn it at their next [`Series::touch`].
    pub fn remove_series(&self, name: &str, doomed: impl Fn(&Series) -> bool) -> usize {
        let Some(family) = self.family_named(name) else {
            return 0;
        };
        let removed: Vec<Arc<Series>> = {
            let mut list = family.series.write();
            let (gone, kept) = std::mem::take(&mut *list)
                .into_iter()
                .partition(|series| doomed(series));
            *list = kept;
            gone
        };
        self.unlink(&removed);
        if family.series_count() == 0 {
            self.remove_family(name);
        }
        removed.len()
    }
}

/// Starts the thread that keeps the registry clock and expires idle series, until `stop` is cancelled.
pub fn spawn_housekeeping(
    registry: Arc<Registry>,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("tallyd-housekeeping".into())
        .spawn(move || {
            let mut last_sweep = 0;
            while !stop.is_cancelled() {
                std::thread::sleep(std::time::Duration::from_millis(200));
                registry.tick();
                let now = registry.now_secs();
                if registry.expiry_enabled() && now - last_sweep >= registry.sweep_interval_secs() {
                    last_sweep = now;
                    let removed = registry.expire_idle();
                    if removed > 0 {
                        tracing::debug!(removed, "expired idle series");
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: Kind, family: &str, labels: &[(&str, &str)]) -> SeriesKeyBuf {
        let mut buf = SeriesKeyBuf::default();
        buf.start(kind).push_str(family);
        buf.end_family();
        for (name, value) in labels {
            buf.push_label(|out| out.push_str(name), value);
        }
        buf.finish();
        buf
    }

    fn registry() -> Registry {
        Registry::new(RegistrySettings::default())
    }

    #[test]
    fn the_same_identity_resolves_to_the_same_series() {
        let registry = registry();
        let a = registry.resolve(&key(Kind::Counter, "x", &[("a", "1"), ("b", "2")]));
        let b = registry.resolve(&key(Kind::Counter, "x", &[("b", "2"), ("a", "1")]));
        assert!(Arc::ptr_eq(&a.unwrap(), &b.unwrap()));
        assert_eq!(registry.series_count(), 1);
    }

    #[test]
    fn the_last_duplicate_label_wins() {
        let buf = key(Kind::Gauge, "x", &[("a", "1"), ("b", "2"), ("a", "3")]);
        assert_eq!(buf.labels().collect::<Vec<_>>(), [("a", "3"), ("b", "2")]);
    }

    #[test]
    fn a_second_type_for_a_name_is_a_conflict() {
        let registry = registry();
        registry.resolve(&key(Kind::Counter, "x", &[])).unwrap();
        let err = registry.resolve(&key(Kind::Gauge, "x", &[("a", "b")]));
        assert_eq!(err.unwrap_err(), Refusal::TypeConflict);
    }

    #[test]
    fn a_gauge_cannot_take_a_counters_sample_name() {
        let registry = registry();
        registry.resolve(&key(Kind::Counter, "x", &[])).unwrap();
        let err = registry.resolve(&key(Kind::Gauge, "x_total", &[]));
        assert_eq!(err.unwrap_err(), Refusal::TypeConflict);
        let err = registry.resolve(&key(Kind::Histogram, "x_total", &[]));
        assert_eq!(err.unwrap_err(), Refusal::TypeConflict);
    }

    #[test]
    fn histogram_buckets_use_le_semantics_and_weights() {
        let registry = registry();
        let series = registry.resolve(&key(Kind::Histogram, "h", &[])).unwrap();
        let settings = registry.settings();
        series
            .apply(
                Update::Observe {
                    value: 0.005,
                    weight: 1,
                },
                settings,
            )
            .unwrap();
        series
            .apply(
                Update::Observe {
                    value: 20.0,
                    weight: 10,
                },
                settings,
            )
            .unwrap();
        let Cell::Histogram(h) = series.cell() else {
            panic!("not a histogram")
        };
        let counts: Vec<u64> = h.counts().collect();
        assert_eq!(counts[0], 1);
        assert_eq!(*counts.last().unwrap(), 10);
        assert_eq!(h.sum(), 200.005);
    }

    #[test]
    fn a_set_counts_distinct_members_in_its_window() {
        let registry = registry();
        let series = registry.resolve(&key(Kind::Set, "users", &[])).unwrap();
        let settings = registry.settings();
        for (hash, now) in [(1, 0), (2, 0), (1, 5), (3, 100)] {
            series
                .apply(Update::Member { hash, now }, settings)
                .unwrap();
        }
        assert_eq!(series.set_cardinality(30, 60), 3);
        assert_eq!(series.set_cardinality(100, 60), 1);
    }

    fn limited(max_series: usize, max_series_per_metric: usize, ttl: u32) -> Registry {
        Registry::new(RegistrySettings {
            max_series,
            max_series_per_metric,
            series_ttl_secs: ttl,
            ..RegistrySettings::default()
        })
    }

    #[test]
    fn past_the_global_cap_new_series_are_refused_and_old_ones_still_update() {
        let registry = limited(2, 100, 0);
        let a = registry.resolve(&key(Kind::Counter, "a", &[])).unwrap();
        registry.resolve(&key(Kind::Gauge, "b", &[])).unwrap();
        let refused = registry.resolve(&key(Kind::Counter, "c", &[]));
        assert_eq!(refused.unwrap_err(), Refusal::SeriesLimit);
        assert_eq!(registry.refused(SeriesLimit::Global), 1);
        assert_eq!(registry.series_count(), 2);
        let again = registry.resolve(&key(Kind::Counter, "a", &[])).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
    }

    #[test]
    fn past_the_per_metric_cap_only_that_metric_is_refused() {
        let registry = limited(100, 2, 0);
        for id in ["1", "2"] {
            registry
                .resolve(&key(Kind::Counter, "hot", &[("id", id)]))
                .unwrap();
        }
        let refused = registry.resolve(&key(Kind::Counter, "hot", &[("id", "3")]));
        assert_eq!(refused.unwrap_err(), Refusal::SeriesLimit);
        assert_eq!(registry.refused(SeriesLimit::PerMetric), 1);
        registry
            .resolve(&key(Kind::Counter, "calm", &[("id", "3")]))
            .unwrap();
        assert_eq!(registry.series_count(), 3);
    }

    #[test]
    fn idle_series_expire_and_busy_ones_stay() {
        let registry = limited(100, 100, 10);
        let idle = registry
            .resolve(&key(Kind::Counter, "x", &[("id", "idle")]))
            .unwrap();
        let busy = registry
            .resolve(&key(Kind::Counter, "x", &[("id", "busy")]))
            .unwrap();
        registry.clock.store(8, Ordering::Relaxed);
        assert!(busy.touch(registry.now_secs()));
        registry.clock.store(15, Ordering::Relaxed);
        assert_eq!(registry.expire_idle(), 1);
        assert_eq!(registry.series_count(), 1);
        assert_eq!(registry.expired(), 1);
        let family = &registry.families()[0];
        let mut labels = Vec::new();
        family.for_each_series(|s| labels.push(s.labels().to_owned()));
        assert_eq!(labels, [r#"id="busy""#]);
        assert!(
            !idle.touch(registry.now_secs()),
            "an expired series must say so"
        );
        let reborn = registry
            .resolve(&key(Kind::Counter, "x", &[("id", "idle")]))
            .unwrap();
        assert!(!Arc::ptr_eq(&idle, &reborn));
        assert_eq!(registry.series_count(), 2);
    }

    #[test]
    fn a_ttl_of_zero_never_expires() {
        let registry = limited(100, 100, 0);
        registry.resolve(&key(Kind::Counter, "x", &[])).unwrap();
        registry.clock.store(1_000_000, Ordering::Relaxed);
        assert_eq!(registry.expire_idle(), 0);
        assert_eq!(registry.series_count(), 1);
    }

    #[test]
    fn remove_exact_takes_those_series_only_and_their_emptied_families() {
        let registry = limited(100, 100, 10);
        let a1 = registry
            .resolve(&key(Kind::Gauge, "a", &[("i", "1")]))
            .unwrap();
        let a2 = registry
            .resolve(&key(Kind::Gauge, "a", &[("i", "2")]))
            .unwrap();
        let b = registry.resolve(&key(Kind::Counter, "b", &[])).unwrap();
        // `b` expires first: remove_exact skips it and the count stays right.
        registry.clock.store(20, Ordering::Relaxed);
        assert!(a1.touch(20) && a2.touch(20));
        assert_eq!(registry.expire_idle(), 1);
        assert_eq!(registry.remove_exact(&[Arc::clone(&a1), Arc::clone(&b)]), 1);
        assert_eq!(registry.series_count(), 1);
        assert!(!a1.touch(21), "a removed series must say so");
        // `b`'s family, left without series, goes too.
        let names: Vec<String> = registry
            .families()
            .iter()
            .map(|f| f.name().into())
            .collect();
        assert_eq!(names, ["a"]);
        assert_eq!(registry.remove_exact(&[Arc::clone(&a2)]), 1);
        assert!(registry.family_named("a").is_none());
        // The freed name takes another kind.
        registry.resolve(&key(Kind::Counter, "a", &[])).unwrap();
    }

    #[test]
    fn a_preaggregated_series_keeps_its_own_buckets_and_pushed_quantiles() {
        let registry = registry();
        let mut buf = key(Kind::Histogram, "h", &[("i", "1")]);
        buf.options.preaggregated = Some(Preaggregated::Histogram(Arc::from(&[1.0, 2.0][..])));
        let pushed = registry.resolve(&buf).unwrap();
        let observed = registry.resolve(&key(Kind::Histogram, "h", &[])).unwrap();
        let (Cell::Histogram(p), Cell::Histogram(o)) = (pushed.cell(), observed.cell()) else {
            panic!("not histograms")
        };
        assert_eq!(p.bounds(), [1.0, 2.0]);
        assert_eq!(o.bounds(), DEFAULT_BUCKETS);
        p.assign(&[1, 2, 3], 9.0);
        p.accumulate(&[1, 0, 0], 1.0);
        assert_eq!(
            (p.counts().collect::<Vec<_>>(), p.sum()),
            (vec![2, 2, 3], 10.0)
        );

        let mut buf = key(Kind::Summary, "s", &[]);
        buf.options.preaggregated = Some(Preaggregated::Summary);
        let summary = registry.resolve(&buf).unwrap();
        let Cell::Summary(cell) = summary.cell() else {
            panic!("not a summary")
        };
        assert!(cell.assign(&[(0.5, 4.0)], 8.0, 2));
        let mut quantiles = Vec::new();
        assert_eq!(cell.read(|q, v| quantiles.push((q, v))), (8.0, 2));
        assert_eq!(quantiles, [(0.5, 4.0)]);
        let observe = Update::Observe {
            value: 1.0,
            weight: 1,
        };
        let settings = registry.settings();
        assert_eq!(summary.apply(observe, settings), Err(Refusal::TypeConflict));
        let windowed = registry.resolve(&key(Kind::Summary, "s2", &[])).unwrap();
        let Cell::Summary(cell) = windowed.cell() else {
            panic!("not a summary")
        };
        assert!(!cell.is_pushed() && !cell.assign(&[], 0.0, 0));
    }

    #[test]
    fn top_families_lists_the_biggest_first() {
        let registry = registry();
        for id in ["1", "2", "3"] {
            registry
                .resolve(&key(Kind::Counter, "big", &[("id", id)]))
                .unwrap();
        }
        registry.resolve(&key(Kind::Gauge, "small", &[])).unwrap();
        let top: Vec<(String, usize)> = registry
            .top_families(1)
            .into_iter()
            .map(|(f, n)| (f.name().to_owned(), n))
            .collect();
        assert_eq!(top, [("big".to_owned(), 3)]);
    }

    #[test]
    fn label_values_are_escaped_once_at_creation() {
        let registry = registry();
        let series = registry
            .resolve(&key(Kind::Gauge, "g", &[("path", "C:\\x \"y\"\n")]))
            .unwrap();
        assert_eq!(series.labels(), r#"path="C:\\x \"y\"\n""#);
    }
}
