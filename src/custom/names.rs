//! The naming lint for API-defined metrics, from the Matih seed's conventions: snake_case, a
//! unit suffix, `_total` on counters, and the operator's namespace prefix.

use crate::naming::is_metric_name;
use crate::registry::Kind;

/// Suffixes that name a unit (or a count) well enough for a reader.
const UNIT_SUFFIXES: &[&str] = &[
    "_seconds",
    "_milliseconds",
    "_bytes",
    "_ratio",
    "_percent",
    "_total",
    "_count",
    "_tokens",
    "_requests",
    "_errors",
    "_celsius",
    "_meters",
    "_grams",
    "_joules",
    "_volts",
    "_amperes",
    "_hertz",
    "_score",
    "_info",
];

/// What the lint finds wrong with `name`, worded for the client. An empty list is a clean name.
pub fn lint(name: &str, kind: Kind, unit: Option<&str>, required_prefix: &str) -> Vec<String> {
    let mut findings = Vec::new();
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        || name.contains("__")
    {
        findings.push(format!(
            "{name:?} is not snake_case (lowercase letters, digits, single underscores)"
        ));
    }
    if !required_prefix.is_empty() && !name.starts_with(required_prefix) {
        findings.push(format!(
            "{name:?} does not start with the required prefix {required_prefix:?}"
        ));
    }
    if kind == Kind::Counter && !name.ends_with("_total") {
        findings.push(format!("{name:?} is a counter and should end with _total"));
    }
    let base = name.strip_suffix("_total").unwrap_or(name);
    match unit.filter(|u| !u.is_empty()) {
        Some(unit) if !base.ends_with(&format!("_{unit}")) => findings.push(format!(
            "{name:?} should end with its unit: _{unit}{}",
            if kind == Kind::Counter { "_total" } else { "" }
        )),
        Some(_) => {}
        None if !UNIT_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) => findings.push(
            format!("{name:?} has no unit suffix (such as _seconds, _bytes, _ratio or _total)"),
        ),
        None => {}
    }
    findings
}

/// Why a name cannot be used at all, whatever the lint mode.
pub fn unusable(name: &str) -> Option<String> {
    if !is_metric_name(name) {
        return Some(format!(
            "{name:?} is not a Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
        ));
    }
    if name.starts_with("__") || crate::telemetry::is_reserved_name(name) {
        return Some(format!("{name:?} is reserved"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_names_pass() {
        assert!(
            lint(
                "matih_custom_requests_total",
                Kind::Counter,
                None,
                "matih_custom_"
            )
            .is_empty()
        );
        assert!(
            lint(
                "conversation_satisfaction_score",
                Kind::Gauge,
                Some("score"),
                ""
            )
            .is_empty()
        );
        assert!(lint("latency_seconds", Kind::Histogram, Some("seconds"), "").is_empty());
    }

    #[test]
    fn each_convention_is_reported() {
        let findings = lint("RequestCount", Kind::Counter, None, "matih_custom_");
        assert_eq!(findings.len(), 4, "{findings:?}");
        assert!(findings[0].contains("snake_case"));
        assert!(findings[1].contains("required prefix"));
        assert!(findings[2].contains("_total"));
        assert!(findings[3].contains("unit suffix"));
        let wrong_unit = lint("latency_ms", Kind::Gauge, Some("seconds"), "");
        assert_eq!(
            wrong_unit,
            ["\"latency_ms\" should end with its unit: _seconds"]
        );
        assert!(lint("a__b_seconds", Kind::Gauge, None, "")[0].contains("snake_case"));
    }

    #[test]
    fn unusable_names() {
        assert!(unusable("bad name!").is_some());
        assert!(unusable("").is_some());
        assert!(unusable("__internal").is_some());
        assert!(unusable("tallyd_udp_packets_total").is_some());
        assert!(unusable("fine_name").is_none());
    }
}
