//! One statsd_exporter rule, and the file's `defaults`, converted to tallyd's [`MappingRule`]
//! fields.
//!
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
//! - **Native histograms.** `native_histogram_bucket_factor` and `native_histogram_max_buckets`
//!   (the rule's `histogram_options`, else the defaults', key by key) go on every histogram
//!   rule that ends up with native buckets, or that turns them off explicitly. A factor of 1 or
//!   less means off, as in client_golang (tallyd spells it 0); a cap of 0 is statsd_exporter's
//!   default, 256, which is tallyd's too.
//! - `ttl` (Go durations; a bare number is nanoseconds to Go's YAML decoder), `scale`, `help`,
//!   `honor_labels`, `action: drop`, `match_metric_type` (`timer` included) carry over.
//!
//! Options with no tallyd equivalent (summary `max_age`, `age_buckets`,
//! `buf_cap`, per-quantile error targets) and keys statsd_exporter ignores are reported as
//! warnings naming the rule (`mappings[N]`, its `match`) and the option. Input statsd_exporter
//! itself refuses (a missing `match` or `name`, an unknown `match_type`, conflicting options,
//! a glob with `*` inside a segment) is an [`ImportError`].

use crate::rules::{Action, MappingRule, MatchType, MetricClass, ObserverType};

use super::re2::re2_to_rust;
use super::templates::{SourceGroups, convert_template};
use super::toml_out::fmt_number;
use super::yaml::{
    Extra, HistogramOptions, Objective, SummaryOptions, Text, YamlDefaults, YamlMapping,
};
use super::{ImportError, PROMETHEUS_DEFAULT_BUCKETS, STATSD_EXPORTER_DEFAULT_QUANTILES};

pub(super) struct Defaults {
    pub(super) observer: Option<ObserverType>,
    pub(super) buckets: Vec<f64>,
    pub(super) quantiles: Vec<f64>,
    pub(super) match_type: MatchType,
    pub(super) glob_disable_ordering: bool,
    pub(super) ttl: f64,
    pub(super) native: Native,
}

/// Native histogram settings as statsd_exporter's `histogram_options` give them, converted.
#[derive(Clone, Copy, Default)]
pub(super) struct Native {
    /// Above 1: on with that factor; 0: off (statsd_exporter's 1 or less).
    factor: Option<f64>,
    /// `None` for statsd_exporter's default (256, tallyd's too).
    max_buckets: Option<u32>,
}

impl Native {
    fn of(context: &str, options: &HistogramOptions, warnings: &mut Vec<String>) -> Native {
        let factor = options
            .native_histogram_bucket_factor
            .map(|f| if f > 1.0 && f.is_finite() { f } else { 0.0 });
        let most = crate::registry::native::MOST_MAX_BUCKETS;
        let max_buckets = match options.native_histogram_max_buckets {
            None | Some(0) => None,
            Some(n) if n > most => {
                warnings.push(format!(
                    "{context}.native_histogram_max_buckets: {n} is more than tallyd allows \
                     per series; {most} instead"
                ));
                Some(most)
            }
            Some(n) => Some(n),
        };
        Native {
            factor,
            max_buckets,
        }
    }

    /// Each setting of `self`, else of `defaults`.
    fn or(self, defaults: Native) -> Native {
        Native {
            factor: self.factor.or(defaults.factor),
            max_buckets: self.max_buckets.or(defaults.max_buckets),
        }
    }

    fn on(&self) -> bool {
        self.factor.is_some_and(|f| f > 0.0)
    }

    /// Writes the settings onto a histogram rule: both when native buckets are on, the factor
    /// alone when they are turned off explicitly, nothing otherwise (tallyd's default is off).
    fn apply(&self, rule: &mut MappingRule) {
        rule.native_histogram_bucket_factor = self.factor;
        rule.native_histogram_max_buckets = self.max_buckets.filter(|_| self.on());
    }
}

impl Defaults {
    pub(super) fn resolve(
        d: YamlDefaults,
        warnings: &mut Vec<String>,
    ) -> Result<Defaults, ImportError> {
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
        histogram_option_warnings("defaults.histogram_options", &mut histogram.extra, warnings);
        let native = Native::of("defaults.histogram_options", &histogram, warnings);
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
            native,
        })
    }

    /// The effective observer type of a rule that sets none.
    fn observer(&self) -> ObserverType {
        self.observer.unwrap_or(ObserverType::Summary)
    }

    /// A last rule giving unmatched names statsd_exporter's defaults, when tallyd's own
    /// behaviour for unmatched names (histogram, Prometheus buckets, no expiry) differs.
    pub(super) fn catch_all(&self) -> Option<(MappingRule, Vec<String>)> {
        let observer = self.observer();
        let observer_differs = observer == ObserverType::Summary
            || self.buckets.as_slice() != PROMETHEUS_DEFAULT_BUCKETS.as_slice()
            || self.native.on();
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
                    self.native.apply(&mut rule);
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

fn histogram_option_warnings(context: &str, extra: &mut Extra, warnings: &mut Vec<String>) {
    for key in std::mem::take(extra).into_keys() {
        warnings.push(format!(
            "{context}.{key}: not a statsd_exporter option (ignored there too)"
        ));
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
pub(super) struct Converted {
    pub(super) index: usize,
    pub(super) rule: MappingRule,
    pub(super) notes: Vec<String>,
    /// The metric classes statsd_exporter's glob matcher never applied this rule to.
    pub(super) unreachable: Vec<MetricClass>,
}

pub(super) fn convert(
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
    let mut native = Native::default();
    if let Some(h) = &m.histogram_options {
        let mut extra = h.extra.clone();
        let context = format!("{context}: histogram_options");
        histogram_option_warnings(&context, &mut extra, warnings);
        native = Native::of(&context, h, warnings);
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
            native.or(defaults.native).apply(rule);
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
