//! The 64-bit `user_data` every io_uring operation carries and its completion
//! returns: which operation it was, on which connection, of which generation.
//!
//! One codec for every ring user. The layout is fixed here; what the kind byte
//! means is each user's own table (`server::uring::op_kind::OpKind`, the load
//! generator's `loadgen::ring::OpKind`), both implementing [`KindCode`]. Code 0
//! is never written, and [`TEARDOWN_CODE`] belongs to the ring layer.
#![forbid(unsafe_code)]

/// A table of operation kinds, one byte each.
pub trait KindCode: Copy {
    fn code(self) -> u8;
    /// `None` for a code this table does not hold.
    fn from_code(code: u8) -> Option<Self>;
}

/// The kind byte of the ring layer's own cancel-everything at teardown; no
/// table may use it.
pub const TEARDOWN_CODE: u8 = 0xff;

/// Layout (bit 63 on the left):
///
/// ```text
///  63      56 55                    32 31                             0
/// +----------+------------------------+--------------------------------+
/// |   kind   |   generation (24 bit)  |      slab key (32 bit)         |
/// +----------+------------------------+--------------------------------+
/// ```
///
/// The generation is the connection's, taken from a per-worker counter when its
/// slot was filled. A slot is only freed after its last operation completed, so
/// a stale completion is a bug; the generation makes that bug harmless (the
/// completion is dropped) instead of corrupting the connection that reused the
/// slot. Operations that belong to no connection use key 0, generation 0.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserData(u64);

/// Declares a table of operation kinds: a `#[repr(u8)]` enum whose variants
/// name their codes, and its [`KindCode`], so that a code and its variant are
/// written once.
macro_rules! kind_table {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $code:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $name {
            $($(#[$vmeta])* $variant = $code,)*
        }

        impl $crate::ring::user_data::KindCode for $name {
            fn code(self) -> u8 {
                self as u8
            }

            fn from_code(code: u8) -> Option<$name> {
                match code {
                    $($code => Some($name::$variant),)*
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use kind_table;

/// Generations wrap at 24 bits.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

impl UserData {
    /// The ring layer's cancel-everything at teardown.
    pub const TEARDOWN: UserData = UserData((TEARDOWN_CODE as u64) << 56);

    pub fn new(kind: impl KindCode, key: u32, generation: u32) -> UserData {
        debug_assert!(generation <= GENERATION_MASK);
        debug_assert!(kind.code() != 0 && kind.code() != TEARDOWN_CODE);
        UserData(
            (u64::from(kind.code()) << 56)
                | (u64::from(generation & GENERATION_MASK) << 32)
                | u64::from(key),
        )
    }

    /// For operations that belong to no connection.
    pub fn worker_op(kind: impl KindCode) -> UserData {
        UserData::new(kind, 0, 0)
    }

    pub fn from_raw(raw: u64) -> UserData {
        UserData(raw)
    }

    pub fn raw(self) -> u64 {
        self.0
    }

    /// `None` for a value this program never wrote.
    pub fn kind<K: KindCode>(self) -> Option<K> {
        K::from_code((self.0 >> 56) as u8)
    }

    pub fn key(self) -> u32 {
        self.0 as u32
    }

    pub fn generation(self) -> u32 {
        ((self.0 >> 32) as u32) & GENERATION_MASK
    }

    /// The same operation on the slot's connection of `generation` (wrapped
    /// at 24 bits, never spilling into the kind).
    pub fn with_generation(self, generation: u32) -> UserData {
        let cleared = self.0 & !(u64::from(GENERATION_MASK) << 32);
        UserData(cleared | (u64::from(generation & GENERATION_MASK) << 32))
    }
}

#[cfg(test)]
kind_table! {
    /// Kinds for the ring layer's own tests (each ring user has its own table).
    pub(crate) enum TestKind {
        Accept = 1,
        Recv = 2,
        Send = 3,
        Tick = 9,
        UdpSend = 11,
    }
}

#[cfg(test)]
mod tests {
    use super::TestKind as OpKind;
    use super::*;

    #[test]
    fn every_field_survives_a_round_trip() {
        for kind in [
            OpKind::Accept,
            OpKind::Recv,
            OpKind::Send,
            OpKind::Tick,
            OpKind::UdpSend,
        ] {
            for key in [0u32, 1, 12345, u32::MAX] {
                for generation in [0u32, 1, 0xabcdef, GENERATION_MASK] {
                    let ud = UserData::from_raw(UserData::new(kind, key, generation).raw());
                    assert_eq!(ud.kind(), Some(kind));
                    assert_eq!(ud.key(), key);
                    assert_eq!(ud.generation(), generation);
                }
            }
        }
    }

    #[test]
    fn unknown_kinds_are_rejected() {
        assert_eq!(UserData::from_raw(0).kind::<OpKind>(), None);
        assert_eq!(UserData::from_raw(0xff << 56).kind::<OpKind>(), None);
        assert_eq!(UserData::TEARDOWN.kind::<OpKind>(), None);
    }
}
