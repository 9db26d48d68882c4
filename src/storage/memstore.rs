//! [`MemStore`]: a [`PieceStore`] in memory, for tests and simulations.

use super::{check_range, PieceStore, StorageError};

/// Name used in error messages for an in-memory store.
const MEM_NAME: &str = "<memory>";

/// In-memory PieceStore for tests and simulations (optionally fails writes after N bytes to simulate a full disk).
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    bytes: Vec<u8>,
    /// Bytes that may still be written before writes fail with `DiskFull`; `None` = unlimited.
    write_budget: Option<u64>,
}

impl MemStore {
    /// A zero-filled store of `len` bytes (like a freshly preallocated file).
    ///
    /// # Panics
    /// If `len` does not fit in memory's address space (a test bug, never disk input).
    pub fn new(len: u64) -> Self {
        // Tests and simulations only: a length that does not fit memory is a caller bug.
        let len = usize::try_from(len).expect("MemStore length fits in memory");
        MemStore {
            bytes: vec![0; len],
            write_budget: None,
        }
    }

    /// A store holding exactly `v` (like a shared file with that content).
    pub fn with_bytes(v: Vec<u8>) -> Self {
        MemStore {
            bytes: v,
            write_budget: None,
        }
    }

    /// From now on, let `bytes` more bytes be written, then fail every write with `DiskFull`.
    ///
    /// A write that crosses the limit stores the part that fits and then fails,
    /// as a real disk does.
    pub fn fail_writes_after(&mut self, bytes: u64) {
        self.write_budget = Some(bytes);
    }

    /// The current content.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl PieceStore for MemStore {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        check_range(MEM_NAME, "read", self.len(), offset, buf.len())?;
        // In range, so offset fits usize.
        let start = offset as usize;
        buf.copy_from_slice(&self.bytes[start..start + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        check_range(MEM_NAME, "write", self.len(), offset, data.len())?;
        let start = offset as usize;
        let fits = match self.write_budget {
            None => data.len(),
            Some(budget) => usize::try_from(budget)
                .unwrap_or(usize::MAX)
                .min(data.len()),
        };
        self.bytes[start..start + fits].copy_from_slice(&data[..fits]);
        if let Some(budget) = &mut self.write_budget {
            *budget -= fits as u64;
            if fits < data.len() {
                return Err(StorageError::DiskFull(MEM_NAME.to_string()));
            }
        }
        Ok(())
    }
}
