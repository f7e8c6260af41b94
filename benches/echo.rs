//! End-to-end echo benchmarks: the same client workload against each server,
//! reported by criterion side by side, in messages per second.
//!
//! Servers: `uring` and `epoll` (ours), `tokio-uring` (ours, on the runtime),
//! and two peers, tokio and monoio, written as their own examples are. Each
//! server runs as its own process with one worker pinned to CPU 0; the client
//! (a minimal io_uring ping-pong client) runs pinned to CPU 1.
//!
//! Topology: by default across two network namespaces joined by a veth pair,
//! with RPS steering the server's receive processing to CPU 0 and the
//! client's to CPU 1, as on two hosts; on loopback where namespaces cannot be
//! made (not root), with the reason printed. `URING_ECHO_BENCH_TOPOLOGY`
//! (`auto`, `netns`, `loopback`, or `netns,loopback` for both) picks; see
//! `support/topology.rs`. Every benchmark id is `TOPOLOGY/SERVER/WORKLOAD`,
//! e.g. `netns/uring/1000x64B`.
//!
//! Run: `cargo build --release --examples && cargo bench --bench echo`.

mod support;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use support::pingpong::PingPong;
use support::topology::{BenchTopology, CLIENT_CPU};
use support::{ServerProcess, Target};

struct Workload {
    /// CONNSxSIZE, and the pipeline depth when more than one.
    name: &'static str,
    conns: usize,
    size: usize,
    pipeline: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "1x64B",
        conns: 1,
        size: 64,
        pipeline: 1,
    },
    Workload {
        name: "100x64B",
        conns: 100,
        size: 64,
        pipeline: 1,
    },
    Workload {
        name: "100x1KiB",
        conns: 100,
        size: 1024,
        pipeline: 1,
    },
    Workload {
        name: "1000x64B",
        conns: 1000,
        size: 64,
        pipeline: 1,
    },
    Workload {
        name: "1000x1KiB",
        conns: 1000,
        size: 1024,
        pipeline: 1,
    },
    Workload {
        name: "1000x64B_pipeline16",
        conns: 1000,
        size: 64,
        pipeline: 16,
    },
];

fn echo(c: &mut Criterion) {
    support::pin_current_thread(CLIENT_CPU);
    // Each topology is removed (its namespaces deleted) when the loop is done with it.
    for topology in BenchTopology::chosen() {
        let mut group = c.benchmark_group(topology.name());
        group
            .throughput(Throughput::Elements(1))
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        for w in WORKLOADS {
            for target in Target::ALL {
                let Some(server) = ServerProcess::start(target, &topology) else {
                    eprintln!(
                        "{}: binary not built, skipped (cargo build --release --examples)",
                        target.name()
                    );
                    continue;
                };
                let mut client = topology
                    .as_client(|| PingPong::connect(server.addr, w.conns, w.size, w.pipeline))
                    .unwrap_or_else(|e| panic!("{}: connect: {e}", target.name()));
                let id = BenchmarkId::new(target.name(), w.name);
                group.bench_function(id, |b| b.iter_custom(|iters| client.run(iters)));
                drop(client);
                drop(server);
            }
        }
        group.finish();
    }
}

criterion_group!(benches, echo);
criterion_main!(benches);
