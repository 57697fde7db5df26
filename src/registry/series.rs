//! One series and its state: the [`Cell`] kinds (atomic counters and gauges, histogram buckets,
//! a set's members, a summary's sketch), the [`Update`]s inputs apply to them, and the
//! `last_seen` word that expiry and updates race on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::Mutex;

use super::RegistrySettings;
#[cfg(doc)]
use super::SeriesKeyBuf;
use super::native::{NativeConfig, NativeHistogram, NativeSnapshot};
use crate::record::Refusal;
use crate::summary::SummaryState;

/// An `f64` updated atomically.
#[derive(Debug, Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub fn new(value: f64) -> Self {
        AtomicF64(AtomicU64::new(value.to_bits()))
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    pub fn add(&self, delta: f64) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + delta).to_bits();
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Histogram state: per-bucket counts (not cumulative; the last slot is the `+Inf` overflow)
/// and the sum, and native buckets when the family has them. The count is the total of the
/// buckets, so a scrape always sees `_count == _bucket{le="+Inf"}` even while observations land.
#[derive(Debug)]
pub struct HistogramCell {
    bounds: Arc<[f64]>,
    counts: Box<[AtomicU64]>,
    sum: AtomicF64,
    /// `None` unless the family keeps native buckets: then an observation costs one branch more.
    native: Option<Box<NativeHistogram>>,
}

impl HistogramCell {
    pub(super) fn new(bounds: Arc<[f64]>, native: Option<NativeConfig>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        HistogramCell {
            bounds,
            counts,
            sum: AtomicF64::default(),
            native: native.map(|config| Box::new(NativeHistogram::new(config))),
        }
    }

    /// Records `value` as `weight` observations (a sampled observation stands for 1/rate).
    pub fn observe(&self, value: f64, weight: u64) {
        // `le` semantics: the first bucket whose bound is >= value.
        let index = self.bounds.partition_point(|bound| *bound < value);
        self.counts[index].fetch_add(weight, Ordering::Relaxed);
        self.sum.add(value * weight as f64);
        // After the classic counts, so that a reader who takes the native buckets first (under
        // their lock) then the counts finds every native observation among the counts.
        if let Some(native) = &self.native {
            native.observe(value, weight);
        }
    }

    /// Upper bounds, without the final `+Inf`.
    pub fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Per-bucket counts, one more than [`HistogramCell::bounds`] (the last is the overflow).
    pub fn counts(&self) -> impl Iterator<Item = u64> + '_ {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed))
    }

    pub fn sum(&self) -> f64 {
        self.sum.get()
    }

    /// Whether the histogram keeps native buckets.
    pub fn has_native(&self) -> bool {
        self.native.is_some()
    }

    /// Copies the native buckets into `out` and returns true, or returns false when the
    /// histogram has none. Read them *before* [`HistogramCell::counts`]: the counts read after
    /// then include every native observation, so `_count` is at least the native buckets'
    /// total, as Prometheus requires of a native histogram.
    pub fn read_native(&self, out: &mut NativeSnapshot) -> bool {
        match &self.native {
            Some(native) => {
                native.read(out);
                true
            }
            None => false,
        }
    }
}

/// Set state: member hash → second (since registry start) it was last seen.
#[derive(Debug)]
pub struct SetCell {
    pub(super) members: Mutex<HashMap<u64, u32, ahash::RandomState>>,
}

/// Summary state: a windowed quantile sketch behind a short lock, and the registry clock it
/// rotates its window by.
#[derive(Debug)]
pub struct SummaryCell {
    pub(super) state: Mutex<SummaryState>,
    pub(super) clock: Arc<AtomicU32>,
}

impl SummaryCell {
    /// Calls `quantile(q, value)` for each configured quantile over the current window (NaN
    /// when the window is empty), and returns the cumulative `(sum, count)`.
    pub fn read(&self, quantile: impl FnMut(f64, f64)) -> (f64, u64) {
        let mut state = self.state.lock();
        state.quantiles(self.clock.load(Ordering::Relaxed), quantile);
        (state.sum(), state.count())
    }
}

/// The state of one series.
#[derive(Debug)]
pub enum Cell {
    Counter(AtomicF64),
    Gauge(AtomicF64),
    Histogram(Box<HistogramCell>),
    Set(Box<SetCell>),
    Summary(Box<SummaryCell>),
}

/// One series: its identity, its pre-escaped label text and its state.
#[derive(Debug)]
pub struct Series {
    /// The canonical key (see [`SeriesKeyBuf`]); its tail is the escaped label text.
    pub(super) key: Box<str>,
    /// Where the label text starts in `key`.
    pub(super) labels_at: u32,
    /// Unix seconds at creation, for OpenMetrics `_created`.
    pub(super) created: f64,
    /// Registry-clock second of the last update, or [`DEAD`] once expiry removed the series.
    pub(super) last_seen: AtomicU32,
    /// Idle seconds after which expiry removes the series; 0 = never.
    pub(super) ttl_secs: u32,
    pub(super) cell: Cell,
}

/// The `last_seen` of a series that expiry has removed from the registry.
pub(super) const DEAD: u32 = u32::MAX;

/// A change to one series, derived from one sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Update {
    /// Counter increment (already divided by the sample rate).
    Add(f64),
    /// Gauge: set absolute value.
    Set(f64),
    /// Gauge: signed delta.
    Delta(f64),
    /// Histogram: `weight` observations of `value`.
    Observe { value: f64, weight: u64 },
    /// Set: a member (hashed), seen at `now` (seconds since registry start).
    Member { hash: u64, now: u32 },
}

impl Update {
    /// The number the update carries (0 for a set member, which has none).
    fn value(self) -> f64 {
        match self {
            Update::Add(v) | Update::Set(v) | Update::Delta(v) => v,
            Update::Observe { value, .. } => value,
            Update::Member { .. } => 0.0,
        }
    }

    /// The update with its value multiplied by `factor` (a mapping rule's `scale`). Counts
    /// (weights) and set members are left alone.
    pub fn scaled(self, factor: f64) -> Update {
        if factor == 1.0 {
            return self;
        }
        match self {
            Update::Add(v) => Update::Add(v * factor),
            Update::Set(v) => Update::Set(v * factor),
            Update::Delta(v) => Update::Delta(v * factor),
            Update::Observe { value, weight } => Update::Observe {
                value: value * factor,
                weight,
            },
            member @ Update::Member { .. } => member,
        }
    }
}

impl Series {
    /// Marks the series as updated at `now` (registry clock). Call before [`Series::apply`]:
    /// `false` means expiry has removed the series and the caller must resolve it again, so an
    /// update never lands in a series no scrape will see.
    ///
    /// Expiry and this race on one word: expiry swaps an old `last_seen` for a "dead" mark with a
    /// compare-exchange, and this refreshes it the same way, so exactly one of them wins.
    /// Within one second of the last touch it is a single relaxed load.
    pub fn touch(&self, now: u32) -> bool {
        let mut seen = self.last_seen.load(Ordering::Relaxed);
        loop {
            if seen == DEAD {
                return false;
            }
            if seen >= now {
                return true;
            }
            match self.last_seen.compare_exchange_weak(
                seen,
                now,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => seen = actual,
            }
        }
    }

    /// Claims the series for removal if it has been idle longer than its TTL at `now`.
    pub(super) fn expire(&self, now: u32) -> bool {
        let ttl = self.ttl_secs;
        let seen = self.last_seen.load(Ordering::Relaxed);
        ttl != 0
            && seen != DEAD
            && seen.saturating_add(ttl) < now
            && self
                .last_seen
                .compare_exchange(seen, DEAD, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// The family name, as spelled in the key.
    pub fn family_name(&self) -> &str {
        &self.key[1..self.labels_at as usize - 1]
    }

    /// `name="value",...` escaped for the text formats, without braces; empty without labels.
    pub fn labels(&self) -> &str {
        &self.key[self.labels_at as usize..]
    }

    pub fn created(&self) -> f64 {
        self.created
    }

    pub fn cell(&self) -> &Cell {
        &self.cell
    }

    /// Applies `update`. Lock-free for every kind but sets; an update of the wrong kind for
    /// this series is ignored (the ingest path only builds matching ones).
    pub fn apply(&self, update: Update, settings: &RegistrySettings) -> Result<(), Refusal> {
        if !update.value().is_finite() {
            return Err(Refusal::NonFiniteValue);
        }
        match (&self.cell, update) {
            (Cell::Counter(_), Update::Add(delta)) if delta < 0.0 => {
                return Err(Refusal::NegativeCounter);
            }
            (Cell::Counter(v), Update::Add(delta)) => v.add(delta),
            (Cell::Gauge(v), Update::Set(value)) => v.set(value),
            (Cell::Gauge(v), Update::Delta(delta)) => v.add(delta),
            (Cell::Histogram(h), Update::Observe { value, weight }) => h.observe(value, weight),
            (Cell::Summary(summary), Update::Observe { value, weight }) => {
                let now = summary.clock.load(Ordering::Relaxed);
                if !summary.state.lock().observe(value, weight, now) {
                    return Err(Refusal::NonFiniteValue);
                }
            }
            (Cell::Set(set), Update::Member { hash, now }) => {
                let mut members = set.members.lock();
                if members.len() >= settings.max_set_members && !members.contains_key(&hash) {
                    let oldest_kept = now.saturating_sub(settings.set_window_secs);
                    members.retain(|_, seen| *seen >= oldest_kept);
                    if members.len() >= settings.max_set_members {
                        return Err(Refusal::SetFull);
                    }
                }
                members.insert(hash, now);
            }
            _ => debug_assert!(false, "update {update:?} does not fit {:?}", self.cell),
        }
        Ok(())
    }

    /// For sets: the number of members seen in the window ending at `now`; expired ones are
    /// forgotten on the way.
    pub fn set_cardinality(&self, now: u32, window_secs: u32) -> u64 {
        let Cell::Set(set) = &self.cell else { return 0 };
        let oldest_kept = now.saturating_sub(window_secs);
        let mut members = set.members.lock();
        members.retain(|_, seen| *seen >= oldest_kept);
        members.len() as u64
    }
}
