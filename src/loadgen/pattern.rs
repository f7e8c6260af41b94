//! The verification pattern: what byte every connection must send and get back
//! at every offset of its stream, so an echo can be checked without keeping a
//! copy of what was sent.
//!
//! One shared buffer of [`PERIOD`] pseudo-random bytes, followed by its first
//! `tail` bytes again, so that any slice of up to `tail` bytes starting anywhere
//! in the period is contiguous. Connection `seed`'s byte at stream offset `k` is
//! `period[(seed + k) % PERIOD]`. Sends are slices of this buffer (no
//! per-connection send memory) and received bytes are compared at their
//! expected offset, which catches corruption, loss, duplication and reordering.
//! This module does no I/O and keeps no per-connection state.
#![forbid(unsafe_code)]

/// Length of the pattern's period: a prime, so that the period shares no factor
/// with message sizes, and a lost or duplicated run of bytes never lines the
/// stream back up with itself (a shift of `d` bytes goes unnoticed only if `d`
/// is a multiple of 65521).
pub const PERIOD: usize = 65521;

/// The shared pattern buffer. Immutable once built, shared by every thread.
#[derive(Debug)]
pub struct Pattern {
    /// `PERIOD + tail` bytes. Invariant: `bytes[PERIOD + i] == bytes[i]` for `i < tail`.
    bytes: Box<[u8]>,
    tail: usize,
}

impl AsRef<[u8]> for Pattern {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Pattern {
    /// Builds the pattern; `tail` is the longest slice [`Pattern::slice`] may be asked for.
    pub fn new(tail: usize) -> Pattern {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut bytes: Vec<u8> = (0..PERIOD)
            .map(|_| {
                // xorshift64*: cheap, and no two neighbouring bytes repeat a short cycle.
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        let mut i = 0;
        while bytes.len() < PERIOD + tail {
            let b = bytes[i];
            bytes.push(b);
            i += 1;
        }
        Pattern {
            bytes: bytes.into_boxed_slice(),
            tail,
        }
    }

    /// The longest slice that can be asked for.
    pub fn max_slice(&self) -> usize {
        self.tail
    }

    /// Where in the buffer connection `seed`'s byte at stream offset `offset` lives.
    pub fn index(seed: u32, offset: u64) -> usize {
        ((u64::from(seed) + offset) % PERIOD as u64) as usize
    }

    /// The `len` bytes connection `seed` sends from stream offset `offset`.
    /// Panics if `len > max_slice()`.
    pub fn slice(&self, seed: u32, offset: u64, len: usize) -> &[u8] {
        &self.bytes[self.range(seed, offset, len)]
    }

    /// Where [`Pattern::slice`] lies in the pattern's bytes (`AsRef<[u8]>`),
    /// for a send that points into them.
    pub fn range(&self, seed: u32, offset: u64, len: usize) -> std::ops::Range<usize> {
        assert!(
            len <= self.tail,
            "slice of {len} bytes > tail {}",
            self.tail
        );
        let start = Self::index(seed, offset);
        start..start + len
    }

    /// Whether `received` is exactly what connection `seed` sent at `offset`.
    pub fn matches(&self, seed: u32, offset: u64, received: &[u8]) -> bool {
        received == self.slice(seed, offset, received.len())
    }

    /// A connection's seed from its global index: spread over the period so that
    /// neighbouring connections do not send the same bytes.
    pub fn seed_for(conn: u64) -> u32 {
        (conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33) as u32 % PERIOD as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream connection `seed` sends, built byte by byte from the definition.
    fn stream(p: &Pattern, seed: u32, len: usize) -> Vec<u8> {
        (0..len as u64).map(|k| p.slice(seed, k, 1)[0]).collect()
    }

    #[test]
    fn slices_wrap_around_the_period_contiguously() {
        let p = Pattern::new(4096);
        let seed = 7;
        let offset = (PERIOD - 100) as u64;
        let s = p.slice(seed, offset, 1000);
        for (i, b) in s.iter().enumerate() {
            assert_eq!(*b, p.bytes[Pattern::index(seed, offset + i as u64)]);
        }
    }

    #[test]
    fn an_exact_echo_matches() {
        let p = Pattern::new(4096);
        let sent = stream(&p, 123, 3000);
        assert!(p.matches(123, 0, &sent));
        assert!(p.matches(123, 1000, &sent[1000..2000]));
    }

    #[test]
    fn a_flipped_byte_is_caught() {
        let p = Pattern::new(4096);
        let mut got = stream(&p, 5, 2000);
        got[1234] ^= 0x01;
        assert!(!p.matches(5, 0, &got));
    }

    #[test]
    fn a_dropped_byte_is_caught() {
        let p = Pattern::new(4096);
        let mut got = stream(&p, 9, 2000);
        got.remove(700);
        assert!(!p.matches(9, 0, &got));
        // And every later chunk is off too: the stream has shifted.
        assert!(!p.matches(9, 1000, &got[1000..1500]));
    }

    #[test]
    fn a_duplicated_byte_is_caught() {
        let p = Pattern::new(4096);
        let mut got = stream(&p, 11, 2000);
        got.insert(300, got[300]);
        got.truncate(2000);
        assert!(!p.matches(11, 0, &got));
    }

    #[test]
    fn swapped_chunks_are_caught() {
        let p = Pattern::new(4096);
        let sent = stream(&p, 13, 2000);
        let mut got = sent[1000..].to_vec();
        got.extend_from_slice(&sent[..1000]);
        assert!(!p.matches(13, 0, &got));
    }

    #[test]
    fn neighbouring_connections_get_different_seeds() {
        let seeds: std::collections::HashSet<u32> = (0..1000).map(Pattern::seed_for).collect();
        assert!(seeds.len() > 990);
        assert!(seeds.iter().all(|&s| (s as usize) < PERIOD));
    }
}
