//! Prometheus remote-write 1.0 and 2.0 (`[[remote_write]]`): every `interval_seconds`, a
//! snapshot of the selected series is queued for each endpoint and sent, protobuf and snappy,
//! by a few shard tasks.
//!
//! ## Shape
//!
//! ```text
//!  tick ─► snapshot (blocking thread; reads the registry through the read seam, family by
//!          family, like a scrape) ─► samples, each to the shard of its series' hash
//!                                        │  bounded: queue_samples in all; a full shard
//!                                        ▼  drops the new samples (queue_full)
//!          shard task × shards: take ≤ max_samples_per_send ─► one request ─► 2xx: done
//!                                                                   5xx/429/error/timeout:
//!                                                                   same batch again after
//!                                                                   backoff or Retry-After
//!                                                                   other 4xx: counted, dropped
//! ```
//!
//! - A series always lands in the same shard, and a shard sends in queue order, so each
//!   series' samples reach the receiver in timestamp order (receivers refuse out-of-order
//!   ones). Shards are independent: one retrying does not hold the others.
//! - The snapshot is what a scrape costs: each family's read lock is held while its series are
//!   copied (one hash lookup per series; the label sets of a series are built once, when it is
//!   first seen, and shared by every sample queued for it). Receive threads only wait for it
//!   when they create a series in the family being read.
//! - Memory at the bound: 24 bytes per queued sample (a shared pointer to the series'
//!   labels, the value and the timestamp) plus the label sets of the live selected series;
//!   the default 500,000 samples is 12 MB. A shard's ring buffer grows by doubling and keeps
//!   its size once grown, so the queue holds at most twice that (24 MB) from the first time
//!   it filled (tested: `the_queue_stays_within_its_memory_bound`).
//! - Staleness: a series sent before and missing from a snapshot (expired by the TTL,
//!   deleted) is sent once more with the staleness NaN, so queries stop showing it at once
//!   rather than five minutes later.
//! - Retries go on for as long as the receiver answers 5xx or 429 (a shard keeps its batch;
//!   the queue fills and later snapshots are dropped and counted): a receiver down for a while
//!   gets everything that fitted the queue once it is back. A 4xx other than 429 (Mimir's
//!   "too old" and "out of order") drops the batch: never retried, so it cannot wedge the
//!   queue.
//! - Remote-write 2.0 (`protobuf_message = "v2"` or `"auto"`, `v2`): the same batches as
//!   `io.prometheus.write.v2.Request`, each series with its family's type, help and unit. A
//!   receiver that turns out to read 1.0 only (`send::negotiate`) makes the endpoint send 1.0
//!   from then on, and the batch that showed it is sent again as 1.0 at once: nothing is lost.
//!
//! - Spill (`spill = true` or `spill_max_bytes`; see `spill`): what a full shard has no room
//!   for goes to the data directory instead of being dropped, and while a shard has samples
//!   there, its new ones follow them, so the shard sends memory first, then the spill segment
//!   by segment, then memory again: its order holds. At stop the memory queue (and the batch
//!   in hand) is spilled ahead of the rest; at start what a spill holds is sent first. Samples
//!   read back older than `max_sample_age_seconds` are dropped (`too_old`): Mimir and Cortex
//!   refuse them. Disk at the bound: `spill_max_bytes`; memory: the queue plus one segment
//!   read back (at most 4 MiB of records).
//!
//! - Gaps (see `gap`): for series whose values a store keeps (the metrics recorded through
//!   the Matih API, and the StatsD counters and gauges sampled into history, `tier_gap`),
//!   samples the receiver missed are sent again from the store, at their own timestamps,
//!   before the series' next sample.
//!
//! Not done here: the gap of a restart (what the receiver last got is not kept across one),
//! the gap of sampled histograms, summaries and sets, native histograms
//! (histograms are sent as classic `_bucket`/`_sum`/`_count` series). tallyd's own `tallyd_*`
//! metrics are not sent (Prometheus scrapes them).

pub mod config;
pub mod gap;
pub mod select;
pub mod send;
pub mod spill;
pub mod stats;
pub mod tier_gap;
pub mod v2;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::body::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::gap::{GapTracker, HistorySource, Origin};
use self::select::Selector;
use self::send::{Client, Outcome, Protocol};
use self::spill::{Chunk, Spill};
use self::stats::{Drop, RemoteStats, RemoteWriteTelemetry};
use self::wire::{Label, STALE_NAN_BITS, Sample, TimeSeries, WriteRequest};
use crate::exposition::{Format, write_le};
use crate::listen::LogLimit;
use crate::read::{FamilyView, SeriesView, ValueView, Visitor};
use crate::registry::{Kind, Registry};

/// Credentials sent with every request.
#[derive(Clone, PartialEq)]
pub enum Auth {
    None,
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    // Secrets stay out of logs and test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Auth::Bearer(_) => f.write_str("Bearer(***)"),
        }
    }
}

/// One `[[remote_write]]` endpoint, validated (see `config` for each key).
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteWriteOptions {
    pub url: String,
    /// The `remote` label of its self-metrics.
    pub remote: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub selector: Selector,
    /// Sorted by name.
    pub external_labels: Vec<(String, String)>,
    pub auth: Auth,
    /// The CAs to trust (PEM), instead of the system's.
    pub ca_pem: Option<String>,
    pub shards: usize,
    pub max_samples_per_send: usize,
    pub queue_samples: usize,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub protobuf_message: config::ProtobufMessage,
    /// The spill's bound in bytes; `None`: no spill, a full queue drops.
    pub spill_max_bytes: Option<u64>,
    /// Samples read back from the spill older than this are dropped, not sent.
    pub max_sample_age: Duration,
}

/// The running endpoints.
pub struct RemoteWrite {
    endpoints: Vec<Endpoint>,
    /// Where spills live (under `remote_write/`).
    data_dir: PathBuf,
    /// Where gaps are resent from, when a store keeps series' values.
    history: Option<Arc<dyn HistorySource>>,
    registry: Arc<Registry>,
    telemetry: Arc<RemoteWriteTelemetry>,
}

impl RemoteWrite {
    /// Starts sending to every endpoint of `options` (none: nothing runs). Must be called
    /// inside a tokio runtime.
    pub fn start(
        options: &[RemoteWriteOptions],
        data_dir: &Path,
        history: Option<Arc<dyn HistorySource>>,
        registry: &Arc<Registry>,
        telemetry: &Arc<RemoteWriteTelemetry>,
    ) -> Result<RemoteWrite, String> {
        let mut endpoints = Vec::with_capacity(options.len());
        for options in options {
            let client = Client::new(options).map_err(|e| format!("{}: {e}", options.url))?;
            endpoints.push((options.clone(), client));
        }
        let endpoints = endpoints
            .into_iter()
            .map(|(options, client)| {
                Endpoint::start(options, client, data_dir, &history, registry, telemetry)
            })
            .collect::<Result<_, _>>()?;
        Ok(RemoteWrite {
            endpoints,
            data_dir: data_dir.to_owned(),
            history,
            registry: Arc::clone(registry),
            telemetry: Arc::clone(telemetry),
        })
    }

    /// Builds what putting `options` in force needs (the clients of new endpoints), changing
    /// nothing yet: a reload calls it before applying anything, so that an endpoint that
    /// cannot be built (a CA file that is no PEM) refuses the whole reload.
    pub fn prepare(&self, options: &[RemoteWriteOptions]) -> Result<Prepared, String> {
        let mut fresh = Vec::new();
        for options in options {
            if !self.endpoints.iter().any(|e| e.options == *options) {
                let client = Client::new(options).map_err(|e| format!("{}: {e}", options.url))?;
                fresh.push((options.clone(), client));
            }
        }
        Ok(Prepared {
            options: options.to_vec(),
            fresh,
        })
    }

    /// Puts prepared options in force: endpoints whose options did not change keep running
    /// (queue and staleness state kept); the others stop (their queued samples spilled, or
    /// counted as dropped, reason `shutdown`) and the new ones start (one whose spill cannot
    /// be opened is left out, logged).
    pub async fn replace(&mut self, prepared: Prepared) {
        let Prepared { options, fresh } = prepared;
        let (kept, gone): (Vec<Endpoint>, Vec<Endpoint>) = std::mem::take(&mut self.endpoints)
            .into_iter()
            .partition(|e| options.contains(&e.options));
        for endpoint in gone {
            endpoint.stop().await;
        }
        self.endpoints = kept;
        for (options, client) in fresh {
            let url = options.url.clone();
            match Endpoint::start(
                options,
                client,
                &self.data_dir,
                &self.history,
                &self.registry,
                &self.telemetry,
            ) {
                Ok(endpoint) => self.endpoints.push(endpoint),
                Err(e) => tracing::error!(%url, "remote-write endpoint not started: {e}"),
            }
        }
    }

    /// Stops every endpoint; what is still queued is spilled for the next start, or without
    /// a spill counted as dropped (`shutdown`).
    pub async fn stop(self) {
        for endpoint in self.endpoints {
            endpoint.stop().await;
        }
    }
}

/// New options and the clients of their new endpoints ([`RemoteWrite::prepare`]).
pub struct Prepared {
    options: Vec<RemoteWriteOptions>,
    fresh: Vec<(RemoteWriteOptions, Client)>,
}

/// One endpoint's tasks and queue.
struct Endpoint {
    options: RemoteWriteOptions,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    shards: Arc<[Shard]>,
    stats: Arc<RemoteStats>,
    spill: Option<SpillParts>,
}

/// An endpoint's spill and the thread that writes it.
struct SpillParts {
    spill: Arc<Spill>,
    writer: std::thread::JoinHandle<()>,
}

/// One shard's queue; its task waits on `ready` when it is empty.
struct Shard {
    queue: Mutex<VecDeque<Queued>>,
    ready: Notify,
    capacity: usize,
    /// Samples handed to the spill and not read back yet; changed only with `queue` locked.
    /// While there are any, new samples go to the spill too, behind them: the memory queue
    /// holds only samples older than the spill's.
    spilled: AtomicU64,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            capacity,
            spilled: AtomicU64::new(0),
        }
    }

    /// Forgets `samples` spilled ones (read back or dropped); `queue` must be locked.
    fn unspill(&self, samples: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let left = self.spilled.load(Relaxed).saturating_sub(samples);
        self.spilled.store(left, Relaxed);
    }
}

/// A sample waiting to be sent.
struct Queued {
    series: Arc<Series>,
    sample: Sample,
}

impl Endpoint {
    fn start(
        options: RemoteWriteOptions,
        client: Client,
        data_dir: &Path,
        history: &Option<Arc<dyn HistorySource>>,
        registry: &Arc<Registry>,
        telemetry: &RemoteWriteTelemetry,
    ) -> Result<Endpoint, String> {
        let stats = telemetry.remote(&options.remote);
        let stop = CancellationToken::new();
        let per_shard = options.queue_samples / options.shards;
        let shards: Arc<[Shard]> = (0..options.shards).map(|_| Shard::new(per_shard)).collect();
        let (spill, chunks) = match options.spill_max_bytes {
            None => (None, None),
            Some(max_bytes) => {
                let (parts, chunks) = open_spill(&options, max_bytes, data_dir, &shards, &stats)?;
                (Some(parts), Some(chunks))
            }
        };
        let client = Arc::new(client);
        let mut tasks = Vec::with_capacity(options.shards + 1);
        for index in 0..options.shards {
            tasks.push(tokio::spawn(send_shard(
                Arc::clone(&shards),
                index,
                Arc::clone(&client),
                Arc::clone(&stats),
                options.clone(),
                Recovery {
                    spill: spill.as_ref().map(|parts| Arc::clone(&parts.spill)),
                    history: history.clone(),
                },
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(snapshots(
            Collector::new(&options, history.clone()),
            Arc::clone(registry),
            Arc::clone(&shards),
            Arc::clone(&stats),
            chunks,
            options.interval,
            stop.clone(),
        )));
        tracing::info!(
            url = %options.url,
            interval = ?options.interval,
            shards = options.shards,
            "remote-write started"
        );
        Ok(Endpoint {
            options,
            stop,
            tasks,
            shards,
            stats,
            spill,
        })
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(parts) = self.spill {
            let shards = Arc::clone(&self.shards);
            let stats = Arc::clone(&self.stats);
            // The snapshot task held the only sender: the writer ends once it has written
            // what was on its way.
            let spilled =
                tokio::task::spawn_blocking(move || spill_at_stop(parts, &shards, &stats)).await;
            if let Ok(samples) = spilled
                && samples > 0
            {
                tracing::info!(url = %self.options.url, samples, "remote-write stopped; its queue is spilled for the next start");
            }
            return;
        }
        let mut left = 0;
        for shard in self.shards.iter() {
            left += shard.queue.lock().drain(..).count() as u64;
        }
        if left > 0 {
            self.stats.add_dropped(Drop::Shutdown, left);
            self.stats
                .pending
                .fetch_sub(left as i64, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(url = %self.options.url, samples = left, "remote-write stopped with samples unsent");
        }
    }
}

/// Opens the endpoint's spill, marks what an earlier run left in it as waiting in each
/// shard, and starts its writer thread; answers the sender the snapshot feeds it with.
fn open_spill(
    options: &RemoteWriteOptions,
    max_bytes: u64,
    data_dir: &Path,
    shards: &Arc<[Shard]>,
    stats: &Arc<RemoteStats>,
) -> Result<(SpillParts, SyncSender<Chunk>), String> {
    let dir = spill::endpoint_dir(data_dir, &options.remote);
    let hasher = shard_hasher();
    let count = shards.len();
    let (spill, waiting) = Spill::open(&dir, count, max_bytes, Arc::clone(stats), |labels| {
        shard_of(&hasher, labels, count)
    })
    .map_err(|e| format!("{}: spill: {e}", options.url))?;
    for (shard, waiting) in shards.iter().zip(waiting) {
        let _queue = shard.queue.lock();
        shard
            .spilled
            .store(waiting, std::sync::atomic::Ordering::Relaxed);
    }
    let spill = Arc::new(spill);
    let (sender, chunks) = std::sync::mpsc::sync_channel(spill::CHUNKS);
    let lost_shards = Arc::clone(shards);
    let lost_stats = Arc::clone(stats);
    let writer = spill::spawn_writer(Arc::clone(&spill), chunks, move |shard, samples, why| {
        let shard = &lost_shards[shard];
        let _queue = shard.queue.lock();
        shard.unspill(samples);
        lost_stats.add_dropped(why, samples);
    })
    .map_err(|e| format!("cannot start the spill writer: {e}"))?;
    Ok((SpillParts { spill, writer }, sender))
}

/// At stop, after the tasks ended: waits for the writer, then spills each shard's memory
/// queue (older than what the shard spilled) before the shard's first segment. Answers how
/// many samples that was.
fn spill_at_stop(parts: SpillParts, shards: &[Shard], stats: &RemoteStats) -> u64 {
    use std::sync::atomic::Ordering::Relaxed;
    let _ = parts.writer.join();
    let mut total = 0;
    for (index, shard) in shards.iter().enumerate() {
        let left: Vec<Queued> = shard.queue.lock().drain(..).collect();
        if left.is_empty() {
            continue;
        }
        let mut bytes = Vec::new();
        for queued in &left {
            spill::encode_record(&mut bytes, &queued.series.labels, queued.sample);
        }
        let samples = left.len() as u64;
        stats.pending.fetch_sub(samples as i64, Relaxed);
        parts
            .spill
            .prepend(index, &bytes, samples, &mut |_, n, why| {
                stats.add_dropped(why, n)
            });
        total += samples;
    }
    parts.spill.sync();
    total
}

/// Takes a snapshot every `interval` and queues it.
async fn snapshots(
    mut collector: Collector,
    registry: Arc<Registry>,
    shards: Arc<[Shard]>,
    stats: Arc<RemoteStats>,
    chunks: Option<SyncSender<Chunk>>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    // After a stall, one snapshot, not a burst of catch-up ones.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let registry = Arc::clone(&registry);
        let shards = Arc::clone(&shards);
        let stats = Arc::clone(&stats);
        let chunks = chunks.clone();
        // Off the reactor: a large registry takes a scrape's time to read.
        let taken = tokio::task::spawn_blocking(move || {
            collector.collect(&registry, unix_millis());
            collector.enqueue(&shards, &stats, chunks.as_ref());
            collector
        })
        .await;
        match taken {
            Ok(back) => collector = back,
            Err(e) => {
                tracing::error!("a remote-write snapshot failed, this endpoint stops: {e}");
                return;
            }
        }
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What a shard makes up with for samples the receiver would otherwise miss.
struct Recovery {
    /// Where its overflow waits, to be sent after the memory queue.
    spill: Option<Arc<Spill>>,
    /// Where a gap is resent from.
    history: Option<Arc<dyn HistorySource>>,
}

/// Sends one shard's queue, batch by batch, until `stop`.
async fn send_shard(
    shards: Arc<[Shard]>,
    index: usize,
    client: Arc<Client>,
    stats: Arc<RemoteStats>,
    options: RemoteWriteOptions,
    recovery: Recovery,
    stop: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let Recovery { spill, history } = recovery;
    let shard = &shards[index];
    let mut batch: Vec<Queued> = Vec::with_capacity(options.max_samples_per_send);
    let mut scratch = Vec::new();
    let mut retry_log = LogLimit::default();
    let mut refusal_log = LogLimit::default();
    let mut tracker = GapTracker::default();
    // A sample later than this after the last one answered follows a gap.
    let slack_ms = options.interval.as_millis() as i64 * 3 / 2;
    // At stop, with a spill, the batch in hand goes back to the front of the queue, which is
    // spilled as it is.
    let give_back = |batch: &mut Vec<Queued>| {
        let mut queue = shard.queue.lock();
        for queued in batch.drain(..).rev() {
            queue.push_front(queued);
        }
    };
    loop {
        batch.clear();
        let refill = {
            let mut queue = shard.queue.lock();
            let n = queue.len().min(options.max_samples_per_send);
            batch.extend(queue.drain(..n));
            batch.is_empty() && shard.spilled.load(Relaxed) > 0
        };
        if let (true, Some(spill)) = (refill, &spill) {
            if !read_back(spill, index, shard, &stats, options.max_sample_age).await {
                // Nothing on disk yet (a chunk on its way to the writer): look again soon.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            continue;
        }
        if batch.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shard.ready.notified() => continue,
            }
        }
        if let Some(history) = &history {
            let resent = fill_gaps(&mut batch, &tracker, history, slack_ms, &options).await;
            if resent > 0 {
                stats.pending.fetch_add(resent as i64, Relaxed);
                stats.resent.fetch_add(resent, Relaxed);
            }
        }
        let count = batch.len() as u64;
        let mut protocol = client.protocol();
        let mut body = Bytes::from(encode_batch(&batch, protocol, &mut scratch));
        let newest = batch.iter().map(|q| q.sample.timestamp).max().unwrap_or(0);
        let mut attempt = 0;
        let finished = |stats: &RemoteStats| stats.pending.fetch_sub(count as i64, Relaxed);
        loop {
            // Another shard found the receiver reads 1.0 only while this batch waited.
            if client.protocol() != protocol {
                protocol = client.protocol();
                body = Bytes::from(encode_batch(&batch, protocol, &mut scratch));
            }
            let sent = tokio::select! {
                _ = stop.cancelled() => None,
                sent = client.send(body.clone(), protocol) => Some(sent),
            };
            let Some((outcome, took)) = sent else {
                if spill.is_some() {
                    give_back(&mut batch);
                } else {
                    stats.add_dropped(Drop::Shutdown, count);
                    finished(&stats);
                }
                return;
            };
            stats.requests.fetch_add(1, Relaxed);
            stats.request_seconds.add(took.as_secs_f64());
            let wait = match outcome {
                Outcome::Sent => {
                    stats.samples.fetch_add(count, Relaxed);
                    stats.highest_sent_ms.fetch_max(newest, Relaxed);
                    finished(&stats);
                    if history.is_some() {
                        track_answered(&mut tracker, &batch);
                    }
                    break;
                }
                Outcome::Refused { status, why } => {
                    stats.failed.fetch_add(count, Relaxed);
                    stats.add_dropped(Drop::Rejected, count);
                    finished(&stats);
                    // Refused for good: what history holds for it would be too.
                    if history.is_some() {
                        track_answered(&mut tracker, &batch);
                    }
                    if refusal_log.allow() {
                        tracing::warn!(url = %options.url, status, samples = count, "remote-write receiver refused a batch, dropped (not retried): {why}");
                    }
                    break;
                }
                Outcome::Unsupported { why } => {
                    if client.fall_back() {
                        stats.fallbacks.fetch_add(1, Relaxed);
                        tracing::warn!(url = %options.url, "remote-write receiver reads 1.0 only; this endpoint sends 1.0 from now on: {why}");
                    }
                    // At once, as 1.0: nothing of the batch was written.
                    continue;
                }
                Outcome::Retry { why, retry_after } => {
                    stats.retried.fetch_add(count, Relaxed);
                    let wait = retry_after.unwrap_or_else(|| {
                        send::backoff(
                            options.min_backoff,
                            options.max_backoff,
                            attempt,
                            send::jitter_bits(),
                        )
                    });
                    if retry_log.allow() {
                        tracing::warn!(url = %options.url, samples = count, ?wait, "remote-write failed, will retry: {why}");
                    }
                    wait
                }
            };
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = stop.cancelled() => {
                    if spill.is_some() {
                        give_back(&mut batch);
                    } else {
                        stats.add_dropped(Drop::Shutdown, count);
                        finished(&stats);
                    }
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Puts before each series with history in `batch` what the history holds for the gap since
/// the receiver last answered for it (see `gap`); answers how many samples that added.
async fn fill_gaps(
    batch: &mut Vec<Queued>,
    tracker: &GapTracker,
    history: &Arc<dyn HistorySource>,
    slack_ms: i64,
    options: &RemoteWriteOptions,
) -> u64 {
    let mut gaps = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for queued in batch.iter() {
        let series = &queued.series;
        let Some(origin) = &series.origin else {
            continue;
        };
        if !seen.insert(series.key) {
            continue;
        }
        if let Some(gap) = tracker.gap(series.key, queued.sample, slack_ms) {
            gaps.push((Arc::clone(series), Arc::clone(origin), gap));
        }
    }
    let oldest = unix_millis() - options.max_sample_age.as_millis() as i64;
    let mut front = Vec::new();
    for (series, origin, gap) in gaps {
        let after = gap.after_ms.max(oldest - 1);
        match history.between(&origin, after, gap.next).await {
            Ok(samples) => front.extend(samples.into_iter().map(|sample| Queued {
                series: Arc::clone(&series),
                sample,
            })),
            Err(e) => {
                tracing::warn!(url = %options.url, "remote-write: cannot read a gap from history: {e}")
            }
        }
    }
    let added = front.len() as u64;
    if added > 0 {
        front.append(batch);
        *batch = front;
    }
    added
}

/// The receiver answered for every sample of `batch`.
fn track_answered(tracker: &mut GapTracker, batch: &[Queued]) {
    for queued in batch {
        let series = &queued.series;
        tracker.answered(series.key, queued.sample.timestamp, series.origin.is_some());
    }
}

/// Moves the shard's oldest spill segment into its (empty) memory queue, dropping samples older
/// than `max_age` (counted `too_old`); false when the spill had no segment for the shard.
async fn read_back(
    spill: &Arc<Spill>,
    index: usize,
    shard: &Shard,
    stats: &RemoteStats,
    max_age: Duration,
) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let from = Arc::clone(spill);
    let Ok(Some(loaded)) = tokio::task::spawn_blocking(move || from.take_oldest(index)).await
    else {
        return false;
    };
    let oldest = unix_millis() - max_age.as_millis() as i64;
    // One `Series` per label set, so a batch groups a series' samples as a live one does.
    let mut interned: HashMap<Vec<Label>, Arc<Series>> = HashMap::new();
    let meta = Arc::new(v2::Meta::unspecified());
    let mut queued = 0u64;
    let mut too_old = 0u64;
    let mut queue = shard.queue.lock();
    for (labels, sample) in loaded.records {
        if sample.timestamp < oldest {
            too_old += 1;
            continue;
        }
        let series = interned
            .entry(labels)
            .or_insert_with_key(|labels| {
                Arc::new(Series {
                    key: gap::key_of(labels),
                    labels: labels.clone(),
                    shard: index,
                    meta: Arc::clone(&meta),
                    origin: None,
                })
            })
            .clone();
        queue.push_back(Queued { series, sample });
        queued += 1;
    }
    shard.unspill(loaded.counted);
    drop(queue);
    stats.pending.fetch_add(queued as i64, Relaxed);
    if too_old > 0 {
        stats.add_dropped(Drop::TooOld, too_old);
    }
    // A cut or damaged segment held fewer than it was counted with: those are gone.
    let missing = loaded.counted.saturating_sub(queued + too_old);
    if missing > 0 {
        stats.add_dropped(Drop::SpillError, missing);
    }
    true
}

/// The request body for a batch: one `TimeSeries` per series, its samples in queue order.
fn encode_batch(batch: &[Queued], protocol: Protocol, scratch: &mut Vec<u8>) -> Vec<u8> {
    if protocol == Protocol::V2 {
        let samples = batch
            .iter()
            .map(|q| (q.series.labels.as_slice(), &*q.series.meta, q.sample));
        return v2::encode(samples, scratch);
    }
    let mut index: HashMap<*const Series, usize> = HashMap::with_capacity(batch.len());
    let mut request = WriteRequest {
        timeseries: Vec::with_capacity(batch.len()),
    };
    for queued in batch {
        let slot = *index.entry(Arc::as_ptr(&queued.series)).or_insert_with(|| {
            request.timeseries.push(TimeSeries {
                labels: queued.series.labels.clone(),
                samples: Vec::new(),
            });
            request.timeseries.len() - 1
        });
        request.timeseries[slot].samples.push(queued.sample);
    }
    wire::encode(&request, scratch)
}

/// One series as sent: its labels (sorted by name, `__name__` among them) and its shard.
#[derive(Debug)]
pub struct Series {
    labels: Vec<Label>,
    shard: usize,
    /// Its family's type, help and unit, sent by 2.0.
    meta: Arc<v2::Meta>,
    /// Its key in a shard's [`GapTracker`].
    key: u64,
    /// The registry series it is, when a history source keeps its values.
    origin: Option<Arc<Origin>>,
}

/// A registry series the collector has seen: the series it is sent as (one for counters and
/// gauges, one per bucket plus `_sum` and `_count` for histograms, ...).
struct Known {
    kind: Kind,
    /// Empty when the selector's labels left the series out.
    derived: Vec<Arc<Series>>,
    /// The last snapshot that saw it.
    generation: u64,
}

/// Reads snapshots and remembers which series it sent, for staleness.
struct Collector {
    selector: Selector,
    history: Option<Arc<dyn HistorySource>>,
    external: Vec<(String, String)>,
    shards: usize,
    hasher: ahash::RandomState,
    known: HashMap<Box<[u8]>, Known>,
    generation: u64,
    timestamp: i64,
    /// The lookup key being built: family name, `{`, escaped labels.
    key: Vec<u8>,
    /// The snapshot's samples, in visiting order.
    values: Vec<(Arc<Series>, f64)>,
    /// Scratch for a series' values.
    scratch: Vec<f64>,
    /// The metadata of the families seen, shared by their series.
    metas: HashMap<Box<str>, Arc<v2::Meta>>,
}

impl Collector {
    fn new(options: &RemoteWriteOptions, history: Option<Arc<dyn HistorySource>>) -> Collector {
        Collector {
            selector: options.selector.clone(),
            history,
            external: options.external_labels.clone(),
            shards: options.shards,
            hasher: shard_hasher(),
            known: HashMap::new(),
            generation: 0,
            timestamp: 0,
            key: Vec::new(),
            values: Vec::new(),
            scratch: Vec::new(),
            metas: HashMap::new(),
        }
    }

    /// Reads every selected series of `registry` as at `timestamp` (Unix ms), and adds a
    /// staleness marker for each series sent before that is gone.
    fn collect(&mut self, registry: &Registry, timestamp: i64) {
        self.generation += 1;
        self.timestamp = timestamp;
        self.values.clear();
        registry.visit(self);
        let generation = self.generation;
        let stale = f64::from_bits(STALE_NAN_BITS);
        let values = &mut self.values;
        self.known.retain(|_, known| {
            if known.generation == generation {
                return true;
            }
            values.extend(known.derived.iter().map(|s| (Arc::clone(s), stale)));
            false
        });
    }

    /// Queues the snapshot, each sample in its series' shard. What a full shard has no room
    /// for goes to `spill` (all of it while the shard has samples spilled, to stay behind
    /// them), or is dropped without one or when the spill's writer is behind.
    fn enqueue(
        &mut self,
        shards: &[Shard],
        stats: &RemoteStats,
        spill: Option<&SyncSender<Chunk>>,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut queued = 0u64;
        let mut dropped = 0u64;
        for (index, shard) in shards.iter().enumerate() {
            let mut queue = shard.queue.lock();
            let before = queued;
            let mut overflow = Vec::new();
            let mut overflowed = 0u64;
            for (series, value) in self.values.iter().filter(|(s, _)| s.shard == index) {
                let sample = Sample {
                    value: *value,
                    timestamp: self.timestamp,
                };
                let in_memory = overflowed == 0
                    && shard.spilled.load(Relaxed) == 0
                    && queue.len() < shard.capacity;
                if in_memory {
                    queue.push_back(Queued {
                        series: Arc::clone(series),
                        sample,
                    });
                    queued += 1;
                } else if spill.is_some() {
                    spill::encode_record(&mut overflow, &series.labels, sample);
                    overflowed += 1;
                } else {
                    dropped += 1;
                }
            }
            if let (Some(sender), true) = (spill, overflowed > 0) {
                // Counted before it is offered, under the lock: the next snapshot must see
                // the shard as spilling.
                shard.spilled.fetch_add(overflowed, Relaxed);
                let chunk = Chunk {
                    shard: index,
                    bytes: overflow,
                    samples: overflowed,
                };
                if spill::offer(sender, chunk).is_err() {
                    shard.unspill(overflowed);
                    dropped += overflowed;
                }
            }
            drop(queue);
            if queued > before {
                shard.ready.notify_one();
            }
        }
        stats.pending.fetch_add(queued as i64, Relaxed);
        if dropped > 0 {
            stats.add_dropped(Drop::QueueFull, dropped);
        }
        self.values.clear();
    }

    /// The metadata of `family`, shared with its series seen before unless it changed.
    fn meta(&mut self, family: &FamilyView<'_>) -> Arc<v2::Meta> {
        let fresh = v2::Meta::of(family);
        match self.metas.get(family.name) {
            Some(known) if **known == fresh => Arc::clone(known),
            _ => {
                let meta = Arc::new(fresh);
                self.metas.insert(family.name.into(), Arc::clone(&meta));
                meta
            }
        }
    }

    /// The series a registry series is sent as, built on first sight.
    fn derive(
        &self,
        family: &FamilyView<'_>,
        series: &SeriesView<'_>,
        meta: &Arc<v2::Meta>,
    ) -> Vec<Arc<Series>> {
        let pairs: Vec<(String, String)> = series
            .labels
            .pairs()
            .map(|(n, v)| (n.to_owned(), v.into_owned()))
            .collect();
        if !self.selector.series(&pairs) {
            return Vec::new();
        }
        let name = family.name;
        let one = |suffix: &str, extra: Option<(&str, String)>| {
            self.labelled(&pairs, format!("{name}{suffix}"), extra, meta)
        };
        // Bucket bounds and quantiles are spelled as the text formats spell them, so that
        // `le="0.25"` selects the same series whether Prometheus scraped or received it.
        let spelled = |value: f64| {
            let mut text = Vec::new();
            write_le(&mut text, value, Format::Text);
            String::from_utf8_lossy(&text).into_owned()
        };
        let with_sum_and_count = |points: &mut dyn Iterator<Item = Arc<Series>>| {
            let mut derived: Vec<Arc<Series>> = points.collect();
            derived.push(one("_sum", None));
            derived.push(one("_count", None));
            derived
        };
        match series.value {
            ValueView::Counter(_) => vec![self.with_origin(one("_total", None), family, pairs)],
            ValueView::Gauge(_) => vec![self.with_origin(one("", None), family, pairs)],
            ValueView::Set(_) => vec![one("", None)],
            ValueView::Histogram(h) => {
                let bounds = h.bounds().iter().copied().chain([f64::INFINITY]);
                with_sum_and_count(&mut bounds.map(|b| one("_bucket", Some(("le", spelled(b))))))
            }
            ValueView::Summary(s) => {
                let mut quantiles = Vec::new();
                s.read(|q, _| quantiles.push(q));
                let points = quantiles.into_iter();
                with_sum_and_count(&mut points.map(|q| one("", Some(("quantile", spelled(q))))))
            }
        }
    }

    /// `sent`, knowing its registry series when the history source keeps that one's values.
    fn with_origin(
        &self,
        sent: Arc<Series>,
        family: &FamilyView<'_>,
        pairs: Vec<(String, String)>,
    ) -> Arc<Series> {
        let Some(history) = &self.history else {
            return sent;
        };
        let origin = Origin {
            family: family.name.to_owned(),
            kind: family.kind,
            pairs,
        };
        if !history.covers(&origin) {
            return sent;
        }
        Arc::new(Series {
            labels: sent.labels.clone(),
            shard: sent.shard,
            key: sent.key,
            meta: Arc::clone(&sent.meta),
            origin: Some(Arc::new(origin)),
        })
    }

    /// One series: `__name__`, the series' labels, `extra`, and the external labels the
    /// series does not have itself, sorted by name (receivers such as Mimir require it).
    fn labelled(
        &self,
        pairs: &[(String, String)],
        name: String,
        extra: Option<(&str, String)>,
        meta: &Arc<v2::Meta>,
    ) -> Arc<Series> {
        let mut labels: Vec<Label> = Vec::with_capacity(pairs.len() + self.external.len() + 2);
        labels.push(Label {
            name: "__name__".into(),
            value: name,
        });
        labels.extend(pairs.iter().map(|(n, v)| Label {
            name: n.clone(),
            value: v.clone(),
        }));
        if let Some((n, v)) = extra {
            labels.push(Label {
                name: n.to_owned(),
                value: v,
            });
        }
        for (n, v) in &self.external {
            if !labels.iter().any(|l| l.name == *n) {
                labels.push(Label {
                    name: n.clone(),
                    value: v.clone(),
                });
            }
        }
        labels.sort_by(|a, b| a.name.cmp(&b.name));
        let shard = shard_of(&self.hasher, &labels, self.shards);
        Arc::new(Series {
            key: gap::key_of(&labels),
            labels,
            shard,
            meta: Arc::clone(meta),
            origin: None,
        })
    }
}

/// The hasher of [`shard_of`]. Fixed keys: a series keeps its shard across reloads and
/// restarts (a spill is read back by the shard that wrote it).
fn shard_hasher() -> ahash::RandomState {
    ahash::RandomState::with_seeds(1, 2, 3, 4)
}

/// The shard of a series, from its sorted labels.
fn shard_of(hasher: &ahash::RandomState, labels: &[Label], shards: usize) -> usize {
    let mut hash = 0u64;
    for label in labels {
        hash = hash.rotate_left(5) ^ hasher.hash_one((&label.name, &label.value));
    }
    (hash % shards as u64) as usize
}

/// The values of a series, in the order of its derived series.
fn values_of(value: &ValueView<'_>, out: &mut Vec<f64>) {
    out.clear();
    match *value {
        ValueView::Counter(v) | ValueView::Gauge(v) => out.push(v),
        ValueView::Set(n) => out.push(n as f64),
        ValueView::Histogram(h) => {
            let mut cumulative = 0u64;
            for count in h.counts() {
                cumulative = cumulative.saturating_add(count);
                out.push(cumulative as f64);
            }
            out.push(h.sum());
            out.push(cumulative as f64);
        }
        ValueView::Summary(s) => {
            let (sum, count) = s.read(|_, v| out.push(v));
            out.push(sum);
            out.push(count as f64);
        }
    }
}

impl Visitor for Collector {
    fn family(&mut self, family: &FamilyView<'_>) -> bool {
        !crate::telemetry::is_reserved_name(family.name) && self.selector.family(family.name)
    }

    fn series(&mut self, family: &FamilyView<'_>, series: &SeriesView<'_>) {
        self.key.clear();
        self.key.extend_from_slice(family.name.as_bytes());
        self.key.push(b'{');
        series.labels.write_escaped(&mut self.key);
        let mut scratch = std::mem::take(&mut self.scratch);
        values_of(&series.value, &mut scratch);
        let fits = |known: &Known| {
            known.kind == family.kind
                && (known.derived.is_empty() || known.derived.len() == scratch.len())
        };
        let generation = self.generation;
        let seen = match self.known.get_mut(self.key.as_slice()) {
            Some(known) if fits(known) => {
                known.generation = generation;
                true
            }
            _ => false,
        };
        if !seen {
            let meta = self.meta(family);
            let derived = self.derive(family, series, &meta);
            let known = Known {
                kind: family.kind,
                derived,
                generation,
            };
            self.known.insert(self.key.as_slice().into(), known);
        }
        if let Some(known) = self.known.get(self.key.as_slice()) {
            self.values.extend(
                known
                    .derived
                    .iter()
                    .zip(&scratch)
                    .map(|(series, value)| (Arc::clone(series), *value)),
            );
        }
        self.scratch = scratch;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Recorder;
    use crate::registry::{RegistrySettings, Update};

    fn options(shards: usize, queue: usize) -> RemoteWriteOptions {
        let table: config::RemoteWriteConfig = toml::from_str(&format!(
            "url = 'http://127.0.0.1:1/write'\nshards = {shards}\nqueue_samples = {queue}\n\
             external_labels = {{ site = 'a', zone = 'b' }}\nmatch_labels = {{ keep = 'y' }}"
        ))
        .unwrap();
        table.build().unwrap()
    }

    fn collected(
        collector: &mut Collector,
        registry: &Registry,
    ) -> Vec<(Vec<(String, String)>, f64)> {
        collector.collect(registry, 1000);
        collector
            .values
            .iter()
            .map(|(s, v)| {
                let labels = s
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                (labels, *v)
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn a_snapshot_sends_classic_series_with_external_labels_and_marks_the_gone_stale() {
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        let recorder = Recorder::for_registry(&registry);
        let kept = [("keep", "y")];
        recorder
            .record("jobs", Kind::Counter, kept, Update::Add(3.0))
            .unwrap();
        recorder
            .record("jobs", Kind::Counter, [("keep", "n")], Update::Add(1.0))
            .unwrap();
        recorder
            .record(
                "temp",
                Kind::Gauge,
                [("keep", "y"), ("zone", "own")],
                Update::Set(-2.5),
            )
            .unwrap();
        recorder
            .record(
                "lat",
                Kind::Histogram,
                kept,
                Update::Observe {
                    value: 0.2,
                    weight: 2,
                },
            )
            .unwrap();
        let mut collector = Collector::new(&options(2, 100), None);
        let first = collected(&mut collector, &registry);
        let find = |name: &str, extra: &[(&str, &str)]| {
            first.iter().find(|(labels, _)| {
                labels.iter().any(|(n, v)| n == "__name__" && v == name)
                    && extra
                        .iter()
                        .all(|(n, v)| labels.iter().any(|(a, b)| a == n && b == v))
            })
        };
        assert_eq!(
            find("jobs_total", &[]).unwrap(),
            &(
                pairs(&[
                    ("__name__", "jobs_total"),
                    ("keep", "y"),
                    ("site", "a"),
                    ("zone", "b")
                ]),
                3.0
            )
        );
        // The series' own zone wins over the external one.
        assert_eq!(
            find("temp", &[]).unwrap().0,
            pairs(&[
                ("__name__", "temp"),
                ("keep", "y"),
                ("site", "a"),
                ("zone", "own")
            ])
        );
        assert_eq!(find("lat_bucket", &[("le", "0.1")]).unwrap().1, 0.0);
        assert_eq!(find("lat_bucket", &[("le", "0.25")]).unwrap().1, 2.0);
        assert_eq!(find("lat_bucket", &[("le", "+Inf")]).unwrap().1, 2.0);
        assert_eq!(find("lat_count", &[]).unwrap().1, 2.0);
        assert!((find("lat_sum", &[]).unwrap().1 - 0.4).abs() < 1e-12);
        // keep="n" is left out by match_labels.
        assert_eq!(
            first.iter().filter(|(l, _)| l[0].1 == "jobs_total").count(),
            1
        );
        let histogram_series = registry.settings().histogram_buckets.len() + 1 + 2;
        assert_eq!(first.len(), 1 + 1 + histogram_series);

        // Unchanged: the same series, and no staleness marker.
        let second = collected(&mut collector, &registry);
        assert_eq!(second.len(), first.len());
        assert!(second.iter().all(|(_, v)| !wire::is_stale_marker(*v)));

        registry.remove_series("temp", |_| true);
        let third = collected(&mut collector, &registry);
        let stale: Vec<_> = third
            .iter()
            .filter(|(_, v)| wire::is_stale_marker(*v))
            .collect();
        assert_eq!(stale.len(), 1, "{third:?}");
        assert_eq!(stale[0].0[0].1, "temp");
        // Marked once only.
        let fourth = collected(&mut collector, &registry);
        assert!(fourth.iter().all(|(_, v)| !wire::is_stale_marker(*v)));
        assert_eq!(fourth.len(), first.len() - 1);
    }

    /// A registry of `n` selected gauges.
    fn gauges(n: usize) -> Arc<Registry> {
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        let recorder = Recorder::for_registry(&registry);
        for i in 0..n {
            let value = i.to_string();
            recorder
                .record(
                    "g",
                    Kind::Gauge,
                    [("keep", "y"), ("i", value.as_str())],
                    Update::Set(1.0),
                )
                .unwrap();
        }
        registry
    }

    fn one_shard(capacity: usize) -> Vec<Shard> {
        vec![Shard::new(capacity)]
    }

    #[test]
    fn a_full_shard_drops_and_counts_the_rest() {
        let registry = gauges(50);
        let options = options(1, 30);
        let shards = one_shard(30);
        let stats = RemoteWriteTelemetry::default().remote("r");
        let mut collector = Collector::new(&options, None);
        collector.collect(&registry, 5);
        collector.enqueue(&shards, &stats, None);
        assert_eq!(shards[0].queue.lock().len(), 30);
        assert_eq!(stats.dropped(Drop::QueueFull), 20);
        assert_eq!(stats.pending.load(std::sync::atomic::Ordering::Relaxed), 30);
    }

    #[test]
    fn the_queue_stays_within_its_memory_bound() {
        assert_eq!(
            std::mem::size_of::<Queued>(),
            24,
            "the bound documented above"
        );
        let registry = gauges(1500);
        let capacity = 1000;
        let shards = one_shard(capacity);
        let stats = RemoteWriteTelemetry::default().remote("r");
        let mut collector = Collector::new(&options(1, capacity), None);
        // Fill, half drain (a send), fill again: the ring buffer never outgrows twice the bound.
        for timestamp in 0..4 {
            collector.collect(&registry, timestamp);
            collector.enqueue(&shards, &stats, None);
            let mut queue = shards[0].queue.lock();
            assert_eq!(queue.len(), capacity);
            assert!(queue.capacity() <= 2 * capacity, "{}", queue.capacity());
            queue.drain(..capacity / 2);
        }
        assert_eq!(
            stats.dropped(Drop::QueueFull),
            1500 - 1000 + 3 * (1500 - 500)
        );
    }

    #[test]
    fn a_batch_groups_samples_by_series_in_order() {
        let series = |name: &str| {
            Arc::new(Series {
                labels: vec![Label {
                    name: "__name__".into(),
                    value: name.into(),
                }],
                shard: 0,
                meta: Arc::new(v2::Meta {
                    kind: v2::MetricType::Gauge,
                    help: format!("{name} help"),
                    unit: String::new(),
                }),
                key: 0,
                origin: None,
            })
        };
        let (a, b) = (series("a"), series("b"));
        let queued = |s: &Arc<Series>, t| Queued {
            series: Arc::clone(s),
            sample: Sample {
                value: t as f64,
                timestamp: t,
            },
        };
        let batch = [queued(&a, 1), queued(&b, 1), queued(&a, 2), queued(&a, 3)];
        let request = wire::decode(&encode_batch(&batch, Protocol::V1, &mut Vec::new())).unwrap();
        assert_eq!(request.timeseries.len(), 2);
        let times: Vec<i64> = request.timeseries[0]
            .samples
            .iter()
            .map(|s| s.timestamp)
            .collect();
        assert_eq!(request.timeseries[0].labels[0].value, "a");
        assert_eq!(times, [1, 2, 3]);
        assert_eq!(request.timeseries[1].samples.len(), 1);

        // 2.0 groups alike, and each series carries its family's metadata.
        let body = encode_batch(&batch, Protocol::V2, &mut Vec::new());
        let request = v2::decode(&body).unwrap();
        assert_eq!(request.timeseries.len(), 2);
        let first = &request.timeseries[0];
        assert_eq!(request.labels(first).unwrap()[0].1, "a");
        let times: Vec<i64> = first.samples.iter().map(|s| s.timestamp).collect();
        assert_eq!(times, [1, 2, 3]);
        let help = first.metadata.unwrap().help_ref;
        assert_eq!(request.symbol(help).unwrap(), "a help");
    }
}
