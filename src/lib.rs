//! tallyd: a StatsD / DogStatsD agent that serves Prometheus.
//!
//! The data path, one module per step:
//!
//! - [`listen`] receives UDP datagrams on every core;
//! - [`protocol`] splits a datagram into lines and parses each into borrowed [`protocol::Sample`]s;
//! - [`ingest`] turns samples into series updates, caching the series handle per raw name+tags;
//! - [`naming`] names series the Prometheus way (sanitising, reserved labels);
//! - [`rules`] applies `[[mapping]]` rules (globs, regexes, captures), cached per thread;
//! - [`registry`] holds series state in lock-sharded maps; [`summary`] keeps a summary's
//!   windowed quantiles;
//! - [`exposition`] renders the registry for a scrape; [`http`] serves it;
//! - [`config`] reads the TOML file and flags; [`lint`] checks its metric names;
//!   [`import`] converts statsd_exporter mapping files; [`telemetry`] holds tallyd's own metrics;
//! - [`daemon`] wires it all together and runs until shutdown.

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
pub mod daemon;
pub mod definitions;
pub mod exposition;
pub mod http;
pub mod import;
pub mod ingest;
pub mod lint;
pub mod listen;
pub mod naming;
pub mod protocol;
pub mod read;
pub mod record;
pub mod registry;
pub mod rules;
pub mod runtime;
pub mod summary;
pub mod telemetry;
pub mod validate;
