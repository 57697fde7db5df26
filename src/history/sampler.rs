//! The sampler: every `[history] interval_seconds`, copies the series of the metrics that ask
//! for history out of the registry into one [`SampleBatch`] for the store — counters as their
//! increase over the interval (after a reset, the new value is the increase), gauges as their
//! value, histograms as the increases of count, sum and each bucket, summaries as the increases
//! of count and sum with their quantiles' values.
//!
//! It reads the registry as a scrape does (one family at a time, through the read seam), on a
//! blocking thread, never on the UDP threads. What it keeps per series (the last values read,
//! the store's label key) is allocated when the series is first seen; a tick allocates only its
//! batch. Times are explicit arguments so tests drive them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::read::{FamilyView, Labels, SeriesView, ValueView, Visitor};
use crate::registry::Registry;
use crate::store::labels_key;
use crate::store::tiers::{self, Cell, SampleBatch, Tier};

/// What was last read of one series.
#[derive(Debug)]
struct Seen {
    /// The labels as the store keys them.
    labels: Arc<str>,
    /// The tick that last saw it: series not seen by the current one are gone.
    tick: u64,
    last: Last,
}

#[derive(Debug)]
enum Last {
    /// Cumulative value (counters); gauges need nothing.
    Total(f64),
    Gauge,
    Histogram {
        count: u64,
        sum: f64,
        counts: Vec<u64>,
    },
    Summary {
        count: u64,
        sum: f64,
    },
}

/// Series state of one history metric, by the registry's escaped label text.
#[derive(Debug, Default)]
struct FamilyState {
    series: HashMap<Box<str>, Seen, ahash::RandomState>,
}

/// Takes samples; one per daemon, kept across ticks.
#[derive(Debug)]
pub struct Sampler {
    tiers: Arc<[Tier]>,
    families: HashMap<String, FamilyState>,
    tick: u64,
    /// When the previous tick read the registry (Unix ms).
    previous_ms: Option<i64>,
    /// Reused per series: bucket counts and their increases, quantiles.
    counts: Vec<u64>,
    increases: Vec<u64>,
    quantiles: Vec<(f64, f64)>,
}

impl Sampler {
    /// `tiers` finest first: samples are the finest tier's.
    pub fn new(tiers: Arc<[Tier]>) -> Sampler {
        Sampler {
            tiers,
            families: HashMap::new(),
            tick: 0,
            previous_ms: None,
            counts: Vec::new(),
            increases: Vec::new(),
            quantiles: Vec::new(),
        }
    }

    /// Series created from `ms` on count from zero at their first tick (the sampler starts
    /// with the daemon, before any series).
    pub fn start_at(&mut self, ms: i64) {
        self.previous_ms = Some(ms);
    }

    /// The interval a tick at `now_ms` samples: the one that just ended.
    pub fn interval_of(&self, now_ms: i64) -> i64 {
        let finest = self.tiers[0];
        finest.floor(now_ms) - finest.resolution_ms
    }

    /// Reads the history metrics `metrics` (family name → store id) in `registry` at `now_ms`
    /// into a batch for the interval that just ended. A series first seen counts from zero when
    /// it was created since the previous tick, and only sets its baseline otherwise (history
    /// just turned on for it).
    pub fn sample(
        &mut self,
        registry: &Registry,
        metrics: &[(String, i64)],
        now_ms: i64,
    ) -> SampleBatch {
        self.tick += 1;
        let finest = self.tiers[0];
        let since_ms = self.previous_ms.unwrap_or(now_ms - finest.resolution_ms);
        self.previous_ms = Some(now_ms);
        let mut batch = SampleBatch {
            tiers: Arc::clone(&self.tiers),
            metrics: metrics.iter().map(|(_, id)| *id).collect(),
            ts_ms: self.interval_of(now_ms),
            ..SampleBatch::default()
        };
        self.families
            .retain(|name, _| metrics.iter().any(|(wanted, _)| wanted == name));
        for (name, id) in metrics {
            let Some(family) = registry.family_named(name) else {
                self.families.remove(name);
                continue;
            };
            let state = self.families.entry(name.clone()).or_default();
            let mut reading = Reading {
                metric: *id,
                tick: self.tick,
                since_ms,
                state,
                batch: &mut batch,
                counts: &mut self.counts,
                increases: &mut self.increases,
                quantiles: &mut self.quantiles,
            };
            registry.visit_family(&family, &mut reading);
            let tick = self.tick;
            reading.state.series.retain(|_, seen| seen.tick == tick);
        }
        batch
    }
}

/// One family being read.
struct Reading<'a> {
    metric: i64,
    tick: u64,
    since_ms: i64,
    state: &'a mut FamilyState,
    batch: &'a mut SampleBatch,
    counts: &'a mut Vec<u64>,
    increases: &'a mut Vec<u64>,
    quantiles: &'a mut Vec<(f64, f64)>,
}

impl Visitor for Reading<'_> {
    fn family(&mut self, _family: &FamilyView<'_>) -> bool {
        true
    }

    fn series(&mut self, _family: &FamilyView<'_>, series: &SeriesView<'_>) {
        let Labels::Escaped(text) = series.labels else {
            return;
        };
        let fresh = series
            .created
            .is_some_and(|secs| (secs * 1000.0) as i64 >= self.since_ms);
        let seen = match self.state.series.get_mut(text) {
            Some(seen) => seen,
            None => {
                let pairs: Vec<(&str, std::borrow::Cow<'_, str>)> = series.labels.pairs().collect();
                let labels: Arc<str> =
                    labels_key(pairs.iter().map(|(name, value)| (*name, value.as_ref()))).into();
                let last = match series.value {
                    ValueView::Counter(_) => Last::Total(0.0),
                    ValueView::Gauge(_) | ValueView::Set(_) => Last::Gauge,
                    ValueView::Histogram(_) => Last::Histogram {
                        count: 0,
                        sum: 0.0,
                        counts: Vec::new(),
                    },
                    ValueView::Summary(_) => Last::Summary { count: 0, sum: 0.0 },
                };
                let seen = Seen {
                    labels,
                    tick: self.tick,
                    last,
                };
                self.state.series.entry(text.into()).or_insert(seen)
            }
        };
        // Known from before, or new since the last tick: its increase counts. Otherwise only
        // its baseline is taken.
        let counts = seen.tick != self.tick || fresh;
        seen.tick = self.tick;
        let labels = Arc::clone(&seen.labels);
        match (&mut seen.last, series.value) {
            (Last::Total(last), ValueView::Counter(value)) => {
                // A counter below its last value was reset: all of it is new.
                let increase = if value < *last { value } else { value - *last };
                *last = value;
                if counts {
                    let cell = Cell::scalar(increase);
                    self.batch.push(self.metric, labels, |out| cell.encode(out));
                }
            }
            (Last::Gauge, ValueView::Gauge(value)) => {
                let cell = Cell::scalar(value);
                self.batch.push(self.metric, labels, |out| cell.encode(out));
            }
            (Last::Gauge, ValueView::Set(members)) => {
                let cell = Cell::scalar(members as f64);
                self.batch.push(self.metric, labels, |out| cell.encode(out));
            }
            (
                Last::Histogram {
                    count,
                    sum,
                    counts: last_counts,
                },
                ValueView::Histogram(h),
            ) => {
                self.counts.clear();
                self.counts.extend(h.counts());
                let total: u64 = self.counts.iter().sum();
                let value_sum = h.sum();
                let reset = last_counts.len() != self.counts.len()
                    || total < *count
                    || self
                        .counts
                        .iter()
                        .zip(last_counts.iter())
                        .any(|(c, l)| c < l);
                self.increases.clear();
                if reset {
                    self.increases.extend_from_slice(self.counts);
                } else {
                    (self.increases).extend(
                        self.counts
                            .iter()
                            .zip(last_counts.iter())
                            .map(|(c, l)| c - l),
                    );
                }
                let (count_inc, sum_inc) = match reset {
                    true => (total, value_sum),
                    false => (total - *count, value_sum - *sum),
                };
                (*count, *sum) = (total, value_sum);
                last_counts.clear();
                last_counts.extend_from_slice(self.counts);
                if counts {
                    let increases = &self.increases;
                    self.batch.push(self.metric, labels, |out| {
                        tiers::encode_histogram(out, count_inc, sum_inc, increases)
                    });
                }
            }
            (Last::Summary { count, sum }, ValueView::Summary(s)) => {
                self.quantiles.clear();
                let quantiles = &mut *self.quantiles;
                let (value_sum, total) = s.read(|q, v| quantiles.push((q, v)));
                let (count_inc, sum_inc) = if total < *count {
                    (total, value_sum)
                } else {
                    (total - *count, value_sum - *sum)
                };
                (*count, *sum) = (total, value_sum);
                if counts {
                    let quantiles = &self.quantiles;
                    self.batch.push(self.metric, labels, |out| {
                        tiers::encode_summary(out, 1, count_inc, sum_inc, quantiles)
                    });
                }
            }
            // The family changed kind under the same name: start it afresh next tick.
            _ => {
                self.state.series.remove(text);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Recorder;
    use crate::registry::{Kind, RegistrySettings, Update};

    /// Before the test's real clock, so every series the test makes counts as new.
    const T0: i64 = 1_764_000_000_000;

    fn tiers() -> Arc<[Tier]> {
        Arc::from(vec![Tier {
            resolution_ms: 10_000,
            retention_ms: 86_400_000,
        }])
    }

    /// The batch's rows as (labels, cell).
    fn rows(batch: &SampleBatch) -> Vec<(String, Cell)> {
        let mut start = 0;
        batch
            .rows
            .iter()
            .map(|row| {
                let end = row.end as usize;
                let cell = Cell::decode(&batch.bodies[start..end]).unwrap();
                start = end;
                (row.labels.to_string(), cell)
            })
            .collect()
    }

    #[test]
    fn counters_give_increases_and_a_reset_counts_its_new_value() {
        let recorder =
            Recorder::for_registry(&Arc::new(Registry::new(RegistrySettings::default())));
        let registry = recorder.registry();
        let metrics = [("reqs".to_owned(), 7)];
        let mut sampler = Sampler::new(tiers());
        let add = |n: f64| {
            recorder
                .record("reqs", Kind::Counter, [("path", "/a")], Update::Add(n))
                .unwrap();
        };
        add(4.0);
        let batch = sampler.sample(registry, &metrics, T0 + 5);
        // The interval that just ended, stamped with its start.
        assert_eq!(batch.ts_ms, T0 - 10_000);
        assert_eq!(batch.metrics, [7]);
        assert_eq!(
            rows(&batch),
            [(r#"{"path":"/a"}"#.to_owned(), Cell::scalar(4.0))]
        );
        add(6.0);
        let batch = sampler.sample(registry, &metrics, T0 + 10_005);
        assert_eq!(rows(&batch)[0].1, Cell::scalar(6.0));
        // Nothing happened: an increase of 0 is still a sample.
        let batch = sampler.sample(registry, &metrics, T0 + 20_005);
        assert_eq!(rows(&batch)[0].1, Cell::scalar(0.0));
        // The series goes (TTL) and comes back at 3: a reset, whose increase is 3.
        registry.remove_series("reqs", |_| true);
        add(3.0);
        let batch = sampler.sample(registry, &metrics, T0 + 30_005);
        assert_eq!(rows(&batch)[0].1, Cell::scalar(3.0));
        // A family gone leaves no rows, and no state behind.
        registry.remove_series("reqs", |_| true);
        let batch = sampler.sample(registry, &metrics, T0 + 40_005);
        assert!(batch.rows.is_empty());
        assert!(sampler.families.values().all(|f| f.series.is_empty()));
    }

    #[test]
    fn gauges_histograms_and_summaries_are_sampled_as_values_and_increases() {
        let recorder =
            Recorder::for_registry(&Arc::new(Registry::new(RegistrySettings::default())));
        let registry = recorder.registry();
        let metrics = [
            ("temp".to_owned(), 1),
            ("lat".to_owned(), 2),
            ("size".to_owned(), 3),
        ];
        let mut sampler = Sampler::new(tiers());
        let observe = |family: &str, kind: Kind, value: f64| {
            recorder
                .record(
                    family,
                    kind,
                    [("a", "b")],
                    Update::Observe { value, weight: 1 },
                )
                .unwrap();
        };
        recorder
            .record("temp", Kind::Gauge, [("a", "b")], Update::Set(21.5))
            .unwrap();
        observe("lat", Kind::Histogram, 0.003);
        observe("lat", Kind::Histogram, 0.3);
        observe("size", Kind::Summary, 10.0);
        sampler.sample(registry, &metrics, T0 + 5);
        observe("lat", Kind::Histogram, 0.3);
        observe("size", Kind::Summary, 20.0);
        observe("size", Kind::Summary, 30.0);
        let batch = sampler.sample(registry, &metrics, T0 + 10_005);
        let rows = rows(&batch);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].1, Cell::scalar(21.5));
        let Cell::Histogram {
            count,
            sum,
            buckets,
        } = &rows[1].1
        else {
            panic!("{:?}", rows[1]);
        };
        assert_eq!((*count, *sum), (1, 0.3));
        // Default buckets: 0.3 is in (0.25, 0.5], the 7th; 12 with +Inf.
        let mut expected = vec![0u64; 12];
        expected[6] = 1;
        assert_eq!(buckets, &expected);
        let Cell::Summary {
            n,
            count,
            sum,
            quantiles,
        } = &rows[2].1
        else {
            panic!("{:?}", rows[2]);
        };
        assert_eq!((*n, *count, *sum), (1, 2, 50.0));
        assert_eq!(quantiles.len(), 3);
        assert_eq!(quantiles[0].0, 0.5);
        assert!((quantiles[0].1 - 20.0).abs() < 0.5, "{quantiles:?}");
    }
}
