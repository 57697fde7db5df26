//! What one push holds, whatever format it came in: metric families whose series carry values
//! the client has already aggregated (a counter's running total, a histogram's cumulative
//! buckets, a summary's quantiles), and the checks every such value must pass before tallyd
//! shows it. The format readers (`text`, `proto`) build these; [`super::Pushes`] records them.

use std::fmt;

/// A family's type as the client declared it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushedKind {
    Counter,
    Gauge,
    /// No type, or `untyped`: shown as a gauge (Prometheus reads untyped samples as gauges).
    Untyped,
    Histogram,
    Summary,
}

impl PushedKind {
    /// The type's name in the text format.
    pub fn name(self) -> &'static str {
        match self {
            PushedKind::Counter => "counter",
            PushedKind::Gauge => "gauge",
            PushedKind::Untyped => "untyped",
            PushedKind::Histogram => "histogram",
            PushedKind::Summary => "summary",
        }
    }
}

/// One metric family of a push.
#[derive(Clone, Debug, PartialEq)]
pub struct PushedFamily {
    /// As pushed: a counter may be called `x_total` (Python) or `x` (Go).
    pub name: String,
    pub kind: PushedKind,
    pub help: Option<String>,
    pub series: Vec<PushedSeries>,
}

/// One series of a pushed family.
#[derive(Clone, Debug, PartialEq)]
pub struct PushedSeries {
    /// As pushed, sorted by name; without `le` and `quantile`, which are part of the value.
    pub labels: Vec<(String, String)>,
    pub value: PushedValue,
    /// Where the series is in the body, for error messages.
    pub at: Place,
}

/// A pushed value, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum PushedValue {
    /// A counter's total: finite and not negative.
    Counter(f64),
    /// A gauge's (or an untyped sample's) value: any number, NaN and ±Inf included.
    Gauge(f64),
    Histogram(PushedHistogram),
    Summary(PushedSummary),
}

/// A pushed histogram, in the registry's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct PushedHistogram {
    /// Finite upper bounds, ascending, without `+Inf`.
    pub bounds: Vec<f64>,
    /// Per-bucket (not cumulative) counts, one more than `bounds`: the last is the overflow.
    pub counts: Vec<u64>,
    pub sum: f64,
}

/// A pushed summary: quantiles as the client computed them.
#[derive(Clone, Debug, PartialEq)]
pub struct PushedSummary {
    /// `(quantile, value)`, ascending by quantile.
    pub quantiles: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: u64,
}

/// Where something is in a push body: a line of the text format, or a family (and metric) of
/// a protobuf body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Line(usize),
    /// 1-based family and metric positions in a delimited protobuf body.
    Message {
        family: usize,
        metric: usize,
    },
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Line(line) => write!(f, "line {line}"),
            Place::Message { family, metric: 0 } => write!(f, "metric family #{family}"),
            Place::Message { family, metric } => {
                write!(f, "metric family #{family}, metric #{metric}")
            }
        }
    }
}

/// Why a push body was refused, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyError {
    pub at: Option<Place>,
    pub message: String,
}

impl BodyError {
    pub fn at(at: Place, message: impl Into<String>) -> Self {
        BodyError {
            at: Some(at),
            message: message.into(),
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(at) => write!(f, "{at}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BodyError {}

/// `[a-zA-Z_][a-zA-Z0-9_]*`: a label name the text format can carry.
pub fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A counter's pushed total.
pub fn counter(value: f64) -> Result<PushedValue, String> {
    if value.is_finite() && value >= 0.0 {
        Ok(PushedValue::Counter(value))
    } else {
        Err(format!(
            "a counter's value must be a finite number of at least 0, not {value}"
        ))
    }
}

/// A count (of observations): a whole number of at least 0 that fits a `u64`.
fn whole_count(value: f64, what: &str) -> Result<u64, String> {
    // 2^64 itself does not fit; every f64 below it that is whole does.
    if (0.0..18_446_744_073_709_551_616.0).contains(&value) && value.fract() == 0.0 {
        Ok(value as u64)
    } else {
        Err(format!(
            "{what} must be a whole number of at least 0, not {value}"
        ))
    }
}

/// A histogram from its cumulative buckets `(upper bound, count)` in any order, its `_count`
/// and its `_sum` as pushed. The `+Inf` bucket and `_count` may each be missing (the other, or
/// the highest bucket, stands in), but must agree when both are there.
pub fn histogram(
    mut buckets: Vec<(f64, f64)>,
    count: Option<f64>,
    sum: Option<f64>,
) -> Result<PushedValue, String> {
    if buckets.iter().any(|(bound, _)| bound.is_nan()) {
        return Err("a bucket's le is NaN".into());
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(pair) = buckets.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(format!("two buckets have le={}", pair[0].0));
    }
    let infinite = match buckets.last() {
        Some(&(bound, cumulative)) if bound == f64::INFINITY => {
            buckets.pop();
            Some(whole_count(cumulative, "the +Inf bucket's count")?)
        }
        _ => None,
    };
    if let Some(&(bound, _)) = buckets.iter().find(|(bound, _)| !bound.is_finite()) {
        return Err(format!("a bucket's le is {bound}"));
    }
    let mut bounds = Vec::with_capacity(buckets.len());
    let mut counts = Vec::with_capacity(buckets.len() + 1);
    let mut below = 0u64;
    for (bound, cumulative) in buckets {
        let cumulative = whole_count(cumulative, &format!("the count of bucket le={bound}"))?;
        let Some(own) = cumulative.checked_sub(below) else {
            return Err(format!(
                "buckets are cumulative: le={bound} counts {cumulative}, fewer than the {below} below it"
            ));
        };
        bounds.push(bound);
        counts.push(own);
        below = cumulative;
    }
    let count = count.map(|c| whole_count(c, "_count")).transpose()?;
    let total = match (infinite, count) {
        (Some(inf), Some(count)) if inf != count => {
            return Err(format!(
                "_count is {count} but the +Inf bucket counts {inf}; they must agree"
            ));
        }
        (Some(total), _) | (None, Some(total)) => total,
        (None, None) if bounds.is_empty() => {
            return Err("a histogram needs buckets or a _count".into());
        }
        (None, None) => below,
    };
    let Some(overflow) = total.checked_sub(below) else {
        return Err(format!(
            "{total} observations in all, fewer than the {below} of the highest bucket"
        ));
    };
    counts.push(overflow);
    Ok(PushedValue::Histogram(PushedHistogram {
        bounds,
        counts,
        sum: sum.unwrap_or(0.0),
    }))
}

/// A summary from its `(quantile, value)` pairs in any order, `_count` and `_sum` as pushed
/// (a missing one is 0, as Pushgateway reads it).
pub fn summary(
    mut quantiles: Vec<(f64, f64)>,
    count: Option<f64>,
    sum: Option<f64>,
) -> Result<PushedValue, String> {
    if let Some(&(q, _)) = quantiles.iter().find(|(q, _)| !q.is_finite()) {
        return Err(format!("a quantile must be a finite number, not {q}"));
    }
    quantiles.sort_by(|a, b| a.0.total_cmp(&b.0));
    if let Some(pair) = quantiles.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        return Err(format!("quantile {} is given twice", pair[0].0));
    }
    Ok(PushedValue::Summary(PushedSummary {
        quantiles,
        count: whole_count(count.unwrap_or(0.0), "_count")?,
        sum: sum.unwrap_or(0.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(value: Result<PushedValue, String>) -> PushedHistogram {
        match value {
            Ok(PushedValue::Histogram(h)) => h,
            other => panic!("not a histogram: {other:?}"),
        }
    }

    #[test]
    fn cumulative_buckets_become_per_bucket_counts_with_the_overflow_last() {
        let h = hist(histogram(
            vec![(f64::INFINITY, 7.0), (1.0, 5.0), (0.1, 2.0)],
            Some(7.0),
            Some(3.5),
        ));
        assert_eq!(h.bounds, [0.1, 1.0]);
        assert_eq!(h.counts, [2, 3, 2]);
        assert_eq!(h.sum, 3.5);
    }

    #[test]
    fn a_missing_inf_bucket_or_count_is_taken_from_the_other() {
        let h = hist(histogram(vec![(1.0, 2.0)], Some(5.0), None));
        assert_eq!((h.counts, h.sum), (vec![2, 3], 0.0));
        let h = hist(histogram(
            vec![(1.0, 2.0), (f64::INFINITY, 4.0)],
            None,
            None,
        ));
        assert_eq!(h.counts, [2, 2]);
        let h = hist(histogram(vec![(1.0, 2.0)], None, None));
        assert_eq!(h.counts, [2, 0]);
        let h = hist(histogram(vec![], Some(3.0), Some(1.0)));
        assert_eq!((h.bounds.len(), h.counts), (0, vec![3]));
    }

    #[test]
    fn inconsistent_histograms_are_refused() {
        for (buckets, count, reason) in [
            (vec![(1.0, 3.0), (2.0, 2.0)], None, "cumulative"),
            (vec![(1.0, 3.0), (f64::INFINITY, 4.0)], Some(5.0), "agree"),
            (vec![(1.0, 3.0)], Some(2.0), "fewer"),
            (vec![(1.0, 1.5)], None, "whole"),
            (vec![(1.0, -1.0)], None, "whole"),
            (vec![(f64::NAN, 1.0)], None, "NaN"),
            (vec![(1.0, 1.0), (1.0, 2.0)], None, "two buckets"),
            (vec![(f64::NEG_INFINITY, 1.0)], None, "-inf"),
            (vec![], None, "needs buckets"),
        ] {
            let error = histogram(buckets.clone(), count, None).unwrap_err();
            assert!(error.contains(reason), "{buckets:?}: {error}");
        }
    }

    #[test]
    fn summaries_sort_their_quantiles_and_refuse_bad_ones() {
        let value = summary(vec![(0.9, 2.0), (0.5, f64::NAN)], Some(4.0), Some(6.0)).unwrap();
        let PushedValue::Summary(s) = value else {
            panic!("not a summary")
        };
        assert_eq!(s.quantiles[0].0, 0.5);
        assert!(s.quantiles[0].1.is_nan());
        assert_eq!((s.count, s.sum), (4, 6.0));
        assert!(summary(vec![(0.5, 1.0), (0.5, 2.0)], None, None).is_err());
        assert!(summary(vec![(f64::NAN, 1.0)], None, None).is_err());
        assert!(summary(vec![], Some(0.5), None).is_err());
    }

    #[test]
    fn counters_are_finite_and_not_negative() {
        assert_eq!(counter(3.0), Ok(PushedValue::Counter(3.0)));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(counter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_names_follow_the_text_format() {
        for good in ["a", "_a", "a_1", "A"] {
            assert!(is_label_name(good), "{good}");
        }
        for bad in ["", "1a", "a-b", "a.b", "é"] {
            assert!(!is_label_name(bad), "{bad}");
        }
    }
}
