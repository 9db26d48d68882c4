//! Reads that never wait for the disk: served only from the page cache.
//!
//! A serving node reads up to 1 MiB per block on the network thread. From the
//! page cache that is a memory copy; from a slow disk it is milliseconds that
//! every other connection would wait. So the serve path first reads with
//! `preadv2(RWF_NOWAIT)`, which fails instead of waiting when any of the range
//! is not cached; on a miss the disk thread reads the range in (a
//! [`DiskWorker::warm`](super::DiskWorker::warm)) and the block is served
//! when it reports back.

use std::fs::File;
use std::io;
use std::mem::MaybeUninit;

use super::{io_err, pread_exact, StorageError};

/// Reads exactly `buf.len()` bytes at `offset` if they are all in the page cache;
/// `Ok(None)` if some are not (nothing is then waited for).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn pread_cached<'a>(
    file: &File,
    name: &str,
    offset: u64,
    buf: &'a mut [MaybeUninit<u8>],
) -> Result<Option<&'a mut [u8]>, StorageError> {
    use std::os::unix::io::AsRawFd;
    let Ok(at) = libc::off_t::try_from(offset) else {
        return pread_exact(file, name, offset, buf).map(Some);
    };
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<libc::c_void>(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: the one iovec describes `buf`, writable memory we borrow mutably;
        // preadv2 writes at most that many bytes into it and keeps no pointer.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, at, libc::RWF_NOWAIT) };
        if n >= 0 && n as usize == buf.len() {
            // SAFETY: preadv2 wrote all `buf.len()` bytes; MaybeUninit<u8> has u8's layout.
            return Ok(Some(unsafe {
                &mut *(buf as *mut [MaybeUninit<u8>] as *mut [u8])
            }));
        }
        if n >= 0 {
            // Partly cached, or the file shrank: the disk thread or a plain read sorts it out.
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            // A file system or kernel without RWF_NOWAIT: read as before.
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) => {
                return pread_exact(file, name, offset, buf).map(Some)
            }
            _ => return Err(io_err(name, "read", e)),
        }
    }
}

/// Without `preadv2`, every read is a plain one.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn pread_cached<'a>(
    file: &File,
    name: &str,
    offset: u64,
    buf: &'a mut [MaybeUninit<u8>],
) -> Result<Option<&'a mut [u8]>, StorageError> {
    pread_exact(file, name, offset, buf).map(Some)
}

/// Reads `len` bytes at `offset` of `file` into the page cache (on the disk thread), in
/// `scratch`-sized steps; errors are left for the serve path's own read to report.
pub(crate) fn warm(file: &File, offset: u64, len: u64, scratch: &mut Vec<u8>) {
    use std::os::unix::fs::FileExt;
    scratch.resize(1 << 20, 0);
    let mut done = 0;
    while done < len {
        let step = (len - done).min(scratch.len() as u64) as usize;
        match file.read_at(&mut scratch[..step], offset + done) {
            Ok(0) | Err(_) => return,
            Ok(n) => done += n as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_cached_read_returns_the_bytes_or_says_it_would_wait() {
        let mut tmp = tempfile::NamedTempFile::new().expect("tmp");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        tmp.write_all(&data).expect("write");
        let file = tmp.reopen().expect("reopen");
        let mut buf = vec![MaybeUninit::uninit(); 4096];
        // Just written, so cached; a miss would be allowed but is not expected here.
        match pread_cached(&file, "t", 8192, &mut buf).expect("read") {
            Some(got) => assert_eq!(got, &data[8192..8192 + 4096]),
            None => {
                let mut scratch = Vec::new();
                warm(&file, 8192, 4096, &mut scratch);
            }
        }
        // Past the end: not a full read, so not served from here.
        let mut tail = vec![MaybeUninit::uninit(); 4096];
        assert!(pread_cached(&file, "t", 98_000, &mut tail)
            .expect("read")
            .is_none());
    }
}
