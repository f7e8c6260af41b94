//! Reading back what `--cpus` did: each thread's allowed CPUs from /proc, and
//! the per-worker counters of `--stats-per-worker`.

use std::collections::HashMap;

use super::{Stopped, parse_counters};

/// Whether this process may run on CPUs 0 and 1 (the tests' two CPUs); the
/// reason to print where not.
pub fn two_cpus() -> Result<(), String> {
    let list = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    if list.contains(&0) && list.contains(&1) {
        Ok(())
    } else {
        Err(format!(
            "skipping: needs CPUs 0 and 1, this process may use {list:?}"
        ))
    }
}

/// [`two_cpus`], printing the reason to skip where not.
pub fn on_two_cpus() -> bool {
    two_cpus().map_err(|skip| eprintln!("{skip}")).is_ok()
}

/// `Cpus_allowed_list` of a /proc status file (its text), expanded.
pub fn cpus_allowed(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in {status}"))
        .trim();
    list.split(',')
        .flat_map(|item| {
            let (a, b) = item.split_once('-').unwrap_or((item, item));
            a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
        })
        .collect()
}

/// The CPUs each thread named `PREFIX<I>` (`worker-0`, `loadgen-2`) of
/// process `pid` may run on, by I, read from /proc/PID/task/TID/status.
/// Empty once the process is gone.
pub fn thread_affinity(pid: i32, prefix: &str) -> HashMap<usize, Vec<usize>> {
    let mut threads = HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for dir in tasks.flatten().map(|t| t.path()) {
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let Some(id) = comm.trim().strip_prefix(prefix) else {
            continue;
        };
        // A thread that exits between the listing and this read is skipped.
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            threads.insert(id.parse().unwrap(), cpus_allowed(&status));
        }
    }
    threads
}

/// The `uring-echo stopped worker=I ...` lines of a stopped server
/// (--stats-per-worker), in worker order.
pub fn per_worker(stopped: &Stopped) -> Vec<HashMap<String, u64>> {
    let workers: Vec<_> = stopped
        .stdout
        .iter()
        .filter(|l| l.starts_with("uring-echo stopped worker="))
        .map(|l| parse_counters(l))
        .collect();
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w["worker"], i as u64, "{stopped:?}");
    }
    workers
}

/// The start line says connections are steered by CPU, and the reuseport
/// group's order was checked (no "unverified" note).
pub fn assert_steered(start_line: &str) {
    let steering = start_line
        .split(" steering=")
        .nth(1)
        .unwrap_or_else(|| panic!("no steering= in {start_line}"));
    assert!(steering.starts_with("cpu"), "{start_line}");
    assert!(!steering.contains("unverified"), "{start_line}");
}
