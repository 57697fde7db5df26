//! `tallyd import-mapping`: a statsd_exporter mapping file (YAML, v0.30.0 format) becomes a
//! tallyd TOML config whose `[[mapping]]` rules serve the same series.
//!
//! The conversion reproduces statsd_exporter's mapping semantics (DESIGN.md §3,
//! "statsd_exporter mapping semantics"), one step per file, each documenting what it carries
//! over and how:
//!
//! - `yaml`: the mapping file, read as leniently as Go's yaml.v2 reads it;
//! - `convert`: each rule and the `defaults` to tallyd's rule fields (observer types, buckets,
//!   quantiles, ttl…), and a last catch-all rule when statsd_exporter treats unmatched names
//!   differently from tallyd;
//! - `templates`: name and label templates, expanding to what statsd_exporter substituted;
//! - `re2`: RE2 regexes in the `regex` crate's syntax;
//! - `globs`: rule order (every glob before any regex, `glob_disable_ordering`) and the globs
//!   statsd_exporter's matcher never applies;
//! - `toml_out`: the TOML written, with a comment per rule.
//!
//! What cannot be carried over exactly is a warning naming the rule (`mappings[N]`, its
//! `match`) and the option; input statsd_exporter itself refuses is an [`ImportError`].

mod convert;
mod globs;
mod re2;
mod templates;
mod toml_out;
mod yaml;

use std::fmt;

use crate::rules::{MappingRule, MatchType, RuleSet};

use convert::{Converted, Defaults, convert};
use globs::{mark_unreachable_globs, specificity_order};
use toml_out::{push_comment, write_header, write_rule};
use yaml::{YamlFile, read_yaml};

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
