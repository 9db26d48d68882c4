//! A file's geometry (size and piece size) and its piece math: a leaf module that `wire`
//! (a published `FileInfo`) and `storage` (a file on disk) both use, and that uses nothing
//! of the crate, so the two never convert it by hand or disagree on where a piece starts.

/// A file's geometry: size and piece size (piece_size > 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    /// File size in bytes.
    pub size: u64,
    /// Bytes per piece; every piece but the last is exactly this long.
    pub piece_size: u32,
}

impl Layout {
    /// Number of pieces: ceil(size / piece_size); 0 for an empty file or a zero piece size, saturating at `u32::MAX`.
    pub fn piece_count(&self) -> u32 {
        if self.piece_size == 0 {
            // Invalid layout (it may come from the network): no pieces rather than a panic.
            return 0;
        }
        let n = self.size.div_ceil(u64::from(self.piece_size));
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Byte offset where `piece` starts (not checked against the piece count).
    pub fn piece_offset(&self, piece: u32) -> u64 {
        u64::from(piece) * u64::from(self.piece_size)
    }

    /// Length of `piece`: `piece_size`, less for the last piece, 0 if out of range.
    pub fn piece_len(&self, piece: u32) -> u32 {
        if piece >= self.piece_count() {
            return 0;
        }
        let left = self.size - self.piece_offset(piece);
        // `left` > 0 because piece < piece_count; the min fits u32.
        left.min(u64::from(self.piece_size)) as u32
    }

    /// True when the piece size is non-zero and every piece index fits a `u32` (no saturation).
    pub fn is_valid(&self) -> bool {
        self.piece_size > 0 && self.size.div_ceil(u64::from(self.piece_size)) <= u64::from(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: u64, piece_size: u32) -> Layout {
        Layout { size, piece_size }
    }

    #[test]
    fn layout_empty_file_has_no_pieces() {
        let l = layout(0, 16);
        assert_eq!(l.piece_count(), 0);
        assert_eq!(l.piece_len(0), 0);
        assert!(l.is_valid());
    }

    #[test]
    fn layout_exact_multiple() {
        let l = layout(64, 16);
        assert_eq!(l.piece_count(), 4);
        assert_eq!(l.piece_offset(3), 48);
        assert_eq!(l.piece_len(3), 16);
        assert_eq!(l.piece_len(4), 0);
    }

    #[test]
    fn layout_short_last_piece() {
        let l = layout(65, 16);
        assert_eq!(l.piece_count(), 5);
        assert_eq!(l.piece_offset(4), 64);
        assert_eq!(l.piece_len(4), 1);
        assert_eq!(l.piece_len(5), 0);
        assert_eq!(l.piece_len(u32::MAX), 0);
        let small = layout(5, 16);
        assert_eq!(small.piece_count(), 1);
        assert_eq!(small.piece_len(0), 5);
    }

    #[test]
    fn layout_degenerate_inputs_do_not_panic() {
        let zero = layout(10, 0);
        assert_eq!(zero.piece_count(), 0);
        assert_eq!(zero.piece_len(0), 0);
        assert!(!zero.is_valid());
        let huge = layout(u64::MAX, 1);
        assert_eq!(huge.piece_count(), u32::MAX);
        assert!(!huge.is_valid());
        // The largest valid layout: u32::MAX pieces of u32::MAX bytes.
        let big = u64::from(u32::MAX) * u64::from(u32::MAX);
        let max = layout(big, u32::MAX);
        assert!(max.is_valid());
        assert_eq!(max.piece_count(), u32::MAX);
        let last = max.piece_count() - 1;
        assert_eq!(max.piece_offset(last) + u64::from(max.piece_len(last)), big);
        assert!(!layout(big + 1, u32::MAX).is_valid());
    }
}
