//! A bounded soak, on both backends (the long one is `scripts/soak.sh`): a
//! few thousand connections echo continuously for ~15 s. Zero errors, every
//! byte back in order, and the server's memory flat: RSS at the end within a
//! small margin of RSS after warm-up.

mod common;

use std::time::{Duration, Instant};

use common::stream::{StreamClient, pump};
use common::*;

const CONNS: usize = 2000;
const WARM_UP: Duration = Duration::from_secs(3);
const SOAK: Duration = Duration::from_secs(12);
/// Growth allowed between warm-up and the end: allocator noise, not a leak
/// (a leak of even 100 bytes per message would be tens of MiB here).
const RSS_MARGIN_KIB: u64 = 4 * 1024;

for_each_backend! {
    fn echoes_continuously_on_thousands_of_connections_with_flat_memory(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(backend, &["--buf-count", "1024", "--stats", "1"]);
        let mut clients: Vec<StreamClient> = connect_many(server.addr, CONNS)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let mut c = StreamClient::new(s, 40_000 + i as u64);
                c.window = 16 * 1024;
                c
            })
            .collect();
        let started = Instant::now();
        assert!(pump(&mut clients, WARM_UP + Duration::from_secs(1), |_| started.elapsed() >= WARM_UP));
        let rss_warm = server.rss_kib();
        let echoed_warm: u64 = clients.iter().map(|c| c.received).sum();
        let mut rss_max = rss_warm;
        let mut last_sample = Instant::now();
        assert!(pump(&mut clients, SOAK + Duration::from_secs(1), |_| {
            if last_sample.elapsed() >= Duration::from_millis(500) {
                rss_max = rss_max.max(server.rss_kib());
                last_sample = Instant::now();
            }
            started.elapsed() >= WARM_UP + SOAK
        }));
        let rss_end = server.rss_kib();
        let echoed_soak: u64 = clients.iter().map(|c| c.received).sum::<u64>() - echoed_warm;
        for (i, c) in clients.iter().enumerate() {
            assert_eq!(c.failed, None, "connection {i}");
            c.assert_exact_prefix(i);
        }
        // Every connection echoed throughout, not just some.
        assert!(clients.iter().all(|c| c.received > 64 * 1024), "a connection starved");

        // Finish: stop sending, half-close, and everything sent comes back.
        for c in &mut clients {
            c.send_limit = c.sent;
            c.shut_write();
        }
        assert!(pump(&mut clients, Duration::from_secs(60), |cs| cs.iter().all(|c| c.finished())));
        for (i, c) in clients.iter().enumerate() {
            assert_eq!(c.failed, None, "connection {i}");
            assert!(c.eof, "connection {i}");
            c.assert_exact_prefix(i);
            assert_eq!(c.received, c.sent, "connection {i}");
        }
        let total: u64 = clients.iter().map(|c| c.sent).sum();
        drop(clients);
        eprintln!(
            "{backend}: {echoed_soak} bytes echoed in {SOAK:?} after warm-up; RSS warm {rss_warm} KiB, max {rss_max}, end {rss_end}"
        );
        assert!(
            rss_max.max(rss_end) <= rss_warm + RSS_MARGIN_KIB,
            "server memory grew: {rss_warm} KiB after warm-up, {rss_max} KiB max, {rss_end} KiB at the end"
        );
        let stopped = server.stop();
        let s = &stopped.summary;
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!(s["errors"], 0, "{stopped:?}");
        assert_eq!(s["accepted"], CONNS as u64, "{stopped:?}");
        assert_eq!(s["bytes_out"], total, "{stopped:?}");
    }
}
