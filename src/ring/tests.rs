//! The ring layer against the kernel: teardown after an enter error, a
//! multishot receive's data and end, and the receive limit the kernel honours.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use super::*;
use crate::ring::user_data::TestKind as OpKind;

/// A small ring (8 SQ entries), so a burst spills into the backlog.
fn small_ring() -> Option<Ring> {
    match IoUring::new(8) {
        Ok(ring) => Some(Ring::new(ring)),
        Err(e) => {
            eprintln!("skipped: io_uring unavailable here: {e}");
            None
        }
    }
}

#[test]
fn teardown_after_an_enter_error_cancels_and_reaps_everything_in_flight() {
    let Some(mut ring) = small_ring() else {
        return;
    };
    let group = ring.register_buffers(0, 8, 64).expect("register buffers");
    // Operations that never complete by themselves: a multishot accept
    // nobody connects to, a multishot receive nobody sends to, timeouts
    // an hour long.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let (quiet, _peer) = UnixStream::pair().expect("socket pair");
    let hour = ring.add_timer(Duration::from_secs(3600));
    let ud = |key| UserData::new(OpKind::Tick, key, 0);
    ring.accept_multi(
        listener.as_raw_fd(),
        false,
        UserData::worker_op(OpKind::Accept),
    );
    let sock = Sock::Fd(quiet.as_raw_fd());
    ring.recv_multi(
        sock,
        group,
        RecvLimits::default(),
        UserData::worker_op(OpKind::Recv),
    );
    for key in 0..6 {
        ring.timeout(hour, ud(key));
    }
    ring.submit_and_wait(0, None).expect("submit");
    // More than the submission queue holds, never submitted: some sit in
    // the queue, the rest in the backlog, when entering fails.
    for key in 6..20 {
        ring.timeout(hour, ud(key));
    }
    assert_eq!(ring.in_flight(), 22);
    assert!(
        !ring.backlog.is_empty(),
        "the burst spilled into the backlog"
    );
    ring.fail_next_enter(libc::EIO);
    let err = ring
        .submit_and_wait(1, None)
        .expect_err("the injected error");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));

    assert_eq!(ring.teardown(), 0, "nothing left in flight");
    assert_eq!(ring.in_flight(), 0);
    assert!(ring.backlog.is_empty());
    // Every final completion was reaped: nothing is left to arrive.
    let mut late = Vec::new();
    ring.submit_and_wait(0, None).expect("enter after teardown");
    ring.completions(&mut late);
    assert!(late.is_empty(), "completions after teardown: {late:?}");
}

#[test]
fn a_multishot_receive_posts_its_data_then_ends_at_teardown() {
    let Some(mut ring) = small_ring() else {
        return;
    };
    let group = ring.register_buffers(0, 8, 64).expect("register buffers");
    let (mine, peer) = UnixStream::pair().expect("socket pair");
    let recv = UserData::worker_op(OpKind::Recv);
    ring.recv_multi(
        Sock::Fd(mine.as_raw_fd()),
        group,
        RecvLimits::default(),
        recv,
    );
    std::io::Write::write_all(&mut &peer, b"hello").expect("write");
    let mut out = Vec::new();
    while out.is_empty() {
        ring.submit_and_wait(1, Some(Duration::from_secs(5)))
            .expect("wait");
        ring.completions(&mut out);
    }
    let c = out[0];
    assert_eq!((c.user_data, c.result, c.more()), (recv, 5, true));
    let buf = c.buffer().expect("a provided buffer");
    assert_eq!(ring.buffers(group).bytes(buf, 5), b"hello");
    assert_eq!(ring.in_flight(), 1, "the receive is still armed");
    assert_eq!(ring.teardown(), 0);
}

#[test]
fn the_kernel_ends_a_multishot_receive_at_its_total_byte_limit() {
    let Some(mut ring) = small_ring() else {
        return;
    };
    let group = ring.register_buffers(0, 8, 64).expect("register buffers");
    let (mine, peer) = UnixStream::pair().expect("socket pair");
    let sent: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    std::io::Write::write_all(&mut &peer, &sent).expect("write");
    // Two of the 64-byte buffers: the kernel counts what each receive
    // took, and a receive takes at most a buffer, so a multiple of the
    // buffer size (as the worker's budgets are) ends exactly there.
    let limits = RecvLimits {
        bundle_bytes: None,
        total_bytes: Some(128),
    };
    let recv = UserData::worker_op(OpKind::Recv);
    ring.recv_multi(Sock::Fd(mine.as_raw_fd()), group, limits, recv);
    let mut received = Vec::new();
    let mut out = Vec::new();
    'wait: loop {
        ring.submit_and_wait(1, Some(Duration::from_secs(5)))
            .expect("wait");
        ring.completions(&mut out);
        assert!(!out.is_empty(), "no completion within 5 s");
        for c in &out {
            if c.result == -libc::EINVAL {
                eprintln!("skipped: this kernel has no multishot receive limit (6.17+)");
                return;
            }
            assert!(c.result >= 0, "receive failed: {}", c.result);
            let buf = c.buffer().expect("a provided buffer");
            received.extend_from_slice(ring.buffers(group).bytes(buf, c.result as u32));
            if !c.more() {
                break 'wait;
            }
        }
    }
    assert_eq!(received, sent[..128], "exactly the limit, in order");
    assert_eq!(ring.in_flight(), 0, "the receive ended itself");
    // The rest is still in the socket, untouched.
    mine.set_nonblocking(true).expect("nonblocking");
    let mut rest = vec![0; 400];
    let n = std::io::Read::read(&mut &mine, &mut rest).expect("read the rest");
    assert_eq!(rest[..n], sent[128..]);
}
