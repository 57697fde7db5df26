//! History: what the store keeps over time, and moving it out of tallyd: the [`sampler`] that
//! samples the metrics asking for history into the store's tiers ([`crate::store::tiers`]) and
//! the task that runs it and expires them ([`run`]); the families mapping rules add to it
//! ([`ruled`]); [`export`] (a metric's points as
//! OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`) and the `tallyd history`
//! subcommands that run it and back the store up ([`crate::store::sqlite::backup`]).

pub mod export;
pub mod ruled;
pub mod sampler;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::config::{HistoryConfig, MetricDefinition, history_families};
use crate::registry::Registry;
use crate::store::tiers::Tier;
use crate::store::{Store, StoreError, StoredMetric, Write, Written};

use crate::config::{HistoryCommand, Settings};
use crate::custom::time::parse_instant;
use crate::store::sqlite;

/// Runs `tallyd history …` against the store in `settings.data_dir`: 0 done, 1 failed, 2 bad
/// arguments.
pub fn run_command(command: &HistoryCommand, settings: &Settings) -> ExitCode {
    let data_dir = settings.data_dir.as_path();
    match command {
        HistoryCommand::Export {
            metric,
            tenant,
            start,
            end,
            output,
        } => {
            let instant = |flag: &str, text: &Option<String>, default: i64| match text {
                Some(text) => parse_instant(text).map_err(|e| format!("--{flag}: {e}")),
                None => Ok(default),
            };
            let range = instant("start", start, i64::MIN)
                .and_then(|start| Ok((start, instant("end", end, i64::MAX)?)));
            let (start_ms, end_ms) = match range {
                Ok(range) => range,
                Err(e) => {
                    eprintln!("tallyd history export: {e}");
                    return ExitCode::from(2);
                }
            };
            let result = sqlite::open_reader(data_dir)
                .map_err(export::ExportError::Store)
                .and_then(|reader| {
                    let request = export::Export {
                        metric: metric.clone(),
                        tenant: tenant.clone(),
                        start_ms,
                        end_ms,
                        sampled: sampled(settings, metric, &reader)?,
                    };
                    Ok((reader, request))
                })
                .and_then(|(reader, request)| match output {
                    Some(path) => {
                        let file =
                            std::fs::File::create(path).map_err(export::ExportError::Output)?;
                        export::export(&reader, &request, &mut std::io::BufWriter::new(file))
                    }
                    None => export::export(&reader, &request, &mut std::io::stdout().lock()),
                });
            match result {
                Ok(done) => {
                    eprintln!(
                        "tallyd history export: {metric}: {} series, {} samples",
                        done.series, done.samples
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    if let Some(path) = output {
                        // No half-written export is left to be imported by mistake.
                        let _ = std::fs::remove_file(path);
                    }
                    eprintln!("tallyd history export: {metric}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        HistoryCommand::Backup { to } => match sqlite::backup(data_dir, to) {
            Ok(bytes) => {
                eprintln!(
                    "tallyd history backup: {} → {} ({bytes} bytes)",
                    data_dir.join(sqlite::FILE_NAME).display(),
                    to.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tallyd history backup: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The history of the `[[metric]]` named `name` (a counter's with or without `_total`), when
/// it keeps some; else of the family of that name a mapping rule kept history for, with the
/// type its history row holds ([`ruled::Persisted`]), whether or not the rule still asks for
/// history (what is stored is exported until it expires).
fn sampled(
    settings: &Settings,
    name: &str,
    reader: &dyn crate::store::Reader,
) -> Result<Option<export::Sampled>, export::ExportError> {
    let names = [name, crate::naming::counter_family(name)];
    let configured = (names.into_iter())
        .find(|family| settings.history.metrics.contains_key(*family))
        .and_then(|family| Some((family.to_owned(), settings.definitions.get(family)?.kind)));
    let found = match configured {
        Some(found) => Some(found),
        None => {
            let stored = reader.metrics()?;
            names.into_iter().find_map(|family| {
                let row =
                    (stored.iter()).find(|row| row.scope == HISTORY_SCOPE && row.name == family)?;
                let kind = ruled::Persisted::of_document(&row.document)?.kind;
                // Only a counter's family answers to its name with `_total`.
                (family == name || kind == crate::registry::Kind::Counter)
                    .then(|| (family.to_owned(), kind))
            })
        }
    };
    let Some((family, kind)) = found else {
        return Ok(None);
    };
    let kind = match kind {
        crate::registry::Kind::Counter => crate::custom::MetricType::Counter,
        crate::registry::Kind::Histogram => crate::custom::MetricType::Histogram,
        crate::registry::Kind::Summary => crate::custom::MetricType::Summary,
        // A set's history is its member count, sampled as a gauge's value.
        _ => crate::custom::MetricType::Gauge,
    };
    let tier = settings.history.tiers[0];
    let now = crate::custom::time::now_ms();
    Ok(Some(export::Sampled {
        family,
        kind,
        tier,
        kept: (
            now - tier.retention_ms,
            tier.floor(now) + tier.resolution_ms,
        ),
    }))
}

/// `[history]` and the `[[metric]]`s that ask for it, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryOptions {
    /// Finest first; the finest is what the sampler writes.
    pub tiers: Arc<[Tier]>,
    /// Family name → its own retention in ms, if it sets one.
    pub metrics: BTreeMap<String, Option<i64>>,
}

impl HistoryOptions {
    pub fn new(
        config: &HistoryConfig,
        metrics: &[toml::Spanned<MetricDefinition>],
    ) -> Result<HistoryOptions, String> {
        let tiers = (config.tiers.iter().enumerate())
            .map(|(i, tier)| tier.tier(i))
            .collect::<Result<Vec<Tier>, String>>()
            .map_err(|e| format!("[history] {e}"))?;
        crate::store::tiers::check(&tiers).map_err(|e| format!("[history] {e}"))?;
        let interval_ms = i64::from(config.interval_seconds) * 1000;
        if tiers[0].resolution_ms != interval_ms {
            return Err(format!(
                "[history] interval_seconds ({}) must equal tiers[0].resolution ({}): the \
                 sampler writes the finest tier",
                config.interval_seconds, config.tiers[0].resolution
            ));
        }
        Ok(HistoryOptions {
            tiers: tiers.into(),
            metrics: history_families(metrics),
        })
    }
}

/// What the sampler and the queries share: the tiers, the metrics asking for history and their
/// store rows.
#[derive(Debug)]
pub struct History {
    tiers: Arc<[Tier]>,
    /// As configured; replaced on reload.
    wanted: RwLock<BTreeMap<String, Option<i64>>>,
    /// Added by mapping rules with `history = true` as their lines arrive.
    ruled: Arc<ruled::RuleFamilies>,
    /// Family → store id, once its row exists.
    ids: RwLock<HashMap<String, i64>>,
    /// When it was made (Unix ms), before the receivers start: series created from then on
    /// count from zero at their first tick, however late the sampling task first runs.
    started_ms: i64,
}

/// The store scope of history metrics' rows (the API does not list them).
const HISTORY_SCOPE: &str = "history";

/// The store row of a sampled family (the store keys its tiers' samples by the row's id).
pub fn stored_family(family: &str) -> StoredMetric {
    StoredMetric {
        id: 0,
        uid: format!("{HISTORY_SCOPE}:{family}"),
        tenant: String::new(),
        scope: HISTORY_SCOPE.into(),
        name: family.to_owned(),
        document: "{}".into(),
        created_ms: 0,
        updated_ms: 0,
    }
}

/// How often samples past their retention are removed.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

impl History {
    pub fn new(options: &HistoryOptions) -> Arc<History> {
        Arc::new(History {
            tiers: Arc::clone(&options.tiers),
            wanted: RwLock::new(options.metrics.clone()),
            ruled: Arc::default(),
            ids: RwLock::new(HashMap::new()),
            started_ms: crate::custom::time::now_ms(),
        })
    }

    /// A reload's metrics (the tiers wait for a restart).
    pub fn replace(&self, options: &HistoryOptions) {
        *self.wanted.write() = options.metrics.clone();
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The families mapping rules keep history for (the ingesters add to it).
    pub fn rule_families(&self) -> &Arc<ruled::RuleFamilies> {
        &self.ruled
    }

    /// Whether `family` keeps history: configured so, or named by a rule that asks for it.
    pub fn wants(&self, family: &str) -> bool {
        self.own_retention(family).is_some()
    }

    /// `Some(retention)` when `family` keeps history (`None` inside: each tier's own); a
    /// `[[metric]]`'s retention wins over a rule's.
    fn own_retention(&self, family: &str) -> Option<Option<i64>> {
        let configured = self.wanted.read().get(family).copied();
        configured.or_else(|| self.ruled.get(family).map(|ruled| ruled.retention))
    }

    /// The store id and own retention of `family`'s history, when it has some.
    pub fn find(&self, family: &str) -> Option<(i64, Option<i64>)> {
        let retention = self.own_retention(family)?;
        Some((*self.ids.read().get(family)?, retention))
    }

    /// The tier a query from `start_ms` at `step_ms` reads: the coarsest whose resolution
    /// divides the step and the start (so each of its intervals lies in one bin) and which
    /// still keeps `start_ms` (its retention, or the metric's, as of `now_ms`); else the finest
    /// that keeps the start; else the coarsest dividing the step and the start; else the
    /// finest.
    pub fn tier_for(&self, start_ms: i64, step_ms: i64, now_ms: i64, own: Option<i64>) -> Tier {
        let fits =
            |t: &&Tier| step_ms % t.resolution_ms == 0 && start_ms.rem_euclid(t.resolution_ms) == 0;
        let keeps =
            |t: &&Tier| start_ms >= now_ms - own.map_or(t.retention_ms, |o| o.min(t.retention_ms));
        (self.tiers.iter().rev().find(|t| fits(t) && keeps(t)))
            .or_else(|| self.tiers.iter().find(keeps))
            .or_else(|| self.tiers.iter().rev().find(fits))
            .copied()
            .unwrap_or(self.tiers[0])
    }

    /// Makes a store row for each wanted family without one, and writes each rule family's
    /// [`ruled::Persisted`] document into its row when the row does not hold it yet; answers
    /// the families to sample with their ids.
    pub async fn resolve(&self, store: &Store) -> Result<Vec<(String, i64)>, StoreError> {
        let mut wanted: BTreeSet<String> = self.wanted.read().keys().cloned().collect();
        wanted.extend(self.ruled.families().into_iter().map(|(family, _)| family));
        let mut documents: HashMap<String, ruled::Persisted> =
            self.ruled.unpersisted().into_iter().collect();
        let mut out = Vec::with_capacity(wanted.len());
        for family in wanted {
            let known = self.ids.read().get(&family).copied();
            let document = documents.remove(&family);
            let id = match (known, &document) {
                (Some(id), None) => id,
                _ => {
                    let mut row = stored_family(&family);
                    if let Some(document) = &document {
                        row.document = document.document();
                    }
                    let written = store.write(Write::PutMetric(row)).await?;
                    let Written::Metric(id) = written else {
                        return Err(StoreError::Engine("no id for a history metric".into()));
                    };
                    self.ids.write().insert(family.clone(), id);
                    if let Some(document) = &document {
                        self.ruled.persisted(&family, document);
                    }
                    id
                }
            };
            out.push((family, id));
        }
        Ok(out)
    }

    /// At start, from the store's rows: knows the id of every history row, and puts back the
    /// families mapping rules kept history for that `rules` still name with it
    /// ([`ruled::RuleFamilies::restore`]). Answers how many it put back.
    pub fn restore(&self, stored: &[StoredMetric], rules: &crate::rules::RuleSet) -> usize {
        let rows = stored.iter().filter(|row| row.scope == HISTORY_SCOPE);
        let mut restored = 0;
        for row in rows {
            self.ids.write().insert(row.name.clone(), row.id);
            if self.ruled.restore(&row.name, &row.document, rules) {
                restored += 1;
            }
        }
        restored
    }

    /// Removes, for each history metric, what each tier keeps no longer as of `now_ms`; a
    /// metric that no longer keeps history (a reload dropped it) by its tiers' retention.
    /// Answers how many rows went.
    pub async fn expire(&self, store: &Store, now_ms: i64) -> Result<u64, StoreError> {
        let mut metrics: Vec<(String, i64)> = self.resolve(store).await?;
        let stored = store.read(|reader| reader.metrics()).await?;
        let dropped = (stored.into_iter())
            .filter(|row| {
                row.scope == HISTORY_SCOPE && !metrics.iter().any(|(_, id)| *id == row.id)
            })
            .map(|row| (row.name, row.id))
            .collect::<Vec<_>>();
        metrics.extend(dropped);
        let mut removed = 0;
        for (family, id) in metrics {
            let own = self.own_retention(&family).flatten();
            let cuts = (self.tiers.iter())
                .map(|t| {
                    let keep = own.map_or(t.retention_ms, |o| o.min(t.retention_ms));
                    (t.resolution_ms, now_ms - keep)
                })
                .collect();
            if let Written::Removed(n) = store
                .write(Write::ExpireHistory { metric: id, cuts })
                .await?
            {
                removed += n;
            }
        }
        Ok(removed)
    }
}

/// Samples the history metrics at each interval's end until `shutdown`, one store write per
/// tick, and expires old samples every [`EXPIRY_INTERVAL`].
pub async fn run(
    history: Arc<History>,
    registry: Arc<Registry>,
    store: Store,
    shutdown: CancellationToken,
) {
    let mut sampler = sampler::Sampler::new(Arc::clone(&history.tiers));
    sampler.start_at(history.started_ms);
    let resolution = history.tiers[0].resolution_ms;
    let resolutions = history.tiers.iter().map(|t| t.resolution_ms).collect();
    if let Err(e) = store.write(Write::RollupTiers(resolutions)).await {
        tracing::warn!("history: recorded points will not roll up into the tiers: {e}");
    }
    let compact = Write::Compact {
        tiers: Arc::clone(&history.tiers),
        closed_before_ms: crate::custom::time::now_ms(),
    };
    if let Err(e) = store.write(compact).await {
        tracing::warn!("history: compacting the buckets closed while tallyd was down failed: {e}");
    }
    let mut expired_at: Option<i64> = None;
    loop {
        let now = crate::custom::time::now_ms();
        let next = now - now.rem_euclid(resolution) + resolution;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis((next - now) as u64)) => {}
        }
        let metrics = match history.resolve(&store).await {
            Ok(metrics) => metrics,
            Err(e) => {
                tracing::warn!("history: cannot register the metrics to sample: {e}");
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        // Off the reactor: reading many series takes a scrape's time.
        let taken = tokio::task::spawn_blocking(move || {
            let batch = sampler.sample(&registry, &metrics, crate::custom::time::now_ms());
            (sampler, batch)
        })
        .await;
        let batch;
        (sampler, batch) = match taken {
            Ok(taken) => taken,
            Err(e) => {
                tracing::error!("history sampling failed, history stops: {e}");
                return;
            }
        };
        if let Err(e) = store.write(Write::Samples(Box::new(batch))).await {
            tracing::warn!("history: a tick's samples were not stored: {e}");
        }
        roll_points(&store).await;
        let now = crate::custom::time::now_ms();
        if expired_at.is_none_or(|at| now - at >= EXPIRY_INTERVAL.as_millis() as i64) {
            expired_at = Some(now);
            match history.expire(&store, now).await {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "history past its retention removed"),
                Err(e) => tracing::warn!("removing history past its retention failed: {e}"),
            }
        }
    }
}

/// Rolls the recorded points' intervals closed since the last tick into the tiers, slice after
/// slice while a backlog lasts (the first start on a store full of points), letting other
/// writes in between.
async fn roll_points(store: &Store) {
    loop {
        let now = crate::custom::time::now_ms();
        match store.write(Write::Roll { now_ms: now }).await {
            Ok(Written::Rolled(n)) if n == crate::store::rollup::ROLL_SLICE => {
                tokio::task::yield_now().await
            }
            Ok(_) => return,
            Err(e) => {
                tracing::warn!("history: rolling recorded points up failed: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::custom::query::{Asked, Bins, CellBinner};
    use crate::definitions::Aggregation;
    use crate::record::Recorder;
    use crate::registry::{Kind, RegistrySettings, Update};

    /// A whole hour, before the test's real clock (so new series count from zero).
    const T0: i64 = 1_764_000_000_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 86_400_000;

    fn options() -> HistoryOptions {
        let tier = |resolution_ms, retention_ms| Tier {
            resolution_ms,
            retention_ms,
        };
        HistoryOptions {
            tiers: Arc::from(vec![
                tier(10_000, DAY),
                tier(MIN, 15 * DAY),
                tier(HOUR, 365 * DAY),
            ]),
            metrics: ["reqs", "temp", "lat"]
                .into_iter()
                .map(|name| (name.to_owned(), None))
                .collect(),
        }
    }

    fn tier(history: &History, resolution_ms: i64) -> Tier {
        *history
            .tiers()
            .iter()
            .find(|t| t.resolution_ms == resolution_ms)
            .unwrap()
    }

    /// The one series' bins of `metric` in `tier` over `[start, end)` at `step`.
    async fn bins(
        store: &Store,
        tier: Tier,
        metric: i64,
        (start, end, step): (i64, i64, i64),
        asked: Asked,
    ) -> Vec<(i64, f64)> {
        let bounds = RegistrySettings::default().histogram_buckets;
        store
            .read(move |reader| {
                let mut binner = CellBinner::new(Bins::new(start, end, step).unwrap());
                reader.scan_tier(tier, metric, start, end, None, &mut |s, ts, cell| {
                    binner.add(s, ts, cell)
                })?;
                let mut all: Vec<_> = binner.finish(asked, &bounds).into_values().collect();
                assert!(all.len() <= 1, "one series: {all:?}");
                Ok(all.pop().unwrap_or_default())
            })
            .await
            .unwrap()
    }

    /// The samples `resolution_ms`'s tier holds, packed (the writer compacts closed buckets
    /// meanwhile) or not.
    fn rows_in(dir: &Path, resolution_ms: i64) -> u64 {
        let connection =
            rusqlite::Connection::open(dir.join(crate::store::sqlite::FILE_NAME)).unwrap();
        let tier = Tier::of_resolution(resolution_ms);
        crate::store::tiers::count_samples(&connection, tier).unwrap()
    }

    /// Thirteen ticks: at the k-th (k = 1..=12 every 10 s from T0, then the 13th an hour
    /// on) the counter grows by k, the gauge is set to k, and the histogram observes 0.003 (k
    /// odd) or 0.3 (k even).
    async fn thirteen_ticks(store: &Store, history: &History) -> HashMap<String, i64> {
        let recorder =
            Recorder::for_registry(&Arc::new(Registry::new(RegistrySettings::default())));
        let registry = recorder.registry();
        let metrics = history.resolve(store).await.unwrap();
        let mut sampler = sampler::Sampler::new(Arc::from(history.tiers()));
        for k in 1..=13i64 {
            let v = k as f64;
            recorder
                .record("reqs", Kind::Counter, [("path", "/a")], Update::Add(v))
                .unwrap();
            recorder
                .record("temp", Kind::Gauge, [("room", "1")], Update::Set(v))
                .unwrap();
            let value = if k % 2 == 1 { 0.003 } else { 0.3 };
            recorder
                .record(
                    "lat",
                    Kind::Histogram,
                    [],
                    Update::Observe { value, weight: 1 },
                )
                .unwrap();
            let now = match k {
                13 => T0 + HOUR + 5,
                _ => T0 + k * 10_000 + 5,
            };
            let batch = sampler.sample(registry, &metrics, now);
            store.write(Write::Samples(Box::new(batch))).await.unwrap();
        }
        metrics.into_iter().collect()
    }

    #[tokio::test]
    async fn every_aggregation_of_every_tier_answers_exact_bins() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let history = History::new(&options());
        let ids = thirteen_ticks(&store, &history).await;
        let plain = |a| Asked::Plain(a);
        use Aggregation::*;
        // The 10 s tier at a 30 s step: the samples are 1..=12 (increases and values alike),
        // then 13 in the interval starting at T0 + 3590 s.
        let expected_10s = [
            (Sum, [6.0, 15.0, 24.0, 33.0]),
            (Average, [2.0, 5.0, 8.0, 11.0]),
            (Min, [1.0, 4.0, 7.0, 10.0]),
            (Max, [3.0, 6.0, 9.0, 12.0]),
            (Count, [3.0, 3.0, 3.0, 3.0]),
            (Last, [3.0, 6.0, 9.0, 12.0]),
        ];
        // The 1 min tier, rolled up as its minutes closed.
        let expected_1m = [
            (Sum, [21.0, 57.0, 13.0]),
            (Average, [3.5, 9.5, 13.0]),
            (Min, [1.0, 7.0, 13.0]),
            (Max, [6.0, 12.0, 13.0]),
            (Count, [6.0, 6.0, 1.0]),
            (Last, [6.0, 12.0, 13.0]),
        ];
        // The 1 h tier: the first hour, closed by the 13th tick, from the minute tier.
        let expected_1h = [
            (Sum, 91.0),
            (Average, 7.0),
            (Min, 1.0),
            (Max, 13.0),
            (Count, 13.0),
            (Last, 13.0),
        ];
        for name in ["reqs", "temp"] {
            let id = ids[name];
            for (aggregation, values) in expected_10s {
                let got = bins(
                    &store,
                    tier(&history, 10_000),
                    id,
                    (T0, T0 + 2 * MIN, 30_000),
                    plain(aggregation),
                )
                .await;
                let want: Vec<(i64, f64)> = (0..4).map(|i| T0 + i * 30_000).zip(values).collect();
                assert_eq!(got, want, "{name} 10s {aggregation:?}");
            }
            for (aggregation, values) in expected_1m {
                let got = bins(
                    &store,
                    tier(&history, MIN),
                    id,
                    (T0, T0 + HOUR, MIN),
                    plain(aggregation),
                )
                .await;
                let want: Vec<(i64, f64)> = [T0, T0 + MIN, T0 + 59 * MIN]
                    .into_iter()
                    .zip(values)
                    .collect();
                assert_eq!(got, want, "{name} 1m {aggregation:?}");
            }
            for (aggregation, value) in expected_1h {
                let got = bins(
                    &store,
                    tier(&history, HOUR),
                    id,
                    (T0 - HOUR, T0 + 2 * HOUR, HOUR),
                    plain(aggregation),
                )
                .await;
                assert_eq!(got, [(T0, value)], "{name} 1h {aggregation:?}");
            }
        }
        // The histogram: 3 observations of 0.003 and 3 of 0.3 in each of the first two minutes.
        let lat = ids["lat"];
        let minute = |asked| {
            bins(
                &store,
                tier(&history, MIN),
                lat,
                (T0, T0 + 2 * MIN, MIN),
                asked,
            )
        };
        assert_eq!(minute(plain(Count)).await, [(T0, 6.0), (T0 + MIN, 6.0)]);
        let sums = minute(plain(Sum)).await;
        assert!((sums[0].1 - 0.909).abs() < 1e-12, "{sums:?}");
        // Half the observations are in (0, 0.005]: the median is that bucket's top.
        assert_eq!(minute(Asked::Quantile(0.5)).await[0], (T0, 0.005));
        // The 75th is half way through (0.25, 0.5].
        assert_eq!(minute(Asked::Quantile(0.75)).await[0], (T0, 0.375));
        // Over the hour: 7 of 13 at 0.003; q = 0.99 is in (0.25, 0.5] too.
        let hour = bins(
            &store,
            tier(&history, HOUR),
            lat,
            (T0, T0 + HOUR, HOUR),
            Asked::Quantile(0.99),
        )
        .await;
        let rank = 0.99 * 13.0 - 7.0;
        assert_eq!(hour, [(T0, 0.25 + 0.25 * rank / 6.0)]);
        // A gauge has no quantile: no bins rather than made-up ones.
        assert!(
            bins(
                &store,
                tier(&history, MIN),
                ids["temp"],
                (T0, T0 + MIN, MIN),
                Asked::Quantile(0.5)
            )
            .await
            .is_empty()
        );
    }

    #[tokio::test]
    async fn history_survives_a_restart_and_retention_removes_it_tier_by_tier() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let history = History::new(&options());
        let ids = thirteen_ticks(&store, &history).await;
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let history = History::new(&options());
        // The same rows, found again by name.
        let again: HashMap<String, i64> =
            history.resolve(&store).await.unwrap().into_iter().collect();
        assert_eq!(again, ids);
        let (reqs, store_ref, history_ref) = (ids["reqs"], &store, &history);
        let sum = move |resolution_ms, range| {
            let (store, history) = (store_ref, history_ref);
            async move {
                bins(
                    store,
                    tier(history, resolution_ms),
                    reqs,
                    range,
                    Asked::Plain(Aggregation::Sum),
                )
                .await
                .iter()
                .map(|b| b.1)
                .sum::<f64>()
            }
        };
        assert_eq!(sum(MIN, (T0, T0 + HOUR, HOUR)).await, 91.0);
        // (3 metrics × 13 samples, 3 × 3 minutes, 3 × 1 hour.)
        assert_eq!(
            [10_000, MIN, HOUR].map(|r| rows_in(dir.path(), r)),
            [39, 9, 3]
        );
        // A day after the first two minutes: the 10 s tier keeps only the last tick.
        history.expire(&store, T0 + DAY + 2 * MIN).await.unwrap();
        assert_eq!(
            [10_000, MIN, HOUR].map(|r| rows_in(dir.path(), r)),
            [3, 9, 3]
        );
        assert_eq!(sum(10_000, (T0, T0 + 2 * HOUR, HOUR)).await, 13.0);
        // 15 days on, the minutes go; the hour stays.
        history
            .expire(&store, T0 + 15 * DAY + 2 * HOUR)
            .await
            .unwrap();
        assert_eq!(
            [10_000, MIN, HOUR].map(|r| rows_in(dir.path(), r)),
            [0, 0, 3]
        );
        assert_eq!(sum(HOUR, (T0, T0 + HOUR, HOUR)).await, 91.0);
        // A year on, nothing, and no series rows left behind: churn does not grow the file.
        history.expire(&store, T0 + 366 * DAY).await.unwrap();
        assert_eq!(
            [10_000, MIN, HOUR].map(|r| rows_in(dir.path(), r)),
            [0, 0, 0]
        );
        for id in ids.values().copied() {
            assert!(store.read(move |r| r.series(id)).await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn a_metrics_own_retention_caps_every_tier() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut options = options();
        options.metrics.insert("reqs".into(), Some(2 * HOUR));
        let history = History::new(&options);
        thirteen_ticks(&store, &history).await;
        history.expire(&store, T0 + 3 * HOUR).await.unwrap();
        let connection =
            rusqlite::Connection::open(dir.path().join(crate::store::sqlite::FILE_NAME)).unwrap();
        let reqs_rows: i64 = connection
            .query_row(
                "SELECT count(*) FROM (SELECT metric FROM tier_samples
                                       UNION ALL SELECT metric FROM tier_loose) t
                 JOIN metrics m ON m.id = t.metric WHERE m.name = 'reqs'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(reqs_rows, 0);
        // The others keep their 10 s samples (a day).
        assert_eq!(rows_in(dir.path(), 10_000), 26);
    }

    #[tokio::test]
    async fn a_metric_that_no_longer_keeps_history_is_expired_by_its_tiers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let history = History::new(&options());
        thirteen_ticks(&store, &history).await;
        // A reload drops `reqs`: it is no longer sampled, and what it stored still ages out.
        let mut fewer = options();
        fewer.metrics.remove("reqs");
        history.replace(&fewer);
        assert!(!history.wants("reqs"));
        history.expire(&store, T0 + 2 * DAY).await.unwrap();
        let connection =
            rusqlite::Connection::open(dir.path().join(crate::store::sqlite::FILE_NAME)).unwrap();
        let reqs_rows = |tier: i64| -> i64 {
            connection
                .query_row(
                    "SELECT count(*) FROM (SELECT tier, metric FROM tier_samples
                                           UNION ALL SELECT tier, metric FROM tier_loose) t
                     JOIN metrics m ON m.id = t.metric WHERE m.name = 'reqs' AND t.tier = ?1",
                    [tier],
                    |row| row.get(0),
                )
                .unwrap()
        };
        // The 10 s tier keeps a day; the minutes 15 days.
        assert_eq!(reqs_rows(10_000), 0);
        assert!(reqs_rows(MIN) > 0);
    }

    #[tokio::test]
    async fn a_rule_familys_row_holds_its_type_and_a_restart_finds_it_by_its_row() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rules = crate::rules::RuleSet::new(&[crate::rules::MappingRule {
            history: Some(true),
            ..crate::rules::MappingRule::new("app.*", "app_${1}")
        }])
        .unwrap();
        let history = History::new(&options());
        history.rule_families().add(ruled::Named {
            family: "app_hits",
            kind: Kind::Counter,
            retention: None,
            buckets: None,
            statsd_name: "app.hits",
            class: crate::rules::MetricClass::Counter,
        });
        let ids: HashMap<String, i64> =
            history.resolve(&store).await.unwrap().into_iter().collect();
        let stored = store.read(|reader| reader.metrics()).await.unwrap();
        let row = stored.iter().find(|row| row.name == "app_hits").unwrap();
        assert_eq!(
            ruled::Persisted::of_document(&row.document).map(|p| p.kind),
            Some(Kind::Counter)
        );
        // A `[[metric]]`'s row holds no rule.
        let reqs = stored.iter().find(|row| row.name == "reqs").unwrap();
        assert_eq!(reqs.document, "{}");

        // A new daemon over the same store: the family is back, with the same row.
        let again = History::new(&options());
        assert!(again.find("app_hits").is_none());
        assert_eq!(again.restore(&stored, &rules), 1);
        assert_eq!(again.find("app_hits"), Some((ids["app_hits"], None)));
        let resolved: HashMap<String, i64> =
            again.resolve(&store).await.unwrap().into_iter().collect();
        assert_eq!(resolved, ids);
        // Rules that no longer ask for history leave it out.
        let later = History::new(&options());
        assert_eq!(later.restore(&stored, &crate::rules::RuleSet::default()), 0);
        assert!(!later.wants("app_hits"));
    }

    #[test]
    fn the_coarsest_tier_that_divides_the_step_and_keeps_the_start_answers() {
        let history = History::new(&options());
        let now = T0 + 400 * DAY;
        let pick = |start: i64, step: i64| history.tier_for(start, step, now, None).resolution_ms;
        assert_eq!(pick(now - HOUR, 10_000), 10_000);
        assert_eq!(pick(now - HOUR, MIN), MIN);
        assert_eq!(pick(now - HOUR, 5 * MIN), MIN);
        assert_eq!(pick(now - 30 * DAY, HOUR), HOUR);
        // Older than the 10 s tier keeps: the minutes.
        assert_eq!(pick(now - 2 * DAY, 30_000), MIN);
        // A step no tier divides: the finest.
        assert_eq!(pick(now - HOUR, 15_000), 10_000);
        // A start off the minutes: a minute's interval would straddle two bins.
        assert_eq!(pick(now - HOUR + 10_000, MIN), 10_000);
    }

    #[test]
    fn the_interval_must_be_the_finest_tier() {
        let config = HistoryConfig {
            interval_seconds: 5,
            ..HistoryConfig::default()
        };
        let error = HistoryOptions::new(&config, &[]).unwrap_err();
        assert!(
            error.contains("interval_seconds (5) must equal tiers[0].resolution"),
            "{error}"
        );
        assert!(HistoryOptions::new(&HistoryConfig::default(), &[]).is_ok());
    }
}
