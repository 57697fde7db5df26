//! tallyd's own metrics (`tallyd_*` and the standard `process_*`) and the logging setup.
//!
//! Receive threads count into their own [`ReceiverStats`] (relaxed atomics on a cache line of
//! their own, flushed once per batch), so counting costs the hot path nothing shared. A scrape
//! adds them up in [`Telemetry::collect`], and outputs read them through the same read seam as
//! the registry's metrics ([`Telemetry::visit`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::protocol::{Extension, Reason};
use crate::read::{FamilyView, Labels, SeriesView, ValueView, Visitor};
use crate::record::Refusal;
use crate::registry::{AtomicF64, Kind, Registry, SeriesLimit};
use crate::relay::RelayStats;

/// Counters of one receive thread. Aligned so two threads never share a cache line.
#[repr(align(128))]
#[derive(Debug)]
pub struct ReceiverStats {
    /// The listener address (or socket path), the `listener` label.
    pub listener: String,
    /// The transport (`udp`, `tcp`, `unix`): which `tallyd_<transport>_*` families count it.
    pub transport: &'static str,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub lines: AtomicU64,
    pub samples: AtomicU64,
    /// Lines refused by the grammar, indexed by `Reason as usize`.
    pub errors: Box<[AtomicU64]>,
    /// Samples the write seam refused, indexed by `Refusal as usize`.
    pub refusals: Box<[AtomicU64]>,
    pub events: AtomicU64,
    pub service_checks: AtomicU64,
    /// Datagrams longer than the receive buffer, cut short by the kernel and refused whole.
    pub oversized: AtomicU64,
    /// This receiver's socket's cumulative kernel drop count (`SO_RXQ_OVFL`), as last reported.
    /// A receiver of a reuse-port group has a socket of its own; receivers sharing a socket
    /// systemd passed each hold the part of its count they saw it grow by. Either way a
    /// listener's drops are the sum.
    pub kernel_drops: AtomicU64,
    /// TCP: connections accepted and served.
    pub connections: AtomicU64,
    /// TCP: connections accepted and closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// TCP: connections closed after `idle_timeout_seconds` without a byte.
    pub idle_timeouts: AtomicU64,
    /// TCP: connections open now (a gauge).
    pub open_connections: AtomicU64,
}

impl ReceiverStats {
    /// Counters of a UDP receiver.
    pub fn new(listener: impl Into<String>) -> Self {
        Self::for_transport("udp", listener)
    }

    /// Counters of a receiver of any transport.
    pub fn for_transport(transport: &'static str, listener: impl Into<String>) -> Self {
        ReceiverStats {
            listener: listener.into(),
            transport,
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            errors: Reason::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            refusals: Refusal::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            events: AtomicU64::new(0),
            service_checks: AtomicU64::new(0),
            oversized: AtomicU64::new(0),
            kernel_drops: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
        }
    }

    /// Every `tallyd_sample_errors_total` reason with this receiver's count, in the order of
    /// [`sample_error_labels`].
    pub fn sample_errors(&self) -> Vec<(&'static str, u64)> {
        let mut out: Vec<(&'static str, u64)> =
            sample_error_labels().into_iter().map(|l| (l, 0)).collect();
        let counts = Reason::ALL
            .iter()
            .map(|r| (r.label(), &self.errors[*r as usize]))
            .chain(
                Refusal::ALL
                    .iter()
                    .map(|r| (r.label(), &self.refusals[*r as usize])),
            );
        for (label, count) in counts {
            if let Some((_, sum)) = out.iter_mut().find(|(l, _)| *l == label) {
                *sum += count.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// This receiver's count of `tallyd_sample_errors_total{reason=label}`.
    pub fn sample_error(&self, label: &str) -> u64 {
        self.sample_errors()
            .into_iter()
            .find(|(l, _)| *l == label)
            .map_or(0, |(_, n)| n)
    }

    pub fn extension(&self, kind: Extension) -> &AtomicU64 {
        match kind {
            Extension::Event => &self.events,
            Extension::ServiceCheck => &self.service_checks,
        }
    }
}

/// The `reason` labels of `tallyd_sample_errors_total`: the grammar's reasons, then the write
/// seam's; a label both share (`non_finite_value`, `negative_counter`) is one series that counts
/// both.
pub fn sample_error_labels() -> Vec<&'static str> {
    let mut labels: Vec<&'static str> = Reason::ALL.iter().map(|r| r.label()).collect();
    for refusal in Refusal::ALL {
        if !labels.contains(&refusal.label()) {
            labels.push(refusal.label());
        }
    }
    labels
}

/// Outcome label of a configuration reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Success,
    Failure,
}

/// What the HTTP server refused or cut short.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections answered 503 and closed because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed because a request's head did not arrive within
    /// `header_read_timeout_seconds`.
    pub header_timeouts: AtomicU64,
    /// Connections reset because an exchange (rendering, or the client reading the response)
    /// overran `request_timeout_seconds`.
    pub request_timeouts: AtomicU64,
}

/// All of tallyd's own counters.
#[derive(Debug)]
pub struct Telemetry {
    started: Instant,
    started_unix: f64,
    receivers: Mutex<Vec<Arc<ReceiverStats>>>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    scrapes: AtomicU64,
    scrape_seconds: AtomicF64,
    /// API answers by route pattern, then status code: a bounded set, since routes are
    /// patterns. Keyed by route first so that counting an answer looks its route up by `&str`.
    api_requests: Mutex<std::collections::BTreeMap<String, std::collections::BTreeMap<u16, u64>>>,
    /// The relay's counters, when `[relay]` is on.
    relay: Mutex<Option<Arc<RelayStats>>>,
    /// The `[[remote_write]]` endpoints' counters (`tallyd_remote_write_*`).
    pub remote_write: Arc<crate::remote_write::stats::RemoteWriteTelemetry>,
    /// The HTTP server's refusals; it holds a clone.
    pub http: Arc<HttpStats>,
    /// The push routes' counters, when they are served.
    push: Mutex<Option<Arc<crate::push::PushStats>>>,
    /// The store's figures (points journaled and not yet applied, history compaction), when
    /// the API runs.
    store: Mutex<Option<Arc<crate::store::StoreStats>>>,
    /// `[query]` backend requests by outcome (`tallyd_query_backend_requests_total`).
    pub query_backend: Arc<crate::custom::backend::BackendStats>,
    /// The families mapping rules added to history (`tallyd_history_rule_families*`).
    history_rules: Mutex<Option<Arc<crate::history::ruled::RuleFamilies>>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            receivers: Mutex::default(),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            scrapes: AtomicU64::new(0),
            scrape_seconds: AtomicF64::default(),
            api_requests: Mutex::default(),
            relay: Mutex::default(),
            remote_write: Arc::default(),
            http: Arc::default(),
            push: Mutex::default(),
            store: Mutex::default(),
            query_backend: Arc::default(),
            history_rules: Mutex::default(),
        }
    }
}

/// One self-metric family for a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfMetric {
    /// For counters, without `_total`.
    pub name: &'static str,
    pub help: &'static str,
    /// `Counter` or `Gauge`.
    pub kind: Kind,
    /// The one label name of a family with labels.
    pub label: Option<&'static str>,
    /// `(label value, value)`; the label value is unused without a label name.
    pub samples: Vec<(String, f64)>,
}

impl SelfMetric {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        SelfMetric {
            name,
            help,
            kind,
            label: None,
            samples: Vec::new(),
        }
    }

    fn labelled(name: &'static str, kind: Kind, help: &'static str, label: &'static str) -> Self {
        SelfMetric {
            label: Some(label),
            ..Self::new(name, kind, help)
        }
    }

    fn with(mut self, label_value: impl Into<String>, value: f64) -> Self {
        self.samples.push((label_value.into(), value));
        self
    }

    /// One sample without labels.
    pub(crate) fn single(name: &'static str, kind: Kind, help: &'static str, value: f64) -> Self {
        Self::new(name, kind, help).with(String::new(), value)
    }
}

/// How many of the biggest families `tallyd_family_series` lists: enough to find the
/// offender, few enough that the self-metric's own cardinality stays fixed.
pub const TOP_FAMILIES: usize = 10;

/// The process-level names tallyd exports itself; StatsD traffic may not use them.
pub const RESERVED_NAMES: &[&str] = &[
    "process_cpu_seconds",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

/// True when StatsD traffic may not create a family called `name`.
pub fn is_reserved_name(name: &str) -> bool {
    name.starts_with("tallyd_") || RESERVED_NAMES.contains(&name)
}

impl Telemetry {
    /// Registers the counters of a new receive thread of `transport` (`udp`, `tcp`, `unix`).
    pub fn add_receiver(
        &self,
        transport: &'static str,
        listener: impl Into<String>,
    ) -> Arc<ReceiverStats> {
        let stats = Arc::new(ReceiverStats::for_transport(transport, listener));
        self.receivers.lock().push(Arc::clone(&stats));
        stats
    }

    /// Reports the relay's counters (`tallyd_relay_*`) from now on.
    pub fn set_relay(&self, stats: Arc<RelayStats>) {
        *self.relay.lock() = Some(stats);
    }

    /// Reports the push routes' counters (`tallyd_push*`) from now on.
    pub fn set_push(&self, stats: Arc<crate::push::PushStats>) {
        *self.push.lock() = Some(stats);
    }

    /// Reports the store's figures (`tallyd_store_pending_points`, history compaction) from
    /// now on.
    pub fn set_store(&self, stats: Arc<crate::store::StoreStats>) {
        *self.store.lock() = Some(stats);
    }

    /// Reports the families mapping rules added to history from now on.
    pub fn set_history_rules(&self, families: Arc<crate::history::ruled::RuleFamilies>) {
        *self.history_rules.lock() = Some(families);
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn record_reload(&self, outcome: ReloadOutcome) {
        match outcome {
            ReloadOutcome::Success => &self.reloads_ok,
            ReloadOutcome::Failure => &self.reloads_failed,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    pub fn reloads(&self, outcome: ReloadOutcome) -> u64 {
        match outcome {
            ReloadOutcome::Success => &self.reloads_ok,
            ReloadOutcome::Failure => &self.reloads_failed,
        }
        .load(Ordering::Relaxed)
    }

    /// Counts one API answer: `route` is the route's pattern (`/api/v1/…/{name}`), never the
    /// request's own path, so the label set stays bounded.
    pub fn record_api_request(&self, route: &str, code: u16) {
        let mut requests = self.api_requests.lock();
        if let Some(codes) = requests.get_mut(route) {
            *codes.entry(code).or_default() += 1;
        } else {
            requests.insert(route.to_owned(), [(code, 1)].into());
        }
    }

    /// Records the time one scrape took to render.
    pub fn record_scrape(&self, seconds: f64) {
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        self.scrape_seconds.add(seconds);
    }

    /// The listener addresses with a receiver registered, deduplicated, in start order.
    pub fn listeners(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.receivers.lock().iter() {
            if !out.contains(&r.listener) {
                out.push(r.listener.clone());
            }
        }
        out
    }

    /// Everything tallyd reports about itself, ready to encode.
    pub fn collect(&self, registry: &Registry) -> Vec<SelfMetric> {
        let receivers = self.receivers.lock().clone();
        // The receivers of one transport, summed per listener (a transport with no listener
        // configured gives no series, and its family is left out of the scrape).
        let per_listener = |transport: &str, read: &dyn Fn(&ReceiverStats) -> u64| {
            let mut sums: Vec<(String, u64)> = Vec::new();
            for r in receivers.iter().filter(|r| r.transport == transport) {
                let value = read(r);
                match sums.iter_mut().find(|(l, _)| *l == r.listener) {
                    Some((_, sum)) => *sum += value,
                    None => sums.push((r.listener.clone(), value)),
                }
            }
            sums.into_iter()
                .map(|(listener, v)| (listener, v as f64))
                .collect::<Vec<(String, f64)>>()
        };
        let total = |read: &dyn Fn(&ReceiverStats) -> u64| -> f64 {
            receivers.iter().map(|r| read(r)).sum::<u64>() as f64
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let per_transport =
            |name: &'static str,
             help: &'static str,
             transport: &str,
             read: &dyn Fn(&ReceiverStats) -> u64| SelfMetric {
                samples: per_listener(transport, read),
                ..SelfMetric::labelled(name, Kind::Counter, help, "listener")
            };

        let mut out = vec![
            SelfMetric {
                samples: per_listener("udp", &|r| load(&r.packets)),
                ..SelfMetric::labelled(
                    "tallyd_udp_packets",
                    Kind::Counter,
                    "UDP datagrams received, per listener.",
                    "listener",
                )
            },
            SelfMetric {
                samples: per_listener("udp", &|r| load(&r.bytes)),
                ..SelfMetric::labelled(
                    "tallyd_udp_bytes",
                    Kind::Counter,
                    "UDP payload bytes received, per listener.",
                    "listener",
                )
            },
            SelfMetric {
                samples: per_listener("udp", &|r| load(&r.kernel_drops)),
                ..SelfMetric::labelled(
                    "tallyd_udp_kernel_drops",
                    Kind::Counter,
                    "Datagrams the kernel dropped because the socket's receive buffer was full (SO_RXQ_OVFL), per listener.",
                    "listener",
                )
            },
            SelfMetric {
                samples: per_listener("udp", &|r| load(&r.oversized)),
                ..SelfMetric::labelled(
                    "tallyd_udp_oversized_datagrams",
                    Kind::Counter,
                    "Datagrams longer than the receive buffer, refused whole, per listener.",
                    "listener",
                )
            },
            per_transport(
                "tallyd_tcp_connections",
                "TCP connections accepted and served, per listener.",
                "tcp",
                &|r| load(&r.connections),
            ),
            per_transport(
                "tallyd_tcp_connections_refused",
                "TCP connections closed at once because [tcp] max_connections were open, per listener.",
                "tcp",
                &|r| load(&r.connections_refused),
            ),
            per_transport(
                "tallyd_tcp_idle_timeouts",
                "TCP connections closed after [tcp] idle_timeout_seconds without data, per listener.",
                "tcp",
                &|r| load(&r.idle_timeouts),
            ),
            SelfMetric {
                samples: per_listener("tcp", &|r| load(&r.open_connections)),
                ..SelfMetric::labelled(
                    "tallyd_tcp_open_connections",
                    Kind::Gauge,
                    "TCP connections open now, per listener.",
                    "listener",
                )
            },
            per_transport(
                "tallyd_tcp_bytes",
                "Bytes of whole lines received over TCP (over-long lines excluded), per listener.",
                "tcp",
                &|r| load(&r.bytes),
            ),
            per_transport(
                "tallyd_tcp_lines",
                "StatsD lines received over TCP (over-long ones included), per listener.",
                "tcp",
                &|r| load(&r.lines),
            ),
            per_transport(
                "tallyd_unix_packets",
                "Unix datagrams received, per socket path.",
                "unix",
                &|r| load(&r.packets),
            ),
            per_transport(
                "tallyd_unix_bytes",
                "Unix datagram payload bytes received, per socket path.",
                "unix",
                &|r| load(&r.bytes),
            ),
            per_transport(
                "tallyd_unix_oversized_datagrams",
                "Unix datagrams longer than the receive buffer, refused whole, per socket path.",
                "unix",
                &|r| load(&r.oversized),
            ),
            SelfMetric::single(
                "tallyd_lines",
                Kind::Counter,
                "StatsD lines received.",
                total(&|r| load(&r.lines)),
            ),
            SelfMetric::single(
                "tallyd_samples",
                Kind::Counter,
                "Samples parsed from the lines (a packed line gives several).",
                total(&|r| load(&r.samples)),
            ),
        ];

        let mut errors = SelfMetric::labelled(
            "tallyd_sample_errors",
            Kind::Counter,
            "Lines refused, or parts of lines dropped, by reason.",
            "reason",
        );
        errors.samples = sample_error_labels()
            .into_iter()
            .map(|label| (label.into(), 0.0))
            .collect();
        for receiver in &receivers {
            for (slot, (_, count)) in errors.samples.iter_mut().zip(receiver.sample_errors()) {
                slot.1 += count as f64;
            }
        }
        out.push(errors);

        let mut extensions = SelfMetric::labelled(
            "tallyd_extensions_skipped",
            Kind::Counter,
            "DogStatsD events and service checks received and skipped, by kind.",
            "kind",
        );
        for kind in [Extension::Event, Extension::ServiceCheck] {
            let value = total(&|r| load(r.extension(kind)));
            extensions = extensions.with(kind.label(), value);
        }
        out.push(extensions);

        let families = registry.families();
        let mut series = SelfMetric::labelled(
            "tallyd_series",
            Kind::Gauge,
            "Live series in the registry, by type.",
            "type",
        );
        for kind in Kind::ALL {
            let count: usize = families
                .iter()
                .filter(|family| family.kind() == kind)
                .map(|family| family.series_count())
                .sum();
            series = series.with(kind.name(), count as f64);
        }
        out.push(series);
        out.push(
            SelfMetric::labelled(
                "tallyd_series_refused",
                Kind::Counter,
                "New series refused because a series cap ([limits]) was reached, by cap.",
                "reason",
            )
            .with(
                SeriesLimit::Global.label(),
                registry.refused(SeriesLimit::Global) as f64,
            )
            .with(
                SeriesLimit::PerMetric.label(),
                registry.refused(SeriesLimit::PerMetric) as f64,
            ),
        );
        out.push(SelfMetric::single(
            "tallyd_series_expired",
            Kind::Counter,
            "Series removed after being idle longer than [limits] series_ttl_seconds.",
            registry.expired() as f64,
        ));
        let mut top = SelfMetric::labelled(
            "tallyd_family_series",
            Kind::Gauge,
            "Live series of the metrics with the most series (the top 10 only), by metric.",
            "family",
        );
        for (family, count) in registry.top_families(TOP_FAMILIES) {
            top = top.with(family.name(), count as f64);
        }
        out.push(top);
        out.push(SelfMetric::single(
            "tallyd_families",
            Kind::Gauge,
            "Metric families in the registry.",
            families.len() as f64,
        ));

        out.push(
            SelfMetric::labelled(
                "tallyd_config_reloads",
                Kind::Counter,
                "Configuration reloads, by outcome.",
                "outcome",
            )
            .with("success", self.reloads(ReloadOutcome::Success) as f64)
            .with("failure", self.reloads(ReloadOutcome::Failure) as f64),
        );
        out.push(SelfMetric::single(
            "tallyd_http_connections_refused",
            Kind::Counter,
            "HTTP connections answered 503 and closed because [http] max_connections were open.",
            load(&self.http.connections_refused) as f64,
        ));
        out.push(
            SelfMetric::labelled(
                "tallyd_http_timeouts",
                Kind::Counter,
                "HTTP connections closed because a request head (header) or a whole exchange (request) overran its [http] timeout.",
                "stage",
            )
            .with("header", load(&self.http.header_timeouts) as f64)
            .with("request", load(&self.http.request_timeouts) as f64),
        );
        out.push(SelfMetric::single(
            "tallyd_scrapes",
            Kind::Counter,
            "Scrapes of /metrics rendered.",
            load(&self.scrapes) as f64,
        ));
        out.push(SelfMetric::single(
            "tallyd_scrape_render_seconds",
            Kind::Counter,
            "Time spent rendering scrapes, in total.",
            self.scrape_seconds.get(),
        ));
        out.push(
            SelfMetric::labelled(
                "tallyd_build_info",
                Kind::Gauge,
                "tallyd's version, as a label; the value is always 1.",
                "version",
            )
            .with(env!("CARGO_PKG_VERSION"), 1.0),
        );
        if let Some(relay) = &*self.relay.lock() {
            out.extend(relay.self_metrics());
        }
        if let Some(push) = &*self.push.lock() {
            out.extend(push.self_metrics());
        }
        if let Some(store) = &*self.store.lock() {
            out.extend(store.self_metrics());
        }
        out.push(self.query_backend.self_metrics());
        if let Some(families) = &*self.history_rules.lock() {
            out.extend(families.self_metrics());
        }
        out.extend(process_metrics(self.started_unix));
        out
    }
}

impl Telemetry {
    /// Visits tallyd's own metrics through the read seam, as [`Registry::visit`] does the
    /// registry's. `registry` is the one they describe.
    pub fn visit(&self, registry: &Registry, visitor: &mut impl Visitor) {
        for metric in self.collect(registry) {
            if metric.samples.is_empty() {
                continue;
            }
            let family = FamilyView {
                name: metric.name,
                kind: metric.kind,
                help: Some(metric.help),
                unit: None,
                buckets: &[],
            };
            if !visitor.family(&family) {
                continue;
            }
            for (label_value, value) in &metric.samples {
                let pair = metric.label.map(|name| (name, label_value.as_str()));
                let pairs = pair.as_slice();
                let series = SeriesView {
                    labels: Labels::Pairs(pairs),
                    created: None,
                    value: match metric.kind {
                        Kind::Counter => ValueView::Counter(*value),
                        _ => ValueView::Gauge(*value),
                    },
                };
                visitor.series(&family, &series);
            }
            visitor.end_family(&family);
        }
        self.visit_api_requests(visitor);
        self.remote_write.visit(visitor);
    }

    /// `tallyd_api_requests_total{route,code}`: the one self-metric with two labels.
    fn visit_api_requests(&self, visitor: &mut impl Visitor) {
        let requests = self.api_requests.lock().clone();
        if requests.is_empty() {
            return;
        }
        let family = FamilyView {
            name: "tallyd_api_requests",
            kind: Kind::Counter,
            help: Some("API requests answered, by route pattern and status code."),
            unit: None,
            buckets: &[],
        };
        if !visitor.family(&family) {
            return;
        }
        let answers = requests.iter().flat_map(|(route, codes)| {
            codes.iter().map(move |(code, count)| (route, code, *count))
        });
        for (route, code, count) in answers {
            let code = code.to_string();
            let pairs = [("route", route.as_str()), ("code", code.as_str())];
            let series = SeriesView {
                labels: Labels::Pairs(&pairs),
                created: None,
                value: ValueView::Counter(count as f64),
            };
            visitor.series(&family, &series);
        }
        visitor.end_family(&family);
    }
}

/// Standard `process_*` metrics from `/proc/self` (Linux only; empty elsewhere).
fn process_metrics(started_unix: f64) -> Vec<SelfMetric> {
    let mut out = vec![SelfMetric::single(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since unix epoch in seconds.",
        started_unix,
    )];
    // /proc/self/stat: fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, vsize the 23rd and rss (pages) the 24th.
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some(after_comm) = stat.rfind(')').map(|i| &stat[i + 2..])
    {
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            out.push(SelfMetric::single(
                "process_cpu_seconds",
                Kind::Counter,
                "Total user and system CPU time spent in seconds.",
                (utime + stime) / ticks,
            ));
        }
        if let Some(vsize) = field(23) {
            out.push(SelfMetric::single(
                "process_virtual_memory_bytes",
                Kind::Gauge,
                "Virtual memory size in bytes.",
                vsize,
            ));
        }
        if let Some(rss) = field(24) {
            out.push(SelfMetric::single(
                "process_resident_memory_bytes",
                Kind::Gauge,
                "Resident memory size in bytes.",
                rss * page,
            ));
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        out.push(SelfMetric::single(
            "process_open_fds",
            Kind::Gauge,
            "Number of open file descriptors.",
            dir.count() as f64,
        ));
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        out.push(SelfMetric::single(
            "process_max_fds",
            Kind::Gauge,
            "Maximum number of open file descriptors.",
            limit.rlim_cur as f64,
        ));
    }
    out
}
