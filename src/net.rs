//! Socket setup, in one place: the SO_REUSEPORT listeners every worker owns.
//! Accepted sockets are created by the backends (io_uring accepts straight into
//! its descriptor table); this module never touches connection I/O.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

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

/// Binds one listener per worker on the same address. With port 0 the first
/// bind picks the port and the others join it.
pub fn bind_listeners(addr: SocketAddr, backlog: u32, workers: usize) -> io::Result<Vec<Socket>> {
    let first = bind_listener(addr, backlog)?;
    let bound = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has a non-IP local address"))?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(bind_listener(bound, backlog)?);
    }
    Ok(listeners)
}

/// Explains a bind error in one line a user can act on.
pub fn describe_bind_error(addr: SocketAddr, err: &io::Error) -> String {
    let hint = match err.raw_os_error() {
        Some(libc::EADDRINUSE) => {
            " (another process listens there without SO_REUSEPORT, or as another user: pick another --port)"
        }
        Some(libc::EACCES) => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        Some(libc::EADDRNOTAVAIL) => " (no interface has this --addr)",
        Some(libc::EAFNOSUPPORT) => " (this address family is disabled on the host)",
        _ => "",
    };
    format!("bind {addr}: {err}{hint}")
}

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
