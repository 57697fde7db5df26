//! Mapping rules (`[[mapping]]` in the config): from a dotted StatsD name to a Prometheus name
//! and labels, or to nothing (`action = "drop"`).
//!
//! ```toml
//! [[mapping]]
//! match = "predictor.*.latency"          # glob (the default match_type)
//! name = "predictor_latency_seconds"
//! labels = { model = "$1" }
//! observer_type = "histogram"
//! buckets = [0.01, 0.05, 0.1, 0.5, 1.0]
//!
//! [[mapping]]
//! match = '^(?P<service>\w+)\.http\.(\d{3})$'
//! match_type = "regex"
//! name = "http_responses"
//! labels = { service = "${service}", code = "$2" }
//! match_metric_type = "counter"
//! ```
//!
//! **Precedence: the first rule in file order that matches wins**, whether it is a glob or a
//! regex. A rule whose `match_metric_type` does not fit the sample's type is skipped, as if it
//! were not there. (statsd_exporter instead tries every glob rule before any regex rule; the
//! importer, [`crate::import`], reorders rules so that converted files behave the same.)
//!
//! **Globs** match whole names, segment by segment (segments are separated by `.`): a literal
//! segment matches itself, a lone `*` matches exactly one segment, which may be empty (`a.*.b`
//! matches `a..b`), and a `*` inside a segment (`request_*`, `*_seconds`) matches any run of
//! characters other than `.`, possibly empty. Each `*` is a capture, `$1` for the first.
//!
//! **Regexes** use the [`regex`] crate's syntax (RE2-like; `\w`, `\d`, `\s`, `\b` are
//! Unicode-aware) and are **not anchored**: `api` matches `myapi.calls`; write `^…$` to match
//! whole names. `$1`… are its groups, `${name}` its named groups (label values only), and `$0`
//! the text it matched.
//!
//! **Templates** (`name` and label values): `$1` and `${1}` are captures, `$0` the whole name
//! (glob) or the whole match (regex), `$$` a literal `$`. An unbraced reference takes the
//! longest run of letters, digits and `_`, so `$1_total` refers to a group named `1_total`; it
//! is refused at load, with the hint to write `${1}_total`. Any reference to a group that does
//! not exist is refused at load.
//!
//! **Results**: the expanded name is sanitised like an unmapped name
//! ([`crate::naming::sanitize_name_into`]); label names are sanitised (and reserved ones
//! renamed) at load; label values are kept verbatim. A name that expands to the empty string
//! gives [`Match::Invalid`]: the sample cannot be named (statsd_exporter drops it too).
//!
//! **What the caller applies** from [`RuleSet::rule`] (the lookup only names the series):
//! `honor_labels` (a sample's tags win over the rule's labels of the same name; by default the
//! rule's labels win), `observer_type`, `buckets`, `native_histogram_bucket_factor`,
//! `native_histogram_max_buckets` and `quantiles` for timers, histograms and distributions, `ttl_seconds`, `scale` (multiplies every value, after a timer's milliseconds
//! become seconds, gauge deltas included) and `help`; and `history` (with `retention`): every
//! family the rule names is sampled into the history tiers like a `[[metric]]` with history
//! (registered from the ingest slow path, [`crate::history::ruled`]).
//!
//! **Types** (`match_metric_type`): `counter` (`c`), `gauge` (`g`), `observer` or `timer`
//! (`ms`, `h`, `d`), `set` (`s`); without it a rule applies to every type.
//!
//! **Speed**: glob rules sit in one segment trie per metric class (`rules/glob.rs`), so a
//! lookup costs a few hash probes per segment whatever the number of rules; regex rules are
//! tried in order (screened by one [`RegexSet`] pass when there are 8 or more) only up to the
//! best glob match. [`RuleCache`], one per receive thread, makes a repeated name cost one hash
//! lookup; it holds at most its capacity and evicts the older half of its entries at a time.

mod cache;
mod glob;
mod rule_de;
mod template;

pub use cache::RuleCache;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regex::{Regex, RegexSet};

use serde::Deserialize;

use crate::naming::{label_name_into, sanitize_name_into};
use crate::protocol::MetricType;
use glob::{GlobPattern, GlobTrie};
use template::{Captured, Groups, Place, Template};

/// How `match` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchType {
    #[default]
    Glob,
    Regex,
}

/// The StatsD types a rule applies to (`match_metric_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricClass {
    /// `c`
    Counter,
    /// `g`
    Gauge,
    /// `ms`, `h` and `d` (also spelled `timer`, as statsd_exporter accepts)
    #[serde(alias = "timer")]
    Observer,
    /// `s` (statsd_exporter has no sets)
    Set,
}

impl MetricClass {
    pub const ALL: [MetricClass; 4] = [
        MetricClass::Counter,
        MetricClass::Gauge,
        MetricClass::Observer,
        MetricClass::Set,
    ];

    pub fn of(metric_type: MetricType) -> MetricClass {
        match metric_type {
            MetricType::Counter => MetricClass::Counter,
            MetricType::Gauge => MetricClass::Gauge,
            MetricType::Timer | MetricType::Histogram | MetricType::Distribution => {
                MetricClass::Observer
            }
            MetricType::Set => MetricClass::Set,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricClass::Counter => "counter",
            MetricClass::Gauge => "gauge",
            MetricClass::Observer => "observer",
            MetricClass::Set => "set",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Rename and relabel.
    #[default]
    Map,
    /// Discard the sample.
    Drop,
}

/// What a timer, histogram or distribution becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObserverType {
    Histogram,
    Summary,
}

impl ObserverType {
    pub fn as_str(self) -> &'static str {
        match self {
            ObserverType::Histogram => "histogram",
            ObserverType::Summary => "summary",
        }
    }
}

/// One `[[mapping]]` table. Deserialising checks the whole rule (the pattern compiles, every
/// template reference exists, the options fit the rule), so a bad rule is refused with a line
/// inside it (options checked on their own, such as `buckets`, with their own line).
#[derive(Debug, Clone, PartialEq)]
pub struct MappingRule {
    /// `match`: the glob or regex.
    pub pattern: String,
    pub match_type: MatchType,
    /// `None`: every type.
    pub match_metric_type: Option<MetricClass>,
    /// The Prometheus name template; required unless `action = "drop"`.
    pub name: Option<String>,
    /// Label name → value template.
    pub labels: BTreeMap<String, String>,
    pub action: Action,
    /// Tags of the sample win over the rule's labels of the same name.
    pub honor_labels: bool,
    /// `None`: tallyd's default (histogram).
    pub observer_type: Option<ObserverType>,
    pub buckets: Option<Vec<f64>>,
    /// Native histogram buckets: 0 for none, above 1 for on (statsd_exporter's key).
    pub native_histogram_bucket_factor: Option<f64>,
    pub native_histogram_max_buckets: Option<u32>,
    pub quantiles: Option<Vec<f64>>,
    /// Idle time after which a series of this rule is removed; `0` = never.
    pub ttl_seconds: Option<f64>,
    /// Multiplies every value.
    pub scale: Option<f64>,
    pub help: Option<String>,
    /// Sample the families this rule names into the history tiers (`[[metric]]`'s key).
    pub history: Option<bool>,
    /// With `history`: keep them at most this long (`30d`), as `[[metric]]`'s `retention`.
    pub retention: Option<String>,
}

impl MappingRule {
    /// A glob rule mapping to `name`, everything else default.
    pub fn new(pattern: impl Into<String>, name: impl Into<String>) -> MappingRule {
        MappingRule {
            pattern: pattern.into(),
            match_type: MatchType::Glob,
            match_metric_type: None,
            name: Some(name.into()),
            labels: BTreeMap::new(),
            action: Action::Map,
            honor_labels: false,
            observer_type: None,
            buckets: None,
            native_histogram_bucket_factor: None,
            native_histogram_max_buckets: None,
            quantiles: None,
            ttl_seconds: None,
            scale: None,
            help: None,
            history: None,
            retention: None,
        }
    }

    /// `ttl_seconds` as a duration; `None` when unset or 0 (never expires).
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl_seconds
            .filter(|s| *s > 0.0)
            .map(Duration::from_secs_f64)
    }

    /// Whether the rule applies to samples of `class`.
    pub fn applies_to(&self, class: MetricClass) -> bool {
        self.match_metric_type.is_none_or(|c| c == class)
    }
}

/// The result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// No rule matched: export the name sanitised, with the tags as labels.
    NoMatch,
    /// Rule `rule` (`action = "drop"`) matched: discard the sample.
    Drop { rule: usize },
    /// A rule mapped the name.
    Mapped(MappedMetric),
    /// Rule `rule` matched but its name expanded to the empty string: discard the sample (and
    /// count it; statsd_exporter drops it too).
    Invalid { rule: usize },
}

/// The Prometheus identity a rule gave a StatsD name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedMetric {
    /// Sanitised with [`crate::naming::sanitize_name_into`].
    pub name: String,
    /// The rule's labels: names sanitised (reserved ones renamed `exported_…`), sorted by name;
    /// values verbatim (possibly empty). Merging with the sample's tags is the caller's, by
    /// the rule's `honor_labels`.
    pub labels: Vec<(String, String)>,
    /// Index of the rule in the config, for [`RuleSet::rule`].
    pub rule: usize,
}

/// A rule that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Index of the rule in the list.
    pub index: usize,
    pub pattern: String,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mapping rule {} (match = {:?}): {}",
            self.index, self.pattern, self.message
        )
    }
}

impl std::error::Error for RuleError {}

// ---------------------------------------------------------------------------------------------
// Compiling one rule

enum Matcher {
    Glob(GlobPattern),
    Regex(Regex),
}

enum Name {
    /// No capture in the template: sanitised once.
    Static(String),
    Template(Template),
}

enum Output {
    Drop,
    Map {
        name: Name,
        labels: Box<[(String, Template)]>,
    },
}

struct Compiled {
    matcher: Matcher,
    output: Output,
}

impl Output {
    fn uses_groups(&self) -> bool {
        match self {
            Output::Drop => false,
            Output::Map { name, labels } => {
                matches!(name, Name::Template(_))
                    || labels.iter().any(|(_, t)| t.as_static().is_none())
            }
        }
    }
}

fn compile(rule: &MappingRule) -> Result<Compiled, String> {
    let named: Vec<(String, usize)>;
    let (matcher, groups) = match rule.match_type {
        MatchType::Glob => {
            let pattern = GlobPattern::parse(&rule.pattern)?;
            let count = pattern.stars;
            (
                Matcher::Glob(pattern),
                Groups {
                    count,
                    names: &[],
                    glob: true,
                },
            )
        }
        MatchType::Regex => {
            if rule.pattern.is_empty() {
                return Err("the pattern is empty".into());
            }
            let regex = Regex::new(&rule.pattern).map_err(|e| format!("invalid regex: {e}"))?;
            named = regex
                .capture_names()
                .enumerate()
                .filter_map(|(i, name)| name.map(|n| (n.to_string(), i)))
                .collect();
            let count = regex.captures_len() - 1;
            (
                Matcher::Regex(regex),
                Groups {
                    count,
                    names: &named,
                    glob: false,
                },
            )
        }
    };
    check_options(rule)?;
    let output = match rule.action {
        Action::Drop => {
            let pointless = [
                ("name", rule.name.is_some()),
                ("labels", !rule.labels.is_empty()),
                ("honor_labels", rule.honor_labels),
                ("observer_type", rule.observer_type.is_some()),
                ("buckets", rule.buckets.is_some()),
                (
                    "native_histogram_bucket_factor",
                    rule.native_histogram_bucket_factor.is_some(),
                ),
                (
                    "native_histogram_max_buckets",
                    rule.native_histogram_max_buckets.is_some(),
                ),
                ("quantiles", rule.quantiles.is_some()),
                ("ttl_seconds", rule.ttl_seconds.is_some()),
                ("scale", rule.scale.is_some()),
                ("help", rule.help.is_some()),
                ("history", rule.history.is_some()),
                ("retention", rule.retention.is_some()),
            ];
            if let Some((key, _)) = pointless.iter().find(|(_, set)| *set) {
                return Err(format!("`{key}` has no effect with action = \"drop\""));
            }
            Output::Drop
        }
        Action::Map => {
            let Some(name) = &rule.name else {
                return Err("a rule needs a `name` (or action = \"drop\")".into());
            };
            let template = Template::parse(name, groups, Place::Name)?;
            let name = match template.as_static() {
                Some("") => return Err("the name is empty".into()),
                Some(text) => {
                    let mut sanitised = String::with_capacity(text.len() + 1);
                    sanitize_name_into(text, &mut sanitised);
                    Name::Static(sanitised)
                }
                None => Name::Template(template),
            };
            let mut labels: Vec<(String, Template)> = Vec::with_capacity(rule.labels.len());
            let mut keys: Vec<&str> = Vec::with_capacity(rule.labels.len());
            for (key, value) in &rule.labels {
                if key.is_empty() {
                    return Err("a label name is empty".into());
                }
                let mut label = String::with_capacity(key.len());
                label_name_into(key, &mut label);
                if let Some(i) = labels.iter().position(|(l, _)| *l == label) {
                    return Err(format!(
                        "labels {:?} and {key:?} both become {label:?} once sanitised",
                        keys[i]
                    ));
                }
                labels.push((label, Template::parse(value, groups, Place::Label)?));
                keys.push(key);
            }
            labels.sort_by(|a, b| a.0.cmp(&b.0));
            Output::Map {
                name,
                labels: labels.into(),
            }
        }
    };
    Ok(Compiled { matcher, output })
}

fn check_options(rule: &MappingRule) -> Result<(), String> {
    if let Some(buckets) = &rule.buckets {
        crate::validate::buckets(buckets)?;
    }
    if let Some(quantiles) = &rule.quantiles {
        crate::validate::quantiles(quantiles)?;
    }
    if let Some(factor) = rule.native_histogram_bucket_factor {
        crate::validate::native_bucket_factor(factor)?;
    }
    if let Some(max) = rule.native_histogram_max_buckets {
        crate::validate::native_max_buckets(max)?;
    }
    let native = rule.native_histogram_bucket_factor.is_some()
        || rule.native_histogram_max_buckets.is_some();
    if let Some(ttl) = rule.ttl_seconds {
        crate::validate::ttl_seconds(ttl)?;
    }
    if let Some(scale) = rule.scale {
        check_scale(scale)?;
    }
    let observer_options = [
        ("observer_type", rule.observer_type.is_some()),
        ("buckets", rule.buckets.is_some()),
        ("native_histogram_bucket_factor", native),
        ("quantiles", rule.quantiles.is_some()),
    ];
    if let Some(class) = rule
        .match_metric_type
        .filter(|c| *c != MetricClass::Observer)
        && let Some((key, _)) = observer_options.iter().find(|(_, set)| *set)
    {
        return Err(format!(
            "`{key}` applies to timers, histograms and distributions, but the rule matches \
             only match_metric_type = \"{}\"",
            class.as_str()
        ));
    }
    match rule.observer_type {
        Some(ObserverType::Summary) if rule.buckets.is_some() => {
            Err("`buckets` has no effect with observer_type = \"summary\"".into())
        }
        Some(ObserverType::Summary) if native => {
            Err("native histogram keys have no effect with observer_type = \"summary\"".into())
        }
        Some(ObserverType::Histogram) if rule.quantiles.is_some() => {
            Err("`quantiles` has no effect with observer_type = \"histogram\"".into())
        }
        _ => Ok(()),
    }
}

fn check_scale(scale: f64) -> Result<(), String> {
    if scale.is_finite() {
        Ok(())
    } else {
        Err(format!("must be a finite number, got {scale}"))
    }
}

// ---------------------------------------------------------------------------------------------
// The rule set

/// Regex rules at or above this count are screened with one [`RegexSet`] pass per lookup.
const REGEX_SET_THRESHOLD: usize = 8;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct RegexRule {
    rule: u32,
    class: Option<MetricClass>,
    regex: Regex,
    /// The rule's output refers to a group: match with captures (slower), else `is_match`.
    captures: bool,
}

/// The compiled rules of one config; immutable, shared by every receive thread (wrap it in an
/// `Arc`; a reload builds a new one).
pub struct RuleSet {
    id: u64,
    rules: Vec<MappingRule>,
    outputs: Vec<Output>,
    globs: [GlobTrie; 4],
    regexes: Vec<RegexRule>,
    regex_set: Option<RegexSet>,
    /// Per rule, its `history` option checked: `Some(retention)` when it asks for history.
    histories: Vec<Option<Option<i64>>>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("id", &self.id)
            .field("rules", &self.rules.len())
            .field("regexes", &self.regexes.len())
            .finish()
    }
}

impl Default for RuleSet {
    fn default() -> RuleSet {
        RuleSet::empty()
    }
}

struct GlobCaptured<'a> {
    name: &'a str,
    captures: &'a glob::Captures,
}

impl Captured for GlobCaptured<'_> {
    fn group(&self, index: usize) -> &str {
        if index == 0 {
            self.name
        } else {
            self.captures.get(self.name, index)
        }
    }
}

/// For outputs that read no group.
struct NoGroups;

impl Captured for NoGroups {
    fn group(&self, _: usize) -> &str {
        ""
    }
}

struct RegexCaptured<'a>(regex::Captures<'a>);

impl Captured for RegexCaptured<'_> {
    fn group(&self, index: usize) -> &str {
        self.0.get(index).map_or("", |m| m.as_str())
    }
}

impl RuleSet {
    /// No rules: every lookup is [`Match::NoMatch`].
    pub fn empty() -> RuleSet {
        RuleSet {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            rules: Vec::new(),
            outputs: Vec::new(),
            globs: std::array::from_fn(|_| GlobTrie::new()),
            regexes: Vec::new(),
            regex_set: None,
            histories: Vec::new(),
        }
    }

    /// Compiles `rules` (in file order).
    pub fn new(rules: &[MappingRule]) -> Result<RuleSet, RuleError> {
        if rules.len() >= u32::MAX as usize {
            return Err(RuleError {
                index: rules.len(),
                pattern: String::new(),
                message: "too many rules".into(),
            });
        }
        let mut set = RuleSet::empty();
        for (index, rule) in rules.iter().enumerate() {
            let compiled = compile(rule).map_err(|message| RuleError {
                index,
                pattern: rule.pattern.clone(),
                message,
            })?;
            // Checked here rather than while deserialising, so the error names the rule's
            // index (the line toml gives is that of one of its keys only).
            let history =
                crate::config::history_retention_ms(rule.history, rule.retention.as_deref())
                    .map_err(|message| RuleError {
                        index,
                        pattern: rule.pattern.clone(),
                        message,
                    })?;
            set.histories.push(history);
            let id = index as u32;
            match compiled.matcher {
                Matcher::Glob(pattern) => {
                    for class in MetricClass::ALL {
                        if rule.applies_to(class) {
                            set.globs[class.index()].insert(id, &pattern);
                        }
                    }
                }
                Matcher::Regex(regex) => set.regexes.push(RegexRule {
                    rule: id,
                    class: rule.match_metric_type,
                    regex,
                    captures: compiled.output.uses_groups(),
                }),
            }
            set.outputs.push(compiled.output);
        }
        if set.regexes.len() >= REGEX_SET_THRESHOLD {
            // Only a speed-up: on failure (size limits) the rules are tried one by one.
            set.regex_set = RegexSet::new(set.regexes.iter().map(|r| r.regex.as_str())).ok();
        }
        set.rules = rules.to_vec();
        Ok(set)
    }

    /// Distinguishes rule sets (a reload builds a new one), for caches.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[MappingRule] {
        &self.rules
    }

    /// The rule a [`Match`] names, for its options.
    pub fn rule(&self, index: usize) -> &MappingRule {
        &self.rules[index]
    }

    /// Whether rule `index` keeps history for the families it names: `Some(retention)` (`None`
    /// inside for each tier's own), checked at load.
    pub fn history(&self, index: usize) -> Option<Option<i64>> {
        self.histories.get(index).copied().flatten()
    }

    /// The first rule (in file order) that matches `statsd_name` and fits `metric_type`.
    pub fn lookup(&self, statsd_name: &str, metric_type: MetricType) -> Match {
        self.lookup_class(statsd_name, MetricClass::of(metric_type))
    }

    /// [`RuleSet::lookup`] by metric class.
    pub fn lookup_class(&self, statsd_name: &str, class: MetricClass) -> Match {
        let glob = self.globs[class.index()].find(statsd_name, u32::MAX);
        let bound = glob.as_ref().map_or(u32::MAX, |found| found.rule);
        if let Some(found) = self.first_regex(statsd_name, class, bound) {
            return found;
        }
        match glob {
            Some(found) => self.output(
                found.rule as usize,
                &GlobCaptured {
                    name: statsd_name,
                    captures: &found.captures,
                },
            ),
            None => Match::NoMatch,
        }
    }

    /// The first regex rule before rule `bound` that fits and matches.
    fn first_regex(&self, name: &str, class: MetricClass, bound: u32) -> Option<Match> {
        if self.regexes.first().is_none_or(|r| r.rule >= bound) {
            return None;
        }
        if let Some(set) = &self.regex_set {
            return set
                .matches(name)
                .iter()
                .map(|i| &self.regexes[i])
                .take_while(|candidate| candidate.rule < bound)
                .find_map(|candidate| self.try_regex(candidate, name, class));
        }
        self.regexes
            .iter()
            .take_while(|candidate| candidate.rule < bound)
            .find_map(|candidate| self.try_regex(candidate, name, class))
    }

    fn try_regex(&self, candidate: &RegexRule, name: &str, class: MetricClass) -> Option<Match> {
        if candidate.class.is_some_and(|c| c != class) {
            return None;
        }
        let rule = candidate.rule as usize;
        // Most regex rules tried do not match: the match test (a DFA scan) is cheaper than a
        // failed search for groups, and is all a rule with a static output needs.
        if !candidate.regex.is_match(name) {
            return None;
        }
        if candidate.captures {
            let captures = candidate.regex.captures(name)?;
            Some(self.output(rule, &RegexCaptured(captures)))
        } else {
            Some(self.output(rule, &NoGroups))
        }
    }

    fn output(&self, rule: usize, captured: &impl Captured) -> Match {
        match &self.outputs[rule] {
            Output::Drop => Match::Drop { rule },
            Output::Map { name, labels } => {
                let name = match name {
                    Name::Static(name) => name.clone(),
                    Name::Template(template) => {
                        let raw = template.expand(captured);
                        if raw.is_empty() {
                            return Match::Invalid { rule };
                        }
                        let mut name = String::with_capacity(raw.len() + 1);
                        sanitize_name_into(&raw, &mut name);
                        name
                    }
                };
                let labels = labels
                    .iter()
                    .map(|(label, value)| (label.clone(), value.expand(captured)))
                    .collect();
                Match::Mapped(MappedMetric { name, labels, rule })
            }
        }
    }
}
