//! Summary state: quantiles over a sliding time window, in bounded memory, with a relative
//! error bound; and the cumulative `_sum` and `_count` of a Prometheus summary.
//!
//! # The sketch
//!
//! Quantiles come from a relative-error sketch in the style of DDSketch (Masson, Rim, Lee,
//! VLDB 2019). With relative accuracy `α` (default 1 %, [`SummaryConfig::relative_accuracy`])
//! let `γ = (1 + α) / (1 − α)`. A positive value `x` falls in bucket `k = ⌈ln x / ln γ⌉`, the
//! interval `(γ^(k−1), γ^k]`, and every value of that bucket is reported as
//! `2·γ^k / (γ + 1)`, which is within `α·x` of each of them. A negative value uses the bucket
//! of its magnitude, in a separate set of buckets; zero (and any magnitude below
//! `f64::MIN_POSITIVE` ≈ 2.2e−308, i.e. subnormals) is a count of its own. Bucket counts are
//! `u64` weights: a StatsD observation sampled at rate `r` weighs `round(1/r)`, and weighs that
//! much in every quantile.
//!
//! ## The error bound
//!
//! Let the window (below) hold `n > 0` observations, an observation of weight `w` counting as
//! `w` equal ones, sorted `x₍₀₎ ≤ … ≤ x₍ₙ₋₁₎`. For a quantile `q ∈ [0, 1]` let
//! `x_q = x₍⌊q·(n−1)⌋₎`, the exact rank-`q` value. The value `v` that
//! [`SummaryState::quantiles`] reports for `q` satisfies
//!
//! ```text
//! |v − x_q| ≤ α·|x_q|
//! ```
//!
//! provided `x_q` was not merged by a collapse (below) and `|x_q|` is not subnormal. Why: the
//! sketch maps every observation `x` to a representative `r(x)` through a non-decreasing map
//! (bucket, then the bucket's value), and the rank walk returns `r(x_q)` exactly, which is
//! within `α·|x_q|` of `x_q`. The result is then clamped to the window's exact minimum and
//! maximum, which never moves it away from `x_q`; rank 0 and rank `n − 1` (so `q = 0` and
//! `q = 1`) report the exact minimum and maximum. Zero is reported as exactly 0. (Internally
//! the sketch uses `α − (α·10⁻⁹ + 10⁻¹²)`, which absorbs the rounding of `ln` and `exp`
//! (below 10⁻¹² relative), so the bound holds as stated in floating point.) An empty window
//! reports NaN for every quantile, the Prometheus convention.
//!
//! ## Collapsing, and what it does to the lowest quantiles
//!
//! Each sign of each sub-sketch keeps at most [`SummaryConfig::max_buckets`] buckets (default
//! 2048), a contiguous range of bucket indices. An observation that would stretch the range
//! past that makes the sub-sketch *collapse*: the lowest *values* of that sign are merged into
//! the lowest bucket kept (for positive values that is the smallest magnitudes, for negative
//! values the largest), and the range slides up. A merged observation is from then on counted
//! as a value of that bucket, which is higher than its own. Counts are never lost, only moved
//! up. What that does to a quantile: for each sign, call *threshold* the highest of the
//! lowest buckets kept by the live sub-sketches that collapsed.
//!
//! - If `x_q` is of a sign without collapse, or lies in the threshold bucket or above it, the
//!   bound above holds unchanged: merging moved counts only from below the threshold into
//!   buckets at or below it, so the rank walk still stops at `x_q`'s bucket.
//! - If `x_q` lies below the threshold (the lowest values of its sign), the result is biased
//!   upwards with no relative bound: `(1 − α)·x_q ≤ v ≤` the threshold bucket's value (and
//!   the exact minimum for `q = 0`).
//!
//! So with values of one sign only the lowest quantiles can be affected (with both signs, the
//! smallest positive values too). With the defaults a sub-sketch spans a ratio of
//! `γ^2048 ≈ 6·10^17` between its smallest and largest value of a sign before it collapses
//! (1 ns to 19 years, in seconds): real latency data never does. [`SummaryState::collapsed`]
//! tells whether a live sub-sketch has; the next use of its slot starts afresh.
//!
//! # The window
//!
//! Like the summaries of Prometheus' client_golang, quantiles cover roughly the last
//! [`SummaryConfig::max_age_secs`] (default 600 s) through
//! [`SummaryConfig::age_buckets`] (default 5) sub-sketches in a ring. Time is the caller's
//! clock in whole seconds (the registry clock); nothing here reads the system clock. Slots are
//! `w = max_age_secs / age_buckets` seconds (rounded down; 120 s by default), aligned to
//! multiples of `w`. Observations go to the sub-sketch of the current slot; when the clock
//! enters a new slot the oldest sub-sketch is cleared and becomes the current one. A query
//! merges all of them (for DDSketch that is adding bucket counts; the rank walk does it on the
//! fly, allocating nothing). So an observation made at second `t` is in the window at second
//! `now` when `⌊now/w⌋ − ⌊t/w⌋ < age_buckets`: always while `now − t < (age_buckets − 1)·w`
//! (480 s by default), never once `now − t ≥ age_buckets·w` (600 s). An observation whose
//! `now` is behind the current slot (a thread with a stale clock) goes to the current slot.
//!
//! `_sum` and `_count` ([`SummaryState::sum`], [`SummaryState::count`]) are cumulative over
//! the life of the series, as Prometheus summaries define them, not windowed.
//!
//! # Memory and cost
//!
//! A sign's bucket array is allocated when the sub-sketch first sees a value of that sign, 64
//! buckets, and grown to the key span in use (rounded up to 64 buckets, with at least 32 to
//! spare) as needed, up to `max_buckets`; it is never shrunk: a cleared sub-sketch keeps its
//! arrays for the next slot. So in the steady state `observe` allocates nothing, and an array
//! grows (allocates) only when its ring slot sees a wider span of values than it ever has
//! before, at most `max_buckets / 64` times per array over the life of the series. Per
//! series:
//!
//! - fixed: [`SummaryState::memory_bytes`] of a fresh state, about 100 bytes plus about 100
//!   per age bucket (≈ 0.6 KiB with 5);
//! - typical: about `ln(max/min) / (2α)` buckets of 8 bytes per sign in use, per age bucket:
//!   latencies spanning three decades (1 ms to 1 s) at 1 % take 346 buckets, a 384-bucket
//!   array of 3 KiB, so ≈ 16 KiB per series once all 5 slots have seen traffic; a
//!   log-normal spread (σ = 1.3, so 99.99 % within four decades) ≈ 23 KiB;
//! - worst case: `age_buckets × 2 × max_buckets × 8` bytes plus the fixed part, 160 KiB with
//!   the defaults ([`SummaryConfig::max_memory_bytes`]).
//!
//! `observe` costs one `ln`, an index and an add; a query walks the buckets in use of every
//! sub-sketch once for all quantiles (when they are listed in ascending order).
//!
//! The state has no synchronisation of its own: the registry keeps it behind a mutex.

use std::ops::ControlFlow;
use std::sync::Arc;

/// Default quantiles: the median, p90 and p99 (statsd_exporter's defaults too).
pub const DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];
/// Default window: 10 minutes, as in Prometheus' client_golang.
pub const DEFAULT_MAX_AGE_SECS: u32 = 600;
/// Default number of sub-sketches the window rotates through, as in client_golang.
pub const DEFAULT_AGE_BUCKETS: u32 = 5;
/// Default relative accuracy `α`: 1 %.
pub const DEFAULT_RELATIVE_ACCURACY: f64 = 0.01;
/// Default bound on the buckets per sign of one sub-sketch.
pub const DEFAULT_MAX_BUCKETS: u32 = 2048;

/// The smallest relative accuracy accepted: below it bucket indices would not fit an `i32`
/// and float rounding would eat into the bound.
pub const MIN_RELATIVE_ACCURACY: f64 = 1e-6;
/// The most age buckets accepted (each is a sub-sketch, up to `2 × max_buckets × 8` bytes).
pub const MAX_AGE_BUCKETS: u32 = 60;
/// The accepted range of [`SummaryConfig::max_buckets`].
pub const MAX_BUCKETS_RANGE: std::ops::RangeInclusive<u32> = 16..=65536;

/// Bucket arrays are allocated and grown in steps of this many buckets.
const CHUNK: usize = 64;

/// How a summary family computes its quantiles. Cheap to clone (the quantiles are shared).
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryConfig {
    /// The quantiles to report, each in `[0, 1]`, no duplicates. They are reported in this
    /// order; ascending order (the Prometheus convention) takes a single pass per query.
    pub quantiles: Arc<[f64]>,
    /// The window: observations older than this are never reported (see the module doc).
    pub max_age_secs: u32,
    /// Sub-sketches the window rotates through: `max_age_secs / age_buckets` seconds each.
    pub age_buckets: u32,
    /// `α`: a reported quantile is within `α·|x|` of the exact one, `x`.
    pub relative_accuracy: f64,
    /// Buckets per sign of one sub-sketch, the memory bound; past it the lowest values of the
    /// sign are merged (see the module doc).
    pub max_buckets: u32,
}

impl Default for SummaryConfig {
    fn default() -> Self {
        SummaryConfig {
            quantiles: Arc::from(DEFAULT_QUANTILES),
            max_age_secs: DEFAULT_MAX_AGE_SECS,
            age_buckets: DEFAULT_AGE_BUCKETS,
            relative_accuracy: DEFAULT_RELATIVE_ACCURACY,
            max_buckets: DEFAULT_MAX_BUCKETS,
        }
    }
}

impl SummaryConfig {
    /// The defaults with these quantiles, if given, put in ascending order (the order
    /// Prometheus lists them in, and the one a single rank walk answers them in).
    pub fn with_quantiles(quantiles: Option<&[f64]>) -> Self {
        let mut config = SummaryConfig::default();
        if let Some(quantiles) = quantiles {
            let mut sorted = quantiles.to_vec();
            sorted.sort_by(f64::total_cmp);
            config.quantiles = sorted.into();
        }
        config
    }

    /// Checks every field; the message names the field and the bad value.
    pub fn validate(&self) -> Result<(), String> {
        crate::validate::quantiles(&self.quantiles)?;
        if self.age_buckets == 0 || self.age_buckets > MAX_AGE_BUCKETS {
            return Err(format!(
                "age_buckets is between 1 and {MAX_AGE_BUCKETS}, got {}",
                self.age_buckets
            ));
        }
        if self.max_age_secs < self.age_buckets {
            return Err(format!(
                "max_age ({} s) must be at least one second per age bucket ({})",
                self.max_age_secs, self.age_buckets
            ));
        }
        if !(MIN_RELATIVE_ACCURACY..1.0).contains(&self.relative_accuracy) {
            return Err(format!(
                "relative_accuracy is at least {MIN_RELATIVE_ACCURACY} and below 1, got {}",
                self.relative_accuracy
            ));
        }
        if !MAX_BUCKETS_RANGE.contains(&self.max_buckets) {
            return Err(format!(
                "max_buckets is between {} and {}, got {}",
                MAX_BUCKETS_RANGE.start(),
                MAX_BUCKETS_RANGE.end(),
                self.max_buckets
            ));
        }
        Ok(())
    }

    /// The most heap and inline bytes one series' [`SummaryState`] can take (its
    /// [`SummaryState::memory_bytes`] never exceeds this), not counting the shared quantiles.
    pub fn max_memory_bytes(&self) -> usize {
        let subs = self.age_buckets.clamp(1, MAX_AGE_BUCKETS) as usize;
        let buckets =
            self.max_buckets
                .clamp(*MAX_BUCKETS_RANGE.start(), *MAX_BUCKETS_RANGE.end()) as usize;
        size_of::<SummaryState>() + subs * (size_of::<Sub>() + 2 * buckets * size_of::<u64>())
    }
}

/// The buckets of one sign of one sub-sketch: a dense array of counts over a contiguous range
/// of bucket indices ("keys").
#[derive(Debug, Default)]
struct Store {
    /// `counts[i]` is the count of key `offset + i`. Every cell outside `lo..=hi` is zero.
    counts: Box<[u64]>,
    /// The key of `counts[0]`.
    offset: i32,
    /// The lowest and highest key with a count; meaningful only while `total > 0`.
    lo: i32,
    hi: i32,
    total: u64,
    /// Whether keys were merged since the last clear.
    collapsed: bool,
}

impl Store {
    #[inline]
    fn add(&mut self, key: i32, weight: u64, max_buckets: usize) {
        let index = (i64::from(key) - i64::from(self.offset)) as usize;
        if self.total != 0 && index < self.counts.len() {
            self.counts[index] = self.counts[index].saturating_add(weight);
            self.lo = self.lo.min(key);
            self.hi = self.hi.max(key);
        } else {
            self.add_slow(key, weight, max_buckets);
        }
        self.total = self.total.saturating_add(weight);
    }

    /// `add` for an empty store or a key outside the array: (re)place, grow, or collapse.
    #[cold]
    fn add_slow(&mut self, key: i32, weight: u64, max_buckets: usize) {
        if self.total == 0 {
            if self.counts.is_empty() {
                self.counts = vec![0; CHUNK.min(max_buckets)].into_boxed_slice();
            }
            // Every cell is zero: centre the array on the key.
            self.offset = key - (self.counts.len() / 2) as i32;
            self.lo = key;
            self.hi = key;
            self.counts[(key - self.offset) as usize] = weight;
            return;
        }
        let (lo, hi, max) = (i64::from(self.lo), i64::from(self.hi), max_buckets as i64);
        let mut key = i64::from(key);
        let new_hi = hi.max(key);
        let mut new_lo = lo.min(key);
        let mut carry = 0u64;
        if new_hi - new_lo + 1 > max {
            // Collapse: keep the top `max` keys, merge everything below into the lowest kept.
            self.collapsed = true;
            new_lo = new_hi - max + 1;
            key = key.max(new_lo);
            let off = i64::from(self.offset);
            for k in lo..=hi.min(new_lo - 1) {
                let cell = &mut self.counts[(k - off) as usize];
                carry = carry.saturating_add(*cell);
                *cell = 0;
            }
        }
        // The stored keys that survive (an empty range if all were merged).
        let (keep_lo, keep_hi) = (lo.max(new_lo), hi);
        let off = i64::from(self.offset);
        let len = self.counts.len();
        if new_lo < off || new_hi >= off + len as i64 {
            let span = (new_hi - new_lo + 1) as usize;
            if span > len {
                let new_len = (span + CHUNK / 2).next_multiple_of(CHUNK).min(max_buckets);
                let new_off = new_lo - ((new_len - span) / 2) as i64;
                let mut counts = vec![0u64; new_len].into_boxed_slice();
                if keep_lo <= keep_hi {
                    counts[(keep_lo - new_off) as usize..=(keep_hi - new_off) as usize]
                        .copy_from_slice(
                            &self.counts[(keep_lo - off) as usize..=(keep_hi - off) as usize],
                        );
                }
                self.counts = counts;
                self.offset = new_off as i32;
            } else {
                // It fits: shift in place, the free cells split evenly on both sides.
                let new_off = new_lo - ((len - span) / 2) as i64;
                if keep_lo <= keep_hi {
                    let (from, to) = ((keep_lo - off) as usize, (keep_lo - new_off) as usize);
                    let n = (keep_hi - keep_lo + 1) as usize;
                    self.counts.copy_within(from..from + n, to);
                    self.counts[..to].fill(0);
                    self.counts[to + n..].fill(0);
                }
                self.offset = new_off as i32;
            }
        }
        let off = i64::from(self.offset);
        self.lo = new_lo as i32;
        self.hi = new_hi as i32;
        let floor = &mut self.counts[(new_lo - off) as usize];
        *floor = floor.saturating_add(carry);
        let cell = &mut self.counts[(key - off) as usize];
        *cell = cell.saturating_add(weight);
    }

    /// Empties the store, keeping its array.
    fn clear(&mut self) {
        if self.total != 0 {
            let off = i64::from(self.offset);
            let (a, b) = (
                (i64::from(self.lo) - off) as usize,
                (i64::from(self.hi) - off) as usize,
            );
            self.counts[a..=b].fill(0);
        }
        self.total = 0;
        self.collapsed = false;
    }
}

/// The observations of one slot of the window.
#[derive(Debug)]
struct Sub {
    /// Negative values, by the negated key of their magnitude: ascending keys are ascending
    /// values, so "collapse the lowest keys" merges the lowest values for both signs.
    neg: Store,
    pos: Store,
    /// Zeros and subnormals.
    zero: u64,
    /// The exact extremes, for clamping (`+∞`/`−∞` while empty).
    min: f64,
    max: f64,
}

impl Default for Sub {
    fn default() -> Self {
        Sub {
            neg: Store::default(),
            pos: Store::default(),
            zero: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

impl Sub {
    fn total(&self) -> u64 {
        self.neg
            .total
            .saturating_add(self.pos.total)
            .saturating_add(self.zero)
    }

    fn clear(&mut self) {
        self.neg.clear();
        self.pos.clear();
        self.zero = 0;
        self.min = f64::INFINITY;
        self.max = f64::NEG_INFINITY;
    }
}

/// The state of one summary series: the windowed sketch, `_sum` and `_count`.
#[derive(Debug)]
pub struct SummaryState {
    quantiles: Arc<[f64]>,
    /// The ring of sub-sketches; `subs[head]` takes the observations of the current slot.
    subs: Box<[Sub]>,
    /// `ln γ` and `1 / ln γ`.
    ln_gamma: f64,
    inv_ln_gamma: f64,
    /// `ln((1 + γ) / 2)`: a bucket's value is `exp(k·ln γ − repr_shift)`.
    repr_shift: f64,
    sum: f64,
    count: u64,
    /// Slot width `w`, in seconds.
    slot_secs: u32,
    /// The current slot's number (`now / w`), its index in `subs`, and its end (exclusive).
    head_slot: u32,
    head: u32,
    head_end: u32,
    max_buckets: u32,
}

impl SummaryState {
    /// A fresh series at `now` (registry clock). `config` should have passed
    /// [`SummaryConfig::validate`]; out-of-range values are clamped into range here.
    pub fn new(config: &SummaryConfig, now: u32) -> Self {
        debug_assert_eq!(config.validate(), Ok(()));
        let age_buckets = config.age_buckets.clamp(1, MAX_AGE_BUCKETS);
        let slot_secs = (config.max_age_secs / age_buckets).max(1);
        let alpha = if config.relative_accuracy.is_nan() {
            DEFAULT_RELATIVE_ACCURACY
        } else {
            config
                .relative_accuracy
                .clamp(MIN_RELATIVE_ACCURACY, 1.0 - 1e-9)
        };
        // A hair tighter than asked, so that rounding in ln/exp (≤ ~4e-13 relative) cannot
        // push an error past `alpha`.
        let alpha = alpha - (alpha * 1e-9 + 1e-12);
        let ln_gamma = alpha.ln_1p() - (-alpha).ln_1p();
        let repr_shift = (ln_gamma.exp_m1() / 2.0).ln_1p();
        let head_slot = now / slot_secs;
        SummaryState {
            quantiles: Arc::clone(&config.quantiles),
            subs: (0..age_buckets).map(|_| Sub::default()).collect(),
            ln_gamma,
            inv_ln_gamma: 1.0 / ln_gamma,
            repr_shift,
            sum: 0.0,
            count: 0,
            slot_secs,
            head_slot,
            head: 0,
            head_end: slot_end(head_slot, slot_secs),
            max_buckets: config
                .max_buckets
                .clamp(*MAX_BUCKETS_RANGE.start(), *MAX_BUCKETS_RANGE.end()),
        }
    }

    /// Records `value` as `weight` observations at `now` (a StatsD sample at rate `r` weighs
    /// `round(1/r)`). A non-finite value is refused (`false`) and changes nothing; weight 0
    /// records nothing.
    #[inline]
    pub fn observe(&mut self, value: f64, weight: u64, now: u32) -> bool {
        if !value.is_finite() {
            return false;
        }
        if weight == 0 {
            return true;
        }
        let value = value + 0.0; // −0 is 0: the extremes are reported as is
        if now >= self.head_end {
            self.rotate(now);
        }
        self.count = self.count.saturating_add(weight);
        self.sum += value * weight as f64;
        let max_buckets = self.max_buckets as usize;
        let sub = &mut self.subs[self.head as usize];
        sub.min = sub.min.min(value);
        sub.max = sub.max.max(value);
        let magnitude = value.abs();
        if magnitude >= f64::MIN_POSITIVE {
            // |ln| ≤ 710 and 1/ln γ ≤ 5e5, so the key fits an i32 with room to spare.
            // ⌈t⌉ by hand: `f64::ceil` is a libm call on baseline x86-64 (no SSE4.1).
            let t = magnitude.ln() * self.inv_ln_gamma;
            let truncated = t as i32;
            let key = truncated + i32::from((truncated as f64) < t);
            if value > 0.0 {
                sub.pos.add(key, weight, max_buckets);
            } else {
                sub.neg.add(-key, weight, max_buckets);
            }
        } else {
            sub.zero = sub.zero.saturating_add(weight);
        }
        true
    }

    /// Reports `(q, value)` for every configured quantile, in the configured order, over the
    /// window ending at `now` (which first drops what has aged out). An empty window gives NaN.
    pub fn quantiles(&mut self, now: u32, mut out: impl FnMut(f64, f64)) {
        if now >= self.head_end {
            self.rotate(now);
        }
        let quantiles = &*self.quantiles;
        let total = self
            .subs
            .iter()
            .fold(0u64, |n, sub| n.saturating_add(sub.total()));
        if total == 0 {
            for &q in quantiles {
                out(q, f64::NAN);
            }
            return;
        }
        let (min, max) = self
            .subs
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), sub| {
                (min.min(sub.min), max.max(sub.max))
            });
        let rank_of = |q: f64| ((q * (total - 1) as f64).floor() as u64).min(total - 1);
        let mut i = 0;
        while i < quantiles.len() {
            // One ascending walk serves a run of quantiles with non-decreasing ranks; a
            // quantile listed after a larger one starts a new walk.
            let start = i;
            let mut rank = rank_of(quantiles[i]);
            let mut seen = 0u64;
            let _ = self.for_each_bucket(|bucket, count| {
                seen = seen.saturating_add(count);
                while rank < seen {
                    // x₍₀₎ and x₍ₙ₋₁₎ are known exactly.
                    let v = if rank == 0 {
                        min
                    } else if rank == total - 1 {
                        max
                    } else {
                        self.value_of(bucket).max(min).min(max)
                    };
                    out(quantiles[i], v);
                    i += 1;
                    if i == quantiles.len() {
                        return ControlFlow::Break(());
                    }
                    let next = rank_of(quantiles[i]);
                    if next < rank {
                        return ControlFlow::Break(());
                    }
                    rank = next;
                }
                ControlFlow::Continue(())
            });
            if i == start {
                // Only reachable if counts saturated at u64::MAX.
                out(quantiles[i], max);
                i += 1;
            }
        }
    }

    /// `_sum`: the weighted sum of every observation since the series was created.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `_count`: the total weight of every observation since the series was created.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether a sub-sketch still in the window (as of the last `observe` or `quantiles`) has
    /// merged buckets, so that its lowest values are over-estimated (see the module doc).
    pub fn collapsed(&self) -> bool {
        self.subs.iter().any(|s| s.neg.collapsed || s.pos.collapsed)
    }

    /// Bytes this state takes: inline, the ring and the bucket arrays (not the quantile list,
    /// which the family shares). At most [`SummaryConfig::max_memory_bytes`].
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self
                .subs
                .iter()
                .map(|s| size_of::<Sub>() + (s.neg.counts.len() + s.pos.counts.len()) * 8)
                .sum::<usize>()
    }

    /// Moves the head to the slot of `now`, clearing the sub-sketches of the slots skipped.
    #[cold]
    fn rotate(&mut self, now: u32) {
        let slot = now / self.slot_secs;
        let n = self.subs.len() as u32;
        let elapsed = slot.saturating_sub(self.head_slot);
        for _ in 0..elapsed.min(n) {
            self.head = if self.head + 1 == n { 0 } else { self.head + 1 };
            self.subs[self.head as usize].clear();
        }
        self.head_slot = self.head_slot.max(slot);
        self.head_end = slot_end(self.head_slot, self.slot_secs);
    }

    /// Calls `f(bucket, count)` for every non-empty bucket of the window in ascending order
    /// of value, the sub-sketches merged.
    fn for_each_bucket(
        &self,
        mut f: impl FnMut(Bucket, u64) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        walk_union(&self.subs, |s| &s.neg, Bucket::Neg, &mut f)?;
        let zeros = self.subs.iter().fold(0u64, |n, s| n.saturating_add(s.zero));
        if zeros > 0 {
            f(Bucket::Zero, zeros)?;
        }
        walk_union(&self.subs, |s| &s.pos, Bucket::Pos, &mut f)
    }

    /// The value reported for the observations in `bucket`.
    fn value_of(&self, bucket: Bucket) -> f64 {
        match bucket {
            Bucket::Neg(key) => -self.bucket_value(-key),
            Bucket::Zero => 0.0,
            Bucket::Pos(key) => self.bucket_value(key),
        }
    }

    /// The value reported for the observations in positive bucket `key`: `2·γ^k / (γ + 1)`.
    #[inline]
    fn bucket_value(&self, key: i64) -> f64 {
        (key as f64 * self.ln_gamma - self.repr_shift).exp()
    }

    /// The window's total weight at `now`.
    #[cfg(test)]
    fn window_count(&mut self, now: u32) -> u64 {
        if now >= self.head_end {
            self.rotate(now);
        }
        self.subs.iter().map(Sub::total).sum()
    }
}

/// A bucket of the merged window, by key (for negative values: the negated key of the
/// magnitude, see [`Sub::neg`]).
#[derive(Clone, Copy, Debug)]
enum Bucket {
    Neg(i64),
    Zero,
    Pos(i64),
}

/// The first second after slot `slot`, saturating at the end of the clock.
fn slot_end(slot: u32, slot_secs: u32) -> u32 {
    (u64::from(slot) + 1)
        .saturating_mul(u64::from(slot_secs))
        .min(u64::from(u32::MAX)) as u32
}

/// Visits, in ascending key order, the keys in use in any of the subs' stores picked by
/// `store`, with their summed counts. Merges the stores block by block into a small buffer on
/// the stack (no allocation), stepping over gaps between their ranges: the cost is about the
/// sum of the ranges in use plus their union.
fn walk_union(
    subs: &[Sub],
    store: fn(&Sub) -> &Store,
    bucket: fn(i64) -> Bucket,
    f: &mut impl FnMut(Bucket, u64) -> ControlFlow<()>,
) -> ControlFlow<()> {
    const BLOCK: usize = 128;
    let stores = || subs.iter().map(store).filter(|s| s.total != 0);
    let (Some(mut key), Some(last)) = (
        stores().map(|s| i64::from(s.lo)).min(),
        stores().map(|s| i64::from(s.hi)).max(),
    ) else {
        return ControlFlow::Continue(());
    };
    let mut block = [0u64; BLOCK];
    while key <= last {
        let block_last = (key + BLOCK as i64 - 1).min(last);
        let mut any = false;
        for s in stores() {
            let (from, to) = (key.max(i64::from(s.lo)), block_last.min(i64::from(s.hi)));
            if from <= to {
                any = true;
                let off = i64::from(s.offset);
                let src = &s.counts[(from - off) as usize..=(to - off) as usize];
                let dst = &mut block[(from - key) as usize..=(to - key) as usize];
                for (d, c) in dst.iter_mut().zip(src) {
                    *d = d.saturating_add(*c);
                }
            }
        }
        if !any {
            // A gap: jump to the next range that starts after it.
            match stores()
                .map(|s| i64::from(s.lo))
                .filter(|&lo| lo > key)
                .min()
            {
                Some(next) => key = next,
                None => break,
            }
            continue;
        }
        for (i, cell) in block[..=(block_last - key) as usize].iter_mut().enumerate() {
            let count = std::mem::take(cell);
            if count != 0 {
                f(bucket(key + i as i64), count)?;
            }
        }
        key = block_last + 1;
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// splitmix64: deterministic data without a rand dependency.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in (0, 1].
        fn unit(&mut self) -> f64 {
            ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
        }
    }

    fn config(quantiles: &[f64], alpha: f64) -> SummaryConfig {
        SummaryConfig {
            quantiles: Arc::from(quantiles),
            relative_accuracy: alpha,
            ..SummaryConfig::default()
        }
    }

    const QS: [f64; 13] = [
        0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0,
    ];

    fn reported(state: &mut SummaryState, now: u32) -> Vec<(f64, f64)> {
        let mut got = Vec::new();
        state.quantiles(now, |q, v| got.push((q, v)));
        got
    }

    /// The exact rank-q value of weighted observations, per the module doc.
    fn exact(values: &[(f64, u64)], q: f64) -> f64 {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n: u64 = sorted.iter().map(|v| v.1).sum();
        let rank = ((q * (n - 1) as f64).floor() as u64).min(n - 1);
        let mut seen = 0;
        for (value, weight) in sorted {
            seen += weight;
            if rank < seen {
                return value;
            }
        }
        unreachable!()
    }

    /// Feeds `values` at one instant and checks every quantile of `QS` against the bound.
    fn check_within_bound(values: &[(f64, u64)], alpha: f64) {
        check_config(values, &config(&QS, alpha));
    }

    fn check_config(values: &[(f64, u64)], config: &SummaryConfig) {
        let alpha = config.relative_accuracy;
        let mut state = SummaryState::new(config, 1000);
        for &(value, weight) in values {
            assert!(state.observe(value, weight, 1000));
        }
        assert!(!state.collapsed());
        let got = reported(&mut state, 1000);
        assert_eq!(got.len(), QS.len());
        for (q, v) in got {
            let x = exact(values, q);
            assert!(
                (v - x).abs() <= alpha * x.abs(),
                "q={q}: got {v}, exact {x}, error {} > {}",
                ((v - x) / x).abs(),
                alpha
            );
        }
    }

    #[test]
    fn default_config_is_valid_and_matches_client_golang() {
        let c = SummaryConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(&*c.quantiles, &[0.5, 0.9, 0.99]);
        assert_eq!((c.max_age_secs, c.age_buckets), (600, 5));
        assert_eq!(c.relative_accuracy, 0.01);
    }

    #[test]
    fn validate_rejects_out_of_range_fields() {
        let ok = SummaryConfig::default();
        let bad = [
            config(&[0.5, 1.5], 0.01),
            config(&[f64::NAN], 0.01),
            config(&[-0.1], 0.01),
            config(&[0.9, 0.9], 0.01),
            config(&[0.5], 0.0),
            config(&[0.5], 1.0),
            config(&[0.5], -0.01),
            config(&[0.5], f64::NAN),
            SummaryConfig {
                age_buckets: 0,
                ..ok.clone()
            },
            SummaryConfig {
                age_buckets: 1000,
                max_age_secs: 100_000,
                ..ok.clone()
            },
            SummaryConfig {
                max_age_secs: 4,
                ..ok.clone()
            },
            SummaryConfig {
                max_buckets: 8,
                ..ok.clone()
            },
        ];
        for c in bad {
            assert!(c.validate().is_err(), "{c:?}");
        }
        assert_eq!(config(&[], 0.01).validate(), Ok(()));
        assert_eq!(config(&[0.99, 0.0, 1.0], 0.5).validate(), Ok(()));
    }

    #[test]
    fn uniform_data_is_within_alpha() {
        let mut rng = Rng(1);
        let values: Vec<_> = (0..50_000).map(|_| (rng.unit() * 1000.0, 1)).collect();
        check_within_bound(&values, 0.01);
    }

    #[test]
    fn exponential_data_is_within_alpha() {
        let mut rng = Rng(2);
        let values: Vec<_> = (0..50_000).map(|_| (-rng.unit().ln() * 0.05, 1)).collect();
        check_within_bound(&values, 0.01);
    }

    #[test]
    fn heavy_tailed_data_is_within_alpha() {
        // Pareto, shape 1.1 (infinite variance): values from 1 to around 1e5.
        let mut rng = Rng(3);
        let values: Vec<_> = (0..50_000)
            .map(|_| (rng.unit().powf(-1.0 / 1.1), 1))
            .collect();
        check_within_bound(&values, 0.01);
        // Finer: 1e-3 needs ln(2e4)/2e-3 ≈ 5000 buckets for this range.
        check_config(
            &values,
            &SummaryConfig {
                max_buckets: 8192,
                ..config(&QS, 0.001)
            },
        );
    }

    #[test]
    fn values_on_bucket_boundaries_are_within_alpha() {
        // γ^k and its float neighbours (with the γ in use and the one asked for), where
        // rounding in ln could pick the wrong bucket.
        let alpha = 0.01;
        let ln_gamma = SummaryState::new(&config(&QS, alpha), 0).ln_gamma;
        let asked = ((1.0 + alpha) / (1.0 - alpha)).ln();
        for ln_gamma in [ln_gamma, asked] {
            for range in [-1000..-100, -300..300, 100..1000] {
                let mut values = Vec::new();
                for k in range {
                    let x = (f64::from(k) * ln_gamma).exp();
                    for v in [x.next_down(), x, x.next_up()] {
                        values.push((v, 1));
                    }
                }
                check_within_bound(&values, alpha);
            }
        }
    }

    #[test]
    fn extreme_magnitudes_are_within_alpha() {
        // A bucket's value can exceed f64::MAX (clamped to the maximum), or sit near the
        // smallest normal number.
        let top: Vec<_> = (0..200)
            .map(|i| (f64::MAX / (1.0 + f64::from(i) * 1e-3), 1))
            .collect();
        check_within_bound(&top, 0.01);
        let negative_top: Vec<_> = top.iter().map(|&(v, w)| (-v, w)).collect();
        check_within_bound(&negative_top, 0.01);
        let bottom: Vec<_> = (0..200)
            .map(|i| (f64::MIN_POSITIVE * (1.0 + f64::from(i) * 1e-2), 1))
            .collect();
        check_within_bound(&bottom, 0.01);
    }

    #[test]
    fn weights_count_as_repeated_observations() {
        let mut weighted = SummaryState::new(&config(&QS, 0.01), 0);
        let mut repeated = SummaryState::new(&config(&QS, 0.01), 0);
        let mut rng = Rng(4);
        let mut values = Vec::new();
        for _ in 0..2000 {
            let (value, weight) = (rng.unit() * 100.0, 1 + rng.next_u64() % 10);
            weighted.observe(value, weight, 0);
            for _ in 0..weight {
                repeated.observe(value, 1, 0);
            }
            values.push((value, weight));
        }
        assert_eq!(reported(&mut weighted, 0), reported(&mut repeated, 0));
        assert_eq!(weighted.count(), repeated.count());
        check_within_bound(&values, 0.01);
        // A single heavy observation dominates every quantile but the extremes.
        let mut s = SummaryState::new(&config(&[0.01, 0.5, 0.99], 0.01), 0);
        s.observe(1.0, 1, 0);
        s.observe(50.0, 1_000_000, 0);
        s.observe(1000.0, 1, 0);
        for (_, v) in reported(&mut s, 0) {
            assert!((v - 50.0).abs() <= 0.5, "{v}");
        }
    }

    #[test]
    fn negative_values_and_zero_are_ordered_and_within_alpha() {
        let mut rng = Rng(5);
        let mut values: Vec<_> = (0..30_000)
            .map(|_| {
                let magnitude = 10f64.powf(rng.unit() * 8.0 - 4.0);
                let sign = if rng.next_u64().is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                };
                (sign * magnitude, 1)
            })
            .collect();
        values.extend([(0.0, 5000), (-0.0, 5000), (1e-320, 10), (-1e-320, 10)]);
        check_within_bound(&values, 0.01);
        // Exact zeros are reported as exactly 0.
        let mut s = SummaryState::new(&config(&[0.0, 0.5, 1.0], 0.01), 0);
        for v in [-2.0, 0.0, 0.0, 0.0, 3.0] {
            s.observe(v, 1, 0);
        }
        assert_eq!(
            reported(&mut s, 0),
            vec![(0.0, -2.0), (0.5, 0.0), (1.0, 3.0)]
        );
    }

    #[test]
    fn only_negative_values() {
        let values: Vec<_> = (1..=10_000).map(|i| (-f64::from(i) * 0.37, 1)).collect();
        check_within_bound(&values, 0.01);
    }

    #[test]
    fn empty_window_reports_nan_for_every_quantile() {
        let mut s = SummaryState::new(&SummaryConfig::default(), 0);
        let got = reported(&mut s, 0);
        assert_eq!(
            got.iter().map(|g| g.0).collect::<Vec<_>>(),
            [0.5, 0.9, 0.99]
        );
        assert!(got.iter().all(|g| g.1.is_nan()));
        assert_eq!((s.sum(), s.count()), (0.0, 0));
    }

    #[test]
    fn non_finite_values_are_refused() {
        let mut s = SummaryState::new(&SummaryConfig::default(), 0);
        assert!(!s.observe(f64::NAN, 1, 0));
        assert!(!s.observe(f64::INFINITY, 1, 0));
        assert!(!s.observe(f64::NEG_INFINITY, 1, 0));
        assert_eq!((s.sum(), s.count()), (0.0, 0));
        assert!(reported(&mut s, 0).iter().all(|g| g.1.is_nan()));
    }

    #[test]
    fn old_observations_leave_the_window_after_max_age() {
        // 5 slots of 120 s.
        let mut s = SummaryState::new(&SummaryConfig::default(), 0);
        s.observe(1.0, 1, 0);
        s.observe(1000.0, 1, 300);
        assert_eq!(s.window_count(479), 2);
        // Second 0 (slot 0) is in the window while now/120 − 0 < 5, i.e. up to second 599.
        assert_eq!(s.window_count(599), 2);
        let got = reported(&mut s, 599);
        assert!((got[0].1 - 1.0).abs() <= 0.01, "{got:?}");
        assert_eq!(s.window_count(600), 1);
        let got = reported(&mut s, 600);
        assert!(got.iter().all(|g| (g.1 - 1000.0).abs() <= 10.0), "{got:?}");
        // Second 300 (slot 2) leaves at second 840.
        assert_eq!(s.window_count(839), 1);
        assert_eq!(s.window_count(840), 0);
        assert!(reported(&mut s, 840).iter().all(|g| g.1.is_nan()));
        // A long silence clears everything, and the ring keeps working afterwards.
        s.observe(7.0, 1, 1_000_000);
        assert_eq!(s.window_count(1_000_000), 1);
        assert_eq!(s.window_count(1_000_000 + 600), 0);
    }

    #[test]
    fn stale_clock_observations_go_to_the_current_slot() {
        let mut s = SummaryState::new(&SummaryConfig::default(), 0);
        s.observe(1.0, 1, 500);
        s.observe(2.0, 1, 10); // a reader that saw an older clock
        assert_eq!(s.window_count(500), 2);
        assert_eq!(s.window_count(959), 2);
        assert_eq!(s.window_count(1080), 0);
    }

    #[test]
    fn sum_and_count_are_cumulative_not_windowed() {
        let mut s = SummaryState::new(&SummaryConfig::default(), 0);
        s.observe(2.5, 4, 0);
        s.observe(-1.0, 1, 100);
        s.observe(0.5, 2, 5000);
        // Only the last observation (weight 2) is in the window.
        assert_eq!(s.window_count(5000), 2);
        assert_eq!(s.count(), 7);
        assert_eq!(s.sum(), 2.5 * 4.0 - 1.0 + 0.5 * 2.0);
        reported(&mut s, 100_000);
        assert_eq!(s.window_count(100_000), 0);
        assert_eq!((s.count(), s.sum()), (7, 10.0));
    }

    #[test]
    fn window_merges_sub_sketches_with_disjoint_ranges() {
        // Each slot sees a different band of values, far apart (gaps of thousands of
        // buckets), some negative: the merged window must still rank them exactly.
        let mut s = SummaryState::new(&config(&QS, 0.01), 0);
        let mut values = Vec::new();
        let bands = [
            (1e-30, 1.0),
            (1e-3, 1.0),
            (5e4, -1.0),
            (1e20, 1.0),
            (2.0, -1.0),
        ];
        for (slot, &(scale, sign)) in bands.iter().enumerate() {
            for i in 1..=300u32 {
                let value = sign * scale * f64::from(i).sqrt();
                s.observe(value, u64::from(i % 3 + 1), slot as u32 * 120);
                values.push((value, u64::from(i % 3 + 1)));
            }
        }
        assert!(!s.collapsed());
        for (q, v) in reported(&mut s, 599) {
            let x = exact(&values, q);
            assert!((v - x).abs() <= 0.01 * x.abs(), "q={q}: {v} vs {x}");
        }
    }

    #[test]
    fn quantiles_in_any_order_are_reported_in_that_order() {
        let order = [0.99, 0.5, 1.0, 0.0, 0.9];
        let mut sorted = order;
        sorted.sort_by(f64::total_cmp);
        let mut a = SummaryState::new(&config(&order, 0.01), 0);
        let mut b = SummaryState::new(&config(&sorted, 0.01), 0);
        for i in 1..=1000 {
            a.observe(f64::from(i), 1, 0);
            b.observe(f64::from(i), 1, 0);
        }
        let got = reported(&mut a, 0);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), order);
        let mut want = reported(&mut b, 0);
        want.sort_by_key(|g| order.iter().position(|q| *q == g.0));
        assert_eq!(got, want);
    }

    #[test]
    fn steady_state_observe_does_not_allocate() {
        let mut s = SummaryState::new(&SummaryConfig::default(), 0);
        let mut rng = Rng(6);
        let latency = |rng: &mut Rng| 0.001 * 1000f64.powf(rng.unit());
        // One full ring of traffic: every slot's array reaches the data's span.
        for now in 0..600 {
            for _ in 0..100 {
                s.observe(latency(&mut rng), 1, now);
            }
        }
        let arrays = |s: &SummaryState| {
            s.subs
                .iter()
                .map(|sub| (sub.pos.counts.as_ptr(), sub.pos.counts.len()))
                .collect::<Vec<_>>()
        };
        let before = (arrays(&s), s.memory_bytes());
        for now in 600..1800 {
            for _ in 0..100 {
                s.observe(latency(&mut rng), 1, now);
            }
        }
        assert_eq!((arrays(&s), s.memory_bytes()), before);
    }

    #[test]
    fn memory_of_typical_latencies() {
        // 1 ms to 1 s, log-uniform: 3 decades, ln(1000)/ln γ ≈ 346 buckets at 1 %.
        let mut s = SummaryState::new(&SummaryConfig::default(), 0);
        let fresh = s.memory_bytes();
        let mut rng = Rng(7);
        for now in 0..600 {
            for _ in 0..100 {
                s.observe(0.001 * 1000f64.powf(rng.unit()), 1, now);
            }
        }
        let used = s.memory_bytes();
        assert!(fresh < 1024, "{fresh}");
        assert!(used <= fresh + 5 * 384 * 8, "{used}");
        assert!(used <= SummaryConfig::default().max_memory_bytes());
    }

    #[test]
    fn collapse_keeps_memory_bounded_over_a_million_magnitudes() {
        let c = SummaryConfig::default();
        let mut s = SummaryState::new(&c, 0);
        let mut rng = Rng(8);
        let mut values = Vec::new();
        // 1e6 values, both signs, magnitudes log-uniform over the whole f64 range (about
        // 70 000 buckets per sign at 1 %), spread over the 5 slots of the window.
        for i in 0..1_000_000u32 {
            let magnitude = (rng.unit() * 1400.0 - 700.0).exp();
            let value = if i % 2 == 0 { magnitude } else { -magnitude };
            s.observe(value, 1, i / 2000);
            values.push((value, 1));
        }
        assert!(s.collapsed());
        let worst = c.max_memory_bytes();
        assert!(s.memory_bytes() <= worst, "{} > {worst}", s.memory_bytes());
        assert_eq!(
            worst,
            size_of::<SummaryState>() + 5 * (size_of::<Sub>() + 2 * 2048 * 8)
        );
        for sub in s.subs.iter() {
            for store in [&sub.neg, &sub.pos] {
                assert!(store.counts.len() <= 2048);
                assert!(store.hi - store.lo < 2048);
                // Nothing is lost: the counts still add up.
                assert_eq!(store.counts.iter().sum::<u64>(), store.total);
            }
        }
        // Negative values merge the most negative ones, positive the smallest ones: each
        // sub-sketch keeps its top 2048 positive buckets, ln x in about [659, 700], so the
        // top of the distribution (p99 is ln x ≈ 672) keeps the bound.
        let got = reported(&mut s, 499);
        for (q, v) in got.into_iter().filter(|g| g.0 >= 0.99) {
            let x = exact(&values, q);
            assert!((v - x).abs() <= 0.01 * x.abs(), "q={q}: {v} vs {x}");
        }
        // The lowest quantile may be over-estimated, never under-estimated by more than α.
        let mut low = SummaryState::new(&config(&[0.001], 0.01), 0);
        for &(value, _) in &values[..400_000] {
            low.observe(value, 1, 0);
        }
        assert!(low.collapsed());
        let mut v = f64::NAN;
        low.quantiles(0, |_, value| v = value);
        let x = exact(&values[..400_000], 0.001);
        assert!(v >= x - 0.01 * x.abs(), "{v} vs {x}");
    }

    #[test]
    fn collapsed_lowest_values_are_reported_as_the_lowest_kept_bucket() {
        let c = SummaryConfig {
            max_buckets: 16,
            quantiles: Arc::from([0.0, 0.2, 0.6, 1.0]),
            ..SummaryConfig::default()
        };
        let mut s = SummaryState::new(&c, 0);
        // Ten values 1.0, then a value 2^40 times larger: far more than 16 buckets apart.
        s.observe(1.0, 10, 0);
        s.observe(1e12, 10, 0);
        assert!(s.collapsed());
        let got = reported(&mut s, 0);
        // q=0 is the exact minimum; q=0.2 (a merged 1.0) is over-estimated but below the top
        // value; q=0.6 and q=1 are the top value, within the bound.
        assert_eq!(got[0], (0.0, 1.0));
        assert!(got[1].1 > 1.0 && got[1].1 < 1e12, "{got:?}");
        assert!(
            (got[2].1 - 1e12).abs() <= 1e10 && got[3].1 == 1e12,
            "{got:?}"
        );
        // Another slot without collapse: its 10.0 is below the threshold (the lowest bucket
        // the first slot kept, ≈ 7.4e11), so the median, exactly 10.0, is biased upwards,
        // but not past the threshold.
        s.observe(10.0, 21, 120);
        let mut median = f64::NAN;
        s.quantiles(120, |q, v| {
            if q == 0.6 {
                median = v;
            }
        });
        let threshold = (1e12f64.ln() - 15.0 * 2.0 * 0.01f64.atanh()).exp();
        assert!(
            median > 10.0 && median <= threshold * 1.01,
            "{median} {threshold}"
        );
        // The slot's next use starts afresh.
        s.observe(1.0, 1, 10_000);
        assert!(!s.collapsed());
    }

    #[test]
    fn store_shifts_and_grows_without_losing_counts() {
        let mut store = Store::default();
        let mut total = 0;
        // Keys walking down, then up, then far away and back, within 2048.
        let keys = (0..500)
            .map(|i| -i * 2)
            .chain((0..500).map(|i| i * 2))
            .chain([1000, -1040, 7, 0]);
        for (n, key) in keys.enumerate() {
            store.add(key, n as u64 + 1, 2048);
            total += n as u64 + 1;
            assert_eq!(store.counts.iter().sum::<u64>(), total);
            assert!(!store.collapsed);
        }
        assert_eq!((store.lo, store.hi), (-1040, 1000));
        assert!(store.counts.len() <= 2048);
    }

    #[test]
    fn max_age_not_divisible_by_age_buckets_rounds_slots_down() {
        let c = SummaryConfig {
            max_age_secs: 10,
            age_buckets: 3,
            ..SummaryConfig::default()
        };
        let mut s = SummaryState::new(&c, 0);
        s.observe(1.0, 1, 0);
        // Slots of 3 s: second 0 stays while now/3 < 3.
        assert_eq!(s.window_count(8), 1);
        assert_eq!(s.window_count(9), 0);
    }

    proptest! {
        #[test]
        fn every_quantile_of_random_data_is_within_the_bound(
            alpha in 0.007f64..0.2,
            data in prop::collection::vec(
                (-6.0f64..6.0, any::<bool>(), 0u8..20, 1u64..20),
                1..400,
            ),
            qs in prop::collection::vec(0.0f64..=1.0, 1..8),
        ) {
            let values: Vec<(f64, u64)> = data
                .iter()
                .map(|&(exp, negative, zero, weight)| {
                    let magnitude = if zero == 0 { 0.0 } else { 10f64.powf(exp) };
                    (if negative { -magnitude } else { magnitude }, weight)
                })
                .collect();
            let mut unique = Vec::new();
            for q in qs {
                if !unique.contains(&q) {
                    unique.push(q);
                }
            }
            let qs = unique;
            let mut s = SummaryState::new(&config(&qs, alpha), 0);
            for &(value, weight) in &values {
                s.observe(value, weight, 0);
            }
            prop_assert!(!s.collapsed());
            let got = reported(&mut s, 0);
            prop_assert_eq!(got.len(), qs.len());
            for ((q, v), want_q) in got.into_iter().zip(&qs) {
                prop_assert_eq!(q, *want_q);
                let x = exact(&values, q);
                prop_assert!((v - x).abs() <= alpha * x.abs(), "q={} v={} x={}", q, v, x);
            }
        }

        #[test]
        fn the_window_holds_exactly_the_recent_slots(
            steps in prop::collection::vec((0u32..200, 0.001f64..1000.0), 1..200),
            age_buckets in 1u32..8,
            slot in 1u32..60,
        ) {
            let c = SummaryConfig {
                max_age_secs: age_buckets * slot,
                age_buckets,
                quantiles: Arc::from([0.0, 0.3, 0.5, 0.9, 1.0]),
                ..SummaryConfig::default()
            };
            let mut s = SummaryState::new(&c, 0);
            let mut now = 0;
            let mut seen: Vec<(u32, f64)> = Vec::new();
            for (dt, value) in steps {
                now += dt;
                s.observe(value, 1, now);
                seen.push((now, value));
                let live: Vec<(f64, u64)> = seen
                    .iter()
                    .filter(|(t, _)| now / slot - t / slot < age_buckets)
                    .map(|&(_, v)| (v, 1))
                    .collect();
                prop_assert_eq!(s.window_count(now), live.len() as u64);
                for (q, v) in reported(&mut s, now) {
                    let x = exact(&live, q);
                    prop_assert!((v - x).abs() <= 0.01 * x, "q={} v={} x={}", q, v, x);
                }
            }
        }
    }
}
