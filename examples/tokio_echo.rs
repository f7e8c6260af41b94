//! A tokio echo server written the way tokio's own `examples/echo.rs` is: the
//! multi-threaded runtime, a task per connection, a 4 KiB buffer per task.
//! A peer for the benchmarks, not part of the product.
//!
//! `tokio_echo [PORT] [THREADS] [ADDR]` prints `tokio-echo listening on ADDR:PORT`
//! and echoes until killed. ADDR defaults to 127.0.0.1; scripts/bench.py
//! passes 0.0.0.0 inside its server network namespace.

use std::env;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn main() -> std::io::Result<()> {
    let mut args = env::args().skip(1);
    let port: u16 = args.next().map_or(0, |p| p.parse().expect("PORT"));
    let threads: usize = args.next().map_or(1, |t| t.parse().expect("THREADS"));
    let ip: std::net::IpAddr = args
        .next()
        .map_or([127, 0, 0, 1].into(), |a| a.parse().expect("ADDR"));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(serve(ip, port))
}

async fn serve(ip: std::net::IpAddr, port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind((ip, port)).await?;
    println!("tokio-echo listening on {}", listener.local_addr()?);
    loop {
        let (mut socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
