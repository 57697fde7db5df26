//! Durable storage for what the HTTP APIs are given: metric definitions, recorded points (with
//! their labels and timestamps) and Deeploy data points.
//!
//! The [`Store`] handle is what the API uses. Underneath, two small traits let a second engine
//! join: an [`Engine`] applies batches of [`Write`]s, each batch one durable transaction, and a
//! [`Reader`] answers the few reads queries need. [`sqlite`] is today's engine.
//!
//! Writes: one writer thread owns the engine and is fed by a bounded channel. It takes what is
//! queued (up to [`MAX_GROUP`] writes) and commits it in one transaction — group commit, so a
//! busy API pays one `fsync` per group instead of one per request — and answers each request
//! only after that commit is durable. A `2xx` built on that answer survives `kill -9` and power
//! loss. The receive threads of the StatsD listeners never write here.
//!
//! Recorded points of a large group are committed in two steps: durably into a journal (what
//! the answer waits for), then into the table queries read, many batches at once
//! ([`Engine::apply_pending`]; the [`sqlite`] module says why, and why a small group goes
//! straight into that table). The writer applies what is pending when [`APPLY_POINTS`] points
//! wait, when the oldest has waited [`APPLY_AFTER`], when a reader asks (below), and before it
//! stops; the engine itself applies before deletes and expiry, and at open. So the points
//! waiting in memory are bounded by [`APPLY_POINTS`] plus one group.
//!
//! Reads: on the blocking pool, through the engine's own read connections, beside the writer.
//! Read-your-writes: while points are pending, a read first sends the writer a barrier and
//! waits for it to apply them, so it sees every point acknowledged before it asked. With
//! nothing pending (a shared counter says so) a read costs no trip to the writer.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

pub mod compact;
pub mod journal;
pub mod loose;
pub mod packed;
pub mod rollup;
pub mod sqlite;
pub mod tiers;

/// Most writes committed in one transaction.
pub const MAX_GROUP: usize = 256;

/// Requests waiting for the writer before senders wait too.
const QUEUE: usize = 1024;

/// Pending points that make the writer apply them (about 2 MB of them in memory, applied in
/// tens of milliseconds).
pub const APPLY_POINTS: usize = 50_000;

/// The longest a point waits in the journal while the writer has nothing else to do.
pub const APPLY_AFTER: Duration = Duration::from_secs(1);

/// Time buckets of the points table, in milliseconds: points are keyed metric → bucket →
/// series → time, so a write lands near the end of its metric's key range and one series'
/// range query is one seek per bucket.
pub const BUCKET_MS: i64 = 3_600_000;

/// A metric definition as stored: the API's own JSON document, opaque to the store.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredMetric {
    /// The store's key, used by points and data points.
    pub id: i64,
    /// The public id the API answers with.
    pub uid: String,
    pub tenant: String,
    /// Which API and which part of it owns the definition: `matih`, or `deeploy/<deployment>`.
    pub scope: String,
    pub name: String,
    /// The definition, as the owning API serialises it.
    pub document: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// One recorded value of one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The series' labels as a JSON object with sorted keys (see [`labels_key`]).
    pub labels: Arc<str>,
    pub ts_ms: i64,
    pub value: f64,
}

/// One Deeploy data point, in the order it was posted.
#[derive(Clone, Debug, PartialEq)]
pub struct DataPoint {
    pub x: String,
    pub y: f64,
    /// The prediction log ids, as a JSON array, when the client sent any.
    pub prediction_ids: Option<String>,
}

/// A change to the store.
#[derive(Clone, Debug)]
pub enum Write {
    /// Inserts a definition, or replaces the one with the same `uid`. Answers its `id`.
    PutMetric(StoredMetric),
    /// Removes a definition with its series, points and data points.
    DeleteMetric { id: i64 },
    /// Appends points to a metric.
    Points { metric: i64, points: Vec<Point> },
    /// Appends Deeploy data points to a metric. Answers their first sequence number.
    DataPoints { metric: i64, points: Vec<DataPoint> },
    /// Removes every Deeploy data point of a metric.
    ClearDataPoints { metric: i64 },
    /// Removes a metric's points older than `before_ms` (retention). Answers how many.
    Expire { metric: i64, before_ms: i64 },
    /// One sampling tick of history, rolled up into the coarser tiers ([`tiers`]).
    Samples(Box<tiers::SampleBatch>),
    /// Removes a history metric's samples older than each tier's cut `(resolution_ms,
    /// before_ms)`, and its series left without any. Answers how many rows.
    ExpireHistory { metric: i64, cuts: Vec<(i64, i64)> },
    /// Makes these resolutions (finest first) the tiers recorded points roll up into
    /// ([`rollup`]); other tiers than before rebuild every rollup.
    RollupTiers(Vec<i64>),
    /// Compacts the history buckets of `tiers` closed before `closed_before_ms` (see
    /// [`compact`]): sent at start, so a store filled while no daemon ran (an import, a restart
    /// after a long stop) is compacted at once, not after the first sampling tick.
    Compact {
        tiers: Arc<[tiers::Tier]>,
        closed_before_ms: i64,
    },
    /// Rebuilds a slice of the rollups of recorded points due by `now_ms`. Answers how many
    /// intervals.
    Roll { now_ms: i64 },
}

impl Write {
    /// How many recorded points it appends.
    fn recorded(&self) -> usize {
        match self {
            Write::Points { points, .. } => points.len(),
            _ => 0,
        }
    }

    /// How many sequence numbers it spends: one per recorded point and per Deeploy data point.
    fn numbered(&self) -> usize {
        match self {
            Write::Points { points, .. } => points.len(),
            Write::DataPoints { points, .. } => points.len(),
            _ => 0,
        }
    }
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The stored definition's id.
    Metric(i64),
    /// How many rows went.
    Removed(u64),
    /// The sequence number of the first data point appended; the others follow it one by one.
    /// Unique in the file and never reused: the points' ids.
    DataPoints {
        first_seq: i64,
    },
    /// How many intervals a [`Write::Roll`] rebuilt.
    Rolled(usize),
    Done,
}

/// Why the store could not do something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The engine failed (disk full, I/O error, corruption): the write did not happen.
    Engine(String),
    /// The writer is gone (the daemon is shutting down).
    Closed,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Engine(message) => write!(f, "storage failed: {message}"),
            StoreError::Closed => f.write_str("storage is shutting down"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Applies writes. Owned by the writer thread.
pub trait Engine: Send + 'static {
    /// Applies `writes` in order, in one transaction that is durable when this returns. A write
    /// that fails alone (its own result is `Err`) leaves the others in; an `Err` for the whole
    /// call means none of them happened.
    fn commit(&mut self, writes: &[Write]) -> Result<Vec<Result<Written, StoreError>>, StoreError>;

    /// Points committed but not yet visible to the [`Reader`] (an engine that writes them in
    /// one step has none).
    fn pending(&self) -> usize {
        0
    }

    /// Makes every pending point visible to the [`Reader`], durably. On an error they stay
    /// pending (and durable).
    fn apply_pending(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the engine has work of its own to do while no write waits (compacting history).
    fn busy(&self) -> bool {
        false
    }

    /// Does a short piece of that work, in a transaction of its own, and says what it did. An
    /// engine that fails at it stops being [`Engine::busy`] until new writes give it a reason
    /// to try again.
    fn work(&mut self) -> Result<Worked, StoreError> {
        Ok(Worked::default())
    }
}

/// What a piece of [`Engine::work`] did: history compaction ([`compact`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Worked {
    /// Series' buckets packed into rows of their own.
    pub packed: usize,
    /// The loose cells they replaced.
    pub cells: usize,
    /// Groups left as they were because a body did not read (logged).
    pub unreadable: usize,
}

/// What the writer reports for the self-metrics, shared with them (unlike a [`Store`] handle,
/// it does not keep the writer running).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// The engine's pending points, as the writer last saw them.
    pending: AtomicUsize,
    compacted_series: AtomicU64,
    compacted_cells: AtomicU64,
    compaction_unreadable: AtomicU64,
    compaction_micros: AtomicU64,
}

impl StoreStats {
    fn worked(&self, worked: Worked, took: std::time::Duration) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.compacted_series, worked.packed);
        add(&self.compacted_cells, worked.cells);
        add(&self.compaction_unreadable, worked.unreadable);
        let micros = took.as_micros().min(u128::from(u64::MAX)) as u64;
        self.compaction_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// `tallyd_store_pending_points` and the history compaction counters.
    pub fn self_metrics(&self) -> Vec<crate::telemetry::SelfMetric> {
        use crate::registry::Kind;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let metric = crate::telemetry::SelfMetric::single;
        vec![
            metric(
                "tallyd_store_pending_points",
                Kind::Gauge,
                "Recorded points acknowledged (durable in the store's journal) and not yet applied \
                 to the table queries read; applied within a second, or at once when a query asks.",
                self.pending.load(Ordering::Relaxed) as f64,
            ),
            metric(
                "tallyd_history_compacted_series",
                Kind::Counter,
                "Series' closed history buckets compacted into packed rows of their own.",
                load(&self.compacted_series),
            ),
            metric(
                "tallyd_history_compacted_cells",
                Kind::Counter,
                "Loose history cells (one series' interval each) replaced by packed rows.",
                load(&self.compacted_cells),
            ),
            metric(
                "tallyd_history_compaction_unreadable",
                Kind::Counter,
                "Series' buckets compaction left loose because a stored body did not read (each \
                 is logged); queries of them answer an error rather than a wrong value.",
                load(&self.compaction_unreadable),
            ),
            metric(
                "tallyd_history_compaction_seconds",
                Kind::Counter,
                "Time the store's writer spent compacting history, between writes.",
                load(&self.compaction_micros) / 1e6,
            ),
        ]
    }
}

/// Answers reads, from any thread.
pub trait Reader: Send + Sync + 'static {
    /// Every stored definition.
    fn metrics(&self) -> Result<Vec<StoredMetric>, StoreError>;

    /// The series of `metric`: id and labels (as in [`Point::labels`]).
    fn series(&self, metric: i64) -> Result<Vec<(i64, String)>, StoreError>;

    /// Calls `visit(series, ts_ms, value)` for each point of `metric` with `start_ms <= ts_ms <
    /// end_ms`, in `series` only when given, in time order within each series.
    fn scan(
        &self,
        metric: i64,
        start_ms: i64,
        end_ms: i64,
        series: Option<&[i64]>,
        visit: &mut dyn FnMut(i64, i64, f64),
    ) -> Result<(), StoreError>;

    /// Calls `visit(series, ts_ms, cell)` for each history sample of `metric` in `tier` with
    /// `start_ms <= ts_ms < end_ms`, in `series` only when given, in time order within each
    /// series.
    fn scan_tier(
        &self,
        _tier: tiers::Tier,
        _metric: i64,
        _start_ms: i64,
        _end_ms: i64,
        _series: Option<&[i64]>,
        _visit: &mut dyn FnMut(i64, i64, tiers::Cell),
    ) -> Result<(), StoreError> {
        Err(StoreError::Engine("this store keeps no history".into()))
    }

    /// Where the rollups of `metric`'s points in the last of `tiers` (finest first) stop being
    /// exact ([`rollup::rolled_until`]): a query reads their cells before it, points after.
    fn rolled_until(&self, _metric: i64, _tiers: &[tiers::Tier]) -> Result<i64, StoreError> {
        Ok(i64::MIN)
    }

    /// The Deeploy data points of `metric`, in the order they were posted.
    fn data_points(&self, metric: i64) -> Result<Vec<DataPoint>, StoreError>;
}

enum Job {
    Write {
        write: Write,
        answer: oneshot::Sender<Result<Written, StoreError>>,
    },
    /// A reader's barrier: answered once every point committed before it is applied.
    Apply(oneshot::Sender<Result<(), StoreError>>),
}

/// The handle the API holds: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Store {
    writes: mpsc::Sender<Job>,
    reader: Arc<dyn Reader>,
    stats: Arc<StoreStats>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating when needed) the SQLite store in `dir` and starts its writer thread,
    /// which ends when the last handle is dropped.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let (engine, reader) = sqlite::open(dir)?;
        Ok(Store::start(engine, Arc::new(reader)))
    }

    /// Starts the writer thread for `engine`.
    pub fn start(engine: impl Engine, reader: Arc<dyn Reader>) -> Store {
        let (writes, jobs) = mpsc::channel(QUEUE);
        let stats = Arc::new(StoreStats {
            pending: AtomicUsize::new(engine.pending()),
            ..StoreStats::default()
        });
        let shown = Arc::clone(&stats);
        thread::Builder::new()
            .name("tallyd-store".into())
            .spawn(move || {
                crate::priority::background_thread();
                write_loop(engine, jobs, &shown)
            })
            .expect("spawning the store writer");
        Store {
            writes,
            reader,
            stats,
        }
    }

    /// Applies `write` and answers once it is durable. Waits while the writer's queue is full.
    pub async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let (answer, answered) = oneshot::channel();
        self.writes
            .send(Job::Write { write, answer })
            .await
            .map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }

    /// Points acknowledged but not yet visible to readers.
    pub fn pending(&self) -> usize {
        self.stats.pending.load(Ordering::Acquire)
    }

    /// The writer's figures, for the self-metrics.
    pub fn stats(&self) -> Arc<StoreStats> {
        Arc::clone(&self.stats)
    }

    /// Runs `read` on the blocking pool with the store's reader, once every point acknowledged
    /// before this call is visible to it.
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        if self.pending() > 0 {
            let (answer, answered) = oneshot::channel();
            self.writes
                .send(Job::Apply(answer))
                .await
                .map_err(|_| StoreError::Closed)?;
            answered.await.map_err(|_| StoreError::Closed)??;
        }
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || read(reader.as_ref()))
            .await
            .map_err(|e| StoreError::Engine(format!("read task failed: {e}")))?
    }

    /// The reader, for callers already on a blocking thread (startup).
    pub fn reader(&self) -> &dyn Reader {
        self.reader.as_ref()
    }
}

/// The writer thread: group commit until every handle is gone.
fn write_loop(mut engine: impl Engine, mut jobs: mpsc::Receiver<Job>, stats: &StoreStats) {
    let shown = &stats.pending;
    // Only to wait for a job with a deadline; the engine runs on this thread.
    let clock = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a timer for the store writer");
    let mut writes = Vec::with_capacity(MAX_GROUP);
    let mut answers = Vec::with_capacity(MAX_GROUP);
    let mut barriers = Vec::new();
    // When the oldest pending point was committed (roughly: the first commit that left some).
    let mut pending_since: Option<Instant> = (engine.pending() > 0).then(Instant::now);
    loop {
        // The engine's own work goes between groups, a short transaction at a time, while no
        // job waits.
        let first = if engine.busy() {
            match jobs.try_recv() {
                Ok(job) => Some(job),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    let started = Instant::now();
                    match engine.work() {
                        Ok(worked) => stats.worked(worked, started.elapsed()),
                        Err(error) => tracing::warn!("store maintenance: {error}"),
                    }
                    if pending_since.is_some_and(|since| since.elapsed() >= APPLY_AFTER) {
                        let _ = apply(&mut engine, shown, &mut pending_since);
                    }
                    continue;
                }
            }
        } else {
            match pending_since {
                None => jobs.blocking_recv(),
                Some(since) => {
                    let due = since + APPLY_AFTER;
                    // The timer is made inside `block_on`: it needs the runtime's context.
                    let waited = clock
                        .block_on(async { tokio::time::timeout_at(due.into(), jobs.recv()).await });
                    match waited {
                        Ok(job) => job,
                        Err(_elapsed) => {
                            let _ = apply(&mut engine, shown, &mut pending_since);
                            continue;
                        }
                    }
                }
            }
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write { write, answer } => {
                    writes.push(write);
                    answers.push(answer);
                }
                Job::Apply(answer) => barriers.push(answer),
            }
            if writes.len() + barriers.len() < MAX_GROUP {
                next = jobs.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            let committed = engine.commit(&writes);
            writes.clear();
            // Before any answer: a reader told "nothing pending" must not miss an answered point.
            shown.store(engine.pending(), Ordering::Release);
            if engine.pending() == 0 {
                pending_since = None;
            } else if pending_since.is_none() {
                pending_since = Some(Instant::now());
            }
            match committed {
                Ok(results) => {
                    for (answer, result) in answers.drain(..).zip(results) {
                        let _ = answer.send(result);
                    }
                }
                Err(error) => {
                    tracing::error!("{error}");
                    for answer in answers.drain(..) {
                        let _ = answer.send(Err(error.clone()));
                    }
                }
            }
        }
        let due = pending_since.is_some_and(|since| since.elapsed() >= APPLY_AFTER);
        if !barriers.is_empty() || due || engine.pending() >= APPLY_POINTS {
            let applied = apply(&mut engine, shown, &mut pending_since);
            for answer in barriers.drain(..) {
                let _ = answer.send(applied.clone());
            }
        }
    }
    // What is still pending is durable and would be applied at the next open; applying it now
    // keeps that start quick.
    let _ = apply(&mut engine, shown, &mut pending_since);
}

/// Applies the engine's pending points and says so in `shown`.
fn apply(
    engine: &mut impl Engine,
    shown: &AtomicUsize,
    pending_since: &mut Option<Instant>,
) -> Result<(), StoreError> {
    let applied = engine.apply_pending();
    match &applied {
        Ok(()) => *pending_since = None,
        Err(error) => {
            tracing::error!("applying journaled points: {error}");
            // Try again after another while, not in a loop.
            *pending_since = Some(Instant::now());
        }
    }
    shown.store(engine.pending(), Ordering::Release);
    applied
}

/// The canonical text of a label set: a JSON object with keys in sorted order, so one series
/// has one key however its labels were ordered.
pub fn labels_key<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let sorted: std::collections::BTreeMap<&str, &str> = labels.into_iter().collect();
    serde_json::to_string(&sorted).expect("a map of strings serialises")
}

/// The label pairs of a [`labels_key`] text (empty when it is not one).
pub fn labels_of(key: &str) -> Vec<(String, String)> {
    serde_json::from_str::<std::collections::BTreeMap<String, String>>(key)
        .map(|map| map.into_iter().collect())
        .unwrap_or_default()
}

/// The bucket of a timestamp.
pub fn bucket_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(BUCKET_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(uid: &str, tenant: &str, name: &str) -> StoredMetric {
        StoredMetric {
            id: 0,
            uid: uid.into(),
            tenant: tenant.into(),
            scope: "matih".into(),
            name: name.into(),
            document: r#"{"type":"gauge"}"#.into(),
            created_ms: 1,
            updated_ms: 1,
        }
    }

    fn point(labels: &str, ts_ms: i64, value: f64) -> Point {
        Point {
            labels: labels.into(),
            ts_ms,
            value,
        }
    }

    async fn put(store: &Store, m: StoredMetric) -> i64 {
        match store.write(Write::PutMetric(m)).await.unwrap() {
            Written::Metric(id) => id,
            other => panic!("{other:?}"),
        }
    }

    async fn scan(
        store: &Store,
        metric: i64,
        start: i64,
        end: i64,
        series: Option<Vec<i64>>,
    ) -> Vec<(i64, i64, f64)> {
        store
            .read(move |reader| {
                let mut out = Vec::new();
                reader.scan(metric, start, end, series.as_deref(), &mut |s, t, v| {
                    out.push((s, t, v))
                })?;
                Ok(out)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn points_are_read_back_by_range_and_series_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "score")).await;
        let (a, b) = (labels_key([("model", "a")]), labels_key([("model", "b")]));
        let points = vec![
            point(&a, 1_000, 1.0),
            point(&b, 1_000, 10.0),
            point(&a, BUCKET_MS + 5, 2.0),
            // The same millisecond twice: both are kept.
            point(&a, BUCKET_MS + 5, 3.0),
            point(&a, 3 * BUCKET_MS, 4.0),
        ];
        store
            .write(Write::Points { metric: id, points })
            .await
            .unwrap();
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        let metrics = store.read(|r| r.metrics()).await.unwrap();
        assert_eq!(metrics.len(), 1);
        assert_eq!((metrics[0].id, metrics[0].name.as_str()), (id, "score"));
        let series = store.read(move |r| r.series(id)).await.unwrap();
        assert_eq!(series.len(), 2);
        let series_a = series.iter().find(|(_, l)| *l == a).unwrap().0;

        let all = scan(&store, id, 0, 4 * BUCKET_MS, None).await;
        assert_eq!(all.len(), 5);
        let only_a = scan(&store, id, 1_000, 3 * BUCKET_MS, Some(vec![series_a])).await;
        assert_eq!(
            only_a,
            vec![
                (series_a, 1_000, 1.0),
                (series_a, BUCKET_MS + 5, 2.0),
                (series_a, BUCKET_MS + 5, 3.0)
            ]
        );
        // End is exclusive, and an empty range reads nothing.
        assert!(
            scan(&store, id, 3 * BUCKET_MS, 3 * BUCKET_MS, None)
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_filtered_scan_over_many_buckets_falls_back_to_one_range_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "score")).await;
        let a = labels_key([("k", "a")]);
        let points = vec![point(&a, 5, 1.0), point(&a, 10_000 * BUCKET_MS, 2.0)];
        store
            .write(Write::Points { metric: id, points })
            .await
            .unwrap();
        let series = store.read(move |r| r.series(id)).await.unwrap();
        let ids: Vec<i64> = series.iter().map(|s| s.0).collect();
        let found = scan(&store, id, 0, 100_000 * BUCKET_MS, Some(ids)).await;
        assert_eq!(found.len(), 2);
    }

    #[tokio::test]
    async fn a_range_cutting_buckets_reads_exactly_its_points_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "score")).await;
        // Dense series (a point every few seconds over three buckets), sparse ones (a point
        // or two), and points outside the ranges asked for on both sides.
        let mut random = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |below: i64| {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            (random % below as u64) as i64
        };
        let mut points = Vec::new();
        for s in 0..40 {
            let labels = labels_key([("s", format!("{s:02}").as_str())]);
            let count = if s % 3 == 0 { 2 } else { 300 };
            for _ in 0..count {
                let ts = BUCKET_MS + next(3 * BUCKET_MS);
                points.push(point(&labels, ts, points.len() as f64));
            }
        }
        store
            .write(Write::Points {
                metric: id,
                points: points.clone(),
            })
            .await
            .unwrap();
        let ids: std::collections::HashMap<String, i64> = store
            .read(move |r| r.series(id))
            .await
            .unwrap()
            .into_iter()
            .map(|(series, labels)| (labels, series))
            .collect();
        let ranges = [
            (BUCKET_MS + 10_000, BUCKET_MS + 20_000),
            (2 * BUCKET_MS - 60_000, 2 * BUCKET_MS + 60_000),
            (BUCKET_MS + 1, 4 * BUCKET_MS - 1),
            (2 * BUCKET_MS, 3 * BUCKET_MS),
            (2 * BUCKET_MS + 1_800_000, 4 * BUCKET_MS),
            (0, BUCKET_MS + 5),
            // So many buckets that a filtered scan reads ranges, not series, too.
            (BUCKET_MS + 10_000, 2_000 * BUCKET_MS + 3),
        ];
        let mut some: Vec<i64> = ids.values().copied().filter(|s| s % 2 == 0).collect();
        some.sort_unstable();
        for (start, end) in ranges {
            for filter in [None, Some(some.clone())] {
                let mut expected: Vec<(i64, i64, i64, usize, f64)> = points
                    .iter()
                    .enumerate()
                    .map(|(at, p)| (bucket_of(p.ts_ms), ids[&*p.labels], p.ts_ms, at, p.value))
                    .filter(|&(_, s, ts, _, _)| {
                        (start..end).contains(&ts) && filter.as_ref().is_none_or(|f| f.contains(&s))
                    })
                    .collect();
                expected.sort_by_key(|&(bucket, s, ts, at, _)| (bucket, s, ts, at));
                let expected: Vec<(i64, i64, f64)> = expected
                    .into_iter()
                    .map(|(_, s, ts, _, v)| (s, ts, v))
                    .collect();
                let found = scan(&store, id, start, end, filter.clone()).await;
                assert_eq!(found, expected, "[{start}, {end}) in {filter:?}");
            }
        }
    }

    #[tokio::test]
    async fn deleting_a_metric_removes_its_points_and_data_points() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "gone")).await;
        let kept = put(&store, metric("u2", "t1", "kept")).await;
        for m in [id, kept] {
            store
                .write(Write::Points {
                    metric: m,
                    points: vec![point("{}", 1, 1.0)],
                })
                .await
                .unwrap();
            store
                .write(Write::DataPoints {
                    metric: m,
                    points: vec![DataPoint {
                        x: "a".into(),
                        y: 1.0,
                        prediction_ids: None,
                    }],
                })
                .await
                .unwrap();
        }
        let removed = store.write(Write::DeleteMetric { id }).await.unwrap();
        assert_eq!(removed, Written::Removed(4));
        assert!(scan(&store, id, 0, 10, None).await.is_empty());
        assert!(
            store
                .read(move |r| r.data_points(id))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(scan(&store, kept, 0, 10, None).await.len(), 1);
        assert_eq!(
            store
                .read(move |r| r.data_points(kept))
                .await
                .unwrap()
                .len(),
            1
        );
        let names: Vec<String> = store
            .read(|r| r.metrics())
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["kept"]);
    }

    #[tokio::test]
    async fn putting_a_metric_with_a_known_uid_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "a")).await;
        let mut changed = metric("u1", "t1", "a");
        changed.document = r#"{"type":"counter"}"#.into();
        changed.updated_ms = 2;
        assert_eq!(put(&store, changed).await, id);
        let metrics = store.read(|r| r.metrics()).await.unwrap();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].document, r#"{"type":"counter"}"#);
        assert_eq!((metrics[0].created_ms, metrics[0].updated_ms), (1, 2));
    }

    #[tokio::test]
    async fn data_points_keep_their_posting_order_and_can_be_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "chart")).await;
        let points: Vec<DataPoint> = ["z", "a", "m"]
            .iter()
            .enumerate()
            .map(|(i, x)| DataPoint {
                x: x.to_string(),
                y: i as f64,
                prediction_ids: (i == 1).then(|| r#"["p1"]"#.to_string()),
            })
            .collect();
        store
            .write(Write::DataPoints {
                metric: id,
                points: points.clone(),
            })
            .await
            .unwrap();
        assert_eq!(
            store.read(move |r| r.data_points(id)).await.unwrap(),
            points
        );
        assert_eq!(
            store
                .write(Write::ClearDataPoints { metric: id })
                .await
                .unwrap(),
            Written::Removed(3)
        );
        assert!(
            store
                .read(move |r| r.data_points(id))
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn data_points_answer_their_sequence_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "chart")).await;
        let batch = |n: usize| Write::DataPoints {
            metric: id,
            points: vec![
                DataPoint {
                    x: "1".into(),
                    y: 1.0,
                    prediction_ids: None,
                };
                n
            ],
        };
        let first_seq = |written| match written {
            Written::DataPoints { first_seq } => first_seq,
            other => panic!("no sequence numbers: {other:?}"),
        };
        let first = first_seq(store.write(batch(3)).await.unwrap());
        assert_eq!(first_seq(store.write(batch(1)).await.unwrap()), first + 3);
        drop(store);
        // Numbers are never reused, across a reopen too.
        let store = Store::open(dir.path()).unwrap();
        let after = first_seq(store.write(batch(1)).await.unwrap());
        assert!(after > first + 3, "{after} is reused");
    }

    #[tokio::test]
    async fn expiry_removes_exactly_the_points_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "old")).await;
        let points = (0..10)
            .map(|i| point("{}", i * BUCKET_MS / 2, i as f64))
            .collect();
        store
            .write(Write::Points { metric: id, points })
            .await
            .unwrap();
        // Cut in the middle of a bucket: 0, 0.5h, 1h, 1.5h, 2h go; 2.5h stays.
        let cut = 2 * BUCKET_MS + 1;
        assert_eq!(
            store
                .write(Write::Expire {
                    metric: id,
                    before_ms: cut
                })
                .await
                .unwrap(),
            Written::Removed(5)
        );
        let left: Vec<i64> = scan(&store, id, 0, 10 * BUCKET_MS, None)
            .await
            .into_iter()
            .map(|p| p.1)
            .collect();
        assert_eq!(left.first(), Some(&(5 * BUCKET_MS / 2)));
        assert_eq!(left.len(), 5);
    }

    #[tokio::test]
    async fn concurrent_writes_are_committed_in_groups_and_all_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "busy")).await;
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let labels = labels_key([("writer", (i % 7).to_string().as_str())]);
                    store
                        .write(Write::Points {
                            metric: id,
                            points: vec![point(&labels, i, 1.0)],
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(Written::Done));
        }
        assert_eq!(scan(&store, id, 0, 1_000, None).await.len(), 200);
        assert_eq!(store.read(move |r| r.series(id)).await.unwrap().len(), 7);
    }

    #[test]
    fn a_file_from_a_newer_tallyd_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let connection = rusqlite::Connection::open(dir.path().join(sqlite::FILE_NAME)).unwrap();
        connection.pragma_update(None, "user_version", 99).unwrap();
        drop(connection);
        let error = Store::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("schema version 99"), "{error}");
    }

    #[test]
    fn label_keys_are_canonical() {
        assert_eq!(
            labels_key([("b", "2"), ("a", "1")]),
            labels_key([("a", "1"), ("b", "2")])
        );
        assert_eq!(labels_key([("a", "\"x\"")]), r#"{"a":"\"x\""}"#);
        assert_eq!(
            labels_of(&labels_key([("b", "2"), ("a", "1")])),
            [("a".into(), "1".into()), ("b".into(), "2".into())]
        );
        assert_eq!(labels_key(std::iter::empty()), "{}");
    }

    fn count(dir: &Path, table: &str) -> i64 {
        let connection = rusqlite::Connection::open(dir.join(sqlite::FILE_NAME)).unwrap();
        connection
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap()
    }

    fn points_of(metric: i64, n: i64) -> Write {
        Write::Points {
            metric,
            points: (0..n)
                .map(|i| {
                    point(
                        &labels_key([("k", ["a", "b", "c"][i as usize % 3])]),
                        i,
                        i as f64,
                    )
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn reads_see_acknowledged_points_before_they_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "score")).await;
        store.write(points_of(id, 10)).await.unwrap();
        // Journaled and acknowledged, not yet in the points table.
        assert_eq!(store.pending(), 10);
        assert_eq!(count(dir.path(), "points"), 0);
        assert_eq!(count(dir.path(), "journal"), 1);
        // The read's barrier applies them first.
        assert_eq!(scan(&store, id, 0, 100, None).await.len(), 10);
        assert_eq!(store.pending(), 0);
        assert_eq!(count(dir.path(), "points"), 10);
        assert_eq!(count(dir.path(), "journal"), 0);
    }

    #[tokio::test]
    async fn pending_points_are_applied_when_many_or_old_without_a_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = put(&store, metric("u1", "t1", "score")).await;
        let settled = |store: Store| async move {
            let deadline = Instant::now() + APPLY_AFTER * 5;
            while store.pending() > 0 {
                assert!(
                    Instant::now() < deadline,
                    "{} points still pending",
                    store.pending()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        // Old: one group too big to go straight into `points`, then nothing else to do.
        let journaled = sqlite::DIRECT_POINTS as i64 + 1;
        let started = Instant::now();
        store.write(points_of(id, journaled)).await.unwrap();
        assert_eq!(count(dir.path(), "points"), 0);
        settled(store.clone()).await;
        assert!(started.elapsed() >= APPLY_AFTER);
        assert_eq!(count(dir.path(), "points"), journaled);
        // Many: the batch that reaches APPLY_POINTS is applied right after its commit.
        store
            .write(points_of(id, APPLY_POINTS as i64))
            .await
            .unwrap();
        let started = Instant::now();
        settled(store.clone()).await;
        assert!(started.elapsed() < APPLY_AFTER);
        assert_eq!(count(dir.path(), "points"), journaled + APPLY_POINTS as i64);
    }

    #[test]
    fn a_journal_left_by_a_crash_is_applied_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, _reader) = sqlite::open(dir.path()).unwrap();
        let results = engine.commit(&[Write::PutMetric(metric("u1", "t1", "score"))]);
        let Ok(Written::Metric(id)) = results.unwrap()[0] else {
            panic!("no metric id");
        };
        engine
            .commit(&[points_of(id, 5), points_of(id, 7)])
            .unwrap();
        assert_eq!(engine.pending(), 12);
        // Gone without applying, as after kill -9.
        drop(engine);
        assert_eq!(count(dir.path(), "journal"), 2);
        assert_eq!(count(dir.path(), "points"), 0);

        let (engine, reader) = sqlite::open(dir.path()).unwrap();
        assert_eq!(engine.pending(), 0);
        assert_eq!(count(dir.path(), "journal"), 0);
        let mut seen = Vec::new();
        reader
            .scan(id, 0, 100, None, &mut |_, ts, value| seen.push((ts, value)))
            .unwrap();
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mut expected: Vec<(i64, f64)> = (0..5).chain(0..7).map(|i| (i, i as f64)).collect();
        expected.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(seen, expected);
    }

    #[test]
    fn expiry_and_deletes_act_after_the_pending_points_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, reader) = sqlite::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        for uid in ["u1", "u2"] {
            let results = engine.commit(&[Write::PutMetric(metric(uid, "t1", uid))]);
            let Ok(Written::Metric(id)) = results.unwrap()[0] else {
                panic!("no metric id");
            };
            ids.push(id);
        }
        let (expiring, deleted) = (ids[0], ids[1]);
        // Points and the expiry that cuts them in one group; pending points of the metric
        // deleted in the next group.
        let results = engine
            .commit(&[
                points_of(expiring, 10),
                points_of(deleted, 3),
                Write::Expire {
                    metric: expiring,
                    before_ms: 4,
                },
                points_of(expiring, 2),
            ])
            .unwrap();
        assert_eq!(results[2], Ok(Written::Removed(4)));
        // The group's points after the expiry wait on.
        assert_eq!(engine.pending(), 2);
        // Enough points that they are journaled, not put straight into `points`.
        let journaled = sqlite::DIRECT_POINTS as u64 + 1;
        engine
            .commit(&[points_of(deleted, journaled as i64)])
            .unwrap();
        assert_eq!(engine.pending(), 2 + journaled as usize);
        let results = engine
            .commit(&[Write::DeleteMetric { id: deleted }])
            .unwrap();
        // Its points, 3 series, the definition.
        assert_eq!(results[0], Ok(Written::Removed(3 + journaled + 3 + 1)));
        assert_eq!(engine.pending(), 0);
        assert_eq!(count(dir.path(), "journal"), 0);
        let mut left = Vec::new();
        for id in ids {
            reader
                .scan(id, 0, 100, None, &mut |_, ts, _| left.push((id, ts)))
                .unwrap();
        }
        left.sort_unstable();
        let expected: Vec<(i64, i64)> = [0, 1, 4, 5, 6, 7, 8, 9]
            .into_iter()
            .map(|ts| (expiring, ts))
            .collect();
        assert_eq!(left, expected);
    }
}
