//! systemd socket activation: the sockets a service manager passed (`LISTEN_PID`, `LISTEN_FDS`,
//! `LISTEN_FDNAMES`, as `sd_listen_fds_with_names(3)` reads them), the `systemd:NAME` listen
//! address that claims them, and the check that each claimed socket fits its listener.
//!
//! ## Names, not positions
//!
//! A listen list (`[udp] listen`, `--http-listen`, …) may hold `systemd:NAME` instead of an
//! address: the listener then takes every passed socket whose name (the socket unit's
//! `FileDescriptorName=`, or `systemd-socket-activate --fdname=`) is `NAME`, and binds nothing.
//! Names rather than Vector's positional `systemd#N` because the HTTP server and StatsD over TCP
//! are both stream sockets: only a name says which is which, and a name survives reordering
//! the socket unit's `Listen*=` lines. One name may carry several sockets (two
//! `ListenDatagram=` lines of one unit, IPv4 and IPv6), and each becomes a listener.
//!
//! ## What is refused, before anything runs
//!
//! - A socket that does not fit its listener (a stream socket for `[udp]`, a TCP socket that
//!   is not listening, a FIFO): the message names the socket, what it is and what the listener
//!   needs.
//! - A `systemd:NAME` no passed socket answers to, including when tallyd was not activated at
//!   all; the message says why (no `LISTEN_FDS`, or a `LISTEN_PID` naming another process).
//! - A passed socket no listener claims: it would sit there filling up while clients think
//!   they are heard.
//! - Malformed variables: a count that is not a number, names that do not match the count.
//!
//! A `LISTEN_PID` naming another process is not an error by itself: as `sd_listen_fds` does,
//! the variables are then ignored (they were inherited by mistake, and the descriptors they
//! describe are not ours to take). The variables are always removed from tallyd's environment
//! once read, so nothing tallyd might start inherits them.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use super::udp::get_int_option;

/// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// More passed descriptors than this is a malformed `LISTEN_FDS`, not a real socket unit.
const MAX_PASSED: usize = 4096;

/// The environment variables of the protocol, in the order they are documented.
const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The prefix of a listen address that names a passed socket.
const PREFIX: &str = "systemd:";

/// A listen address as written in the configuration or on the command line: an address to
/// bind, or `systemd:NAME` for the sockets systemd passed under that name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint<A> {
    Bind(A),
    Systemd(String),
}

impl<A> Endpoint<A> {
    /// The name of the passed sockets this endpoint claims, if it claims any.
    pub fn systemd_name(&self) -> Option<&str> {
        match self {
            Endpoint::Bind(_) => None,
            Endpoint::Systemd(name) => Some(name),
        }
    }
}

impl<A: FromStr> FromStr for Endpoint<A>
where
    A::Err: fmt::Display,
{
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.strip_prefix(PREFIX) {
            Some(name) => {
                check_name(name)?;
                Ok(Endpoint::Systemd(name.to_owned()))
            }
            None => text
                .parse()
                .map(Endpoint::Bind)
                .map_err(|e| format!("invalid listen address {text:?}: {e}")),
        }
    }
}

impl<A: fmt::Display> fmt::Display for Endpoint<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Bind(addr) => addr.fmt(f),
            Endpoint::Systemd(name) => write!(f, "{PREFIX}{name}"),
        }
    }
}

impl<'de, A: FromStr> Deserialize<'de> for Endpoint<A>
where
    A::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// systemd's rule for `FileDescriptorName=`: 1 to 255 printable ASCII characters, no `:`
/// (the separator of `LISTEN_FDNAMES`).
fn check_name(name: &str) -> Result<(), String> {
    let printable = |c: char| c.is_ascii_graphic() || c == ' ';
    if name.is_empty() || name.len() > 255 || !name.chars().all(|c| printable(c) && c != ':') {
        return Err(format!(
            "{PREFIX}{name}: the name must be 1 to 255 printable ASCII characters without ':' \
             (the socket unit's FileDescriptorName=)"
        ));
    }
    Ok(())
}

/// The listener a passed socket is claimed for; each needs its own kind of socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Udp,
    Tcp,
    Unix,
    Http,
}

impl Role {
    /// The configuration key that names this listener's sockets.
    pub fn key(self) -> &'static str {
        match self {
            Role::Udp => "[udp] listen",
            Role::Tcp => "[tcp] listen",
            Role::Unix => "[unix] listen",
            Role::Http => "[http] listen",
        }
    }

    /// What this listener needs, worded for the socket unit's author.
    fn needs(self) -> &'static str {
        match self {
            Role::Udp => "a UDP socket (ListenDatagram=ADDRESS:PORT)",
            Role::Tcp | Role::Http => "a listening TCP socket (ListenStream=ADDRESS:PORT)",
            Role::Unix => "a Unix datagram socket (ListenDatagram=/PATH)",
        }
    }

    fn fits(self, kind: SocketKind) -> bool {
        let inet = matches!(kind.family, libc::AF_INET | libc::AF_INET6);
        match self {
            Role::Udp => inet && kind.ty == libc::SOCK_DGRAM && kind.protocol == libc::IPPROTO_UDP,
            Role::Tcp | Role::Http => {
                inet && kind.ty == libc::SOCK_STREAM
                    && kind.protocol == libc::IPPROTO_TCP
                    && kind.listening
            }
            Role::Unix => kind.family == libc::AF_UNIX && kind.ty == libc::SOCK_DGRAM,
        }
    }
}

/// What a passed descriptor is, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SocketKind {
    family: libc::c_int,
    ty: libc::c_int,
    protocol: libc::c_int,
    listening: bool,
}

impl SocketKind {
    /// `None` for a descriptor that is not a socket (a FIFO or a file, `ListenFIFO=`).
    fn of(fd: &impl AsFd) -> io::Result<Option<SocketKind>> {
        let ty = match get_int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE) {
            Ok(ty) => ty,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some(SocketKind {
            family: get_int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)?,
            ty,
            protocol: get_int_option(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
            listening: ty == libc::SOCK_STREAM
                && get_int_option(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0,
        }))
    }

    fn describe(kind: Option<SocketKind>) -> String {
        let Some(kind) = kind else {
            return "not a socket (a FIFO or a file?)".into();
        };
        let (article, family) = match kind.family {
            libc::AF_INET => ("an", "IPv4"),
            libc::AF_INET6 => ("an", "IPv6"),
            libc::AF_UNIX => ("a", "Unix"),
            _ => ("a", "non-IP, non-Unix"),
        };
        let what = match (kind.ty, kind.protocol) {
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => "UDP socket",
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) if kind.listening => "listening TCP socket",
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => "TCP socket that is not listening",
            (libc::SOCK_DGRAM, _) => "datagram socket",
            (libc::SOCK_STREAM, _) if kind.listening => "listening stream socket",
            (libc::SOCK_STREAM, _) => "stream socket",
            (libc::SOCK_SEQPACKET, _) => "seqpacket socket",
            _ => "socket of another type",
        };
        format!("{article} {family} {what}")
    }
}

/// Why the passed sockets could not be used; tallyd does not start (exit code 2: the socket
/// unit and the configuration disagree, and restarting will not reconcile them).
#[derive(Debug, PartialEq, Eq)]
pub enum ActivationError {
    /// A variable of the protocol that cannot be read.
    Malformed { variable: &'static str, why: String },
    /// A passed descriptor number that is not open.
    Closed { fd: RawFd, why: String },
    /// A `systemd:NAME` that no passed socket answers to.
    Missing {
        role: Role,
        name: String,
        why: String,
    },
    /// A passed socket that is not what its listener needs.
    WrongKind {
        role: Role,
        name: String,
        fd: RawFd,
        is: String,
    },
    /// More sockets under one name than the listener takes.
    TooMany {
        role: Role,
        name: String,
        count: usize,
    },
    /// Passed sockets no listener claims.
    Unclaimed(Vec<(String, RawFd)>),
}

impl fmt::Display for ActivationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActivationError::Malformed { variable, why } => {
                write!(f, "socket activation: {variable} {why}")
            }
            ActivationError::Closed { fd, why } => write!(
                f,
                "socket activation: descriptor {fd} was passed but cannot be used: {why}"
            ),
            ActivationError::Missing { role, name, why } => {
                write!(f, "{} names {PREFIX}{name}, but {why}", role.key())
            }
            ActivationError::WrongKind { role, name, fd, is } => write!(
                f,
                "{} names {PREFIX}{name}, but the socket systemd passed under that name \
                 (descriptor {fd}) is {is}; it needs {}",
                role.key(),
                role.needs()
            ),
            ActivationError::TooMany { role, name, count } => write!(
                f,
                "{} names {PREFIX}{name}, which systemd passed {count} sockets under; it takes \
                 one (give the others their own FileDescriptorName=)",
                role.key()
            ),
            ActivationError::Unclaimed(sockets) => {
                let list: Vec<String> = sockets
                    .iter()
                    .map(|(name, fd)| format!("{name} (descriptor {fd})"))
                    .collect();
                write!(
                    f,
                    "systemd passed sockets that no listen address claims: {}; add \
                     {PREFIX}NAME to a listen list, or remove them from the socket unit",
                    list.join(", ")
                )
            }
        }
    }
}

impl std::error::Error for ActivationError {}

/// One passed socket, owned, not yet claimed.
#[derive(Debug)]
struct PassedSocket {
    fd: OwnedFd,
    number: RawFd,
    name: String,
}

/// The sockets a service manager passed, until the listeners claim them.
#[derive(Debug)]
pub struct Passed {
    sockets: Vec<PassedSocket>,
    /// Why there are none, for the message when a `systemd:NAME` asks for one.
    none_because: String,
}

/// What the three variables say, before any descriptor is touched.
#[derive(Debug, PartialEq, Eq)]
enum Announced {
    /// Nothing for this process, and why.
    Nothing(String),
    /// Descriptor numbers (from [`LISTEN_FDS_START`]) and their names.
    Sockets(Vec<(RawFd, String)>),
}

/// Reads the variables as `sd_listen_fds_with_names` does, for the process `own_pid`.
fn announced(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    own_pid: u32,
) -> Result<Announced, ActivationError> {
    let Some(fds) = fds else {
        return Ok(Announced::Nothing(
            "tallyd was not socket-activated (no LISTEN_FDS in its environment; is the socket \
             unit running?)"
                .into(),
        ));
    };
    let Some(pid) = pid else {
        return Ok(Announced::Nothing(
            "LISTEN_FDS is set without LISTEN_PID, so the sockets were not passed to tallyd".into(),
        ));
    };
    let malformed = |variable, why: String| ActivationError::Malformed { variable, why };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| malformed("LISTEN_PID", format!("= {pid:?} is not a process id")))?;
    if pid != own_pid {
        return Ok(Announced::Nothing(format!(
            "LISTEN_PID={pid} names another process (tallyd is {own_pid}): the sockets were \
             passed to a process that started tallyd without handing them on"
        )));
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| malformed("LISTEN_FDS", format!("= {fds:?} is not a count")))?;
    if count > MAX_PASSED {
        return Err(malformed(
            "LISTEN_FDS",
            format!("= {count} is more descriptors than any socket unit passes"),
        ));
    }
    let names: Vec<String> = match names {
        // systemd's name for a socket whose unit sets no FileDescriptorName= and passes no
        // LISTEN_FDNAMES at all.
        None => vec!["unknown".into(); count],
        Some(_) if count == 0 => Vec::new(),
        Some(names) => names.split(':').map(str::to_owned).collect(),
    };
    if names.len() != count {
        return Err(malformed(
            "LISTEN_FDNAMES",
            format!(
                "names {} socket(s) but LISTEN_FDS passes {count}",
                names.len()
            ),
        ));
    }
    Ok(Announced::Sockets(
        (LISTEN_FDS_START..).zip(names).collect(),
    ))
}

/// Where the variables are read and removed: the process environment, or a test's map.
trait Environment {
    fn get(&self, key: &str) -> Option<String>;
    fn remove(&mut self, key: &str);
}

/// The process environment. Only [`Passed::from_env`] builds one, under its safety contract.
struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var_os(key).map(|v| v.to_string_lossy().into_owned())
    }

    fn remove(&mut self, key: &str) {
        // SAFETY: `Passed::from_env`'s contract: no other thread runs yet, so nothing reads
        // the environment while it changes.
        unsafe { std::env::remove_var(key) }
    }
}

/// Reads what the variables announce and removes them, whatever they say.
fn take_announced(env: &mut impl Environment) -> Result<Announced, ActivationError> {
    let [pid, fds, names] = VARIABLES.map(|key| env.get(key));
    for key in VARIABLES {
        env.remove(key);
    }
    announced(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
}

impl Passed {
    /// No sockets: tallyd binds everything itself.
    pub fn none() -> Passed {
        Passed {
            sockets: Vec::new(),
            none_because: "no sockets were passed to this tallyd".into(),
        }
    }

    /// The sockets systemd passed to this process, taken out of its environment (the
    /// variables are removed, so nothing tallyd starts inherits them), each marked
    /// close-on-exec.
    ///
    /// # Safety
    ///
    /// Call it once, before any other thread starts: it changes the environment (see
    /// [`std::env::remove_var`]), and it takes ownership of the descriptors the variables name,
    /// which nothing else in the process may own.
    pub unsafe fn from_env() -> Result<Passed, ActivationError> {
        let announced = take_announced(&mut ProcessEnvironment)?;
        let sockets = match announced {
            Announced::Nothing(why) => {
                return Ok(Passed {
                    sockets: Vec::new(),
                    none_because: why,
                });
            }
            Announced::Sockets(sockets) => sockets,
        };
        let mut passed = Vec::with_capacity(sockets.len());
        for (number, name) in sockets {
            // SAFETY: F_GETFD and F_SETFD only read and set the descriptor's flags.
            let flags = unsafe { libc::fcntl(number, libc::F_GETFD) };
            if flags < 0 {
                return Err(ActivationError::Closed {
                    fd: number,
                    why: io::Error::last_os_error().to_string(),
                });
            }
            // SAFETY: as above.
            if unsafe { libc::fcntl(number, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
                return Err(ActivationError::Closed {
                    fd: number,
                    why: io::Error::last_os_error().to_string(),
                });
            }
            // SAFETY: the descriptor is open (checked above), the service manager handed it
            // to this process (LISTEN_PID is ours), and the caller guarantees nothing else
            // owns it; the variables are gone, so it cannot be taken twice.
            let fd = unsafe { OwnedFd::from_raw_fd(number) };
            passed.push(PassedSocket { fd, number, name });
        }
        let list: Vec<String> = passed
            .iter()
            .map(|s| format!("{} (descriptor {})", s.name, s.number))
            .collect();
        tracing::info!(
            "systemd passed {} socket(s): {}",
            passed.len(),
            list.join(", ")
        );
        Ok(Passed {
            none_because: "systemd passed no socket of that name".into(),
            sockets: passed,
        })
    }

    /// Sockets as if a service manager had passed them under these names (for harnesses
    /// and tests that hand tallyd sockets of their own).
    pub fn from_sockets(sockets: impl IntoIterator<Item = (String, OwnedFd)>) -> Passed {
        Passed {
            sockets: sockets
                .into_iter()
                .map(|(name, fd)| PassedSocket {
                    number: fd.as_raw_fd(),
                    fd,
                    name,
                })
                .collect(),
            none_because: "no socket of that name was passed".into(),
        }
    }

    /// Takes every socket passed under `name` for `role`, after checking that each fits it.
    pub fn take(&mut self, name: &str, role: Role) -> Result<Vec<OwnedFd>, ActivationError> {
        if !self.sockets.iter().any(|s| s.name == name) {
            let why = if self.sockets.is_empty() {
                self.none_because.clone()
            } else {
                let names: Vec<String> = self
                    .sockets
                    .iter()
                    .map(|s| format!("{} (descriptor {})", s.name, s.number))
                    .collect();
                format!(
                    "no socket of that name was passed (unclaimed: {}; names come from \
                     FileDescriptorName=)",
                    names.join(", ")
                )
            };
            return Err(ActivationError::Missing {
                role,
                name: name.to_owned(),
                why,
            });
        }
        for socket in self.sockets.iter().filter(|s| s.name == name) {
            let kind = SocketKind::of(&socket.fd).map_err(|e| ActivationError::Closed {
                fd: socket.number,
                why: e.to_string(),
            })?;
            if !kind.is_some_and(|kind| role.fits(kind)) {
                return Err(ActivationError::WrongKind {
                    role,
                    name: name.to_owned(),
                    fd: socket.number,
                    is: SocketKind::describe(kind),
                });
            }
        }
        let (taken, rest) = std::mem::take(&mut self.sockets)
            .into_iter()
            .partition(|s| s.name == name);
        self.sockets = rest;
        Ok(taken.into_iter().map(|s: PassedSocket| s.fd).collect())
    }

    /// Takes the one socket passed under `name` for `role`.
    pub fn take_one(&mut self, name: &str, role: Role) -> Result<OwnedFd, ActivationError> {
        let mut sockets = self.take(name, role)?;
        match sockets.len() {
            1 => Ok(sockets.remove(0)),
            count => Err(ActivationError::TooMany {
                role,
                name: name.to_owned(),
                count,
            }),
        }
    }

    /// Refuses the passed sockets whose names no listen address claims (`claimed`), before
    /// anything is bound: such a socket would fill up while its clients think they are heard,
    /// and a bind to its address would fail with a less helpful message.
    pub fn refuse_unclaimed<'a>(
        &self,
        claimed: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ActivationError> {
        let claimed: Vec<&str> = claimed.into_iter().collect();
        let unclaimed: Vec<(String, RawFd)> = self
            .sockets
            .iter()
            .filter(|s| !claimed.contains(&s.name.as_str()))
            .map(|s| (s.name.clone(), s.number))
            .collect();
        if unclaimed.is_empty() {
            Ok(())
        } else {
            Err(ActivationError::Unclaimed(unclaimed))
        }
    }
}

/// The first name two listen addresses both claim, as an error naming both keys: a passed
/// socket serves one listener.
pub fn shared_name<'a>(claims: impl IntoIterator<Item = (Role, &'a str)>) -> Option<String> {
    let mut seen: Vec<(Role, &str)> = Vec::new();
    for (role, name) in claims {
        if let Some((first, _)) = seen.iter().find(|(_, n)| *n == name) {
            let place = if *first == role {
                format!("{} twice", role.key())
            } else {
                format!("both {} and {}", first.key(), role.key())
            };
            return Some(format!(
                "{PREFIX}{name} is named by {place}; each passed socket serves one listener"
            ));
        }
        seen.push((role, name));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{SocketAddr, TcpListener, UdpSocket};
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::path::PathBuf;

    use super::*;

    const ME: u32 = 4242;

    fn sockets(announced: Result<Announced, ActivationError>) -> Vec<(RawFd, String)> {
        match announced {
            Ok(Announced::Sockets(sockets)) => sockets,
            other => panic!("expected sockets, got {other:?}"),
        }
    }

    fn nothing(announced: Result<Announced, ActivationError>) -> String {
        match announced {
            Ok(Announced::Nothing(why)) => why,
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    #[test]
    fn names_pair_with_descriptors_from_3_in_order() {
        let got = sockets(announced(
            Some("4242"),
            Some("3"),
            Some("statsd:http:statsd"),
            ME,
        ));
        assert_eq!(
            got,
            [
                (3, "statsd".into()),
                (4, "http".into()),
                (5, "statsd".into())
            ]
        );
    }

    #[test]
    fn without_names_every_socket_is_unknown() {
        let got = sockets(announced(Some("4242"), Some("2"), None, ME));
        assert_eq!(got, [(3, "unknown".into()), (4, "unknown".into())]);
    }

    #[test]
    fn a_pid_of_another_process_means_nothing_was_passed_to_us() {
        let why = nothing(announced(Some("17"), Some("2"), Some("a:b"), ME));
        assert!(
            why.contains("LISTEN_PID=17") && why.contains("4242"),
            "{why}"
        );
    }

    #[test]
    fn no_variables_means_not_activated() {
        let why = nothing(announced(None, None, None, ME));
        assert!(why.contains("not socket-activated"), "{why}");
        let why = nothing(announced(None, Some("1"), None, ME));
        assert!(why.contains("without LISTEN_PID"), "{why}");
    }

    #[test]
    fn a_name_count_that_differs_from_the_descriptor_count_is_refused() {
        let err = announced(Some("4242"), Some("2"), Some("statsd"), ME).unwrap_err();
        assert!(
            matches!(
                err,
                ActivationError::Malformed {
                    variable: "LISTEN_FDNAMES",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("1 socket(s)"), "{err}");
        assert!(announced(Some("4242"), Some("1"), Some("a:b"), ME).is_err());
    }

    #[test]
    fn malformed_numbers_are_refused_naming_the_variable() {
        let err = announced(Some("me"), Some("1"), None, ME).unwrap_err();
        assert!(err.to_string().contains("LISTEN_PID"), "{err}");
        let err = announced(Some("4242"), Some("-1"), None, ME).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
        let err = announced(Some("4242"), Some("100000"), None, ME).unwrap_err();
        assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
    }

    #[test]
    fn zero_descriptors_is_an_empty_list() {
        assert_eq!(
            sockets(announced(Some("4242"), Some("0"), Some(""), ME)),
            []
        );
    }

    #[derive(Default)]
    struct FakeEnvironment(HashMap<String, String>);

    impl Environment for FakeEnvironment {
        fn get(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
        fn remove(&mut self, key: &str) {
            self.0.remove(key);
        }
    }

    #[test]
    fn the_variables_are_removed_once_read_whatever_they_say() {
        let cases = [
            // For us, for someone else, malformed.
            [std::process::id().to_string(), "0".into(), String::new()],
            ["1".into(), "2".into(), "a:b".into()],
            [std::process::id().to_string(), "two".into(), "a:b".into()],
        ];
        for values in cases {
            let mut env = FakeEnvironment::default();
            for (key, value) in VARIABLES.iter().zip(&values) {
                env.0.insert((*key).into(), value.clone());
            }
            env.0.insert("PATH".into(), "/bin".into());
            let _ = take_announced(&mut env);
            assert_eq!(env.0.keys().collect::<Vec<_>>(), ["PATH"], "{values:?}");
        }
    }

    #[test]
    fn endpoints_parse_addresses_and_systemd_names() {
        let udp: Endpoint<SocketAddr> = "127.0.0.1:8125".parse().unwrap();
        assert_eq!(udp, Endpoint::Bind("127.0.0.1:8125".parse().unwrap()));
        let named: Endpoint<SocketAddr> = "systemd:statsd".parse().unwrap();
        assert_eq!(named, Endpoint::Systemd("statsd".into()));
        assert_eq!(named.to_string(), "systemd:statsd");
        let path: Endpoint<PathBuf> = "/run/tallyd/s.sock".parse().unwrap();
        assert_eq!(path, Endpoint::Bind("/run/tallyd/s.sock".into()));
        for bad in ["systemd:", "systemd:a:b", "systemd:tab\there"] {
            let err = bad.parse::<Endpoint<SocketAddr>>().unwrap_err();
            assert!(err.contains("FileDescriptorName"), "{bad}: {err}");
        }
        let err = "localhost".parse::<Endpoint<SocketAddr>>().unwrap_err();
        assert!(err.contains("\"localhost\""), "{err}");
    }

    fn passed(list: Vec<(&str, OwnedFd)>) -> Passed {
        Passed::from_sockets(list.into_iter().map(|(n, fd)| (n.to_owned(), fd)))
    }

    fn udp() -> OwnedFd {
        UdpSocket::bind("127.0.0.1:0").unwrap().into()
    }

    fn tcp_listener() -> OwnedFd {
        TcpListener::bind("127.0.0.1:0").unwrap().into()
    }

    #[test]
    fn each_role_takes_only_its_kind_of_socket() {
        let unix_stream = || -> OwnedFd { UnixStream::pair().unwrap().0.into() };
        let unix_dgram = || -> OwnedFd { UnixDatagram::unbound().unwrap().into() };
        // An unconnected, unlistening TCP socket.
        let tcp_idle = || -> OwnedFd {
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .unwrap()
                .into()
        };
        let pipe = || -> OwnedFd {
            let mut fds = [0; 2];
            // SAFETY: pipe writes two new descriptors into the array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: both are new and ours; the write end is closed at once.
            unsafe {
                drop(OwnedFd::from_raw_fd(fds[1]));
                OwnedFd::from_raw_fd(fds[0])
            }
        };
        // Which of Udp, Tcp, Unix, Http each kind of descriptor fits.
        type Make = fn() -> OwnedFd;
        let kinds: [(&str, Make, [bool; 4]); 6] = [
            ("udp", udp, [true, false, false, false]),
            ("tcp", tcp_listener, [false, true, false, true]),
            ("tcp-idle", tcp_idle, [false, false, false, false]),
            ("unix-dgram", unix_dgram, [false, false, true, false]),
            ("unix-stream", unix_stream, [false, false, false, false]),
            ("pipe", pipe, [false, false, false, false]),
        ];
        for (what, make, fits) in &kinds {
            for (role, fits) in [Role::Udp, Role::Tcp, Role::Unix, Role::Http]
                .into_iter()
                .zip(fits)
            {
                let mut passed = passed(vec![("s", make())]);
                let taken = passed.take("s", role);
                assert_eq!(taken.is_ok(), *fits, "{what} for {role:?}: {taken:?}");
                if let Err(e) = taken {
                    let text = e.to_string();
                    assert!(
                        text.contains(role.key()) && text.contains(role.needs()),
                        "{text}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_wrong_kind_is_described() {
        let mut passed = passed(vec![("statsd", tcp_listener())]);
        let err = passed.take("statsd", Role::Udp).unwrap_err().to_string();
        assert!(
            err.contains("an IPv4 listening TCP socket") && err.contains("ListenDatagram="),
            "{err}"
        );
    }

    #[test]
    fn one_name_may_carry_several_sockets() {
        let mut passed = passed(vec![
            ("statsd", udp()),
            ("http", tcp_listener()),
            ("statsd", udp()),
        ]);
        passed.refuse_unclaimed(["http", "statsd"]).unwrap();
        assert_eq!(passed.take("statsd", Role::Udp).unwrap().len(), 2);
        assert!(passed.take_one("http", Role::Http).is_ok());
    }

    #[test]
    fn http_takes_exactly_one_socket() {
        let mut passed = passed(vec![("http", tcp_listener()), ("http", tcp_listener())]);
        let err = passed.take_one("http", Role::Http).unwrap_err();
        assert!(
            matches!(err, ActivationError::TooMany { count: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn a_missing_name_lists_what_was_passed() {
        let mut passed = passed(vec![("statsd", udp())]);
        let err = passed
            .take("dogstatsd", Role::Unix)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("[unix] listen names systemd:dogstatsd")
                && err.contains("statsd (descriptor"),
            "{err}"
        );
        let err = Passed::none()
            .take("statsd", Role::Udp)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no sockets were passed"), "{err}");
    }

    #[test]
    fn an_unclaimed_socket_is_refused() {
        let passed = passed(vec![("statsd", udp()), ("extra", udp())]);
        let err = passed.refuse_unclaimed(["statsd", "other"]).unwrap_err();
        assert!(
            matches!(&err, ActivationError::Unclaimed(list) if list.len() == 1 && list[0].0 == "extra"),
            "{err:?}"
        );
    }

    #[test]
    fn a_name_claimed_twice_is_found() {
        assert_eq!(shared_name([(Role::Udp, "a"), (Role::Http, "b")]), None);
        let both = shared_name([(Role::Tcp, "s"), (Role::Http, "s")]).unwrap();
        assert!(
            both.contains("both [tcp] listen and [http] listen"),
            "{both}"
        );
        let twice = shared_name([(Role::Udp, "s"), (Role::Udp, "s")]).unwrap();
        assert!(twice.contains("[udp] listen twice"), "{twice}");
    }
}
