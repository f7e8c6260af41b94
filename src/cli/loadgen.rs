//! `loadgen`'s flags, and their conversion to a `Config`: value parsers that
//! name the flag and the accepted range, and the cross-flag checks clap cannot
//! express. Resolving the target is left to the run (it is I/O).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::loadgen::config::{Churn, Config, Load, MAX_MESSAGE_BYTES, SizeRange, Stop, Udp};
use crate::loadgen::datagram::{HEADER_BYTES, max_datagram_bytes};

/// The fastest round trip a pipeline slot is assumed to manage (10 µs): an
/// open-loop rate that needs faster ones per connection cannot be met.
const MAX_MSGS_PER_SLOT_PER_S: f64 = 100_000.0;

/// `--pacing-slack` unless given. On a 2-vCPU VM (netns, 1,000 connections,
/// 135k msgs/s, medians of 3 interleaved runs) it took loadgen's CPU from 94 %
/// to 35 % busy (4.8 against 7.4 µs a message) and the p99 from 1,156 to 622
/// µs; its median lateness went from 14 to 24 µs.
const DEFAULT_PACING_SLACK_US: u32 = 20;

/// Load generator for uring-echo: many connections, closed or open loop, every
/// echoed byte verified, latency percentiles and its own CPU per message. With
/// --udp: datagrams over UDP flows, open loop, loss, duplication and
/// reordering counted.
///
/// Exit status: 0 on success; 1 on a failed run (a mismatched echo, an echo that
/// never came, fewer connections held than asked, no connection at all, UDP
/// loss above --max-loss); 2 on bad flags or a --json path that cannot be
/// written (checked before the run); 130 (SIGINT) or 143 (SIGTERM) for a run
/// a signal stopped early, after its report ("interrupted" in the JSON).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, args_conflicts_with_subcommands = true)]
pub struct LoadgenArgs {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Combine JSON results of runs from several load hosts (sums counters and
    /// histograms, recomputes percentiles and throughput) and print the result;
    /// warns when inputs differ in mode, message size or duration
    Merge {
        /// Result files written by `loadgen --json`; `-` reads one from standard input
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Server to load, HOST:PORT: HOST an IP address (IPv6 in brackets:
    /// `[::1]:9999`) or a host name, resolved once at start
    #[arg(long, default_value = "127.0.0.1:9999", value_parser = host_port)]
    pub target: String,

    /// Connections to open and hold (with --udp: UDP flows, one socket each)
    #[arg(short, long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub conns: u32,

    /// Engine threads, one io_uring each [default: number of CPUs]. Raised, with
    /// a note, when --conns needs more: a ring holds at most the open-files
    /// limit's worth of connections
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Pin thread i to the i-th CPU of LIST (`8-15`, `0,2,4`), round-robin when
    /// there are more threads than CPUs; --threads defaults to the list's length
    #[arg(long, value_name = "LIST", value_parser = crate::cli::cpu_list)]
    pub cpus: Option<crate::cpus::CpuList>,

    /// Source addresses to spread connections over, comma-separated, of the
    /// target's family [default: 127.0.0.1, 127.0.0.2, ... (one per 10,000
    /// connections) for an IPv4 loopback target; none otherwise. An IPv6
    /// target gets no automatic spreading: ::1 is the only IPv6 loopback
    /// address, so one source address's ~28,000 ephemeral ports cap the
    /// connections to one target unless addresses configured on this host are
    /// given here]
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Vec<IpAddr>,

    /// Connections opened per second during the ramp. The default keeps a
    /// server's accept backlog (4096) from overflowing unless it stalls for
    /// 200 ms, and opens 50,000 connections in 2.5 s
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub connect_rate: u32,

    /// Seconds a connect may take before it counts as failed
    #[arg(long, default_value = "5", value_parser = crate::cli::seconds(0.001, 3600.0))]
    pub connect_timeout: Duration,

    /// Messages in flight per connection (closed loop: kept in flight;
    /// open loop: the most on the wire, later ones wait and their wait counts).
    /// Not with --udp
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub pipeline: Option<u32>,

    /// Open loop: messages per second, all connections together; latency is
    /// measured from each message's intended send time. With
    /// --messages-per-conn: new connections per second instead
    #[arg(short, long, value_name = "MSGS_PER_SEC", value_parser = rate)]
    pub rate: Option<f64>,

    /// Open loop: how many microseconds after a message's due time loadgen may
    /// wake to send it, so that messages due close together leave in one batch
    /// (one wake-up, and one interrupt of the server's CPU, for several). Each
    /// message's latency (with --messages-per-conn, each connection's
    /// transaction time) still counts from its own due time, so the slack shows
    /// in it, by at most its length; 0 wakes for every due time, which
    /// costs loadgen several times the CPU per message (0..=1000) [default: 20]
    #[arg(long, value_name = "MICROS", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub pacing_slack: Option<u32>,

    /// Message size in bytes, or an inclusive range MIN..MAX drawn uniformly.
    /// With --udp: the whole datagram, 16..=65507 (IPv4) or 16..=65527 (IPv6)
    #[arg(short, long, default_value = "64", value_parser = size_range)]
    pub size: SizeRange,

    /// Seconds of measured load (after the warm-up) [default: 10]
    #[arg(short, long, value_parser = crate::cli::seconds(0.01, 86400.0), conflicts_with = "messages")]
    pub duration: Option<Duration>,

    /// Stop after this many messages echoed in total (after the warm-up)
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: Option<u64>,

    /// Seconds of load before measuring starts, excluded from the results
    #[arg(long, default_value = "0", value_parser = crate::cli::seconds(0.0, 3600.0))]
    pub warmup: Duration,

    /// After the measured part, seconds to wait for echoes still in flight;
    /// messages on held connections not echoed by then fail the run (TCP;
    /// --udp waits --udp-timeout instead)
    #[arg(long, default_value = "5", value_parser = crate::cli::seconds(0.0, 3600.0))]
    pub drain_timeout: Duration,

    /// Do not check echoed bytes against what was sent
    #[arg(long)]
    pub no_verify: bool,

    /// Exit 0 even when fewer connections than --conns were held (with
    /// --messages-per-conn: even when connections failed or were lost)
    #[arg(long)]
    pub allow_partial: bool,

    /// Connection churn: each connection sends N messages (closed loop, or
    /// --pipeline in flight), checks their echoes, closes, and is replaced by
    /// a new one, so --conns stay open at once. With --rate, new connections
    /// are due at that many per second (open loop; a connection's latency
    /// counts from its due time). Reports connections per second, connect and
    /// transaction latency. loadgen closes first, so the TIME_WAIT is its own
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub messages_per_conn: Option<u32>,

    /// Close connections with a reset (SO_LINGER 0) instead of a FIN: no
    /// TIME_WAIT is left on either side, and the server counts an error per
    /// connection it sees reset
    #[arg(long)]
    pub linger0: bool,

    /// UDP instead of TCP: --conns connected UDP sockets ("flows") send
    /// datagrams open loop at --rate (required), each carrying a 16-byte
    /// header (flow, length, sequence number) and payload derived from it, so
    /// every echo is verified and loss, duplication and reordering are
    /// counted. The server must run with --udp
    #[arg(long)]
    pub udp: bool,

    /// With --udp: seconds a datagram may take to be echoed before it counts
    /// as lost; the run ends at most this long after the last send [default: 1]
    #[arg(long, value_parser = crate::cli::seconds(0.001, 3600.0))]
    pub udp_timeout: Option<Duration>,

    /// With --udp: the largest fraction of datagrams that may be lost (0..=1)
    /// before the run fails; 0 fails on any loss, 1 accepts any
    #[arg(long, value_name = "FRACTION", value_parser = fraction)]
    pub max_loss: Option<f64>,

    /// Begin the load (warm-up, then the measured part) at this wall-clock
    /// instant, in seconds since the UNIX epoch (a fraction allowed: `date
    /// +%s.%N`), once the connections are made. Load hosts given the same
    /// instant, with clocks in sync, measure the same window; `loadgen merge`
    /// then sums like with like. If the connections are not all made by
    /// then, the load starts when they are, with a warning, and the JSON says
    /// so (`start.late`). Within a day of now
    #[arg(long, value_name = "UNIX_SECONDS", value_parser = start_at)]
    pub start_at: Option<f64>,

    /// Write the result as JSON to PATH (`-` for stdout; the summary then goes to stderr)
    #[arg(long, value_name = "PATH")]
    pub json: Option<String>,

    /// No progress lines and no summary (errors and --json only)
    #[arg(short, long)]
    pub quiet: bool,
}

impl RunArgs {
    /// Cross-flag checks; the error names the flags.
    pub fn into_config(self) -> Result<Config, String> {
        let udp = self.udp_config()?;
        let churn = self.churn_config(udp.is_some())?;
        let load = match self.rate {
            None => Load::Closed {
                pipeline: self.pipeline.unwrap_or(1),
            },
            Some(rate) if churn.is_some() => {
                let n = churn.map_or(1, |c| c.messages_per_conn);
                let per_slot = rate / f64::from(self.conns);
                let most = MAX_MSGS_PER_SLOT_PER_S / f64::from(n + 1);
                if per_slot > most {
                    return Err(format!(
                        "--rate {rate} connections/s over --conns {} is {per_slot:.0} connections/s \
                         per slot, more than one slot can carry ({most:.0}/s: a connect and \
                         --messages-per-conn {n} round trips of 10 us each): raise --conns",
                        self.conns
                    ));
                }
                Load::Open {
                    rate,
                    pipeline: self.pipeline.unwrap_or(1),
                }
            }
            Some(rate) => {
                let pipeline = self.pipeline.unwrap_or(1);
                let per_conn = rate / f64::from(self.conns);
                let most = f64::from(pipeline) * MAX_MSGS_PER_SLOT_PER_S;
                if per_conn > most && udp.is_some() {
                    return Err(format!(
                        "--rate {rate} over --conns {} is {per_conn:.0} datagrams/s per --udp flow, \
                         more than one flow can carry ({most:.0}/s at a 10 us send): raise --conns",
                        self.conns
                    ));
                }
                if per_conn > most {
                    return Err(format!(
                        "--rate {rate} over --conns {} is {per_conn:.0} msgs/s per connection, more than \
                         --pipeline {pipeline} can carry ({most:.0}/s at a 10 us round trip): raise --conns or --pipeline",
                        self.conns
                    ));
                }
                Load::Open { rate, pipeline }
            }
        };
        if self.rate.is_none() && self.pacing_slack.is_some() {
            return Err("--pacing-slack applies to open-loop runs only (with --rate)".into());
        }
        let pacing_slack = Duration::from_micros(u64::from(
            self.pacing_slack.unwrap_or(DEFAULT_PACING_SLACK_US),
        ));
        let stop = match (self.duration, self.messages) {
            (_, Some(n)) => Stop::Messages(n),
            (Some(d), None) => Stop::After(d),
            (None, None) => Stop::After(Duration::from_secs(10)),
        };
        Ok(Config {
            target: self.target,
            conns: self.conns,
            threads: self
                .threads
                .map(|t| t as usize)
                .or_else(|| self.cpus.as_ref().map(|c| c.len())),
            cpus: self.cpus,
            source_addrs: self.source_addrs,
            connect_rate: self.connect_rate,
            connect_timeout: self.connect_timeout,
            load,
            size: self.size,
            stop,
            warmup: self.warmup,
            verify: !self.no_verify,
            allow_partial: self.allow_partial,
            quiet: self.quiet,
            drain_timeout: self.drain_timeout,
            pacing_slack,
            start_at: self.start_at,
            udp,
            churn,
            linger0: self.linger0,
        })
    }

    /// The --messages-per-conn settings, and what they exclude.
    fn churn_config(&self, udp: bool) -> Result<Option<Churn>, String> {
        let Some(n) = self.messages_per_conn else {
            return Ok(None);
        };
        if udp {
            return Err(format!(
                "--messages-per-conn {n} has no meaning with --udp: a UDP flow has no connection to open and close"
            ));
        }
        if let Some(m) = self.messages
            && !m.is_multiple_of(u64::from(n))
        {
            return Err(format!(
                "--messages {m} is not a multiple of --messages-per-conn {n}: every connection \
                 sends exactly {n}, so the run would stop mid-connection"
            ));
        }
        Ok(Some(Churn {
            messages_per_conn: n,
        }))
    }

    /// The --udp settings, and the flags that make no sense with or without it.
    fn udp_config(&self) -> Result<Option<Udp>, String> {
        if !self.udp {
            if self.max_loss.is_some() {
                return Err("--max-loss applies to --udp runs only".into());
            }
            if self.udp_timeout.is_some() {
                return Err("--udp-timeout applies to --udp runs only".into());
            }
            return Ok(None);
        }
        if self.rate.is_none() {
            return Err(
                "--udp needs --rate: UDP load is open loop (datagrams per second, all flows together)"
                    .into(),
            );
        }
        if let Some(p) = self.pipeline {
            return Err(format!(
                "--pipeline {p} has no meaning with --udp: datagrams go out on the --rate schedule, \
                 each on its own"
            ));
        }
        if self.size.min < HEADER_BYTES {
            return Err(format!(
                "--size {} is below the {HEADER_BYTES}-byte header every --udp datagram carries \
                 (flow, length, sequence number)",
                self.size.min
            ));
        }
        let ipv6 = target_is_ipv6(&self.target);
        let most = max_datagram_bytes(ipv6);
        if self.size.max > most {
            return Err(format!(
                "--size {} is more than the largest UDP datagram over {} (--udp, --target {}): {most} bytes",
                self.size.max,
                if ipv6 { "IPv6" } else { "IPv4" },
                self.target
            ));
        }
        Ok(Some(Udp {
            timeout: self.udp_timeout.unwrap_or(Duration::from_secs(1)),
            max_loss: self.max_loss.unwrap_or(0.0),
        }))
    }
}

/// Whether `--target` is IPv6: from the literal, or else from resolving it
/// (only for the size limit; a name that does not resolve is the run's error).
fn target_is_ipv6(target: &str) -> bool {
    use std::net::{SocketAddr, ToSocketAddrs};
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return addr.is_ipv6();
    }
    target
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| a.is_ipv6())
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a fraction in 0..=1 (0.1 is 10%)")),
    }
}

/// `HOST:PORT` with a port in 1..=65535; the host is resolved later.
fn host_port(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("'{s}' has no host (expected HOST:PORT)"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("'{port}' is not a port in 1..=65535")),
    }
}

/// The furthest `--start-at` may lie from now, either way: further is a
/// mistake (milliseconds for seconds, a stale script), not a plan.
const START_AT_WITHIN_S: f64 = 86_400.0;

/// `--start-at`: UNIX seconds within [`START_AT_WITHIN_S`] of the clock now.
fn start_at(s: &str) -> Result<f64, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    start_at_near(s, now)
}

fn start_at_near(s: &str, now: f64) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| {
        format!(
            "'{s}' is not a number (expected seconds since the UNIX epoch, e.g. $(date +%s) + 5)"
        )
    })?;
    if !v.is_finite() || (v - now).abs() > START_AT_WITHIN_S {
        return Err(format!(
            "{v} is not within a day of now ({now:.0} seconds since the UNIX epoch)"
        ));
    }
    Ok(v)
}

fn rate(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number (expected msgs/s in 1..=1e9)"))?;
    if !v.is_finite() || !(1.0..=1e9).contains(&v) {
        return Err(format!("{v} is not in 1..=1e9 msgs/s"));
    }
    Ok(v)
}

fn size_range(s: &str) -> Result<SizeRange, String> {
    let max_ok = MAX_MESSAGE_BYTES;
    let one = |t: &str| -> Result<u32, String> {
        let v: u32 = t
            .trim()
            .parse()
            .map_err(|_| format!("'{t}' is not a size in bytes (expected 1..={max_ok})"))?;
        if v == 0 || v > max_ok {
            return Err(format!("{v} is not in 1..={max_ok} bytes"));
        }
        Ok(v)
    };
    let (min, max) = match s.split_once("..") {
        Some((a, b)) => (one(a)?, one(b.trim_start_matches('='))?),
        None => {
            let v = one(s)?;
            (v, v)
        }
    };
    if min > max {
        return Err(format!("{min}..{max} is empty (MIN must not exceed MAX)"));
    }
    Ok(SizeRange { min, max })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<LoadgenArgs, String> {
        LoadgenArgs::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    fn config(args: &[&str]) -> Result<Config, String> {
        parse(args)?.run.into_config()
    }

    #[test]
    fn defaults_are_a_ten_second_closed_loop_against_port_9999() {
        let c = config(&[]).unwrap();
        assert_eq!(c.target, "127.0.0.1:9999");
        assert_eq!(c.load, Load::Closed { pipeline: 1 });
        assert_eq!(c.stop, Stop::After(Duration::from_secs(10)));
        assert_eq!(c.size, SizeRange { min: 64, max: 64 });
        assert_eq!(c.connect_rate, 20_000);
        assert!(c.verify);
    }

    #[test]
    fn zero_connections_names_the_flag_and_range() {
        let e = parse(&["--conns", "0"]).unwrap_err();
        assert!(e.contains("--conns") && e.contains("1..=10000000"), "{e}");
    }

    #[test]
    fn a_size_range_parses_and_an_empty_one_is_refused() {
        let c = config(&["--size", "64..1024"]).unwrap();
        assert_eq!(c.size, SizeRange { min: 64, max: 1024 });
        let e = parse(&["--size", "1024..64"]).unwrap_err();
        assert!(e.contains("--size") && e.contains("empty"), "{e}");
        let e = parse(&["--size", "0"]).unwrap_err();
        assert!(e.contains("--size") && e.contains("1..="), "{e}");
    }

    #[test]
    fn a_malformed_target_names_the_flag() {
        for bad in ["localhost", "127.0.0.1:0", "127.0.0.1:99999", ":80"] {
            let e = parse(&["--target", bad]).unwrap_err();
            assert!(e.contains("--target"), "{bad}: {e}");
        }
        assert!(parse(&["--target", "[::1]:9999"]).is_ok());
    }

    #[test]
    fn a_rate_turns_on_the_open_loop() {
        let c = config(&["--rate", "20000", "--conns", "50"]).unwrap();
        assert_eq!(
            c.load,
            Load::Open {
                rate: 20000.0,
                pipeline: 1
            }
        );
    }

    #[test]
    fn a_rate_one_pipeline_slot_cannot_carry_is_refused() {
        let e = config(&["--rate", "1000000", "--conns", "1", "--pipeline", "2"]).unwrap_err();
        assert!(e.contains("--rate") && e.contains("--pipeline"), "{e}");
        assert!(config(&["--rate", "1000000", "--conns", "100"]).is_ok());
    }

    #[test]
    fn duration_and_messages_exclude_each_other() {
        let e = parse(&["--duration", "1", "--messages", "5"]).unwrap_err();
        assert!(e.contains("--duration") || e.contains("--messages"), "{e}");
        let c = config(&["--messages", "5"]).unwrap();
        assert_eq!(c.stop, Stop::Messages(5));
    }

    #[test]
    fn merge_takes_files() {
        let a = parse(&["merge", "a.json", "b.json"]).unwrap();
        assert!(matches!(a.command, Some(Command::Merge { files }) if files.len() == 2));
        assert!(parse(&["merge"]).is_err());
    }

    #[test]
    fn udp_needs_a_rate_and_refuses_a_pipeline() {
        let e = config(&["--udp"]).unwrap_err();
        assert!(e.contains("--udp") && e.contains("--rate"), "{e}");
        let e = config(&["--udp", "--rate", "100", "--pipeline", "4"]).unwrap_err();
        assert!(e.contains("--udp") && e.contains("--pipeline"), "{e}");
        let c = config(&["--udp", "--rate", "100", "--max-loss", "0.2"]).unwrap();
        let udp = c.udp.unwrap();
        assert_eq!(udp.max_loss, 0.2);
        assert_eq!(udp.timeout, Duration::from_secs(1));
        assert!(matches!(c.load, Load::Open { rate: 100.0, .. }));
        let e = config(&["--udp", "--rate", "1000000", "--conns", "1"]).unwrap_err();
        assert!(e.contains("--udp") && e.contains("raise --conns"), "{e}");
    }

    #[test]
    fn udp_sizes_must_hold_the_header_and_fit_the_family() {
        let e = config(&["--udp", "--rate", "100", "--size", "8..64"]).unwrap_err();
        assert!(e.contains("--size") && e.contains("16-byte header"), "{e}");
        let e = config(&["--udp", "--rate", "100", "--size", "65508"]).unwrap_err();
        assert!(e.contains("--size") && e.contains("65507"), "{e}");
        let v6 = ["--udp", "--rate", "100", "--target", "[::1]:9999"];
        assert!(config(&[&v6[..], &["--size", "65527"]].concat()).is_ok());
        let e = config(&[&v6[..], &["--size", "65528"]].concat()).unwrap_err();
        assert!(e.contains("IPv6") && e.contains("65527"), "{e}");
    }

    #[test]
    fn udp_only_flags_need_udp() {
        let e = config(&["--max-loss", "0.1"]).unwrap_err();
        assert!(e.contains("--max-loss") && e.contains("--udp"), "{e}");
        let e = parse(&["--udp", "--max-loss", "2"]).unwrap_err();
        assert!(e.contains("--max-loss") && e.contains("0..=1"), "{e}");
    }

    #[test]
    fn messages_per_conn_turns_on_churn_and_checks_its_partners() {
        let c = config(&["--messages-per-conn", "10", "--messages", "1000"]).unwrap();
        assert_eq!(
            c.churn,
            Some(Churn {
                messages_per_conn: 10
            })
        );
        assert!(!c.linger0);
        assert!(config(&[]).unwrap().churn.is_none());
        let e = parse(&["--messages-per-conn", "0"]).unwrap_err();
        assert!(
            e.contains("--messages-per-conn") && e.contains("1..=1000000"),
            "{e}"
        );
        let e = config(&["--messages-per-conn", "10", "--messages", "1005"]).unwrap_err();
        assert!(
            e.contains("--messages 1005") && e.contains("multiple"),
            "{e}"
        );
        let e = config(&["--messages-per-conn", "1", "--udp", "--rate", "10"]).unwrap_err();
        assert!(
            e.contains("--messages-per-conn") && e.contains("--udp"),
            "{e}"
        );
        let c = config(&["--messages-per-conn", "1", "--rate", "5000", "--linger0"]).unwrap();
        assert!(c.linger0);
        assert!(matches!(c.load, Load::Open { rate: 5000.0, .. }));
        let e = config(&[
            "--messages-per-conn",
            "10",
            "--rate",
            "1000000",
            "--conns",
            "10",
        ])
        .unwrap_err();
        assert!(e.contains("--rate") && e.contains("raise --conns"), "{e}");
    }

    #[test]
    fn source_addresses_are_comma_separated() {
        let c = config(&["--source-addrs", "127.0.0.2,127.0.0.3"]).unwrap();
        assert_eq!(c.source_addrs.len(), 2);
        assert!(
            parse(&["--source-addrs", "nope"])
                .unwrap_err()
                .contains("--source-addrs")
        );
    }

    #[test]
    fn a_start_instant_must_be_seconds_within_a_day_of_now() {
        let now = 1_764_000_000.0;
        assert_eq!(start_at_near("1764000005.25", now), Ok(1_764_000_005.25));
        assert_eq!(start_at_near("1763999990", now), Ok(1_763_999_990.0));
        // Milliseconds for seconds lands far in the future.
        assert!(
            start_at_near("1764000005000", now)
                .unwrap_err()
                .contains("within a day")
        );
        assert!(
            start_at_near("soon", now)
                .unwrap_err()
                .contains("seconds since the UNIX epoch")
        );
        assert!(start_at_near("NaN", now).is_err());
        let err = parse(&["--start-at", "12"]).unwrap_err();
        assert!(err.contains("--start-at"), "{err}");
        assert_eq!(config(&[]).unwrap().start_at, None);
    }
}
