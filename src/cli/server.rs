//! `uring-echo`'s flags.

use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::server::config::{
    Backend, Config, MAX_BUF_COUNT, MAX_BUF_SIZE_BYTES, MAX_CQ_ENTRIES, MAX_UDP_DATAGRAM, WaitBatch,
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendArg {
    /// io_uring: multishot accept/recv, provided buffer ring, direct descriptors (Linux 6.0+)
    Uring,
    /// epoll, edge-triggered: the baseline (any Linux)
    Epoll,
    /// tokio-uring runtime, a task per connection: what a runtime costs over a raw ring
    TokioUring,
}

/// An RFC 862 TCP echo server on io_uring, with an epoll baseline.
///
/// Prints one line with the effective configuration at start, echoes every byte
/// each client sends, and on SIGINT/SIGTERM drains its connections and prints a summary.
#[derive(Debug, Parser)]
#[command(name = "uring-echo", version)]
// `--port -1` must be read as a bad value for --port, not as an unknown flag `-1`.
#[command(allow_negative_numbers = true)]
pub struct ServerArgs {
    /// TCP port to listen on; 0 picks a free one (printed at start)
    #[arg(short, long, default_value_t = 9999, value_parser = clap::value_parser!(u16))]
    pub port: u16,

    /// Address to listen on, an IP address or a host name (resolved once, at
    /// start); `::` serves IPv6 and IPv4
    #[arg(short, long, default_value = "0.0.0.0", value_parser = crate::cli::host_addr)]
    pub addr: crate::cli::HostAddr,

    /// Worker threads, each with its own listener and event loop [default: the
    /// number of --cpus, else the number of CPUs]
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: Option<u32>,

    /// Pin worker i to the i-th CPU of LIST (`0-7`, `0,2,4`, `0-3,8`), and
    /// steer each new connection to the worker pinned to the CPU that
    /// received it (a reuseport BPF program; the start line says
    /// `steering=cpu`, or `steering=hash (why)` where it cannot). --workers
    /// defaults to the list's length; a multiple of it shares each CPU
    /// (hashed, not steered)
    #[arg(long, value_name = "LIST", value_parser = crate::cli::cpu_list)]
    pub cpus: Option<crate::cpus::CpuList>,

    /// Event loop
    #[arg(short, long, value_enum, default_value_t = BackendArg::Uring)]
    pub backend: BackendArg,

    /// Size of one receive buffer, in bytes
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(64..=MAX_BUF_SIZE_BYTES as i64))]
    pub buf_size: u32,

    /// Receive buffers per worker (a power of two, the kernel's limit is 32768)
    #[arg(long, default_value_t = 4096, value_parser = crate::cli::power_of_two_u32(1, MAX_BUF_COUNT))]
    pub buf_count: u32,

    /// Buffers one connection may hold before the server stops reading from it
    /// (back-pressure for clients that send without reading)
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=MAX_BUF_COUNT as i64))]
    pub conn_buffers: u32,

    /// Connections open at once (all workers); more are closed at accept and counted
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub max_conns: u64,

    /// listen() backlog (capped by net.core.somaxconn)
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub backlog: u32,

    /// On SIGINT/SIGTERM, seconds to let connections drain before closing them
    #[arg(long, default_value = "5", value_parser = crate::cli::seconds(0.0, 3600.0))]
    pub drain_timeout: Duration,

    /// io_uring submission queue entries per ring (a power of two, at most --cq-entries)
    #[arg(long, default_value_t = 4096, value_parser = crate::cli::power_of_two_u32(8, 32768))]
    pub sq_entries: u32,

    /// io_uring completion queue entries per ring (a power of two). If it
    /// overflows, the kernel keeps the completions and the server re-arms
    /// what ended; nothing is lost, it is only slower
    #[arg(long, default_value_t = MAX_CQ_ENTRIES, value_parser = crate::cli::power_of_two_u32(16, MAX_CQ_ENTRIES))]
    pub cq_entries: u32,

    /// io_uring: do not receive with bundles even where the kernel has them
    /// (6.10+); for measuring what bundles buy
    #[arg(long)]
    pub no_recv_bundle: bool,

    /// Also serve UDP echo (RFC 862) on the same port. Off by default: an open
    /// UDP echo port can be used to reflect traffic at a spoofed source
    #[arg(long)]
    pub udp: bool,

    /// Largest UDP datagram echoed; larger ones are counted and dropped
    #[arg(long, default_value_t = MAX_UDP_DATAGRAM, value_parser = clap::value_parser!(u32).range(1..=MAX_UDP_DATAGRAM as i64))]
    pub udp_max_datagram: u32,

    /// Microseconds a worker with nothing to do spins, checking for events,
    /// before it sleeps: lower latency at low load, a core kept busy while
    /// traffic trickles. 0 (the default) never spins. io_uring checks shared
    /// memory (the kernel's task-run flag, 5.19+); epoll calls epoll_wait with
    /// a zero timeout
    #[arg(long, value_name = "MICROS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub busy_poll: u32,

    /// io_uring, under load (the last turn of the loop brought 8 or more
    /// receives): completions a worker waits for before it handles them, so
    /// that a burst's echoes leave together; --min-wait bounds the wait. 1
    /// handles whatever a wake-up brings at once. Needs Linux 6.12 (min-wait);
    /// on older kernels the default turns itself off and says so [default: 128]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub wait_batch: Option<u32>,

    /// io_uring: microseconds a loaded worker waits for --wait-batch
    /// completions once the first has arrived [default: 200]
    #[arg(long, value_name = "MICROS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub min_wait: Option<u32>,

    /// io_uring: send zero-copy (SEND_ZC, SENDMSG_ZC) when a send carries at
    /// least BYTES: the kernel pins the buffer's pages instead of copying
    /// them. It pays on NIC hosts for large messages (above ~3 KiB since
    /// Linux 6.10); loopback and veth copy anyway (the `zc_copied` count
    /// says so). Needs Linux 6.2. Off by default
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub send_zc: Option<u32>,

    /// Print a stats line (connections, bytes) every SECONDS
    #[arg(long, value_name = "SECONDS", value_parser = crate::cli::seconds(0.01, 86400.0))]
    pub stats: Option<Duration>,

    /// Also print each worker's counters (a `stats worker=I cpu=C ...` line
    /// per worker after each --stats line, and per worker at stop), so an
    /// imbalance between workers is visible
    #[arg(long)]
    pub stats_per_worker: bool,

    /// Print nothing but errors
    #[arg(short, long)]
    pub quiet: bool,
}

impl ServerArgs {
    /// Cross-flag checks clap cannot express; the error names the flags.
    pub fn into_config(self) -> Result<Config, String> {
        if self.sq_entries > self.cq_entries {
            return Err(format!(
                "--sq-entries ({}) must not exceed --cq-entries ({})",
                self.sq_entries, self.cq_entries
            ));
        }
        if self.udp && matches!(self.backend, BackendArg::TokioUring) {
            return Err(
                "--udp is served by the uring and epoll backends, not --backend tokio-uring".into(),
            );
        }
        if self.busy_poll > 0 && matches!(self.backend, BackendArg::TokioUring) {
            return Err(
                "--busy-poll is done by the uring and epoll backends, not --backend tokio-uring (its runtime owns the wait)"
                    .into(),
            );
        }
        if self.send_zc.is_some() && !matches!(self.backend, BackendArg::Uring) {
            return Err("--send-zc is io_uring's zero-copy send: --backend uring only".into());
        }
        let wait = self.wait_batch()?;
        let wait_explicit = self.wait_explicit();
        if self.conn_buffers > self.buf_count {
            return Err(format!(
                "--conn-buffers ({}) must not exceed --buf-count ({}): one connection could hold the whole pool",
                self.conn_buffers, self.buf_count
            ));
        }
        let workers = self.workers()?;
        Ok(Config {
            addr: self.addr.ip,
            port: self.port,
            workers,
            cpus: self.cpus,
            backend: match self.backend {
                BackendArg::Uring => Backend::Uring,
                BackendArg::Epoll => Backend::Epoll,
                BackendArg::TokioUring => Backend::TokioUring,
            },
            buf_size_bytes: self.buf_size,
            buf_count: self.buf_count,
            conn_buffers: self.conn_buffers,
            max_conns: self.max_conns as usize,
            backlog: self.backlog,
            drain_timeout: self.drain_timeout,
            recv_bundle: !self.no_recv_bundle,
            send_zc: self.send_zc,
            sq_entries: self.sq_entries,
            cq_entries: self.cq_entries,
            udp: self.udp,
            udp_max_datagram: self.udp_max_datagram,
            busy_poll: Duration::from_micros(u64::from(self.busy_poll)),
            wait,
            wait_explicit,
            stats_interval: self.stats,
            stats_per_worker: self.stats_per_worker,
            quiet: self.quiet,
        })
    }
}

impl ServerArgs {
    /// --wait-batch and --min-wait: io_uring waits, so an error with another
    /// backend; a --min-wait with --wait-batch 1 would do nothing, so an error.
    fn wait_batch(&self) -> Result<WaitBatch, String> {
        if self.wait_explicit() && !matches!(self.backend, BackendArg::Uring) {
            return Err(
                "--wait-batch and --min-wait shape io_uring waits: --backend uring only".into(),
            );
        }
        let default = WaitBatch::default();
        let batch = self.wait_batch.unwrap_or(default.batch);
        if batch == 1 && self.min_wait.is_some() {
            return Err(
                "--min-wait bounds the wait for a batch, and --wait-batch 1 asks for none: \
                        give --wait-batch 2..=4096, or leave --min-wait out"
                    .into(),
            );
        }
        let min_wait = self
            .min_wait
            .map_or(default.min_wait, |us| Duration::from_micros(u64::from(us)));
        Ok(WaitBatch { batch, min_wait })
    }

    fn wait_explicit(&self) -> bool {
        self.wait_batch.is_some() || self.min_wait.is_some()
    }

    /// --workers, defaulting to the --cpus list's length. With both, the
    /// workers must fill the listed CPUs evenly: fewer would leave a listed
    /// CPU without a worker, and an uneven count would load some CPUs more.
    fn workers(&self) -> Result<usize, String> {
        match (&self.cpus, self.workers) {
            (None, None) => Ok(crate::sys::available_cpus()),
            (None, Some(w)) => Ok(w as usize),
            (Some(cpus), None) => Ok(cpus.len()),
            (Some(cpus), Some(w)) if (w as usize).is_multiple_of(cpus.len()) => Ok(w as usize),
            (Some(cpus), Some(w)) => Err(format!(
                "--workers {w} conflicts with --cpus {cpus} ({} CPUs): give one worker per CPU \
                 (leave --workers out) or a multiple of {}",
                cpus.len(),
                cpus.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerArgs, String> {
        ServerArgs::try_parse_from(std::iter::once("uring-echo").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = parse(&[]).unwrap().into_config().unwrap();
        assert_eq!(c.port, 9999);
        assert_eq!(c.backend, Backend::Uring);
        assert_eq!(c.buf_count, 4096);
        assert!(c.workers >= 1);
    }

    #[test]
    fn out_of_range_values_name_the_flag_and_range() {
        let e = parse(&["--port", "70000"]).unwrap_err();
        assert!(e.contains("--port") && e.contains("0..=65535"), "{e}");
        let e = parse(&["--workers", "0"]).unwrap_err();
        assert!(e.contains("--workers") && e.contains("1..=1024"), "{e}");
        let e = parse(&["--buf-count", "1000"]).unwrap_err();
        assert!(
            e.contains("--buf-count") && e.contains("power of two"),
            "{e}"
        );
    }

    #[test]
    fn workers_default_to_the_cpu_list_and_must_fill_it_evenly() {
        let c = parse(&["--cpus", "0-3,8"]).unwrap().into_config().unwrap();
        assert_eq!(c.workers, 5);
        assert_eq!(c.cpus.unwrap().cpus(), [0, 1, 2, 3, 8]);
        let c = parse(&["--cpus", "0,1", "--workers", "4"]).unwrap();
        assert_eq!(c.into_config().unwrap().workers, 4);
        for workers in ["1", "3"] {
            let e = parse(&["--cpus", "0,1", "--workers", workers])
                .unwrap()
                .into_config()
                .unwrap_err();
            assert!(e.contains("--workers") && e.contains("--cpus 0-1"), "{e}");
        }
    }

    #[test]
    fn a_bad_cpu_list_names_the_flag() {
        for bad in ["", "x", "3-1", "0,0", "4096"] {
            let e = parse(&["--cpus", bad]).unwrap_err();
            assert!(e.contains("--cpus"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_wait_batch_defaults_on_and_says_when_it_was_asked_for() {
        let c = parse(&[]).unwrap().into_config().unwrap();
        assert_eq!(c.wait, WaitBatch::default());
        assert!(c.wait.batch > 1 && !c.wait.min_wait.is_zero() && !c.wait_explicit);
        let c = parse(&["--wait-batch", "1"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!((c.wait.batch, c.wait_explicit), (1, true));
        let c = parse(&["--min-wait", "50"]).unwrap().into_config().unwrap();
        assert_eq!(c.wait.batch, WaitBatch::default().batch);
        assert_eq!(c.wait.min_wait, Duration::from_micros(50));
        // epoll has no such wait: its default is simply not used.
        let c = parse(&["--backend", "epoll"])
            .unwrap()
            .into_config()
            .unwrap();
        assert_eq!(c.backend, Backend::Epoll);
    }

    #[test]
    fn a_budget_larger_than_the_pool_is_refused() {
        let e = parse(&["--buf-count", "16", "--conn-buffers", "32"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(
            e.contains("--conn-buffers") && e.contains("--buf-count"),
            "{e}"
        );
    }
}
