//! Checks on a metric name: a `[[metric]]` `name`, or a mapping `name` (literal, or a template
//! with `$` captures).
//!
//! What is checked, on a metric name (a `[[metric]]` `name`, or a mapping `name` without `$`):
//!
//! - characters: lowercase `a-z`, digits and `_`, not starting with a digit
//!   ([`Severity::Error`] for what tallyd would sanitise, a warning for uppercase); no `__`
//!   prefix (reserved), no `__` inside, no leading or trailing `_`; not one of tallyd's own names;
//! - suffixes: `_total` only on counters (a counter without it is a [`Severity::Note`]: tallyd
//!   adds it); `_count`, `_sum`, `_bucket`, `_created` belong to histogram and summary series;
//!   base units only (`_ms`, `_milliseconds`, `_kilobytes`, `_percent`... name seconds, bytes,
//!   ratio); the `unit` of a `[[metric]]` ends its name (before `_total` for counters);
//! - a namespace prefix: at least two words besides `_total` and the unit suffix;
//! - `help` present on a `[[metric]]` (checked in `document`).
//!
//! A mapping `name` with `$` captures is checked on its literal text only: characters, the
//! underscores at its ends, and the suffixes when the template ends with literal text
//! (`${1}_latency_ms`).

use std::collections::HashMap;

use crate::naming::sanitize_name;
use crate::registry::Kind;

use super::Severity;
use super::document::{At, Linter};
use super::template::{Piece, pieces};
use super::units::{NON_BASE_UNITS, SERIES_SUFFIXES, base_unit_for, strip_any_unit, words};

/// A name to check: a whole literal name, or what a template shows of it.
pub(super) struct NameCheck<'a> {
    pub(super) at: At<'a>,
    pub(super) kind: Option<Kind>,
    /// `unit` of a `[[metric]]`.
    pub(super) unit: Option<&'a str>,
    /// A namespace the name's own rule suggests (a mapping's first literal glob segment).
    pub(super) namespace_hint: Option<String>,
}

/// The most common first word of the names that have a namespace (the earliest on a tie).
pub(super) fn common_namespace(names: &[(&str, Option<&str>)]) -> Option<String> {
    let mut votes: HashMap<String, (usize, usize)> = HashMap::new();
    for (order, (name, unit)) in names.iter().enumerate() {
        let norm = sanitize_name(name).to_ascii_lowercase();
        let words = words(&norm, *unit);
        if words.len() >= 2 && words[0].starts_with(|c: char| c.is_ascii_lowercase()) {
            let vote = votes.entry(words[0].to_owned()).or_insert((0, order));
            vote.0 += 1;
        }
    }
    votes
        .into_iter()
        .max_by(|(_, (count_a, order_a)), (_, (count_b, order_b))| {
            count_a.cmp(count_b).then(order_b.cmp(order_a))
        })
        .map(|(word, _)| word)
}

/// `s` sanitised like a name, but without the `_` a leading digit gets (for template pieces).
fn sanitize_piece(s: &str) -> String {
    let clean = sanitize_name(s);
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        clean[1..].to_owned()
    } else {
        clean
    }
}

/// The characters of `s` a name may not hold, each once, quoted: `'.', '-'`.
pub(super) fn invalid_chars(s: &str) -> Option<String> {
    let mut seen = Vec::new();
    for c in s.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_' || seen.contains(&c)) {
            seen.push(c);
        }
    }
    if seen.is_empty() {
        return None;
    }
    let listed: Vec<String> = seen.iter().map(|c| format!("{c:?}")).collect();
    Some(listed.join(", "))
}

impl Linter {
    /// Checks a `unit` value; true when it is usable to check the name against.
    pub(super) fn unit(&mut self, at: &At<'_>) -> bool {
        let unit = at.value;
        if unit.is_empty() {
            self.push(
                at,
                Severity::Warning,
                "empty unit: remove the key or name a unit",
            );
            return false;
        }
        if invalid_chars(unit).is_some()
            || unit.starts_with(|c: char| c.is_ascii_digit())
            || unit.bytes().any(|b| b.is_ascii_uppercase())
        {
            self.push(
                at,
                Severity::Warning,
                "a unit is a lowercase snake_case word such as \"seconds\" or \"bytes\"",
            );
            return false;
        }
        if let Some(base) = base_unit_for(unit) {
            self.push(
                at,
                Severity::Warning,
                format!("not a base unit: Prometheus uses \"{base}\""),
            );
        }
        true
    }

    /// A name with no `$` reference.
    pub(super) fn literal_name(&mut self, check: NameCheck<'_>) {
        let text = check.at.value.to_owned();
        self.literal_name_text(check, &text);
    }

    /// A name whose text is `name` (the value reported is `check.at.value`).
    pub(super) fn literal_name_text(&mut self, check: NameCheck<'_>, name: &str) {
        let at = &check.at;
        if name.is_empty() {
            self.push(at, Severity::Error, "empty name");
            return;
        }
        let sanitised = sanitize_name(name);
        if let Some(chars) = invalid_chars(name) {
            self.push(
                at,
                Severity::Error,
                format!(
                    "invalid character {chars} (a name takes letters, digits and _): it would be \
                     served as \"{sanitised}\""
                ),
            );
        } else if name.starts_with(|c: char| c.is_ascii_digit()) {
            self.push(
                at,
                Severity::Error,
                format!(
                    "starts with a digit, which Prometheus refuses: it would be served as \
                     \"{sanitised}\""
                ),
            );
        }
        let norm = sanitised.to_ascii_lowercase();
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.push(
                at,
                Severity::Warning,
                format!("not snake_case: write it in lowercase, \"{norm}\""),
            );
        }
        if name.starts_with("__") {
            self.push(
                at,
                Severity::Warning,
                "names starting with \"__\" are reserved for Prometheus' internal use",
            );
        }
        self.underscores(at, name);
        if crate::telemetry::is_reserved_name(&norm) {
            self.push(
                at,
                Severity::Error,
                "reserved: tallyd serves its own metrics under this name (and the tallyd_ prefix)",
            );
        }
        let fixed = self.suffixes(&check, "", &norm);
        let fixed = self.unit_suffix(&check, &norm, &fixed).unwrap_or(fixed);
        self.namespace(&check, &norm, &fixed);
    }

    /// A name template with `$` references: only its literal text is known.
    pub(super) fn template_name(&mut self, check: NameCheck<'_>) {
        let at = &check.at;
        let template = at.value;
        let pieces = pieces(template);
        let literal: String = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Text(text) => Some(text.as_str()),
                Piece::Reference(_) => None,
            })
            .collect();
        if let Some(chars) = invalid_chars(&literal) {
            self.push(
                at,
                Severity::Error,
                format!(
                    "invalid character {chars} in the template's text (a name takes letters, \
                     digits and _): each becomes \"_\" when the name is served"
                ),
            );
        }
        if literal.bytes().any(|b| b.is_ascii_uppercase()) {
            self.push(
                at,
                Severity::Warning,
                "not snake_case: write the template's text in lowercase",
            );
        }
        let first = match pieces.first() {
            Some(Piece::Text(text)) => text.as_str(),
            _ => "",
        };
        let last = match pieces.last() {
            Some(Piece::Text(text)) => text.as_str(),
            _ => "",
        };
        if first.starts_with(|c: char| c.is_ascii_digit()) {
            self.push(
                at,
                Severity::Error,
                "starts with a digit, which Prometheus refuses: tallyd would prefix \"_\"",
            );
        }
        if first.starts_with("__") {
            self.push(
                at,
                Severity::Warning,
                "names starting with \"__\" are reserved for Prometheus' internal use",
            );
        } else if first.starts_with('_') {
            self.push(
                at,
                Severity::Warning,
                "starts with \"_\": start with the namespace (a letter)",
            );
        }
        let inner_double = pieces.iter().enumerate().any(|(i, p)| match p {
            // The leading `__` of the first piece is the reserved prefix, told above.
            Piece::Text(text) if i == 0 => text.trim_start_matches('_').contains("__"),
            Piece::Text(text) => text.contains("__"),
            Piece::Reference(_) => false,
        });
        if inner_double {
            self.push(
                at,
                Severity::Warning,
                "double underscore \"__\": use a single \"_\" between words",
            );
        }
        if last.ends_with('_') {
            self.push(
                at,
                Severity::Warning,
                "ends with \"_\": drop the trailing underscore",
            );
        }
        if sanitize_piece(first)
            .to_ascii_lowercase()
            .starts_with("tallyd_")
        {
            self.push(
                at,
                Severity::Error,
                "reserved: the tallyd_ prefix is for tallyd's own metrics",
            );
        }
        if !last.is_empty() {
            let tail = sanitize_piece(last).to_ascii_lowercase();
            // Suggestions show the template with its text cleaned up to the known tail.
            let head: String = pieces[..pieces.len() - 1]
                .iter()
                .map(|p| match p {
                    Piece::Text(text) => sanitize_piece(text).to_ascii_lowercase(),
                    Piece::Reference(reference) => (*reference).to_owned(),
                })
                .collect();
            self.suffixes(&check, &head, &tail);
        }
    }

    /// The `_` rules besides the reserved `__` prefix (told by the caller): a leading `_`,
    /// `__` inside, a trailing `_`.
    pub(super) fn underscores(&mut self, at: &At<'_>, name: &str) {
        if name.starts_with('_') && !name.starts_with("__") {
            self.push(
                at,
                Severity::Warning,
                "starts with \"_\": start with a letter",
            );
        }
        if name.trim_start_matches('_').contains("__") {
            self.push(
                at,
                Severity::Warning,
                "double underscore \"__\": use a single \"_\" between words",
            );
        }
        if name.ends_with('_') && !name.trim_matches('_').is_empty() {
            self.push(
                at,
                Severity::Warning,
                "ends with \"_\": drop the trailing underscore",
            );
        }
    }

    /// Suffix rules on `tail`, the known end of the name (sanitised, lowercase); `prefix` is
    /// what comes before it in suggestions (empty for a literal name). Gives `tail` with the
    /// suffixes fixed.
    fn suffixes(&mut self, check: &NameCheck<'_>, prefix: &str, tail: &str) -> String {
        let at = &check.at;
        let has_total = tail.ends_with("_total");
        let mut stem = tail.strip_suffix("_total").unwrap_or(tail).to_owned();
        // Whether the fixed name keeps `_total`.
        let mut total = has_total;
        match check.kind {
            Some(Kind::Counter) if !has_total => {
                self.push(
                    at,
                    Severity::Note,
                    format!(
                        "a counter named without \"_total\": fine, tallyd adds it and serves \
                         \"{prefix}{tail}_total\""
                    ),
                );
            }
            Some(kind) if kind != Kind::Counter && has_total => {
                total = false;
                self.push(
                    at,
                    Severity::Warning,
                    format!(
                        "\"_total\" marks counters, but this is a {}: call it \"{prefix}{stem}\"",
                        kind.name()
                    ),
                );
            }
            _ => {}
        }
        if let Some(suffix) = SERIES_SUFFIXES.iter().find(|s| tail.ends_with(*s)) {
            let mut message = format!(
                "ends in \"{suffix}\", a suffix of histogram and summary series (_bucket, _sum, \
                 _count, _created): the name collides with them"
            );
            if check.kind == Some(Kind::Counter) && *suffix == "_count" {
                stem.truncate(stem.len() - suffix.len());
                total = true;
                message.push_str(&format!("; call the counter \"{prefix}{stem}_total\""));
            }
            self.push(at, Severity::Warning, message);
        }
        let non_base = NON_BASE_UNITS.iter().find(|(unit, _)| {
            stem.strip_suffix(unit)
                .is_some_and(|rest| rest.ends_with('_'))
        });
        if let Some((unit, base)) = non_base {
            stem.truncate(stem.len() - unit.len());
            stem.push_str(base);
            let suggestion = format!("{prefix}{stem}{}", if total { "_total" } else { "" });
            let message = if *base == "seconds" && check.kind.is_some_and(Kind::observes) {
                format!(
                    "\"_{unit}\" is not a base unit, and tallyd already turns StatsD timer \
                     milliseconds into seconds: call it \"{suggestion}\""
                )
            } else if *base == "ratio" {
                format!(
                    "\"_{unit}\" is not a base unit: record a 0-1 ratio and call it \
                     \"{suggestion}\""
                )
            } else {
                format!(
                    "\"_{unit}\" is not a base unit: record {base} and call it \"{suggestion}\""
                )
            };
            self.push(at, Severity::Warning, message);
        }
        if total {
            stem.push_str("_total");
        }
        stem
    }

    /// A `[[metric]]` `unit` must end the name (before `_total` for a counter). Checks `norm`;
    /// when it fails, gives `fixed` (the name with its other fixes) ending in the unit.
    fn unit_suffix(&mut self, check: &NameCheck<'_>, norm: &str, fixed: &str) -> Option<String> {
        let unit = check.unit?;
        let counter = check.kind == Some(Kind::Counter);
        let family = if counter {
            norm.strip_suffix("_total").unwrap_or(norm)
        } else {
            norm
        };
        if family.ends_with(&format!("_{unit}")) {
            return None;
        }
        let (fixed_family, total) = match fixed.strip_suffix("_total") {
            Some(family) if counter => (family, "_total"),
            _ => (fixed, ""),
        };
        let suggestion = format!("{}_{unit}{total}", strip_any_unit(fixed_family));
        let before = if counter {
            " (before \"_total\" for a counter)"
        } else {
            ""
        };
        self.push(
            &check.at,
            Severity::Error,
            format!(
                "unit = \"{unit}\", but the name does not end in \"_{unit}\"{before}, which \
                 OpenMetrics requires: call it \"{suggestion}\""
            ),
        );
        Some(suggestion)
    }

    /// At least two words besides `_total` and the unit; `fixed` is `norm` with the unit fixed.
    fn namespace(&mut self, check: &NameCheck<'_>, norm: &str, fixed: &str) {
        let words = words(norm, check.unit);
        if words.len() >= 2 {
            return;
        }
        let word = words.first().copied().unwrap_or("");
        let namespace = [check.namespace_hint.as_deref(), self.namespace.as_deref()]
            .into_iter()
            .flatten()
            .find(|ns| *ns != word)
            .unwrap_or("myapp");
        let suggestion = if words.is_empty() {
            format!("{namespace}_<what>_{fixed}")
        } else {
            format!("{namespace}_{fixed}")
        };
        self.push(
            &check.at,
            Severity::Warning,
            format!("no namespace: add a namespace prefix such as \"{suggestion}\""),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::lint::tests::{findings, gauge, has, metric};
    use crate::lint::{Severity, lint};

    #[test]
    fn uppercase_is_a_warning_with_the_lowercase_name() {
        assert_eq!(
            gauge("predictor_Queue_Depth"),
            [
                "warning metric[0].name: not snake_case: write it in lowercase, \"predictor_queue_depth\""
            ]
        );
    }

    #[test]
    fn characters_tallyd_would_sanitise_are_errors() {
        assert_eq!(
            gauge("predictor.queue-depth"),
            [
                "error metric[0].name: invalid character '.', '-' (a name takes letters, digits and _): \
              it would be served as \"predictor_queue_depth\""
            ]
        );
        assert_eq!(
            gauge("5xx_responses"),
            [
                "error metric[0].name: starts with a digit, which Prometheus refuses: it would be \
              served as \"_5xx_responses\""
            ]
        );
        assert_eq!(gauge(""), ["error metric[0].name: empty name"]);
    }

    #[test]
    fn underscores_at_the_ends_and_doubled_warn() {
        let reserved = gauge("__predictor_queue");
        assert_eq!(
            reserved,
            [
                "warning metric[0].name: names starting with \"__\" are reserved for Prometheus' \
              internal use"
            ]
        );
        assert!(has(
            &gauge("_predictor_queue"),
            "starts with \"_\": start with a letter"
        ));
        assert!(has(&gauge("predictor__queue"), "double underscore \"__\""));
        assert!(has(
            &gauge("predictor_queue_"),
            "ends with \"_\": drop the trailing underscore"
        ));
    }

    #[test]
    fn tallyds_own_names_are_errors() {
        assert!(has(
            &gauge("tallyd_packets"),
            "error metric[0].name: reserved"
        ));
        assert!(has(
            &gauge("process_open_fds"),
            "error metric[0].name: reserved"
        ));
    }

    #[test]
    fn the_unit_must_end_the_name_before_total() {
        assert_eq!(
            metric("name = \"predictor_latency\"\ntype = \"histogram\"\nunit = \"seconds\""),
            [
                "error metric[0].name: unit = \"seconds\", but the name does not end in \"_seconds\", \
              which OpenMetrics requires: call it \"predictor_latency_seconds\""
            ]
        );
        assert_eq!(
            metric("name = \"predictor_cpu_total\"\ntype = \"counter\"\nunit = \"seconds\""),
            [
                "error metric[0].name: unit = \"seconds\", but the name does not end in \"_seconds\" \
              (before \"_total\" for a counter), which OpenMetrics requires: call it \
              \"predictor_cpu_seconds_total\""
            ]
        );
        assert_eq!(
            metric(
                "name = \"predictor_cpu_seconds_total\"\ntype = \"counter\"\nunit = \"seconds\""
            ),
            Vec::<String>::new()
        );
        // Another unit's suffix is replaced, not kept.
        assert!(has(
            &metric("name = \"predictor_size_seconds\"\ntype = \"gauge\"\nunit = \"bytes\""),
            "call it \"predictor_size_bytes\""
        ));
    }

    #[test]
    fn a_unit_that_is_not_a_base_unit_warns() {
        let found = metric(
            "name = \"predictor_latency_milliseconds\"\ntype = \"gauge\"\nunit = \"milliseconds\"",
        );
        assert!(has(
            &found,
            "warning metric[0].unit: not a base unit: Prometheus uses \"seconds\""
        ));
        assert!(has(
            &found,
            "warning metric[0].name: \"_milliseconds\" is not a base unit"
        ));
        assert!(has(
            &metric("name = \"x_y\"\ntype = \"gauge\"\nunit = \"Seconds\""),
            "warning metric[0].unit: a unit is a lowercase snake_case word"
        ));
        assert!(has(
            &metric("name = \"x_y\"\ntype = \"gauge\"\nunit = \"\""),
            "warning metric[0].unit: empty unit"
        ));
    }

    #[test]
    fn non_base_unit_suffixes_suggest_the_base_unit() {
        assert_eq!(
            gauge("predictor_latency_ms"),
            [
                "warning metric[0].name: \"_ms\" is not a base unit: record seconds and call it \
              \"predictor_latency_seconds\""
            ]
        );
        assert!(has(
            &gauge("predictor_heap_kilobytes"),
            "record bytes and call it \"predictor_heap_bytes\""
        ));
        assert!(has(
            &gauge("predictor_heap_megabytes"),
            "\"predictor_heap_bytes\""
        ));
        assert!(has(
            &gauge("predictor_load_microseconds"),
            "\"predictor_load_seconds\""
        ));
        assert!(has(
            &gauge("predictor_gpu_percent"),
            "record a 0-1 ratio and call it \"predictor_gpu_ratio\""
        ));
        // Before `_total` on a counter.
        assert!(has(
            &metric("name = \"predictor_busy_ms_total\"\ntype = \"counter\""),
            "call it \"predictor_busy_seconds_total\""
        ));
        // A histogram fed by timers already holds seconds.
        assert!(has(
            &metric("name = \"predictor_latency_ms\"\ntype = \"histogram\""),
            "tallyd already turns StatsD timer milliseconds into seconds"
        ));
        // Words that merely end in the same letters are not units.
        assert!(gauge("predictor_items").is_empty());
    }

    #[test]
    fn total_is_for_counters_only() {
        assert_eq!(
            gauge("predictor_queue_depth_total"),
            [
                "warning metric[0].name: \"_total\" marks counters, but this is a gauge: call it \
              \"predictor_queue_depth\""
            ]
        );
        assert!(has(
            &metric("name = \"predictor_latency_seconds_total\"\ntype = \"histogram\""),
            "but this is a histogram"
        ));
        assert!(has(
            &metric("name = \"predictor_latency_seconds_total\"\ntype = \"summary\""),
            "but this is a summary"
        ));
    }

    #[test]
    fn a_counter_without_total_is_a_note() {
        let found =
            lint("[[metric]]\nname = \"predictor_requests\"\ntype = \"counter\"\nhelp = \"h\"\n");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].severity, Severity::Note);
        assert!(!found[0].severity.fails_strict());
        assert_eq!(
            found[0].message,
            "a counter named without \"_total\": fine, tallyd adds it and serves \
             \"predictor_requests_total\""
        );
    }

    #[test]
    fn series_suffixes_are_reserved() {
        for suffix in ["_count", "_sum", "_bucket", "_created"] {
            let found = gauge(&format!("predictor_jobs{suffix}"));
            assert!(
                has(
                    &found,
                    &format!("ends in \"{suffix}\", a suffix of histogram and summary series")
                ),
                "{found:?}"
            );
        }
        assert!(has(
            &metric("name = \"predictor_jobs_count\"\ntype = \"counter\""),
            "call the counter \"predictor_jobs_total\""
        ));
        // A counter counting something called a count is fine.
        assert!(metric("name = \"predictor_retry_count_total\"\ntype = \"counter\"").is_empty());
    }

    #[test]
    fn a_single_word_needs_a_namespace() {
        assert_eq!(
            gauge("latency"),
            [
                "warning metric[0].name: no namespace: add a namespace prefix such as \"myapp_latency\""
            ]
        );
        // `_total` and the unit do not count as words.
        assert!(has(
            &metric("name = \"latency_seconds\"\ntype = \"histogram\"\nunit = \"seconds\""),
            "no namespace"
        ));
        assert!(has(
            &metric("name = \"requests_total\"\ntype = \"counter\""),
            "no namespace"
        ));
        assert!(gauge("predictor_latency").is_empty());
    }

    #[test]
    fn the_namespace_suggested_is_the_one_the_file_uses() {
        let text = "[[metric]]\nname = \"predictor_requests_total\"\ntype = \"counter\"\nhelp = \"h\"\n\
                    [[metric]]\nname = \"latency\"\ntype = \"histogram\"\nunit = \"seconds\"\nhelp = \"h\"\n";
        assert!(has(
            &findings(text),
            "add a namespace prefix such as \"predictor_latency_seconds\""
        ));
        // A mapping's glob names its namespace.
        let text = "[[mapping]]\nmatch = \"predictor.*.latency\"\nname = \"latency_seconds\"\n";
        assert_eq!(
            findings(text),
            [
                "warning mapping[0].name: no namespace: add a namespace prefix such as \
              \"predictor_latency_seconds\""
            ]
        );
    }

    #[test]
    fn the_namespace_suggestion_carries_the_other_fixes() {
        let text = "[[mapping]]\nmatch = \"predictor.*.latency\"\nname = \"latency_ms\"\n\
                    match_metric_type = \"observer\"\n";
        assert!(has(
            &findings(text),
            "add a namespace prefix such as \"predictor_latency_seconds\""
        ));
    }

    #[test]
    fn templates_are_checked_on_their_literal_text() {
        let rule = |name: &str, extra: &str| {
            findings(&format!(
                "[[mapping]]\nmatch = \"a.*.*\"\nname = '{name}'\n{extra}\n"
            ))
        };
        assert!(rule("$1", "").is_empty());
        assert!(rule("${1}", "match_metric_type = \"counter\"").is_empty());
        assert!(rule("predictor_${1}_seconds", "").is_empty());
        assert_eq!(
            rule("predictor.${1}", ""),
            [
                "error mapping[0].name: invalid character '.' in the template's text (a name takes \
              letters, digits and _): each becomes \"_\" when the name is served"
            ]
        );
        assert_eq!(
            rule("${1}_latency_ms", "match_metric_type = \"observer\""),
            [
                "warning mapping[0].name: \"_ms\" is not a base unit, and tallyd already turns StatsD \
              timer milliseconds into seconds: call it \"${1}_latency_seconds\""
            ]
        );
        assert!(has(
            &rule("Predictor_$1", ""),
            "write the template's text in lowercase"
        ));
        assert!(has(
            &rule("9_$1", ""),
            "error mapping[0].name: starts with a digit"
        ));
        assert!(has(
            &rule("__$1", ""),
            "reserved for Prometheus' internal use"
        ));
        assert!(has(&rule("_$1", ""), "starts with \"_\""));
        assert!(has(&rule("${1}__${2}", ""), "double underscore"));
        assert!(has(&rule("predictor_${1}_", ""), "ends with \"_\""));
        assert!(has(
            &rule("tallyd_$1", ""),
            "error mapping[0].name: reserved"
        ));
        assert!(has(
            &rule("${1}_requests", "match_metric_type = \"counter\""),
            "serves \"${1}_requests_total\""
        ));
        assert!(has(
            &rule("${1}_depth_total", "match_metric_type = \"gauge\""),
            "call it \"${1}_depth\""
        ));
        assert!(has(&rule("${1}_bucket", ""), "ends in \"_bucket\""));
        // A name ending in a capture has no known suffix; the namespace is not checked.
        assert!(rule("x${1}", "match_metric_type = \"gauge\"").is_empty());
    }
}
