//! The process around the library: parse the flags, load the configuration, set up logging,
//! bind every socket, translate signals, then [`runtime::run`] until SIGTERM or SIGINT; SIGHUP
//! reloads. Subcommands (`import-mapping`) and `--check-config` do their job and exit.
//!
//! Everything that can fail for an operator's reason (a bad file, a port in use) fails before
//! anything starts, with a message naming the culprit: exit code 2 for configuration (and for
//! sockets systemd passed that the configuration does not match), 1 for the rest. Readiness
//! (`/-/ready`, systemd's `READY=1`) is announced once every listener is bound.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{Cli, Command, Settings, TokenCommand};
use crate::http::Lifecycle;
use crate::listen::{OpenError, Passed};
use crate::runtime::{self, Control, Listeners};

/// How long the process waits for work still on the async runtime (a render in flight).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

type LogHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// Runs tallyd as the command line asks; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match &cli.command {
        Some(Command::ImportMapping { file }) => return import_mapping(file),
        Some(Command::Token(TokenCommand::New { tenant, scopes, id })) => {
            let id = id.clone().unwrap_or_else(|| {
                format!("token-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
            });
            let (secret, stanza) = crate::tokens::new_token(&id, tenant, scopes);
            // The stanza (stdout) goes into the config file; the secret (stderr) must not.
            eprintln!(
                "secret: {secret}\n(shown once: give it to the client as a Bearer token, or as \
                 the Basic-auth password of user {id:?}; the config file holds only its SHA-256)"
            );
            print!("{stanza}");
            return ExitCode::SUCCESS;
        }
        Some(Command::History(_)) | None => {}
    }
    let settings = match Settings::from_cli(&cli) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("tallyd: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::History(command)) = &cli.command {
        return crate::history::run_command(command, &settings);
    }
    if cli.check_config {
        for finding in &settings.lint {
            println!("{}: {finding}", finding.severity);
        }
        for notice in &settings.deprecations {
            println!("deprecated: {notice}");
        }
        match &cli.config {
            Some(path) => println!("{}: configuration is valid", path.display()),
            None => println!("no --config given: the built-in defaults are valid"),
        }
        return ExitCode::SUCCESS;
    }
    let log = init_logging(&settings.log_level);
    for finding in &settings.lint {
        tracing::warn!("naming lint: {}: {finding}", finding.severity);
    }
    for notice in &settings.deprecations {
        tracing::warn!("{notice}");
    }
    raise_open_files_limit();
    // SAFETY: no other thread runs yet (the async runtime starts in `serve`), and nothing else
    // in the process owns the descriptors systemd passed.
    let passed = match unsafe { Passed::from_env() } {
        Ok(passed) => passed,
        Err(e) => return failed(&e.to_string(), 2),
    };
    match serve(cli, settings, log, passed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failed::Activation(message)) => failed(&message, 2),
        Err(Failed::Other(message)) => failed(&message, 1),
    }
}

/// Why `serve` stopped tallyd from starting or running.
enum Failed {
    /// The sockets systemd passed do not match the listen addresses (exit code 2).
    Activation(String),
    /// Anything else (exit code 1).
    Other(String),
}

impl From<String> for Failed {
    fn from(message: String) -> Self {
        Failed::Other(message)
    }
}

/// Raises the soft limit on open files to the hard one, as daemons that hold many connections
/// should (the soft limit, often 1024 outside systemd, is kept low for programs that `select`;
/// tallyd does not). The TCP listeners fit their caps to whatever limit results.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let soft = limit.rlim_cur;
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                tracing::debug!(
                    "raised the open-files limit from {soft} to {}",
                    limit.rlim_max
                );
            }
        }
    }
}

fn failed(message: &str, code: u8) -> ExitCode {
    tracing::error!("{message}");
    eprintln!("tallyd: {message}");
    ExitCode::from(code)
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

/// Most async worker threads (HTTP, the API, scrapes); the StatsD receivers and the store's
/// writer have threads of their own. Never more than the CPUs tallyd may use: a second worker
/// on a single CPU only costs, as tokio wakes an idle worker to steal each task another makes
/// ready, so every request paid for an `eventfd` write, a wake-up and a context switch of a
/// thread that found nothing to do.
const HTTP_WORKERS: usize = 2;

fn serve(cli: Cli, settings: Settings, log: LogHandle, passed: Passed) -> Result<(), Failed> {
    let cpus = crate::priority::usable_cpus();
    let workers = HTTP_WORKERS.min(cpus);
    tracing::info!(workers, usable_cpus = cpus, "async runtime");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("tallyd-http")
        .on_thread_start(crate::priority::background_thread)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    // Handlers first: a signal that arrives while tallyd starts (a `systemctl reload` right
    // after `start`) must be handled, not take the default action and kill the process.
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::install()?
    };
    let listeners = Listeners::open(&settings, passed).map_err(|e| match e {
        OpenError::Activation(e) => Failed::Activation(e.to_string()),
        OpenError::Io(e) => Failed::Other(e.to_string()),
    })?;
    let shutdown = CancellationToken::new();
    let requests = mpsc::channel(8);
    let control = Control {
        shutdown: shutdown.clone(),
        requests: (requests.0.clone(), requests.1),
        reload: Box::new(move || Settings::from_cli(&cli)),
        set_log_level: Box::new(move |level| {
            log.reload(EnvFilter::new(level)).map_err(|e| e.to_string())
        }),
    };
    runtime.spawn(signals.forward(shutdown, requests.0));
    let result = runtime.block_on(runtime::run(listeners, settings, control));
    // The runtime may still hold a blocking render; don't wait on it forever.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    Ok(result?)
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

    /// SIGTERM and SIGINT cancel `shutdown`; SIGHUP asks for a reload, as `POST /-/reload`
    /// does (nobody waits for its answer: the log has it).
    async fn forward(mut self, shutdown: CancellationToken, requests: mpsc::Sender<Lifecycle>) {
        loop {
            tokio::select! {
                _ = self.terminate.recv() => break,
                _ = self.interrupt.recv() => break,
                _ = shutdown.cancelled() => return,
                _ = self.hangup.recv() => {
                    let (reply, _outcome) = oneshot::channel();
                    if requests.send(Lifecycle::Reload(reply)).await.is_err() {
                        return;
                    }
                }
            }
        }
        shutdown.cancel();
    }
}
