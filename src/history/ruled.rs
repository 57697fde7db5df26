//! The families mapping rules with `history = true` add to history ([`RuleFamilies`]): which
//! they are, their type and retention, bounded in number.
//!
//! A rule names its families only as lines arrive (`${1}_requests` has no name before a line
//! matches), so the ingester registers a family here from its slow path, when a rule's result
//! names a series it has not cached (a new series, or a first line after a reload), never per
//! datagram. The sampler and the queries then treat the family as a `[[metric]]` with history.
//!
//! A family has no definition, so its type is the one the registry gave the series the rule
//! named (after `observer_type`): the registry refuses a series of another type under the same
//! name, so it is the family's. A StatsD set's history is its member count, sampled as a
//! gauge's value.
//!
//! The store keeps what it takes to know a family again without its lines ([`Persisted`], the
//! document of its history row, written by [`crate::history::History::resolve`]): its type, its
//! buckets and the StatsD name and class it was named from. A restarted daemon puts back
//! ([`RuleFamilies::restore`]) each family whose rule still names it with history, so its stored
//! history answers queries, lists and exports before any new line arrives.
//!
//! A templated rule could name families without end: past [`MAX_RULE_FAMILIES`] a new one is
//! refused (its series are still recorded, without history) and counted by reason in
//! `tallyd_history_rule_families_refused_total`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::registry::Kind;
use crate::rules::{Match, MetricClass, RuleSet};
use crate::telemetry::SelfMetric;

/// Most families the mapping rules may add to history.
pub const MAX_RULE_FAMILIES: usize = 10_000;

/// What queries need of a family a rule keeps history for.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleFamily {
    pub kind: Kind,
    /// The rule's `retention` in ms, if it sets one.
    pub retention: Option<i64>,
    /// The rule's histogram buckets, if it sets some (quantiles are read from them).
    pub buckets: Option<Arc<[f64]>>,
}

/// One family a rule keeps history for.
#[derive(Clone, Debug, PartialEq)]
struct Ruled {
    family: RuleFamily,
    /// A StatsD name and class the rule named it from, to ask a reloaded rule set again.
    statsd_name: Box<str>,
    class: MetricClass,
    /// Whether the store's row holds this very [`Persisted`] document.
    persisted: bool,
}

impl Ruled {
    fn persisted(&self) -> Persisted {
        Persisted {
            kind: self.family.kind,
            buckets: self.family.buckets.as_deref().map(<[f64]>::to_vec),
            statsd_name: self.statsd_name.to_string(),
            class: self.class,
        }
    }
}

/// What the store keeps of a family a rule keeps history for: the document of its history row,
/// as `{"rule": {...}}` (a `[[metric]]`'s row holds `{}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Persisted {
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<f64>>,
    pub statsd_name: String,
    pub class: MetricClass,
}

#[derive(Serialize, Deserialize)]
struct Document {
    rule: Persisted,
}

impl Persisted {
    /// The history row's document.
    pub fn document(&self) -> String {
        let document = Document { rule: self.clone() };
        serde_json::to_string(&document).expect("a rule family's document serialises")
    }

    /// The rule family a history row's document describes; `None` for a `[[metric]]`'s row
    /// (or one a newer tallyd wrote in another shape).
    pub fn of_document(document: &str) -> Option<Persisted> {
        serde_json::from_str::<Document>(document)
            .ok()
            .map(|d| d.rule)
    }
}

/// The families mapping rules added to history; shared by the ingesters (which add), the
/// sampler and the queries (which read).
#[derive(Debug, Default)]
pub struct RuleFamilies {
    families: RwLock<HashMap<String, Ruled>>,
    /// Families refused because [`MAX_RULE_FAMILIES`] were kept.
    refused_limit: AtomicU64,
}

/// A family to add, as the ingester knows it when it resolves a new series.
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    pub family: &'a str,
    pub kind: Kind,
    pub retention: Option<i64>,
    pub buckets: Option<&'a Arc<[f64]>>,
    pub statsd_name: &'a str,
    pub class: MetricClass,
}

impl RuleFamilies {
    /// Keeps history for `named.family` from the sampler's next tick on; refused (and counted)
    /// when [`MAX_RULE_FAMILIES`] other families are kept. Cheap when the family is known: a
    /// shared lock and one hash lookup.
    pub fn add(&self, named: Named<'_>) {
        let family = || RuleFamily {
            kind: named.kind,
            retention: named.retention,
            buckets: named.buckets.cloned(),
        };
        let same = |known: &Ruled| {
            let known = &known.family;
            known.kind == named.kind
                && known.retention == named.retention
                && known.buckets.as_ref() == named.buckets
        };
        if self.families.read().get(named.family).is_some_and(same) {
            return;
        }
        let mut families = self.families.write();
        let full = families.len() >= MAX_RULE_FAMILIES;
        match families.get_mut(named.family) {
            // The family came back under another type (its series expired), or a reload
            // changed the rule's options.
            Some(known) => {
                known.family = family();
                known.persisted = false;
            }
            None if full => {
                self.refused_limit.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                families.insert(
                    named.family.to_owned(),
                    Ruled {
                        family: family(),
                        statsd_name: named.statsd_name.into(),
                        class: named.class,
                        persisted: false,
                    },
                );
            }
        }
    }

    /// A family a rule keeps history for.
    pub fn get(&self, family: &str) -> Option<RuleFamily> {
        (self.families.read().get(family)).map(|ruled| ruled.family.clone())
    }

    /// Every family kept, with its own retention.
    pub fn families(&self) -> Vec<(String, Option<i64>)> {
        (self.families.read().iter())
            .map(|(family, ruled)| (family.clone(), ruled.family.retention))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.families.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// After a reload: keeps the families the new `rules` still name with history, asking
    /// them with the StatsD name each family was added from, and forgets the others, so their
    /// sampling stops at the next tick (their stored rows stay until their tiers' retention).
    /// A family the new rules name only from other StatsD names comes back with their next
    /// line (the ingesters resolve every series again after a reload).
    pub fn rules_replaced(&self, rules: &RuleSet) {
        self.families.write().retain(|family, ruled| {
            match still_named(rules, family, &ruled.statsd_name, ruled.class) {
                Some(retention) => {
                    ruled.family.retention = retention;
                    true
                }
                None => false,
            }
        });
    }

    /// At start: puts back `family` as its history row's `document` describes it, when `rules`
    /// still name it with history from the StatsD name it was named from (and no line has
    /// added it already, nor [`MAX_RULE_FAMILIES`] others). Answers whether it did.
    pub fn restore(&self, family: &str, document: &str, rules: &RuleSet) -> bool {
        let Some(persisted) = Persisted::of_document(document) else {
            return false;
        };
        let Some(retention) = still_named(rules, family, &persisted.statsd_name, persisted.class)
        else {
            return false;
        };
        let mut families = self.families.write();
        if families.contains_key(family) || families.len() >= MAX_RULE_FAMILIES {
            return false;
        }
        families.insert(
            family.to_owned(),
            Ruled {
                family: RuleFamily {
                    kind: persisted.kind,
                    retention,
                    buckets: persisted.buckets.map(Arc::from),
                },
                statsd_name: persisted.statsd_name.into(),
                class: persisted.class,
                persisted: true,
            },
        );
        true
    }

    /// The families whose store rows do not hold their [`Persisted`] document yet, with it.
    pub fn unpersisted(&self) -> Vec<(String, Persisted)> {
        (self.families.read().iter())
            .filter(|(_, ruled)| !ruled.persisted)
            .map(|(family, ruled)| (family.clone(), ruled.persisted()))
            .collect()
    }

    /// The store row of `family` holds `written` now: unless the family changed meanwhile, its
    /// document is not written again.
    pub fn persisted(&self, family: &str, written: &Persisted) {
        if let Some(ruled) = self.families.write().get_mut(family)
            && ruled.persisted() == *written
        {
            ruled.persisted = true;
        }
    }

    /// `tallyd_history_rule_families` and `tallyd_history_rule_families_refused_total`.
    pub fn self_metrics(&self) -> [SelfMetric; 2] {
        [
            SelfMetric {
                name: "tallyd_history_rule_families",
                help: "Families sampled into history because a mapping rule with history = \
                       true named them.",
                kind: Kind::Gauge,
                label: None,
                samples: vec![(String::new(), self.len() as f64)],
            },
            SelfMetric {
                name: "tallyd_history_rule_families_refused",
                help: "Families a mapping rule with history = true named that history did not \
                       take, by reason (limit: 10,000 such families were kept); their series \
                       are recorded without history.",
                kind: Kind::Counter,
                label: Some("reason"),
                samples: vec![(
                    "limit".to_owned(),
                    self.refused_limit.load(Ordering::Relaxed) as f64,
                )],
            },
        ]
    }
}

/// `Some(retention)` when `rules` map `statsd_name` (of `class`) to `family` by a rule with
/// history.
fn still_named(
    rules: &RuleSet,
    family: &str,
    statsd_name: &str,
    class: MetricClass,
) -> Option<Option<i64>> {
    let Match::Mapped(mapped) = rules.lookup_class(statsd_name, class) else {
        return None;
    };
    (mapped.name == *family)
        .then(|| rules.history(mapped.rule))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::MappingRule;

    fn named(family: &str, statsd_name: &'static str) -> Named<'static> {
        Named {
            family: Box::leak(family.to_owned().into_boxed_str()),
            kind: Kind::Counter,
            retention: None,
            buckets: None,
            statsd_name,
            class: MetricClass::Counter,
        }
    }

    #[test]
    fn families_past_the_limit_are_refused_and_counted() {
        let families = RuleFamilies::default();
        for i in 0..MAX_RULE_FAMILIES {
            families.add(named(&format!("f{i}_requests"), "x"));
        }
        assert_eq!(families.len(), MAX_RULE_FAMILIES);
        families.add(named("one_more_requests", "x"));
        families.add(named("one_more_requests", "x"));
        // A family already kept is not refused.
        families.add(named("f7_requests", "x"));
        assert_eq!(families.len(), MAX_RULE_FAMILIES);
        assert_eq!(families.get("one_more_requests"), None);
        assert_eq!(families.refused_limit.load(Ordering::Relaxed), 2);
        let [_, refused] = families.self_metrics();
        assert_eq!(refused.samples, [("limit".to_owned(), 2.0)]);
    }

    #[test]
    fn a_reload_keeps_the_families_its_rules_still_name_with_history() {
        let rule =
            |pattern: &str, name: &str, history: bool, retention: Option<&str>| MappingRule {
                history: Some(history),
                retention: retention.map(str::to_owned),
                ..MappingRule::new(pattern, name)
            };
        let families = RuleFamilies::default();
        families.add(named("api_requests", "api.requests"));
        families.add(named("web_requests", "web.requests"));
        families.add(named("db_requests", "db.requests"));
        let rules = RuleSet::new(&[
            rule("api.*", "api_${1}", true, Some("2d")),
            rule("web.*", "web_${1}", false, None),
            rule("db.*", "queries", true, None),
        ])
        .unwrap();
        families.rules_replaced(&rules);
        // web's rule dropped history; db's names another family now.
        assert_eq!(
            families.families(),
            [("api_requests".to_owned(), Some(2 * 86_400_000))]
        );
        assert_eq!(
            families.get("api_requests"),
            Some(RuleFamily {
                kind: Kind::Counter,
                retention: Some(2 * 86_400_000),
                buckets: None
            })
        );
    }

    #[test]
    fn a_restart_puts_back_the_families_its_rules_still_name_with_history() {
        let rule = |pattern: &str, name: &str, history: bool| MappingRule {
            history: Some(history),
            ..MappingRule::new(pattern, name)
        };
        let before = RuleFamilies::default();
        before.add(Named {
            kind: Kind::Histogram,
            buckets: Some(&Arc::from(vec![0.1, 0.5])),
            ..named("api_wait", "api.wait")
        });
        before.add(named("web_requests", "web.requests"));
        let mut documents = before.unpersisted();
        documents.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(documents.len(), 2);
        // Written once: the store holds them now.
        for (family, document) in &documents {
            before.persisted(family, document);
        }
        assert!(before.unpersisted().is_empty());
        let text = documents[0].1.document();
        assert_eq!(
            text,
            r#"{"rule":{"kind":"histogram","buckets":[0.1,0.5],"statsdName":"api.wait","class":"counter"}}"#
        );
        // A `[[metric]]`'s row holds `{}`: no rule family.
        assert_eq!(Persisted::of_document("{}"), None);

        let rules = RuleSet::new(&[
            rule("api.*", "api_${1}", true),
            rule("web.*", "web_${1}", false),
        ])
        .unwrap();
        let after = RuleFamilies::default();
        assert!(after.restore("api_wait", &text, &rules));
        assert!(!after.restore("web_requests", &documents[1].1.document(), &rules));
        assert!(!after.restore("queue_depth", "{}", &rules));
        assert_eq!(
            after.get("api_wait"),
            Some(RuleFamily {
                kind: Kind::Histogram,
                retention: None,
                buckets: Some(Arc::from(vec![0.1, 0.5])),
            })
        );
        assert_eq!(after.len(), 1);
        // Put back as the store holds it: not written again, until it changes.
        assert!(after.unpersisted().is_empty());
        after.add(named("api_wait", "api.wait"));
        assert_eq!(after.unpersisted()[0].1.kind, Kind::Counter);
    }
}
