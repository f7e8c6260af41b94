//! `examples/minimal_echo.rs`, built into this test and run on a free port:
//! several clients at once echo payloads byte-exact (one far larger than a
//! receive buffer, so short sends and several buffers per message happen),
//! then the example returns by itself once they have all closed.

#[path = "../examples/minimal_echo.rs"]
#[allow(dead_code)]
mod minimal_echo;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

fn payload(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn the_minimal_example_echoes_every_client_byte_exact_then_returns() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let sizes = [1usize, 64, 4096, 4097, 300_000];
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(minimal_echo::serve(listener, Some(sizes.len())));
    });
    let clients: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            std::thread::spawn(move || {
                let sent = payload(len, i as u32 + 1);
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let writer = {
                    let (mut w, sent) = (s.try_clone().expect("clone"), sent.clone());
                    std::thread::spawn(move || {
                        w.write_all(&sent).expect("write");
                        w.shutdown(Shutdown::Write).expect("FIN");
                    })
                };
                let mut echoed = Vec::new();
                s.read_to_end(&mut echoed).expect("read the echo to EOF");
                writer.join().expect("writer");
                (sent, echoed)
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let (sent, echoed) = client.join().expect("client");
        assert_eq!(echoed.len(), sent.len(), "client {i}: length");
        assert!(echoed == sent, "client {i}: bytes differ");
    }
    let served = done
        .recv_timeout(Duration::from_secs(10))
        .expect("the example returns once every client closed");
    served.expect("the example ran without error");
}
