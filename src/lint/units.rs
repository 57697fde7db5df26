//! The unit and suffix tables: Prometheus' base units, the non-base units and the base unit to
//! use instead, the suffixes of histogram and summary series; and a name's words without them.

/// Base units Prometheus recommends, and `info` (of `*_info` metrics): suffixes that do not
/// count as a word of the name.
const BASE_UNITS: &[&str] = &[
    "seconds", "bytes", "ratio", "meters", "grams", "volts", "amperes", "joules", "celsius",
    "kelvin", "hertz", "info",
];

/// Suffixes of non-base units, and the base unit to use instead.
pub(super) const NON_BASE_UNITS: &[(&str, &str)] = &[
    ("milliseconds", "seconds"),
    ("millis", "seconds"),
    ("ms", "seconds"),
    ("microseconds", "seconds"),
    ("micros", "seconds"),
    ("nanoseconds", "seconds"),
    ("ns", "seconds"),
    ("minutes", "seconds"),
    ("hours", "seconds"),
    ("days", "seconds"),
    ("kilobytes", "bytes"),
    ("megabytes", "bytes"),
    ("gigabytes", "bytes"),
    ("kb", "bytes"),
    ("mb", "bytes"),
    ("gb", "bytes"),
    ("percent", "ratio"),
    ("percentage", "ratio"),
    ("pct", "ratio"),
];

/// Suffixes of the series of histograms and summaries (and of counters' `_created`).
pub(super) const SERIES_SUFFIXES: &[&str] = &["_count", "_sum", "_bucket", "_created"];

/// The base unit to use instead of `unit`, when it is not one.
pub(super) fn base_unit_for(unit: &str) -> Option<&'static str> {
    NON_BASE_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, base)| *base)
}

/// `name` without a trailing `_<unit>` for any unit tallyd knows (base or not).
pub(super) fn strip_any_unit(name: &str) -> &str {
    BASE_UNITS
        .iter()
        .copied()
        .chain(NON_BASE_UNITS.iter().map(|(u, _)| *u))
        .find_map(|unit| {
            name.strip_suffix(unit)
                .and_then(|rest| rest.strip_suffix('_'))
                .filter(|rest| !rest.is_empty())
        })
        .unwrap_or(name)
}

/// The words of `norm` that say what is measured: without `_total` and the unit suffix.
pub(super) fn words<'a>(norm: &'a str, unit: Option<&str>) -> Vec<&'a str> {
    let stem = norm.strip_suffix("_total").unwrap_or(norm);
    let stem = match unit {
        Some(unit) => stem
            .strip_suffix(unit)
            .and_then(|rest| rest.strip_suffix('_'))
            .unwrap_or(stem),
        None => strip_any_unit(stem),
    };
    stem.split('_').filter(|w| !w.is_empty()).collect()
}
