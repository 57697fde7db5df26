//! Heap bytes per live series, by type, counted exactly by a global allocator wrapper (no RSS
//! noise): `cargo bench --bench memory`. The figures back the memory budget in the README.
//!
//! Each run creates `SERIES` series through the real ingest path (parse, ingest cache, registry)
//! with two tags, as a predictor would send them, and reports what the heap grew by per series,
//! with the ingest cache counted and, separately, without it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tallyd::ingest::{IngestOptions, Ingester};
use tallyd::record::Recorder;
use tallyd::registry::{Registry, RegistrySettings};
use tallyd::telemetry::ReceiverStats;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; we only keep a tally.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SERIES: usize = 200_000;

/// `native_bucket_factor`: 0 for histograms without native buckets (the default).
fn measure(statsd_type: &str, value: &str, native_bucket_factor: f64) -> (f64, f64) {
    let registry = Arc::new(Registry::new(RegistrySettings {
        max_series: usize::MAX,
        max_series_per_metric: usize::MAX,
        native_bucket_factor,
        ..RegistrySettings::default()
    }));
    let stats = Arc::new(ReceiverStats::new("bench"));
    let before = LIVE.load(Ordering::Relaxed);
    let mut ingester = Ingester::new(
        Recorder::for_registry(&registry),
        stats,
        IngestOptions::default(),
    );
    let mut line = String::new();
    for i in 0..SERIES {
        line.clear();
        use std::fmt::Write;
        write!(
            line,
            "predictor.requests:{value}|{statsd_type}|#model:m{},request_id:{i}",
            i % 50
        )
        .unwrap();
        ingester.ingest(line.as_bytes());
    }
    assert_eq!(registry.series_count(), SERIES);
    let with_cache = LIVE.load(Ordering::Relaxed) - before;
    drop(ingester);
    let without_cache = LIVE.load(Ordering::Relaxed) - before;
    (
        with_cache as f64 / SERIES as f64,
        without_cache as f64 / SERIES as f64,
    )
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("| type | heap bytes per series | without the ingest cache |");
    println!("|---|---|---|");
    for (name, statsd_type, value, native) in [
        ("counter", "c", "1", 0.0),
        ("gauge", "g", "1", 0.0),
        ("histogram (11 buckets)", "h", "0.3", 0.0),
        (
            "histogram with native buckets (1 populated)",
            "h",
            "0.3",
            1.1,
        ),
        (
            "histogram with native buckets (8 populated)",
            "h",
            "0.3:0.5:0.9:1.7:3.3:6.1:12:25",
            1.1,
        ),
        ("set (1 member)", "s", "alice", 0.0),
    ] {
        let (with_cache, without_cache) = measure(statsd_type, value, native);
        println!("| {name} | {with_cache:.0} | {without_cache:.0} |");
    }
    println!(
        "\n{SERIES} series, two tags each (`model:mNN,request_id:N`); one ingest thread's cache \
         (up to `cache_capacity` entries, 100k by default) is counted in the first column."
    );
}
