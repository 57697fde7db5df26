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
//! - `meta`: the next sequence number.
//!
//! One point costs about 40 bytes on disk (five small integers, a double, the record and cell
//! headers), before the WAL is checkpointed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{DataPoint, Engine, Reader, StoreError, StoredMetric, Write, Written, bucket_of};

/// The file in the data directory.
pub const FILE_NAME: &str = "tallyd.db";

/// The schema this build writes; a file with a newer one is refused, not guessed at.
const SCHEMA_VERSION: i64 = 1;

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
";

/// Read connections kept for reuse; more readers at once open more and close them after.
const READ_POOL: usize = 4;

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
    let connection = Connection::open(&path)
        .map_err(|e| StoreError::Engine(format!("cannot open {}: {e}", path.display())))?;
    configure(&connection).map_err(engine_error)?;
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
        .execute_batch(SCHEMA)
        .and_then(|()| connection.pragma_update(None, "user_version", SCHEMA_VERSION))
        .map_err(engine_error)?;
    let next_seq = connection
        .query_row("SELECT value FROM meta WHERE key = 'seq'", [], |row| {
            row.get(0)
        })
        .optional()
        .map_err(engine_error)?
        .unwrap_or(0);
    let engine = SqliteEngine {
        connection,
        next_seq,
        series: HashMap::new(),
        cached_series: 0,
    };
    let reader = SqliteReader {
        path,
        pool: Mutex::new(Vec::new()),
    };
    Ok((engine, reader))
}

fn configure(connection: &Connection) -> rusqlite::Result<()> {
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

/// The writer's connection.
pub struct SqliteEngine {
    connection: Connection,
    next_seq: i64,
    /// metric → labels → series id, for the series already written.
    series: HashMap<i64, HashMap<Arc<str>, i64, ahash::RandomState>>,
    cached_series: usize,
}

impl Engine for SqliteEngine {
    fn commit(&mut self, writes: &[Write]) -> Result<Vec<Result<Written, StoreError>>, StoreError> {
        let seq_before = self.next_seq;
        self.connection
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(engine_error)?;
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            self.connection
                .execute_batch("SAVEPOINT one")
                .map_err(engine_error)?;
            let result = self.apply(write);
            let end = if result.is_ok() {
                "RELEASE one"
            } else {
                "ROLLBACK TO one; RELEASE one"
            };
            self.connection.execute_batch(end).map_err(engine_error)?;
            results.push(result.map_err(engine_error));
        }
        let committed = self
            .connection
            .execute(
                "INSERT INTO meta (key, value) VALUES ('seq', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [self.next_seq],
            )
            .and_then(|_| self.connection.execute_batch("COMMIT"));
        if let Err(error) = committed {
            let _ = self.connection.execute_batch("ROLLBACK");
            // What this transaction cached may not exist.
            self.next_seq = seq_before;
            self.series.clear();
            self.cached_series = 0;
            return Err(engine_error(error));
        }
        // A failed write's savepoint was rolled back, but the series it cached may be gone.
        if results.iter().any(Result::is_err) {
            self.series.clear();
            self.cached_series = 0;
        }
        Ok(results)
    }
}

impl SqliteEngine {
    fn apply(&mut self, write: &Write) -> rusqlite::Result<Written> {
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
                for table in ["points", "series", "data_points"] {
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
                // Series ids first (their cache needs `&mut self`), then one prepared statement
                // for every row: looking it up in the statement cache per row cost more than
                // binding it.
                let mut series = Vec::with_capacity(points.len());
                for point in points {
                    series.push(self.series_id(*metric, &point.labels)?);
                }
                let mut insert = self.connection.prepare_cached(
                    "INSERT INTO points (metric, bucket, series, ts, seq, value)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for (point, series) in points.iter().zip(series) {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    insert.execute(params![
                        metric,
                        bucket_of(point.ts_ms),
                        series,
                        point.ts_ms,
                        seq,
                        point.value
                    ])?;
                }
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
                Ok(Written::Removed((whole + part) as u64))
            }
        }
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
                let connection = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(engine_error)?;
                connection
                    .busy_timeout(std::time::Duration::from_secs(5))
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
        let (first, last) = (bucket_of(start_ms), bucket_of(end_ms - 1));
        let seeks = (last - first + 1).saturating_mul(series.map_or(i64::MAX, |s| s.len() as i64));
        self.with(|connection| {
            if let Some(series) = series.filter(|_| seeks <= MAX_SEEKS) {
                let mut statement = connection.prepare_cached(
                    "SELECT ts, value FROM points
                     WHERE metric = ?1 AND bucket = ?2 AND series = ?3 AND ts >= ?4 AND ts < ?5
                     ORDER BY ts, seq",
                )?;
                for bucket in first..=last {
                    for &id in series {
                        let mut rows =
                            statement.query(params![metric, bucket, id, start_ms, end_ms])?;
                        while let Some(row) = rows.next()? {
                            visit(id, row.get(0)?, row.get(1)?);
                        }
                    }
                }
                return Ok(());
            }
            let wanted: Option<std::collections::HashSet<i64>> =
                series.map(|s| s.iter().copied().collect());
            let mut statement = connection.prepare_cached(
                "SELECT series, ts, value FROM points
                 WHERE metric = ?1 AND bucket >= ?2 AND bucket <= ?3 AND ts >= ?4 AND ts < ?5
                 ORDER BY bucket, series, ts, seq",
            )?;
            let mut rows = statement.query(params![metric, first, last, start_ms, end_ms])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                if wanted.as_ref().is_none_or(|w| w.contains(&id)) {
                    visit(id, row.get(1)?, row.get(2)?);
                }
            }
            Ok(())
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
