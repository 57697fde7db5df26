//! Receiving StatsD: one OS thread per bound socket, whatever the transport, each feeding its
//! own [`Ingester`] and counting into its own [`ReceiverStats`]; and the handles that stop and
//! join those threads.
//!
//! The transports live beside this file, one module each:
//!
//! - [`udp`]: datagrams on a `SO_REUSEPORT` group per address, read with batched `recvmmsg`.
//! - [`tcp`]: newline-delimited streams; one thread per listen address multiplexes its
//!   connections on a current-thread tokio runtime (see that module for why and its bounds).
//! - [`unix`]: Unix datagram sockets (DogStatsD's `dogstatsd_socket`), read with the same
//!   [`udp::BatchReceiver`].
//! - [`activation`]: the sockets systemd passed (`systemd:NAME` in a listen list); each
//!   transport's `open` binds its addresses and adopts its passed sockets alike.
//!
//! Each transport is a variant of [`Listener`] (with a `From` for its bound type), its arms in
//! [`Listener::label`], [`Listener::transport`] and `Listener::receive`, and a receive loop of
//! its own. Threads, stats registration, panic isolation, stop and join stay here, written
//! once.
//!
//! A receive thread shares nothing on its hot path but the registry's atomics: the ingester,
//! its series cache and the receive buffers belong to the thread and are allocated once when
//! it starts, so receiving and ingesting a datagram for known series allocates nothing.
//!
//! Stopping is polled, not signalled: every transport's blocking call returns on its own at
//! least every 200 ms (a socket receive timeout), and the loop checks its `Stop` in between.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::ingest::{IngestOptions, Ingester};
use crate::protocol::Reason;
use crate::record::Recorder;
use crate::telemetry::{ReceiverStats, Telemetry};

pub mod activation;
pub mod tcp;
pub mod udp;
pub mod unix;

#[cfg(test)]
mod test_support;

pub use activation::{ActivationError, Endpoint, Passed, Role};
pub use udp::{BoundListener, Spread, UdpOptions};

/// Why a listen list could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Binding an address, or preparing a passed socket, failed.
    Io(io::Error),
    /// The passed sockets and the listen addresses disagree.
    Activation(ActivationError),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io(e) => e.fmt(f),
            OpenError::Activation(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

impl From<ActivationError> for OpenError {
    fn from(e: ActivationError) -> Self {
        OpenError::Activation(e)
    }
}

/// Opens one listen list in order: `bind` for each address, `adopt` for each socket passed
/// under a `systemd:NAME` (after [`Passed::take`] checked it fits `role`).
fn open_endpoints<A, L>(
    endpoints: &[Endpoint<A>],
    role: Role,
    passed: &mut Passed,
    mut bind: impl FnMut(&A) -> io::Result<Vec<L>>,
    mut adopt: impl FnMut(OwnedFd) -> io::Result<Vec<L>>,
) -> Result<Vec<L>, OpenError> {
    let mut opened = Vec::new();
    for endpoint in endpoints {
        match endpoint {
            Endpoint::Bind(addr) => opened.extend(bind(addr)?),
            Endpoint::Systemd(name) => {
                for fd in passed.take(name, role)? {
                    opened.extend(adopt(fd)?);
                }
            }
        }
    }
    Ok(opened)
}

/// Least time between two log lines about the same kind of trouble, per thread.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A bound socket of any transport, not yet read; [`spawn_receivers`] gives it a thread.
#[derive(Debug)]
pub enum Listener {
    /// One socket of a UDP listen address's reuse-port group.
    Udp(udp::BoundListener),
    /// One TCP listen address, with all its connections.
    Tcp(tcp::TcpListener),
    /// One Unix datagram socket.
    Unix(unix::UnixListener),
}

impl From<udp::BoundListener> for Listener {
    fn from(listener: udp::BoundListener) -> Self {
        Listener::Udp(listener)
    }
}

impl From<tcp::TcpListener> for Listener {
    fn from(listener: tcp::TcpListener) -> Self {
        Listener::Tcp(listener)
    }
}

impl From<unix::UnixListener> for Listener {
    fn from(listener: unix::UnixListener) -> Self {
        Listener::Unix(listener)
    }
}

impl Listener {
    /// The `listener` label of this socket's receive counters: its address as an operator
    /// would write it in the config.
    pub fn label(&self) -> String {
        match self {
            Listener::Udp(udp) => udp.local_addr().to_string(),
            Listener::Tcp(tcp) => tcp.local_addr().to_string(),
            Listener::Unix(unix) => unix.path().display().to_string(),
        }
    }

    /// The transport's short name, for thread names and messages.
    pub fn transport(&self) -> &'static str {
        match self {
            Listener::Udp(_) => "udp",
            Listener::Tcp(_) => "tcp",
            Listener::Unix(_) => "unix",
        }
    }

    /// Runs this transport's receive loop on the calling thread until `stop` is requested, and
    /// publishes the last counts. The intake is the loop's to own: the TCP loop shares it
    /// among its connections' tasks.
    fn receive(self, mut intake: Intake, stop: &Stop) {
        match self {
            Listener::Udp(udp) => udp::receive_loop(udp, &mut intake, stop),
            Listener::Tcp(tcp) => return tcp::receive_loop(tcp, intake, stop),
            Listener::Unix(unix) => unix::receive_loop(unix, &mut intake, stop),
        }
        intake.flush();
    }
}

/// When receive threads should end: a child of the daemon's shutdown token, cancelled on its
/// own when a later thread of the same [`spawn_receivers`] call fails to start (so no thread
/// outlives a failed start).
#[derive(Clone, Debug)]
struct Stop(CancellationToken);

impl Stop {
    /// One relaxed-cost check per batch or receive timeout.
    fn requested(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// What a receive loop hands its datagrams to: the thread's ingester behind a panic guard,
/// and the thread's counters for what the transport itself accounts (oversized, kernel drops).
struct Intake {
    ingester: Ingester,
    stats: Arc<ReceiverStats>,
    panic_log: LogLimit,
}

impl Intake {
    /// Ingests one datagram (or, for a stream, a run of whole lines).
    fn ingest(&mut self, datagram: &[u8]) {
        let ingester = &mut self.ingester;
        // A parser bug must cost one datagram, not the thread (and with it, the socket).
        if catch_unwind(AssertUnwindSafe(|| ingester.ingest(datagram))).is_err()
            && self.panic_log.allow()
        {
            tracing::error!(
                listener = self.stats.listener.as_str(),
                "a datagram made the parser panic and was skipped; this is a bug in tallyd, \
                 please report it (logged at most every {}s per receiver)",
                LOG_INTERVAL.as_secs()
            );
        }
    }

    fn stats(&self) -> &ReceiverStats {
        &self.stats
    }

    /// Counts a line the transport refused before the parser saw it (a TCP line over the
    /// length limit), as the parser counts the lines it refuses.
    fn refuse_line(&mut self, reason: Reason) {
        self.stats.lines.fetch_add(1, Ordering::Relaxed);
        self.stats.errors[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Publishes the ingester's thread-local counts; loops call it once per batch or wake-up,
    /// so the shared atomics are touched per batch, not per line.
    fn flush(&mut self) {
        self.ingester.flush_stats();
    }
}

/// Rate limit for one kind of log line in one thread: at most one per [`LOG_INTERVAL`].
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    last: Option<Instant>,
}

impl LogLimit {
    /// True (and remembers now) if nothing was logged in the last [`LOG_INTERVAL`].
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|at| now.duration_since(at) >= LOG_INTERVAL)
        {
            self.last = Some(now);
            true
        } else {
            false
        }
    }
}

/// The running receive threads.
#[derive(Debug)]
pub struct ReceiverHandles {
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<ReceiverStats>>,
}

impl ReceiverHandles {
    /// Waits for every thread to end. Cancel the shutdown token first: a thread notices it within
    /// about 200 ms, publishes its last counts and returns.
    pub fn join(self) {
        for thread in self.threads {
            let name = thread.thread().name().unwrap_or("?").to_owned();
            if thread.join().is_err() {
                tracing::error!("receive thread {name} panicked");
            }
        }
    }

    /// Each thread's counters, in thread order (the same objects the telemetry holds).
    pub fn stats(&self) -> &[Arc<ReceiverStats>] {
        &self.stats
    }

    /// The number of receive threads.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

/// Starts one receive thread (`tallyd-<transport>-N`, N its index in
/// [`ReceiverHandles::stats`]) per bound socket, each registering its own counters with
/// `telemetry` under the `listener` label of its address. The threads run until `shutdown` is
/// cancelled; dropping the handles detaches them.
pub fn spawn_receivers<L: Into<Listener>>(
    listeners: impl IntoIterator<Item = L>,
    recorder: Arc<Recorder>,
    telemetry: &Telemetry,
    options: IngestOptions,
    shutdown: &CancellationToken,
) -> io::Result<ReceiverHandles> {
    // All a thread needs to build its ingester; everything below is transport and ingest
    // agnostic. Built on the thread, so its cache is first touched by the core that uses it.
    let new_ingester = move |stats: Arc<ReceiverStats>| {
        Ingester::new(Arc::clone(&recorder), stats, options.clone())
    };
    let stop = Stop(shutdown.child_token());
    let listeners = listeners.into_iter();
    let mut handles = ReceiverHandles {
        threads: Vec::with_capacity(listeners.size_hint().0),
        stats: Vec::with_capacity(listeners.size_hint().0),
    };
    for (index, listener) in listeners.map(Into::into).enumerate() {
        let name = format!("tallyd-{}-{index}", listener.transport());
        let stats = telemetry.add_receiver(listener.transport(), listener.label());
        let thread_stats = Arc::clone(&stats);
        let new_ingester = new_ingester.clone();
        let thread_stop = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let intake = Intake {
                    ingester: new_ingester(Arc::clone(&thread_stats)),
                    stats: thread_stats,
                    panic_log: LogLimit::default(),
                };
                listener.receive(intake, &thread_stop);
            });
        match spawned {
            Ok(thread) => {
                handles.threads.push(thread);
                handles.stats.push(stats);
            }
            Err(e) => {
                stop.0.cancel();
                handles.join();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot start receive thread {name}: {e}"),
                ));
            }
        }
    }
    tracing::debug!("{} receive thread(s) started", handles.len());
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::test_support::{Daemon, bind, client, eventually, options};
    use super::*;

    #[test]
    fn counters_from_many_datagrams_add_up_exactly() {
        let daemon = Daemon::start(options("127.0.0.1:0", 2)).unwrap();
        let clients: Vec<_> = (0..8).map(|_| client(daemon.addr)).collect();
        for round in 0..250 {
            for socket in &clients {
                socket.send(b"listen_hits:1|c\nlisten_hits:2|c\n").unwrap();
            }
            if round % 50 == 0 {
                // Don't outrun two receivers on a busy two-core machine.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert!(
            eventually(|| daemon.counter("listen_hits") == Some(6000.0)),
            "counter is {:?}, packets {}",
            daemon.counter("listen_hits"),
            daemon.packets()
        );
        assert_eq!(daemon.packets(), 2000);
        assert_eq!(
            daemon.total(|s| s.kernel_drops.load(std::sync::atomic::Ordering::Relaxed)),
            0
        );
    }

    #[test]
    fn shutdown_joins_promptly_and_publishes_counts() {
        let mut daemon = Daemon::start(options("127.0.0.1:0", 2)).unwrap();
        let socket = client(daemon.addr);
        for _ in 0..10 {
            socket.send(b"listen_bye:1|c").unwrap();
        }
        assert!(eventually(|| daemon.counter("listen_bye") == Some(10.0)));
        let took = daemon.stop();
        assert!(took < Duration::from_secs(1), "join took {took:?}");
        assert_eq!(daemon.packets(), 10);
    }

    #[test]
    fn threads_are_named_after_transport_and_index_and_labelled_by_address() {
        let first = bind(&options("127.0.0.1:0", 1)).unwrap();
        let second = bind(&options("127.0.0.1:0", 1)).unwrap();
        let addrs = [first[0].local_addr(), second[0].local_addr()];
        let daemon = Daemon::spawn(first.into_iter().chain(second).collect());
        let labels: Vec<String> = daemon.stats().iter().map(|s| s.listener.clone()).collect();
        assert_eq!(labels, addrs.map(|a| a.to_string()));
        let names = daemon.thread_names();
        assert_eq!(names, ["tallyd-udp-0", "tallyd-udp-1"]);
    }

    #[test]
    fn log_limit_allows_one_line_per_interval() {
        let mut limit = LogLimit::default();
        assert!(limit.allow());
        assert!(!limit.allow());
        limit.last = Some(Instant::now() - LOG_INTERVAL);
        assert!(limit.allow());
    }
}
