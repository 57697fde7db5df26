//! Exposition cost: ns per series rendering 100k counter series with two labels, through our
//! own writers (classic text, OpenMetrics and protobuf) and, for comparison in the same run,
//! through `prometheus-client`'s `Collector` and OpenMetrics encoder over the same registry.
//!
//! Differences to keep in mind when reading the figures: our OpenMetrics output writes a
//! `_created` line per counter series (two lines per series; `prometheus-client`'s counters
//! write one), and our `render` also collects and writes tallyd's own metrics (a constant of a
//! few dozen lines and a read of `/proc/self`).

use std::fmt;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel, EncodeLabelSet, LabelSetEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use tallyd::exposition::{self, ExpositionOptions, Format};
use tallyd::registry::{Cell, Kind, Registry, RegistrySettings, SeriesKeyBuf, Update};
use tallyd::telemetry::Telemetry;

const SERIES: usize = 100_000;
const FAMILIES: usize = 10;

/// 10 counter families of 10k series each, labels `method` and `path`.
fn registry() -> Registry {
    let registry = Registry::new(RegistrySettings::default());
    let mut key = SeriesKeyBuf::default();
    let methods = ["GET", "POST", "PUT", "DELETE"];
    for i in 0..SERIES {
        key.start(Kind::Counter)
            .push_str(&format!("http_requests_{}", i % FAMILIES));
        key.end_family();
        key.push_label(|out| out.push_str("method"), methods[i % methods.len()]);
        key.push_label(|out| out.push_str("path"), &format!("/api/v1/items/{i}"));
        key.finish();
        let series = registry.resolve(&key).unwrap();
        series
            .apply(Update::Add((i % 1000) as f64), registry.settings())
            .unwrap();
    }
    assert_eq!(registry.series_count(), SERIES);
    registry
}

/// Our registry behind `prometheus-client`'s Collector: the design DESIGN.md §4 first proposed.
struct RegistryCollector(Arc<Registry>);

impl fmt::Debug for RegistryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RegistryCollector")
    }
}

impl Collector for RegistryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for family in self.0.families() {
            if family.kind() != Kind::Counter {
                continue;
            }
            let mut metric = encoder.encode_descriptor(
                family.name(),
                family.help().unwrap_or(exposition::DEFAULT_HELP),
                None,
                MetricType::Counter,
            )?;
            let mut result = Ok(());
            family.for_each_series(|series| {
                let Cell::Counter(value) = series.cell() else {
                    return;
                };
                if result.is_ok() {
                    result = metric
                        .encode_family(&RawLabels(series.labels()))
                        .and_then(|mut m| {
                            m.encode_counter::<NoLabelSet, _, f64>(&value.get(), None)
                        });
                }
            });
            result?;
        }
        Ok(())
    }
}

/// A series' pre-escaped `name="value",...` text as `prometheus-client` labels. The encoder
/// escapes values itself; the benchmark's values need no escaping, so passing the escaped
/// text through is exact here (a real adapter would unescape first, or store pairs).
struct RawLabels<'a>(&'a str);

impl EncodeLabelSet for RawLabels<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), fmt::Error> {
        let mut rest = self.0;
        while let Some((name, after)) = rest.split_once("=\"") {
            let bytes = after.as_bytes();
            let mut end = 0;
            while end < bytes.len() && bytes[end] != b'"' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            let end = end.min(bytes.len());
            (name, &after[..end]).encode(encoder.encode_label())?;
            rest = after.get(end + 1..).unwrap_or("").trim_start_matches(',');
        }
        Ok(())
    }
}

fn exposition(c: &mut Criterion) {
    let registry = Arc::new(registry());
    let telemetry = Telemetry::default();
    let mut group = c.benchmark_group("exposition_100k_counters");
    group.sample_size(10);
    group.throughput(Throughput::Elements(SERIES as u64));

    let mut out = Vec::new();
    for (name, format) in [
        ("tallyd_text", Format::Text),
        ("tallyd_openmetrics", Format::OpenMetrics),
        ("tallyd_protobuf", Format::Protobuf),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                exposition::render(
                    &registry,
                    &telemetry,
                    format,
                    ExpositionOptions::default(),
                    &mut out,
                );
                black_box(out.len())
            })
        });
    }

    let mut client_registry = prometheus_client::registry::Registry::default();
    client_registry.register_collector(Box::new(RegistryCollector(Arc::clone(&registry))));
    let mut text = String::new();
    group.bench_function("prometheus_client_openmetrics", |b| {
        b.iter(|| {
            text.clear();
            prometheus_client::encoding::text::encode(&mut text, &client_registry).unwrap();
            black_box(text.len())
        })
    });
    group.finish();
}

criterion_group!(benches, exposition);
criterion_main!(benches);
