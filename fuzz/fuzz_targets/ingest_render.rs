//! The whole data path: arbitrary datagrams into one `Ingester`, then a scrape in both formats.
//!
//! Input layout: the first byte selects options (bit 0 `gauge_deltas`, bit 1
//! `container_id_label`, bit 2 `statsd_exporter_names`, bit 3 a two-entry name cache that is
//! cleared all the time, bit 4 sets of at most two members, bit 5 odd histogram buckets, bit 6
//! one registry shard, bit 7 series caps of 6 in all and 2 per metric); the rest is split at
//! NUL bytes into datagrams.
//!
//! Nothing may panic (libFuzzer's panic hook aborts even on panics that `render` catches per
//! family, so a family that fails to render is reported too), and each rendered scrape must
//! pass `tallyd_fuzz::check_scrape` (fuzz/src/lib.rs), a strict reader of both formats: valid
//! names and escapes, one `# TYPE` per family, samples under their family, no duplicate series,
//! cumulative buckets, `# EOF` last in OpenMetrics.
//!
//! Finally `tallyd_lines_total` accounting: the ingester counted every non-empty line.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tallyd::exposition::{ExpositionOptions, Format, render};
use tallyd::record::Recorder;
use tallyd::ingest::{IngestOptions, Ingester};
use tallyd::protocol::ParseOptions;
use tallyd::registry::{Registry, RegistrySettings};
use tallyd::telemetry::Telemetry;
use tallyd_fuzz::check_scrape;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let bit = |n: u8| flags & (1 << n) != 0;
    let ingest = IngestOptions {
        parse: ParseOptions {
            gauge_deltas: bit(0),
        },
        container_id_label: bit(1),
        cache_capacity: if bit(3) { 2 } else { 1000 },
        ..IngestOptions::default()
    };
    let exposition = ExpositionOptions {
        statsd_exporter_names: bit(2),
    };
    let mut settings = RegistrySettings::default();
    if bit(4) {
        settings.max_set_members = 2;
    }
    if bit(5) {
        settings.histogram_buckets =
            [-1.5, -0.0, 1e-7, 3.0, 1e21, 1.7976931348623157e308][..].into();
    }
    if bit(6) {
        settings.shards = 1;
    }
    if bit(7) {
        settings.max_series = 6;
        settings.max_series_per_metric = 2;
    }

    let registry = Arc::new(Registry::new(settings));
    let telemetry = Telemetry::default();
    let stats = telemetry.add_receiver("127.0.0.1:8125");
    let mut ingester = Ingester::new(Recorder::for_registry(&registry), Arc::clone(&stats), ingest);
    let mut lines = 0u64;
    for datagram in rest.split(|&b| b == 0) {
        ingester.ingest(datagram);
        lines += datagram
            .split(|&b| b == b'\n')
            .filter(|line| !line.strip_suffix(b"\r").unwrap_or(line).is_empty())
            .count() as u64;
    }
    ingester.flush_stats();
    registry.expire_idle();
    let _ = registry.top_families(3);
    assert!(
        !bit(7) || registry.series_count() <= 6,
        "{} series past a cap of 6",
        registry.series_count()
    );
    assert_eq!(
        stats.lines.load(std::sync::atomic::Ordering::Relaxed),
        lines,
        "lines counted"
    );

    for format in [Format::Text, Format::OpenMetrics] {
        let mut out = Vec::new();
        render(&registry, &telemetry, format, exposition, &mut out);
        if let Err(problem) = check_scrape(&out, format) {
            panic!(
                "{format:?} scrape is invalid: {problem}\n--- scrape ---\n{}",
                String::from_utf8_lossy(&out)
            );
        }
    }
});
