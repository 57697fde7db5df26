//! Checks on a label name: a `[[metric]]` `labels` entry, or a key of a mapping's `labels`.
//!
//! On label names: the same characters as names, the reserved names `le`, `quantile` and `__*`
//! (errors: tallyd renames them `exported_*`), names listed twice (checked in `document`), and
//! names that suggest unbounded values (`user_id`, `request_id`, `email`, `ip`, `url`, `path`,
//! `timestamp`...). A mapping label whose value is static has one value, so only labels whose
//! value takes a `$` capture are checked for cardinality.

use crate::naming::{label_name_into, sanitize_name};

use super::Severity;
use super::document::{At, Linter};
use super::names::invalid_chars;

impl Linter {
    /// A label name; `dynamic` when its values come from traffic (cardinality matters).
    pub(super) fn label(&mut self, at: &At<'_>, dynamic: bool) {
        let name = at.value;
        if name.is_empty() {
            self.push(at, Severity::Error, "empty label name");
            return;
        }
        let mut renamed = String::new();
        label_name_into(name, &mut renamed);
        let sanitised = sanitize_name(name);
        let reserved = renamed != sanitised;
        if reserved {
            let why = match sanitised.as_str() {
                "le" => "\"le\" holds a histogram's bucket bounds",
                "quantile" => "\"quantile\" holds a summary's quantiles",
                _ => "names starting with \"__\" are Prometheus' own",
            };
            self.push(
                at,
                Severity::Error,
                format!("reserved label name ({why}): tallyd renames it \"{renamed}\""),
            );
        }
        if let Some(chars) = invalid_chars(name) {
            self.push(
                at,
                Severity::Error,
                format!(
                    "invalid character {chars} (a label name takes letters, digits and _): \
                     tallyd renames it \"{renamed}\""
                ),
            );
        } else if name.starts_with(|c: char| c.is_ascii_digit()) {
            self.push(
                at,
                Severity::Error,
                format!(
                    "starts with a digit, which Prometheus refuses: tallyd renames it \
                     \"{renamed}\""
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
        if !name.starts_with("__") {
            self.underscores(at, name);
        }
        if dynamic && let Some(why) = unbounded(&norm) {
            self.push(
                at,
                Severity::Warning,
                format!("unbounded cardinality: {why}"),
            );
        }
    }
}

/// Why a label called `name` (sanitised, lowercase) likely takes unbounded values.
fn unbounded(name: &str) -> Option<&'static str> {
    const IDS: &[&str] = &["id", "uuid", "guid"];
    const PATHS: &[&str] = &["url", "uri", "path", "full_path", "query", "query_string"];
    const CLIENTS: &[&str] = &["ip", "ip_address", "email", "username", "user"];
    const TIMES: &[&str] = &["timestamp", "ts", "time", "date", "datetime"];
    // The last word of a compound name: `user_id` ends in `id`.
    let last = name.rsplit_once('_').map(|(_, last)| last);
    let is = |names: &[&str], last_words: &[&str]| {
        names.contains(&name) || last.is_some_and(|last| last_words.contains(&last))
    };
    if is(IDS, IDS) {
        Some(
            "an id takes one value per user, request or session, and every value is a new \
             series; keep ids in logs or traces",
        )
    } else if is(PATHS, &["url", "uri", "path"]) {
        Some(
            "raw paths and URLs carry ids and query strings, and every value is a new series; \
             label the route template (\"/users/{id}\") instead",
        )
    } else if is(CLIENTS, &["ip", "email", "address"]) {
        Some("it takes one value per client, and every value is a new series; keep it in logs")
    } else if is(TIMES, &["timestamp"]) {
        Some(
            "a time is a new value, so a new series, at every sample; a time belongs in a \
             sample's value (a gauge of unix seconds)",
        )
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::lint::tests::{has, metric};

    #[test]
    fn labels_that_suggest_unbounded_values_warn() {
        for label in [
            "id",
            "user_id",
            "request_id",
            "trace_id",
            "session_id",
            "uuid",
            "email",
            "ip",
            "url",
            "path",
            "request_path",
            "timestamp",
            "client_ip",
        ] {
            let found = gauge_with_labels(&[label]);
            assert!(
                has(&found, "warning metric[0].labels[0]: unbounded cardinality"),
                "{label}: {found:?}"
            );
        }
        for label in [
            "model", "status", "method", "route", "region", "idle", "valid",
        ] {
            assert!(gauge_with_labels(&[label]).is_empty(), "{label}");
        }
    }

    fn gauge_with_labels(labels: &[&str]) -> Vec<String> {
        let list: Vec<String> = labels.iter().map(|l| format!("{l:?}")).collect();
        metric(&format!(
            "name = \"predictor_queue_depth\"\ntype = \"gauge\"\nlabels = [{}]",
            list.join(", ")
        ))
    }

    #[test]
    fn reserved_and_invalid_label_names_are_errors() {
        assert_eq!(
            gauge_with_labels(&["le"]),
            [
                "error metric[0].labels[0]: reserved label name (\"le\" holds a histogram's bucket \
              bounds): tallyd renames it \"exported_le\""
            ]
        );
        assert!(has(
            &gauge_with_labels(&["quantile"]),
            "tallyd renames it \"exported_quantile\""
        ));
        assert!(has(
            &gauge_with_labels(&["__tenant"]),
            "tallyd renames it \"exported___tenant\""
        ));
        assert_eq!(
            gauge_with_labels(&["model-version"]),
            [
                "error metric[0].labels[0]: invalid character '-' (a label name takes letters, digits \
              and _): tallyd renames it \"model_version\""
            ]
        );
        assert!(has(
            &gauge_with_labels(&["1st"]),
            "error metric[0].labels[0]: starts with a digit"
        ));
        assert_eq!(
            gauge_with_labels(&["model", "model"]),
            ["error metric[0].labels[1]: listed twice: a series cannot carry a label twice"]
        );
    }

    #[test]
    fn label_names_not_snake_case_warn() {
        assert_eq!(
            gauge_with_labels(&["modelName"]),
            ["warning metric[0].labels[0]: not snake_case: write it in lowercase, \"modelname\""]
        );
        assert!(has(
            &gauge_with_labels(&["model__name"]),
            "double underscore"
        ));
        assert!(has(&gauge_with_labels(&["model_"]), "ends with \"_\""));
    }
}
