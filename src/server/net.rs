//! Socket setup, in one place: the SO_REUSEPORT listeners every worker owns.
//! Accepted sockets are created by the backends (io_uring accepts straight into
//! its descriptor table); this module never touches connection I/O.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::port_holders::PortHolders;

/// A listening TCP socket for one worker. Every worker binds its own on the same
/// address with SO_REUSEPORT, and the kernel spreads incoming connections across
/// them by a hash of the 4-tuple, so no listener is shared between threads.
///
/// Options set here are inherited by accepted sockets on Linux (TCP_NODELAY
/// among them), which matters for io_uring's direct descriptors: they have no
/// file descriptor a `setsockopt` could be called on.
pub fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // `::` serves IPv4 too (dual stack) whatever net.ipv6.bindv6only says.
        socket.set_only_v6(false)?;
    }
    // Echo traffic is small writes answered at once: Nagle would hold them back
    // waiting for an ACK that the peer's delayed-ACK timer holds back in turn.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}

/// Binds one listener per worker on the same address, after making sure no
/// other process holds the port (see [`claim_port`]). With port 0 the probe
/// picks the port and the workers join it. With `udp`, the UDP port must be
/// free too (the caller binds the UDP sockets on the returned listeners' port).
pub fn bind_listeners(
    addr: SocketAddr,
    backlog: u32,
    workers: usize,
    udp: bool,
) -> Result<Vec<Socket>, BindError> {
    let port = claim_port(addr, udp)?;
    let bound = SocketAddr::new(addr.ip(), port);
    (0..workers)
        .map(|_| bind_listener(bound, backlog).map_err(|e| BindError::new(bound, "TCP", e)))
        .collect()
}

/// Attempts at finding a port 0 that is free for TCP and UDP at once.
const PORT_ZERO_ATTEMPTS: usize = 16;

/// Checks that no other socket holds `addr`'s port (TCP, and UDP with `udp`)
/// and returns the port (the kernel's pick when it is 0).
///
/// Why a probe: SO_REUSEPORT lets every socket of the same user with that
/// option join a port, so a second uring-echo (or any such server) would bind
/// next to the first without an error, and the kernel would split new
/// connections between the two processes. A socket bound *without*
/// SO_REUSEPORT conflicts with any socket already there (ours included), so
/// EADDRINUSE on the probe means another process holds the port. SO_REUSEADDR
/// is kept so that connections of an earlier run in TIME_WAIT do not count.
/// The probe is closed before the workers bind, since it would keep them out.
///
/// The race that remains: two servers that probe within the same few
/// microseconds, between one's probe closing and its first listener binding,
/// both find the port free. Once a worker's listener is bound, any later
/// server's probe fails. The kernel offers no way to close that window short
/// of a per-process reuseport group, which SO_REUSEPORT does not have.
pub fn claim_port(addr: SocketAddr, udp: bool) -> Result<u16, BindError> {
    let attempts = if addr.port() == 0 {
        PORT_ZERO_ATTEMPTS
    } else {
        1
    };
    let mut last = None;
    for _ in 0..attempts {
        let tcp = probe(addr, Type::STREAM).map_err(|e| BindError::new(addr, "TCP", e))?;
        let port = local_port(&tcp).map_err(|e| BindError::new(addr, "TCP", e))?;
        if !udp {
            return Ok(port);
        }
        let at = SocketAddr::new(addr.ip(), port);
        match probe(at, Type::DGRAM) {
            Ok(_) => return Ok(port),
            // A port the kernel picked for TCP may be taken for UDP: pick again.
            Err(e) if addr.port() == 0 && e.raw_os_error() == Some(libc::EADDRINUSE) => {
                last = Some(BindError::new(at, "UDP", e));
            }
            Err(e) => return Err(BindError::new(at, "UDP", e)),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// A socket bound to `addr` without SO_REUSEPORT, closed when dropped.
fn probe(addr: SocketAddr, kind: Type) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, None)?;
    // TCP: connections of an earlier run in TIME_WAIT must not count as a
    // holder. Never for UDP, where SO_REUSEADDR lets sockets share a port
    // outright (the workers' UDP sockets have it), so the probe would find
    // another server's port free.
    if kind == Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    if addr.is_ipv6() {
        // Conflicts are those the workers' dual-stack sockets would have.
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn local_port(socket: &Socket) -> io::Result<u16> {
    socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("socket has a non-IP local address"))
}

/// A bind that failed: which address, which protocol, and why.
#[derive(Debug)]
pub struct BindError {
    pub addr: SocketAddr,
    pub protocol: &'static str,
    pub source: io::Error,
    /// For a TCP port in use: who holds it, read when the bind failed.
    pub holders: Option<PortHolders>,
}

impl BindError {
    pub fn new(addr: SocketAddr, protocol: &'static str, source: io::Error) -> BindError {
        let in_use = source.raw_os_error() == Some(libc::EADDRINUSE);
        let holders = (in_use && protocol == "TCP")
            .then(|| PortHolders::of_port(addr.port()))
            .flatten();
        BindError {
            addr,
            protocol,
            source,
            holders,
        }
    }
}

/// One line a user can act on, e.g. `bind 0.0.0.0:9999 (TCP): Address in use
/// (os error 98): another process already listens on TCP port 9999 ...`.
impl std::fmt::Display for BindError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (addr, port, proto) = (self.addr, self.addr.port(), self.protocol);
        let hint = match self.source.raw_os_error() {
            Some(libc::EADDRINUSE) => match &self.holders {
                Some(holders) => holders.hint(port),
                None => format!(
                    ": another process already listens on {proto} port {port} at this address; stop it or pick another --port"
                ),
            },
            Some(libc::EACCES) => ": ports below 1024 need root or CAP_NET_BIND_SERVICE".into(),
            Some(libc::EADDRNOTAVAIL) => ": no interface has this --addr".into(),
            Some(libc::EAFNOSUPPORT) => ": this address family is disabled on the host".into(),
            _ => String::new(),
        };
        write!(f, "bind {addr} ({proto}): {}{hint}", self.source)
    }
}

impl std::error::Error for BindError {}

/// A UDP socket for one worker, on the TCP listeners' address and port, with
/// SO_REUSEPORT so every worker has its own and the kernel spreads datagrams
/// across them by source.
pub fn bind_udp(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Datagrams that arrive while the worker is busy wait here; the default
    // (about 200 KiB) overflows in milliseconds at high rates, and UDP drops
    // what does not fit. The kernel caps the request at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(UDP_RECV_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Receive buffer asked for each worker's UDP socket.
const UDP_RECV_BUFFER_BYTES: usize = 4 << 20;
