//! Rollups of recorded points: the points recorded through the API (table `points`, exact, kept
//! for their metric's retention) folded into the history tiers' table ([`super::tiers`]), so a
//! long range at a coarse step reads one cell per series and interval instead of every point.
//! A point's cell is [`Cell::scalar`] of its value, folded in time order: count, sum, min, max
//! and last, the same as a query of the points makes of them.
//!
//! Table `rollups_due`, `WITHOUT ROWID`, keyed metric → tier → interval start: each interval
//! holding points its tier's cell does not include yet.
//! - When points move into `points`, their finest intervals are marked due in the same
//!   transaction ([`mark`]).
//! - [`roll`] rebuilds due intervals that have closed, finest first, in one transaction: a finest
//!   cell from the interval's points, a coarser one from the finer cells (as the sampler's
//!   rollups do). Rolling an interval marks the coarser interval holding it due, and unmarks it.
//! - So in every read snapshot a tier's cells of a metric are exact before that metric's earliest
//!   due interval in this tier or a finer one ([`rolled_until`]). A query reads cells up to there
//!   and points after it: a late point (an import with old timestamps) is never hidden by a
//!   stale cell, only read from `points` until its interval is rolled again.
//!
//! Only the tiers' resolutions matter here; the rollups stay as long as the points do (expiry and
//! deletion remove both). The resolutions are kept in `meta` (`rollup_tier:<i>`), so recovery at
//! open marks with the tiers the points were marked with before; a daemon that runs other tiers
//! ([`set_tiers`]) drops every rollup of points and marks all points due again.

use std::collections::{BTreeMap, HashSet};

use rusqlite::{Connection, OptionalExtension, params};

use super::bucket_of;
use super::journal::Pending;
use super::tiers::{self, Cell, Tier};

/// The table, added to schema version 2 (older files gain it at open; it is only read here).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS rollups_due (
    metric INTEGER NOT NULL,
    tier INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    PRIMARY KEY (metric, tier, ts)
) WITHOUT ROWID;
";

/// Most due intervals one [`roll`] rebuilds: a backlog (the first start on a store full of
/// points) is worked off in slices, so no transaction holds the writer long.
pub const ROLL_SLICE: usize = 256;

/// The start of the interval of `resolution_ms` holding `ts_ms`.
fn floor(ts_ms: i64, resolution_ms: i64) -> i64 {
    ts_ms - ts_ms.rem_euclid(resolution_ms)
}

/// The tier resolutions points were last rolled at, finest first; empty when never.
pub fn load_tiers(connection: &Connection) -> rusqlite::Result<Vec<i64>> {
    let mut statement = connection.prepare(
        "SELECT CAST(substr(key, 13) AS INTEGER), value FROM meta
         WHERE key LIKE 'rollup_tier:%' ORDER BY 1",
    )?;
    let rows = statement.query_map([], |row| row.get::<_, i64>(1))?;
    rows.collect()
}

/// Makes `resolutions` the tiers points roll into. The same as before: nothing to do. Others:
/// every rollup of points goes, and every interval holding points is marked due in the new
/// finest tier (a full read of `points`: rare, and [`roll`] works it off in slices). Inside the
/// caller's transaction.
pub fn set_tiers(connection: &Connection, resolutions: &[i64]) -> rusqlite::Result<bool> {
    if load_tiers(connection)? == resolutions {
        return Ok(false);
    }
    // The metrics with points are those rollups were made for: history metrics have none.
    connection.execute_batch(
        "DELETE FROM tier_samples WHERE metric IN (SELECT DISTINCT metric FROM points);
         DELETE FROM tier_loose WHERE metric IN (SELECT DISTINCT metric FROM points);
         DELETE FROM rollups_due;
         DELETE FROM meta WHERE key LIKE 'rollup_tier:%';",
    )?;
    for (index, resolution) in resolutions.iter().enumerate() {
        connection.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)",
            params![format!("rollup_tier:{index}"), resolution],
        )?;
    }
    if let Some(&finest) = resolutions.first() {
        connection.execute(
            "INSERT OR IGNORE INTO rollups_due (metric, tier, ts)
             SELECT DISTINCT metric, ?1, ts - (((ts % ?1) + ?1) % ?1) FROM points",
            [finest],
        )?;
    }
    Ok(true)
}

/// Marks the finest intervals holding `points` due, inside the transaction that moves them into
/// `points`.
pub fn mark(connection: &Connection, finest: i64, points: &[Pending]) -> rusqlite::Result<()> {
    let mut seen = HashSet::new();
    let mut insert = connection.prepare_cached(
        "INSERT OR IGNORE INTO rollups_due (metric, tier, ts) VALUES (?1, ?2, ?3)",
    )?;
    for point in points {
        let interval = (point.metric, floor(point.ts_ms, finest));
        if seen.insert(interval) {
            insert.execute(params![interval.0, finest, interval.1])?;
        }
    }
    Ok(())
}

/// Rebuilds up to [`ROLL_SLICE`] due intervals that closed by `now_ms`, finest tier first, and
/// answers how many. Inside the caller's transaction.
pub fn roll(connection: &Connection, tiers: &[Tier], now_ms: i64) -> rusqlite::Result<usize> {
    let mut rolled = 0;
    for (index, &tier) in tiers.iter().enumerate() {
        let due: Vec<(i64, i64)> = connection
            .prepare_cached(
                "SELECT metric, ts FROM rollups_due WHERE tier = ?1 AND ts <= ?2
                 ORDER BY ts LIMIT ?3",
            )?
            .query_map(
                params![
                    tier.resolution_ms,
                    now_ms - tier.resolution_ms,
                    (ROLL_SLICE - rolled) as i64
                ],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        for (metric, start) in due {
            let end = start + tier.resolution_ms;
            match index {
                0 => roll_points(connection, tier, metric, start, end)?,
                _ => tiers::roll_up(connection, tiers[index - 1], tier, metric, start, end)?,
            }
            if let Some(coarser) = tiers.get(index + 1) {
                connection
                    .prepare_cached(
                        "INSERT OR IGNORE INTO rollups_due (metric, tier, ts) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![
                        metric,
                        coarser.resolution_ms,
                        floor(start, coarser.resolution_ms)
                    ])?;
            }
            connection
                .prepare_cached(
                    "DELETE FROM rollups_due WHERE metric = ?1 AND tier = ?2 AND ts = ?3",
                )?
                .execute(params![metric, tier.resolution_ms, start])?;
            rolled += 1;
        }
        if rolled >= ROLL_SLICE {
            break;
        }
    }
    Ok(rolled)
}

/// Writes `tier`'s cells of `metric` over `[start, end)` (one interval) from its points.
fn roll_points(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    start: i64,
    end: i64,
) -> rusqlite::Result<()> {
    let mut folded: BTreeMap<i64, Cell> = BTreeMap::new();
    // Each series' points come in time order (then posting order): `last` is the last posted.
    super::sqlite::scan_points(
        connection,
        metric,
        start,
        end,
        None,
        &mut |series, _, value| {
            let cell = Cell::scalar(value);
            folded
                .entry(series)
                .and_modify(|sofar| sofar.merge(&cell))
                .or_insert(cell);
        },
    )?;
    tiers::put_cells(
        connection,
        tier,
        metric,
        folded
            .into_iter()
            .map(|(series, cell)| (series, start, cell)),
    )
}

/// Where `metric`'s cells in the last of `tiers` (finest first) stop being exact: the start of
/// its interval holding the earliest due interval of that tier or a finer one; `i64::MAX` when
/// nothing is due.
pub fn rolled_until(connection: &Connection, metric: i64, tiers: &[Tier]) -> rusqlite::Result<i64> {
    let Some(last) = tiers.last() else {
        return Ok(i64::MIN);
    };
    let mut until = i64::MAX;
    let mut earliest = connection
        .prepare_cached("SELECT MIN(ts) FROM rollups_due WHERE metric = ?1 AND tier = ?2")?;
    for tier in tiers {
        let due: Option<i64> = earliest
            .query_row(params![metric, tier.resolution_ms], |row| row.get(0))
            .optional()?
            .flatten();
        if let Some(due) = due {
            until = until.min(floor(due, last.resolution_ms));
        }
    }
    Ok(until)
}

/// Removes `metric`'s rollups before `before_ms`, with its points' expiry. A cell straddling
/// the cut is rebuilt from the points left (its finest interval is marked due, and rolling it
/// marks the coarser ones), or goes with the cut when no point is left in it; either way no
/// cell keeps a point older than the cut.
pub fn expire(connection: &Connection, metric: i64, before_ms: i64) -> rusqlite::Result<u64> {
    let resolutions = load_tiers(connection)?;
    let (Some(&finest), Some(&coarsest)) = (resolutions.first(), resolutions.last()) else {
        return Ok(0);
    };
    let from = floor(before_ms, coarsest);
    let left: Option<i64> = connection
        .prepare_cached(
            "SELECT 1 FROM points
             WHERE metric = ?1 AND bucket >= ?2 AND bucket <= ?3 AND ts >= ?4 AND ts < ?5
             LIMIT 1",
        )?
        .query_row(
            params![
                metric,
                bucket_of(from),
                bucket_of(from + coarsest - 1),
                before_ms,
                from + coarsest
            ],
            |row| row.get(0),
        )
        .optional()?;
    let mut removed = 0;
    for &resolution in &resolutions {
        let tier = Tier::of_resolution(resolution);
        let straddling = floor(before_ms, resolution);
        let cut = match left {
            Some(_) => straddling,
            None => straddling + resolution,
        };
        removed += tiers::expire_before(connection, tier, metric, cut)?;
    }
    connection.execute(
        "DELETE FROM rollups_due WHERE metric = ?1 AND ts < ?2",
        params![metric, before_ms],
    )?;
    if left.is_some() {
        connection.execute(
            "INSERT OR IGNORE INTO rollups_due (metric, tier, ts) VALUES (?1, ?2, ?3)",
            params![metric, finest, floor(before_ms, finest)],
        )?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::tests::with_a_metric;
    use crate::store::sqlite::{SqliteEngine, SqliteReader, open};
    use crate::store::{Engine, Point, Reader, Write, Written, labels_key};

    const TIERS: [i64; 3] = [10_000, 60_000, 3_600_000];

    fn tiers(upto: usize) -> Vec<Tier> {
        TIERS[..upto]
            .iter()
            .map(|&resolution_ms| Tier::of_resolution(resolution_ms))
            .collect()
    }

    /// A store with one gauge, its points rolling into [`TIERS`].
    fn store() -> (tempfile::TempDir, SqliteEngine, SqliteReader, i64) {
        let (dir, mut engine, reader, id) = with_a_metric();
        engine
            .commit(&[Write::RollupTiers(TIERS.to_vec())])
            .unwrap();
        (dir, engine, reader, id)
    }

    fn record(engine: &mut SqliteEngine, metric: i64, points: &[(&str, i64, f64)]) {
        let points = points
            .iter()
            .map(|&(label, ts_ms, value)| Point {
                labels: labels_key([("k", label)]).into(),
                ts_ms,
                value,
            })
            .collect();
        let results = engine.commit(&[Write::Points { metric, points }]).unwrap();
        assert!(results[0].is_ok());
        engine.apply_pending().unwrap();
    }

    fn roll_all(engine: &mut SqliteEngine, now_ms: i64) -> usize {
        let mut total = 0;
        loop {
            let results = engine.commit(&[Write::Roll { now_ms }]).unwrap();
            let Ok(Written::Rolled(n)) = results[0] else {
                panic!("not rolled: {results:?}");
            };
            total += n;
            if n < ROLL_SLICE {
                return total;
            }
        }
    }

    /// `(series, ts, cell)` of `tier`'s cells over `[start, end)`, by series.
    fn cells(
        reader: &SqliteReader,
        tier: Tier,
        metric: i64,
        start: i64,
        end: i64,
    ) -> Vec<(i64, i64, Cell)> {
        let mut out = Vec::new();
        reader
            .scan_tier(tier, metric, start, end, None, &mut |series, ts, cell| {
                out.push((series, ts, cell))
            })
            .unwrap();
        // Series may take turns; each one's cells come in time order (a stable sort keeps it).
        out.sort_by_key(|c| c.0);
        out
    }

    fn scalar(values: &[f64]) -> Cell {
        let mut cells = values.iter().map(|&v| Cell::scalar(v));
        let mut folded = cells.next().unwrap();
        cells.for_each(|cell| folded.merge(&cell));
        folded
    }

    #[test]
    fn closed_intervals_roll_up_in_every_tier_and_open_ones_wait() {
        let (_dir, mut engine, reader, id) = store();
        // Two series; the same millisecond twice (the later posted is the last).
        record(
            &mut engine,
            id,
            &[
                ("a", 1_000, 4.0),
                ("a", 9_999, 2.0),
                ("a", 9_999, 3.0),
                ("b", 5_000, 10.0),
                ("a", 10_000, 7.0),
                ("a", 65_000, 1.0),
            ],
        );
        // At 30 s: [0, 10 s) and [10 s, 20 s) are closed, [60 s, 70 s) is not.
        assert_eq!(roll_all(&mut engine, 30_000), 2);
        let finest = tiers(1)[0];
        let series: Vec<i64> = reader
            .series(id)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        let (a, b) = (series[0], series[1]);
        assert_eq!(
            cells(&reader, finest, id, 0, 3_600_000),
            vec![
                (a, 0, scalar(&[4.0, 2.0, 3.0])),
                (a, 10_000, scalar(&[7.0])),
                (b, 0, scalar(&[10.0])),
            ]
        );
        // Cells are exact before the open interval: finest at 60 s, the minute tier at 0 (its
        // first minute is due, not closed), the hour at 0.
        assert_eq!(reader.rolled_until(id, &tiers(1)).unwrap(), 60_000);
        assert_eq!(reader.rolled_until(id, &tiers(2)).unwrap(), 0);
        assert_eq!(reader.rolled_until(id, &tiers(3)).unwrap(), 0);

        // Two hours later everything has closed: each tier holds the fold of its points.
        roll_all(&mut engine, 2 * 3_600_000);
        for upto in 1..=3 {
            assert_eq!(reader.rolled_until(id, &tiers(upto)).unwrap(), i64::MAX);
        }
        assert_eq!(
            cells(&reader, tiers(2)[1], id, 0, 3_600_000),
            vec![
                (a, 0, scalar(&[4.0, 2.0, 3.0, 7.0])),
                (a, 60_000, scalar(&[1.0])),
                (b, 0, scalar(&[10.0])),
            ]
        );
        assert_eq!(
            cells(&reader, tiers(3)[2], id, 0, 3_600_000),
            vec![
                (a, 0, scalar(&[4.0, 2.0, 3.0, 7.0, 1.0])),
                (b, 0, scalar(&[10.0]))
            ]
        );
    }

    #[test]
    fn a_late_point_makes_its_intervals_due_again_until_rolled() {
        let (_dir, mut engine, reader, id) = store();
        record(&mut engine, id, &[("a", 1_000, 1.0), ("a", 125_000, 5.0)]);
        roll_all(&mut engine, 2 * 3_600_000);
        assert_eq!(reader.rolled_until(id, &tiers(3)).unwrap(), i64::MAX);
        // An import with an old timestamp: the cells holding it are stale until rolled.
        record(&mut engine, id, &[("a", 70_000, 2.0)]);
        assert_eq!(reader.rolled_until(id, &tiers(1)).unwrap(), 70_000);
        assert_eq!(reader.rolled_until(id, &tiers(2)).unwrap(), 60_000);
        assert_eq!(reader.rolled_until(id, &tiers(3)).unwrap(), 0);
        roll_all(&mut engine, 2 * 3_600_000);
        assert_eq!(reader.rolled_until(id, &tiers(3)).unwrap(), i64::MAX);
        let hour = cells(&reader, tiers(3)[2], id, 0, 3_600_000);
        assert_eq!(hour.len(), 1);
        assert_eq!(hour[0].2, scalar(&[1.0, 2.0, 5.0]));
    }

    #[test]
    fn points_recorded_before_the_tiers_were_set_are_rolled_and_new_tiers_rebuild() {
        let (dir, mut engine, reader, id) = with_a_metric();
        record(&mut engine, id, &[("a", 1_000, 1.0), ("a", 61_000, 2.0)]);
        engine
            .commit(&[Write::RollupTiers(TIERS[..2].to_vec())])
            .unwrap();
        roll_all(&mut engine, 3_600_000);
        assert_eq!(cells(&reader, tiers(2)[1], id, 0, 3_600_000).len(), 2);

        // Reopened with another finest tier: the old rollups go, the new ones are made.
        drop(engine);
        let (mut engine, reader) = open(dir.path()).unwrap();
        engine
            .commit(&[Write::RollupTiers(vec![20_000, 60_000])])
            .unwrap();
        assert!(cells(&reader, tiers(1)[0], id, 0, 3_600_000).is_empty());
        let minute = Tier::of_resolution(60_000);
        assert!(cells(&reader, minute, id, 0, 3_600_000).is_empty());
        roll_all(&mut engine, 3_600_000);
        let twenty = Tier::of_resolution(20_000);
        let got: Vec<i64> = cells(&reader, twenty, id, 0, 3_600_000)
            .iter()
            .map(|c| c.1)
            .collect();
        assert_eq!(got, vec![0, 60_000]);
        assert_eq!(cells(&reader, minute, id, 0, 3_600_000).len(), 2);
    }

    #[test]
    fn points_journaled_before_a_crash_are_marked_with_the_tiers_of_before() {
        let (dir, mut engine, _reader, id) = store();
        let points = vec![Point {
            labels: labels_key([("k", "a")]).into(),
            ts_ms: 5_000,
            value: 3.0,
        }];
        // Committed to the journal, never applied: what `kill -9` leaves.
        engine
            .commit(&[Write::Points { metric: id, points }])
            .unwrap();
        std::mem::forget(engine);
        let (mut engine, reader) = open(dir.path()).unwrap();
        assert_eq!(reader.rolled_until(id, &tiers(1)).unwrap(), 0);
        roll_all(&mut engine, 3_600_000);
        assert_eq!(
            cells(&reader, tiers(1)[0], id, 0, 3_600_000)[0].2,
            scalar(&[3.0])
        );
    }

    #[test]
    fn expiry_leaves_no_cell_holding_a_point_older_than_the_cut() {
        let (_dir, mut engine, reader, id) = store();
        record(
            &mut engine,
            id,
            &[("a", 1_000, 1.0), ("a", 30_000, 2.0), ("a", 95_000, 4.0)],
        );
        roll_all(&mut engine, 2 * 3_600_000);
        // The cut falls inside the first minute and inside the hour.
        let results = engine
            .commit(&[Write::Expire {
                metric: id,
                before_ms: 20_000,
            }])
            .unwrap();
        assert!(results[0].is_ok());
        roll_all(&mut engine, 2 * 3_600_000);
        let got = |upto: usize| -> Vec<(i64, Cell)> {
            let tier = tiers(upto)[upto - 1];
            cells(&reader, tier, id, 0, 3_600_000)
                .into_iter()
                .map(|(_, ts, cell)| (ts, cell))
                .collect()
        };
        assert_eq!(
            got(1),
            vec![(30_000, scalar(&[2.0])), (90_000, scalar(&[4.0]))]
        );
        assert_eq!(got(2), vec![(0, scalar(&[2.0])), (60_000, scalar(&[4.0]))]);
        assert_eq!(got(3), vec![(0, scalar(&[2.0, 4.0]))]);
    }

    #[test]
    fn deleting_a_metric_removes_its_rollups() {
        let (_dir, mut engine, reader, id) = store();
        record(&mut engine, id, &[("a", 1_000, 1.0), ("a", 70_000, 2.0)]);
        roll_all(&mut engine, 30_000);
        engine.commit(&[Write::DeleteMetric { id }]).unwrap();
        for upto in 1..=3 {
            assert!(cells(&reader, tiers(upto)[upto - 1], id, 0, 3_600_000).is_empty());
            assert_eq!(reader.rolled_until(id, &tiers(upto)).unwrap(), i64::MAX);
        }
    }
}
