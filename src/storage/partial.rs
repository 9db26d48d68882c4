//! [`PartialFile`]: a download in progress, and its resume state on disk.
//!
//! Two hidden files per download (names in the [module docs](super)):
//!
//! * `.shoal-part` holds the data at its final offsets, sized to the file
//!   with `set_len` at the start (sparse where nothing was written yet);
//! * `.shoal-state` is a 56-byte header — magic `SHOALST1`, root (32 bytes),
//!   size (u64 LE), piece size (u32 LE), piece count (u32 LE) — followed by
//!   one byte per piece, 1 = done, anything else = not done.
//!
//! One byte (not one bit) per piece, so marking a piece is a single one-byte
//! `pwrite` with no read-modify-write of a byte shared with other pieces: a
//! crash can never tear it, and it costs one syscall per piece.
//!
//! Why there is no fsync per piece: after `kill -9` the kernel still holds
//! every byte we wrote (data and state) in the page cache and writes it out,
//! so a resumed download sees exactly what was written. Only a power cut or
//! kernel crash can lose or reorder writes — a state byte may then reach the
//! disk before its data. That is why the pieces the state claims are only a
//! *claim* ([`PartialFile::claimed_done`]): the caller re-verifies each one
//! against its hash before trusting it and calls [`PartialFile::mark_bad`] on
//! a mismatch. The data is fsynced once, in [`PartialFile::finish`], before
//! the rename that makes the file visible.
//!
//! So that this fsync is short, a download attached to a [`DiskWorker`]
//! ([`PartialFile::start_writeback_with`]) asks the kernel to start writing
//! back what it wrote every [`WRITEBACK_EVERY`] bytes: the disk works during
//! the transfer instead of after it, and the page cache holds fewer dirty
//! pages. The kick runs on the worker thread and never waits for the disk.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::folder::open_regular;
use super::worker::Kicker;
use super::{check_range, io_err, own_err, DiskWorker, Hash, Layout, PieceStore, StorageError};
use crate::hex::{hex, short_hex};
use crate::names::MAX_NAME_LEN;

/// Bytes written between two writeback kicks: big enough to be one efficient disk
/// request stream, small enough that the final fsync has little left to do.
pub(crate) const WRITEBACK_EVERY: u64 = 8 << 20;

/// First bytes of a state file; bump the digit if the format changes (old files are then replaced).
const STATE_MAGIC: &[u8; 8] = b"SHOALST1";
/// Magic + root + size + piece_size + piece_count.
const STATE_HEADER_LEN: usize = 8 + 32 + 8 + 4 + 4;
/// Suffix of the data file of a download in progress.
const PART_SUFFIX: &str = ".shoal-part";
/// Suffix of the resume-state file of a download in progress.
const STATE_SUFFIX: &str = ".shoal-state";

/// `.NAME.<root8>`, or `.<blake3(NAME) in 32 hex>.<root8>` when the state name would be over 255 bytes.
fn temp_base(name: &str, root: &Hash) -> String {
    let root8 = short_hex(root);
    let base = format!(".{name}.{root8}");
    if base.len() + STATE_SUFFIX.len() <= MAX_NAME_LEN {
        base
    } else {
        format!(
            ".{}.{root8}",
            hex(&blake3::hash(name.as_bytes()).as_bytes()[..16])
        )
    }
}

/// The state file content for a fresh download: header, then every piece not done.
fn fresh_state(layout: Layout, root: &Hash) -> Vec<u8> {
    let count = layout.piece_count();
    let mut v = Vec::with_capacity(STATE_HEADER_LEN + count as usize);
    v.extend_from_slice(STATE_MAGIC);
    v.extend_from_slice(root);
    v.extend_from_slice(&layout.size.to_le_bytes());
    v.extend_from_slice(&layout.piece_size.to_le_bytes());
    v.extend_from_slice(&count.to_le_bytes());
    v.resize(STATE_HEADER_LEN + count as usize, 0);
    v
}

/// Open `path` read-write if it is a regular file, else create it; true if it was created.
///
/// These names are in our reserved namespace, so a symlink found there is
/// removed (never followed) and a fresh file created with O_EXCL, which does
/// not follow symlinks either.
fn open_or_create(path: &Path, label: &str) -> Result<(File, bool), StorageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => {
            let (file, _) = open_regular(path, label, OpenOptions::new().read(true).write(true))?;
            return Ok((file, false));
        }
        Ok(m) if m.file_type().is_symlink() => {
            log::warn!("{label}: removing unexpected symlink {}", path.display());
            fs::remove_file(path).map_err(|e| io_err(label, "remove symlink", e))?;
        }
        Ok(_) => return Err(StorageError::NotAFile(path.display().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(label, "stat", e)),
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_err(label, "create", e))?;
    Ok((file, true))
}

/// Parse a state file's bytes: the done flags if it belongs to exactly this download.
fn parse_state(bytes: &[u8], layout: Layout, root: &Hash) -> Option<Vec<bool>> {
    let expected = fresh_state(layout, root);
    if bytes.len() != expected.len() || bytes[..STATE_HEADER_LEN] != expected[..STATE_HEADER_LEN] {
        return None;
    }
    Some(bytes[STATE_HEADER_LEN..].iter().map(|&b| b == 1).collect())
}

/// Implementation of [`super::Folder::begin_download`].
pub(crate) fn begin(
    dir: &Path,
    name: &str,
    final_path: PathBuf,
    layout: Layout,
    root: &Hash,
) -> Result<PartialFile, StorageError> {
    if !layout.is_valid() {
        return Err(own_err(
            name,
            "begin download",
            io::ErrorKind::InvalidInput,
            format!(
                "invalid layout: {} bytes in pieces of {} bytes",
                layout.size, layout.piece_size
            ),
        ));
    }
    let base = temp_base(name, root);
    let part_path = dir.join(format!("{base}{PART_SUFFIX}"));
    let state_path = dir.join(format!("{base}{STATE_SUFFIX}"));
    let state_label = format!("{name} (resume state)");

    let (data, part_created) = open_or_create(&part_path, name)?;
    let part_len = data.metadata().map_err(|e| io_err(name, "stat", e))?.len();
    if part_len != layout.size {
        data.set_len(layout.size)
            .map_err(|e| io_err(name, "preallocate", e))?;
    }

    let (state, state_created) = match open_or_create(&state_path, &state_label) {
        Ok(x) => x,
        Err(StorageError::NotAFile(what)) => {
            return Err(StorageError::StateMismatch(format!(
                "{what}: resume state is not a regular file and cannot be replaced"
            )))
        }
        Err(e) => return Err(e),
    };
    let expected_len = (STATE_HEADER_LEN + layout.piece_count() as usize) as u64;
    let mut claimed = None;
    if !state_created && !part_created {
        let len = state
            .metadata()
            .map_err(|e| io_err(&state_label, "stat", e))?
            .len();
        // Compare the length first, so a huge or hostile file is never read in.
        if len == expected_len {
            let mut bytes = vec![0; expected_len as usize];
            state
                .read_exact_at(&mut bytes, 0)
                .map_err(|e| io_err(&state_label, "read", e))?;
            claimed = parse_state(&bytes, layout, root);
        }
        if claimed.is_none() {
            log::warn!(
                "{}: resume state does not match this download; starting over",
                state_path.display()
            );
        }
    }
    let claimed = match claimed {
        Some(c) => {
            let n = c.iter().filter(|&&d| d).count();
            log::info!("{name}: resuming, {n} of {} pieces claimed done", c.len());
            c
        }
        None => {
            // A new download, a state that does not match, or a state whose data file
            // vanished (its claims cannot be true): write a fresh one in place.
            let fresh = fresh_state(layout, root);
            let replace = state
                .set_len(0)
                .and_then(|()| state.write_all_at(&fresh, 0));
            if let Err(e) = replace {
                let e = io_err(&state_label, "write", e);
                return Err(match e {
                    StorageError::DiskFull(_) => e,
                    _ => StorageError::StateMismatch(format!(
                        "{}: resume state cannot be replaced: {e}",
                        state_path.display()
                    )),
                });
            }
            vec![false; layout.piece_count() as usize]
        }
    };

    Ok(PartialFile {
        name: name.to_string(),
        state_label,
        layout,
        data: Arc::new(data),
        state,
        writeback: None,
        dir: dir.to_path_buf(),
        part_path,
        state_path,
        final_path,
        done: claimed.clone(),
        unsaved: None,
        claimed,
    })
}

/// An in-progress download on disk.
#[derive(Debug)]
pub struct PartialFile {
    name: String,
    /// What errors about the state file show.
    state_label: String,
    layout: Layout,
    /// Shared with queued writeback kicks, so the fd outlives them.
    data: Arc<File>,
    state: File,
    /// Early writeback, once attached to a worker.
    writeback: Option<Writeback>,
    dir: PathBuf,
    part_path: PathBuf,
    state_path: PathBuf,
    final_path: PathBuf,
    /// Pieces the state file claimed at open.
    claimed: Vec<bool>,
    /// Pieces marked done now (starts as `claimed`); the state file lags by `unsaved`.
    done: Vec<bool>,
    /// Pieces marked done but not yet written to the state file, as a range (first, last).
    unsaved: Option<(u32, u32)>,
}

/// Bytes written since the last writeback kick, as one covering range.
#[derive(Debug)]
struct Writeback {
    kicker: Kicker,
    lo: u64,
    hi: u64,
    dirty: u64,
}

impl PartialFile {
    /// Start writing back data every 8 MiB written (`WRITEBACK_EVERY`), from `worker`'s thread.
    pub fn start_writeback_with(&mut self, worker: &DiskWorker) {
        self.writeback = worker.kicker().map(|kicker| Writeback {
            kicker,
            lo: u64::MAX,
            hi: 0,
            dirty: 0,
        });
    }

    /// A handle for writing verified pieces into the data file from another thread.
    pub fn write_target(&self) -> WriteTarget {
        WriteTarget {
            name: Arc::from(self.name.as_str()),
            data: Arc::clone(&self.data),
            size: self.layout.size,
        }
    }

    /// Counts `len` bytes written at `offset` (here or through a [`WriteTarget`]) towards
    /// the next writeback kick.
    pub fn note_written(&mut self, offset: u64, len: u64) {
        let Some(wb) = self.writeback.as_mut() else {
            return;
        };
        wb.lo = wb.lo.min(offset);
        wb.hi = wb.hi.max(offset.saturating_add(len));
        wb.dirty += len;
        if wb.dirty >= WRITEBACK_EVERY {
            // Pieces land out of order: the covering range may include clean pages, which cost nothing.
            wb.kicker.kick(&self.data, wb.lo, wb.hi - wb.lo);
            (wb.lo, wb.hi, wb.dirty) = (u64::MAX, 0, 0);
        }
    }

    /// From the state file at open (empty/zero if new).
    pub fn claimed_done(&self) -> Vec<bool> {
        self.claimed.clone()
    }

    /// The file's name in the folder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The download's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Path of the temporary data file (for logs).
    pub fn part_path(&self) -> &Path {
        &self.part_path
    }

    /// True if `piece` is marked done (claimed at open and not marked bad since, or marked done).
    pub fn is_done(&self, piece: u32) -> bool {
        self.done.get(piece as usize).copied().unwrap_or(false)
    }

    /// How many pieces are marked done.
    pub fn done_count(&self) -> u32 {
        self.done.iter().filter(|&&d| d).count() as u32
    }

    /// True when every piece is marked done, i.e. [`PartialFile::finish`] may succeed.
    pub fn is_complete(&self) -> bool {
        self.done.iter().all(|&d| d)
    }

    /// Persist (pwrite one byte of the state file; no fsync per piece: see the module docs).
    ///
    /// Call it only after the piece's data was written and verified.
    ///
    /// The mark is kept in memory until [`PartialFile::save_marks`] (or drop, or finish) writes
    /// every pending mark in one write: one system call per batch instead of per piece. A
    /// crash loses only marks not yet saved, and those pieces are fetched again.
    pub fn mark_done(&mut self, piece: u32) -> Result<(), StorageError> {
        let Some(slot) = self.done.get_mut(piece as usize) else {
            return self.set_piece(piece, true);
        };
        *slot = true;
        self.unsaved = Some(match self.unsaved {
            Some((first, last)) => (first.min(piece), last.max(piece)),
            None => (piece, piece),
        });
        Ok(())
    }

    /// Writes the pending marks of [`PartialFile::mark_done`] to the state file.
    pub fn save_marks(&mut self) -> Result<(), StorageError> {
        let Some((first, last)) = self.unsaved.take() else {
            return Ok(());
        };
        let bytes: Vec<u8> = self.done[first as usize..=last as usize]
            .iter()
            .map(|&d| u8::from(d))
            .collect();
        let offset = (STATE_HEADER_LEN as u64) + u64::from(first);
        self.state
            .write_all_at(&bytes, offset)
            .map_err(|e| io_err(&self.state_label, "write", e))
    }

    /// Unset after a failed re-verify.
    pub fn mark_bad(&mut self, piece: u32) -> Result<(), StorageError> {
        self.set_piece(piece, false)
    }

    fn set_piece(&mut self, piece: u32, done: bool) -> Result<(), StorageError> {
        let Some(slot) = self.done.get_mut(piece as usize) else {
            return Err(own_err(
                &self.state_label,
                "mark piece",
                io::ErrorKind::InvalidInput,
                format!(
                    "piece {piece} out of range ({} pieces)",
                    self.layout.piece_count()
                ),
            ));
        };
        if *slot == done {
            return Ok(());
        }
        let offset = (STATE_HEADER_LEN as u64) + u64::from(piece);
        self.state
            .write_all_at(&[u8::from(done)], offset)
            .map_err(|e| io_err(&self.state_label, "write", e))?;
        *slot = done;
        Ok(())
    }

    /// fsync the data, rename temp -> DIR/NAME atomically, fsync the dir, delete the state file.
    ///
    /// Refuses (StateMismatch) unless every piece is marked done, so a half
    /// file can never appear under the final name. An existing regular file or
    /// symlink at `DIR/NAME` is replaced (rename semantics); a directory there
    /// makes the rename fail. On any error the temporary files are kept, so the
    /// download can be resumed.
    pub fn finish(mut self) -> Result<PathBuf, StorageError> {
        self.save_marks()?;
        let missing = self.done.iter().filter(|&&d| !d).count();
        if missing > 0 {
            return Err(StorageError::StateMismatch(format!(
                "{}: cannot finish, {missing} of {} pieces are not verified yet",
                self.name,
                self.done.len()
            )));
        }
        self.data
            .sync_all()
            .map_err(|e| io_err(&self.name, "fsync", e))?;
        fs::rename(&self.part_path, &self.final_path)
            .map_err(|e| io_err(&self.name, "rename into place", e))?;
        // From here the file is complete under its name; the state file is garbage.
        // Failing to delete it is not worth failing the download for.
        if let Err(e) = fs::remove_file(&self.state_path) {
            log::warn!(
                "{}: cannot remove {}: {e}",
                self.name,
                self.state_path.display()
            );
        }
        // Make the rename (and the removal) durable before reporting success.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err(&self.name, "fsync folder", e))?;
        Ok(self.final_path.clone())
    }

    /// Remove temp + state files (user abandoned the download).
    pub fn discard(self) -> Result<(), StorageError> {
        for (path, label) in [
            (&self.part_path, &self.name),
            (&self.state_path, &self.state_label),
        ] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(label, "remove", e)),
            }
        }
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        // A download stopped or failed: keep its progress for a resume.
        if let Err(e) = self.save_marks() {
            log::warn!("{e}");
        }
    }
}

impl PieceStore for PartialFile {
    fn len(&self) -> u64 {
        self.layout.size
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        check_range(&self.name, "read", self.layout.size, offset, buf.len())?;
        self.data
            .read_exact_at(buf, offset)
            .map_err(|e| io_err(&self.name, "read", e))
    }

    fn read_at_uninit<'a>(
        &self,
        offset: u64,
        buf: &'a mut [std::mem::MaybeUninit<u8>],
    ) -> Result<&'a mut [u8], StorageError> {
        check_range(&self.name, "read", self.layout.size, offset, buf.len())?;
        super::pread_exact(&self.data, &self.name, offset, buf)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), StorageError> {
        // Never grow the file past its layout, whatever a peer sent.
        check_range(&self.name, "write", self.layout.size, offset, data.len())?;
        self.data
            .write_all_at(data, offset)
            .map_err(|e| io_err(&self.name, "write", e))?;
        self.note_written(offset, data.len() as u64);
        Ok(())
    }
}

/// A download's data file, for writing verified pieces from a disk thread
/// ([`WriteTarget::verify_write`]); the [`PartialFile`] stays with the download.
#[derive(Clone, Debug)]
pub struct WriteTarget {
    name: Arc<str>,
    data: Arc<File>,
    size: u64,
}

impl WriteTarget {
    /// The file's name in the folder.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Hashes `data` and writes it at `offset` only if the hash is `want`: `Ok(true)` once
    /// written, `Ok(false)` (nothing written) on a mismatch. The caller then reports the
    /// bytes to [`PartialFile::note_written`], so writeback kicks still happen.
    pub fn verify_write(
        &self,
        offset: u64,
        data: &[u8],
        want: &Hash,
    ) -> Result<bool, StorageError> {
        if super::hash_piece(data) != *want {
            return Ok(false);
        }
        check_range(&self.name, "write", self.size, offset, data.len())?;
        self.data
            .write_all_at(data, offset)
            .map_err(|e| io_err(&self.name, "write", e))?;
        Ok(true)
    }
}
