//! Where the echo benches run: across two network namespaces joined by a veth
//! pair (the server in one, the client's sockets in the other, RPS steering
//! each side's receive processing to its own CPU), which is the closer to two
//! hosts; or on loopback, where a send runs the peer's receive path in the
//! sender's own context, so every server looks alike.
//!
//! `URING_ECHO_BENCH_TOPOLOGY` picks: `auto` (the default: netns where it
//! can be made, else loopback with the reason printed), `netns` (an error
//! where it cannot be made), `loopback`, or a comma-separated list such as
//! `netns,loopback` to run both in one invocation (ratios measured side by
//! side). The namespaces themselves are `tests/common/netns.rs`'s.

#[path = "../../tests/common/netns.rs"]
pub mod netns;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

/// The variable that picks the topologies.
pub const ENV: &str = "URING_ECHO_BENCH_TOPOLOGY";

/// The CPUs the server and the client are pinned to (when there are two).
pub const SERVER_CPU: usize = 0;
pub const CLIENT_CPU: usize = 1;

/// One place to run the benches.
pub enum BenchTopology {
    Loopback,
    Netns(netns::Topology),
}

impl BenchTopology {
    /// The topologies `URING_ECHO_BENCH_TOPOLOGY` asks for, each announced
    /// with what it is (or why netns fell back to loopback) on stdout.
    /// Panics on a value it does not know, or on `netns` that cannot be made.
    pub fn chosen() -> Vec<BenchTopology> {
        let asked = std::env::var(ENV).unwrap_or_default();
        let asked = if asked.trim().is_empty() {
            "auto"
        } else {
            asked.trim()
        };
        let mut out = Vec::new();
        for name in asked.split(',').map(str::trim) {
            let topology = match name {
                "loopback" => BenchTopology::Loopback,
                "netns" => BenchTopology::netns()
                    .unwrap_or_else(|e| panic!("{ENV}=netns: cannot make the topology: {e}")),
                "auto" => BenchTopology::netns().unwrap_or_else(|e| {
                    println!(
                        "echo benches: topology loopback, because network namespaces cannot be \
                         made here: {e} (loopback hides the receive-path cost each host pays; \
                         run as root for netns)"
                    );
                    BenchTopology::Loopback
                }),
                other => panic!(
                    "{ENV}={other}: expected auto, netns, loopback, or a comma-separated list of them"
                ),
            };
            println!("echo benches: {}", topology.describe());
            out.push(topology);
        }
        out
    }

    fn netns() -> Result<BenchTopology, String> {
        let spec = if two_cpus() {
            netns::TopologySpec::pair(&SERVER_CPU.to_string(), &CLIENT_CPU.to_string())
        } else {
            netns::TopologySpec::pair("", "")
        };
        netns::Topology::create(&spec).map(BenchTopology::Netns)
    }

    /// The first part of every benchmark id.
    pub fn name(&self) -> &'static str {
        match self {
            BenchTopology::Loopback => "loopback",
            BenchTopology::Netns(_) => "netns",
        }
    }

    fn describe(&self) -> String {
        let pinning = if two_cpus() {
            format!("server pinned to CPU {SERVER_CPU}, client to CPU {CLIENT_CPU}")
        } else {
            "one CPU: nothing pinned".to_string()
        };
        match self {
            BenchTopology::Loopback => {
                format!("topology loopback (127.0.0.1), {pinning}")
            }
            BenchTopology::Netns(t) => {
                let rps = if two_cpus() {
                    format!(
                        "RPS steers the server's receive processing to CPU {SERVER_CPU} and the \
                         client's to CPU {CLIENT_CPU}"
                    )
                } else {
                    "no RPS steering (one CPU)".to_string()
                };
                format!(
                    "topology netns: server in {} at {}, client in {} at {}, joined by a veth \
                     pair; {rps}; {pinning}",
                    t.server_ns(),
                    t.server_addr(0),
                    t.client_ns(0),
                    t.client_addr(0),
                )
            }
        }
    }

    /// The address a server listens on in this topology.
    pub fn listen_ip(&self) -> IpAddr {
        match self {
            BenchTopology::Loopback => Ipv4Addr::LOCALHOST.into(),
            BenchTopology::Netns(_) => Ipv4Addr::UNSPECIFIED.into(),
        }
    }

    /// The address the client reaches a server listening on `port` at.
    pub fn server_addr(&self, port: u16) -> SocketAddr {
        match self {
            BenchTopology::Loopback => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            BenchTopology::Netns(t) => SocketAddr::new(t.server_addr(0), port),
        }
    }

    /// `program args` as run here: inside the server namespace, pinned to
    /// the server's CPU where there is another for the client.
    pub fn server_command(&self, program: &Path, args: &[String]) -> Command {
        let mut argv: Vec<OsString> = Vec::new();
        if two_cpus() && which("taskset") {
            argv.extend(["taskset".into(), "-c".into(), SERVER_CPU.to_string().into()]);
        }
        argv.push(program.into());
        argv.extend(args.iter().map(OsString::from));
        let mut cmd = match self {
            BenchTopology::Loopback => Command::new(&argv[0]),
            BenchTopology::Netns(t) => t.exec(t.server_ns(), &argv[0]),
        };
        cmd.args(&argv[1..]);
        cmd
    }

    /// Runs `connect` on the calling thread moved into the client's
    /// namespace (setns), so the sockets it opens are the client host's;
    /// on loopback, where it is.
    pub fn as_client<T>(&self, connect: impl FnOnce() -> T) -> T {
        match self {
            BenchTopology::Loopback => connect(),
            BenchTopology::Netns(t) => {
                let _inside = t
                    .enter(t.client_ns(0))
                    .unwrap_or_else(|e| panic!("entering the client namespace: {e}"));
                connect()
            }
        }
    }
}

fn two_cpus() -> bool {
    super::cpus() >= 2
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
