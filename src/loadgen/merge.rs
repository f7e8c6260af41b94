//! Combining runs from several load hosts exactly: `loadgen merge A.json B.json`
//! sums the counters and the latency histograms (carried in each report as
//! hdrhistogram V2 + deflate, base64) and recomputes percentiles, throughput and
//! CPU per message from the sums. Reading files is the binary's job; telling
//! what is not a result and which inputs differ in what they measured is here.
#![forbid(unsafe_code)]

use hdrhistogram::Histogram;

use super::error::Error;
use super::histogram::{decode_histogram, encode_histogram};
use super::report::{
    Bytes, Connections, Cpu, Datagrams, Histograms, Messages, Percentiles, Rate, Report,
    SCHEMA_VERSION, Start, Udp, Verify, throughput,
};
use super::stats::new_histogram;

/// Reads one input of `merge`: `name` (a file, or standard input) names it in
/// the error.
pub fn parse_input(name: &str, text: &str) -> Result<Report, Error> {
    serde_json::from_str::<Report>(text)
        .map_err(|e| Error::Merge(format!("{name} is not a loadgen JSON result: {e}")))
}

/// What makes inputs measure different things, compared with the first one:
/// one warning per differing input, naming both. Merging them is still exact,
/// but the sum mixes loads.
pub fn differences(reports: &[Report], names: &[String]) -> Vec<String> {
    let Some(first) = reports.first() else {
        return Vec::new();
    };
    let describe = |r: &Report| {
        let c = &r.config;
        let length = match (c.duration_s, c.messages) {
            (Some(d), _) => format!("--duration {d}"),
            (None, Some(n)) => format!("--messages {n}"),
            (None, None) => "no stop".to_string(),
        };
        [
            ("mode", c.mode.clone()),
            (
                "message size",
                format!("{}..={} bytes", c.size_min, c.size_max),
            ),
            ("duration", length),
        ]
    };
    let base = describe(first);
    let mut out = Vec::new();
    for (i, r) in reports.iter().enumerate().skip(1) {
        let diffs: Vec<String> = describe(r)
            .iter()
            .zip(&base)
            .filter(|(mine, theirs)| mine.1 != theirs.1)
            .map(|((what, mine), (_, theirs))| format!("{what} {mine}, not {theirs}"))
            .collect();
        if !diffs.is_empty() {
            out.push(format!(
                "{} differs from {}: {}; the merged result mixes different loads",
                names[i],
                names[0],
                diffs.join(", ")
            ));
        }
    }
    out
}

/// [`merge_named`] with inputs named "input 1", "input 2", ...
pub fn merge(reports: &[Report]) -> Result<Report, Error> {
    let names: Vec<String> = (1..=reports.len()).map(|i| format!("input {i}")).collect();
    merge_named(reports, &names)
}

/// The hosts' starts as one: the earliest actual start, the spread to the
/// latest, late if any was; `requested` where every host was given the same
/// instant. `None` when no report says when it started (older loadgens).
fn merge_starts(reports: &[Report]) -> Option<Start> {
    let starts: Vec<&Start> = reports.iter().filter_map(|r| r.start.as_ref()).collect();
    let first = starts.first()?;
    let earliest = starts
        .iter()
        .map(|s| s.actual)
        .fold(f64::INFINITY, f64::min);
    let latest = starts
        .iter()
        .map(|s| s.actual + s.spread_s)
        .fold(f64::NEG_INFINITY, f64::max);
    Some(Start {
        requested: first
            .requested
            .filter(|r| starts.iter().all(|s| s.requested == Some(*r))),
        actual: earliest,
        late: starts.iter().any(|s| s.late),
        spread_s: latest - earliest,
    })
}

/// Sums reports of runs made at the same time from several hosts. Durations
/// may differ slightly: throughput is the summed messages over the longest one.
/// Errors name the input (`names[i]` for `reports[i]`).
pub fn merge_named(reports: &[Report], names: &[String]) -> Result<Report, Error> {
    let first = reports
        .first()
        .ok_or_else(|| Error::Merge("nothing to merge".into()))?;
    let mut latency = new_histogram();
    let mut connect = new_histogram();
    let mut transaction = new_histogram();
    let mut schedule_lag = new_histogram();
    let mut out = Report {
        schema: SCHEMA_VERSION,
        hosts: 0,
        config: first.config.clone(),
        connections: Connections::default(),
        errors: Default::default(),
        duration_s: 0.0,
        interrupted: None,
        messages: Messages::default(),
        bytes: Bytes::default(),
        throughput: Default::default(),
        rate: None,
        latency_us: Percentiles::default(),
        connect_us: Percentiles::default(),
        transaction_us: Percentiles::default(),
        schedule_lag_us: Percentiles::default(),
        verify: Verify {
            enabled: true,
            mismatches: 0,
        },
        udp: None,
        cpu: Cpu::default(),
        start: merge_starts(reports),
        histograms: Histograms::default(),
    };
    let (mut user_s, mut sys_s, mut cpu_msgs) = (0.0, 0.0, 0);
    let mut asked: Option<f64> = None;
    let mut datagrams: Option<Datagrams> = None;
    for (i, r) in reports.iter().enumerate() {
        if r.schema != SCHEMA_VERSION {
            return Err(Error::Merge(format!(
                "{}: schema {} (this loadgen reads {SCHEMA_VERSION})",
                names[i], r.schema
            )));
        }
        if r.udp.is_some() != first.udp.is_some() {
            return Err(Error::Merge(format!(
                "{}: a {} run, {} a {} run: merge one protocol at a time",
                names[i], r.config.protocol, names[0], first.config.protocol
            )));
        }
        if let Some(u) = &r.udp {
            *datagrams.get_or_insert_with(Datagrams::default) += &u.datagrams;
        }
        out.hosts += r.hosts;
        out.connections += &r.connections;
        for (kind, n) in &r.errors {
            *out.errors.entry(kind.clone()).or_default() += n;
        }
        out.duration_s = out.duration_s.max(r.duration_s);
        if out.interrupted.is_none() {
            out.interrupted.clone_from(&r.interrupted);
        }
        out.messages += &r.messages;
        out.bytes += &r.bytes;
        out.verify.enabled &= r.verify.enabled;
        out.verify.mismatches += r.verify.mismatches;
        user_s += r.cpu.user_s;
        sys_s += r.cpu.sys_s;
        cpu_msgs += r.cpu.msgs;
        if let Some(rate) = &r.rate {
            *asked.get_or_insert(0.0) += rate.asked;
        }
        let add = |into: &mut Histogram<u64>, what: &str, s: &str| {
            let at = format!("{}: {what}", names[i]);
            let h = decode_histogram(s).map_err(|e| e.context(&at))?;
            into.add(&h)
                .map_err(|e| Error::Merge(format!("{at}: {e:?}")))
        };
        add(&mut latency, "latency_us", &r.histograms.latency_us)?;
        add(&mut connect, "connect_us", &r.histograms.connect_us)?;
        if !r.histograms.schedule_lag_us.is_empty() {
            add(
                &mut schedule_lag,
                "schedule_lag_us",
                &r.histograms.schedule_lag_us,
            )?;
        }
        if !r.histograms.transaction_us.is_empty() {
            add(
                &mut transaction,
                "transaction_us",
                &r.histograms.transaction_us,
            )?;
        }
    }
    out.config.conns = out.connections.requested;
    out.config.rate = asked;
    out.throughput = throughput(
        out.messages.received,
        out.bytes.received,
        out.connections.completed,
        out.duration_s,
    );
    let churn = out.config.messages_per_conn.is_some();
    out.rate = asked.map(|asked| Rate {
        asked,
        achieved: out.throughput.achieved(churn),
    });
    out.latency_us = Percentiles::of(&latency);
    out.connect_us = Percentiles::of(&connect);
    out.transaction_us = Percentiles::of(&transaction);
    out.schedule_lag_us = Percentiles::of(&schedule_lag);
    out.cpu = Cpu::new(user_s, sys_s, cpu_msgs);
    out.udp = datagrams.map(Udp::new);
    out.histograms = Histograms {
        latency_us: encode_histogram(&latency),
        connect_us: encode_histogram(&connect),
        transaction_us: encode_histogram(&transaction),
        schedule_lag_us: encode_histogram(&schedule_lag),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::report::{RunConfig, Totals};
    use crate::loadgen::stats::Counters;

    fn config() -> RunConfig {
        RunConfig {
            target: "127.0.0.1:9999".into(),
            conns: 10,
            threads: 1,
            source_addrs: vec![],
            connect_rate: 20000,
            connect_timeout_s: 5.0,
            mode: "closed".into(),
            pipeline: 1,
            rate: None,
            size_min: 64,
            size_max: 64,
            duration_s: Some(1.0),
            messages: None,
            warmup_s: 0.0,
            drain_timeout_s: 5.0,
            verify: true,
            protocol: "tcp".into(),
            udp_timeout_s: None,
            max_loss: None,
            messages_per_conn: None,
            linger0: false,
            pacing_slack_us: None,
        }
    }

    fn report(latencies_us: &[u64], duration_s: f64) -> Report {
        let mut latency = new_histogram();
        for &v in latencies_us {
            latency.record(v).unwrap();
        }
        let n = latencies_us.len() as u64;
        let mut schedule_lag = new_histogram();
        for &v in latencies_us {
            schedule_lag.record(v / 10).unwrap();
        }
        Report::new(
            config(),
            Totals {
                connections: Connections {
                    requested: 10,
                    established: 10,
                    failed: 0,
                    lost: 0,
                    ..Default::default()
                },
                errors: [("ECONNRESET".to_string(), 1)].into(),
                duration_s,
                counters: Counters {
                    msgs_sent: n,
                    msgs_received: n,
                    bytes_sent: n * 64,
                    bytes_received: n * 64,
                    mismatches: 0,
                    unfinished: 0,
                    abandoned: 0,
                },
                latency,
                connect: new_histogram(),
                transaction: new_histogram(),
                schedule_lag,
                cpu: Cpu::new(0.5, 0.25, n),
                udp: None,
                start: Start::default(),
            },
        )
    }

    fn udp_report(sent: u64, lost: u64, duplicated: u64, reordered: u64) -> Report {
        let mut r = report(&[10, 20], 1.0);
        r.config.protocol = "udp".into();
        r.udp = Some(Udp::new(Datagrams {
            sent,
            received: sent - lost,
            lost,
            duplicated,
            reordered,
            late: 1,
        }));
        r
    }

    fn started(requested: Option<f64>, actual: f64, late: bool) -> Report {
        let mut r = report(&[10], 1.0);
        r.start = Some(Start {
            requested,
            actual,
            late,
            spread_s: 0.0,
        });
        r
    }

    #[test]
    fn merged_starts_keep_the_earliest_the_spread_and_any_lateness() {
        let at = Some(1_764_000_000.0);
        let a = started(at, 1_764_000_000.25, false);
        let b = started(at, 1_764_000_000.0, false);
        let m = merge(&[a.clone(), b]).unwrap().start.unwrap();
        assert_eq!(m.requested, at);
        assert_eq!(m.actual, 1_764_000_000.0);
        assert_eq!(m.spread_s, 0.25);
        assert!(!m.late);

        let late = started(at, 1_764_000_001.0, true);
        let m2 = merge(&[
            merge(&[a.clone(), late]).unwrap(),
            started(at, 1_763_999_999.5, false),
        ]);
        let m2 = m2.unwrap().start.unwrap();
        assert!(m2.late);
        assert_eq!(m2.actual, 1_763_999_999.5);
        assert_eq!(m2.spread_s, 1.5, "a merged input's own spread counts");

        let other = started(Some(1_764_000_009.0), 1_764_000_009.0, false);
        assert_eq!(
            merge(&[a.clone(), other]).unwrap().start.unwrap().requested,
            None
        );
        let mut old = report(&[10], 1.0);
        old.start = None;
        assert_eq!(merge(&[old.clone()]).unwrap().start, None);
        assert_eq!(
            merge(&[old, a]).unwrap().start.unwrap().actual,
            1_764_000_000.25
        );
    }

    /// A churn run: `completed` connections, each with a transaction time.
    fn churn_report(transactions_us: &[u64], duration_s: f64) -> Report {
        let mut r = report(&[10], duration_s);
        let mut h = new_histogram();
        for &v in transactions_us {
            h.record(v).unwrap();
        }
        r.config.messages_per_conn = Some(1);
        r.config.rate = Some(100.0);
        r.rate = Some(Rate {
            asked: 100.0,
            achieved: 0.0,
        });
        r.connections.completed = transactions_us.len() as u64;
        r.transaction_us = Percentiles::of(&h);
        r.histograms.transaction_us = encode_histogram(&h);
        r
    }

    #[test]
    fn merging_churn_runs_sums_connections_and_transaction_times() {
        let a = churn_report(&[100, 200, 300], 1.0);
        let b = churn_report(&[400; 5], 2.0);
        let m = merge(&[a, b]).unwrap();
        assert_eq!(m.connections.completed, 8);
        assert_eq!(m.throughput.conns_per_s, 4.0, "8 over the longest 2 s");
        assert_eq!(m.transaction_us.count, 8);
        assert_eq!(m.transaction_us.max, 400);
        let rate = m.rate.unwrap();
        assert_eq!(
            (rate.asked, rate.achieved),
            (200.0, 4.0),
            "connections per second"
        );
        // A report from before churn has no transaction histogram: skipped.
        let m = merge(&[report(&[10], 1.0), report(&[10], 1.0)]).unwrap();
        assert_eq!(m.transaction_us.count, 0);
    }

    #[test]
    fn merging_udp_runs_sums_the_datagrams_and_recomputes_the_loss_ratio() {
        let m = merge(&[udp_report(1000, 0, 1, 2), udp_report(3000, 400, 3, 4)]).unwrap();
        let u = m.udp.unwrap();
        assert_eq!(
            u.datagrams,
            Datagrams {
                sent: 4000,
                received: 3600,
                lost: 400,
                duplicated: 4,
                reordered: 6,
                late: 2,
            }
        );
        assert!((u.loss_ratio - 0.1).abs() < 1e-12);
    }

    #[test]
    fn merging_a_tcp_and_a_udp_run_is_refused() {
        let e = merge(&[report(&[1], 1.0), udp_report(10, 0, 0, 0)]).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("udp") && e.contains("tcp"), "{e}");
    }

    #[test]
    fn a_report_from_before_udp_still_reads_as_tcp() {
        let mut v = serde_json::to_value(report(&[1], 1.0)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("udp");
        for k in ["protocol", "udp_timeout_s", "max_loss"] {
            o["config"].as_object_mut().unwrap().remove(k);
        }
        let r: Report = serde_json::from_value(v).unwrap();
        assert_eq!(r.udp, None);
        assert_eq!(r.config.protocol, "tcp");
    }

    #[test]
    fn merging_equals_the_histogram_of_both_runs() {
        let a: Vec<u64> = (1..=1000).collect();
        let b: Vec<u64> = (5000..=5999).collect();
        let merged = merge(&[report(&a, 1.0), report(&b, 1.0)]).unwrap();
        let mut both = new_histogram();
        for &v in a.iter().chain(&b) {
            both.record(v).unwrap();
        }
        assert_eq!(merged.latency_us, Percentiles::of(&both));
        assert_eq!(merged.latency_us.count, 2000);
        assert_eq!(merged.messages.received, 2000);
        assert_eq!(merged.connections.requested, 20);
        assert_eq!(merged.errors["ECONNRESET"], 2);
        assert_eq!(merged.hosts, 2);
        assert!((merged.throughput.msgs_per_s - 2000.0).abs() < 1e-9);
        assert!((merged.cpu.user_s - 1.0).abs() < 1e-9);
        assert_eq!(
            decode_histogram(&merged.histograms.latency_us).unwrap(),
            both
        );
        let mut lags = new_histogram();
        for &v in a.iter().chain(&b) {
            lags.record(v / 10).unwrap();
        }
        assert_eq!(merged.schedule_lag_us, Percentiles::of(&lags));
        assert_eq!(merged.schedule_lag_us.count, 2000);
    }

    #[test]
    fn a_report_from_before_the_schedule_lag_merges_with_a_newer_one() {
        let mut v = serde_json::to_value(report(&[1000], 1.0)).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("schedule_lag_us");
        o["histograms"]
            .as_object_mut()
            .unwrap()
            .remove("schedule_lag_us");
        o["config"]
            .as_object_mut()
            .unwrap()
            .remove("pacing_slack_us");
        let old: Report = serde_json::from_value(v).unwrap();
        assert_eq!(old.schedule_lag_us.count, 0);
        let merged = merge(&[old, report(&[2000, 3000], 1.0)]).unwrap();
        assert_eq!(merged.schedule_lag_us.count, 2);
        assert_eq!(merged.schedule_lag_us.max, 300);
        assert_eq!(merged.latency_us.count, 3);
    }

    #[test]
    fn merging_one_report_changes_nothing_measured() {
        let r = report(&[3, 4, 5], 2.0);
        let m = merge(std::slice::from_ref(&r)).unwrap();
        assert_eq!(m.latency_us, r.latency_us);
        assert_eq!(m.throughput, r.throughput);
    }

    #[test]
    fn a_foreign_schema_is_refused() {
        let mut r = report(&[1], 1.0);
        r.schema = 99;
        assert!(merge(&[r]).unwrap_err().to_string().contains("schema 99"));
    }
}
