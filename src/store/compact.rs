//! Compaction of the history tiers: once a bucket of a tier is closed, the loose cells in it
//! ([`super::loose`]: rows of many series at one interval, cheap to write, a seek per interval
//! to read one series) are regrouped by series into packed rows ([`super::packed`]; where they
//! sit: [`super::tiers`]): a series' bucket in one read. This module owns when and how much.
//!
//! A bucket is closed when every interval of it is written and read: its end is at or before
//! the newest sampled tick (the finest tier) or where the tier's own rollup ended (the others),
//! and at or before where the rollup from it into the next coarser tier ended. Each tier keeps a
//! cursor in `meta` (`compacted:<resolution>`): buckets below it are compacted. A loose write
//! below the cursor moves it back ([`super::tiers`]), so compacting again merges the late cell
//! into the series' packed rows.
//!
//! The store's writer runs compaction while no write waits, one [`Compaction::slice`] per
//! transaction: one run of series (from the loose row with the lowest first series from where
//! the last slice stopped, [`loose::RUN_ROWS`] rows of its interval, up to 512 series:
//! [`loose::next_run`]), their cells taken out of every interval's rows and merged into their
//! packed rows. Taking a page of rows' series at once, a slice rewrites about a page per
//! interval: the cost of regrouping by series is paid per page, not per row. So a tick's write
//! or a read's barrier waits for one short transaction at most. Where a slice stopped inside a
//! bucket is kept in memory only; after a restart the bucket is read again from its lowest
//! series.

use std::sync::Arc;

use rusqlite::{Connection, params};

use super::loose::{self, Run};
use super::packed;
use super::tiers::{self, Cell, SampleBatch, Tier, meta, set_meta};

/// Where a slice stopped inside a bucket: the next (metric, series) to look from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Position {
    resolution_ms: i64,
    bucket: i64,
    metric: i64,
    series: i64,
}

/// What one slice did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sliced {
    /// Series whose rows became one packed row.
    pub packed: usize,
    /// Loose rows they replaced.
    pub rows: usize,
    /// Groups left as they were because a body did not read (logged).
    pub unreadable: usize,
    /// Whether there may be more to do now.
    pub more: bool,
}

/// The writer's compaction state.
#[derive(Debug, Default)]
pub struct Compaction {
    /// The tiers of the last sampled tick, finest first (unknown before the first tick).
    tiers: Option<Arc<[Tier]>>,
    /// That tick's interval start.
    newest_ms: i64,
    due: bool,
    at: Option<Position>,
}

impl Compaction {
    /// Notes a tick written: buckets may have closed.
    pub fn sampled(&mut self, batch: &SampleBatch) {
        self.tiers = Some(Arc::clone(&batch.tiers));
        self.newest_ms = self.newest_ms.max(batch.ts_ms);
        self.due = true;
    }

    /// Notes that the buckets of `tiers` closed before `closed_before_ms` may be compacted, as a
    /// tick at that time would (the tiers of a tick, once one came, stay).
    pub fn closed(&mut self, tiers: Arc<[Tier]>, closed_before_ms: i64) {
        self.tiers.get_or_insert(tiers);
        self.newest_ms = self.newest_ms.max(closed_before_ms);
        self.due = true;
    }

    /// Whether a slice may have work.
    pub fn due(&self) -> bool {
        self.due
    }

    /// Stops slicing until the next tick (after an error: not in a loop).
    pub fn pause(&mut self) {
        self.due = false;
    }

    /// Compacts the next closed bucket's next few series, inside the caller's transaction.
    pub fn slice(&mut self, connection: &Connection) -> rusqlite::Result<Sliced> {
        let Some(tiers) = self.tiers.clone() else {
            self.due = false;
            return Ok(Sliced::default());
        };
        for (i, &tier) in tiers.iter().enumerate() {
            let below = closed_below(connection, &tiers, i, self.newest_ms)?;
            let key = tiers::compacted_key(tier);
            let cursor: i64 = meta(connection, &key)?.unwrap_or(i64::MIN);
            if cursor >= below {
                continue;
            }
            let Some(bucket) = next_bucket(connection, tier, cursor)?.filter(|&b| b < below) else {
                set_meta(connection, &key, below)?;
                continue;
            };
            let from = self
                .at
                .filter(|at| at.resolution_ms == tier.resolution_ms && at.bucket == bucket);
            let (sliced, stopped) = compact_bucket(connection, tier, bucket, from)?;
            self.at = stopped;
            if stopped.is_none() {
                set_meta(connection, &key, bucket + 1)?;
            }
            return Ok(Sliced {
                more: true,
                ..sliced
            });
        }
        self.due = false;
        Ok(Sliced::default())
    }
}

/// Buckets of `tiers[i]` below this are closed.
fn closed_below(
    connection: &Connection,
    tiers: &[Tier],
    i: usize,
    newest_ms: i64,
) -> rusqlite::Result<i64> {
    let tier = tiers[i];
    let bucket_ms = tier.resolution_ms * tiers::SLOTS_PER_BUCKET;
    let rolled = |t: Tier| meta(connection, &format!("rolled:{}", t.resolution_ms));
    let written_to = if i == 0 {
        Some(newest_ms)
    } else {
        rolled(tier)?
    };
    let read_to = match tiers.get(i + 1) {
        Some(&coarser) => rolled(coarser)?,
        None => Some(i64::MAX),
    };
    Ok(match (written_to, read_to) {
        (Some(w), Some(r)) => w.min(r).div_euclid(bucket_ms),
        _ => i64::MIN,
    })
}

/// The first bucket at or after `from` that holds a loose row of `tier`, in any metric.
fn next_bucket(connection: &Connection, tier: Tier, from: i64) -> rusqlite::Result<Option<i64>> {
    let mut first = None::<i64>;
    let mut lookup = connection.prepare_cached(
        "SELECT min(bucket) FROM tier_loose WHERE tier = ?1 AND metric = ?2 AND bucket >= ?3",
    )?;
    for metric in metric_ids(connection, i64::MIN)? {
        let found: Option<i64> =
            lookup.query_row(params![tier.resolution_ms, metric, from], |row| row.get(0))?;
        first = match (first, found) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(first)
}

fn metric_ids(connection: &Connection, from: i64) -> rusqlite::Result<Vec<i64>> {
    connection
        .prepare_cached("SELECT id FROM metrics WHERE id >= ?1 ORDER BY id")?
        .query_map([from], |row| row.get(0))?
        .collect()
}

/// Packs the next run of `bucket`'s series with loose cells (from `from` on): one row's run of
/// series ([`loose::next_run`]), their cells at every interval of the bucket. Answers where to
/// go on, `None` when the bucket is done (a metric without loose cells here costs a seek).
fn compact_bucket(
    connection: &Connection,
    tier: Tier,
    bucket: i64,
    from: Option<Position>,
) -> rusqlite::Result<(Sliced, Option<Position>)> {
    let (first_metric, first_series) = from.map_or((i64::MIN, i64::MIN), |p| (p.metric, p.series));
    let mut sliced = Sliced::default();
    for metric in metric_ids(connection, first_metric)? {
        let from_series = if metric == first_metric {
            first_series
        } else {
            i64::MIN
        };
        let at = |series: i64| Position {
            resolution_ms: tier.resolution_ms,
            bucket,
            metric,
            series,
        };
        let intervals = loose::bucket_intervals(connection, tier, metric, bucket)?;
        let run = loose::next_run(connection, tier, metric, bucket, from_series, &intervals)?;
        let (first, last) = match run {
            None => continue,
            Some(Run::Series(first, last)) => (first, last),
            Some(Run::Unreadable(first)) => {
                tracing::warn!(
                    tier = tier.resolution_ms,
                    metric,
                    bucket,
                    first,
                    "history compaction left a loose row as it was: its body does not read"
                );
                sliced.unreadable += 1;
                return Ok((sliced, Some(at(first.saturating_add(1)))));
            }
        };
        let (taken, bad_rows) =
            loose::take(connection, tier, metric, bucket, (first, last), &intervals)?;
        sliced.unreadable += bad_rows;
        let mut remove = connection.prepare_cached(
            "DELETE FROM tier_samples
             WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND series = ?4",
        )?;
        let mut insert = connection.prepare_cached(
            "INSERT INTO tier_samples (tier, metric, bucket, series, ts, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (series, cells) in taken {
            let merged = match merged(connection, tier, bucket, metric, series, &cells) {
                Ok(merged) => merged,
                Err(why) => {
                    tracing::warn!(
                        tier = tier.resolution_ms,
                        metric,
                        bucket,
                        series,
                        "history compaction left a series' bucket as it was: {why}"
                    );
                    sliced.unreadable += 1;
                    // Its loose cells go back where they were.
                    for (ts, cell) in &cells {
                        loose::put(connection, tier, metric, *ts, &[(series, &cell[..])])?;
                    }
                    continue;
                }
            };
            remove.execute(params![tier.resolution_ms, metric, bucket, series])?;
            // Every cell before the cut: the series has nothing left here.
            let bodies = match merged.is_empty() {
                true => Vec::new(),
                false => packed::pack_chunks(&merged, tiers::PACKED_BODY),
            };
            for (k, body) in bodies.iter().enumerate() {
                insert.execute(params![
                    tier.resolution_ms,
                    metric,
                    bucket,
                    series,
                    -1 - k as i64,
                    body
                ])?;
            }
            sliced.packed += 1;
            sliced.rows += cells.len();
        }
        return Ok((sliced, Some(at(last.saturating_add(1)))));
    }
    Ok((sliced, None))
}

/// A series' cells of a bucket by slot: its packed rows', each replaced by its loose cell
/// (`loose`, in time order) at the same interval; none before the tier's expiry cut.
fn merged(
    connection: &Connection,
    tier: Tier,
    bucket: i64,
    metric: i64,
    series: i64,
    loose: &[(i64, Vec<u8>)],
) -> Result<Vec<(u32, Cell)>, String> {
    let cut = tiers::cut(connection, tier, metric)
        .map_err(|e| e.to_string())?
        .unwrap_or(i64::MIN);
    let packed: Vec<(i64, Vec<u8>)> = connection
        .prepare_cached(
            "SELECT ts, body FROM tier_samples
             WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND series = ?4",
        )
        .and_then(|mut statement| {
            statement
                .query_map(params![tier.resolution_ms, metric, bucket, series], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect()
        })
        .map_err(|e| e.to_string())?;
    let mut cells = Vec::new();
    for (ts, body) in &packed {
        cells.extend(tiers::row_cells(tier, bucket, *ts, body)?);
    }
    for (ts, body) in loose {
        cells.push((*ts, Cell::decode(body)?));
    }
    let start = tier.bucket_start(bucket);
    let mut by_slot = std::collections::BTreeMap::new();
    // Packed cells first, then the loose ones: a later insert wins.
    for (at, cell) in cells {
        let slot = (at - start) / tier.resolution_ms;
        if at >= cut && (0..tiers::SLOTS_PER_BUCKET).contains(&slot) {
            by_slot.insert(slot as u32, cell);
        }
    }
    Ok(by_slot.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom::query::{Asked, Bins, CellBinner};
    use crate::definitions::Aggregation;
    use crate::store::sqlite::{SqliteEngine, SqliteReader};
    use crate::store::{Engine, Reader, Write, Written};

    /// A whole 6 minutes: the 1 s tier's buckets start here.
    const T0: i64 = 1_764_000_000_000;
    const S: i64 = 1000;
    const MIN: i64 = 60 * S;
    const HOUR: i64 = 60 * MIN;
    const DAY: i64 = 24 * HOUR;

    fn tiers() -> Arc<[Tier]> {
        let tier = |resolution_ms, retention_ms| Tier {
            resolution_ms,
            retention_ms,
        };
        Arc::from(vec![
            tier(S, DAY),
            tier(MIN, 30 * DAY),
            tier(HOUR, 365 * DAY),
        ])
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        engine: SqliteEngine,
        reader: SqliteReader,
        /// counter, gauge, histogram, summary
        metrics: [i64; 4],
    }

    fn open() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, reader) = crate::store::sqlite::open(dir.path()).unwrap();
        let mut metrics = [0; 4];
        for (i, name) in ["reqs", "temp", "lat", "q"].into_iter().enumerate() {
            let put = Write::PutMetric(crate::history::stored_family(name));
            let Ok(Written::Metric(id)) = engine.commit(&[put]).unwrap()[0] else {
                panic!("no id");
            };
            metrics[i] = id;
        }
        let path = dir.path().join(crate::store::sqlite::FILE_NAME);
        Fixture {
            _dir: dir,
            path,
            engine,
            reader,
            metrics,
        }
    }

    /// The k-th tick's batch: two counter series, a gauge with noise, a histogram, a summary.
    fn tick(f: &Fixture, ts_ms: i64, k: u64) -> Write {
        let [reqs, temp, lat, q] = f.metrics;
        let mut batch = SampleBatch {
            tiers: tiers(),
            metrics: f.metrics.to_vec(),
            ts_ms,
            ..SampleBatch::default()
        };
        for path in ["/a", "/b"] {
            let labels: Arc<str> = format!(r#"{{"path":"{path}"}}"#).into();
            let increase = ((k * 7 + path.len() as u64) % 13) as f64;
            batch.push(reqs, labels, |out| Cell::scalar(increase).encode(out));
        }
        let noise = (k as f64 * 0.37).sin() * 3.0 + 21.0;
        batch.push(temp, "{}".into(), |out| Cell::scalar(noise).encode(out));
        batch.push(lat, "{}".into(), |out| {
            tiers::encode_histogram(
                out,
                3 + k % 4,
                0.25 * k as f64,
                &[k % 3, 1, k % 4 + 2 - k % 3],
            )
        });
        let median = if k.is_multiple_of(11) {
            f64::NAN
        } else {
            0.5 + k as f64 * 0.01
        };
        batch.push(q, "{}".into(), |out| {
            tiers::encode_summary(out, 1, k % 5, 1.5 * k as f64, &[(0.5, median), (0.99, 2.0)])
        });
        Write::Samples(Box::new(batch))
    }

    /// 800 s of ticks (every 7th missing), then one 7 hours on and one 16 days on: each tier
    /// then has closed buckets, their rollups done.
    fn load(f: &mut Fixture) {
        let ticks: Vec<Write> = (0..800u64)
            .filter(|k| k % 7 != 3)
            .map(|k| tick(f, T0 + k as i64 * S, k))
            .chain([tick(f, T0 + 7 * HOUR, 900), tick(f, T0 + 16 * DAY, 901)])
            .collect();
        for chunk in ticks.chunks(100) {
            for result in f.engine.commit(chunk).unwrap() {
                result.unwrap();
            }
        }
    }

    fn compact_all(f: &mut Fixture) {
        let mut slices = 0;
        while f.engine.busy() {
            f.engine.work().unwrap();
            slices += 1;
            assert!(slices < 1000, "compaction does not end");
        }
    }

    /// Every answer a query can give from the store: raw scans (the range read and the
    /// per-series seeks), and the bins of every aggregation, per tier and metric.
    fn answers(f: &Fixture) -> Vec<String> {
        let bounds = [0.1, 1.0];
        let mut out = Vec::new();
        let ranges = [
            (S, (T0, T0 + 800 * S), 10 * S),
            // Across the 1 s tier's bucket boundary at T0 + 360 s, from inside a bucket.
            (S, (T0 + 123 * S, T0 + 555 * S), 3 * S),
            (MIN, (T0 - HOUR, T0 + 8 * HOUR), 5 * MIN),
            (HOUR, (T0 - DAY, T0 + 17 * DAY), HOUR),
        ];
        let asked = [
            Aggregation::Average,
            Aggregation::Sum,
            Aggregation::Min,
            Aggregation::Max,
            Aggregation::Last,
            Aggregation::Count,
        ]
        .map(Asked::Plain)
        .into_iter()
        .chain([Asked::Quantile(0.5), Asked::Quantile(0.9)]);
        let asked: Vec<Asked> = asked.collect();
        for (resolution_ms, (start, end), step) in ranges {
            let tier = *tiers()
                .iter()
                .find(|t| t.resolution_ms == resolution_ms)
                .unwrap();
            for metric in f.metrics {
                let series = series_ids(f, metric);
                for filter in [None, Some(&series[..])] {
                    let mut raw = Vec::new();
                    f.reader
                        .scan_tier(tier, metric, start, end, filter, &mut |s, ts, cell| {
                            raw.push(format!("{s} {ts} {cell:?}"))
                        })
                        .unwrap();
                    raw.sort();
                    out.push(raw.join("\n"));
                }
                for &asked in &asked {
                    let mut binner = CellBinner::new(Bins::new(start, end, step).unwrap());
                    f.reader
                        .scan_tier(tier, metric, start, end, None, &mut |s, ts, cell| {
                            binner.add(s, ts, cell)
                        })
                        .unwrap();
                    let mut bins: Vec<_> = binner.finish(asked, &bounds).into_iter().collect();
                    bins.sort_by_key(|b| b.0);
                    out.push(format!("{resolution_ms} {metric} {asked:?} {bins:?}"));
                }
            }
        }
        out
    }

    /// The ids of `metric`'s series.
    fn series_ids(f: &Fixture, metric: i64) -> Vec<i64> {
        f.reader
            .series(metric)
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect()
    }

    fn rows(f: &Fixture, sql: &str) -> i64 {
        let connection = Connection::open(&f.path).unwrap();
        connection.query_row(sql, [], |row| row.get(0)).unwrap()
    }

    /// Each closed bucket [`load`] leaves in each tier is one row per series: the 1 s tier's
    /// three of the first 800 s and the one 7 h on, the minute tier's two (6 h each, T0 is 4 h
    /// into one), the hour tier's first (15 days).
    fn assert_every_closed_bucket_packed(f: &Fixture) {
        for (tier, closed) in [(S, 4), (MIN, 2), (HOUR, 1)] {
            let packed = rows(
                f,
                &format!(
                    "SELECT count(*) FROM (SELECT DISTINCT metric, bucket, series
                     FROM tier_samples WHERE tier = {tier} AND ts < 0)"
                ),
            );
            assert_eq!(packed, 5 * closed, "tier {tier}");
        }
    }

    #[test]
    fn every_query_answers_the_same_after_compaction() {
        let mut f = open();
        load(&mut f);
        let before = answers(&f);
        assert!(before.iter().any(|a| a.contains("Histogram")));
        let loose_before = rows(&f, "SELECT count(*) FROM tier_loose");
        assert_eq!(rows(&f, "SELECT count(*) FROM tier_samples"), 0);
        compact_all(&mut f);
        assert_eq!(answers(&f), before);
        assert_every_closed_bucket_packed(&f);
        let loose_after = rows(&f, "SELECT count(*) FROM tier_loose");
        assert!(
            loose_after * 10 < loose_before,
            "{loose_after} of {loose_before}"
        );
        // Nothing more to do until the next tick.
        assert!(!f.engine.busy());
    }

    #[test]
    fn a_store_filled_before_the_daemon_started_is_compacted_without_waiting_for_a_tick() {
        let mut f = open();
        load(&mut f);
        // A new writer on the file, as after a restart: no tick has come, nothing is due.
        let (engine, _) = crate::store::sqlite::open(f._dir.path()).unwrap();
        drop(std::mem::replace(&mut f.engine, engine));
        assert!(!f.engine.busy());
        let compact = Write::Compact {
            tiers: tiers(),
            closed_before_ms: T0 + 16 * DAY,
        };
        assert!(matches!(
            f.engine.commit(&[compact]).unwrap()[0],
            Ok(Written::Done)
        ));
        assert!(f.engine.busy());
        compact_all(&mut f);
        // The same buckets as after the ticks (the test above).
        assert_every_closed_bucket_packed(&f);
    }

    #[test]
    fn a_series_packed_in_several_rows_is_read_in_time_order() {
        let mut f = open();
        load(&mut f);
        compact_all(&mut f);
        let tier = tiers()[0];
        let in_order = |f: &Fixture| {
            for metric in f.metrics {
                let series = series_ids(f, metric);
                for filter in [None, Some(&series[..])] {
                    let mut last = std::collections::HashMap::new();
                    let mut seen = 0;
                    f.reader
                        .scan_tier(tier, metric, T0, T0 + 800 * S, filter, &mut |s, ts, _| {
                            if let Some(before) = last.insert(s, ts) {
                                assert!(
                                    ts > before,
                                    "metric {metric} series {s}: {ts} after {before}"
                                );
                            }
                            seen += 1;
                        })
                        .unwrap();
                    assert!(seen > 600, "metric {metric}: {seen} cells");
                }
            }
        };
        // The histogram's and the summary's full buckets take more than one row each.
        let chunked = "SELECT count(*) FROM tier_samples WHERE tier = 1000 AND ts < -1";
        assert!(rows(&f, chunked) > 0);
        in_order(&f);
        // With a late cell to merge into a packed bucket.
        for result in f.engine.commit(&[tick(&f, T0 + 5 * S, 50)]).unwrap() {
            result.unwrap();
        }
        in_order(&f);
    }

    #[test]
    fn a_late_row_in_a_packed_bucket_is_read_and_packed_again() {
        let mut f = open();
        load(&mut f);
        compact_all(&mut f);
        let [reqs, ..] = f.metrics;
        let tier = tiers()[0];
        let read = |f: &Fixture, at: i64| {
            let mut found = Vec::new();
            f.reader
                .scan_tier(tier, reqs, at, at + S, None, &mut |s, ts, cell| {
                    found.push((s, ts, cell))
                })
                .unwrap();
            found
        };
        // The clock stepped back: one tick lands in the first bucket, over a sample (5 s) and
        // in a gap (3 s, every 7th tick is missing).
        for (at, k) in [(5, 50), (3, 30)] {
            for result in f.engine.commit(&[tick(&f, T0 + at * S, k)]).unwrap() {
                result.unwrap();
            }
        }
        let late = ((50 * 7 + 2) % 13) as f64;
        assert_eq!(read(&f, T0 + 5 * S)[0].2, Cell::scalar(late));
        assert_eq!(read(&f, T0 + 3 * S).len(), 2);
        let before = answers(&f);
        // One row per metric and tick (a chunk holds up to 64 series).
        let loose = "SELECT count(*) FROM tier_loose WHERE tier = 1000 AND bucket = 4900000";
        assert_eq!(rows(&f, loose), 8);
        assert!(f.engine.busy());
        compact_all(&mut f);
        assert_eq!(rows(&f, loose), 0);
        assert_eq!(answers(&f), before);
        assert_eq!(read(&f, T0 + 5 * S)[0].2, Cell::scalar(late));
    }

    #[test]
    fn a_corrupt_packed_row_is_reported_by_reads_and_left_by_compaction() {
        let mut f = open();
        load(&mut f);
        compact_all(&mut f);
        let [_, temp, ..] = f.metrics;
        let tier = tiers()[0];
        let connection = Connection::open(&f.path).unwrap();
        connection
            .execute(
                "UPDATE tier_samples SET body = x'05030107' WHERE tier = 1000 AND metric = ?1
                 AND bucket = 4900000 AND ts < 0",
                [temp],
            )
            .unwrap();
        let error = f
            .reader
            .scan_tier(tier, temp, T0, T0 + HOUR, None, &mut |_, _, _| {})
            .unwrap_err();
        assert!(error.to_string().contains("packed bucket"), "{error}");
        // A late row in that bucket: its compaction skips the unreadable series, and says so.
        for result in f.engine.commit(&[tick(&f, T0 + 5 * S, 5)]).unwrap() {
            result.unwrap();
        }
        let mut compaction = Compaction::default();
        let Write::Samples(batch) = tick(&f, T0 + 16 * DAY, 901) else {
            unreachable!()
        };
        compaction.sampled(&batch);
        let mut unreadable = 0;
        let mut packed = 0;
        while compaction.due() {
            let sliced = compaction.slice(&connection).unwrap();
            unreadable += sliced.unreadable;
            packed += sliced.packed;
        }
        assert_eq!((unreadable, packed), (1, 4));
        // The other series of the bucket read as before.
        let [reqs, ..] = f.metrics;
        let mut n = 0;
        f.reader
            .scan_tier(tier, reqs, T0, T0 + 360 * S, None, &mut |_, _, _| n += 1)
            .unwrap();
        assert_eq!(n, 2 * (0..360).filter(|k| k % 7 != 3).count());
    }

    #[test]
    fn expiry_hides_packed_cells_before_the_cut_and_drops_whole_buckets() {
        let mut f = open();
        load(&mut f);
        compact_all(&mut f);
        let [reqs, ..] = f.metrics;
        let tier = tiers()[0];
        let count = |f: &Fixture| {
            let mut n = 0;
            f.reader
                .scan_tier(tier, reqs, T0, T0 + 800 * S, None, &mut |_, _, _| n += 1)
                .unwrap();
            n
        };
        let all = count(&f);
        let expire = |f: &mut Fixture, before_ms| {
            let write = Write::ExpireHistory {
                metric: reqs,
                cuts: vec![(S, before_ms)],
            };
            f.engine.commit(&[write]).unwrap()[0].clone().unwrap();
        };
        // Into the first bucket: its packed rows stay, their cells before the cut unread.
        expire(&mut f, T0 + 100 * S);
        let kept_in_100s = 2 * (100 - (0..100).filter(|k| k % 7 == 3).count());
        assert_eq!(count(&f), all - kept_in_100s);
        let packed = format!(
            "SELECT count(*) FROM (SELECT DISTINCT bucket, series FROM tier_samples
             WHERE tier = 1000 AND ts < 0 AND metric = {reqs})"
        );
        // Two series, four closed buckets.
        assert_eq!(rows(&f, &packed), 8);
        // Past it: the bucket goes.
        expire(&mut f, T0 + 400 * S);
        assert_eq!(rows(&f, &packed), 6);
        // Compacting a bucket the cut falls in drops what is before the cut.
        let tick = tick(&f, T0 + 401 * S, 5);
        f.engine.commit(&[tick]).unwrap();
        compact_all(&mut f);
        let mut first = None;
        f.reader
            .scan_tier(tier, reqs, 0, T0 + DAY, None, &mut |_, ts, _| {
                first = first.or(Some(ts))
            })
            .unwrap();
        assert_eq!(first, Some(T0 + 400 * S));
        let connection = Connection::open(&f.path).unwrap();
        let mut statement = connection
            .prepare(
                "SELECT body FROM tier_samples WHERE tier = 1000 AND metric = ?1
                 AND bucket = 4900001 AND ts = -1",
            )
            .unwrap();
        let bodies: Vec<Vec<u8>> = (statement.query_map([reqs], |row| row.get(0)).unwrap())
            .map(Result::unwrap)
            .collect();
        assert_eq!(bodies.len(), 2);
        for body in bodies {
            let cells = tiers::row_cells(tier, 4_900_001, -1, &body).unwrap();
            assert_eq!(cells[0].0, T0 + 400 * S);
        }
    }

    /// A store as version 2 left it: loose rows one per series and interval in `tier_samples`
    /// (packed ones there too), no `tier_loose`.
    fn as_version_2(path: &std::path::Path) {
        let connection = Connection::open(path).unwrap();
        connection.execute_batch("BEGIN").unwrap();
        let rows: Vec<(i64, i64, i64, i64, i64, Vec<u8>)> = connection
            .prepare("SELECT tier, metric, bucket, ts, first, body FROM tier_loose")
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (tier, metric, bucket, ts, first, body) in rows {
            for (series, cell) in loose::cells(first, &body).unwrap() {
                connection
                    .execute(
                        "INSERT INTO tier_samples (tier, metric, bucket, series, ts, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        params![tier, metric, bucket, series, ts, cell],
                    )
                    .unwrap();
            }
        }
        connection
            .execute_batch("DROP TABLE tier_loose; PRAGMA user_version = 2; COMMIT")
            .unwrap();
    }

    #[test]
    fn a_version_2_store_is_moved_to_loose_chunks_at_open_and_reads_the_same() {
        for compacted_first in [false, true] {
            let mut f = open();
            load(&mut f);
            if compacted_first {
                compact_all(&mut f);
                // A late tick into a packed bucket: version 2 had it as loose rows there too.
                let late = tick(&f, T0 + 5 * S, 50);
                f.engine.commit(&[late]).unwrap()[0].clone().unwrap();
            }
            let before = answers(&f);
            let loose_cells = rows(&f, "SELECT count(*) FROM tier_loose");
            as_version_2(&f.path);
            assert!(rows(&f, "SELECT count(*) FROM tier_samples WHERE ts >= 0") > loose_cells);
            let dir = f.path.parent().unwrap().to_owned();
            let (engine, reader) = crate::store::sqlite::open(&dir).unwrap();
            (f.engine, f.reader) = (engine, reader);
            assert_eq!(rows(&f, "PRAGMA user_version"), 3);
            assert_eq!(
                rows(&f, "SELECT count(*) FROM tier_samples WHERE ts >= 0"),
                0
            );
            assert_eq!(rows(&f, "SELECT count(*) FROM tier_loose"), loose_cells);
            assert_eq!(answers(&f), before, "compacted first: {compacted_first}");
            // And compaction goes on from there.
            let Write::Samples(batch) = tick(&f, T0 + 16 * DAY + S, 902) else {
                unreachable!()
            };
            f.engine.commit(&[Write::Samples(batch)]).unwrap();
            compact_all(&mut f);
            let [reqs, ..] = f.metrics;
            let mut n = 0;
            f.reader
                .scan_tier(tiers()[0], reqs, T0, T0 + 360 * S, None, &mut |_, _, _| {
                    n += 1
                })
                .unwrap();
            assert_eq!(n, 2 * (0..360).filter(|k| k % 7 != 3).count());
        }
    }

    /// Ticks whose series come and go (each a different subset of 300, not in id order): a
    /// closed bucket's loose cells are all packed, each series' where it was.
    #[test]
    fn series_that_come_and_go_leave_no_loose_cell_in_a_closed_bucket() {
        let mut f = open();
        let [reqs, ..] = f.metrics;
        let write = |f: &mut Fixture, ts_ms: i64, k: i64| {
            let mut batch = SampleBatch {
                tiers: tiers(),
                metrics: f.metrics.to_vec(),
                ts_ms,
                ..SampleBatch::default()
            };
            for series in (0..300)
                .rev()
                .filter(|s| (s + k) % 3 != 0 && (s * k) % 7 != 1)
            {
                let labels: Arc<str> = format!(r#"{{"s":"{series}"}}"#).into();
                batch.push(reqs, labels, |out| {
                    Cell::scalar((series * 10 + k) as f64).encode(out)
                });
            }
            let results = f.engine.commit(&[Write::Samples(Box::new(batch))]).unwrap();
            results[0].clone().unwrap();
        };
        for k in 0..360 {
            write(&mut f, T0 + k * S, k);
        }
        // Closes the first bucket.
        write(&mut f, T0 + 400 * S, 400);
        let tier = tiers()[0];
        let read = |f: &Fixture| {
            let mut found = Vec::new();
            (f.reader)
                .scan_tier(tier, reqs, T0, T0 + 360 * S, None, &mut |s, ts, cell| {
                    found.push((s, ts, cell))
                })
                .unwrap();
            found.sort_by_key(|c| (c.0, c.1));
            found
        };
        let before = read(&f);
        compact_all(&mut f);
        let loose = "SELECT count(*) FROM tier_loose WHERE tier = 1000 AND bucket = 4900000";
        assert_eq!(rows(&f, loose), 0);
        assert_eq!(read(&f), before);
        let expected: usize = (0..360)
            .map(|k| {
                (0..300)
                    .filter(|s| (s + k) % 3 != 0 && (s * k) % 7 != 1)
                    .count()
            })
            .sum();
        assert_eq!(before.len(), expected);
    }
}
