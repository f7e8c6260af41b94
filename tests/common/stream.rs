//! Endless, position-checked echo streams over many non-blocking sockets at
//! once. Unlike [`super::EchoClient`], nothing is stored per connection but
//! counters: byte `i` of connection `seed`'s stream is a function of both, so
//! a client can send for as long as a test runs and check every echoed byte
//! (order included) against the byte at that position.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Fills `out` with bytes `offset..offset + out.len()` of stream `seed`.
pub fn stream_fill(seed: u64, offset: u64, out: &mut [u8]) {
    let key = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut pos = offset;
    let mut i = 0;
    while i < out.len() {
        let word = splitmix64(key ^ (pos / 8)).to_le_bytes();
        let from = (pos % 8) as usize;
        let n = (8 - from).min(out.len() - i);
        out[i..i + n].copy_from_slice(&word[from..from + n]);
        i += n;
        pos += n as u64;
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One client of [`pump`]: writes its stream, reads the echo back and checks it.
pub struct StreamClient {
    pub stream: TcpStream,
    pub seed: u64,
    pub sent: u64,
    pub received: u64,
    /// Stop writing after this many bytes (`u64::MAX`: never).
    pub send_limit: u64,
    /// At most this many bytes sent and not yet echoed.
    pub window: u64,
    /// Shut down writing once `send_limit` is reached.
    pub half_close_at_limit: bool,
    /// Reads (and checks) the echo; a client that does not read only writes.
    pub reading: bool,
    /// Stop writing (and shut down writing), for example once the server has
    /// ended the connection.
    pub write_shut: bool,
    /// The server's FIN was read.
    pub eof: bool,
    /// A read or write failed (reset); the error's kind.
    pub failed: Option<ErrorKind>,
    /// Where the first echoed byte differing from the stream was.
    pub mismatch_at: Option<u64>,
}

impl StreamClient {
    pub fn new(stream: TcpStream, seed: u64) -> StreamClient {
        stream.set_nonblocking(true).unwrap();
        StreamClient {
            stream,
            seed,
            sent: 0,
            received: 0,
            send_limit: u64::MAX,
            window: 256 * 1024,
            half_close_at_limit: false,
            reading: true,
            write_shut: false,
            eof: false,
            failed: None,
            mismatch_at: None,
        }
    }

    /// Nothing more will happen on this connection.
    pub fn finished(&self) -> bool {
        self.failed.is_some() || self.eof
    }

    fn wants_write(&self) -> bool {
        !self.write_shut
            && self.failed.is_none()
            && self.sent < self.send_limit
            && (!self.reading || self.sent - self.received < self.window)
    }

    fn wants_read(&self) -> bool {
        self.reading && !self.finished()
    }

    /// Writes what it can; returns bytes written.
    pub fn write_some(&mut self, scratch: &mut [u8]) -> usize {
        let mut total = 0;
        while self.wants_write() {
            let mut n = (self.send_limit - self.sent).min(scratch.len() as u64) as usize;
            if self.reading {
                n = n.min((self.window - (self.sent - self.received)) as usize);
            }
            stream_fill(self.seed, self.sent, &mut scratch[..n]);
            match self.stream.write(&scratch[..n]) {
                Ok(w) => {
                    self.sent += w as u64;
                    total += w;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed = Some(e.kind());
                    break;
                }
            }
        }
        if self.sent == self.send_limit && self.half_close_at_limit {
            self.shut_write();
        }
        total
    }

    /// Reads what has arrived, checking it; on the server's FIN, stops writing too.
    pub fn read_some(&mut self, scratch: &mut [u8], expected: &mut [u8]) {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.eof = true;
                    self.shut_write();
                    return;
                }
                Ok(n) => {
                    stream_fill(self.seed, self.received, &mut expected[..n]);
                    if self.mismatch_at.is_none() && scratch[..n] != expected[..n] {
                        let at = scratch[..n]
                            .iter()
                            .zip(&expected[..n])
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        self.mismatch_at = Some(self.received + at as u64);
                    }
                    self.received += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed = Some(e.kind());
                    return;
                }
            }
        }
    }

    pub fn shut_write(&mut self) {
        if !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }

    /// Panics unless the echo so far is exact and in order, and no more than was sent.
    pub fn assert_exact_prefix(&self, i: usize) {
        assert_eq!(
            self.mismatch_at, None,
            "connection {i}: echo differs from the stream"
        );
        assert!(
            self.received <= self.sent,
            "connection {i}: {} bytes echoed of {} sent",
            self.received,
            self.sent
        );
    }
}

/// Drives every client with poll(2) until `done(clients)` holds (checked after
/// every round, at least every 50 ms) or `timeout` passes; returns whether
/// `done` held.
pub fn pump(
    clients: &mut [StreamClient],
    timeout: Duration,
    mut done: impl FnMut(&[StreamClient]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut expected = vec![0u8; 64 * 1024];
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(clients.len());
    let mut index: Vec<usize> = Vec::with_capacity(clients.len());
    loop {
        if done(clients) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        pfds.clear();
        index.clear();
        for (i, c) in clients.iter().enumerate() {
            let mut events = 0;
            if c.wants_read() {
                events |= libc::POLLIN;
            }
            if c.wants_write() {
                events |= libc::POLLOUT;
            }
            if events != 0 {
                pfds.push(libc::pollfd {
                    fd: c.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
                index.push(i);
            }
        }
        // SAFETY: `pfds` is a live, correctly sized array of pollfd for the call.
        let n = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                left.as_millis().min(50) as i32 + 1,
            )
        };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        for (p, &i) in pfds.iter().zip(&index) {
            if p.revents == 0 {
                continue;
            }
            let c = &mut clients[i];
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && c.reading {
                c.read_some(&mut scratch, &mut expected);
            }
            if p.revents & (libc::POLLOUT | libc::POLLERR) != 0 {
                c.write_some(&mut scratch);
            }
        }
    }
}
