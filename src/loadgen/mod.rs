//! `loadgen`: the load generator for uring-echo. Opens many connections (as
//! io_uring direct descriptors, so the open-files limit does not cap them),
//! drives them closed- or open-loop, checks every echoed byte, and reports
//! latency percentiles, throughput and its own CPU per message.
//!
//! - `config`: the validated configuration (built by `cli::loadgen`).
//! - `connect`: target resolution, source-address spreading, socket setup, limit hints.
//! - `engine`: one thread's ring loop: the connection ramp, then the load.
//! - `ring`: the engine's operations on the shared ring layer ([`crate::ring`]).
//! - `conn`: one connection's state and message bookkeeping.
//! - `datagram`, `flow`: with `--udp`, what a datagram carries and how its
//!   echo is checked; one flow's sequence numbers, loss, duplicates, reordering.
//! - `pacing`: fixed-rate schedules (open-loop messages, connection ramp).
//! - `pattern`: the shared byte pattern that sends come from and echoes are checked against.
//! - `stats`: per-thread counters and histograms, and what progress reads.
//! - [`report`]: the JSON result, the human summary, the exit checks.
//! - `diagnosis`: what the connection counts say about the server, in one sentence.
//! - [`merge`]: histogram serialisation and merging results from several hosts.
//!
//! This file wires them together: plan the threads, start them, print progress,
//! sum their results. It does not parse flags or write files (the binary does).
//! Every file but those of `ring/` says `#![forbid(unsafe_code)]` (here it would
//! forbid it in `ring` too).

pub(crate) mod config;
pub(crate) mod conn;
pub(crate) mod connect;
pub(crate) mod datagram;
pub(crate) mod diagnosis;
pub(crate) mod engine;
pub mod error;
pub(crate) mod flow;
pub mod histogram;
pub mod merge;
pub(crate) mod pacing;
pub(crate) mod pattern;
pub mod report;
pub(crate) mod ring;
pub(crate) mod stats;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Barrier, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use config::{Config, Load, Stop};
use engine::{Plan, Shared};
pub use error::Error;
use pattern::Pattern;
use report::{Connections, Cpu, Report, RunConfig, Start, Totals};
use stats::{Counters, ThreadResult, new_histogram};

/// Longest send, and so the pattern's tail beyond its period.
const MAX_SEND_BYTES: usize = 64 * 1024;

/// Runs the load and returns its report. The error is one line, for a run that
/// could not start or got no connection at all.
pub fn run(config: &Config) -> Result<Report, Error> {
    crate::sys::ignore_sigpipe();
    if let Some(cpus) = &config.cpus {
        cpus.check_allowed().map_err(Error::Setup)?;
    }
    let per_ring = crate::sys::raise_open_files_limit().clamp(1, 1 << 20);
    let candidates = connect::resolve_target(&config.target)?;
    let target = connect::pick_target(&candidates, config.udp.is_some(), config.connect_timeout)?;
    let sources = connect::source_plan(
        target,
        config.conns,
        config.churn.is_some(),
        &config.source_addrs,
    )?;
    let base = config.threads.unwrap_or_else(crate::sys::available_cpus);
    let needed = connect::threads_needed(config.conns, per_ring);
    let threads = base.max(needed).min(config.conns as usize).max(1);
    let note = |msg: String| {
        if !config.quiet {
            eprintln!("loadgen: {msg}");
        }
    };
    if threads > base {
        note(format!(
            "note: --threads raised from {base} to {threads}: a ring holds at most {per_ring} \
             connections (the open-files limit), and {} were asked",
            config.conns
        ));
    }
    if target.is_ipv6() && sources.is_empty() && config.conns > connect::CONNS_PER_SOURCE {
        note(format!(
            "note: {} connections to one IPv6 target from one source address: an IPv6 target is \
             not spread over source addresses (::1 is the only IPv6 loopback address), and one \
             address has ~28,000 ephemeral ports; --source-addrs lists more",
            config.conns
        ));
    }
    if config.target.parse::<std::net::SocketAddr>().is_err() {
        let all: Vec<String> = candidates.iter().map(|a| a.to_string()).collect();
        let of = if all.len() > 1 {
            format!(" (of {}: the first that answered)", all.join(", "))
        } else {
            String::new()
        };
        note(format!(
            "--target {} resolved to {target}{of}",
            config.target
        ));
    }
    let run_config = run_config(config, &target.to_string(), threads, &sources);
    note(format!(
        "{} {} -> {target}: {} {} on {threads} threads{}, sources [{}], {}",
        run_config.protocol,
        run_config.mode,
        config.conns,
        if config.udp.is_some() {
            "flows"
        } else {
            "conns"
        },
        config
            .cpus
            .as_ref()
            .map_or_else(String::new, |c| format!(" pinned to CPUs {c}")),
        run_config.source_addrs.join(","),
        describe_load(config)
    ));

    let (interrupt, signal) = interrupt_flags();
    let plans = plan_threads(config.conns, threads);
    let (epoch, epoch_unix) = (std::time::Instant::now(), unix_now());
    let shared = Shared {
        config,
        epoch,
        epoch_unix,
        start_at: config
            .start_at
            .map(|unix| engine::StartAt::new(unix, epoch_unix)),
        ramp_end: OnceLock::new(),
        target,
        sources,
        pattern: Arc::new(Pattern::new(
            MAX_SEND_BYTES.max(ring::RECV_BUF_BYTES as usize),
        )),
        threads,
        barrier: Barrier::new(threads),
        established: AtomicU64::new(0),
        load_start: OnceLock::new(),
        cpu_at_load_start: OnceLock::new(),
        // With churn a ticket is a connection's worth of messages.
        tickets: match config.stop {
            Stop::Messages(n) => Some(AtomicU64::new(
                n / config.churn.map_or(1, |c| u64::from(c.messages_per_conn)),
            )),
            Stop::After(_) => None,
        },
        progress: (0..threads).map(|_| Default::default()).collect(),
        interrupt: interrupt.clone(),
    };
    let results = run_threads(&plans, &shared)?;
    let cpu_end = crate::sys::cpu_time();
    if shared.interrupted() {
        note("interrupted: the report covers the run up to the signal".to_string());
    }
    let totals = sum(&results, &shared, cpu_end);
    // A run stopped by a signal before any connection is still a report, so
    // that its exit status and JSON say it was interrupted.
    if totals.connections.established == 0 && !shared.interrupted() {
        let (kind, n) = totals
            .errors
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or(("none", &0), |(k, n)| (k.as_str(), n));
        return Err(Error::Run(format!(
            "no connection to {target} could be established: {kind} x{n} ({})",
            diagnosis::hint_for(kind)
        )));
    }
    let mut report = Report::new(run_config, totals);
    report.interrupted = match signal.load(Relaxed) as i32 {
        0 => None,
        libc::SIGINT => Some("SIGINT".to_string()),
        libc::SIGTERM => Some("SIGTERM".to_string()),
        other => Some(format!("signal {other}")),
    };
    Ok(report)
}

/// The wall clock, seconds since the UNIX epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A flag SIGINT/SIGTERM set, and which of them came: the first ends the run
/// early with a report (and the exit status says so), a second one exits at
/// once with 128 + its number (in case the drain itself is what the user
/// wants to escape).
fn interrupt_flags() -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    let which = Arc::new(AtomicUsize::new(0));
    for signal in [SIGINT, SIGTERM] {
        let _ =
            signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, flag.clone());
        let _ = signal_hook::flag::register_usize(signal, which.clone(), signal as usize);
        let _ = signal_hook::flag::register(signal, flag.clone());
    }
    (flag, which)
}

/// Splits connections evenly; the first threads take the remainder.
fn plan_threads(conns: u32, threads: usize) -> Vec<Plan> {
    let (each, extra) = (conns / threads as u32, conns % threads as u32);
    let mut first = 0u64;
    (0..threads)
        .map(|id| {
            let count = each + u32::from((id as u32) < extra);
            let plan = Plan { id, first, count };
            first += u64::from(count);
            plan
        })
        .collect()
}

fn run_threads(plans: &[Plan], shared: &Shared<'_>) -> Result<Vec<ThreadResult>, Error> {
    thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        for &plan in plans {
            let tx = tx.clone();
            thread::Builder::new()
                .name(format!("loadgen-{}", plan.id))
                .spawn_scoped(scope, move || {
                    let _ = tx.send(
                        pin_thread(plan.id, shared.config)
                            .and_then(|()| engine::run_thread(plan, shared)),
                    );
                })
                .map_err(|e| Error::Setup(format!("spawning a thread: {e}")))?;
        }
        drop(tx);
        let mut results = Vec::new();
        let mut first_error = None;
        let mut printer = ProgressPrinter::default();
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Ok(r)) => results.push(r),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if !shared.config.quiet {
                        printer.print(shared);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(results),
        }
    })
}

/// Pins engine thread `id` to its `--cpus` CPU (nothing without `--cpus`).
fn pin_thread(id: usize, config: &Config) -> Result<(), Error> {
    let Some(cpus) = &config.cpus else {
        return Ok(());
    };
    let cpu = cpus.for_index(id);
    crate::sys::pin_current_thread(cpu).map_err(|e| {
        Error::Setup(format!("--cpus {cpus}: pinning thread {id} to CPU {cpu}: {e} (is CPU {cpu} in this process's allowed set? see taskset -p)"))
    })
}

/// The once-a-second line on stderr.
#[derive(Default)]
struct ProgressPrinter {
    seconds: u64,
    last_msgs: u64,
    last_conns: u64,
}

impl ProgressPrinter {
    fn print(&mut self, shared: &Shared<'_>) {
        self.seconds += 1;
        let mut interval = new_histogram();
        let (mut up, mut failed, mut msgs, mut done) = (0, 0, 0, 0);
        for p in &shared.progress {
            up += p.conns_up.load(Relaxed);
            done += p.conns_done.load(Relaxed);
            failed += p.conns_failed.load(Relaxed);
            msgs += p.msgs.load(Relaxed);
            if let Ok(mut h) = p.interval.lock() {
                let _ = interval.add(&*h);
                h.reset();
            }
        }
        let rate = msgs - self.last_msgs;
        self.last_msgs = msgs;
        let p99 = if interval.is_empty() {
            "-".to_string()
        } else {
            format!("{} us", interval.value_at_quantile(0.99))
        };
        let (what, unit) = if shared.config.udp.is_some() {
            ("flows", "datagrams")
        } else {
            ("conns", "msgs")
        };
        let churn = if shared.config.churn.is_some() {
            let conns_rate = done - self.last_conns;
            self.last_conns = done;
            format!(" {conns_rate} conns/s,")
        } else {
            String::new()
        };
        eprintln!(
            "loadgen: {:>4}s {what} {up} up, {failed} failed;{churn} {rate} {unit}/s; p99 {p99}",
            self.seconds
        );
    }
}

fn sum(results: &[ThreadResult], shared: &Shared<'_>, cpu_end: (f64, f64)) -> Totals {
    let mut connections = Connections::default();
    let mut errors = std::collections::BTreeMap::new();
    let mut c = Counters::default();
    let mut udp = stats::UdpCounts::default();
    let mut latency = new_histogram();
    let mut connect = new_histogram();
    let mut transaction = new_histogram();
    let mut schedule_lag = new_histogram();
    let mut msgs_all = 0;
    let mut end = 0;
    for r in results {
        connections += &Connections {
            requested: r.requested,
            established: r.established,
            failed: r.failed,
            lost: r.lost,
            lost_unanswered: r.lost_unanswered,
            unanswered: r.unanswered,
            completed: r.completed,
        };
        for (k, n) in &r.errors {
            *errors.entry(k.clone()).or_default() += n;
        }
        c += &r.counters;
        msgs_all += r.msgs_all;
        udp += &r.udp;
        let _ = latency.add(&r.latency);
        let _ = connect.add(&r.connect);
        let _ = transaction.add(&r.transaction);
        let _ = schedule_lag.add(&r.schedule_lag);
        end = end.max(r.measure_end);
    }
    let measure_start =
        shared.load_start.get().copied().unwrap_or(0) + shared.config.warmup.as_nanos() as u64;
    let (u0, s0) = shared.cpu_at_load_start.get().copied().unwrap_or(cpu_end);
    // A run that never reached its load phase started, if at all, at the ramp's end.
    let load_start = shared.load_start.get().or(shared.ramp_end.get());
    let start = Start {
        requested: shared.start_at.map(|s| s.unix),
        actual: shared.epoch_unix + load_start.copied().unwrap_or(0) as f64 / 1e9,
        late: shared.started_late(),
        spread_s: 0.0,
    };
    Totals {
        connections,
        errors,
        duration_s: end.saturating_sub(measure_start) as f64 / 1e9,
        counters: c,
        latency,
        connect,
        transaction,
        schedule_lag,
        cpu: Cpu::new(cpu_end.0 - u0, cpu_end.1 - s0, msgs_all),
        udp: shared.config.udp.is_some().then_some(udp),
        start,
    }
}

fn describe_load(config: &Config) -> String {
    let load = match (config.load, config.udp) {
        (Load::Open { rate, .. }, Some(u)) => format!(
            "open loop at {rate} datagrams/s, lost after {:.3} s, --max-loss {}",
            u.timeout.as_secs_f64(),
            u.max_loss
        ),
        (Load::Closed { pipeline }, _) => format!("closed loop, pipeline {pipeline}"),
        (Load::Open { rate, pipeline }, None) => {
            format!("open loop at {rate} msgs/s, pipeline {pipeline}")
        }
    };
    let load = match (config.churn, config.load) {
        (Some(c), Load::Open { rate, pipeline }) => format!(
            "churn of {} msgs per connection, open loop at {rate} conns/s, pipeline {pipeline}{}",
            c.messages_per_conn,
            if config.linger0 { ", linger 0" } else { "" }
        ),
        (Some(c), Load::Closed { pipeline }) => format!(
            "churn of {} msgs per connection, closed loop, pipeline {pipeline}{}",
            c.messages_per_conn,
            if config.linger0 { ", linger 0" } else { "" }
        ),
        (None, _) => load,
    };
    let stop = match config.stop {
        Stop::After(d) => format!("{:.1} s", d.as_secs_f64()),
        Stop::Messages(n) => format!("{n} messages"),
    };
    let start = match config.start_at {
        Some(at) => format!(
            ", load from {at:.3} (--start-at, {:+.1} s from now)",
            at - unix_now()
        ),
        None => String::new(),
    };
    format!(
        "{load}, {}..={} bytes, {stop} after {:.1} s warm-up, verify {}{start}",
        config.size.min,
        config.size.max,
        config.warmup.as_secs_f64(),
        if config.verify { "on" } else { "off" }
    )
}

fn run_config(
    config: &Config,
    target: &str,
    threads: usize,
    sources: &[std::net::IpAddr],
) -> RunConfig {
    RunConfig {
        target: target.to_string(),
        conns: u64::from(config.conns),
        threads: threads as u64,
        source_addrs: sources.iter().map(|a| a.to_string()).collect(),
        connect_rate: u64::from(config.connect_rate),
        connect_timeout_s: config.connect_timeout.as_secs_f64(),
        mode: match config.load {
            Load::Closed { .. } => "closed",
            Load::Open { .. } => "open",
        }
        .to_string(),
        pipeline: config.load.pipeline(),
        rate: config.load.rate(),
        size_min: config.size.min,
        size_max: config.size.max,
        duration_s: match config.stop {
            Stop::After(d) => Some(d.as_secs_f64()),
            Stop::Messages(_) => None,
        },
        messages: match config.stop {
            Stop::Messages(n) => Some(n),
            Stop::After(_) => None,
        },
        warmup_s: config.warmup.as_secs_f64(),
        drain_timeout_s: config.drain_timeout.as_secs_f64(),
        verify: config.verify,
        protocol: if config.udp.is_some() { "udp" } else { "tcp" }.to_string(),
        udp_timeout_s: config.udp.map(|u| u.timeout.as_secs_f64()),
        max_loss: config.udp.map(|u| u.max_loss),
        messages_per_conn: config.churn.map(|c| c.messages_per_conn),
        linger0: config.linger0,
        pacing_slack_us: config
            .load
            .rate()
            .map(|_| config.pacing_slack.as_micros() as u32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_split_connections_evenly() {
        let plans = plan_threads(50_000, 3);
        let counts: Vec<u32> = plans.iter().map(|p| p.count).collect();
        assert_eq!(counts, vec![16_667, 16_667, 16_666]);
        assert_eq!(plans[2].first, 33_334);
    }
}
