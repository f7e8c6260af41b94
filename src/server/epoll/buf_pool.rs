//! The epoll backend's buffer pool: the same count and size of buffers as the
//! io_uring buffer ring, so both backends run under the same memory budget.
//! Free buffers are reused last-in first-out, so the next read lands in memory
//! that is still in cache.
#![forbid(unsafe_code)]

use crate::echo_queue::BufId;

pub struct BufPool {
    memory: Box<[u8]>,
    buf_size: usize,
    free: Vec<BufId>,
}

impl BufPool {
    pub fn new(count: u32, buf_size: u32) -> BufPool {
        BufPool {
            memory: vec![0u8; count as usize * buf_size as usize].into_boxed_slice(),
            buf_size: buf_size as usize,
            free: (0..count).rev().map(|i| BufId(i as u16)).collect(),
        }
    }

    pub fn take(&mut self) -> Option<BufId> {
        self.free.pop()
    }

    pub fn give_back(&mut self, id: BufId) {
        debug_assert!(self.free.len() * self.buf_size < self.memory.len());
        self.free.push(id);
    }

    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    pub fn buf_mut(&mut self, id: BufId) -> &mut [u8] {
        let start = id.0 as usize * self.buf_size;
        &mut self.memory[start..start + self.buf_size]
    }

    pub fn bytes(&self, id: BufId, offset: u32, len: u32) -> &[u8] {
        let start = id.0 as usize * self.buf_size + offset as usize;
        &self.memory[start..start + len as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_last_in_first_out() {
        let mut pool = BufPool::new(4, 16);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert_ne!(a, b);
        pool.give_back(a);
        assert_eq!(pool.take(), Some(a));
        pool.buf_mut(b)[..3].copy_from_slice(b"abc");
        assert_eq!(pool.bytes(b, 1, 2), b"bc");
    }

    #[test]
    fn an_exhausted_pool_says_so() {
        let mut pool = BufPool::new(2, 8);
        assert!(pool.take().is_some() && pool.take().is_some());
        assert!(!pool.has_free());
        assert_eq!(pool.take(), None);
    }
}
