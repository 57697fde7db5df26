//! Walking the config's TOML document: the `[[metric]]` and `[[mapping]]` tables, the strings
//! at their keys, and the lines those keys are on; what each key is checked as (the checks
//! themselves are in `names` and `labels`).
//!
//! The type of a mapping's series comes from `match_metric_type` (and `observer_type`);
//! without it the type-dependent checks are skipped. Rules with `action = "drop"` name nothing
//! and are skipped.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::naming::{label_name_into, sanitize_name};
use crate::registry::Kind;

use super::names::NameCheck;
use super::template::{has_reference, pieces};
use super::{LintWarning, Severity};

/// The tables of the array of tables `key` (`[[key]]`, or an inline array of tables).
pub(super) fn tables<'a, 'i>(
    document: &'a DeTable<'i>,
    key: &str,
) -> Vec<(Range<usize>, &'a DeTable<'i>)> {
    match document.get(key).map(Spanned::get_ref) {
        Some(DeValue::Array(array)) => array
            .iter()
            .filter_map(|entry| Some((entry.span(), entry.get_ref().as_table()?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The string at `key` and the span of the key.
pub(super) fn string<'a>(table: &'a DeTable<'_>, key: &str) -> Option<(&'a str, Range<usize>)> {
    let (k, v) = table.get_key_value(key)?;
    Some((v.get_ref().as_str()?, k.span()))
}

/// Byte offsets to 1-based lines.
pub(super) struct Lines {
    pub(super) starts: Vec<usize>,
}

impl Lines {
    pub(super) fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1));
        Lines { starts }
    }

    pub(super) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

/// What is being reported on.
pub(super) struct At<'a> {
    pub(super) line: usize,
    pub(super) key: String,
    pub(super) value: &'a str,
}

pub(super) struct Linter {
    pub(super) lines: Lines,
    /// The namespace most names of the file use, for suggestions.
    pub(super) namespace: Option<String>,
    pub(super) out: Vec<LintWarning>,
}

impl Linter {
    pub(super) fn at<'a>(&self, span: &Range<usize>, key: String, value: &'a str) -> At<'a> {
        At {
            line: self.lines.line(span.start),
            key,
            value,
        }
    }

    pub(super) fn push(&mut self, at: &At<'_>, severity: Severity, message: impl Into<String>) {
        self.out.push(LintWarning {
            line: at.line,
            key: at.key.clone(),
            value: at.value.to_owned(),
            severity,
            message: message.into(),
        });
    }

    pub(super) fn metric(&mut self, index: usize, span: &Range<usize>, table: &DeTable<'_>) {
        let kind = string(table, "type").and_then(|(t, _)| match t {
            "counter" => Some(Kind::Counter),
            "gauge" => Some(Kind::Gauge),
            "histogram" => Some(Kind::Histogram),
            "summary" => Some(Kind::Summary),
            _ => None,
        });
        let name = string(table, "name");
        let mut unit = None;
        if let Some((text, key_span)) = string(table, "unit") {
            let at = self.at(&key_span, format!("metric[{index}].unit"), text);
            if self.unit(&at) {
                unit = Some(text);
            }
        }
        if let Some((name, key_span)) = &name {
            let at = self.at(key_span, format!("metric[{index}].name"), name);
            self.literal_name(NameCheck {
                at,
                kind,
                unit,
                namespace_hint: None,
            });
        }
        let shown = name.map_or("", |(name, _)| name);
        match table.get_key_value("help") {
            None => {
                let at = self.at(span, format!("metric[{index}]"), shown);
                self.push(
                    &at,
                    Severity::Warning,
                    "no help text: add help = \"...\" (it becomes the # HELP line)",
                );
            }
            Some((key, value)) => {
                if let Some(help) = value.get_ref().as_str()
                    && help.trim().is_empty()
                {
                    let at = self.at(&key.span(), format!("metric[{index}].help"), help);
                    self.push(
                        &at,
                        Severity::Warning,
                        "empty help text: say what is measured (it becomes the # HELP line)",
                    );
                }
            }
        }
        if let Some(DeValue::Array(labels)) = table.get("labels").map(Spanned::get_ref) {
            let mut seen: Vec<String> = Vec::new();
            for (i, label) in labels.iter().enumerate() {
                let Some(text) = label.get_ref().as_str() else {
                    continue;
                };
                let at = self.at(&label.span(), format!("metric[{index}].labels[{i}]"), text);
                let mut renamed = String::new();
                label_name_into(text, &mut renamed);
                if seen.contains(&renamed) {
                    self.push(
                        &at,
                        Severity::Error,
                        "listed twice: a series cannot carry a label twice",
                    );
                    continue;
                }
                seen.push(renamed);
                self.label(&at, true);
            }
        }
    }

    pub(super) fn mapping(&mut self, index: usize, table: &DeTable<'_>) {
        if string(table, "action").is_some_and(|(a, _)| a == "drop") {
            return;
        }
        let kind = match string(table, "match_metric_type").map(|(t, _)| t) {
            Some("counter") => Some(Kind::Counter),
            Some("gauge" | "set") => Some(Kind::Gauge),
            Some("observer" | "timer") => match string(table, "observer_type").map(|(t, _)| t) {
                Some("summary") => Some(Kind::Summary),
                _ => Some(Kind::Histogram),
            },
            _ => None,
        };
        if let Some((name, key_span)) = string(table, "name") {
            let at = self.at(&key_span, format!("mapping[{index}].name"), name);
            let check = NameCheck {
                at,
                kind,
                unit: None,
                namespace_hint: glob_namespace(table),
            };
            if has_reference(&pieces(name)) {
                self.template_name(check);
            } else {
                let literal = name.replace("$$", "$");
                if literal == name {
                    self.literal_name(check);
                } else {
                    // `$$` only: lint the text the rule produces, report the template.
                    self.literal_name_text(check, &literal);
                }
            }
        }
        if let Some(DeValue::Table(labels)) = table.get("labels").map(Spanned::get_ref) {
            for (key, value) in labels.iter() {
                let name: &str = key.get_ref();
                let at = self.at(&key.span(), format!("mapping[{index}].labels.{name}"), name);
                let dynamic = value
                    .get_ref()
                    .as_str()
                    .is_some_and(|v| has_reference(&pieces(v)));
                self.label(&at, dynamic);
            }
        }
    }
}

/// The first segment of a glob rule's `match`, when it is a plain word (a likely namespace).
fn glob_namespace(table: &DeTable<'_>) -> Option<String> {
    if string(table, "match_type").is_some_and(|(t, _)| t != "glob") {
        return None;
    }
    let (pattern, _) = string(table, "match")?;
    let first = pattern.split('.').next()?;
    if first.contains('*') || !first.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    Some(sanitize_name(first).to_ascii_lowercase())
        .filter(|ns| !ns.contains("__") && !ns.ends_with('_'))
}

#[cfg(test)]
mod tests {
    use crate::lint::lint;
    use crate::lint::tests::{findings, has, metric};

    #[test]
    fn missing_or_empty_help_warns() {
        let found = lint("\n[[metric]]\nname = \"predictor_queue_depth\"\ntype = \"gauge\"\n");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 2, "the [[metric]] header");
        assert_eq!(
            found[0].to_string(),
            "line 2: metric[0] \"predictor_queue_depth\": no help text: add help = \"...\" (it \
             becomes the # HELP line)"
        );
        assert!(has(
            &metric("name = \"predictor_queue_depth\"\ntype = \"gauge\"\nhelp = \" \""),
            "warning metric[0].help: empty help text"
        ));
    }

    #[test]
    fn mapping_labels_with_static_values_have_one_value() {
        let text = "[[mapping]]\nmatch = \"predictor.*.latency\"\nname = \"predictor_latency_seconds\"\n\
                    labels = { model = \"$1\", request_id = \"fixed\", user_id = \"$$1\" }\n";
        assert_eq!(findings(text), Vec::<String>::new());
        let text = "[[mapping]]\nmatch = \"predictor.*.latency\"\nname = \"predictor_latency_seconds\"\n\
                    labels = { request_id = \"${1}\", le = \"x\" }\n";
        let found = findings(text);
        assert!(has(
            &found,
            "error mapping[0].labels.le: reserved label name"
        ));
        assert!(has(
            &found,
            "warning mapping[0].labels.request_id: unbounded cardinality"
        ));
    }

    #[test]
    fn mapping_names_without_captures_are_linted_fully() {
        let text = "[[mapping]]\nmatch = \"worker.*.jobs\"\nname = \"Worker_Jobs_count\"\n\
                    match_metric_type = \"counter\"\n";
        assert_eq!(
            findings(text),
            [
                "warning mapping[0].name: not snake_case: write it in lowercase, \"worker_jobs_count\"",
                "note mapping[0].name: a counter named without \"_total\": fine, tallyd adds it and \
                 serves \"worker_jobs_count_total\"",
                "warning mapping[0].name: ends in \"_count\", a suffix of histogram and summary \
                 series (_bucket, _sum, _count, _created): the name collides with them; call the \
                 counter \"worker_jobs_total\"",
            ]
        );
    }

    #[test]
    fn mapping_types_come_from_match_metric_type_and_observer_type() {
        let rule = |extra: &str| {
            findings(&format!(
                "[[mapping]]\nmatch = \"a.*\"\nname = \"predictor_jobs_total\"\n{extra}\n"
            ))
        };
        assert!(rule("").is_empty(), "no type: no type checks");
        assert!(rule("match_metric_type = \"counter\"").is_empty());
        assert!(has(
            &rule("match_metric_type = \"gauge\""),
            "but this is a gauge"
        ));
        assert!(has(
            &rule("match_metric_type = \"set\""),
            "but this is a gauge"
        ));
        assert!(has(
            &rule("match_metric_type = \"timer\""),
            "but this is a histogram"
        ));
        assert!(has(
            &rule("match_metric_type = \"observer\"\nobserver_type = \"summary\""),
            "but this is a summary"
        ));
    }

    #[test]
    fn drop_rules_name_nothing() {
        let text = "[[mapping]]\nmatch = \"tmp.*\"\naction = \"drop\"\nname = \"Bad.Name\"\n\
                    labels = { le = \"$1\" }\n";
        assert!(lint(text).is_empty());
    }
}
