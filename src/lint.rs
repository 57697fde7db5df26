//! The naming lint: Prometheus naming conventions checked on the `[[metric]]` definitions and
//! the `[[mapping]]` names and labels of a config file, each finding with the line of the key
//! it is about (`--check-config` prints them; a `strict` switch may refuse on them).
//!
//! [`lint`] reads the TOML text itself, with the `toml` crate's spanned document
//! ([`toml::de::DeTable`]), so it depends on no config struct, points at lines, and still runs
//! on a file the config refuses for another reason. A file that is not TOML gives no findings
//! (the config loader reports the syntax error).
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
//! - `help` present on a `[[metric]]`.
//!
//! On label names (a `[[metric]]` `labels` list, the keys of a mapping's `labels`): the same
//! characters, the reserved names `le`, `quantile` and `__*` (errors: tallyd renames them
//! `exported_*`), names listed twice, and names that suggest unbounded values (`user_id`,
//! `request_id`, `email`, `ip`, `url`, `path`, `timestamp`...). A mapping label whose value is
//! static has one value, so only labels whose value takes a `$` capture are checked for
//! cardinality.
//!
//! A mapping `name` with `$` captures is checked on its literal text only: characters, the
//! underscores at its ends, and the suffixes when the template ends with literal text
//! (`${1}_latency_ms`). The type of a mapping's series comes from `match_metric_type` (and
//! `observer_type`); without it the type-dependent checks are skipped. Rules with
//! `action = "drop"` name nothing and are skipped.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::naming::{label_name_into, sanitize_name};
use crate::registry::Kind;

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

/// The tables of the array of tables `key` (`[[key]]`, or an inline array of tables).
fn tables<'a, 'i>(document: &'a DeTable<'i>, key: &str) -> Vec<(Range<usize>, &'a DeTable<'i>)> {
    match document.get(key).map(Spanned::get_ref) {
        Some(DeValue::Array(array)) => array
            .iter()
            .filter_map(|entry| Some((entry.span(), entry.get_ref().as_table()?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The string at `key` and the span of the key.
fn string<'a>(table: &'a DeTable<'_>, key: &str) -> Option<(&'a str, Range<usize>)> {
    let (k, v) = table.get_key_value(key)?;
    Some((v.get_ref().as_str()?, k.span()))
}

/// Byte offsets to 1-based lines.
struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(memchr::memchr_iter(b'\n', text.as_bytes()).map(|i| i + 1));
        Lines { starts }
    }

    fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

/// The Prometheus type a name is for.
/// Base units Prometheus recommends, and `info` (of `*_info` metrics): suffixes that do not
/// count as a word of the name.
const BASE_UNITS: &[&str] = &[
    "seconds", "bytes", "ratio", "meters", "grams", "volts", "amperes", "joules", "celsius",
    "kelvin", "hertz", "info",
];

/// Suffixes of non-base units, and the base unit to use instead.
const NON_BASE_UNITS: &[(&str, &str)] = &[
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
const SERIES_SUFFIXES: &[&str] = &["_count", "_sum", "_bucket", "_created"];

/// The base unit to use instead of `unit`, when it is not one.
fn base_unit_for(unit: &str) -> Option<&'static str> {
    NON_BASE_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, base)| *base)
}

/// `name` without a trailing `_<unit>` for any unit tallyd knows (base or not).
fn strip_any_unit(name: &str) -> &str {
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
fn words<'a>(norm: &'a str, unit: Option<&str>) -> Vec<&'a str> {
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

/// The most common first word of the names that have a namespace (the earliest on a tie).
fn common_namespace(names: &[(&str, Option<&str>)]) -> Option<String> {
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
fn invalid_chars(s: &str) -> Option<String> {
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

/// Pieces of a mapping `name` template.
#[derive(Debug, PartialEq)]
enum Piece<'t> {
    /// Literal text, unescaped (`$$` is `$`).
    Text(String),
    /// A `$` reference as written (`$1`, `${name}`).
    Reference(&'t str),
}

fn has_reference(pieces: &[Piece<'_>]) -> bool {
    pieces.iter().any(|p| matches!(p, Piece::Reference(_)))
}

/// Splits a template the way `rules::template` reads it (`$$`, `${ref}`, `$ref`).
fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut text = String::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            let next = template[i..].find('$').map_or(template.len(), |n| i + n);
            text.push_str(&template[i..next]);
            i = next;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            text.push('$');
            i += 2;
            continue;
        }
        if !text.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut text)));
        }
        let start = i;
        i += 1;
        if bytes.get(i) == Some(&b'{') {
            i = template[i..]
                .find('}')
                .map_or(template.len(), |n| i + n + 1);
        } else {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
        }
        out.push(Piece::Reference(&template[start..i]));
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// What is being reported on.
struct At<'a> {
    line: usize,
    key: String,
    value: &'a str,
}

/// A name to check: a whole literal name, or what a template shows of it.
struct NameCheck<'a> {
    at: At<'a>,
    kind: Option<Kind>,
    /// `unit` of a `[[metric]]`.
    unit: Option<&'a str>,
    /// A namespace the name's own rule suggests (a mapping's first literal glob segment).
    namespace_hint: Option<String>,
}

struct Linter {
    lines: Lines,
    /// The namespace most names of the file use, for suggestions.
    namespace: Option<String>,
    out: Vec<LintWarning>,
}

impl Linter {
    fn at<'a>(&self, span: &Range<usize>, key: String, value: &'a str) -> At<'a> {
        At {
            line: self.lines.line(span.start),
            key,
            value,
        }
    }

    fn push(&mut self, at: &At<'_>, severity: Severity, message: impl Into<String>) {
        self.out.push(LintWarning {
            line: at.line,
            key: at.key.clone(),
            value: at.value.to_owned(),
            severity,
            message: message.into(),
        });
    }

    fn metric(&mut self, index: usize, span: &Range<usize>, table: &DeTable<'_>) {
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

    fn mapping(&mut self, index: usize, table: &DeTable<'_>) {
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

    /// Checks a `unit` value; true when it is usable to check the name against.
    fn unit(&mut self, at: &At<'_>) -> bool {
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
    fn literal_name(&mut self, check: NameCheck<'_>) {
        let text = check.at.value.to_owned();
        self.literal_name_text(check, &text);
    }

    /// A name whose text is `name` (the value reported is `check.at.value`).
    fn literal_name_text(&mut self, check: NameCheck<'_>, name: &str) {
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
    fn template_name(&mut self, check: NameCheck<'_>) {
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
    fn underscores(&mut self, at: &At<'_>, name: &str) {
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

    /// A label name; `dynamic` when its values come from traffic (cardinality matters).
    fn label(&mut self, at: &At<'_>, dynamic: bool) {
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
    use super::*;

    /// Findings as `severity key: message`.
    fn findings(text: &str) -> Vec<String> {
        lint(text)
            .iter()
            .map(|w| format!("{} {}: {}", w.severity, w.key, w.message))
            .collect()
    }

    /// The findings on a `[[metric]]` made of `body` (help given unless `body` sets it).
    fn metric(body: &str) -> Vec<String> {
        let help = if body.contains("help") {
            ""
        } else {
            "help = \"h\"\n"
        };
        findings(&format!("[[metric]]\n{help}{body}\n"))
    }

    fn gauge(name: &str) -> Vec<String> {
        metric(&format!("name = \"{name}\"\ntype = \"gauge\""))
    }

    fn has(findings: &[String], needle: &str) -> bool {
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

    #[test]
    fn drop_rules_name_nothing() {
        let text = "[[mapping]]\nmatch = \"tmp.*\"\naction = \"drop\"\nname = \"Bad.Name\"\n\
                    labels = { le = \"$1\" }\n";
        assert!(lint(text).is_empty());
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

    #[test]
    fn templates_split_into_text_and_references() {
        assert_eq!(
            pieces("a$$b${1}_c$name_x"),
            [
                Piece::Text("a$b".into()),
                Piece::Reference("${1}"),
                Piece::Text("_c".into()),
                Piece::Reference("$name_x"),
            ]
        );
        assert_eq!(pieces("$$"), [Piece::Text("$".into())]);
    }
}
