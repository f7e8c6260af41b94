//! Clients that send without reading, and a buffer pool too small for the
//! load, on both backends: the server stops reading from the slow ones
//! (back-pressure) instead of buffering, its memory stays within its buffer
//! budget, a well-behaved client is still served, and every byte comes back
//! in order once the slow clients read. With a tiny pool, receives that find
//! no buffer resume when buffers come back.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::stream::{StreamClient, pump};
use common::*;

const SLOW_CLIENTS: usize = 200;
const WORKERS: u64 = 2;
const POOL_CONNS: usize = 3000;
/// What the server may use beyond its buffer pools: the binary, thread
/// stacks, rings (the io_uring CQ alone is 1 MiB per worker), slab, stdio.
const RSS_ALLOWANCE_KIB: u64 = 24 * 1024;
/// How much each slow client sends at most: far more than the pools, the
/// server's socket buffers and the client's own can hold together.
const SLOW_SEND_LIMIT: u64 = 64 << 20;

for_each_backend! {
    fn clients_that_do_not_read_are_paused_within_the_buffer_budget_while_others_are_served(backend) {
        // ~100 slow connections per worker with a budget of 2 buffers each,
        // from a pool of 1,024: the budget, not the pool, must stop them.
        slow_clients_are_paused_and_echoed_in_order(backend, 1024, 2048);
    }

    fn recv_rearms_after_buffer_exhaustion(backend) {
        let _guard = many_sockets_guard();
        // 4 buffers of 256 bytes per worker for 3,000 connections sending at once:
        // nearly every receive finds the pool empty (ENOBUFS on io_uring), and
        // each must be re-armed when a buffer comes back, losing no byte.
        let server = Server::start(
            backend,
            &["--buf-count", "4", "--buf-size", "256", "--conn-buffers", "1", "--stats", "0.1"],
        );
        let mut clients: Vec<EchoClient> = connect_many(server.addr, POOL_CONNS)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let len = 1000 + (i * 131) % 3000;
                EchoClient::new(s, payload(70_000 + i as u64, len), 700, true)
            })
            .collect();
        drive(&mut clients, Duration::from_secs(120));
        assert_all_echoed(&clients);
        let total: u64 = clients.iter().map(|c| c.payload.len() as u64).sum();
        drop(clients);
        let stats = server.wait_for_fresh_stats(Duration::from_secs(20), |s| s["open"] == 0);
        if backend == "uring" {
            // Receives pick their buffer before the data is echoed, so 3,000 busy
            // connections drain 4 buffers. (epoll takes a buffer only for the
            // length of a read and its send, so its pool rarely runs dry here.)
            assert!(stats["buffer_starved"] > 0, "the pool never ran dry: {stats:?}");
        }
        let stopped = server.stop();
        let s = &stopped.summary;
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!(s["errors"], 0, "{stopped:?}");
        assert_eq!(s["accepted"], POOL_CONNS as u64, "{stopped:?}");
        assert_eq!(s["closed"], POOL_CONNS as u64, "{stopped:?}");
        assert_eq!(s["bytes_in"], total, "{stopped:?}");
        assert_eq!(s["bytes_out"], total, "{stopped:?}");
    }
}

/// Hundreds of clients write without reading until their sockets block; then a
/// well-behaved client must be served, the server's RSS stay within its pools
/// plus an allowance, and once the slow clients read, every byte come back.
fn slow_clients_are_paused_and_echoed_in_order(backend: &str, buf_count: u64, buf_size: u64) {
    let _guard = many_sockets_guard();
    let (count, size) = (buf_count.to_string(), buf_size.to_string());
    let server = Server::start(
        backend,
        &[
            "--buf-count",
            &count,
            "--buf-size",
            &size,
            "--conn-buffers",
            "2",
            "--stats",
            "0.1",
        ],
    );
    let rss_idle = server.rss_kib();
    let pool_kib = WORKERS * buf_count * buf_size / 1024;
    let rss_bound = rss_idle.max(8 * 1024) + pool_kib + RSS_ALLOWANCE_KIB;

    // Small client buffers, set before connecting, so that the client blocks
    // after less of the kernel's autotuned socket buffers.
    let mut slow: Vec<StreamClient> = connect_many_with_buffers(server.addr, SLOW_CLIENTS, 8192)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut c = StreamClient::new(s, 9000 + i as u64);
            c.reading = false;
            c.send_limit = SLOW_SEND_LIMIT;
            c
        })
        .collect();

    // Write until every socket blocks: no client made progress for 500 ms.
    let (mut last_total, mut still_since) = (0u64, Instant::now());
    let mut rss_peak = 0;
    let blocked = pump(&mut slow, Duration::from_secs(60), |cs| {
        rss_peak = rss_peak.max(server.rss_kib());
        let total: u64 = cs.iter().map(|c| c.sent).sum();
        if total != last_total {
            (last_total, still_since) = (total, Instant::now());
        }
        still_since.elapsed() > Duration::from_millis(500)
    });
    assert!(blocked, "the slow clients never blocked");
    let sent_blocked: u64 = slow.iter().map(|c| c.sent).sum();
    assert!(
        slow.iter()
            .all(|c| c.sent < SLOW_SEND_LIMIT && c.failed.is_none()),
        "a slow client sent everything: the server kept reading"
    );

    // The server stopped reading from every one of them (each was paused at
    // least once), and holds no more than its budget of what they sent.
    server.wait_for_stats(Duration::from_secs(20), |s| {
        s["backpressured"] >= SLOW_CLIENTS as u64
    });
    let stats = server.fresh_stats(Duration::from_secs(10));
    assert!(
        stats["bytes_in"] < sent_blocked,
        "the server read everything the slow clients sent: {stats:?}"
    );
    let held = stats["bytes_in"] - stats["bytes_out"];
    let held_bound = if backend == "epoll" || receive_limit_supported() {
        // epoll reads at most what is left of the budget, and io_uring arms
        // each multishot receive with that as its total byte limit (6.17+):
        // 2 buffers per connection.
        SLOW_CLIENTS as u64 * 2 * buf_size
    } else {
        // Older kernels: the receive is cancelled at the budget and can take
        // more before the cancel lands; the pool still bounds it.
        WORKERS * buf_count * buf_size
    };
    assert!(
        held <= held_bound,
        "the server holds {held} bytes received and not echoed, over {held_bound}: {stats:?}"
    );
    rss_peak = rss_peak.max(server.rss_kib());
    assert!(
        rss_peak <= rss_bound,
        "server RSS {rss_peak} KiB over its budget {rss_bound} KiB (idle {rss_idle}, pools {pool_kib})"
    );

    // A well-behaved client is served promptly while the slow ones are stuck.
    let mut good = server.connect();
    good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    for round in 0..20 {
        let msg = payload(round, 1000);
        good.write_all(&msg).unwrap();
        let mut back = vec![0; msg.len()];
        good.read_exact(&mut back).unwrap_or_else(|e| {
            panic!("round {round}: echo not back within 5 s while slow clients block: {e}")
        });
        assert_eq!(back, msg, "round {round}");
    }
    let good_elapsed = started.elapsed();
    assert!(
        good_elapsed < Duration::from_secs(10),
        "20 round trips took {good_elapsed:?}"
    );
    drop(good);

    // The slow clients read at last: every byte comes back, in order.
    for c in &mut slow {
        c.reading = true;
        c.send_limit = c.sent;
        c.window = u64::MAX;
        c.shut_write();
    }
    let all_back = pump(&mut slow, Duration::from_secs(120), |cs| {
        cs.iter().all(|c| c.finished())
    });
    let missing = slow.iter().filter(|c| !c.finished()).count();
    assert!(
        all_back,
        "{missing} slow clients never got their echo and EOF"
    );
    for (i, c) in slow.iter().enumerate() {
        assert_eq!(c.failed, None, "slow client {i}");
        c.assert_exact_prefix(i);
        assert_eq!(c.received, c.sent, "slow client {i}: not all echoed");
    }
    let total: u64 = slow.iter().map(|c| c.sent).sum();
    drop(slow);
    server.wait_for_fresh_stats(Duration::from_secs(20), |s| s["open"] == 0);
    let stopped = server.stop();
    let s = &stopped.summary;
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(s["errors"], 0, "{stopped:?}");
    assert_eq!(s["bytes_out"], total + 20_000, "{stopped:?}");
    assert_eq!(s["bytes_in"], total + 20_000, "{stopped:?}");
}

/// Whether the kernel caps a multishot receive's total bytes (Linux 6.17+).
fn receive_limit_supported() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 17)
}
