//! Parse cost per line (DESIGN.md §8): the typical DogStatsD line with three tags, a bare Etsy
//! counter, and a 20-line datagram of packed DogStatsD lines. Throughput is in lines, so
//! criterion's "elem/s" is lines per second and the time per iteration divided by the element
//! count is ns/line.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tallyd::protocol::{Extension, ParseOptions, Reason, Sample, SampleSink, parse_datagram};

/// Touches everything it is given so that nothing is optimised away, and keeps nothing.
struct NoopSink;

impl SampleSink for NoopSink {
    fn sample(&mut self, sample: &Sample<'_>) {
        black_box(sample);
    }

    fn reject(&mut self, reason: Reason) {
        black_box(reason);
    }

    fn extension(&mut self, kind: Extension) {
        black_box(kind);
    }
}

fn bench_line(c: &mut Criterion, group_name: &str, datagram: &[u8], lines: u64) {
    let options = ParseOptions::default();
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(lines));
    group.bench_function(group_name, |b| {
        b.iter(|| parse_datagram(black_box(datagram), &options, &mut NoopSink))
    });
    group.finish();
}

fn parse(c: &mut Criterion) {
    bench_line(
        c,
        "dogstatsd_3_tags",
        b"page.views:1|c|@0.5|#env:prod,service:web,version:1.2.3",
        1,
    );
    bench_line(c, "bare_counter", b"a.b.c:1|c", 1);

    let packed: String = (0..20)
        .map(|i| format!("model.latency.{i}:12.5:13:9.25|d|@0.5|#model:v{i},env:prod\n"))
        .collect();
    bench_line(c, "datagram_20_packed_lines", packed.as_bytes(), 20);
}

criterion_group!(benches, parse);
criterion_main!(benches);
