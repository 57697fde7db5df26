//! The end-to-end benchmark (issue 5, DESIGN.md §8): the real `tallyd` binary pinned to one CPU,
//! `tallyd-load` pinned to the other, figures read from `/metrics`, `/proc/<pid>` and
//! `/proc/net/udp`, compared with the receive-only floor (`tallyd-load floor`) under the same
//! pinning. Prints a Markdown table of medians on stdout; progress goes to stderr.
//!
//! `cargo bench --bench e2e`; knobs (`E2E_QUICK=1`, `E2E_ONLY=…`, …) are in `benches/README.md`.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    Check, Daemon, Load, Run, Scrape, Sent, Setup, Sweep, Table, Unit, env_or, json_number,
    load_average, median, metric_sum, pin_self, proc_sleeps, run_tallyd, run_tallyd_at, thousands,
};

const MIX: &str = "c:40,g:20,ms:25,h:5,d:5,s:5";
const OPENMETRICS: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

struct Settings {
    /// Pinning, priority and binaries (`E2E_DAEMON_CPU`, `E2E_NICE`, `E2E_TALLYD`, …).
    base: Setup,
    runs: usize,
    seconds: f64,
    mix: String,
    tags: usize,
    cpu_series: u64,
    rate20: f64,
    rate1: f64,
    sockets1: usize,
    sweep_steps: usize,
    sweep_seconds: f64,
    mid_series: u64,
    big_series: u64,
    fill_rate: f64,
    load_under_scrape: f64,
    hot_series: u64,
    groups: BTreeSet<&'static str>,
    /// Another tallyd binary run beside ours in the UDP groups (`E2E_BASELINE`).
    baseline: Option<PathBuf>,
    shared_receivers: usize,
}

const GROUPS: [&str; 7] = [
    "cpu20",
    "cpu1",
    "flat",
    "sweep",
    "transports",
    "shared",
    "big",
];

/// What a group measures, added to the table.
type Group = fn(&Settings, &mut Table);

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("E2E_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut groups = BTreeSet::new();
        match std::env::var("E2E_ONLY") {
            Ok(list) if !list.trim().is_empty() => {
                for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    let chosen: &[&'static str] = match word {
                        "cpu" | "floor" => &["cpu20", "cpu1"],
                        "cpu20" => &["cpu20"],
                        "cpu1" => &["cpu1"],
                        "flat" | "loss" => &["flat"],
                        "sweep" => &["sweep"],
                        "transports" | "tcp" | "unix" => &["transports"],
                        "shared" | "activation" => &["shared"],
                        "big" | "scrape" | "rss" | "memory" => &["big"],
                        "all" => &GROUPS,
                        other => panic!(
                            "E2E_ONLY: unknown group {other:?} (cpu20, cpu1, cpu, floor, flat, \
                             sweep, transports, tcp, unix, shared, activation, big, scrape, rss, \
                             all)"
                        ),
                    };
                    groups.extend(chosen.iter().copied());
                }
            }
            _ => groups.extend(GROUPS),
        }
        Settings {
            base: Setup::from_env("E2E", "e2e"),
            runs: env_or("E2E_RUNS", if quick { 1 } else { 3 }).max(1),
            seconds: env_or("E2E_SECONDS", if quick { 1.5 } else { 3.0 }),
            mix: env_or("E2E_MIX", MIX.to_string()),
            tags: env_or("E2E_TAGS", 3),
            cpu_series: env_or("E2E_CPU_SERIES", 1000),
            rate20: env_or("E2E_RATE20", 100_000.0),
            rate1: env_or("E2E_RATE1", 200_000.0),
            sockets1: env_or("E2E_SOCKETS1", 100),
            sweep_steps: env_or("E2E_SWEEP_STEPS", if quick { 3 } else { 5 }),
            sweep_seconds: env_or("E2E_SWEEP_SECONDS", if quick { 1.5 } else { 2.0 }),
            mid_series: env_or("E2E_MID_SERIES", 200_000),
            big_series: env_or("E2E_BIG_SERIES", 1_000_000),
            fill_rate: env_or("E2E_FILL_RATE", 400_000.0),
            load_under_scrape: env_or("E2E_SCRAPE_LOAD", 500_000.0),
            hot_series: env_or("E2E_HOT_SERIES", 50_000),
            groups,
            baseline: std::env::var_os("E2E_BASELINE").map(PathBuf::from),
            shared_receivers: env_or("E2E_SHARED_RECEIVERS", 2),
        }
    }

    fn wants(&self, group: &str) -> bool {
        self.groups.contains(group)
    }
}

/// tallyd on free ports, with `E2E_CONFIG` as its config file when set.
fn tallyd(s: &Settings) -> Daemon {
    tallyd_with(s, &[])
}

/// tallyd on free ports with `E2E_CONFIG`, then `extra` arguments.
fn tallyd_with(s: &Settings, extra: &[OsString]) -> Daemon {
    Daemon::tallyd_with(&s.base, &s.base.tallyd, &tallyd_args(extra), "tallyd")
}

/// The `E2E_BASELINE` binary on free ports with `E2E_CONFIG`, when set.
fn baseline(s: &Settings) -> Option<Daemon> {
    s.baseline
        .as_ref()
        .map(|binary| Daemon::tallyd_with(&s.base, binary, &tallyd_args(&[]), "baseline"))
}

/// tallyd's arguments beyond its free ports: `--config E2E_CONFIG` if set, then `extra`.
fn tallyd_args(extra: &[OsString]) -> Vec<OsString> {
    let mut args = Vec::new();
    if let Some(config) = std::env::var_os("E2E_CONFIG") {
        args.extend(["--config".into(), config]);
    }
    args.extend_from_slice(extra);
    args
}

/// The UDP load of the CPU, flat and sweep groups.
fn cpu_load(s: &Settings, lines_per_datagram: usize) -> Load {
    Load::new(lines_per_datagram, s.cpu_series, s.tags, &s.mix, s.seconds)
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

/// The same load against the receive-only floor.
fn run_floor(s: &Settings, load: &Load) -> Run {
    let floor = Daemon::floor(&s.base);
    let cpu_before = floor.cpu_seconds();
    let sleeps_before = proc_sleeps(floor.pid);
    let sent = load.run(&s.base, floor.udp);
    floor.drain();
    let cpu = floor.cpu_seconds() - cpu_before;
    let sleeps = proc_sleeps(floor.pid) - sleeps_before;
    let drops = floor.kernel_drops();
    let json = floor.stop();
    let lines_in = json_number(&json, "lines").unwrap_or(0.0) as u64;
    let counter_sum = json_number(&json, "counter_sum").unwrap_or(0.0) as u64;
    let run = Run {
        sent,
        lines_in,
        drops,
        cpu,
        receiver_cpu: cpu,
        sleeps,
    };
    if run.loss_free() && counter_sum != run.sent.counter_sum {
        eprintln!(
            "e2e:   floor counter sum {counter_sum} != sent {}",
            run.sent.counter_sum
        );
    }
    eprintln!(
        "e2e:   floor:  sent {} lines ({:.0} dgram/s); received {} lost {} ({:.3} %); CPU \
         {:.3} s = {:.3} µs/line, {:.0} lines/CPU-s, {:.1} datagrams per wake-up (own rusage: \
         {} µs/line)",
        run.sent.lines,
        run.sent.datagrams_per_s,
        run.lines_in,
        run.lost_lines(),
        run.loss_percent(),
        run.cpu,
        run.micros_per_line(),
        run.lines_per_cpu_second(),
        run.datagrams_per_sleep(),
        json_number(&json, "cpu_us_per_line").map_or("?".into(), |v| format!("{v:.3}")),
    );
    run
}

/// Sum of the sample values of every counter family `<prefix>_c_m*_total`.
fn counter_total(scrape: &Scrape, prefix: &str) -> f64 {
    let start = format!("{prefix}_c_m");
    metric_sum(&scrape.body, |n| {
        n.starts_with(start.as_bytes()) && n.ends_with(b"_total")
    })
}

/// The CPU scenarios: tallyd and the floor, interleaved, `runs` times.
fn cpu_group(s: &Settings, table: &mut Table, lines_per_datagram: usize) {
    let (label, rate, sockets) = if lines_per_datagram == 1 {
        (
            format!(
                "1 line/datagram, {} tags, {}k series, {} sockets, {}k datagrams/s",
                s.tags,
                s.cpu_series / 1000,
                s.sockets1,
                s.rate1 / 1000.0
            ),
            s.rate1,
            s.sockets1,
        )
    } else {
        (
            format!(
                "{lines_per_datagram} lines/datagram, {} tags, {}k series, {}M lines/s",
                s.tags,
                s.cpu_series / 1000,
                s.rate20 * lines_per_datagram as f64 / 1e6
            ),
            s.rate20,
            1,
        )
    };
    eprintln!("e2e: == CPU per line: {label}");
    let daemon = tallyd(s);
    let baseline = baseline(s);
    let mut load = cpu_load(s, lines_per_datagram);
    load.rate = Some(rate);
    load.sockets = sockets;
    let mut tallyd_runs = Vec::new();
    let mut floor_runs = Vec::new();
    let mut baseline_runs = Vec::new();
    let mut expected_counters = 0u64;
    let mut all_loss_free = true;
    for run in 0..s.runs {
        load.seed = 1 + run as u64;
        let t = run_tallyd(&s.base, &daemon, &load);
        expected_counters += t.sent.counter_sum;
        all_loss_free &= t.loss_free();
        tallyd_runs.push(t);
        floor_runs.push(run_floor(s, &load));
        if let Some(baseline) = &baseline {
            baseline_runs.push(run_tallyd(&s.base, baseline, &load));
        }
    }
    if let Some(baseline) = baseline {
        drop(baseline.stop());
    }
    // Counter totals: exact when nothing was lost.
    let final_scrape = daemon.scrape(None);
    let got = counter_total(&final_scrape, "tl") as u64;
    if all_loss_free {
        let verdict = if got == expected_counters {
            "match"
        } else {
            "MISMATCH"
        };
        table.note(format!(
            "{label}: counter totals in /metrics {verdict} what was sent ({got} vs {expected_counters})"
        ));
    }
    drop(daemon.stop());

    let t_lps: Vec<f64> = tallyd_runs.iter().map(Run::lines_per_cpu_second).collect();
    let f_lps: Vec<f64> = floor_runs.iter().map(Run::lines_per_cpu_second).collect();
    let ratio: Vec<f64> = tallyd_runs
        .iter()
        .zip(&floor_runs)
        .map(|(t, f)| t.micros_per_line() / f.micros_per_line())
        .collect();
    let floor_median = median(&f_lps).unwrap_or(0.0);
    if lines_per_datagram == 1 {
        table.add(
            &format!("tallyd lines per CPU-second, {label}"),
            Unit::Count,
            t_lps,
            &format!("≥ ½ floor = {}", thousands(floor_median / 2.0)),
            Check::AtLeast(floor_median / 2.0),
        );
    } else {
        table.add(
            &format!("tallyd lines per CPU-second, {label}"),
            Unit::Count,
            t_lps,
            "≥ 3,000,000",
            Check::AtLeast(3e6),
        );
    }
    table.add(
        &format!("tallyd CPU per line, {label}"),
        Unit::Micros,
        tallyd_runs.iter().map(Run::micros_per_line).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("floor lines per CPU-second, {label}"),
        Unit::Count,
        f_lps,
        "",
        Check::None,
    );
    table.add(
        &format!("floor CPU per line, {label}"),
        Unit::Micros,
        floor_runs.iter().map(Run::micros_per_line).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("datagrams per receiver wake-up, tallyd, {label}"),
        Unit::Decimal,
        tallyd_runs.iter().map(Run::datagrams_per_sleep).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("datagrams per receiver wake-up, floor, {label}"),
        Unit::Decimal,
        floor_runs.iter().map(Run::datagrams_per_sleep).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("tallyd CPU per line ÷ floor, {label}"),
        Unit::Times,
        ratio,
        "≤ 2×",
        Check::AtMost(2.0),
    );
    table.add(
        &format!("loss, {label}"),
        Unit::Percent,
        tallyd_runs.iter().map(Run::loss_percent).collect(),
        "0 %",
        Check::AtMost(0.0),
    );
    table.add(
        &format!("send rate achieved, {label}"),
        Unit::Rate,
        tallyd_runs.iter().map(|r| r.sent.datagrams_per_s).collect(),
        "",
        Check::None,
    );
    if !baseline_runs.is_empty() {
        add_baseline_rows(table, &label, &tallyd_runs, &baseline_runs);
    }
}

/// Flat out, 1 line per datagram: does tallyd keep up with everything one sender core sends?
fn flat_group(s: &Settings, table: &mut Table) {
    for sockets in [1usize, s.sockets1] {
        let label = if sockets == 1 {
            "1 line/datagram, flat out, one hot socket".to_string()
        } else {
            format!("1 line/datagram, flat out, {sockets} sockets")
        };
        eprintln!("e2e: == loss: {label}");
        let daemon = tallyd(s);
        let baseline = baseline(s);
        let mut load = cpu_load(s, 1);
        load.sockets = sockets;
        let mut runs = Vec::new();
        let mut baseline_runs = Vec::new();
        for run in 0..s.runs {
            load.seed = 1 + run as u64;
            runs.push(run_tallyd(&s.base, &daemon, &load));
            if let Some(baseline) = &baseline {
                baseline_runs.push(run_tallyd(&s.base, baseline, &load));
            }
        }
        drop(daemon.stop());
        if let Some(baseline) = baseline {
            drop(baseline.stop());
            table.add(
                &format!("baseline loss, {label}"),
                Unit::Percent,
                baseline_runs.iter().map(Run::loss_percent).collect(),
                "",
                Check::None,
            );
        }
        table.add(
            &format!("loss, {label}"),
            Unit::Percent,
            runs.iter().map(Run::loss_percent).collect(),
            "0 %",
            Check::AtMost(0.0),
        );
        table.add(
            &format!("send rate achieved, {label}"),
            Unit::Rate,
            runs.iter().map(|r| r.sent.datagrams_per_s).collect(),
            "",
            Check::None,
        );
    }
}

/// One search for the highest loss-free line rate at 20 lines per datagram, on `daemon`.
fn sweep(s: &Settings, daemon: &Daemon, seed: u64) -> Sweep {
    let mut load = cpu_load(s, 20);
    load.duration = Some(s.sweep_seconds);
    load.seed = seed;
    common::sweep(&s.base, daemon, &load, s.sweep_steps)
}

/// Bisection for the highest loss-free line rate at 20 lines per datagram.
fn sweep_group(s: &Settings, table: &mut Table) {
    let label = format!(
        "20 lines/datagram, {} tags, {}k series",
        s.tags,
        s.cpu_series / 1000
    );
    eprintln!("e2e: == loss-free sweep: {label}");
    let mut sweeps = Vec::new();
    for run in 0..s.runs {
        let daemon = tallyd(s);
        sweeps.push(sweep(s, &daemon, 100 + run as u64));
        drop(daemon.stop());
    }
    add_sweep_rows(s, table, &label, "", &sweeps);
}

/// The rows of a set of sweeps; `mode` qualifies the label (empty for plain tallyd).
fn add_sweep_rows(s: &Settings, table: &mut Table, label: &str, mode: &str, sweeps: &[Sweep]) {
    let loader_bound = sweeps.iter().filter(|w| w.loader_bound).count();
    if loader_bound > 0 {
        table.note(format!(
            "sweep{mode}: in {loader_bound} of {} runs tallyd lost nothing even flat out; the \
             figure is then the loader's rate (a lower bound)",
            s.runs
        ));
    }
    table.add(
        &format!("highest loss-free rate (lines/s), {label}{mode}"),
        Unit::Rate,
        sweeps.iter().map(|w| w.rate).collect(),
        "≥ 2,000,000/s",
        Check::AtLeast(2e6),
    );
    table.add(
        &format!("loader's flat-out rate (lines/s), {label}{mode}"),
        Unit::Rate,
        sweeps.iter().map(|w| w.flat_rate).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("tallyd lines per CPU-second at that flat-out rate, {label}{mode}"),
        Unit::Count,
        sweeps.iter().map(|w| w.flat_lines_per_cpu_second).collect(),
        "",
        Check::None,
    );
}

/// Rows comparing `E2E_BASELINE` with tallyd, run by run under the same load.
fn add_baseline_rows(table: &mut Table, label: &str, tallyd: &[Run], baseline: &[Run]) {
    table.add(
        &format!("baseline lines per CPU-second, {label}"),
        Unit::Count,
        baseline.iter().map(Run::lines_per_cpu_second).collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("tallyd CPU per line ÷ baseline, {label}"),
        Unit::Times,
        tallyd
            .iter()
            .zip(baseline)
            .map(|(t, b)| t.micros_per_line() / b.micros_per_line())
            .collect(),
        "",
        Check::None,
    );
    table.add(
        &format!("baseline loss, {label}"),
        Unit::Percent,
        baseline.iter().map(Run::loss_percent).collect(),
        "",
        Check::None,
    );
}

/// UDP, TCP and Unix datagrams into one tallyd, the same lines at the same rate, interleaved:
/// what each transport costs per line, and what it loses.
fn transports_group(s: &Settings, table: &mut Table) {
    let socket = std::env::temp_dir().join(format!("tallyd-e2e-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let daemon = tallyd_with(
        s,
        &[
            "--tcp-listen".into(),
            "127.0.0.1:0".into(),
            "--unix-listen".into(),
            socket.clone().into(),
        ],
    );
    let targets = [
        ("UDP", daemon.udp.to_string()),
        (
            "TCP",
            format!("tcp:{}", daemon.tcp.expect("a TCP listener")),
        ),
        (
            "Unix datagrams",
            format!(
                "unix:{}",
                daemon.unix.as_ref().expect("a Unix socket").display()
            ),
        ),
    ];
    let rated = format!(
        "20 lines per datagram (or write), {} tags, {}k series, {}M lines/s",
        s.tags,
        s.cpu_series / 1000,
        s.rate20 * 20.0 / 1e6
    );
    let flat = format!(
        "20 lines per datagram (or write), {} tags, {}k series, flat out",
        s.tags,
        s.cpu_series / 1000
    );
    eprintln!("e2e: == transports: {rated}; then {flat}");
    let mut at_rate: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    let mut flat_out: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for run in 0..s.runs {
        for (i, (_, target)) in targets.iter().enumerate() {
            let mut load = cpu_load(s, 20);
            load.seed = 1 + run as u64;
            load.rate = Some(s.rate20);
            at_rate[i].push(run_tallyd_at(&s.base, &daemon, &load, target));
            load.rate = None;
            flat_out[i].push(run_tallyd_at(&s.base, &daemon, &load, target));
        }
    }
    drop(daemon.stop());
    let _ = std::fs::remove_file(&socket);
    for ((transport, _), runs) in targets.iter().zip(&at_rate) {
        table.add(
            &format!("lines per CPU-second, {transport}, {rated}"),
            Unit::Count,
            runs.iter().map(Run::lines_per_cpu_second).collect(),
            "",
            Check::None,
        );
        table.add(
            &format!("loss, {transport}, {rated}"),
            Unit::Percent,
            runs.iter().map(Run::loss_percent).collect(),
            "0 %",
            Check::AtMost(0.0),
        );
    }
    for ((transport, _), runs) in targets.iter().zip(&flat_out) {
        table.add(
            &format!("lines per CPU-second, {transport}, {flat}"),
            Unit::Count,
            runs.iter().map(Run::lines_per_cpu_second).collect(),
            "",
            Check::None,
        );
        table.add(
            &format!("send rate achieved (lines/s), {transport}, {flat}"),
            Unit::Rate,
            runs.iter().map(|r| r.sent.lines_per_s).collect(),
            "",
            Check::None,
        );
        table.add(
            &format!("loss, {transport}, {flat}"),
            Unit::Percent,
            runs.iter().map(Run::loss_percent).collect(),
            "",
            Check::None,
        );
    }
    table.note(
        "transports: a TCP stream and a blocking Unix datagram socket slow the sender down \
         instead of dropping, so their flat-out loss is 0 by construction; their send rate is \
         what tallyd kept up with"
            .into(),
    );
}

/// A UDP reuse-port group against the same number of receive threads sharing one socket
/// passed by systemd (`systemd-socket-activate`), same loads, interleaved.
fn shared_group(s: &Settings, table: &mut Table) {
    let n = s.shared_receivers;
    let config = std::env::temp_dir().join(format!("tallyd-e2e-{}.toml", std::process::id()));
    std::fs::write(&config, format!("[udp]\nreceivers = {n}\n")).expect("write a config");
    let modes = [
        (
            format!("reuse-port group of {n} sockets"),
            Daemon::tallyd_with(
                &s.base,
                &s.base.tallyd,
                &tallyd_args(&["--config".into(), config.clone().into()]),
                "reuse-port",
            ),
        ),
        (
            format!("{n} threads on one passed socket"),
            Daemon::activated(&s.base, &config),
        ),
    ];
    let rated20 = format!(
        "20 lines/datagram, {}M lines/s, {n} receive threads on CPU {}",
        s.rate20 * 20.0 / 1e6,
        s.base.daemon_cpu
    );
    let rated1 = format!(
        "1 line/datagram, {} sockets, {}k datagrams/s, {n} receive threads on CPU {}",
        s.sockets1,
        s.rate1 / 1000.0,
        s.base.daemon_cpu
    );
    eprintln!("e2e: == shared socket vs reuse-port group: {rated20}; {rated1}; sweep");
    let mut runs20: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    let mut runs1: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    let mut sweeps: Vec<Vec<Sweep>> = vec![Vec::new(), Vec::new()];
    for run in 0..s.runs {
        for (i, (_, daemon)) in modes.iter().enumerate() {
            let mut load = cpu_load(s, 20);
            load.seed = 1 + run as u64;
            load.rate = Some(s.rate20);
            runs20[i].push(run_tallyd(&s.base, daemon, &load));
            let mut load = cpu_load(s, 1);
            load.seed = 1 + run as u64;
            load.rate = Some(s.rate1);
            load.sockets = s.sockets1;
            runs1[i].push(run_tallyd(&s.base, daemon, &load));
            sweeps[i].push(sweep(s, daemon, 100 + run as u64));
        }
    }
    let names: Vec<String> = modes.iter().map(|(name, _)| name.clone()).collect();
    for (_, daemon) in modes {
        drop(daemon.stop());
    }
    let _ = std::fs::remove_file(&config);
    for (label, runs) in [(&rated20, &runs20), (&rated1, &runs1)] {
        for (name, runs) in names.iter().zip(runs) {
            table.add(
                &format!("lines per CPU-second, {name}, {label}"),
                Unit::Count,
                runs.iter().map(Run::lines_per_cpu_second).collect(),
                "",
                Check::None,
            );
            table.add(
                &format!("loss, {name}, {label}"),
                Unit::Percent,
                runs.iter().map(Run::loss_percent).collect(),
                "0 %",
                Check::AtMost(0.0),
            );
        }
        table.add(
            &format!("CPU per line, shared socket ÷ reuse-port group, {label}"),
            Unit::Times,
            runs[1]
                .iter()
                .zip(&runs[0])
                .map(|(shared, group)| shared.micros_per_line() / group.micros_per_line())
                .collect(),
            "",
            Check::None,
        );
    }
    let label = format!(
        "20 lines/datagram, {n} receive threads on CPU {}",
        s.base.daemon_cpu
    );
    for (name, sweeps) in names.iter().zip(&sweeps) {
        add_sweep_rows(s, table, &label, &format!(", {name}"), sweeps);
    }
}

/// Series per metric name in the big registries: 20 names, so 1M series are 50k per name, under
/// tallyd's default `max_series_per_metric`.
const BIG_FAMILIES: u64 = 20;

/// The counters (2 tags, prefix `big`) that make up the big registries.
fn big_load(s: &Settings, total: u64) -> Load {
    Load {
        lines_per_datagram: 20,
        series: total,
        families: Some(BIG_FAMILIES),
        tags: 2,
        mix: "c".into(),
        order: "seq",
        start: 0,
        rate: None,
        line_rate: Some(s.fill_rate),
        duration: None,
        lines: Some(total),
        sockets: 1,
        seed: 7,
        prefix: "big",
    }
}

/// Creates every series of the big set (each once, 20 lines/datagram, paced); again, slower, while
/// the kernel drops some. Returns the rate that worked.
fn fill(s: &Settings, daemon: &Daemon, total: u64) -> f64 {
    let mut load = big_load(s, total);
    for _ in 0..5 {
        let drops_before = daemon.kernel_drops();
        let t = Instant::now();
        let sent = load.run(&s.base, daemon.udp);
        daemon.drain();
        let drops = daemon.kernel_drops() - drops_before;
        let rate = load.line_rate.unwrap();
        eprintln!(
            "e2e:   fill {total} series at {rate:.0} lines/s: {:.1} s, {} series touched, \
             kernel drops {drops}",
            t.elapsed().as_secs_f64(),
            sent.series_touched
        );
        if drops == 0 {
            return rate;
        }
        load.line_rate = Some(rate / 2.0);
    }
    panic!("could not create {total} series without kernel drops");
}

/// Touches the receive buffers and creates series 0 of the big set, so that "RSS before" is a
/// running daemon's, not a fresh process's.
fn warm_up(s: &Settings, daemon: &Daemon) {
    let mut load = big_load(s, 1);
    load.lines = Some(2000);
    load.line_rate = Some(100_000.0);
    load.run(&s.base, daemon.udp);
    daemon.drain();
    std::thread::sleep(Duration::from_millis(300));
}

fn live_series(scrape: &Scrape) -> f64 {
    scrape.sum("tallyd_series")
}

/// Scrapes `n` times in each format, alternating: the median wall time of each, in ms (the
/// first scrape after new series appear is slower, see the "first scrape" rows).
fn warm_scrapes(daemon: &Daemon, n: usize) -> (f64, f64) {
    let mut text = Vec::new();
    let mut om = Vec::new();
    for _ in 0..n {
        text.push(daemon.scrape(None).seconds * 1e3);
        om.push(daemon.scrape(Some(OPENMETRICS)).seconds * 1e3);
    }
    (
        median(&text).unwrap_or(f64::NAN),
        median(&om).unwrap_or(f64::NAN),
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Accumulated runs of the big group.
#[derive(Default)]
struct BigRuns {
    mid_bytes: Vec<f64>,
    mid_text: Vec<f64>,
    mid_text_cold: Vec<f64>,
    mid_om_cold: Vec<f64>,
    big_text_cold: Vec<f64>,
    big_om_cold: Vec<f64>,
    mid_om: Vec<f64>,
    mid_text_size: Vec<f64>,
    mid_om_size: Vec<f64>,
    big_bytes: Vec<f64>,
    big_text: Vec<f64>,
    big_om: Vec<f64>,
    big_text_size: Vec<f64>,
    big_om_size: Vec<f64>,
    big_rss_after_scrape: Vec<f64>,
    fill_rate: Vec<f64>,
    ingest_loss: Vec<f64>,
    ingest_us: Vec<f64>,
    load_scrape: Vec<f64>,
    load_loss: Vec<f64>,
    load_rate: Vec<f64>,
    hot_scrape: Vec<f64>,
    hot_loss: Vec<f64>,
    hwm: Vec<f64>,
}

/// Memory per series and scrape time at `mid_series` and `big_series`, ingest over the big
/// registry, and a scrape of it while ingesting.
fn big_group(s: &Settings, table: &mut Table) {
    let mut r = BigRuns::default();
    let mid_k = s.mid_series / 1000;
    let big_label = if s.big_series.is_multiple_of(1_000_000) {
        format!("{}M", s.big_series / 1_000_000)
    } else {
        format!("{}k", s.big_series / 1000)
    };
    let k = s.load_under_scrape / 1000.0;
    for run in 0..s.runs {
        // The mid-size registry.
        eprintln!(
            "e2e: == memory and scrape, {mid_k}k series (run {})",
            run + 1
        );
        let daemon = tallyd(s);
        warm_up(s, &daemon);
        let (rss0, _) = daemon.rss();
        fill(s, &daemon, s.mid_series);
        std::thread::sleep(Duration::from_millis(200));
        let (rss1, _) = daemon.rss();
        let text = daemon.scrape(None);
        let om = daemon.scrape(Some(OPENMETRICS));
        let live = live_series(&text);
        eprintln!(
            "e2e:   {live} series: RSS {:.1} → {:.1} MiB; scrape text {:.1} ms {} B, \
             OpenMetrics {:.1} ms {} B ({})",
            mib(rss0),
            mib(rss1),
            text.seconds * 1e3,
            text.body.len(),
            om.seconds * 1e3,
            om.body.len(),
            om.content_type
        );
        r.mid_bytes.push((rss1 as f64 - rss0 as f64) / live);
        r.mid_text_cold.push(text.seconds * 1e3);
        r.mid_om_cold.push(om.seconds * 1e3);
        let (warm_text, warm_om) = warm_scrapes(&daemon, 3);
        eprintln!(
            "e2e:   then (median of 3 each) text {warm_text:.1} ms, OpenMetrics {warm_om:.1} ms"
        );
        r.mid_text.push(warm_text);
        r.mid_om.push(warm_om);
        r.mid_text_size.push(mib(text.body.len() as u64));
        r.mid_om_size.push(mib(om.body.len() as u64));
        drop((text, om));
        drop(daemon.stop());

        // The big one.
        eprintln!(
            "e2e: == memory and scrape, {big_label} series (run {})",
            run + 1
        );
        let daemon = tallyd(s);
        warm_up(s, &daemon);
        let (rss0, _) = daemon.rss();
        r.fill_rate.push(fill(s, &daemon, s.big_series));
        std::thread::sleep(Duration::from_millis(200));
        let (rss1, _) = daemon.rss();
        let text = daemon.scrape(None);
        let live = live_series(&text);
        let refused = text.sum("tallyd_series_refused_total");
        let om = daemon.scrape(Some(OPENMETRICS));
        let (rss2, _) = daemon.rss();
        eprintln!(
            "e2e:   {live} series ({refused} refused): RSS {:.1} → {:.1} MiB ({:.1} after \
             scrapes); scrape text {:.1} ms {} B, OpenMetrics {:.1} ms {} B",
            mib(rss0),
            mib(rss1),
            mib(rss2),
            text.seconds * 1e3,
            text.body.len(),
            om.seconds * 1e3,
            om.body.len()
        );
        if live < s.big_series as f64 {
            table.note(format!(
                "run {}: only {live} of {} series live after the fill ({refused} refused by \
                 limits)",
                run + 1,
                s.big_series
            ));
        }
        r.big_bytes.push((rss1 as f64 - rss0 as f64) / live);
        r.big_text_cold.push(text.seconds * 1e3);
        r.big_om_cold.push(om.seconds * 1e3);
        let (warm_text, warm_om) = warm_scrapes(&daemon, 3);
        eprintln!(
            "e2e:   then (median of 3 each) text {warm_text:.1} ms, OpenMetrics {warm_om:.1} ms"
        );
        r.big_text.push(warm_text);
        r.big_om.push(warm_om);
        r.big_text_size.push(mib(text.body.len() as u64));
        r.big_om_size.push(mib(om.body.len() as u64));
        r.big_rss_after_scrape.push(mib(rss2));
        let mut lines_before = om.sum("tallyd_lines_total");
        drop((text, om));

        // Updates spread over the whole big registry, first without a scrape, then with one;
        // then updates of a hot subset only, with a scrape.
        let phases = [
            (s.big_series, false),
            (s.big_series, true),
            (s.hot_series.min(s.big_series), true),
        ];
        for (phase, &(over, scraping)) in phases.iter().enumerate() {
            let mut load = big_load(s, over);
            load.order = "random";
            load.lines = None;
            load.line_rate = Some(s.load_under_scrape);
            load.seed = 11 + 3 * run as u64 + phase as u64;
            load.duration = Some(if scraping {
                s.seconds.max(3.0) + 1.0
            } else {
                s.seconds
            });
            let drops_before = daemon.kernel_drops();
            let cpu_before = daemon.cpu_seconds();
            let child = load.spawn(&s.base, daemon.udp);
            let during = scraping.then(|| {
                std::thread::sleep(Duration::from_secs_f64(1.0));
                daemon.scrape(None)
            });
            let sent = Sent::from_child(child);
            daemon.drain();
            let cpu = daemon.cpu_seconds() - cpu_before;
            let drops = daemon.kernel_drops() - drops_before;
            let after = daemon.scrape(None);
            let lines_after = after.sum("tallyd_lines_total");
            let lines_in = lines_after - lines_before;
            lines_before = lines_after;
            let lost = (sent.lines as f64 - lines_in).max(0.0);
            let loss = 100.0 * lost / sent.lines.max(1) as f64;
            drop(after);
            let us = cpu * 1e6 / lines_in.max(1.0);
            match during {
                None => {
                    eprintln!(
                        "e2e:   {:.0} lines/s over {over} series, no scrape: sent {}, received \
                         {lines_in}, lost {lost} (kernel drops {drops}); CPU {cpu:.3} s = \
                         {us:.3} µs/line",
                        sent.lines_per_s, sent.lines
                    );
                    r.ingest_loss.push(loss);
                    r.ingest_us.push(us);
                }
                Some(during) => {
                    let (_, peak) = daemon.rss();
                    eprintln!(
                        "e2e:   {:.0} lines/s over {over} series, scrape during it: {:.1} ms, \
                         {} B; sent {} lines, received {lines_in}, lost {lost} (kernel drops \
                         {drops}); CPU {cpu:.3} s; VmHWM {:.1} MiB",
                        sent.lines_per_s,
                        during.seconds * 1e3,
                        during.body.len(),
                        sent.lines,
                        mib(peak)
                    );
                    if over == s.big_series {
                        r.load_scrape.push(during.seconds * 1e3);
                        r.load_loss.push(loss);
                        r.load_rate.push(sent.lines_per_s);
                    } else {
                        r.hot_scrape.push(during.seconds * 1e3);
                        r.hot_loss.push(loss);
                    }
                }
            }
        }
        r.hwm.push(mib(daemon.rss().1));
        drop(daemon.stop());
    }

    table.add(
        &format!("RSS per live series, {mid_k}k series (counters, 2 tags)"),
        Unit::Bytes,
        r.mid_bytes,
        "",
        Check::None,
    );
    table.add(
        &format!("RSS per live series, {big_label} series (counters, 2 tags)"),
        Unit::Bytes,
        r.big_bytes,
        "≤ 250 B",
        Check::AtMost(250.0),
    );
    table.add(
        &format!("RSS after two scrapes (first text, first OpenMetrics), {big_label} series"),
        Unit::MiB,
        r.big_rss_after_scrape,
        "",
        Check::None,
    );
    table.add(
        &format!("peak RSS (VmHWM), {big_label} series, after all scrapes"),
        Unit::MiB,
        r.hwm,
        "",
        Check::None,
    );
    table.add(
        &format!(
            "new-series rate with no kernel drop (of {}k lines/s tried first)",
            s.fill_rate / 1000.0
        ),
        Unit::Rate,
        r.fill_rate,
        "",
        Check::None,
    );
    let scrapes = [
        (
            format!("{mid_k}k"),
            "text 0.0.4",
            r.mid_text,
            r.mid_text_cold,
            r.mid_text_size,
            true,
        ),
        (
            format!("{mid_k}k"),
            "OpenMetrics",
            r.mid_om,
            r.mid_om_cold,
            r.mid_om_size,
            true,
        ),
        (
            big_label.clone(),
            "text 0.0.4",
            r.big_text,
            r.big_text_cold,
            r.big_text_size,
            false,
        ),
        (
            big_label.clone(),
            "OpenMetrics",
            r.big_om,
            r.big_om_cold,
            r.big_om_size,
            false,
        ),
    ];
    for (series, format, warm, cold, sizes, targeted) in scrapes {
        let (target_text, check) = if targeted {
            ("≤ 100 ms", Check::AtMost(100.0))
        } else {
            ("", Check::None)
        };
        table.add(
            &format!("scrape {series} series, {format}, uncompressed (median of 3 in a row)"),
            Unit::Millis,
            warm,
            target_text,
            check,
        );
        table.add(
            &format!("first scrape after the {series} series appeared, {format}"),
            Unit::Millis,
            cold,
            "",
            Check::None,
        );
        table.add(
            &format!("scrape {series} series, {format}, size"),
            Unit::MiB,
            sizes,
            "",
            Check::None,
        );
    }
    table.add(
        &format!("tallyd CPU per line, 20 lines/datagram at {k}k lines/s over {big_label} series"),
        Unit::Micros,
        r.ingest_us,
        "",
        Check::None,
    );
    table.add(
        &format!("loss at {k}k lines/s over {big_label} series, no scrape"),
        Unit::Percent,
        r.ingest_loss,
        "",
        Check::None,
    );
    table.add(
        &format!("scrape {big_label} series while ingesting {k}k lines/s (text)"),
        Unit::Millis,
        r.load_scrape,
        "≤ 1000 ms",
        Check::AtMost(1000.0),
    );
    table.add(
        &format!("loss while scraping {big_label} series at {k}k lines/s"),
        Unit::Percent,
        r.load_loss,
        "0 %",
        Check::AtMost(0.0),
    );
    table.add(
        "ingest rate achieved during that scrape",
        Unit::Rate,
        r.load_rate,
        "",
        Check::None,
    );
    let hot_k = s.hot_series.min(s.big_series) / 1000;
    table.add(
        &format!(
            "scrape {big_label} series while ingesting {k}k lines/s over {hot_k}k hot series (text)"
        ),
        Unit::Millis,
        r.hot_scrape,
        "≤ 1000 ms",
        Check::AtMost(1000.0),
    );
    table.add(
        &format!("loss while scraping {big_label} series at {k}k lines/s over {hot_k}k hot series"),
        Unit::Percent,
        r.hot_loss,
        "0 %",
        Check::AtMost(0.0),
    );
}

fn main() {
    if !common::enter("E2E", "e2e") {
        return;
    }
    let s = Settings::from_env();
    // The bench itself (the scraper) stays off the daemon's CPU.
    pin_self(&s.base.loader_cpu);
    let started = Instant::now();
    let load_before = load_average();
    eprintln!(
        "e2e: tallyd {} and {}; daemon on CPU {}, loader on CPU {}, nice {}; {} run(s) per figure; groups: {:?}",
        s.base.tallyd.display(),
        s.base.loader.display(),
        s.base.daemon_cpu,
        s.base.loader_cpu,
        s.base.nice,
        s.runs,
        s.groups
    );
    let mut table = Table::new("e2e");
    let groups: [(&str, Group); 7] = [
        ("cpu20", |s, table| cpu_group(s, table, 20)),
        ("cpu1", |s, table| cpu_group(s, table, 1)),
        ("flat", flat_group),
        ("sweep", sweep_group),
        ("transports", transports_group),
        ("shared", shared_group),
        ("big", big_group),
    ];
    for (name, group) in groups {
        if s.wants(name) {
            group(&s, &mut table);
        }
    }
    common::print_table(
        "tallyd end-to-end benchmark",
        "",
        &s.base,
        s.runs,
        started,
        &load_before,
        &table,
    );
}
