//! A minimal io_uring TCP echo server, to read before the real one
//! (`src/server/uring/worker/`). It covers the core of it on the same ring layer
//! (`uring_echo::uring::ring`, whose module doc states the one safety
//! contract): multishot accept, multishot receive from a provided-buffer ring,
//! send, and recycling the buffer. No `unsafe` here: the layer owns every
//! byte the kernel points into.
//!
//! Sockets are accepted straight into the ring's table of direct descriptors,
//! as in the real worker: no file descriptor in the process, closed by the ring.
//!
//! What the real worker adds: back-pressure (a budget of
//! buffers per connection), gathering several buffers into one `sendmsg`,
//! ENOBUFS handled by re-arming oldest first, graceful drain, UDP, statistics.
//!
//! # The buffer lifecycle
//! ```text
//!  in the ring ──kernel picks it──▶ named by a receive completion (F_BUFFER)
//!       ▲                                   │
//!  publish (once per batch)                 ▼
//!       │                           queued on its connection
//!  recycle ◀──the send covering its last byte completes── sent (one send in
//!                                           flight per socket; a short send
//!                                           resumes at its offset)
//! ```
//! A buffer goes back to the ring only when the send that read its last byte
//! has completed: until then the kernel may still be reading it.
//!
//! Usage: `cargo run --release --example minimal_echo -- [PORT]` (default
//! 9999; 0 picks a free port), then e.g. `loadgen --port PORT`.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::AsRawFd;

use uring_echo::echo_queue::{BufId, Unsent};
use uring_echo::ring::setup::{SERVER_OPS, build_ring, check_features};
use uring_echo::ring::user_data::{KindCode, UserData};
use uring_echo::ring::{BufGroup, Completion, RecvLimits, Ring, SendMode, Sock};

const BUF_COUNT: u32 = 1024;
const BUF_BYTES: u32 = 4096;
/// Connections open at once at most (slots in the direct-descriptor table).
const MAX_CONNS: u32 = 1024;

/// What an operation was: the kind byte of its `user_data`; the key is the
/// connection's slot in the direct-descriptor table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Cancel = 5,
}

impl KindCode for Op {
    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Op> {
        [Op::Accept, Op::Recv, Op::Send, Op::Close, Op::Cancel]
            .into_iter()
            .find(|op| *op as u8 == code)
    }
}

/// One connection: received bytes waiting to be echoed, as (buffer, length);
/// `sent` bytes of the front one are already sent.
#[derive(Default)]
struct Conn {
    queue: VecDeque<(BufId, u32)>,
    sent: u32,
    sending: bool,
    receiving: bool,
    peer_closed: bool,
    /// The receive ended with ENOBUFS: re-armed once buffers come back.
    starved: bool,
    /// A cancel of the receive was submitted (after a failed send).
    cancelling: bool,
    closing: bool,
}

struct Server {
    ring: Ring,
    bufs: BufGroup,
    listener: TcpListener,
    /// Keyed by direct-descriptor slot.
    conns: HashMap<u32, Conn>,
    /// Connections whose receive ran out of buffers, to re-arm after a publish.
    starved: Vec<u32>,
    /// Connections closed so far; `serve` returns after `max_closed` of them.
    closed: usize,
}

impl Server {
    fn new(listener: TcpListener) -> io::Result<Server> {
        let (ring, _flags) = build_ring(256, 4096).map_err(io::Error::other)?;
        check_features(&ring, &SERVER_OPS, false).map_err(io::Error::other)?;
        ring.submitter().register_files_sparse(MAX_CONNS)?;
        let mut ring = Ring::new(ring);
        let bufs = ring.register_buffers(0, BUF_COUNT, BUF_BYTES)?;
        Ok(Server {
            ring,
            bufs,
            listener,
            conns: HashMap::new(),
            starved: Vec::new(),
            closed: 0,
        })
    }

    /// Submit and wait → handle each completion → publish recycled buffers,
    /// until `max_closed` connections have come and gone (forever with `None`).
    fn serve(&mut self, max_closed: Option<usize>) -> io::Result<()> {
        self.arm_accept();
        let mut completions = Vec::new();
        while max_closed.is_none_or(|max| self.closed < max) {
            self.ring.submit_and_wait(1, None)?;
            self.ring.completions(&mut completions);
            for c in &completions {
                self.handle(c);
            }
            // One release store for the whole batch of recycled buffers.
            self.ring.buffers_mut(self.bufs).publish();
            for slot in std::mem::take(&mut self.starved) {
                if let Some(conn) = self.conns.get_mut(&slot) {
                    conn.starved = false;
                    self.advance(slot);
                }
            }
        }
        // Whatever is still in flight is cancelled and reaped before the
        // buffers it points into are freed (also done by `Ring`'s Drop).
        self.ring.teardown();
        Ok(())
    }

    fn arm_accept(&mut self) {
        let fd = self.listener.as_raw_fd();
        self.ring
            .accept_multi(fd, true, UserData::new(Op::Accept, 0, 0));
    }

    fn arm_recv(&mut self, slot: u32) {
        let ud = UserData::new(Op::Recv, slot, 0);
        let limits = RecvLimits::default();
        self.ring
            .recv_multi(Sock::Fixed(slot), self.bufs, limits, ud);
        self.conn(slot).receiving = true;
    }

    fn conn(&mut self, slot: u32) -> &mut Conn {
        self.conns.get_mut(&slot).expect("an open connection")
    }

    fn handle(&mut self, c: &Completion) {
        let slot = c.user_data.key();
        match c.user_data.kind() {
            Some(Op::Accept) => self.handle_accept(c),
            Some(Op::Recv) => self.handle_recv(slot, c),
            Some(Op::Send) => self.handle_send(slot, c.result),
            Some(Op::Close) => {
                self.conns.remove(&slot);
                self.closed += 1;
            }
            Some(Op::Cancel) => {}
            None => unreachable!("only our own operations are submitted"),
        }
    }

    fn handle_accept(&mut self, c: &Completion) {
        // The result is the new socket's slot (or an error: the table is
        // full, or the client gave up; the next connection may do better).
        if c.result >= 0 {
            let slot = c.result as u32;
            self.conns.insert(slot, Conn::default());
            self.arm_recv(slot);
        }
        // A multishot accept ends on an error (or a full CQ): start another.
        if !c.more() {
            self.arm_accept();
        }
    }

    fn handle_recv(&mut self, slot: u32, c: &Completion) {
        let conn = self.conn(slot);
        if !c.more() {
            conn.receiving = false;
        }
        match (c.result, c.buffer()) {
            (n, Some(buf)) if n > 0 => conn.queue.push_back((buf, n as u32)),
            (0, _) => conn.peer_closed = true,
            // Out of buffers: back-pressure, not a failure. Re-armed after
            // the next publish (sends give buffers back). Any other error
            // ends the connection.
            (err, _) if err == -libc::ENOBUFS => {
                conn.starved = true;
                self.starved.push(slot);
            }
            _ => conn.peer_closed = true,
        }
        self.send_next(slot);
        self.advance(slot);
    }

    /// Sends the front of the queue, if no send is in flight.
    fn send_next(&mut self, slot: u32) {
        let conn = self.conn(slot);
        let Some(&(buf, len)) = conn.queue.front() else {
            return;
        };
        if conn.sending {
            return;
        }
        conn.sending = true;
        let ud = UserData::new(Op::Send, slot, 0);
        let offset = conn.sent;
        let part = Unsent {
            buf,
            offset,
            len: len - offset,
        };
        self.ring
            .send_buffer(Sock::Fixed(slot), self.bufs, part, SendMode::Copy, ud);
    }

    fn handle_send(&mut self, slot: u32, result: i32) {
        let conn = self.conn(slot);
        conn.sending = false;
        if result < 0 {
            conn.peer_closed = true;
        } else {
            conn.sent += result as u32;
            let (buf, len) = *conn.queue.front().expect("a send was in flight");
            if conn.sent == len {
                // The kernel is done with the buffer: back to the ring.
                conn.queue.pop_front();
                conn.sent = 0;
                self.ring.buffers_mut(self.bufs).recycle(buf);
            }
            self.send_next(slot);
        }
        self.advance(slot);
    }

    /// Re-arms a receive that ended, or closes a finished connection once
    /// nothing of it but the close is left in the kernel; its slot is
    /// forgotten when the close completes.
    fn advance(&mut self, slot: u32) {
        let conn = self.conn(slot);
        if conn.closing {
            return;
        }
        if conn.peer_closed {
            // The queue is empty here unless a send failed: while bytes are
            // queued, a send is in flight.
            if conn.receiving && !conn.cancelling {
                // After a failed send: stop receiving (it completes with
                // ECANCELED, which brings us back here).
                conn.cancelling = true;
                let target = UserData::new(Op::Recv, slot, 0);
                self.ring.cancel(target, UserData::new(Op::Cancel, slot, 0));
            } else if !conn.sending && !conn.receiving {
                conn.closing = true;
                let queued: Vec<BufId> = conn.queue.drain(..).map(|(buf, _)| buf).collect();
                for buf in queued {
                    self.ring.buffers_mut(self.bufs).recycle(buf);
                }
                let ud = UserData::new(Op::Close, slot, 0);
                self.ring.close(Sock::Fixed(slot), ud);
            }
        } else if !conn.receiving && !conn.starved {
            self.arm_recv(slot);
        }
    }
}

/// Serves `max_closed` connections (forever with `None`) on `listener`.
pub fn serve(listener: TcpListener, max_closed: Option<usize>) -> io::Result<()> {
    Server::new(listener)?.serve(max_closed)
}

#[allow(dead_code)]
fn main() -> io::Result<()> {
    let port = match std::env::args().nth(1) {
        None => 9999,
        Some(p) => p.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("PORT: not a port number: {p}"),
            )
        })?,
    };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
    println!("listening on {}", listener.local_addr()?);
    serve(listener, None)
}
