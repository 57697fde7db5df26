//! CPU priority of tallyd's own threads. The receive threads of the StatsD listeners keep the
//! process's priority: a datagram they do not read in time is lost, and nobody is told. So do
//! the threads `/metrics` renders on (`http::Renderers`): Prometheus gives a scrape a deadline.
//! The async runtime's threads, which answer API requests, and the store's writer and
//! checkpointer run [`BACKGROUND_NICENESS`] steps lower: their clients wait on a TCP connection
//! and lose nothing when an answer comes a little later. When one core cannot carry all of it,
//! the scheduler gives it to the receive threads and the render first; when it can, niceness
//! changes nothing. A thread inherits the niceness of the thread that starts it, so the render
//! threads are started from the daemon's main thread, not from the runtime. [`usable_cpus`] is
//! the CPUs the process may run on, which the thread counts that follow the CPUs are sized by.

/// The CPUs this process may run on: its affinity mask (`taskset`, a cgroup's cpuset), 1 when
/// that cannot be read.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

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
}
