//! The few raw OS calls the tool makes outside its sockets: CPU time from `getrusage` (what both
//! reports charge), timer slack for `send`'s pacing sleeps, and the flag SIGTERM/SIGINT set so
//! `floor` can stop and still print its report.

use std::sync::atomic::{AtomicBool, Ordering};

/// User and system CPU time, in seconds.
pub(crate) struct Cpu {
    pub(crate) user: f64,
    pub(crate) system: f64,
}

impl Cpu {
    pub(crate) fn total(&self) -> f64 {
        self.user + self.system
    }
}

/// CPU time so far of `who` (`RUSAGE_SELF`: the process, `RUSAGE_THREAD`: this thread).
pub(crate) fn rusage(who: libc::c_int) -> Cpu {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Cpu {
        user: seconds(usage.ru_utime),
        system: seconds(usage.ru_stime),
    }
}

pub(crate) fn set_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer; 1 ns makes short sleeps accurate.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// From now on SIGTERM and SIGINT only set the flag [`stop_requested`] reads.
pub(crate) fn stop_on_signals() {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGTERM or SIGINT arrived since [`stop_on_signals`].
pub(crate) fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}
