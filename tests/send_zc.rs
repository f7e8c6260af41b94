//! `--send-zc`: io_uring's zero-copy sends echo byte-exact, on both of their
//! paths (SEND_ZC for one buffer, SENDMSG_ZC for several), several in flight
//! per connection, and every buffer goes back to the pool once the sends
//! that covered it have notified. On loopback the kernel copies anyway, and
//! the server's counters say so.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// `conns` connections each send `len(i)` bytes in 64 KiB writes and read
/// them back; every byte is checked. Returns the bytes sent.
fn echo_all(server: &Server, conns: usize, len: impl Fn(usize) -> usize) -> u64 {
    let mut clients: Vec<EchoClient> = connect_many(server.addr, conns)
        .into_iter()
        .enumerate()
        .map(|(i, s)| EchoClient::new(s, payload(i as u64, len(i)), 64 * 1024, false))
        .collect();
    drive(&mut clients, Duration::from_secs(60));
    assert_all_echoed(&clients);
    clients.iter().map(|c| c.payload.len() as u64).sum()
}

#[test]
fn zero_copy_sends_echo_byte_exact_and_loopback_reports_them_copied() {
    // 4 KiB buffers and a 4 KiB threshold: a one-buffer send of a full
    // buffer goes SEND_ZC, a send of several queued buffers SENDMSG_ZC, and
    // a short tail is copied as before. A pool of 256 buffers (1 MiB) for
    // 32 connections: a buffer a notification never gave back would soon
    // leave receives without any, and the echo would stall.
    let server = Server::start(
        "uring",
        &[
            "--send-zc",
            "4096",
            "--buf-size",
            "4096",
            "--buf-count",
            "256",
            "--conn-buffers",
            "32",
            "--workers",
            "1",
        ],
    );
    let total = echo_all(&server, 32, |i| 200_000 + i * 7919);
    let stopped = server.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    let s = &stopped.summary;
    assert_eq!(s["bytes_out"], total, "{stopped:?}");
    assert_eq!(s["errors"], 0, "{stopped:?}");
    assert!(s["zc_sends"] > 0, "no send went zero-copy: {stopped:?}");
    // Loopback hands the pages to the receiver's queue, which must copy them
    // (skb_orphan_frags_rx): every notification says so.
    assert_eq!(s["zc_copied"], s["zc_sends"], "{stopped:?}");
}

#[test]
fn without_the_flag_no_send_is_zero_copy() {
    let server = Server::start("uring", &["--workers", "1"]);
    echo_all(&server, 4, |_| 300_000);
    let stopped = server.stop();
    assert_eq!(stopped.summary["zc_sends"], 0, "{stopped:?}");
    assert_eq!(stopped.summary["bytes_out"], 4 * 300_000, "{stopped:?}");
}

#[test]
fn a_zero_copy_send_refused_for_locked_memory_is_copied_and_said_once() {
    // Without CAP_IPC_LOCK the kernel charges the pages of every zero-copy
    // send in flight to RLIMIT_MEMLOCK and refuses one past it (ENOMEM). The
    // child drops the capability from its bounding set (root's permitted set
    // after exec) and gets 2 MiB: enough for the ring, not for 64
    // connections' 64 KiB sends.
    let server = Server::start_configured(
        "uring",
        &["--send-zc", "4096", "--buf-size", "4096", "--workers", "1"],
        |cmd| {
            use std::os::unix::process::CommandExt;
            const CAP_IPC_LOCK: libc::c_ulong = 14;
            // SAFETY: runs in the forked child before exec and only makes two
            // async-signal-safe syscalls on plain values.
            unsafe {
                cmd.pre_exec(|| {
                    // Fails without CAP_SETPCAP (not root): such a user has no
                    // CAP_IPC_LOCK to drop.
                    libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0);
                    let lim = libc::rlimit {
                        rlim_cur: 2 << 20,
                        rlim_max: 2 << 20,
                    };
                    if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                })
            };
        },
    );
    echo_all(&server, 64, |_| 500_000);
    let stopped = server.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(stopped.summary["bytes_out"], 64 * 500_000, "{stopped:?}");
    assert_eq!(
        stopped.summary["errors"], 0,
        "no connection closed: {stopped:?}"
    );
    let said = stopped
        .stderr
        .matches("--send-zc: a zero-copy send was refused for lack of locked memory")
        .count();
    assert_eq!(said, 1, "said once, by the one worker: {}", stopped.stderr);
}

#[test]
fn a_stop_does_not_wait_for_zero_copy_sends_a_client_never_acknowledges() {
    // TCP posts a zero-copy send's notification once its data is
    // acknowledged. A client that neither reads nor closes keeps most of an
    // echo in the server's send queue, unacknowledged for minutes after the
    // drain timeout closes the connection: the stop must not wait for it.
    let server = Server::start(
        "uring",
        &[
            "--send-zc",
            "4096",
            "--workers",
            "1",
            "--drain-timeout",
            "1",
            "--stats",
            "0.1",
        ],
    );
    let mut client = TcpStream::connect(server.addr).unwrap();
    set_recv_buffer(&client, 4096);
    // Under the connection's budget (32 buffers of 4 KiB), so the server
    // takes all of it and has nothing unread when it closes (which would
    // reset the connection and free its send queue).
    let sent = 96 * 1024;
    client.write_all(&payload(9, sent)).unwrap();
    server.wait_for_stats(Duration::from_secs(20), |s| {
        s["bytes_in"] == sent as u64 && s["bytes_out"] == sent as u64
    });
    let stopped = server.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
    assert!(stopped.status.success(), "{stopped:?}");
    // The notification was still outstanding: the teardown said so, and left
    // the memory the kernel no longer points into to the exit.
    assert!(
        stopped.stderr.contains("io_uring teardown"),
        "the scenario did not leave a notification outstanding: {}",
        stopped.stderr
    );
    drop(client);
}
