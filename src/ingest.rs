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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::mapping::{label_name_into, sanitize_name_into};
use crate::protocol::{
    Extension, MetricType, ParseOptions, Reason, Sample, SampleSink, TagStyle, Value,
    parse_datagram,
};
use crate::registry::{Kind, Registry, Series, SeriesKeyBuf, Update};
use crate::telemetry::{ReceiverStats, is_reserved_name};

/// Ingest switches that outlive one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IngestOptions {
    pub parse: ParseOptions,
    /// Export the DogStatsD `|c:` container id as the `container_id` label.
    pub container_id_label: bool,
    /// Most raw keys one thread caches before it starts over.
    pub cache_capacity: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            parse: ParseOptions::default(),
            container_id_label: true,
            cache_capacity: 100_000,
        }
    }
}

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

/// This thread's map from raw name+type+tags bytes to series, and the buffers of the slow path.
struct SeriesCache {
    map: HashMap<Box<[u8]>, Arc<Series>, ahash::RandomState>,
    capacity: usize,
    container_id_label: bool,
    raw_key: Vec<u8>,
    series_key: SeriesKeyBuf,
    last_conflict_log: Option<Instant>,
}

impl Ingester {
    pub fn new(registry: Arc<Registry>, stats: Arc<ReceiverStats>, options: IngestOptions) -> Self {
        Ingester {
            registry,
            stats,
            options,
            counts: LocalCounts::default(),
            cache: SeriesCache {
                map: HashMap::default(),
                capacity: options.cache_capacity,
                container_id_label: options.container_id_label,
                raw_key: Vec::with_capacity(256),
                series_key: SeriesKeyBuf::default(),
                last_conflict_log: None,
            },
        }
    }

    /// Parses one datagram and applies every sample in it.
    pub fn ingest(&mut self, datagram: &[u8]) {
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
    /// The series a sample belongs to, from the cache or the registry.
    fn lookup(&mut self, registry: &Registry, sample: &Sample<'_>) -> Result<&Arc<Series>, Reason> {
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
        // Two lookups instead of the entry API: the entry API would need an owned key (an
        // allocation) even on a hit.
        if self.map.contains_key(raw_key.as_slice()) {
            return Ok(&self.map[raw_key.as_slice()]);
        }
        let series = self.resolve(registry, sample)?;
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        let entry = self
            .map
            .entry(self.raw_key.as_slice().into())
            .or_insert(series);
        Ok(entry)
    }

    /// The slow path: canonical name and labels, then the registry.
    fn resolve(&mut self, registry: &Registry, sample: &Sample<'_>) -> Result<Arc<Series>, Reason> {
        let kind = kind_of(sample.metric_type);
        let key = &mut self.series_key;
        sanitize_name_into(sample.name, key.start(kind));
        let family = key.family();
        if kind == Kind::Counter && family.len() > "_total".len() && family.ends_with("_total") {
            // `x_total` and `x` are one counter: its samples are called `x_total` either way.
            key.truncate_family(family.len() - "_total".len());
        } else {
            key.end_family();
        }
        if key.family().is_empty() || is_reserved_name(key.family()) {
            return Err(Reason::InvalidName);
        }
        for (tag, value) in sample.tags.iter() {
            key.push_label(|out| label_name_into(tag, out), value);
        }
        if self.container_id_label
            && let Some(container) = sample.container_id
        {
            key.push_label(|out| out.push_str("container_id"), container);
        }
        key.finish();
        let resolved = registry.resolve(key);
        if resolved.is_err() {
            self.log_conflict(sample);
        }
        resolved
    }

    fn log_conflict(&mut self, sample: &Sample<'_>) {
        let now = Instant::now();
        if self
            .last_conflict_log
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(10))
        {
            self.last_conflict_log = Some(now);
            tracing::warn!(
                name = sample.name,
                statsd_type = sample.metric_type.wire(),
                "sample refused: the name is already registered with another type \
                 (counted in tallyd_sample_errors_total{{reason=\"type_conflict\"}}; \
                 this warning is logged at most every 10s per receiver)"
            );
        }
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
            .lookup(registry, sample)
            .and_then(|series| series.apply(update, registry.settings()));
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
