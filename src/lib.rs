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

pub mod config;
pub mod daemon;
pub mod exposition;
pub mod http;
pub mod import;
pub mod ingest;
pub mod lint;
pub mod listen;
pub mod naming;
pub mod protocol;
pub mod registry;
pub mod rules;
pub mod summary;
pub mod telemetry;
