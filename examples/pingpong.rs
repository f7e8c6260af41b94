//! The benches' minimal io_uring ping-pong client as a command, for scripts:
//! the reference a heavier client (loadgen) is compared with, and a quick way
//! to load a server by hand.
//!
//! `pingpong ADDR CONNS SIZE PIPELINE SECONDS` prints one line:
//! `msgs=N secs=S msgs_per_s=R cpu_ns_per_msg=C` (C: this process's user+system CPU).

#[path = "../benches/support/pingpong.rs"]
mod pingpong;

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() != 5 {
        eprintln!("usage: pingpong ADDR CONNS SIZE PIPELINE SECONDS");
        std::process::exit(2);
    }
    let addr = args[0].parse().expect("ADDR as IP:PORT");
    let conns: usize = args[1].parse().expect("CONNS");
    let size: usize = args[2].parse().expect("SIZE");
    let pipeline: usize = args[3].parse().expect("PIPELINE");
    let secs: f64 = args[4].parse().expect("SECONDS");
    let mut client = pingpong::PingPong::connect(addr, conns, size, pipeline).expect("connect");
    let cpu_start = cpu_time();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let (mut msgs, mut elapsed) = (0u64, Duration::ZERO);
    // Rounds of 20,000 messages until the time is up.
    while Instant::now() < deadline {
        elapsed += client.run(20_000);
        msgs += 20_000;
    }
    let cpu = cpu_time() - cpu_start;
    println!(
        "msgs={msgs} secs={:.3} msgs_per_s={:.0} cpu_ns_per_msg={:.0}",
        elapsed.as_secs_f64(),
        msgs as f64 / elapsed.as_secs_f64(),
        cpu.as_nanos() as f64 / msgs as f64
    );
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we pass, nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
