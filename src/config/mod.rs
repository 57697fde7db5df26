//! The configuration, in three steps (ripgrep's low-level → high-level arguments):
//!
//! - `cli.rs`: the command line ([`Cli`]), whose flags override the file's common keys;
//! - `file.rs`: the file as written ([`Config`]), one serde tree whose every key
//!   `config/tallyd.toml` documents; `metric.rs` holds its `[[metric]]` tables;
//! - `settings.rs`: [`Settings`], the file validated and built once into what the daemon runs
//!   on (rules compiled, definitions built, lint run), or a [`ConfigError`] naming the key and
//!   its line.

mod cli;
mod file;
mod metric;
mod settings;

pub use cli::{Cli, Command, HistoryCommand, TokenCommand};
pub use file::{
    AggregationConfig, Config, ExpositionConfig, HttpConfig, LimitsConfig, LintConfig, LogConfig,
    RelayConfig, StatsdConfig, TcpConfig, UdpConfig, UnixConfig, normalize_log_filter,
};
pub use metric::{BucketSpec, Generator, MetricDefinition};
pub use settings::{ConfigError, Settings};
// `[history]` and the `[[metric]]`s asking for it, for `crate::history`.
pub use file::{HistoryConfig, TierConfig};
pub use metric::{history_families, history_retention_ms};

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::listen::Spread;

    fn settings(text: &str) -> Result<Settings, String> {
        Settings::parse(text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    fn parse(text: &str) -> Result<Config, String> {
        settings(text).map(|settings| settings.file)
    }

    #[test]
    fn the_documented_file_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tallyd.toml");
        let settings = Settings::load(&path).unwrap();
        assert_eq!(settings.file, Config::default());
        assert!(
            settings.deprecations.is_empty(),
            "{:?}",
            settings.deprecations
        );
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn an_unknown_key_is_refused_with_its_name_and_line() {
        let err = parse("[udp]\nlisten = [\"127.0.0.1:8125\"]\nlisen = 1\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn an_unknown_section_is_refused() {
        let err = parse("[udpp]\n").unwrap_err();
        assert!(err.contains("udpp"), "{err}");
    }

    #[test]
    fn a_bad_address_is_refused_with_its_line() {
        let err = parse("\n[http]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn unsorted_buckets_are_refused_with_the_offending_pair() {
        let err = parse("[aggregation]\nhistogram_buckets = [1.0, 0.5]\n").unwrap_err();
        assert!(err.contains("1 is followed by 0.5"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn native_histograms_are_off_by_default_and_aggregation_turns_them_on() {
        let defaults = settings("").unwrap();
        assert_eq!(defaults.registry.native_bucket_factor, 0.0);
        assert_eq!(defaults.registry.native_max_buckets, 256);
        let on = settings(
            "[aggregation]\nnative_histogram_bucket_factor = 1.1\n\
             native_histogram_max_buckets = 100\n",
        )
        .unwrap();
        assert_eq!(on.registry.native_bucket_factor, 1.1);
        assert_eq!(on.registry.native_max_buckets, 100);
    }

    #[test]
    fn bad_native_histogram_keys_are_refused_with_the_key_and_line() {
        for (text, key, line) in [
            (
                "[aggregation]\nnative_histogram_bucket_factor = 0.5\n",
                "native_histogram_bucket_factor",
                "line 2",
            ),
            (
                "[aggregation]\nnative_histogram_max_buckets = 0\n",
                "native_histogram_max_buckets",
                "line 2",
            ),
            (
                "[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\nnative_histogram_bucket_factor = 1.0\n",
                "native_histogram_bucket_factor",
                "line ",
            ),
            (
                "\n[[metric]]\nname = \"x\"\ntype = \"gauge\"\nnative_histogram_bucket_factor = 1.1\n",
                "native_histogram_bucket_factor",
                "line 2",
            ),
            (
                "[[metric]]\nname = \"x\"\ntype = \"histogram\"\nnative_histogram_max_buckets = 5000\n",
                "native_histogram_max_buckets",
                "line 1",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key) && err.contains(line), "{text}: {err}");
        }
        let err = parse(
            "[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\nmatch_metric_type = \"counter\"\n\
             native_histogram_max_buckets = 10\n",
        )
        .unwrap_err();
        assert!(err.contains("native_histogram"), "{err}");
        let err = parse(
            "[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\nobserver_type = \"summary\"\n\
             native_histogram_bucket_factor = 1.1\n",
        )
        .unwrap_err();
        assert!(err.contains("summary"), "{err}");
    }

    #[test]
    fn rules_and_definitions_carry_native_histogram_keys() {
        let settings = settings(
            "[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\n\
             native_histogram_bucket_factor = 1.1\nnative_histogram_max_buckets = 64\n\
             [[metric]]\nname = \"b_seconds\"\ntype = \"histogram\"\n\
             native_histogram_bucket_factor = 0\n",
        )
        .unwrap();
        let rule = settings.rules.rule(0);
        assert_eq!(rule.native_histogram_bucket_factor, Some(1.1));
        assert_eq!(rule.native_histogram_max_buckets, Some(64));
        let native = settings.definitions["b_seconds"].options.native;
        assert_eq!(native.bucket_factor, Some(0.0));
        assert_eq!(native.max_buckets, None);
    }

    #[test]
    fn a_mapping_rule_takes_history_and_retention_as_a_metric_does() {
        let settings = settings(
            "[[mapping]]\nmatch = \"a.*\"\nname = \"${1}_requests\"\nhistory = true\n\
             retention = \"30d\"\n\
             [[mapping]]\nmatch = \"b.*\"\nname = \"b\"\nhistory = true\n\
             [[mapping]]\nmatch = \"c.*\"\nname = \"c\"\nhistory = false\n\
             [[mapping]]\nmatch = \"d.*\"\nname = \"d\"\n",
        )
        .unwrap();
        assert_eq!(settings.rules.history(0), Some(Some(30 * 86_400_000)));
        assert_eq!(settings.rules.history(1), Some(None));
        assert_eq!(settings.rules.history(2), None);
        assert_eq!(settings.rules.history(3), None);
    }

    #[test]
    fn a_bad_history_option_of_a_mapping_rule_names_the_rule_and_the_key() {
        let rule = |options: &str| {
            format!(
                "[[mapping]]\nmatch = \"a.*\"\nname = \"a\"\n\
                 [[mapping]]\nmatch = \"b.*\"\nname = \"b\"\n{options}"
            )
        };
        // The same words as a [[metric]]'s, from the same code.
        let metric = parse(
            "[[metric]]\nname = \"x\"\ntype = \"gauge\"\nhistory = true\nretention = \"3x\"\n",
        )
        .unwrap_err();
        let err = parse(&rule("history = true\nretention = \"3x\"\n")).unwrap_err();
        assert!(
            err.contains("mapping rule 1 (match = \"b.*\")") && err.contains("retention: "),
            "{err}"
        );
        let detail = err.split("retention: ").nth(1).unwrap();
        assert!(metric.contains(detail), "{metric} / {err}");
        let err = parse(&rule("retention = \"30d\"\n")).unwrap_err();
        assert!(
            err.contains("mapping rule 1") && err.contains("retention is only for"),
            "{err}"
        );
        let err = parse(&rule("history = \"yes\"\n")).unwrap_err();
        assert!(err.contains("line 7") && err.contains("bool"), "{err}");
        let err =
            parse("[[mapping]]\nmatch = \"a.*\"\naction = \"drop\"\nhistory = true\n").unwrap_err();
        assert!(err.contains("`history` has no effect"), "{err}");
    }

    #[test]
    fn a_bad_log_filter_is_refused() {
        let err = parse("[log]\nlevel = \"info,[\"\n").unwrap_err();
        assert!(err.contains("invalid log filter"), "{err}");
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let err = parse("[http]\nidle_timeout_seconds = 0\n").unwrap_err();
        assert!(err.contains("above 0"), "{err}");
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli {
            udp_listen: vec!["127.0.0.1:9999".parse().unwrap()],
            http_listen: Some("127.0.0.1:9998".parse().unwrap()),
            log_level: Some("debug".into()),
            ..Cli::default()
        };
        let settings = Settings::from_cli(&cli).unwrap();
        assert_eq!(settings.udp.listen, cli.udp_listen);
        assert_eq!(Some(settings.http_listen), cli.http_listen);
        assert_eq!(settings.log_level, "debug");
    }

    #[test]
    fn tcp_and_unix_are_off_by_default_and_their_flags_turn_them_on() {
        let defaults = settings("").unwrap();
        assert!(defaults.tcp.listen.is_empty() && defaults.unix.listen.is_empty());
        let cli = Cli {
            tcp_listen: vec!["127.0.0.1:8126".parse().unwrap()],
            unix_listen: vec!["/run/tallyd/dogstatsd.sock".parse().unwrap()],
            ..Cli::default()
        };
        let settings = Settings::from_cli(&cli).unwrap();
        assert_eq!(settings.tcp.listen, cli.tcp_listen);
        assert_eq!(settings.unix.listen, cli.unix_listen);
    }

    #[test]
    fn listen_lists_take_systemd_names_beside_addresses() {
        use crate::listen::Endpoint;
        let file = parse(
            "[udp]\nlisten = [\"systemd:statsd\", \"127.0.0.1:8125\"]\n\
             [unix]\nlisten = [\"systemd:dogstatsd\"]\n[http]\nlisten = \"systemd:http\"\n",
        )
        .unwrap();
        assert_eq!(
            file.udp.listen,
            [
                Endpoint::Systemd("statsd".into()),
                Endpoint::Bind("127.0.0.1:8125".parse().unwrap())
            ]
        );
        assert_eq!(file.unix.listen, [Endpoint::Systemd("dogstatsd".into())]);
        assert_eq!(file.http.listen, Endpoint::Systemd("http".into()));
        let err = parse("[tcp]\n\nlisten = [\"systemd:a:b\"]\n").unwrap_err();
        assert!(
            err.contains("line 3") && err.contains("FileDescriptorName"),
            "{err}"
        );
    }

    #[test]
    fn a_systemd_name_claimed_by_two_listeners_is_refused() {
        let err =
            parse("[tcp]\nlisten = [\"systemd:s\"]\n[http]\nlisten = \"systemd:s\"\n").unwrap_err();
        assert!(err.contains("both [tcp] listen and [http] listen"), "{err}");
    }

    #[test]
    fn the_unix_mode_is_an_octal_string() {
        let unix = parse("[unix]\nmode = \"0660\"\n").unwrap().unix;
        assert_eq!(unix.mode, 0o660);
        for bad in ["\"rw-rw----\"", "\"0999\"", "\"01777\"", "660"] {
            let err = parse(&format!("[unix]\nmode = {bad}\n")).unwrap_err();
            assert!(err.contains("line 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn tcp_line_limits_stay_within_the_parsers() {
        assert!(parse("[tcp]\nmax_line_bytes = 65537\n").is_err());
        assert!(parse("[tcp]\nmax_line_bytes = 10\n").is_err());
        assert!(parse("[tcp]\nmax_connections = 0\n").is_err());
        assert_eq!(
            parse("[tcp]\nmax_line_bytes = 1024\n")
                .unwrap()
                .tcp
                .max_line_bytes,
            1024
        );
    }

    #[test]
    fn spread_accepts_its_two_names_only() {
        assert_eq!(
            parse("[udp]\nspread = \"source\"\n").unwrap().udp.spread,
            Spread::Source
        );
        assert!(parse("[udp]\nspread = \"roundrobin\"\n").is_err());
    }

    #[test]
    fn the_old_statsd_keys_still_work_with_a_deprecation_notice() {
        let old = settings(
            "[statsd]\nhistogram_buckets = [1.0, 2.0]\nset_window_seconds = 5\n\
             max_set_members = 7\nshards = 8\n",
        )
        .unwrap();
        assert_eq!(&*old.registry.histogram_buckets, &[1.0, 2.0]);
        assert_eq!(old.registry.set_window_secs, 5);
        assert_eq!(old.registry.max_set_members, 7);
        assert_eq!(old.registry.shards, 8);
        assert_eq!(old.deprecations.len(), 4, "{:?}", old.deprecations);
        assert!(old.deprecations[0].contains("[aggregation]"));
        let new = settings(
            "[aggregation]\nhistogram_buckets = [1.0, 2.0]\nset_window_seconds = 5\n\
             max_set_members = 7\nshards = 8\n",
        )
        .unwrap();
        assert_eq!(
            new.registry.histogram_buckets,
            old.registry.histogram_buckets
        );
        assert_eq!(new.registry.shards, 8);
        assert!(new.deprecations.is_empty());
    }

    #[test]
    fn a_key_in_both_its_old_and_new_place_is_refused() {
        let err = parse("[statsd]\nshards = 8\n[aggregation]\nshards = 4\n").unwrap_err();
        assert!(
            err.contains("[statsd] shards and [aggregation] shards"),
            "{err}"
        );
    }

    #[test]
    fn rules_and_definitions_are_built_once_with_the_settings() {
        let settings = settings(
            "[[mapping]]\nmatch = \"a.*\"\nname = \"a_total\"\n\
             [[metric]]\nname = \"jobs_total\"\ntype = \"counter\"\nhelp = \"Jobs.\"\n",
        )
        .unwrap();
        assert_eq!(settings.rules.len(), 1);
        let jobs = &settings.definitions["jobs"];
        assert_eq!(jobs.kind, crate::registry::Kind::Counter);
        assert_eq!(jobs.options.help.as_deref(), Some("Jobs."));
    }

    #[test]
    fn relay_targets_change_at_reload_and_the_other_relay_keys_at_restart() {
        let on = settings("[relay]\ntargets = [\"a:8125\"]\n").unwrap();
        let moved = settings("[relay]\ntargets = [\"b:8125\", \"c:8125\"]\n").unwrap();
        assert!(on.restart_required_changes(&moved).is_empty());
        let off = settings("").unwrap();
        assert_eq!(on.restart_required_changes(&off), ["relay"]);
        assert_eq!(off.restart_required_changes(&on), ["relay"]);
        let mapped = settings("[relay]\ntargets = [\"a:8125\"]\nlines = \"mapped\"\n").unwrap();
        assert_eq!(on.restart_required_changes(&mapped), ["relay"]);
    }

    #[test]
    fn relay_settings_are_built_and_bad_values_refused_with_their_line() {
        let relay = settings(
            "[relay]\ntargets = [\"[::1]:8125\"]\nlines = \"mapped\"\n\
             max_datagram_bytes = 8000\nflush_interval_seconds = 0.25\nqueue_bytes = 262144\n",
        )
        .unwrap()
        .relay;
        assert_eq!(relay.targets, ["[::1]:8125"]);
        assert_eq!(relay.lines, crate::relay::LineForm::Mapped);
        assert_eq!(relay.max_datagram_bytes, 8000);
        assert_eq!(relay.flush_interval, std::time::Duration::from_millis(250));
        assert_eq!(relay.queue_bytes, 262144);
        for (bad, says) in [
            ("targets = [\"statsd\"]", "host:port"),
            ("lines = \"cooked\"", "cooked"),
            ("max_datagram_bytes = 65508", "65507"),
            ("flush_interval_seconds = 0", "0.01"),
            ("queue_bytes = 1000", "131072"),
        ] {
            let err = parse(&format!("[relay]\n{bad}\n")).unwrap_err();
            assert!(err.contains(says) && err.contains("line 2"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_relay_target_flag_replaces_the_file_targets() {
        let cli = Cli {
            relay_target: vec!["statsd.internal:8125".into()],
            ..Cli::default()
        };
        let settings = Settings::from_cli(&cli).unwrap();
        assert_eq!(settings.relay.targets, cli.relay_target);
    }

    #[test]
    fn a_set_cannot_be_declared() {
        let err = parse("[[metric]]\nname = \"users\"\ntype = \"set\"\n").unwrap_err();
        assert!(err.contains("cannot be declared"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }
}
