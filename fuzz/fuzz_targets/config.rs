//! Arbitrary text into `Settings::parse`: it must never panic, whatever the TOML.
//!
//! When the text is accepted, `Settings` has built everything the daemon derives from a config
//! (every option struct, which calls `Duration::from_secs_f64` and friends that panic on values
//! validation let through; the mapping rules; the `[[metric]]` definitions); the fuzzer then
//! builds a registry and an ingester the way the runtime does. One line of every type,
//! and one line for each declared metric, are ingested, and both formats are rendered; each
//! scrape must pass the strict `tallyd_fuzz::check_scrape` (declared HELP text and units from
//! the file end up in it). Without mapping rules, declarations or a tight series cap, the `le`
//! labels of the timer, `h` and `d` histograms must be the configured `histogram_buckets`, bit
//! for bit, then `+Inf`.
//!
//! A refusal must carry a message that names the file.

#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tallyd::config::Settings;
use tallyd::exposition::{Format, render};
use tallyd::definitions::Source;
use tallyd::ingest::Ingester;
use tallyd::record::Recorder;
use tallyd::ingest::SharedRules;
use tallyd::registry::{Kind, Registry};
use tallyd::telemetry::{ReceiverStats, Telemetry};
use tallyd_fuzz::check_scrape;

const PATH: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = Settings::parse(&text, Path::new(PATH));
    let config = match parsed {
        Ok(config) => config,
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains(PATH), "error without the file: {message}");
            return;
        }
    };

    let exposition = config.exposition;
    let mut settings = config.registry.clone();
    assert!(settings.shards >= 1, "no shards");
    let _ = config.restart_required_changes(&config);
    assert_eq!(
        config.file.clone(),
        config.file,
        "a parsed config is not equal to itself"
    );
    let ingest = config.ingest_options(Arc::new(SharedRules::new(Arc::clone(&config.rules))));
    assert!(ingest.cache_capacity >= 1, "no cache");
    let definitions = config.definitions.clone();

    // Build what the daemon builds. The shard count only sizes a table (the registry caps it
    // at 4096); keep one input fast.
    settings.shards = settings.shards.min(64);
    let bounds: Vec<f64> = settings.histogram_buckets.to_vec();
    let registry = Arc::new(Registry::new(settings));
    let recorder = Arc::new(Recorder::new(Arc::clone(&registry), Arc::default()));
    recorder
        .replace_definitions(Source::File, definitions)
        .expect("the file is the only source");
    let telemetry = Telemetry::default();
    let stats = Arc::new(ReceiverStats::new("fuzz"));
    let mut ingester = Ingester::new(recorder, stats, ingest);
    ingester.ingest(b"c:1|c\ng:2|g\nt:250|ms\nh:3|h|#k:v\nd:4|d\ns:x|s\na.b.c:1|c|#k:v\n");
    let mut declared = String::new();
    for metric in &config.file.metrics {
        let metric = metric.get_ref();
        let statsd_type = match metric.kind {
            Kind::Counter => "c",
            Kind::Gauge => "g",
            Kind::Set => "s",
            Kind::Histogram | Kind::Summary => "h",
        };
        declared.push_str(&format!("{}:0.5|{statsd_type}|#k:v\n", metric.name));
    }
    ingester.ingest(declared.as_bytes());
    ingester.flush_stats();

    for format in [Format::Text, Format::OpenMetrics] {
        let mut out = Vec::new();
        render(&registry, &telemetry, format, exposition, &mut out);
        if let Err(problem) = check_scrape(&out, format) {
            panic!(
                "{format:?} scrape is invalid: {problem}\n--- config ---\n{text}\n--- scrape ---\n{}",
                String::from_utf8_lossy(&out)
            );
        }
        // Exactly the statsd buckets when nothing renames, redefines or refuses the series.
        if config.file.mapping.is_empty()
            && config.file.metrics.is_empty()
            && config.file.limits.max_series >= 16
        {
            let text = std::str::from_utf8(&out).expect("checked UTF-8");
            for series in ["t", "h", "d"] {
                check_buckets(text, series, &bounds, format);
            }
        }
    }
});

/// The `le` values of `name`'s buckets are the configured bounds, exactly, then `+Inf`.
fn check_buckets(text: &str, name: &str, bounds: &[f64], format: Format) {
    let prefix = format!("{name}_bucket{{");
    let les: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|rest| {
            let start = rest.find("le=\"").expect("a bucket without le") + 4;
            let end = start + rest[start..].find('"').expect("an unterminated le");
            &rest[start..end]
        })
        .collect();
    assert_eq!(
        les.len(),
        bounds.len() + 1,
        "{format:?}: buckets of {name} vs {} bounds:\n{text}",
        bounds.len()
    );
    assert_eq!(
        les.last(),
        Some(&"+Inf"),
        "{format:?}: last bucket of {name}"
    );
    for (le, bound) in les.iter().zip(bounds) {
        let read: f64 = le
            .parse()
            .unwrap_or_else(|_| panic!("{format:?}: le={le:?} is not a number"));
        assert_eq!(
            read.to_bits(),
            bound.to_bits(),
            "{format:?}: le={le:?} reads as {read}, the bound is {bound}"
        );
    }
}
