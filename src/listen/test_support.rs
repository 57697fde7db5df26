//! Test harness for the receive threads: a running set of UDP receivers on one address with
//! the registry they feed, and small helpers for clients and waiting.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::udp::open;
use super::{
    BoundListener, OpenError, Passed, ReceiverHandles, Spread, UdpOptions, spawn_receivers,
};
use crate::ingest::IngestOptions;
use crate::record::Recorder;
use crate::registry::{Cell, Registry, RegistrySettings};
use crate::telemetry::{ReceiverStats, Telemetry};

const WAIT: Duration = Duration::from_secs(5);

/// A running set of receivers on one address, with the registry they feed.
pub(super) struct Daemon {
    pub(super) addr: SocketAddr,
    registry: Arc<Registry>,
    pub(super) telemetry: Telemetry,
    shutdown: CancellationToken,
    handles: Option<ReceiverHandles>,
    stats: Vec<Arc<ReceiverStats>>,
    pub(super) spread: Spread,
}

impl Daemon {
    pub(super) fn start(options: UdpOptions) -> io::Result<Daemon> {
        let listeners = bind(&options)?;
        Ok(Daemon::spawn(listeners))
    }

    pub(super) fn spawn(listeners: Vec<BoundListener>) -> Daemon {
        let addr = listeners[0].local_addr();
        let spread = listeners[0].spread();
        let registry = Arc::new(Registry::new(RegistrySettings::default()));
        let telemetry = Telemetry::default();
        let shutdown = CancellationToken::new();
        let handles = spawn_receivers(
            listeners,
            Recorder::for_registry(&registry),
            &telemetry,
            IngestOptions::default(),
            &shutdown,
        )
        .expect("spawn receivers");
        Daemon {
            addr,
            registry,
            telemetry,
            shutdown,
            stats: handles.stats().to_vec(),
            handles: Some(handles),
            spread,
        }
    }

    pub(super) fn stats(&self) -> &[Arc<ReceiverStats>] {
        &self.stats
    }

    pub(super) fn total(&self, read: impl Fn(&ReceiverStats) -> u64) -> u64 {
        self.stats().iter().map(|s| read(s)).sum()
    }

    pub(super) fn packets(&self) -> u64 {
        self.total(|s| s.packets.load(Ordering::Relaxed))
    }

    pub(super) fn counter(&self, name: &str) -> Option<f64> {
        let family = self
            .registry
            .families()
            .into_iter()
            .find(|f| f.name() == name)?;
        let mut sum = 0.0;
        family.for_each_series(|series| {
            if let Cell::Counter(value) = series.cell() {
                sum += value.get();
            }
        });
        Some(sum)
    }

    /// The receive threads' names, in thread order.
    pub(super) fn thread_names(&self) -> Vec<String> {
        let handles = self.handles.as_ref().expect("running");
        handles
            .threads
            .iter()
            .map(|t| t.thread().name().unwrap_or("?").to_owned())
            .collect()
    }

    pub(super) fn stop(&mut self) -> Duration {
        self.shutdown.cancel();
        let started = Instant::now();
        if let Some(handles) = self.handles.take() {
            handles.join();
        }
        started.elapsed()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `options`' addresses, as `udp::open` does for a tallyd that was not socket-activated.
pub(super) fn bind(options: &UdpOptions) -> io::Result<Vec<BoundListener>> {
    open(options, &mut Passed::none()).map_err(|e| match e {
        OpenError::Io(e) => e,
        OpenError::Activation(e) => io::Error::other(e),
    })
}

pub(super) fn options(listen: &str, receivers: usize) -> UdpOptions {
    UdpOptions {
        listen: vec![listen.parse().unwrap()],
        receivers_per_listener: receivers,
        ..UdpOptions::default()
    }
}

/// Polls `condition` until it holds or [`WAIT`] passes; returns whether it held.
pub(super) fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(super) fn client(to: SocketAddr) -> UdpSocket {
    let local: SocketAddr = if to.is_ipv6() {
        "[::1]:0".parse().unwrap()
    } else {
        "127.0.0.1:0".parse().unwrap()
    };
    let socket = UdpSocket::bind(local).unwrap();
    socket.connect(to).unwrap();
    socket
}

pub(super) fn ipv6_loopback_available() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}
