//! Mapping-rule lookup cost (issue 3): ns per lookup for 10 and 1,000 rules, straight from the
//! [`RuleSet`] (uncached: the glob trie, then the regexes up to the best glob) and through a
//! warmed [`RuleCache`] (one hash probe). Each iteration looks up 1,024 names — hits on early
//! and late rules, regex hits and about one miss in five — so criterion's time per iteration
//! divided by 1,024 is ns per lookup (its "elem/s" is lookups per second).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Deserialize;
use tallyd::protocol::MetricType;
use tallyd::rules::{MappingRule, RuleCache, RuleSet};

#[derive(Deserialize)]
struct File {
    mapping: Vec<MappingRule>,
}

/// Ten rules like those of a small statsd_exporter file: eight globs (one a drop, one a
/// segment glob), two regexes.
const TEN_RULES: &str = r#"
[[mapping]]
match = "predictor.*.latency"
name = "predictor_latency_seconds"
labels = { model = "$1" }
[[mapping]]
match = "*.signup.*.*"
name = "signup_events_total"
labels = { provider = "$2", outcome = "$3", job = "${1}_server" }
[[mapping]]
match = "checkout.dispatcher.*.*.*"
name = "dispatcher_events_total"
labels = { processor = "$1", action = "$2", outcome = "$3" }
[[mapping]]
match = "api.request_*"
name = "api_requests"
labels = { kind = "$1" }
[[mapping]]
match = "queue.*.*.depth"
name = "queue_depth"
labels = { region = "$1", queue = "$2" }
[[mapping]]
match = "db.query.*"
name = "db_query_seconds"
labels = { query = "$1" }
[[mapping]]
match = "svc.*.errors"
match_metric_type = "counter"
name = "svc_errors_total"
labels = { service = "$1" }
[[mapping]]
match = "debug.*.*"
action = "drop"
[[mapping]]
match = '^(\w+)\.http\.(\d{3})$'
match_type = "regex"
name = "http_responses"
labels = { service = "$1", code = "$2" }
[[mapping]]
match = '(.*)--(.*)\.status'
match_type = "regex"
name = "legacy_status"
labels = { host = "$1", exec = "$2" }
"#;

const TEN_NAMES: &[&str] = &[
    "predictor.fraud-v2.latency",
    "shop.signup.google.ok",
    "checkout.dispatcher.Foo.send.success",
    "api.request_count",
    "queue.eu.orders.depth",
    "db.query.select_user",
    "svc.cart.errors",
    "debug.cache.miss",
    "billing.http.503",
    "web01--api.status",
    "unmatched.metric.name",
    "another.one",
];

/// 1,000 rules: 980 globs of four shapes (many sharing a first segment, some with a leading
/// `*`, some segment globs) and 20 regexes at the end. Also returns names that hit them.
fn thousand_rules() -> (String, Vec<String>) {
    let mut text = String::new();
    let mut names = Vec::new();
    for k in 0..980 {
        let (rule, name) = match k % 4 {
            0 => (
                format!(
                    "match = \"svc{k}.requests.*.count\"\nname = \"svc_requests_total\"\n\
                     labels = {{ svc = \"svc{k}\", code = \"$1\" }}"
                ),
                format!("svc{k}.requests.200.count"),
            ),
            1 => (
                format!(
                    "match = \"myapp.module{k}.*.latency\"\nmatch_metric_type = \"observer\"\n\
                     name = \"module_latency_seconds\"\nlabels = {{ module = \"m{k}\", op = \"$1\" }}"
                ),
                format!("myapp.module{k}.get.latency"),
            ),
            2 => (
                format!(
                    "match = \"jobs{k}.run_*.duration\"\nname = \"job_run_seconds\"\n\
                     labels = {{ job = \"j{k}\", run = \"$1\" }}"
                ),
                format!("jobs{k}.run_nightly.duration"),
            ),
            _ => (
                format!(
                    "match = \"*.host{k}.cpu.*\"\nname = \"cpu_${{2}}\"\nlabels = {{ dc = \"$1\" }}"
                ),
                format!("eu1.host{k}.cpu.user"),
            ),
        };
        text.push_str(&format!("[[mapping]]\n{rule}\n"));
        names.push(name);
    }
    for k in 0..20 {
        text.push_str(&format!(
            "[[mapping]]\nmatch = '^legacy{k}\\.(\\w+)\\.(\\d+)$'\nmatch_type = \"regex\"\n\
             name = \"legacy_$1\"\nlabels = {{ shard = \"$2\" }}\n"
        ));
        names.push(format!("legacy{k}.orders.7"));
    }
    (text, names)
}

fn compile(text: &str) -> RuleSet {
    let file: File = toml::from_str(text).unwrap();
    RuleSet::new(&file.mapping).unwrap()
}

/// 1,024 lookups: names spread over the rules, one in five a miss, all as timers or counters.
fn workload(names: &[String]) -> Vec<(String, MetricType)> {
    (0..1024usize)
        .map(|i| {
            if i % 5 == 4 {
                (format!("nomatch.{i}.some.metric"), MetricType::Counter)
            } else {
                let name = &names[(i * 7919) % names.len()];
                (name.clone(), MetricType::Timer)
            }
        })
        .collect()
}

fn bench_set(c: &mut Criterion, label: &str, set: &RuleSet, work: &[(String, MetricType)]) {
    let mut group = c.benchmark_group("rules");
    group.throughput(Throughput::Elements(work.len() as u64));
    group.bench_function(format!("uncached/{label}"), |b| {
        b.iter(|| {
            for (name, t) in work {
                black_box(set.lookup(black_box(name), *t));
            }
        })
    });
    let mut cache = RuleCache::new(4096);
    for (name, t) in work {
        cache.lookup(set, name, *t);
    }
    group.bench_function(format!("cached/{label}"), |b| {
        b.iter(|| {
            for (name, t) in work {
                black_box(cache.lookup(set, black_box(name), *t));
            }
        })
    });
    group.finish();
}

fn rules(c: &mut Criterion) {
    let ten = compile(TEN_RULES);
    let ten_names: Vec<String> = TEN_NAMES.iter().map(|s| s.to_string()).collect();
    bench_set(c, "10_rules", &ten, &workload(&ten_names));

    let (text, names) = thousand_rules();
    let thousand = compile(&text);
    assert_eq!(thousand.len(), 1000);
    bench_set(c, "1000_rules", &thousand, &workload(&names));
}

criterion_group!(benches, rules);
criterion_main!(benches);
