//! Piece-hash cache beside a shared file: `DIR/.NAME.shoal-hashes`.
//!
//! Re-sharing a big file after a restart should not cost a full re-hash. The
//! cache is keyed by what changes when the file does — size, modification
//! time (seconds and nanoseconds), inode — and by the piece size asked for.
//! Format: magic `SHOALHC1`, size u64, mtime seconds u64, mtime nanoseconds
//! u32, piece size u32, inode u64, piece count u32 (all LE), then the hashes.
//!
//! A cache is only a hint: a file rewritten in place within one mtime tick
//! keeps its key, and its stale hashes make downloaders reject our pieces,
//! never accept wrong ones. Writes go to a temporary name, then rename, so a
//! crash never leaves a torn cache under the real name.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::UNIX_EPOCH;

use super::folder::open_regular;
use super::{io_err, Folder, Hash, Layout, SharedFile, StorageError};

/// First bytes of a cache file; bump the digit if the format changes.
const CACHE_MAGIC: &[u8; 8] = b"SHOALHC1";
/// Magic + size + mtime secs + mtime nanos + piece size + inode + count.
const CACHE_HEADER_LEN: usize = 8 + 8 + 8 + 4 + 4 + 8 + 4;

/// The header a cache for `file` in pieces of `piece_size` must start with; None if the file has no usable mtime.
fn cache_header(file: &SharedFile, piece_size: u32) -> Option<Vec<u8>> {
    let mtime = file.modified()?.duration_since(UNIX_EPOCH).ok()?;
    let layout = Layout {
        size: file.len(),
        piece_size,
    };
    if !layout.is_valid() {
        return None;
    }
    let mut v = Vec::with_capacity(CACHE_HEADER_LEN);
    v.extend_from_slice(CACHE_MAGIC);
    v.extend_from_slice(&file.len().to_le_bytes());
    v.extend_from_slice(&mtime.as_secs().to_le_bytes());
    v.extend_from_slice(&mtime.subsec_nanos().to_le_bytes());
    v.extend_from_slice(&piece_size.to_le_bytes());
    v.extend_from_slice(&file.inode().to_le_bytes());
    v.extend_from_slice(&layout.piece_count().to_le_bytes());
    Some(v)
}

impl Folder {
    /// Cached piece hashes of `file` in pieces of `piece_size`, if a cache matching its size, mtime and inode exists.
    ///
    /// Any problem (no cache, stale, torn, unreadable) is `None`: the caller hashes the file.
    pub fn load_hashes(&self, file: &SharedFile, piece_size: u32) -> Option<Vec<Hash>> {
        let header = cache_header(file, piece_size)?;
        let count = Layout {
            size: file.len(),
            piece_size,
        }
        .piece_count() as usize;
        let path = self.dir().join(format!(".{}.shoal-hashes", file.name()));
        let (f, meta) = open_regular(&path, file.name(), OpenOptions::new().read(true)).ok()?;
        // Length first, so a huge or hostile file is never read in.
        let expected = (CACHE_HEADER_LEN + 32 * count) as u64;
        if meta.len() != expected {
            return None;
        }
        let mut bytes = vec![0; expected as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut bytes, 0).ok()?;
        if bytes[..CACHE_HEADER_LEN] != header[..] {
            return None;
        }
        let hashes = bytes[CACHE_HEADER_LEN..]
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0; 32];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Some(hashes)
    }

    /// Save `hashes` (all pieces of `file` in pieces of `piece_size`) beside it; does nothing if the file has no usable mtime.
    ///
    /// A name whose cache name would exceed 255 bytes is not cached (Ok).
    pub fn save_hashes(
        &self,
        file: &SharedFile,
        piece_size: u32,
        hashes: &[Hash],
    ) -> Result<(), StorageError> {
        let Some(header) = cache_header(file, piece_size) else {
            return Ok(());
        };
        let count = Layout {
            size: file.len(),
            piece_size,
        }
        .piece_count() as usize;
        let name = file.name();
        if hashes.len() != count {
            return Err(StorageError::StateMismatch(format!(
                "{name}: {} piece hashes given for a file of {count} pieces",
                hashes.len()
            )));
        }
        let cache_name = format!(".{name}.shoal-hashes");
        if cache_name.len() + ".tmp".len() > super::MAX_NAME_BYTES {
            return Ok(());
        }
        let path = self.dir().join(&cache_name);
        let tmp = self.dir().join(format!("{cache_name}.tmp"));
        let label = format!("{name} (hash cache)");
        // A leftover temporary (or a symlink planted there) is ours to remove; create_new never follows.
        let _ = fs::remove_file(&tmp);
        let mut bytes = header;
        bytes.reserve(32 * count);
        for h in hashes {
            bytes.extend_from_slice(h);
        }
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes));
        let renamed = written.and_then(|()| fs::rename(&tmp, &path));
        if let Err(e) = renamed {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&label, "write", e));
        }
        // No fsync: a lost cache only costs a re-hash.
        Ok(())
    }
}
