//! A set of piece indices, with the wire's layout (most significant bit first).

/// Which pieces of a file someone holds.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u32,
    ones: u32,
}

impl Bitfield {
    /// `len` pieces, none held.
    pub fn new(len: u32) -> Self {
        Bitfield {
            bytes: vec![0; Self::byte_len(len)],
            len,
            ones: 0,
        }
    }

    /// `len` pieces, all held.
    pub fn full(len: u32) -> Self {
        let mut field = Self::new(len);
        for piece in 0..len {
            field.set(piece);
        }
        field
    }

    /// Bytes needed on the wire for `len` pieces.
    pub fn byte_len(len: u32) -> usize {
        len.div_ceil(8) as usize
    }

    /// From the wire: `None` unless `bytes` is exactly the right length with spare bits zero.
    pub fn from_wire(bytes: &[u8], len: u32) -> Option<Self> {
        if bytes.len() != Self::byte_len(len) {
            return None;
        }
        let spare = Self::byte_len(len) as u32 * 8 - len;
        if spare > 0 && bytes.last().is_some_and(|b| b & ((1u8 << spare) - 1) != 0) {
            return None;
        }
        let ones = bytes.iter().map(|b| b.count_ones()).sum();
        Some(Bitfield {
            bytes: bytes.to_vec(),
            len,
            ones,
        })
    }

    /// The wire form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of pieces this field covers.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True when the field covers no pieces.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of pieces held.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// True when every piece is held.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// Whether `piece` is held (false when out of range).
    pub fn get(&self, piece: u32) -> bool {
        piece < self.len && self.bytes[(piece / 8) as usize] & (0x80 >> (piece % 8)) != 0
    }

    /// Marks `piece` held; returns true if it was not before.
    pub fn set(&mut self, piece: u32) -> bool {
        if piece >= self.len || self.get(piece) {
            return false;
        }
        self.bytes[(piece / 8) as usize] |= 0x80 >> (piece % 8);
        self.ones += 1;
        true
    }

    /// Marks `piece` not held; returns true if it was held.
    pub fn clear(&mut self, piece: u32) -> bool {
        if !self.get(piece) {
            return false;
        }
        self.bytes[(piece / 8) as usize] &= !(0x80 >> (piece % 8));
        self.ones -= 1;
        true
    }

    /// Indices of held pieces, in order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&p| self.get(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_layout_is_msb_first_and_spare_bits_must_be_zero() {
        let mut field = Bitfield::new(10);
        field.set(0);
        field.set(9);
        assert_eq!(field.as_bytes(), &[0x80, 0x40]);
        assert_eq!(Bitfield::from_wire(&[0x80, 0x40], 10), Some(field));
        assert_eq!(
            Bitfield::from_wire(&[0x80, 0x41], 10),
            None,
            "spare bit set"
        );
        assert_eq!(Bitfield::from_wire(&[0x80], 10), None, "short");
    }

    #[test]
    fn counts_follow_sets_and_clears() {
        let mut field = Bitfield::new(17);
        assert!(field.set(16));
        assert!(!field.set(16));
        assert!(!field.set(17), "out of range");
        assert_eq!(field.count(), 1);
        assert!(field.clear(16));
        assert_eq!(field.count(), 0);
        assert!(Bitfield::full(17).is_full());
        assert_eq!(Bitfield::full(17).iter_ones().count(), 17);
    }
}
