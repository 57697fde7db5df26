//! Binning stored points for a query: one value per step-aligned bin `[start + i·step, start +
//! (i+1)·step)`, stamped with the bin start, empty bins left out. Points stream in from the
//! store's scan; memory grows with the bins that hold points, not with the points.

use std::collections::HashMap;

use crate::definitions::Aggregation;
use crate::store::StoreError;
use crate::store::tiers::Cell as TierCell;

/// Most bins one series may answer (Prometheus refuses a range query above 11,000 points).
pub const MAX_POINTS: i64 = 11_000;

/// The bins of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bins {
    pub start_ms: i64,
    pub end_ms: i64,
    pub step_ms: i64,
}

impl Bins {
    /// Checks the range: `start < end`, at most [`MAX_POINTS`] bins.
    pub fn new(start_ms: i64, end_ms: i64, step_ms: i64) -> Result<Bins, String> {
        if end_ms <= start_ms {
            return Err("end must be after start".into());
        }
        let bins = Bins {
            start_ms,
            end_ms,
            step_ms,
        };
        let count = bins.count();
        if count > MAX_POINTS {
            return Err(format!(
                "the range holds {count} steps; at most {MAX_POINTS} per series (use a larger step)"
            ));
        }
        Ok(bins)
    }

    /// How many bins the range holds.
    pub fn count(&self) -> i64 {
        (self.end_ms - self.start_ms - 1) / self.step_ms + 1
    }

    /// The bins cut into at most `parts` runs of whole bins, in time order, each starting at
    /// the first bin boundary at or after `align` of an even share of the range (a store
    /// bucket's start, so that no bucket is read by two runs). Fewer runs where they would
    /// coincide; one, the bins themselves, for `parts` ≤ 1.
    pub fn split(&self, parts: usize, align: impl Fn(i64) -> i64) -> Vec<Bins> {
        let mut starts = vec![self.start_ms];
        for k in 1..parts.max(1) as i64 {
            let even = self.start_ms + (self.end_ms - self.start_ms) / parts as i64 * k;
            let from = align(even).max(self.start_ms);
            // Up to the next bin boundary.
            let at = from + (self.step_ms - (from - self.start_ms) % self.step_ms) % self.step_ms;
            if at > *starts.last().expect("the start") && at < self.end_ms {
                starts.push(at);
            }
        }
        let ends = starts.iter().skip(1).copied().chain([self.end_ms]);
        (starts.iter().zip(ends))
            .map(|(&start_ms, end_ms)| Bins {
                start_ms,
                end_ms,
                step_ms: self.step_ms,
            })
            .collect()
    }

    pub(crate) fn index(&self, ts_ms: i64) -> Option<i64> {
        (self.start_ms..self.end_ms)
            .contains(&ts_ms)
            .then(|| (ts_ms - self.start_ms) / self.step_ms)
    }
}

/// Most bins a series' first value makes room for: a day at 1 min, and more than the charts
/// page asks (at most about 200). A bin takes under 64 bytes.
const MAX_ROOM: i64 = 1_440;

/// What a bin of recorded points keeps: enough for every [`Aggregation`].
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    sum: f64,
    count: u64,
    min: f64,
    max: f64,
    last_ts: i64,
    last: f64,
}

impl Cell {
    fn new(ts_ms: i64, value: f64) -> Cell {
        Cell {
            sum: value,
            count: 1,
            min: value,
            max: value,
            last_ts: ts_ms,
            last: value,
        }
    }

    fn add(&mut self, ts_ms: i64, value: f64) {
        self.sum += value;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        // Later points of the same millisecond were stored later: they win.
        if ts_ms >= self.last_ts {
            self.last_ts = ts_ms;
            self.last = value;
        }
    }

    fn value(&self, aggregation: Aggregation) -> f64 {
        match aggregation {
            Aggregation::Average => self.sum / self.count as f64,
            Aggregation::Sum => self.sum,
            Aggregation::Min => self.min,
            Aggregation::Max => self.max,
            Aggregation::Count => self.count as f64,
            Aggregation::Last => self.last,
        }
    }
}

/// Values of many series, binned as they arrive: one cell per series and bin, `C` being what a
/// bin keeps ([`Cell`] for recorded points, [`TierCell`] for history samples).
#[derive(Debug)]
pub struct Binned<C> {
    bins: Bins,
    /// Where each series' bins are in `cells`. Looked up once per run of one series' values
    /// (a store scan gives a series' values together): a fast hash, since the keys are the
    /// store's own ids.
    index: HashMap<i64, usize, ahash::RandomState>,
    /// Each series' bins holding something, by bin index in order. Values mostly come in time
    /// order (1.4 million for a day of 1,000 series at 1 min), so a value lands in the last bin
    /// or a new one after it; one out of order is placed by a binary search.
    cells: Vec<(i64, Vec<(i64, C)>)>,
    /// The series last added to, its place in `cells`, and the bin last added to.
    last: Option<Run>,
}

/// Where the last value went: a series' values mostly come in time order, several to a bin, so
/// the next one usually lands in the same bin without a lookup or a division.
#[derive(Clone, Copy, Debug)]
struct Run {
    series: i64,
    at: usize,
    bin: i64,
    /// The bin's `[from, to)`.
    from: i64,
    to: i64,
}

/// A binner's answer: each series' bins in time order as `(bin start, value)`, by series id.
pub type Points = HashMap<i64, Vec<(i64, f64)>, ahash::RandomState>;

/// Recorded points binned: count, sum, min, max and last of each bin.
pub type Binner = Binned<Cell>;

/// History samples binned: the cells of one bin folded as a coarser tier folds them.
pub type CellBinner = Binned<TierCell>;

impl<C> Binned<C> {
    pub fn new(bins: Bins) -> Binned<C> {
        Binned {
            bins,
            index: HashMap::default(),
            cells: Vec::new(),
            last: None,
        }
    }

    /// Folds `value`, at `ts_ms`, into `series`' bin holding it: `merge`s it into the cell
    /// there, or `make`s a new cell of it. Values outside the range are ignored.
    fn fold<V>(
        &mut self,
        series: i64,
        ts_ms: i64,
        value: V,
        make: impl FnOnce(V) -> C,
        merge: impl FnOnce(&mut C, V),
    ) {
        let (at, bin) = match self.last {
            Some(run) if run.series == series && (run.from..run.to).contains(&ts_ms) => {
                (run.at, run.bin)
            }
            last => {
                let Some(bin) = self.bins.index(ts_ms) else {
                    return;
                };
                let at = match last {
                    Some(run) if run.series == series => run.at,
                    _ => self.place_of(series),
                };
                let from = self.bins.start_ms + bin * self.bins.step_ms;
                self.last = Some(Run {
                    series,
                    at,
                    bin,
                    from,
                    // The last bin may be cut short by the range's end.
                    to: from.saturating_add(self.bins.step_ms).min(self.bins.end_ms),
                });
                (at, bin)
            }
        };
        let bins = &mut self.cells[at].1;
        match bins.last_mut() {
            Some((last, cell)) if *last == bin => merge(cell, value),
            Some((last, _)) if *last > bin => {
                match bins.binary_search_by_key(&bin, |(index, _)| *index) {
                    Ok(found) => merge(&mut bins[found].1, value),
                    Err(place) => bins.insert(place, (bin, make(value))),
                }
            }
            _ => bins.push((bin, make(value))),
        }
    }

    /// `series`' place in `cells`, made on its first value with room for its bins (up to a
    /// bound: a sparse series of a long range would not fill them).
    fn place_of(&mut self, series: i64) -> usize {
        let cells = &mut self.cells;
        let room = self.bins.count().min(MAX_ROOM) as usize;
        *self.index.entry(series).or_insert_with(|| {
            cells.push((series, Vec::with_capacity(room)));
            cells.len() - 1
        })
    }

    /// Each series with values, its bins in time order as `(bin start, value)`; a bin whose
    /// cell gives no value is left out.
    fn finish_with(self, value: impl Fn(&C) -> Option<f64>) -> Points {
        let bins = self.bins;
        self.cells
            .into_iter()
            .map(|(series, cells)| {
                let points = (cells.iter())
                    .filter_map(|(index, cell)| {
                        Some((bins.start_ms + index * bins.step_ms, value(cell)?))
                    })
                    .collect();
                (series, points)
            })
            .collect()
    }
}

impl Binned<Cell> {
    /// Takes one point; points outside the range are ignored.
    pub fn add(&mut self, series: i64, ts_ms: i64, value: f64) {
        self.fold(
            series,
            ts_ms,
            value,
            |value| Cell::new(ts_ms, value),
            |cell, value| cell.add(ts_ms, value),
        );
    }

    /// Each series with points, its bins in time order as `(bin start, value)`.
    pub fn finish(self, aggregation: Aggregation) -> Points {
        self.finish_with(|cell| Some(cell.value(aggregation)))
    }
}

/// What a query asks of each bin: an [`Aggregation`], or `quantile(q)` of a histogram's or
/// summary's history. Written as the query spells it (`average`, `quantile(0.99)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Asked {
    Plain(Aggregation),
    Quantile(f64),
}

impl Asked {
    /// Parses `average`, `sum`, … or `quantile(q)` with q in [0, 1].
    pub fn parse(text: &str) -> Result<Asked, String> {
        if let Some(q) = text
            .strip_prefix("quantile(")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            return match q.trim().parse::<f64>() {
                Ok(q) if (0.0..=1.0).contains(&q) => Ok(Asked::Quantile(q)),
                _ => Err(format!("{text:?}: the quantile must be a number in [0, 1]")),
            };
        }
        serde_json::from_value(serde_json::Value::String(text.to_owned()))
            .map(Asked::Plain)
            .map_err(|_| {
                format!("{text:?} is not one of average, sum, min, max, count, last, quantile(q)")
            })
    }
}

impl serde::Serialize for Asked {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Asked::Plain(aggregation) => aggregation.serialize(serializer),
            Asked::Quantile(q) => serializer.serialize_str(&format!("quantile({q})")),
        }
    }
}

/// History cells a query scans (series × intervals of its tier) from which its range is cut in
/// parts scanned on threads of their own (about 10 ms of work on one core).
pub const PARALLEL_CELLS: i64 = 100_000;

/// Threads a large history query is scanned on: the CPUs tallyd may run on (one when it is
/// pinned to one, as the benches pin it), at most 8.
pub fn scan_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| crate::priority::usable_cpus().min(8))
}

/// Runs `scan` over each of `parts` (consecutive runs of whole bins) on a thread of its own,
/// and joins their series' bins in time order.
pub fn scan_in_parallel(
    parts: &[Bins],
    scan: impl Fn(Bins) -> Result<Points, StoreError> + Sync,
) -> Result<Points, StoreError> {
    let answers = std::thread::scope(|scope| {
        let scan = &scan;
        let threads: Vec<_> = (parts.iter())
            .map(|&part| scope.spawn(move || scan(part)))
            .collect();
        (threads.into_iter())
            .map(|thread| {
                (thread.join()).unwrap_or_else(|_| {
                    Err(StoreError::Engine("a query scan thread panicked".into()))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    let mut answers = answers.into_iter();
    let mut points = answers.next().unwrap_or_default();
    for later in answers {
        for (series, bins) in later {
            points.entry(series).or_default().extend(bins);
        }
    }
    Ok(points)
}

/// Prometheus's `histogram_quantile`: the `q` quantile of observations counted per bucket
/// (`counts`, not cumulative, the last `+Inf`'s) under `bounds` (without `+Inf`), linearly
/// interpolated inside its bucket (the first starting at 0 unless its bound is below 0). None
/// without observations or when the buckets do not match the bounds.
pub fn histogram_quantile(q: f64, bounds: &[f64], counts: &[u64]) -> Option<f64> {
    if counts.len() != bounds.len() + 1 || bounds.is_empty() {
        return None;
    }
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    // The first bucket whose cumulative count reaches the rank.
    let mut below = 0u64;
    let mut b = 0;
    while b + 1 < counts.len() && ((below + counts[b]) as f64) < rank {
        below += counts[b];
        b += 1;
    }
    if b == bounds.len() {
        // In +Inf's bucket: the largest finite bound, as Prometheus answers.
        return Some(bounds[b - 1]);
    }
    let end = bounds[b];
    let start = match b {
        0 if end <= 0.0 => return Some(end),
        0 => 0.0,
        _ => bounds[b - 1],
    };
    if counts[b] == 0 {
        // Only q = 0 with the first bucket empty lands here: Prometheus divides 0 by 0 (NaN, a
        // bin its backend answer leaves out), and there is no value to give either.
        return None;
    }
    Some(start + (end - start) * (rank - below as f64) / counts[b] as f64)
}

impl Binned<TierCell> {
    /// Takes one sample (in time order within its series); samples outside the range are
    /// ignored.
    pub fn add(&mut self, series: i64, ts_ms: i64, cell: TierCell) {
        self.fold(
            series,
            ts_ms,
            cell,
            |cell| cell,
            |sofar, cell| sofar.merge(&cell),
        );
    }

    /// Each series with values, its bins in time order as `(bin start, value)`. `bounds` are a
    /// histogram's bucket bounds, for quantiles. A bin without a value for what is asked (no
    /// observations, a quantile a summary does not keep) is left out.
    pub fn finish(self, asked: Asked, bounds: &[f64]) -> Points {
        self.finish_with(|cell| cell_value(cell, asked, bounds))
    }
}

/// What `asked` makes of one bin's folded cell.
fn cell_value(cell: &TierCell, asked: Asked, bounds: &[f64]) -> Option<f64> {
    let ratio = |sum: f64, count: u64| (count > 0).then(|| sum / count as f64);
    match (cell, asked) {
        (
            &TierCell::Scalar {
                n,
                sum,
                min,
                max,
                last,
            },
            Asked::Plain(aggregation),
        ) => Some(match aggregation {
            Aggregation::Average => sum / n as f64,
            Aggregation::Sum => sum,
            Aggregation::Min => min,
            Aggregation::Max => max,
            Aggregation::Count => n as f64,
            Aggregation::Last => last,
        }),
        (&TierCell::Histogram { count, sum, .. }, Asked::Plain(aggregation))
        | (&TierCell::Summary { count, sum, .. }, Asked::Plain(aggregation)) => match aggregation {
            Aggregation::Average => ratio(sum, count),
            Aggregation::Sum => Some(sum),
            Aggregation::Count => Some(count as f64),
            _ => None,
        },
        (TierCell::Histogram { buckets, .. }, Asked::Quantile(q)) => {
            histogram_quantile(q, bounds, buckets)
        }
        (TierCell::Summary { quantiles, .. }, Asked::Quantile(q)) => quantiles
            .iter()
            .find(|(kept, value)| (kept - q).abs() < 1e-9 && !value.is_nan())
            .map(|(_, value)| *value),
        (TierCell::Scalar { .. }, Asked::Quantile(_)) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binned(points: &[(i64, f64)], aggregation: Aggregation) -> Vec<(i64, f64)> {
        let mut binner = Binner::new(Bins::new(1_000, 4_000, 1_000).unwrap());
        for &(ts, value) in points {
            binner.add(7, ts, value);
        }
        binner.finish(aggregation).remove(&7).unwrap_or_default()
    }

    #[test]
    fn a_last_bin_cut_short_by_the_end_takes_nothing_past_it() {
        // The bin [3000, 3500) after a value in it: 3600 is past the range, though inside
        // the step the bin would have without the end.
        let mut binner = Binner::new(Bins::new(1_000, 3_500, 1_000).unwrap());
        for (ts, value) in [(3_200, 1.0), (3_499, 2.0), (3_500, 50.0), (3_600, 100.0)] {
            binner.add(7, ts, value);
        }
        let sums = binner.finish(Aggregation::Sum).remove(&7).unwrap();
        assert_eq!(sums, [(3_000, 3.0)]);
    }

    #[test]
    fn bins_are_half_open_and_stamped_with_their_start() {
        let points = [
            (999, 100.0),
            (1_000, 1.0),
            (1_999, 3.0),
            (3_000, 5.0),
            (4_000, 100.0),
        ];
        assert_eq!(
            binned(&points, Aggregation::Sum),
            [(1_000, 4.0), (3_000, 5.0)]
        );
        assert_eq!(
            binned(&points, Aggregation::Average),
            [(1_000, 2.0), (3_000, 5.0)]
        );
        assert_eq!(
            binned(&points, Aggregation::Min),
            [(1_000, 1.0), (3_000, 5.0)]
        );
        assert_eq!(
            binned(&points, Aggregation::Max),
            [(1_000, 3.0), (3_000, 5.0)]
        );
        assert_eq!(
            binned(&points, Aggregation::Count),
            [(1_000, 2.0), (3_000, 1.0)]
        );
    }

    #[test]
    fn last_is_the_value_with_the_latest_timestamp_not_the_last_read() {
        let points = [(1_500, 2.0), (1_100, 1.0), (1_500, 3.0)];
        assert_eq!(binned(&points, Aggregation::Last), [(1_000, 3.0)]);
    }

    #[test]
    fn values_out_of_time_order_and_series_interleaved_land_in_their_bins() {
        let mut binner = Binner::new(Bins::new(0, 10_000, 1_000).unwrap());
        // Series 1 in order, then back in time; series 2 in between; series 1 again.
        for (series, ts, value) in [
            (1, 5_000, 5.0),
            (1, 7_500, 7.0),
            (2, 9_000, 90.0),
            (1, 500, 1.0),
            (1, 5_900, 6.0),
            (2, 100, 10.0),
            (1, 3_000, 3.0),
            (1, 7_000, 8.0),
            (1, 12_000, 100.0),
        ] {
            binner.add(series, ts, value);
        }
        let mut points = binner.finish(Aggregation::Sum);
        assert_eq!(
            points.remove(&1).unwrap(),
            [(0, 1.0), (3_000, 3.0), (5_000, 11.0), (7_000, 15.0)]
        );
        assert_eq!(points.remove(&2).unwrap(), [(0, 10.0), (9_000, 90.0)]);
        assert!(points.is_empty());
    }

    #[test]
    fn quantiles_interpolate_as_prometheus_histogram_quantile_does() {
        let bounds = [0.1, 0.5, 1.0, 5.0];
        // Counts 1, 2, 1, 1, 0: rank 2.5 is 3/4 into (0.1, 0.5].
        let counts = [1, 2, 1, 1, 0];
        let p50 = histogram_quantile(0.5, &bounds, &counts).unwrap();
        assert!((p50 - 0.4).abs() < 1e-12, "{p50}");
        // In +Inf's bucket: the largest finite bound.
        assert_eq!(
            histogram_quantile(0.9, &bounds, &[0, 0, 2, 0, 1]),
            Some(5.0)
        );
        // q = 0 with the first bucket holding observations: its start; with it empty,
        // Prometheus's 0/0, no value.
        assert_eq!(histogram_quantile(0.0, &bounds, &counts), Some(0.0));
        assert_eq!(histogram_quantile(0.0, &bounds, &[0, 2, 1, 1, 0]), None);
        // No observations; buckets that do not match the bounds.
        assert_eq!(histogram_quantile(0.5, &bounds, &[0; 5]), None);
        assert_eq!(histogram_quantile(0.5, &bounds, &[1, 2]), None);
    }

    #[test]
    fn ranges_are_checked() {
        assert!(Bins::new(10, 10, 1).is_err());
        assert!(Bins::new(10, 5, 1).is_err());
        assert!(Bins::new(0, MAX_POINTS, 1).is_ok());
        let error = Bins::new(0, MAX_POINTS + 1, 1).unwrap_err();
        assert!(error.contains("11001 steps"), "{error}");
    }

    #[test]
    fn a_split_is_whole_bins_from_bucket_starts_covering_the_range_once() {
        // 5-minute bins over 23 h from 00:05; buckets of 6 h.
        let (step, bucket) = (300_000, 6 * 3_600_000);
        let bins = Bins::new(300_000, 300_000 + 23 * 3_600_000, step).unwrap();
        let floor = |ts: i64| ts - ts.rem_euclid(bucket);
        for parts in [1, 2, 3, 4, 8, 1000] {
            let split = bins.split(parts, floor);
            assert!(
                !split.is_empty() && split.len() <= parts.max(1),
                "{parts}: {split:?}"
            );
            assert_eq!(split[0].start_ms, bins.start_ms);
            assert_eq!(split.last().unwrap().end_ms, bins.end_ms);
            for pair in split.windows(2) {
                assert_eq!(pair[0].end_ms, pair[1].start_ms, "{parts}: contiguous");
                assert_eq!(pair[1].start_ms % bucket, 0, "{parts}: at a bucket start");
                assert_eq!(
                    (pair[1].start_ms - bins.start_ms) % step,
                    0,
                    "{parts}: a bin edge"
                );
            }
            let counted: i64 = split.iter().map(Bins::count).sum();
            assert_eq!(counted, bins.count(), "{parts}: every bin once");
        }
        assert_eq!(bins.split(2, floor).len(), 2);
        // A bucket start off the bin grid: the part starts at the next bin edge.
        let odd = Bins::new(0, 1_000, 300).unwrap();
        let split = odd.split(2, |ts| ts - ts.rem_euclid(70));
        assert_eq!(split[1].start_ms, 600, "{split:?}");
        // Too short to cut: one part.
        assert_eq!(Bins::new(0, 300, 300).unwrap().split(4, floor).len(), 1);
    }

    #[test]
    fn a_scan_in_parallel_parts_answers_as_one_scan() {
        // Three series over 10 h of 1-minute scalar cells (one missing now and then, and a
        // series that only starts late), binned at 7 minutes.
        let mut cells = Vec::new();
        for series in [3_i64, 9, 27] {
            for minute in 0..600_i64 {
                if (minute * series) % 11 == 0 || (series == 27 && minute < 400) {
                    continue;
                }
                let v = ((minute * 31 + series) % 17) as f64;
                let cell = TierCell::Scalar {
                    n: 6,
                    sum: 6.0 * v,
                    min: v - 1.0,
                    max: v + 2.0,
                    last: v,
                };
                cells.push((series, minute * 60_000, cell));
            }
        }
        let bins = Bins::new(60_000 * 3, 60_000 * 598, 7 * 60_000).unwrap();
        let scan = |part: Bins| -> Result<Points, StoreError> {
            let mut binner = CellBinner::new(part);
            for (series, ts, cell) in &cells {
                if (part.start_ms..part.end_ms).contains(ts) {
                    binner.add(*series, *ts, cell.clone());
                }
            }
            Ok(binner.finish(Asked::Plain(Aggregation::Average), &[]))
        };
        let whole = scan(bins).unwrap();
        assert_eq!(whole.len(), 3);
        let hour = |ts: i64| ts - ts.rem_euclid(3_600_000);
        for parts in [2, 3, 5] {
            let split = bins.split(parts, hour);
            assert_eq!(split.len(), parts);
            assert_eq!(
                scan_in_parallel(&split, scan).unwrap(),
                whole,
                "{parts} parts"
            );
        }
        // A part's failure is the answer's.
        let failing = |part: Bins| match part.start_ms == bins.start_ms {
            true => scan(part),
            false => Err(StoreError::Engine("disk gone".into())),
        };
        assert!(scan_in_parallel(&bins.split(3, hour), failing).is_err());
    }
}
