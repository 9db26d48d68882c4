//! [`PieceHasher`]: hash a file's pieces a bounded amount at a time.
//!
//! Hashing a 1 GiB file takes about a second. [`PieceHasher::step`] hashes a
//! byte budget at a time, so a caller can interleave it with other work; the
//! node runs it to the end on its disk thread ([`super::Folder::piece_hashes`]).

use super::{hash_piece, Hash, Layout, PieceStore, StorageError};

/// Incremental hashing of a shared file so the reactor never blocks for long: call `step` repeatedly.
#[derive(Debug)]
pub struct PieceHasher {
    layout: Layout,
    /// Hashes of pieces `0..hashes.len()`; the next piece to hash is `hashes.len()`.
    hashes: Vec<Hash>,
    /// One piece of scratch space, reused for every piece (allocated on the first step).
    buf: Vec<u8>,
}

impl PieceHasher {
    /// A hasher for a file of this layout; allocates nothing big until the first `step`.
    pub fn new(layout: Layout) -> Self {
        PieceHasher {
            layout,
            hashes: Vec::new(),
            buf: Vec::new(),
        }
    }

    /// Hash up to `budget` bytes worth of pieces (at least one piece) from `store`; Ok(true) when all pieces are hashed.
    ///
    /// The store must be exactly `layout.size` bytes long; otherwise the file
    /// changed under us and this is a `StateMismatch`.
    pub fn step(&mut self, store: &dyn PieceStore, budget: u64) -> Result<bool, StorageError> {
        let count = self.layout.piece_count();
        if self.hashes.len() as u64 >= u64::from(count) {
            return Ok(true);
        }
        if store.len() != self.layout.size {
            return Err(StorageError::StateMismatch(format!(
                "file is {} bytes but is being hashed as {} bytes (it changed while hashing?)",
                store.len(),
                self.layout.size
            )));
        }
        if self.buf.is_empty() {
            // Only as big as the file when the file is smaller than a piece.
            let cap = u64::from(self.layout.piece_size).min(self.layout.size);
            self.buf = vec![0; cap as usize];
            self.hashes.reserve_exact(count as usize);
        }
        let mut spent: u64 = 0;
        loop {
            let piece = self.hashes.len() as u32;
            if piece >= count {
                return Ok(true);
            }
            // Always hash at least one piece, so a zero budget still makes progress.
            if spent > 0 && spent >= budget {
                return Ok(false);
            }
            let len = self.layout.piece_len(piece) as usize;
            let buf = &mut self.buf[..len];
            store.read_at(self.layout.piece_offset(piece), buf)?;
            self.hashes.push(hash_piece(buf));
            spent += len as u64;
        }
    }

    /// The layout being hashed.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// True once every piece is hashed.
    pub fn is_done(&self) -> bool {
        self.hashes.len() as u64 >= u64::from(self.layout.piece_count())
    }

    /// Hashes of the pieces done so far, in piece order (all of them once `step` returned true).
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Take the piece hashes, dropping the scratch buffer.
    pub fn into_hashes(self) -> Vec<Hash> {
        self.hashes
    }
}
