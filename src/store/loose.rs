//! Loose history rows: the cells of a tier's intervals not compacted yet (the open buckets, and
//! late writes into closed ones), before [`super::compact`] moves them into the per-series packed
//! rows of [`super::tiers`]. This module owns their table, the body of one row (the cells of a
//! chunk of series at one interval), and their writes and reads.
//!
//! Table `tier_loose`, `WITHOUT ROWID`, keyed tier (its resolution in ms) → metric → time bucket
//! → interval start → the chunk's first series. Time before series: one tick's rows (one per
//! [`CHUNK_SERIES`] series of a metric) are appended together at the end of each metric's range.
//! Keyed series before time, as packed rows are, each series' rows of a bucket lie together, and
//! once a series has a page of them every tick dirties a page per series: at 100k series a tick
//! wrote ~100k pages (~400 MB) of WAL. Here it writes ~1,600 rows on a few hundred pages.
//!
//! At one (tier, metric, bucket, interval) the rows hold disjoint runs of series, increasing
//! from each key's `first`: a series has one cell per interval at most. A write at an interval
//! that has rows already merges into them (the new cell wins over the one it replaces) and
//! rewrites that interval's rows, which only late writes and rollups done again do.
//!
//! Body (integers are LEB128 varints):
//!
//! ```text
//! CHUNK (tag 6) · count · count × series gap · count × cell length · cells
//! ```
//!
//! The first gap is from the key's `first` (so 0), the others from the series before (so at
//! least 1); each cell is [`super::tiers::Cell::encode`]'s body. The lengths let a one-series read find its
//! cell without decoding the others. A row holds at most [`CHUNK_SERIES`] cells and keeps its
//! body within [`PACKED_BODY`] (a larger cell gets a row of its own), so it stays in its B-tree
//! page. A body that does not read back whole is an error, never a panic.

use std::collections::{BTreeMap, HashSet};

use rusqlite::{Connection, params};

use super::journal::{Reader, put_unsigned, varint_len};
use super::tiers::{PACKED_BODY, Tier};

/// The table, added in schema version 3 (version 2 kept loose rows in `tier_samples`: see
/// [`migrate`]).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tier_loose (
    tier INTEGER NOT NULL,
    metric INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    first INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (tier, metric, bucket, ts, first)
) WITHOUT ROWID;
";

/// Most series in one row.
pub const CHUNK_SERIES: usize = 64;

/// Rows of one interval whose series one compaction slice takes ([`next_run`]): about a page's.
pub const RUN_ROWS: i64 = 8;

/// The body tag of a chunk (after [`super::tiers::Cell::encode`]'s four and [`super::packed`]'s five).
const CHUNK: u8 = 6;

/// Above this many seeks (one per interval and series) a read of some series reads the whole
/// interval's rows instead.
const MAX_SEEKS: i64 = 20_000;

/// What [`scan`] calls with each cell: `(series, ts, cell body)`.
pub type Visit<'v> = dyn FnMut(i64, i64, &[u8]) -> rusqlite::Result<()> + 'v;

/// Loose cells taken out of their rows ([`take`]): by series, `(ts, cell body)` in time order.
pub type Taken = BTreeMap<i64, Vec<(i64, Vec<u8>)>>;

/// The error a body that does not read becomes.
pub(super) fn unreadable(why: &'static str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, why.into())
}

/// Appends the body of `cells` (`(series, cell body)`, series increasing) to `out`.
fn encode(cells: &[(i64, &[u8])], out: &mut Vec<u8>) {
    out.push(CHUNK);
    put_unsigned(out, cells.len() as u64);
    let mut previous = cells.first().map_or(0, |c| c.0);
    for (series, _) in cells {
        put_unsigned(out, (series - previous) as u64);
        previous = *series;
    }
    for (_, cell) in cells {
        put_unsigned(out, cell.len() as u64);
    }
    for (_, cell) in cells {
        out.extend_from_slice(cell);
    }
}

/// The header of a body: its series and where its cells start.
fn header(first: i64, body: &[u8]) -> Result<(Vec<i64>, Reader<'_>), &'static str> {
    let mut r = Reader { body, at: 0 };
    if r.byte()? != CHUNK {
        return Err("loose row: not a chunk");
    }
    let count = r.unsigned()?;
    // Each series takes at least three bytes (gap, length, a cell's tag).
    if count == 0 || count > body.len() as u64 {
        return Err("loose row: bad count");
    }
    let mut ids = Vec::with_capacity(count as usize);
    let mut series = first;
    for i in 0..count {
        let gap = r.unsigned()?;
        if (i == 0) != (gap == 0) || gap > i64::MAX as u64 {
            return Err("loose row: bad series gap");
        }
        series = series
            .checked_add(gap as i64)
            .ok_or("loose row: bad series gap")?;
        ids.push(series);
    }
    Ok((ids, r))
}

/// The cells of a row whose key's `first` is `first`: `(series, cell body)`, series increasing.
pub fn cells(first: i64, body: &[u8]) -> Result<Vec<(i64, &[u8])>, &'static str> {
    let (ids, mut r) = header(first, body)?;
    let mut lengths = Vec::with_capacity(ids.len());
    for _ in &ids {
        lengths.push(r.unsigned()?);
    }
    let mut at = r.at;
    let mut out = Vec::with_capacity(ids.len());
    for (series, len) in ids.into_iter().zip(lengths) {
        let end = (len as usize)
            .checked_add(at)
            .filter(|&end| end <= body.len() && len > 0)
            .ok_or("loose row: a cell past the body's end")?;
        out.push((series, &body[at..end]));
        at = end;
    }
    if at != body.len() {
        return Err("loose row: body longer than its cells");
    }
    Ok(out)
}

/// The cell of `series` in a row, if it has one, found without decoding the others.
fn find(first: i64, body: &[u8], series: i64) -> Result<Option<&[u8]>, &'static str> {
    let (ids, mut r) = header(first, body)?;
    let index = ids.binary_search(&series).ok();
    let (mut at, mut found) = (0usize, None);
    for i in 0..ids.len() {
        let len = usize::try_from(r.unsigned()?).map_err(|_| "loose row: bad length")?;
        if Some(i) == index {
            found = Some((at, len));
        }
        at = at.checked_add(len).ok_or("loose row: bad length")?;
    }
    if r.at.checked_add(at) != Some(body.len()) {
        return Err("loose row: cell lengths do not add up to the body");
    }
    Ok(found.map(|(start, len)| &body[r.at + start..r.at + start + len]))
}

/// Writes `cells` (`(series, cell body)`, series increasing, each once) of `metric` at `ts` in
/// `tier`, a cell replacing the one its series has there. Inside the caller's transaction; the
/// caller reopens the bucket for compaction.
pub fn put(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    ts: i64,
    cells: &[(i64, &[u8])],
) -> rusqlite::Result<()> {
    let bucket = tier.bucket_of(ts);
    let there: Vec<(i64, Vec<u8>)> = connection
        .prepare_cached(
            "SELECT first, body FROM tier_loose
             WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts = ?4",
        )?
        .query_map(params![tier.resolution_ms, metric, bucket, ts], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if there.is_empty() {
        return insert_chunks(connection, tier, metric, ts, cells);
    }
    // A late write or a rollup done again: merged, the new cells winning.
    let mut merged: BTreeMap<i64, &[u8]> = BTreeMap::new();
    for (first, body) in &there {
        merged.extend(self::cells(*first, body).map_err(unreadable)?);
    }
    merged.extend(cells.iter().copied());
    connection
        .prepare_cached(
            "DELETE FROM tier_loose WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts = ?4",
        )?
        .execute(params![tier.resolution_ms, metric, bucket, ts])?;
    let merged: Vec<(i64, &[u8])> = merged.into_iter().collect();
    insert_chunks(connection, tier, metric, ts, &merged)
}

/// Inserts `cells` as new rows at `ts`, [`CHUNK_SERIES`] and [`PACKED_BODY`] bytes at most each.
fn insert_chunks(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    ts: i64,
    cells: &[(i64, &[u8])],
) -> rusqlite::Result<()> {
    let mut insert = connection.prepare_cached(
        "INSERT INTO tier_loose (tier, metric, bucket, ts, first, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let bucket = tier.bucket_of(ts);
    let mut body = Vec::with_capacity(PACKED_BODY);
    let mut rest = cells;
    while let Some(&(first, _)) = rest.first() {
        // Tag and count, then per cell its gap, length and body.
        let mut size = 2;
        let mut previous = first;
        let mut take = 0;
        for &(series, cell) in rest.iter().take(CHUNK_SERIES) {
            let cost = varint_len((series - previous) as u64) + varint_len(cell.len() as u64);
            if take > 0 && size + cost + cell.len() > PACKED_BODY {
                break;
            }
            size += cost + cell.len();
            previous = series;
            take += 1;
        }
        let (row, after) = rest.split_at(take);
        body.clear();
        encode(row, &mut body);
        insert.execute(params![
            tier.resolution_ms,
            metric,
            bucket,
            ts,
            first,
            &body
        ])?;
        rest = after;
    }
    Ok(())
}

/// The interval starts in `range` of `metric`'s `bucket` that have rows: a seek each.
fn intervals(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    bucket: i64,
    range: &std::ops::Range<i64>,
) -> rusqlite::Result<Vec<i64>> {
    let mut next = connection.prepare_cached(
        "SELECT ts FROM tier_loose
         WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts >= ?4 AND ts < ?5
         ORDER BY ts LIMIT 1",
    )?;
    let mut found = Vec::new();
    let mut from = range.start;
    while from < range.end {
        let ts: Option<i64> = next
            .query(params![tier.resolution_ms, metric, bucket, from, range.end])?
            .next()?
            .map(|row| row.get(0))
            .transpose()?;
        let Some(ts) = ts else { break };
        found.push(ts);
        from = ts + 1;
    }
    Ok(found)
}

/// Calls `visit(series, ts, cell body)` for each loose cell of `metric`'s `bucket` in `tier`
/// with its interval start in `range`, of `series` only when given: in time order, one
/// series' after another within an interval. A few series are found by a seek per interval
/// and series; more, or all, by reading the intervals' rows.
pub fn scan(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    bucket: i64,
    range: std::ops::Range<i64>,
    series: Option<&[i64]>,
    visit: &mut Visit<'_>,
) -> rusqlite::Result<()> {
    if let Some(wanted) = series
        .filter(|s| (s.len() as i64).saturating_mul(super::tiers::SLOTS_PER_BUCKET) <= MAX_SEEKS)
    {
        let mut row_of = connection.prepare_cached(
            "SELECT first, body FROM tier_loose
             WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts = ?4 AND first <= ?5
             ORDER BY first DESC LIMIT 1",
        )?;
        for ts in intervals(connection, tier, metric, bucket, &range)? {
            for &id in wanted {
                let mut rows = row_of.query(params![tier.resolution_ms, metric, bucket, ts, id])?;
                if let Some(row) = rows.next()? {
                    let body = row.get_ref(1)?.as_blob()?;
                    if let Some(cell) = find(row.get(0)?, body, id).map_err(unreadable)? {
                        visit(id, ts, cell)?;
                    }
                }
            }
        }
        return Ok(());
    }
    let wanted: Option<HashSet<i64, ahash::RandomState>> =
        series.map(|s| s.iter().copied().collect());
    let mut statement = connection.prepare_cached(
        "SELECT ts, first, body FROM tier_loose
         WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts >= ?4 AND ts < ?5
         ORDER BY ts, first",
    )?;
    let mut rows = statement.query(params![
        tier.resolution_ms,
        metric,
        bucket,
        range.start,
        range.end
    ])?;
    while let Some(row) = rows.next()? {
        let ts: i64 = row.get(0)?;
        for (id, cell) in cells(row.get(1)?, row.get_ref(2)?.as_blob()?).map_err(unreadable)? {
            if wanted.as_ref().is_none_or(|w| w.contains(&id)) {
                visit(id, ts, cell)?;
            }
        }
    }
    Ok(())
}

/// What [`next_run`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Run {
    /// The series `first..=last`: what to compact next.
    Series(i64, i64),
    /// That row's body does not read: it stays as it is; go on after its `first`.
    Unreadable(i64),
}

/// The interval starts of `metric`'s `bucket` that have loose rows (a seek each).
pub fn bucket_intervals(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    bucket: i64,
) -> rusqlite::Result<Vec<i64>> {
    let start = tier.bucket_start(bucket);
    let span = start..start + tier.resolution_ms * super::tiers::SLOTS_PER_BUCKET;
    intervals(connection, tier, metric, bucket, &span)
}

/// The run of series from the row with the lowest `first` at or after `from` in `metric`'s
/// `bucket` (at any of its `intervals`, a seek each) to the end of the [`RUN_ROWS`]th row from
/// it in its interval; `None` when there is none. Taking runs in
/// this order leaves no loose cell behind: no row starts between `from` and the run, and
/// [`take`] leaves no row straddling the run's end.
pub fn next_run(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    bucket: i64,
    from: i64,
    intervals: &[i64],
) -> rusqlite::Result<Option<Run>> {
    let mut statement = connection.prepare_cached(
        "SELECT first FROM tier_loose
         WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts = ?4 AND first >= ?5
         ORDER BY first LIMIT 1",
    )?;
    let mut lowest: Option<(i64, i64)> = None;
    for &ts in intervals {
        let mut rows = statement.query(params![tier.resolution_ms, metric, bucket, ts, from])?;
        if let Some(row) = rows.next()? {
            let first: i64 = row.get(0)?;
            if lowest.is_none_or(|(l, _)| first < l) {
                lowest = Some((first, ts));
            }
        }
    }
    let Some((first, ts)) = lowest else {
        return Ok(None);
    };
    // The run goes on over the next rows of that interval: a slice rewrites about one page per
    // interval whether it takes one row's series or a page's.
    let mut run = connection.prepare_cached(
        "SELECT first, body FROM tier_loose
         WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts = ?4 AND first >= ?5
         ORDER BY first LIMIT ?6",
    )?;
    let mut rows = run.query(params![
        tier.resolution_ms,
        metric,
        bucket,
        ts,
        first,
        RUN_ROWS
    ])?;
    let mut last = None;
    while let Some(row) = rows.next()? {
        match header(row.get(0)?, row.get_ref(1)?.as_blob()?) {
            Ok((ids, _)) => last = ids.last().copied(),
            Err(_) => break,
        }
    }
    Ok(Some(match last {
        Some(last) => Run::Series(first, last),
        None => Run::Unreadable(first),
    }))
}

/// The loose cells of series `first..=last` in `metric`'s `bucket` (at its `intervals`), removed
/// from their rows: by series, each `(ts, cell body)` in time order; and how many rows
/// overlapping the run did not read (left as they are). The rows are cut at the run's ends, so
/// no row is left straddling them.
pub fn take(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    bucket: i64,
    (first, last): (i64, i64),
    intervals: &[i64],
) -> rusqlite::Result<(Taken, usize)> {
    let mut overlapping = connection.prepare_cached(
        "SELECT first, body FROM tier_loose
         WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts = ?4 AND first <= ?6
           AND first >= coalesce((SELECT max(first) FROM tier_loose
                                  WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts = ?4
                                    AND first <= ?5), ?5)
         ORDER BY first",
    )?;
    let mut remove = connection.prepare_cached(
        "DELETE FROM tier_loose
         WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts = ?4 AND first = ?5",
    )?;
    let mut taken = Taken::new();
    let mut bad = 0;
    for &ts in intervals {
        let rows: Vec<(i64, Vec<u8>)> = overlapping
            .query_map(
                params![tier.resolution_ms, metric, bucket, ts, first, last],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?
            .collect::<rusqlite::Result<_>>()?;
        for (row_first, body) in rows {
            let Ok(all) = cells(row_first, &body) else {
                bad += 1;
                continue;
            };
            if all.last().is_some_and(|c| c.0 < first) {
                continue;
            }
            remove.execute(params![tier.resolution_ms, metric, bucket, ts, row_first])?;
            let below: Vec<(i64, &[u8])> = all.iter().copied().filter(|c| c.0 < first).collect();
            let above: Vec<(i64, &[u8])> = all.iter().copied().filter(|c| c.0 > last).collect();
            insert_chunks(connection, tier, metric, ts, &below)?;
            insert_chunks(connection, tier, metric, ts, &above)?;
            for (id, cell) in all.into_iter().filter(|c| (first..=last).contains(&c.0)) {
                taken.entry(id).or_default().push((ts, cell.to_vec()));
            }
        }
    }
    Ok((taken, bad))
}

/// Removes `metric`'s loose rows in `tier` before `before_ms`; answers how many went.
pub fn expire_before(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    before_ms: i64,
) -> rusqlite::Result<usize> {
    let bucket = tier.bucket_of(before_ms);
    let whole = connection
        .prepare_cached("DELETE FROM tier_loose WHERE tier = ?1 AND metric = ?2 AND bucket < ?3")?
        .execute(params![tier.resolution_ms, metric, bucket])?;
    let part = connection
        .prepare_cached(
            "DELETE FROM tier_loose WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts < ?4",
        )?
        .execute(params![tier.resolution_ms, metric, bucket, before_ms])?;
    Ok(whole + part)
}

/// Takes out of `candidates` every series of `metric` with a loose cell in `tier`. Reads the
/// newest rows first and stops when none is left: the series still sampled are in the last tick.
pub fn drop_held(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    candidates: &mut HashSet<i64>,
) -> rusqlite::Result<()> {
    if candidates.is_empty() {
        return Ok(());
    }
    let mut statement = connection.prepare_cached(
        "SELECT first, body FROM tier_loose WHERE tier = ?1 AND metric = ?2
         ORDER BY bucket DESC, ts DESC, first DESC",
    )?;
    let mut rows = statement.query(params![tier.resolution_ms, metric])?;
    while let Some(row) = rows.next()? {
        let (ids, _) = header(row.get(0)?, row.get_ref(1)?.as_blob()?).map_err(unreadable)?;
        for id in ids {
            candidates.remove(&id);
        }
        if candidates.is_empty() {
            break;
        }
    }
    Ok(())
}

/// Moves the loose rows a version 2 store kept in `tier_samples` (one per series and interval,
/// `ts` ≥ 0) into this table, interval by interval; answers how many moved. Inside the caller's
/// transaction, at open.
pub fn migrate(connection: &Connection) -> rusqlite::Result<u64> {
    let mut statement = connection.prepare(
        "SELECT tier, metric, ts, series, body FROM tier_samples WHERE ts >= 0
         ORDER BY tier, metric, ts, series",
    )?;
    let mut rows = statement.query([])?;
    // One interval's cells at a time: (tier, metric, ts) and its (series, body).
    let mut at: Option<(i64, i64, i64)> = None;
    let mut group: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut moved = 0;
    let flush =
        |at: Option<(i64, i64, i64)>, group: &mut Vec<(i64, Vec<u8>)>| -> rusqlite::Result<()> {
            if let Some((resolution_ms, metric, ts)) = at {
                let tier = Tier::of_resolution(resolution_ms);
                let cells: Vec<(i64, &[u8])> = group.iter().map(|(s, b)| (*s, &b[..])).collect();
                put(connection, tier, metric, ts, &cells)?;
            }
            group.clear();
            Ok(())
        };
    while let Some(row) = rows.next()? {
        let key = (row.get(0)?, row.get(1)?, row.get(2)?);
        if at != Some(key) {
            flush(at, &mut group)?;
            at = Some(key);
        }
        group.push((row.get(3)?, row.get(4)?));
        moved += 1;
    }
    flush(at, &mut group)?;
    drop(rows);
    connection.execute("DELETE FROM tier_samples WHERE ts >= 0", [])?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tiers::Cell;

    #[test]
    fn a_chunk_reads_back_and_finds_each_series() {
        let bodies: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                let mut body = Vec::new();
                Cell::scalar(i as f64 * 1.5).encode(&mut body);
                body
            })
            .collect();
        let cells: Vec<(i64, &[u8])> = [7, 8, 20, 300, 301]
            .into_iter()
            .zip(&bodies)
            .map(|(s, b)| (s, &b[..]))
            .collect();
        let mut body = Vec::new();
        encode(&cells, &mut body);
        assert_eq!(self::cells(7, &body).unwrap(), cells);
        for &(series, cell) in &cells {
            assert_eq!(find(7, &body, series).unwrap(), Some(cell));
        }
        assert_eq!(find(7, &body, 9).unwrap(), None);
        // Damaged bodies are errors, never panics.
        for cut in 0..body.len() {
            assert!(self::cells(7, &body[..cut]).is_err(), "cut at {cut}");
            assert!(find(7, &body[..cut], 20).is_err(), "cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(self::cells(7, &longer).is_err());
        let mut bad_gap = body.clone();
        bad_gap[3] = 0;
        assert!(self::cells(7, &bad_gap).is_err());
        assert!(self::cells(7, &[CHUNK, 200, 1, 2]).is_err());
    }

    /// Two ticks of 1,000 series of one metric (every 97th a histogram with a long body) and a
    /// third of half of them, through the store's writer: chunks of at most 64 series and
    /// [`PACKED_BODY`] bytes; every read (all, many, one series by seeks) finds each cell.
    #[test]
    fn many_series_go_in_chunks_and_each_reads_back() {
        use crate::store::tiers::{SampleBatch, encode_histogram};
        use crate::store::{Engine, Reader, Write};
        let (dir, mut engine, reader, metric) = crate::store::sqlite::tests::with_a_metric();
        let tier = Tier {
            resolution_ms: 10_000,
            retention_ms: 86_400_000,
        };
        let t0 = 1_764_000_000_000;
        let expected = |tick: i64, k: usize| match k % 97 {
            0 => Cell::Histogram {
                count: 5,
                sum: tick as f64,
                buckets: (0..300).map(|b| (b * k as u64) % 1000 + 200).collect(),
            },
            _ => Cell::scalar((k as i64 * 3 + tick) as f64),
        };
        for tick in 0..3 {
            let mut batch = SampleBatch {
                tiers: vec![tier].into(),
                metrics: vec![metric],
                ts_ms: t0 + tick * 10_000,
                ..SampleBatch::default()
            };
            // Not in id order, as the sampler's hash maps give them.
            for k in (0..1000usize).rev().filter(|k| tick < 2 || k % 2 == 0) {
                let labels = crate::store::labels_key([("k", k.to_string().as_str())]);
                batch.push(metric, labels.into(), |out| match expected(tick, k) {
                    Cell::Histogram {
                        count,
                        sum,
                        buckets,
                    } => encode_histogram(out, count, sum, &buckets),
                    cell => cell.encode(out),
                });
            }
            for result in engine.commit(&[Write::Samples(Box::new(batch))]).unwrap() {
                result.unwrap();
            }
        }
        let connection =
            Connection::open(dir.path().join(crate::store::sqlite::FILE_NAME)).unwrap();
        let mut rows = connection
            .prepare("SELECT ts, first, body FROM tier_loose ORDER BY ts, first")
            .unwrap();
        let rows: Vec<(i64, i64, Vec<u8>)> = rows
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut per_tick = BTreeMap::new();
        for (ts, first, body) in &rows {
            let cells = self::cells(*first, body).unwrap();
            assert!(cells.len() <= CHUNK_SERIES);
            assert!(
                body.len() <= PACKED_BODY || cells.len() == 1,
                "{}",
                body.len()
            );
            *per_tick.entry(*ts).or_insert(0) += cells.len();
        }
        assert_eq!(
            per_tick.values().copied().collect::<Vec<_>>(),
            [1000, 1000, 500]
        );
        // 1,000 series: 16 rows of 64 at least, a few more where a histogram needs its own.
        assert!(rows.iter().filter(|r| r.0 == t0).count() < 40);

        let ids: BTreeMap<String, i64> = reader
            .series(metric)
            .unwrap()
            .into_iter()
            .map(|(id, labels)| (labels, id))
            .collect();
        let id_of = |k: usize| ids[&crate::store::labels_key([("k", k.to_string().as_str())])];
        let read = |series: Option<&[i64]>| {
            let mut found = Vec::new();
            reader
                .scan_tier(
                    tier,
                    metric,
                    t0,
                    t0 + 3_600_000,
                    series,
                    &mut |s, ts, cell| found.push((s, ts, cell)),
                )
                .unwrap();
            found
        };
        let all = read(None);
        assert_eq!(all.len(), 2500);
        for k in [0, 1, 2, 96, 97, 500, 999] {
            let one = read(Some(&[id_of(k)]));
            let want: Vec<(i64, i64, Cell)> = (0..3)
                .filter(|&tick| tick < 2 || k % 2 == 0)
                .map(|tick| (id_of(k), t0 + tick * 10_000, expected(tick, k)))
                .collect();
            assert_eq!(one, want, "series {k}");
        }
        // Many series (past the seeks' limit) read the intervals' rows and filter.
        let some: Vec<i64> = (0..200).map(|k| id_of(k * 5)).collect();
        let mut many = read(Some(&some));
        let mut filtered: Vec<_> = all.into_iter().filter(|c| some.contains(&c.0)).collect();
        many.sort_by_key(|c| (c.0, c.1));
        filtered.sort_by_key(|c| (c.0, c.1));
        assert_eq!(many, filtered);
    }
}
