//! Resending a gap from history: for series whose values a store keeps (a [`HistorySource`]),
//! samples the receiver never got (a full queue dropped them, the spill dropped them, a 4xx
//! refused them) are sent again from what the store holds, at their own timestamps, before
//! the series' next sample.
//!
//! How a gap is seen: each shard remembers, for the series with history, the timestamp of the
//! last sample the receiver answered (accepted or refused for good). When a batch holds such
//! a series' sample more than one and a half intervals after that, the store is asked for the
//! values in between (and no older than `max_sample_age_seconds`: receivers refuse those), and
//! they go into the batch before the series' samples, so the series stays in timestamp order.
//! A tallyd that was not running does not know what the receiver last got, so the gap of a
//! restart is not resent.
//!
//! [`MatihHistory`] is the source for the metrics recorded through the Matih API: gauges are
//! sent as recorded; a counter's points are increments, and its value at `t` is the value the
//! snapshot sent after the gap less the increments stamped after `t` up to that snapshot:
//! exact as long as the increments are recorded in timestamp order (a point stamped before an
//! earlier-recorded one was part of the total when the snapshot read it, and is placed at its
//! own time). The history sampler's tiers plug in the same way ([`super::tier_gap`]), and
//! [`FirstOf`] asks both.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::wire::{Label, Sample};
use crate::custom::{CustomMetrics, MetricType, TENANT_LABEL, family_name};
use crate::registry::Kind;
use crate::store;

/// What a [`HistorySource`] answers, later.
pub type HistoryFuture = Pin<Box<dyn Future<Output = Result<Vec<Sample>, String>> + Send>>;

/// A registry series as a history source knows it: its family, type and labels.
#[derive(Debug)]
pub struct Origin {
    pub family: String,
    pub kind: Kind,
    pub pairs: Vec<(String, String)>,
}

/// A store of the values series had over time.
pub trait HistorySource: Send + Sync + 'static {
    /// True when the store keeps the values of this series (asked once per series).
    fn covers(&self, origin: &Origin) -> bool;

    /// The series' values as remote-write sends them, at `after_ms < t < next.timestamp`, in
    /// time order; `next` is the sample sent after the gap.
    fn between(&self, origin: &Arc<Origin>, after_ms: i64, next: Sample) -> HistoryFuture;
}

/// Several stores of history, asked in turn: the first that keeps a series answers for it.
pub struct FirstOf(pub Vec<Arc<dyn HistorySource>>);

impl HistorySource for FirstOf {
    fn covers(&self, origin: &Origin) -> bool {
        self.0.iter().any(|source| source.covers(origin))
    }

    fn between(&self, origin: &Arc<Origin>, after_ms: i64, next: Sample) -> HistoryFuture {
        match self.0.iter().find(|source| source.covers(origin)) {
            Some(source) => source.between(origin, after_ms, next),
            None => Box::pin(async { Ok(Vec::new()) }),
        }
    }
}

/// One shard's memory of the series with history: the last timestamp the receiver answered
/// for each (keyed by a hash of its labels, so a sample read back from the spill counts too).
#[derive(Default)]
pub struct GapTracker {
    answered: HashMap<u64, i64>,
}

/// A gap to fill: the series, the last timestamp answered, and the sample after the gap.
pub struct Gap {
    pub key: u64,
    pub after_ms: i64,
    pub next: Sample,
}

/// The key of a label set in [`GapTracker`].
pub fn key_of(labels: &[Label]) -> u64 {
    ahash::RandomState::with_seeds(5, 6, 7, 8).hash_one(labels)
}

impl GapTracker {
    /// Whether the series' first sample in a batch, `first`, follows a gap: more than
    /// `slack_ms` after the last timestamp answered (and a timestamp was answered).
    pub fn gap(&self, key: u64, first: Sample, slack_ms: i64) -> Option<Gap> {
        let after_ms = *self.answered.get(&key)?;
        (first.timestamp - after_ms > slack_ms).then_some(Gap {
            key,
            after_ms,
            next: first,
        })
    }

    /// The receiver answered for this series up to `timestamp`. Only series with history
    /// (`tracked`) get an entry; the others update one they have.
    pub fn answered(&mut self, key: u64, timestamp: i64, tracked: bool) {
        match self.answered.get_mut(&key) {
            Some(last) => *last = (*last).max(timestamp),
            None if tracked => {
                self.answered.insert(key, timestamp);
            }
            None => {}
        }
    }
}

/// The metrics recorded through the Matih API (their points are in the store), read through
/// whatever owns the [`CustomMetrics`] service.
pub struct MatihHistory {
    pub custom: Arc<dyn AsRef<CustomMetrics> + Send + Sync>,
}

impl MatihHistory {
    /// The definition the series belongs to, if the API recorded it: its store id and type.
    fn metric(&self, origin: &Origin) -> Option<(i64, MetricType)> {
        let tenant = origin
            .pairs
            .iter()
            .find(|(name, _)| name == TENANT_LABEL)?
            .1
            .as_str();
        let names = [origin.family.clone(), format!("{}_total", origin.family)];
        names.iter().find_map(|name| {
            let metric = self.custom.as_ref().as_ref().get(tenant, name).ok()?;
            let fits = metric.store_id >= 0
                && family_name(&metric.spec) == origin.family
                && matches!(metric.spec.kind, MetricType::Gauge | MetricType::Counter)
                && metric.spec.kind.kind() == origin.kind;
            fits.then_some((metric.store_id, metric.spec.kind))
        })
    }
}

impl HistorySource for MatihHistory {
    fn covers(&self, origin: &Origin) -> bool {
        self.metric(origin).is_some()
    }

    fn between(&self, origin: &Arc<Origin>, after_ms: i64, next: Sample) -> HistoryFuture {
        let found = self.metric(origin);
        let store = self.custom.as_ref().as_ref().store().clone();
        let key = store::labels_key(
            origin
                .pairs
                .iter()
                .filter(|(name, _)| name != TENANT_LABEL)
                .map(|(n, v)| (n.as_str(), v.as_str())),
        );
        Box::pin(async move {
            let Some((id, kind)) = found else {
                return Ok(Vec::new());
            };
            let counter = kind == MetricType::Counter;
            let scan = move |reader: &dyn store::Reader,
                             series: i64,
                             (start, end),
                             points: &mut Vec<_>| {
                reader.scan(id, start, end, Some(&[series]), &mut |_, ts, value| {
                    points.push((ts, value))
                })
            };
            as_sent(&store, id, key, counter, (after_ms, next), scan).await
        })
    }
}

/// What a store holds of the series `key` of its metric `id` in a gap, as remote-write sends
/// it: `scan` pushes the series' points from `start` to `end` (after the gap's start, up to
/// and with the next sample's time: a counter needs the increments that holds), and a
/// counter's are sent as its running totals, the others one per time.
pub(super) async fn as_sent(
    store: &store::Store,
    id: i64,
    key: String,
    counter: bool,
    (after_ms, next): (i64, Sample),
    scan: impl FnOnce(
        &dyn store::Reader,
        i64,
        (i64, i64),
        &mut Vec<(i64, f64)>,
    ) -> Result<(), store::StoreError>
    + Send
    + 'static,
) -> Result<Vec<Sample>, String> {
    let points = store
        .read(move |reader| {
            let Some(series) = series_id(reader, id, &key)? else {
                return Ok(Vec::new());
            };
            let mut points = Vec::new();
            scan(
                reader,
                series,
                (after_ms + 1, next.timestamp + 1),
                &mut points,
            )?;
            Ok(points)
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(match counter {
        true => running_totals(&points, next),
        false => last_of_each_time(&points, next.timestamp),
    })
}

/// The store's id of `metric`'s series whose labels key is `key`, if it has one.
fn series_id(
    reader: &dyn store::Reader,
    metric: i64,
    key: &str,
) -> Result<Option<i64>, store::StoreError> {
    Ok(reader
        .series(metric)?
        .into_iter()
        .find_map(|(sid, text)| (text == key).then_some(sid)))
}

/// A gauge's points before `before`, one per timestamp (the last recorded of equal ones, as
/// `/metrics` shows it).
fn last_of_each_time(points: &[(i64, f64)], before: i64) -> Vec<Sample> {
    let mut out: Vec<Sample> = Vec::new();
    for &(timestamp, value) in points.iter().filter(|(ts, _)| *ts < before) {
        match out.last_mut() {
            Some(last) if last.timestamp == timestamp => last.value = value,
            _ => out.push(Sample { value, timestamp }),
        }
    }
    out
}

/// A counter's values before `next`, from its increments (`points`, in time order, up to and
/// with `next`'s time): at each increment's time, `next`'s value less what came after.
fn running_totals(points: &[(i64, f64)], next: Sample) -> Vec<Sample> {
    let mut out = Vec::new();
    let mut later = 0.0;
    let mut i = points.len();
    // Walk back from `next`: the value at a point's time is next less the increments after it.
    while i > 0 {
        let timestamp = points[i - 1].0;
        let mut j = i;
        while j > 0 && points[j - 1].0 == timestamp {
            j -= 1;
        }
        if timestamp < next.timestamp {
            let value = next.value - later;
            if value < 0.0 {
                break; // before the live counter began (a restart): not this series' value
            }
            out.push(Sample { value, timestamp });
        }
        later += points[j..i].iter().map(|p| p.1).sum::<f64>();
        i = j;
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(timestamp: i64, value: f64) -> Sample {
        Sample { value, timestamp }
    }

    #[test]
    fn a_counter_is_rebuilt_backwards_from_the_sample_after_the_gap() {
        // Increments 1 at 10, 2 at 20 (twice), 4 at 30; the snapshot at 35 read 20.
        let points = [(10, 1.0), (20, 2.0), (20, 2.0), (30, 4.0)];
        let got = running_totals(&points, sample(35, 20.0));
        assert_eq!(got, [sample(10, 12.0), sample(20, 16.0), sample(30, 20.0)]);
        // An increment at the snapshot's own time is in its value, not before it.
        let got = running_totals(&[(10, 1.0), (35, 5.0)], sample(35, 6.0));
        assert_eq!(got, [sample(10, 1.0)]);
        // Totals below zero are from before the counter began here: left out.
        let got = running_totals(&[(10, 5.0), (20, 4.0)], sample(35, 3.0));
        assert_eq!(got, [sample(20, 3.0)]);
    }

    #[test]
    fn a_gauge_sends_its_points_one_per_time() {
        let points = [(10, 1.0), (10, 2.0), (20, 3.0), (30, 9.0)];
        assert_eq!(
            last_of_each_time(&points, 30),
            [sample(10, 2.0), sample(20, 3.0)]
        );
    }

    #[test]
    fn a_gap_is_what_lies_past_the_slack_after_the_last_answer() {
        let mut tracker = GapTracker::default();
        tracker.answered(1, 1000, false);
        assert!(
            tracker.gap(1, sample(9000, 0.0), 750).is_none(),
            "untracked"
        );
        tracker.answered(1, 1000, true);
        assert!(tracker.gap(1, sample(1500, 0.0), 750).is_none());
        let gap = tracker.gap(1, sample(9000, 0.0), 750).unwrap();
        assert_eq!((gap.after_ms, gap.next.timestamp), (1000, 9000));
        tracker.answered(1, 9000, false);
        assert!(tracker.gap(1, sample(9500, 0.0), 750).is_none());
    }
}
