//! A monoio echo server written the way monoio's own `examples/echo.rs` is: a
//! thread-per-core runtime on io_uring, a task per connection owning its
//! buffer, `read` then `write_all` of the same buffer. One runtime per thread,
//! each with its own SO_REUSEPORT listener. A peer for the benchmarks, not part
//! of the product.
//!
//! `monoio_echo [PORT] [THREADS] [ADDR]` prints `monoio-echo listening on ADDR:PORT`
//! and echoes until killed. ADDR defaults to 127.0.0.1; scripts/bench.py
//! passes 0.0.0.0 inside its server network namespace.

use std::env;
use std::net::SocketAddr;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

fn main() {
    let mut args = env::args().skip(1);
    let port: u16 = args.next().map_or(0, |p| p.parse().expect("PORT"));
    let threads: usize = args.next().map_or(1, |t| t.parse().expect("THREADS"));
    let ip: std::net::IpAddr = args
        .next()
        .map_or([127, 0, 0, 1].into(), |a| a.parse().expect("ADDR"));
    // Bind the first listener here to learn the port when PORT is 0; the other
    // threads join it through SO_REUSEPORT.
    let first = std::net::TcpListener::bind((ip, port)).expect("bind");
    let addr = first.local_addr().expect("local addr");
    drop(first);
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let bound = bound_tx.clone();
            std::thread::spawn(move || run_thread(addr, bound))
        })
        .collect();
    // Announce only once every thread listens, so no client is refused.
    for _ in 0..threads {
        bound_rx.recv().expect("a thread failed to bind");
    }
    println!("monoio-echo listening on {addr}");
    for h in handles {
        h.join().expect("thread");
    }
}

fn run_thread(addr: SocketAddr, bound: std::sync::mpsc::Sender<()>) {
    let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("monoio runtime (io_uring)");
    rt.block_on(async move {
        let opts = ListenerOpts::new().reuse_port(true).reuse_addr(true);
        let listener = TcpListener::bind_with_config(addr, &opts).expect("bind");
        bound.send(()).expect("main thread waits");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            monoio::spawn(echo(stream));
        }
    });
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let (res, b) = stream.read(buf).await;
        buf = b;
        if res? == 0 {
            return Ok(());
        }
        let (res, b) = stream.write_all(buf).await;
        buf = b;
        res?;
        buf.clear();
    }
}
