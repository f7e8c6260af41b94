//! Runs the server: binds one listener per worker, starts the workers (each sets
//! up its own backend in its own thread and reports back), prints the effective
//! configuration, optional periodic stats, and the summary at the end.
//! It knows nothing of how a backend echoes.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use anyhow::{Context, anyhow};
use socket2::Socket;

use crate::config::{Backend, Config};
use crate::shutdown::{Shutdown, SignalThread};
use crate::stats::{Snapshot, Stats};
use crate::{epoll, net, tokio_uring_rt, uring};

/// What a finished run served, for the summary line.
#[derive(Debug)]
pub struct Summary {
    pub totals: Snapshot,
    pub elapsed_s: f64,
}

/// A worker's answer once its backend is set up (or failed to be).
type Ready = Result<String, String>;

/// Binds, serves until SIGINT/SIGTERM, drains, and returns what was served.
pub fn run(config: Config) -> anyhow::Result<Summary> {
    crate::sys::ignore_sigpipe();
    let listeners = net::bind_listeners(config.socket_addr(), config.backlog, config.workers)
        .map_err(|e| anyhow!(net::describe_bind_error(config.socket_addr(), &e)))?;
    let local = local_addr(&listeners[0])?;
    let mut udp_sockets: Vec<Option<Socket>> = (0..config.workers).map(|_| None).collect();
    if config.udp {
        for slot in &mut udp_sockets {
            *slot = Some(
                net::bind_udp(local)
                    .map_err(|e| anyhow!("UDP {}", net::describe_bind_error(local, &e)))?,
            );
        }
    }
    let stats = Stats::new(config.workers);
    let shutdown = Shutdown::new(config.workers).context("creating the workers' eventfds")?;
    let _signals = SignalThread::spawn(shutdown.clone()).context("installing signal handlers")?;
    let open_conns = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());

    thread::scope(|scope| -> anyhow::Result<()> {
        let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
        // Each worker holds a clone; when the last one ends, the stats printer's
        // receive reports Disconnected and it stops at once.
        let (alive_tx, alive_rx) = mpsc::channel::<()>();
        for (id, (listener, udp)) in listeners.into_iter().zip(udp_sockets).enumerate() {
            let ready_tx = ready_tx.clone();
            let alive_tx = alive_tx.clone();
            let (config, stats, shutdown, open_conns, failures) =
                (&config, &stats, &shutdown, &open_conns, &failures);
            thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn_scoped(scope, move || {
                    let _alive = alive_tx;
                    let result = match config.backend {
                        Backend::Uring => run_uring(
                            id, listener, udp, config, stats, shutdown, open_conns, &ready_tx,
                        ),
                        Backend::Epoll => run_epoll(
                            id, listener, udp, config, stats, shutdown, open_conns, &ready_tx,
                        ),
                        Backend::TokioUring => run_tokio_uring(
                            id, listener, config, stats, shutdown, open_conns, &ready_tx,
                        ),
                    };
                    if let Err(e) = result {
                        failures.lock().unwrap().push(format!("worker {id}: {e}"));
                        shutdown.request();
                    }
                })
                .context("spawning a worker thread")?;
        }
        drop(ready_tx);
        drop(alive_tx);
        let mut features = String::new();
        let mut setup_error = None;
        for answer in ready_rx.iter().take(config.workers) {
            match answer {
                Ok(f) => features = f,
                Err(e) => setup_error = Some(e),
            }
        }
        if let Some(e) = setup_error {
            shutdown.request();
            return Err(anyhow!(e));
        }
        if !config.quiet {
            println!("{}", banner(&config, local, &features));
            let _ = std::io::stdout().flush();
        }
        if let Some(interval) = config.stats_interval {
            let stats = &stats;
            scope.spawn(move || {
                let mut last = stats.snapshot();
                while let Err(mpsc::RecvTimeoutError::Timeout) = alive_rx.recv_timeout(interval) {
                    let now = stats.snapshot();
                    println!("uring-echo: stats {}", interval_line(&now, &last));
                    last = now;
                    let _ = std::io::stdout().flush();
                }
            });
        }
        Ok(())
    })?;

    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        return Err(anyhow!(failures.join("; ")));
    }
    Ok(Summary {
        totals: stats.snapshot(),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// A `--stats` line: the totals, then what the last interval added of the
/// connection lifecycle (churn shows there: accepts and closes per interval).
fn interval_line(now: &Snapshot, last: &Snapshot) -> String {
    format!(
        "{now} interval_accepted={} interval_closed={}",
        now.accepted - last.accepted,
        now.closed - last.closed
    )
}

fn local_addr(listener: &Socket) -> anyhow::Result<SocketAddr> {
    listener
        .local_addr()
        .context("reading the listener's address")?
        .as_socket()
        .ok_or_else(|| anyhow!("listener has a non-IP address"))
}

fn banner(config: &Config, local: SocketAddr, features: &str) -> String {
    format!(
        "uring-echo listening on {local} backend={} workers={} buffers={}x{}B/worker ({} KiB) \
         conn_buffers={} max_conns={} busy_poll={}us udp={} features={features}",
        config.backend.name(),
        config.workers,
        config.buf_count,
        config.buf_size_bytes,
        config.pool_bytes_per_worker() / 1024,
        config.conn_buffers,
        config.max_conns,
        config.busy_poll.as_micros(),
        if config.udp { "on" } else { "off" },
    )
}

#[allow(clippy::too_many_arguments)]
fn run_uring(
    id: usize,
    listener: Socket,
    udp: Option<Socket>,
    config: &Config,
    stats: &Stats,
    shutdown: &Shutdown,
    open_conns: &AtomicUsize,
    ready: &mpsc::Sender<Ready>,
) -> anyhow::Result<()> {
    let parts = match uring::setup_worker(config) {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return Ok(());
        }
    };
    let udp = match udp
        .map(|socket| uring::udp::UdpEcho::new(&parts.ring, socket, config.udp_max_datagram))
        .transpose()
    {
        Ok(udp) => udp,
        Err(e) => {
            let _ = ready.send(Err(format!("io_uring setup: UDP buffer ring: {e}")));
            return Ok(());
        }
    };
    let features = format!(
        "{},multishot_accept,multishot_recv{},buf_ring,direct_descriptors({}/worker),sendmsg_iovecs{}",
        parts.flags,
        if parts.recv_bundle {
            ",recv_bundle"
        } else {
            ""
        },
        parts.table_slots,
        if udp.is_some() {
            ",udp_multishot_recvmsg"
        } else {
            ""
        }
    );
    let _ = ready.send(Ok(features));
    let shared = uring::worker::Shared {
        config,
        stats: stats.worker(id),
        shutdown,
        open_conns,
        worker_id: id,
    };
    uring::worker::Worker::new(
        parts.ring,
        parts.bufs,
        udp,
        listener,
        parts.recv_bundle,
        shared,
    )
    .run()
    .context("io_uring event loop")
}

#[allow(clippy::too_many_arguments)]
fn run_epoll(
    id: usize,
    listener: Socket,
    udp: Option<Socket>,
    config: &Config,
    stats: &Stats,
    shutdown: &Shutdown,
    open_conns: &AtomicUsize,
    ready: &mpsc::Sender<Ready>,
) -> anyhow::Result<()> {
    let shared = epoll::worker::Shared {
        config,
        stats: stats.worker(id),
        shutdown,
        open_conns,
        worker_id: id,
    };
    let udp = udp.map(|socket| epoll::udp::UdpEcho::new(socket, config.udp_max_datagram));
    let worker = match epoll::worker::Worker::new(listener, udp, shared) {
        Ok(w) => w,
        Err(e) => {
            let _ = ready.send(Err(format!("epoll setup: {e}")));
            return Ok(());
        }
    };
    let _ = ready.send(Ok(if config.udp {
        "edge_triggered,udp"
    } else {
        "edge_triggered"
    }
    .to_string()));
    worker.run().context("epoll event loop")
}

fn run_tokio_uring(
    id: usize,
    listener: Socket,
    config: &Config,
    stats: &Arc<Stats>,
    shutdown: &Shutdown,
    open_conns: &Arc<AtomicUsize>,
    ready: &mpsc::Sender<Ready>,
) -> anyhow::Result<()> {
    let _ = ready.send(Ok("tokio_uring_runtime,task_per_connection".to_string()));
    let shared = tokio_uring_rt::Shared {
        config,
        stats: stats.clone(),
        shutdown,
        open_conns: open_conns.clone(),
        worker_id: id,
    };
    tokio_uring_rt::run(listener, shared).context("tokio-uring runtime")
}

impl Summary {
    pub fn line(&self) -> String {
        format!(
            "uring-echo stopped after {:.1}s: {}",
            self.elapsed_s, self.totals
        )
    }
}
