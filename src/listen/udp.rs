//! UDP: binding a listen address's `SO_REUSEPORT` group of sockets, the batch receiver that
//! reads one of them with `recvmmsg` (shared with `tallyd-load floor`, so the floor measures the
//! same receive code tallyd runs), and the accounting of what the kernel refused (full receive
//! buffer, datagrams cut short).
//!
//! Every listen address gets `receivers_per_listener` sockets joined with `SO_REUSEPORT`; the
//! parent module gives each its own thread, which runs `receive_loop`.
//!
//! ## How datagrams are shared among the receivers
//!
//! The kernel's default for a `SO_REUSEPORT` group hashes the sender's address and port, so a
//! single busy client socket (a common shape: one predictor process, one StatsD client) always
//! lands on one receiver and uses one core however many there are. With [`Spread::Random`]
//! (the default) a three-instruction classic BPF program attached with
//! `SO_ATTACH_REUSEPORT_CBPF` picks a receiver at random for every datagram instead.
//!
//! The price: datagrams from one client may be applied out of order, since two of them can be
//! in two threads at once. Counters, histograms and sets are commutative and do not care; two
//! updates of the same gauge (a set, or a set and a `+`/`-` delta) sent in separate datagrams
//! microseconds apart may be applied in either order. Lines within one datagram keep their
//! order. [`Spread::Source`] keeps per-client order at the cost of per-client parallelism. If
//! the program cannot be attached (an old kernel, a seccomp filter), tallyd logs a warning and
//! falls back to source hashing.
//!
//! ## Why the port is probed first
//!
//! Sockets with `SO_REUSEPORT` owned by the same user silently *join* an existing group on
//! their port instead of failing, so a second tallyd started by mistake would take half of the
//! first one's traffic. Before binding its group, [`bind`] binds a plain socket (no
//! `SO_REUSEPORT`) to the address: that fails if anything holds the port, and for port 0 it
//! picks a port no group uses. The probe is closed just before the group binds; a process
//! grabbing the same port in that instant is the only case it misses.
//!
//! ## Drop accounting
//!
//! - Datagrams longer than `max_datagram_bytes` are cut short by the kernel (`MSG_TRUNC`);
//!   they are refused whole, never parsed, and counted in [`ReceiverStats::oversized`].
//! - Datagrams the kernel dropped because a socket's receive buffer was full are reported by
//!   `SO_RXQ_OVFL`: every datagram queued after a drop carries the socket's cumulative drop
//!   count, which the receiver stores in [`ReceiverStats::kernel_drops`]. The figure therefore
//!   moves when the next datagram after a burst of drops is read, not at the drop itself. Each
//!   receiver of a reuse-port group has its own socket, so each reports its own socket's
//!   count; receivers sharing a passed socket (below) add up only what the count grew by since
//!   any of them last saw it, so their sum is the socket's count, not a multiple of it.
//!
//! ## A socket passed by systemd
//!
//! `systemd:NAME` in `listen` adopts the socket systemd passed (see `activation`). Such a
//! socket was bound by systemd, under another user, before tallyd ran: tallyd cannot add
//! `SO_REUSEPORT` siblings to it (a reuse-port group only takes sockets of the same user, and
//! a group the socket unit did not ask for does not exist). So the receive threads share the
//! one socket, each with its own descriptor of it (`dup`): every `recvmmsg` takes from the same
//! queue, and the kernel wakes one blocked receiver per arrival. What that costs next to a
//! reuse-port group — one queue and its lock for all threads instead of one each, and no
//! random spread — is measured by the end-to-end bench (`E2E_ONLY=shared`). Its receive buffer
//! is raised to `receive_buffer_bytes` if the socket unit's `ReceiveBuffer=` left it smaller,
//! and never lowered: systemd may set it above `net.core.rmem_max`, a size tallyd, without
//! privileges, could not set again.
//!
//! [`ReceiverStats::oversized`]: crate::telemetry::ReceiverStats::oversized
//! [`ReceiverStats::kernel_drops`]: crate::telemetry::ReceiverStats::kernel_drops

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::activation::{Endpoint, Passed, Role};
use super::{Intake, LOG_INTERVAL, LogLimit, OpenError, Stop};

/// How often a blocked receive returns on its own, so the thread notices shutdown and an idle
/// thread still publishes its counts.
pub(super) const RECEIVE_TIMEOUT: Duration = Duration::from_millis(200);

/// Most messages one `recvmmsg` call takes (the kernel's `UIO_MAXIOV`).
pub const MAX_BATCH: usize = 1024;

/// The largest UDP payload (IPv6 jumbograms aside).
pub const MAX_DATAGRAM: usize = 65535;

/// Roughly what the kernel charges a receive buffer for one small datagram (the `skb` and its
/// bookkeeping, not the payload), used only to tell the operator what a buffer size means.
const CHARGE_PER_SMALL_DATAGRAM: usize = 800;

/// The UDP listeners and how their receive threads work.
#[derive(Clone, Debug)]
pub struct UdpOptions {
    /// Addresses to receive on (IPv4 and IPv6, port 0 picks a free port), or `systemd:NAME`
    /// for the sockets systemd passed under that name.
    pub listen: Vec<Endpoint<SocketAddr>>,
    /// Sockets (and threads) per address; 0 means one per available core.
    pub receivers_per_listener: usize,
    /// Requested `SO_RCVBUF` per socket. Linux doubles it for bookkeeping and caps it at
    /// `net.core.rmem_max` unless tallyd may use `SO_RCVBUFFORCE` (`CAP_NET_ADMIN`).
    pub receive_buffer_bytes: usize,
    /// Longest datagram accepted; longer ones are refused whole and counted. Clamped to
    /// 1..=65535.
    pub max_datagram_bytes: usize,
    /// Datagrams fetched per `recvmmsg` call. Clamped to 1..=1024.
    pub batch: usize,
    /// How datagrams are shared among the receivers of one address.
    pub spread: Spread,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            listen: vec![Endpoint::Bind(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                8125,
            )))],
            receivers_per_listener: 0,
            receive_buffer_bytes: 8 << 20,
            max_datagram_bytes: MAX_DATAGRAM,
            batch: 32,
            spread: Spread::default(),
        }
    }
}

/// How the kernel chooses the receiver of a datagram among the sockets of one address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Each datagram goes to a receiver picked at random, so one busy client uses every core;
    /// one client's datagrams may be applied out of order (see the module documentation).
    #[default]
    Random,
    /// The kernel's `SO_REUSEPORT` hash of the sender's address and port: one client socket
    /// always lands on the same receiver.
    Source,
}

impl Spread {
    fn label(self) -> &'static str {
        match self {
            Spread::Random => "random",
            Spread::Source => "source",
        }
    }
}

/// One bound socket, not yet read. [`bind`] makes them; [`spawn_receivers`] starts one thread
/// per socket.
///
/// [`spawn_receivers`]: super::spawn_receivers
#[derive(Debug)]
pub struct BoundListener {
    socket: Socket,
    local_addr: SocketAddr,
    receive_buffer_bytes: usize,
    spread: Spread,
    max_datagram_bytes: usize,
    batch: usize,
    /// For receivers sharing one passed socket: the largest drop count any of them has seen.
    shared_drops: Option<Arc<AtomicU64>>,
}

impl BoundListener {
    /// The address actually bound (with the port the kernel chose when asked for port 0). All
    /// sockets of one listen address report the same.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The receive buffer the kernel granted, as `SO_RCVBUF` reads it back: the budget it
    /// charges datagrams against, which on Linux is twice the size that was set.
    pub fn receive_buffer_bytes(&self) -> usize {
        self.receive_buffer_bytes
    }

    /// The spread in force for this socket's group: [`Spread::Source`] if [`Spread::Random`]
    /// was asked for but the kernel refused the program.
    pub fn spread(&self) -> Spread {
        self.spread
    }

    /// True when this receiver shares a socket systemd passed with the other receivers of its
    /// address, instead of having one of its own.
    #[cfg(test)]
    pub fn is_shared(&self) -> bool {
        self.shared_drops.is_some()
    }
}

/// Binds every socket of every listen address, and adopts the sockets systemd passed for
/// `systemd:NAME` entries, so that a port in use or a passed socket that does not fit is
/// reported before anything starts. Nothing is read until [`spawn_receivers`].
///
/// [`spawn_receivers`]: super::spawn_receivers
pub fn open(options: &UdpOptions, passed: &mut Passed) -> Result<Vec<BoundListener>, OpenError> {
    let receivers = match options.receivers_per_listener {
        0 => crate::priority::usable_cpus(),
        n => n,
    };
    super::open_endpoints(
        &options.listen,
        Role::Udp,
        passed,
        |&addr| bind_group(addr, receivers, options),
        |fd| adopt(fd, receivers, options),
    )
}

/// `receivers` receivers sharing one socket systemd passed (see the module documentation).
fn adopt(fd: OwnedFd, receivers: usize, options: &UdpOptions) -> io::Result<Vec<BoundListener>> {
    let socket = Socket::from(fd);
    let local_addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the passed UDP socket has no IP address"))?;
    let named = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot use the UDP socket systemd passed for {local_addr}: {what}{e}"),
        )
    };
    // recvmmsg blocks until the receive timeout, whatever mode systemd left the socket in.
    socket
        .set_nonblocking(false)
        .map_err(|e| named("cannot make it blocking: ", e))?;
    socket
        .set_read_timeout(Some(RECEIVE_TIMEOUT))
        .map_err(|e| named("cannot set SO_RCVTIMEO: ", e))?;
    if let Err(e) = enable_drop_reports(&socket) {
        tracing::warn!(
            "cannot enable SO_RXQ_OVFL on UDP {local_addr} ({e}); kernel receive drops will \
             not be counted"
        );
    }
    let granted = match raise_receive_buffer(&socket, options.receive_buffer_bytes) {
        Ok(granted) => granted,
        Err(e) => {
            tracing::warn!(
                "cannot raise SO_RCVBUF of UDP {local_addr} to {} bytes: {e}",
                options.receive_buffer_bytes
            );
            receive_buffer_size(&socket).unwrap_or(0)
        }
    };
    let shared_drops = Arc::new(AtomicU64::new(0));
    let mut sockets = Vec::with_capacity(receivers);
    for _ in 1..receivers {
        sockets.push(
            socket
                .try_clone()
                .map_err(|e| named("cannot duplicate its descriptor: ", e))?,
        );
    }
    sockets.push(socket);
    tracing::info!(
        "listening for StatsD on UDP {local_addr} (socket passed by systemd): {receivers} \
         receiver(s) sharing it, receive buffer {granted} bytes as the kernel reports it (the \
         larger of the socket unit's ReceiveBuffer= and {} requested; room for about {} small \
         datagrams)",
        options.receive_buffer_bytes,
        granted / CHARGE_PER_SMALL_DATAGRAM
    );
    Ok(sockets
        .into_iter()
        .map(|socket| BoundListener {
            socket,
            local_addr,
            receive_buffer_bytes: granted,
            spread: Spread::Source,
            max_datagram_bytes: options.max_datagram_bytes.clamp(1, MAX_DATAGRAM),
            batch: options.batch.clamp(1, MAX_BATCH),
            shared_drops: Some(Arc::clone(&shared_drops)),
        })
        .collect())
}

/// Tries for port 0 before giving up: see [`bind_group`].
const PORT_ZERO_ATTEMPTS: usize = 8;

/// Binds `receivers` sockets sharing one address and port.
///
/// For port 0 the probe picks a free port and closes it before the group binds it, so another
/// process may take the port in between; then the group is bound again on a new free port
/// (a few times), since "any free port" was asked for. A port given explicitly is tried once.
fn bind_group(
    addr: SocketAddr,
    receivers: usize,
    options: &UdpOptions,
) -> io::Result<Vec<BoundListener>> {
    let mut attempt = 1;
    loop {
        match bind_group_once(addr, receivers, options) {
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && attempt < PORT_ZERO_ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// One attempt of [`bind_group`].
fn bind_group_once(
    addr: SocketAddr,
    receivers: usize,
    options: &UdpOptions,
) -> io::Result<Vec<BoundListener>> {
    let name_error = |what: &str, e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for StatsD on UDP {addr}: {what}{e}"),
        )
    };

    // The probe: fails if anything holds the port, reuse-port group or not; for port 0 it
    // picks a port that no group uses.
    let port = {
        let probe = new_socket(addr).map_err(|e| name_error("", e))?;
        probe
            .bind(&SockAddr::from(addr))
            .map_err(|e| name_error("", e))?;
        local_port(&probe).map_err(|e| name_error("cannot read the bound port: ", e))?
    };
    let mut group_addr = addr;
    group_addr.set_port(port);

    let max_datagram_bytes = options.max_datagram_bytes.clamp(1, MAX_DATAGRAM);
    let batch = options.batch.clamp(1, MAX_BATCH);
    let mut sockets = Vec::with_capacity(receivers);
    for i in 0..receivers {
        let socket = new_socket(group_addr).map_err(|e| name_error("", e))?;
        socket
            .set_reuse_port(true)
            .map_err(|e| name_error("cannot set SO_REUSEPORT: ", e))?;
        socket
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(|e| name_error("cannot set SO_RCVTIMEO: ", e))?;
        let buffer = match set_receive_buffer(&socket, options.receive_buffer_bytes) {
            Ok(granted) => granted,
            Err(e) => {
                tracing::warn!(
                    "cannot set SO_RCVBUF to {} bytes: {e}",
                    options.receive_buffer_bytes
                );
                receive_buffer_size(&socket).unwrap_or(0)
            }
        };
        if let Err(e) = enable_drop_reports(&socket)
            && i == 0
        {
            tracing::warn!(
                "cannot enable SO_RXQ_OVFL on UDP {group_addr} ({e}); kernel receive drops \
                 will not be counted"
            );
        }
        socket
            .bind(&SockAddr::from(group_addr))
            .map_err(|e| name_error(&format!("socket {} of {receivers}: ", i + 1), e))?;
        sockets.push((socket, buffer));
    }

    let mut spread = options.spread;
    if spread == Spread::Random && receivers > 1 {
        // Attaching to one socket sets the program for its whole group.
        if let Err(e) = attach_random_spread(&sockets[0].0, receivers) {
            tracing::warn!(
                "cannot attach the random-spread program to UDP {group_addr} ({e}); datagrams \
                 are spread by sender address instead, so one busy client uses one receiver"
            );
            spread = Spread::Source;
        }
    }

    let granted = sockets.iter().map(|(_, b)| *b).min().unwrap_or(0);
    report_receive_buffer(group_addr, options.receive_buffer_bytes, granted);
    tracing::info!(
        "listening for StatsD on UDP {group_addr}: {receivers} receiver(s), spread {}, \
         receive buffer {granted} bytes per socket as the kernel reports it ({} requested; \
         room for about {} small datagrams)",
        spread.label(),
        options.receive_buffer_bytes,
        granted / CHARGE_PER_SMALL_DATAGRAM
    );

    Ok(sockets
        .into_iter()
        .map(|(socket, receive_buffer_bytes)| BoundListener {
            socket,
            local_addr: group_addr,
            receive_buffer_bytes,
            spread,
            max_datagram_bytes,
            batch,
            shared_drops: None,
        })
        .collect())
}

/// A blocking UDP socket for `addr`'s family; IPv6 sockets are IPv6-only, so `[::]:8125` and
/// `0.0.0.0:8125` can both be bound.
fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

fn local_port(socket: &Socket) -> io::Result<u16> {
    socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("the socket has no IP address"))
}

/// Sets a socket's receive buffer: `SO_RCVBUFFORCE` first (not capped by
/// `net.core.rmem_max`, needs `CAP_NET_ADMIN`), else `SO_RCVBUF`. Returns the size the kernel
/// reports back, which on Linux is twice the size set (see [`BoundListener::receive_buffer_bytes`]).
pub fn set_receive_buffer(socket: &impl AsFd, requested: usize) -> io::Result<usize> {
    // The kernel doubles the value into an int; larger requests would overflow it.
    let value = requested.min(i32::MAX as usize / 2) as libc::c_int;
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, value)
        .or_else(|_| set_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUF, value))?;
    receive_buffer_size(socket)
}

/// For a socket systemd set up: raises its receive buffer towards `requested` but never lowers
/// it. Without `CAP_NET_ADMIN`, `SO_RCVBUF` is capped at `net.core.rmem_max`, which may be
/// below what the socket unit's `ReceiveBuffer=` set (systemd may exceed the cap): setting it
/// then would shrink the buffer. Returns the size the kernel reports.
pub fn raise_receive_buffer(socket: &impl AsFd, requested: usize) -> io::Result<usize> {
    let current = receive_buffer_size(socket)?;
    let value = requested.min(i32::MAX as usize / 2);
    // The kernel reports twice the size set.
    if current >= value * 2 {
        return Ok(current);
    }
    if set_int_option(
        socket,
        libc::SOL_SOCKET,
        libc::SO_RCVBUFFORCE,
        value as libc::c_int,
    )
    .is_err()
    {
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok())
            .unwrap_or(value);
        if value.min(cap) * 2 > current {
            set_int_option(
                socket,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                value as libc::c_int,
            )?;
        }
    }
    receive_buffer_size(socket)
}

/// `SO_RCVBUF` as the kernel reports it.
pub fn receive_buffer_size(socket: &impl AsFd) -> io::Result<usize> {
    get_int_option(socket, libc::SOL_SOCKET, libc::SO_RCVBUF).map(|n| n.max(0) as usize)
}

/// Asks the kernel to attach the socket's cumulative drop count (`SO_RXQ_OVFL`) to the
/// datagrams it queues after a drop; [`BatchReceiver`] reads it back.
pub fn enable_drop_reports(socket: &impl AsFd) -> io::Result<()> {
    set_int_option(socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)
}

/// Logs a warning when the kernel granted less than asked. Linux reports twice the size that
/// was set (the extra half is its bookkeeping allowance), so a request was honoured in full
/// when the reported size is at least twice the request.
fn report_receive_buffer(addr: SocketAddr, requested: usize, granted: usize) {
    let expected = requested.min(i32::MAX as usize / 2) * 2;
    if granted < expected {
        let rmem_max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        tracing::warn!(
            "the kernel capped the receive buffer of UDP {addr}: {requested} bytes requested, \
             {granted} granted (Linux reads back twice the size set, so a full grant reads \
             {expected}); requests are capped at net.core.rmem_max = {rmem_max}: raise that \
             sysctl or give tallyd CAP_NET_ADMIN"
        );
    }
}

/// Attaches to `socket`'s reuse-port group a classic BPF program that sends each datagram to
/// socket number `random() % receivers`: `ld #rand; mod #receivers; ret a`. The number indexes
/// the group's sockets in the order they were bound.
fn attach_random_spread(socket: &Socket, receivers: usize) -> io::Result<()> {
    let receivers = u32::try_from(receivers).map_err(io::Error::other)?;
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut program = [
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32,
        ),
        op(libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K, receivers),
        op(libc::BPF_RET | libc::BPF_A, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    set_option(
        socket,
        libc::SOL_SOCKET,
        libc::SO_ATTACH_REUSEPORT_CBPF,
        &fprog,
    )
}

/// `setsockopt` of an `int` option.
pub fn set_int_option(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    set_option(socket, level, name, &value)
}

/// `getsockopt` of an `int` option.
pub fn get_int_option(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live for the whole call and `len` is `value`'s size, so
    // the kernel writes at most that many bytes into it.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `setsockopt` for options socket2 does not offer. The kernel copies `size_of::<T>()` bytes
/// from `value` (and, for a BPF program, the instructions it points to) during the call.
fn set_option<T>(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live reference to `size_of::<T>()` readable bytes for the whole
    // call and the kernel only reads from it; a wrong type for the option makes the kernel
    // return an error, it cannot make it write into our memory.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The body of one UDP receive thread: batches from `listener`'s socket into `intake` until
/// `stop` is requested. The socket's receive timeout bounds how long that takes to notice.
pub(super) fn receive_loop(listener: BoundListener, intake: &mut Intake, stop: &Stop) {
    let mut receiver = BatchReceiver::new(listener.batch, listener.max_datagram_bytes);
    let drops = DropShare::new(listener.shared_drops);
    receive_datagrams(&listener.socket, &mut receiver, drops, "UDP", intake, stop);
}

/// How one receiver turns the cumulative drop count its socket reports into its own counter,
/// which the telemetry adds up per listener.
#[derive(Debug)]
pub(super) struct DropShare {
    /// The largest count any receiver of a shared socket has seen; `None` for a socket of
    /// this receiver's own.
    shared: Option<Arc<AtomicU64>>,
    /// The largest count this receiver has seen.
    seen: u64,
}

impl DropShare {
    pub(super) fn new(shared: Option<Arc<AtomicU64>>) -> Self {
        DropShare { shared, seen: 0 }
    }

    fn publish(&mut self, total: u64, counter: &AtomicU64) {
        let Some(shared) = &self.shared else {
            counter.store(total, Ordering::Relaxed);
            return;
        };
        // Every datagram after a drop carries the count: touch the shared atomic only when it
        // grew, and claim only the growth no other receiver has claimed yet.
        if total > self.seen {
            self.seen = total;
            let before = shared.fetch_max(total, Ordering::Relaxed);
            if total > before {
                counter.fetch_add(total - before, Ordering::Relaxed);
            }
        }
    }
}

/// The receive loop of any datagram socket (UDP, Unix): batches from `socket` into `intake`
/// until `stop` is requested; `what` names the transport in log lines. The socket's receive
/// timeout bounds how long stopping takes to notice.
pub(super) fn receive_datagrams(
    socket: &impl AsFd,
    receiver: &mut BatchReceiver,
    mut drops: DropShare,
    what: &str,
    intake: &mut Intake,
    stop: &Stop,
) {
    let mut error_log = LogLimit::default();
    while !stop.requested() {
        let mut oversized = 0;
        let received = receiver.receive(socket, |datagram| match datagram {
            Datagram::Whole(bytes) => intake.ingest(bytes),
            // The rest of the datagram is gone, and parsing the remainder would apply some
            // lines and mangle the one at the cut: refuse it whole.
            Datagram::Truncated(_) => oversized += 1,
        });
        match received {
            Ok(batch) => {
                let stats = intake.stats();
                if oversized > 0 {
                    stats.oversized.fetch_add(oversized, Ordering::Relaxed);
                }
                if let Some(total) = batch.kernel_drops {
                    drops.publish(total, &stats.kernel_drops);
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                if error_log.allow() {
                    tracing::warn!(
                        listener = intake.stats().listener.as_str(),
                        "{what} receive failed: {e} (logged at most every {}s per receiver)",
                        LOG_INTERVAL.as_secs()
                    );
                }
                // Whatever it is, don't spin on it.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Once per batch, and on every timeout so an idle thread still publishes.
        intake.flush();
    }
}

/// True for the errors a receive with a timeout returns when nothing came, or when a signal
/// interrupted it: try again.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Control-message space for one datagram. `SO_RXQ_OVFL` needs `CMSG_SPACE(4)` (24 bytes on
/// 64-bit Linux); the rest leaves room should another option ever add a message.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct ControlSlot([u8; 64]);

// SAFETY: CMSG_LEN and CMSG_SPACE are arithmetic on their argument; nothing is dereferenced.
const CMSG_DATA_OFFSET: usize = unsafe { libc::CMSG_LEN(0) } as usize;
// SAFETY: as above.
const _: () = assert!(unsafe { libc::CMSG_SPACE(4) } as usize <= size_of::<ControlSlot>());
const _: () = assert!(std::mem::align_of::<libc::cmsghdr>() <= 8);

/// One datagram of a batch, as [`BatchReceiver::receive`] hands it over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// The whole datagram.
    Whole(&'a [u8]),
    /// A datagram longer than a slot, cut short by the kernel (`MSG_TRUNC`): only the bytes
    /// that fit; the rest is lost.
    Truncated(&'a [u8]),
}

/// What one [`BatchReceiver::receive`] call took besides the datagrams themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Datagrams received (whole and truncated), at least 1.
    pub datagrams: usize,
    /// The socket's cumulative kernel drop count, widened to 64 bits, if a datagram of this
    /// batch carried one (see [`enable_drop_reports`]).
    pub kernel_drops: Option<u64>,
}

/// The `recvmmsg` machinery for one socket: `batch` data slots of `slot_len` bytes, and the
/// iovecs, message headers and control-message slots that point into them, all allocated once
/// in [`BatchReceiver::new`] and reused by every call, so receiving allocates nothing. At the
/// defaults (32 × 65535) that is 2 MiB of slots, whose pages the kernel only touches as
/// datagrams that large arrive.
///
/// It owns buffers, not a socket: the caller passes the socket to each
/// [`receive`](Self::receive), so one type serves tallyd's receive threads and the load tool's
/// floor. One receiver per socket, though: it keeps that socket's drop count.
pub struct BatchReceiver {
    slot_len: usize,
    data: Vec<u8>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    control: Vec<ControlSlot>,
    drops: DropCounter,
}

impl BatchReceiver {
    /// Buffers for `batch` datagrams (clamped to 1..=[`MAX_BATCH`]) of up to `slot_len` bytes
    /// (clamped to 1..=[`MAX_DATAGRAM`]); longer ones arrive [`Datagram::Truncated`].
    pub fn new(batch: usize, slot_len: usize) -> Self {
        let batch = batch.clamp(1, MAX_BATCH);
        let slot_len = slot_len.clamp(1, MAX_DATAGRAM);
        BatchReceiver {
            slot_len,
            data: vec![0; batch * slot_len],
            iovecs: (0..batch)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: mmsghdr is integers and raw pointers (plus padding on some libcs), for
            // which all-zero bytes are a valid value: null pointers, zero lengths.
            headers: (0..batch).map(|_| unsafe { std::mem::zeroed() }).collect(),
            control: vec![ControlSlot([0; 64]); batch],
            drops: DropCounter::default(),
        }
    }

    /// One `recvmmsg` on `socket`: blocks (up to the socket's receive timeout, if it has one)
    /// for the first datagram, then takes whatever else is queued, up to the batch size,
    /// without waiting; hands `each` every datagram in arrival order. A timeout is an error
    /// for which [`is_timeout`] holds.
    pub fn receive(
        &mut self,
        socket: &impl AsFd,
        mut each: impl FnMut(Datagram<'_>),
    ) -> io::Result<Batch> {
        let received = self.recvmmsg(socket)?;
        let mut drops = None;
        for (i, header) in self.headers.iter().take(received).enumerate() {
            // size_t on glibc, socklen_t on musl.
            #[allow(clippy::unnecessary_cast)]
            let control_len =
                (header.msg_hdr.msg_controllen as usize).min(size_of::<ControlSlot>());
            if let Some(count) = rxq_ovfl(&self.control[i].0[..control_len]) {
                drops = Some(count);
            }
            let slot = &self.data[i * self.slot_len..][..self.slot_len];
            let len = header.msg_len as usize;
            if header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > self.slot_len {
                each(Datagram::Truncated(&slot[..len.min(self.slot_len)]));
            } else {
                each(Datagram::Whole(&slot[..len]));
            }
        }
        Ok(Batch {
            datagrams: received,
            kernel_drops: drops.map(|count| self.drops.update(count)),
        })
    }

    fn recvmmsg(&mut self, socket: &impl AsFd) -> io::Result<usize> {
        // The headers are re-pointed at the buffers on every call: it costs a few stores per
        // slot, keeps the struct free of self-references while it is not receiving, and the
        // kernel overwrites the control length and flags anyway.
        let data = self.data.as_mut_ptr();
        let slots = self
            .headers
            .iter_mut()
            .zip(self.iovecs.iter_mut())
            .zip(self.control.iter_mut());
        for (i, ((header, iovec), control)) in slots.enumerate() {
            iovec.iov_base = data.wrapping_add(i * self.slot_len).cast();
            iovec.iov_len = self.slot_len;
            let msg = &mut header.msg_hdr;
            msg.msg_name = std::ptr::null_mut();
            msg.msg_namelen = 0;
            msg.msg_iov = iovec;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = size_of::<ControlSlot>() as _;
            msg.msg_flags = 0;
            header.msg_len = 0;
        }
        // SAFETY: every header points at one iovec and one control slot of its own, and every
        // iovec at a distinct `slot_len`-byte slot of `data`; all are owned by `self`, which
        // outlives the call, and nothing else touches them during it. vlen is the number of
        // headers.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_fd().as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.headers.len() as libc::c_uint,
                libc::MSG_WAITFORONE as _,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(received as usize)
        }
    }
}

/// The `SO_RXQ_OVFL` drop count in a datagram's control messages, if there is one (the kernel
/// attaches it only once the socket has dropped something). `control` is the part the kernel
/// filled (`msg_controllen` bytes). Malformed headers end the walk; nothing is read out of
/// bounds.
fn rxq_ovfl(control: &[u8]) -> Option<u32> {
    let align = |len: usize| len.next_multiple_of(size_of::<usize>());
    let mut found = None;
    let mut offset = 0;
    while control.len().saturating_sub(offset) >= size_of::<libc::cmsghdr>() {
        // SAFETY: the bytes from `offset` hold a whole cmsghdr (checked just above);
        // read_unaligned has no alignment requirement, and a cmsghdr is integers, valid for
        // any bytes.
        let header = unsafe {
            control
                .as_ptr()
                .add(offset)
                .cast::<libc::cmsghdr>()
                .read_unaligned()
        };
        // size_t on glibc, socklen_t on musl.
        #[allow(clippy::unnecessary_cast)]
        let len = header.cmsg_len as usize;
        if len < CMSG_DATA_OFFSET || len > control.len() - offset {
            break;
        }
        if header.cmsg_level == libc::SOL_SOCKET
            && header.cmsg_type == libc::SO_RXQ_OVFL
            && let Some(bytes) =
                control[offset..offset + len].get(CMSG_DATA_OFFSET..CMSG_DATA_OFFSET + 4)
        {
            found = Some(u32::from_ne_bytes(bytes.try_into().expect("4 bytes")));
        }
        offset += align(len);
    }
    found
}

/// Extends the kernel's 32-bit cumulative drop count to 64 bits. The count never decreases, so
/// a smaller value than the last means it wrapped.
#[derive(Debug, Default)]
struct DropCounter {
    wraps: u64,
    last: u32,
}

impl DropCounter {
    fn update(&mut self, count: u32) -> u64 {
        if count < self.last {
            self.wraps += 1;
        }
        self.last = count;
        (self.wraps << 32) | u64::from(count)
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::super::test_support::{
        Daemon, bind, client, eventually, ipv6_loopback_available, options,
    };
    use super::*;

    /// Sends `datagrams` to a fresh socket and receives them in one batch of `batch` slots of
    /// `slot_len` bytes; returns what the receiver handed over, as owned bytes.
    fn receive_batch(datagrams: &[&[u8]], batch: usize, slot_len: usize) -> Vec<(bool, Vec<u8>)> {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sender = client(socket.local_addr().unwrap());
        for datagram in datagrams {
            sender.send(datagram).unwrap();
        }
        let mut receiver = BatchReceiver::new(batch, slot_len);
        let mut seen = Vec::new();
        while seen.len() < datagrams.len() {
            let batch = receiver
                .receive(&socket, |d| match d {
                    Datagram::Whole(b) => seen.push((true, b.to_vec())),
                    Datagram::Truncated(b) => seen.push((false, b.to_vec())),
                })
                .unwrap();
            assert!(batch.datagrams >= 1);
            assert_eq!(batch.kernel_drops, None);
        }
        seen
    }

    #[test]
    fn batch_receiver_hands_over_datagrams_in_order() {
        let seen = receive_batch(&[b"a:1|c", b"b:2|c\n", b""], 8, 64);
        assert_eq!(
            seen,
            [
                (true, b"a:1|c".to_vec()),
                (true, b"b:2|c\n".to_vec()),
                (true, Vec::new())
            ]
        );
    }

    #[test]
    fn batch_receiver_marks_datagrams_longer_than_a_slot_truncated() {
        let long = [b'x'; 100];
        let seen = receive_batch(&[&long, &long[..16], &long[..17]], 2, 16);
        assert_eq!(
            seen,
            [
                (false, long[..16].to_vec()),
                (true, long[..16].to_vec()),
                (false, long[..16].to_vec())
            ]
        );
    }

    #[test]
    fn batch_receiver_timeout_is_a_timeout() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let mut receiver = BatchReceiver::new(4, 64);
        let err = receiver
            .receive(&socket, |_| panic!("nothing was sent"))
            .unwrap_err();
        assert!(is_timeout(&err), "{err}");
    }

    #[test]
    fn random_spread_shares_one_hot_client_among_receivers() {
        let daemon = Daemon::start(UdpOptions {
            spread: Spread::Random,
            ..options("127.0.0.1:0", 2)
        })
        .unwrap();
        if daemon.spread != Spread::Random {
            eprintln!("skipped: this kernel refused SO_ATTACH_REUSEPORT_CBPF");
            return;
        }
        let socket = client(daemon.addr);
        for _ in 0..2000 {
            socket.send(b"listen_hot:1|c").unwrap();
        }
        assert!(eventually(|| daemon.packets() == 2000));
        let busy = daemon
            .stats()
            .iter()
            .filter(|s| s.packets.load(Ordering::Relaxed) > 0)
            .count();
        assert_eq!(busy, 2, "one client socket reached only one receiver");
        assert_eq!(daemon.counter("listen_hot"), Some(2000.0));
    }

    #[test]
    fn source_spread_keeps_one_client_on_one_receiver() {
        let daemon = Daemon::start(UdpOptions {
            spread: Spread::Source,
            ..options("127.0.0.1:0", 2)
        })
        .unwrap();
        let socket = client(daemon.addr);
        for _ in 0..500 {
            socket.send(b"listen_source:1|c").unwrap();
        }
        assert!(eventually(|| daemon.packets() == 500));
        let busy = daemon
            .stats()
            .iter()
            .filter(|s| s.packets.load(Ordering::Relaxed) > 0)
            .count();
        assert_eq!(busy, 1);
    }

    #[test]
    fn oversized_datagram_is_counted_and_not_ingested() {
        let daemon = Daemon::start(UdpOptions {
            max_datagram_bytes: 512,
            ..options("127.0.0.1:0", 2)
        })
        .unwrap();
        let socket = client(daemon.addr);
        let line = b"listen_big:1|c\n";
        let big: Vec<u8> = line.iter().copied().cycle().take(1000).collect();
        socket.send(&big).unwrap();
        // Exactly the limit is accepted: 32 lines of 16 bytes.
        let edge: Vec<u8> = b"listen_edge:1|c\n".repeat(32);
        assert_eq!(edge.len(), 512);
        socket.send(&edge).unwrap();
        assert!(eventually(|| daemon
            .total(|s| s.oversized.load(Ordering::Relaxed))
            == 1
            && daemon.counter("listen_edge") == Some(32.0)));
        assert_eq!(daemon.counter("listen_big"), None);
        assert_eq!(
            daemon.packets(),
            1,
            "only the datagram that fit counts as received"
        );
    }

    #[test]
    fn ipv6_loopback_works() {
        if !ipv6_loopback_available() {
            eprintln!("skipped: no IPv6 on the loopback interface");
            return;
        }
        let daemon = Daemon::start(options("[::1]:0", 2)).unwrap();
        assert!(daemon.addr.is_ipv6());
        assert_ne!(daemon.addr.port(), 0);
        let socket = client(daemon.addr);
        for _ in 0..100 {
            socket.send(b"listen_v6:1|c").unwrap();
        }
        assert!(eventually(|| daemon.counter("listen_v6") == Some(100.0)));
        assert_eq!(daemon.telemetry.listeners(), vec![daemon.addr.to_string()]);
    }

    #[test]
    fn ipv4_and_ipv6_wildcards_share_a_port() {
        if !ipv6_loopback_available() {
            eprintln!("skipped: no IPv6 on the loopback interface");
            return;
        }
        // Another test may take the chosen port on IPv6 in between; try a few ports.
        for _ in 0..5 {
            let v4 = bind(&options("0.0.0.0:0", 2)).unwrap();
            let port = v4[0].local_addr().port();
            match bind(&options(&format!("[::]:{port}"), 2)) {
                Ok(v6) => {
                    assert_eq!(v6[0].local_addr().port(), port);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("[::] never bound beside 0.0.0.0 on the same port");
    }

    #[test]
    fn every_socket_of_a_listener_shares_the_first_port() {
        let listeners = bind(&options("127.0.0.1:0", 3)).unwrap();
        assert_eq!(listeners.len(), 3);
        let first = listeners[0].local_addr();
        assert_ne!(first.port(), 0);
        for listener in &listeners {
            assert_eq!(listener.local_addr(), first);
            assert_eq!(local_port(&listener.socket).unwrap(), first.port());
        }
    }

    #[test]
    fn zero_receivers_means_one_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(bind(&options("127.0.0.1:0", 0)).unwrap().len(), cores);
    }

    #[test]
    fn binding_a_port_in_use_names_the_address() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(&options(&addr.to_string(), 2)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn a_second_group_cannot_join_a_running_one() {
        // SO_REUSEPORT alone would let this bind succeed and steal half the traffic.
        let first = bind(&options("127.0.0.1:0", 2)).unwrap();
        let addr = first[0].local_addr();
        let err = bind(&options(&addr.to_string(), 2)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn receive_buffer_size_is_reported() {
        let listeners = bind(&UdpOptions {
            receive_buffer_bytes: 1 << 20,
            ..options("127.0.0.1:0", 1)
        })
        .unwrap();
        let granted = listeners[0].receive_buffer_bytes();
        // At least what SO_RCVBUF grants anyone (Linux's minimum is a few KiB), at most the
        // doubled request.
        assert!(granted > 0 && granted <= 2 << 20, "{granted}");
    }

    /// The drop count of the sockets bound to `port` in /proc/net/udp, if readable.
    fn proc_udp_drops(port: u16) -> Option<u64> {
        let table = std::fs::read_to_string("/proc/net/udp").ok()?;
        let suffix = format!(":{port:04X}");
        let mut total = None;
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1).is_some_and(|local| local.ends_with(&suffix)) {
                let drops: u64 = fields.last()?.parse().ok()?;
                *total.get_or_insert(0) += drops;
            }
        }
        total
    }

    /// Floods the listeners' (one) socket while nobody reads, then starts them and checks
    /// that the drops they report add up to the kernel's own count, once.
    fn assert_kernel_drops_counted_once(listeners: Vec<BoundListener>) {
        let addr = listeners[0].local_addr();
        // Nobody reads yet: the tiny buffer fills after a few datagrams, the rest are dropped.
        let flood = client(addr);
        const SENT: u64 = 500;
        for _ in 0..SENT {
            flood.send(b"listen_flood:1|c").unwrap();
        }
        let daemon = Daemon::spawn(listeners);
        // The count rides on datagrams queued after the drops, so send more until one arrives
        // and every datagram is accounted for (the first ones may be dropped too, while the
        // receiver has not yet drained the full buffer).
        let trigger = client(addr);
        let dropped = || daemon.total(|s| s.kernel_drops.load(Ordering::Relaxed));
        let mut sent = SENT;
        let settled = eventually(|| {
            trigger.send(b"listen_trigger:1|c").unwrap();
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
            dropped() > 0 && daemon.packets() + dropped() == sent
        });
        assert!(
            settled,
            "sent {sent}, received {}, dropped {}",
            daemon.packets(),
            dropped()
        );
        // Every receiver reads a datagram that carries the count (a receiver sharing the
        // socket with others must not report it again).
        let every_receiver_read = eventually(|| {
            trigger.send(b"listen_trigger:1|c").unwrap();
            sent += 1;
            std::thread::sleep(Duration::from_millis(2));
            daemon
                .stats()
                .iter()
                .all(|s| s.packets.load(Ordering::Relaxed) > 0)
        });
        assert!(every_receiver_read, "a receiver never got a datagram");
        assert!(
            eventually(|| daemon.packets() + dropped() == sent),
            "sent {sent}, received {}, dropped {}",
            daemon.packets(),
            dropped()
        );
        let drops = dropped();
        let kept = daemon.counter("listen_flood").unwrap_or(0.0) as u64;
        assert!(kept > 0, "the buffer held nothing");
        assert!(drops <= SENT + 5, "{drops}");
        if let Some(kernel) = proc_udp_drops(addr.port()) {
            assert_eq!(drops, kernel, "/proc/net/udp disagrees");
        }
    }

    #[test]
    fn kernel_drops_are_counted_from_rxq_ovfl() {
        let listeners = bind(&UdpOptions {
            receive_buffer_bytes: 4096,
            ..options("127.0.0.1:0", 1)
        })
        .unwrap();
        assert_kernel_drops_counted_once(listeners);
    }

    /// A UDP socket as systemd would pass it (bound, not read), opened under `systemd:statsd`
    /// for `receivers` receivers.
    fn adopted(receivers: usize, receive_buffer: Option<usize>) -> Vec<BoundListener> {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Some(bytes) = receive_buffer {
            set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes as i32).unwrap();
        }
        let addr = socket.local_addr().unwrap();
        let mut passed = Passed::from_sockets([("statsd".to_owned(), OwnedFd::from(socket))]);
        let listeners = open(
            &UdpOptions {
                listen: vec!["systemd:statsd".parse().unwrap()],
                // Not raised past what the test set.
                receive_buffer_bytes: receive_buffer.unwrap_or(4096),
                ..options("127.0.0.1:0", receivers)
            },
            &mut passed,
        )
        .unwrap();
        assert_eq!(listeners.len(), receivers);
        for listener in &listeners {
            assert!(listener.is_shared());
            assert_eq!(listener.local_addr(), addr);
        }
        listeners
    }

    #[test]
    fn receivers_share_a_passed_socket_and_count_exactly() {
        let listeners = adopted(3, None);
        let daemon = Daemon::spawn(listeners);
        let clients: Vec<_> = (0..4).map(|_| client(daemon.addr)).collect();
        for round in 0..250 {
            for socket in &clients {
                socket
                    .send(b"listen_shared:1|c\nlisten_shared:2|c")
                    .unwrap();
            }
            if round % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert!(
            eventually(|| daemon.counter("listen_shared") == Some(3000.0)),
            "counter is {:?}",
            daemon.counter("listen_shared")
        );
        assert_eq!(daemon.packets(), 1000);
        assert_eq!(
            daemon.thread_names(),
            ["tallyd-udp-0", "tallyd-udp-1", "tallyd-udp-2"]
        );
        assert_eq!(
            daemon.telemetry.listeners(),
            vec![daemon.addr.to_string()],
            "one listener label for the shared socket"
        );
    }

    #[test]
    fn kernel_drops_of_a_shared_socket_are_counted_once_not_per_receiver() {
        assert_kernel_drops_counted_once(adopted(3, Some(4096)));
    }

    /// The receive buffer a passed socket ends up with, when its unit set `unit_bytes` and
    /// the configuration asks for `requested`.
    fn passed_receive_buffer(unit_bytes: i32, requested: usize) -> (usize, usize) {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, unit_bytes)
            .or_else(|_| set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RCVBUF, unit_bytes))
            .unwrap();
        let before = receive_buffer_size(&socket).unwrap();
        let mut passed = Passed::from_sockets([("s".to_owned(), OwnedFd::from(socket))]);
        let listeners = open(
            &UdpOptions {
                listen: vec!["systemd:s".parse().unwrap()],
                receive_buffer_bytes: requested,
                ..options("127.0.0.1:0", 1)
            },
            &mut passed,
        )
        .unwrap();
        let after = receive_buffer_size(&listeners[0].socket).unwrap();
        assert_eq!(listeners[0].receive_buffer_bytes(), after);
        (before, after)
    }

    #[test]
    fn a_passed_socket_receive_buffer_is_raised_to_the_request_never_lowered() {
        let (before, after) = passed_receive_buffer(8192, 256 * 1024);
        assert!(after > before, "not raised: {before} -> {after}");
        let (before, after) = passed_receive_buffer(512 * 1024, 16 * 1024);
        assert_eq!(after, before, "lowered");
    }

    fn control_message(level: libc::c_int, kind: libc::c_int, data: &[u8]) -> Vec<u8> {
        let len = CMSG_DATA_OFFSET + data.len();
        let mut out = vec![0u8; len.next_multiple_of(size_of::<usize>())];
        // SAFETY: all-zero bytes are a valid cmsghdr (integers and padding).
        let mut header: libc::cmsghdr = unsafe { std::mem::zeroed() };
        header.cmsg_len = len as _;
        header.cmsg_level = level;
        header.cmsg_type = kind;
        // SAFETY: `out` has room for a cmsghdr (len >= CMSG_LEN(0) >= its size);
        // write_unaligned has no alignment requirement.
        unsafe {
            out.as_mut_ptr()
                .cast::<libc::cmsghdr>()
                .write_unaligned(header)
        };
        out[CMSG_DATA_OFFSET..len].copy_from_slice(data);
        out
    }

    #[test]
    fn rxq_ovfl_reads_the_drop_count() {
        let message = control_message(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &1234u32.to_ne_bytes());
        assert_eq!(rxq_ovfl(&message), Some(1234));
    }

    #[test]
    fn rxq_ovfl_finds_the_count_after_another_message() {
        let mut control = control_message(libc::SOL_SOCKET, libc::SO_TIMESTAMP, &[7; 16]);
        control.extend(control_message(
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            &9u32.to_ne_bytes(),
        ));
        assert_eq!(rxq_ovfl(&control), Some(9));
    }

    #[test]
    fn rxq_ovfl_ignores_other_and_malformed_messages() {
        assert_eq!(rxq_ovfl(&[]), None);
        let other = control_message(libc::SOL_IP, libc::SO_RXQ_OVFL, &5u32.to_ne_bytes());
        assert_eq!(rxq_ovfl(&other), None);
        // Too short to hold the count.
        let short = control_message(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &[1, 2]);
        assert_eq!(rxq_ovfl(&short), None);
        // A length running past the buffer ends the walk.
        let mut long = control_message(libc::SOL_SOCKET, libc::SO_RXQ_OVFL, &5u32.to_ne_bytes());
        long.truncate(CMSG_DATA_OFFSET + 2);
        assert_eq!(rxq_ovfl(&long), None);
        // A zero length must not loop forever.
        let zero = vec![0u8; 64];
        assert_eq!(rxq_ovfl(&zero), None);
    }

    #[test]
    fn drop_counter_survives_the_kernel_counter_wrapping() {
        let mut counter = DropCounter::default();
        assert_eq!(counter.update(5), 5);
        assert_eq!(counter.update(u32::MAX), u64::from(u32::MAX));
        assert_eq!(counter.update(3), (1 << 32) + 3);
        assert_eq!(counter.update(3), (1 << 32) + 3);
    }

    #[test]
    fn spread_defaults_to_random() {
        assert_eq!(UdpOptions::default().spread, Spread::Random);
        assert_eq!(
            UdpOptions::default().listen,
            vec!["127.0.0.1:8125".parse::<Endpoint<SocketAddr>>().unwrap()]
        );
    }
}
