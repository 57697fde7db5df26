//! Unix datagram sockets (`[unix]`): the DogStatsD agent's `dogstatsd_socket` and
//! statsd_exporter's `--statsd.listen-unixgram`. Each path gets one socket and one receive
//! thread, which reads it with the same [`BatchReceiver`] (and loop) as UDP.
//!
//! ## The socket file
//!
//! - Binding a path that holds a socket file left by a crashed process would fail, so
//!   [`bind`] first connects to it: `ECONNREFUSED` means nobody receives there (stale), and
//!   the file is replaced. A socket that accepts the connection is alive, and is never taken
//!   over: tallyd refuses to start, naming the path. A path that exists and is not a socket is
//!   never removed either.
//! - The file gets the configured `mode` (a client needs write permission to send).
//! - It is removed when the listener is dropped (the receive thread ends on shutdown, or a
//!   later bind fails), but only if it is still the file this listener created: a newer
//!   tallyd that replaced it keeps its own.
//!
//! A socket systemd passed (`systemd:NAME`, `ListenDatagram=/PATH` in the socket unit) is
//! systemd's: its file, mode and owner come from the socket unit (`SocketMode=`,
//! `SocketUser=`), and tallyd neither changes nor removes it; its receive buffer is raised to
//! `receive_buffer_bytes`, never lowered (as for UDP).
//!
//! Unix datagram sockets do not drop on a full receive queue as UDP does: the sender blocks
//! or, non-blocking as DogStatsD clients are, gets `EAGAIN` and counts its own drop.
//!
//! [`BatchReceiver`]: super::udp::BatchReceiver

use std::io;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use super::activation::{Endpoint, Passed, Role};
use super::udp::{self, BatchReceiver, DropShare, MAX_DATAGRAM, RECEIVE_TIMEOUT};
use super::{Intake, OpenError, Stop};

/// Datagrams fetched per `recvmmsg` call.
const BATCH: usize = 32;

/// What `[unix]` asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct UnixOptions {
    /// Socket paths to receive on, or `systemd:NAME` for the Unix datagram sockets systemd
    /// passed under that name; none by default.
    pub listen: Vec<Endpoint<PathBuf>>,
    /// Permission bits of the socket file.
    pub mode: u32,
    /// Longest datagram accepted; longer ones are refused whole and counted.
    pub max_datagram_bytes: usize,
    /// Requested `SO_RCVBUF`, as for UDP.
    pub receive_buffer_bytes: usize,
}

impl Default for UnixOptions {
    fn default() -> Self {
        UnixOptions {
            listen: Vec::new(),
            mode: 0o666,
            max_datagram_bytes: MAX_DATAGRAM,
            receive_buffer_bytes: 8 << 20,
        }
    }
}

/// One bound Unix datagram socket, not yet read. Removes its file when dropped, unless
/// systemd passed it.
#[derive(Debug)]
pub struct UnixListener {
    socket: UnixDatagram,
    path: PathBuf,
    /// Device and inode of the file bound, to remove only our own; `None` for a socket
    /// systemd passed, whose file is the socket unit's.
    file: Option<(u64, u64)>,
    max_datagram_bytes: usize,
}

impl UnixListener {
    /// The socket's path, as configured.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UnixListener {
    fn drop(&mut self) {
        let Some(file) = self.file else { return };
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == file);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("cannot remove the socket {}: {e}", self.path.display());
        }
    }
}

/// Binds every socket path and adopts the sockets systemd passed for `systemd:NAME` entries, so
/// that a path in use or a passed socket that does not fit is reported before anything starts.
pub fn open(options: &UnixOptions, passed: &mut Passed) -> Result<Vec<UnixListener>, OpenError> {
    super::open_endpoints(
        &options.listen,
        Role::Unix,
        passed,
        |path| {
            bind_one(path, options).map(|l| vec![l]).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen for StatsD on Unix socket {}: {e}",
                        path.display()
                    ),
                )
            })
        },
        |fd| {
            adopt(fd, options).map(|l| vec![l]).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot use the Unix socket systemd passed: {e}"),
                )
            })
        },
    )
}

/// A Unix datagram socket systemd passed: read as a bound one, its file left alone.
fn adopt(fd: OwnedFd, options: &UnixOptions) -> io::Result<UnixListener> {
    let socket = UnixDatagram::from(fd);
    let addr = socket.local_addr()?;
    // An abstract socket (`ListenDatagram=@name`) has a name but no file.
    let path = match (addr.as_pathname(), addr.as_abstract_name()) {
        (Some(path), _) => path.to_owned(),
        (None, Some(name)) => PathBuf::from(format!("@{}", String::from_utf8_lossy(name))),
        (None, None) => return Err(io::Error::other("the socket has no address")),
    };
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    let granted = match udp::raise_receive_buffer(&socket, options.receive_buffer_bytes) {
        Ok(granted) => granted,
        Err(e) => {
            tracing::warn!(
                "cannot raise SO_RCVBUF of {} to {} bytes: {e}",
                path.display(),
                options.receive_buffer_bytes
            );
            udp::receive_buffer_size(&socket).unwrap_or(0)
        }
    };
    tracing::info!(
        "listening for StatsD on Unix socket {} (passed by systemd; its mode and owner are the \
         socket unit's): receive buffer {granted} bytes as the kernel reports it",
        path.display()
    );
    Ok(UnixListener {
        socket,
        path,
        file: None,
        max_datagram_bytes: options.max_datagram_bytes.clamp(1, MAX_DATAGRAM),
    })
}

fn bind_one(path: &Path, options: &UnixOptions) -> io::Result<UnixListener> {
    remove_if_stale(path)?;
    let socket = UnixDatagram::bind(path)?;
    // From here on, a failure drops the listener, which removes the file again.
    let file = std::fs::symlink_metadata(path)?;
    let listener = UnixListener {
        socket,
        path: path.to_owned(),
        file: Some((file.dev(), file.ino())),
        max_datagram_bytes: options.max_datagram_bytes.clamp(1, MAX_DATAGRAM),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(options.mode))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot set its mode: {e}")))?;
    listener.socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    let granted = match udp::set_receive_buffer(&listener.socket, options.receive_buffer_bytes) {
        Ok(granted) => granted,
        Err(e) => {
            tracing::warn!(
                "cannot set SO_RCVBUF of {} to {} bytes: {e}",
                path.display(),
                options.receive_buffer_bytes
            );
            udp::receive_buffer_size(&listener.socket).unwrap_or(0)
        }
    };
    tracing::info!(
        "listening for StatsD on Unix socket {} (mode {:04o}): receive buffer {granted} bytes \
         as the kernel reports it",
        path.display(),
        options.mode
    );
    Ok(listener)
}

/// Removes a socket file nobody receives on; refuses a live socket and anything not a socket.
fn remove_if_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; tallyd does not remove it",
        ));
    }
    let probe = UnixDatagram::unbound()?;
    match probe.connect(path) {
        Ok(()) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is receiving on this socket (a live socket is never replaced)",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::warn!(
                "replacing the stale socket {} (nobody receives on it, a crash left it)",
                path.display()
            );
            std::fs::remove_file(path)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("the socket there is in use or unusable ({e}); it is not replaced"),
        )),
    }
}

/// The body of one Unix receive thread: the datagram loop UDP runs.
pub(super) fn receive_loop(listener: UnixListener, intake: &mut Intake, stop: &Stop) {
    let mut receiver = BatchReceiver::new(BATCH, listener.max_datagram_bytes);
    // Unix datagram sockets never drop (a full queue blocks the sender): no count to share.
    let drops = DropShare::new(None);
    udp::receive_datagrams(&listener.socket, &mut receiver, drops, "Unix", intake, stop);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket path in a directory of its own, removed with the returned guard.
    fn temp_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::Builder::new()
            .prefix("tallyd-unix-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("s.sock");
        (dir, path)
    }

    fn options(path: &Path) -> UnixOptions {
        UnixOptions {
            listen: vec![Endpoint::Bind(path.to_owned())],
            ..UnixOptions::default()
        }
    }

    fn bind(options: &UnixOptions) -> Result<Vec<UnixListener>, OpenError> {
        open(options, &mut Passed::none())
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let (_dir, path) = temp_path();
        // A socket whose owner is gone: bound, then closed without removing the file.
        drop(UnixDatagram::bind(&path).unwrap());
        let first = bind(&options(&path)).unwrap();
        let err = bind(&options(&path)).unwrap_err();
        assert!(
            matches!(&err, OpenError::Io(e) if e.kind() == io::ErrorKind::AddrInUse),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        drop(first);
        assert!(!path.exists(), "the file outlived its listener");
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let (_dir, path) = temp_path();
        std::fs::write(&path, "keep me").unwrap();
        assert!(bind(&options(&path)).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_mode_is_applied() {
        let (_dir, path) = temp_path();
        let listener = bind(&UnixOptions {
            mode: 0o620,
            ..options(&path)
        })
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o620);
        drop(listener);
    }

    #[test]
    fn a_passed_socket_keeps_its_file_and_mode() {
        let (_dir, path) = temp_path();
        let socket = UnixDatagram::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut passed = Passed::from_sockets([("dogstatsd".to_owned(), OwnedFd::from(socket))]);
        let listeners = open(
            &UnixOptions {
                listen: vec!["systemd:dogstatsd".parse().unwrap()],
                mode: 0o666,
                ..UnixOptions::default()
            },
            &mut passed,
        )
        .unwrap();
        assert_eq!(listeners[0].path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the socket unit's mode was changed");
        drop(listeners);
        assert!(path.exists(), "tallyd removed a socket file systemd owns");
        std::fs::remove_file(&path).unwrap();
    }
}
