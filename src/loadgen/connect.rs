//! Opening connections: resolving the target, choosing source addresses so one
//! address's ephemeral ports are not the limit, creating and binding each
//! socket (it is then installed in a ring's direct-descriptor table and its
//! normal fd closed, by the engine), how many threads the open-files limit
//! forces, and what to tell the user when a limit stops the ramp.
//! This module submits nothing to a ring.
#![forbid(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use super::diagnosis::hint_for;
use super::error::Error;

/// Connections per loopback source address when spreading automatically. One
/// address has ~28,000 ephemeral ports per destination (32768-60999); staying
/// well under leaves room for TIME_WAIT sockets of earlier runs.
pub const CONNS_PER_SOURCE: u32 = 10_000;
/// Loopback source addresses a churn run (`--messages-per-conn`) spreads over
/// at least. Each closed connection holds its port in TIME_WAIT for 60 s on
/// the client (which closes first); the kernel hands such a port to a new
/// connect only after a second (`tcp_tw_reuse`, on for loopback by default),
/// so a run of 100,000 connections a second needs several addresses' ports.
pub const CHURN_SOURCES: u32 = 16;

/// Resolves `HOST:PORT` (once, at start) to every address it names, in the
/// resolver's order; the error is one line naming the flag.
pub fn resolve_target(target: &str) -> Result<Vec<SocketAddr>, Error> {
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| Error::Target(format!("--target {target}: cannot resolve: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Target(format!(
            "--target {target}: resolves to no address"
        )));
    }
    Ok(addrs)
}

/// The first of `candidates` where a server answers the probe (TCP connect,
/// or with `udp` an echoed datagram); the error is the first candidate's.
/// A name like `localhost` may resolve to `::1` first while the server
/// listens on 0.0.0.0 only.
pub fn pick_target(
    candidates: &[SocketAddr],
    udp: bool,
    timeout: Duration,
) -> Result<SocketAddr, Error> {
    let mut first_error = None;
    for &addr in candidates {
        let answered = if udp {
            probe_udp(addr, timeout)
        } else {
            probe(addr, timeout)
        };
        match answered {
            Ok(()) => return Ok(addr),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| Error::Target("--target resolves to no address".into())))
}

/// Source addresses to spread connections over: the given ones, or for an IPv4
/// loopback target 127.0.0.1, 127.0.0.2, ... (all of 127/8 is local on Linux),
/// one per [`CONNS_PER_SOURCE`] connections; otherwise none (the kernel picks).
/// IPv6 has no such range: ::1 is the only loopback address, so an IPv6 target
/// is not spread automatically (`--source-addrs` may list addresses of this host).
pub fn source_plan(
    target: SocketAddr,
    conns: u32,
    churn: bool,
    given: &[IpAddr],
) -> Result<Vec<IpAddr>, Error> {
    if let Some(bad) = given.iter().find(|a| a.is_ipv4() != target.is_ipv4()) {
        return Err(Error::Target(format!(
            "--source-addrs {bad} is not of the same family as --target {target}"
        )));
    }
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return Ok(Vec::new());
    }
    let mut n = conns.div_ceil(CONNS_PER_SOURCE).clamp(1, 250);
    if churn {
        n = n.max(CHURN_SOURCES);
    }
    Ok((1..=n)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect())
}

/// Threads needed so that no ring holds more connections than its
/// direct-descriptor table may have slots (the open-files limit, per ring).
pub fn threads_needed(conns: u32, per_ring: u64) -> usize {
    (u64::from(conns).div_ceil(per_ring.max(1))) as usize
}

/// How a socket is opened: TCP or UDP, and how a TCP close ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketKind {
    pub udp: bool,
    /// `--linger0`: SO_LINGER with a zero timeout, so closing sends a reset
    /// and leaves no TIME_WAIT behind (on either side).
    pub linger0: bool,
}

/// A TCP socket (or with `udp` a UDP one) with its options set and bound to
/// `source` (port chosen at connect), ready to be installed in a ring and
/// connected there. A connected UDP socket sends to the target with plain
/// sends and receives only what comes from it.
pub fn open_socket(
    target: SocketAddr,
    source: Option<IpAddr>,
    kind: SocketKind,
) -> io::Result<Socket> {
    let udp = kind.udp;
    let socket = if udp {
        Socket::new(
            Domain::for_address(target),
            Type::DGRAM,
            Some(Protocol::UDP),
        )?
    } else {
        Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?
    };
    if !udp {
        // Small messages answered at once: Nagle would hold the second of two
        // pipelined messages back until the first is acknowledged.
        socket.set_tcp_nodelay(true)?;
        if kind.linger0 {
            socket.set_linger(Some(Duration::ZERO))?;
        }
    }
    if let Some(ip) = source {
        // A UDP bind takes its port at once; the option only defers TCP's.
        if ip.is_ipv4() && !udp {
            crate::sys::set_bind_address_no_port(socket.as_raw_fd())?;
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    Ok(socket)
}

/// A quick blocking connect before the threads start, so that a target with
/// nothing listening is one clear line at once rather than a ramp of failures.
pub fn probe(target: SocketAddr, timeout: Duration) -> Result<(), Error> {
    match TcpStream::connect_timeout(&target, timeout) {
        Ok(_) => Ok(()),
        Err(e) => {
            let kind = e.raw_os_error().map_or("connect_timeout", errno_kind);
            Err(Error::Target(format!(
                "cannot connect to --target {target}: {e} ({})",
                hint_for(kind)
            )))
        }
    }
}

/// The UDP counterpart of [`probe`]: one datagram (shorter than any `--udp`
/// header, so it cannot be mistaken for load) must come back within `timeout`,
/// tried three times in case one is dropped.
pub fn probe_udp(target: SocketAddr, timeout: Duration) -> Result<(), Error> {
    let fail = |e: io::Error| {
        let why = match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => {
                "nothing listens on UDP at --target: is the server started with --udp?"
            }
            Some(libc::EAGAIN) => {
                "no echo came back: is the server started with --udp, and is UDP let through?"
            }
            _ => "see the error",
        };
        Error::Target(format!("no UDP echo from --target {target}: {e} ({why})"))
    };
    let local: SocketAddr = if target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).map_err(fail)?;
    socket.connect(target).map_err(fail)?;
    socket
        .set_read_timeout(Some((timeout / 3).max(Duration::from_millis(1))))
        .map_err(fail)?;
    let mut buf = [0u8; 64];
    let mut last = io::Error::from_raw_os_error(libc::EAGAIN);
    for _ in 0..3 {
        socket.send(b"loadgen probe").map_err(fail)?;
        match socket.recv(&mut buf) {
            Ok(_) => return Ok(()),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                last = io::Error::from_raw_os_error(libc::EAGAIN);
            }
            Err(e) => return Err(fail(e)),
        }
    }
    Err(fail(last))
}

/// The name the report counts an errno under.
pub fn errno_kind(errno: i32) -> &'static str {
    match errno {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EPIPE => "EPIPE",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EMFILE => "EMFILE",
        libc::ENFILE => "ENFILE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOMEM => "ENOMEM",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        _ => "other_errno",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        "127.0.0.1:9999".parse().unwrap()
    }

    #[test]
    fn a_loopback_target_spreads_over_enough_source_addresses() {
        let plan = source_plan(loopback(), 50_000, false, &[]).unwrap();
        assert_eq!(plan.len(), 5);
        assert_eq!(plan[0], "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(plan[4], "127.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(source_plan(loopback(), 1, false, &[]).unwrap().len(), 1);
    }

    #[test]
    fn a_churn_run_spreads_its_time_wait_ports_over_more_addresses() {
        let plan = source_plan(loopback(), 200, true, &[]).unwrap();
        assert_eq!(plan.len(), CHURN_SOURCES as usize);
        assert_eq!(
            source_plan(loopback(), 500_000, true, &[]).unwrap().len(),
            50
        );
    }

    #[test]
    fn given_source_addresses_win_and_must_match_the_family() {
        let given: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        assert_eq!(
            source_plan(loopback(), 50_000, false, &given).unwrap(),
            given
        );
        let v6: Vec<IpAddr> = vec!["::1".parse().unwrap()];
        assert!(
            source_plan(loopback(), 1, false, &v6)
                .unwrap_err()
                .to_string()
                .contains("--source-addrs")
        );
    }

    #[test]
    fn an_ipv6_loopback_target_is_not_spread_but_given_ipv6_sources_are_used() {
        let v6: SocketAddr = "[::1]:9999".parse().unwrap();
        assert!(source_plan(v6, 50_000, true, &[]).unwrap().is_empty());
        let given: Vec<IpAddr> = vec!["::1".parse().unwrap()];
        assert_eq!(source_plan(v6, 10, false, &given).unwrap(), given);
        assert!(hint_for("EADDRNOTAVAIL").contains("::1"));
    }

    #[test]
    fn a_remote_target_lets_the_kernel_pick_the_source() {
        let remote: SocketAddr = "10.1.2.3:9999".parse().unwrap();
        assert!(source_plan(remote, 50_000, true, &[]).unwrap().is_empty());
    }

    #[test]
    fn the_open_files_limit_sets_the_thread_floor() {
        assert_eq!(threads_needed(50_000, 20_000), 3);
        assert_eq!(threads_needed(40_000, 20_000), 2);
        assert_eq!(threads_needed(1, 20_000), 1);
    }

    #[test]
    fn a_host_name_resolves_to_its_addresses() {
        let addrs = resolve_target("localhost:9999").unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 9999),
            "{addrs:?}"
        );
    }

    #[test]
    fn an_unresolvable_target_names_the_flag() {
        let e = resolve_target("no-such-host.invalid:9999").unwrap_err();
        assert!(e.to_string().starts_with("--target"), "{e}");
    }
}
