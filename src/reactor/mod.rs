//! Everything that touches the operating system: sockets, the clock, files, signals and
//! child processes. One `mio` event loop per process, no threads.
//!
//! The drivers ([`server`], [`client`]) only translate: OS events become `handle_*` calls on
//! the pure cores, and the cores' outputs become writes, dials, closes and spawns.

pub mod client;
pub mod conn;
pub mod conns;
pub mod notify;
pub mod promise;
pub mod server;
pub mod spawn;
pub mod status;
pub mod timer;

use std::time::{Duration, Instant};

/// The `poll` timeout that wakes the loop at `deadline` (rounded up to whole milliseconds,
/// which is what epoll can wait: a deadline is never missed by a spin of early wakeups).
pub fn timeout_until(deadline: Option<Instant>, now: Instant) -> Option<Duration> {
    deadline.map(|d| {
        let wait = d.saturating_duration_since(now);
        let ms = wait.as_nanos().div_ceil(1_000_000);
        Duration::from_millis(ms as u64)
    })
}

/// This process's descriptor limit, `(soft, hard)`; `None` if it cannot be read.
pub fn nofile_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    read.then_some((lim.rlim_cur, lim.rlim_max))
}
