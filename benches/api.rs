//! The HTTP API benchmark (issue 11's targets): the real `tallyd` binary with its store on disk,
//! pinned to one CPU as in `e2e.rs`, driven from the other CPU by a small keep-alive HTTP/1.1
//! client over several connections. Figures: Matih points recorded per second in batches of
//! 1,000, Seldon posts per second, the latency of single-point records paced at 2,000 requests/s
//! (from each request's intended send time), a 7-day query, and the UDP path with the API idle
//! and loaded. Prints a Markdown table of medians on stdout; every measurement goes to stderr.
//!
//! `cargo bench --bench api`; knobs (`API_QUICK=1`, `API_ONLY=…`, …) are in `benches/README.md`.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{
    Check, Daemon, Load, Run, Sent, Setup, Table, Unit, env_or, load_average, measure_udp, median,
    percentile, pin_self, thousands,
};
use tallyd::custom::time::format_instant;

/// The one token of the bench's tallyd (its SHA-256 goes in the config).
const SECRET: &str = "api-bench-secret";
const TENANT: &str = "bench";
const BASE: &str = "/api/v1/observability/custom-metrics";
const SELDON: &str = "/api/v1/seldon/metrics";
/// The UDP traffic of the `udp` group: e2e's type mix, 3 tags, 1k series.
const MIX: &str = "c:40,g:20,ms:25,h:5,d:5,s:5";
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

const GROUPS: [&str; 5] = ["record", "seldon", "latency", "query", "udp"];

/// What a group measures, added to the table.
type Group = fn(&Settings, &mut Table);

struct Settings {
    /// Pinning, priority and binaries (`API_DAEMON_CPU`, `API_NICE`, `API_TALLYD`, …).
    base: Setup,
    runs: usize,
    /// Length of one flat-out run (`record`, `seldon`).
    seconds: f64,
    connections: usize,
    /// Flat-out runs poll their connections from one thread that never sleeps (`API_CLIENT=spin`)
    /// rather than block in a thread per connection (`block`).
    spin: bool,
    batch: usize,
    /// Label sets of the recorded gauge.
    series: usize,
    latency_rate: f64,
    latency_seconds: f64,
    latency_connections: usize,
    query_days: i64,
    queries: usize,
    udp_rate: f64,
    udp_lines: usize,
    udp_seconds: f64,
    loaded_points: f64,
    loaded_posts: f64,
    /// Where the temporary data directories go (a disk, not tmpfs, for honest fsyncs).
    data_parent: PathBuf,
    groups: BTreeSet<&'static str>,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("API_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let mut groups = BTreeSet::new();
        match std::env::var("API_ONLY") {
            Ok(list) if !list.trim().is_empty() => {
                for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
                    match GROUPS.iter().find(|g| **g == word) {
                        Some(group) => {
                            groups.insert(*group);
                        }
                        None if word == "all" => groups.extend(GROUPS),
                        None => panic!(
                            "API_ONLY: unknown group {word:?} (record, seldon, latency, query, \
                             udp, all)"
                        ),
                    }
                }
            }
            _ => groups.extend(GROUPS),
        }
        Settings {
            base: Setup::from_env("API", "api"),
            runs: env_or("API_RUNS", if quick { 1 } else { 3 }).max(1),
            seconds: env_or("API_SECONDS", if quick { 2.0 } else { 5.0 }),
            connections: env_or("API_CONNECTIONS", 4).max(1),
            spin: match env_or("API_CLIENT", "spin".to_string()).as_str() {
                "spin" => true,
                "block" => false,
                other => panic!("API_CLIENT={other:?}: spin or block"),
            },
            batch: env_or("API_BATCH", 1000).max(1),
            series: env_or("API_SERIES", 100).max(1),
            latency_rate: env_or("API_LATENCY_RATE", 2000.0),
            latency_seconds: env_or("API_LATENCY_SECONDS", if quick { 3.0 } else { 10.0 }),
            latency_connections: env_or("API_LATENCY_CONNECTIONS", 64).max(1),
            query_days: env_or("API_QUERY_DAYS", 7).max(1),
            queries: env_or("API_QUERIES", if quick { 50 } else { 200 }).max(1),
            udp_rate: env_or("API_UDP_RATE", 50_000.0),
            udp_lines: env_or("API_UDP_LINES", 20).max(1),
            udp_seconds: env_or("API_UDP_SECONDS", if quick { 2.0 } else { 4.0 }),
            loaded_points: env_or("API_LOADED_POINTS", 200_000.0),
            loaded_posts: env_or("API_LOADED_POSTS", 30_000.0),
            data_parent: std::env::var_os("API_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir),
            groups,
        }
    }

    fn wants(&self, group: &str) -> bool {
        self.groups.contains(group)
    }
}

// ---------------------------------------------------------------------------------------------
// A keep-alive HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// A response: its status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn contains(&self, needle: &str) -> bool {
        memchr::memmem::find(&self.body, needle.as_bytes()).is_some()
    }
}

/// One connection to tallyd, kept alive between requests (and opened again when tallyd closes
/// it). Reads responses by their `Content-Length`, which is how the API answers.
struct Client {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let mut client = Client {
            addr,
            stream: None,
            buf: Vec::with_capacity(64 * 1024),
        };
        client.stream = Some(client.open().expect("connect to tallyd's HTTP port"));
        client
    }

    fn open(&self) -> std::io::Result<TcpStream> {
        let stream = TcpStream::connect(self.addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        stream.set_write_timeout(Some(Duration::from_secs(60)))?;
        Ok(stream)
    }

    /// Sends `request` (a whole HTTP/1.1 request) and waits for its response.
    fn exchange(&mut self, request: &[u8]) -> Result<Answer, String> {
        let reused = self.stream.is_some();
        let attempt = |client: &mut Client| {
            client.send(request)?;
            client
                .receive(true)
                .map(|answer| answer.expect("a blocking read answers"))
        };
        match attempt(self) {
            // tallyd may close a kept-alive connection between requests (idle timeout): once,
            // on a fresh one.
            Err(Closed::Early(_)) if reused => {
                self.stream = None;
                attempt(self).map_err(Closed::into_message)
            }
            other => other.map_err(Closed::into_message),
        }
    }

    /// Writes a whole request (connecting first if tallyd closed the connection).
    fn send(&mut self, request: &[u8]) -> Result<(), Closed> {
        if self.stream.is_none() {
            let stream = self
                .open()
                .map_err(|e| Closed::Late(format!("connect: {e}")))?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected");
        self.buf.clear();
        stream.write_all(request).map_err(|e| {
            self.stream = None;
            Closed::Early(format!("write: {e}"))
        })
    }

    /// The response to the request sent: waiting for it, or, with `wait` false, `None` when
    /// it has not (all) arrived yet.
    fn receive(&mut self, wait: bool) -> Result<Option<Answer>, Closed> {
        let result = self.receive_on(wait);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn receive_on(&mut self, wait: bool) -> Result<Option<Answer>, Closed> {
        loop {
            if let Some((answer, close)) = parse_response(&self.buf)? {
                if close {
                    self.stream = None;
                }
                return Ok(Some(answer));
            }
            let stream = self
                .stream
                .as_mut()
                .ok_or_else(|| Closed::Late("not connected".into()))?;
            match read_more(stream, &mut self.buf, wait) {
                Ok(0) => {
                    let what = "connection closed before a whole response".to_string();
                    return Err(if self.buf.is_empty() {
                        Closed::Early(what)
                    } else {
                        Closed::Late(what)
                    });
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && !wait => return Ok(None),
                Err(e) => return Err(Closed::Late(format!("read: {e}"))),
            }
        }
    }
}

/// A whole response at the start of `buf`, and whether tallyd closes the connection after it;
/// `None` while it is incomplete.
fn parse_response(buf: &[u8]) -> Result<Option<(Answer, bool)>, Closed> {
    let Some(head_end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| Closed::Late("response head is not UTF-8".into()))?;
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| Closed::Late(format!("bad status line in {head:?}")))?;
    let mut length = None;
    let mut close = false;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Closed::Late(format!(
                "a {value} response: this client reads Content-Length only"
            )));
        }
    }
    let length = length.ok_or_else(|| Closed::Late(format!("no Content-Length in {head:?}")))?;
    let body = head_end + 4..head_end + 4 + length;
    if buf.len() < body.end {
        return Ok(None);
    }
    let answer = Answer {
        status,
        body: buf[body].to_vec(),
    };
    Ok(Some((answer, close)))
}

/// Why an exchange failed: before any byte of the answer (a kept-alive connection the server
/// had closed; worth one retry), or later.
enum Closed {
    Early(String),
    Late(String),
}

impl Closed {
    fn into_message(self) -> String {
        match self {
            Closed::Early(m) | Closed::Late(m) => m,
        }
    }
}

/// One read into `buf`; without `wait`, `WouldBlock` when nothing has arrived.
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, wait: bool) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut chunk = [0u8; 16 * 1024];
    let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
    // SAFETY: recv into a buffer we own, of its length, on a socket we own.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            chunk.as_mut_ptr().cast(),
            chunk.len(),
            flags,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// A whole request with the bench's token; a body is JSON.
fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: tallyd\r\nAuthorization: Bearer {SECRET}\r\n");
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// One call on a fresh connection, which must answer `expect`.
fn call(addr: SocketAddr, method: &str, path: &str, body: &str, expect: u16) -> Answer {
    let answer = Client::connect(addr)
        .exchange(&request(method, path, body))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert_eq!(answer.status, expect, "{method} {path}: {}", answer.text());
    answer
}

// ---------------------------------------------------------------------------------------------
// Load drivers
// ---------------------------------------------------------------------------------------------

/// What a response must be to count as done.
type Verdict = fn(&Answer) -> Result<(), String>;

/// Requests sent over several keep-alive connections, from threads of the bench's own process
/// (pinned to the loader CPU).
struct Drive {
    connections: usize,
    /// Requests per second in all, open loop: request `i` is due at `start + i / rate`, on
    /// connection `i % connections`, and its latency counts from then (so a slow answer that
    /// delays the next request is not hidden: no coordinated omission). `None`: each
    /// connection sends its next request as soon as its last is answered.
    rate: Option<f64>,
    /// With a rate: send every request due in this long from the start, however late, then
    /// end (so the last requests' latencies count too); [`Driving::finish`] waits for that.
    /// Without: until [`Driving::stop`].
    length: Option<Duration>,
    /// Sent in turn, each connection starting at its own offset.
    requests: Arc<Vec<Vec<u8>>>,
    verdict: Verdict,
    /// Without a rate: every connection on one thread that polls them without ever sleeping
    /// (see [`spin`]), rather than a thread per connection blocked in `recv`.
    spin: bool,
}

/// What the drive's connections did.
#[derive(Default)]
struct Outcome {
    done: u64,
    errors: u64,
    first_error: Option<String>,
    /// From the start signal to the last connection's end.
    seconds: f64,
    /// Per request, in seconds (from its due time when paced).
    latencies: Vec<f64>,
    /// Paced runs: per request, how late the client sent it, in seconds: its thread woke up
    /// late, or its connection was still waiting for the answer before. tallyd is not on this
    /// path until the answer before is late, so it shows what the machine itself adds.
    lateness: Vec<f64>,
    /// Paced runs: per request, its index in the schedule (its due time is `index / rate`).
    due_index: Vec<usize>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.done as f64 / self.seconds
    }

    fn latency_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).map_or(f64::NAN, |s| s * 1e3)
    }

    fn lateness_ms(&self, p: f64) -> f64 {
        percentile(&self.lateness, p).map_or(f64::NAN, |s| s * 1e3)
    }

    /// Paced runs: the percentile of each request's time from its actual send to its answer
    /// (its latency less its lateness), in milliseconds. What tallyd and the loopback took,
    /// without the time the client's own thread was late.
    fn sent_to_answer_ms(&self, p: f64) -> f64 {
        let own: Vec<f64> = (self.latencies.iter())
            .zip(&self.lateness)
            .map(|(latency, late)| latency - late)
            .collect();
        percentile(&own, p).map_or(f64::NAN, |s| s * 1e3)
    }
}

/// A drive under way.
struct Driving {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Outcome>>,
    started: Instant,
}

impl Drive {
    /// Connects every connection, then starts them all at once.
    fn start(self, addr: SocketAddr) -> Driving {
        let stop = Arc::new(AtomicBool::new(false));
        let spinning = self.spin && self.rate.is_none();
        let threads_wanted = if spinning { 1 } else { self.connections };
        let barrier = Arc::new(Barrier::new(threads_wanted + 1));
        let started = Arc::new(OnceLock::new());
        let threads = (0..threads_wanted)
            .map(|k| {
                let (stop, barrier, started) = (
                    Arc::clone(&stop),
                    Arc::clone(&barrier),
                    Arc::clone(&started),
                );
                let requests = Arc::clone(&self.requests);
                let (rate, connections, verdict) = (self.rate, self.connections, self.verdict);
                let length = self.length;
                std::thread::spawn(move || {
                    if spinning {
                        let mut clients: Vec<Client> =
                            (0..connections).map(|_| Client::connect(addr)).collect();
                        barrier.wait();
                        return spin(&mut clients, &requests, verdict, &stop);
                    }
                    let mut client = Client::connect(addr);
                    // Sleeps end closer to their deadline (the default slack is 50 µs).
                    // SAFETY: prctl with an integer argument.
                    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64) };
                    barrier.wait();
                    let start = *started.get().expect("set before the barrier");
                    let pace = rate.map(|rate| Pace {
                        start,
                        rate,
                        end: length.map(|length| start + length),
                    });
                    let mut one = Connection {
                        client: &mut client,
                        requests: &requests,
                        first: k,
                        every: connections,
                        verdict,
                    };
                    one.drive(pace, &stop)
                })
            })
            .collect();
        let start = *started.get_or_init(Instant::now);
        barrier.wait();
        Driving {
            stop,
            threads,
            started: start,
        }
    }
}

/// Every connection on the calling thread, which never sleeps: each sends its next request as
/// soon as its answer is in, and every connection is polled in turn without blocking.
///
/// Why: a client blocked in `recv` is woken by tallyd's `send`, and on loopback tallyd's CPU
/// pays for that wake-up of a thread on the other CPU (in a VM, an interprocessor interrupt):
/// with a blocked client per connection it was about half of tallyd's CPU per Seldon post. A
/// client across the network costs tallyd no such thing; a polling client costs it nothing
/// either (nobody sleeps on the socket), at the price of this thread's whole CPU.
fn spin(
    clients: &mut [Client],
    requests: &[Vec<u8>],
    verdict: Verdict,
    stop: &AtomicBool,
) -> Outcome {
    let mut outcome = Outcome::default();
    let every = clients.len();
    let mut next: Vec<usize> = (0..every).collect();
    let mut sent_at = vec![Instant::now(); every];
    let failed = |outcome: &mut Outcome, error: String| {
        outcome.errors += 1;
        outcome.first_error.get_or_insert(error);
    };
    for (k, client) in clients.iter_mut().enumerate() {
        sent_at[k] = Instant::now();
        if let Err(e) = client.send(&requests[next[k] % requests.len()]) {
            failed(&mut outcome, e.into_message());
        }
    }
    while !stop.load(Ordering::Relaxed) {
        for (k, client) in clients.iter_mut().enumerate() {
            let answered = match client.receive(false) {
                Ok(None) => continue,
                Ok(Some(answer)) => verdict(&answer),
                Err(e) => Err(e.into_message()),
            };
            outcome.latencies.push(sent_at[k].elapsed().as_secs_f64());
            match answered {
                Ok(()) => outcome.done += 1,
                Err(e) => failed(&mut outcome, e),
            }
            next[k] += every;
            sent_at[k] = Instant::now();
            if let Err(e) = client.send(&requests[next[k] % requests.len()]) {
                failed(&mut outcome, e.into_message());
            }
        }
    }
    outcome
}

/// An open-loop schedule: request `i` due at `start + i / rate`, none due at `end` or later.
#[derive(Clone, Copy)]
struct Pace {
    start: Instant,
    rate: f64,
    end: Option<Instant>,
}

/// One connection's share of a drive: requests `first`, `first + every`, …
struct Connection<'a> {
    client: &'a mut Client,
    requests: &'a [Vec<u8>],
    first: usize,
    every: usize,
    verdict: Verdict,
}

impl Connection<'_> {
    /// Sends until `stop`, or to the end of `pace` when it has one.
    fn drive(&mut self, pace: Option<Pace>, stop: &AtomicBool) -> Outcome {
        let mut outcome = Outcome::default();
        let mut i = self.first;
        while !stop.load(Ordering::Relaxed) {
            let due = match pace {
                Some(Pace { start, rate, end }) => {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    if end.is_some_and(|end| due >= end) {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    due
                }
                None => Instant::now(),
            };
            if pace.is_some() {
                outcome.lateness.push(due.elapsed().as_secs_f64());
                outcome.due_index.push(i);
            }
            let result = self
                .client
                .exchange(&self.requests[i % self.requests.len()])
                .and_then(|answer| (self.verdict)(&answer));
            outcome.latencies.push(due.elapsed().as_secs_f64());
            match result {
                Ok(()) => outcome.done += 1,
                Err(e) => {
                    outcome.errors += 1;
                    outcome.first_error.get_or_insert(e);
                }
            }
            i += self.every;
        }
        outcome
    }
}

impl Driving {
    /// Stops every connection after its request in flight; what they did, together.
    fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.finish()
    }

    /// Waits for every connection to send its last request due; what they did, together.
    fn finish(self) -> Outcome {
        let mut all = Outcome::default();
        for thread in self.threads {
            let one = thread.join().expect("a client thread");
            all.done += one.done;
            all.errors += one.errors;
            if all.first_error.is_none() {
                all.first_error = one.first_error;
            }
            all.latencies.extend(one.latencies);
            all.lateness.extend(one.lateness);
            all.due_index.extend(one.due_index);
        }
        all.seconds = self.started.elapsed().as_secs_f64();
        all
    }
}

// ---------------------------------------------------------------------------------------------
// tallyd with its API
// ---------------------------------------------------------------------------------------------

/// tallyd with a token, its store in a fresh directory on disk.
struct Api {
    daemon: Daemon,
    http: SocketAddr,
    /// Holds the config and the data directory; removed on drop.
    dir: tempfile::TempDir,
}

impl Api {
    fn start(s: &Settings) -> Api {
        let dir = tempfile::Builder::new()
            .prefix("tallyd-api-bench-")
            .tempdir_in(&s.data_parent)
            .expect("a temporary directory for the store");
        let daemon = Daemon::tallyd_with_token(&s.base, dir.path(), SECRET, TENANT);
        let http = daemon.http.expect("tallyd's HTTP address");
        Api { daemon, http, dir }
    }

    fn cpu_seconds(&self) -> f64 {
        self.daemon.cpu_seconds()
    }

    /// The directory holding the store (and the config), on the store's file system.
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Registers a gauge with `labels`.
    fn register_gauge(&self, name: &str, labels: &[&str]) {
        let body = serde_json::json!({
            "name": name,
            "type": "gauge",
            "description": "written by benches/api.rs",
            "labels": labels,
            "aggregation": "average",
        });
        call(self.http, "POST", BASE, &body.to_string(), 201);
    }

    fn stop(self) {
        drop(self.daemon.stop());
    }
}

/// How [`point_batches`] lays out points.
struct Points {
    /// Points in all.
    count: usize,
    /// Points per request.
    batch: usize,
    /// Label sets, in turn.
    series: usize,
    /// The first point's timestamp, then one every `step_ms`.
    first_ms: i64,
    step_ms: i64,
}

/// Record requests of the gauge `name` (labels `host`, `model`), as laid out by `points`.
fn point_batches(name: &str, points: Points) -> Vec<Vec<u8>> {
    use std::fmt::Write as _;
    let Points {
        count,
        batch,
        series,
        first_ms,
        step_ms,
    } = points;
    let path = format!("{BASE}/{name}/data");
    let mut bodies = Vec::with_capacity(count.div_ceil(batch.max(1)));
    let mut body = String::new();
    for i in 0..count {
        let series = i % series;
        body.push(if body.is_empty() { '[' } else { ',' });
        // Written out, not built as `serde_json::Value`s: millions of points are laid out
        // before each record run.
        let _ = write!(
            body,
            r#"{{"value":{:?},"labels":{{"host":"host-{}","model":"model-{}"}},"timestamp":"{}"}}"#,
            (i % 1000) as f64 / 10.0,
            series % 10,
            series / 10,
            format_instant(first_ms + i as i64 * step_ms),
        );
        if (i + 1) % batch == 0 || i + 1 == count {
            body.push(']');
            bodies.push(request("POST", &path, &body));
            body.clear();
        }
    }
    bodies
}

/// Points a record run is given room for, per second: well above what one core records, so a
/// run never comes back to its first requests (it says so if it does).
const RECORD_HEADROOM: f64 = 400_000.0;

/// Fresh points for the record requests of one group. Each request set continues where the
/// last ended, one point a millisecond over `series` label sets and the newest at most now, as
/// a recording client's points are: no point repeats a timestamp of its series or lands between
/// points already stored. (Re-sending 16 fixed batches, as this bench once did, scattered every
/// write over the whole table and measured that instead: about half the rate, and 600 bytes
/// written to disk per point.)
struct Timeline {
    name: &'static str,
    batch: usize,
    series: usize,
    next_ms: i64,
}

impl Timeline {
    /// Room for `points` points in all, ending now.
    fn ending_now(s: &Settings, name: &'static str, batch: usize, points: usize) -> Timeline {
        Timeline {
            name,
            batch,
            series: s.series,
            next_ms: now_ms() - points as i64,
        }
    }

    /// The next `points` points, as requests of `batch` points each.
    fn take(&mut self, points: usize) -> Arc<Vec<Vec<u8>>> {
        let requests = point_batches(
            self.name,
            Points {
                count: points,
                batch: self.batch,
                series: self.series,
                first_ms: self.next_ms,
                step_ms: 1,
            },
        );
        self.next_ms += points as i64;
        Arc::new(requests)
    }
}

/// Says loudly when a drive came back to requests it had sent: their points were recorded
/// already, and the run measured something else from then on.
fn warn_if_repeated(what: &str, outcome: &Outcome, requests: usize, connections: usize) {
    let sent = outcome.done as usize + outcome.errors as usize + connections;
    if sent > requests {
        eprintln!(
            "api:   WARNING: {what} sent {sent} requests of {requests} laid out: {} were \
             sent again and repeat points already stored",
            sent - requests
        );
    }
}

/// `count` Seldon responses carrying 3 metrics each (COUNTER, GAUGE, TIMER, with tags).
fn seldon_posts(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let tags = serde_json::json!({"model": format!("model-{}", i % 8), "version": "v3"});
            let body = serde_json::json!({
                "data": {"names": ["proba"], "ndarray": [[0.12, 0.88]]},
                "meta": {"metrics": [
                    {"key": "bench_predictions", "type": "COUNTER", "value": 1, "tags": tags},
                    {"key": "bench_confidence", "type": "GAUGE", "value": 0.5 + (i % 50) as f64 / 100.0, "tags": tags},
                    {"key": "bench_inference_ms", "type": "TIMER", "value": 3.0 + (i % 40) as f64, "tags": tags},
                ]},
            });
            request("POST", SELDON, &body.to_string())
        })
        .collect()
}

fn status_ok(answer: &Answer) -> Result<(), String> {
    if answer.status == 200 {
        Ok(())
    } else {
        Err(format!("{}: {}", answer.status, answer.text()))
    }
}

fn recorded_ok(answer: &Answer) -> Result<(), String> {
    if answer.status == 200 && answer.contains("\"recorded\":") {
        Ok(())
    } else {
        Err(format!("{}: {}", answer.status, answer.text()))
    }
}

fn seldon_ok(answer: &Answer) -> Result<(), String> {
    if answer.status == 200
        && answer.contains("\"accepted\":3,")
        && answer.contains("\"refused\":[]")
    {
        Ok(())
    } else {
        Err(format!("{}: {}", answer.status, answer.text()))
    }
}

/// The VM's CPU time by kind, from the `cpu` line of `/proc/stat` (in clock ticks).
struct VmTimes {
    steal: f64,
    all: f64,
}

impl VmTimes {
    fn now() -> VmTimes {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .find(|line| line.starts_with("cpu "))
            .map(|line| {
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        // user nice system idle iowait irq softirq steal (guest time is inside user)
        VmTimes {
            steal: ticks.get(7).copied().unwrap_or(f64::NAN),
            all: ticks.iter().take(8).sum(),
        }
    }

    /// The share of all CPU time since `before` that the host took (steal), in percent.
    fn steal_share_since(&self, before: &VmTimes) -> f64 {
        100.0 * (self.steal - before.steal) / (self.all - before.all)
    }
}

fn now_ms() -> i64 {
    tallyd::custom::time::now_ms()
}

/// CPU time of this process (the client threads), in seconds.
fn own_cpu_seconds() -> f64 {
    common::proc_cpu_seconds(std::process::id())
}

/// The file system a path is on, from `/proc/mounts` (the longest mount point above it).
fn file_system(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(point)
                .then(|| (point.len(), format!("{kind} ({device} on {point})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

/// The durability floor: `n` times, 4 KiB written over a preallocated file in `dir` (as SQLite
/// reuses its WAL) and `fdatasync`ed: what one commit costs the disk at least, in milliseconds
/// each. With `busy`, a thread spins on this CPU meanwhile: in this VM a disk completion that
/// finds its CPU idle waits for the next timer tick (4 ms at 250 Hz), one that finds it busy
/// does not, so tallyd's commits are faster when its CPU has work.
fn fsync_floor(dir: &Path, n: usize, busy: bool) -> Vec<f64> {
    use std::os::unix::fs::FileExt;
    const PAGES: u64 = 256;
    let path = dir.join("fsync-floor");
    let mut file = std::fs::File::create(&path).expect("a file for the fsync floor");
    let page = [0x5au8; 4096];
    for _ in 0..PAGES {
        file.write_all(&page).expect("write");
    }
    file.sync_all().expect("fsync");
    let stop = Arc::new(AtomicBool::new(false));
    let spinner = busy.then(|| {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    });
    let times = (0..n as u64)
        .map(|i| {
            file.write_all_at(&page, (i % PAGES) * 4096).expect("write");
            let started = Instant::now();
            file.sync_data().expect("fdatasync");
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    stop.store(true, Ordering::Relaxed);
    if let Some(spinner) = spinner {
        spinner.join().expect("the spinner");
    }
    drop(file);
    let _ = std::fs::remove_file(path);
    times
}

/// The durable floor at a pace: what any store that answers only after an `fdatasync` pays on
/// this disk, with no HTTP, no parsing and no database. Arrivals are due at `rate` for
/// `seconds`; one writer, pinned to `cpu` as tallyd is, commits as a group commit does: it
/// writes 4 KiB for each arrival due by now in one `pwrite` after the last, `fdatasync`s, and
/// counts each arrival's latency from its due time, in milliseconds.
fn durable_floor(dir: &Path, rate: f64, seconds: f64, cpu: &str) -> Vec<f64> {
    use std::os::unix::fs::FileExt;
    const PAGE: usize = 4096;
    // The most arrivals one commit takes, as in tallyd.
    const GROUP: usize = tallyd::store::MAX_GROUP;
    // Written over from the start when full, so no write grows the file (as SQLite's WAL).
    const SPAN: u64 = 16 << 20;
    let path = dir.join("durable-floor");
    let file = std::fs::File::create(&path).expect("a file for the durable floor");
    file.write_all_at(&vec![0u8; SPAN as usize], 0)
        .expect("fill the durable floor's file");
    file.sync_all().expect("fsync");
    let due = (rate * seconds).ceil() as usize;
    let cpu = cpu.to_string();
    let latencies = std::thread::spawn(move || {
        pin_self(&cpu);
        let pages = vec![0x5au8; PAGE * GROUP];
        let mut latencies = Vec::with_capacity(due);
        let (mut next, mut at) = (0usize, 0u64);
        let start = Instant::now();
        let due_at = |i: usize| start + Duration::from_secs_f64(i as f64 / rate);
        while next < due {
            let now = Instant::now();
            if due_at(next) > now {
                std::thread::sleep(due_at(next) - now);
            }
            let now = Instant::now();
            let mut last = next;
            while last < due && last - next < GROUP && due_at(last) <= now {
                last += 1;
            }
            let bytes = &pages[..(last - next) * PAGE];
            if at + bytes.len() as u64 > SPAN {
                at = 0;
            }
            file.write_all_at(bytes, at).expect("write");
            at += bytes.len() as u64;
            file.sync_data().expect("fdatasync");
            latencies.extend((next..last).map(|i| due_at(i).elapsed().as_secs_f64() * 1e3));
            next = last;
        }
        latencies
    })
    .join()
    .expect("the durable floor's writer");
    let _ = std::fs::remove_file(path);
    latencies
}

fn report_errors(table: &mut Table, what: &str, outcome: &Outcome) {
    if outcome.errors > 0 {
        table.note(format!(
            "{what}: {} requests failed; the first: {}",
            outcome.errors,
            outcome.first_error.as_deref().unwrap_or("?")
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// The figures
// ---------------------------------------------------------------------------------------------

/// A flat-out run of `requests`: the outcome, tallyd's CPU and the client's, in seconds.
fn flat_out(
    s: &Settings,
    api: &Api,
    requests: &Arc<Vec<Vec<u8>>>,
    verdict: Verdict,
    seconds: f64,
) -> FlatRun {
    let drive = Drive {
        connections: s.connections,
        rate: None,
        length: None,
        requests: Arc::clone(requests),
        verdict,
        spin: s.spin,
    };
    let cpu_before = api.cpu_seconds();
    let own_before = own_cpu_seconds();
    let driving = drive.start(api.http);
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let outcome = driving.stop();
    FlatRun {
        tallyd_cpu: api.cpu_seconds() - cpu_before,
        client_cpu: own_cpu_seconds() - own_before,
        outcome,
    }
}

struct FlatRun {
    outcome: Outcome,
    tallyd_cpu: f64,
    client_cpu: f64,
}

impl FlatRun {
    fn share(&self, cpu: f64) -> f64 {
        100.0 * cpu / self.outcome.seconds
    }
}

/// The figures of flat-out runs, run by run.
#[derive(Default)]
struct FlatFigures {
    /// Items (points, posts, requests) per second.
    rate: Vec<f64>,
    /// Items per tallyd CPU-second.
    per_cpu: Vec<f64>,
    tallyd_share: Vec<f64>,
    client_share: Vec<f64>,
    /// Request to answer, in ms.
    p50: Vec<f64>,
    p99: Vec<f64>,
}

impl FlatFigures {
    /// Adds run `run` of `what`, whose requests carry `items` `unit` each, and prints it.
    fn add(
        &mut self,
        table: &mut Table,
        what: &str,
        run: usize,
        r: &FlatRun,
        items: f64,
        unit: &str,
    ) {
        let done = r.outcome.done as f64 * items;
        let (rate, per_cpu) = (done / r.outcome.seconds, done / r.tallyd_cpu);
        let (p50, p99) = (r.outcome.latency_ms(50.0), r.outcome.latency_ms(99.0));
        eprintln!(
            "api:   {what} run {}: {} requests ({} failed) in {:.2} s = {rate:.0} {unit}/s; tallyd \
             CPU {:.2} s ({:.0} % of its core) = {per_cpu:.0} {unit}/CPU-s; client CPU {:.0} %; \
             request to answer p50 {p50:.3} ms, p99 {p99:.3} ms",
            run + 1,
            r.outcome.done,
            r.outcome.errors,
            r.outcome.seconds,
            r.tallyd_cpu,
            r.share(r.tallyd_cpu),
            r.share(r.client_cpu),
        );
        report_errors(table, what, &r.outcome);
        self.rate.push(rate);
        self.per_cpu.push(per_cpu);
        self.tallyd_share.push(r.share(r.tallyd_cpu));
        self.client_share.push(r.share(r.client_cpu));
        self.p50.push(p50);
        self.p99.push(p99);
    }
}

/// Figure 1: points recorded per second, in batches, durable.
fn record_group(s: &Settings, table: &mut Table) {
    eprintln!(
        "api: == record: batches of {} points, {} series, {} connections, flat out",
        s.batch, s.series, s.connections
    );
    let api = Api::start(s);
    api.register_gauge("bench_points", &["host", "model"]);
    let mut figures = FlatFigures::default();
    let per_run = (RECORD_HEADROOM * s.seconds) as usize;
    let warm_up = RECORD_HEADROOM as usize;
    let mut timeline = Timeline::ending_now(s, "bench_points", s.batch, warm_up + s.runs * per_run);
    // The store's first pages and tallyd's series: not part of the figure.
    let warm = flat_out(s, &api, &timeline.take(warm_up), recorded_ok, 1.0);
    eprintln!("api:   warm-up: {} requests", warm.outcome.done);
    for run in 0..s.runs {
        let requests = timeline.take(per_run);
        let r = flat_out(s, &api, &requests, recorded_ok, s.seconds);
        warn_if_repeated("record", &r.outcome, requests.len(), s.connections);
        figures.add(table, "record", run, &r, s.batch as f64, "points");
    }
    api.stop();
    let label = format!(
        "batches of {}, {} series, {} connections",
        thousands(s.batch as f64),
        s.series,
        s.connections
    );
    table.add(
        &format!("points recorded per second, durable, {label}"),
        Unit::Rate,
        figures.rate,
        "≥ 200,000/s",
        Check::AtLeast(200_000.0),
    );
    table.add(
        &format!("points recorded per tallyd CPU-second, {label}"),
        Unit::Count,
        figures.per_cpu,
        "",
        Check::None,
    );
    table.add(
        "tallyd CPU while recording (share of its one core)",
        Unit::Share,
        figures.tallyd_share,
        "",
        Check::None,
    );
    table.add(
        "client CPU while recording (share of CPU 1)",
        Unit::Share,
        figures.client_share,
        "",
        Check::None,
    );
    table.add(
        "one batch, request to answer, p50",
        Unit::FineMillis,
        figures.p50,
        "",
        Check::None,
    );
    table.add(
        "one batch, request to answer, p99",
        Unit::FineMillis,
        figures.p99,
        "",
        Check::None,
    );
}

/// Figure 2: Seldon posts per second, 3 metrics each.
fn seldon_group(s: &Settings, table: &mut Table) {
    eprintln!(
        "api: == seldon: 3 metrics per post, {} connections, flat out",
        s.connections
    );
    let api = Api::start(s);
    let requests = Arc::new(seldon_posts(64));
    let warm = flat_out(s, &api, &requests, seldon_ok, 1.0);
    eprintln!("api:   warm-up: {} posts", warm.outcome.done);
    let mut figures = FlatFigures::default();
    for run in 0..s.runs {
        let r = flat_out(s, &api, &requests, seldon_ok, s.seconds);
        figures.add(table, "seldon", run, &r, 1.0, "posts");
    }
    // The transport alone: the cheapest route, flat out, the same connections.
    let healthy = Arc::new(vec![request("GET", "/-/healthy", "")]);
    let mut floor = FlatFigures::default();
    for run in 0..s.runs {
        let r = flat_out(s, &api, &healthy, status_ok, s.seconds);
        floor.add(table, "HTTP floor", run, &r, 1.0, "requests");
    }
    api.stop();
    let label = format!("3 metrics each, {} keep-alive connections", s.connections);
    table.add(
        &format!("Seldon posts per second, {label}"),
        Unit::Rate,
        figures.rate,
        "≥ 30,000/s",
        Check::AtLeast(30_000.0),
    );
    table.add(
        &format!("Seldon posts per tallyd CPU-second, {label}"),
        Unit::Count,
        figures.per_cpu,
        "",
        Check::None,
    );
    table.add(
        &format!(
            "HTTP floor: GET /-/healthy per tallyd CPU-second, {} keep-alive connections",
            s.connections
        ),
        Unit::Count,
        floor.per_cpu,
        "",
        Check::None,
    );
    table.add(
        "tallyd CPU while taking Seldon posts (share of its one core)",
        Unit::Share,
        figures.tallyd_share,
        "",
        Check::None,
    );
    table.add(
        "client CPU while posting (share of CPU 1)",
        Unit::Share,
        figures.client_share,
        "",
        Check::None,
    );
    table.add(
        "one Seldon post, request to answer, p50",
        Unit::FineMillis,
        figures.p50,
        "",
        Check::None,
    );
}

/// Writes one line per request of a paced run, in schedule order: its due time from the start
/// (s), its latency and the client's lateness (ms). For finding when the slow answers came.
fn write_trace(path: &str, outcome: &Outcome, rate: f64) {
    let mut rows: Vec<(usize, f64, f64)> = (outcome.due_index.iter().copied())
        .zip(outcome.latencies.iter().copied())
        .zip(outcome.lateness.iter().copied())
        .map(|((i, latency), late)| (i, latency, late))
        .collect();
    rows.sort_unstable_by_key(|r| r.0);
    let text: String = rows
        .iter()
        .map(|(i, latency, late)| {
            format!(
                "{:.5} {:.3} {:.3}\n",
                *i as f64 / rate,
                latency * 1e3,
                late * 1e3
            )
        })
        .collect();
    std::fs::write(path, text).expect("the trace file is writable");
    eprintln!("api:   trace: {path}");
}

/// Figure 3: single-point records paced open loop; latency from each intended send time.
fn latency_group(s: &Settings, table: &mut Table) {
    let label = format!(
        "{} requests/s over {} connections",
        thousands(s.latency_rate),
        s.latency_connections
    );
    eprintln!(
        "api: == latency: single-point records at {label}, {} s",
        s.latency_seconds
    );
    let api = Api::start(s);
    api.register_gauge("bench_latency", &["host", "model"]);
    let (mut p50, mut p99, mut max, mut achieved, mut share) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut late99, mut steal, mut sent99) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor99, mut floor_late99) = (Vec::new(), Vec::new());
    let (mut durable50, mut durable99) = (Vec::new(), Vec::new());
    let (mut idle50, mut idle99, mut busy50, mut busy99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Every request due is sent once: one fresh point each.
    let latency_requests = (s.latency_rate * s.latency_seconds).ceil() as usize;
    let mut latency_points = Timeline::ending_now(s, "bench_latency", 1, s.runs * latency_requests);
    for run in 0..s.runs {
        for (busy, p50s, p99s) in [
            (false, &mut idle50, &mut idle99),
            (true, &mut busy50, &mut busy99),
        ] {
            let floor = fsync_floor(api.dir(), 200, busy);
            let (f50, f99) = (
                percentile(&floor, 50.0).unwrap_or(f64::NAN),
                percentile(&floor, 99.0).unwrap_or(f64::NAN),
            );
            eprintln!(
                "api:   run {}: fsync floor, CPU {} (4 KiB overwrite + fdatasync, 200 times): \
                 p50 {f50:.3} ms, p99 {f99:.3} ms, max {:.3} ms",
                run + 1,
                if busy { "kept busy" } else { "otherwise idle" },
                percentile(&floor, 100.0).unwrap_or(f64::NAN),
            );
            p50s.push(f50);
            p99s.push(f99);
        }
        let durable = durable_floor(
            api.dir(),
            s.latency_rate,
            s.latency_seconds,
            &s.base.daemon_cpu,
        );
        let (d50, d99) = (
            percentile(&durable, 50.0).unwrap_or(f64::NAN),
            percentile(&durable, 99.0).unwrap_or(f64::NAN),
        );
        eprintln!(
            "api:   run {}: durable floor at the same pace (group commit of 4 KiB per request + \
             fdatasync, no HTTP, no database): p50 {d50:.3} ms, p99 {d99:.3} ms, max {:.3} ms",
            run + 1,
            percentile(&durable, 100.0).unwrap_or(f64::NAN),
        );
        durable50.push(d50);
        durable99.push(d99);
        let requests = latency_points.take(latency_requests);
        let drive = Drive {
            connections: s.latency_connections,
            rate: Some(s.latency_rate),
            length: Some(Duration::from_secs_f64(s.latency_seconds)),
            requests,
            verdict: recorded_ok,
            spin: false,
        };
        let cpu_before = api.cpu_seconds();
        let steal_before = VmTimes::now();
        let outcome = drive.start(api.http).finish();
        let cpu = api.cpu_seconds() - cpu_before;
        let stolen = VmTimes::now().steal_share_since(&steal_before);
        eprintln!(
            "api:   run {}: {} requests ({} failed) in {:.2} s = {:.0}/s; latency p50 {:.3} ms, \
             p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; tallyd CPU {:.0} %; \
             sent late p99 {:.3} ms, max {:.3} ms; steal {stolen:.1} %",
            run + 1,
            outcome.done,
            outcome.errors,
            outcome.seconds,
            outcome.rate(),
            outcome.latency_ms(50.0),
            outcome.latency_ms(90.0),
            outcome.latency_ms(99.0),
            outcome.latency_ms(99.9),
            outcome.latency_ms(100.0),
            100.0 * cpu / outcome.seconds,
            outcome.lateness_ms(99.0),
            outcome.lateness_ms(100.0),
        );
        report_errors(table, "latency", &outcome);
        if let Ok(path) = std::env::var("API_TRACE") {
            write_trace(&format!("{path}.{}", run + 1), &outcome, s.latency_rate);
        }
        // The same pace and connections on the cheapest route, which touches no store: what
        // the machine, the client and the HTTP stack add to any answer.
        let floor = Drive {
            connections: s.latency_connections,
            rate: Some(s.latency_rate),
            length: Some(Duration::from_secs_f64(s.latency_seconds)),
            requests: Arc::new(vec![request("GET", "/-/healthy", "")]),
            verdict: status_ok,
            spin: false,
        }
        .start(api.http)
        .finish();
        eprintln!(
            "api:   run {}: HTTP floor, GET /-/healthy at the same pace: p50 {:.3} ms, p99 {:.3} \
             ms, max {:.3} ms; sent late p99 {:.3} ms",
            run + 1,
            floor.latency_ms(50.0),
            floor.latency_ms(99.0),
            floor.latency_ms(100.0),
            floor.lateness_ms(99.0),
        );
        report_errors(table, "latency floor", &floor);
        floor99.push(floor.latency_ms(99.0));
        floor_late99.push(floor.lateness_ms(99.0));
        sent99.push(outcome.sent_to_answer_ms(99.0));
        late99.push(outcome.lateness_ms(99.0));
        steal.push(stolen);
        p50.push(outcome.latency_ms(50.0));
        p99.push(outcome.latency_ms(99.0));
        max.push(outcome.latency_ms(100.0));
        achieved.push(outcome.rate());
        share.push(100.0 * cpu / outcome.seconds);
    }
    api.stop();
    table.add(
        &format!("single-point record latency p99, {label}, from intended send time"),
        Unit::FineMillis,
        p99,
        "≤ 2 ms",
        Check::AtMost(2.0),
    );
    table.add(
        "durable floor at the same pace: group commit of 4 KiB per request + fdatasync, \
         no HTTP, no database, p99 from due time",
        Unit::FineMillis,
        durable99,
        "",
        Check::None,
    );
    table.add(
        "durable floor at the same pace, p50",
        Unit::FineMillis,
        durable50,
        "",
        Check::None,
    );
    table.add(
        "single-point record: the client's own lateness p99 (due to sent, tallyd not yet asked)",
        Unit::FineMillis,
        late99,
        "",
        Check::None,
    );
    table.add(
        "single-point record latency p99, same, from the request's actual send",
        Unit::FineMillis,
        sent99,
        "",
        Check::None,
    );
    table.add(
        "HTTP floor: GET /-/healthy at the same pace, latency p99 from intended send time",
        Unit::FineMillis,
        floor99,
        "",
        Check::None,
    );
    table.add(
        "HTTP floor: the client's own lateness p99",
        Unit::FineMillis,
        floor_late99,
        "",
        Check::None,
    );
    table.add(
        "CPU time the host took from this VM during the run (steal)",
        Unit::Percent,
        steal,
        "",
        Check::None,
    );
    table.add(
        "single-point record latency p50, same",
        Unit::FineMillis,
        p50,
        "",
        Check::None,
    );
    table.add(
        "single-point record latency max, same",
        Unit::FineMillis,
        max,
        "",
        Check::None,
    );
    table.add(
        "single-point records answered per second, same",
        Unit::Rate,
        achieved,
        "",
        Check::None,
    );
    table.add(
        "tallyd CPU at that rate (share of its one core)",
        Unit::Share,
        share,
        "",
        Check::None,
    );
    for (label, p50s, p99s) in [
        ("CPU otherwise idle", idle50, idle99),
        ("CPU kept busy", busy50, busy99),
    ] {
        table.add(
            &format!("fsync floor on the store's disk, {label}: 4 KiB overwrite + fdatasync, p50"),
            Unit::FineMillis,
            p50s,
            "",
            Check::None,
        );
        table.add(
            &format!("fsync floor, {label}, p99"),
            Unit::FineMillis,
            p99s,
            "",
            Check::None,
        );
    }
}

/// Figure 4: one series, `query_days` of 1-minute points, queried with a 1 h step.
fn query_group(s: &Settings, table: &mut Table) {
    let points = (s.query_days * DAY_MS / MINUTE_MS) as usize;
    let label = format!(
        "one series, {} days of 1-minute points ({}), 1 h step",
        s.query_days,
        thousands(points as f64)
    );
    eprintln!("api: == query: {label}, {} queries per run", s.queries);
    let api = Api::start(s);
    api.register_gauge("bench_query", &["host", "model"]);
    // One series: every point on label set 0. The newest point is now, the oldest 7 days less
    // one minute before it.
    let now = now_ms();
    let first = now - (points as i64 - 1) * MINUTE_MS;
    let layout = Points {
        count: points,
        batch: s.batch,
        series: 1,
        first_ms: first,
        step_ms: MINUTE_MS,
    };
    let mut client = Client::connect(api.http);
    for body in point_batches("bench_query", layout) {
        let answer = client.exchange(&body).expect("load the query's points");
        recorded_ok(&answer).expect("load the query's points");
    }
    let start = (now - s.query_days * DAY_MS).div_euclid(1000);
    let end = now.div_euclid(1000) + 1;
    let path = format!("{BASE}/bench_query/query?start={start}&end={end}&step=1h");
    // Every point is found, once.
    let counted = client
        .exchange(&request("GET", &format!("{path}&aggregation=count"), ""))
        .expect("the count query");
    let answer: serde_json::Value = serde_json::from_slice(&counted.body).expect("a JSON answer");
    let series = answer["series"].as_array().expect("series");
    assert_eq!(series.len(), 1, "{answer}");
    let total: f64 = series[0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"].as_f64().unwrap_or(0.0))
        .sum();
    assert_eq!(
        total as usize, points,
        "the count query found {total} points"
    );
    let bins = series[0]["points"].as_array().map_or(0, Vec::len);
    eprintln!("api:   loaded {points} points; the query answers {bins} bins");
    let (p50, p99, sizes) = time_queries(s, &mut client, &path);
    // On the hour, the start lets the 1 h rollups answer; they are made a slice at a time each
    // `[history] interval_seconds` after the load, so wait until none is due.
    let aligned = format!(
        "{BASE}/bench_query/query?start={}&end={end}&step=1h",
        start - start.rem_euclid(3_600)
    );
    let db = rusqlite::Connection::open_with_flags(
        api.dir().join("data").join("tallyd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the store beside the daemon");
    let waited = Instant::now();
    loop {
        let due: i64 = db
            .query_row("SELECT COUNT(*) FROM rollups_due", [], |row| row.get(0))
            .expect("count the due rollups");
        // The open interval stays due until it closes.
        if due <= 3 {
            break;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "{due} rollups still due"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "api:   rolled up {:.1} s after the load",
        waited.elapsed().as_secs_f64()
    );
    let (rolled_p50, rolled_p99, _) = time_queries(s, &mut client, &aligned);
    api.stop();
    table.add(
        &format!("query, {label}, median of {}", s.queries),
        Unit::FineMillis,
        p50,
        "≤ 10 ms",
        Check::AtMost(10.0),
    );
    table.add(
        &format!("query, same, p99 of {}", s.queries),
        Unit::FineMillis,
        p99,
        "",
        Check::None,
    );
    table.add("query answer size", Unit::Bytes, sizes, "", Check::None);
    table.add(
        &format!(
            "query, same on the hour (1 h rollups), median of {}",
            s.queries
        ),
        Unit::FineMillis,
        rolled_p50,
        "≤ 10 ms",
        Check::AtMost(10.0),
    );
    table.add(
        "query, same on the hour, p99",
        Unit::FineMillis,
        rolled_p99,
        "",
        Check::None,
    );
}

/// `s.runs` runs of `s.queries` queries of `path`: each run's median and p99 in ms, and the
/// answer's size.
fn time_queries(s: &Settings, client: &mut Client, path: &str) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let query = request("GET", path, "");
    let (mut p50, mut p99, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..s.runs {
        let mut times = Vec::with_capacity(s.queries);
        let mut size = 0;
        for _ in 0..s.queries {
            let started = Instant::now();
            let answer = client.exchange(&query).expect("a query");
            times.push(started.elapsed().as_secs_f64() * 1e3);
            assert_eq!(answer.status, 200, "{}", answer.text());
            size = answer.body.len();
        }
        let (m, p) = (
            median(&times).unwrap_or(f64::NAN),
            percentile(&times, 99.0).unwrap_or(f64::NAN),
        );
        eprintln!(
            "api:   {path}: run {}: {} queries: median {m:.2} ms, p99 {p:.2} ms, max {:.2} ms; {size} B",
            run + 1,
            s.queries,
            percentile(&times, 100.0).unwrap_or(f64::NAN),
        );
        p50.push(m);
        p99.push(p);
        sizes.push(size as f64);
    }
    (p50, p99, sizes)
}

/// Figure 5: the UDP path at a fixed rate with the API idle, then with it loaded (records and
/// Seldon posts paced at `loaded_points` and `loaded_posts`, or as fast as tallyd answers them),
/// interleaved on one daemon.
fn udp_group(s: &Settings, table: &mut Table) {
    let label = format!(
        "{} lines/datagram at {}k datagrams/s ({}k lines/s)",
        s.udp_lines,
        s.udp_rate / 1000.0,
        s.udp_rate * s.udp_lines as f64 / 1000.0
    );
    eprintln!(
        "api: == udp: {label}, API idle and loaded ({} points/s in batches of {}, {} Seldon \
         posts/s)",
        s.loaded_points, s.batch, s.loaded_posts
    );
    let api = Api::start(s);
    api.register_gauge("bench_points", &["host", "model"]);
    let mut load = Load::new(s.udp_lines, 1000, 3, MIX, s.udp_seconds);
    load.rate = Some(s.udp_rate);
    let mut idle: Vec<Run> = Vec::new();
    let mut loaded: Vec<Run> = Vec::new();
    let (mut points_rate, mut posts_rate, mut share) = (Vec::new(), Vec::new(), Vec::new());
    let posts = Arc::new(seldon_posts(64));
    // The records' pace over the UDP load, the API's half second before it and a margin.
    let per_run = (s.loaded_points * (s.udp_seconds + 2.0)) as usize;
    let mut timeline = Timeline::ending_now(s, "bench_points", s.batch, s.runs * per_run);
    for run in 0..s.runs {
        load.seed = 1 + run as u64;
        eprintln!("api:  run {}: API idle", run + 1);
        idle.push(measure_udp(&s.base, &api.daemon, || {
            load.run(&s.base, api.daemon.udp)
        }));

        eprintln!("api:  run {}: API loaded", run + 1);
        let batches = timeline.take(per_run);
        let mut api_cpu = 0.0;
        let mut api_seconds = 0.0;
        let mut outcomes = None;
        let r = measure_udp(&s.base, &api.daemon, || {
            let cpu_before = api.cpu_seconds();
            let records = Drive {
                connections: s.connections,
                rate: Some(s.loaded_points / s.batch as f64),
                length: None,
                requests: Arc::clone(&batches),
                verdict: recorded_ok,
                spin: false,
            }
            .start(api.http);
            let seldon = Drive {
                connections: s.connections,
                rate: Some(s.loaded_posts),
                length: None,
                requests: Arc::clone(&posts),
                verdict: seldon_ok,
                spin: false,
            }
            .start(api.http);
            // The API at its pace first, then the UDP load through it.
            std::thread::sleep(Duration::from_millis(500));
            let sent: Sent = load.run(&s.base, api.daemon.udp);
            let (records, seldon) = (records.stop(), seldon.stop());
            api_cpu = api.cpu_seconds() - cpu_before;
            api_seconds = records.seconds.max(seldon.seconds);
            outcomes = Some((records, seldon));
            sent
        });
        let (records, seldon) = outcomes.expect("the loaded run's outcomes");
        warn_if_repeated("udp/records", &records, batches.len(), s.connections);
        report_errors(table, "udp/records", &records);
        report_errors(table, "udp/seldon", &seldon);
        let points = records.done as f64 * s.batch as f64 / records.seconds;
        eprintln!(
            "api:   meanwhile: {:.0} points/s recorded ({} failed), {:.0} Seldon posts/s ({} \
             failed); tallyd CPU {:.0} % of its core",
            points,
            records.errors,
            seldon.rate(),
            seldon.errors,
            100.0 * api_cpu / api_seconds
        );
        points_rate.push(points);
        posts_rate.push(seldon.rate());
        share.push(100.0 * api_cpu / api_seconds);
        loaded.push(r);
    }
    api.stop();
    let lps = |runs: &[Run]| -> Vec<f64> {
        runs.iter()
            .map(Run::lines_per_receiver_cpu_second)
            .collect()
    };
    let (idle_lps, loaded_lps) = (lps(&idle), lps(&loaded));
    let idle_median = median(&idle_lps).unwrap_or(f64::NAN);
    table.add(
        &format!("UDP loss, {label}, API idle"),
        Unit::Percent,
        idle.iter().map(Run::loss_percent).collect(),
        "0 %",
        Check::AtMost(0.0),
    );
    table.add(
        "UDP loss, same, API loaded",
        Unit::Percent,
        loaded.iter().map(Run::loss_percent).collect(),
        "0 %",
        Check::AtMost(0.0),
    );
    table.add(
        "UDP lines per receive-thread CPU-second, API idle",
        Unit::Count,
        idle_lps.clone(),
        "",
        Check::None,
    );
    table.add(
        "UDP lines per receive-thread CPU-second, API loaded",
        Unit::Count,
        loaded_lps.clone(),
        &format!("(90 % of idle = {})", thousands(0.9 * idle_median)),
        Check::None,
    );
    // Each loaded run against the idle run just before it: the two share the host's mood of
    // that minute, which moves either median by more than the 10 % the target allows.
    table.add(
        "UDP lines per receive-thread CPU-second, each loaded run ÷ the idle run before it",
        Unit::Times,
        (loaded_lps.iter().zip(&idle_lps))
            .map(|(loaded, idle)| loaded / idle)
            .collect(),
        "≥ 0.90×",
        Check::AtLeast(0.9),
    );
    table.add(
        "UDP send rate achieved, API loaded",
        Unit::Rate,
        loaded.iter().map(|r| r.sent.datagrams_per_s).collect(),
        "",
        Check::None,
    );
    table.add(
        "points recorded per second during the loaded UDP run",
        Unit::Rate,
        points_rate,
        "",
        Check::None,
    );
    table.add(
        "Seldon posts per second during the loaded UDP run",
        Unit::Rate,
        posts_rate,
        "",
        Check::None,
    );
    table.add(
        "tallyd CPU during the loaded UDP run (share of its one core)",
        Unit::Share,
        share,
        "",
        Check::None,
    );
}

fn main() {
    if !common::enter("API", "api") {
        return;
    }
    let s = Settings::from_env();
    // The client stays off the daemon's CPU.
    pin_self(&s.base.loader_cpu);
    let started = Instant::now();
    let load_before = load_average();
    let fs = file_system(&s.data_parent);
    eprintln!(
        "api: tallyd {}; daemon on CPU {}, client and loader on CPU {}, nice {}; {} run(s) per \
         figure; store under {} ({fs}); groups: {:?}",
        s.base.tallyd.display(),
        s.base.daemon_cpu,
        s.base.loader_cpu,
        s.base.nice,
        s.runs,
        s.data_parent.display(),
        s.groups
    );
    let mut table = Table::new("api");
    let groups: [(&str, Group); 5] = [
        ("record", record_group),
        ("seldon", seldon_group),
        ("latency", latency_group),
        ("query", query_group),
        ("udp", udp_group),
    ];
    for (name, group) in groups {
        if s.wants(name) {
            group(&s, &mut table);
        }
    }
    common::print_table(
        "tallyd HTTP API benchmark",
        &format!("store on {fs}; "),
        &s.base,
        s.runs,
        started,
        &load_before,
        &table,
    );
}
