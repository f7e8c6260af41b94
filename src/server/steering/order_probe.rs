//! Checks that a reuseport group's indexes are the workers' order before the
//! CPU program relies on it. The order holds by construction (each socket
//! joins in worker order and none leaves early), but a socket of another
//! process on the same port (same user, SO_REUSEPORT) would sit at an index
//! of its own and shift the mapping. `net::claim_port` refuses a port held
//! at start; one that joins in the window after that check is caught here,
//! since the group is asked directly: for each
//! index *i*, a program that always returns *i* is attached and one probe
//! (a loopback connection, or a datagram) is sent; it must reach worker *i*'s
//! socket. Probes are accepted (or read) and dropped here, before any worker
//! runs, so no counter sees them. It attaches only these probe programs;
//! the real one is the caller's.
#![forbid(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use socket2::Socket;

/// How long one probe may take to arrive; loopback delivers in microseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The group's sockets are TCP listeners or UDP sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Udp,
}

/// What the probes found.
#[derive(Debug, PartialEq, Eq)]
pub enum Order {
    /// Every index reached the worker of the same number.
    Workers,
    /// An index reached another worker's socket, or none of ours (another
    /// process's socket in the group): the reason, for the start line.
    Differs(String),
    /// No probe could be sent (the address is unreachable from here, e.g. a
    /// namespace whose loopback is down): the reason.
    Unverified(String),
}

/// Probes every index of `group` (sockets in worker order). Leaves the last
/// probe program attached: the caller attaches the real one next.
pub fn check(group: &[Socket], kind: Kind) -> Order {
    let fds: Vec<RawFd> = group.iter().map(AsRawFd::as_raw_fd).collect();
    let target = match group.first().map(probe_target) {
        Some(Ok(target)) => target,
        Some(Err(e)) => return Order::Unverified(format!("reading the socket's address: {e}")),
        None => return Order::Workers,
    };
    for index in 0..group.len() {
        let program = [super::stmt(libc::BPF_RET | libc::BPF_K, index as u32)];
        if let Err(e) = crate::sys::attach_reuseport_cbpf(fds[0], &program) {
            return Order::Unverified(format!("SO_ATTACH_REUSEPORT_CBPF: {e}"));
        }
        // Kept open until the arrival is seen, so a TCP probe stays queued.
        let _probe = match send_probe(target, kind) {
            Ok(probe) => probe,
            Err(e) => return Order::Unverified(format!("probe to {target}: {e}")),
        };
        match arrival(group, &fds, kind) {
            Ok(Some(worker)) if worker == index => {}
            Ok(Some(worker)) => {
                return Order::Differs(format!(
                    "index {index} of the reuseport group is worker {worker}'s socket"
                ));
            }
            Ok(None) => {
                return Order::Differs(format!(
                    "index {index} of the reuseport group on {target} is not this process's: \
                     another process listens there"
                ));
            }
            Err(e) => return Order::Unverified(format!("waiting for the probe: {e}")),
        }
    }
    Order::Workers
}

/// Where a probe reaches the group: its own address, or loopback for a
/// wildcard one.
fn probe_target(socket: &Socket) -> io::Result<SocketAddr> {
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))?;
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, local.port()))
}

/// A probe in flight: held until its arrival has been seen.
enum Probe {
    Tcp(#[allow(dead_code)] TcpStream),
    Udp(#[allow(dead_code)] UdpSocket),
}

fn send_probe(target: SocketAddr, kind: Kind) -> io::Result<Probe> {
    match kind {
        Kind::Tcp => TcpStream::connect_timeout(&target, PROBE_TIMEOUT).map(Probe::Tcp),
        Kind::Udp => {
            let from: SocketAddr = match target {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(from)?;
            socket.send_to(b"uring-echo reuseport order probe", target)?;
            Ok(Probe::Udp(socket))
        }
    }
}

/// Which of the group's sockets the probe reached (`None`: none within
/// [`PROBE_TIMEOUT`]), after taking it off that socket.
fn arrival(group: &[Socket], fds: &[RawFd], kind: Kind) -> io::Result<Option<usize>> {
    let ready = crate::sys::poll_readable(fds, PROBE_TIMEOUT)?;
    let Some(worker) = ready.iter().position(|&r| r) else {
        return Ok(None);
    };
    match kind {
        Kind::Tcp => drop(group[worker].accept()?),
        Kind::Udp => {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
            group[worker].recv(&mut buf)?;
        }
    }
    Ok(Some(worker))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(port: u16) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, port).into()
    }

    /// Listeners joined in order on one port (port 0: a fresh one), after
    /// `before` other sockets of the group.
    fn group(before: &[Socket], n: usize) -> Vec<Socket> {
        let port = before
            .first()
            .map_or(0, |s| s.local_addr().unwrap().as_socket().unwrap().port());
        let first = crate::server::net::bind_listener(loopback(port), 16).unwrap();
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        let mut all = vec![first];
        all.extend((1..n).map(|_| crate::server::net::bind_listener(loopback(port), 16).unwrap()));
        all
    }

    #[test]
    fn a_group_joined_in_worker_order_is_found_in_that_order() {
        assert_eq!(check(&group(&[], 3), Kind::Tcp), Order::Workers);
        let port = {
            let probe = crate::server::net::bind_udp(loopback(0)).unwrap();
            probe.local_addr().unwrap().as_socket().unwrap().port()
        };
        let udp: Vec<Socket> = (0..3)
            .map(|_| crate::server::net::bind_udp(loopback(port)).unwrap())
            .collect();
        assert_eq!(check(&udp, Kind::Udp), Order::Workers);
    }

    #[test]
    fn sockets_listed_out_of_join_order_are_caught() {
        let mut listeners = group(&[], 2);
        listeners.reverse();
        let found = check(&listeners, Kind::Tcp);
        assert_eq!(
            found,
            Order::Differs("index 0 of the reuseport group is worker 1's socket".into())
        );
    }

    #[test]
    fn a_socket_of_someone_else_in_the_group_is_caught() {
        let foreign = group(&[], 1);
        let ours = group(&foreign, 2);
        match check(&ours, Kind::Tcp) {
            Order::Differs(why) => assert!(
                why.contains("index 0") && why.contains("another process"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
