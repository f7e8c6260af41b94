//! The `tokio-uring` backend: what an io_uring *runtime* costs over a raw ring.
//!
//! Written the way tokio-uring's own echo example is: one task per connection,
//! each with its own receive buffer (`--buf-size` bytes), `read` then `write_all`
//! of the same buffer. The same threads and SO_REUSEPORT listeners as the other
//! backends, and the same drain on SIGINT/SIGTERM. It does not use the provided
//! buffer ring, multishot operations or direct descriptors: the runtime has no
//! API for them, which is the point of the comparison.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use socket2::Socket;
use tokio::sync::watch;
use tokio_uring::net::{TcpListener, TcpStream};

use crate::server::Shared;
use crate::server::capacity::{self, TableFull};
use crate::server::stats::{Stats, WorkerStats};

/// How often the accept loop checks for a graceful stop.
const STOP_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs one worker's runtime until a graceful stop has drained its connections.
pub fn run(listener: Socket, shared: Shared<'_>) -> io::Result<()> {
    let std_listener: std::net::TcpListener = listener.into();
    tokio_uring::start(async move {
        let (stop_tx, stop_rx) = watch::channel(false);
        let acceptor = Acceptor {
            listener: TcpListener::from_std(std_listener),
            stats: StatsHandle {
                stats: Arc::clone(shared.all_stats),
                worker: shared.worker_id,
            },
            open_conns: Arc::clone(shared.open_conns),
            fd_table: Arc::clone(shared.fd_table),
            max_conns: shared.config.max_conns,
            buf_size: shared.config.buf_size_bytes as usize,
            drain_timeout: shared.config.drain_timeout,
            open_here: Rc::new(Cell::new(0)),
            all_closed: Rc::new(tokio::sync::Notify::new()),
            stop: stop_rx,
        };
        let (open_here, all_closed) = (acceptor.open_here.clone(), acceptor.all_closed.clone());
        // Accepting runs in its own task: an accept future must never be dropped
        // mid-flight, or a connection the kernel already accepted is closed.
        let accepting = tokio_uring::spawn(acceptor.run());
        // The stop flag is polled on a timer: registering the worker's eventfd
        // with tokio needs `unsafe` (AsyncFd::register), and a 50 ms tick costs
        // nothing next to the connections' traffic.
        let mut stop_check = tokio::time::interval(STOP_CHECK);
        while !shared.shutdown.is_requested() {
            stop_check.tick().await;
            if accepting.is_finished() {
                break;
            }
        }
        accepting.abort();
        let accept_result = accepting.await.unwrap_or(Ok(()));
        // Graceful stop: every connection task sees the stop and drains.
        let _ = stop_tx.send(true);
        // Connections linger at most --drain-timeout; one whose echo is stuck
        // behind a client that stopped reading is abandoned after that (the
        // runtime's drop closes it), so a stop always ends.
        let all_done = async {
            while open_here.get() > 0 {
                all_closed.notified().await;
            }
        };
        let grace = shared.config.drain_timeout + STOP_CHECK;
        let _ = tokio::time::timeout(grace, all_done).await;
        accept_result
    })
}

struct Acceptor {
    listener: TcpListener,
    stats: StatsHandle,
    open_conns: Arc<AtomicUsize>,
    fd_table: Arc<TableFull>,
    max_conns: usize,
    buf_size: usize,
    drain_timeout: std::time::Duration,
    /// Connection tasks alive on this worker, and the signal that it reached 0.
    open_here: Rc<Cell<usize>>,
    all_closed: Rc<tokio::sync::Notify>,
    stop: watch::Receiver<bool>,
}

impl Acceptor {
    async fn run(self) -> io::Result<()> {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) if is_transient_accept_error(&e) => continue,
                // Out of descriptors or memory: the connection waits in the
                // backlog; try again shortly instead of failing the worker.
                Err(e) if is_resource_error(&e) => {
                    if let Some(errno @ (libc::EMFILE | libc::ENFILE)) = e.raw_os_error() {
                        let open = self.open_conns.load(Ordering::Relaxed);
                        if self.fd_table.filled(open) {
                            WorkerStats::add(&self.stats.get().table_full, 1);
                            eprintln!("{}", capacity::fd_table_full_notice(errno, open));
                        }
                    }
                    tokio::time::sleep(STOP_CHECK).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.open_conns.fetch_add(1, Ordering::Relaxed) >= self.max_conns {
                self.open_conns.fetch_sub(1, Ordering::Relaxed);
                WorkerStats::add(&self.stats.get().rejected, 1);
                continue;
            }
            WorkerStats::add(&self.stats.get().accepted, 1);
            self.open_here.set(self.open_here.get() + 1);
            let conn = Connection {
                stream,
                buf_size: self.buf_size,
                stop: self.stop.clone(),
                drain_timeout: self.drain_timeout,
            };
            let stats = self.stats.clone();
            let (open_here, all_closed) = (self.open_here.clone(), self.all_closed.clone());
            let open_conns = self.open_conns.clone();
            let (fd_table, stop) = (self.fd_table.clone(), self.stop.clone());
            tokio_uring::spawn(async move {
                let errored = conn.serve(&stats).await.is_err();
                stats.closed(errored);
                let open = open_conns.fetch_sub(1, Ordering::Relaxed) - 1;
                if !*stop.borrow()
                    && let Some(full_at) = fd_table.room_again(open)
                {
                    let table = "the process's descriptor table";
                    eprintln!("{}", capacity::room_again_notice(table, open, full_at));
                }
                open_here.set(open_here.get() - 1);
                if open_here.get() == 0 {
                    all_closed.notify_one();
                }
            });
        }
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    )
}

struct Connection {
    stream: TcpStream,
    buf_size: usize,
    stop: watch::Receiver<bool>,
    drain_timeout: std::time::Duration,
}

impl Connection {
    async fn serve(mut self, stats: &StatsHandle) -> io::Result<()> {
        let mut buf = Vec::with_capacity(self.buf_size);
        loop {
            let read = tokio::select! {
                // A read that completed wins over the stop, so bytes already
                // received are echoed. (A read still in flight when the stop
                // comes is dropped: tokio-uring cancels it and keeps its buffer
                // alive until the kernel is done; bytes the kernel delivers in
                // that race are lost, a limit of the runtime's API.)
                biased;
                r = self.stream.read(buf) => Some(r),
                _ = self.stop.wait_for(|stop| *stop) => None,
            };
            let Some((res, b)) = read else {
                return self.linger().await;
            };
            let n = res?;
            if n == 0 {
                return Ok(());
            }
            stats.bytes_in(n);
            let (res, b) = self.stream.write_all(b).await;
            res?;
            stats.bytes_out(n);
            buf = b;
            buf.clear();
        }
    }

    /// FIN, then read and discard until the client's FIN or the drain deadline.
    async fn linger(self) -> io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        let deadline = tokio::time::sleep(self.drain_timeout);
        tokio::pin!(deadline);
        let mut buf = Vec::with_capacity(self.buf_size);
        loop {
            tokio::select! {
                r = self.stream.read(buf) => {
                    let (res, b) = r;
                    if res? == 0 {
                        return Ok(());
                    }
                    buf = b;
                    buf.clear();
                }
                _ = &mut deadline => return Ok(()),
            }
        }
    }
}

/// The worker's counters as seen from its connection tasks. Every task runs on
/// the worker's thread, so the single-writer rule of `WorkerStats` holds.
#[derive(Clone)]
struct StatsHandle {
    stats: Arc<Stats>,
    worker: usize,
}

impl StatsHandle {
    fn get(&self) -> &WorkerStats {
        self.stats.worker(self.worker)
    }

    fn bytes_in(&self, n: usize) {
        WorkerStats::add(&self.get().bytes_in, n as u64);
    }

    fn bytes_out(&self, n: usize) {
        WorkerStats::add(&self.get().bytes_out, n as u64);
    }

    fn closed(&self, errored: bool) {
        if errored {
            WorkerStats::add(&self.get().errors, 1);
        }
        WorkerStats::add(&self.get().closed, 1);
    }
}
