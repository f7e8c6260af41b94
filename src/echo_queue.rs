//! What one connection has received and not yet echoed, in order, and the
//! back-pressure rule both backends apply to it.
//!
//! The queue holds buffer ids, not bytes: the bytes stay in the worker's buffer
//! pool (the io_uring buffer ring, or the epoll backend's pool), so echoing costs
//! no copy. Only the front chunk is ever being sent (one send in flight per
//! socket), and a short send leaves `sent` pointing at where the next one starts.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

/// Index of a buffer in a worker's pool. Invariant: < the pool's buffer count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufId(pub u16);

/// `len` bytes received into buffer `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub buf: BufId,
    pub len: u32,
}

/// The unsent part of the front chunk: send `len` bytes from `offset` of `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsent {
    pub buf: BufId,
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Default)]
pub struct EchoQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent. Invariant: < front.len, 0 when empty.
    sent: u32,
}

impl EchoQueue {
    pub fn push(&mut self, chunk: Chunk) {
        debug_assert!(chunk.len > 0, "an empty receive is EOF, never queued");
        self.chunks.push_back(chunk);
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Buffers this connection holds from the pool.
    pub fn held(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// What the next send should carry, if anything.
    pub fn next_unsent(&self) -> Option<Unsent> {
        self.chunks.front().map(|c| Unsent {
            buf: c.buf,
            offset: self.sent,
            len: c.len - self.sent,
        })
    }

    /// Records that `n` bytes of the front chunk went out. Returns the buffer
    /// once all of it has, so the caller can give it back to the pool.
    pub fn advance(&mut self, n: u32) -> Option<BufId> {
        let front = self.chunks.front().expect("advance on an empty queue");
        debug_assert!(n <= front.len - self.sent, "sent more than was queued");
        self.sent += n;
        if self.sent == front.len {
            self.sent = 0;
            self.chunks.pop_front().map(|c| c.buf)
        } else {
            None
        }
    }

    /// Empties the queue (the connection is closing), yielding every buffer.
    /// `keep_front` keeps the front chunk when a send of it is still in flight:
    /// its buffer must not go back to the pool before the kernel is done with it.
    pub fn drain(&mut self, keep_front: bool) -> impl Iterator<Item = BufId> + '_ {
        let skip = usize::from(keep_front && !self.chunks.is_empty());
        self.chunks.drain(skip..).map(|c| c.buf)
    }

    /// Over budget: stop receiving from this connection until its sends drain.
    pub fn is_over_budget(&self, conn_buffers: u32) -> bool {
        self.held() >= conn_buffers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: u16, len: u32) -> Chunk {
        Chunk {
            buf: BufId(id),
            len,
        }
    }

    #[test]
    fn short_sends_continue_where_they_stopped() {
        let mut q = EchoQueue::default();
        q.push(chunk(3, 100));
        q.push(chunk(7, 50));
        assert_eq!(q.advance(40), None);
        assert_eq!(
            q.next_unsent(),
            Some(Unsent {
                buf: BufId(3),
                offset: 40,
                len: 60
            })
        );
        assert_eq!(q.advance(60), Some(BufId(3)));
        assert_eq!(
            q.next_unsent(),
            Some(Unsent {
                buf: BufId(7),
                offset: 0,
                len: 50
            })
        );
        assert_eq!(q.held(), 1);
    }

    #[test]
    fn drain_keeps_the_buffer_a_send_still_uses() {
        let mut q = EchoQueue::default();
        for id in 0..4 {
            q.push(chunk(id, 10));
        }
        let freed: Vec<_> = q.drain(true).collect();
        assert_eq!(freed, vec![BufId(1), BufId(2), BufId(3)]);
        assert_eq!(q.held(), 1);
        assert_eq!(q.advance(10), Some(BufId(0)));
        assert!(q.is_empty());
    }

    #[test]
    fn budget_counts_buffers_held() {
        let mut q = EchoQueue::default();
        q.push(chunk(0, 1));
        assert!(!q.is_over_budget(2));
        q.push(chunk(1, 1));
        assert!(q.is_over_budget(2));
    }
}
