//! Bytes on disk per stored history sample, after compaction, against Prometheus 2.42's TSDB
//! on the same samples: `cargo bench --bench history_disk` (issue 12's target). Needs
//! `promtool` (Debian's `prometheus` package).
//!
//! The data: `HISTORY_DISK_SERIES` registry series (70 % counters — a tenth of them counting
//! fractional seconds —, 25 % gauges — half whole-numbered like queue depths and byte counts,
//! half noisy floats like temperatures —, 5 % histograms of 11 buckets) sampled every 10 s for
//! `HISTORY_DISK_SAMPLES` ticks, from a seeded generator (the same every run).
//!
//! tallyd: the ticks are written as the sampler writes them (one `Write::Samples` each, into
//! one 10 s tier, so that tallyd keeps exactly the samples Prometheus gets), the store's writer
//! compacts until it has nothing left, the WAL is checkpointed, and the file is measured: the
//! tier tables' pages (`tier_loose` and `tier_samples`, `dbstat`), and the whole file after
//! `VACUUM`.
//!
//! Prometheus: the same samples as OpenMetrics text (counters as their running totals,
//! histograms as cumulative `_bucket`, `_sum`, `_count`), turned into blocks by `promtool tsdb
//! create-blocks-from openmetrics`, and the block directory's bytes measured. (`tallyd history
//! export` exports API-recorded metrics, not the sampled ones, so the bench writes the text
//! itself, from the same generated values.)
//!
//! "Samples" is the same count on both sides: Prometheus' float samples (a histogram's tick is
//! 13 of them: 11 buckets, sum, count). The bench also times the tick writes, one series'
//! query and every series' query before and after compaction, and the compaction itself.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tallyd::custom::query::{Asked, Bins, CellBinner};
use tallyd::definitions::Aggregation;
use tallyd::store::tiers::{self, Cell, SampleBatch, Tier};
use tallyd::store::{Engine, Reader, Write, Written};

const STEP_MS: i64 = 10_000;
/// A whole day: bucket boundaries fall on whole hours.
const T0: i64 = 1_764_028_800_000;
const BOUNDS: usize = 11;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: the same numbers every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

enum Kind {
    /// Increases per tick around `rate`; `seconds` ones are fractional.
    Counter {
        rate: f64,
        seconds: bool,
    },
    /// A whole-numbered gauge (a queue depth) or a noisy float one (a temperature).
    Gauge {
        whole: bool,
        level: f64,
    },
    Histogram,
}

struct Series {
    kind: Kind,
    labels: String,
    /// Running totals for the OpenMetrics side.
    total: f64,
    buckets: [u64; BOUNDS],
    count: u64,
    sum: f64,
}

/// One tick of one series: what tallyd stores, and Prometheus' samples.
enum Tick {
    Scalar(f64),
    Histogram {
        count: u64,
        sum: f64,
        increases: [u64; BOUNDS],
    },
}

fn make_series(n: usize) -> Vec<Series> {
    let mut rng = Rng(0x7a11_d5ee_d000_0001);
    (0..n)
        .map(|i| {
            let roll = (i * 100 / n.max(1)) as u32;
            let kind = match roll {
                0..70 => Kind::Counter {
                    rate: 1.0 + 1000.0 * rng.unit() * rng.unit(),
                    seconds: i % 10 == 0,
                },
                70..95 => Kind::Gauge {
                    whole: i % 2 == 0,
                    level: 10.0 + 90.0 * rng.unit(),
                },
                _ => Kind::Histogram,
            };
            Series {
                kind,
                labels: format!(
                    "{{instance=\"host-{}\",job=\"api\",path=\"/v1/{}\"}}",
                    i % 20,
                    i
                ),
                total: 0.0,
                buckets: [0; BOUNDS],
                count: 0,
                sum: 0.0,
            }
        })
        .collect()
}

fn next_tick(series: &mut Series, rng: &mut Rng, t: usize) -> Tick {
    let wave = 1.0 + 0.3 * (t as f64 / 180.0).sin();
    match &mut series.kind {
        Kind::Counter { rate, seconds } => {
            let mean = *rate * wave;
            let increase = if *seconds {
                // Seconds spent, in whole microseconds, as a client library sums them.
                (mean * 0.01 * (0.5 + rng.unit()) * 1e6).round() / 1e6
            } else {
                (mean * (0.5 + rng.unit())).round()
            };
            series.total += increase;
            Tick::Scalar(increase)
        }
        Kind::Gauge { whole, level } => {
            if *whole {
                *level = (*level + (rng.unit() * 11.0).floor() - 5.0).max(0.0);
                Tick::Scalar(level.round())
            } else {
                *level += (rng.unit() - 0.5) * 0.2;
                Tick::Scalar(*level + 0.05 * (rng.unit() - 0.5))
            }
        }
        Kind::Histogram => {
            let observations = (50.0 * wave * (0.5 + rng.unit())) as u64;
            let mut increases = [0u64; BOUNDS];
            let mut sum = 0.0;
            for _ in 0..observations {
                // Latencies, log-uniform over 1 ms … 10 s, into buckets of 1, 2.5, 5 × 10^k.
                let seconds = 10f64.powf(rng.unit() * 4.0 - 3.0);
                sum += seconds;
                let b = BUCKET_BOUNDS
                    .iter()
                    .position(|&le| seconds <= le)
                    .unwrap_or(BOUNDS - 1);
                increases[b] += 1;
            }
            for (total, inc) in series.buckets.iter_mut().zip(increases) {
                *total += inc;
            }
            series.count += observations;
            series.sum += sum;
            Tick::Histogram {
                count: observations,
                sum,
                increases,
            }
        }
    }
}

const BUCKET_BOUNDS: [f64; BOUNDS - 1] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0];

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let n_series = env_or("HISTORY_DISK_SERIES", 1000);
    let n_ticks = env_or("HISTORY_DISK_SAMPLES", 2160);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let (mut engine, reader) = tallyd::store::sqlite::open(&store_dir).unwrap();
    let tier = Tier {
        resolution_ms: STEP_MS,
        retention_ms: 400 * 86_400_000,
    };
    let tiers: Arc<[Tier]> = Arc::from(vec![tier]);

    let mut metric_ids = [0i64; 3];
    for (slot, name) in ["reqs", "level", "latency"].into_iter().enumerate() {
        let put = Write::PutMetric(tallyd::history::stored_family(name));
        let Ok(Written::Metric(id)) = engine.commit(&[put]).unwrap()[0] else {
            panic!("no metric id");
        };
        metric_ids[slot] = id;
    }
    let metric_of = |kind: &Kind| match kind {
        Kind::Counter { .. } => metric_ids[0],
        Kind::Gauge { .. } => metric_ids[1],
        Kind::Histogram => metric_ids[2],
    };

    let mut series = make_series(n_series);
    let labels: Vec<Arc<str>> = (0..n_series)
        .map(|i| Arc::from(format!("{{\"path\":\"/v1/{i}\"}}")))
        .collect();
    let mut rng = Rng(0x5eed_0000_0000_0042);
    // OpenMetrics wants each series whole: one text per series, joined at the end.
    let mut texts: Vec<Vec<u8>> = vec![Vec::new(); n_series];
    let mut prom_samples = 0u64;
    let mut tick_ms = Vec::with_capacity(n_ticks);
    let started = Instant::now();
    for t in 0..n_ticks {
        let ts_ms = T0 + t as i64 * STEP_MS;
        let mut batch = SampleBatch {
            tiers: Arc::clone(&tiers),
            metrics: metric_ids.to_vec(),
            ts_ms,
            ..SampleBatch::default()
        };
        for (i, s) in series.iter_mut().enumerate() {
            let tick = next_tick(s, &mut rng, t);
            let metric = metric_of(&s.kind);
            let text = &mut texts[i];
            let seconds = format!("{}.{:03}", ts_ms / 1000, ts_ms % 1000);
            match tick {
                Tick::Scalar(value) => {
                    batch.push(metric, Arc::clone(&labels[i]), |out| {
                        Cell::scalar(value).encode(out)
                    });
                    let (name, shown) = match s.kind {
                        Kind::Counter { .. } => ("reqs_total", s.total),
                        _ => ("level", value),
                    };
                    writeln!(text, "{name}{} {shown} {seconds}", s.labels).unwrap();
                    prom_samples += 1;
                }
                Tick::Histogram {
                    count,
                    sum,
                    increases,
                } => {
                    batch.push(metric, Arc::clone(&labels[i]), |out| {
                        tiers::encode_histogram(out, count, sum, &increases)
                    });
                    let inner = &s.labels[1..s.labels.len() - 1];
                    let mut cumulative = 0;
                    for (b, total) in s.buckets.iter().enumerate() {
                        cumulative += total;
                        let le = BUCKET_BOUNDS
                            .get(b)
                            .map_or("+Inf".to_owned(), |le| le.to_string());
                        writeln!(
                            text,
                            "latency_bucket{{{inner},le=\"{le}\"}} {cumulative} {seconds}"
                        )
                        .unwrap();
                    }
                    writeln!(text, "latency_sum{} {} {seconds}", s.labels, s.sum).unwrap();
                    writeln!(text, "latency_count{} {} {seconds}", s.labels, s.count).unwrap();
                    prom_samples += BOUNDS as u64 + 2;
                }
            }
        }
        let write = Instant::now();
        for result in engine.commit(&[Write::Samples(Box::new(batch))]).unwrap() {
            result.unwrap();
        }
        tick_ms.push(write.elapsed().as_secs_f64() * 1e3);
    }
    // A tick past the end, with no series, closes the last bucket as the next real one would.
    let closing = SampleBatch {
        tiers: Arc::clone(&tiers),
        metrics: metric_ids.to_vec(),
        ts_ms: T0 + n_ticks as i64 * STEP_MS,
        ..SampleBatch::default()
    };
    engine.commit(&[Write::Samples(Box::new(closing))]).unwrap();
    let load_s = started.elapsed().as_secs_f64();
    let stored: u64 = n_series as u64 * n_ticks as u64;
    eprintln!("loaded {stored} tier samples ({prom_samples} Prometheus samples) in {load_s:.1} s");

    let db = store_dir.join(tallyd::store::sqlite::FILE_NAME);
    let connection = rusqlite::Connection::open(&db).unwrap();
    let measure = |connection: &rusqlite::Connection| -> (u64, u64) {
        connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        let table: i64 = connection
            .query_row(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN ('tier_samples', 'tier_loose')",
                [],
                |row| row.get(0),
            )
            .unwrap();
        let used: i64 = connection
            .query_row(
                "SELECT (SELECT page_count FROM pragma_page_count())
                      - (SELECT freelist_count FROM pragma_freelist_count())",
                [],
                |row| row.get(0),
            )
            .unwrap();
        let page: i64 = connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))
            .unwrap();
        (table as u64, (used * page) as u64)
    };

    // Queries: one series over the whole range (5 min bins), every series over the first hour
    // (1 min bins), by average.
    let one_id = reader.series(metric_ids[0]).unwrap()[0].0;
    let end = T0 + n_ticks as i64 * STEP_MS;
    let query = |series: Option<&[i64]>, (start, end): (i64, i64), step: i64, metric: i64| -> f64 {
        let runs: Vec<f64> = (0..5)
            .map(|_| {
                let at = Instant::now();
                let mut binner = CellBinner::new(Bins::new(start, end, step).unwrap());
                reader
                    .scan_tier(tier, metric, start, end, series, &mut |s, ts, cell| {
                        binner.add(s, ts, cell)
                    })
                    .unwrap();
                let bins = binner.finish(Asked::Plain(Aggregation::Average), &BUCKET_BOUNDS);
                assert!(!bins.is_empty());
                at.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        median(runs)
    };
    let queries = |label: &str| {
        let one = query(Some(&[one_id]), (T0, end), 300_000, metric_ids[0]);
        let hour = (T0, (T0 + 3_600_000).min(end));
        let all: f64 = metric_ids
            .iter()
            .map(|&m| query(None, hour, 60_000, m))
            .sum();
        eprintln!(
            "{label}: one series, whole range {one:.2} ms; every series, first hour {all:.1} ms"
        );
        (one, all)
    };
    let (table_loose, used_loose) = measure(&connection);
    let loose_queries = queries("loose rows");

    // Compaction: the writer's idle work until nothing is left.
    let started = Instant::now();
    let mut slices = Vec::new();
    while engine.busy() {
        let slice = Instant::now();
        engine.work().unwrap();
        slices.push(slice.elapsed().as_secs_f64() * 1e3);
    }
    let compact_s = started.elapsed().as_secs_f64();
    let slowest = slices.iter().copied().fold(0.0, f64::max);
    let packed_queries = queries("packed rows");
    let (table_packed, used_packed) = measure(&connection);

    // The packed bodies, with and without DEFLATE.
    let (mut bodies, mut raw_bodies, mut packed_rows) = (0u64, 0u64, 0u64);
    {
        let mut statement = connection
            .prepare("SELECT bucket, body FROM tier_samples WHERE ts BETWEEN -360 AND -1")
            .unwrap();
        let mut rows = statement.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let body: Vec<u8> = row.get(1).unwrap();
            let cells = tallyd::store::packed::unpack(&body).unwrap();
            let mut raw = Vec::new();
            tallyd::store::packed::pack_with(&cells, &mut raw, false);
            bodies += body.len() as u64;
            raw_bodies += raw.len() as u64;
            packed_rows += 1;
        }
    }
    let loose_left: i64 = connection
        .query_row("SELECT count(*) FROM tier_loose", [], |row| row.get(0))
        .unwrap();
    connection.execute_batch("VACUUM").unwrap();
    // In WAL mode the vacuumed pages are in the WAL until a checkpoint copies them back.
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let vacuumed = std::fs::metadata(&db).unwrap().len();
    drop(connection);
    drop(engine);

    // Prometheus: the same samples through promtool.
    let om = dir.path().join("samples.om");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&om).unwrap());
        let mut family = "";
        for (s, text) in series.iter().zip(&texts) {
            let (name, kind) = match s.kind {
                Kind::Counter { .. } => ("reqs", "counter"),
                Kind::Gauge { .. } => ("level", "gauge"),
                Kind::Histogram => ("latency", "histogram"),
            };
            if family != name {
                writeln!(file, "# TYPE {name} {kind}").unwrap();
                family = name;
            }
            file.write_all(text).unwrap();
        }
        writeln!(file, "# EOF").unwrap();
    }
    drop(texts);
    let blocks = dir.path().join("blocks");
    let started = Instant::now();
    let output = std::process::Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&om)
        .arg(&blocks)
        .output()
        .expect("promtool (Debian's prometheus package) must be on PATH");
    assert!(
        output.status.success(),
        "promtool failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let import_s = started.elapsed().as_secs_f64();
    let prom_bytes = dir_bytes(&blocks);
    let prom_chunks: u64 = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|b| b.unwrap().path().join("chunks"))
        .filter(|c| c.is_dir())
        .map(|c| dir_bytes(&c))
        .sum();
    let block_count = std::fs::read_dir(&blocks).unwrap().count();

    let per = |bytes: u64| bytes as f64 / prom_samples as f64;
    println!("# history_disk: {n_series} series × {n_ticks} ticks of 10 s");
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!("| tier samples (tallyd rows before compaction) | {stored} |");
    println!("| Prometheus samples (the denominator of every bytes/sample) | {prom_samples} |");
    println!(
        "| tallyd tier table pages, loose rows | {table_loose} B = {:.2} B/sample |",
        per(table_loose)
    );
    println!(
        "| tallyd tier table pages, after compaction | {table_packed} B = {:.2} B/sample |",
        per(table_packed)
    );
    println!(
        "| tallyd file pages in use, after compaction | {used_packed} B = {:.2} B/sample (loose: {:.2}) |",
        per(used_packed),
        per(used_loose)
    );
    println!(
        "| tallyd file after VACUUM | {vacuumed} B = {:.2} B/sample |",
        per(vacuumed)
    );
    println!(
        "| Prometheus 2.42 blocks (promtool, {block_count} blocks) | {prom_bytes} B = {:.2} B/sample (chunks alone {:.2}) |",
        per(prom_bytes),
        per(prom_chunks)
    );
    println!(
        "| **tallyd after VACUUM ÷ Prometheus** | **{:.2}** |",
        vacuumed as f64 / prom_bytes as f64
    );
    println!(
        "| packed bodies: with DEFLATE / without | {:.2} / {:.2} B/sample ({packed_rows} rows, {loose_left} loose rows left) |",
        per(bodies),
        per(raw_bodies)
    );
    println!(
        "| compaction | {compact_s:.2} s in {} slices, slowest {slowest:.1} ms |",
        slices.len()
    );
    println!(
        "| tick write ({n_series} series, one transaction) | median {:.2} ms, p99 {:.2} ms |",
        median(tick_ms.clone()),
        {
            let mut sorted = tick_ms.clone();
            sorted.sort_by(f64::total_cmp);
            sorted[sorted.len() * 99 / 100]
        }
    );
    println!(
        "| query one series, whole range, 5 min bins: loose → packed | {:.2} → {:.2} ms |",
        loose_queries.0, packed_queries.0
    );
    println!(
        "| query every series, first hour, 1 min bins: loose → packed | {:.1} → {:.1} ms |",
        loose_queries.1, packed_queries.1
    );
    println!("| promtool import | {import_s:.1} s |");
}
