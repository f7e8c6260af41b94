//! The epoll event loop of one worker thread: the fair baseline. Same design as
//! the io_uring worker (own SO_REUSEPORT listener, slab of connections, the same
//! buffer budget and back-pressure), on readiness instead of completions:
//! edge-triggered sockets registered once, read into a pool buffer and sent
//! straight back, the buffer kept only if the send was short.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slab::Slab;
use socket2::Socket;

use super::buf_pool::BufPool;
use super::poller::{CONN_INTEREST, LEVEL_READ, Poller};
use super::udp::UdpEcho;
use crate::echo_queue::{Chunk, EchoQueue};
use crate::server::Shared;
use crate::server::capacity;
use crate::server::stats::WorkerStats;

const LISTENER: u64 = u64::MAX;
const WAKER: u64 = u64::MAX - 1;
const UDP: u64 = u64::MAX - 2;
/// Reads one connection may do per wakeup before others get a turn.
const READS_PER_TURN: usize = 16;
/// Connections accepted per wakeup; the level-triggered listener reports the rest.
const ACCEPTS_PER_TURN: usize = 64;
/// How often a draining worker checks its deadline, and a paused accept is retried.
const TICK: Duration = Duration::from_millis(50);
/// Buffers' worth one read may take and one sendmsg may carry: the epoll
/// counterpart of io_uring's receive bundles and multi-buffer sends.
const MAX_READ_BUFFERS: usize = 16;

#[derive(Default)]
struct State {
    /// Not yet read to EAGAIN (or a short read) since the last edge.
    readable: bool,
    /// The peer's FIN or an error was reported: read on until 0 or an error,
    /// since no later edge will announce it again.
    hangup: bool,
    paused: bool,
    starved: bool,
    peer_eof: bool,
    draining: bool,
    write_shut: bool,
    /// Queued on the worker's ready list.
    queued: bool,
}

/// Whether the listener is in the poller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accept {
    Listening,
    /// Out of descriptors (or another accept error) since `since`: out of the
    /// poller until a close, or a tick later.
    Paused {
        since: Instant,
    },
    /// Graceful stop: no more accepts.
    Stopped,
}

/// What a connection with nothing left to send does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Wait,
    /// The peer sent FIN and everything is echoed.
    Close,
    /// Draining and everything is echoed: send our FIN.
    ShutdownWrite,
}

/// The rule `maybe_finish` applies, as a pure function of the state and
/// whether anything is still queued to echo.
fn finish_step(state: &State, queue_empty: bool) -> Finish {
    if !queue_empty {
        Finish::Wait
    } else if state.peer_eof {
        Finish::Close
    } else if state.draining && !state.write_shut {
        Finish::ShutdownWrite
    } else {
        Finish::Wait
    }
}

struct Conn {
    fd: OwnedFd,
    generation: u32,
    state: State,
    queue: EchoQueue,
}

pub struct Worker<'a> {
    poller: Poller,
    listener: Socket,
    udp: Option<UdpEcho>,
    pool: BufPool,
    /// Where reads land: sent straight back from here when the socket takes
    /// it, copied into pool buffers only when it does not.
    scratch: Box<[u8]>,
    conns: Slab<Conn>,
    shared: Shared<'a>,
    next_generation: u32,
    /// Connections with readable data left after their turn, or resumed.
    ready: VecDeque<(usize, u32)>,
    /// Connections waiting for a free buffer.
    starved: VecDeque<(usize, u32)>,
    accept: Accept,
    drain_deadline: Option<Instant>,
}

fn token(key: usize, generation: u32) -> u64 {
    ((generation as u64) << 32) | key as u64
}

impl<'a> Worker<'a> {
    pub fn new(
        listener: Socket,
        udp: Option<UdpEcho>,
        shared: Shared<'a>,
    ) -> io::Result<Worker<'a>> {
        let poller = Poller::new()?;
        poller.add(listener.as_raw_fd(), LEVEL_READ, LISTENER)?;
        if let Some(udp) = &udp {
            poller.add(udp.socket().as_raw_fd(), LEVEL_READ, UDP)?;
        }
        let waker = shared.shutdown.waker(shared.worker_id).as_raw_fd();
        poller.add(waker, LEVEL_READ, WAKER)?;
        let pool = BufPool::new(shared.config.buf_count, shared.config.buf_size_bytes);
        let scratch = vec![0u8; MAX_READ_BUFFERS * shared.config.buf_size_bytes as usize];
        Ok(Worker {
            poller,
            listener,
            udp,
            pool,
            scratch: scratch.into_boxed_slice(),
            conns: Slab::new(),
            shared,
            next_generation: 1,
            ready: VecDeque::new(),
            starved: VecDeque::new(),
            accept: Accept::Listening,
            drain_deadline: None,
        })
    }

    pub fn run(mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        loop {
            if self.drain_deadline.is_some() && self.conns.is_empty() {
                return Ok(());
            }
            // Wake for the drain deadline, and to retry a paused accept: the
            // open-files limit is the process's, so the close that frees a
            // descriptor may happen in another worker, which cannot tell us.
            let timeout = if !self.ready.is_empty() {
                Some(Duration::ZERO)
            } else if self.drain_deadline.is_some() || self.accept != Accept::Listening {
                Some(TICK)
            } else {
                None
            };
            let mut n = 0;
            if timeout != Some(Duration::ZERO) {
                n = self.spin_for_events(&mut events)?;
            }
            if n == 0 {
                n = self.poller.wait(&mut events, timeout)?;
            }
            for ev in &events[..n] {
                let (flags, tok) = (ev.events, ev.u64);
                match tok {
                    LISTENER => self.accept_some(),
                    WAKER => self.handle_wake(),
                    UDP => {
                        if let Some(udp) = &mut self.udp {
                            udp.on_readable(self.shared.stats);
                        }
                    }
                    _ => self.handle_conn_event(tok, flags),
                }
            }
            self.run_ready();
            self.rearm_starved();
            if let Accept::Paused { since } = self.accept
                && self.drain_deadline.is_none()
                && since.elapsed() >= TICK
            {
                self.resume_accept();
            }
            if self.drain_deadline.is_some_and(|d| Instant::now() >= d) {
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.close(key, false);
                }
            }
        }
    }

    /// `--busy-poll`: polls with a zero timeout until events come or the spin
    /// time is up; how many came. The same spin the io_uring worker does, at
    /// the cost epoll must pay for it: a syscall every turn.
    fn spin_for_events(&self, events: &mut [libc::epoll_event]) -> io::Result<usize> {
        let spin = self.shared.config.busy_poll;
        if spin.is_zero() {
            return Ok(0);
        }
        let deadline = Instant::now() + spin;
        loop {
            let n = self.poller.wait(events, Some(Duration::ZERO))?;
            if n > 0 || Instant::now() >= deadline {
                return Ok(n);
            }
            std::hint::spin_loop();
        }
    }

    fn lookup(&self, tok: u64) -> Option<usize> {
        let key = (tok & 0xffff_ffff) as usize;
        let generation = (tok >> 32) as u32;
        self.conns
            .get(key)
            .filter(|c| c.generation == generation)
            .map(|_| key)
    }

    /// The connection at `key` if it is still the one queued with
    /// `generation`: a slot closed and reused since is someone else's.
    fn live_conn(&mut self, key: usize, generation: u32) -> Option<&mut Conn> {
        self.conns
            .get_mut(key)
            .filter(|c| c.generation == generation)
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            match crate::sys::accept_nonblocking(self.listener.as_raw_fd()) {
                Ok(fd) => self.admit(fd),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM) => {}
                    // Out of descriptors: the connection waits in the backlog. The
                    // listener is level-triggered, so it must leave the poller or
                    // every wait would return at once; the next close brings it back.
                    Some(errno @ (libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                        if matches!(errno, libc::EMFILE | libc::ENFILE) {
                            self.note_fd_table_full(errno);
                        }
                        self.pause_accept();
                        return;
                    }
                    _ => {
                        eprintln!(
                            "uring-echo: worker {}: accept failed: {e}; accepting paused until a connection closes",
                            self.shared.worker_id
                        );
                        self.pause_accept();
                        return;
                    }
                },
            }
        }
    }

    /// Said and counted once (for all workers) until the table has room again.
    fn note_fd_table_full(&self, errno: i32) {
        let open = self.shared.open_conns.load(Ordering::Relaxed);
        if self.shared.fd_table.filled(open) {
            WorkerStats::add(&self.shared.stats.table_full, 1);
            eprintln!("{}", capacity::fd_table_full_notice(errno, open));
        }
    }

    fn pause_accept(&mut self) {
        if self.accept == Accept::Listening && self.poller.delete(self.listener.as_raw_fd()).is_ok()
        {
            self.accept = Accept::Paused {
                since: Instant::now(),
            };
        }
    }

    fn admit(&mut self, fd: OwnedFd) {
        let over_limit =
            self.shared.open_conns.fetch_add(1, Ordering::Relaxed) >= self.shared.config.max_conns;
        if over_limit || self.drain_deadline.is_some() {
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            WorkerStats::add(&self.shared.stats.rejected, 1);
            return; // dropping `fd` closes it
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self
            .poller
            .add(fd.as_raw_fd(), CONN_INTEREST, token(key, generation))
        {
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            WorkerStats::add(&self.shared.stats.rejected, 1);
            eprintln!("uring-echo: epoll_ctl add: {e}");
            return;
        }
        entry.insert(Conn {
            fd,
            generation,
            state: State::default(),
            queue: EchoQueue::default(),
        });
        WorkerStats::add(&self.shared.stats.accepted, 1);
        WorkerStats::set(&self.shared.stats.slab_slots, self.conns.capacity() as u64);
    }

    fn handle_wake(&mut self) {
        let _ =
            crate::sys::eventfd_drain(self.shared.shutdown.waker(self.shared.worker_id).as_fd());
        if self.shared.shutdown.is_requested() && self.drain_deadline.is_none() {
            self.begin_drain();
        }
    }

    fn handle_conn_event(&mut self, tok: u64, flags: u32) {
        let Some(key) = self.lookup(tok) else {
            return;
        };
        if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0
        {
            let state = &mut self.conns[key].state;
            state.readable = true;
            state.hangup |=
                flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
            self.on_readable(key);
        }
        if self.conns.contains(key) && flags & libc::EPOLLOUT as u32 != 0 {
            self.flush(key);
        }
    }

    /// Reads and echoes until EAGAIN, the turn ends, the budget is reached or
    /// the pool is empty.
    fn on_readable(&mut self, key: usize) {
        let buf_size = self.shared.config.buf_size_bytes as usize;
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let s = &conn.state;
            // Draining before our FIN: echo only what was already received.
            if !s.readable || s.paused || s.starved || s.peer_eof || (s.draining && !s.write_shut) {
                return;
            }
            // Read at most what the budget and the pool can still hold, should
            // none of it be sent at once: the same cap io_uring's receives get.
            let budget_left = self
                .shared
                .config
                .conn_buffers
                .saturating_sub(conn.queue.held());
            let room = (budget_left as usize)
                .min(self.pool.free_count())
                .min(MAX_READ_BUFFERS);
            if room == 0 {
                if budget_left == 0 {
                    conn.state.paused = true;
                    WorkerStats::add(&self.shared.stats.backpressured, 1);
                } else {
                    WorkerStats::add(&self.shared.stats.buffer_starved, 1);
                    conn.state.starved = true;
                    self.starved.push_back((key, conn.generation));
                }
                return;
            }
            let want = room * buf_size;
            match crate::sys::recv_into(conn.fd.as_raw_fd(), &mut self.scratch[..want]) {
                Ok(0) => {
                    conn.state.peer_eof = true;
                    self.maybe_finish(key);
                    return;
                }
                Ok(n) => {
                    WorkerStats::add(&self.shared.stats.bytes_in, n as u64);
                    // A short read drained the socket: any later arrival raises a
                    // new edge, so the read that would only return EAGAIN is
                    // skipped (one syscall per message saved). Not after a FIN
                    // was seen: the FIN raises no further edge.
                    if n < want && !conn.state.hangup {
                        conn.state.readable = false;
                    }
                    if conn.state.write_shut {
                        continue; // draining after our FIN: discard until the peer's FIN
                    }
                    self.echo_received(key, n);
                    if !self.conns.contains(key) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.state.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(key, true);
                    return;
                }
            }
        }
        // Turn over with data left: come back after the others had theirs.
        let conn = &mut self.conns[key];
        if !conn.state.queued {
            conn.state.queued = true;
            self.ready.push_back((key, conn.generation));
        }
    }

    /// Echoes the `n` bytes just read into `scratch`: sent straight back when
    /// nothing older waits, and what the socket does not take is kept in pool
    /// buffers (room for it was checked before reading).
    fn echo_received(&mut self, key: usize, n: usize) {
        let conn = &mut self.conns[key];
        let had_queue = !conn.queue.is_empty();
        let mut sent = 0;
        if !had_queue {
            match crate::sys::send_from(conn.fd.as_raw_fd(), &self.scratch[..n]) {
                Ok(k) => sent = k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.close(key, true);
                    return;
                }
            }
            WorkerStats::add(&self.shared.stats.bytes_out, sent as u64);
        }
        let buf_size = self.shared.config.buf_size_bytes as usize;
        for rest in self.scratch[sent..n].chunks(buf_size) {
            let buf = self.pool.take().expect("room was reserved before the read");
            self.pool.buf_mut(buf)[..rest.len()].copy_from_slice(rest);
            conn.queue.push(Chunk {
                buf,
                len: rest.len() as u32,
            });
        }
        if had_queue {
            self.flush(key);
        } else if conn.queue.is_over_budget(self.shared.config.conn_buffers) {
            conn.state.paused = true;
            WorkerStats::add(&self.shared.stats.backpressured, 1);
        }
    }

    /// Sends queued chunks, several per sendmsg, until the socket is full or
    /// the queue is empty.
    fn flush(&mut self, key: usize) {
        loop {
            let conn = &mut self.conns[key];
            if conn.queue.is_empty() {
                break;
            }
            let mut slices = [IoSlice::new(&[]); MAX_READ_BUFFERS];
            let mut count = 0;
            for (slot, u) in slices.iter_mut().zip(conn.queue.unsent(MAX_READ_BUFFERS)) {
                *slot = IoSlice::new(self.pool.bytes(u.buf, u.offset, u.len));
                count += 1;
            }
            match crate::sys::send_vectored(conn.fd.as_raw_fd(), &slices[..count]) {
                Ok(n) => {
                    WorkerStats::add(&self.shared.stats.bytes_out, n as u64);
                    let pool = &mut self.pool;
                    conn.queue.advance_by(n as u32, |buf| pool.give_back(buf));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(key, true);
                    return;
                }
            }
        }
        // Queue empty: resume a paused reader, finish a half-closed connection.
        let resume_at = self.shared.config.conn_buffers_resume();
        let conn = &mut self.conns[key];
        if conn.state.paused && conn.queue.held() <= resume_at {
            conn.state.paused = false;
            if conn.state.readable && !conn.state.queued {
                conn.state.queued = true;
                self.ready.push_back((key, conn.generation));
            }
        }
        self.maybe_finish(key);
    }

    /// After the peer's FIN, or during a drain, once nothing is left to echo.
    fn maybe_finish(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        match finish_step(&conn.state, conn.queue.is_empty()) {
            Finish::Wait => {}
            Finish::Close => self.close(key, false),
            Finish::ShutdownWrite => self.shutdown_write(key),
        }
    }

    /// Sends our FIN (graceful stop, everything echoed), then reads on until
    /// the peer's, so that closing does not turn unread bytes into a reset.
    fn shutdown_write(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.state.write_shut = true;
        if crate::sys::shutdown_write(conn.fd.as_raw_fd()).is_err() {
            self.close(key, true);
        } else if conn.state.readable && !conn.state.queued {
            conn.state.queued = true;
            self.ready.push_back((key, conn.generation));
        }
    }

    fn close(&mut self, key: usize, error: bool) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        for buf in conn.queue.drain(0) {
            self.pool.give_back(buf);
        }
        // Closing the descriptor removes it from the epoll set.
        drop(conn);
        if error {
            WorkerStats::add(&self.shared.stats.errors, 1);
        }
        WorkerStats::add(&self.shared.stats.closed, 1);
        let open = self.shared.open_conns.fetch_sub(1, Ordering::Relaxed) - 1;
        if self.drain_deadline.is_none()
            && let Some(full_at) = self.shared.fd_table.room_again(open)
        {
            let notice =
                capacity::room_again_notice("the process's descriptor table", open, full_at);
            eprintln!("{notice}");
        }
        if matches!(self.accept, Accept::Paused { .. }) && self.drain_deadline.is_none() {
            self.resume_accept();
        }
    }

    fn resume_accept(&mut self) {
        let listener = self.listener.as_raw_fd();
        if self.poller.add(listener, LEVEL_READ, LISTENER).is_ok() {
            self.accept = Accept::Listening;
        }
    }

    fn run_ready(&mut self) {
        for _ in 0..self.ready.len() {
            let Some((key, generation)) = self.ready.pop_front() else {
                return;
            };
            let Some(conn) = self.live_conn(key, generation) else {
                continue;
            };
            conn.state.queued = false;
            self.on_readable(key);
        }
    }

    fn rearm_starved(&mut self) {
        while self.pool.has_free() {
            let Some((key, generation)) = self.starved.pop_front() else {
                return;
            };
            let Some(conn) = self.live_conn(key, generation) else {
                continue;
            };
            conn.state.starved = false;
            self.on_readable(key);
        }
    }

    fn begin_drain(&mut self) {
        self.drain_deadline = Some(Instant::now() + self.shared.config.drain_timeout);
        if self.accept == Accept::Listening {
            let _ = self.poller.delete(self.listener.as_raw_fd());
        }
        self.accept = Accept::Stopped;
        // UDP has no connection to drain: stop echoing datagrams.
        if let Some(udp) = self.udp.take() {
            let _ = self.poller.delete(udp.socket().as_raw_fd());
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.conns[key].state.draining = true;
            self.maybe_finish(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_finishes_only_once_everything_is_echoed() {
        let eof = State {
            peer_eof: true,
            ..State::default()
        };
        assert_eq!(finish_step(&eof, false), Finish::Wait);
        assert_eq!(finish_step(&eof, true), Finish::Close);
        let draining = State {
            draining: true,
            ..State::default()
        };
        assert_eq!(finish_step(&draining, false), Finish::Wait);
        assert_eq!(finish_step(&draining, true), Finish::ShutdownWrite);
        let shut = State {
            draining: true,
            write_shut: true,
            ..State::default()
        };
        assert_eq!(finish_step(&shut, true), Finish::Wait, "FIN sent once");
        assert_eq!(finish_step(&State::default(), true), Finish::Wait);
    }
}
