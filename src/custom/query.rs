//! Binning stored points for a query: one value per step-aligned bin `[start + i·step, start +
//! (i+1)·step)`, stamped with the bin start, empty bins left out. Points stream in from the
//! store's scan; memory grows with the bins that hold points, not with the points.

use std::collections::{BTreeMap, HashMap};

use crate::definitions::Aggregation;

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
        let count = (end_ms - start_ms - 1) / step_ms + 1;
        if count > MAX_POINTS {
            return Err(format!(
                "the range holds {count} steps; at most {MAX_POINTS} per series (use a larger step)"
            ));
        }
        Ok(Bins {
            start_ms,
            end_ms,
            step_ms,
        })
    }

    fn index(&self, ts_ms: i64) -> Option<i64> {
        (self.start_ms..self.end_ms)
            .contains(&ts_ms)
            .then(|| (ts_ms - self.start_ms) / self.step_ms)
    }
}

/// What one bin has seen.
#[derive(Clone, Copy, Debug)]
struct Cell {
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

/// Points of many series, binned as they arrive.
#[derive(Debug)]
pub struct Binner {
    bins: Bins,
    series: HashMap<i64, BTreeMap<i64, Cell>>,
}

impl Binner {
    pub fn new(bins: Bins) -> Binner {
        Binner {
            bins,
            series: HashMap::new(),
        }
    }

    /// Takes one point; points outside the range are ignored.
    pub fn add(&mut self, series: i64, ts_ms: i64, value: f64) {
        let Some(index) = self.bins.index(ts_ms) else {
            return;
        };
        self.series
            .entry(series)
            .or_default()
            .entry(index)
            .and_modify(|cell| cell.add(ts_ms, value))
            .or_insert_with(|| Cell::new(ts_ms, value));
    }

    /// Each series with points, its bins in time order as `(bin start, value)`.
    pub fn finish(self, aggregation: Aggregation) -> HashMap<i64, Vec<(i64, f64)>> {
        let bins = self.bins;
        self.series
            .into_iter()
            .map(|(series, cells)| {
                let points = cells
                    .into_iter()
                    .map(|(index, cell)| {
                        (
                            bins.start_ms + index * bins.step_ms,
                            cell.value(aggregation),
                        )
                    })
                    .collect();
                (series, points)
            })
            .collect()
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
    fn ranges_are_checked() {
        assert!(Bins::new(10, 10, 1).is_err());
        assert!(Bins::new(10, 5, 1).is_err());
        assert!(Bins::new(0, MAX_POINTS, 1).is_ok());
        let error = Bins::new(0, MAX_POINTS + 1, 1).unwrap_err();
        assert!(error.contains("11001 steps"), "{error}");
    }
}
