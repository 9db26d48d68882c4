//! [`DiskWorker`]: the threads for the disk work that can take seconds.
//!
//! The reactor must never wait on the disk: an fsync of a freshly written
//! 1 GiB file takes about half a second here and much longer on a slow disk,
//! and hashing a file to publish it reads all of it. Those jobs go to these
//! threads, which report each result through a channel and call `notify`
//! (the node passes its reactor's wake handle), so the network stays on one
//! thread and the driver picks results up in its wake callback.
//!
//! Jobs of one lane run in the order they were queued. Writeback kicks
//! ([`PartialFile`] sends them every few MiB written) only ask the kernel to
//! start writing dirty pages (`sync_file_range(SYNC_FILE_RANGE_WRITE)`),
//! which returns without waiting for the disk unless its queue is full; they
//! run here so that even that wait is never the reactor's.
//!
//! A third lane checks and writes whole single-block pieces a download received
//! ([`DiskWorker::verify_write`]): hashing and the `pwrite` are most of a
//! downloader's own CPU work, and here they overlap with the network thread's
//! receiving and CRC checking. At most [`MAX_VERIFYING`] pieces are in flight, each
//! in a buffer the thread hands back; past that (the node stops reading owners' input
//! before it gets there) and for pieces under [`MIN_VERIFY_LEN`] the caller does the
//! work itself.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::{Folder, Hash, PartialFile, PieceHashes, SharedFile, StorageError, WriteTarget};

/// Most pieces queued or being checked on the verify lane at once: each holds a copy of
/// up to one block (1 MiB), so this bounds the buffers to 4 MiB (the downloader's RSS
/// goal is 16 MiB), and keeps the thread busy while the next piece is received.
pub const MAX_VERIFYING: usize = 4;

/// Smaller pieces are not worth the trip to the verify lane: hashing and writing 64 KiB
/// takes about as long as handing it over and hearing back.
pub const MIN_VERIFY_LEN: usize = 256 << 10;

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
    /// Hash `data` and write it at `offset` of `target` only if it is `want`; `data` goes back through `give_back`.
    Verify {
        target: WriteTarget,
        offset: u64,
        data: Vec<u8>,
        want: Hash,
        tag: u64,
        give_back: Sender<Vec<u8>>,
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
    /// A piece queued with [`DiskWorker::verify_write`] was checked (and written if it matched).
    Verified {
        /// The file's name in the folder.
        name: Arc<str>,
        /// The tag the driver gave.
        tag: u64,
        /// True once written, false if its hash did not match (nothing written), or the write error.
        result: Result<bool, StorageError>,
    },
}

/// Handle on the disk threads: queue jobs, collect results; dropping it lets the threads
/// finish their queues and exit.
///
/// Two threads, so that short jobs never wait behind long ones: one *quick* lane for
/// fsync + rename, page-cache reads for serving and writeback kicks (each bounded by one
/// file or one block), one *slow* lane for reading whole files (publish hashing, resume
/// checks), which can take seconds per GiB.
pub struct DiskWorker {
    quick: Lane,
    slow: Lane,
    verify: Lane,
    /// Buffers of finished verify jobs, back from the verify thread for reuse.
    free: Receiver<Vec<u8>>,
    give_back: Sender<Vec<u8>>,
    /// Verify jobs queued whose result was not taken yet (at most [`MAX_VERIFYING`]).
    verifying: usize,
    /// Set by `drain`: hashing and checks still queued or running are dropped (a stopping
    /// node does not wait for them).
    stop: Arc<AtomicBool>,
    done: Receiver<DiskDone>,
    /// Results of jobs run on the caller's thread because a thread was gone.
    inline: Vec<DiskDone>,
}

/// One disk thread and its queue.
struct Lane {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Lane {
    fn start(
        name: &str,
        stop: &Arc<AtomicBool>,
        outbox: Sender<DiskDone>,
        notify: Arc<dyn Fn() + Send + Sync>,
    ) -> io::Result<Lane> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let stopping = Arc::clone(stop);
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            // One read buffer per thread for warm reads, kept across jobs.
            let mut scratch = Vec::new();
            for job in inbox {
                if matches!(job, Job::Stop) {
                    return;
                }
                if let Some(result) = run(job, &stopping, &mut scratch) {
                    if outbox.send(result).is_err() {
                        return;
                    }
                    notify();
                }
            }
        })?;
        Ok(Lane {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Sends `job`, or hands it back if the thread is gone.
    fn send(&self, job: Job) -> Option<Job> {
        match &self.jobs {
            Some(tx) => tx.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        }
    }

    /// Lets the thread finish what was queued before, then joins it.
    fn stop(&mut self) {
        if let Some(jobs) = self.jobs.take() {
            let _ = jobs.send(Job::Stop);
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                log::error!("a disk thread panicked");
            }
        }
    }
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
    /// Starts the threads; `notify` is called (from them) after every result, to wake the driver.
    pub fn start(notify: impl Fn() + Send + Sync + 'static) -> io::Result<DiskWorker> {
        let (outbox, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let notify: Arc<dyn Fn() + Send + Sync> = Arc::new(notify);
        let quick = Lane::start("shoal-disk", &stop, outbox.clone(), Arc::clone(&notify))?;
        let verify = Lane::start("shoal-verify", &stop, outbox.clone(), Arc::clone(&notify))?;
        let slow = Lane::start("shoal-hash", &stop, outbox, notify)?;
        let (give_back, free) = mpsc::channel();
        Ok(DiskWorker {
            quick,
            slow,
            verify,
            free,
            give_back,
            verifying: 0,
            stop,
            done,
            inline: Vec::new(),
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

    /// Queues hashing `data` (a whole piece, copied here) and, only if its hash is `want`,
    /// writing it at `offset` of `target`; a [`DiskDone::Verified`] with `tag` follows.
    /// False (nothing queued) for a piece under [`MIN_VERIFY_LEN`], when [`MAX_VERIFYING`]
    /// are in flight, or when the thread is gone: the caller then checks and writes it itself.
    pub fn verify_write(
        &mut self,
        target: &WriteTarget,
        offset: u64,
        data: &[u8],
        want: &Hash,
        tag: u64,
    ) -> bool {
        if data.len() < MIN_VERIFY_LEN
            || self.verifying >= MAX_VERIFYING
            || self.verify.jobs.is_none()
        {
            return false;
        }
        // Every buffer is handed back before its result is sent, so with fewer than
        // MAX_VERIFYING results outstanding at most that many buffers ever exist.
        let mut buf = self.free.try_recv().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(data);
        let job = Job::Verify {
            target: target.clone(),
            offset,
            data: buf,
            want: *want,
            tag,
            give_back: self.give_back.clone(),
        };
        if self.verify.send(job).is_some() {
            return false;
        }
        self.verifying += 1;
        true
    }

    /// The next result, if one is ready (never blocks).
    pub fn try_next(&mut self) -> Option<DiskDone> {
        let done = match self.inline.pop() {
            Some(done) => done,
            None => self.done.try_recv().ok()?,
        };
        if matches!(done, DiskDone::Verified { .. }) {
            self.verifying = self.verifying.saturating_sub(1);
        }
        Some(done)
    }

    /// Waits until every queued finish has run and returns the results (for a clean stop);
    /// hashing and checks not done yet are abandoned (at most 16 MiB more is read).
    pub fn drain(&mut self) -> Vec<DiskDone> {
        self.stop.store(true, Ordering::Relaxed);
        self.slow.stop();
        self.verify.stop();
        self.quick.stop();
        let mut all = std::mem::take(&mut self.inline);
        all.extend(self.done.try_iter());
        self.verifying = 0;
        all
    }

    pub(crate) fn kicker(&self) -> Option<Kicker> {
        self.quick.jobs.clone().map(Kicker)
    }

    /// Sends `job` to its lane, or runs it here if that thread is gone (it panicked or was drained).
    fn queue(&mut self, job: Job) {
        let lane = match job {
            Job::Hash { .. } | Job::Check { .. } => &self.slow,
            _ => &self.quick,
        };
        let Some(job) = lane.send(job) else {
            return;
        };
        log::warn!("disk thread gone; running a disk job on the network thread");
        if let Some(done) = run(job, &self.stop, &mut Vec::new()) {
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
            .field("running", &self.quick.jobs.is_some())
            .finish()
    }
}

/// Runs one job on the current thread; None for a writeback kick or hashing abandoned at `stop`.
fn run(job: Job, stop: &AtomicBool, scratch: &mut Vec<u8>) -> Option<DiskDone> {
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
            let result = check_claims(&mut file, &hashes, stop)?;
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
            super::cached::warm(&file, offset, len, scratch);
            Some(DiskDone::Warmed { key })
        }
        Job::Writeback { file, offset, len } => {
            start_writeback(&file, offset, len);
            None
        }
        Job::Verify {
            target,
            offset,
            data,
            want,
            tag,
            give_back,
        } => {
            // Every job must get its verdict: the node stops reading owners while pieces
            // wait, so a lost one would stall it. A panic becomes a write error instead.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                target.verify_write(offset, &data, &want)
            }))
            .unwrap_or_else(|_| {
                Err(super::own_err(
                    target.name(),
                    "verify and write",
                    io::ErrorKind::Other,
                    "the disk thread failed".into(),
                ))
            });
            let _ = give_back.send(data);
            Some(DiskDone::Verified {
                name: Arc::clone(target.name()),
                tag,
                result,
            })
        }
        Job::Stop => None,
    }
}

/// The pieces `file` records as verified whose bytes still match `hashes`; the others are
/// recorded as not verified, so they are fetched again. None once `stop` is set.
fn check_claims(
    file: &mut PartialFile,
    hashes: &[Hash],
    stop: &AtomicBool,
) -> Option<Result<Vec<bool>, StorageError>> {
    let layout = file.layout();
    let claimed = file.claimed_done();
    let mut checked = vec![false; claimed.len()];
    let mut scratch = Vec::new();
    for (piece, _) in claimed.iter().enumerate().filter(|(_, &c)| c) {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let (Ok(index), Some(want)) = (u32::try_from(piece), hashes.get(piece)) else {
            continue;
        };
        let len = layout.piece_len(index);
        let hash =
            match super::hash_stored_piece(&*file, layout.piece_offset(index), len, &mut scratch) {
                Ok(hash) => hash,
                Err(e) => return Some(Err(e)),
            };
        if hash == *want {
            checked[piece] = true;
        } else {
            log::info!(
                "{}: piece {index} left by an earlier run fails its hash; fetching it again",
                file.name()
            );
            if let Err(e) = file.mark_bad(index) {
                return Some(Err(e));
            }
        }
    }
    Some(Ok(checked))
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
