//! A minimal io_uring ping-pong client: the cheapest client we know how to write,
//! so the benches measure the server, and so loadgen's own cost per message can be
//! compared with it. No verification, no histograms: every message is the same
//! constant byte, so pipelined sends on one socket can never mix up content.
//!
//! One ring, plain sockets, one multishot receive per connection from a provided
//! buffer ring, and a send of the next message for each message echoed.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, types};
use uring_echo::echo_queue::BufId;
use uring_echo::ring::buf_ring::BufRing;

const RECV: u64 = 1;
const SEND: u64 = 2;
const BGID: u16 = 1;

pub struct PingPong {
    // Declared before `bufs` and `msg`: the ring is closed first, while the
    // memory its operations point into is still alive.
    ring: IoUring,
    bufs: BufRing,
    /// `size * pipeline` bytes of one constant value; sends are slices of it.
    msg: Box<[u8]>,
    socks: Vec<TcpStream>,
    size: usize,
    pipeline: usize,
    /// Echoed bytes not yet adding up to a whole message, per connection.
    partial: Vec<usize>,
    /// Messages sent and not yet echoed, per connection.
    outstanding: Vec<usize>,
}

fn ud(kind: u64, conn: usize, len: usize) -> u64 {
    kind << 62 | (len as u64) << 32 | conn as u64
}

impl PingPong {
    pub fn connect(
        addr: SocketAddr,
        conns: usize,
        size: usize,
        pipeline: usize,
    ) -> io::Result<PingPong> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(32768)
            .build(4096)?;
        let bufs = BufRing::register(&ring, BGID, 4096, 16 * 1024)?;
        let socks = (0..conns)
            .map(|_| {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                Ok(s)
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut pp = PingPong {
            ring,
            bufs,
            msg: vec![b'x'; size * pipeline].into_boxed_slice(),
            socks,
            size,
            pipeline,
            partial: vec![0; conns],
            outstanding: vec![0; conns],
        };
        for c in 0..conns {
            pp.arm_recv(c);
        }
        Ok(pp)
    }

    fn push(&mut self, entry: io_uring::squeue::Entry) {
        loop {
            // SAFETY: entries point into `msg` (boxed, alive and unmoved while the
            // ring is open: field order) or carry no pointer.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            self.ring.submit().expect("submit");
        }
    }

    fn arm_recv(&mut self, c: usize) {
        let fd = types::Fd(self.socks[c].as_raw_fd());
        let e = opcode::RecvMulti::new(fd, BGID)
            .build()
            .user_data(ud(RECV, c, 0));
        self.push(e);
    }

    fn send(&mut self, c: usize, len: usize) {
        let fd = types::Fd(self.socks[c].as_raw_fd());
        let e = opcode::Send::new(fd, self.msg.as_ptr(), len as u32)
            .build()
            .user_data(ud(SEND, c, len));
        self.push(e);
    }

    /// Runs until `messages` echoes have come back; returns the time that took.
    /// Messages still in flight then are drained afterwards, outside the timing.
    pub fn run(&mut self, messages: u64) -> Duration {
        let start = Instant::now();
        let conns = self.socks.len();
        let mut done = 0u64;
        let mut sent = 0u64;
        for c in 0..conns {
            let n = self.pipeline.min((messages - sent) as usize);
            if n == 0 {
                break;
            }
            self.outstanding[c] += n;
            sent += n as u64;
            self.send(c, n * self.size);
        }
        let mut elapsed = None;
        let mut cqes = Vec::with_capacity(1024);
        while self.outstanding.iter().any(|&o| o > 0) {
            self.ring.submit_and_wait(1).expect("submit_and_wait");
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(data, res, flags) in &cqes {
                let c = (data & 0xffff_ffff) as usize;
                match data >> 62 {
                    RECV => {
                        assert!(res > 0, "connection {c}: receive failed or closed: {res}");
                        if let Some(id) = cqueue::buffer_select(flags) {
                            self.bufs.recycle(BufId(id));
                        }
                        self.partial[c] += res as usize;
                        while self.partial[c] >= self.size {
                            self.partial[c] -= self.size;
                            self.outstanding[c] -= 1;
                            done += 1;
                            if sent < messages {
                                sent += 1;
                                self.outstanding[c] += 1;
                                self.send(c, self.size);
                            }
                        }
                        if !cqueue::more(flags) {
                            self.arm_recv(c);
                        }
                    }
                    _ => {
                        let len = ((data >> 32) & 0x3fff_ffff) as usize;
                        assert!(res >= 0, "connection {c}: send failed: {res}");
                        if (res as usize) < len {
                            // Short send: the rest is the same constant bytes.
                            self.send(c, len - res as usize);
                        }
                    }
                }
            }
            self.bufs.publish();
            if done >= messages && elapsed.is_none() {
                elapsed = Some(start.elapsed());
            }
        }
        elapsed.unwrap_or_else(|| start.elapsed())
    }
}
