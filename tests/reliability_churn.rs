//! A bounded churn soak, on both backends (the long one is
//! `scripts/soak.sh --churn`): ~10 s of connections opened, used for one
//! verified echo and closed, 100 at a time. Passes when loadgen saw no
//! mismatch and no failure, the server accepted and closed exactly what
//! loadgen opened (its open count back to 0, no direct descriptor left), and
//! what a leak would grow did not: the slab and the RSS at the end against
//! after the warm-up.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::loadgen::{LOADGEN, f, pointer, u};
use common::{Server, many_sockets_guard};

const LOAD_S: &str = "10";
/// Receive buffers of the one worker. Each connection's echo takes one, and
/// the buffer ring hands them out in turn, so the pool is fully touched (its
/// pages in the RSS) once a few times this many connections were served.
const BUF_COUNT: &str = "1024";
/// Connections the server must have accepted before the warm-up counts as
/// done: three times round the buffer pool.
const WARM_CONNS: u64 = 3 * 1024;
/// Growth allowed between warm-up and the end: allocator noise, not a leak (a
/// leak of even 100 bytes per connection would be megabytes here).
const RSS_MARGIN_KIB: u64 = 4 * 1024;

for_each_backend! {
    fn ten_seconds_of_churn_leave_the_server_as_it_was_after_warm_up(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(
            backend,
            &["--stats", "0.2", "--workers", "1", "--buf-count", BUF_COUNT],
        );
        let load = Command::new(LOADGEN)
            .args([
                "--target", &server.addr.to_string(), "--conns", "100",
                "--messages-per-conn", "1", "--duration", LOAD_S, "--quiet", "--json", "-",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run loadgen");
        let warm = server.wait_for_fresh_stats(Duration::from_secs(30), |s| {
            s["accepted"] >= WARM_CONNS
        });
        let rss_warm = server.rss_kib();
        assert!(warm["interval_accepted"] > 0, "accepts per interval shown: {warm:?}");
        let out = load.wait_with_output().expect("loadgen");
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr))
        });
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(u(&r, "verify.mismatches"), 0);
        assert_eq!(pointer(&r, "errors"), &serde_json::json!({}));
        let opened = u(&r, "connections.established");
        assert_eq!(u(&r, "connections.completed"), opened, "no warm-up: every one measured");
        assert!(f(&r, "throughput.conns_per_s") > 0.0);

        // The probe, then every connection loadgen opened.
        let expected = opened + 1;
        let end = server.wait_for_fresh_stats(Duration::from_secs(20), |s| {
            s["accepted"] == expected && s["closed"] == expected && s["open"] == 0
        });
        let rss_end = server.rss_kib();
        eprintln!(
            "{backend}: {opened} connections; after warm-up {warm:?} RSS {rss_warm} KiB; \
             end {end:?} RSS {rss_end} KiB"
        );
        assert_eq!(end["direct_fds"], 0, "{end:?}");
        assert_eq!(end["errors"], 0, "{end:?}");
        // The slab holds the peak of open connections, not the total: it may
        // double once more if the server's closes trail a little further
        // behind loadgen's later on, never grow with the connections.
        assert!(end["slab_slots"] <= 2 * warm["slab_slots"].max(128), "{warm:?} -> {end:?}");
        assert!(
            rss_end <= rss_warm + RSS_MARGIN_KIB,
            "server memory grew: {rss_warm} KiB after warm-up, {rss_end} KiB at the end"
        );
        let stopped = server.stop();
        let s = &stopped.summary;
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!((s["open"], s["accepted"], s["closed"]), (0, expected, expected), "{stopped:?}");
    }
}
