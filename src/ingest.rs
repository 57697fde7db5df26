//! From datagram to series updates: one [`Ingester`] per receive thread.
//!
//! The per-line work for a series seen before is: parse (borrowed), copy the raw name, type,
//! tags and container into a reused buffer, one hash lookup in this thread's cache, one atomic
//! update. No allocation, no lock (sets aside). Only a miss takes the slow path: sanitise the
//! name and tags into a canonical key and resolve it in the sharded [`Registry`].
//!
//! The cache maps raw bytes, so `a:1|c|#x:1,y:2` and `a:1|c|#y:2,x:1` are two entries for one
//! series; that costs memory, never correctness. It is bounded: when full it is cleared, and
//! the next lines repopulate it from the registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;

use crate::naming::{counter_family, label_name_into, sanitize_name_into};
use crate::protocol::{
    Extension, MetricType, ParseOptions, Reason, Sample, SampleSink, TagStyle, Value,
    parse_datagram,
};
use crate::registry::{Kind, Registry, Series, SeriesKeyBuf, SeriesOptions, Update};
use crate::rules::{Match, ObserverType, RuleCache, RuleSet};
use crate::summary::SummaryConfig;
use crate::telemetry::{ReceiverStats, is_reserved_name};

/// Ingest switches that outlive one datagram.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    pub parse: ParseOptions,
    /// Export the DogStatsD `|c:` container id as the `container_id` label.
    pub container_id_label: bool,
    /// Most raw keys one thread caches before it starts over.
    pub cache_capacity: usize,
    /// The mapping rules in force; a reload swaps them for every receive thread.
    pub rules: Arc<SharedRules>,
}

/// The mapping rules in force, swappable while receive threads run. A thread checks the
/// generation once per datagram (one relaxed load) and, when it moved, takes the new rules and
/// forgets its cached series, since names may now map differently.
#[derive(Debug)]
pub struct SharedRules {
    current: parking_lot::RwLock<Arc<RuleSet>>,
    generation: AtomicU64,
}

impl SharedRules {
    pub fn new(rules: RuleSet) -> Self {
        SharedRules {
            current: parking_lot::RwLock::new(Arc::new(rules)),
            generation: AtomicU64::new(0),
        }
    }

    /// Puts `rules` in force for every ingester, from its next datagram on.
    pub fn replace(&self, rules: RuleSet) {
        *self.current.write() = Arc::new(rules);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn current(&self) -> Arc<RuleSet> {
        Arc::clone(&self.current.read())
    }
}

impl Default for SharedRules {
    fn default() -> Self {
        SharedRules::new(RuleSet::empty())
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            parse: ParseOptions::default(),
            container_id_label: true,
            cache_capacity: 100_000,
            rules: Arc::default(),
        }
    }
}

/// Most mapping results one thread caches (by StatsD name and type).
const RULE_CACHE_CAPACITY: usize = 10_000;

/// Counts kept in plain integers on the hot path and added to the shared atomics per batch.
#[derive(Debug, Default)]
struct LocalCounts {
    packets: u64,
    bytes: u64,
    lines: u64,
    samples: u64,
    errors: [u64; Reason::ALL.len()],
    events: u64,
    service_checks: u64,
}

/// Turns datagrams into registry updates. Not shared: each receive thread owns one.
pub struct Ingester {
    registry: Arc<Registry>,
    stats: Arc<ReceiverStats>,
    options: IngestOptions,
    counts: LocalCounts,
    cache: SeriesCache,
}

/// This thread's map from raw name+type+tags bytes to series, and the slow path behind it.
struct SeriesCache {
    map: HashMap<Box<[u8]>, Cached, ahash::RandomState>,
    capacity: usize,
    raw_key: Vec<u8>,
    resolver: Resolver,
}

/// A cached series, what its mapping rule multiplies values by, and whether the metric's
/// label schema drops some of the sample's tags (counted on every sample, not just the first).
struct Cached {
    series: Arc<Series>,
    scale: f64,
    drops_labels: bool,
}

/// The slow path: mapping, canonical name and labels, then the registry. Buffers are reused.
struct Resolver {
    container_id_label: bool,
    rules: Arc<RuleSet>,
    rules_generation: u64,
    rule_cache: RuleCache,
    series_key: SeriesKeyBuf,
    last_warning: Option<Instant>,
}

impl Ingester {
    pub fn new(registry: Arc<Registry>, stats: Arc<ReceiverStats>, options: IngestOptions) -> Self {
        let cache = SeriesCache {
            map: HashMap::default(),
            capacity: options.cache_capacity,
            raw_key: Vec::with_capacity(256),
            resolver: Resolver {
                container_id_label: options.container_id_label,
                rules: options.rules.current(),
                rules_generation: options.rules.generation(),
                rule_cache: RuleCache::new(options.cache_capacity.min(RULE_CACHE_CAPACITY)),
                series_key: SeriesKeyBuf::default(),
                last_warning: None,
            },
        };
        Ingester {
            registry,
            stats,
            options,
            counts: LocalCounts::default(),
            cache,
        }
    }

    /// Parses one datagram and applies every sample in it.
    pub fn ingest(&mut self, datagram: &[u8]) {
        let generation = self.options.rules.generation();
        if generation != self.cache.resolver.rules_generation {
            self.cache.resolver.rules = self.options.rules.current();
            self.cache.resolver.rules_generation = generation;
            self.cache.map.clear();
        }
        self.counts.packets += 1;
        self.counts.bytes += datagram.len() as u64;
        let options = self.options.parse;
        parse_datagram(datagram, &options, self);
    }

    /// Adds the counts gathered since the last flush to the shared self-metrics.
    pub fn flush_stats(&mut self) {
        let counts = std::mem::take(&mut self.counts);
        let add = |target: &std::sync::atomic::AtomicU64, n: u64| {
            if n > 0 {
                target.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.stats.packets, counts.packets);
        add(&self.stats.bytes, counts.bytes);
        add(&self.stats.lines, counts.lines);
        add(&self.stats.samples, counts.samples);
        add(&self.stats.events, counts.events);
        add(&self.stats.service_checks, counts.service_checks);
        for (target, n) in self.stats.errors.iter().zip(counts.errors) {
            add(target, n);
        }
    }
}

impl SeriesCache {
    /// The live series a sample belongs to, from the cache or the registry, touched at `now`.
    fn lookup(
        &mut self,
        registry: &Registry,
        sample: &Sample<'_>,
        now: u32,
    ) -> Result<&Cached, Reason> {
        let raw_key = &mut self.raw_key;
        raw_key.clear();
        raw_key.extend_from_slice(sample.metric_type.wire().as_bytes());
        raw_key.push(0xFF);
        raw_key.extend_from_slice(sample.name.as_bytes());
        raw_key.push(0xFF);
        raw_key.push(sample.tags.style as u8);
        raw_key.extend_from_slice(sample.tags.raw);
        if let Some(container) = sample.container_id {
            raw_key.push(0xFF);
            raw_key.extend_from_slice(container.as_bytes());
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(raw_key.as_slice()) {
            self.map.clear();
        }
        // `entry_ref` hashes once and copies the key only when it inserts.
        match self.map.entry_ref(raw_key.as_slice()) {
            EntryRef::Occupied(mut entry) => {
                if !entry.get().series.touch(now) {
                    // Expiry removed it since we cached it: find (or create) its successor.
                    entry.insert(self.resolver.resolve(registry, sample)?);
                }
                Ok(entry.into_mut())
            }
            EntryRef::Vacant(entry) => {
                let cached = self.resolver.resolve(registry, sample)?;
                let key = entry.key().into();
                Ok(entry.insert_with_key(key, cached))
            }
        }
    }
}

impl Resolver {
    fn resolve(&mut self, registry: &Registry, sample: &Sample<'_>) -> Result<Cached, Reason> {
        let kind = kind_of(sample.metric_type);
        let key = &mut self.series_key;
        let mapped = match self
            .rule_cache
            .lookup(&self.rules, sample.name, sample.metric_type)
        {
            Match::NoMatch => None,
            Match::Drop { .. } => return Err(Reason::DroppedByRule),
            Match::Invalid { .. } => return Err(Reason::InvalidName),
            Match::Mapped(mapped) => Some(mapped),
        };
        let rule = mapped.map(|m| self.rules.rule(m.rule));
        match mapped {
            Some(mapped) => key.start(kind).push_str(&mapped.name),
            None => sanitize_name_into(sample.name, key.start(kind)),
        }
        key.end_family();
        if kind == Kind::Counter {
            let family_len = counter_family(key.family()).len();
            key.truncate_family(family_len);
        }
        if key.family().is_empty() || is_reserved_name(key.family()) {
            return Err(Reason::InvalidName);
        }
        // The last of two labels with one name wins: a rule's labels go after the tags unless
        // the rule honours the sample's labels.
        let honor_labels = rule.is_some_and(|r| r.honor_labels);
        let rule_labels = mapped.map_or(&[][..], |m| &m.labels[..]);
        if honor_labels {
            for (name, value) in rule_labels {
                key.push_label(|out| out.push_str(name), value);
            }
        }
        for (tag, value) in sample.tags.iter() {
            key.push_label(|out| label_name_into(tag, out), value);
        }
        if self.container_id_label
            && let Some(container) = sample.container_id
        {
            key.push_label(|out| out.push_str("container_id"), container);
        }
        if !honor_labels {
            for (name, value) in rule_labels {
                key.push_label(|out| out.push_str(name), value);
            }
        }
        let mut kind = kind;
        if let Some(rule) = rule {
            let summary =
                kind == Kind::Histogram && rule.observer_type == Some(ObserverType::Summary);
            key.options = SeriesOptions {
                buckets: rule.buckets.as_deref().map(Arc::from),
                help: rule.help.as_deref().map(Arc::from),
                unit: None,
                ttl_secs: rule.ttl().map(|ttl| ttl.as_secs().max(1) as u32),
                summary: summary
                    .then(|| Arc::new(SummaryConfig::with_quantiles(rule.quantiles.as_deref()))),
            };
            if summary {
                kind = Kind::Summary;
            }
        }
        let mut drops_labels = false;
        if let Some(definition) = registry.definition(key.family()) {
            // A declared summary takes the observations a histogram would.
            if kind == Kind::Histogram && definition.kind == Kind::Summary {
                kind = Kind::Summary;
            }
            if definition.kind != kind {
                self.warn(sample, Reason::TypeConflict);
                return Err(Reason::TypeConflict);
            }
            if let Some(schema) = &definition.labels {
                drops_labels = key.retain_labels(|name| schema.iter().any(|l| &**l == name)) > 0;
            }
            // The declaration wins over a rule for what both say.
            let declared = &definition.options;
            let options = &mut key.options;
            options.buckets = declared.buckets.clone().or(options.buckets.take());
            options.help = declared.help.clone().or(options.help.take());
            options.unit = declared.unit.clone();
            options.ttl_secs = declared.ttl_secs.or(options.ttl_secs);
            options.summary = declared.summary.clone().or(options.summary.take());
        }
        key.set_kind(kind);
        key.finish();
        let scale = rule.and_then(|r| r.scale).unwrap_or(1.0);
        match registry.resolve(key) {
            Ok(series) => Ok(Cached {
                series,
                scale,
                drops_labels,
            }),
            Err(reason) => {
                self.warn(sample, reason);
                Err(reason)
            }
        }
    }

    /// Logs a refused new series, at most every 10 s per receiver; the counters have them all.
    fn warn(&mut self, sample: &Sample<'_>, reason: Reason) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(10))
        {
            return;
        }
        self.last_warning = Some(now);
        let why = match reason {
            Reason::TypeConflict => "the name is already registered with another type",
            Reason::SeriesLimit => "a series limit ([limits] in the config) is reached",
            _ => "it cannot be registered",
        };
        tracing::warn!(
            name = sample.name,
            statsd_type = sample.metric_type.wire(),
            "sample refused: {why} (counted in tallyd_sample_errors_total{{reason=\"{}\"}}; \
             such warnings are logged at most every 10s per receiver)",
            reason.label()
        );
    }
}

/// The Prometheus kind a StatsD type is aggregated into.
pub fn kind_of(metric_type: MetricType) -> Kind {
    match metric_type {
        MetricType::Counter => Kind::Counter,
        MetricType::Gauge => Kind::Gauge,
        MetricType::Timer | MetricType::Histogram | MetricType::Distribution => Kind::Histogram,
        MetricType::Set => Kind::Set,
    }
}

/// The weight of one sampled observation: it stands for `1/rate` of them.
fn weight(rate: f64) -> u64 {
    ((1.0 / rate).round() as u64).max(1)
}

impl SampleSink for Ingester {
    fn sample(&mut self, sample: &Sample<'_>) {
        self.counts.samples += 1;
        let update = match (sample.metric_type, sample.value) {
            (MetricType::Counter, Value::Number(v)) => Update::Add(v / sample.sample_rate),
            (MetricType::Gauge, Value::Number(v)) => Update::Set(v),
            (MetricType::Gauge, Value::GaugeDelta(v)) => Update::Delta(v),
            (MetricType::Timer, Value::Number(v)) => Update::Observe {
                value: v / 1000.0,
                weight: weight(sample.sample_rate),
            },
            (MetricType::Histogram | MetricType::Distribution, Value::Number(v)) => {
                Update::Observe {
                    value: v,
                    weight: weight(sample.sample_rate),
                }
            }
            (MetricType::Set, Value::SetMember(member)) => Update::Member {
                hash: self.registry.hasher().hash_one(member),
                now: self.registry.now_secs(),
            },
            // The parser never pairs these; treat it as a malformed value rather than trust it.
            _ => return self.reject(Reason::InvalidValue),
        };
        let registry = &self.registry;
        let outcome = self
            .cache
            .lookup(registry, sample, registry.now_secs())
            .and_then(|cached| {
                if cached.drops_labels {
                    self.counts.errors[Reason::LabelNotInSchema as usize] += 1;
                }
                cached
                    .series
                    .apply(update.scaled(cached.scale), registry.settings())
            });
        if let Err(reason) = outcome {
            self.reject(reason);
        }
    }

    fn line(&mut self) {
        self.counts.lines += 1;
    }

    fn reject(&mut self, reason: Reason) {
        self.counts.errors[reason as usize] += 1;
    }

    fn extension(&mut self, kind: Extension) {
        match kind {
            Extension::Event => self.counts.events += 1,
            Extension::ServiceCheck => self.counts.service_checks += 1,
        }
    }
}

// `TagStyle` takes part in the raw cache key as one byte.
const _: () = assert!(TagStyle::SignalFx as u8 == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Cell, RegistrySettings};

    fn counter_value(registry: &Registry, family: &str) -> Vec<f64> {
        let mut values = Vec::new();
        for f in registry.families().iter().filter(|f| f.name() == family) {
            f.for_each_series(|s| {
                if let Cell::Counter(v) = s.cell() {
                    values.push(v.get());
                }
            });
        }
        values
    }

    #[test]
    fn a_sample_for_an_expired_cached_series_recreates_it() {
        let registry = Arc::new(Registry::new(RegistrySettings {
            series_ttl_secs: 1,
            ..RegistrySettings::default()
        }));
        let stats = Arc::new(ReceiverStats::new("test"));
        let mut ingester = Ingester::new(Arc::clone(&registry), stats, IngestOptions::default());
        ingester.ingest(b"hits:2|c|#a:b");
        // Let the series go idle past its TTL; the ingester still caches its handle.
        std::thread::sleep(Duration::from_millis(2100));
        registry.tick();
        assert_eq!(registry.expire_idle(), 1);
        ingester.ingest(b"hits:3|c|#a:b");
        assert_eq!(counter_value(&registry, "hits"), [3.0]);
        assert_eq!(registry.series_count(), 1);
    }

    #[test]
    fn counters_from_tags_in_any_order_land_in_one_series() {
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        let stats = Arc::new(ReceiverStats::new("test"));
        let mut ingester = Ingester::new(Arc::clone(&registry), stats, IngestOptions::default());
        ingester.ingest(b"hits:1|c|#a:1,b:2\nhits:1|c|#b:2,a:1\nhits_total:1|c|#a:1,b:2");
        assert_eq!(counter_value(&registry, "hits"), [3.0]);
    }

    #[test]
    fn the_cache_starts_over_when_full_without_losing_counts() {
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        let stats = Arc::new(ReceiverStats::new("test"));
        let options = IngestOptions {
            cache_capacity: 2,
            ..IngestOptions::default()
        };
        let mut ingester = Ingester::new(Arc::clone(&registry), stats, options);
        for _ in 0..3 {
            ingester.ingest(b"a:1|c\nb:1|c\nc:1|c\nd:1|c");
        }
        for name in ["a", "b", "c", "d"] {
            assert_eq!(counter_value(&registry, name), [3.0], "{name}");
        }
    }
}
