//! TCP: newline-delimited StatsD lines over streams (`[tcp]`), for clients that would rather
//! block than lose a datagram (the `statsd` package's `TCPStatsClient`, statsd_exporter's
//! `--statsd.listen-tcp`).
//!
//! ## Threads: one per listen address, its connections multiplexed
//!
//! Each listen address gets one receive thread (like a UDP socket), which runs a small
//! current-thread tokio runtime: the accept loop and one task per connection, all on that
//! thread. So the model stays the parent module's: one thread, one [`Ingester`], one
//! [`ReceiverStats`], shared by the connections through a `RefCell` that is only ever borrowed
//! between two awaits. The alternatives cost more: a thread per connection needs an ingester
//! (and its series cache) per connection, up to `max_connections` of them; a reactor shared
//! with the HTTP server would let a flood of lines delay scrapes. TCP carries what a client
//! chose to send reliably, not the bulk traffic (that is UDP, on every core), so one core per
//! address is enough.
//!
//! ## Bounds
//!
//! - Connections: at most `max_connections` open per address; one more is accepted and closed
//!   at once (a refused `connect` would look like tallyd being down), and counted.
//! - Memory: the thread reads into one buffer of [`READ_BUFFER`] bytes shared by all its
//!   connections; a connection keeps only the unterminated tail of what it sent, at most
//!   `max_line_bytes`. So the worst case is `max_connections × max_line_bytes` (64 MiB at the
//!   defaults), reached only by that many peers each holding a nearly full line.
//! - Lines: a line longer than `max_line_bytes` (the bytes before its `\n`) is refused and
//!   counted as `line_too_long`; the rest of it is skipped up to the next `\n`, and the
//!   connection stays open.
//! - Time: a connection that sends nothing for `idle_timeout_seconds` is closed and counted. A
//!   slow peer costs only its tail buffer: every read is handled when it comes, no connection
//!   waits for another.
//!
//! Whole lines go to the ingester in runs (what one read brought, less the unterminated tail),
//! which the parser splits on `\n` and whose `\r\n` it tolerates. At end of stream (a peer that
//! half-closes or closes), a final line without `\n` is ingested too. On shutdown, open
//! connections are closed and their unterminated tails dropped.
//!
//! [`Ingester`]: crate::ingest::Ingester
//! [`ReceiverStats`]: crate::telemetry::ReceiverStats

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use memchr::{memchr, memchr_iter, memrchr};

use super::activation::{Endpoint, Passed, Role};
use super::{Intake, LOG_INTERVAL, LogLimit, OpenError, Stop};
use crate::protocol::Reason;

/// The longest `max_line_bytes` allowed: the parser's own line limit (64 KiB), above which it
/// refuses a line however it came.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// The read buffer a TCP thread shares among its connections.
pub const READ_BUFFER: usize = 64 * 1024;

/// Descriptors tallyd keeps for itself besides its connection caps: its other sockets, the
/// runtimes' own, reads of `/proc` and of the configuration file.
const OWN_DESCRIPTORS: usize = 64;

/// A retained tail buffer larger than this is given back once its line is done, so an idle
/// connection that once sent a long line does not keep its memory.
const KEEP_TAIL_CAPACITY: usize = 4 * 1024;

/// What `[tcp]` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpOptions {
    /// Addresses to accept connections on, or `systemd:NAME` for the listening sockets
    /// systemd passed under that name; none by default.
    pub listen: Vec<Endpoint<SocketAddr>>,
    /// Longest line accepted, in bytes before its `\n`.
    pub max_line_bytes: usize,
    /// Open connections per address at most.
    pub max_connections: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            listen: Vec::new(),
            max_line_bytes: MAX_LINE_BYTES,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// One bound TCP listen address, not yet accepting.
#[derive(Debug)]
pub struct TcpListener {
    listener: std::net::TcpListener,
    local_addr: SocketAddr,
    max_line_bytes: usize,
    max_connections: usize,
    idle_timeout: Duration,
}

impl TcpListener {
    /// The address bound (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Binds every TCP listen address and adopts the listening sockets systemd passed for
/// `systemd:NAME` entries, so that a port in use (named in the error) or a passed socket that
/// does not fit is reported before anything starts.
pub fn open(options: &TcpOptions, passed: &mut Passed) -> Result<Vec<TcpListener>, OpenError> {
    super::open_endpoints(
        &options.listen,
        Role::Tcp,
        passed,
        |&addr| {
            let named = |e: io::Error| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen for StatsD on TCP {addr}: {e}"),
                )
            };
            let listener = std::net::TcpListener::bind(addr).map_err(named)?;
            ready(listener, options, "").map_err(named).map(|l| vec![l])
        },
        |fd| {
            ready(
                std::net::TcpListener::from(fd),
                options,
                " (socket passed by systemd)",
            )
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot use the TCP socket systemd passed: {e}"),
                )
            })
            .map(|l| vec![l])
        },
    )
}

/// A bound (or passed) listening socket made ready for the receive thread's reactor.
fn ready(
    listener: std::net::TcpListener,
    options: &TcpOptions,
    origin: &str,
) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    tracing::info!(
        "listening for StatsD on TCP {local_addr}{origin}: at most {} connections, lines up to \
         {} bytes, idle timeout {:?}",
        options.max_connections,
        options.max_line_bytes,
        options.idle_timeout
    );
    Ok(TcpListener {
        listener,
        local_addr,
        max_line_bytes: options.max_line_bytes.max(1),
        max_connections: options.max_connections.max(1),
        idle_timeout: options.idle_timeout,
    })
}

/// Lowers the listeners' `max_connections` where the process's limit on open files
/// (`RLIMIT_NOFILE`) cannot hold them beside `reserved` descriptors for the rest of tallyd (the
/// HTTP server's connections). Past that limit a connection cannot even be accepted: it waits
/// in the kernel's queue, neither served nor refused, and a scrape finds no descriptor either.
/// Under the lowered cap it is accepted, closed and counted like any refusal.
pub fn fit_descriptor_limit(listeners: &mut [TcpListener], reserved: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct passed and nothing else.
    if listeners.is_empty()
        || unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return;
    }
    let limit = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    let in_use = std::fs::read_dir("/proc/self/fd").map_or(0, |fds| fds.count());
    let available = limit.saturating_sub(in_use + OWN_DESCRIPTORS + reserved);
    let wanted: usize = listeners.iter().map(|l| l.max_connections).sum();
    if wanted <= available {
        return;
    }
    let each = (available / listeners.len()).max(1);
    for listener in listeners.iter_mut() {
        listener.max_connections = listener.max_connections.min(each);
    }
    tracing::warn!(
        "the limit on open files (RLIMIT_NOFILE) is {limit}, too few for [tcp] max_connections \
         ({wanted} over {} listener(s)) beside the HTTP server's {reserved} connections and \
         tallyd's own {in_use} + {OWN_DESCRIPTORS}: each TCP listener now takes at most {each} \
         connections, and refuses (and counts) more. Raise the limit (LimitNOFILE= in the unit, \
         ulimit -n) to serve more",
        listeners.len()
    );
}

/// What the connections of one thread share.
struct Shared {
    intake: RefCell<Intake>,
    buffer: RefCell<Box<[u8]>>,
    open: Cell<usize>,
    max_line_bytes: usize,
    idle_timeout: Duration,
}

impl Shared {
    /// Counts a connection opened (`+1`) or closed (`-1`), here and in the published gauge.
    fn count_open(&self, change: isize) {
        let open = self.open.get().saturating_add_signed(change);
        self.open.set(open);
        self.intake
            .borrow()
            .stats()
            .open_connections
            .store(open as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The body of one TCP thread: accepts and serves connections until `stop` is requested, then
/// closes them and publishes the last counts.
pub(super) fn receive_loop(listener: TcpListener, intake: Intake, stop: &Stop) {
    let label = intake.stats().listener.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(
                listener = label,
                "cannot start the TCP receive runtime: {e}"
            );
            return;
        }
    };
    let shared = Rc::new(Shared {
        intake: RefCell::new(intake),
        buffer: RefCell::new(vec![0; READ_BUFFER].into_boxed_slice()),
        open: Cell::new(0),
        max_line_bytes: listener.max_line_bytes,
        idle_timeout: listener.idle_timeout,
    });
    let tasks = tokio::task::LocalSet::new();
    tasks.block_on(&runtime, accept_loop(listener, Rc::clone(&shared), stop));
    // Dropping the tasks closes the connections still open.
    drop(tasks);
    shared.intake.borrow_mut().flush();
}

async fn accept_loop(listener: TcpListener, shared: Rc<Shared>, stop: &Stop) {
    let max_connections = listener.max_connections;
    let listener = match tokio::net::TcpListener::from_std(listener.listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot use the TCP listener {}: {e}", listener.local_addr);
            return;
        }
    };
    let stats = std::sync::Arc::clone(&shared.intake.borrow().stats);
    let mut error_log = LogLimit::default();
    // A quiet listener still flushes as often as a datagram receiver's timeout, so what the
    // intake holds for others (the relay's lines) does not wait for the next read.
    let mut flush = tokio::time::interval(super::udp::RECEIVE_TIMEOUT);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            () = stop.0.cancelled() => return,
            _ = flush.tick() => {
                shared.intake.borrow_mut().flush();
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                if shared.open.get() >= max_connections {
                    stats
                        .connections_refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    drop(stream);
                    continue;
                }
                stats
                    .connections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared.count_open(1);
                tokio::task::spawn_local(serve(Rc::clone(&shared), stream));
            }
            Err(e) => {
                if error_log.allow() {
                    tracing::warn!(
                        listener = stats.listener.as_str(),
                        "TCP accept failed: {e} (logged at most every {}s per listener)",
                        LOG_INTERVAL.as_secs()
                    );
                }
                // Out of file descriptors, say: don't spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Gives a connection's slot back when its task ends, however it ends.
struct OpenSlot(Rc<Shared>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.count_open(-1);
    }
}

/// Reads one connection until end of stream, an error or the idle timeout.
async fn serve(shared: Rc<Shared>, stream: tokio::net::TcpStream) {
    let slot = OpenSlot(shared);
    let shared = &slot.0;
    let mut lines = LineSplitter::new(shared.max_line_bytes);
    loop {
        match tokio::time::timeout(shared.idle_timeout, stream.readable()).await {
            Err(_) => {
                shared
                    .intake
                    .borrow()
                    .stats()
                    .idle_timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Ok(Err(_)) => return,
            Ok(Ok(())) => {}
        }
        // Borrowed only until the next await: the tasks of this thread take turns.
        let mut buffer = shared.buffer.borrow_mut();
        let mut intake = shared.intake.borrow_mut();
        let intake = &mut *intake;
        let mut deliver = |chunk: Chunk<'_>| match chunk {
            Chunk::Lines(lines) => intake.ingest(lines),
            Chunk::TooLong => intake.refuse_line(Reason::LineTooLong),
        };
        match stream.try_read(&mut buffer) {
            Ok(0) => {
                lines.finish(&mut deliver);
                intake.flush();
                return;
            }
            Ok(n) => {
                lines.feed(&buffer[..n], &mut deliver);
                intake.flush();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Reset by the peer, most likely: what it sent whole was ingested.
            Err(_) => return,
        }
    }
}

/// What [`LineSplitter`] hands over.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// One or more whole lines, each at most the limit, the last one ending in `\n` (except
    /// the final line at end of stream).
    Lines(&'a [u8]),
    /// One line longer than the limit, skipped.
    TooLong,
}

/// Cuts a byte stream into runs of whole lines, keeping at most `max` bytes of an unterminated
/// line and skipping (reporting once) every line longer than that.
#[derive(Debug)]
pub struct LineSplitter {
    /// The start of an unterminated line, at most `max` bytes.
    tail: Vec<u8>,
    /// Inside a line already reported too long: skip up to its `\n`.
    skipping: bool,
    max: usize,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes before their `\n`.
    pub fn new(max: usize) -> Self {
        LineSplitter {
            tail: Vec::new(),
            skipping: false,
            max,
        }
    }

    /// Takes the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8], out: &mut impl FnMut(Chunk<'_>)) {
        if self.skipping {
            let Some(end) = memchr(b'\n', data) else {
                return;
            };
            data = &data[end + 1..];
            self.skipping = false;
        }
        if !self.tail.is_empty() {
            match memchr(b'\n', data) {
                None => {
                    if self.tail.len() + data.len() > self.max {
                        self.drop_tail();
                        self.skipping = true;
                        out(Chunk::TooLong);
                    } else {
                        self.tail.extend_from_slice(data);
                    }
                    return;
                }
                Some(end) => {
                    if self.tail.len() + end > self.max {
                        out(Chunk::TooLong);
                    } else {
                        self.tail.extend_from_slice(&data[..=end]);
                        out(Chunk::Lines(&self.tail));
                    }
                    self.drop_tail();
                    data = &data[end + 1..];
                }
            }
        }
        // `data` starts at the start of a line.
        let (whole, rest) = match memrchr(b'\n', data) {
            Some(last) => data.split_at(last + 1),
            None => (&b""[..], data),
        };
        if !whole.is_empty() {
            self.whole_lines(whole, out);
        }
        if rest.len() > self.max {
            self.skipping = true;
            out(Chunk::TooLong);
        } else {
            self.tail.extend_from_slice(rest);
        }
    }

    /// End of stream: a final line without `\n` still counts.
    pub fn finish(&mut self, out: &mut impl FnMut(Chunk<'_>)) {
        if !self.skipping && !self.tail.is_empty() {
            out(Chunk::Lines(&self.tail));
        }
        self.drop_tail();
        self.skipping = false;
    }

    /// Hands over `whole` (lines each ending in `\n`), leaving out lines that are too long.
    fn whole_lines(&self, whole: &[u8], out: &mut impl FnMut(Chunk<'_>)) {
        // No line can be longer than the whole run: the common case needs no second look.
        if whole.len() <= self.max + 1 {
            out(Chunk::Lines(whole));
            return;
        }
        let mut line_start = 0;
        let mut run_start = 0;
        for end in memchr_iter(b'\n', whole) {
            if end - line_start > self.max {
                if run_start < line_start {
                    out(Chunk::Lines(&whole[run_start..line_start]));
                }
                out(Chunk::TooLong);
                run_start = end + 1;
            }
            line_start = end + 1;
        }
        if run_start < whole.len() {
            out(Chunk::Lines(&whole[run_start..]));
        }
    }

    fn drop_tail(&mut self) {
        self.tail.clear();
        if self.tail.capacity() > KEEP_TAIL_CAPACITY {
            self.tail = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a splitter of `max` hands over for these reads, then end of stream.
    fn split(max: usize, reads: &[&[u8]]) -> Vec<String> {
        let mut splitter = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut collect = |chunk: Chunk<'_>| {
            out.push(match chunk {
                Chunk::Lines(l) => String::from_utf8_lossy(l).into_owned(),
                Chunk::TooLong => "<too long>".to_owned(),
            })
        };
        for read in reads {
            splitter.feed(read, &mut collect);
        }
        splitter.finish(&mut collect);
        out
    }

    #[test]
    fn whole_lines_of_one_read_go_together() {
        assert_eq!(split(100, &[b"a:1|c\nb:2|c\n"]), ["a:1|c\nb:2|c\n"]);
    }

    #[test]
    fn a_line_cut_between_reads_is_joined() {
        assert_eq!(
            split(100, &[b"a:1|c\nb:", b"2|c\nc:3", b"|c\n"]),
            ["a:1|c\n", "b:2|c\n", "c:3|c\n"]
        );
    }

    #[test]
    fn a_final_line_without_newline_counts_at_end_of_stream() {
        assert_eq!(split(100, &[b"a:1|c\nb:2|c"]), ["a:1|c\n", "b:2|c"]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        assert_eq!(split(5, &[b"abcde\n"]), ["abcde\n"]);
        assert_eq!(split(5, &[b"abc", b"de\n"]), ["abcde\n"]);
        assert_eq!(split(5, &[b"abcde"]), ["abcde"]);
    }

    #[test]
    fn a_long_line_inside_one_read_is_skipped_alone() {
        assert_eq!(
            split(5, &[b"a:1\nabcdefgh\nb:2\n"]),
            ["a:1\n", "<too long>", "b:2\n"]
        );
    }

    #[test]
    fn a_long_unterminated_line_is_skipped_up_to_its_newline() {
        assert_eq!(
            split(5, &[b"a:1\nabcdef", b"ghij", b"kl\nb:2\n"]),
            ["a:1\n", "<too long>", "b:2\n"]
        );
    }

    #[test]
    fn a_tail_that_grows_past_the_limit_is_skipped() {
        assert_eq!(
            split(5, &[b"abc", b"def", b"g\nb:2\n"]),
            ["<too long>", "b:2\n"]
        );
        assert_eq!(split(5, &[b"abc", b"def\nb:2\n"]), ["<too long>", "b:2\n"]);
    }

    #[test]
    fn a_long_final_line_at_end_of_stream_is_not_ingested() {
        assert_eq!(split(5, &[b"a:1\nabcdefgh"]), ["a:1\n", "<too long>"]);
    }
}
