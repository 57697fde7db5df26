//! History: what the store keeps over time, and moving it out of tallyd: the [`sampler`] that
//! samples the metrics asking for history into the store's tiers ([`crate::store::tiers`]) and
//! the task that runs it and expires them ([`run`]); [`export`] (a metric's points as
//! OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`) and the `tallyd history`
//! subcommands that run it and back the store up ([`crate::store::sqlite::backup`]).

pub mod export;
pub mod sampler;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;

use crate::config::{HistoryConfig, MetricDefinition, history_families};
use crate::registry::Registry;
use crate::store::tiers::Tier;
use crate::store::{Store, StoreError, StoredMetric, Write, Written};

use crate::config::HistoryCommand;
use crate::custom::time::parse_instant;
use crate::store::sqlite;

/// Runs `tallyd history …` against the store in `data_dir`: 0 done, 1 failed, 2 bad arguments.
pub fn run_command(command: &HistoryCommand, data_dir: &Path) -> ExitCode {
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
            let request = export::Export {
                metric: metric.clone(),
                tenant: tenant.clone(),
                start_ms,
                end_ms,
            };
            let result = sqlite::open_reader(data_dir)
                .map_err(export::ExportError::Store)
                .and_then(|reader| match output {
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
    /// Family → store id, once its row exists.
    ids: RwLock<HashMap<String, i64>>,
}

/// The store scope of history metrics' rows (the API does not list them).
const HISTORY_SCOPE: &str = "history";

/// How often samples past their retention are removed.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

impl History {
    pub fn new(options: &HistoryOptions) -> Arc<History> {
        Arc::new(History {
            tiers: Arc::clone(&options.tiers),
            wanted: RwLock::new(options.metrics.clone()),
            ids: RwLock::new(HashMap::new()),
        })
    }

    /// A reload's metrics (the tiers wait for a restart).
    pub fn replace(&self, options: &HistoryOptions) {
        *self.wanted.write() = options.metrics.clone();
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// The store id and own retention of `family`'s history, when it has some.
    pub fn find(&self, family: &str) -> Option<(i64, Option<i64>)> {
        let retention = *self.wanted.read().get(family)?;
        Some((*self.ids.read().get(family)?, retention))
    }

    /// The tier a query from `start_ms` at `step_ms` reads: the coarsest whose resolution
    /// divides the step and which still keeps `start_ms` (its retention, or the metric's, as
    /// of `now_ms`); else the coarsest dividing the step; else the finest.
    pub fn tier_for(&self, start_ms: i64, step_ms: i64, now_ms: i64, own: Option<i64>) -> Tier {
        let fits = |t: &&Tier| step_ms % t.resolution_ms == 0;
        let keeps = |t: &&Tier| start_ms >= now_ms - own.map_or(t.retention_ms, |o| o.min(t.retention_ms));
        (self.tiers.iter().rev().find(|t| fits(t) && keeps(t)))
            .or_else(|| self.tiers.iter().rev().find(fits))
            .copied()
            .unwrap_or(self.tiers[0])
    }

    /// Makes a store row for each wanted family without one; answers the families to sample
    /// with their ids.
    pub async fn resolve(&self, store: &Store) -> Result<Vec<(String, i64)>, StoreError> {
        let wanted: Vec<String> = self.wanted.read().keys().cloned().collect();
        let mut out = Vec::with_capacity(wanted.len());
        for family in wanted {
            let known = self.ids.read().get(&family).copied();
            let id = match known {
                Some(id) => id,
                None => {
                    let written = store
                        .write(Write::PutMetric(StoredMetric {
                            id: 0,
                            uid: format!("{HISTORY_SCOPE}:{family}"),
                            tenant: String::new(),
                            scope: HISTORY_SCOPE.into(),
                            name: family.clone(),
                            document: "{}".into(),
                            created_ms: 0,
                            updated_ms: 0,
                        }))
                        .await?;
                    let Written::Metric(id) = written else {
                        return Err(StoreError::Engine("no id for a history metric".into()));
                    };
                    self.ids.write().insert(family.clone(), id);
                    id
                }
            };
            out.push((family, id));
        }
        Ok(out)
    }

    /// Removes, for each history metric, what each tier keeps no longer as of `now_ms`.
    /// Answers how many rows went.
    pub async fn expire(&self, store: &Store, now_ms: i64) -> Result<u64, StoreError> {
        let metrics: Vec<(String, i64)> = self.resolve(store).await?;
        let mut removed = 0;
        for (family, id) in metrics {
            let own = self.wanted.read().get(&family).copied().flatten();
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
    let resolution = history.tiers[0].resolution_ms;
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
