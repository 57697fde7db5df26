//! From datagram to series updates: one [`Ingester`] per receive thread.
//!
//! The per-line work for a series seen before is: parse (borrowed), copy the raw name, type,
//! tags and container into a reused buffer, one hash lookup in this thread's cache, one atomic
//! update. No allocation, no lock (sets aside). Only a miss takes the slow path: the StatsD
//! side of naming (mapping rules, sanitising, the rule's labels and options), then the write
//! seam ([`Recorder::series`]) for everything every input shares.
//!
//! The cache maps raw bytes, so `a:1|c|#x:1,y:2` and `a:1|c|#y:2,x:1` are two entries for one
//! series; that costs memory, never correctness. It is bounded: when full it is cleared, and
//! the next lines repopulate it from the registry.
//!
//! With `[relay]` on, the ingester also feeds its thread's [`Tap`]: each datagram as received
//! (raw mode), or each sample it recorded, re-encoded from the cached series' rendered name and
//! tags (mapped mode).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use hashbrown::hash_map::EntryRef;

use crate::history::ruled::{Named, RuleFamilies};
use crate::naming::sanitize_name_into;
use crate::protocol::{
    Extension, MetricType, ParseOptions, Reason, Sample, SampleSink, TagStyle, Value,
    parse_datagram,
};
use crate::record::{Recorder, Refusal, SeriesHandle};
use crate::registry::{Kind, NativeOptions, SeriesKeyBuf, SeriesOptions, Update};
use crate::relay::mapped::MappedForm;
use crate::relay::{Hub, LineForm, Tap};
use crate::rules::{Match, MetricClass, ObserverType, RuleCache, RuleSet};
use crate::summary::SummaryConfig;
use crate::telemetry::ReceiverStats;

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
    /// The relay, when `[relay]` has targets: each ingester feeds a tap of its own.
    pub relay: Option<Hub>,
    /// Where a mapping rule with `history = true` registers the families it names.
    pub history: Option<Arc<RuleFamilies>>,
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
    pub fn new(rules: Arc<RuleSet>) -> Self {
        SharedRules {
            current: parking_lot::RwLock::new(rules),
            generation: AtomicU64::new(0),
        }
    }

    /// Puts `rules` in force for every ingester, from its next datagram on.
    pub fn replace(&self, rules: Arc<RuleSet>) {
        *self.current.write() = rules;
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
        SharedRules::new(Arc::new(RuleSet::empty()))
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            parse: ParseOptions::default(),
            container_id_label: true,
            cache_capacity: 100_000,
            rules: Arc::default(),
            relay: None,
            history: None,
        }
    }
}

/// Most mapping results one thread caches (by StatsD name and type).
const RULE_CACHE_CAPACITY: usize = 10_000;

/// Counts kept in plain integers on the hot path and added to the shared atomics per batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestCounts {
    pub packets: u64,
    pub bytes: u64,
    pub lines: u64,
    pub samples: u64,
    /// Lines refused by the grammar, by `Reason as usize`.
    pub errors: [u64; Reason::ALL.len()],
    /// Samples the write seam refused, by `Refusal as usize`.
    pub refusals: [u64; Refusal::ALL.len()],
    pub events: u64,
    pub service_checks: u64,
}

/// Turns datagrams into registry updates. Not shared: each receive thread owns one.
pub struct Ingester {
    recorder: Arc<Recorder>,
    stats: Arc<ReceiverStats>,
    options: IngestOptions,
    counts: IngestCounts,
    cache: SeriesCache,
    relay: Option<Tap>,
}

/// This thread's map from raw name+type+tags bytes to series, and the slow path behind it.
struct SeriesCache {
    map: HashMap<Box<[u8]>, Cached, ahash::RandomState>,
    capacity: usize,
    raw_key: Vec<u8>,
    resolver: Resolver,
}

/// A cached series and what its mapping rule multiplies values by.
struct Cached {
    handle: SeriesHandle,
    scale: f64,
    /// Its name and tags for the relay's mapped mode (`None` in any other mode).
    relay: Option<Box<MappedForm>>,
}

/// The slow path: mapping rules and sanitising, then the write seam. Buffers are reused.
struct Resolver {
    container_id_label: bool,
    rules: Arc<RuleSet>,
    rules_generation: u64,
    rule_cache: RuleCache,
    /// The family name being resolved.
    name: String,
    /// A two-piece StatsD name (SignalFX tags inside it) joined, for the rules and sanitising.
    joined: String,
    series_key: SeriesKeyBuf,
    last_warning: Option<Instant>,
    /// The `tenant` label of API-ingested lines.
    tenant: Option<Box<str>>,
    /// Render each new series' [`MappedForm`] (the relay is in mapped mode).
    relay_mapped: bool,
    history: Option<Arc<RuleFamilies>>,
}

impl Ingester {
    pub fn new(recorder: Arc<Recorder>, stats: Arc<ReceiverStats>, options: IngestOptions) -> Self {
        let cache = SeriesCache {
            map: HashMap::default(),
            capacity: options.cache_capacity,
            raw_key: Vec::with_capacity(256),
            resolver: Resolver {
                container_id_label: options.container_id_label,
                rules: options.rules.current(),
                rules_generation: options.rules.generation(),
                rule_cache: RuleCache::new(options.cache_capacity.min(RULE_CACHE_CAPACITY)),
                name: String::with_capacity(64),
                joined: String::new(),
                series_key: SeriesKeyBuf::default(),
                last_warning: None,
                tenant: None,
                relay_mapped: options
                    .relay
                    .as_ref()
                    .is_some_and(|hub| hub.form() == LineForm::Mapped),
                history: options.history.clone(),
            },
        };
        let relay = options.relay.as_ref().map(Hub::tap);
        Ingester {
            recorder,
            stats,
            options,
            counts: IngestCounts::default(),
            cache,
            relay,
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
        if let Some(tap) = &mut self.relay
            && tap.form() == LineForm::Raw
        {
            tap.raw(datagram);
        }
        let options = self.options.parse;
        parse_datagram(datagram, &options, self);
    }

    /// Adds every series this ingester makes a `tenant` label (the last word on it), for
    /// lines that arrive over the API on behalf of a tenant.
    pub fn with_tenant(mut self, tenant: &str) -> Self {
        self.cache.resolver.tenant = Some(tenant.into());
        self
    }

    /// Adds the counts gathered since the last flush to the shared self-metrics, gives the
    /// relay its chance to take this thread's lines, and returns the counts.
    pub fn flush_stats(&mut self) -> IngestCounts {
        if let Some(tap) = &mut self.relay {
            tap.flush();
        }
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
        for (target, n) in self.stats.refusals.iter().zip(counts.refusals) {
            add(target, n);
        }
        counts
    }
}

impl SeriesCache {
    /// The live series a sample belongs to, from the cache or the registry, touched at `now`.
    fn lookup(
        &mut self,
        recorder: &Recorder,
        sample: &Sample<'_>,
        now: u32,
    ) -> Result<&Cached, Refusal> {
        let raw_key = &mut self.raw_key;
        raw_key.clear();
        raw_key.extend_from_slice(sample.metric_type.wire().as_bytes());
        raw_key.push(0xFF);
        for piece in sample.name.pieces() {
            raw_key.extend_from_slice(piece.as_bytes());
        }
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
                if !entry.get().handle.touch(now) {
                    // Expiry removed it since we cached it: find (or create) its successor.
                    entry.insert(self.resolver.resolve(recorder, sample)?);
                }
                Ok(entry.into_mut())
            }
            EntryRef::Vacant(entry) => {
                let cached = self.resolver.resolve(recorder, sample)?;
                let key = entry.key().into();
                Ok(entry.insert_with_key(key, cached))
            }
        }
    }
}

impl Resolver {
    /// The StatsD side of naming a new series: the mapping rule (or none), the sanitised name,
    /// the labels in priority order (tags, container id, the rule's labels, the later winning)
    /// and the rule's options; the write seam does the rest.
    fn resolve(&mut self, recorder: &Recorder, sample: &Sample<'_>) -> Result<Cached, Refusal> {
        let mut kind = kind_of(sample.metric_type);
        // Nearly every name is one piece of the datagram; a SignalFX section inside the name
        // leaves two, joined here into a buffer that is reused.
        let name = match sample.name.as_str() {
            Some(name) => name,
            None => {
                self.joined.clear();
                sample.name.push_to(&mut self.joined);
                self.joined.as_str()
            }
        };
        let mapped = match self
            .rule_cache
            .lookup(&self.rules, name, sample.metric_type)
        {
            Match::NoMatch => None,
            Match::Drop { .. } => return Err(Refusal::DroppedByRule),
            Match::Invalid { .. } => return Err(Refusal::InvalidName),
            Match::Mapped(mapped) => Some(mapped),
        };
        let rule = mapped.map(|m| self.rules.rule(m.rule));
        self.name.clear();
        match mapped {
            Some(mapped) => self.name.push_str(&mapped.name),
            None => sanitize_name_into(name, &mut self.name),
        }
        // The last of two labels with one name wins: a rule's labels go after the tags unless
        // the rule honours the sample's labels.
        let honor_labels = rule.is_some_and(|r| r.honor_labels);
        let rule_labels = mapped
            .map_or(&[][..], |m| &m.labels[..])
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()));
        let container = sample
            .container_id
            .filter(|_| self.container_id_label)
            .map(|container| ("container_id", container));
        let labels = rule_labels
            .clone()
            .filter(|_| honor_labels)
            .chain(sample.tags.iter())
            .chain(container)
            .chain(rule_labels.filter(|_| !honor_labels))
            .chain(self.tenant.as_deref().map(|tenant| ("tenant", tenant)));
        let mut options = SeriesOptions::default();
        if let Some(rule) = rule {
            let summary =
                kind == Kind::Histogram && rule.observer_type == Some(ObserverType::Summary);
            options = SeriesOptions {
                buckets: rule.buckets.as_deref().map(Arc::from),
                help: rule.help.as_deref().map(Arc::from),
                unit: None,
                ttl_secs: rule.ttl().map(|ttl| ttl.as_secs().max(1) as u32),
                summary: summary
                    .then(|| Arc::new(SummaryConfig::with_quantiles(rule.quantiles.as_deref()))),
                native: NativeOptions {
                    bucket_factor: rule.native_histogram_bucket_factor,
                    max_buckets: rule.native_histogram_max_buckets,
                },
                preaggregated: None,
            };
            if summary {
                kind = Kind::Summary;
            }
        }
        let scale = rule.and_then(|r| r.scale).unwrap_or(1.0);
        let history = mapped.and_then(|m| self.rules.history(m.rule));
        let resolved = recorder.series(&self.name, kind, labels, &options, &mut self.series_key);
        if let (Ok(_), Some(families), Some(retention)) = (&resolved, &self.history, history) {
            // Here, once per series this thread resolves, not per line: the family's type is
            // the one the registry just accepted for it.
            families.add(Named {
                family: &self.name,
                kind,
                retention,
                buckets: options.buckets.as_ref(),
                statsd_name: name,
                class: MetricClass::of(sample.metric_type),
            });
        }
        match resolved {
            Ok(handle) => Ok(Cached {
                relay: self.relay_mapped.then(|| MappedForm::of(handle.series())),
                handle,
                scale,
            }),
            Err(refusal) => {
                if matches!(refusal, Refusal::TypeConflict | Refusal::SeriesLimit) {
                    self.warn(sample, refusal);
                }
                Err(refusal)
            }
        }
    }

    /// Logs a refused new series, at most every 10 s per receiver; the counters have them all.
    fn warn(&mut self, sample: &Sample<'_>, reason: Refusal) {
        let now = Instant::now();
        if self
            .last_warning
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(10))
        {
            return;
        }
        self.last_warning = Some(now);
        let why = match reason {
            Refusal::TypeConflict => "the name is already registered with another type",
            Refusal::SeriesLimit => "a series limit ([limits] in the config) is reached",
            _ => "it cannot be registered",
        };
        tracing::warn!(
            name = %sample.name,
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
                hash: self.recorder.registry().hasher().hash_one(member),
                now: self.recorder.registry().now_secs(),
            },
            // The parser never pairs these; treat it as a malformed value rather than trust it.
            _ => return self.reject(Reason::InvalidValue),
        };
        let recorder = &*self.recorder;
        let outcome = self
            .cache
            .lookup(recorder, sample, recorder.registry().now_secs())
            .and_then(|cached| {
                if cached.handle.drops_labels() {
                    self.counts.refusals[Refusal::LabelNotInSchema as usize] += 1;
                }
                recorder.apply(&cached.handle, update.scaled(cached.scale))?;
                // Mapped relaying takes only what was recorded.
                if let (Some(tap), Some(form)) = (&mut self.relay, &cached.relay) {
                    tap.mapped(form, sample, cached.scale);
                }
                Ok(())
            });
        if let Err(refusal) = outcome {
            self.counts.refusals[refusal as usize] += 1;
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
    use crate::read::{self, Value};
    use crate::registry::{Registry, RegistrySettings};

    fn ingester(registry: &Arc<Registry>, options: IngestOptions) -> Ingester {
        let stats = Arc::new(ReceiverStats::new("test"));
        Ingester::new(Recorder::for_registry(registry), stats, options)
    }

    fn counter_value(registry: &Registry, family: &str) -> Vec<f64> {
        read::snapshot(registry)
            .into_iter()
            .filter(|f| f.name == family)
            .flat_map(|f| f.series)
            .filter_map(|s| match s.value {
                Value::Counter(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_sample_for_an_expired_cached_series_recreates_it() {
        let registry = Arc::new(Registry::new(RegistrySettings {
            series_ttl_secs: 1,
            ..RegistrySettings::default()
        }));
        let mut ingester = ingester(&registry, IngestOptions::default());
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
        let mut ingester = ingester(&registry, IngestOptions::default());
        ingester.ingest(b"hits:1|c|#a:1,b:2\nhits:1|c|#b:2,a:1\nhits_total:1|c|#a:1,b:2");
        assert_eq!(counter_value(&registry, "hits"), [3.0]);
    }

    #[test]
    fn a_name_split_by_signalfx_tags_is_joined_before_sanitising() {
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        let mut ingester = ingester(&registry, IngestOptions::default());
        // `a-` + `-b` is `a--b`, one run of `-`: `a_b`, as the one-piece spellings give.
        ingester.ingest(b"a-[k=v]-b:1|c\na--b[k=v]:1|c\n[k=v]a--b:1|c\na-[k=v]-b:1|c");
        assert_eq!(counter_value(&registry, "a_b"), [4.0]);
        assert_eq!(registry.series_count(), 1);
    }

    #[test]
    fn the_cache_starts_over_when_full_without_losing_counts() {
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        let options = IngestOptions {
            cache_capacity: 2,
            ..IngestOptions::default()
        };
        let mut ingester = ingester(&registry, options);
        for _ in 0..3 {
            ingester.ingest(b"a:1|c\nb:1|c\nc:1|c\nd:1|c");
        }
        for name in ["a", "b", "c", "d"] {
            assert_eq!(counter_value(&registry, name), [3.0], "{name}");
        }
    }
}
