//! [`DiskWorker`]: one thread for the disk work that can take seconds.
//!
//! The reactor must never wait on the disk: an fsync of a freshly written
//! 1 GiB file takes about half a second here and much longer on a slow disk,
//! and hashing a file to publish it reads all of it. Those jobs go to this
//! thread, which reports each result through a channel and calls `notify`
//! (the node passes its reactor's wake handle), so the network stays on one
//! thread and the driver picks results up in its wake callback.
//!
//! Jobs run in the order they were queued. Writeback kicks
//! ([`PartialFile`] sends them every few MiB written) only ask the kernel to
//! start writing dirty pages (`sync_file_range(SYNC_FILE_RANGE_WRITE)`),
//! which returns without waiting for the disk unless its queue is full; they
//! run here so that even that wait is never the reactor's.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::{Folder, Hash, PartialFile, PieceHashes, SharedFile, StorageError};

/// What the worker is asked to do.
pub(crate) enum Job {
    /// fsync, rename into place, fsync the folder ([`PartialFile::finish`]).
    Finish(PartialFile),
    /// Piece hashes of a file to publish, from its cache or by reading it.
    Hash {
        folder: Folder,
        file: SharedFile,
        piece_size: u32,
    },
    /// Re-hash the pieces a download's earlier run recorded as verified (a resume).
    Check {
        file: PartialFile,
        hashes: Vec<Hash>,
    },
    /// Read a range into the page cache, then report `key` (a serve read that would wait).
    Warm {
        file: File,
        offset: u64,
        len: u64,
        key: u64,
    },
    /// Start writeback of `len` bytes at `offset` (0 = to the end of the file).
    Writeback {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
    /// Exit once the jobs before this one ran ([`PartialFile`]s hold senders, so the channel may never close).
    Stop,
}

/// A finished job, for the driver.
#[derive(Debug)]
pub enum DiskDone {
    /// A download's [`PartialFile::finish`] ended: the final path, or why not.
    Finished {
        /// The file's name in the folder.
        name: String,
        /// The path it now has, or the storage error (temporary files then kept).
        result: Result<PathBuf, StorageError>,
    },
    /// A file's piece hashes are known (or it could not be read).
    Hashed {
        /// The file, handed back to be served.
        file: SharedFile,
        /// The piece size it was hashed in.
        piece_size: u32,
        /// Its hashes, or the read error.
        result: Result<PieceHashes, StorageError>,
    },
    /// A resumed download's recorded pieces were re-hashed ([`DiskWorker::check`]).
    Checked {
        /// The file's name in the folder.
        name: String,
        /// The download's file, handed back (boxed: it is big beside the other results).
        file: Box<PartialFile>,
        /// Per piece: recorded and matching its hash; or why they could not be read.
        result: Result<Vec<bool>, StorageError>,
    },
    /// A range asked for with [`DiskWorker::warm`] is in the page cache now (or could not
    /// be read: the serve path's own read then says why).
    Warmed {
        /// The key the driver gave.
        key: u64,
    },
}

/// Handle on the disk thread: queue jobs, collect results; dropping it lets the thread finish its queue and exit.
pub struct DiskWorker {
    jobs: Option<Sender<Job>>,
    /// Set by `drain`: hashing still queued or running is dropped (a stopping node does not wait for it).
    stop: Arc<AtomicBool>,
    done: Receiver<DiskDone>,
    /// Results of jobs run on the caller's thread because the worker was gone.
    inline: Vec<DiskDone>,
    thread: Option<JoinHandle<()>>,
}

/// Lets a [`PartialFile`] queue writeback kicks without owning the worker.
#[derive(Clone)]
pub(crate) struct Kicker(Sender<Job>);

impl std::fmt::Debug for Kicker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kicker")
    }
}

impl Kicker {
    /// Queues a writeback start; a gone worker only means no early writeback (the final fsync still writes all).
    pub(crate) fn kick(&self, file: &Arc<File>, offset: u64, len: u64) {
        let _ = self.0.send(Job::Writeback {
            file: Arc::clone(file),
            offset,
            len,
        });
    }
}

impl DiskWorker {
    /// Starts the thread; `notify` is called (from it) after every result, to wake the driver.
    pub fn start(notify: impl Fn() + Send + 'static) -> io::Result<DiskWorker> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (outbox, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = thread::Builder::new()
            .name("shoal-disk".into())
            .spawn(move || {
                for job in inbox {
                    if matches!(job, Job::Stop) {
                        return;
                    }
                    if let Some(result) = run(job, &stopping) {
                        if outbox.send(result).is_err() {
                            return;
                        }
                        notify();
                    }
                }
            })?;
        Ok(DiskWorker {
            jobs: Some(jobs),
            stop,
            done,
            inline: Vec::new(),
            thread: Some(thread),
        })
    }

    /// Queues the fsync + rename of a complete download; a [`DiskDone::Finished`] follows.
    pub fn finish(&mut self, file: PartialFile) {
        self.queue(Job::Finish(file));
    }

    /// Queues the hashing (or cache lookup) of `file` in pieces of `piece_size`; a [`DiskDone::Hashed`] follows.
    pub fn hash(&mut self, folder: &Folder, file: SharedFile, piece_size: u32) {
        self.queue(Job::Hash {
            folder: folder.clone(),
            file,
            piece_size,
        });
    }

    /// Queues re-hashing the pieces `file` records as verified against `hashes`; a
    /// [`DiskDone::Checked`] follows (pieces that fail are recorded as not verified).
    pub fn check(&mut self, file: PartialFile, hashes: Vec<Hash>) {
        self.queue(Job::Check { file, hashes });
    }

    /// Queues reading `len` bytes at `offset` of `file` into the page cache; a
    /// [`DiskDone::Warmed`] with `key` follows. False if the file cannot be handed over
    /// (then nothing follows and the caller reads it itself).
    pub fn warm(&mut self, file: &SharedFile, offset: u64, len: u64, key: u64) -> bool {
        match file.try_clone_file() {
            Ok(file) => {
                self.queue(Job::Warm {
                    file,
                    offset,
                    len,
                    key,
                });
                true
            }
            Err(e) => {
                log::debug!("{}: cannot hand it to the disk thread: {e}", file.name());
                false
            }
        }
    }

    /// The next result, if one is ready (never blocks).
    pub fn try_next(&mut self) -> Option<DiskDone> {
        if let Some(done) = self.inline.pop() {
            return Some(done);
        }
        self.done.try_recv().ok()
    }

    /// Waits until every queued finish has run and returns the results (for a clean stop);
    /// hashing not done yet is abandoned (at most 16 MiB more is read).
    pub fn drain(&mut self) -> Vec<DiskDone> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(jobs) = self.jobs.take() {
            let _ = jobs.send(Job::Stop);
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("the disk thread panicked");
            }
        }
        let mut all = std::mem::take(&mut self.inline);
        all.extend(self.done.try_iter());
        all
    }

    pub(crate) fn kicker(&self) -> Option<Kicker> {
        self.jobs.clone().map(Kicker)
    }

    /// Sends `job` to the thread, or runs it here if the thread is gone (it panicked or was drained).
    fn queue(&mut self, job: Job) {
        let job = match &self.jobs {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        log::warn!("disk thread gone; running a disk job on the network thread");
        if let Some(done) = run(job, &self.stop) {
            self.inline.push(done);
        }
    }
}

impl Drop for DiskWorker {
    fn drop(&mut self) {
        // Queued finishes must still happen (or fail) rather than vanish with the process.
        let _ = self.drain();
    }
}

impl std::fmt::Debug for DiskWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWorker")
            .field("running", &self.jobs.is_some())
            .finish()
    }
}

/// Runs one job on the current thread; None for a writeback kick or hashing abandoned at `stop`.
fn run(job: Job, stop: &AtomicBool) -> Option<DiskDone> {
    match job {
        Job::Finish(file) => {
            let name = file.name().to_owned();
            let result = file.finish();
            Some(DiskDone::Finished { name, result })
        }
        Job::Hash {
            folder,
            file,
            piece_size,
        } => {
            let result = folder.piece_hashes_unless(&file, piece_size, stop)?;
            Some(DiskDone::Hashed {
                file,
                piece_size,
                result,
            })
        }
        Job::Check { mut file, hashes } => {
            let name = file.name().to_owned();
            let result = check_claims(&mut file, &hashes);
            Some(DiskDone::Checked {
                name,
                file: Box::new(file),
                result,
            })
        }
        Job::Warm {
            file,
            offset,
            len,
            key,
        } => {
            super::cached::warm(&file, offset, len, &mut Vec::new());
            Some(DiskDone::Warmed { key })
        }
        Job::Writeback { file, offset, len } => {
            start_writeback(&file, offset, len);
            None
        }
        Job::Stop => None,
    }
}

/// The pieces `file` records as verified whose bytes still match `hashes`; the others are
/// recorded as not verified, so they are fetched again.
fn check_claims(file: &mut PartialFile, hashes: &[Hash]) -> Result<Vec<bool>, StorageError> {
    let layout = file.layout();
    let claimed = file.claimed_done();
    let mut checked = vec![false; claimed.len()];
    let mut scratch = Vec::new();
    for (piece, _) in claimed.iter().enumerate().filter(|(_, &c)| c) {
        let (Ok(index), Some(want)) = (u32::try_from(piece), hashes.get(piece)) else {
            continue;
        };
        let len = layout.piece_len(index);
        let hash = super::hash_stored_piece(&*file, layout.piece_offset(index), len, &mut scratch)?;
        if hash == *want {
            checked[piece] = true;
        } else {
            log::info!(
                "{}: piece {index} left by an earlier run fails its hash; fetching it again",
                file.name()
            );
            file.mark_bad(index)?;
        }
    }
    Ok(checked)
}

/// Asks the kernel to start writing back a range of `file` without waiting for it.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range takes an fd (kept open by `file`) and integers; no memory is shared.
    let r = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if r != 0 {
        // Only a hint: the fsync before the rename writes whatever this did not.
        log::debug!("sync_file_range: {}", io::Error::last_os_error());
    }
}

/// Elsewhere there is no portable "start writeback" call: the final fsync does it all.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn start_writeback(_file: &File, _offset: u64, _len: u64) {}
