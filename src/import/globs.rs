//! statsd_exporter's glob matcher, where its rule order differs from tallyd's first match in
//! file order.
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

use crate::rules::{MappingRule, MatchType, MetricClass};

use super::convert::Converted;

/// statsd_exporter's glob matcher has one tree per type: counter, gauge, observer.
pub(super) const ROOTS: [MetricClass; 3] = [
    MetricClass::Counter,
    MetricClass::Gauge,
    MetricClass::Observer,
];

/// Marks glob rules statsd_exporter never applies (for some or all types): its matcher sets a
/// rule's result only on a state it creates, so a glob whose segments are a strict prefix of an
/// earlier glob's (for a type both cover) never matches.
pub(super) fn mark_unreachable_globs(converted: &mut [Converted], warnings: &mut Vec<String>) {
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
pub(super) fn specificity_order(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<(bool, String)> {
        s.split('.')
            .map(|seg| (seg == "*", seg.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}
