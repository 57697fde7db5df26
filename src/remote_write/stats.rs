//! The counters of each `[[remote_write]]` endpoint, and the `tallyd_remote_write_*` families
//! they are exported as (labelled `remote`: the endpoint's `name`, or its URL).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::read::{FamilyView, Labels, SeriesView, ValueView, Visitor};
use crate::registry::{AtomicF64, Kind};

crate::closed_set! {
    /// Why samples were given up: `tallyd_remote_write_samples_dropped_total{reason}`.
    Drop;
    /// A snapshot found the endpoint's queue (`queue_samples`) full.
    QueueFull => "queue_full",
    /// The receiver refused the request with a 4xx other than 429 (too old, out of order,
    /// bad labels): retrying would be refused again. Also counted as failed.
    Rejected => "rejected",
    /// Still queued when tallyd stopped or a reload replaced the endpoint (and not spilled).
    Shutdown => "shutdown",
    /// The spill was at `spill_max_bytes`: its oldest segment went.
    SpillFull => "spill_full",
    /// The spill could not be written (disk full, permissions).
    SpillError => "spill_error",
    /// Read back from the spill older than `max_sample_age_seconds`: receivers refuse those.
    TooOld => "too_old",
}

/// One endpoint's counters; a reload that keeps the name keeps counting in the same ones.
#[derive(Debug)]
pub struct RemoteStats {
    /// The `remote` label.
    pub remote: String,
    pub samples: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    dropped: [AtomicU64; Drop::ALL.len()],
    /// Samples queued or in a request not yet answered.
    pub pending: AtomicI64,
    /// Unix milliseconds of the newest sample a receiver accepted.
    pub highest_sent_ms: AtomicI64,
    pub requests: AtomicU64,
    pub request_seconds: AtomicF64,
    /// Times the endpoint went from 2.0 to 1.0 (the receiver reads 1.0 only).
    pub fallbacks: AtomicU64,
    /// Bytes of the spill's segments on disk.
    pub spilled_bytes: AtomicU64,
    /// Spill segments found damaged or cut short (read up to the damage).
    pub spill_corrupt: AtomicU64,
    /// Samples read from history to fill a gap.
    pub resent: AtomicU64,
}

impl RemoteStats {
    fn new(remote: &str) -> Self {
        RemoteStats {
            remote: remote.to_owned(),
            samples: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: Default::default(),
            pending: AtomicI64::new(0),
            highest_sent_ms: AtomicI64::new(0),
            requests: AtomicU64::new(0),
            request_seconds: AtomicF64::default(),
            fallbacks: AtomicU64::new(0),
            spilled_bytes: AtomicU64::new(0),
            spill_corrupt: AtomicU64::new(0),
            resent: AtomicU64::new(0),
        }
    }

    pub fn add_dropped(&self, reason: Drop, samples: u64) {
        self.dropped[reason as usize].fetch_add(samples, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: Drop) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }
}

/// Every endpoint's counters since start, in order of first use.
#[derive(Debug, Default)]
pub struct RemoteWriteTelemetry {
    remotes: Mutex<Vec<Arc<RemoteStats>>>,
}

type Read = fn(&RemoteStats) -> f64;

fn load(counter: &AtomicU64) -> f64 {
    counter.load(Ordering::Relaxed) as f64
}

impl RemoteWriteTelemetry {
    /// The counters of `remote`, registered on first use.
    pub fn remote(&self, remote: &str) -> Arc<RemoteStats> {
        let mut remotes = self.remotes.lock();
        if let Some(stats) = remotes.iter().find(|r| r.remote == remote) {
            return Arc::clone(stats);
        }
        let stats = Arc::new(RemoteStats::new(remote));
        remotes.push(Arc::clone(&stats));
        stats
    }

    /// Visits the `tallyd_remote_write_*` families (none before an endpoint is configured).
    pub fn visit(&self, visitor: &mut impl Visitor) {
        let remotes = self.remotes.lock().clone();
        if remotes.is_empty() {
            return;
        }
        let families: [(&str, Kind, &str, Read); 11] = [
            (
                "tallyd_remote_write_samples",
                Kind::Counter,
                "Samples a remote-write receiver accepted.",
                |r| load(&r.samples),
            ),
            (
                "tallyd_remote_write_samples_failed",
                Kind::Counter,
                "Samples in requests a receiver refused for good (a 4xx other than 429); not retried.",
                |r| load(&r.failed),
            ),
            (
                "tallyd_remote_write_samples_retried",
                Kind::Counter,
                "Samples sent again after a 5xx, a 429, a connection error or a timeout.",
                |r| load(&r.retried),
            ),
            (
                "tallyd_remote_write_queue_length",
                Kind::Gauge,
                "Samples queued for a remote-write endpoint or in a request not yet answered.",
                |r| r.pending.load(Ordering::Relaxed).max(0) as f64,
            ),
            (
                "tallyd_remote_write_highest_sent_timestamp_seconds",
                Kind::Gauge,
                "Timestamp of the newest sample a remote-write receiver accepted (0 before the first).",
                |r| r.highest_sent_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ),
            (
                "tallyd_remote_write_requests",
                Kind::Counter,
                "Remote-write requests answered (any status) or timed out.",
                |r| load(&r.requests),
            ),
            (
                "tallyd_remote_write_request_duration_seconds",
                Kind::Counter,
                "Time spent in remote-write requests, in total (divide by tallyd_remote_write_requests_total for the mean).",
                |r| r.request_seconds.get(),
            ),
            (
                "tallyd_remote_write_protocol_fallbacks",
                Kind::Counter,
                "Times an endpoint configured for remote-write 2.0 found its receiver reads 1.0 only and went on in 1.0.",
                |r| load(&r.fallbacks),
            ),
            (
                "tallyd_remote_write_spilled_bytes",
                Kind::Gauge,
                "Bytes of samples spilled to the data directory for a remote-write endpoint, not yet sent (at most its spill_max_bytes).",
                |r| load(&r.spilled_bytes),
            ),
            (
                "tallyd_remote_write_spill_corrupt_segments",
                Kind::Counter,
                "Spill segments found damaged or cut short (a crash while writing); read up to the damage, the rest dropped.",
                |r| load(&r.spill_corrupt),
            ),
            (
                "tallyd_remote_write_history_samples",
                Kind::Counter,
                "Samples read from history (the store) and sent to fill a gap the receiver missed.",
                |r| load(&r.resent),
            ),
        ];
        for (name, kind, help, read) in &families {
            let family = view(name, *kind, help);
            if !visitor.family(&family) {
                continue;
            }
            for remote in &remotes {
                let pairs = [("remote", remote.remote.as_str())];
                let value = read(remote);
                let value = match kind {
                    Kind::Counter => ValueView::Counter(value),
                    _ => ValueView::Gauge(value),
                };
                visitor.series(&family, &series(&pairs, value));
            }
            visitor.end_family(&family);
        }
        let family = view(
            "tallyd_remote_write_samples_dropped",
            Kind::Counter,
            "Samples given up without being sent, by reason: queue_full (the queue was full at a snapshot), rejected (refused with a 4xx other than 429), shutdown (queued at stop or reload, without spill), spill_full (the spill's oldest segment, at spill_max_bytes), spill_error (the spill could not be written), too_old (read back from the spill older than max_sample_age_seconds).",
        );
        if visitor.family(&family) {
            for remote in &remotes {
                for reason in Drop::ALL {
                    let pairs = [
                        ("remote", remote.remote.as_str()),
                        ("reason", reason.label()),
                    ];
                    let value = ValueView::Counter(remote.dropped(*reason) as f64);
                    visitor.series(&family, &series(&pairs, value));
                }
            }
            visitor.end_family(&family);
        }
    }
}

fn view<'a>(name: &'a str, kind: Kind, help: &'a str) -> FamilyView<'a> {
    FamilyView {
        name,
        kind,
        help: Some(help),
        unit: None,
        buckets: &[],
    }
}

fn series<'a>(pairs: &'a [(&'a str, &'a str)], value: ValueView<'a>) -> SeriesView<'a> {
    SeriesView {
        labels: Labels::Pairs(pairs),
        created: None,
        value,
    }
}
