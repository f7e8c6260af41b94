//! UDP echo for the epoll backend: on readiness, receive datagrams one by one
//! and send each straight back to its source, up to a batch per wakeup so the
//! TCP connections get their turn. Same truncation rule as io_uring: a datagram
//! larger than `--udp-max-datagram` is counted and dropped, never echoed cut short.
#![forbid(unsafe_code)]

use std::io;
use std::net::UdpSocket;

use crate::server::stats::WorkerStats;

/// Datagrams handled per wakeup; the socket is level-triggered, so the rest
/// are reported again by the next wait.
const DATAGRAMS_PER_TURN: usize = 64;

pub struct UdpEcho {
    socket: UdpSocket,
    /// One datagram at a time: the largest allowed plus one byte, so that a
    /// datagram cut to fit (recv returns the buffer's size) is told apart from
    /// one that fits exactly.
    scratch: Vec<u8>,
    max_datagram: usize,
}

impl UdpEcho {
    pub fn new(socket: socket2::Socket, max_datagram: u32) -> UdpEcho {
        UdpEcho {
            socket: socket.into(),
            scratch: vec![0; max_datagram as usize + 1],
            max_datagram: max_datagram as usize,
        }
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Echoes what is waiting, up to a turn's worth.
    pub fn on_readable(&mut self, stats: &WorkerStats) {
        for _ in 0..DATAGRAMS_PER_TURN {
            let (len, source) = match self.socket.recv_from(&mut self.scratch) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    WorkerStats::add(&stats.udp_dropped, 1);
                    continue;
                }
            };
            if len > self.max_datagram {
                WorkerStats::add(&stats.udp_truncated, 1);
                continue;
            }
            WorkerStats::add(&stats.udp_in, 1);
            WorkerStats::add(&stats.bytes_in, len as u64);
            match self.socket.send_to(&self.scratch[..len], source) {
                Ok(n) => {
                    WorkerStats::add(&stats.udp_out, 1);
                    WorkerStats::add(&stats.bytes_out, n as u64);
                }
                // A full socket buffer drops the reply, as the network would.
                Err(_) => WorkerStats::add(&stats.udp_dropped, 1),
            }
        }
    }
}
