//! Two hosts on one machine: a server network namespace and one namespace per
//! load host, each joined to the server's by its own veth pair, addressed from
//! 198.18.0.0/15 (RFC 2544's benchmarking range), with RPS on each veth's
//! receive queue steering that side's receive processing to chosen CPUs.
//!
//! Used by the integration tests and, through `#[path]`, by the criterion
//! benches, so it depends on nothing but `std` and the crate's own
//! dependencies (`libc`, `signal-hook`). It runs `ip(8)`
//! and needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); where a namespace cannot
//! be made, [`Topology::create`] returns the reason for the caller to print
//! and skip. It changes no setting of the machine itself: both ends of every
//! veth are created directly inside the namespaces, and RPS is written to the
//! namespaces' own devices.
//!
//! Namespace names are `ue-<pid>-<n>-srv` and `ue-<pid>-<n>-c<host>`: the PID
//! keeps concurrent runs (other engineers, CI, the bench script) apart, and
//! `n`, a per-process counter, keeps apart the topologies of tests running as
//! threads of one process. Dropping a [`Topology`] deletes every namespace it
//! made, also while a panic unwinds; on SIGINT, SIGTERM or SIGHUP the process
//! deletes the namespaces it holds and exits (128 + the signal); namespaces of
//! this prefix whose PID is no longer alive (a run killed by SIGKILL) are
//! deleted by the next [`Topology::create`].
#![allow(dead_code)] // each user takes a different subset

// Relative to this file's directory however this file is reached (as
// `common::netns`, or through `#[path]` from the benches).
#[path = "netns/cleanup.rs"]
mod cleanup;
#[path = "netns/enter.rs"]
mod enter;
#[path = "netns/rps.rs"]
mod rps;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cleanup::{delete_live_namespaces_on_signal, lock_live};
#[allow(unused_imports)] // each user takes a different subset
pub use cleanup::{list_namespaces, owner_pid, remove_leftovers};
pub use enter::NetnsGuard;
pub use rps::rps_mask;
use rps::{rps_path, same_mask};

/// Prefix of every namespace this module (and the bench script) creates.
pub const PREFIX: &str = "ue-";

/// The most load hosts: host `h` gets the /24 198.18.h.0 (h < 256) or
/// 198.19.(h-256).0, which fills the /15.
pub const MAX_LOAD_HOSTS: usize = 512;

/// What to build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopologySpec {
    /// Client namespaces, each joined to the server's by its own veth pair.
    pub load_hosts: usize,
    /// For each load host, the CPUs (a list like "0", "0-3" or "0,2") that
    /// process the packets the server receives from that host: RPS on the
    /// server-side veth of that host's pair. Empty, or an empty string for
    /// one host, leaves the kernel's default (no steering).
    pub server_rps_cpus: Vec<String>,
    /// For each load host, the CPUs that process the packets that host
    /// receives: RPS on its own veth.
    pub client_rps_cpus: Vec<String>,
}

impl TopologySpec {
    /// One server and one load host, the server's receive processing on
    /// `server_cpus` and the client's on `client_cpus`.
    pub fn pair(server_cpus: &str, client_cpus: &str) -> TopologySpec {
        TopologySpec {
            load_hosts: 1,
            server_rps_cpus: vec![server_cpus.to_string()],
            client_rps_cpus: vec![client_cpus.to_string()],
        }
    }

    /// Checks the host count and every CPU list, and returns the RPS mask of
    /// each (server, client) pair of veths, `None` where left unsteered.
    fn masks(&self) -> Result<Vec<HostMasks>, String> {
        if !(1..=MAX_LOAD_HOSTS).contains(&self.load_hosts) {
            return Err(format!(
                "load_hosts must be in 1..={MAX_LOAD_HOSTS}, got {}",
                self.load_hosts
            ));
        }
        let side = |lists: &[String], which: &str| -> Result<Vec<Option<String>>, String> {
            if lists.is_empty() {
                return Ok(vec![None; self.load_hosts]);
            }
            if lists.len() != self.load_hosts {
                return Err(format!(
                    "{which}_rps_cpus has {} entries for {} load hosts (one per host, or none)",
                    lists.len(),
                    self.load_hosts
                ));
            }
            lists
                .iter()
                .map(|l| match l.trim() {
                    "" => Ok(None),
                    l => rps_mask(l)
                        .map(Some)
                        .map_err(|e| format!("{which}_rps_cpus {l:?}: {e}")),
                })
                .collect()
        };
        let server = side(&self.server_rps_cpus, "server")?;
        let client = side(&self.client_rps_cpus, "client")?;
        Ok(server.into_iter().zip(client).collect())
    }
}

/// The RPS masks of one load host's veth pair: (server side, client side),
/// `None` where unsteered.
type HostMasks = (Option<String>, Option<String>);

/// The namespaces and veth pairs of one [`TopologySpec`], removed on drop.
#[derive(Debug)]
pub struct Topology {
    server_ns: String,
    client_ns: Vec<String>,
    /// Every namespace made so far, deleted by `Drop` (also after a failed
    /// `create`, which drops the half-built topology).
    created: Vec<String>,
}

impl Topology {
    /// Builds the topology of `spec`. `Err` is a one-line reason (no root, no
    /// `ip`, namespaces unsupported, a bad spec) for the caller to print when
    /// it skips; whatever was made before the failure is removed.
    pub fn create(spec: &TopologySpec) -> Result<Topology, String> {
        let masks = spec.masks()?;
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); not running as root"
                    .into(),
            );
        }
        match Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => {}
            Ok(s) => {
                return Err(format!(
                    "`ip -V` failed ({s}); iproute2 is needed for network namespaces"
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot run `ip` ({e}); install iproute2 for network namespaces"
                ));
            }
        }
        remove_leftovers();
        delete_live_namespaces_on_signal();

        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut topo = Topology {
            server_ns: format!("{base}-srv"),
            client_ns: (0..spec.load_hosts)
                .map(|h| format!("{base}-c{h}"))
                .collect(),
            created: Vec::new(),
        };
        topo.add_namespace(&topo.server_ns.clone())?;
        for host in 0..spec.load_hosts {
            topo.add_namespace(&topo.client_ns[host].clone())?;
        }
        for (host, (server_mask, client_mask)) in masks.iter().enumerate() {
            topo.join(host, server_mask.as_deref(), client_mask.as_deref())?;
        }
        for host in 0..spec.load_hosts {
            topo.wait_link_up(host)?;
        }
        Ok(topo)
    }

    /// The server's namespace.
    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }

    /// Load host `host`'s namespace.
    pub fn client_ns(&self, host: usize) -> &str {
        &self.client_ns[host]
    }

    /// How many load hosts there are.
    pub fn load_hosts(&self) -> usize {
        self.client_ns.len()
    }

    /// The server's address on the link to load host `host` (198.18.h.1).
    pub fn server_addr(&self, host: usize) -> IpAddr {
        IpAddr::V4(host_subnet(host, 1))
    }

    /// Load host `host`'s address (198.18.h.2).
    pub fn client_addr(&self, host: usize) -> IpAddr {
        IpAddr::V4(host_subnet(host, 2))
    }

    /// The server-side veth of load host `host`'s pair (in the server namespace).
    pub fn server_dev(&self, host: usize) -> String {
        format!("vs{host}")
    }

    /// Load host `host`'s veth (in its namespace).
    pub fn client_dev(&self, host: usize) -> String {
        format!("vc{host}")
    }

    /// Every namespace of this topology, server first.
    pub fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.server_ns.clone())
            .chain(self.client_ns.iter().cloned())
            .collect()
    }

    /// `ip netns exec NS program`: add the arguments, then spawn. The
    /// program replaces `ip` (exec), so the child's PID is the program's.
    pub fn exec(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// The RPS mask the kernel holds for `dev`'s first receive queue in `ns`,
    /// as written in /sys (hex, comma-separated 32-bit groups; all zeros
    /// when unsteered).
    pub fn rps_cpus(&self, ns: &str, dev: &str) -> Result<String, String> {
        let out = run(self.exec(ns, "cat").arg(rps_path(dev)))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Moves the calling thread into namespace `ns` (one of this
    /// topology's) until the guard drops, which moves it back. Sockets the
    /// thread creates meanwhile live in `ns` for good, so a client can make
    /// its connections inside and then run anywhere. Other threads of the
    /// process stay where they are: a network namespace is per thread.
    pub fn enter(&self, ns: &str) -> Result<NetnsGuard, String> {
        let home = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("open /proc/thread-self/ns/net: {e}"))?;
        let target = std::fs::File::open(format!("/var/run/netns/{ns}"))
            .map_err(|e| format!("open /var/run/netns/{ns}: {e}"))?;
        enter::set_thread_netns(&target).map_err(|e| format!("setns into {ns}: {e}"))?;
        Ok(NetnsGuard { home })
    }

    /// A counter of `dev` in `ns` from /sys/class/net/DEV/statistics
    /// (`rx_bytes`, `tx_packets`, ...).
    pub fn dev_counter(&self, ns: &str, dev: &str, counter: &str) -> Result<u64, String> {
        let path = format!("/sys/class/net/{dev}/statistics/{counter}");
        let out = run(self.exec(ns, "cat").arg(&path))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .map_err(|_| format!("{path} in {ns} holds {text:?}, not a number"))
    }

    fn add_namespace(&mut self, ns: &str) -> Result<(), String> {
        let mut live = lock_live();
        run(Command::new("ip").args(["netns", "add", ns]))
            .map_err(|e| format!("network namespaces unavailable: {e}"))?;
        live.push(ns.to_string());
        drop(live);
        self.created.push(ns.to_string());
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        Ok(())
    }

    /// Creates load host `host`'s veth pair with one end in each namespace,
    /// addresses and raises both ends, and writes (and reads back) RPS.
    fn join(
        &self,
        host: usize,
        server_mask: Option<&str>,
        client_mask: Option<&str>,
    ) -> Result<(), String> {
        let (srv, cli) = (&self.server_ns, &self.client_ns[host]);
        let (sdev, cdev) = (self.server_dev(host), self.client_dev(host));
        run(Command::new("ip").args([
            "link", "add", &sdev, "netns", srv, "type", "veth", "peer", "name", &cdev, "netns", cli,
        ]))
        .map_err(|e| format!("cannot create a veth pair between namespaces: {e}"))?;
        for (ns, dev, addr, mask) in [
            (srv, &sdev, self.server_addr(host), server_mask),
            (cli, &cdev, self.client_addr(host), client_mask),
        ] {
            run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
            if let Some(mask) = mask {
                self.set_rps(ns, dev, mask)?;
            }
        }
        Ok(())
    }

    /// Writes `mask` to `dev`'s rps_cpus inside `ns` and checks the kernel
    /// kept it (it refuses CPUs that do not exist with an error, but a
    /// kernel without RPS has no such file at all).
    fn set_rps(&self, ns: &str, dev: &str, mask: &str) -> Result<(), String> {
        let script = format!("echo {mask} > {}", rps_path(dev));
        run(self.exec(ns, "sh").args(["-c", &script]))
            .map_err(|e| format!("cannot steer {dev}'s receive processing with RPS: {e}"))?;
        let held = self.rps_cpus(ns, dev)?;
        if !same_mask(&held, mask) {
            return Err(format!(
                "RPS of {dev} in {ns} reads {held} after writing {mask}"
            ));
        }
        Ok(())
    }

    /// Waits (bounded) until both ends of `host`'s pair report carrier, so
    /// the first connect does not race the link coming up.
    fn wait_link_up(&self, host: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        for (ns, dev) in [
            (self.server_ns.clone(), self.server_dev(host)),
            (self.client_ns[host].clone(), self.client_dev(host)),
        ] {
            loop {
                let out =
                    run(Command::new("ip").args(["-n", &ns, "-o", "link", "show", "dev", &dev]))?;
                if String::from_utf8_lossy(&out.stdout).contains("LOWER_UP") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{dev} in {ns} has no carrier after 5 s"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it, and with one
        // end gone its peer goes too. A process still running inside keeps
        // the namespace itself alive until it exits, but the name is gone.
        for ns in self.created.drain(..).rev() {
            let mut live = lock_live();
            if let Err(e) = run(Command::new("ip").args(["netns", "delete", &ns])) {
                eprintln!("netns: could not delete {ns}: {e}");
            }
            live.retain(|n| *n != ns);
        }
    }
}

/// Address `last` of load host `host`'s /24, inside 198.18.0.0/15.
fn host_subnet(host: usize, last: u8) -> Ipv4Addr {
    assert!(host < MAX_LOAD_HOSTS, "load host {host} out of range");
    let (second, third) = if host < 256 {
        (18, host)
    } else {
        (19, host - 256)
    };
    Ipv4Addr::new(198, second, third as u8, last)
}

/// Runs `cmd` to completion; `Err` carries the command and its stderr.
fn run(cmd: &mut Command) -> Result<Output, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
