//! Running tallyd as a library: bind its sockets ([`Listeners::bind`], or [`Listeners::open`]
//! with the sockets systemd passed), then [`run`] them with a set of [`Settings`] until a
//! [`CancellationToken`] is cancelled. The binary (`daemon`) adds only what belongs to a
//! process: flags, logging, signals and exit codes. Tests bind `127.0.0.1:0`, run tallyd
//! in-process and cancel their own token.
//!
//! What runs: one receive thread per UDP socket, TCP listen address and Unix socket (`listen`), a housekeeping thread (registry
//! clock and expiry), the relay's sender thread when `[relay]` has targets, the `[[remote_write]]` tasks, and the HTTP server on the caller's tokio runtime. One token stops them
//! all: the receive threads notice it within their receive timeout, the server drains its
//! connections (bounded by `http::SHUTDOWN_GRACE`), then `run` joins the threads and returns.
//!
//! Reloads ([`Lifecycle::Reload`], sent by SIGHUP or `POST /-/reload`) build new settings with
//! the caller's [`Control::reload`] and apply what can change while running: mapping rules,
//! metric definitions, exposition options, the log filter, the relay's targets, `[push]` and
//! the `[[remote_write]]` endpoints (those that changed restart; see `remote_write`). A
//! configuration that fails leaves the running one in force, and says why.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::custom::CustomMetrics;
use crate::definitions::{Definitions, Source};
use crate::http::api::{Access, ApiState, StatsdIntake};
use crate::http::{self, HttpState, Lifecycle};
use crate::ingest::{IngestOptions, SharedRules};
use crate::listen::{
    self, BoundListener, Endpoint, Listener, OpenError, Passed, Role, tcp, udp, unix,
};
use crate::push::Pushes;
use crate::record::Recorder;
use crate::registry::{self, Registry};
use crate::relay::Relay;
use crate::remote_write::RemoteWrite;
use crate::remote_write::gap::{FirstOf, MatihHistory};
use crate::remote_write::tier_gap::TierHistory;
use crate::store::Store;
use crate::telemetry::{ReloadOutcome, Telemetry};

/// How long shutdown waits for the HTTP server to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Every socket tallyd serves, bound and not yet read.
#[derive(Debug)]
pub struct Listeners {
    pub udp: Vec<BoundListener>,
    pub tcp: Vec<tcp::TcpListener>,
    /// Unix sockets; each removes its file when dropped.
    pub unix: Vec<unix::UnixListener>,
    pub http: std::net::TcpListener,
}

impl Listeners {
    /// Binds every address the settings name, so that a port in use is reported (with its
    /// address) before anything starts. A `systemd:NAME` address fails: nothing was passed.
    pub fn bind(settings: &Settings) -> Result<Listeners, String> {
        Listeners::open(settings, Passed::none()).map_err(|e| e.to_string())
    }

    /// Binds every address the settings name and adopts the sockets systemd passed for every
    /// `systemd:NAME`; a passed socket that no listen address claims is refused first, since
    /// nobody would read what clients send to it.
    pub fn open(settings: &Settings, mut passed: Passed) -> Result<Listeners, OpenError> {
        passed.refuse_unclaimed(settings.systemd_names().map(|(_, name)| name))?;
        let udp = udp::open(&settings.udp, &mut passed)?;
        let mut tcp = tcp::open(&settings.tcp, &mut passed)?;
        tcp::fit_descriptor_limit(&mut tcp, settings.http.max_connections);
        let unix = unix::open(&settings.unix, &mut passed)?;
        let http = match &settings.http_listen {
            Endpoint::Bind(addr) => std::net::TcpListener::bind(addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen for HTTP on {addr}: {e}"))
            })?,
            Endpoint::Systemd(name) => {
                let listener = std::net::TcpListener::from(passed.take_one(name, Role::Http)?);
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!("serving HTTP on {addr} (socket passed by systemd)");
                }
                listener
            }
        };
        http.set_nonblocking(true)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot use the HTTP listener: {e}")))?;
        Ok(Listeners {
            udp,
            tcp,
            unix,
            http,
        })
    }

    /// The UDP addresses bound (with the ports the kernel chose for port 0), each once.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for listener in &self.udp {
            if !addrs.contains(&listener.local_addr()) {
                addrs.push(listener.local_addr());
            }
        }
        addrs
    }

    /// The TCP addresses bound (with the ports the kernel chose for port 0).
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp.iter().map(tcp::TcpListener::local_addr).collect()
    }

    /// The Unix socket paths bound.
    pub fn unix_paths(&self) -> Vec<PathBuf> {
        self.unix.iter().map(|u| u.path().to_owned()).collect()
    }

    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }
}

/// Builds the settings a reload puts in force.
pub type ReloadSettings = Box<dyn FnMut() -> Result<Settings, ConfigError> + Send>;

/// Puts a new log filter in force.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// How the caller steers a running tallyd.
pub struct Control {
    /// Cancelled to stop; `run` cancels it itself on `POST /-/quit`.
    pub shutdown: CancellationToken,
    /// Reload and quit requests (SIGHUP from the binary, `/-/reload` and `/-/quit` from HTTP).
    /// `run` hands a clone of the sender to the HTTP server when `[http] enable_lifecycle` is
    /// on.
    pub requests: (mpsc::Sender<Lifecycle>, mpsc::Receiver<Lifecycle>),
    /// Builds the settings a reload puts in force (the binary reads its file again).
    pub reload: ReloadSettings,
    /// Puts a new log filter in force (the binary owns the subscriber); an error is logged.
    pub set_log_level: SetLogLevel,
}

impl Control {
    /// A control whose reloads fail (there is no file to read again) and which leaves logging
    /// alone: what a test needs.
    pub fn new(shutdown: CancellationToken) -> Control {
        Control {
            shutdown,
            requests: mpsc::channel(8),
            reload: Box::new(|| {
                Err(ConfigError::Invalid {
                    path: "(none)".into(),
                    message: "this tallyd has no configuration file to reload".into(),
                })
            }),
            set_log_level: Box::new(|_| Ok(())),
        }
    }
}

/// The parts a reload changes.
struct Running {
    settings: Settings,
    state: Arc<HttpState>,
    recorder: Arc<Recorder>,
    rules: Arc<SharedRules>,
    /// The relay, when `[relay]` had targets at start.
    relay: Option<Relay>,
    /// The `[[remote_write]]` endpoints (none running when there are none).
    remote_write: RemoteWrite,
    /// The metrics sampled into history.
    history: Arc<crate::history::History>,
}

/// Serves `listeners` with `settings` until `control.shutdown` is cancelled (or `/-/quit`),
/// then stops everything it started and returns. Errors are what kept it from starting.
pub async fn run(
    listeners: Listeners,
    settings: Settings,
    mut control: Control,
) -> Result<(), String> {
    let shutdown = control.shutdown.clone();
    let udp_addrs = listeners.udp_addrs();
    let tcp_addrs = listeners.tcp_addrs();
    let unix_paths = listeners.unix_paths();
    let http_addr = listeners
        .http_addr()
        .map_err(|e| format!("cannot read the HTTP listener's address: {e}"))?;

    let http_listener = tokio::net::TcpListener::from_std(listeners.http)
        .map_err(|e| format!("cannot use the HTTP listener: {e}"))?;
    let registry = Arc::new(Registry::new(settings.registry.clone()));
    let recorder = Arc::new(Recorder::new(
        Arc::clone(&registry),
        Arc::new(Definitions::default()),
    ));
    recorder
        .replace_definitions(Source::File, settings.definitions.clone())
        .map_err(|e| e.to_string())?;
    let telemetry = Arc::new(Telemetry::default());
    let rules = Arc::new(SharedRules::new(Arc::clone(&settings.rules)));
    let relay = match settings.relay.targets.is_empty() {
        true => None,
        false => Some(Relay::start(&settings.relay)?),
    };
    let mut ingest = settings.ingest_options(Arc::clone(&rules));
    // Before the receivers start: mapping rules with history register families as lines come.
    let history = crate::history::History::new(&settings.history);
    ingest.history = Some(Arc::clone(history.rule_families()));
    telemetry.set_history_rules(Arc::clone(history.rule_families()));
    if let Some(relay) = &relay {
        telemetry.set_relay(Arc::clone(relay.hub().stats()));
        ingest.relay = Some(relay.hub().clone());
    }
    let sockets = (listeners.udp.into_iter().map(Listener::from))
        .chain(listeners.tcp.into_iter().map(Listener::from))
        .chain(listeners.unix.into_iter().map(Listener::from));
    let receivers = listen::spawn_receivers(
        sockets,
        Arc::clone(&recorder),
        &telemetry,
        ingest.clone(),
        &shutdown,
    )
    .map_err(|e| format!("cannot start the receivers: {e}"))?;
    let housekeeping = match registry::spawn_housekeeping(Arc::clone(&registry), shutdown.clone()) {
        Ok(thread) => thread,
        Err(e) => {
            // Nothing may outlive a failed start.
            shutdown.cancel();
            receivers.join();
            return Err(format!("cannot start the housekeeping thread: {e}"));
        }
    };

    let api = match start_api(&settings, &recorder, &telemetry, ingest, http_addr) {
        Ok(api) => api,
        Err(e) => {
            shutdown.cancel();
            receivers.join();
            let _ = housekeeping.join();
            return Err(e);
        }
    };
    let retention = tokio::spawn(expire_points(Arc::clone(&api), shutdown.clone()));
    // Before the sampler's first tick: the families rules kept history for before a restart
    // answer from the store at once, not from the next line that names them.
    match api.custom.store().reader().metrics() {
        Ok(stored) => {
            let restored = history.restore(&stored, &settings.rules);
            if restored > 0 {
                tracing::info!(restored, "history: families mapping rules keep history for");
            }
        }
        Err(e) => tracing::warn!(
            "history: the families mapping rules kept history for are not known until their \
             next line: {e}"
        ),
    }
    api.custom.set_history(Arc::clone(&history));
    let sampling = tokio::spawn(crate::history::run(
        Arc::clone(&history),
        Arc::clone(&registry),
        api.custom.store().clone(),
        shutdown.clone(),
    ));
    let push_expiry = tokio::spawn(crate::push::expire_groups(
        Arc::clone(&api.push),
        shutdown.clone(),
    ));
    let remote_write = match RemoteWrite::start(
        &settings.remote_write,
        &settings.data_dir,
        Some(Arc::new(FirstOf(vec![
            Arc::new(MatihHistory {
                custom: Arc::clone(&api) as Arc<dyn AsRef<CustomMetrics> + Send + Sync>,
            }),
            Arc::new(TierHistory {
                history: Arc::clone(&history),
                store: api.custom.store().clone(),
            }),
        ]))),
        &registry,
        &telemetry.remote_write,
    ) {
        Ok(remote_write) => remote_write,
        Err(e) => {
            shutdown.cancel();
            receivers.join();
            let _ = housekeeping.join();
            let _ = retention.await;
            let _ = push_expiry.await;
            return Err(format!("cannot start remote-write: {e}"));
        }
    };

    let ready = Arc::new(AtomicBool::new(false));
    // Started here, on the caller's thread (the daemon's main thread), not on a worker: they
    // take its priority (`crate::priority`).
    let renderers = http::Renderers::start(settings.http.max_concurrent_scrapes)
        .map_err(|e| format!("cannot start the /metrics render threads: {e}"))?;
    let state = Arc::new(HttpState {
        registry: Arc::clone(&registry),
        telemetry: Arc::clone(&telemetry),
        ready: Arc::clone(&ready),
        options: settings.http.clone(),
        exposition: RwLock::new(settings.exposition),
        lifecycle: settings
            .enable_lifecycle
            .then(|| control.requests.0.clone()),
        api: Some(Arc::clone(&api)),
        renderers,
    });
    // Ready before the server runs: a request already waiting in the listener's backlog (a
    // test connects as soon as the port is bound) must not be answered 503 by a server that
    // started before this line did.
    ready.store(true, Ordering::SeqCst);
    let server = tokio::spawn(http::serve(
        http_listener,
        Arc::clone(&state),
        shutdown.clone(),
    ));
    notify_systemd("READY=1");
    // Tests and scripts read the bound ports (port 0 picks one) from this line; the TCP and
    // Unix listeners, when there are any, come after the HTTP address.
    let udp: Vec<String> = udp_addrs.iter().map(ToString::to_string).collect();
    let mut others = String::new();
    if !tcp_addrs.is_empty() {
        let tcp: Vec<String> = tcp_addrs.iter().map(ToString::to_string).collect();
        others.push_str(&format!(" tcp {}", tcp.join(" ")));
    }
    if !unix_paths.is_empty() {
        let unix: Vec<String> = unix_paths.iter().map(|p| p.display().to_string()).collect();
        others.push_str(&format!(" unix {}", unix.join(" ")));
    }
    tracing::info!(
        "tallyd {} ready: udp {} http {http_addr}{others}",
        env!("CARGO_PKG_VERSION"),
        udp.join(" ")
    );

    let mut running = Running {
        settings,
        state,
        recorder,
        rules,
        relay,
        remote_write,
        history,
    };
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            request = control.requests.1.recv() => request,
        };
        match request {
            Some(Lifecycle::Reload(reply)) => {
                notify_systemd("RELOADING=1");
                let outcome = running.reload(&mut control).await;
                notify_systemd("READY=1");
                // The requester may have gone; the reload stands either way.
                let _ = reply.send(outcome);
            }
            Some(Lifecycle::Quit) => {
                tracing::info!("shutdown requested over HTTP (/-/quit)");
                shutdown.cancel();
            }
            // The control holds a sender, so this does not happen; stop waiting on it if it does.
            None => shutdown.cancelled().await,
        }
    }

    tracing::info!("shutting down");
    notify_systemd("STOPPING=1");
    ready.store(false, Ordering::SeqCst);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Err(e))) => tracing::warn!("HTTP server ended with an error: {e}"),
        Err(_) => tracing::warn!("HTTP server did not stop within {SHUTDOWN_GRACE:?}"),
        _ => {}
    }
    let _ = retention.await;
    let _ = push_expiry.await;
    let _ = sampling.await;
    running.remote_write.stop().await;
    // The receive threads notice the token within their receive timeout (200 ms). The relay
    // stops after them, so it sends their last lines.
    let relay = running.relay.take();
    tokio::task::spawn_blocking(move || {
        receivers.join();
        if let Some(relay) = relay {
            relay.stop();
        }
        let _ = housekeeping.join();
    })
    .await
    .map_err(|e| format!("joining the receive threads failed: {e}"))?;
    Ok(())
}

impl Running {
    /// Builds the settings again and applies what can change while running (log level,
    /// exposition, mapping rules, metric definitions). Settings that fail keep the running
    /// ones in force; the error says why.
    async fn reload(&mut self, control: &mut Control) -> Result<(), String> {
        let telemetry = &self.state.telemetry;
        let failed = |e: String| {
            tracing::error!("configuration reload failed, keeping the running configuration: {e}");
            telemetry.record_reload(ReloadOutcome::Failure);
            Err(e)
        };
        let new = match (control.reload)() {
            Ok(new) => new,
            Err(e) => return failed(e.to_string()),
        };
        // Relay targets are resolved again at every reload (a name may have moved); one that
        // cannot be refuses the reload, as a bad file does. They apply with the rest, below.
        let relay_targets = match &self.relay {
            Some(relay) if !new.relay.targets.is_empty() => {
                match relay.resolve(&new.relay.targets) {
                    Ok(targets) => Some(targets),
                    Err(e) => return failed(e),
                }
            }
            _ => None,
        };
        // New remote-write endpoints are built (their clients, TLS roots) before anything is
        // applied, so one that cannot be refuses the reload; they start with the rest, below.
        let remote_write = match self.settings.remote_write != new.remote_write {
            true => match self.remote_write.prepare(&new.remote_write) {
                Ok(prepared) => Some(prepared),
                Err(e) => return failed(format!("[[remote_write]] {e}")),
            },
            false => None,
        };
        // A new query backend is built (its client, TLS roots) before anything is applied too.
        let query = match (&self.state.api, new.query != self.settings.query) {
            (Some(api), true) => match api.query.prepare(&new.query) {
                Ok(prepared) => Some(prepared),
                Err(e) => return failed(e),
            },
            _ => None,
        };
        // Definitions first: a name another source (the API) defines refuses the whole
        // reload, as a bad file does, before anything else is applied.
        if new.definitions != self.settings.definitions {
            match self
                .recorder
                .replace_definitions(Source::File, new.definitions.clone())
            {
                Ok(reset) if !reset.is_empty() => tracing::warn!(
                    metrics = ?reset,
                    "metric definitions changed: these metrics start afresh under the new \
                     definition (their series were removed)"
                ),
                Ok(_) => {}
                Err(e) => return failed(e.to_string()),
            }
        }
        if let (Some(relay), Some(targets)) = (&self.relay, relay_targets) {
            relay.replace_targets(targets);
        }
        if let Some(prepared) = remote_write {
            self.remote_write.replace(prepared).await;
            tracing::info!(
                endpoints = new.remote_write.len(),
                "remote-write endpoints replaced"
            );
        }
        if new.file.mapping != self.settings.file.mapping {
            self.rules.replace(Arc::clone(&new.rules));
            self.history.rule_families().rules_replaced(&new.rules);
            tracing::info!(rules = new.file.mapping.len(), "mapping rules replaced");
        }
        if let Err(e) = (control.set_log_level)(&new.log_level) {
            tracing::warn!("cannot apply the new log level: {e}");
        }
        for notice in &new.deprecations {
            tracing::warn!("{notice}");
        }
        self.history.replace(&new.history);
        *self.state.exposition.write() = new.exposition;
        if let Some(api) = &self.state.api {
            api.access.replace(new.tokens.clone());
            api.custom.set_options(new.api.clone());
            api.push.set_options(new.push.clone());
            if let Some(prepared) = query {
                api.query.install(prepared);
            }
        }
        let pending = self.settings.restart_required_changes(&new);
        if pending.is_empty() {
            tracing::info!("configuration reloaded");
        } else {
            tracing::warn!(
                sections = ?pending,
                "configuration reloaded; changes in these sections take effect on restart"
            );
        }
        telemetry.record_reload(ReloadOutcome::Success);
        self.settings = new;
        Ok(())
    }
}

/// Remote-write resends gaps of the API's metrics from their points, through the API's state.
impl AsRef<CustomMetrics> for ApiState {
    fn as_ref(&self) -> &CustomMetrics {
        &self.custom
    }
}

/// Opens the store and the custom-metrics service over it, and says who the API answers.
fn start_api(
    settings: &Settings,
    recorder: &Arc<Recorder>,
    telemetry: &Arc<Telemetry>,
    ingest: IngestOptions,
    http_addr: SocketAddr,
) -> Result<Arc<ApiState>, String> {
    let store = Store::open(&settings.data_dir).map_err(|e| {
        format!(
            "cannot open the data directory {}: {e}",
            settings.data_dir.display()
        )
    })?;
    telemetry.set_store(store.stats());
    let custom = CustomMetrics::open(store, Arc::clone(recorder), settings.api.clone())?;
    let loopback = http_addr.ip().is_loopback();
    let access = Arc::new(Access::new(settings.tokens.clone(), loopback));
    if settings.tokens.is_empty() {
        if loopback {
            tracing::info!(
                "the API has no tokens ([[api.tokens]]): it answers anyone, on loopback only"
            );
        } else {
            tracing::warn!(
                "the API has no tokens ([[api.tokens]]) and HTTP listens on {http_addr}, not loopback: \
                 API requests are refused until tokens are configured"
            );
        }
    }
    let statsd = StatsdIntake {
        recorder: Arc::clone(recorder),
        stats: telemetry.add_receiver("http", http::api::inputs::STATSD_PATH),
        // The listeners' options: the same rules (swapped on reload) and the same relay.
        options: ingest,
    };
    let push = Arc::new(Pushes::new(Arc::clone(recorder), settings.push.clone()));
    telemetry.set_push(Arc::clone(push.stats()));
    let query = crate::custom::backend::QueryBackend::new(
        &settings.query,
        Arc::clone(&telemetry.query_backend),
    )?;
    Ok(Arc::new(ApiState {
        query,
        custom,
        access,
        body_limit: settings.api_body_limit,
        statsd,
        telemetry: Arc::clone(telemetry),
        push,
    }))
}

/// How often points past their retention are removed.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// Removes points past their retention, at start and every [`EXPIRY_INTERVAL`].
async fn expire_points(api: Arc<ApiState>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(EXPIRY_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match api.custom.expire().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "points past their retention removed"),
            Err(e) => tracing::warn!("removing points past their retention failed: {e}"),
        }
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
