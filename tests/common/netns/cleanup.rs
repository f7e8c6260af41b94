//! Process-level clean-up of the namespaces `Topology` makes: the registry
//! of those this process holds, the signal watcher that deletes them on
//! SIGINT, SIGTERM or SIGHUP, and the removal of a killed run's leftovers
//! (namespaces of our prefix whose PID no longer runs). Building and
//! deleting one topology is the parent module's.

use std::process::Command;
use std::sync::{Mutex, MutexGuard, Once};

use super::{PREFIX, run};

/// Namespaces this process has made and not yet deleted, for the signal
/// watcher. Held across each `ip netns add`/`delete`, so the watcher never
/// misses one being made nor races one being deleted.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

pub(super) fn lock_live() -> MutexGuard<'static, Vec<String>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Once per process: a thread that, on SIGINT, SIGTERM or SIGHUP, deletes
/// the namespaces in [`LIVE`] and exits with 128 + the signal, as the signal
/// would have (a Ctrl-C of `cargo test` or `cargo bench` runs no `Drop`).
pub(super) fn delete_live_namespaces_on_signal() {
    static WATCH: Once = Once::new();
    WATCH.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            eprintln!(
                "netns: cannot watch signals; a Ctrl-C will leave namespaces to the next run"
            );
            return;
        };
        std::thread::spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let live = lock_live();
                for ns in live.iter() {
                    let _ = run(Command::new("ip").args(["netns", "delete", ns]));
                }
                eprintln!(
                    "netns: signal {signal}: deleted {} namespaces; exiting",
                    live.len()
                );
                std::process::exit(128 + signal);
            }
        });
    });
}

/// Names of the network namespaces that exist now (`ip netns list`).
pub fn list_namespaces() -> Vec<String> {
    match run(Command::new("ip").args(["netns", "list"])) {
        // Lines are "NAME" or "NAME (id: N)".
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Deletes namespaces of our prefix left by runs that were killed before
/// they could clean up: those whose PID is no longer a live process. Another
/// run's namespaces (a live PID) are never touched. Returns the names deleted.
pub fn remove_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in list_namespaces() {
        let Some(pid) = owner_pid(&ns) else { continue };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if run(Command::new("ip").args(["netns", "delete", &ns])).is_ok() {
            eprintln!("netns: deleted {ns}, left by process {pid}, which no longer runs");
            removed.push(ns);
        }
    }
    removed
}

/// The PID in a name of our scheme (`ue-<pid>-...`), if it is one.
pub fn owner_pid(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok().filter(|&p| p > 0)
}
