//! End-to-end echo benchmarks: the same client workload against each server,
//! reported by criterion side by side, in messages per second.
//!
//! Servers: `uring` and `epoll` (ours), `tokio-uring` (ours, on the runtime),
//! and two peers, tokio and monoio, written as their own examples are. Each
//! server runs as its own process with one worker pinned to CPU 0; the client
//! (a minimal io_uring ping-pong client) runs pinned to CPU 1.
//!
//! Run: `cargo build --release --examples && cargo bench --bench echo`.

mod support;

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use support::pingpong::PingPong;
use support::{ServerProcess, Target};

struct Workload {
    name: &'static str,
    conns: usize,
    size: usize,
    pipeline: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "pingpong_1conn_64B",
        conns: 1,
        size: 64,
        pipeline: 1,
    },
    Workload {
        name: "pingpong_100conn_64B",
        conns: 100,
        size: 64,
        pipeline: 1,
    },
    Workload {
        name: "pingpong_100conn_1KiB",
        conns: 100,
        size: 1024,
        pipeline: 1,
    },
    Workload {
        name: "pingpong_1000conn_64B",
        conns: 1000,
        size: 64,
        pipeline: 1,
    },
    Workload {
        name: "pingpong_1000conn_1KiB",
        conns: 1000,
        size: 1024,
        pipeline: 1,
    },
    Workload {
        name: "pipelined16_1000conn_64B",
        conns: 1000,
        size: 64,
        pipeline: 16,
    },
];

fn echo(c: &mut Criterion) {
    support::pin_current_thread(1);
    for w in WORKLOADS {
        let mut group = c.benchmark_group(w.name);
        group
            .throughput(Throughput::Elements(1))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for target in Target::ALL {
            let Some(server) = ServerProcess::start(target) else {
                eprintln!(
                    "{}: binary not built, skipped (cargo build --release --examples)",
                    target.name()
                );
                continue;
            };
            let mut client = PingPong::connect(server.addr, w.conns, w.size, w.pipeline)
                .unwrap_or_else(|e| panic!("{}: connect: {e}", target.name()));
            group.bench_function(target.name(), |b| b.iter_custom(|iters| client.run(iters)));
            drop(client);
            drop(server);
        }
        group.finish();
    }
}

criterion_group!(benches, echo);
criterion_main!(benches);
