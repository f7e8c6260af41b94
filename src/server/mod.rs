//! Runs the server: binds one listener per worker, starts the workers (each sets
//! up its own backend in its own thread and reports back), prints the effective
//! configuration, optional periodic stats, and the summary at the end.
//! It knows nothing of how a backend echoes.
#![deny(unsafe_code)]

pub(crate) mod capacity;
pub mod config;
#[allow(unsafe_code)] // its poller: epoll_create1 and friends, fenced there
pub(crate) mod epoll;
pub(crate) mod net;
pub(crate) mod port_holders;
pub(crate) mod shutdown;
pub mod stats;
pub(crate) mod steering;
pub(crate) mod tokio_uring_rt;
pub(crate) mod uring;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use anyhow::{Context, anyhow};
use socket2::Socket;

use self::capacity::{Capacity, TableFull};
use self::config::{Backend, Config};
use self::shutdown::{Shutdown, SignalThread};
use self::stats::{Snapshot, Stats, WorkerStats};
use self::steering::Steering;
use crate::cpus::CpuList;

/// What every worker shares with the others, whichever its backend: one
/// context instead of one per backend. The counters, the open-connection count
/// and the descriptor-table notice sit in `Arc`s because tokio-uring's tasks
/// must be `'static`.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    pub config: &'a Config,
    /// This worker's counters.
    pub stats: &'a WorkerStats,
    /// Every worker's counters.
    pub all_stats: &'a Arc<Stats>,
    pub shutdown: &'a Shutdown,
    /// Connections open in all workers, for `--max-conns`.
    pub open_conns: &'a Arc<AtomicUsize>,
    /// The process's file-descriptor table, which all workers fill together.
    pub fd_table: &'a Arc<TableFull>,
    pub worker_id: usize,
}

/// What a finished run served, for the summary line.
#[derive(Debug)]
pub struct Summary {
    pub totals: Snapshot,
    pub elapsed_s: f64,
    /// With `--stats-per-worker`: each worker's counters, and its CPU where pinned.
    pub per_worker: Option<Vec<(Option<usize>, Snapshot)>>,
}

/// A worker's answer once its backend is set up (or failed to be).
type Ready = Result<String, String>;

/// Binds, serves until SIGINT/SIGTERM, drains, and returns what was served.
pub fn run(config: Config) -> anyhow::Result<Summary> {
    crate::sys::ignore_sigpipe();
    if let Some(cpus) = &config.cpus {
        cpus.check_allowed().map_err(|e| anyhow!(e))?;
    }
    let listeners = net::bind_listeners(
        config.socket_addr(),
        config.backlog,
        config.workers,
        config.udp,
    )?;
    let local = local_addr(&listeners[0])?;
    let mut udp_sockets: Vec<Option<Socket>> = (0..config.workers).map(|_| None).collect();
    if config.udp {
        for slot in &mut udp_sockets {
            *slot = Some(net::bind_udp(local).map_err(|e| net::BindError::new(local, "UDP", e))?);
        }
    }
    let steering = steer(&config, &listeners, &udp_sockets);
    let stats = Stats::new(config.workers);
    let shutdown = Shutdown::new(config.workers).context("creating the workers' eventfds")?;
    let _signals = SignalThread::spawn(shutdown.clone()).context("installing signal handlers")?;
    let open_conns = Arc::new(AtomicUsize::new(0));
    let fd_table = Arc::new(TableFull::default());
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
            let (config, stats, shutdown, open_conns, fd_table, failures) = (
                &config,
                &stats,
                &shutdown,
                &open_conns,
                &fd_table,
                &failures,
            );
            thread::Builder::new()
                .name(format!("worker-{id}"))
                .spawn_scoped(scope, move || {
                    let _alive = alive_tx;
                    if let Err(e) = pin_worker(config, id) {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    let shared = Shared {
                        config,
                        stats: stats.worker(id),
                        all_stats: stats,
                        shutdown,
                        open_conns,
                        fd_table,
                        worker_id: id,
                    };
                    let result = match config.backend {
                        Backend::Uring => run_uring(listener, udp, shared, &ready_tx),
                        Backend::Epoll => run_epoll(listener, udp, shared, &ready_tx),
                        Backend::TokioUring => run_tokio_uring(listener, shared, &ready_tx),
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
            // Counted once every worker has set up, so the descriptors its
            // rings, eventfds and listeners take are not counted as room.
            let limit = crate::sys::open_files_limit();
            let capacity = Capacity::of(&config, limit, capacity::fds_in_use_below(limit));
            println!(
                "{}",
                banner(&config, local, &capacity, &features, &steering)
            );
            let _ = std::io::stdout().flush();
        }
        if let Some(interval) = config.stats_interval {
            let (stats, config) = (&stats, &config);
            scope.spawn(move || {
                let mut last = stats.snapshot();
                while let Err(mpsc::RecvTimeoutError::Timeout) = alive_rx.recv_timeout(interval) {
                    let now = stats.snapshot();
                    println!("uring-echo: stats {}", interval_line(&now, &last));
                    last = now;
                    if config.stats_per_worker {
                        for (id, worker) in stats.per_worker().iter().enumerate() {
                            println!(
                                "uring-echo: worker-stats {}",
                                worker_counters(id, worker_cpu(config, id), worker)
                            );
                        }
                    }
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
        per_worker: config.stats_per_worker.then(|| {
            let each = stats.per_worker().into_iter().enumerate();
            each.map(|(id, w)| (worker_cpu(&config, id), w)).collect()
        }),
    })
}

/// Attaches the CPU steering program to the TCP group (and the UDP group with
/// --udp) once every worker's socket is in it, or says why the kernel keeps
/// hashing. Both groups get the same program; the start line reports TCP's,
/// and UDP's too where it differs.
fn steer(
    config: &Config,
    listeners: &[Socket],
    udp: &[Option<Socket>],
) -> (Steering, Option<Steering>) {
    let cpus = match (
        steering::plan(config.cpus.as_ref(), config.workers),
        &config.cpus,
    ) {
        (Ok(()), Some(cpus)) => cpus,
        (Err(hash), _) => return (hash, None),
        (Ok(()), None) => return (Steering::Hash("no --cpus".into()), None),
    };
    let online = crate::sys::online_cpus();
    let tcp = steering::attach(listeners, steering::Kind::Tcp, cpus, online.as_deref());
    let udp: Vec<Socket> = udp
        .iter()
        .flatten()
        .filter_map(|s| s.try_clone().ok())
        .collect();
    let udp = (!udp.is_empty())
        .then(|| steering::attach(&udp, steering::Kind::Udp, cpus, online.as_deref()));
    let udp = udp.filter(|u| *u != tcp);
    (tcp, udp)
}

/// Pins the calling worker thread to its --cpus CPU (nothing without --cpus).
fn pin_worker(config: &Config, id: usize) -> Result<(), String> {
    let Some(cpu) = worker_cpu(config, id) else {
        return Ok(());
    };
    crate::sys::pin_current_thread(cpu)
        .map_err(|e| format!("--cpus: pinning worker {id} to CPU {cpu}: {e}"))
}

fn worker_cpu(config: &Config, id: usize) -> Option<usize> {
    config.cpus.as_ref().map(|cpus| cpus.for_index(id))
}

/// One worker's `key=value` counters: `worker=I cpu=C open=...` (no `cpu=`
/// for an unpinned worker).
fn worker_counters(id: usize, cpu: Option<usize>, counters: &Snapshot) -> String {
    match cpu {
        Some(cpu) => format!("worker={id} cpu={cpu} {counters}"),
        None => format!("worker={id} {counters}"),
    }
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

fn banner(
    config: &Config,
    local: SocketAddr,
    capacity: &Capacity,
    features: &str,
    (steering, udp_steering): &(Steering, Option<Steering>),
) -> String {
    let cpus = config
        .cpus
        .as_ref()
        .map_or_else(|| "unpinned".to_string(), CpuList::to_string);
    let udp_steering = udp_steering
        .as_ref()
        .map_or_else(String::new, |u| format!(" udp_steering={u}"));
    format!(
        "uring-echo listening on {local} backend={} workers={} cpus={cpus} buffers={}x{}B/worker ({} KiB) \
         conn_buffers={} max_conns={} capacity={capacity} busy_poll={}us udp={} features={features} steering={steering}{udp_steering}",
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

fn run_uring(
    listener: Socket,
    udp: Option<Socket>,
    shared: Shared<'_>,
    ready: &mpsc::Sender<Ready>,
) -> anyhow::Result<()> {
    let config = shared.config;
    let mut parts = match uring::setup_worker(config) {
        Ok(parts) => parts,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return Ok(());
        }
    };
    let udp = match udp
        .map(|socket| uring::udp::UdpEcho::new(&mut parts.ring, socket, config.udp_max_datagram))
        .transpose()
    {
        Ok(udp) => udp,
        Err(e) => {
            let _ = ready.send(Err(format!("io_uring setup: UDP buffer ring: {e}")));
            return Ok(());
        }
    };
    // The wait said out loud, with the reason where the default turned itself off.
    let wait = if parts.wait == config::WaitBatch::OFF && config.wait.batch > 1 {
        "off(min-wait needs Linux 6.12)".to_string()
    } else {
        parts.wait.to_string()
    };
    let features = format!(
        "{},multishot_accept,multishot_recv{},buf_ring,direct_descriptors({}/worker),sendmsg_iovecs{},wait_batch={wait}{}",
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
        },
        config
            .send_zc
            .map(|bytes| format!(",send_zc(>={bytes}B)"))
            .unwrap_or_default()
    );
    let _ = ready.send(Ok(features));
    uring::worker::Worker::new(
        parts.ring,
        parts.bufs,
        udp,
        listener,
        parts.recv_bundle,
        parts.wait,
        shared,
    )
    .run()
    .context("io_uring event loop")
}

fn run_epoll(
    listener: Socket,
    udp: Option<Socket>,
    shared: Shared<'_>,
    ready: &mpsc::Sender<Ready>,
) -> anyhow::Result<()> {
    let config = shared.config;
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
    listener: Socket,
    shared: Shared<'_>,
    ready: &mpsc::Sender<Ready>,
) -> anyhow::Result<()> {
    let _ = ready.send(Ok("tokio_uring_runtime,task_per_connection".to_string()));
    tokio_uring_rt::run(listener, shared).context("tokio-uring runtime")
}

impl Summary {
    /// The summary line, followed with --stats-per-worker by one
    /// `uring-echo stopped worker=I cpu=C ...` line per worker.
    pub fn line(&self) -> String {
        let mut out = format!(
            "uring-echo stopped after {:.1}s: {}",
            self.elapsed_s, self.totals
        );
        for (id, (cpu, counters)) in self.per_worker.iter().flatten().enumerate() {
            out.push_str(&format!(
                "\nuring-echo stopped {}",
                worker_counters(id, *cpu, counters)
            ));
        }
        out
    }
}
