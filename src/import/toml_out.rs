//! Writing the converted rules as tallyd TOML: the header comment, each rule's notes, its
//! `[[mapping]]` table (commented out, or split per type, for globs statsd_exporter never
//! applied), and numbers and strings that TOML reads back exactly.

use std::fmt::Write as _;

use crate::rules::{Action, MappingRule, MatchType, MetricClass};

use super::convert::{Converted, Defaults};
use super::globs::ROOTS;

pub(super) fn write_header(
    out: &mut String,
    defaults: &Defaults,
    globs: usize,
    regexes: usize,
    catch_all: bool,
) {
    let mut text = String::from(
        "tallyd configuration converted from a statsd_exporter mapping file by `tallyd \
         import-mapping`. Only [[mapping]] rules are set; every other key keeps its default \
         (see config/tallyd.toml).",
    );
    push_comment(out, &text);
    out.push_str("#\n");
    text = format!(
        "Rule order: tallyd tries the rules in this file's order and the first match wins. \
         statsd_exporter tries every glob rule before any regex rule, wherever they stand in its \
         file, so the glob rules ({globs}) come first here and the regex rules ({regexes}) after \
         them, each group in the original order{}{} `mappings[N]` is a rule's position in the \
         original file, counting from 0.",
        if defaults.glob_disable_ordering {
            " (except that, for glob_disable_ordering, the glob rules are sorted so that a \
             literal segment comes before `*`, from left to right)"
        } else {
            ""
        },
        if catch_all {
            ", then one rule for names no other rule matches."
        } else {
            "."
        },
    );
    push_comment(out, &text);
}

/// Writes `text` as `#` comment lines of at most 100 columns.
pub(super) fn push_comment(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > 100 {
            out.push_str(&line);
            out.push('\n');
            line.truncate(1);
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

impl Converted {
    pub(super) fn write(&self, out: &mut String, rules: &mut Vec<MappingRule>) {
        out.push('\n');
        let _ = writeln!(out, "# mappings[{}]", self.index);
        for note in &self.notes {
            push_comment(out, note);
        }
        if self.unreachable.is_empty() {
            write_rule(out, &self.rule, false);
            rules.push(self.rule.clone());
            return;
        }
        let live: Vec<MetricClass> = ROOTS
            .into_iter()
            .filter(|c| self.rule.applies_to(*c) && !self.unreachable.contains(c))
            .collect();
        if live.is_empty() {
            out.push_str("# statsd_exporter never applied this rule (see the import warnings):\n");
            write_rule(out, &self.rule, true);
            return;
        }
        out.push_str(
            "# statsd_exporter applied this rule to these types only (see the import warnings):\n",
        );
        for (n, class) in live.into_iter().enumerate() {
            if n > 0 {
                out.push('\n');
            }
            let mut rule = self.rule.clone();
            rule.match_metric_type = Some(class);
            if class != MetricClass::Observer {
                rule.observer_type = None;
                rule.buckets = None;
                rule.native_histogram_bucket_factor = None;
                rule.native_histogram_max_buckets = None;
                rule.quantiles = None;
            }
            write_rule(out, &rule, false);
            rules.push(rule);
        }
    }
}

pub(super) fn write_rule(out: &mut String, rule: &MappingRule, commented: bool) {
    let mut lines = vec!["[[mapping]]".to_string()];
    lines.push(format!("match = {}", toml_string(&rule.pattern)));
    if rule.match_type == MatchType::Regex {
        lines.push("match_type = \"regex\"".into());
    }
    if let Some(class) = rule.match_metric_type {
        lines.push(format!("match_metric_type = \"{}\"", class.as_str()));
    }
    if rule.action == Action::Drop {
        lines.push("action = \"drop\"".into());
    }
    if let Some(name) = &rule.name {
        lines.push(format!("name = {}", toml_string(name)));
    }
    if !rule.labels.is_empty() {
        let pairs: Vec<String> = rule
            .labels
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_key(k), toml_string(v)))
            .collect();
        lines.push(format!("labels = {{ {} }}", pairs.join(", ")));
    }
    if rule.honor_labels {
        lines.push("honor_labels = true".into());
    }
    if let Some(observer) = rule.observer_type {
        lines.push(format!("observer_type = \"{}\"", observer.as_str()));
    }
    if let Some(buckets) = &rule.buckets {
        lines.push(format!("buckets = {}", toml_floats(buckets)));
    }
    if let Some(factor) = rule.native_histogram_bucket_factor {
        lines.push(format!(
            "native_histogram_bucket_factor = {}",
            fmt_f64(factor)
        ));
    }
    if let Some(max) = rule.native_histogram_max_buckets {
        lines.push(format!("native_histogram_max_buckets = {max}"));
    }
    if let Some(quantiles) = &rule.quantiles {
        lines.push(format!("quantiles = {}", toml_floats(quantiles)));
    }
    if let Some(ttl) = rule.ttl_seconds {
        lines.push(format!("ttl_seconds = {}", fmt_f64(ttl)));
    }
    if let Some(scale) = rule.scale {
        lines.push(format!("scale = {}", fmt_f64(scale)));
    }
    if let Some(help) = &rule.help {
        lines.push(format!("help = {}", toml_string(help)));
    }
    for line in lines {
        if commented {
            out.push_str("# ");
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// A number for a comment: no `.0` on whole numbers.
pub(super) fn fmt_number(x: f64) -> String {
    format!("{x}")
}

/// A float as TOML reads it back exactly (Rust's shortest round-trip form, with a `.0` on
/// whole numbers so it stays a float).
fn fmt_f64(x: f64) -> String {
    format!("{x:?}")
}

fn toml_floats(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| fmt_f64(*v)).collect();
    format!("[{}]", items.join(", "))
}

/// A TOML string: a literal string ('…', no escapes: kind to regexes) when the text holds a
/// backslash and can be written that way, a basic string otherwise.
fn toml_string(s: &str) -> String {
    let literal_ok = !s.contains('\'') && !s.chars().any(|c| c.is_control());
    if s.contains('\\') && literal_ok {
        return format!("'{s}'");
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        toml_string(key)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[test]
    fn toml_strings_round_trip() {
        #[derive(Deserialize)]
        struct S {
            s: String,
        }
        for s in ["plain", r"a\.b", "it's \\ \"q\"", "tab\there", "$$1"] {
            let text = format!("s = {}", toml_string(s));
            assert_eq!(toml::from_str::<S>(&text).unwrap().s, s, "{text}");
        }
    }
}
