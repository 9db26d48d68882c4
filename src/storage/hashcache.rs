//! Piece-hash cache beside a shared file: `DIR/.NAME.shoal-hashes`.
//!
//! Re-sharing a big file after a restart should not cost a full re-hash. The
//! cache is keyed by what changes when the file does — size, modification
//! time, inode change time (ctime, seconds and nanoseconds each), inode — and
//! by the piece size asked for. Format: magic `SHOALHC2`, size u64, mtime
//! seconds u64, mtime nanoseconds u32, piece size u32, inode u64, piece count
//! u32, ctime seconds i64, ctime nanoseconds i64 (all LE), then the hashes.
//!
//! The ctime is what makes the key honest: a program can put the mtime back
//! (`touch -r`, `File::set_modified`) after rewriting a file, but any write,
//! truncate or utime call sets the ctime to "now" and nothing but the clock
//! can set it back. It also changes on chmod, chown and new hard links, which
//! costs a needless re-hash, never a wrong one.
//!
//! A cache is written only if the file's key is the same after hashing as
//! before (a write during hashing voids it). It stays a hint: two writes
//! within one timestamp tick of the file system (a few ms), with our open in
//! between, keep the key, and such stale hashes make downloaders reject our
//! pieces, never accept wrong ones. Writes go to a temporary name, then
//! rename, so a crash never leaves a torn cache under the real name.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use super::folder::open_regular;
use super::{io_err, Folder, Hash, Layout, PieceHasher, SharedFile, StorageError};

/// First bytes of a cache file; bump the digit if the format changes.
const CACHE_MAGIC: &[u8; 8] = b"SHOALHC2";
/// Magic + size + mtime secs + mtime nanos + piece size + inode + count + ctime secs + ctime nanos.
const CACHE_HEADER_LEN: usize = 8 + 8 + 8 + 4 + 4 + 8 + 4 + 8 + 8;

/// Bytes hashed between two looks at the stop flag: a stopping node waits at most this long.
const HASH_STEP: u64 = 16 << 20;

/// A flag nobody sets was set: impossible; answered as an error rather than a panic.
fn unreachable_stop(file: &SharedFile) -> Result<PieceHashes, StorageError> {
    Err(StorageError::StateMismatch(format!(
        "{}: hashing stopped",
        file.name()
    )))
}

/// A shared file's piece hashes and where they came from.
#[derive(Debug)]
pub struct PieceHashes {
    /// Every piece hash, in piece order.
    pub hashes: Vec<Hash>,
    /// True if read from the cache (the file was not read at all).
    pub from_cache: bool,
}

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
    let (ctime, ctime_ns) = file.changed();
    v.extend_from_slice(&ctime.to_le_bytes());
    v.extend_from_slice(&ctime_ns.to_le_bytes());
    Some(v)
}

impl Folder {
    /// The piece hashes of `file` in pieces of `piece_size`: from its cache if the cache
    /// matches, else by reading the whole file (then the cache is saved for next time).
    ///
    /// This reads the whole file on a miss: call it off the reactor thread.
    pub fn piece_hashes(
        &self,
        file: &SharedFile,
        piece_size: u32,
    ) -> Result<PieceHashes, StorageError> {
        let never = AtomicBool::new(false);
        match self.piece_hashes_unless(file, piece_size, &never) {
            Some(result) => result,
            None => unreachable_stop(file),
        }
    }

    /// As [`Folder::piece_hashes`], giving up (None) as soon as `stop` is set, checked every 16 MiB.
    pub(crate) fn piece_hashes_unless(
        &self,
        file: &SharedFile,
        piece_size: u32,
        stop: &AtomicBool,
    ) -> Option<Result<PieceHashes, StorageError>> {
        if let Some(hashes) = self.load_hashes(file, piece_size) {
            return Some(Ok(PieceHashes {
                hashes,
                from_cache: true,
            }));
        }
        let layout = Layout {
            size: file.len(),
            piece_size,
        };
        let mut hasher = PieceHasher::new(layout);
        loop {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match hasher.step(file, HASH_STEP) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        let hashes = hasher.into_hashes();
        if !file.unmodified() {
            // Hashes of bytes that moved under us describe no content: publishing them
            // would only get us banned by every downloader.
            return Some(Err(super::own_err(
                file.name(),
                "hash",
                std::io::ErrorKind::Interrupted,
                "it changed while it was being hashed; upload it again once it is complete"
                    .to_string(),
            )));
        }
        if !file.unchanged() {
            // A link or chmod meanwhile: the bytes stand, but the cache key moved.
            log::debug!(
                "{}: its inode changed while hashed; not cached",
                file.name()
            );
        } else if let Err(e) = self.save_hashes(file, piece_size, &hashes) {
            // A lost cache only costs a re-hash next time.
            log::warn!("{e}");
        }
        Some(Ok(PieceHashes {
            hashes,
            from_cache: false,
        }))
    }

    /// Cached piece hashes of `file` in pieces of `piece_size`, if a cache matching its size, mtime, ctime and inode exists.
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
        if cache_name.len() + ".tmp".len() > crate::names::MAX_NAME_LEN {
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
