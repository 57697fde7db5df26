//! CPU priority of tallyd's own threads. The receive threads of the StatsD listeners keep the
//! process's priority: a datagram they do not read in time is lost, and nobody is told. So does
//! the render of `/metrics` (on the async runtime's blocking pool): Prometheus gives a scrape a
//! deadline. The threads that answer API requests and write the store run
//! [`BACKGROUND_NICENESS`] steps lower: their clients wait on a TCP connection and lose nothing
//! when an answer comes a little later. When one core cannot carry all of it, the scheduler
//! gives it to the receive threads and the render first; when it can, niceness changes nothing.

use std::cell::Cell;

/// Nice steps the API and store threads take below the process: a receive thread then weighs
/// three times as much as each of them (Linux's weights grow 1.25× a step).
pub const BACKGROUND_NICENESS: i32 = 5;

/// Lowers the calling thread's priority by [`BACKGROUND_NICENESS`]: on Linux niceness belongs
/// to a thread, not the process. Raising one's own niceness is always allowed; should it fail
/// anyway, the thread keeps its priority, which only matters under overload.
pub fn background_thread() {
    // SAFETY: plain system calls on the calling thread's id; errno is this thread's own.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        *libc::__errno_location() = 0;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        if now == -1 && *libc::__errno_location() != 0 {
            return;
        }
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + BACKGROUND_NICENESS).min(19));
    }
}

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// [`background_thread`] once per thread, for tokio's `on_thread_park`: tokio has no hook for
/// its workers alone, and only workers park through this one, so the blocking pool's threads,
/// where `/metrics` renders, keep the process's priority (`on_thread_start` would lower them
/// too). A worker parks as soon as it first runs out of tasks, before it serves much.
pub fn background_worker() {
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            background_thread();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn niceness() -> i32 {
        // SAFETY: as above.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn a_background_thread_is_nicer_and_the_others_are_not() {
        let own = niceness();
        let background = std::thread::spawn(|| {
            background_thread();
            niceness()
        })
        .join()
        .unwrap();
        assert_eq!(background, (own + BACKGROUND_NICENESS).min(19));
        assert_eq!(niceness(), own, "only the calling thread");
    }

    #[test]
    fn a_worker_is_lowered_once_however_often_it_parks() {
        let own = niceness();
        let worker = std::thread::spawn(|| {
            for _ in 0..3 {
                background_worker();
            }
            niceness()
        })
        .join()
        .unwrap();
        assert_eq!(worker, (own + BACKGROUND_NICENESS).min(19));
    }
}
