//! Summary sketch costs (`src/summary.rs`): ns per `observe` in the steady state, and per
//! quantile query (3 quantiles over a window of 5 sub-sketches): `cargo bench --bench sketch`.
//!
//! Before the timings it prints, for typical latency data, the bytes per summary series and
//! the number of allocations made by a million steady-state observations (counted by a global
//! allocator wrapper; it should be 0).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tallyd::summary::{SummaryConfig, SummaryState};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Latency-like values: log-normal around 20 ms, most between 1 ms and 1 s.
fn latencies(n: usize) -> Vec<f64> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut unit = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) + 1) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            // Box–Muller.
            let normal = (-2.0 * unit().ln()).sqrt() * (std::f64::consts::TAU * unit()).cos();
            0.02 * (1.3 * normal).exp()
        })
        .collect()
}

/// A series that has seen `per_second` observations every second of one full window, so that
/// every sub-sketch holds data and has grown its arrays.
fn warmed(config: &SummaryConfig, values: &[f64], per_second: usize) -> SummaryState {
    let mut state = SummaryState::new(config, 0);
    let mut i = 0;
    for now in 0..config.max_age_secs {
        for _ in 0..per_second {
            state.observe(values[i % values.len()], 1, now);
            i += 1;
        }
    }
    state
}

fn report_memory_and_allocations(values: &[f64]) {
    let config = SummaryConfig::default();
    let fresh = SummaryState::new(&config, 0);
    let mut state = warmed(&config, values, 100);
    let now = config.max_age_secs - 1;
    let warm_bytes = state.memory_bytes();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for (i, value) in values.iter().cycle().take(1_000_000).enumerate() {
        // Keep the clock moving through two more windows: rotations included.
        let t = now + (i as u32 / 834);
        state.observe(black_box(*value), 1, t);
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let mut query = 0;
    state.quantiles(now + 1200, |_, _| query += 1);
    eprintln!(
        "summary series bytes: fresh {}, after a window of log-normal latencies {}, worst case {}",
        fresh.memory_bytes(),
        state.memory_bytes(),
        config.max_memory_bytes()
    );
    eprintln!(
        "allocations during 1e6 steady-state observes (over 2 windows of rotation): \
         {allocations} (bytes {warm_bytes} -> {}: an array grows when its slot sees a wider \
         span than ever before)",
        state.memory_bytes()
    );
}

fn sketch(c: &mut Criterion) {
    let values = latencies(1 << 16);
    report_memory_and_allocations(&values);
    let config = SummaryConfig::default();
    let mut group = c.benchmark_group("sketch");
    group.throughput(Throughput::Elements(1));

    let mut state = warmed(&config, &values, 100);
    let now = config.max_age_secs - 1;
    let mut i = 0usize;
    group.bench_function("observe", |b| {
        b.iter(|| {
            i = (i + 1) & (values.len() - 1);
            state.observe(black_box(values[i]), 1, black_box(now))
        })
    });
    group.bench_function("observe_weighted_negative_and_zero", |b| {
        b.iter(|| {
            i = (i + 1) & (values.len() - 1);
            let value = match i % 4 {
                0 => 0.0,
                1 => -values[i],
                _ => values[i],
            };
            state.observe(black_box(value), black_box(10), black_box(now))
        })
    });

    // Quantile queries: 3 quantiles, 5 sub-sketches of log-normal latencies (each ~500
    // buckets in use), no rotation during the measurement.
    let mut state = warmed(&config, &values, 100);
    group.bench_function("quantiles_3_of_5_subsketches", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            state.quantiles(black_box(now), |_, v| sum += v);
            sum
        })
    });

    // The worst case for a query: every sub-sketch with 2048 buckets in use for both signs.
    let mut state = SummaryState::new(&config, 0);
    let gamma_ln = 2.0 * 0.01f64.atanh();
    for now in 0..config.max_age_secs {
        for k in 0..20 {
            let key = ((now * 20 + k) % 2048) as f64;
            state.observe((key * gamma_ln).exp(), 1, now);
            state.observe(-(key * gamma_ln).exp(), 1, now);
        }
    }
    group.bench_function("quantiles_3_of_5_full_subsketches", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            state.quantiles(black_box(now), |_, v| sum += v);
            sum
        })
    });
    group.finish();
}

criterion_group!(benches, sketch);
criterion_main!(benches);
