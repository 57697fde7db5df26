//! The naming lint: Prometheus naming conventions checked on the `[[metric]]` definitions and
//! the `[[mapping]]` names and labels of a config file, each finding with the line of the key
//! it is about (`--check-config` prints them; a `strict` switch may refuse on them).
//!
//! [`lint`] reads the TOML text itself, with the `toml` crate's spanned document
//! ([`toml::de::DeTable`]), so it depends on no config struct, points at lines, and still runs
//! on a file the config refuses for another reason. A file that is not TOML gives no findings
//! (the config loader reports the syntax error).
//!
//! The files, each listing the checks it makes:
//!
//! - `document`: walking the document's `[[metric]]` and `[[mapping]]` tables, with the lines
//!   of their keys; what each key is checked as;
//! - `names`: metric names, literal or a mapping's template: characters, underscores, reserved
//!   names, suffixes, units, a namespace prefix;
//! - `labels`: label names, and those that suggest unbounded values;
//! - `units`: the unit and suffix tables;
//! - `template`: a mapping `name` template split into text and `$` references.

mod document;
mod labels;
mod names;
mod template;
mod units;

use std::fmt;

use toml::de::DeTable;

use document::{Lines, Linter, string, tables};
use names::common_namespace;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Fine as written, said for information (a counter named without `_total`); never fails a
    /// load, strict or not.
    Note,
    /// A convention not followed (style); `strict` makes it an error.
    Warning,
    /// What Prometheus would reject or tallyd would rename: what is written is not what is
    /// served (invalid characters, reserved label names, a unit that does not end the name).
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Note => "note",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }

    /// True for what a `strict` load refuses: warnings and errors, not notes.
    pub fn fails_strict(self) -> bool {
        self != Severity::Note
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding. Displays as `line 12: metric[2].name "Requests": <message>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintWarning {
    /// 1-based line of the offending key (of the `[[metric]]` header for a missing key).
    pub line: usize,
    /// Where, e.g. `metric[2].name`, `mapping[0].labels.user_id`, `metric[1].labels[0]`
    /// (indexes from 0 in file order).
    pub key: String,
    /// The offending text: the name, label name, unit or template as written.
    pub value: String,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for LintWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: {} {:?}: {}",
            self.line, self.key, self.value, self.message
        )
    }
}

/// Lints the `[[metric]]` and `[[mapping]]` entries of config text; findings in line order.
pub fn lint(text: &str) -> Vec<LintWarning> {
    let Ok(document) = DeTable::parse(text) else {
        return Vec::new();
    };
    let document = document.get_ref();
    let metrics = tables(document, "metric");
    let mappings = tables(document, "mapping");

    let mut names = Vec::new();
    for (_, table) in &metrics {
        if let Some((name, _)) = string(table, "name") {
            names.push((name, string(table, "unit").map(|(unit, _)| unit)));
        }
    }
    for (_, table) in &mappings {
        if let Some((name, _)) = string(table, "name")
            && !name.contains('$')
        {
            names.push((name, None));
        }
    }
    let mut linter = Linter {
        lines: Lines::new(text),
        namespace: common_namespace(&names),
        out: Vec::new(),
    };
    for (index, (span, table)) in metrics.iter().enumerate() {
        linter.metric(index, span, table);
    }
    for (index, (_, table)) in mappings.iter().enumerate() {
        linter.mapping(index, table);
    }
    let mut out = linter.out;
    out.sort_by_key(|w| w.line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Findings as `severity key: message`.
    pub(super) fn findings(text: &str) -> Vec<String> {
        lint(text)
            .iter()
            .map(|w| format!("{} {}: {}", w.severity, w.key, w.message))
            .collect()
    }

    /// The findings on a `[[metric]]` made of `body` (help given unless `body` sets it).
    pub(super) fn metric(body: &str) -> Vec<String> {
        let help = if body.contains("help") {
            ""
        } else {
            "help = \"h\"\n"
        };
        findings(&format!("[[metric]]\n{help}{body}\n"))
    }

    pub(super) fn gauge(name: &str) -> Vec<String> {
        metric(&format!("name = \"{name}\"\ntype = \"gauge\""))
    }

    pub(super) fn has(findings: &[String], needle: &str) -> bool {
        findings.iter().any(|f| f.contains(needle))
    }

    #[test]
    fn a_well_named_metric_has_no_findings() {
        assert_eq!(
            metric(
                "name = \"predictor_latency_seconds\"\ntype = \"histogram\"\nunit = \"seconds\"\n\
                 labels = [\"model\", \"status\"]"
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            metric("name = \"predictor_requests_total\"\ntype = \"counter\""),
            Vec::<String>::new()
        );
    }

    #[test]
    fn each_finding_has_the_line_of_its_key() {
        let text = "# predictor\n\
                    [udp]\n\
                    listen = [\"127.0.0.1:8125\"]\n\
                    \n\
                    [[metric]]\n\
                    help = \"Queue depth.\"\n\
                    type = \"gauge\"\n\
                    name = \"Depth\"\n\
                    labels = [\n\
                      \"model\",\n\
                      \"user_id\",\n\
                    ]\n\
                    \n\
                    [[mapping]]\n\
                    match = \"predictor.*.x\"\n\
                    name = \"predictor_x\"\n\
                    [mapping.labels]\n\
                    model = \"$1\"\n\
                    \"trace-id\" = \"$1\"\n";
        let lines: Vec<(usize, String)> = lint(text).into_iter().map(|w| (w.line, w.key)).collect();
        assert_eq!(
            lines,
            [
                (8, "metric[0].name".to_owned()),
                (8, "metric[0].name".to_owned()),
                (11, "metric[0].labels[1]".to_owned()),
                (19, "mapping[0].labels.trace-id".to_owned()),
                (19, "mapping[0].labels.trace-id".to_owned()),
            ]
        );
    }

    #[test]
    fn display_shows_line_key_value_and_message() {
        let warning = LintWarning {
            line: 12,
            key: "metric[2].name".into(),
            value: "Requests".into(),
            severity: Severity::Warning,
            message: "not snake_case".into(),
        };
        assert_eq!(
            warning.to_string(),
            "line 12: metric[2].name \"Requests\": not snake_case"
        );
        assert_eq!(Severity::Error.to_string(), "error");
        assert!(Severity::Note < Severity::Warning && Severity::Warning < Severity::Error);
        assert!(Severity::Warning.fails_strict() && Severity::Error.fails_strict());
    }

    #[test]
    fn text_that_is_not_toml_has_no_findings() {
        assert!(lint("[[metric]\nname = ").is_empty());
        assert!(lint("").is_empty());
        // Entries of the wrong shape are skipped, not panicked on.
        assert!(lint("metric = 3\nmapping = [1, 2]\n").is_empty());
        assert!(lint("[[metric]]\nname = 3\nhelp = \"h\"\nlabels = \"model\"\n").is_empty());
    }
}
