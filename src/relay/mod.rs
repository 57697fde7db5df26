//! The relay (`[relay]`): a copy of the StatsD lines tallyd receives, forwarded over UDP to
//! one or more upstream StatsD servers, as statsd_exporter's `--statsd.relay.address` does.
//!
//! ## Shape
//!
//! ```text
//!  receive thread ─ Tap: lines appended to a 128 KiB buffer ─┐ whole buffers, bounded queue
//!  receive thread ─ Tap ──────────────────────────────────────┼──────────► sender thread:
//!  receive thread ─ Tap ──────────────────────────────────────┘             Batcher → send()
//!                    ▲                                                      to every target
//!                    └────────── emptied buffers, back through the pool ◄───┘
//! ```
//!
//! - Each receive thread owns a [`Tap`]: it appends what it receives (raw mode: each datagram,
//!   or each run of TCP lines, as it came; mapped mode: each accepted sample re-encoded by
//!   [`mapped`]) to a buffer of its own, and hands the buffer to the sender when it is full or
//!   when the sender's tick has moved since the last hand-over. A hand-over is one
//!   `try_send` of a `Vec` on a bounded channel; lines cost a `memcpy`, nothing shared.
//! - Buffers come from a pool of at most `queue_bytes / 128 KiB`, allocated as traffic first
//!   needs them and recycled by the sender, so memory is bounded and the steady state
//!   allocates nothing. When a tap needs a buffer and the pool has none left (the sender is
//!   behind), the lines are dropped and counted as `queue_full`: ingestion never waits.
//! - One sender thread splits each buffer into lines (`\r` stripped, empty lines skipped, as
//!   the parser reads them), packs them into datagrams of at most `max_datagram_bytes`
//!   ([`batch::Batcher`]; a longer line is dropped and counted as `too_long`, as statsd_exporter
//!   does), and sends every datagram to every target on a connected, non-blocking UDP socket of
//!   its own. A send error (an earlier datagram's ICMP port unreachable reported back, no
//!   route, a full send buffer) loses that datagram for that target, is counted and logged at
//!   a rate limit, and never stops the relay.
//! - Every `flush_interval / 2` the sender sends the datagram it is filling, even if not full,
//!   and moves its tick; taps hand over their buffer at their next flush after the tick (a
//!   receive thread flushes after every batch, and at least every 200 ms). So a line leaves
//!   tallyd within about `flush_interval` of arriving, plus up to 200 ms on an idle thread.
//!
//! Targets are resolved when the relay starts and again at every reload, never in between
//! (statsd_exporter resolves once): a reload is how an operator makes tallyd follow a name
//! that moved. A reload swaps the targets of the running sender ([`Relay::replace_targets`]);
//! the other `[relay]` keys take effect on restart.

pub mod batch;
pub mod mapped;

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use self::batch::{Batcher, lines};
use self::mapped::MappedForm;
use crate::listen::LogLimit;
use crate::protocol::Sample;
use crate::registry::Kind;
use crate::telemetry::SelfMetric;

/// One relay buffer: room for the largest datagram (65,535 bytes) or TCP line (65,536) and its
/// separator, so anything a receive thread hands over fits an empty buffer whole.
pub const BUFFER_BYTES: usize = 128 * 1024;

/// What the relay forwards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineForm {
    /// Every line as received, before parsing (malformed ones, events and service checks
    /// too), from every transport.
    #[default]
    Raw,
    /// Each sample tallyd recorded, re-encoded in DogStatsD form under its mapped name and
    /// labels; lines refused, dropped by a rule or refused by the registry are not relayed.
    Mapped,
}

/// `[relay]`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayOptions {
    /// `host:port` of each upstream; none turns the relay off.
    pub targets: Vec<String>,
    pub lines: LineForm,
    /// Largest datagram sent; longer lines are dropped and counted.
    pub max_datagram_bytes: usize,
    /// A datagram that is not full is sent at least this often.
    pub flush_interval: Duration,
    /// Most bytes of lines waiting for the sender, all receive threads together.
    pub queue_bytes: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            targets: Vec::new(),
            lines: LineForm::Raw,
            // statsd_exporter's --statsd.relay.packet-length: fits an Ethernet MTU.
            max_datagram_bytes: 1400,
            flush_interval: Duration::from_secs(1),
            queue_bytes: 4 << 20,
        }
    }
}

/// Checks a target's spelling (`host:port`, `[v6]:port`) without resolving it; the message
/// says what is wrong.
pub fn check_target(target: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("relay target {target:?}: {why}"));
    let Some((host, port)) = target.rsplit_once(':') else {
        return bad("must be host:port");
    };
    if host.is_empty() {
        return bad("the host is empty");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return bad("an IPv6 address goes in brackets, as in [::1]:8125");
    }
    match port.parse::<u16>() {
        Ok(1..) => Ok(()),
        _ => bad("the port must be a number from 1 to 65535"),
    }
}

/// Checks a list of targets: each spelled right ([`check_target`]), none twice (it would get
/// every line twice, and its counters could not tell).
pub fn check_targets(targets: &[String]) -> Result<(), String> {
    for (i, target) in targets.iter().enumerate() {
        check_target(target)?;
        if targets[..i].contains(target) {
            return Err(format!("relay target {target:?} is listed twice"));
        }
    }
    Ok(())
}

crate::closed_set! {
    /// Why a line was not relayed to any target: `tallyd_relay_dropped_lines_total{reason}`.
    RelayDrop;
    /// The sender was behind and the queue (`queue_bytes`) was full.
    QueueFull => "queue_full",
    /// Longer than `max_datagram_bytes`.
    TooLong => "too_long",
}

/// The relay's counters, for `tallyd_relay_*`.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Indexed by `RelayDrop as usize`.
    dropped: [AtomicU64; RelayDrop::ALL.len()],
    /// Every target the relay has sent to since start, in order of first use.
    targets: Mutex<Vec<Arc<TargetStats>>>,
}

/// The counters of one target.
#[derive(Debug)]
pub struct TargetStats {
    /// The target as configured (`host:port`), the `target` label.
    pub target: String,
    pub lines: AtomicU64,
    pub packets: AtomicU64,
    pub send_errors: AtomicU64,
}

impl RelayStats {
    /// The counters of `target`, registered on first use; a target that comes back after a
    /// reload keeps counting where it was.
    pub fn target(&self, target: &str) -> Arc<TargetStats> {
        let mut targets = self.targets.lock();
        if let Some(stats) = targets.iter().find(|t| t.target == target) {
            return Arc::clone(stats);
        }
        let stats = Arc::new(TargetStats {
            target: target.to_owned(),
            lines: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        });
        targets.push(Arc::clone(&stats));
        stats
    }

    /// Lines dropped for `reason` so far.
    pub fn dropped(&self, reason: RelayDrop) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    fn add_dropped(&self, reason: RelayDrop, lines: u64) {
        if lines > 0 {
            self.dropped[reason as usize].fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// The `tallyd_relay_*` families.
    pub fn self_metrics(&self) -> Vec<SelfMetric> {
        let targets = self.targets.lock().clone();
        let per_target = |name, help, read: fn(&TargetStats) -> &AtomicU64| SelfMetric {
            name,
            help,
            kind: Kind::Counter,
            label: Some("target"),
            samples: targets
                .iter()
                .map(|t| (t.target.clone(), read(t).load(Ordering::Relaxed) as f64))
                .collect(),
        };
        vec![
            per_target(
                "tallyd_relay_lines",
                "Lines relayed: lines in the datagrams sent to each [relay] target.",
                |t| &t.lines,
            ),
            per_target(
                "tallyd_relay_packets",
                "Datagrams sent to each [relay] target.",
                |t| &t.packets,
            ),
            per_target(
                "tallyd_relay_send_errors",
                "Datagrams that could not be sent to a [relay] target (refused by an ICMP port unreachable, no route, a full send buffer); their lines are lost for it.",
                |t| &t.send_errors,
            ),
            SelfMetric {
                name: "tallyd_relay_dropped_lines",
                help: "Lines not relayed to any target, by reason: queue_full (the sender fell behind), too_long (over [relay] max_datagram_bytes).",
                kind: Kind::Counter,
                label: Some("reason"),
                samples: RelayDrop::ALL
                    .iter()
                    .map(|r| (r.label().to_owned(), self.dropped(*r) as f64))
                    .collect(),
            },
        ]
    }
}

/// What travels to the sender.
enum Message {
    /// A buffer of lines, separated by `\n`.
    Lines(Vec<u8>),
    /// Every tap is gone: send what is left and end.
    Stop,
}

/// What the taps and the sender share.
struct Shared {
    queue: SyncSender<Message>,
    /// Emptied buffers; its capacity is the pool's bound, so returning one never allocates.
    /// The standard library's lock, a bare futex: `parking_lot`'s allocates its per-thread
    /// state the first time a thread waits, which a receive thread may first do long after
    /// warming up (`relaying_allocates_nothing_on_the_receive_thread_once_warm` saw 2
    /// allocations in 1 of 6 runs).
    free: std::sync::Mutex<Vec<Vec<u8>>>,
    /// Buffers allocated so far, at most `max_buffers`.
    allocated: AtomicUsize,
    max_buffers: usize,
    /// The sender's tick count: a tap hands over its buffer when it sees this move.
    tick: AtomicU64,
    form: LineForm,
    stats: Arc<RelayStats>,
}

impl Shared {
    /// The pool of emptied buffers. Nothing panics while holding it, so a poisoned lock's
    /// contents are as good as ever.
    fn free(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A handle receive threads make their [`Tap`]s from.
#[derive(Clone)]
pub struct Hub(Arc<Shared>);

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("form", &self.0.form)
            .field("max_buffers", &self.0.max_buffers)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A tap for one receive thread.
    pub fn tap(&self) -> Tap {
        Tap {
            shared: Arc::clone(&self.0),
            buffer: None,
            tick: self.0.tick.load(Ordering::Relaxed),
            dropped: [0; RelayDrop::ALL.len()],
            line: Vec::with_capacity(256),
        }
    }

    pub fn form(&self) -> LineForm {
        self.0.form
    }

    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.0.stats
    }
}

/// One receive thread's end of the relay: a buffer it fills and hands over whole. Dropping it
/// hands over what it holds.
pub struct Tap {
    shared: Arc<Shared>,
    buffer: Option<Vec<u8>>,
    /// The sender's tick at the last hand-over check.
    tick: u64,
    /// Lines dropped since the last flush, by `RelayDrop as usize`.
    dropped: [u64; RelayDrop::ALL.len()],
    /// The mapped line being encoded.
    line: Vec<u8>,
}

impl Tap {
    pub fn form(&self) -> LineForm {
        self.shared.form
    }

    /// Raw mode: a datagram, or a run of whole lines, as received.
    #[inline]
    pub fn raw(&mut self, bytes: &[u8]) {
        self.push(bytes);
    }

    /// Mapped mode: one sample tallyd recorded, in the series' `form`, its value times `scale`.
    pub fn mapped(&mut self, form: &MappedForm, sample: &Sample<'_>, scale: f64) {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        form.encode(sample, scale, &mut line);
        // The encoding ends in `\n`, which `push` adds itself.
        self.push(line.strip_suffix(b"\n").unwrap_or(&line));
        self.line = line;
    }

    /// Hands the buffer over if the sender ticked since the last call, and publishes the
    /// drop counts; receive loops call it once per batch and on every receive timeout.
    pub fn flush(&mut self) {
        let tick = self.shared.tick.load(Ordering::Relaxed);
        if tick != self.tick {
            self.tick = tick;
            self.hand_over();
        }
        self.publish();
    }

    fn publish(&mut self) {
        for reason in RelayDrop::ALL {
            let lines = std::mem::take(&mut self.dropped[*reason as usize]);
            self.shared.stats.add_dropped(*reason, lines);
        }
    }

    /// Appends `bytes` (one or more lines) and a separating `\n`.
    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(buffer) = &self.buffer
            && buffer.len() + bytes.len() + 1 > BUFFER_BYTES
        {
            self.hand_over();
        }
        if bytes.len() + 1 > BUFFER_BYTES {
            // More than an empty buffer holds (a long run of TCP lines): line by line.
            for line in lines(bytes) {
                if line.len() + 1 > BUFFER_BYTES {
                    self.dropped[RelayDrop::TooLong as usize] += 1;
                } else {
                    self.push(line);
                }
            }
            return;
        }
        if self.buffer.is_none() {
            self.buffer = self.acquire();
        }
        match &mut self.buffer {
            Some(buffer) => {
                buffer.extend_from_slice(bytes);
                buffer.push(b'\n');
            }
            None => self.dropped[RelayDrop::QueueFull as usize] += lines(bytes).count() as u64,
        }
    }

    /// A buffer from the pool, allocating one while the pool is below its bound.
    fn acquire(&self) -> Option<Vec<u8>> {
        if let Some(buffer) = self.shared.free().pop() {
            return Some(buffer);
        }
        let allocated = &self.shared.allocated;
        let mut count = allocated.load(Ordering::Relaxed);
        while count < self.shared.max_buffers {
            match allocated.compare_exchange_weak(
                count,
                count + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Vec::with_capacity(BUFFER_BYTES)),
                Err(now) => count = now,
            }
        }
        None
    }

    /// Gives the buffer, if it holds anything, to the sender.
    fn hand_over(&mut self) {
        let Some(buffer) = self.buffer.take_if(|b| !b.is_empty()) else {
            return;
        };
        // The channel holds one more message than there are buffers, so it is never full; if
        // the sender is gone, the lines are lost and counted.
        if let Err(TrySendError::Full(message) | TrySendError::Disconnected(message)) =
            self.shared.queue.try_send(Message::Lines(buffer))
            && let Message::Lines(mut buffer) = message
        {
            self.dropped[RelayDrop::QueueFull as usize] += lines(&buffer).count() as u64;
            buffer.clear();
            self.buffer = Some(buffer);
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.hand_over();
        self.publish();
        if let Some(buffer) = self.buffer.take() {
            self.shared.free().push(buffer);
        }
    }
}

/// One upstream: its label, a socket connected to its address, its counters.
struct Target {
    label: String,
    addr: SocketAddr,
    socket: UdpSocket,
    stats: Arc<TargetStats>,
    errors_log: LogLimit,
}

/// Resolves and connects every target (the first address a name resolves to), or says which
/// one cannot be used.
fn connect(targets: &[String], stats: &RelayStats) -> Result<Vec<Target>, String> {
    targets
        .iter()
        .map(|label| {
            let addr = label
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve relay target {label}: {e}"))?
                .next()
                .ok_or_else(|| format!("relay target {label} resolves to no address"))?;
            let local: SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(local)
                .and_then(|socket| socket.connect(addr).map(|()| socket))
                .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
                .map_err(|e| format!("cannot open a UDP socket to relay target {label}: {e}"))?;
            Ok(Target {
                label: label.clone(),
                addr,
                socket,
                stats: stats.target(label),
                errors_log: LogLimit::default(),
            })
        })
        .collect()
}

/// Targets resolved and connected, not yet in use.
pub struct Targets(Vec<Target>);

/// The running relay: its hub, its sender thread and the way to give it new targets.
pub struct Relay {
    hub: Hub,
    targets: mpsc::Sender<Vec<Target>>,
    thread: JoinHandle<()>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("hub", &self.hub).finish()
    }
}

impl Relay {
    /// Resolves the targets and starts the sender thread. Errors name the target or say why
    /// the thread could not start.
    pub fn start(options: &RelayOptions) -> Result<Relay, String> {
        let (hub, sender) = Relay::prepare(options)?;
        let (targets, updates) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tallyd-relay".into())
            .spawn(move || sender.run(&updates))
            .map_err(|e| format!("cannot start the relay thread: {e}"))?;
        tracing::info!(
            targets = ?options.targets,
            lines = ?options.lines,
            max_datagram_bytes = options.max_datagram_bytes,
            "relaying StatsD lines over UDP"
        );
        Ok(Relay {
            hub,
            targets,
            thread,
        })
    }

    /// The hub and the sender, not yet running (tests run the sender themselves).
    fn prepare(options: &RelayOptions) -> Result<(Hub, Sender), String> {
        let stats = Arc::new(RelayStats::default());
        let targets = connect(&options.targets, &stats)?;
        let max_buffers = (options.queue_bytes / BUFFER_BYTES).max(1);
        let (queue, queued) = mpsc::sync_channel(max_buffers + 1);
        let shared = Arc::new(Shared {
            queue,
            free: std::sync::Mutex::new(Vec::with_capacity(max_buffers)),
            allocated: AtomicUsize::new(0),
            max_buffers,
            tick: AtomicU64::new(0),
            form: options.lines,
            stats,
        });
        let sender = Sender {
            queued,
            shared: Arc::clone(&shared),
            targets,
            batcher: Batcher::new(options.max_datagram_bytes),
            tick: options.flush_interval / 2,
        };
        Ok((Hub(shared), sender))
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Resolves `targets` and opens their sockets, for [`Relay::replace_targets`]; the
    /// error names the target that cannot be used.
    pub fn resolve(&self, targets: &[String]) -> Result<Targets, String> {
        connect(targets, &self.hub.0.stats).map(Targets)
    }

    /// Makes `targets` the ones lines go to from the next buffer the sender handles (lines
    /// already waiting go to them too).
    pub fn replace_targets(&self, targets: Targets) {
        let addrs: Vec<String> = (targets.0.iter())
            .map(|t| format!("{} ({})", t.label, t.addr))
            .collect();
        // Only a sender that panicked has gone; its panic was logged.
        if self.targets.send(targets.0).is_ok() {
            tracing::info!(targets = ?addrs, "relay targets resolved");
        }
    }

    /// Sends what is queued and stops the sender. Call once every receive thread (every tap)
    /// has ended, so their last lines are queued first.
    pub fn stop(self) {
        // Never blocks: the channel has room for one more message than there are buffers.
        let _ = self.hub.0.queue.send(Message::Stop);
        if self.thread.join().is_err() {
            tracing::error!("the relay thread panicked");
        }
    }
}

/// The sender thread's state.
struct Sender {
    queued: Receiver<Message>,
    shared: Arc<Shared>,
    targets: Vec<Target>,
    batcher: Batcher,
    /// Half the flush interval.
    tick: Duration,
}

impl Sender {
    /// Relays buffers until [`Message::Stop`] (or every sender of the queue is gone), sending
    /// the datagram being filled on every tick. New targets from `updates` apply before the
    /// next buffer.
    fn run(mut self, updates: &Receiver<Vec<Target>>) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let message = self.queued.recv_timeout(wait);
            // Checked after waking, so a buffer queued after a reload goes to the new targets.
            if let Some(targets) = updates.try_iter().last() {
                self.targets = targets;
            }
            match message {
                Ok(Message::Lines(buffer)) => self.relay(buffer),
                Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                self.flush();
                self.shared.tick.fetch_add(1, Ordering::Relaxed);
                next_tick = now + self.tick;
            }
        }
        self.flush();
    }

    /// Batches the lines of one buffer, then returns the buffer to the pool.
    fn relay(&mut self, mut buffer: Vec<u8>) {
        let mut too_long = 0;
        for line in lines(&buffer) {
            let targets = &mut self.targets;
            if !self
                .batcher
                .push(line, |datagram, n| send(targets, datagram, n))
            {
                too_long += 1;
            }
        }
        self.shared.stats.add_dropped(RelayDrop::TooLong, too_long);
        buffer.clear();
        self.shared.free().push(buffer);
    }

    fn flush(&mut self) {
        let targets = &mut self.targets;
        self.batcher.flush(|datagram, n| send(targets, datagram, n));
    }
}

/// Sends one datagram of `lines` lines to every target, counting what each took.
fn send(targets: &mut [Target], datagram: &[u8], lines: u64) {
    for target in targets {
        match target.socket.send(datagram) {
            Ok(_) => {
                target.stats.packets.fetch_add(1, Ordering::Relaxed);
                target.stats.lines.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                target.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                if target.errors_log.allow() {
                    tracing::warn!(
                        target = target.label.as_str(),
                        addr = %target.addr,
                        "relay send failed: {e} (counted in tallyd_relay_send_errors_total; \
                         logged at most every 10s per target)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP socket standing in for an upstream StatsD server.
    fn upstream() -> (UdpSocket, String) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        (socket, addr)
    }

    fn options(targets: Vec<String>) -> RelayOptions {
        RelayOptions {
            targets,
            ..RelayOptions::default()
        }
    }

    /// Every datagram `socket` receives until it has been quiet for 200 ms.
    fn received(socket: &UdpSocket) -> Vec<Vec<u8>> {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut out = Vec::new();
        let mut buffer = [0; 65536];
        while let Ok(n) = socket.recv(&mut buffer) {
            out.push(buffer[..n].to_vec());
        }
        out
    }

    #[test]
    fn targets_are_checked_for_host_and_port() {
        assert!(check_target("statsd.internal:8125").is_ok());
        assert!(check_target("127.0.0.1:8125").is_ok());
        assert!(check_target("[::1]:8125").is_ok());
        for (bad, why) in [
            ("statsd", "host:port"),
            (":8125", "host is empty"),
            ("::1:8125", "brackets"),
            ("host:0", "port"),
            ("host:http", "port"),
            ("host:70000", "port"),
        ] {
            let err = check_target(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_target_listed_twice_is_refused() {
        let targets = ["a:1".to_owned(), "b:1".to_owned(), "a:1".to_owned()];
        let err = check_targets(&targets).unwrap_err();
        assert!(err.contains("\"a:1\" is listed twice"), "{err}");
        assert!(check_targets(&targets[..2]).is_ok());
        assert!(check_targets(&["a".to_owned()]).is_err());
    }

    #[test]
    fn a_target_that_does_not_resolve_is_named() {
        let err = Relay::start(&options(vec!["no-such-host.invalid:8125".into()])).unwrap_err();
        assert!(err.contains("no-such-host.invalid:8125"), "{err}");
    }

    #[test]
    fn a_full_pool_drops_and_counts_lines_without_blocking() {
        let (socket, addr) = upstream();
        let (hub, sender) = Relay::prepare(&RelayOptions {
            queue_bytes: 2 * BUFFER_BYTES,
            max_datagram_bytes: 60_000,
            ..options(vec![addr])
        })
        .unwrap();
        let mut taps = [hub.tap(), hub.tap()];
        // Each tap takes one of the two buffers; with the sender not yet running, nothing
        // comes back, so a third buffer is not to be had.
        let line = [b'x'; 1000];
        let fits = BUFFER_BYTES / (line.len() + 1);
        for _ in 0..fits {
            taps[0].raw(&line);
        }
        taps[1].raw(b"a:1|c\nb:1|c");
        // The first tap's buffer is full: it is queued, and no other is free.
        taps[0].raw(&line);
        taps[0].raw(b"c:1|c\r\n\nd:1|c\n");
        taps[1].raw(b"e:1|c");
        for tap in &mut taps {
            tap.flush();
        }
        assert_eq!(hub.stats().dropped(RelayDrop::QueueFull), 3);
        // Once the sender runs, what was queued arrives; the dropped lines do not.
        drop(taps);
        let (_updates_tx, updates) = mpsc::channel();
        hub.0.queue.send(Message::Stop).unwrap();
        sender.run(&updates);
        let lines: Vec<Vec<u8>> = received(&socket)
            .iter()
            .flat_map(|d| {
                d.split(|&b| b == b'\n')
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(lines.len(), fits + 3);
        assert!(lines.contains(&b"e:1|c".to_vec()));
        assert!(!lines.contains(&b"c:1|c".to_vec()));
    }

    #[test]
    fn lines_longer_than_a_datagram_are_dropped_and_counted() {
        let (socket, addr) = upstream();
        let relay = Relay::start(&RelayOptions {
            max_datagram_bytes: 10,
            ..options(vec![addr])
        })
        .unwrap();
        let mut tap = relay.hub().tap();
        tap.raw(b"a:1|c\nmuch.too.long:1|c\nb:1|c");
        drop(tap);
        let stats = Arc::clone(relay.hub().stats());
        relay.stop();
        assert_eq!(received(&socket), [b"a:1|c".to_vec(), b"b:1|c".to_vec()]);
        assert_eq!(stats.dropped(RelayDrop::TooLong), 1);
        let target = &stats.targets.lock()[0];
        assert_eq!(target.lines.load(Ordering::Relaxed), 2);
        assert_eq!(target.packets.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_partial_datagram_goes_out_within_the_flush_interval() {
        let (socket, addr) = upstream();
        let relay = Relay::start(&RelayOptions {
            flush_interval: Duration::from_millis(200),
            ..options(vec![addr])
        })
        .unwrap();
        let mut tap = relay.hub().tap();
        tap.raw(b"a:1|c");
        let start = Instant::now();
        let mut buffer = [0; 100];
        // The receive loops flush the tap after every batch and timeout; here, every 10 ms.
        socket.set_nonblocking(true).unwrap();
        let n = loop {
            tap.flush();
            match socket.recv(&mut buffer) {
                Ok(n) => break n,
                Err(_) if start.elapsed() < Duration::from_secs(2) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("nothing relayed after 2 s: {e}"),
            }
        };
        assert_eq!(&buffer[..n], b"a:1|c");
        let took = start.elapsed();
        assert!(took < Duration::from_millis(400), "took {took:?}");
        drop(tap);
        relay.stop();
    }

    #[test]
    fn every_target_gets_every_datagram_and_new_targets_apply_after_a_replace() {
        let (first, first_addr) = upstream();
        let (second, second_addr) = upstream();
        let relay = Relay::start(&options(vec![first_addr.clone(), second_addr.clone()])).unwrap();
        let mut tap = relay.hub().tap();
        tap.raw(b"a:1|c");
        drop(tap);
        let mut buffer = [0; 100];
        let n = first.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"a:1|c");
        let n = second.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"a:1|c");
        // The sender picks the new targets up before the next buffer it handles.
        relay.replace_targets(relay.resolve(&[second_addr]).unwrap());
        let mut tap = relay.hub().tap();
        tap.raw(b"b:1|c");
        drop(tap);
        let n = second.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..n], b"b:1|c");
        relay.stop();
        assert!(received(&first).is_empty());
    }
}
