//! The index of a piece, kept apart from the offsets and lengths that are `u32` too.
//!
//! A download's own bookkeeping (the picker, each owner's requests) speaks
//! [`PieceIndex`]; the wire, the storage layout and the [`Bitfield`](super::bitfield::Bitfield)
//! (the wire's piece set) speak `u32`, converted where the download meets them.

use std::fmt;

/// Index of a piece within one version's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceIndex(pub u32);

impl PieceIndex {
    /// As a position in a per-piece table.
    pub fn idx(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for PieceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
