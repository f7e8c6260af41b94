//! What a run's connection counts say about the server, in one sentence: a
//! server that stopped accepting at its connection limit, one that closes
//! every connection at once, one that closes some at accept, one that accepts
//! too slowly. Each leaves a different trace:
//!
//! - stopped accepting: connections the kernel established (the handshake is
//!   the kernel's, the accept queue holds them) that never got a byte back,
//!   while others were answered; connects past the full queue time out;
//! - closes everything: every established connection lost before any echo;
//! - closes some at accept (`--max-conns`): some lost before any echo;
//! - accepts slowly, or loses handshakes on the way: connects time out, yet
//!   every connection that was established got answered in the end. The
//!   counts cannot tell these two apart; the hint names both, and where each
//!   shows.
//!
//! Pure functions of the report's counts; the report prints what they return.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use super::report::Connections;

/// The one-line explanation of why fewer connections were held than asked,
/// or `None` when the counts point at nothing in particular.
pub fn diagnose(c: &Connections, errors: &BTreeMap<String, u64>) -> Option<String> {
    let timeouts = timed_out(errors);
    if c.unanswered > 0 {
        let timed_out = if timeouts > 0 {
            format!(", and {timeouts} connects timed out once that queue was full")
        } else {
            String::new()
        };
        return Some(format!(
            "the server stopped accepting at {} connections (its connection limit: \
             --max-conns, a full descriptor table or its open-files limit; its log says which): \
             {} more were established by the kernel (its accept queue) but never answered{timed_out}. \
             Raise the server's limit (its start line's capacity=) or lower --conns",
            c.established - c.lost - c.unanswered,
            c.unanswered
        ));
    }
    if c.established > 0 && c.lost_unanswered == c.established {
        return Some(format!(
            "the server closed every connection as soon as it was made ({} of {}, none echoed \
             a byte): is it stopping or restarting, or is something other than an echo server \
             at --target?",
            c.lost_unanswered, c.established
        ));
    }
    if c.lost_unanswered > 0 {
        return Some(format!(
            "the server closed {} connections before echoing anything, and answered the \
             others: it refuses connections past its --max-conns (its summary counts them as \
             rejected)",
            c.lost_unanswered
        ));
    }
    if timeouts > 0 {
        return Some(format!(
            "{timeouts} connects timed out, and every connection made was answered: {}",
            hint_for("connect_timeout")
        ));
    }
    None
}

/// The knob for an error kind, in the light of the whole run: a connect that
/// timed out because the server stopped accepting is not a slow accept.
pub fn hint_in_context(c: &Connections, kind: &str) -> &'static str {
    match kind {
        "connect_timeout" | "ETIMEDOUT" if c.unanswered > 0 => {
            "the server's accept queue was full because it stopped accepting (see the diagnosis)"
        }
        "ECONNRESET" | "EPIPE" | "closed_by_server"
            if c.established > 0 && c.lost_unanswered == c.established =>
        {
            "the server closed every connection at once (see the diagnosis)"
        }
        "ECONNRESET" | "EPIPE" | "closed_by_server" if c.unanswered > 0 => {
            "closed at accept once the server's limit was reached (see the diagnosis)"
        }
        _ => hint_for(kind),
    }
}

fn timed_out(errors: &BTreeMap<String, u64>) -> u64 {
    ["connect_timeout", "ETIMEDOUT"]
        .iter()
        .filter_map(|k| errors.get(*k))
        .sum()
}

/// Which knob to turn for an error kind the report counted.
pub fn hint_for(kind: &str) -> &'static str {
    match kind {
        "ECONNREFUSED" => {
            "nothing listens at --target, or its accept backlog overflowed: check the server, lower --connect-rate"
        }
        "connect_timeout" | "ETIMEDOUT" => {
            "the server accepted too slowly, or handshake packets were lost on the way (a full \
             queue: the server's ListenOverflows in `nstat -az`, drops in the second column of \
             /proc/net/softnet_stat on either host; on a netns or veth path also too many \
             connections per source address): lower --connect-rate, raise --connect-timeout, or \
             add --source-addrs"
        }
        "EADDRNOTAVAIL" | "EADDRINUSE" => {
            "out of ephemeral ports: add --source-addrs (IPv4 loopback targets are spread over 127.0.0.x \
             automatically; an IPv6 target is not, ::1 being the only IPv6 loopback address, so list \
             addresses configured on this host), or widen net.ipv4.ip_local_port_range"
        }
        "EMFILE" | "ENFILE" => {
            "open-files limit: raise `ulimit -n` (each ring holds at most that many connections) or --threads"
        }
        "ENOBUFS" | "ENOMEM" => {
            "kernel memory for sockets: lower --conns or raise net.ipv4.tcp_mem"
        }
        "ECONNRESET" | "EPIPE" | "closed_by_server" => {
            "the server dropped connections: check its --max-conns and its log"
        }
        "unexpected_bytes" => "the server echoed bytes that were never sent",
        "interrupted" => "connects still in flight when SIGINT or SIGTERM stopped the run",
        "foreign_datagram" => {
            "a datagram that no flow sent came back (too short or naming another flow)"
        }
        _ => "see the error name",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conns(established: u64, lost: u64, lost_unanswered: u64, unanswered: u64) -> Connections {
        Connections {
            requested: 100,
            established,
            failed: 100 - established,
            lost,
            lost_unanswered,
            unanswered,
            completed: 0,
        }
    }

    fn errors(kinds: &[(&str, u64)]) -> BTreeMap<String, u64> {
        kinds.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    }

    #[test]
    fn unanswered_connections_mean_the_server_stopped_accepting() {
        let d = diagnose(&conns(90, 1, 1, 25), &errors(&[("connect_timeout", 10)])).unwrap();
        assert!(d.contains("stopped accepting at 64 connections"), "{d}");
        assert!(d.contains("25 more were established"), "{d}");
        assert!(d.contains("10 connects timed out"), "{d}");
        let hint = hint_in_context(&conns(90, 1, 1, 25), "connect_timeout");
        assert!(!hint.contains("too slowly"), "{hint}");
    }

    #[test]
    fn every_connection_closed_unanswered_means_the_server_closes_at_once() {
        let d = diagnose(
            &conns(100, 100, 100, 0),
            &errors(&[("closed_by_server", 100)]),
        )
        .unwrap();
        assert!(d.contains("closed every connection"), "{d}");
        assert!(!d.contains("--max-conns"), "{d}");
    }

    #[test]
    fn some_closed_unanswered_points_at_max_conns() {
        let d = diagnose(&conns(100, 40, 40, 0), &errors(&[("closed_by_server", 40)])).unwrap();
        assert!(
            d.contains("closed 40 connections") && d.contains("--max-conns"),
            "{d}"
        );
    }

    #[test]
    fn timeouts_with_every_connection_answered_mean_a_slow_accept_or_lost_handshakes() {
        let d = diagnose(&conns(80, 0, 0, 0), &errors(&[("connect_timeout", 20)])).unwrap();
        assert!(d.contains("20 connects timed out"), "{d}");
        assert!(d.contains("accepted too slowly"), "{d}");
        assert!(d.contains("handshake packets were lost"), "{d}");
        assert!(d.contains("softnet_stat"), "{d}");
        assert_eq!(diagnose(&conns(100, 0, 0, 0), &errors(&[])), None);
    }
}
