//! One connection's state in the io_uring backend: its direct descriptor, the
//! generation its operations carry, what it has queued to echo, and which of its
//! operations are in flight. Kept small: an idle connection costs this struct and
//! a slab slot, nothing else (no receive buffer).
#![forbid(unsafe_code)]

use super::send_vec::SendVec;
use super::user_data::UserData;
use crate::echo_queue::EchoQueue;

/// State bits. Each `*_IN_FLIGHT`/`ARMED` bit is set when the operation is
/// submitted and cleared by its final completion; the slot is freed only when
/// none is left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags(u16);

impl Flags {
    /// A multishot receive is armed (cleared by a completion without F_MORE).
    pub const RECV_ARMED: Flags = Flags(1 << 0);
    /// A cancel of the armed receive was submitted.
    pub const RECV_CANCELLING: Flags = Flags(1 << 1);
    pub const SEND_IN_FLIGHT: Flags = Flags(1 << 2);
    /// The peer sent FIN: nothing more will arrive.
    pub const PEER_EOF: Flags = Flags(1 << 3);
    /// Over its buffer budget: receiving paused until sends drain.
    pub const PAUSED: Flags = Flags(1 << 4);
    /// Waiting in the worker's queue for free buffers (after ENOBUFS).
    pub const STARVED: Flags = Flags(1 << 5);
    /// Graceful stop: stop receiving, echo what is queued, then shut down writes.
    pub const DRAINING: Flags = Flags(1 << 6);
    pub const SHUTDOWN_IN_FLIGHT: Flags = Flags(1 << 7);
    /// Our FIN is sent: received bytes are now discarded until the peer's FIN.
    pub const WRITE_SHUT: Flags = Flags(1 << 8);
    /// Close submitted.
    pub const CLOSING: Flags = Flags(1 << 9);
    /// Close completed: the descriptor slot is free again.
    pub const CLOSED: Flags = Flags(1 << 10);
    /// The armed receive carries a total byte limit (`optlen`), which kernels
    /// before 6.17 refuse with EINVAL.
    pub const RECV_LIMITED: Flags = Flags(1 << 11);

    pub fn has(self, f: Flags) -> bool {
        self.0 & f.0 != 0
    }

    pub fn set(&mut self, f: Flags) {
        self.0 |= f.0;
    }

    pub fn clear(&mut self, f: Flags) {
        self.0 &= !f.0;
    }
}

pub struct Conn {
    /// Index in the ring's table of direct descriptors.
    pub fixed: u32,
    pub generation: u32,
    pub flags: Flags,
    pub queue: EchoQueue,
    /// The iovecs of the send in flight, when it carries several buffers.
    pub send_vec: Option<Box<SendVec>>,
}

impl Conn {
    pub fn new(fixed: u32, generation: u32) -> Conn {
        Conn {
            fixed,
            generation,
            flags: Flags::default(),
            queue: EchoQueue::default(),
            send_vec: None,
        }
    }

    /// Buffers the send in flight reads from (0 when none is in flight).
    pub fn buffers_in_flight(&self) -> usize {
        if !self.flags.has(Flags::SEND_IN_FLIGHT) {
            0
        } else {
            self.send_vec.as_ref().map_or(1, |v| v.buffers())
        }
    }

    /// Nothing of this connection is left in the kernel: its slot may be reused.
    /// Whether a completion tagged `ud` is one of this connection's: a slot
    /// freed and refilled has a new generation, so a late completion of the
    /// connection that held it before can never act on this one.
    pub fn owns(&self, ud: UserData) -> bool {
        self.generation == ud.generation()
    }

    pub fn is_finished(&self) -> bool {
        self.flags.has(Flags::CLOSED)
            && !self.flags.has(Flags::RECV_ARMED)
            && !self.flags.has(Flags::SEND_IN_FLIGHT)
            && !self.flags.has(Flags::SHUTDOWN_IN_FLIGHT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_finished_only_when_nothing_is_in_flight() {
        let mut c = Conn::new(0, 1);
        c.flags.set(Flags::SEND_IN_FLIGHT);
        c.flags.set(Flags::CLOSED);
        assert!(!c.is_finished());
        c.flags.clear(Flags::SEND_IN_FLIGHT);
        assert!(c.is_finished());
        c.flags.set(Flags::RECV_ARMED);
        assert!(!c.is_finished());
    }

    #[test]
    fn a_reused_slot_ignores_the_completions_of_its_previous_connection() {
        use super::super::user_data::OpKind;
        let mut conns = slab::Slab::new();
        let old_key = conns.insert(Conn::new(7, 41));
        let old_recv = UserData::new(OpKind::Recv, old_key as u32, 41);
        assert!(conns[old_key].owns(old_recv));
        conns.remove(old_key);
        // The slab hands the freed slot straight to the next connection.
        let key = conns.insert(Conn::new(7, 42));
        assert_eq!(key, old_key);
        assert!(!conns[key].owns(old_recv), "a late receive of the old one");
        assert!(conns[key].owns(UserData::new(OpKind::Recv, key as u32, 42)));
    }

    #[test]
    fn an_idle_connection_is_small() {
        // The budget is 256 bytes per idle connection beyond the buffer pool.
        assert!(std::mem::size_of::<Conn>() <= 64);
    }
}
