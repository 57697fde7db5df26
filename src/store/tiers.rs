//! History tiers: the samples [`crate::history::sampler`] takes of registry series, kept at a
//! few resolutions (10 s for a day, 1 min for 15 days, 1 h for a year by default), each with
//! its own retention, like RRD and Graphite; the rollups of recorded points
//! ([`super::rollup`]) share the tables. This module owns the compact encoding of one sample
//! ([`Cell`]), the packed rows' table, the rollup of a finer tier into a coarser one, their
//! expiry and their reads; the SQLite engine calls it inside its transactions.
//!
//! Time is cut in buckets of [`SLOTS_PER_BUCKET`] intervals of a tier (an hour of the 10 s tier).
//! A cell is first written loose ([`super::loose`], table `tier_loose`): keyed time before
//! series, one row per interval and run of up to 64 series, so a tick's rows are appended
//! together (a tick of 100k series is ~1,600 rows on a few hundred pages), and one series' cell
//! is a seek per interval. Once a bucket is closed, compaction ([`super::compact`]) regroups its
//! loose cells by series into packed rows of table `tier_samples`, `WITHOUT ROWID`, keyed tier
//! (its resolution in ms) → metric → bucket → series → `ts`, whose bodies are
//! [`super::packed`]'s: a series' cells of the bucket with their slots, so a long range of one
//! series is a seek per bucket. Usually one packed row per (bucket, series); as many as keep
//! each body under [`PACKED_BODY`] bytes, since a longer row of a `WITHOUT ROWID` table spills
//! into an overflow page of its own, mostly empty (we measured 3.4 bytes a sample on disk for
//! 2.2 of bodies). Packed row `k` has `ts` = −1 − `k` ([`is_packed`]). (Schema version 2 kept
//! loose rows in `tier_samples` too, one per series and interval, `ts` its start: every row of a
//! tick then dirtied a page of its own once each series had a page of rows in its bucket.)
//!
//! A loose cell may still land in a packed bucket later (a late rollup, a clock stepped back):
//! readers merge both, per bucket, the loose one winning at the same interval, and the write
//! moves the tier's compaction cursor (`meta` key `compacted:<resolution>`) back so that the
//! bucket is compacted again. Reads give each series' cells in time order; series may take
//! turns within a bucket.
//!
//! Rollup: a coarser tier's interval is built when it closes, from the finer tier's cells of
//! that interval, in the transaction that writes the finest sample closing it. `meta` keeps,
//! per coarser tier, where its last rollup ended, so intervals missed while tallyd was down are
//! rolled at the next write, and rolling again (after a crash) replaces, never adds twice.
//!
//! Expiry removes whole buckets, and loose cells of the bucket the cut falls in; packed rows
//! there stay until their bucket goes, hidden from every read by the cut it records (`meta` key
//! `cut:<resolution>:<metric>`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::journal::{Reader, put_unsigned};
use super::{loose, packed};

/// Whether a row's `ts` is a packed row's: −1 − its index, below every interval start of its
/// bucket, so packed rows are read first.
pub fn is_packed(ts: i64) -> bool {
    (-SLOTS_PER_BUCKET..0).contains(&ts)
}

/// Largest packed body: a row of `tier_samples` stays in its B-tree page up to ~1,000 bytes with
/// 4 KiB pages (SQLite's `max_local` for index-like tables), key and header included.
pub const PACKED_BODY: usize = 960;

/// The packed rows' table, added in schema version 2 (which kept loose rows in it too).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tier_samples (
    tier INTEGER NOT NULL,
    metric INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    series INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (tier, metric, bucket, series, ts)
) WITHOUT ROWID;
";

/// Above this many (bucket, series) seeks a read of some series reads each bucket's packed
/// rows whole and filters, which is then cheaper.
const MAX_SEEKS: i64 = 20_000;

/// Intervals of a tier in one time bucket: an hour of the 10 s tier, 15 days of the 1 h one.
pub const SLOTS_PER_BUCKET: i64 = 360;

/// One resolution history is kept at, and for how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tier {
    pub resolution_ms: i64,
    pub retention_ms: i64,
}

impl Tier {
    /// A tier of `resolution_ms` whose retention does not matter where it is used (reads,
    /// rollups, expiry by an explicit cut).
    pub fn of_resolution(resolution_ms: i64) -> Tier {
        Tier {
            resolution_ms,
            retention_ms: 0,
        }
    }

    pub(super) fn bucket_of(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.resolution_ms * SLOTS_PER_BUCKET)
    }

    /// The start of `bucket`, in ms.
    pub(super) fn bucket_start(&self, bucket: i64) -> i64 {
        bucket.saturating_mul(self.resolution_ms * SLOTS_PER_BUCKET)
    }

    /// The start of the bucket holding `ts_ms`: where a scan can be cut in parts that read no
    /// row twice.
    pub fn bucket_floor(&self, ts_ms: i64) -> i64 {
        self.bucket_start(self.bucket_of(ts_ms))
    }

    /// The start of the interval holding `ts_ms`.
    pub fn floor(&self, ts_ms: i64) -> i64 {
        ts_ms - ts_ms.rem_euclid(self.resolution_ms)
    }
}

/// Checks a list of tiers: at least one, each resolution a multiple of the one before (so a
/// coarser interval is made of whole finer ones), each retention at least its resolution. The
/// error names the key at fault (`tiers[1].resolution`).
pub fn check(tiers: &[Tier]) -> Result<(), String> {
    if tiers.is_empty() {
        return Err("tiers: at least one tier is needed".into());
    }
    for (i, tier) in tiers.iter().enumerate() {
        if tier.resolution_ms < 1_000 || tier.resolution_ms % 1_000 != 0 {
            return Err(format!(
                "tiers[{i}].resolution: must be a whole number of seconds"
            ));
        }
        if i > 0 {
            let finer = tiers[i - 1].resolution_ms;
            if tier.resolution_ms <= finer || tier.resolution_ms % finer != 0 {
                return Err(format!(
                    "tiers[{i}].resolution: must be a multiple of tiers[{}].resolution ({} ms), \
                     and larger",
                    i - 1,
                    finer
                ));
            }
        }
        if tier.retention_ms < tier.resolution_ms {
            return Err(format!(
                "tiers[{i}].retention: must be at least its resolution"
            ));
        }
    }
    Ok(())
}

/// What one series did over one interval of a tier.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// A counter (its per-interval increases) or a gauge (its sampled values): over `n`
    /// finest samples, their sum (for the average), min, max and the last.
    Scalar {
        n: u64,
        sum: f64,
        min: f64,
        max: f64,
        last: f64,
    },
    /// Increases of a histogram's count, sum and each bucket (not cumulative; the last is
    /// `+Inf`'s).
    Histogram {
        count: u64,
        sum: f64,
        buckets: Vec<u64>,
    },
    /// Increases of a summary's count and sum, and its quantiles' values averaged over the `n`
    /// finest samples.
    Summary {
        n: u64,
        count: u64,
        sum: f64,
        quantiles: Vec<(f64, f64)>,
    },
}

/// Body tags.
const SINGLE: u8 = 1;
const SCALAR: u8 = 2;
const HISTOGRAM: u8 = 3;
const SUMMARY: u8 = 4;

impl Cell {
    /// One finest sample of a counter or gauge.
    pub fn scalar(value: f64) -> Cell {
        Cell::Scalar {
            n: 1,
            sum: value,
            min: value,
            max: value,
            last: value,
        }
    }

    /// The value of a cell that is one finest sample of a counter or gauge (written as such,
    /// in a byte less).
    pub(super) fn single(&self) -> Option<f64> {
        match *self {
            Cell::Scalar {
                n: 1,
                sum,
                min,
                max,
                last,
            } if sum == min && sum == max && sum == last => Some(sum),
            _ => None,
        }
    }

    /// Folds in `later`, the next interval's cell of the same series. A cell of another shape
    /// (the metric changed type, or its buckets) replaces this one: values of different
    /// shapes do not add.
    pub fn merge(&mut self, later: &Cell) {
        match (self, later) {
            (
                Cell::Scalar {
                    n,
                    sum,
                    min,
                    max,
                    last,
                },
                Cell::Scalar {
                    n: n2,
                    sum: sum2,
                    min: min2,
                    max: max2,
                    last: last2,
                },
            ) => {
                *n += n2;
                *sum += sum2;
                *min = min.min(*min2);
                *max = max.max(*max2);
                *last = *last2;
            }
            (
                Cell::Histogram {
                    count,
                    sum,
                    buckets,
                },
                Cell::Histogram {
                    count: count2,
                    sum: sum2,
                    buckets: buckets2,
                },
            ) if buckets.len() == buckets2.len() => {
                *count += count2;
                *sum += sum2;
                for (b, b2) in buckets.iter_mut().zip(buckets2) {
                    *b += b2;
                }
            }
            (
                Cell::Summary {
                    n,
                    count,
                    sum,
                    quantiles,
                },
                Cell::Summary {
                    n: n2,
                    count: count2,
                    sum: sum2,
                    quantiles: quantiles2,
                },
            ) if quantiles.len() == quantiles2.len()
                && quantiles.iter().zip(quantiles2).all(|(a, b)| a.0 == b.0) =>
            {
                let (w1, w2) = (*n as f64, *n2 as f64);
                for ((_, v), (_, v2)) in quantiles.iter_mut().zip(quantiles2) {
                    *v = match (v.is_nan(), v2.is_nan()) {
                        (false, false) => (*v * w1 + v2 * w2) / (w1 + w2),
                        (true, _) => *v2,
                        (false, true) => *v,
                    };
                }
                *n += n2;
                *count += count2;
                *sum += sum2;
            }
            (this, later) => *this = later.clone(),
        }
    }

    /// Appends the cell's body to `out`: a tag, then varints and numbers ([`put_number`]), so
    /// a counter's whole increase costs 2–4 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        if let Some(value) = self.single() {
            out.push(SINGLE);
            put_number(out, value);
            return;
        }
        match self {
            Cell::Scalar {
                n,
                sum,
                min,
                max,
                last,
            } => {
                out.push(SCALAR);
                put_unsigned(out, *n);
                for value in [sum, min, max, last] {
                    put_number(out, *value);
                }
            }
            Cell::Histogram {
                count,
                sum,
                buckets,
            } => encode_histogram(out, *count, *sum, buckets),
            Cell::Summary {
                n,
                count,
                sum,
                quantiles,
            } => encode_summary(out, *n, *count, *sum, quantiles),
        }
    }

    /// The cell of a body [`Cell::encode`] wrote.
    pub fn decode(body: &[u8]) -> Result<Cell, &'static str> {
        let mut r = Reader { body, at: 0 };
        let cell = match r.byte()? {
            SINGLE => Cell::scalar(number(&mut r)?),
            SCALAR => Cell::Scalar {
                n: r.unsigned()?,
                sum: number(&mut r)?,
                min: number(&mut r)?,
                max: number(&mut r)?,
                last: number(&mut r)?,
            },
            HISTOGRAM => {
                let count = r.unsigned()?;
                let sum = number(&mut r)?;
                let len = r.unsigned()? as usize;
                // A bucket takes at least a byte: a larger count is corruption.
                if len > body.len() {
                    return Err("tier sample: bucket count larger than its body");
                }
                let buckets = (0..len).map(|_| r.unsigned()).collect::<Result<_, _>>()?;
                Cell::Histogram {
                    count,
                    sum,
                    buckets,
                }
            }
            SUMMARY => {
                let n = r.unsigned()?;
                let count = r.unsigned()?;
                let sum = number(&mut r)?;
                let len = r.unsigned()? as usize;
                if len > body.len() {
                    return Err("tier sample: quantile count larger than its body");
                }
                let quantiles = (0..len)
                    .map(|_| Ok((number(&mut r)?, number(&mut r)?)))
                    .collect::<Result<_, &'static str>>()?;
                Cell::Summary {
                    n,
                    count,
                    sum,
                    quantiles,
                }
            }
            _ => return Err("tier sample: unknown tag"),
        };
        if r.at != body.len() {
            return Err("tier sample: body longer than its cell");
        }
        Ok(cell)
    }
}

/// Appends the body of a [`Cell::Histogram`], from borrowed buckets (the sampler's, reused).
pub fn encode_histogram(out: &mut Vec<u8>, count: u64, sum: f64, buckets: &[u64]) {
    out.push(HISTOGRAM);
    put_unsigned(out, count);
    put_number(out, sum);
    put_unsigned(out, buckets.len() as u64);
    for bucket in buckets {
        put_unsigned(out, *bucket);
    }
}

/// Appends the body of a [`Cell::Summary`], from borrowed quantiles.
pub fn encode_summary(out: &mut Vec<u8>, n: u64, count: u64, sum: f64, quantiles: &[(f64, f64)]) {
    out.push(SUMMARY);
    put_unsigned(out, n);
    put_unsigned(out, count);
    put_number(out, sum);
    put_unsigned(out, quantiles.len() as u64);
    for (q, v) in quantiles {
        put_number(out, *q);
        put_number(out, *v);
    }
}

/// Largest integer written as a varint: below it every integer is exact in an f64.
const EXACT: f64 = (1u64 << 52) as f64;

/// Appends a number: a whole one in `[0, 2^52)` as the varint of twice it (counter increases
/// and bucket-like values are usually whole), any other as the varint 1 and its 8 bytes.
fn put_number(out: &mut Vec<u8>, value: f64) {
    if value.fract() == 0.0 && (0.0..EXACT).contains(&value) && value.is_sign_positive() {
        put_unsigned(out, (value as u64) << 1);
    } else {
        out.push(1);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn number(r: &mut Reader<'_>) -> Result<f64, &'static str> {
    match r.unsigned()? {
        1 => Ok(f64::from_le_bytes(r.take::<8>()?)),
        whole if whole & 1 == 0 => Ok((whole >> 1) as f64),
        _ => Err("tier sample: bad number"),
    }
}

/// One series' sample in a [`SampleBatch`].
#[derive(Clone, Debug)]
pub struct SampleRow {
    pub metric: i64,
    /// The series' labels as the store keys them ([`super::labels_key`]).
    pub labels: Arc<str>,
    /// Where its body ends in [`SampleBatch::bodies`] (it starts where the previous one ends).
    pub end: u32,
}

/// One sampling tick: every history series' finest sample for the interval starting at
/// `ts_ms`, as one write (one transaction).
#[derive(Clone, Debug, Default)]
pub struct SampleBatch {
    /// The tiers, finest first: the batch is the finest's; the others are rolled up from it.
    pub tiers: Arc<[Tier]>,
    /// Every history metric, whether it has a sample in this batch or not: what to roll up.
    pub metrics: Vec<i64>,
    pub ts_ms: i64,
    pub rows: Vec<SampleRow>,
    /// The rows' bodies, end to end ([`Cell::encode`]): one allocation for the tick.
    pub bodies: Vec<u8>,
}

impl SampleBatch {
    /// Adds a row whose body `encode` appends.
    pub fn push(&mut self, metric: i64, labels: Arc<str>, encode: impl FnOnce(&mut Vec<u8>)) {
        encode(&mut self.bodies);
        self.rows.push(SampleRow {
            metric,
            labels,
            end: self.bodies.len() as u32,
        });
    }
}

/// Writes `batch` (its rows' series ids in `series`), then rolls up every coarser interval the
/// batch closes. Inside the caller's transaction.
pub fn write(connection: &Connection, batch: &SampleBatch, series: &[i64]) -> rusqlite::Result<()> {
    let Some(finest) = batch.tiers.first() else {
        return Ok(());
    };
    // By metric, then series; a series twice in the batch keeps its last row, as a replace did.
    let mut order: Vec<(i64, i64, usize)> = (batch.rows.iter().zip(series).enumerate())
        .map(|(i, (row, &id))| (row.metric, id, i))
        .collect();
    order.sort_unstable();
    order.dedup_by(|later, earlier| {
        let same = (later.0, later.1) == (earlier.0, earlier.1);
        if same {
            earlier.2 = later.2;
        }
        same
    });
    let body = |i: usize| {
        let start = i.checked_sub(1).map_or(0, |j| batch.rows[j].end as usize);
        &batch.bodies[start..batch.rows[i].end as usize]
    };
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        let cells: Vec<(i64, &[u8])> = run.iter().map(|&(_, id, i)| (id, body(i))).collect();
        loose::put(connection, *finest, run[0].0, batch.ts_ms, &cells)?;
    }
    reopen(connection, *finest, finest.bucket_of(batch.ts_ms))?;
    // Everything before this instant is written in the finer tier.
    let mut written_to = batch.ts_ms + finest.resolution_ms;
    for pair in batch.tiers.windows(2) {
        let (finer, coarser) = (pair[0], pair[1]);
        let closed_to = coarser.floor(written_to);
        let key = format!("rolled:{}", coarser.resolution_ms);
        let done = meta(connection, &key)?;
        // The first time, the interval just closed; never more than the tier keeps.
        let from = done
            .unwrap_or(closed_to - coarser.resolution_ms)
            .max(closed_to - coarser.retention_ms);
        if from < closed_to {
            for &metric in &batch.metrics {
                roll_up(connection, finer, coarser, metric, from, closed_to)?;
            }
            set_meta(connection, &key, closed_to)?;
        }
        written_to = closed_to;
    }
    Ok(())
}

/// Builds `coarser`'s intervals in `[from, to)` of `metric` from `finer`'s rows.
pub(super) fn roll_up(
    connection: &Connection,
    finer: Tier,
    coarser: Tier,
    metric: i64,
    from: i64,
    to: i64,
) -> rusqlite::Result<()> {
    let mut folded: BTreeMap<(i64, i64), Cell> = BTreeMap::new();
    // Rows come bucket by bucket, each series' in time order: each fold is in time order.
    scan(
        connection,
        finer,
        metric,
        from,
        to,
        None,
        &mut |series, ts, cell| {
            folded
                .entry((series, coarser.floor(ts)))
                .and_modify(|sofar| sofar.merge(&cell))
                .or_insert(cell);
        },
    )?;
    put_cells(
        connection,
        coarser,
        metric,
        folded
            .into_iter()
            .map(|((series, ts), cell)| (series, ts, cell)),
    )
}

/// Writes `(series, interval start, cell)` rows of `metric` in `tier` as loose cells,
/// replacing what was there (a loose cell wins over a packed cell of its interval).
pub(super) fn put_cells(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    cells: impl Iterator<Item = (i64, i64, Cell)>,
) -> rusqlite::Result<()> {
    // By interval, then series: a later cell of the same series and interval replaces.
    let mut by_interval: BTreeMap<i64, BTreeMap<i64, Vec<u8>>> = BTreeMap::new();
    for (series, ts, cell) in cells {
        let mut body = Vec::new();
        cell.encode(&mut body);
        by_interval.entry(ts).or_default().insert(series, body);
    }
    for (&ts, cells) in &by_interval {
        let cells: Vec<(i64, &[u8])> = cells.iter().map(|(s, b)| (*s, &b[..])).collect();
        loose::put(connection, tier, metric, ts, &cells)?;
    }
    // A late row into a compacted bucket: compaction merges it in again.
    if let Some(&ts) = by_interval.keys().next() {
        reopen(connection, tier, tier.bucket_of(ts))?;
    }
    Ok(())
}

/// Calls `visit(series, ts_ms, cell)` for each of `metric`'s samples in `tier` with
/// `start_ms <= ts_ms < end_ms`, in `series` only when given; each series' samples in time
/// order (series may take turns). Packed and loose cells alike, a loose cell winning over a
/// packed one of its interval; nothing before the tier's expiry cut. A body that cannot be read
/// is an error, not skipped.
pub fn scan(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    start_ms: i64,
    end_ms: i64,
    series: Option<&[i64]>,
    visit: &mut dyn FnMut(i64, i64, Cell),
) -> rusqlite::Result<()> {
    let start_ms = start_ms.max(cut(connection, tier, metric)?.unwrap_or(i64::MIN));
    if end_ms <= start_ms {
        return Ok(());
    }
    let (first, last) = (tier.bucket_of(start_ms), tier.bucket_of(end_ms - 1));
    // Packed rows: a seek per (bucket, series) for a few series, each bucket's range otherwise.
    let few = series.filter(|s| (last - first + 1).saturating_mul(s.len() as i64) <= MAX_SEEKS);
    let wanted: Option<HashSet<i64, ahash::RandomState>> = series
        .filter(|_| few.is_none())
        .map(|s| s.iter().copied().collect());
    let mut one = connection.prepare_cached(
        "SELECT body FROM tier_samples
         WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND series = ?4
           AND ts BETWEEN -360 AND -1
         ORDER BY ts",
    )?;
    let mut all = connection.prepare_cached(
        "SELECT series, body FROM tier_samples
         WHERE tier = ?1 AND metric = ?2 AND bucket = ?3 AND ts BETWEEN -360 AND -1
         ORDER BY series, ts",
    )?;
    let mut next_packed = connection.prepare_cached(
        "SELECT min(bucket) FROM tier_samples
         WHERE tier = ?1 AND metric = ?2 AND bucket >= ?3 AND bucket <= ?4",
    )?;
    let mut next_loose = connection.prepare_cached(
        "SELECT min(bucket) FROM tier_loose
         WHERE tier = ?1 AND metric = ?2 AND bucket >= ?3 AND bucket <= ?4",
    )?;
    let mut from = first;
    // Only the buckets that hold rows: a range may span millions of empty ones.
    while from <= last {
        let key = params![tier.resolution_ms, metric, from, last];
        let packed_at: Option<i64> = next_packed.query_row(key, |row| row.get(0))?;
        let loose_at: Option<i64> = next_loose.query_row(key, |row| row.get(0))?;
        let Some(bucket) = packed_at.into_iter().chain(loose_at).min() else {
            break;
        };
        from = bucket + 1;
        let start = tier.bucket_start(bucket);
        let range = start_ms.max(start)..end_ms.min(start + tier.resolution_ms * SLOTS_PER_BUCKET);
        let packed = packed_at == Some(bucket);
        // Loose cells: straight to `visit` in an open bucket; held to merge in a packed one
        // (late writes: few).
        let mut late: BTreeMap<(i64, i64), Cell> = BTreeMap::new();
        let mut loose_cell = |id, ts, body: &[u8]| {
            let cell = Cell::decode(body).map_err(loose::unreadable)?;
            match packed {
                true => drop(late.insert((id, ts), cell)),
                false => visit(id, ts, cell),
            }
            Ok(())
        };
        loose::scan(
            connection,
            tier,
            metric,
            bucket,
            range.clone(),
            series,
            &mut loose_cell,
        )?;
        if !packed {
            continue;
        }
        let mut held = HeldRows::default();
        let mut add = |id: i64, body: &[u8]| -> rusqlite::Result<()> {
            if held.series.is_some_and(|s| s != id) {
                held.visit(tier, bucket, &range, &mut late, visit)
                    .map_err(loose::unreadable)?;
            }
            held.push(id, body);
            Ok(())
        };
        if let Some(few) = few {
            for &id in few {
                let mut rows = one.query(params![tier.resolution_ms, metric, bucket, id])?;
                while let Some(row) = rows.next()? {
                    add(id, row.get_ref(0)?.as_blob()?)?;
                }
            }
        } else {
            let mut rows = all.query(params![tier.resolution_ms, metric, bucket])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                if wanted.as_ref().is_none_or(|w| w.contains(&id)) {
                    add(id, row.get_ref(1)?.as_blob()?)?;
                }
            }
        }
        held.visit(tier, bucket, &range, &mut late, visit)
            .map_err(loose::unreadable)?;
        // Late cells of series without packed cells here.
        for ((id, ts), cell) in late {
            visit(id, ts, cell);
        }
    }
    Ok(())
}

/// One series' packed rows of a bucket, copied out of the statement until the next series
/// starts. They arrive in key order, last chunk first (`ts` = −1 − chunk), so read back to
/// front they give the series' cells in time order: without late loose cells to merge, each is
/// visited as it is decoded, never collected.
#[derive(Default)]
struct HeldRows {
    series: Option<i64>,
    bytes: Vec<u8>,
    /// Where each body ends in `bytes`, in arrival order.
    ends: Vec<usize>,
}

impl HeldRows {
    fn push(&mut self, series: i64, body: &[u8]) {
        self.series = Some(series);
        self.bytes.extend_from_slice(body);
        self.ends.push(self.bytes.len());
    }

    /// Visits the held series' cells inside `range`, merged with its late cells (taken out of
    /// `late`), and lets the rows go.
    fn visit(
        &mut self,
        tier: Tier,
        bucket: i64,
        range: &std::ops::Range<i64>,
        late: &mut BTreeMap<(i64, i64), Cell>,
        visit: &mut dyn FnMut(i64, i64, Cell),
    ) -> Result<(), &'static str> {
        let Some(series) = self.series.take() else {
            return Ok(());
        };
        let start = tier.bucket_start(bucket);
        let merging = !late.is_empty()
            && late
                .range((series, i64::MIN)..=(series, i64::MAX))
                .next()
                .is_some();
        let mut cells = Vec::new();
        let mut read = Ok(());
        for k in (0..self.ends.len()).rev() {
            let from = k.checked_sub(1).map_or(0, |j| self.ends[j]);
            read = packed::unpack_each(&self.bytes[from..self.ends[k]], |slot, cell| {
                let ts = start + i64::from(slot) * tier.resolution_ms;
                match (range.contains(&ts), merging) {
                    (false, _) => {}
                    (true, false) => visit(series, ts, cell),
                    (true, true) => cells.push((ts, cell)),
                }
            });
            if read.is_err() {
                break;
            }
        }
        self.bytes.clear();
        self.ends.clear();
        read?;
        if merging {
            merge_late(series, cells, late, visit);
        }
        Ok(())
    }
}

/// Visits one series' packed cells of a bucket (in time order, as [`HeldRows`] reads them) and
/// its late loose ones (taken out of `late`) in time order, a loose cell replacing the packed
/// one of its interval.
fn merge_late(
    series: i64,
    packed: Vec<(i64, Cell)>,
    late: &mut BTreeMap<(i64, i64), Cell>,
    visit: &mut dyn FnMut(i64, i64, Cell),
) {
    let mut mine = BTreeMap::new();
    if !late.is_empty() {
        mine = late.split_off(&(series, i64::MIN));
        let mut after = mine.split_off(&(series.saturating_add(1), i64::MIN));
        late.append(&mut after);
    }
    let mut loose = mine
        .into_iter()
        .map(|((_, ts), cell)| (ts, cell))
        .peekable();
    for (ts, cell) in packed {
        let mut replaced = false;
        while let Some((at, _)) = loose.peek()
            && *at <= ts
        {
            let (at, newer) = loose.next().expect("a peeked cell");
            replaced |= at == ts;
            visit(series, at, newer);
        }
        if !replaced {
            visit(series, ts, cell);
        }
    }
    for (ts, cell) in loose {
        visit(series, ts, cell);
    }
}

/// Removes `metric`'s samples in `tier` older than `before_ms`, and answers how many rows
/// went: whole buckets, and loose cells of the bucket the cut falls in. A packed row of that
/// bucket stays until its bucket goes: rewriting it at every expiry would cost more than the
/// bucket's worth of disk. The cut, kept in `meta`, hides its older cells.
pub(super) fn expire_before(
    connection: &Connection,
    tier: Tier,
    metric: i64,
    before_ms: i64,
) -> rusqlite::Result<u64> {
    let bucket = tier.bucket_of(before_ms);
    let whole = connection
        .prepare_cached("DELETE FROM tier_samples WHERE tier = ?1 AND metric = ?2 AND bucket < ?3")?
        .execute(params![tier.resolution_ms, metric, bucket])?;
    let loose = loose::expire_before(connection, tier, metric, before_ms)?;
    set_meta(connection, &cut_key(tier, metric), before_ms)?;
    Ok((whole + loose) as u64)
}

/// The cells of one row of `tier`'s bucket `bucket` at `ts`, with their interval starts: the
/// one cell of a loose row, every cell of a packed one.
pub fn row_cells(
    tier: Tier,
    bucket: i64,
    ts: i64,
    body: &[u8],
) -> Result<Vec<(i64, Cell)>, &'static str> {
    if !is_packed(ts) {
        return Ok(vec![(ts, Cell::decode(body)?)]);
    }
    let start = tier.bucket_start(bucket);
    Ok(packed::unpack(body)?
        .into_iter()
        .map(|(slot, cell)| (start + i64::from(slot) * tier.resolution_ms, cell))
        .collect())
}

/// Marks `tier`'s `bucket` as holding loose rows again, for [`super::compact`].
fn reopen(connection: &Connection, tier: Tier, bucket: i64) -> rusqlite::Result<()> {
    connection
        .prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1 AND value > ?2")?
        .execute(params![compacted_key(tier), bucket])?;
    Ok(())
}

/// The `meta` key of `tier`'s compaction cursor: every bucket below it is compacted.
pub(super) fn compacted_key(tier: Tier) -> String {
    format!("compacted:{}", tier.resolution_ms)
}

/// The last expiry cut of `metric` in `tier`, if any: nothing before it is read.
pub(super) fn cut(
    connection: &Connection,
    tier: Tier,
    metric: i64,
) -> rusqlite::Result<Option<i64>> {
    meta(connection, &cut_key(tier, metric))
}

fn cut_key(tier: Tier, metric: i64) -> String {
    format!("cut:{}:{metric}", tier.resolution_ms)
}

/// A `meta` value.
pub(super) fn meta(connection: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    connection
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |row| row.get(0))
        .optional()
}

/// Sets a `meta` value.
pub(super) fn set_meta(connection: &Connection, key: &str, value: i64) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![key, value])?;
    Ok(())
}

/// How many samples `tier` holds (packed cells and loose rows, as [`scan`] reads them).
pub fn count_samples(connection: &Connection, tier: Tier) -> rusqlite::Result<u64> {
    let metrics: Vec<i64> = connection
        .prepare(
            "SELECT metric FROM tier_samples WHERE tier = ?1
             UNION SELECT metric FROM tier_loose WHERE tier = ?1",
        )?
        .query_map([tier.resolution_ms], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut count = 0;
    for metric in metrics {
        scan(
            connection,
            tier,
            metric,
            i64::MIN / 2,
            i64::MAX / 2,
            None,
            &mut |_, _, _| count += 1,
        )?;
    }
    Ok(count)
}

/// Removes `metric`'s samples older than each tier's cut (`(resolution_ms, before_ms)`), then
/// the metric's series no tier holds a sample of any more (series churn must not grow the
/// file). Answers how many rows went.
pub fn expire(connection: &Connection, metric: i64, cuts: &[(i64, i64)]) -> rusqlite::Result<u64> {
    let mut removed = 0;
    for &(resolution_ms, before_ms) in cuts {
        let tier = Tier::of_resolution(resolution_ms);
        removed += expire_before(connection, tier, metric, before_ms)?;
    }
    // The series with no cell left: loose ones first (the newest rows hold every series still
    // sampled), then packed ones (a range of the key per tier) if any are left to check.
    let mut unheld: HashSet<i64> = connection
        .prepare_cached("SELECT id FROM series WHERE metric = ?1")?
        .query_map([metric], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for &(resolution_ms, _) in cuts {
        let tier = Tier::of_resolution(resolution_ms);
        loose::drop_held(connection, tier, metric, &mut unheld)?;
    }
    for &(resolution_ms, _) in cuts {
        if unheld.is_empty() {
            break;
        }
        let mut statement = connection.prepare_cached(
            "SELECT DISTINCT series FROM tier_samples WHERE tier = ?1 AND metric = ?2",
        )?;
        let ids =
            statement.query_map(params![resolution_ms, metric], |row| row.get::<_, i64>(0))?;
        for id in ids {
            unheld.remove(&id?);
        }
    }
    let mut forget = connection.prepare_cached("DELETE FROM series WHERE id = ?1")?;
    for id in unheld {
        removed += forget.execute([id])? as u64;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_back_as_written_and_whole_counts_are_small() {
        let cells = [
            Cell::scalar(3.0),
            Cell::scalar(-0.25),
            Cell::Scalar {
                n: 6,
                sum: 10.5,
                min: 0.0,
                max: 4.0,
                last: 1.0,
            },
            Cell::Histogram {
                count: 9,
                sum: 1.75,
                buckets: vec![1, 0, 8],
            },
            Cell::Summary {
                n: 2,
                count: 4,
                sum: 9.0,
                quantiles: vec![(0.5, 1.5), (0.99, f64::NAN)],
            },
        ];
        for cell in cells {
            let mut body = Vec::new();
            cell.encode(&mut body);
            let back = Cell::decode(&body).unwrap();
            // NaN != NaN: compare the encodings.
            let mut again = Vec::new();
            back.encode(&mut again);
            assert_eq!(body, again, "{cell:?}");
        }
        let mut body = Vec::new();
        Cell::scalar(100.0).encode(&mut body);
        assert_eq!(body.len(), 3);
        assert!(Cell::decode(&[HISTOGRAM, 1, 0, 200]).is_err());
        assert!(Cell::decode(&[SINGLE, 2, 0]).is_err());
    }

    #[test]
    fn merging_adds_increases_and_keeps_extremes_and_the_last() {
        let mut cell = Cell::scalar(5.0);
        cell.merge(&Cell::scalar(1.0));
        cell.merge(&Cell::scalar(3.0));
        assert_eq!(
            cell,
            Cell::Scalar {
                n: 3,
                sum: 9.0,
                min: 1.0,
                max: 5.0,
                last: 3.0
            }
        );
        let mut h = Cell::Histogram {
            count: 2,
            sum: 1.0,
            buckets: vec![1, 1],
        };
        h.merge(&Cell::Histogram {
            count: 3,
            sum: 2.0,
            buckets: vec![0, 3],
        });
        assert_eq!(
            h,
            Cell::Histogram {
                count: 5,
                sum: 3.0,
                buckets: vec![1, 4]
            }
        );
        let mut s = Cell::Summary {
            n: 1,
            count: 1,
            sum: 1.0,
            quantiles: vec![(0.5, 2.0)],
        };
        s.merge(&Cell::Summary {
            n: 3,
            count: 2,
            sum: 5.0,
            quantiles: vec![(0.5, 6.0)],
        });
        assert_eq!(
            s,
            Cell::Summary {
                n: 4,
                count: 3,
                sum: 6.0,
                quantiles: vec![(0.5, 5.0)]
            }
        );
    }

    #[test]
    fn tiers_are_checked_naming_the_key() {
        let t = |resolution_s: i64, retention_s: i64| Tier {
            resolution_ms: resolution_s * 1000,
            retention_ms: retention_s * 1000,
        };
        assert!(check(&[t(10, 86_400), t(60, 86_400 * 15), t(3600, 86_400 * 365)]).is_ok());
        assert!(check(&[]).unwrap_err().contains("at least one"));
        let e = check(&[t(10, 100), t(25, 100)]).unwrap_err();
        assert!(e.starts_with("tiers[1].resolution"), "{e}");
        let e = check(&[t(10, 100), t(10, 100)]).unwrap_err();
        assert!(e.starts_with("tiers[1].resolution"), "{e}");
        let e = check(&[t(60, 30)]).unwrap_err();
        assert!(e.starts_with("tiers[0].retention"), "{e}");
    }
}
