//! Connections served on the CPU their packets arrive on.
//!
//! Every worker has its own SO_REUSEPORT listener (and UDP socket), and the
//! kernel picks one of the group for each new connection. By default it hashes
//! the 4-tuple, so a connection whose packets the NIC (or RPS) processes on
//! CPU 3 may land on the worker pinned to CPU 5: every message then crosses
//! CPUs twice. A classic BPF program attached to the group
//! (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5+) replaces the hash: it loads the
//! CPU it runs on (`SKF_AD_CPU`, the CPU processing the SYN or the datagram in
//! softirq) and returns the index, in the group, of the socket whose worker is
//! pinned there. The flow's softirq, its worker and its buffers then share one
//! CPU and one cache.
//!
//! The group's indexes are the order its sockets joined it: a TCP listener
//! joins at `listen`, a UDP socket at `bind`, and `net::bind_listeners` and
//! the server bind them one at a time in worker order, so index *i* is worker
//! *i*. A socket leaves the group only when closed (the last one then moves
//! into its index), and none is closed before the workers stop.
//!
//! [`order_probe`] checks that order before the program relies on it.
//!
//! An index past the group's end makes the kernel fall back to the hash, which
//! is what the program returns for a CPU outside the list. This module decides
//! whether steering applies, builds the program and attaches it; it pins no
//! thread (`sys::pin_current_thread`) and does no I/O on connections.
#![forbid(unsafe_code)]

pub mod order_probe;

use std::fmt;
use std::os::fd::AsRawFd;

use socket2::Socket;

use crate::cpus::{CpuList, format_cpus};
pub use order_probe::Kind;
use order_probe::Order;

/// How the kernel picks the worker for a new connection, for the start line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Steering {
    /// The CPU that received the SYN picks the worker pinned to it. `unlisted`:
    /// online CPUs outside `--cpus`, whose connections are hashed.
    /// `unverified`: why the group's order could not be probed (it then
    /// rests on construction alone).
    Cpu {
        unlisted: Vec<usize>,
        unverified: Option<String>,
    },
    /// The kernel's 4-tuple hash, and why steering does not apply.
    Hash(String),
}

/// `cpu`, `cpu (SYNs received on CPUs 2-7, outside --cpus, are hashed)` or
/// `hash (reason)`: the start line's `steering=` value.
impl fmt::Display for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Steering::Cpu {
                unlisted,
                unverified,
            } => {
                f.write_str("cpu")?;
                let mut notes = Vec::new();
                if !unlisted.is_empty() {
                    notes.push(format!(
                        "connections received on CPU{} {}, outside --cpus, are hashed",
                        if unlisted.len() == 1 { "" } else { "s" },
                        format_cpus(unlisted)
                    ));
                }
                if let Some(why) = unverified {
                    notes.push(format!("group order unverified: {why}"));
                }
                if !notes.is_empty() {
                    write!(f, " ({})", notes.join("; "))?;
                }
                Ok(())
            }
            Steering::Hash(why) => write!(f, "hash ({why})"),
        }
    }
}

/// Whether steering can apply with this configuration, before any socket
/// exists: it needs one pinned worker per listed CPU.
pub fn plan(cpus: Option<&CpuList>, workers: usize) -> Result<(), Steering> {
    let Some(cpus) = cpus else {
        return Err(Steering::Hash("no --cpus".into()));
    };
    if workers != cpus.len() {
        return Err(Steering::Hash(format!(
            "--workers {workers} is not one per CPU of --cpus {cpus}: a CPU cannot pick among {} workers",
            workers / cpus.len()
        )));
    }
    Ok(())
}

/// Attaches the CPU-to-index program to a group whose sockets are listed in
/// join order (worker order), once [`order_probe`] has found the group in that
/// order. `online`: the kernel's online CPUs, to name those whose connections
/// stay hashed.
pub fn attach(group: &[Socket], kind: Kind, cpus: &CpuList, online: Option<&[usize]>) -> Steering {
    let Some(first) = group.first() else {
        return Steering::Hash("no sockets".into());
    };
    let unverified = match order_probe::check(group, kind) {
        Order::Workers => None,
        Order::Unverified(why) => Some(why),
        Order::Differs(why) => {
            // The last probe program still picks one fixed socket: hash again.
            let hash = [stmt(libc::BPF_RET | libc::BPF_K, NOT_LISTED)];
            return match crate::sys::attach_reuseport_cbpf(first.as_raw_fd(), &hash) {
                Ok(()) => Steering::Hash(why),
                Err(e) => Steering::Hash(format!("{why}; and restoring the hash failed: {e}")),
            };
        }
    };
    if let Err(e) = crate::sys::attach_reuseport_cbpf(first.as_raw_fd(), &program(cpus.cpus())) {
        let why = match e.raw_os_error() {
            Some(libc::ENOPROTOOPT) | Some(libc::EINVAL) => {
                format!("the kernel lacks SO_ATTACH_REUSEPORT_CBPF (Linux 4.5+): {e}")
            }
            _ => format!("SO_ATTACH_REUSEPORT_CBPF: {e}"),
        };
        return Steering::Hash(why);
    }
    let unlisted = online.map_or_else(Vec::new, |online| {
        online
            .iter()
            .copied()
            .filter(|c| !cpus.cpus().contains(c))
            .collect()
    });
    Steering::Cpu {
        unlisted,
        unverified,
    }
}

/// Returned for a CPU outside the list: past any group's end (a group holds
/// far fewer sockets), so the kernel falls back to its hash.
pub const NOT_LISTED: u32 = u32::MAX;

/// The classic BPF program: `A = current CPU`, then the index of the worker
/// pinned to it, or [`NOT_LISTED`].
///
/// A list that counts up from its first CPU (`4-7`) needs no table: the index
/// is `cpu - first`, and a CPU below `first` wraps around to a huge index
/// (cBPF arithmetic is unsigned 32-bit), which the kernel hashes like any
/// other index past the end. Any other list becomes a table of compares, two
/// instructions per CPU (1,024 CPUs: 2,050 instructions, under the kernel's
/// 4,096).
pub fn program(cpus: &[usize]) -> Vec<libc::sock_filter> {
    let load_cpu = stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
    );
    let first = cpus.first().copied().unwrap_or(0);
    let counts_up = cpus.iter().enumerate().all(|(i, &c)| c == first + i);
    let mut prog = vec![load_cpu];
    if counts_up {
        if first > 0 {
            prog.push(stmt(
                libc::BPF_ALU | libc::BPF_SUB | libc::BPF_K,
                first as u32,
            ));
        }
        prog.push(stmt(libc::BPF_RET | libc::BPF_A, 0));
        return prog;
    }
    for (index, &cpu) in cpus.iter().enumerate() {
        // Equal: fall through to the `ret` right after; not equal: skip it.
        prog.push(jump(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            cpu as u32,
            0,
            1,
        ));
        prog.push(stmt(libc::BPF_RET | libc::BPF_K, index as u32));
    }
    prog.push(stmt(libc::BPF_RET | libc::BPF_K, NOT_LISTED));
    prog
}

pub(crate) fn stmt(code: u32, k: u32) -> libc::sock_filter {
    jump(code, k, 0, 0)
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cBPF interpreter for the instructions [`program`] emits, so the
    /// mapping is checked as the kernel would run it.
    fn run(prog: &[libc::sock_filter], cpu: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let ins = prog[pc];
            let code = u32::from(ins.code);
            pc += 1;
            if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS {
                assert_eq!(ins.k, (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32);
                a = cpu;
            } else if code == libc::BPF_ALU | libc::BPF_SUB | libc::BPF_K {
                a = a.wrapping_sub(ins.k);
            } else if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K {
                pc += usize::from(if a == ins.k { ins.jt } else { ins.jf });
            } else if code == libc::BPF_RET | libc::BPF_A {
                return a;
            } else if code == libc::BPF_RET | libc::BPF_K {
                return ins.k;
            } else {
                panic!("unexpected instruction {code:#x}");
            }
        }
    }

    fn index_for(list: &str, cpu: u32) -> u32 {
        run(&program(CpuList::parse(list).unwrap().cpus()), cpu)
    }

    #[test]
    fn a_listed_cpu_maps_to_its_worker_and_any_other_past_the_group() {
        for list in ["0-7", "4-7", "0,2,4", "0-3,8", "3,1", "6,7,0"] {
            let cpus = CpuList::parse(list).unwrap();
            let groups = cpus.len() as u32;
            for (worker, &cpu) in cpus.cpus().iter().enumerate() {
                assert_eq!(
                    index_for(list, cpu as u32),
                    worker as u32,
                    "{list}: CPU {cpu}"
                );
            }
            for cpu in 0..64 {
                if !cpus.cpus().contains(&(cpu as usize)) {
                    assert!(index_for(list, cpu) >= groups, "{list}: CPU {cpu}");
                }
            }
        }
    }

    #[test]
    fn a_counting_list_needs_no_table() {
        assert_eq!(program(&[0, 1, 2, 3]).len(), 2);
        assert_eq!(program(&[4, 5]).len(), 3);
        assert_eq!(program(&[0, 2]).len(), 6);
        assert!(program(&(0..1024).rev().collect::<Vec<_>>()).len() <= 4096);
    }

    #[test]
    fn steering_needs_one_worker_per_listed_cpu() {
        let cpus = CpuList::parse("0,1").unwrap();
        assert_eq!(plan(Some(&cpus), 2), Ok(()));
        let e = plan(Some(&cpus), 4).unwrap_err().to_string();
        assert!(
            e.starts_with("hash (--workers 4") && e.contains("--cpus 0-1"),
            "{e}"
        );
        assert_eq!(plan(None, 2).unwrap_err().to_string(), "hash (no --cpus)");
    }

    #[test]
    fn the_start_line_names_cpus_whose_connections_stay_hashed() {
        let cpu = |unlisted: Vec<usize>, unverified: Option<&str>| Steering::Cpu {
            unlisted,
            unverified: unverified.map(String::from),
        };
        assert_eq!(cpu(vec![], None).to_string(), "cpu");
        assert_eq!(
            cpu(vec![2, 3, 5], None).to_string(),
            "cpu (connections received on CPUs 2-3,5, outside --cpus, are hashed)"
        );
        assert_eq!(
            cpu(vec![7], Some("lo is down")).to_string(),
            "cpu (connections received on CPU 7, outside --cpus, are hashed; group order unverified: lo is down)"
        );
    }
}
