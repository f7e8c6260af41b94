//! The provided buffer ring: one pool of receive buffers per worker, registered
//! with the kernel, which picks a free buffer for each receive completion. No
//! connection owns a receive buffer; one holds buffers only while their bytes wait
//! to be echoed.
//!
//! Lifecycle of a buffer: in the ring (kernel may pick it) → picked by a receive
//! (its id arrives in the completion) → queued on the connection → sent back →
//! [`BufRing::recycle`] puts it at the ring's tail → [`BufRing::publish`] makes
//! the new tail visible to the kernel, once per batch of completions.
//!
//! This module does not decide when to recycle; the event loop does.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

use crate::echo_queue::BufId;

/// Anonymous, page-aligned memory that unmaps itself.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping with no address hint has no
        // preconditions; the result is checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A registered provided-buffer ring and the buffers it hands out.
///
/// Must outlive every operation that may pick or use one of its buffers: the
/// kernel writes into `buffers` until the group is unregistered or the ring is
/// closed. The worker keeps its `IoUring` in a field declared before its
/// `BufRing`, so the ring is closed first (fields drop in declaration order).
pub struct BufRing {
    /// `entries` ring slots of `BufRingEntry`; the first slot's reserved field is the tail.
    ring: Mapping,
    /// `entries * buf_size` bytes of buffer memory.
    buffers: Mapping,
    /// Invariants: a power of two, <= 32768.
    entries: u16,
    buf_size: u32,
    /// Buffer group id the receives name.
    bgid: u16,
    /// Our tail, ahead of the kernel-visible one until `publish`.
    tail: u16,
    published_tail: u16,
    /// Which buffer we put in each ring slot. The kernel consumes slots in
    /// order from its head, and a receive bundle names only its first buffer:
    /// the others are the ones in the slots after it.
    slot_bids: Box<[u16]>,
    /// Our mirror of the kernel's head: slots consumed so far.
    head: u16,
}

impl BufRing {
    /// Allocates `entries` buffers of `buf_size` bytes, registers them as group
    /// `bgid` (kernel 5.19+), and offers them all to the kernel.
    pub fn register(ring: &IoUring, bgid: u16, entries: u32, buf_size: u32) -> io::Result<BufRing> {
        assert!(
            entries.is_power_of_two() && entries <= 32768,
            "checked by Config"
        );
        let page = 4096usize;
        let ring_bytes =
            (entries as usize * std::mem::size_of::<BufRingEntry>()).div_ceil(page) * page;
        let mut br = BufRing {
            ring: Mapping::new(ring_bytes)?,
            buffers: Mapping::new(entries as usize * buf_size as usize)?,
            entries: entries as u16,
            buf_size,
            bgid,
            tail: 0,
            published_tail: 0,
            slot_bids: vec![0; entries as usize].into_boxed_slice(),
            head: 0,
        };
        // SAFETY: the ring mapping is page aligned, `entries` slots long, and lives
        // in `self` until after the ring is closed (see the type's doc).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                br.ring.ptr.as_ptr() as u64,
                entries as u16,
                bgid,
                0,
            )?;
        }
        for id in 0..entries {
            br.push(BufId(id as u16));
        }
        br.publish();
        Ok(br)
    }

    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    fn mask(&self) -> u16 {
        self.entries - 1
    }

    /// Pointer to byte `offset` of buffer `id`; valid as long as `self` is.
    pub fn ptr(&self, id: BufId, offset: u32) -> *const u8 {
        debug_assert!(id.0 < self.entries && offset < self.buf_size);
        let at = id.0 as usize * self.buf_size as usize + offset as usize;
        // SAFETY: `at` < entries * buf_size, the mapping's length (checked above).
        unsafe { self.buffers.ptr.as_ptr().add(at) }
    }

    /// The bytes a receive put in buffer `id`.
    pub fn bytes(&self, id: BufId, len: u32) -> &[u8] {
        debug_assert!(len <= self.buf_size);
        // SAFETY: the kernel wrote `len` bytes there before posting the completion
        // that handed us `id`, and it will not write again until we recycle `id`.
        unsafe { std::slice::from_raw_parts(self.ptr(id, 0), len as usize) }
    }

    /// Gives buffer `id` back to the kernel (visible after the next `publish`).
    pub fn recycle(&mut self, id: BufId) {
        self.push(id);
    }

    fn push(&mut self, id: BufId) {
        let slot = (self.tail & self.mask()) as usize;
        let addr = self.ptr(id, 0) as u64;
        // SAFETY: `slot` < entries, inside the ring mapping. The kernel only reads
        // slots between its head and the published tail; this slot is past the
        // published tail, because at most `entries` buffers exist and `id` was
        // consumed by the kernel (or never offered) before it came back here.
        let entry = unsafe { &mut *self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size);
        entry.set_bid(id.0);
        self.slot_bids[slot] = id.0;
        self.tail = self.tail.wrapping_add(1);
    }

    /// Accounts for a receive that consumed buffers starting at `first` and
    /// filled `len` bytes (a bundle fills each buffer before the next), calling
    /// `each(buffer, bytes in it)` in order. Returns how many buffers it took.
    pub fn consume(&mut self, first: BufId, len: u32, mut each: impl FnMut(BufId, u32)) -> u32 {
        let mut left = len.max(1);
        let mut taken = 0;
        while left > 0 {
            let slot_id = self.slot_bids[(self.head & self.mask()) as usize];
            debug_assert!(
                taken > 0 || slot_id == first.0,
                "ring order lost: {slot_id} != {}",
                first.0
            );
            // The first buffer is the one the completion names, whatever the mirror says.
            let id = if taken == 0 { first.0 } else { slot_id };
            let n = left.min(self.buf_size);
            each(BufId(id), n.min(len));
            left -= n;
            taken += 1;
            self.head = self.head.wrapping_add(1);
        }
        taken
    }

    /// Makes every recycled buffer visible to the kernel. Called once per batch
    /// of completions: one release store however many buffers came back.
    pub fn publish(&mut self) {
        if self.tail == self.published_tail {
            return;
        }
        // SAFETY: the ring mapping starts with a `BufRingEntry` whose reserved
        // field is the shared tail, 2-byte aligned; the kernel reads it atomically.
        let tail =
            unsafe { &*(BufRingEntry::tail(self.ring.ptr.as_ptr().cast()) as *const AtomicU16) };
        // Release: the entries written by `push` must be visible before the tail.
        tail.store(self.tail, Ordering::Release);
        self.published_tail = self.tail;
    }
}
