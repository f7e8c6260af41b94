//! The connect phase of an engine thread: sockets opened on the
//! `--connect-rate` schedule, each installed as a direct descriptor and
//! connected by the ring, cancelled at `--connect-timeout`. With `--udp` the
//! sockets are UDP and the connect only sets their peer (no handshake). Failures are counted
//! by kind (errno name, or `connect_timeout`) and never retried.
#![forbid(unsafe_code)]

use super::Engine;
use crate::loadgen::conn::State;
use crate::loadgen::connect::{errno_kind, open_socket};
use crate::loadgen::pacing::{Nanos, Schedule};
use crate::loadgen::ring::{OpKind, Tag};
use crate::loadgen::stats::record_ns;

impl Engine<'_> {
    pub(super) fn ramp(&mut self) -> Result<(), String> {
        let config = self.config();
        let mut n = self.plan.count;
        let rate = f64::from(config.connect_rate) * f64::from(n) / f64::from(config.conns);
        let mut schedule = Schedule::new(self.shared.now(), rate.max(1e-3), self.phase());
        let timeout = config.connect_timeout.as_nanos() as Nanos;
        let mut next = 0u32;
        while self.settled < n {
            let now = self.shared.now();
            if self.shared.interrupted() {
                // Open no more; the connects in flight still finish.
                n = next;
            }
            while next < n && schedule.take_due(now).is_some() {
                self.start_connect(next, now, now + timeout);
                next += 1;
            }
            while let Some(&(key, deadline)) = self.connecting.front() {
                if deadline > now {
                    break;
                }
                self.connecting.pop_front();
                if self.conns[key as usize].state == State::Connecting {
                    // Completes with ECANCELED, counted as a timeout.
                    self.ring.cancel(Tag::new(OpKind::Connect, key));
                }
            }
            self.flush_progress(now);
            let mut wake = self.next_flush;
            if next < n {
                wake = wake.min(schedule.next_due());
            }
            if let Some(&(_, deadline)) = self.connecting.front() {
                wake = wake.min(deadline);
            }
            self.turn(wake)?;
        }
        self.flush_progress(0);
        Ok(())
    }

    fn start_connect(&mut self, key: u32, now: Nanos, deadline: Nanos) {
        let global = self.plan.first + u64::from(key);
        let sources = &self.shared.sources;
        let source =
            (!sources.is_empty()).then(|| sources[(global % sources.len() as u64) as usize]);
        let udp = self.config().udp.is_some();
        let installed = open_socket(self.shared.target, source, udp)
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
        self.ring.connect(key, Tag::new(OpKind::Connect, key));
        self.connecting.push_back((key, deadline));
    }

    fn fail(&mut self, key: u32, kind: &str, installed: bool) {
        self.conns[key as usize].state = State::Failed;
        self.settled += 1;
        self.result.failed += 1;
        self.result.error(kind);
        if installed {
            self.ring.close(key);
        }
    }

    pub(super) fn handle_connect(&mut self, key: u32, res: i32, now: Nanos) {
        let conn = &mut self.conns[key as usize];
        if conn.state != State::Connecting {
            return;
        }
        if res < 0 {
            let kind = if -res == libc::ECANCELED {
                "connect_timeout"
            } else {
                errno_kind(-res)
            };
            self.fail(key, kind, true);
            return;
        }
        conn.state = State::Established;
        conn.recv_armed = true;
        record_ns(
            &mut self.result.connect,
            now.saturating_sub(conn.connect_started),
        );
        self.settled += 1;
        self.result.established += 1;
        self.ring.recv(key, Tag::new(OpKind::Recv, key));
    }
}
