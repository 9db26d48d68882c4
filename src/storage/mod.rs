//! A node's folder: checked names, positioned reads and writes by piece,
//! temporary file → fsync → atomic rename, piece hashes and resume state,
//! plus an in-memory backend for tests.
//!
//! This module uses nothing of the rest of the crate but the leaves [`crate::names`] (the
//! name rule it shares with `wire`), [`crate::layout`] (the file geometry, likewise) and
//! [`crate::hex`]; otherwise std, blake3, log only.
//!
//! # Pieces and hashes
//!
//! A file is described by a [`Layout`] (size and piece size). Every piece has
//! a BLAKE3 hash ([`hash_piece`]); the [`root_hash`] over the layout and all
//! piece hashes names one version of a file, so two different files of the
//! same name are never confused. [`Folder::piece_hashes`] hashes a shared file
//! (or takes its hashes from the cache beside it, [`PieceHashes::from_cache`]).
//!
//! # Slow disk work
//!
//! [`DiskWorker`] runs the threads for what can take seconds: the fsync and
//! rename that finish a download, and hashing a file to publish it; and a
//! verify lane that hashes a download's whole pieces and writes only those
//! that match ([`WriteTarget::verify_write`]). It reports through a callback
//! (the node's reactor wake handle), so the network thread never waits on the
//! disk. A download attached to it also kicks
//! writeback of its data as it goes, so the final fsync is short.
//!
//! # Files on disk
//!
//! [`Folder`] is the only way to reach the disk. Every path it opens is
//! `DIR/NAME` for a name that passed [`check_name`], and names starting with
//! `.` are reserved for our own files:
//!
//! | file | what |
//! |---|---|
//! | `DIR/NAME` | a finished or shared file |
//! | `DIR/.NAME.<root8>.shoal-part` | the data of a download in progress (size preallocated) |
//! | `DIR/.NAME.<root8>.shoal-state` | its resume state: header + one byte per piece |
//! | `DIR/.NAME.shoal-hashes` | cached piece hashes of a shared file ([`Folder::load_hashes`], key in `hashcache.rs`) |
//!
//! `<root8>` is the first 8 hex digits of the root hash, so a download of
//! another version of the same name never reuses stale data. If
//! `.NAME.<root8>.shoal-state` would exceed 255 bytes, `NAME` in the two
//! temporary names is replaced by 32 hex digits of BLAKE3(NAME).
//!
//! A download writes `DIR/NAME` only in [`PartialFile::finish`], after every
//! piece was marked done, the data was fsynced and the temporary file was
//! renamed into place; an interrupted download leaves only the hidden files,
//! and [`Folder::begin_download`] resumes from them.
//!
//! # Errors
//!
//! Every failure is a [`StorageError`] whose text names the file and the
//! operation. "No space left" and "quota exceeded" become
//! [`StorageError::DiskFull`] so callers can tell the user something useful.

use std::fmt;
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::io::AsRawFd;

mod cached;
mod folder;
mod hashcache;
mod hasher;
mod memstore;
mod partial;
mod secret;
mod worker;

pub use crate::layout::Layout;
pub use folder::{Folder, SharedFile};
pub use hashcache::PieceHashes;
pub use hasher::PieceHasher;
pub use memstore::MemStore;
pub use partial::{PartialFile, WriteTarget};
pub use secret::SECRET_FILE;
pub use worker::{DiskDone, DiskWorker, MAX_VERIFYING, MIN_VERIFY_LEN};

/// BLAKE3 hash of one piece, or of a whole layout (the root).
pub type Hash = [u8; 32];

/// Domain separation for [`root_hash`]: bump the suffix if the scheme ever changes.
const ROOT_CONTEXT: &[u8] = b"shoal-root-v1";

/// BLAKE3 hash of one piece's bytes.
pub fn hash_piece(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// Root hash = blake3 over ("shoal-root-v1", size u64 LE, piece_size u32 LE, every piece hash): one value names a version.
pub fn root_hash(layout: Layout, piece_hashes: &[Hash]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(ROOT_CONTEXT);
    h.update(&layout.size.to_le_bytes());
    h.update(&layout.piece_size.to_le_bytes());
    for p in piece_hashes {
        h.update(p);
    }
    *h.finalize().as_bytes()
}

/// Largest read `hash_stored_piece` makes at once: bounds its scratch buffer whatever the piece size.
const HASH_READ_CHUNK: usize = 1 << 20;

/// Hashes `len` bytes at `offset` of `store` as one piece (same value as [`hash_piece`]),
/// reading through `scratch` in chunks of at most 1 MiB.
pub fn hash_stored_piece(
    store: &dyn PieceStore,
    offset: u64,
    len: u32,
    scratch: &mut Vec<u8>,
) -> Result<Hash, StorageError> {
    let mut hasher = blake3::Hasher::new();
    let mut done = 0u64;
    let len = u64::from(len);
    while done < len {
        let chunk = (len - done).min(HASH_READ_CHUNK as u64) as usize;
        scratch.resize(chunk, 0);
        store.read_at(offset + done, &mut scratch[..chunk])?;
        hasher.update(&scratch[..chunk]);
        done += chunk as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

/// Everything storage can fail with; the Display text names the file and what went wrong.
#[derive(Debug)]
pub enum StorageError {
    /// The name is not one plain path component we accept.
    BadName {
        /// The rejected name.
        name: String,
        /// Which rule it broke.
        why: &'static str,
    },
    /// No file of that name in the folder.
    NotFound(String),
    /// The name exists but is not a regular file (a directory, a symlink, a device…).
    NotAFile(String),
    /// An operating-system call failed.
    Io {
        /// The file (or folder) concerned.
        name: String,
        /// What we were doing ("open", "read", "rename into place"…).
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// Resume state that cannot be used or replaced, or a download that is not complete; the text says which file and why.
    StateMismatch(String),
    /// No space left on the device, or the disk quota is exhausted (ENOSPC / EDQUOT), while writing this file.
    DiskFull(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // {:?} so a hostile name with control characters cannot garble a log line.
            StorageError::BadName { name, why } => write!(f, "bad file name {name:?}: {why}"),
            StorageError::NotFound(name) => write!(f, "{name}: no such file in the folder"),
            StorageError::NotAFile(name) => write!(f, "{name}: not a regular file"),
            StorageError::Io { name, op, source } => write!(f, "{name}: {op} failed: {source}"),
            StorageError::StateMismatch(what) => f.write_str(what),
            StorageError::DiskFull(name) => {
                write!(f, "{name}: no space left on the disk (or quota exceeded)")
            }
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// ENOSPC on every unix we know of.
const ENOSPC: i32 = 28;
/// EDQUOT differs between systems (Linux 122, the BSDs and macOS 69).
#[cfg(any(target_os = "linux", target_os = "android"))]
const EDQUOT: i32 = 122;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const EDQUOT: i32 = 69;

/// True for "no space left" and "quota exceeded" (raw codes: `ErrorKind::StorageFull` needs a newer Rust than our MSRV).
fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(ENOSPC) | Some(EDQUOT))
}

/// Wrap an I/O error with the file and operation, mapping a full disk to [`StorageError::DiskFull`].
pub(crate) fn io_err(name: &str, op: &'static str, source: io::Error) -> StorageError {
    if is_disk_full(&source) {
        StorageError::DiskFull(name.to_string())
    } else {
        StorageError::Io {
            name: name.to_string(),
            op,
            source,
        }
    }
}

/// An `Io` error we raise ourselves (bad offset, read-only file…), with `kind` and a message.
pub(crate) fn own_err(
    name: &str,
    op: &'static str,
    kind: io::ErrorKind,
    msg: String,
) -> StorageError {
    StorageError::Io {
        name: name.to_string(),
        op,
        source: io::Error::new(kind, msg),
    }
}

/// Rules for a name served from or written into a folder: the name rule of
/// [`crate::names::check_name`] (one plain path component), and not starting with '.',
/// which reserves that namespace for our temporary and state files.
pub fn check_name(name: &str) -> Result<(), StorageError> {
    let checked = if name.starts_with('.') {
        // Also covers "." and "..", and keeps our hidden temp/state names unreachable.
        Err("starts with '.'")
    } else {
        crate::names::check_name(name)
    };
    checked.map_err(|why| StorageError::BadName {
        name: name.to_string(),
        why,
    })
}

/// Positioned byte storage for one file: what a download writes into and an upload reads from.
pub trait PieceStore {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// True when the store holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fill `buf` from `offset` (read_exact semantics: a short read is an error).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError>;
    /// As `read_at` into uninitialised memory, returning `buf` initialised (files read
    /// into it directly; the default zeroes it first).
    fn read_at_uninit<'a>(
        &self,
        offset: u64,
        buf: &'a mut [MaybeUninit<u8>],
    ) -> Result<&'a mut [u8], StorageError> {
        for b in buf.iter_mut() {
            b.write(0);
        }
        // SAFETY: every byte was just written, and MaybeUninit<u8> has the layout of u8.
        let buf = unsafe { &mut *(buf as *mut [MaybeUninit<u8>] as *mut [u8]) };
        self.read_at(offset, buf)?;
        Ok(buf)
    }
    /// As `read_at_uninit`, but `Ok(None)` instead of waiting for a disk: served only from
    /// memory (the page cache for files; stores in memory are always ready).
    fn read_cached_uninit<'a>(
        &self,
        offset: u64,
        buf: &'a mut [MaybeUninit<u8>],
    ) -> Result<Option<&'a mut [u8]>, StorageError> {
        self.read_at_uninit(offset, buf).map(Some)
    }
    /// Write all of `data` at `offset` (write_all semantics); writing past `len()` is an error.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError>;
}

/// Check that `offset..offset+len` lies inside `0..size`, naming `name` and `op` in the error.
pub(crate) fn check_range(
    name: &str,
    op: &'static str,
    size: u64,
    offset: u64,
    len: usize,
) -> Result<(), StorageError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(own_err(
            name,
            op,
            io::ErrorKind::InvalidInput,
            format!("range {offset}+{len} is past the end of the file ({size} bytes)"),
        )),
    }
}

/// `pread` until `buf` is full, straight into uninitialised memory (no memset first);
/// a short file is `UnexpectedEof`. Returns `buf`, now initialised.
pub(crate) fn pread_exact<'a>(
    file: &File,
    name: &str,
    offset: u64,
    buf: &'a mut [MaybeUninit<u8>],
) -> Result<&'a mut [u8], StorageError> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = offset
            .checked_add(done as u64)
            .and_then(|a| libc::off_t::try_from(a).ok())
            .ok_or_else(|| {
                own_err(
                    name,
                    "read",
                    io::ErrorKind::InvalidInput,
                    format!("offset {offset} too large"),
                )
            })?;
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, writable memory we borrow
        // mutably; pread writes at most that many bytes and never reads them.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                rest.as_mut_ptr().cast::<libc::c_void>(),
                rest.len(),
                at,
            )
        };
        match n {
            0 => {
                return Err(io_err(
                    name,
                    "read",
                    io::Error::new(io::ErrorKind::UnexpectedEof, "file shorter than expected"),
                ))
            }
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(io_err(name, "read", e));
                }
            }
        }
    }
    // SAFETY: the loop ran until pread had written all `buf.len()` bytes, so every
    // byte is initialised; MaybeUninit<u8> has the layout of u8.
    Ok(unsafe { &mut *(buf as *mut [MaybeUninit<u8>] as *mut [u8]) })
}

#[cfg(test)]
mod tests;
