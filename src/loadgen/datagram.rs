//! What a `--udp` datagram carries, and how its echo is checked: a 16-byte
//! header naming the flow, the datagram's length and its sequence number,
//! then payload bytes derived from (flow, sequence) through the shared
//! [`Pattern`], so an echo can be verified byte-exact without keeping a copy,
//! and matched to the datagram it answers (for loss, duplication and
//! reordering, which `super::flow` counts).
//!
//! Header layout, little-endian: `flow: u32 | len: u32 | seq: u64`. `len` is
//! the whole datagram's length, so an echo cut short or padded is caught even
//! when the bytes it has are right. This module does no I/O and keeps no state.
#![forbid(unsafe_code)]

use super::pattern::{PERIOD, Pattern};

/// Bytes of the header; the smallest datagram `--udp` sends.
pub const HEADER_BYTES: u32 = 16;
/// The largest UDP payload over IPv4: 65,535 less the IPv4 (20) and UDP (8) headers.
pub const MAX_DATAGRAM_V4_BYTES: u32 = 65_507;
/// The largest UDP payload over IPv6 without jumbograms: 65,535 less the UDP header
/// (the IPv6 header is not counted in its payload length).
pub const MAX_DATAGRAM_V6_BYTES: u32 = 65_527;
/// How far apart in the pattern two consecutive datagrams of a flow start: a
/// prime, so consecutive payloads differ and a swapped payload is caught.
const SEQ_STRIDE: u64 = 7919;

/// The largest datagram for a target of this family.
pub fn max_datagram_bytes(ipv6: bool) -> u32 {
    if ipv6 {
        MAX_DATAGRAM_V6_BYTES
    } else {
        MAX_DATAGRAM_V4_BYTES
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The flow's global index (0-based over the whole run).
    pub flow: u32,
    /// The whole datagram, header included. Invariant: >= [`HEADER_BYTES`].
    pub len: u32,
    pub seq: u64,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut out = [0u8; HEADER_BYTES as usize];
        out[0..4].copy_from_slice(&self.flow.to_le_bytes());
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// The header at the start of `bytes`, if there are enough of them.
    pub fn parse(bytes: &[u8]) -> Option<Header> {
        let h = bytes.get(..HEADER_BYTES as usize)?;
        Some(Header {
            flow: u32::from_le_bytes(h[0..4].try_into().ok()?),
            len: u32::from_le_bytes(h[4..8].try_into().ok()?),
            seq: u64::from_le_bytes(h[8..16].try_into().ok()?),
        })
    }

    /// The bytes that follow this header: `len - 16` bytes of flow `flow`'s
    /// pattern, starting at a place set by `seq`.
    pub fn payload<'p>(&self, pattern: &'p Pattern) -> &'p [u8] {
        &pattern.as_ref()[self.payload_range(pattern)]
    }

    /// Where the payload lies in the pattern's bytes.
    pub fn payload_range(&self, pattern: &Pattern) -> std::ops::Range<usize> {
        let offset = self.seq.wrapping_mul(SEQ_STRIDE) % PERIOD as u64;
        pattern.range(
            Pattern::seed_for(u64::from(self.flow)),
            offset,
            (self.len - HEADER_BYTES) as usize,
        )
    }
}

/// Why an echoed datagram is not one this flow sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Shorter than a header: nothing to match it to.
    Short,
    /// The header names another flow (the socket is connected, so this is
    /// corruption or a server mixing up its replies).
    OtherFlow,
    /// Its length differs from the one its header states (cut short or padded).
    Length(Header),
    /// The payload differs from what was sent.
    Payload(Header),
}

/// Checks an echo received on flow `flow`: its header, its length and (with
/// `pattern`, i.e. unless `--no-verify`) every payload byte.
pub fn check(bytes: &[u8], flow: u32, pattern: Option<&Pattern>) -> Result<Header, Mismatch> {
    let header = Header::parse(bytes).ok_or(Mismatch::Short)?;
    if header.flow != flow {
        return Err(Mismatch::OtherFlow);
    }
    if header.len as usize != bytes.len() {
        return Err(Mismatch::Length(header));
    }
    if let Some(p) = pattern
        && bytes[HEADER_BYTES as usize..] != *header.payload(p)
    {
        return Err(Mismatch::Payload(header));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(p: &Pattern, h: Header) -> Vec<u8> {
        let mut d = h.encode().to_vec();
        d.extend_from_slice(h.payload(p));
        d
    }

    fn header(seq: u64, len: u32) -> Header {
        Header { flow: 7, len, seq }
    }

    #[test]
    fn a_header_round_trips() {
        let h = Header {
            flow: u32::MAX,
            len: 65_507,
            seq: u64::MAX - 3,
        };
        assert_eq!(Header::parse(&h.encode()), Some(h));
        assert_eq!(Header::parse(&[0u8; 15]), None);
    }

    #[test]
    fn an_exact_echo_passes_the_check() {
        let p = Pattern::new(65_536);
        for len in [16, 17, 64, 1500, 65_507] {
            let h = header(42, len);
            let d = datagram(&p, h);
            assert_eq!(d.len(), len as usize);
            assert_eq!(check(&d, 7, Some(&p)), Ok(h));
        }
    }

    #[test]
    fn consecutive_datagrams_carry_different_payloads() {
        let p = Pattern::new(4096);
        assert_ne!(header(1, 100).payload(&p), header(2, 100).payload(&p));
        let other = Header {
            flow: 8,
            ..header(1, 100)
        };
        assert_ne!(header(1, 100).payload(&p), other.payload(&p));
    }

    #[test]
    fn a_flipped_payload_byte_is_a_payload_mismatch() {
        let p = Pattern::new(4096);
        let h = header(3, 200);
        let mut d = datagram(&p, h);
        d[150] ^= 0x10;
        assert_eq!(check(&d, 7, Some(&p)), Err(Mismatch::Payload(h)));
        // Without verification only the header and length are checked.
        assert_eq!(check(&d, 7, None), Ok(h));
    }

    #[test]
    fn a_cut_or_padded_echo_is_a_length_mismatch() {
        let p = Pattern::new(4096);
        let h = header(3, 200);
        let d = datagram(&p, h);
        assert_eq!(check(&d[..199], 7, Some(&p)), Err(Mismatch::Length(h)));
        let mut padded = d.clone();
        padded.push(0);
        assert_eq!(check(&padded, 7, Some(&p)), Err(Mismatch::Length(h)));
    }

    #[test]
    fn a_short_or_foreign_datagram_is_refused() {
        let p = Pattern::new(4096);
        assert_eq!(check(b"ping", 7, Some(&p)), Err(Mismatch::Short));
        let d = datagram(
            &p,
            Header {
                flow: 9,
                ..header(0, 64)
            },
        );
        assert_eq!(check(&d, 7, Some(&p)), Err(Mismatch::OtherFlow));
    }
}
