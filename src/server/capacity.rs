//! How many connections the server can hold and which limit sets that number,
//! for the start line; and the one-line notices when a descriptor table fills
//! and when it has room again. It does not enforce any limit: `--max-conns` is
//! checked by the backends at accept, the tables are the kernel's.
//!
//! Two kinds of table. The io_uring backend accepts into its ring's table of
//! direct descriptors, one table per worker, which the kernel caps at
//! RLIMIT_NOFILE per ring. The epoll and tokio-uring backends need one file
//! descriptor per connection in the process's one table, RLIMIT_NOFILE for all
//! workers together, next to the descriptors the process already has open.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::server::config::{Backend, Config};

/// Connections the server can hold at once, and why that many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub conns: usize,
    /// Which limit sets `conns`, in words: `2 workers x 20000 direct descriptors, RLIMIT_NOFILE`.
    pub source: String,
}

impl Capacity {
    /// The capacity of `config`'s backend, given the open-files limit and the
    /// descriptors below it the process has open now (after its listeners,
    /// rings and eventfds are set up).
    pub fn of(config: &Config, open_files_limit: u64, fds_in_use: usize) -> Capacity {
        let limit = usize::try_from(open_files_limit).unwrap_or(usize::MAX);
        let (conns, source) = match config.backend {
            Backend::Uring => {
                let per_ring =
                    crate::server::uring::direct_table_slots(config, open_files_limit) as usize;
                let why = if open_files_limit > u64::from(crate::server::uring::MAX_TABLE_SLOTS) {
                    "the most a ring is given"
                } else {
                    "RLIMIT_NOFILE"
                };
                (
                    config.workers.saturating_mul(per_ring),
                    format!(
                        "{} workers x {per_ring} direct descriptors, {why}",
                        config.workers
                    ),
                )
            }
            Backend::Epoll | Backend::TokioUring => (
                limit.saturating_sub(fds_in_use),
                format!("RLIMIT_NOFILE {limit} - {fds_in_use} descriptors the process has open"),
            ),
        };
        if config.max_conns <= conns {
            return max_conns(config);
        }
        Capacity { conns, source }
    }
}

fn max_conns(config: &Config) -> Capacity {
    Capacity {
        conns: config.max_conns,
        source: "--max-conns".into(),
    }
}

/// `40000 (2 workers x 20000 direct descriptors, RLIMIT_NOFILE)`.
impl fmt::Display for Capacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.conns, self.source)
    }
}

/// Whether a descriptor table is full, so that the server says so once when it
/// fills and once when it has room again, not at every accept that fails.
///
/// "Room again" waits until the connections open have fallen to 90% of what
/// they were when the table filled: at the limit under churn, every close
/// makes room for one accept that fills the table again, and a notice per
/// close would drown the log. Shared by the workers of one table (atomic).
#[derive(Debug, Default)]
pub struct TableFull {
    /// Connections open when the table filled; 0 while it has room.
    full_at: AtomicUsize,
}

impl TableFull {
    /// Records that the table is full with `open` connections in it; true
    /// only for the first failure since it last had room (say so, count it).
    pub fn filled(&self, open: usize) -> bool {
        self.full_at
            .compare_exchange(0, open.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// After a close leaving `open` connections: the count at which the table
    /// filled, once, when `open` has fallen far enough below it.
    pub fn room_again(&self, open: usize) -> Option<usize> {
        let full_at = self.full_at.load(Ordering::Relaxed);
        if full_at == 0 || open > full_at - full_at / 10 {
            return None;
        }
        self.full_at
            .compare_exchange(full_at, 0, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
    }

    pub fn is_full(&self) -> bool {
        self.full_at.load(Ordering::Relaxed) != 0
    }
}

/// The line printed when a worker's ring has no free direct descriptor.
pub fn ring_table_full_notice(worker: usize, open: usize, slots: u32) -> String {
    format!(
        "uring-echo: worker {worker}: descriptor table full: {open} connections in its {slots} \
         direct descriptors (one table per ring, capped at RLIMIT_NOFILE); new connections \
         wait in the accept queue. For more: raise --workers (a table each) or the open-files \
         limit (ulimit -n)"
    )
}

/// The line printed when the process has no free file descriptor.
pub fn fd_table_full_notice(errno: i32, open: usize) -> String {
    let (what, remedy) = if errno == libc::ENFILE {
        (
            "the system's file table is full (fs.file-max)".to_string(),
            "raise fs.file-max, or close other processes' files",
        )
    } else {
        (
            format!(
                "open-files limit reached (RLIMIT_NOFILE {})",
                crate::sys::open_files_limit()
            ),
            "raise the open-files limit (ulimit -n), or use --backend uring (a table per worker)",
        )
    };
    format!(
        "uring-echo: {what} with {open} connections open; new connections wait in the accept \
         queue. For more: {remedy}"
    )
}

/// The line printed when a full table has room again.
pub fn room_again_notice(table: &str, open: usize, full_at: usize) -> String {
    format!(
        "uring-echo: {table} has room again: {open} connections open (it filled at {full_at}); \
         accepting"
    )
}

/// Descriptors this process has open now whose numbers are below `limit`
/// (entries of /proc/self/fd, less the one the listing itself holds).
/// RLIMIT_NOFILE caps descriptor *numbers*: one inherited above the limit
/// (a parent's pipe at 251, say) takes no room from connections.
pub fn fds_in_use_below(limit: u64) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let below = dir
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&fd| fd < limit)
        .count();
    below.saturating_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_is_reported_once_and_room_once_below_ninety_percent() {
        let t = TableFull::default();
        assert!(t.filled(1000));
        assert!(!t.filled(1000), "second failure while full is not news");
        assert_eq!(t.room_again(999), None, "one close under churn is not room");
        assert_eq!(t.room_again(901), None);
        assert_eq!(t.room_again(900), Some(1000));
        assert_eq!(t.room_again(0), None, "said once");
        assert!(t.filled(950), "full again is news again");
    }
}
