//! The result of a run: the JSON document (`docs/loadgen-json.md` is its
//! schema), built from the threads' results, its human summary, and the checks
//! that decide the exit status. Serialising histograms and merging reports from
//! several load hosts live in [`super::merge`]. No I/O here.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::diagnosis::{diagnose, hint_in_context};
use super::histogram::encode_histogram;
use super::stats::add_assign_fields;

/// Bumped when a field changes meaning; `merge` refuses mixed versions.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: u32,
    /// Load hosts (runs) this report sums: 1, or more after `merge`.
    pub hosts: u32,
    pub config: RunConfig,
    pub connections: Connections,
    pub errors: BTreeMap<String, u64>,
    /// Length of the measured part (warm-up excluded), seconds.
    pub duration_s: f64,
    /// The signal that ended the run early ("SIGINT", "SIGTERM"), or null for
    /// a run that went to its end. After `merge`: the first input's.
    #[serde(default)]
    pub interrupted: Option<String>,
    pub messages: Messages,
    pub bytes: Bytes,
    pub throughput: Throughput,
    /// Open loop only: the asked rate and the achieved one (messages echoed per second).
    pub rate: Option<Rate>,
    pub latency_us: Percentiles,
    pub connect_us: Percentiles,
    /// `--messages-per-conn` runs: from each measured connection's (intended)
    /// connect start to its last echo. All 0 otherwise.
    #[serde(default)]
    pub transaction_us: Percentiles,
    /// Open loop: how late loadgen itself took each measured message (with
    /// `--messages-per-conn`, each connection) from its schedule, after the
    /// due time its latency (its transaction time) counts from:
    /// `--pacing-slack` plus whatever kept loadgen busy. A p99 here near the
    /// latency's p99 means loadgen, not the server, set it. All 0 in closed
    /// loop and in reports from before it.
    #[serde(default)]
    pub schedule_lag_us: Percentiles,
    pub verify: Verify,
    /// `--udp` runs only (null for TCP): what became of the datagrams.
    #[serde(default)]
    pub udp: Option<Udp>,
    pub cpu: Cpu,
    /// When the load phase began (null in reports from before `--start-at`).
    #[serde(default)]
    pub start: Option<Start>,
    pub histograms: Histograms,
}

/// The effective configuration (after defaults and automatic adjustments).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunConfig {
    pub target: String,
    pub conns: u64,
    pub threads: u64,
    pub source_addrs: Vec<String>,
    pub connect_rate: u64,
    pub connect_timeout_s: f64,
    /// "closed" or "open".
    pub mode: String,
    pub pipeline: u32,
    pub rate: Option<f64>,
    pub size_min: u32,
    pub size_max: u32,
    pub duration_s: Option<f64>,
    pub messages: Option<u64>,
    pub warmup_s: f64,
    pub drain_timeout_s: f64,
    pub verify: bool,
    /// "tcp" or "udp" (absent in reports from before `--udp`: "tcp").
    #[serde(default = "tcp")]
    pub protocol: String,
    /// `--udp-timeout`, UDP runs only.
    #[serde(default)]
    pub udp_timeout_s: Option<f64>,
    /// `--max-loss`, UDP runs only.
    #[serde(default)]
    pub max_loss: Option<f64>,
    /// `--messages-per-conn`: connection churn; null without it.
    #[serde(default)]
    pub messages_per_conn: Option<u32>,
    /// `--linger0`: connections closed with a reset.
    #[serde(default)]
    pub linger0: bool,
    /// `--pacing-slack` in microseconds, open-loop runs only (null otherwise,
    /// and in reports from before it).
    #[serde(default)]
    pub pacing_slack_us: Option<u32>,
}

fn tcp() -> String {
    "tcp".to_string()
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connections {
    pub requested: u64,
    pub established: u64,
    pub failed: u64,
    /// Established, then ended by an error or by the server before the run ended.
    pub lost: u64,
    /// Of `lost`: ended before the server echoed a byte (closed at accept).
    #[serde(default)]
    pub lost_unanswered: u64,
    /// Established by the kernel and open to the end, but never answered: the
    /// server never accepted them (its accept queue). Not held.
    #[serde(default)]
    pub unanswered: u64,
    /// `--messages-per-conn`: measured connections that echoed all their
    /// messages and were closed by loadgen; 0 without churn.
    #[serde(default)]
    pub completed: u64,
}

add_assign_fields!(Connections {
    requested,
    established,
    failed,
    lost,
    lost_unanswered,
    unanswered,
    completed,
});
add_assign_fields!(Messages {
    sent,
    received,
    unfinished,
    abandoned,
});
add_assign_fields!(Bytes { sent, received });

impl Connections {
    /// Connections held to the end, and answered (without churn).
    pub fn held(&self) -> u64 {
        self.established - self.lost - self.unanswered
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Messages {
    pub sent: u64,
    pub received: u64,
    /// Created but not echoed by the end of the drain timeout, on held connections.
    pub unfinished: u64,
    /// Outstanding on connections that were lost.
    pub abandoned: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bytes {
    pub sent: u64,
    pub received: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    pub msgs_per_s: f64,
    pub mib_per_s: f64,
    /// `--messages-per-conn`: `connections.completed / duration_s`; 0 without churn.
    #[serde(default)]
    pub conns_per_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Rate {
    pub asked: f64,
    pub achieved: f64,
}

/// Microseconds; 0 when nothing was recorded.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Udp {
    pub datagrams: Datagrams,
    /// `datagrams.lost / datagrams.sent`, 0 when nothing was sent.
    pub loss_ratio: f64,
}

/// A `--udp` run's datagrams by what became of them: the engine's counts as
/// they are.
pub type Datagrams = super::stats::UdpCounts;

impl Udp {
    pub fn new(datagrams: Datagrams) -> Udp {
        Udp {
            loss_ratio: if datagrams.sent == 0 {
                0.0
            } else {
                datagrams.lost as f64 / datagrams.sent as f64
            },
            datagrams,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verify {
    pub enabled: bool,
    /// Messages whose echo differed from what was sent.
    pub mismatches: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Cpu {
    /// loadgen's own CPU time during the load phase (warm-up and drain included).
    pub user_s: f64,
    pub sys_s: f64,
    /// (user + sys) per message echoed in the load phase, nanoseconds.
    pub ns_per_msg: f64,
    /// Messages echoed in the load phase (the divisor of `ns_per_msg`).
    pub msgs: u64,
}

impl Cpu {
    pub fn new(user_s: f64, sys_s: f64, msgs: u64) -> Cpu {
        Cpu {
            user_s,
            sys_s,
            ns_per_msg: if msgs == 0 {
                0.0
            } else {
                ((user_s + sys_s) * 1e9 / msgs as f64 * 10.0).round() / 10.0
            },
            msgs,
        }
    }
}

/// When the load phase (warm-up, then the measured part) began, wall clock,
/// seconds since the UNIX epoch.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Start {
    /// `--start-at`; null without it.
    pub requested: Option<f64>,
    /// When the load began; after a merge, the earliest host's.
    pub actual: f64,
    /// The connections were made only after `requested`, so the load began
    /// late (after a merge: on any host).
    pub late: bool,
    /// After a merge: the latest host's `actual` minus the earliest's, how far
    /// apart the hosts' windows were; 0 for one host.
    pub spread_s: f64,
}

/// hdrhistogram V2 + deflate, base64 (standard alphabet, padded).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Histograms {
    pub latency_us: String,
    pub connect_us: String,
    /// Empty in reports from before `--messages-per-conn`.
    #[serde(default)]
    pub transaction_us: String,
    /// Empty in reports from before `schedule_lag_us`.
    #[serde(default)]
    pub schedule_lag_us: String,
}

/// Everything a run measured, before it becomes a [`Report`].
pub struct Totals {
    pub connections: Connections,
    pub errors: BTreeMap<String, u64>,
    pub duration_s: f64,
    pub counters: super::stats::Counters,
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub transaction: Histogram<u64>,
    pub schedule_lag: Histogram<u64>,
    pub cpu: Cpu,
    /// UDP runs only.
    pub udp: Option<super::stats::UdpCounts>,
    pub start: Start,
}

impl Report {
    pub fn new(config: RunConfig, t: Totals) -> Report {
        let c = &t.counters;
        let throughput = throughput(
            c.msgs_received,
            c.bytes_received,
            t.connections.completed,
            t.duration_s,
        );
        Report {
            schema: SCHEMA_VERSION,
            hosts: 1,
            rate: config.rate.map(|asked| Rate {
                asked,
                achieved: throughput.achieved(config.messages_per_conn.is_some()),
            }),
            verify: Verify {
                enabled: config.verify,
                mismatches: c.mismatches,
            },
            config,
            connections: t.connections,
            errors: t.errors,
            duration_s: t.duration_s,
            interrupted: None,
            messages: Messages {
                sent: c.msgs_sent,
                received: c.msgs_received,
                unfinished: c.unfinished,
                abandoned: c.abandoned,
            },
            bytes: Bytes {
                sent: c.bytes_sent,
                received: c.bytes_received,
            },
            throughput,
            udp: t.udp.map(Udp::new),
            latency_us: Percentiles::of(&t.latency),
            connect_us: Percentiles::of(&t.connect),
            transaction_us: Percentiles::of(&t.transaction),
            schedule_lag_us: Percentiles::of(&t.schedule_lag),
            cpu: t.cpu,
            start: Some(t.start),
            histograms: Histograms {
                latency_us: encode_histogram(&t.latency),
                connect_us: encode_histogram(&t.connect),
                transaction_us: encode_histogram(&t.transaction),
                schedule_lag_us: encode_histogram(&t.schedule_lag),
            },
        }
    }

    /// The exit status of an interrupted run: 128 + the signal's number, as a
    /// shell reports a process killed by it (130 for SIGINT, 143 for SIGTERM).
    pub fn interrupted_exit_code(&self) -> Option<u8> {
        match self.interrupted.as_deref()? {
            "SIGINT" => Some(128 + libc::SIGINT as u8),
            "SIGTERM" => Some(128 + libc::SIGTERM as u8),
            _ => Some(1),
        }
    }

    /// Why this run must exit non-zero, one line each; empty when it passed.
    pub fn failures(&self, allow_partial: bool) -> Vec<String> {
        let mut out = Vec::new();
        if self.verify.mismatches > 0 {
            out.push(format!(
                "{} echoed messages differed from what was sent",
                self.verify.mismatches
            ));
        }
        if self.messages.unfinished > 0 {
            out.push(format!(
                "{} messages on held connections were never echoed (lost by the server, \
                 or it stopped answering)",
                self.messages.unfinished
            ));
        }
        if let Some(u) = &self.udp {
            let most = self.config.max_loss.unwrap_or(0.0);
            if u.loss_ratio > most {
                out.push(format!(
                    "{} of {} datagrams lost ({:.2}%), more than --max-loss {most} allows",
                    u.datagrams.lost,
                    u.datagrams.sent,
                    u.loss_ratio * 100.0
                ));
            }
        }
        let c = &self.connections;
        if self.config.messages_per_conn.is_some() {
            if (c.failed > 0 || c.lost > 0) && !allow_partial {
                out.push(format!(
                    "{} connections failed to connect and {} were lost mid-way{} (--allow-partial accepts this)",
                    c.failed,
                    c.lost,
                    self.limit_note()
                ));
            }
            return out;
        }
        let held = self.connections.held();
        if held < self.connections.requested && !allow_partial {
            out.push(format!(
                "held {held} of {} connections: {} (--allow-partial accepts this)",
                self.connections.requested,
                self.limit_note()
            ));
        }
        out
    }

    /// Why connections were not held: the diagnosis when the counts make one,
    /// else the most frequent error and its knob.
    fn limit_note(&self) -> String {
        if let Some(d) = diagnose(&self.connections, &self.errors) {
            return d;
        }
        match self.errors.iter().max_by_key(|(_, n)| **n) {
            Some((kind, n)) => format!(
                "mostly {kind} x{n}; {}",
                hint_in_context(&self.connections, kind)
            ),
            None => "no error was seen".to_string(),
        }
    }

    /// The human summary, several lines.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let c = &self.connections;
        if let Some(n) = self.config.messages_per_conn {
            let _ = writeln!(
                s,
                "loadgen: {} {} churn -> {}: {} connections of {n} messages completed, {:.0} conns/s \
                 ({} open at once; {} established, {} failed, {} lost in all)",
                self.config.protocol,
                self.config.mode,
                self.config.target,
                c.completed,
                self.throughput.conns_per_s,
                c.requested,
                c.established,
                c.failed,
                c.lost
            );
        } else {
            let _ = writeln!(
                s,
                "loadgen: {} {} -> {}: {} {} held of {} ({} established, {} failed, {} lost, {} never answered)",
                self.config.protocol,
                self.config.mode,
                self.config.target,
                c.held(),
                if self.udp.is_some() {
                    "flows"
                } else {
                    "connections"
                },
                c.requested,
                c.established,
                c.failed,
                c.lost,
                c.unanswered
            );
        }
        for (kind, n) in &self.errors {
            let hint = hint_in_context(c, kind);
            let _ = writeln!(s, "  error {kind}: {n} ({hint})");
        }
        if c.held() < c.requested
            && let Some(d) = diagnose(c, &self.errors)
        {
            let _ = writeln!(s, "  diagnosis: {d}");
        }
        let _ = writeln!(
            s,
            "  {:.2} s: {} msgs sent, {} echoed, {} unfinished, {} abandoned; {:.0} msgs/s, {:.2} MiB/s",
            self.duration_s,
            self.messages.sent,
            self.messages.received,
            self.messages.unfinished,
            self.messages.abandoned,
            self.throughput.msgs_per_s,
            self.throughput.mib_per_s
        );
        if let Some(u) = &self.udp {
            let d = &u.datagrams;
            let _ = writeln!(
                s,
                "  udp: {} datagrams sent, {} echoed, {} lost ({:.3}%), {} duplicated, {} reordered, {} late",
                d.sent,
                d.received,
                d.lost,
                u.loss_ratio * 100.0,
                d.duplicated,
                d.reordered,
                d.late
            );
        }
        if let Some(r) = &self.rate {
            let _ = writeln!(
                s,
                "  rate: asked {:.0}/s, achieved {:.0}/s ({:+.1}%)",
                r.asked,
                r.achieved,
                (r.achieved / r.asked - 1.0) * 100.0
            );
        }
        let l = &self.latency_us;
        let _ = writeln!(
            s,
            "  latency us: p50 {} p90 {} p99 {} p99.9 {} max {} (mean {:.1})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if self.rate.is_some() {
            let g = &self.schedule_lag_us;
            let _ = writeln!(
                s,
                "  schedule lag us (loadgen's own lateness, in the latency above): p50 {} p99 {} max {}",
                g.p50, g.p99, g.max
            );
        }
        let k = &self.connect_us;
        let _ = writeln!(
            s,
            "  connect us: p50 {} p90 {} p99 {} max {}",
            k.p50, k.p90, k.p99, k.max
        );
        if self.config.messages_per_conn.is_some() {
            let t = &self.transaction_us;
            let _ = writeln!(
                s,
                "  transaction us (connect start to last echo): p50 {} p90 {} p99 {} p99.9 {} max {}",
                t.p50, t.p90, t.p99, t.p999, t.max
            );
        }
        let _ = writeln!(
            s,
            "  verify: {}; loadgen cpu: user {:.2} s, sys {:.2} s, {:.0} ns/msg",
            if self.verify.enabled {
                format!("{} mismatches", self.verify.mismatches)
            } else {
                "off".to_string()
            },
            self.cpu.user_s,
            self.cpu.sys_s,
            self.cpu.ns_per_msg
        );
        s
    }
}

impl Throughput {
    /// What `--rate` asked for: connections per second with churn, else messages.
    pub fn achieved(&self, churn: bool) -> f64 {
        if churn {
            self.conns_per_s
        } else {
            self.msgs_per_s
        }
    }
}

pub fn throughput(msgs: u64, bytes: u64, conns: u64, duration_s: f64) -> Throughput {
    if duration_s <= 0.0 {
        return Throughput::default();
    }
    Throughput {
        msgs_per_s: msgs as f64 / duration_s,
        mib_per_s: bytes as f64 / duration_s / (1 << 20) as f64,
        conns_per_s: conns as f64 / duration_s,
    }
}
