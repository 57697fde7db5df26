//! Wiring: load the configuration, bind every socket, start the receivers and the HTTP server,
//! then serve until SIGTERM or SIGINT, reloading on SIGHUP.
//!
//! Everything that can fail for an operator's reason (a bad file, a port in use) fails before
//! anything starts, with a message naming the culprit: exit code 2 for configuration, 1 for the
//! rest. Readiness (`/-/ready`, systemd's `READY=1`) is announced once every listener is bound.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Cli, Command, Config, ConfigError};
use crate::definitions::Source;
use crate::http::{self, HttpState, Lifecycle};
use crate::ingest::SharedRules;
use crate::listen;
use crate::record::Recorder;
use crate::registry::{self, Registry};
use crate::telemetry::{ReloadOutcome, Telemetry};

/// How long shutdown waits for the scrape in flight and the receive threads.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Runs tallyd as the command line asks; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    if let Some(Command::ImportMapping { file }) = &cli.command {
        return import_mapping(file);
    }
    let config = match Config::from_cli(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tallyd: {e}");
            return ExitCode::from(2);
        }
    };
    let findings = lint_findings(&cli);
    if cli.check_config {
        for finding in &findings {
            println!("{}: {finding}", finding.severity);
        }
        match &cli.config {
            Some(path) => println!("{}: configuration is valid", path.display()),
            None => println!("no --config given: the built-in defaults are valid"),
        }
        return ExitCode::SUCCESS;
    }
    let log = init_logging(&config.log.level);
    for finding in &findings {
        tracing::warn!("naming lint: {}: {finding}", finding.severity);
    }
    match serve(cli, config, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("tallyd: {message}");
            ExitCode::from(1)
        }
    }
}

/// What the naming lint says about the config file (nothing without one).
fn lint_findings(cli: &Cli) -> Vec<crate::lint::LintWarning> {
    cli.config
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .map(|text| crate::lint::lint(&text))
        .unwrap_or_default()
}

/// `tallyd import-mapping FILE`: the converted config on stdout, warnings on stderr.
fn import_mapping(file: &std::path::Path) -> ExitCode {
    let yaml = match std::fs::read_to_string(file) {
        Ok(yaml) => yaml,
        Err(e) => {
            eprintln!("tallyd: cannot read {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match crate::import::import_mapping(&yaml) {
        Ok(imported) => {
            for warning in &imported.warnings {
                eprintln!("tallyd import-mapping: warning: {warning}");
            }
            print!("{}", imported.toml);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tallyd import-mapping: {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}

fn init_logging(level: &str) -> LogHandle {
    // The filter was validated with the configuration.
    let (filter, handle) = reload::Layer::new(EnvFilter::new(level));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour codes only for a person at a terminal, not for journald or a file.
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    handle
}

fn serve(cli: Cli, config: Config, log: LogHandle) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tallyd-http")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    // Handlers first: a signal that arrives while tallyd starts (a `systemctl reload` right
    // after `start`) must be handled, not take the default action and kill the process.
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::install()?
    };

    let udp = listen::bind(&config.udp_options()).map_err(|e| e.to_string())?;
    let http_listener = bind_http(config.http.listen)?;
    let mut udp_addrs: Vec<String> = Vec::new();
    for listener in &udp {
        let addr = listener.local_addr().to_string();
        if !udp_addrs.contains(&addr) {
            udp_addrs.push(addr);
        }
    }
    let http_addr = http_listener
        .local_addr()
        .map_err(|e| format!("cannot read the HTTP listener's address: {e}"))?;

    let registry = Arc::new(Registry::new(config.registry_settings()));
    let recorder = Arc::new(Recorder::new(Arc::clone(&registry), Arc::default()));
    recorder
        .replace_definitions(Source::File, config.definitions())
        .map_err(|e| e.to_string())?;
    let telemetry = Arc::new(Telemetry::default());
    let stop_receivers = Arc::new(AtomicBool::new(false));
    let ingest = config.ingest_options(config.rule_set().map_err(|e| e.to_string())?);
    let rules = Arc::clone(&ingest.rules);
    let receivers = listen::spawn_receivers(
        udp,
        Arc::clone(&recorder),
        &telemetry,
        ingest,
        Arc::clone(&stop_receivers),
    )
    .map_err(|e| format!("cannot start the UDP receivers: {e}"))?;
    let housekeeping =
        registry::spawn_housekeeping(Arc::clone(&registry), Arc::clone(&stop_receivers))
            .map_err(|e| format!("cannot start the housekeeping thread: {e}"))?;

    // The daemon keeps a sender, so the receiver stays open whether the API is on or off.
    let (lifecycle, lifecycle_requests) = tokio::sync::mpsc::channel::<Lifecycle>(8);
    let result = runtime.block_on(async {
        let ready = Arc::new(AtomicBool::new(false));
        let state = Arc::new(HttpState {
            registry: Arc::clone(&registry),
            telemetry: Arc::clone(&telemetry),
            ready: Arc::clone(&ready),
            options: config.http_options(),
            exposition: RwLock::new(config.exposition_options()),
            lifecycle: config.http.enable_lifecycle.then(|| lifecycle.clone()),
        });
        let listener = tokio::net::TcpListener::from_std(http_listener)
            .map_err(|e| format!("cannot use the HTTP listener: {e}"))?;
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(http::serve(listener, Arc::clone(&state), async {
            let _ = http_stopped.await;
        }));

        ready.store(true, Ordering::SeqCst);
        notify_systemd("READY=1");
        // Tests and scripts read the bound ports (port 0 picks one) from this line.
        tracing::info!(
            "tallyd {} ready: udp {} http {http_addr}",
            env!("CARGO_PKG_VERSION"),
            udp_addrs.join(" ")
        );

        let reloader = Reloader {
            cli: &cli,
            log: &log,
            state: &state,
            recorder: &recorder,
            rules: &rules,
        };
        signals.serve(lifecycle_requests, reloader, config).await;

        tracing::info!("shutting down");
        notify_systemd("STOPPING=1");
        ready.store(false, Ordering::SeqCst);
        let _ = stop_http.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(Ok(Err(e))) => tracing::warn!("HTTP server ended with an error: {e}"),
            Err(_) => tracing::warn!("HTTP server did not stop within {SHUTDOWN_GRACE:?}"),
            _ => {}
        }
        Ok::<_, String>(())
    });
    stop_receivers.store(true, Ordering::SeqCst);
    receivers.join();
    let _ = housekeeping.join();
    // The runtime may still hold a blocking render; don't wait on it forever.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

fn bind_http(addr: SocketAddr) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?;
    Ok(listener)
}

/// The signals tallyd acts on.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
    hangup: Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        let install =
            |kind| signal(kind).map_err(|e| format!("cannot install a signal handler: {e}"));
        Ok(Signals {
            terminate: install(SignalKind::terminate())?,
            interrupt: install(SignalKind::interrupt())?,
            hangup: install(SignalKind::hangup())?,
        })
    }

    /// Serves signals and lifecycle requests until SIGTERM, SIGINT or `POST /-/quit`; SIGHUP
    /// and `POST /-/reload` reload the configuration.
    async fn serve(
        mut self,
        mut lifecycle: tokio::sync::mpsc::Receiver<Lifecycle>,
        reloader: Reloader<'_>,
        mut config: Config,
    ) {
        loop {
            let reply = tokio::select! {
                _ = self.terminate.recv() => return,
                _ = self.interrupt.recv() => return,
                _ = self.hangup.recv() => None,
                request = lifecycle.recv() => match request {
                    Some(Lifecycle::Reload(reply)) => Some(reply),
                    Some(Lifecycle::Quit) | None => {
                        tracing::info!("shutdown requested over HTTP (/-/quit)");
                        return;
                    }
                },
            };
            notify_systemd("RELOADING=1");
            let outcome;
            (config, outcome) = reloader.reload(config);
            notify_systemd("READY=1");
            if let Some(reply) = reply {
                // The requester may have gone; the reload stands either way.
                let _ = reply.send(outcome);
            }
        }
    }
}

/// What a reload reads and what it changes.
struct Reloader<'a> {
    cli: &'a Cli,
    log: &'a LogHandle,
    state: &'a HttpState,
    recorder: &'a Recorder,
    rules: &'a SharedRules,
}

impl Reloader<'_> {
    /// Loads the configuration again and applies what can change while running (log level,
    /// exposition, mapping rules, metric definitions). A file that fails keeps `current` in
    /// force; the error says why.
    fn reload(&self, current: Config) -> (Config, Result<(), String>) {
        let Reloader {
            cli,
            log,
            state,
            recorder,
            rules,
        } = *self;
        let loaded = Config::from_cli(cli).and_then(|new| {
            let rule_set = new.rule_set().map_err(|e| ConfigError::Invalid {
                path: cli.config.clone().unwrap_or_default(),
                message: e.to_string(),
            })?;
            Ok((new, rule_set))
        });
        let (new, rule_set) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(
                    "configuration reload failed, keeping the running configuration: {e}"
                );
                state.telemetry.record_reload(ReloadOutcome::Failure);
                return (current, Err(e.to_string()));
            }
        };
        if new.metrics != current.metrics {
            // A name another source (the API) defines refuses the whole reload, as a bad file
            // does; nothing has been applied yet at this point.
            let reset = match recorder.replace_definitions(Source::File, new.definitions()) {
                Ok(reset) => reset,
                Err(e) => {
                    tracing::error!(
                        "configuration reload failed, keeping the running configuration: {e}"
                    );
                    state.telemetry.record_reload(ReloadOutcome::Failure);
                    return (current, Err(e.to_string()));
                }
            };
            if !reset.is_empty() {
                tracing::warn!(
                    metrics = ?reset,
                    "metric definitions changed: these metrics start afresh under the new \
                     definition (their series were removed)"
                );
            }
        }
        if new.mapping != current.mapping {
            rules.replace(rule_set);
            tracing::info!(rules = new.mapping.len(), "mapping rules replaced");
        }
        if let Err(e) = log.reload(EnvFilter::new(&new.log.level)) {
            tracing::warn!("cannot apply the new log level: {e}");
        }
        *state.exposition.write() = new.exposition_options();
        let pending = current.restart_required_changes(&new);
        if !pending.is_empty() {
            tracing::warn!(
                sections = ?pending,
                "configuration reloaded; changes in these sections take effect on restart"
            );
        } else {
            tracing::info!("configuration reloaded");
        }
        state.telemetry.record_reload(ReloadOutcome::Success);
        (new, Ok(()))
    }
}

/// Tells systemd about a state change (`Type=notify`); a no-op outside systemd.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(abstract_name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            socket.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({state}): {e}");
    }
}
