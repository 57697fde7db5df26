//! The mapping rules engine: matching, templates, precedence, validation and the cache.

use serde::Deserialize;
use tallyd::protocol::MetricType;
use tallyd::rules::{MappedMetric, MappingRule, Match, MetricClass, RuleCache, RuleSet};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    mapping: Vec<MappingRule>,
}

fn parse(text: &str) -> Result<Vec<MappingRule>, String> {
    toml::from_str::<File>(text)
        .map(|f| f.mapping)
        .map_err(|e| e.to_string())
}

fn rules(text: &str) -> RuleSet {
    RuleSet::new(&parse(text).unwrap()).unwrap()
}

fn parse_err(text: &str) -> String {
    parse(text).unwrap_err()
}

fn mapped(m: Match) -> MappedMetric {
    match m {
        Match::Mapped(m) => m,
        other => panic!("expected a mapping, got {other:?}"),
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const C: MetricType = MetricType::Counter;

// --- globs ---------------------------------------------------------------------------------

#[test]
fn glob_stars_capture_whole_segments() {
    let set = rules(
        r#"
        [[mapping]]
        match = "predictor.*.latency"
        name = "predictor_latency_seconds"
        labels = { model = "$1" }
        "#,
    );
    let m = mapped(set.lookup("predictor.fraud-v2.latency", MetricType::Timer));
    assert_eq!(m.name, "predictor_latency_seconds");
    assert_eq!(m.labels, labels(&[("model", "fraud-v2")]));
    assert_eq!(m.rule, 0);
}

#[test]
fn a_lone_star_matches_an_empty_segment() {
    let set = rules("[[mapping]]\nmatch = \"a.*.b\"\nname = \"ab\"\nlabels = { x = \"[$1]\" }\n");
    assert_eq!(mapped(set.lookup("a..b", C)).labels, labels(&[("x", "[]")]));
}

#[test]
fn a_star_never_crosses_a_dot() {
    let set = rules("[[mapping]]\nmatch = \"a.*.b\"\nname = \"ab\"\n");
    assert_eq!(set.lookup("a.x.y.b", C), Match::NoMatch);
    assert_eq!(set.lookup("a.x.b.c", C), Match::NoMatch);
}

#[test]
fn a_glob_matches_the_whole_name_only() {
    let set = rules("[[mapping]]\nmatch = \"api.calls\"\nname = \"calls\"\n");
    assert_eq!(set.lookup("api.calls.extra", C), Match::NoMatch);
    assert_eq!(set.lookup("my.api.calls", C), Match::NoMatch);
    assert_eq!(mapped(set.lookup("api.calls", C)).name, "calls");
}

#[test]
fn a_prefix_glob_captures_within_a_segment() {
    let set = rules(
        r#"
        [[mapping]]
        match = "api.request_*"
        name = "api_requests"
        labels = { kind = "$1" }
        "#,
    );
    assert_eq!(
        mapped(set.lookup("api.request_count", C)).labels,
        labels(&[("kind", "count")])
    );
    assert_eq!(
        mapped(set.lookup("api.request_", C)).labels,
        labels(&[("kind", "")])
    );
    assert_eq!(set.lookup("api.response_count", C), Match::NoMatch);
}

#[test]
fn a_segment_glob_can_hold_a_prefix_and_a_suffix() {
    let set = rules(
        r#"
        [[mapping]]
        match = "*.request_*_seconds"
        name = "${1}_request_seconds"
        labels = { method = "$2" }
        "#,
    );
    let m = mapped(set.lookup("checkout.request_get_seconds", MetricType::Histogram));
    assert_eq!(m.name, "checkout_request_seconds");
    assert_eq!(m.labels, labels(&[("method", "get")]));
}

#[test]
fn dollar_zero_in_a_glob_is_the_whole_name() {
    let set =
        rules("[[mapping]]\nmatch = \"legacy.*\"\nname = \"old\"\nlabels = { raw = \"$0\" }\n");
    assert_eq!(
        mapped(set.lookup("legacy.x", C)).labels,
        labels(&[("raw", "legacy.x")])
    );
}

// --- regexes -------------------------------------------------------------------------------

#[test]
fn a_regex_is_not_anchored() {
    let set = rules(
        "[[mapping]]\nmatch = 'api'\nmatch_type = \"regex\"\nname = \"x\"\nlabels = { hit = \"$0\" }\n",
    );
    let m = mapped(set.lookup("myapi.calls", C));
    assert_eq!(m.labels, labels(&[("hit", "api")]));
}

#[test]
fn regex_numbered_and_named_groups_fill_templates() {
    let set = rules(
        r#"
        [[mapping]]
        match = '^(?P<service>\w+)\.http\.(\d{3})$'
        match_type = "regex"
        name = "${1}_http_responses"
        labels = { service = "${service}", code = "$2", raw = "$0" }
        "#,
    );
    let m = mapped(set.lookup("billing.http.503", C));
    assert_eq!(m.name, "billing_http_responses");
    assert_eq!(
        m.labels,
        labels(&[
            ("code", "503"),
            ("raw", "billing.http.503"),
            ("service", "billing")
        ])
    );
}

#[test]
fn an_optional_regex_group_that_did_not_take_part_is_empty() {
    let set = rules(
        "[[mapping]]\nmatch = '^a(\\.b)?$'\nmatch_type = \"regex\"\nname = \"a\"\nlabels = { b = \"$1\" }\n",
    );
    assert_eq!(mapped(set.lookup("a", C)).labels, labels(&[("b", "")]));
}

// --- type filter, actions, precedence -------------------------------------------------------

#[test]
fn a_rule_of_another_metric_type_is_skipped() {
    let set = rules(
        r#"
        [[mapping]]
        match = "jobs.*"
        match_metric_type = "counter"
        name = "jobs_total"
        [[mapping]]
        match = "jobs.*"
        name = "jobs_other"
        "#,
    );
    assert_eq!(
        mapped(set.lookup("jobs.x", MetricType::Counter)).name,
        "jobs_total"
    );
    assert_eq!(
        mapped(set.lookup("jobs.x", MetricType::Gauge)).name,
        "jobs_other"
    );
    assert_eq!(mapped(set.lookup("jobs.x", MetricType::Timer)).rule, 1);
}

#[test]
fn observer_and_timer_match_timers_histograms_and_distributions() {
    for spelling in ["observer", "timer"] {
        let set = rules(&format!(
            "[[mapping]]\nmatch = \"t.*\"\nmatch_metric_type = \"{spelling}\"\nname = \"t\"\n"
        ));
        for t in [
            MetricType::Timer,
            MetricType::Histogram,
            MetricType::Distribution,
        ] {
            assert_eq!(mapped(set.lookup("t.x", t)).name, "t");
        }
        assert_eq!(set.lookup("t.x", MetricType::Counter), Match::NoMatch);
        assert_eq!(set.lookup("t.x", MetricType::Set), Match::NoMatch);
    }
}

#[test]
fn a_drop_rule_drops() {
    let set = rules("[[mapping]]\nmatch = \"debug.*\"\naction = \"drop\"\n");
    assert_eq!(set.lookup("debug.x", C), Match::Drop { rule: 0 });
}

#[test]
fn the_first_match_in_file_order_wins() {
    let set = rules(
        r#"
        [[mapping]]
        match = "a.b.*"
        name = "first"
        [[mapping]]
        match = "a.*.c"
        name = "second"
        [[mapping]]
        match = "a.*.*"
        action = "drop"
        "#,
    );
    assert_eq!(mapped(set.lookup("a.b.c", C)).name, "first");
    assert_eq!(mapped(set.lookup("a.x.c", C)).name, "second");
    assert_eq!(set.lookup("a.x.y", C), Match::Drop { rule: 2 });
}

#[test]
fn an_earlier_regex_beats_a_later_glob_and_an_earlier_glob_beats_a_later_regex() {
    let set = rules(
        r#"
        [[mapping]]
        match = '^x\.'
        match_type = "regex"
        name = "regex_first"
        [[mapping]]
        match = "*.y"
        name = "glob_second"
        [[mapping]]
        match = '\.y$'
        match_type = "regex"
        name = "regex_third"
        "#,
    );
    assert_eq!(mapped(set.lookup("x.y", C)).name, "regex_first");
    assert_eq!(mapped(set.lookup("z.y", C)).name, "glob_second");
}

#[test]
fn honor_labels_is_available_from_the_matching_rule() {
    let set = rules(
        "[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\nlabels = { env = \"prod\" }\nhonor_labels = true\n",
    );
    let m = mapped(set.lookup("a.x", C));
    assert!(set.rule(m.rule).honor_labels);
}

#[test]
fn per_rule_options_are_available_from_the_matching_rule() {
    let set = rules(
        r#"
        [[mapping]]
        match = "t.*"
        name = "t_seconds"
        observer_type = "histogram"
        buckets = [0.1, 1, 10]
        ttl_seconds = 300
        scale = 0.001
        help = "Time per call."
        "#,
    );
    let rule = set.rule(mapped(set.lookup("t.x", MetricType::Timer)).rule);
    assert_eq!(rule.buckets.as_deref(), Some(&[0.1, 1.0, 10.0][..]));
    assert_eq!(rule.ttl(), Some(std::time::Duration::from_secs(300)));
    assert_eq!(rule.scale, Some(0.001));
    assert_eq!(rule.help.as_deref(), Some("Time per call."));
}

#[test]
fn a_name_that_expands_to_nothing_is_invalid() {
    let set = rules("[[mapping]]\nmatch = \"*.x\"\nname = \"$1\"\n");
    assert_eq!(set.lookup(".x", C), Match::Invalid { rule: 0 });
    assert_eq!(mapped(set.lookup("a.x", C)).name, "a");
}

#[test]
fn an_unmatched_name_is_no_match() {
    let set = rules("[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\n");
    assert_eq!(set.lookup("b.c", C), Match::NoMatch);
    assert_eq!(RuleSet::empty().lookup("b.c", C), Match::NoMatch);
}

// --- names and labels ----------------------------------------------------------------------

#[test]
fn mapped_names_are_sanitised_like_unmapped_ones() {
    let set = rules("[[mapping]]\nmatch = \"*.*\"\nname = \"${1}.latency-${2}\"\n");
    assert_eq!(
        mapped(set.lookup("fraud--v2.ms", C)).name,
        "fraud_v2_latency_ms"
    );
    assert_eq!(mapped(set.lookup("9lives.x", C)).name, "_9lives_latency_x");
}

#[test]
fn a_static_name_is_sanitised_too() {
    let set = rules("[[mapping]]\nmatch = \"a\"\nname = \"my.metric\"\n");
    assert_eq!(mapped(set.lookup("a", C)).name, "my_metric");
}

#[test]
fn label_values_are_kept_verbatim() {
    let set = rules(
        "[[mapping]]\nmatch = '^model\\.(.*)$'\nmatch_type = \"regex\"\nname = \"m\"\nlabels = { model = \"$1\", note = \"a.b c-d\" }\n",
    );
    assert_eq!(
        mapped(set.lookup("model.Fraud V2/é.x", C)).labels,
        labels(&[("model", "Fraud V2/é.x"), ("note", "a.b c-d")])
    );
}

#[test]
fn label_names_are_sanitised_and_reserved_names_renamed() {
    let set = rules(
        "[[mapping]]\nmatch = \"a\"\nname = \"a\"\nlabels = { \"model.version\" = \"1\", le = \"2\", __x = \"3\" }\n",
    );
    assert_eq!(
        mapped(set.lookup("a", C)).labels,
        labels(&[
            ("exported___x", "3"),
            ("exported_le", "2"),
            ("model_version", "1")
        ])
    );
}

// --- validation ----------------------------------------------------------------------------

#[test]
fn a_bad_regex_is_refused_with_a_line_inside_the_rule() {
    let err = parse_err(
        "[[mapping]]\nmatch = \"a\"\nname = \"a\"\n\n[[mapping]]\nmatch = '(unclosed'\nmatch_type = \"regex\"\nname = \"b\"\n",
    );
    assert!(err.contains("invalid regex"), "{err}");
    assert!(err.contains("(unclosed"), "{err}");
    assert!(
        ["line 6", "line 7", "line 8"]
            .iter()
            .any(|l| err.contains(l)),
        "{err}"
    );
}

#[test]
fn a_reference_to_a_missing_group_is_refused() {
    let err = parse_err("[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\nlabels = { x = \"$9\" }\n");
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        ["line 2", "line 3", "line 4"]
            .iter()
            .any(|l| err.contains(l)),
        "{err}"
    );
}

#[test]
fn an_ambiguous_reference_is_refused_with_the_fix() {
    let err = parse_err("[[mapping]]\nmatch = \"*.x\"\nname = \"$1_total\"\n");
    assert!(err.contains("write `${1}_total`"), "{err}");
}

#[test]
fn named_groups_are_refused_in_names() {
    let err = parse_err(
        "[[mapping]]\nmatch = '(?P<svc>\\w+)'\nmatch_type = \"regex\"\nname = \"${svc}_x\"\n",
    );
    assert!(err.contains("label values only"), "{err}");
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    let err = parse_err("[[mapping]]\nmatch = \"a\"\nname = \"a\"\nlables = {}\n");
    assert!(err.contains("lables"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn a_map_rule_needs_a_name() {
    let err = parse_err("[[mapping]]\nmatch = \"a\"\n");
    assert!(err.contains("needs a `name`"), "{err}");
}

#[test]
fn options_without_effect_are_refused() {
    let err = parse_err("[[mapping]]\nmatch = \"a\"\naction = \"drop\"\nname = \"a\"\n");
    assert!(err.contains("no effect"), "{err}");
    let err = parse_err(
        "[[mapping]]\nmatch = \"a\"\nname = \"a\"\nobserver_type = \"summary\"\nbuckets = [1]\n",
    );
    assert!(err.contains("no effect"), "{err}");
    let err = parse_err(
        "[[mapping]]\nmatch = \"a\"\nname = \"a\"\nmatch_metric_type = \"counter\"\nbuckets = [1]\n",
    );
    assert!(err.contains("applies to timers"), "{err}");
}

#[test]
fn unsorted_buckets_are_refused_at_their_line() {
    let err = parse_err("[[mapping]]\nmatch = \"a\"\nname = \"a\"\nbuckets = [1, 0.5]\n");
    assert!(err.contains("1 is followed by 0.5"), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

#[test]
fn an_unknown_metric_type_is_refused() {
    let err =
        parse_err("[[mapping]]\nmatch = \"a\"\nname = \"a\"\nmatch_metric_type = \"meter\"\n");
    assert!(err.contains("meter"), "{err}");
}

#[test]
fn a_double_star_glob_is_refused() {
    let err = parse_err("[[mapping]]\nmatch = \"a.**\"\nname = \"a\"\n");
    assert!(err.contains("`**`"), "{err}");
}

#[test]
fn labels_that_collide_once_sanitised_are_refused() {
    let err = parse_err(
        "[[mapping]]\nmatch = \"a\"\nname = \"a\"\nlabels = { \"a.b\" = \"1\", a_b = \"2\" }\n",
    );
    assert!(err.contains("both become"), "{err}");
}

// --- the cache -----------------------------------------------------------------------------

#[test]
fn the_cache_answers_like_the_rules() {
    let set = rules(
        "[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\nlabels = { x = \"$1\" }\n[[mapping]]\nmatch = \"b.*\"\naction = \"drop\"\n",
    );
    let mut cache = RuleCache::new(16);
    for name in ["a.1", "b.2", "c.3", "a.1", "b.2", "c.3"] {
        for t in [MetricType::Counter, MetricType::Timer] {
            assert_eq!(*cache.lookup(&set, name, t), set.lookup(name, t), "{name}");
        }
    }
    assert_eq!(cache.len(), 6);
}

#[test]
fn the_cache_keys_on_the_metric_class() {
    let set = rules(
        "[[mapping]]\nmatch = \"a\"\nmatch_metric_type = \"counter\"\nname = \"c\"\n[[mapping]]\nmatch = \"a\"\nname = \"o\"\n",
    );
    let mut cache = RuleCache::new(16);
    assert_eq!(
        mapped(cache.lookup(&set, "a", MetricType::Counter).clone()).name,
        "c"
    );
    assert_eq!(
        mapped(cache.lookup(&set, "a", MetricType::Timer).clone()).name,
        "o"
    );
    assert_eq!(
        mapped(cache.lookup(&set, "a", MetricType::Histogram).clone()).name,
        "o"
    );
    assert_eq!(cache.len(), 2);
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let set = rules("[[mapping]]\nmatch = \"n.*\"\nname = \"n\"\nlabels = { i = \"$1\" }\n");
    let mut cache = RuleCache::new(8);
    for i in 0..1000 {
        let name = format!("n.{i}");
        let m = mapped(cache.lookup(&set, &name, C).clone());
        assert_eq!(m.labels, labels(&[("i", &i.to_string())]));
        assert!(cache.len() <= 8, "{}", cache.len());
    }
}

#[test]
fn a_name_in_steady_use_stays_cached_while_new_names_pass_through() {
    let set = rules("[[mapping]]\nmatch = \"n.*\"\nname = \"n\"\n");
    let mut cache = RuleCache::new(8);
    cache.lookup(&set, "hot", C);
    for i in 0..100 {
        cache.lookup(&set, &format!("n.{i}"), C);
        cache.lookup(&set, "hot", C);
    }
    // "hot" was looked up once per new name, so it was promoted before every rotation.
    let before = cache.len();
    cache.lookup(&set, "hot", C);
    assert_eq!(cache.len(), before);
}

#[test]
fn the_cache_forgets_answers_of_a_replaced_rule_set() {
    let old = rules("[[mapping]]\nmatch = \"a\"\nname = \"old\"\n");
    let new = rules("[[mapping]]\nmatch = \"a\"\nname = \"new\"\n");
    let mut cache = RuleCache::new(8);
    assert_eq!(mapped(cache.lookup(&old, "a", C).clone()).name, "old");
    assert_eq!(mapped(cache.lookup(&new, "a", C).clone()).name, "new");
}

// --- the trie against a straightforward reference --------------------------------------------

/// Each glob as an anchored regex (`*` lazy, so earlier stars take the least).
fn reference_regexes(rules: &[MappingRule]) -> Vec<regex::Regex> {
    rules
        .iter()
        .map(|rule| {
            let body: Vec<String> = rule
                .pattern
                .split('.')
                .map(|seg| {
                    seg.split('*')
                        .map(regex::escape)
                        .collect::<Vec<_>>()
                        .join("([^.]*?)")
                })
                .collect();
            regex::Regex::new(&format!("^{}$", body.join(r"\."))).unwrap()
        })
        .collect()
}

/// The first rule in order that fits and matches, with its captures: a linear walk.
fn reference(
    rules: &[MappingRule],
    regexes: &[regex::Regex],
    name: &str,
    class: MetricClass,
) -> Option<(usize, Vec<String>)> {
    rules
        .iter()
        .zip(regexes)
        .enumerate()
        .filter(|(_, (rule, _))| rule.applies_to(class))
        .find_map(|(i, (_, re))| {
            re.captures(name)
                .map(|c| (i, (1..c.len()).map(|g| c[g].to_string()).collect()))
        })
}

#[test]
fn the_glob_trie_agrees_with_a_linear_walk() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let pattern_segments = ["a", "b", "ab", "*", "a*", "*b", "a*b", "*a*"];
    let name_segments = ["a", "b", "ab", "", "ba", "aab", "abb", "bab"];
    let classes = [None, Some("counter"), Some("observer")];
    let mut text = String::new();
    for _ in 0..300 {
        let segments: Vec<&str> = (0..1 + next(4))
            .map(|_| pattern_segments[next(pattern_segments.len())])
            .collect();
        let pattern = segments.join(".");
        let stars = pattern.matches('*').count();
        let captured: Vec<String> = (1..=stars).map(|i| format!("c{i} = \"${i}\"")).collect();
        text.push_str(&format!(
            "[[mapping]]\nmatch = \"{pattern}\"\nname = \"r\"\nlabels = {{ {} }}\n",
            captured.join(", ")
        ));
        if let Some(class) = classes[next(classes.len())] {
            text.push_str(&format!("match_metric_type = \"{class}\"\n"));
        }
    }
    let list = parse(&text).unwrap();
    let set = RuleSet::new(&list).unwrap();
    let regexes = reference_regexes(&list);
    for _ in 0..3000 {
        let name: Vec<&str> = (0..1 + next(4))
            .map(|_| name_segments[next(name_segments.len())])
            .collect();
        let name = name.join(".");
        for (t, class) in [
            (MetricType::Counter, MetricClass::Counter),
            (MetricType::Gauge, MetricClass::Gauge),
            (MetricType::Timer, MetricClass::Observer),
        ] {
            let got = match set.lookup(&name, t) {
                Match::Mapped(m) => {
                    let mut caps: Vec<(usize, String)> = m
                        .labels
                        .iter()
                        .map(|(k, v)| (k[1..].parse().unwrap(), v.clone()))
                        .collect();
                    caps.sort();
                    Some((m.rule, caps.into_iter().map(|(_, v)| v).collect()))
                }
                Match::NoMatch => None,
                other => panic!("{other:?}"),
            };
            assert_eq!(
                got,
                reference(&list, &regexes, &name, class),
                "{name:?} as {t:?}"
            );
        }
    }
}

#[test]
fn a_rule_without_a_type_filter_applies_to_sets_too() {
    let set =
        rules("[[mapping]]\nmatch = \"users.*\"\nname = \"users\"\nlabels = { kind = \"$1\" }\n");
    assert_eq!(
        mapped(set.lookup("users.active", MetricType::Set)).labels,
        labels(&[("kind", "active")])
    );
}

#[test]
fn many_regex_rules_keep_file_order() {
    // Eight or more regex rules are screened with one RegexSet pass; the order must not change.
    let mut text = String::new();
    for i in 0..12 {
        text.push_str(&format!(
            "[[mapping]]\nmatch = 'x{i}|shared'\nmatch_type = \"regex\"\nname = \"r{i}\"\n"
        ));
    }
    text.push_str("[[mapping]]\nmatch = \"x5\"\nname = \"glob\"\n");
    let set = rules(&text);
    assert_eq!(mapped(set.lookup("shared", C)).name, "r0");
    assert_eq!(mapped(set.lookup("x7", C)).name, "r7");
    assert_eq!(mapped(set.lookup("x5", C)).name, "r5");
}

#[test]
fn a_rule_set_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<RuleSet>();
    shareable::<Match>();
}
