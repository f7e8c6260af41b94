//! The connect phase of an engine thread: sockets opened on the
//! `--connect-rate` schedule, each installed as a direct descriptor and
//! connected by the ring, cancelled at `--connect-timeout`. With `--udp` the
//! sockets are UDP and the connect only sets their peer (no handshake). Failures are counted
//! by kind (errno name, or `connect_timeout`) and never retried.
#![forbid(unsafe_code)]

use super::Engine;
use crate::loadgen::conn::State;
use crate::loadgen::connect::{SocketKind, errno_kind, open_socket};
use crate::loadgen::error::Error;
use crate::loadgen::pacing::{Nanos, Schedule};
use crate::loadgen::ring::OpKind;
use crate::loadgen::stats::record_ns;

impl Engine<'_> {
    pub(super) fn ramp(&mut self) -> Result<(), Error> {
        let config = self.config();
        let mut n = self.plan.count;
        let rate = f64::from(config.connect_rate) * f64::from(n) / f64::from(config.conns);
        let mut schedule = Schedule::new(self.shared.now(), rate.max(1e-3), self.phase());
        let timeout = config.connect_timeout.as_nanos() as Nanos;
        let mut next = 0u32;
        while self.settled < n {
            let now = self.shared.now();
            if self.shared.interrupted() {
                // Open no more, and cancel the connects in flight: a Ctrl-C
                // must not wait out --connect-timeout (a server whose accept
                // queue is full drops SYNs, and a connect then hangs).
                n = next;
                self.expire_connects(Nanos::MAX);
            }
            while next < n && schedule.take_due(now).is_some() {
                self.start_connect(next, now, now + timeout);
                next += 1;
            }
            self.expire_connects(now);
            self.flush_progress(now);
            let mut wake = self.next_flush.min(self.next_connect_deadline());
            if next < n {
                wake = wake.min(schedule.next_due());
            }
            self.turn(wake)?;
        }
        self.flush_progress(0);
        Ok(())
    }

    /// Cancels the connects whose `--connect-timeout` passed by `now`.
    pub(super) fn expire_connects(&mut self, now: Nanos) {
        while let Some(&(key, generation, deadline)) = self.connecting.front() {
            if deadline > now {
                break;
            }
            self.connecting.pop_front();
            let conn = &self.conns[key as usize];
            if conn.generation == generation && conn.state == State::Connecting {
                // Completes with ECANCELED, counted as a timeout.
                self.ring.cancel(self.tag(OpKind::Connect, key));
            }
        }
    }

    /// When the oldest connect in flight times out (never, when none is).
    pub(super) fn next_connect_deadline(&self) -> Nanos {
        self.connecting.front().map_or(Nanos::MAX, |&(_, _, d)| d)
    }

    /// Opens a socket into slot `key` and submits its connect. `spread` picks
    /// the source address (connections are spread round-robin over them).
    pub(super) fn start_connect(&mut self, key: u32, now: Nanos, deadline: Nanos) {
        let global = self.plan.first + u64::from(key);
        self.start_connect_from(key, global, now, deadline);
    }

    pub(super) fn start_connect_from(
        &mut self,
        key: u32,
        spread: u64,
        now: Nanos,
        deadline: Nanos,
    ) {
        let sources = &self.shared.sources;
        let source =
            (!sources.is_empty()).then(|| sources[(spread % sources.len() as u64) as usize]);
        let kind = SocketKind {
            udp: self.config().udp.is_some(),
            linger0: self.config().linger0,
        };
        let installed = open_socket(self.shared.target, source, kind)
            .and_then(|socket| self.ring.install(key, socket));
        if let Err(e) = installed {
            self.fail(
                key,
                e.raw_os_error().map_or("other_errno", errno_kind),
                false,
            );
            return;
        }
        let conn = &mut self.conns[key as usize];
        conn.state = State::Connecting;
        conn.connect_started = now;
        let generation = conn.generation;
        self.ring.connect(key, self.tag(OpKind::Connect, key));
        self.connecting.push_back((key, generation, deadline));
    }

    fn fail(&mut self, key: u32, kind: &str, installed: bool) {
        self.conns[key as usize].state = State::Failed;
        self.settled += 1;
        self.result.failed += 1;
        self.result.error(kind);
        if installed {
            self.ring.close(key, self.tag(OpKind::Close, key));
        } else if let Some(slots) = &mut self.churn {
            // Nothing to close: the slot is free at once (reused next turn).
            slots.release(key);
        }
    }

    pub(super) fn handle_connect(&mut self, key: u32, res: i32, now: Nanos) {
        let conn = &mut self.conns[key as usize];
        if conn.state != State::Connecting {
            return;
        }
        if res < 0 {
            let kind = match -res {
                libc::ECANCELED if self.shared.interrupted() => "interrupted",
                libc::ECANCELED => "connect_timeout",
                _ => errno_kind(-res),
            };
            self.fail(key, kind, true);
            return;
        }
        conn.state = State::Established;
        conn.recv_armed = true;
        let took = now.saturating_sub(conn.connect_started);
        // With churn only measured connections' connects count, like their messages.
        if self.churn.as_ref().is_none_or(|s| s.measured(key)) {
            record_ns(&mut self.result.connect, took);
        }
        self.settled += 1;
        self.result.established += 1;
        self.ring.recv(key, self.tag(OpKind::Recv, key));
        if self.churn.is_some() {
            self.churn_connected(key, now);
        }
    }
}
