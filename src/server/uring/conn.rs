//! One connection's state in the io_uring backend: its direct descriptor, the
//! generation its operations carry, what it has queued to echo, and which of its
//! operations are in flight. Kept small: an idle connection costs this struct and
//! a slab slot, nothing else (no receive buffer).
#![forbid(unsafe_code)]

use crate::echo_queue::EchoQueue;
use crate::ring::MsgId;
use crate::ring::user_data::UserData;

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
    /// The send in flight is a zero-copy one: `Conn::zc_send` is its id.
    pub const SEND_ZC: Flags = Flags(1 << 12);

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

/// The most buffers one send carries (one `sendmsg` instead of a send per buffer).
pub const MAX_SEND_IOVECS: usize = 16;

/// The message of a send that carries several queued buffers at once, held by
/// the connection while that send is in flight, then given back to the ring's
/// pool: no allocation per send once the pool is warm, nothing held when idle.
#[derive(Clone, Copy, Debug)]
pub struct SendVec {
    pub msg: MsgId,
    /// Buffers the send reads from.
    pub buffers: u16,
}

/// What a connection does next, decided by [`next_step`] after any completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to submit now; a completion in flight will bring the next step.
    Wait,
    /// Arm a multishot receive.
    ArmRecv,
    /// Send our FIN (graceful stop: everything queued has been echoed).
    ShutdownWrite,
    /// Close: the peer is gone and nothing is left to echo.
    Close,
}

/// The decision of [`next_step`]: whether a paused connection resumes (clear
/// [`Flags::PAUSED`]), and the step to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Next {
    pub resume: bool,
    pub step: Step,
}

/// The one place the rules live that take a connection from one state to the
/// next: from its flags, the buffers it holds (`held`, queued to echo) and
/// `resume_at` (at or under which a paused receive resumes). Pure: the worker
/// applies the result.
pub fn next_step(f: Flags, held: u32, resume_at: u32) -> Next {
    let wait = |step| Next {
        resume: false,
        step,
    };
    if f.has(Flags::CLOSING) {
        return wait(Step::Wait);
    }
    let idle = held == 0 && !f.has(Flags::SEND_IN_FLIGHT);
    let receiving = f.has(Flags::RECV_ARMED);
    if f.has(Flags::PEER_EOF) {
        let done = idle && !receiving;
        return wait(if done { Step::Close } else { Step::Wait });
    }
    if f.has(Flags::DRAINING) {
        if f.has(Flags::WRITE_SHUT) {
            // Lingering: read (and discard) until the peer's FIN, so that
            // closing does not turn unread bytes into a reset.
            let arm = !receiving && !f.has(Flags::STARVED);
            return wait(if arm { Step::ArmRecv } else { Step::Wait });
        }
        let shut = idle && !receiving && !f.has(Flags::SHUTDOWN_IN_FLIGHT);
        return wait(if shut {
            Step::ShutdownWrite
        } else {
            Step::Wait
        });
    }
    let resume = f.has(Flags::PAUSED) && held <= resume_at;
    let paused = f.has(Flags::PAUSED) && !resume;
    let arm = !receiving && !paused && !f.has(Flags::STARVED);
    Next {
        resume,
        step: if arm { Step::ArmRecv } else { Step::Wait },
    }
}

pub struct Conn {
    /// Index in the ring's table of direct descriptors.
    pub fixed: u32,
    pub generation: u32,
    pub flags: Flags,
    pub queue: EchoQueue,
    /// The iovecs of the send in flight, when it carries several buffers.
    pub send_vec: Option<SendVec>,
    /// The id (in the worker's `ZcSends`) of the send in flight, when it is
    /// a zero-copy one ([`Flags::SEND_ZC`]).
    pub zc_send: u32,
    /// Its zero-copy sends whose notification has not come (at most
    /// `zc_sends::MAX_ZC_PER_CONN`).
    pub zc_pending: u8,
    /// Buffers it is done with (sent) that zero-copy sends still pin: out of
    /// the pool on its account, so they count against its budget. At most
    /// `MAX_ZC_PER_CONN` × `MAX_SEND_IOVECS` = 64.
    pub zc_held: u8,
}

impl Conn {
    pub fn new(fixed: u32, generation: u32) -> Conn {
        Conn {
            fixed,
            generation,
            flags: Flags::default(),
            queue: EchoQueue::default(),
            send_vec: None,
            zc_send: 0,
            zc_pending: 0,
            zc_held: 0,
        }
    }

    /// Buffers it holds from the pool: queued to echo, and sent but still
    /// pinned by zero-copy sends. The budget (`--conn-buffers`) bounds this.
    pub fn held(&self) -> u32 {
        self.queue.held() + u32::from(self.zc_held)
    }

    /// Buffers the send in flight reads from (0 when none is in flight).
    pub fn buffers_in_flight(&self) -> usize {
        if !self.flags.has(Flags::SEND_IN_FLIGHT) {
            0
        } else {
            self.send_vec.map_or(1, |v| usize::from(v.buffers))
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
    use proptest::prelude::*;

    use super::*;

    fn flags(bits: &[Flags]) -> Flags {
        let mut f = Flags::default();
        bits.iter().for_each(|&b| f.set(b));
        f
    }

    const RESUME_AT: u32 = 8;

    #[test]
    fn a_new_connection_arms_its_receive() {
        let next = next_step(Flags::default(), 0, RESUME_AT);
        assert_eq!(
            next,
            Next {
                resume: false,
                step: Step::ArmRecv
            }
        );
    }

    #[test]
    fn a_paused_connection_resumes_at_half_its_budget_and_not_before() {
        let paused = flags(&[Flags::PAUSED]);
        assert_eq!(next_step(paused, RESUME_AT + 1, RESUME_AT).step, Step::Wait);
        let next = next_step(paused, RESUME_AT, RESUME_AT);
        assert_eq!(
            next,
            Next {
                resume: true,
                step: Step::ArmRecv
            }
        );
        // Resumed while its cancelled receive has not ended: the final
        // completion of that receive brings the re-arm.
        let cancelling = flags(&[Flags::PAUSED, Flags::RECV_ARMED, Flags::RECV_CANCELLING]);
        assert_eq!(
            next_step(cancelling, 0, RESUME_AT),
            Next {
                resume: true,
                step: Step::Wait
            }
        );
    }

    #[test]
    fn a_peer_fin_closes_once_everything_is_echoed() {
        let eof = flags(&[Flags::PEER_EOF]);
        assert_eq!(
            next_step(eof, 1, RESUME_AT).step,
            Step::Wait,
            "still echoing"
        );
        let sending = flags(&[Flags::PEER_EOF, Flags::SEND_IN_FLIGHT]);
        assert_eq!(next_step(sending, 0, RESUME_AT).step, Step::Wait);
        assert_eq!(next_step(eof, 0, RESUME_AT).step, Step::Close);
    }

    #[test]
    fn a_draining_connection_sends_fin_when_idle_then_lingers_for_the_peers() {
        let draining = flags(&[Flags::DRAINING]);
        assert_eq!(next_step(draining, 0, RESUME_AT).step, Step::ShutdownWrite);
        assert_eq!(next_step(draining, 2, RESUME_AT).step, Step::Wait);
        let shutting = flags(&[Flags::DRAINING, Flags::SHUTDOWN_IN_FLIGHT]);
        assert_eq!(next_step(shutting, 0, RESUME_AT).step, Step::Wait);
        let shut = flags(&[Flags::DRAINING, Flags::WRITE_SHUT]);
        assert_eq!(next_step(shut, 0, RESUME_AT).step, Step::ArmRecv);
        let starved = flags(&[Flags::DRAINING, Flags::WRITE_SHUT, Flags::STARVED]);
        assert_eq!(next_step(starved, 0, RESUME_AT).step, Step::Wait);
    }

    /// Any combination of the thirteen flags.
    fn any_flags() -> impl Strategy<Value = Flags> {
        (0u16..1 << 13).prop_map(Flags)
    }

    proptest! {
        #[test]
        fn no_step_ever_arms_a_second_receive_or_acts_on_a_closing_connection(
            f in any_flags(), held in 0u32..64, resume_at in 0u32..32,
        ) {
            let next = next_step(f, held, resume_at);
            if f.has(Flags::CLOSING) {
                prop_assert_eq!(next, Next { resume: false, step: Step::Wait });
            }
            if next.step == Step::ArmRecv {
                prop_assert!(!f.has(Flags::RECV_ARMED));
                prop_assert!(!f.has(Flags::STARVED));
                prop_assert!(!f.has(Flags::PEER_EOF));
                // Pausing is about echoing: once our FIN is sent (lingering
                // in a drain) received bytes are discarded, not held.
                let lingering = f.has(Flags::DRAINING) && f.has(Flags::WRITE_SHUT);
                prop_assert!(!f.has(Flags::PAUSED) || next.resume || lingering);
            }
        }

        #[test]
        fn close_and_fin_come_only_when_nothing_is_left_to_echo(
            f in any_flags(), held in 0u32..64, resume_at in 0u32..32,
        ) {
            let next = next_step(f, held, resume_at);
            let idle = held == 0 && !f.has(Flags::SEND_IN_FLIGHT) && !f.has(Flags::RECV_ARMED);
            match next.step {
                Step::Close => prop_assert!(f.has(Flags::PEER_EOF) && idle),
                Step::ShutdownWrite => prop_assert!(
                    f.has(Flags::DRAINING) && idle
                        && !f.has(Flags::WRITE_SHUT)
                        && !f.has(Flags::SHUTDOWN_IN_FLIGHT)
                ),
                Step::ArmRecv | Step::Wait => {}
            }
        }

        #[test]
        fn only_a_paused_connection_under_the_mark_resumes(
            f in any_flags(), held in 0u32..64, resume_at in 0u32..32,
        ) {
            let next = next_step(f, held, resume_at);
            let running = !f.has(Flags::CLOSING)
                && !f.has(Flags::PEER_EOF)
                && !f.has(Flags::DRAINING);
            prop_assert_eq!(
                next.resume,
                running && f.has(Flags::PAUSED) && held <= resume_at
            );
        }
    }

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
        use super::super::op_kind::OpKind;
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
        // 64 bytes, in a 72-byte slab slot: measured, an idle connection
        // costs 113 bytes of the worker's memory (docs/architecture.md).
        assert!(std::mem::size_of::<Conn>() <= 64);
    }
}
