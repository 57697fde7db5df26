//! The history sampler's tiers as a [`HistorySource`]: a gap in a StatsD series of a
//! `[[metric]]` with `history = true` is resent from the finest tier, one sample per interval
//! at the sample's own timestamp (the start of its interval, as history queries show it).
//!
//! Gauges are sent as sampled. A counter's samples are its increases, so its value at a
//! sample's time is the value sent after the gap less the increases stamped after it, as for
//! the Matih counters ([`super::gap`]). Histograms and summaries are not covered: their
//! remote-write series are derived ones (`_bucket`, `_sum`, `_count`, quantiles) and an
//! [`Origin`] names the registry series, not which of them a sample is; sets are sent without
//! an origin. Those keep the gap.

use std::sync::Arc;

use super::gap::{HistoryFuture, HistorySource, Origin, as_sent};
use super::wire::Sample;
use crate::history::History;
use crate::registry::Kind;
use crate::store::tiers::Cell;
use crate::store::{Reader, Store, labels_key};

/// The sampled StatsD series, read from the store the sampler writes.
pub struct TierHistory {
    pub history: Arc<History>,
    pub store: Store,
}

impl HistorySource for TierHistory {
    fn covers(&self, origin: &Origin) -> bool {
        // Asked once per series, maybe before the sampler's first tick made the store row:
        // the configuration decides, the row is looked up when a gap is read.
        matches!(origin.kind, Kind::Counter | Kind::Gauge) && self.history.wants(&origin.family)
    }

    fn between(&self, origin: &Arc<Origin>, after_ms: i64, next: Sample) -> HistoryFuture {
        let found = self.history.find(&origin.family).map(|(id, _)| id);
        let finest = self.history.tiers()[0];
        let store = self.store.clone();
        let kind = origin.kind;
        // As the sampler keys the series: every label of the registry series.
        let key = labels_key(origin.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        Box::pin(async move {
            let Some(id) = found else {
                return Ok(Vec::new());
            };
            let scan =
                move |reader: &dyn Reader, series: i64, (start, end), points: &mut Vec<_>| {
                    let mut push = |_, ts, cell| {
                        if let Cell::Scalar { last, .. } = cell {
                            points.push((ts, last));
                        }
                    };
                    reader.scan_tier(finest, id, start, end, Some(&[series]), &mut push)
                };
            as_sent(
                &store,
                id,
                key,
                kind == Kind::Counter,
                (after_ms, next),
                scan,
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::history::HistoryOptions;
    use crate::store::Write;
    use crate::store::tiers::{SampleBatch, Tier};

    /// A whole minute; the finest tier is 1 s.
    const T0: i64 = 1_764_000_000_000;
    const S: i64 = 1000;

    fn sample(timestamp: i64, value: f64) -> Sample {
        Sample { value, timestamp }
    }

    fn origin(family: &str, kind: Kind, pairs: &[(&str, &str)]) -> Arc<Origin> {
        Arc::new(Origin {
            family: family.into(),
            kind,
            pairs: (pairs.iter())
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        })
    }

    /// One finest sample: timestamp, family, labels, value.
    type Row<'a> = (i64, &'a str, &'a [(&'a str, &'a str)], f64);

    /// A store in `dir` with the 1 s samples `(ts, family, labels, value)` written as the
    /// sampler writes them, one batch per timestamp.
    async fn source_with(dir: &std::path::Path, samples: &[Row<'_>]) -> TierHistory {
        let tiers: Arc<[Tier]> = Arc::from(vec![Tier {
            resolution_ms: S,
            retention_ms: 3_600 * S,
        }]);
        let options = HistoryOptions {
            tiers: Arc::clone(&tiers),
            metrics: ["hits", "temp"].map(|n| (n.to_owned(), None)).into(),
        };
        let history = History::new(&options);
        let store = Store::open(dir).unwrap();
        let ids: HashMap<String, i64> =
            history.resolve(&store).await.unwrap().into_iter().collect();
        let mut times: Vec<i64> = samples.iter().map(|s| s.0).collect();
        times.dedup();
        for ts in times {
            let mut batch = SampleBatch {
                tiers: Arc::clone(&tiers),
                metrics: ids.values().copied().collect(),
                ts_ms: ts,
                ..SampleBatch::default()
            };
            for (_, family, labels, value) in samples.iter().filter(|s| s.0 == ts) {
                let key = labels_key(labels.iter().copied());
                let cell = Cell::scalar(*value);
                batch.push(ids[*family], key.into(), |out| cell.encode(out));
            }
            store.write(Write::Samples(Box::new(batch))).await.unwrap();
        }
        TierHistory { history, store }
    }

    #[tokio::test]
    async fn a_gauge_gap_is_its_samples_between_the_last_answer_and_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let a: &[(&str, &str)] = &[("room", "a"), ("floor", "1")];
        let b: &[(&str, &str)] = &[("room", "b"), ("floor", "1")];
        let source = source_with(
            dir.path(),
            &[
                (T0 + S, "temp", a, 5.0),
                (T0 + S, "temp", b, 50.0),
                (T0 + 2 * S, "temp", a, 6.0),
                (T0 + 3 * S, "temp", a, 7.5),
                (T0 + 3 * S, "temp", b, 70.0),
                (T0 + 4 * S, "temp", a, 8.0),
                (T0 + 5 * S, "temp", a, 9.0),
            ],
        )
        .await;
        // The registry may list the labels in another order: the store's key is sorted.
        let temp = origin("temp", Kind::Gauge, &[("floor", "1"), ("room", "a")]);
        assert!(source.covers(&temp));
        let got = (source.between(&temp, T0 + S, sample(T0 + 4 * S + 300, 8.5)))
            .await
            .unwrap();
        assert_eq!(
            got,
            [
                sample(T0 + 2 * S, 6.0),
                sample(T0 + 3 * S, 7.5),
                sample(T0 + 4 * S, 8.0)
            ]
        );
        // Nothing at or after the next sample's own time.
        let got = (source.between(&temp, T0, sample(T0 + 2 * S, 6.0)))
            .await
            .unwrap();
        assert_eq!(got, [sample(T0 + S, 5.0)]);
        // A series the sampler never wrote has no gap to fill.
        let none = origin("temp", Kind::Gauge, &[("floor", "2"), ("room", "a")]);
        let got = source.between(&none, T0, sample(T0 + 9 * S, 1.0)).await;
        assert_eq!(got.unwrap(), []);
    }

    #[tokio::test]
    async fn a_counter_gap_is_the_running_total_back_from_the_next_sample() {
        let dir = tempfile::tempdir().unwrap();
        let path: &[(&str, &str)] = &[("path", "/a")];
        // Increases 1, 2, 4, 8, then 16 in the interval holding the next sample.
        let source = source_with(
            dir.path(),
            &[
                (T0 + S, "hits", path, 1.0),
                (T0 + 2 * S, "hits", path, 2.0),
                (T0 + 3 * S, "hits", path, 4.0),
                (T0 + 4 * S, "hits", path, 8.0),
                (T0 + 5 * S, "hits", path, 16.0),
            ],
        )
        .await;
        let hits = origin("hits", Kind::Counter, path);
        assert!(source.covers(&hits));
        // The value after the gap, 40, was read after the increase stamped T0 + 5 s: the
        // totals before it are 40 - 16 = 24 at 4 s, 24 - 8 = 16 at 3 s, 16 - 4 = 12 at 2 s.
        let got = (source.between(&hits, T0 + S, sample(T0 + 5 * S + 500, 40.0)))
            .await
            .unwrap();
        assert_eq!(
            got,
            [
                sample(T0 + 2 * S, 12.0),
                sample(T0 + 3 * S, 16.0),
                sample(T0 + 4 * S, 24.0),
                sample(T0 + 5 * S, 40.0)
            ]
        );
        // Totals below zero are from before this counter's life here: left out.
        let got = (source.between(&hits, T0, sample(T0 + 5 * S + 500, 20.0)))
            .await
            .unwrap();
        assert_eq!(got, [sample(T0 + 4 * S, 4.0), sample(T0 + 5 * S, 20.0)]);
    }

    #[tokio::test]
    async fn only_counters_and_gauges_of_families_with_history_are_covered() {
        let dir = tempfile::tempdir().unwrap();
        let source = source_with(dir.path(), &[]).await;
        assert!(!source.covers(&origin("other", Kind::Gauge, &[])));
        assert!(!source.covers(&origin("temp", Kind::Histogram, &[])));
        assert!(!source.covers(&origin("temp", Kind::Summary, &[])));
        assert!(source.covers(&origin("hits", Kind::Counter, &[])));
    }
}
