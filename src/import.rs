//! `tallyd import-mapping`: a statsd_exporter mapping file (YAML, v0.30.0 format) becomes a
//! tallyd TOML config whose `[[mapping]]` rules serve the same series.
//!
//! What the conversion reproduces (DESIGN.md §3, "statsd_exporter mapping semantics"):
//!
//! - **Order.** statsd_exporter tries every glob rule before any regex rule; tallyd tries rules
//!   in file order. The output lists the glob rules first, then the regex rules, each group in
//!   the original order, and says so in a comment. With `glob_disable_ordering: true`,
//!   statsd_exporter prefers, left to right, a literal segment over `*`; the glob rules are
//!   then sorted that way (literal before `*` at the first segment where two rules differ),
//!   which gives first-match-wins the same winner. It is reported as a warning, since rules
//!   added later follow tallyd's order.
//! - **Rules statsd_exporter never applies.** Its glob matcher only registers a rule whose
//!   last state is new: a glob that is a strict prefix of an earlier glob (`a.*` after
//!   `a.*.count`, for a type both rules cover) never matches. Such a rule is written commented
//!   out (or restricted to the types it did match), with a warning.
//! - **Templates.** `$1_x` is `${1_x}` in statsd_exporter: a group that does not exist, so
//!   empty. References are converted to what statsd_exporter substituted: `${1}` for a
//!   capture, nothing for a missing group (warned), `$$` for a literal `$`. In a glob, `$0` is
//!   empty too. A name that is always empty becomes `action = "drop"` (statsd_exporter drops
//!   those samples).
//! - **Regexes** are RE2: `\d`, `\w`, `\s`, `\b` are ASCII-only there, Unicode-aware in tallyd,
//!   so they are spelled out (`[0-9]`, `[0-9A-Za-z_]`…); `\Q…\E` is escaped.
//! - **Observers.** The observer type is the rule's `observer_type`, else its legacy
//!   `timer_type`, else `defaults.observer_type` (or `defaults.timer_type`), else summary; the
//!   buckets and quantiles come from the rule (`histogram_options`/`summary_options`, or the
//!   legacy top-level keys), else the defaults, else the Prometheus defaults. Both are written
//!   out on every rule that can match timers, so the output does not depend on tallyd's own
//!   defaults (histograms).
//! - **Unmatched names.** statsd_exporter gives them the defaults too (observer type, buckets,
//!   quantiles, ttl). When those differ from tallyd's behaviour for unmatched names, a final
//!   catch-all regex rule (`^.*$`, named `$0`, so sanitised exactly like an unmatched name)
//!   carries them.
//! - `ttl` (Go durations; a bare number is nanoseconds to Go's YAML decoder), `scale`, `help`,
//!   `honor_labels`, `action: drop`, `match_metric_type` (`timer` included) carry over.
//!
//! Options with no tallyd equivalent (native histograms, summary `max_age`, `age_buckets`,
//! `buf_cap`, per-quantile error targets) and keys statsd_exporter ignores are reported as
//! warnings naming the rule (`mappings[N]`, its `match`) and the option. Input statsd_exporter
//! itself refuses (a missing `match` or `name`, an unknown `match_type`, conflicting options,
//! a glob with `*` inside a segment) is an [`ImportError`].

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::rules::{Action, MappingRule, MatchType, MetricClass, ObserverType, RuleSet};

/// The Prometheus client default buckets, statsd_exporter's default.
pub const PROMETHEUS_DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// statsd_exporter's default summary quantiles.
pub const STATSD_EXPORTER_DEFAULT_QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];

/// A converted mapping file.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// A complete tallyd config: comments and `[[mapping]]` tables.
    pub toml: String,
    /// One line per option or quirk that could not be carried over exactly; print on stderr.
    pub warnings: Vec<String>,
    /// The rules the TOML enables, in order (what parsing `toml` gives).
    pub rules: Vec<MappingRule>,
}

/// A mapping file that cannot be converted (statsd_exporter would refuse it too, or it uses
/// something tallyd cannot express).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportError {
    /// Not YAML, or not the shape of a mapping file.
    Yaml(String),
    /// The `defaults` section.
    Defaults(String),
    /// One rule of `mappings`, by its position (from 0).
    Mapping {
        index: usize,
        pattern: String,
        message: String,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Yaml(message) => {
                write!(f, "not a statsd_exporter mapping file: {message}")
            }
            ImportError::Defaults(message) => write!(f, "defaults: {message}"),
            ImportError::Mapping {
                index,
                pattern,
                message,
            } => write!(f, "mappings[{index}] (match {pattern:?}): {message}"),
        }
    }
}

impl std::error::Error for ImportError {}

// ---------------------------------------------------------------------------------------------
// The YAML, read as leniently as Go's yaml.v2 reads it

/// A scalar read as text, as yaml.v2 does for string fields (`200` → "200", null → "").
#[derive(Debug, Clone, Default, PartialEq)]
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML 1.1 boolean, as yaml.v2 reads it (`yes`, `on`, `true`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bool(bool);

impl<'de> Deserialize<'de> for Bool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Bool, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bool;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a boolean")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Bool, E> {
                Ok(Bool(v))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Bool, E> {
                Ok(Bool(false))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bool, E> {
                match v {
                    "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On"
                    | "ON" => Ok(Bool(true)),
                    "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off"
                    | "Off" | "OFF" => Ok(Bool(false)),
                    _ => Err(E::custom(format!("expected a boolean, got {v:?}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A Go `time.Duration` as yaml.v2 reads it: a string for `time.ParseDuration`, or a bare
/// integer of nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct GoDuration {
    seconds: f64,
    /// Set when the YAML held a bare integer (nanoseconds).
    bare: Option<i64>,
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GoDuration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration such as \"1m30s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                parse_go_duration(v)
                    .map(|seconds| GoDuration {
                        seconds,
                        bare: None,
                    })
                    .map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                Ok(GoDuration {
                    seconds: v as f64 / 1e9,
                    bare: Some(v),
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                self.visit_i64(i64::try_from(v).map_err(|_| E::custom("duration too long"))?)
            }
            fn visit_unit<E: de::Error>(self) -> Result<GoDuration, E> {
                Ok(GoDuration::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// Go's `time.ParseDuration`, in seconds.
fn parse_go_duration(text: &str) -> Result<f64, String> {
    let invalid =
        || format!("invalid duration {text:?} (expected e.g. \"90s\", \"1m30s\", \"2h\")");
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0.0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        // Sub-second units divide, so that "30ns" is the double nearest 3e-8.
        let (multiply, divide) = match &rest[..unit_len] {
            "ns" => (1.0, 1e9),
            "us" | "µs" | "μs" => (1.0, 1e6),
            "ms" => (1.0, 1e3),
            "s" => (1.0, 1.0),
            "m" => (60.0, 1.0),
            "h" => (3600.0, 1.0),
            "" => return Err(format!("{}: a unit is missing", invalid())),
            unit => return Err(format!("{}: unknown unit {unit:?}", invalid())),
        };
        total += value * multiply / divide;
        rest = &rest[unit_len..];
    }
    Ok(if negative { -total } else { total })
}

type Extra = BTreeMap<String, serde_norway::Value>;

/// Reads the file as yaml.v2 would, merge keys (`<<: *anchor`) included. Without merge keys the
/// typed read goes straight from the text, so type errors carry a line.
fn read_yaml(yaml: &str) -> Result<YamlFile, ImportError> {
    let error = |e: serde_norway::Error| ImportError::Yaml(e.to_string());
    let mut value: serde_norway::Value = serde_norway::from_str(yaml).map_err(error)?;
    if !has_merge_key(&value) {
        return serde_norway::from_str(yaml).map_err(error);
    }
    value.apply_merge().map_err(error)?;
    serde_norway::from_value(value).map_err(error)
}

fn has_merge_key(value: &serde_norway::Value) -> bool {
    use serde_norway::Value;
    match value {
        Value::Mapping(map) => map
            .iter()
            .any(|(k, v)| k.as_str() == Some("<<") || has_merge_key(v)),
        Value::Sequence(items) => items.iter().any(has_merge_key),
        Value::Tagged(tagged) => has_merge_key(&tagged.value),
        _ => false,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct YamlFile {
    defaults: Option<YamlDefaults>,
    mappings: Option<Vec<YamlMapping>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct YamlDefaults {
    observer_type: Option<Text>,
    timer_type: Option<Text>,
    buckets: Option<Vec<f64>>,
    quantiles: Option<Vec<Objective>>,
    match_type: Option<Text>,
    glob_disable_ordering: Option<Bool>,
    ttl: Option<GoDuration>,
    summary_options: Option<SummaryOptions>,
    histogram_options: Option<HistogramOptions>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct YamlMapping {
    #[serde(rename = "match")]
    pattern: Option<Text>,
    name: Option<Text>,
    labels: Option<BTreeMap<String, Text>>,
    match_type: Option<Text>,
    match_metric_type: Option<Text>,
    action: Option<Text>,
    observer_type: Option<Text>,
    timer_type: Option<Text>,
    buckets: Option<Vec<f64>>,
    quantiles: Option<Vec<Objective>>,
    histogram_options: Option<HistogramOptions>,
    summary_options: Option<SummaryOptions>,
    ttl: Option<GoDuration>,
    scale: Option<f64>,
    help: Option<Text>,
    honor_labels: Option<Bool>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Objective {
    quantile: f64,
    error: Option<f64>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SummaryOptions {
    quantiles: Option<Vec<Objective>>,
    max_age: Option<GoDuration>,
    age_buckets: Option<u32>,
    buf_cap: Option<u32>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HistogramOptions {
    buckets: Option<Vec<f64>>,
    #[serde(flatten)]
    extra: Extra,
}

// ---------------------------------------------------------------------------------------------
// Conversion

/// statsd_exporter's glob matcher has one tree per type: counter, gauge, observer.
const ROOTS: [MetricClass; 3] = [
    MetricClass::Counter,
    MetricClass::Gauge,
    MetricClass::Observer,
];

/// Converts a statsd_exporter mapping file to a tallyd config.
pub fn import_mapping(yaml: &str) -> Result<Imported, ImportError> {
    let file: YamlFile = if yaml
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---")
    {
        YamlFile::default()
    } else {
        read_yaml(yaml)?
    };
    let mut warnings = Vec::new();
    for key in file.extra.keys() {
        warnings.push(format!(
            "top-level key `{key}` is not part of the mapping format; statsd_exporter ignores \
             it, and so does the conversion"
        ));
    }
    let defaults = Defaults::resolve(file.defaults.unwrap_or_default(), &mut warnings)?;
    let mappings = file.mappings.unwrap_or_default();
    let mut converted = Vec::with_capacity(mappings.len());
    for (index, mapping) in mappings.into_iter().enumerate() {
        converted.push(convert(index, mapping, &defaults, &mut warnings)?);
    }
    mark_unreachable_globs(&mut converted, &mut warnings);

    let mut globs: Vec<&Converted> = converted
        .iter()
        .filter(|c| c.rule.match_type == MatchType::Glob)
        .collect();
    if defaults.glob_disable_ordering {
        globs.sort_by(|a, b| specificity_order(&a.rule.pattern, &b.rule.pattern));
        warnings.push(
            "defaults.glob_disable_ordering: true has no tallyd equivalent (tallyd always takes \
             the first match in file order); the glob rules were sorted so that, as in \
             statsd_exporter, a literal segment is preferred over `*` from left to right. Keep \
             that order when adding rules."
                .to_string(),
        );
    }
    let regexes: Vec<&Converted> = converted
        .iter()
        .filter(|c| c.rule.match_type == MatchType::Regex)
        .collect();
    let catch_all = defaults.catch_all();

    let mut out = String::new();
    let mut rules = Vec::new();
    write_header(
        &mut out,
        &defaults,
        globs.len(),
        regexes.len(),
        catch_all.is_some(),
    );
    for c in globs.iter().chain(regexes.iter()) {
        c.write(&mut out, &mut rules);
    }
    if let Some((rule, notes)) = catch_all {
        out.push('\n');
        for note in notes {
            push_comment(&mut out, &note);
        }
        write_rule(&mut out, &rule, false);
        rules.push(rule);
    }
    if rules.is_empty() && !out.contains("[[mapping]]") {
        out.push_str("\n# (the mapping file has no rules)\n");
    }
    // The output must load; a failure here is a bug in the conversion, not in the input.
    if let Err(e) = RuleSet::new(&rules) {
        return Err(ImportError::Mapping {
            index: e.index,
            pattern: e.pattern,
            message: format!("the converted rule does not load in tallyd: {}", e.message),
        });
    }
    Ok(Imported {
        toml: out,
        warnings,
        rules,
    })
}

struct Defaults {
    observer: Option<ObserverType>,
    buckets: Vec<f64>,
    quantiles: Vec<f64>,
    match_type: MatchType,
    glob_disable_ordering: bool,
    ttl: f64,
}

impl Defaults {
    fn resolve(d: YamlDefaults, warnings: &mut Vec<String>) -> Result<Defaults, ImportError> {
        let bad = ImportError::Defaults;
        for key in d.extra.keys() {
            warnings.push(format!(
                "defaults.{key}: not a statsd_exporter option (ignored there too)"
            ));
        }
        let observer = match observer_type(d.observer_type.as_ref(), d.timer_type.as_ref()) {
            Ok(observer) => observer,
            Err(message) => return Err(bad(message)),
        };
        let mut histogram = d.histogram_options.unwrap_or_default();
        let mut summary = d.summary_options.unwrap_or_default();
        native_histogram_warnings("defaults.histogram_options", &mut histogram.extra, warnings);
        summary_option_warnings("defaults.summary_options", &summary, warnings);
        // As statsd_exporter: the nested options win; the legacy keys fill an empty list.
        let buckets = non_empty(histogram.buckets.take())
            .or_else(|| non_empty(d.buckets))
            .unwrap_or_else(|| PROMETHEUS_DEFAULT_BUCKETS.to_vec());
        crate::validate::buckets(&buckets).map_err(bad)?;
        let objectives = non_empty(summary.quantiles.take()).or_else(|| non_empty(d.quantiles));
        if let Some(objectives) = &objectives {
            objective_warnings("defaults", objectives, warnings);
        }
        let quantiles = match objectives {
            Some(objectives) => quantiles_of(&objectives).map_err(bad)?,
            None => STATSD_EXPORTER_DEFAULT_QUANTILES.to_vec(),
        };
        let match_type = match d.match_type.as_ref().map(|t| t.0.as_str()) {
            None | Some("") | Some("glob") => MatchType::Glob,
            Some("regex") => MatchType::Regex,
            Some(other) => return Err(bad(format!("unknown match_type {other:?}"))),
        };
        let ttl = d.ttl.map_or(0.0, |t| t.seconds);
        if let Some(bare) = d.ttl.and_then(|t| t.bare).filter(|n| *n != 0) {
            warnings.push(bare_ttl_warning("defaults.ttl", bare));
        }
        if ttl < 0.0 {
            return Err(bad(format!("ttl must not be negative, got {ttl}s")));
        }
        Ok(Defaults {
            observer,
            buckets,
            quantiles,
            match_type,
            glob_disable_ordering: d.glob_disable_ordering.is_some_and(|b| b.0),
            ttl,
        })
    }

    /// The effective observer type of a rule that sets none.
    fn observer(&self) -> ObserverType {
        self.observer.unwrap_or(ObserverType::Summary)
    }

    /// A last rule giving unmatched names statsd_exporter's defaults, when tallyd's own
    /// behaviour for unmatched names (histogram, Prometheus buckets, no expiry) differs.
    fn catch_all(&self) -> Option<(MappingRule, Vec<String>)> {
        let observer = self.observer();
        let observer_differs = observer == ObserverType::Summary
            || self.buckets.as_slice() != PROMETHEUS_DEFAULT_BUCKETS.as_slice();
        if !observer_differs && self.ttl <= 0.0 {
            return None;
        }
        let mut rule = MappingRule::new("^.*$", "$0");
        rule.match_type = MatchType::Regex;
        let mut given = Vec::new();
        if self.ttl > 0.0 {
            given.push(format!("a ttl of {}s for every type", fmt_number(self.ttl)));
            rule.ttl_seconds = Some(self.ttl);
        } else {
            rule.match_metric_type = Some(MetricClass::Observer);
        }
        if observer_differs {
            rule.observer_type = Some(observer);
            let source = if self.observer.is_some() {
                "the file's defaults"
            } else {
                "statsd_exporter's default"
            };
            match observer {
                ObserverType::Histogram => {
                    given.push(format!(
                        "timers, histograms and distributions as histograms with the buckets of \
                         {source}"
                    ));
                    rule.buckets = Some(self.buckets.clone());
                }
                ObserverType::Summary => {
                    given.push(format!(
                        "timers, histograms and distributions as summaries ({source}), where \
                         tallyd would make histograms"
                    ));
                    rule.quantiles = Some(self.quantiles.clone());
                }
            }
        }
        let notes = vec![format!(
            "Names no rule above matches: statsd_exporter exports them under their sanitised \
             name, as tallyd does, and with {}. This rule keeps that; keep it last.",
            given.join("; ")
        )];
        Some((rule, notes))
    }
}

fn non_empty<T>(list: Option<Vec<T>>) -> Option<Vec<T>> {
    list.filter(|l| !l.is_empty())
}

fn quantiles_of(objectives: &[Objective]) -> Result<Vec<f64>, String> {
    let mut quantiles: Vec<f64> = objectives.iter().map(|o| o.quantile).collect();
    quantiles.sort_by(f64::total_cmp);
    // statsd_exporter takes a quantile listed twice; so do we, once.
    quantiles.dedup();
    crate::validate::quantiles(&quantiles)?;
    Ok(quantiles)
}

fn objective_warnings(context: &str, objectives: &[Objective], warnings: &mut Vec<String>) {
    if objectives.iter().any(|o| o.error.is_some()) {
        warnings.push(format!(
            "{context}: quantile `error` targets have no tallyd equivalent (tallyd's summaries \
             use one sketch with a fixed error bound); the quantiles are kept"
        ));
    }
    for key in objectives.iter().flat_map(|o| o.extra.keys()) {
        warnings.push(format!(
            "{context}: quantile key `{key}` is not a statsd_exporter option"
        ));
    }
}

fn native_histogram_warnings(context: &str, extra: &mut Extra, warnings: &mut Vec<String>) {
    for key in std::mem::take(extra).into_keys() {
        if key.starts_with("native_histogram") {
            warnings.push(format!(
                "{context}.{key}: native histograms have no equivalent in tallyd's config yet; \
                 the classic buckets are kept"
            ));
        } else {
            warnings.push(format!(
                "{context}.{key}: not a statsd_exporter option (ignored there too)"
            ));
        }
    }
}

fn summary_option_warnings(context: &str, s: &SummaryOptions, warnings: &mut Vec<String>) {
    let set = [
        ("max_age", s.max_age.is_some()),
        ("age_buckets", s.age_buckets.is_some()),
        ("buf_cap", s.buf_cap.is_some()),
    ];
    for (key, _) in set.iter().filter(|(_, set)| *set) {
        warnings.push(format!(
            "{context}.{key}: no tallyd equivalent (tallyd's summaries use their own sliding \
             window); ignored"
        ));
    }
    for key in s.extra.keys() {
        warnings.push(format!(
            "{context}.{key}: not a statsd_exporter option (ignored there too)"
        ));
    }
}

fn bare_ttl_warning(context: &str, nanoseconds: i64) -> String {
    format!(
        "{context}: {nanoseconds} is a bare number, which Go reads as {nanoseconds} \
         nanoseconds; converted as such. Write \"{nanoseconds}s\" if seconds were meant."
    )
}

/// `observer_type`, else the legacy `timer_type`.
fn observer_type(
    observer: Option<&Text>,
    timer: Option<&Text>,
) -> Result<Option<ObserverType>, String> {
    let parse = |key: &str, t: &Text| match t.0.as_str() {
        "" => Ok(None),
        "histogram" => Ok(Some(ObserverType::Histogram)),
        "summary" => Ok(Some(ObserverType::Summary)),
        other => Err(format!("unknown {key} {other:?} (histogram or summary)")),
    };
    match observer
        .map(|t| parse("observer_type", t))
        .transpose()?
        .flatten()
    {
        Some(t) => Ok(Some(t)),
        None => Ok(timer.map(|t| parse("timer_type", t)).transpose()?.flatten()),
    }
}

/// One statsd_exporter rule, converted.
struct Converted {
    index: usize,
    rule: MappingRule,
    notes: Vec<String>,
    /// The metric classes statsd_exporter's glob matcher never applied this rule to.
    unreachable: Vec<MetricClass>,
}

fn convert(
    index: usize,
    m: YamlMapping,
    defaults: &Defaults,
    warnings: &mut Vec<String>,
) -> Result<Converted, ImportError> {
    let pattern = m.pattern.clone().unwrap_or_default().0;
    let context = format!("mappings[{index}] (match {pattern:?})");
    let fail = |message: String| ImportError::Mapping {
        index,
        pattern: pattern.clone(),
        message,
    };
    if pattern.is_empty() {
        return Err(fail("`match` is missing".into()));
    }
    for key in m.extra.keys() {
        warnings.push(format!(
            "{context}: `{key}` is not a statsd_exporter option (ignored there too)"
        ));
    }
    let match_type = match m.match_type.as_ref().map(|t| t.0.as_str()) {
        None | Some("") => defaults.match_type,
        Some("glob") => MatchType::Glob,
        Some("regex") => MatchType::Regex,
        Some(other) => return Err(fail(format!("unknown match_type {other:?}"))),
    };
    let action = match m.action.as_ref().map(|t| t.0.as_str()) {
        None | Some("") | Some("map") => Action::Map,
        Some("drop") => Action::Drop,
        Some(other) => return Err(fail(format!("unknown action {other:?}"))),
    };
    let class = match m.match_metric_type.as_ref().map(|t| t.0.as_str()) {
        None | Some("") => None,
        Some("counter") => Some(MetricClass::Counter),
        Some("gauge") => Some(MetricClass::Gauge),
        Some("observer") | Some("timer") => Some(MetricClass::Observer),
        Some(other) => return Err(fail(format!("unknown match_metric_type {other:?}"))),
    };
    let mut notes = Vec::new();
    let mut rule = MappingRule::new(String::new(), String::new());
    rule.match_type = match_type;
    rule.match_metric_type = class;
    rule.action = action;
    rule.name = None;

    // The pattern, and the groups templates may use.
    let groups = match match_type {
        MatchType::Glob => {
            if let Some(segment) = pattern.split('.').find(|s| s.contains('*') && *s != "*") {
                return Err(fail(format!(
                    "statsd_exporter accepts `*` only as a whole segment, not in {segment:?}"
                )));
            }
            rule.pattern = pattern.clone();
            SourceGroups::Glob(pattern.split('.').filter(|s| *s == "*").count())
        }
        MatchType::Regex => {
            let (translated, changed) = re2_to_rust(&pattern);
            let regex = regex::Regex::new(&translated).map_err(|e| {
                fail(format!(
                    "the regex does not compile for tallyd (RE2 and the regex crate differ in \
                     a few constructs): {e}"
                ))
            })?;
            if changed {
                notes.push(
                    "regex: RE2's ASCII-only \\d, \\w, \\s, \\b (or \\Q…\\E) spelled out".into(),
                );
            }
            rule.pattern = translated;
            SourceGroups::Regex {
                count: regex.captures_len() - 1,
                names: regex
                    .capture_names()
                    .enumerate()
                    .filter_map(|(i, n)| n.map(|n| (n.to_string(), i)))
                    .collect(),
            }
        }
    };

    let name = m.name.clone().map(|t| t.0).unwrap_or_default();
    if action == Action::Drop {
        // statsd_exporter wants a name even on drop rules; it is never used.
        if !m.labels.as_ref().is_none_or(|l| l.is_empty()) {
            warnings.push(format!(
                "{context}: `labels` on a drop rule have no effect; left out"
            ));
        }
        return Ok(Converted {
            index,
            rule,
            notes,
            unreachable: Vec::new(),
        });
    }
    if name.is_empty() {
        return Err(fail(
            "`name` is missing (statsd_exporter refuses such a file)".into(),
        ));
    }

    let mut changes = Vec::new();
    let name_template = convert_template(&name, &groups, true, &mut changes);
    for change in changes.drain(..) {
        warnings.push(format!("{context}: name {name:?}: {change}"));
    }
    if name_template.is_empty() {
        warnings.push(format!(
            "{context}: the name {name:?} always expands to nothing in statsd_exporter, which \
             drops every sample the rule matches; converted to action = \"drop\""
        ));
        rule.action = Action::Drop;
        notes.push(format!(
            "name {name:?} was always empty in statsd_exporter: a drop rule"
        ));
        return Ok(Converted {
            index,
            rule,
            notes,
            unreachable: Vec::new(),
        });
    }
    rule.name = Some(name_template);
    for (key, value) in m.labels.clone().unwrap_or_default() {
        let template = convert_template(&value.0, &groups, false, &mut changes);
        for change in changes.drain(..) {
            warnings.push(format!("{context}: label {key}={:?}: {change}", value.0));
        }
        rule.labels.insert(key, template);
    }
    rule.honor_labels = m.honor_labels.is_some_and(|b| b.0);
    rule.help = m.help.clone().map(|t| t.0).filter(|h| !h.is_empty());
    if let Some(scale) = m.scale {
        if !scale.is_finite() {
            return Err(fail(format!("scale must be a finite number, got {scale}")));
        }
        rule.scale = Some(scale);
    }
    let ttl = match m.ttl {
        Some(t) if t.seconds < 0.0 => {
            return Err(fail(format!(
                "ttl must not be negative, got {}s",
                t.seconds
            )));
        }
        Some(t) if t.seconds > 0.0 => {
            if let Some(bare) = t.bare {
                warnings.push(bare_ttl_warning(&format!("{context}: ttl"), bare));
            }
            t.seconds
        }
        // 0 (or absent) means "unset": the defaults apply, as in statsd_exporter.
        _ => defaults.ttl,
    };
    if ttl > 0.0 {
        rule.ttl_seconds = Some(ttl);
    }
    observer_options(
        &context, &m, class, defaults, &mut rule, &mut notes, warnings,
    )
    .map_err(fail)?;
    Ok(Converted {
        index,
        rule,
        notes,
        unreachable: Vec::new(),
    })
}

/// Observer type, buckets and quantiles, resolved as statsd_exporter does.
fn observer_options(
    context: &str,
    m: &YamlMapping,
    class: Option<MetricClass>,
    defaults: &Defaults,
    rule: &mut MappingRule,
    notes: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let own = observer_type(m.observer_type.as_ref(), m.timer_type.as_ref())?;
    let observer = own.unwrap_or(defaults.observer());
    let histogram_buckets = m.histogram_options.as_ref().and_then(|h| h.buckets.clone());
    let summary_quantiles = m
        .summary_options
        .as_ref()
        .and_then(|s| s.quantiles.as_ref());
    if m.buckets.is_some() && histogram_buckets.is_some() {
        return Err("`buckets` and `histogram_options.buckets` cannot both be set".into());
    }
    if m.quantiles.is_some() && summary_quantiles.is_some() {
        return Err("`quantiles` and `summary_options.quantiles` cannot both be set".into());
    }
    match observer {
        ObserverType::Histogram if m.summary_options.is_some() => {
            return Err("a histogram rule cannot have `summary_options`".into());
        }
        ObserverType::Summary if m.histogram_options.is_some() => {
            return Err("a summary rule cannot have `histogram_options`".into());
        }
        _ => {}
    }
    if let Some(h) = &m.histogram_options {
        let mut extra = h.extra.clone();
        native_histogram_warnings(
            &format!("{context}: histogram_options"),
            &mut extra,
            warnings,
        );
    }
    if let Some(s) = &m.summary_options {
        summary_option_warnings(&format!("{context}: summary_options"), s, warnings);
    }
    let explicit = own.is_some()
        || m.buckets.is_some()
        || m.quantiles.is_some()
        || m.histogram_options.is_some()
        || m.summary_options.is_some();
    if class.is_some_and(|c| c != MetricClass::Observer) {
        if explicit {
            warnings.push(format!(
                "{context}: observer options (observer_type, buckets, quantiles…) have no \
                 effect on a rule that matches only {}s; left out",
                class.map_or("", |c| c.as_str())
            ));
        }
        return Ok(());
    }
    rule.observer_type = Some(observer);
    match observer {
        ObserverType::Histogram => {
            let buckets = non_empty(m.buckets.clone())
                .or_else(|| non_empty(histogram_buckets))
                .unwrap_or_else(|| defaults.buckets.clone());
            crate::validate::buckets(&buckets)?;
            rule.buckets = Some(buckets);
        }
        ObserverType::Summary => {
            let objectives = m
                .quantiles
                .as_ref()
                .or(summary_quantiles)
                .filter(|q| !q.is_empty());
            if let Some(objectives) = objectives {
                objective_warnings(context, objectives, warnings);
            }
            rule.quantiles = Some(match objectives {
                Some(objectives) => quantiles_of(objectives)?,
                None => defaults.quantiles.clone(),
            });
        }
    }
    if own.is_none() {
        notes.push(format!(
            "observer_type {:?}: {}",
            observer.as_str(),
            if defaults.observer.is_some() {
                "from the file's defaults"
            } else {
                "statsd_exporter's default"
            }
        ));
    }
    Ok(())
}

// --- templates -------------------------------------------------------------------------------

enum SourceGroups {
    Glob(usize),
    Regex {
        count: usize,
        names: Vec<(String, usize)>,
    },
}

/// Converts a statsd_exporter template into tallyd's syntax, reproducing what statsd_exporter
/// substitutes. `changes` gets a line per reference that statsd_exporter replaced by nothing.
fn convert_template(
    text: &str,
    groups: &SourceGroups,
    in_name: bool,
    changes: &mut Vec<String>,
) -> String {
    let mut out = String::new();
    match groups {
        SourceGroups::Glob(stars) => convert_glob_template(text, *stars, &mut out, changes),
        SourceGroups::Regex { count, names } => {
            convert_regex_template(text, *count, names, in_name, &mut out, changes)
        }
    }
    out
}

fn push_literal(out: &mut String, text: &str) {
    for c in text.chars() {
        if c == '$' {
            out.push_str("$$");
        } else {
            out.push(c);
        }
    }
}

/// statsd_exporter's glob formatter: each match of `\$\{?([a-zA-Z0-9_$]+)\}?` whose run is a
/// number from 1 to the number of `*` is that capture; any other match becomes nothing.
fn convert_glob_template(text: &str, stars: usize, out: &mut String, changes: &mut Vec<String>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut literal_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        if bytes.get(j) == Some(&b'{') {
            j += 1;
        }
        let run_start = j;
        while j < bytes.len()
            && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_' || bytes[j] == b'$')
        {
            j += 1;
        }
        if j == run_start {
            i += 1;
            continue;
        }
        let run = &text[run_start..j];
        if bytes.get(j) == Some(&b'}') {
            j += 1;
        }
        push_literal(out, &text[literal_start..i]);
        let whole = &text[i..j];
        match run.parse::<usize>() {
            Ok(n) if (1..=stars).contains(&n) && run.bytes().all(|b| b.is_ascii_digit()) => {
                let _ = write!(out, "${{{n}}}");
            }
            Ok(0) => changes.push(format!(
                "`{whole}` is empty in a statsd_exporter glob rule ($0 is not the whole name \
                 there); left out"
            )),
            Ok(_) => changes.push(format!(
                "`{whole}` refers to a `*` the glob does not have ({stars}); statsd_exporter \
                 substitutes nothing; left out"
            )),
            Err(_) => changes.push(format!(
                "statsd_exporter reads `{whole}` as a reference to the group named `{run}`, \
                 which does not exist, and substitutes nothing; left out (write `${{1}}_x` \
                 to follow a capture with `_x`)"
            )),
        }
        i = j;
        literal_start = j;
    }
    push_literal(out, &text[literal_start..]);
}

/// Go's `Regexp.Expand`: `$$` is `$`; `$name`/`${name}` with the longest run of letters,
/// digits and `_`; a number (without a leading zero) is a group, anything else a named group;
/// a group that does not exist is empty; a `$` that starts nothing is kept.
fn convert_regex_template(
    text: &str,
    count: usize,
    names: &[(String, usize)],
    in_name: bool,
    out: &mut String,
    changes: &mut Vec<String>,
) {
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        push_literal(out, &rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push_str("$$");
            rest = tail;
            continue;
        }
        let (braced, body) = match after.strip_prefix('{') {
            Some(body) => (true, body),
            None => (false, after),
        };
        let run_len = body
            .char_indices()
            .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
            .map_or(body.len(), |(i, _)| i);
        let closed = !braced || body[run_len..].starts_with('}');
        if run_len == 0 || !closed {
            out.push_str("$$");
            rest = after;
            continue;
        }
        let reference = &body[..run_len];
        let consumed = 1 + usize::from(braced) + run_len + usize::from(braced);
        let whole = &rest[dollar..dollar + consumed];
        rest = &rest[dollar + consumed..];
        let number = (reference.bytes().all(|b| b.is_ascii_digit())
            && !(reference.len() > 1 && reference.starts_with('0')))
        .then(|| reference.parse::<usize>().ok())
        .flatten();
        match number {
            Some(n) if n <= count => {
                let _ = write!(out, "${{{n}}}");
            }
            Some(_) => changes.push(format!(
                "`{whole}` refers to a group the regex does not have ({count}); statsd_exporter \
                 substitutes nothing; left out"
            )),
            None => match names.iter().find(|(name, _)| name == reference) {
                // tallyd takes named groups in label values only: by number in a name.
                Some((_, index)) if in_name => {
                    let _ = write!(out, "${{{index}}}");
                }
                Some(_) => {
                    let _ = write!(out, "${{{reference}}}");
                }
                None => changes.push(format!(
                    "statsd_exporter reads `{whole}` as a reference to the group named \
                     `{reference}`, which the regex does not have, and substitutes nothing; \
                     left out{}",
                    if reference.starts_with(|c: char| c.is_ascii_digit()) {
                        " (write `${1}_x` to follow a group with `_x`)"
                    } else {
                        ""
                    }
                )),
            },
        }
    }
    push_literal(out, rest);
}

/// RE2 (Go) regex syntax to the `regex` crate's: Perl classes are ASCII-only in RE2 and
/// Unicode-aware in the crate, so they are spelled out; `\Q…\E` is escaped; `[` and `&&`/`~~`
/// inside a class (literal in RE2, nesting and set operators in the crate) are escaped.
/// Returns the pattern and whether anything changed.
fn re2_to_rust(pattern: &str) -> (String, bool) {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    let mut changed = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(escaped) = chars.next() else {
                    out.push('\\');
                    break;
                };
                let replacement = match escaped {
                    'd' => Some("[0-9]"),
                    'D' => Some("[^0-9]"),
                    'w' => Some("[0-9A-Za-z_]"),
                    'W' => Some("[^0-9A-Za-z_]"),
                    's' => Some(r"[\t\n\f\r ]"),
                    'S' => Some(r"[^\t\n\f\r ]"),
                    'b' if !in_class => Some(r"(?-u:\b)"),
                    'B' if !in_class => Some(r"(?-u:\B)"),
                    _ => None,
                };
                if let Some(replacement) = replacement {
                    out.push_str(replacement);
                    changed = true;
                } else if escaped == 'Q' && !in_class {
                    let mut literal = String::new();
                    while let Some(c) = chars.next() {
                        if c == '\\' && chars.peek() == Some(&'E') {
                            chars.next();
                            break;
                        }
                        literal.push(c);
                    }
                    out.push_str(&regex::escape(&literal));
                    changed = true;
                } else {
                    out.push('\\');
                    out.push(escaped);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().unwrap_or('^'));
                }
                // A `]` first in a class is a literal in both syntaxes.
                if chars.peek() == Some(&']') {
                    chars.next();
                    out.push_str(r"\]");
                }
            }
            '[' if in_class => {
                if chars.peek() == Some(&':') {
                    // A POSIX class, [:alpha:]: the same in both.
                    out.push('[');
                    for c in chars.by_ref() {
                        out.push(c);
                        if c == ']' {
                            break;
                        }
                    }
                } else {
                    out.push_str(r"\[");
                    changed = true;
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '&' | '~' if in_class && chars.peek() == Some(&c) => {
                chars.next();
                let _ = write!(out, r"\{c}\{c}");
                changed = true;
            }
            _ => out.push(c),
        }
    }
    (out, changed)
}

// --- statsd_exporter's glob matcher quirks ----------------------------------------------------

/// Marks glob rules statsd_exporter never applies (for some or all types): its matcher sets a
/// rule's result only on a state it creates, so a glob whose segments are a strict prefix of an
/// earlier glob's (for a type both cover) never matches.
fn mark_unreachable_globs(converted: &mut [Converted], warnings: &mut Vec<String>) {
    let roots_of = |rule: &MappingRule| -> Vec<MetricClass> {
        ROOTS.into_iter().filter(|c| rule.applies_to(*c)).collect()
    };
    for i in 0..converted.len() {
        if converted[i].rule.match_type != MatchType::Glob {
            continue;
        }
        let segments: Vec<&str> = converted[i].rule.pattern.split('.').collect();
        let mut unreachable = Vec::new();
        let mut shadowed_by = Vec::new();
        for root in roots_of(&converted[i].rule) {
            let earlier = converted[..i].iter().find(|c| {
                c.rule.match_type == MatchType::Glob && c.rule.applies_to(root) && {
                    let theirs: Vec<&str> = c.rule.pattern.split('.').collect();
                    theirs.len() > segments.len() && theirs[..segments.len()] == segments[..]
                }
            });
            if let Some(earlier) = earlier {
                unreachable.push(root);
                if !shadowed_by.contains(&earlier.index) {
                    shadowed_by.push(earlier.index);
                }
            }
        }
        if unreachable.is_empty() {
            continue;
        }
        let c = &mut converted[i];
        let types: Vec<&str> = unreachable.iter().map(|r| r.as_str()).collect();
        let earlier: Vec<String> = shadowed_by
            .iter()
            .map(|j| format!("mappings[{j}]"))
            .collect();
        let all = unreachable.len() == roots_of(&c.rule).len();
        warnings.push(format!(
            "mappings[{}] (match {:?}): statsd_exporter never applies this rule to {} samples \
             (its glob matcher does not register a glob that is a prefix of an earlier one: {}); \
             {}",
            c.index,
            c.rule.pattern,
            types.join(", "),
            earlier.join(", "),
            if all {
                "written commented out, so tallyd serves the same series; uncomment it to apply it"
            } else {
                "written for the other types only"
            }
        ));
        c.unreachable = unreachable;
    }
}

/// `glob_disable_ordering`: at the first segment where two globs differ, a literal comes
/// before `*` (two different literals cannot both match one name, so their order is free).
fn specificity_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<(bool, String)> {
        s.split('.')
            .map(|seg| (seg == "*", seg.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}

// ---------------------------------------------------------------------------------------------
// Writing TOML

fn write_header(
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
fn push_comment(out: &mut String, text: &str) {
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
    fn write(&self, out: &mut String, rules: &mut Vec<MappingRule>) {
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
                rule.quantiles = None;
            }
            write_rule(out, &rule, false);
            rules.push(rule);
        }
    }
}

fn write_rule(out: &mut String, rule: &MappingRule, commented: bool) {
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
fn fmt_number(x: f64) -> String {
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
    use super::*;

    #[test]
    fn go_durations_parse_like_go() {
        assert_eq!(parse_go_duration("0"), Ok(0.0));
        assert_eq!(parse_go_duration("90s"), Ok(90.0));
        assert_eq!(parse_go_duration("1m30s"), Ok(90.0));
        assert_eq!(parse_go_duration("1.5h"), Ok(5400.0));
        assert_eq!(parse_go_duration("250ms"), Ok(0.25));
        assert!((parse_go_duration("10µs").unwrap() - 1e-5).abs() < 1e-12);
        assert!(parse_go_duration("30").is_err());
        assert!(parse_go_duration("1d").is_err());
        assert!(parse_go_duration("").is_err());
    }

    #[test]
    fn re2_perl_classes_become_ascii() {
        assert_eq!(re2_to_rust(r"(\w+)\.\d").0, r"([0-9A-Za-z_]+)\.[0-9]");
        assert_eq!(re2_to_rust(r"[\w.-]").0, r"[[0-9A-Za-z_].-]");
        assert_eq!(re2_to_rust(r"\bx\\w").0, r"(?-u:\b)x\\w");
        assert_eq!(re2_to_rust(r"\Qa.b\E+").0, r"a\.b+");
        assert_eq!(re2_to_rust(r"[]a[&&]").0, r"[\]a\[\&\&]");
        assert_eq!(re2_to_rust(r"[[:alpha:]]x").0, r"[[:alpha:]]x");
        assert!(!re2_to_rust(r"(.*)\.(.*)").1);
    }

    fn glob(text: &str, stars: usize) -> (String, usize) {
        let mut changes = Vec::new();
        let out = convert_template(text, &SourceGroups::Glob(stars), true, &mut changes);
        (out, changes.len())
    }

    #[test]
    fn glob_templates_follow_statsd_exporters_formatter() {
        assert_eq!(glob("${1}_server", 1), ("${1}_server".into(), 0));
        assert_eq!(glob("$1_server", 1), ("".into(), 1));
        assert_eq!(glob("$2-$1", 2), ("${2}-${1}".into(), 0));
        assert_eq!(glob("a$0-b", 1), ("a-b".into(), 1));
        assert_eq!(glob("a$0b", 1), ("a".into(), 1));
        assert_eq!(glob("x$3", 2), ("x".into(), 1));
        assert_eq!(glob("cost$", 0), ("cost$$".into(), 0));
        assert_eq!(glob("$1}", 1), ("${1}".into(), 0));
    }

    fn regex_t(text: &str, in_name: bool) -> (String, usize) {
        let mut changes = Vec::new();
        let groups = SourceGroups::Regex {
            count: 2,
            names: vec![("svc".into(), 2)],
        };
        let out = convert_template(text, &groups, in_name, &mut changes);
        (out, changes.len())
    }

    #[test]
    fn regex_templates_follow_gos_expand() {
        assert_eq!(regex_t("${1}_x", false), ("${1}_x".into(), 0));
        assert_eq!(regex_t("$1_x", false), ("".into(), 1));
        assert_eq!(regex_t("$0/$svc", false), ("${0}/${svc}".into(), 0));
        assert_eq!(regex_t("$svc", true), ("${2}".into(), 0));
        assert_eq!(regex_t("$$1 $ ${x", false), ("$$1 $$ $${x".into(), 0));
        assert_eq!(regex_t("$01", false), ("".into(), 1));
        assert_eq!(regex_t("$7", false), ("".into(), 1));
    }

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
