//! tallyd: a metrics agent for model-serving hosts — StatsD / DogStatsD in, Prometheus out.
//!
//! One way in, one way out:
//!
//! ```text
//!  listen (udp, tcp, unix)     → protocol → ingest (rules, naming) ─┐
//!  http::api (Matih, Deeploy, Seldon, StatsD lines) → custom ────────┼→ record ─→ registry
//!                                                                     │  (write seam)   │
//!  http (/metrics: exposition) ← read (read seam) ← registry, telemetry ────────────────┘
//! ```
//!
//! - **In**: [`listen`] receives UDP datagrams on every core, TCP lines and Unix datagrams;
//!   [`protocol`] parses lines into borrowed samples; [`ingest`] does StatsD's own naming
//!   ([`rules`] for `[[mapping]]`, [`naming`] for sanitising) and caches series handles per raw
//!   line shape; [`record`] is the write seam every input calls: label pairs and an update in,
//!   definitions ([`definitions`]), reserved names, type conflicts and limits applied, a series
//!   handle or a refusal out.
//! - **Over HTTP**: `http::api` takes custom metrics (the Matih and Deeploy APIs), Seldon's
//!   `meta.metrics` and StatsD lines; [`custom`] holds their rules (tenants, definitions,
//!   records, queries), [`store`] keeps definitions and points durably (SQLite), [`tokens`]
//!   decides who may call.
//! - **Pushed**: [`push`] takes Pushgateway's pushes from batch jobs (grouping keys, text and
//!   protobuf bodies, groups replaced, deleted or expired as a unit) through the same seam.
//! - **Passed on**: [`relay`] forwards the lines received (raw, or as mapped) to upstream
//!   StatsD servers over UDP, off the receive threads.
//! - **Kept**: [`registry`] holds series in lock-sharded maps (`registry::native`: histograms'
//!   native buckets); [`summary`] keeps a summary's windowed quantiles.
//! - **Out**: [`read`] is the read seam (family metadata, label pairs, value views) over the
//!   registry and [`telemetry`]'s own metrics; [`exposition`] writes it for a scrape (text,
//!   OpenMetrics, protobuf) and [`http`] serves it (axum routes inside our own hyper accept
//!   loop; `http::api` holds the REST API's problem documents, body limits and auth hook);
//!   [`remote_write`] reads it the same way on an interval and pushes it to Prometheus
//!   remote-write receivers.
//! - **Running**: [`config`] turns flags and the TOML file into validated settings
//!   ([`validate`] holds the checks every source shares; [`lint`] the naming lint; [`import`]
//!   converts statsd_exporter mapping files); [`runtime`] binds and runs everything until a
//!   cancellation token fires; [`daemon`] is the process around it (flags, logging, signals).

/// A closed set of reasons: a `Copy` enum whose variants each carry the label they are exported
/// under, with `ALL` (declaration order, so `reason as usize` indexes it) and `label()`.
#[macro_export]
#[doc(hidden)]
macro_rules! closed_set {
    ($(#[$enum_doc:meta])* $name:ident; $( $(#[$doc:meta])* $variant:ident => $label:literal, )*) => {
        $(#[$enum_doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name { $( $(#[$doc])* $variant, )* }

        impl $name {
            /// Every variant, in declaration order (`variant as usize` indexes it).
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )* ];

            /// The `reason` label value.
            pub fn label(self) -> &'static str {
                match self { $( $name::$variant => $label, )* }
            }
        }
    };
}

pub mod config;
pub mod custom;
pub mod daemon;
pub mod definitions;
pub mod exposition;
pub mod history;
pub mod http;
pub mod import;
pub mod ingest;
pub mod lint;
pub mod listen;
pub mod naming;
pub mod priority;
pub mod protocol;
pub mod push;
pub mod read;
pub mod record;
pub mod registry;
pub mod relay;
pub mod remote_write;
pub mod rules;
pub mod runtime;
pub mod store;
pub mod summary;
pub mod telemetry;
pub mod tokens;
pub mod validate;
