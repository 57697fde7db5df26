//! `import-mapping`: statsd_exporter mapping files (tests/fixtures/mappings/) convert to tallyd
//! TOML that loads, and the converted rules name series as statsd_exporter v0.30.0 would. The
//! expected names and labels are written by hand from statsd_exporter's semantics (DESIGN.md §3).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tallyd::config::Settings;
use tallyd::import::{ImportError, Imported, import_mapping};
use tallyd::protocol::MetricType;
use tallyd::rules::{MappingRule, Match, MetricClass, ObserverType, RuleSet};

const C: MetricType = MetricType::Counter;
const G: MetricType = MetricType::Gauge;
const MS: MetricType = MetricType::Timer;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mappings")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingOnly {
    #[serde(default)]
    mapping: Vec<MappingRule>,
}

/// Converts a fixture and checks the output is a config that loads: only `[[mapping]]` tables
/// (and comments), each a valid rule, the same rules `Imported::rules` lists.
fn import(fixture: &str) -> (Imported, RuleSet) {
    let yaml = std::fs::read_to_string(fixtures().join(fixture)).unwrap();
    let imported = import_mapping(&yaml).unwrap_or_else(|e| panic!("{fixture}: {e}"));
    let text = &imported.toml;
    let table: toml::Table =
        toml::from_str(text).unwrap_or_else(|e| panic!("{fixture}:\n{e}\n{text}"));
    assert!(
        table.keys().all(|k| k == "mapping"),
        "{fixture}: unexpected keys {:?}",
        table.keys().collect::<Vec<_>>()
    );
    let parsed = toml::from_str::<MappingOnly>(text)
        .unwrap_or_else(|e| panic!("{fixture}:\n{e}\n{text}"))
        .mapping;
    assert_eq!(
        parsed, imported.rules,
        "{fixture}: the TOML and Imported::rules differ"
    );
    if let Err(e) = Settings::parse(text, Path::new(fixture)) {
        panic!("{fixture}: {e}");
    }
    let set = RuleSet::new(&parsed).unwrap();
    (imported, set)
}

#[track_caller]
fn mapped(set: &RuleSet, name: &str, t: MetricType, expected: &str, labels: &[(&str, &str)]) {
    match set.lookup(name, t) {
        Match::Mapped(m) => {
            let want: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(
                (m.name.as_str(), &m.labels),
                (expected, &want),
                "{name} ({t:?})"
            );
        }
        other => panic!("{name} ({t:?}): expected {expected}, got {other:?}"),
    }
}

#[track_caller]
fn rule_of<'a>(set: &'a RuleSet, name: &str, t: MetricType) -> &'a MappingRule {
    match set.lookup(name, t) {
        Match::Mapped(m) => set.rule(m.rule),
        other => panic!("{name}: {other:?}"),
    }
}

#[track_caller]
fn warned(imported: &Imported, parts: &[&str]) {
    assert!(
        imported
            .warnings
            .iter()
            .any(|w| parts.iter().all(|p| w.contains(p))),
        "no warning with {parts:?} in {:#?}",
        imported.warnings
    );
}

const PROMETHEUS_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[test]
fn every_fixture_converts_to_a_config_that_loads() {
    let mut count = 0;
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yml") {
            import(path.file_name().unwrap().to_str().unwrap());
            count += 1;
        }
    }
    assert!(count >= 8, "{count} fixtures");
}

#[test]
fn glob_rules_with_labels() {
    let (imported, set) = import("glob_labels.yml");
    mapped(
        &set,
        "checkout.dispatcher.FooProcessor.send.success",
        C,
        "dispatcher_events_total",
        &[
            ("action", "send"),
            ("job", "checkout_dispatcher"),
            ("outcome", "success"),
            ("processor", "FooProcessor"),
        ],
    );
    mapped(
        &set,
        "foo_product.signup.facebook.failure",
        C,
        "signup_events_total",
        &[
            ("job", "foo_product_server"),
            ("outcome", "failure"),
            ("provider", "facebook"),
        ],
    );
    mapped(
        &set,
        "predictor.fraud-v2.latency",
        MS,
        "predictor_latency_seconds",
        &[("model", "fraud-v2")],
    );
    mapped(
        &set,
        "queue.eu-west.orders.depth",
        G,
        "queue_depth",
        &[("queue", "orders"), ("region", "eu-west")],
    );
    mapped(
        &set,
        "test.web.requests.counter",
        C,
        "requests_total",
        &[("provider", "web")],
    );
    // Unmatched: the sanitised name with the tags, as statsd_exporter does.
    assert_eq!(set.lookup("test.web-server.foo.bar", C), Match::NoMatch);
    // match_metric_type: observer leaves counters unmatched.
    assert_eq!(set.lookup("predictor.fraud-v2.latency", C), Match::NoMatch);
    assert_eq!(
        rule_of(&set, "checkout.dispatcher.a.b.c", C)
            .help
            .as_deref(),
        Some("Events handled by the checkout dispatcher.")
    );
    // Timers default to summaries in statsd_exporter: kept, matched or not.
    let rule = rule_of(&set, "predictor.x.latency", MS);
    assert_eq!(rule.observer_type, Some(ObserverType::Summary));
    assert_eq!(rule.quantiles.as_deref(), Some(&[0.5, 0.9, 0.99][..]));
    mapped(&set, "some.timer", MS, "some_timer", &[]);
    assert_eq!(
        rule_of(&set, "some.timer", MS).observer_type,
        Some(ObserverType::Summary)
    );
    assert!(
        imported
            .toml
            .contains("tries every glob rule before any regex rule")
    );
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
}

#[test]
fn regex_rules_with_named_groups_come_after_every_glob() {
    let (imported, set) = import("regex_named_groups.yml");
    mapped(
        &set,
        "web01.api--http.status.503.count",
        C,
        "request_total",
        &[
            ("code", "503"),
            ("exec", "api"),
            ("hostname", "web01"),
            ("protocol", "http"),
        ],
    );
    mapped(
        &set,
        "billing.rpc.Charge.ok",
        C,
        "rpc_calls_total",
        &[
            ("call", "billing.rpc.Charge.ok"),
            ("method", "Charge"),
            ("outcome", "ok"),
            ("service", "billing"),
        ],
    );
    // The glob is last in the YAML but statsd_exporter tries it before the regexes.
    mapped(&set, "api.users", C, "api_glob", &[("rest", "users")]);
    // A regex rule still catches what no glob matches.
    mapped(
        &set,
        "api.users.list",
        C,
        "api_regex",
        &[("rest", "users.list")],
    );
    mapped(
        &set,
        "test.web.requests.counter",
        C,
        "requests_total",
        &[("provider", "web")],
    );
    // RE2's \w is ASCII-only: no match for a non-ASCII segment, as in statsd_exporter.
    assert_eq!(set.lookup("test.wéb.requests.counter", C), Match::NoMatch);
    assert!(imported.toml.contains("[0-9A-Za-z_]"), "{}", imported.toml);
}

#[test]
fn drop_rules() {
    let (_, set) = import("drop_rules.yml");
    mapped(
        &set,
        "checkout.timing.web.stripe.success",
        MS,
        "checkout_timer",
        &[
            ("job", "web_server"),
            ("outcome", "success"),
            ("provider", "stripe"),
        ],
    );
    mapped(
        &set,
        "checkout.orders.paid",
        C,
        "checkout_orders_total",
        &[("status", "paid")],
    );
    assert!(matches!(
        set.lookup("debug.cache.miss", C),
        Match::Drop { .. }
    ));
    // "." (a regex, so after every glob) drops everything else, gauges of a counter rule too.
    assert!(matches!(set.lookup("anything.else", G), Match::Drop { .. }));
    assert!(matches!(
        set.lookup("checkout.orders.paid", G),
        Match::Drop { .. }
    ));
}

#[test]
fn timers_as_histograms_with_buckets() {
    let (_, set) = import("timers_histograms.yml");
    let api = rule_of(&set, "api.search.request_duration", MS);
    assert_eq!(api.observer_type, Some(ObserverType::Histogram));
    assert_eq!(
        api.buckets.as_deref(),
        Some(&[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0][..])
    );
    assert_eq!(api.help.as_deref(), Some("API request latency."));
    let db = rule_of(&set, "db.query.select", MS);
    assert_eq!(db.buckets.as_deref(), Some(&[0.001, 0.005, 0.01, 0.05][..]));
    let worker = rule_of(&set, "worker.w1.job_time", MS);
    assert_eq!(worker.buckets.as_deref(), Some(&PROMETHEUS_BUCKETS[..]));
    let payload = rule_of(&set, "payload.upload.size", MetricType::Histogram);
    assert_eq!(
        payload.buckets.as_deref(),
        Some(&[128.0, 1024.0, 8192.0, 65536.0][..])
    );
    assert_eq!(payload.ttl_seconds, Some(600.0));
    mapped(
        &set,
        "payload.upload.size",
        MetricType::Distribution,
        "payload_bytes",
        &[("route", "upload")],
    );
    mapped(
        &set,
        "api.search.requests",
        C,
        "api_requests_total",
        &[("endpoint", "search")],
    );
    // A counter-only rule carries no observer options.
    assert_eq!(rule_of(&set, "api.search.requests", C).observer_type, None);
}

#[test]
fn the_defaults_section_applies_to_rules_and_to_unmatched_names() {
    let (imported, set) = import("defaults.yml");
    let timer = rule_of(&set, "test.timing.web.stripe.ok", MS);
    assert_eq!(timer.observer_type, Some(ObserverType::Histogram));
    assert_eq!(timer.buckets.as_deref(), Some(&[0.005, 0.05, 0.5, 5.0][..]));
    assert_eq!(timer.ttl_seconds, Some(3600.0));
    mapped(
        &set,
        "test.timing.web.stripe.ok",
        MS,
        "my_timer",
        &[
            ("job", "web_server"),
            ("outcome", "ok"),
            ("provider", "stripe"),
        ],
    );
    let other = rule_of(&set, "other.timing.a.b.c", MS);
    assert_eq!(other.observer_type, Some(ObserverType::Summary));
    assert_eq!(other.quantiles.as_deref(), Some(&[0.5, 0.99][..]));
    warned(&imported, &["mappings[1]", "error"]);
    let cache = rule_of(&set, "cache.redis.hits", C);
    assert_eq!(cache.ttl_seconds, Some(300.0));
    // Unmatched names get the defaults' ttl and, for timers, their histogram buckets.
    mapped(&set, "unmatched.thing", C, "unmatched_thing", &[]);
    let rest = rule_of(&set, "unmatched.thing", C);
    assert_eq!(rest.ttl_seconds, Some(3600.0));
    assert_eq!(rest.match_metric_type, None);
    assert_eq!(
        rule_of(&set, "unmatched.timer", MS).buckets.as_deref(),
        Some(&[0.005, 0.05, 0.5, 5.0][..])
    );
}

#[test]
fn legacy_timer_type_and_top_level_buckets() {
    let (_, set) = import("legacy_timer_type.yml");
    let timer = rule_of(&set, "legacy.a.timer", MS);
    assert_eq!(timer.observer_type, Some(ObserverType::Histogram));
    assert_eq!(timer.buckets.as_deref(), Some(&[0.1, 0.5, 1.0, 5.0][..]));
    let summary = rule_of(&set, "legacy.a.summary", MS);
    assert_eq!(summary.observer_type, Some(ObserverType::Summary));
    assert_eq!(summary.quantiles.as_deref(), Some(&[0.9][..]));
    // observer_type wins over timer_type.
    assert_eq!(
        rule_of(&set, "legacy.a.both", MS).observer_type,
        Some(ObserverType::Histogram)
    );
    // match_metric_type: timer is the observer class.
    let typed = rule_of(&set, "legacy.a.typed", MetricType::Distribution);
    assert_eq!(typed.match_metric_type, Some(MetricClass::Observer));
    assert_eq!(set.lookup("legacy.a.typed", G), Match::NoMatch);
}

#[test]
fn honor_labels_and_scale_carry_over() {
    let (_, set) = import("honor_labels.yml");
    assert!(rule_of(&set, "svc.cart.requests", C).honor_labels);
    // `honor_labels: yes` is true to Go's YAML 1.1 decoder.
    assert!(rule_of(&set, "svc.cart.errors", C).honor_labels);
    mapped(
        &set,
        "svc.cart.requests",
        C,
        "svc_requests_total",
        &[("env", "production"), ("service", "cart")],
    );
    let latency = rule_of(&set, "svc.cart.latency_ms", G);
    assert_eq!(latency.scale, Some(0.001));
    assert!(!latency.honor_labels);
    assert_eq!(latency.help.as_deref(), Some("Last observed latency."));
}

#[test]
fn statsd_exporter_quirks_are_reproduced_and_reported() {
    let (imported, set) = import("quirks.yml");
    mapped(
        &set,
        "cache.redis.hits.total",
        C,
        "cache_hits_total",
        &[("cache", "redis")],
    );
    // Never applied by statsd_exporter: commented out.
    assert_eq!(set.lookup("cache.redis.hits", C), Match::NoMatch);
    assert_eq!(
        set.lookup("cache.redis.hits", MS),
        mapped_catch_all(&set, "cache.redis.hits")
    );
    assert!(
        imported.toml.contains("# match = \"cache.*.hits\""),
        "{}",
        imported.toml
    );
    warned(
        &imported,
        &["mappings[1]", "never applies", "counter, gauge, observer"],
    );
    // Applied to gauges and timers only.
    assert_eq!(set.lookup("app.web.requests", C), Match::NoMatch);
    mapped(
        &set,
        "app.web.requests",
        G,
        "app_requests",
        &[("app", "web")],
    );
    mapped(
        &set,
        "app.web.requests",
        MS,
        "app_requests",
        &[("app", "web")],
    );
    warned(
        &imported,
        &["mappings[3]", "never applies", "counter samples"],
    );
    // "$1_total" was always empty: the rule drops.
    assert!(matches!(
        set.lookup("jobs.nightly.done", C),
        Match::Drop { .. }
    ));
    warned(
        &imported,
        &["mappings[4]", "`$1_total`", "group named `1_total`"],
    );
    // "$0" is empty in a glob.
    mapped(
        &set,
        "jobs.nightly.failed",
        C,
        "jobs_failed_total",
        &[("job", "nightly"), ("raw", "")],
    );
    warned(&imported, &["mappings[5]", "`$0`"]);
    // ttl: 30 is 30ns.
    let session = rule_of(&set, "session.login", C);
    assert!((session.ttl_seconds.unwrap() - 30e-9).abs() < 1e-15);
    warned(&imported, &["mappings[6]", "nanoseconds"]);
    warned(&imported, &["mappings[6]", "unknown_option"]);
    // Native histograms: the rule's cap, the defaults' factor.
    let uploads = rule_of(&set, "uploads.u.bytes", MS);
    assert_eq!(uploads.buckets.as_deref(), Some(&[1024.0, 1048576.0][..]));
    assert_eq!(uploads.native_histogram_bucket_factor, Some(1.1));
    assert_eq!(uploads.native_histogram_max_buckets, Some(100));
}

#[test]
fn native_histogram_keys_carry_over_key_by_key() {
    let (imported, set) = import("native_histograms.yml");
    let native = |name: &str| {
        let rule = rule_of(&set, name, MS);
        (
            rule.native_histogram_bucket_factor,
            rule.native_histogram_max_buckets,
        )
    };
    // The defaults' factor; their cap of 0 is statsd_exporter's default, 256, tallyd's too.
    assert_eq!(native("api.checkout.latency"), (Some(1.1), None));
    assert_eq!(native("db.users.latency"), (Some(0.0), None));
    assert_eq!(native("queue.jobs.wait"), (Some(2.0), Some(4096)));
    warned(
        &imported,
        &[
            "mappings[2]",
            "native_histogram_max_buckets",
            "100000",
            "4096",
        ],
    );
    // Unmatched timers get the defaults' native buckets through the catch-all rule.
    let Match::Mapped(catch_all) = mapped_catch_all(&set, "other.timer") else {
        unreachable!()
    };
    let rule = set.rule(catch_all.rule);
    assert_eq!(rule.native_histogram_bucket_factor, Some(1.1));
    assert!(
        imported
            .toml
            .contains("native_histogram_bucket_factor = 1.1\n")
    );
}

fn mapped_catch_all(set: &RuleSet, name: &str) -> Match {
    match set.lookup(name, MS) {
        m @ Match::Mapped(_) => {
            let Match::Mapped(inner) = &m else {
                unreachable!()
            };
            assert_eq!(set.rule(inner.rule).pattern, "^.*$");
            m
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn glob_disable_ordering_prefers_literal_segments() {
    let (imported, set) = import("glob_disable_ordering.yml");
    mapped(
        &set,
        "http.requests.200",
        C,
        "http_requests_total",
        &[("code", "200")],
    );
    // Literal first, left to right: http.requests.* before *.requests.errors.
    mapped(
        &set,
        "http.requests.errors",
        C,
        "http_requests_total",
        &[("code", "errors")],
    );
    mapped(
        &set,
        "api.requests.errors",
        C,
        "requests_errors_total",
        &[("service", "api")],
    );
    mapped(
        &set,
        "http.foo.bar",
        C,
        "http_generic",
        &[("a", "foo"), ("b", "bar")],
    );
    warned(&imported, &["glob_disable_ordering"]);
}

#[test]
fn an_empty_file_still_makes_unmatched_timers_summaries() {
    let imported = import_mapping("# nothing yet\n").unwrap();
    assert_eq!(imported.rules.len(), 1);
    let set = RuleSet::new(&imported.rules).unwrap();
    assert_eq!(set.lookup("a.b", C), Match::NoMatch);
    mapped(&set, "a.b", MS, "a_b", &[]);
    assert_eq!(
        rule_of(&set, "a.b", MS).observer_type,
        Some(ObserverType::Summary)
    );
}

/// `cargo test --test import -- --ignored --nocapture` shows each conversion.
#[test]
#[ignore]
fn print_conversions() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let (imported, _) = import(path.file_name().unwrap().to_str().unwrap());
        println!("==== {}\n{}", path.display(), imported.toml);
        for warning in &imported.warnings {
            println!("warning: {warning}");
        }
    }
}

#[test]
fn files_statsd_exporter_refuses_are_refused() {
    let err = |yaml: &str| import_mapping(yaml).unwrap_err();
    assert!(matches!(
        err("mappings:\n- match: a.*\n"),
        ImportError::Mapping { index: 0, .. }
    ));
    let e = err("mappings:\n- match: a.b\n  name: x\n- match: api.request_*\n  name: y\n");
    assert!(e.to_string().contains("mappings[1]"), "{e}");
    assert!(e.to_string().contains("whole segment"), "{e}");
    let e = err("mappings:\n- match: '(a'\n  match_type: regex\n  name: x\n");
    assert!(e.to_string().contains("does not compile"), "{e}");
    let e = err(
        "mappings:\n- match: a.*\n  name: x\n  observer_type: histogram\n  summary_options: {max_age: 1m}\n",
    );
    assert!(e.to_string().contains("summary_options"), "{e}");
    let e = err("mappings:\n- match: a.*\n  name: x\n  match_type: fuzzy\n");
    assert!(e.to_string().contains("fuzzy"), "{e}");
    assert!(matches!(err("mappings: {"), ImportError::Yaml(_)));
}

#[test]
fn yaml_merge_keys_are_applied() {
    let yaml = "\
timer: &timer
  observer_type: histogram
  histogram_options:
    buckets: [0.1, 1]
mappings:
- <<: *timer
  match: a.*
  name: a_seconds
  labels: {x: \"$1\"}
";
    let imported = import_mapping(yaml).unwrap();
    let set = RuleSet::new(&imported.rules).unwrap();
    mapped(&set, "a.b", MS, "a_seconds", &[("x", "b")]);
    assert_eq!(
        rule_of(&set, "a.b", MS).buckets.as_deref(),
        Some(&[0.1, 1.0][..])
    );
    // The anchor's own top-level key is not part of the format: reported.
    warned(&imported, &["`timer`"]);
}

#[test]
fn type_errors_name_their_line() {
    let err = import_mapping("mappings:\n- match: a.*\n  name: a\n  buckets: fast\n").unwrap_err();
    assert!(err.to_string().contains("line 4"), "{err}");
}
