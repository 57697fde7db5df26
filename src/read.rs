//! The read seam: the one way every output — the `/metrics` writer today; history, remote-write
//! and JSON queries next — looks at metrics, whether they live in the registry or are tallyd's
//! own.
//!
//! A source ([`Registry::visit`], `Telemetry::visit`) calls a [`Visitor`] once per family with
//! its metadata ([`FamilyView`]: name, kind, help, unit, buckets), then once per series with its
//! label pairs and a [`ValueView`]. Labels come as [`Labels`]: registry series keep theirs
//! pre-escaped for the text formats (the `/metrics` fast path copies that text as it is), and
//! [`Labels::pairs`] yields the `(name, value)` pairs from it for every other reader.
//!
//! Consistency is the registry's (see `crate::exposition`): one family at a time under that
//! family's read lock, values read with relaxed atomics. A visitor should only copy what it
//! needs: a new series of the family being visited waits for it (updates of existing ones do
//! not).
//!
//! [`snapshot`] is a visitor that copies everything into owned values, for tests and for
//! outputs that want plain data.

use std::borrow::Cow;

use crate::registry::{Cell, Family, HistogramCell, Kind, NativeSnapshot, Registry, SummaryCell};

/// A family's metadata.
#[derive(Clone, Copy, Debug)]
pub struct FamilyView<'a> {
    /// For counters, without the `_total` its samples carry.
    pub name: &'a str,
    pub kind: Kind,
    pub help: Option<&'a str>,
    pub unit: Option<&'a str>,
    /// Histogram bucket bounds of the family (without `+Inf`); empty for other kinds.
    pub buckets: &'a [f64],
}

/// A series' labels.
#[derive(Clone, Copy, Debug)]
pub enum Labels<'a> {
    /// `name="value",...`, sorted by name, values escaped for the text formats (`\\`, `\"`,
    /// `\n`): how the registry keeps them.
    Escaped(&'a str),
    /// Plain pairs, in the order they are to be written.
    Pairs(&'a [(&'a str, &'a str)]),
}

impl<'a> Labels<'a> {
    pub fn is_empty(&self) -> bool {
        match self {
            Labels::Escaped(text) => text.is_empty(),
            Labels::Pairs(pairs) => pairs.is_empty(),
        }
    }

    /// The `(name, value)` pairs, values unescaped (borrowed unless they held an escape).
    pub fn pairs(&self) -> impl Iterator<Item = (&'a str, Cow<'a, str>)> + 'a {
        let (escaped, plain) = match *self {
            Labels::Escaped(text) => (Some(EscapedPairs { rest: text }), None),
            Labels::Pairs(pairs) => (None, Some(pairs.iter())),
        };
        escaped.into_iter().flatten().chain(
            plain
                .into_iter()
                .flatten()
                .map(|(name, value)| (*name, Cow::Borrowed(*value))),
        )
    }

    /// Appends the labels as `name="value",...` escaped for the text formats, without braces.
    pub fn write_escaped(&self, out: &mut Vec<u8>) {
        match self {
            Labels::Escaped(text) => out.extend_from_slice(text.as_bytes()),
            Labels::Pairs(pairs) => {
                let mut text = String::new();
                for (i, (name, value)) in pairs.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    text.push_str(name);
                    text.push_str("=\"");
                    crate::registry::escape_label_value(value, &mut text);
                    text.push('"');
                }
                out.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// Iterator over the pairs of [`Labels::Escaped`] text.
struct EscapedPairs<'a> {
    rest: &'a str,
}

impl<'a> Iterator for EscapedPairs<'a> {
    type Item = (&'a str, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        // Label names hold no `=`, and an escaped value no bare `"`: both ends are unambiguous.
        let (name, rest) = self.rest.split_once("=\"")?;
        let bytes = rest.as_bytes();
        let mut end = 0;
        let mut escaped = false;
        while end < bytes.len() && bytes[end] != b'"' {
            if bytes[end] == b'\\' {
                escaped = true;
                end += 1;
            }
            end += 1;
        }
        let raw = rest.get(..end)?;
        self.rest = rest
            .get(end + 1..)
            .map_or("", |r| r.strip_prefix(',').unwrap_or(r));
        let value = if escaped {
            Cow::Owned(unescape_label_value(raw))
        } else {
            Cow::Borrowed(raw)
        };
        Some((name, value))
    }
}

/// The inverse of [`crate::registry::escape_label_value`].
fn unescape_label_value(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    let mut chars = escaped.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A series' value, read as the visitor sees it.
#[derive(Clone, Copy, Debug)]
pub enum ValueView<'a> {
    Counter(f64),
    Gauge(f64),
    /// A StatsD set: distinct members seen in the set window, exposed as a gauge.
    Set(u64),
    /// Bucket bounds, per-bucket counts (the last is the `+Inf` overflow) and sum, and native
    /// (exponential) buckets where the family keeps them ([`HistogramCell::read_native`]: read
    /// those first).
    Histogram(&'a HistogramCell),
    /// Windowed quantiles and cumulative sum and count.
    Summary(&'a SummaryCell),
}

/// One series as a visitor sees it.
#[derive(Clone, Copy, Debug)]
pub struct SeriesView<'a> {
    pub labels: Labels<'a>,
    /// Unix seconds at creation (OpenMetrics `_created`), where known.
    pub created: Option<f64>,
    pub value: ValueView<'a>,
}

/// What reads families and series from a source.
pub trait Visitor {
    /// A family begins; false skips its series (and its [`Visitor::end_family`]).
    fn family(&mut self, family: &FamilyView<'_>) -> bool;
    /// One series of the family begun last.
    fn series(&mut self, family: &FamilyView<'_>, series: &SeriesView<'_>);
    /// The family begun last has no more series.
    fn end_family(&mut self, _family: &FamilyView<'_>) {}
}

impl Registry {
    /// Visits every family, in name order, and its series.
    pub fn visit(&self, visitor: &mut impl Visitor) {
        for family in self.families() {
            self.visit_family(&family, visitor);
        }
    }

    /// Visits one family (from [`Registry::families`]) and its series.
    pub fn visit_family(&self, family: &Family, visitor: &mut impl Visitor) {
        let view = FamilyView {
            name: family.name(),
            kind: family.kind(),
            help: family.help(),
            unit: family.unit(),
            buckets: match family.kind() {
                Kind::Histogram => family.buckets(),
                _ => &[],
            },
        };
        if !visitor.family(&view) {
            return;
        }
        let now = self.now_secs();
        let window = self.settings().set_window_secs;
        family.for_each_series(|series| {
            let value = match series.cell() {
                Cell::Counter(v) => ValueView::Counter(v.get()),
                Cell::Gauge(v) => ValueView::Gauge(v.get()),
                Cell::Set(_) => ValueView::Set(series.set_cardinality(now, window)),
                Cell::Histogram(h) => ValueView::Histogram(h),
                Cell::Summary(s) => ValueView::Summary(s),
            };
            let series = SeriesView {
                labels: Labels::Escaped(series.labels()),
                created: Some(series.created()),
                value,
            };
            visitor.series(&view, &series);
        });
        visitor.end_family(&view);
    }
}

/// A series' value, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Counter(f64),
    Gauge(f64),
    Set(u64),
    Histogram {
        /// `(upper bound, cumulative count)`, the last bound `+Inf`.
        buckets: Vec<(f64, u64)>,
        sum: f64,
        count: u64,
        /// Native buckets, for a family that keeps them.
        native: Option<NativeSnapshot>,
    },
    Summary {
        /// `(quantile, value)`; the value is NaN while the window is empty.
        quantiles: Vec<(f64, f64)>,
        sum: f64,
        count: u64,
    },
}

impl Value {
    /// The value of a [`ValueView`], copied.
    pub fn of(view: &ValueView<'_>) -> Value {
        match *view {
            ValueView::Counter(v) => Value::Counter(v),
            ValueView::Gauge(v) => Value::Gauge(v),
            ValueView::Set(n) => Value::Set(n),
            ValueView::Histogram(h) => {
                let mut native = NativeSnapshot::default();
                let native = h.read_native(&mut native).then_some(native);
                let mut cumulative = 0u64;
                let buckets: Vec<(f64, u64)> = h
                    .bounds()
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(h.counts())
                    .map(|(bound, count)| {
                        cumulative = cumulative.saturating_add(count);
                        (bound, cumulative)
                    })
                    .collect();
                Value::Histogram {
                    buckets,
                    sum: h.sum(),
                    count: cumulative,
                    native,
                }
            }
            ValueView::Summary(s) => {
                let mut quantiles = Vec::new();
                let (sum, count) = s.read(|q, v| quantiles.push((q, v)));
                Value::Summary {
                    quantiles,
                    sum,
                    count,
                }
            }
        }
    }
}

/// One family, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct FamilySnapshot {
    pub name: String,
    pub kind: Kind,
    pub help: Option<String>,
    pub unit: Option<String>,
    pub series: Vec<SeriesSnapshot>,
}

/// One series, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesSnapshot {
    /// `(name, value)`, in the source's order (sorted by name for the registry).
    pub labels: Vec<(String, String)>,
    pub value: Value,
}

/// Copies what a source visits.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub families: Vec<FamilySnapshot>,
}

impl Visitor for Snapshot {
    fn family(&mut self, family: &FamilyView<'_>) -> bool {
        self.families.push(FamilySnapshot {
            name: family.name.to_owned(),
            kind: family.kind,
            help: family.help.map(str::to_owned),
            unit: family.unit.map(str::to_owned),
            series: Vec::new(),
        });
        true
    }

    fn series(&mut self, _family: &FamilyView<'_>, series: &SeriesView<'_>) {
        let labels = series
            .labels
            .pairs()
            .map(|(name, value)| (name.to_owned(), value.into_owned()))
            .collect();
        if let Some(family) = self.families.last_mut() {
            family.series.push(SeriesSnapshot {
                labels,
                value: Value::of(&series.value),
            });
        }
    }
}

/// Every family of `registry` and its series, copied.
pub fn snapshot(registry: &Registry) -> Vec<FamilySnapshot> {
    let mut snapshot = Snapshot::default();
    registry.visit(&mut snapshot);
    snapshot.families
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::record::Recorder;
    use crate::registry::{RegistrySettings, Update, escape_label_value};

    fn recorder() -> Arc<Recorder> {
        Recorder::for_registry(&Arc::new(Registry::new(RegistrySettings::default())))
    }

    proptest! {
        /// Pairs read back from the escaped text are the pairs that were escaped.
        #[test]
        fn escaped_label_text_reads_back_as_the_original_pairs(
            values in proptest::collection::vec("\\PC{0,8}|[\\\\\"\n,=a]{0,6}", 1..4)
        ) {
            let names = ["a", "b_2", "c"];
            let mut text = String::new();
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(names[i]);
                text.push_str("=\"");
                escape_label_value(value, &mut text);
                text.push('"');
            }
            let read: Vec<(&str, String)> = Labels::Escaped(&text)
                .pairs()
                .map(|(n, v)| (n, v.into_owned()))
                .collect();
            let expected: Vec<(&str, String)> =
                names.iter().copied().zip(values.iter().cloned()).collect();
            prop_assert_eq!(read, expected);
        }
    }

    #[test]
    fn pairs_are_escaped_like_registry_labels() {
        let mut out = Vec::new();
        Labels::Pairs(&[("path", "C:\\x \"y\"\n"), ("b", "2")]).write_escaped(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"path="C:\\x \"y\"\n",b="2""#
        );
    }

    #[test]
    fn a_snapshot_reads_every_kind_with_its_labels() {
        let recorder = recorder();
        let labels = [("model", "v\"1")];
        recorder
            .record("c", Kind::Counter, labels, Update::Add(2.5))
            .unwrap();
        recorder
            .record("g", Kind::Gauge, labels, Update::Set(-1.0))
            .unwrap();
        for value in [0.003, 0.2, 20.0] {
            let observe = Update::Observe { value, weight: 2 };
            recorder
                .record("h", Kind::Histogram, labels, observe)
                .unwrap();
        }
        let registry = recorder.registry();
        for member in [1, 2, 2] {
            let seen = Update::Member {
                hash: member,
                now: registry.now_secs(),
            };
            recorder.record("s", Kind::Set, labels, seen).unwrap();
        }
        let families = snapshot(registry);
        let names: Vec<&str> = families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["c", "g", "h", "s"]);
        for family in &families {
            assert_eq!(
                family.series[0].labels,
                [("model".to_owned(), "v\"1".to_owned())]
            );
        }
        assert_eq!(families[0].series[0].value, Value::Counter(2.5));
        assert_eq!(families[1].series[0].value, Value::Gauge(-1.0));
        let Value::Histogram {
            buckets,
            sum,
            count,
            native,
        } = &families[2].series[0].value
        else {
            panic!("not a histogram: {:?}", families[2]);
        };
        assert!((sum - 40.406).abs() < 1e-9, "{sum}");
        assert_eq!(*count, 6);
        assert_eq!(buckets.first(), Some(&(0.005, 2)));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 6)));
        assert_eq!(*native, None, "native buckets are off by default");
        assert_eq!(families[3].series[0].value, Value::Set(2));
    }
}
