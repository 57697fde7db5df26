//! The SQLite engine: one file, `tallyd.db`, in the data directory, in WAL mode with
//! `synchronous = FULL` (a commit is on disk when it returns). Users can open it with the
//! `sqlite3` tool.
//!
//! Tables:
//! - `metrics`: one row per definition (the API's JSON document, opaque here);
//! - `series`: one row per label set of a metric (labels as a sorted JSON object);
//! - `points`: `WITHOUT ROWID`, keyed metric → hour bucket → series → time → sequence. Keying
//!   time buckets before series keeps a write near the end of its metric's range (series before
//!   time multiplied disk writes ~22× in our measurement), and still makes one series' range
//!   query one seek per bucket. The sequence number, unique across the file, keeps two points of
//!   a series with the same millisecond apart;
//! - `data_points`: Deeploy's points in posting order;
//! - `journal`: recorded points not yet in `points`, one row per batch (see below);
//! - `tier_samples` ([`super::tiers`]): history samples and the rollups of `points`, and
//!   `rollups_due` ([`super::rollup`]): the intervals of points not rolled up yet;
//! - `meta`: the next sequence number, as of the last transaction that needed it (below).
//!
//! One point costs about 40 bytes on disk (five small integers, a double, the record and cell
//! headers), before the WAL is checkpointed.
//!
//! **Recorded points go through the journal,** unless their group is small (below). Inserted
//! straight into `points`, a batch of 1,000 points over 100 series touched ~100 leaf pages, each
//! a 4-KiB WAL frame in the commit: the durable part of a record cost 100–200 bytes of I/O per
//! point. So a [`Write::Points`] resolves its series (new ones are inserted into `series` at
//! once, which is rare), encodes the batch as one row of `journal` ([`super::journal`], ~12
//! bytes a point, appended at the table's end: a few pages per batch) and keeps the decoded
//! points in memory. The group's commit makes the row durable and the request is answered.
//! Later, [`Engine::apply_pending`] moves everything pending into `points` in one transaction —
//! sorted by the points key, so each leaf page is written once per apply, not once per batch —
//! and deletes the applied journal rows. When an apply happens is the writer's choice
//! ([`super`]: enough points, their age, a reader's barrier); this engine itself applies before
//! any write that must see the points written before it (`DeleteMetric`, `Expire`), in the same
//! transaction, and at [`open`], so journal rows left by a crash are in `points` before the
//! store serves anything.
//!
//! Another table keyed by time (history tiers, say) joins the same way: a write that reads or
//! rewrites points applies the pending ones first.
//!
//! **A small group goes straight into `points`.** A group of writes that records at most
//! [`DIRECT_POINTS`] points (single-point records, a Seldon post) inserts them in its own
//! transaction, `pending` and the journal untouched: its commit writes at most that many leaf
//! pages where a journal row wrote one, and it leaves nothing for an apply to stall later
//! records with.
//!
//! **Sequence numbers are reserved in blocks.** `seq` in `meta` bounds the numbers spent: no
//! point or data point has it or a higher one. A transaction that would spend past it raises it
//! by [`SEQ_BLOCK`], so most
//! commits leave `meta` alone and their durable part is one or a few pages. (The `seq` row
//! rewritten in every commit was a second WAL frame a thousand times a second, which doubled
//! a single-point commit's writes and made SQLite's WAL index probe ever longer chains of the
//! same two pages.) [`open`] starts at `seq`, or past the journal's last number in a file
//! an older tallyd left.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::compact::Compaction;
use super::journal::{self, Pending};
use super::tiers::{self, Cell, Tier};
use super::{
    BUCKET_MS, DataPoint, Engine, Reader, StoreError, StoredMetric, Worked, Write, Written,
    bucket_of,
};
use super::{loose, rollup};

/// The file in the data directory.
pub const FILE_NAME: &str = "tallyd.db";

/// The schema this build writes; a file with a newer one is refused, not guessed at.
/// Version 2 added the history tiers ([`super::tiers`]); a version 1 file gains them at open.
/// Version 3 moved their loose rows into chunks of series per interval ([`super::loose`]); a
/// version 2 file's are moved at open ([`loose::migrate`]).
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metrics (
    id INTEGER PRIMARY KEY,
    uid TEXT NOT NULL UNIQUE,
    tenant TEXT NOT NULL,
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    document TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    metric INTEGER NOT NULL,
    labels TEXT NOT NULL,
    UNIQUE (metric, labels)
);
CREATE TABLE IF NOT EXISTS points (
    metric INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    series INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (metric, bucket, series, ts, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS data_points (
    metric INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    x TEXT NOT NULL,
    y REAL NOT NULL,
    prediction_ids TEXT,
    PRIMARY KEY (metric, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL
);
";

/// A group of writes recording at most this many points puts them straight into `points`, not
/// into the journal. The journal saves a batch over many series from writing a leaf page per
/// series in its commit; a group this small writes at most this many pages, and leaves nothing
/// to apply. At 2,000 single-point records a second, the apply of a second's journal held the
/// writer 3–7 ms, and the slowest 1 % of records clustered on those applies; straight in, a
/// record also costs fewer instructions (callgrind: 228.5M → 220.4M for 2,000).
pub(super) const DIRECT_POINTS: usize = 8;

/// Sequence numbers reserved at a time: a transaction that would spend past the reservation
/// in `meta` raises it by this many more, so most commits leave `meta` alone, and a restart
/// skips at most this many.
const SEQ_BLOCK: i64 = 1 << 16;

/// Statements the writer keeps prepared (it runs a few dozen different ones).
const WRITER_STATEMENTS: usize = 64;

/// Points an apply inserts per statement.
const INSERT_ROWS: usize = 64;

/// Inserts one point into `points`; [`bind_point`] binds it.
const INSERT_ONE: &str = "INSERT INTO points (metric, bucket, series, ts, seq, value) \
                          VALUES (?, ?, ?, ?, ?, ?)";

/// Inserts [`INSERT_ROWS`] points at once.
static INSERT_MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let row = ", (?, ?, ?, ?, ?, ?)";
    format!("{INSERT_ONE}{}", row.repeat(INSERT_ROWS - 1))
});

/// Binds `point` to the six parameters of `insert` that follow the first `at`.
fn bind_point(
    insert: &mut rusqlite::CachedStatement<'_>,
    at: usize,
    point: &Pending,
) -> rusqlite::Result<()> {
    insert.raw_bind_parameter(at + 1, point.metric)?;
    insert.raw_bind_parameter(at + 2, bucket_of(point.ts_ms))?;
    insert.raw_bind_parameter(at + 3, point.series)?;
    insert.raw_bind_parameter(at + 4, point.ts_ms)?;
    insert.raw_bind_parameter(at + 5, point.seq)?;
    insert.raw_bind_parameter(at + 6, point.value)
}

/// Read connections kept for reuse; more readers at once open more and close them after.
const READ_POOL: usize = 4;

/// How much of the database file a read connection maps (`PRAGMA mmap_size`): address space,
/// not memory; past it, pages are read with `pread` as without a map.
const READ_MMAP: i64 = 1 << 30;

/// Above this many (bucket, series) seeks a filtered scan reads the metric's whole range and
/// filters, which is then cheaper.
const MAX_SEEKS: i64 = 20_000;

/// Series ids the writer remembers before it starts afresh.
const SERIES_CACHE: usize = 1 << 20;

fn engine_error(error: rusqlite::Error) -> StoreError {
    StoreError::Engine(error.to_string())
}

/// Opens `dir/tallyd.db`, creating the directory and the schema when needed.
pub fn open(dir: &Path) -> Result<(SqliteEngine, SqliteReader), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Engine(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(FILE_NAME);
    let mut connection = Connection::open(&path)
        .map_err(|e| StoreError::Engine(format!("cannot open {}: {e}", path.display())))?;
    configure(&mut connection).map_err(engine_error)?;
    // Every statement the writer runs stays prepared: the history's and rollups' ones between
    // groups must not push out the few a single-point commit runs thousands of times a second.
    connection.set_prepared_statement_cache_capacity(WRITER_STATEMENTS);
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(engine_error)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Engine(format!(
            "{} has schema version {version}, newer than this tallyd's {SCHEMA_VERSION}; \
             use a newer tallyd or another data directory",
            path.display()
        )));
    }
    connection
        .execute_batch("BEGIN IMMEDIATE")
        .and_then(|()| connection.execute_batch(SCHEMA))
        .and_then(|()| connection.execute_batch(tiers::SCHEMA))
        .and_then(|()| connection.execute_batch(loose::SCHEMA))
        .and_then(|()| connection.execute_batch(rollup::SCHEMA))
        .and_then(|()| match version {
            2 => loose::migrate(&connection).map(|moved| {
                tracing::info!(
                    moved,
                    "history: loose tier rows moved to the version 3 layout"
                )
            }),
            _ => Ok(()),
        })
        .and_then(|()| connection.pragma_update(None, "user_version", SCHEMA_VERSION))
        .and_then(|()| connection.execute_batch("COMMIT"))
        .map_err(|error| {
            let _ = connection.execute_batch("ROLLBACK");
            engine_error(error)
        })?;
    // Recovery raises it past the journal's numbers.
    let reserved = connection
        .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |row| {
            row.get(0)
        })
        .optional()
        .map_err(engine_error)?
        .unwrap_or(0);
    // Before recovery: the journal's points are marked due with the tiers marked before.
    let rollup_tiers = tier_list(&rollup::load_tiers(&connection).map_err(engine_error)?);
    let mut engine = SqliteEngine {
        connection,
        next_seq: reserved,
        reserved,
        direct_points: DIRECT_POINTS,
        rollup_tiers,
        series: HashMap::new(),
        cached_series: 0,
        pending: Vec::new(),
        body: Vec::new(),
        checkpoints: Checkpointer::start(&path)?,
        compaction: Compaction::default(),
    };
    engine.recover()?;
    let reader = SqliteReader {
        path,
        pool: Mutex::new(Vec::new()),
        with_journal: false,
    };
    Ok((engine, reader))
}

/// Calls `visit(series, ts_ms, value)` for each point of `metric` with `start_ms <= ts_ms <
/// end_ms` in `points`, in `series` only when given; each series' in time order, then posting
/// order. The reader's scan and the rollups' ([`rollup`]).
pub(super) fn scan_points(
    connection: &Connection,
    metric: i64,
    start_ms: i64,
    end_ms: i64,
    series: Option<&[i64]>,
    visit: &mut dyn FnMut(i64, i64, f64),
) -> rusqlite::Result<()> {
    if start_ms >= end_ms {
        return Ok(());
    }
    let (first, last) = (bucket_of(start_ms), bucket_of(end_ms - 1));
    let seeks = (last - first + 1).saturating_mul(series.map_or(i64::MAX, |s| s.len() as i64));
    if let Some(series) = series.filter(|_| seeks <= MAX_SEEKS) {
        let mut statement = connection.prepare_cached(
            "SELECT ts, value FROM points
             WHERE metric = ?1 AND bucket = ?2 AND series = ?3 AND ts >= ?4 AND ts < ?5
             ORDER BY ts, seq",
        )?;
        for bucket in first..=last {
            for &id in series {
                let mut rows = statement.query(params![metric, bucket, id, start_ms, end_ms])?;
                while let Some(row) = rows.next()? {
                    visit(id, row.get(0)?, row.get(1)?);
                }
            }
        }
        return Ok(());
    }
    let wanted: Option<std::collections::HashSet<i64>> =
        series.map(|s| s.iter().copied().collect());
    let visit = &mut |id: i64, ts: i64, value: f64| {
        if wanted.as_ref().is_none_or(|w| w.contains(&id)) {
            visit(id, ts, value);
        }
    };
    // Buckets the range covers whole are read whole, in one range read; a bucket it cuts (at
    // most the first and the last) is skipped through series by series.
    let covers = |bucket: i64| {
        start_ms <= bucket.saturating_mul(BUCKET_MS)
            && bucket.saturating_add(1).saturating_mul(BUCKET_MS) <= end_ms
    };
    let (cut_first, cut_last) = (!covers(first), !covers(last));
    if cut_first {
        scan_cut_bucket(connection, metric, first, start_ms, end_ms, visit)?;
    }
    let (whole_from, whole_to) = (first + i64::from(cut_first), last - i64::from(cut_last));
    if whole_from <= whole_to {
        let mut statement = connection.prepare_cached(
            "SELECT series, ts, value FROM points
             WHERE metric = ?1 AND bucket >= ?2 AND bucket <= ?3
             ORDER BY bucket, series, ts, seq",
        )?;
        let mut rows = statement.query(params![metric, whole_from, whole_to])?;
        while let Some(row) = rows.next()? {
            visit(row.get(0)?, row.get(1)?, row.get(2)?);
        }
    }
    if cut_last && last > first {
        scan_cut_bucket(connection, metric, last, start_ms, end_ms, visit)?;
    }
    Ok(())
}

/// Rows a bucket's skip scan steps over before it seeks past them instead.
const STRAYS: usize = 16;

/// [`scan_points`] within one bucket the range cuts: its rows are keyed series → time, so the
/// range is a run of rows in each series, and the rows between those runs are skipped with a
/// seek (a few at a time are stepped over, which is cheaper for a short series). Reading them
/// instead made a rollup of one 10-second interval read its whole hour bucket: every ten
/// seconds a read of up to an hour of the metric's points, with the writer waiting.
fn scan_cut_bucket(
    connection: &Connection,
    metric: i64,
    bucket: i64,
    start_ms: i64,
    end_ms: i64,
    visit: &mut dyn FnMut(i64, i64, f64),
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare_cached(
        "SELECT series, ts, value FROM points
         WHERE metric = ?1 AND bucket = ?2 AND (series, ts) >= (?3, ?4)
         ORDER BY series, ts, seq",
    )?;
    // Where the next seek lands: the first series with a point at `start_ms` or after.
    let mut from = i64::MIN;
    'seek: loop {
        let mut rows = statement.query(params![metric, bucket, from, start_ms])?;
        let mut strays = 0;
        while let Some(row) = rows.next()? {
            let (series, ts): (i64, i64) = (row.get(0)?, row.get(1)?);
            if (start_ms..end_ms).contains(&ts) {
                strays = 0;
                visit(series, ts, row.get(2)?);
                continue;
            }
            strays += 1;
            if strays > STRAYS {
                // Before the range: its start in this series; past it: the next series.
                from = if ts < start_ms {
                    series
                } else {
                    match series.checked_add(1) {
                        Some(next) => next,
                        None => break 'seek,
                    }
                };
                continue 'seek;
            }
        }
        break;
    }
    Ok(())
}

/// Every point the journal holds, in journal order: what a restart applies, and what a reader
/// beside another process's writer adds.
fn read_journal(connection: &Connection) -> Result<Vec<Pending>, StoreError> {
    let mut statement = connection
        .prepare("SELECT seq, body FROM journal ORDER BY seq")
        .map_err(engine_error)?;
    let mut rows = statement.query([]).map_err(engine_error)?;
    let mut pending = Vec::new();
    while let Some(row) = rows.next().map_err(engine_error)? {
        let seq: i64 = row.get(0).map_err(engine_error)?;
        let body = row
            .get_ref(1)
            .and_then(|v| Ok(v.as_blob()?))
            .map_err(engine_error)?;
        journal::decode(body, &mut pending).map_err(|why| {
            StoreError::Engine(format!("journal row {seq} cannot be read: {why}"))
        })?;
    }
    Ok(pending)
}

/// Opens the store in `dir` for reading only, as tools beside a running daemon do (its scans read
/// the journal too, so they see every acknowledged point): nothing is created or changed, and a
/// missing or newer store is an error.
pub fn open_reader(dir: &Path) -> Result<SqliteReader, StoreError> {
    let path = dir.join(FILE_NAME);
    if !path.is_file() {
        return Err(StoreError::Engine(format!(
            "{} does not exist: no store in {}",
            path.display(),
            dir.display()
        )));
    }
    let reader = SqliteReader {
        path: path.clone(),
        pool: Mutex::new(Vec::new()),
        with_journal: true,
    };
    let version: i64 = reader.with(|c| c.query_row("PRAGMA user_version", [], |row| row.get(0)))?;
    if version != SCHEMA_VERSION {
        return Err(StoreError::Engine(format!(
            "{} has schema version {version}, this tallyd reads {SCHEMA_VERSION}",
            path.display()
        )));
    }
    Ok(reader)
}

/// Writes a consistent copy of the store in `dir` to the new file `to` (`VACUUM INTO`: one read
/// transaction, so a daemon writing meanwhile is neither stopped nor half-copied), and answers
/// its size in bytes. The copy is a complete store: put it in an empty data directory as
/// `tallyd.db` to restore it.
pub fn backup(dir: &Path, to: &Path) -> Result<u64, StoreError> {
    if to.exists() {
        return Err(StoreError::Engine(format!(
            "{} exists; a backup never overwrites",
            to.display()
        )));
    }
    let reader = open_reader(dir)?;
    let target = to
        .to_str()
        .ok_or_else(|| StoreError::Engine(format!("{} is not a UTF-8 path", to.display())))?;
    reader.with(|c| c.execute("VACUUM INTO ?1", [target]).map(drop))?;
    std::fs::metadata(to)
        .map(|m| m.len())
        .map_err(|e| StoreError::Engine(format!("{}: {e}", to.display())))
}

fn configure(connection: &mut Connection) -> rusqlite::Result<()> {
    wait_for_locks(connection)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    // The checkpointer does it (below), so the writer never waits for a checkpoint's I/O.
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(())
}

/// How long a statement waits for a lock another connection holds before it fails.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Has `connection` wait for a lock another holds in short steps, up to [`LOCK_WAIT`].
///
/// SQLite's own busy timeout (rusqlite sets one of 5 s) sleeps 1, 2, 5, 10, 15, 20, 25, … ms
/// between tries. A `RESTART` checkpoint holds writers off while it waits, on that ladder, for
/// the writer's transaction to end, then copies the last frames and syncs the file; the writer
/// slept through it on the same ladder, and every record waiting on the writer with it.
/// Traced (`strace -T`, 6 s of 2,000 single-point records a second): the writer slept 140 ms
/// in one window, one wait of 1 + 2 + … + 25 = 103 ms among them, and 6.4 ms in another; with
/// these steps, 0.4 ms in all.
fn wait_for_locks(connection: &mut Connection) -> rusqlite::Result<()> {
    let mut since = std::time::Instant::now();
    connection.busy_handler(Some(move |tries: i32| {
        if tries == 0 {
            since = std::time::Instant::now();
        }
        match lock_wait_step(since.elapsed()) {
            Some(step) => {
                std::thread::sleep(step);
                true
            }
            None => false,
        }
    }))
}

/// How long to sleep before trying a lock again, `waited` into the wait; `None`: give up.
fn lock_wait_step(waited: std::time::Duration) -> Option<std::time::Duration> {
    use std::time::Duration;
    if waited >= LOCK_WAIT {
        None
    } else if waited < Duration::from_millis(20) {
        Some(Duration::from_micros(20))
    } else {
        // Past the first milliseconds the lock is held by a long statement: poll slower.
        Some(Duration::from_millis(1))
    }
}

/// Commits after which the checkpointer is woken even without an apply (a store that only
/// takes definitions and Deeploy data points would otherwise grow its WAL for ever).
const CHECKPOINT_COMMITS: u32 = 1_000;

/// WAL frames (a page each) above which a checkpoint also restarts the WAL. A `PASSIVE`
/// checkpoint leaves the frames committed while it ran, and SQLite starts the WAL over only
/// after a checkpoint that copied all of it: under steady writes that never happens, and the
/// WAL grew by every commit for as long as the writes went on.
const RESTART_FRAMES: i64 = 4_096;

/// Copies the WAL into the database file from a thread of its own, after each apply, so that
/// the writer, which would otherwise checkpoint inside a commit every 1,000 pages, never waits
/// for that I/O and its `fsync`s (which left tallyd's core idle while every request waited).
/// SQLite lets a `PASSIVE` checkpoint run beside the writer; the WAL restarts from its
/// beginning at the first write after a complete one. Journal pages are written and freed over
/// and over, and an apply rewrites the last leaf of each busy series: a checkpoint copies a
/// page once however often the WAL holds it.
struct Checkpointer {
    /// Dropped with the engine, which ends the thread.
    wake: std::sync::mpsc::SyncSender<()>,
    /// Commits since the last request.
    commits: u32,
}

impl Checkpointer {
    fn start(path: &Path) -> Result<Checkpointer, StoreError> {
        let mut connection = Connection::open(path)
            .map_err(|e| StoreError::Engine(format!("cannot open {}: {e}", path.display())))?;
        wait_for_locks(&mut connection).map_err(engine_error)?;
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("tallyd-checkpoint".into())
            .spawn(move || {
                crate::priority::background_thread();
                while woken.recv().is_ok() {
                    // Most pages are copied beside the writer; when the WAL has grown big, the
                    // few committed meanwhile are copied with the write lock held, so that the
                    // next commit writes at the WAL's beginning again.
                    let mut mode = "PASSIVE";
                    loop {
                        let done = connection.query_row(
                            &format!("PRAGMA wal_checkpoint({mode})"),
                            [],
                            |row| Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?)),
                        );
                        match done {
                            Ok((wal, copied)) => {
                                tracing::debug!(wal, copied, mode, "checkpoint");
                                if mode == "PASSIVE" && wal >= RESTART_FRAMES {
                                    mode = "RESTART";
                                    continue;
                                }
                            }
                            Err(error) => tracing::warn!("checkpointing the store's WAL: {error}"),
                        }
                        break;
                    }
                }
            })
            .map_err(|e| StoreError::Engine(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer { wake, commits: 0 })
    }

    fn request(&mut self) {
        self.commits = 0;
        // Full means a checkpoint is already asked for; it will copy these pages too.
        let _ = self.wake.try_send(());
    }

    fn committed(&mut self) {
        self.commits += 1;
        if self.commits >= CHECKPOINT_COMMITS {
            self.request();
        }
    }
}

/// The writer's connection.
pub struct SqliteEngine {
    connection: Connection,
    next_seq: i64,
    /// `seq` in `meta` as of the last commit: no number at or above it has been spent.
    reserved: i64,
    /// A group recording at most this many points writes them straight into `points`
    /// ([`DIRECT_POINTS`]; the tests of the journal set 0).
    direct_points: usize,
    /// metric → labels → series id, for the series already written.
    series: HashMap<i64, HashMap<Arc<str>, i64, ahash::RandomState>>,
    cached_series: usize,
    /// Journaled points not yet in `points`, in journal order: the journal's rows hold exactly
    /// these.
    pending: Vec<Pending>,
    /// A journal body being built, kept for its allocation.
    body: Vec<u8>,
    checkpoints: Checkpointer,
    /// The tiers recorded points roll into ([`rollup`]), finest first; none until set.
    rollup_tiers: Vec<Tier>,
    compaction: Compaction,
}

/// What [`SqliteEngine::forget`] puts back after a rollback.
#[derive(Clone, Copy)]
struct Marks {
    next_seq: i64,
    reserved: i64,
}

impl Engine for SqliteEngine {
    fn commit(&mut self, writes: &[Write]) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let before = self.marks();
        self.run("BEGIN IMMEDIATE").map_err(engine_error)?;
        // Numbers for the whole group, outside the savepoints: a write rolled back alone
        // cannot take the reservation with it.
        let numbered = writes.iter().map(Write::numbered).sum();
        if let Err(error) = self.reserve(numbered) {
            let _ = self.connection.execute_batch("ROLLBACK");
            self.forget(before);
            return Err(engine_error(error));
        }
        let recorded: usize = writes.iter().map(Write::recorded).sum();
        let direct = recorded <= self.direct_points;
        let mut results = Vec::with_capacity(writes.len());
        // How many of `pending` this transaction moved into `points`.
        let mut moved = 0;
        for write in writes {
            // Deletes and expiry act after the points written before them.
            if matches!(write, Write::DeleteMetric { .. } | Write::Expire { .. })
                && moved < self.pending.len()
            {
                let moving = self.move_pending(moved);
                if let Err(error) = moving {
                    let _ = self.connection.execute_batch("ROLLBACK");
                    self.forget(before);
                    return Err(engine_error(error));
                }
                moved = self.pending.len();
            }
            self.run("SAVEPOINT one").map_err(engine_error)?;
            let result = self.apply(write, direct);
            let ended = if result.is_ok() {
                self.run("RELEASE one")
            } else {
                self.run("ROLLBACK TO one")
                    .and_then(|()| self.run("RELEASE one"))
            };
            ended.map_err(engine_error)?;
            results.push(result.map_err(engine_error));
        }
        if let Err(error) = self.run("COMMIT") {
            let _ = self.connection.execute_batch("ROLLBACK");
            self.forget(before);
            return Err(engine_error(error));
        }
        self.pending.drain(..moved);
        // A history tick's pages (a few hundred at 100k series, [`loose`]) are copied out after
        // each, as after an apply, or the WAL grew by them every 10 s until CHECKPOINT_COMMITS.
        if writes.iter().any(|w| matches!(w, Write::Samples(_))) {
            self.checkpoints.request();
        } else {
            self.checkpoints.committed();
        }
        // A failed write's savepoint was rolled back, but the series it cached may be gone.
        if results.iter().any(Result::is_err) {
            self.series.clear();
            self.cached_series = 0;
        }
        Ok(results)
    }

    fn pending(&self) -> usize {
        self.pending.len()
    }

    fn apply_pending(&mut self) -> Result<(), StoreError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let reserved_before = self.reserved;
        // The reservation covers the journal's numbers already, except in a file a tallyd
        // before it wrote, whose journal ran ahead of `meta` ([`SqliteEngine::recover`]).
        let applied =
            self.unsynced(|engine| engine.move_pending(0).and_then(|()| engine.reserve(0)));
        match applied {
            Ok(()) => {
                self.pending.clear();
                self.checkpoints.request();
            }
            // Nothing moved: the points stay pending, their journal rows in place.
            Err(_) => self.reserved = reserved_before,
        }
        applied.map_err(engine_error)
    }

    fn busy(&self) -> bool {
        self.compaction.due()
    }

    fn work(&mut self) -> Result<Worked, StoreError> {
        let started = std::time::Instant::now();
        let sliced = self.unsynced(|engine| engine.compaction.slice(&engine.connection));
        if sliced.is_err() {
            self.compaction.pause();
        }
        let sliced = sliced.map_err(engine_error)?;
        if sliced.packed > 0 {
            self.checkpoints.committed();
            tracing::debug!(
                series = sliced.packed,
                rows = sliced.rows,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "history compaction slice"
            );
        }
        Ok(Worked {
            packed: sliced.packed,
            cells: sliced.rows,
            unreadable: sliced.unreadable,
        })
    }
}

impl SqliteEngine {
    /// Runs one statement that takes no parameters and returns no rows, prepared once: a
    /// single-point commit runs five of these, and parsing them each time (`execute_batch`)
    /// was a sixth of tallyd's instructions per record (callgrind).
    fn run(&self, sql: &str) -> rusqlite::Result<()> {
        self.connection.prepare_cached(sql)?.execute([]).map(drop)
    }

    /// Runs `body` in a transaction that does not wait for its own fsync, rolled back on an
    /// error: for work that is done again if power loss takes it. An apply's points are durable
    /// already, in the journal rows it deletes, and the WAL's checksums lose a transaction
    /// whole, so the journal applies again; a compaction slice is redone from the rows it
    /// left. Otherwise the next durable commit's fsync, or the checkpoint's, covers its
    /// frames, which come before.
    fn unsynced<T>(
        &mut self,
        body: impl FnOnce(&mut Self) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.connection
            .execute_batch("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE")?;
        let done = body(self).and_then(|value| {
            self.connection.execute_batch("COMMIT")?;
            Ok(value)
        });
        if done.is_err() {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
        let durable_again = self.connection.execute_batch("PRAGMA synchronous = FULL");
        done.and_then(|value| durable_again.map(|()| value))
    }

    /// Makes sure the next `numbers` sequence numbers are reserved, inside the caller's
    /// transaction: when they run past the reservation in `meta`, it is raised to
    /// [`SEQ_BLOCK`] numbers beyond them.
    fn reserve(&mut self, numbers: usize) -> rusqlite::Result<()> {
        let needed = self.next_seq + numbers as i64;
        if needed > self.reserved {
            let reserved = needed + SEQ_BLOCK;
            self.connection
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('seq', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )?
                .execute([reserved])?;
            self.reserved = reserved;
        }
        Ok(())
    }

    /// The engine's own state a transaction changes, as it is before one begins.
    fn marks(&self) -> Marks {
        Marks {
            next_seq: self.next_seq,
            reserved: self.reserved,
        }
    }

    /// Forgets what a rolled-back transaction did to the engine's own state.
    fn forget(&mut self, before: Marks) {
        self.next_seq = before.next_seq;
        self.reserved = before.reserved;
        // By sequence, not by length: a move inside the transaction sorted `pending`, so the
        // points it journaled need not be at the end any more.
        self.pending.retain(|p| p.seq < before.next_seq);
        // What this transaction cached may not exist.
        self.series.clear();
        self.cached_series = 0;
        // A change of tiers it made is undone in `meta` too.
        if let Ok(resolutions) = rollup::load_tiers(&self.connection) {
            self.rollup_tiers = tier_list(&resolutions);
        }
    }

    /// Reads the journal rows a previous run left (a crash between a batch's commit and its
    /// apply) and applies them.
    fn recover(&mut self) -> Result<(), StoreError> {
        let left = read_journal(&self.connection)?;
        // A tallyd before the reservation left `seq` behind its journal's numbers.
        if let Some(last) = left.iter().map(|p| p.seq).max() {
            self.next_seq = self.next_seq.max(last + 1);
        }
        self.pending.extend(left);
        if !self.pending.is_empty() {
            tracing::info!(
                points = self.pending.len(),
                "applying recorded points journaled before a restart"
            );
        }
        self.apply_pending()
    }

    /// Inserts `pending[from..]` into `points` and deletes the journal rows that held them,
    /// inside the caller's transaction. `pending` is left as it is: what moved is dropped from
    /// it once the transaction commits.
    fn move_pending(&mut self, from: usize) -> rusqlite::Result<()> {
        let moving = &mut self.pending[from..];
        // In key order each leaf page is filled or rewritten once.
        moving.sort_unstable_by_key(|p| (p.metric, bucket_of(p.ts_ms), p.series, p.ts_ms, p.seq));
        self.insert_points(from)?;
        // Every journal row holds some of these points (a move earlier in the transaction emptied
        // the table of the others): emptying it frees its pages without visiting each row, SQLite's
        // truncate optimization. Deleting 2,000 single-point rows by range took 2.9M of the
        // same apply's 18.8M instructions.
        self.run("DELETE FROM journal")
    }

    /// Inserts `pending[from..]` into `points` and marks their intervals due for the rollups,
    /// inside the caller's transaction.
    fn insert_points(&self, from: usize) -> rusqlite::Result<()> {
        let points = &self.pending[from..];
        // Many rows a statement: callgrind, 2,000 single-point records applied in nine applies,
        // 15.9M instructions in the apply with one-row inserts, 14.2M with these.
        let mut rows = points.chunks_exact(INSERT_ROWS);
        // Only for whole statements: taken and put back, its 384 parameters are cleared, which
        // cost a single-point commit 8,000 instructions (callgrind).
        if rows.len() > 0 {
            let mut insert = self.connection.prepare_cached(&INSERT_MANY)?;
            for chunk in &mut rows {
                for (i, p) in chunk.iter().enumerate() {
                    bind_point(&mut insert, i * 6, p)?;
                }
                insert.raw_execute()?;
            }
        }
        let mut insert = self.connection.prepare_cached(INSERT_ONE)?;
        for p in rows.remainder() {
            bind_point(&mut insert, 0, p)?;
            insert.raw_execute()?;
        }
        if let Some(finest) = self.rollup_tiers.first() {
            rollup::mark(&self.connection, finest.resolution_ms, points)?;
        }
        Ok(())
    }

    /// Does `write` inside the caller's transaction; recorded points go straight into `points`
    /// when `direct`, else into the journal.
    fn apply(&mut self, write: &Write, direct: bool) -> rusqlite::Result<Written> {
        match write {
            Write::PutMetric(metric) => {
                let id = self.connection.query_row(
                    "INSERT INTO metrics (uid, tenant, scope, name, document, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (uid) DO UPDATE SET
                        tenant = excluded.tenant, scope = excluded.scope, name = excluded.name,
                        document = excluded.document, updated_ms = excluded.updated_ms
                     RETURNING id",
                    params![
                        metric.uid,
                        metric.tenant,
                        metric.scope,
                        metric.name,
                        metric.document,
                        metric.created_ms,
                        metric.updated_ms
                    ],
                    |row| row.get(0),
                )?;
                Ok(Written::Metric(id))
            }
            Write::DeleteMetric { id } => {
                let mut removed = 0;
                for table in [
                    "points",
                    "series",
                    "data_points",
                    "tier_samples",
                    "tier_loose",
                    "rollups_due",
                ] {
                    removed += self
                        .connection
                        .execute(&format!("DELETE FROM {table} WHERE metric = ?1"), [id])?;
                }
                removed += self
                    .connection
                    .execute("DELETE FROM metrics WHERE id = ?1", [id])?;
                if let Some(gone) = self.series.remove(id) {
                    self.cached_series -= gone.len();
                }
                Ok(Written::Removed(removed as u64))
            }
            Write::Points { metric, points } => {
                let mut resolved = Vec::with_capacity(points.len());
                for point in points {
                    let series = self.series_id(*metric, &point.labels)?;
                    resolved.push((series, point.ts_ms, point.value));
                }
                let first_seq = self.next_seq;
                let from = self.pending.len();
                self.pending.extend(resolved.iter().enumerate().map(
                    |(i, &(series, ts_ms, value))| Pending {
                        metric: *metric,
                        series,
                        ts_ms,
                        seq: first_seq + i as i64,
                        value,
                    },
                ));
                let done = if direct {
                    self.insert_points(from)
                } else {
                    self.journal(*metric, first_seq, &resolved)
                };
                if direct || done.is_err() {
                    // Points in `points` have no journal row to wait in; a failed write, none.
                    self.pending.truncate(from);
                }
                done?;
                self.next_seq += points.len() as i64;
                Ok(Written::Done)
            }
            Write::DataPoints { metric, points } => {
                let mut insert = self.connection.prepare_cached(
                    "INSERT INTO data_points (metric, seq, x, y, prediction_ids)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                let first_seq = self.next_seq;
                for point in points {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    insert.execute(params![metric, seq, point.x, point.y, point.prediction_ids])?;
                }
                Ok(Written::DataPoints { first_seq })
            }
            Write::ClearDataPoints { metric } => {
                let removed = self
                    .connection
                    .execute("DELETE FROM data_points WHERE metric = ?1", [metric])?;
                Ok(Written::Removed(removed as u64))
            }
            Write::Samples(batch) => {
                let mut ids = Vec::with_capacity(batch.rows.len());
                for row in &batch.rows {
                    ids.push(self.series_id(row.metric, &row.labels)?);
                }
                tiers::write(&self.connection, batch, &ids)?;
                self.compaction.sampled(batch);
                Ok(Written::Done)
            }
            Write::RollupTiers(resolutions) => {
                if rollup::set_tiers(&self.connection, resolutions)? {
                    tracing::info!(
                        ?resolutions,
                        "recorded points roll up into new tiers: every rollup is rebuilt"
                    );
                }
                self.rollup_tiers = tier_list(resolutions);
                Ok(Written::Done)
            }
            Write::Compact {
                tiers,
                closed_before_ms,
            } => {
                self.compaction.closed(Arc::clone(tiers), *closed_before_ms);
                Ok(Written::Done)
            }
            Write::Roll { now_ms } => {
                let rolled = rollup::roll(&self.connection, &self.rollup_tiers, *now_ms)?;
                Ok(Written::Rolled(rolled))
            }
            Write::ExpireHistory { metric, cuts } => {
                let removed = tiers::expire(&self.connection, *metric, cuts)?;
                // Some of its series may be gone: they are looked up afresh.
                if let Some(gone) = self.series.remove(metric) {
                    self.cached_series -= gone.len();
                }
                Ok(Written::Removed(removed))
            }
            Write::Expire { metric, before_ms } => {
                let bucket = bucket_of(*before_ms);
                let whole = self.connection.execute(
                    "DELETE FROM points WHERE metric = ?1 AND bucket < ?2",
                    params![metric, bucket],
                )?;
                let part = self.connection.execute(
                    "DELETE FROM points WHERE metric = ?1 AND bucket = ?2 AND ts < ?3",
                    params![metric, bucket, before_ms],
                )?;
                let rolled = rollup::expire(&self.connection, *metric, *before_ms)?;
                Ok(Written::Removed((whole + part) as u64 + rolled))
            }
        }
    }

    /// Appends one journal row holding `metric`'s points `(series, ts_ms, value)`, numbered
    /// from `first_seq`, inside the caller's transaction.
    fn journal(
        &mut self,
        metric: i64,
        first_seq: i64,
        points: &[(i64, i64, f64)],
    ) -> rusqlite::Result<()> {
        let mut body = std::mem::take(&mut self.body);
        body.clear();
        journal::encode(metric, first_seq, points, &mut body);
        let journaled = self
            .connection
            .prepare_cached("INSERT INTO journal (body) VALUES (?1)")
            .and_then(|mut insert| insert.execute([&body]));
        self.body = body;
        journaled.map(drop)
    }

    /// The id of `metric`'s series with `labels`, created on first use.
    fn series_id(&mut self, metric: i64, labels: &Arc<str>) -> rusqlite::Result<i64> {
        if let Some(id) = self.series.get(&metric).and_then(|known| known.get(labels)) {
            return Ok(*id);
        }
        self.connection
            .prepare_cached("INSERT OR IGNORE INTO series (metric, labels) VALUES (?1, ?2)")?
            .execute(params![metric, labels.as_ref()])?;
        let id = self
            .connection
            .prepare_cached("SELECT id FROM series WHERE metric = ?1 AND labels = ?2")?
            .query_row(params![metric, labels.as_ref()], |row| row.get(0))?;
        if self.cached_series >= SERIES_CACHE {
            self.series.clear();
            self.cached_series = 0;
        }
        self.series
            .entry(metric)
            .or_default()
            .insert(Arc::clone(labels), id);
        self.cached_series += 1;
        Ok(id)
    }
}

/// Read connections to the same file.
pub struct SqliteReader {
    path: std::path::PathBuf,
    pool: Mutex<Vec<Connection>>,
    /// Whether scans read the journal too: a reader beside another process's writer (the
    /// `tallyd history` tools) cannot ask that writer to apply what is pending, so it reads the
    /// journal rows itself, in the same read transaction as the points.
    with_journal: bool,
}

impl SqliteReader {
    /// Runs `read` with a pooled read-only connection.
    fn with<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.pool.lock().pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => {
                let mut connection = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(engine_error)?;
                wait_for_locks(&mut connection).map_err(engine_error)?;
                // Pages of the database file straight from the OS's page cache, not copied into
                // each connection's own: a long history query reads tens of MB, far past the
                // default 2 MB cache (pages still in the WAL are read as before).
                connection
                    .pragma_update(None, "mmap_size", READ_MMAP)
                    .map_err(engine_error)?;
                connection
            }
        };
        let result = read(&connection).map_err(engine_error);
        let mut pool = self.pool.lock();
        if pool.len() < READ_POOL {
            pool.push(connection);
        }
        result
    }
}

impl SqliteReader {
    /// [`Reader::scan`] over the points table and the journal rows not yet applied, read in one
    /// transaction (an apply moves points from one to the other atomically, so each point is
    /// seen once), sorted by series, time and sequence.
    fn scan_with_journal(
        &self,
        metric: i64,
        start_ms: i64,
        end_ms: i64,
        series: Option<&[i64]>,
        visit: &mut dyn FnMut(i64, i64, f64),
    ) -> Result<(), StoreError> {
        let wanted = |id: i64| series.is_none_or(|s| s.contains(&id));
        let (mut found, journal) = self.with(|connection| {
            let transaction = connection.unchecked_transaction()?;
            let mut points = transaction.prepare(
                "SELECT series, ts, seq, value FROM points
                 WHERE metric = ?1 AND bucket >= ?2 AND bucket <= ?3 AND ts >= ?4 AND ts < ?5",
            )?;
            let (first, last) = (bucket_of(start_ms), bucket_of(end_ms - 1));
            let mut rows = points.query(params![metric, first, last, start_ms, end_ms])?;
            let mut found: Vec<(i64, i64, i64, f64)> = Vec::new();
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                if wanted(id) {
                    found.push((id, row.get(1)?, row.get(2)?, row.get(3)?));
                }
            }
            Ok((found, read_journal(&transaction)))
        })?;
        let pending = journal?;
        found.extend(
            pending
                .iter()
                .filter(|p| p.metric == metric && wanted(p.series))
                .filter(|p| (start_ms..end_ms).contains(&p.ts_ms))
                .map(|p| (p.series, p.ts_ms, p.seq, p.value)),
        );
        found.sort_by_key(|&(series, ts, seq, _)| (series, ts, seq));
        for (id, ts, _, value) in found {
            visit(id, ts, value);
        }
        Ok(())
    }
}

impl Reader for SqliteReader {
    fn metrics(&self) -> Result<Vec<StoredMetric>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, uid, tenant, scope, name, document, created_ms, updated_ms
                 FROM metrics ORDER BY id",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(StoredMetric {
                    id: row.get(0)?,
                    uid: row.get(1)?,
                    tenant: row.get(2)?,
                    scope: row.get(3)?,
                    name: row.get(4)?,
                    document: row.get(5)?,
                    created_ms: row.get(6)?,
                    updated_ms: row.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    fn series(&self, metric: i64) -> Result<Vec<(i64, String)>, StoreError> {
        self.with(|connection| {
            let mut statement = connection
                .prepare_cached("SELECT id, labels FROM series WHERE metric = ?1 ORDER BY id")?;
            let rows = statement.query_map([metric], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect()
        })
    }

    fn scan(
        &self,
        metric: i64,
        start_ms: i64,
        end_ms: i64,
        series: Option<&[i64]>,
        visit: &mut dyn FnMut(i64, i64, f64),
    ) -> Result<(), StoreError> {
        if end_ms <= start_ms {
            return Ok(());
        }
        if self.with_journal {
            return self.scan_with_journal(metric, start_ms, end_ms, series, visit);
        }
        self.with(|connection| scan_points(connection, metric, start_ms, end_ms, series, visit))
    }

    fn rolled_until(&self, metric: i64, tiers: &[Tier]) -> Result<i64, StoreError> {
        self.with(|connection| rollup::rolled_until(connection, metric, tiers))
    }

    fn scan_tier(
        &self,
        tier: Tier,
        metric: i64,
        start_ms: i64,
        end_ms: i64,
        series: Option<&[i64]>,
        visit: &mut dyn FnMut(i64, i64, Cell),
    ) -> Result<(), StoreError> {
        // One read transaction: the scan takes several statements (packed and loose rows per
        // bucket), and a compaction slice committed between two would move cells out of sight.
        self.with(|connection| {
            let snapshot = connection.unchecked_transaction()?;
            tiers::scan(&snapshot, tier, metric, start_ms, end_ms, series, visit)
        })
    }

    fn data_points(&self, metric: i64) -> Result<Vec<DataPoint>, StoreError> {
        self.with(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT x, y, prediction_ids FROM data_points WHERE metric = ?1 ORDER BY seq",
            )?;
            let rows = statement.query_map([metric], |row| {
                Ok(DataPoint {
                    x: row.get(0)?,
                    y: row.get(1)?,
                    prediction_ids: row.get(2)?,
                })
            })?;
            rows.collect()
        })
    }
}

/// Tiers of these resolutions, for the rollups (which need no retention).
fn tier_list(resolutions: &[i64]) -> Vec<Tier> {
    resolutions
        .iter()
        .map(|&resolution_ms| Tier::of_resolution(resolution_ms))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::{Point, labels_key};

    fn points(metric: i64, times: std::ops::Range<i64>) -> Write {
        Write::Points {
            metric,
            points: times
                .map(|ts_ms| Point {
                    labels: labels_key([("k", "b")]).into(),
                    ts_ms,
                    value: 1.0,
                })
                .collect(),
        }
    }

    /// A store in a new directory with one gauge defined: the directory, the engine, a reader
    /// and the gauge's id.
    pub(crate) fn with_a_metric() -> (tempfile::TempDir, SqliteEngine, SqliteReader, i64) {
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, reader) = open(dir.path()).unwrap();
        let metric = StoredMetric {
            id: 0,
            uid: "m".into(),
            tenant: "t".into(),
            scope: "matih".into(),
            name: "m".into(),
            document: r#"{"type":"gauge"}"#.into(),
            created_ms: 1,
            updated_ms: 1,
        };
        let Ok(Written::Metric(id)) = engine.commit(&[Write::PutMetric(metric)]).unwrap()[0] else {
            panic!("no metric id");
        };
        (dir, engine, reader, id)
    }

    #[test]
    fn a_rolled_back_move_leaves_pending_exactly_the_points_committed_before_it() {
        let (_dir, mut engine, _reader, id) = with_a_metric();
        engine.direct_points = 0;
        engine.commit(&[points(id, 1_000..1_004)]).unwrap();
        let committed: Vec<i64> = engine.pending.iter().map(|p| p.seq).collect();
        assert_eq!(committed.len(), 4);

        // What `commit` does before a delete, then fails: the new points sort ahead of the
        // committed ones (same series, earlier times).
        let before = engine.marks();
        engine.connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        engine.apply(&points(id, 0..4), false).unwrap();
        engine.move_pending(0).unwrap();
        engine.connection.execute_batch("ROLLBACK").unwrap();
        engine.forget(before);

        let mut left: Vec<i64> = engine.pending.iter().map(|p| p.seq).collect();
        left.sort_unstable();
        assert_eq!(left, committed);
    }

    #[test]
    fn small_groups_go_straight_into_points_and_larger_ones_through_the_journal() {
        let (_dir, mut engine, _reader, id) = with_a_metric();
        let rows = |engine: &SqliteEngine, table: &str| -> i64 {
            (engine.connection)
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                    row.get(0)
                })
                .unwrap()
        };
        let small = DIRECT_POINTS as i64;
        // Two writes whose points together fit: both straight in, nothing left to apply.
        engine
            .commit(&[points(id, 0..1), points(id, 1..small)])
            .unwrap();
        assert_eq!(
            (rows(&engine, "points"), rows(&engine, "journal")),
            (small, 0)
        );
        assert!(engine.pending.is_empty());
        // One point more in the group: all of it is journaled.
        engine
            .commit(&[points(id, 100..101), points(id, 101..101 + small)])
            .unwrap();
        assert_eq!(
            (rows(&engine, "points"), rows(&engine, "journal")),
            (small, 2)
        );
        assert_eq!(engine.pending.len(), small as usize + 1);
        engine.apply_pending().unwrap();
        assert_eq!(
            (rows(&engine, "points"), rows(&engine, "journal")),
            (2 * small + 1, 0)
        );
    }

    #[test]
    fn numbers_are_reserved_in_blocks_and_never_reused_across_a_restart() {
        let (dir, mut engine, _reader, id) = with_a_metric();
        let seq_row = |engine: &SqliteEngine| -> Option<i64> {
            (engine.connection)
                .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |row| {
                    row.get(0)
                })
                .optional()
                .unwrap()
        };
        assert_eq!(seq_row(&engine), None, "nothing spent yet");
        engine.commit(&[points(id, 0..3)]).unwrap();
        assert_eq!(seq_row(&engine), Some(3 + SEQ_BLOCK));
        // Inside the block: `meta` is left alone, journaled or not.
        engine
            .commit(&[points(id, 3..5), points(id, 5..6)])
            .unwrap();
        engine.direct_points = 0;
        engine.commit(&[points(id, 6..10)]).unwrap();
        assert_eq!(seq_row(&engine), Some(3 + SEQ_BLOCK));
        let spent = engine.next_seq;
        assert_eq!(spent, 10);
        // As after a crash: the journal row is not applied yet.
        drop(engine);

        let (mut engine, _reader) = open(dir.path()).unwrap();
        let first = engine.next_seq;
        assert!(first >= spent, "{first} reuses numbers below {spent}");
        let data_points = Write::DataPoints {
            metric: id,
            points: vec![crate::store::DataPoint {
                x: "2026-12-07T10:00:00Z".into(),
                y: 1.0,
                prediction_ids: None,
            }],
        };
        let written = engine.commit(std::slice::from_ref(&data_points)).unwrap();
        assert!(matches!(written[0], Ok(Written::DataPoints { first_seq }) if first_seq == first));

        // A file an older tallyd left: `seq` behind the journal's numbers.
        engine.direct_points = 0;
        engine.commit(&[points(id, 10..12)]).unwrap();
        let journaled = engine.next_seq;
        engine
            .connection
            .execute("UPDATE meta SET value = 5 WHERE key = 'seq'", [])
            .unwrap();
        drop(engine);
        let (engine, _reader) = open(dir.path()).unwrap();
        assert!(engine.next_seq >= journaled);
        // The apply at open took the journal's rows away, so `meta` holds the number now.
        assert!(seq_row(&engine).is_some_and(|seq| seq >= journaled));
        drop(engine);
        let (engine, _reader) = open(dir.path()).unwrap();
        assert!(engine.next_seq >= journaled);
    }

    #[test]
    fn a_failed_write_is_undone_alone_and_its_group_commits() {
        let (dir, mut engine, _reader, id) = with_a_metric();
        // Makes the Deeploy write fail inside the group after its first row went in, as a full
        // disk or a bug might: that row must be undone with it.
        (engine.connection)
            .execute_batch(
                "CREATE TEMP TRIGGER refuse BEFORE INSERT ON data_points WHEN NEW.x = 'refused'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let point = |x: &str| crate::store::DataPoint {
            x: x.into(),
            y: 1.0,
            prediction_ids: None,
        };
        let refused = Write::DataPoints {
            metric: id,
            points: vec![point("2026-12-07T10:00:00Z"), point("refused")],
        };
        // Twice: the second group runs the savepoint statements as the first left them.
        for times in [0..2, 2..4] {
            let (before, after) = (
                points(id, times.start..times.start + 1),
                points(id, times.start + 1..times.end),
            );
            let results = engine.commit(&[before, refused.clone(), after]).unwrap();
            assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
            assert!(
                results[1]
                    .as_ref()
                    .unwrap_err()
                    .to_string()
                    .contains("refused")
            );
        }
        drop(engine);

        // What a restart finds: the four points on either side, no data point.
        let (engine, _reader) = open(dir.path()).unwrap();
        let rows = |sql: &str| -> i64 {
            engine
                .connection
                .query_row(sql, [], |row| row.get(0))
                .unwrap()
        };
        assert_eq!(rows("SELECT COUNT(*) FROM points"), 4);
        assert_eq!(rows("SELECT COUNT(*) FROM data_points"), 0);
    }

    #[test]
    fn a_lock_is_waited_for_in_short_steps_then_given_up() {
        use std::time::Duration;
        assert_eq!(
            lock_wait_step(Duration::ZERO),
            Some(Duration::from_micros(20))
        );
        assert_eq!(
            lock_wait_step(Duration::from_millis(19)),
            Some(Duration::from_micros(20))
        );
        assert_eq!(
            lock_wait_step(Duration::from_millis(20)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(
            lock_wait_step(LOCK_WAIT - Duration::from_millis(1)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(lock_wait_step(LOCK_WAIT), None);
    }

    #[test]
    fn the_writer_waits_out_a_lock_another_connection_holds() {
        let (dir, mut engine, _reader, id) = with_a_metric();
        let mut other = Connection::open(dir.path().join(FILE_NAME)).unwrap();
        wait_for_locks(&mut other).unwrap();
        other.execute_batch("BEGIN IMMEDIATE").unwrap();
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            other.execute_batch("COMMIT").unwrap();
        });
        // Asked while the other holds the write lock: it waits, then commits (without any
        // busy handler, `BEGIN IMMEDIATE` would fail at once).
        engine.commit(&[points(id, 0..3)]).unwrap();
        holder.join().unwrap();
        let stored: i64 = (engine.connection)
            .query_row("SELECT COUNT(*) FROM points", [], |row| row.get(0))
            .unwrap();
        assert_eq!(stored, 3);
    }

    #[test]
    fn a_history_tick_is_checkpointed_out_of_the_wal() {
        use crate::store::tiers::{Cell, SampleBatch, Tier};
        let dir = tempfile::tempdir().unwrap();
        let (mut engine, _reader) = open(dir.path()).unwrap();
        let file = dir.path().join(FILE_NAME);
        let size = || std::fs::metadata(&file).unwrap().len();
        let before = size();
        let mut batch = SampleBatch {
            tiers: vec![Tier {
                resolution_ms: 10_000,
                retention_ms: 86_400_000,
            }]
            .into(),
            metrics: vec![1],
            ts_ms: 1_764_000_000_000,
            ..SampleBatch::default()
        };
        for series in 0..2_000 {
            let labels = labels_key([("series", series.to_string().as_str())]);
            batch.push(1, labels.into(), |out| Cell::scalar(1.5).encode(out));
        }
        engine.commit(&[Write::Samples(Box::new(batch))]).unwrap();
        // One commit, far from CHECKPOINT_COMMITS: its pages reach the database file anyway.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while size() <= before {
            assert!(
                std::time::Instant::now() < deadline,
                "the tick is still only in the WAL"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
