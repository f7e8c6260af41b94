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

/// A transparent huge page on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

impl Mapping {
    /// Memory for the buffer pool, on transparent huge pages where the kernel
    /// has them: receives land all over the pool, and with 4 KiB pages the
    /// default 16 MiB pool is 4,096 TLB entries, far more than a core holds,
    /// so each receive would pay a page walk. THP in `madvise` mode (the
    /// common default) gives huge pages only to memory that asks. The mapping
    /// is rounded up to whole huge pages, which `mmap` aligns for lengths of
    /// 2 MiB and more on current kernels. Best effort: without THP it is
    /// ordinary memory.
    fn new_huge(len: usize) -> io::Result<Mapping> {
        if len < HUGE_PAGE {
            return Mapping::new(len);
        }
        let m = Mapping::new(len.div_ceil(HUGE_PAGE) * HUGE_PAGE)?;
        // SAFETY: advice on a range we own; MADV_HUGEPAGE changes no contents.
        unsafe {
            libc::madvise(m.ptr.as_ptr().cast(), m.len, libc::MADV_HUGEPAGE);
        }
        Ok(m)
    }

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
    /// Our tail (a free-running position; slot = position & mask), ahead of
    /// the kernel-visible one until `publish`.
    tail: u16,
    published_tail: u16,
    /// The position each buffer id was last offered at. The kernel takes
    /// positions in order, and a receive bundle names only its first buffer:
    /// the others sit at the positions after it.
    pos_of: Box<[u16]>,
    /// Per slot: the buffer offered there has been reported consumed by a
    /// completion. Completions of different receives can arrive out of
    /// position order, so this is not a prefix.
    reported: Box<[bool]>,
    /// Every position below this one has been reported consumed. A slot is
    /// only rewritten once its previous position is below `low`, so an entry
    /// is never overwritten before the completion that consumed it is read.
    low: u16,
    /// Recycled buffers waiting for a slot that may be rewritten.
    waiting: Vec<BufId>,
    /// Receives may be bundles, so `consume` reads the slots after the first
    /// and slot reuse waits for `low` (see `track_bundles`).
    bundles: bool,
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
            buffers: Mapping::new_huge(entries as usize * buf_size as usize)?,
            entries: entries as u16,
            buf_size,
            bgid,
            tail: 0,
            published_tail: 0,
            pos_of: vec![0; entries as usize].into_boxed_slice(),
            reported: vec![false; entries as usize].into_boxed_slice(),
            low: 0,
            waiting: Vec::new(),
            bundles: false,
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

    /// How many buffers the group holds (their ids are `0..count`).
    pub fn count(&self) -> u32 {
        u32::from(self.entries)
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

    /// Prepares for receive bundles, whose completions name only their first
    /// buffer: from now on every buffer the kernel hands out must be reported
    /// through `consume`, which then reads the rest from the ring's slots, and
    /// a slot is rewritten only after the completion that consumed it was
    /// reported (completions of different receives can arrive out of order).
    pub fn track_bundles(&mut self) {
        self.bundles = true;
    }

    /// Gives buffer `id` back to the kernel (visible after the next `publish`).
    pub fn recycle(&mut self, id: BufId) {
        if !self.bundles || (self.waiting.is_empty() && self.has_room()) {
            self.push(id);
        } else {
            self.waiting.push(id);
        }
    }

    /// The next slot may be rewritten: its last position was reported consumed.
    fn has_room(&self) -> bool {
        self.tail.wrapping_sub(self.low) < self.entries
    }

    fn entry(&mut self, slot: usize) -> &mut BufRingEntry {
        assert!(slot < self.entries as usize);
        // SAFETY: `slot` < entries, inside the ring mapping, which lives as
        // long as `self`. The kernel only reads slots between its head and the
        // published tail; callers touch slots outside that window (`push`) or
        // read entries the kernel has finished with (`consume`).
        unsafe { &mut *self.ring.ptr.as_ptr().cast::<BufRingEntry>().add(slot) }
    }

    fn push(&mut self, id: BufId) {
        debug_assert!(!self.bundles || self.has_room());
        let slot = (self.tail & self.mask()) as usize;
        let addr = self.ptr(id, 0) as u64;
        let buf_size = self.buf_size;
        let entry = self.entry(slot);
        entry.set_addr(addr);
        entry.set_len(buf_size);
        entry.set_bid(id.0);
        self.pos_of[id.0 as usize] = self.tail;
        self.reported[slot] = false;
        self.tail = self.tail.wrapping_add(1);
    }

    /// Accounts for a receive that took buffers starting at `first` and filled
    /// `len` bytes, calling `each(buffer, bytes in it)` in order; returns how
    /// many buffers it took. A bundle fills each buffer (up to the length its
    /// ring entry gives, which the kernel may have shortened) before the next.
    pub fn consume(&mut self, first: BufId, len: u32, mut each: impl FnMut(BufId, u32)) -> u32 {
        if !self.bundles {
            debug_assert!(len <= self.buf_size);
            each(first, len);
            return 1;
        }
        let start = self.pos_of[first.0 as usize];
        let mut left = len;
        let mut taken = 0u16;
        loop {
            let slot = (start.wrapping_add(taken) & self.mask()) as usize;
            let entry = self.entry(slot);
            let (id, size) = (entry.bid(), entry.len());
            debug_assert!(
                taken > 0 || id == first.0,
                "ring slot {slot} holds {id}, not {}",
                first.0
            );
            let n = left.min(size);
            each(BufId(id), n);
            self.reported[slot] = true;
            left -= n;
            taken += 1;
            if left == 0 {
                break;
            }
        }
        while self.low != self.tail && self.reported[(self.low & self.mask()) as usize] {
            self.low = self.low.wrapping_add(1);
        }
        u32::from(taken)
    }

    /// Makes every recycled buffer visible to the kernel. Called once per batch
    /// of completions: one release store however many buffers came back.
    pub fn publish(&mut self) {
        while !self.waiting.is_empty() && self.has_room() {
            let id = self.waiting.pop().expect("not empty");
            self.push(id);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_bundle_reports_find_their_buffers_and_slots_wait_for_them() {
        let Ok(ring) = IoUring::new(8) else {
            eprintln!("skipped: io_uring unavailable here");
            return;
        };
        let mut br = BufRing::register(&ring, 0, 8, 64).expect("register buffer ring");
        br.track_bundles();
        // The kernel handed out positions 0..=2 to receive A (a bundle of 129
        // bytes) and position 3 to receive B, whose completion arrives first.
        let mut seen = Vec::new();
        br.consume(BufId(3), 10, |b, n| seen.push((b.0, n)));
        // B's buffer comes back at once: its slot would be position 8, slot 0,
        // still holding A's first buffer, so it must wait.
        br.recycle(BufId(3));
        br.publish();
        assert_eq!(br.waiting, vec![BufId(3)]);
        assert_eq!(br.consume(BufId(0), 129, |b, n| seen.push((b.0, n))), 3);
        assert_eq!(seen, vec![(3, 10), (0, 64), (1, 64), (2, 1)]);
        // A reported: positions 0..=3 are done, so the waiting buffer goes in.
        br.publish();
        assert!(br.waiting.is_empty());
        assert_eq!(br.pos_of[3], 8);
    }
}
