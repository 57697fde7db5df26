//! Registry and ingest costs: ns per sample for a series that exists (the steady state) and for
//! a new one (the slow path: sanitise, build the canonical key, insert), and a whole datagram
//! through the per-thread ingest cache.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tallyd::ingest::{IngestOptions, Ingester};
use tallyd::record::Recorder;
use tallyd::registry::{Kind, Registry, RegistrySettings, SeriesKeyBuf, Update};
use tallyd::telemetry::ReceiverStats;

fn key(buf: &mut SeriesKeyBuf, kind: Kind, family: &str, labels: &[(&str, &str)]) {
    buf.start(kind).push_str(family);
    buf.end_family();
    for (name, value) in labels {
        buf.push_label(|out| out.push_str(name), value);
    }
    buf.finish();
}

fn registry_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("registry");
    group.throughput(Throughput::Elements(1));
    // No series caps: the new-series bench makes as many as criterion iterates, millions on a
    // fast machine, and a refusal is not what it measures.
    let registry = Registry::new(RegistrySettings {
        max_series: usize::MAX,
        max_series_per_metric: usize::MAX,
        ..RegistrySettings::default()
    });
    let mut buf = SeriesKeyBuf::default();
    let labels = [("env", "prod"), ("service", "web"), ("version", "1.2.3")];

    key(&mut buf, Kind::Counter, "page_views", &labels);
    let counter = registry.resolve(&buf).unwrap();
    group.bench_function("counter_add_existing_handle", |b| {
        b.iter(|| counter.apply(black_box(Update::Add(1.0)), registry.settings()))
    });
    group.bench_function("resolve_existing_then_add", |b| {
        b.iter(|| {
            let series = registry.resolve(black_box(&buf)).unwrap();
            series.apply(Update::Add(1.0), registry.settings())
        })
    });

    key(&mut buf, Kind::Histogram, "latency", &labels);
    let histogram = registry.resolve(&buf).unwrap();
    group.bench_function("histogram_observe_existing_handle", |b| {
        b.iter(|| {
            histogram.apply(
                black_box(Update::Observe {
                    value: 0.042,
                    weight: 1,
                }),
                registry.settings(),
            )
        })
    });

    // The same observation with native buckets on (factor 1.1, schema 3), and both kinds over
    // latencies spread across three decades (each lands in a different native bucket, as real
    // ones do), so the price of native buckets per observation reads off the difference.
    let native_registry = Registry::new(RegistrySettings {
        native_bucket_factor: 1.1,
        ..registry.settings().clone()
    });
    let native = native_registry.resolve(&buf).unwrap();
    group.bench_function("histogram_observe_existing_handle_native", |b| {
        b.iter(|| {
            native.apply(
                black_box(Update::Observe {
                    value: 0.042,
                    weight: 1,
                }),
                native_registry.settings(),
            )
        })
    });
    let spread: Vec<f64> = (0..256).map(|i| 0.001 * 1.027f64.powi(i)).collect();
    for (name, series, settings) in [
        (
            "histogram_observe_spread_values",
            &histogram,
            registry.settings(),
        ),
        (
            "histogram_observe_spread_values_native",
            &native,
            native_registry.settings(),
        ),
    ] {
        let mut next = spread.iter().cycle();
        group.bench_function(name, |b| {
            b.iter(|| {
                let value = *next.next().unwrap();
                series.apply(black_box(Update::Observe { value, weight: 1 }), settings)
            })
        });
    }

    let mut n = 0u64;
    group.bench_function("resolve_new_series", |b| {
        b.iter_batched(
            || {
                n += 1;
                let id = n.to_string();
                let mut buf = SeriesKeyBuf::default();
                key(
                    &mut buf,
                    Kind::Counter,
                    "fresh",
                    &[("id", &id), ("env", "prod")],
                );
                buf
            },
            |buf| registry.resolve(&buf).unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn ingest_datagram(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    let registry = Arc::new(Registry::new(RegistrySettings::default()));
    let stats = Arc::new(ReceiverStats::new("bench"));
    let mut ingester = Ingester::new(
        Recorder::for_registry(&registry),
        stats,
        IngestOptions::default(),
    );

    let line = b"page.views:1|c|@0.5|#env:prod,service:web,version:1.2.3";
    ingester.ingest(line);
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_known_line", |b| {
        b.iter(|| ingester.ingest(black_box(line)))
    });

    let mut datagram = Vec::new();
    for i in 0..20 {
        datagram.extend_from_slice(
            format!(
                "predictor.requests:1|c|#model:m{},env:prod,region:eu\n",
                i % 10
            )
            .as_bytes(),
        );
    }
    ingester.ingest(&datagram);
    group.throughput(Throughput::Elements(20));
    group.bench_function("20_known_lines_per_datagram", |b| {
        b.iter(|| ingester.ingest(black_box(&datagram)))
    });

    // The miss path: series that exist in the registry but not in this thread's cache, as when
    // more series are live than `cache_capacity` (1M series against the default 100k).
    let registry = Arc::new(Registry::new(RegistrySettings::default()));
    let stats = Arc::new(ReceiverStats::new("bench"));
    let lines: Vec<Vec<u8>> = (0..4096)
        .map(|i| format!("predictor.requests:1|c|#model:m{i},env:prod,region:eu\n").into_bytes())
        .collect();
    let mut warm = Ingester::new(
        Recorder::for_registry(&registry),
        Arc::clone(&stats),
        IngestOptions::default(),
    );
    for line in &lines {
        warm.ingest(line);
    }
    let mut cold = Ingester::new(
        Recorder::for_registry(&registry),
        stats,
        IngestOptions {
            cache_capacity: 1,
            ..IngestOptions::default()
        },
    );
    let mut next = lines.iter().cycle();
    group.throughput(Throughput::Elements(1));
    group.bench_function("one_line_of_a_known_series_not_in_the_cache", |b| {
        b.iter(|| cold.ingest(black_box(next.next().unwrap())))
    });
    group.finish();
}

criterion_group!(benches, registry_update, ingest_datagram);
criterion_main!(benches);
