//! [`Folder`] (a node's directory) and [`SharedFile`] (a file it serves).
//!
//! Every path built here is `DIR/NAME` for a name that passed
//! [`check_name`], so nothing from the network can reach outside the folder
//! through `..`, `/` or an absolute path. Symlinks are refused too: a file is
//! opened only if it is a regular file directly in the folder, checked with
//! `lstat` before opening and `fstat` after (same device and inode), so a
//! symlink swapped in between is caught on every unix; on Linux the open
//! also carries `O_NOFOLLOW`.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{
    check_name, check_range, io_err, own_err, partial, Hash, Layout, PartialFile, PieceStore,
    StorageError,
};

/// `O_NOFOLLOW | O_NONBLOCK` where we know the values without the libc crate; 0 elsewhere
/// (the lstat/fstat inode comparison is the portable guarantee). O_NONBLOCK means a FIFO
/// swapped in cannot block the reactor in `open`; it changes nothing for regular files.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86", target_arch = "x86_64", target_arch = "riscv64")
))]
const OPEN_FLAGS: i32 = 0o400000 | 0o4000;
#[cfg(all(target_os = "linux", any(target_arch = "arm", target_arch = "aarch64")))]
const OPEN_FLAGS: i32 = 0o100000 | 0o4000;
#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "riscv64",
        target_arch = "arm",
        target_arch = "aarch64"
    )
)))]
const OPEN_FLAGS: i32 = 0;

/// A node's folder (default node_files/NAME). Every path it opens is DIR/NAME for a checked name.
#[derive(Clone, Debug)]
pub struct Folder {
    dir: PathBuf,
}

impl Folder {
    /// Open the folder, creating it (and its parents) if needed.
    pub fn open(dir: &Path) -> Result<Folder, StorageError> {
        let shown = dir.display().to_string();
        fs::create_dir_all(dir).map_err(|e| io_err(&shown, "create folder", e))?;
        let meta = fs::metadata(dir).map_err(|e| io_err(&shown, "stat folder", e))?;
        if !meta.is_dir() {
            return Err(own_err(
                &shown,
                "open folder",
                io::ErrorKind::InvalidInput,
                "not a directory".to_string(),
            ));
        }
        Ok(Folder {
            dir: dir.to_path_buf(),
        })
    }

    /// The folder's path, as given to [`Folder::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/NAME` for a checked name.
    pub fn path_of(&self, name: &str) -> Result<PathBuf, StorageError> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Open a file this node shares: must be a regular file directly in the folder (refuse symlinks: O_NOFOLLOW / symlink_metadata).
    pub fn open_shared(&self, name: &str) -> Result<SharedFile, StorageError> {
        let path = self.path_of(name)?;
        let (file, meta) = open_regular(&path, name, OpenOptions::new().read(true))?;
        Ok(SharedFile {
            file,
            name: name.to_string(),
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
        })
    }

    /// Start or resume a download of `name` with this layout and root: creates/opens the temp file
    /// `DIR/.NAME.<first 8 hex of root>.shoal-part` (preallocated to size with set_len) and its state
    /// file `…shoal-state` (magic, root, size, piece_size, one byte per piece). Returns the
    /// PartialFile plus the pieces the state file claims are done (caller re-verifies them with hashes).
    ///
    /// It does not look at `DIR/NAME`: check [`Folder::final_exists`] first if
    /// an existing file must not be replaced by [`PartialFile::finish`].
    pub fn begin_download(
        &self,
        name: &str,
        layout: Layout,
        root: &Hash,
    ) -> Result<PartialFile, StorageError> {
        let final_path = self.path_of(name)?;
        partial::begin(&self.dir, name, final_path, layout, root)
    }

    /// True if anything (file, directory, symlink) is at `DIR/NAME`; false for a bad name.
    pub fn final_exists(&self, name: &str) -> bool {
        match self.path_of(name) {
            Ok(path) => fs::symlink_metadata(path).is_ok(),
            Err(_) => false,
        }
    }
}

/// Open `path` only if it is a regular file (not a symlink, directory, FIFO…), returning it with its fstat.
///
/// `name` is what errors show. NotFound if nothing is there.
pub(crate) fn open_regular(
    path: &Path,
    name: &str,
    opts: &mut OpenOptions,
) -> Result<(File, Metadata), StorageError> {
    let before = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StorageError::NotFound(name.to_string()))
        }
        Err(e) => return Err(io_err(name, "stat", e)),
    };
    if !before.file_type().is_file() {
        return Err(StorageError::NotAFile(name.to_string()));
    }
    let file = opts
        .custom_flags(OPEN_FLAGS)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StorageError::NotFound(name.to_string()),
            _ if OPEN_FLAGS != 0 && e.raw_os_error() == Some(ELOOP) => {
                // O_NOFOLLOW met a symlink swapped in after the lstat.
                StorageError::NotAFile(name.to_string())
            }
            _ => io_err(name, "open", e),
        })?;
    let after = file.metadata().map_err(|e| io_err(name, "stat", e))?;
    if !after.file_type().is_file() || after.dev() != before.dev() || after.ino() != before.ino() {
        // Replaced between lstat and open: not the file we checked.
        return Err(StorageError::NotAFile(name.to_string()));
    }
    Ok((file, after))
}

/// ELOOP: what open(O_NOFOLLOW) returns for a symlink on Linux.
const ELOOP: i32 = 40;

/// A shared file opened read-only.
#[derive(Debug)]
pub struct SharedFile {
    file: File,
    name: String,
    /// Size when opened: the layout is computed from it, so reads past it are refused.
    len: u64,
    modified: Option<SystemTime>,
    /// Inode change time when opened (seconds, nanoseconds): part of the hash-cache key.
    changed: (i64, i64),
    /// Inode when opened: part of the hash-cache key.
    inode: u64,
}

impl SharedFile {
    /// A second handle on the same open file (for the disk thread).
    pub(crate) fn try_clone_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// Size in bytes when the file was opened.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's name in the folder.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Last modification time when opened, if the file system reports one.
    pub fn modified(&self) -> Option<SystemTime> {
        self.modified
    }

    /// Inode number when opened.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Inode change time (ctime) when opened, as (seconds, nanoseconds) since the epoch.
    pub fn changed(&self) -> (i64, i64) {
        self.changed
    }

    /// Same length, modification time and inode as when opened: its bytes were not
    /// rewritten as far as the file system tells (a link or chmod changes only the
    /// change time, which [`unchanged`](Self::unchanged) also compares).
    pub fn unmodified(&self) -> bool {
        match self.file.metadata() {
            Ok(m) => {
                m.len() == self.len && m.modified().ok() == self.modified && m.ino() == self.inode
            }
            Err(_) => false,
        }
    }

    /// True if size, mtime, ctime and inode are still what they were at open (fstat now).
    pub fn unchanged(&self) -> bool {
        match self.file.metadata() {
            Ok(m) => {
                m.len() == self.len
                    && m.modified().ok() == self.modified
                    && (m.ctime(), m.ctime_nsec()) == self.changed
                    && m.ino() == self.inode
            }
            Err(_) => false,
        }
    }
}

impl PieceStore for SharedFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        check_range(&self.name, "read", self.len, offset, buf.len())?;
        // A file truncated since it was opened gives UnexpectedEof here, not garbage.
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_err(&self.name, "read", e))
    }

    fn read_at_uninit<'a>(
        &self,
        offset: u64,
        buf: &'a mut [std::mem::MaybeUninit<u8>],
    ) -> Result<&'a mut [u8], StorageError> {
        check_range(&self.name, "read", self.len, offset, buf.len())?;
        super::pread_exact(&self.file, &self.name, offset, buf)
    }

    fn read_cached_uninit<'a>(
        &self,
        offset: u64,
        buf: &'a mut [std::mem::MaybeUninit<u8>],
    ) -> Result<Option<&'a mut [u8]>, StorageError> {
        check_range(&self.name, "read", self.len, offset, buf.len())?;
        super::cached::pread_cached(&self.file, &self.name, offset, buf)
    }

    fn write_at(&mut self, _offset: u64, _data: &[u8]) -> Result<(), StorageError> {
        Err(own_err(
            &self.name,
            "write",
            io::ErrorKind::PermissionDenied,
            "a shared file is opened read-only".to_string(),
        ))
    }
}
