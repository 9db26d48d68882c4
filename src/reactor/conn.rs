//! One connection: its socket, its two buffers, its readiness and its state.
//!
//! The I/O boundary lives here too: every socket result is classified once
//! into [`IoStep`] (sozu's `SocketResult` idea), and `Interrupted` is retried
//! right where it happens, so the loop only ever sees four outcomes.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;

/// Initial read buffer size; it grows (up to the cap) only when a peer sends fast.
const READ_BUF_INITIAL: usize = 16 * 1024;
/// Compact the read buffer when less than this is free at its tail.
const READ_MIN_TAIL: usize = 16 * 1024;
/// An output chunk this full takes no more frames: the next goes to a fresh chunk.
const OUT_CHUNK: usize = 64 * 1024;
/// Most chunks one vectored write sends.
const OUT_IOVECS: usize = 16;

/// The outcome of one read or write, classified once at the boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IoStep {
    /// This many bytes moved (never 0).
    Done(usize),
    /// The socket has nothing more for now: clear the readiness flag.
    WouldBlock,
    /// Orderly end of stream (read returned 0).
    Eof,
    /// The connection failed; resets and broken pipes land here too, keeping their kind.
    Failed(ErrorKind),
}

/// Classifies a read or write result; `Interrupted` must be retried by the caller.
fn classify(r: io::Result<usize>, is_read: bool) -> Option<IoStep> {
    match r {
        Ok(0) if is_read => Some(IoStep::Eof),
        // A zero-byte write with a non-empty buffer means the socket cannot take more, ever.
        Ok(0) => Some(IoStep::Failed(ErrorKind::WriteZero)),
        Ok(n) => Some(IoStep::Done(n)),
        Err(e) => match e.kind() {
            ErrorKind::Interrupted => None,
            ErrorKind::WouldBlock => Some(IoStep::WouldBlock),
            kind => {
                log::debug!("socket {}: {e}", if is_read { "read" } else { "write" });
                Some(IoStep::Failed(kind))
            }
        },
    }
}

/// The bounded input buffer: unread bytes are `data[start..end]`.
///
/// `data.len()` is the initialized size; it starts small and grows up to the
/// cap, so reads go straight into it with no intermediate copy and no unsafe.
/// Compaction (moving the unread tail to the front) is lazy: only when the
/// free tail gets short.
#[derive(Debug, Default)]
pub(crate) struct ReadBuf {
    pub(crate) data: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl ReadBuf {
    /// Unread bytes.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Number of unread bytes.
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// Marks `n` bytes consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n.min(self.len());
        if self.start == self.end {
            // Everything consumed: rewinding is free.
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room at the tail and returns it (empty only when `cap` bytes are unread).
    fn tail(&mut self, cap: usize) -> &mut [u8] {
        if self.data.len() - self.end < READ_MIN_TAIL && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() - self.end < READ_MIN_TAIL && self.data.len() < cap {
            let want = (self.data.len() * 2).max(READ_BUF_INITIAL).min(cap);
            self.data.resize(want, 0);
        }
        debug_assert!(self.start <= self.end && self.end <= self.data.len());
        &mut self.data[self.end..]
    }
}

/// The output buffer: a queue of chunks, pending bytes from `start` in the first.
///
/// Frames are appended to the last chunk; once it holds [`OUT_CHUNK`] bytes the
/// next append goes to a fresh (recycled) chunk. Written bytes leave by
/// popping whole chunks, so nothing is ever moved to the front, a frame that
/// writes nothing costs nothing, and a big data frame mostly lands in a chunk
/// of its own instead of making a full one reallocate. The chunks go out in
/// one vectored write.
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already written.
    start: usize,
    /// One emptied chunk kept for reuse, so a busy connection does not allocate per chunk.
    spare: Option<Vec<u8>>,
}

impl OutBuf {
    /// Pending bytes.
    pub(crate) fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum::<usize>() - self.start
    }

    /// The Vec to append to (only append: what it holds is pending output).
    pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
        if self.chunks.back().is_none_or(|c| c.len() >= OUT_CHUNK) {
            let fresh = self.spare.take().unwrap_or_default();
            self.chunks.push_back(fresh);
        }
        let last = self.chunks.len() - 1;
        &mut self.chunks[last]
    }

    /// Marks `n` pending bytes written, recycling the chunks that are done.
    fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.chunks.front() {
            let left = front.len() - self.start;
            if n < left {
                self.start += n;
                return;
            }
            n -= left;
            self.start = 0;
            if let Some(mut done) = self.chunks.pop_front() {
                done.clear();
                // Keep the bigger one: a chunk that already fits a data frame saves a reallocation.
                if self
                    .spare
                    .as_ref()
                    .is_none_or(|s| s.capacity() < done.capacity())
                {
                    self.spare = Some(done);
                }
            }
        }
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Non-blocking connect in flight.
    Connecting,
    /// Connected; the handler owns it.
    Open,
    /// The handler no longer sees it (on_close queued or delivered): flush, shut
    /// down the write side, discard input until EOF, all before `deadline`.
    Closing { deadline: Instant },
    /// Socket gone; the slot waits for on_close to be delivered.
    Dead,
}

/// One connection in the slab.
#[derive(Debug)]
pub(crate) struct Conn {
    /// `None` once the socket is dropped (state `Dead`).
    pub(crate) stream: Option<TcpStream>,
    pub(crate) state: State,
    pub(crate) peer: SocketAddr,
    pub(crate) rbuf: ReadBuf,
    pub(crate) out: OutBuf,
    /// Edge-triggered readiness seen and not yet drained to `WouldBlock` (sozu's `Readiness.event`).
    pub(crate) readable: bool,
    /// As `readable`, for writes.
    pub(crate) writable: bool,
    /// The handler paused reading.
    pub(crate) paused: bool,
    /// The read buffer was full and the handler consumed nothing: wait for resume_reading.
    pub(crate) stalled: bool,
    /// Offer the buffered input to the handler again (after resume_reading).
    pub(crate) redeliver: bool,
    /// Pending output went above low water since the last on_drain.
    pub(crate) drain_armed: bool,
    /// The peer's EOF was seen.
    pub(crate) peer_eof: bool,
    /// We shut down our write side (closing).
    pub(crate) shut_write: bool,
    /// on_close has been delivered (or is not owed): the slot may be freed once the socket is gone.
    pub(crate) notified: bool,
    /// In the run queue for this or the next iteration.
    pub(crate) queued: bool,
    /// In the dirty list (flush + interest update due).
    pub(crate) dirty: bool,
    /// Interest currently registered with the poll.
    pub(crate) interest: Option<Interest>,
}

impl Conn {
    /// A fresh connection record.
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, state: State) -> Conn {
        Conn {
            stream: Some(stream),
            state,
            peer,
            rbuf: ReadBuf::default(),
            out: OutBuf::default(),
            readable: false,
            writable: false,
            paused: false,
            stalled: false,
            redeliver: false,
            drain_armed: false,
            peer_eof: false,
            shut_write: false,
            notified: false,
            queued: false,
            dirty: false,
            interest: None,
        }
    }

    /// The handler may use it (not closing or dead).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.state, State::Connecting | State::Open)
    }

    /// Whether reading is blocked by the handler or by back-pressure, regardless of readiness.
    pub(crate) fn read_blocked(&self, cfg: &super::Config) -> bool {
        match self.state {
            State::Open => {
                self.paused
                    || self.stalled
                    || self.peer_eof
                    || self.out.len() > cfg.write_high_water
                    || self.rbuf.len() >= cfg.read_buf_cap
            }
            // Closing conns discard input until EOF, so reading is never blocked there.
            State::Closing { .. } => self.peer_eof,
            State::Connecting | State::Dead => true,
        }
    }

    /// Whether a read should be attempted now.
    pub(crate) fn can_read(&self, cfg: &super::Config) -> bool {
        self.readable && !self.read_blocked(cfg)
    }

    /// Whether a write should be attempted now (used after events; callbacks flush regardless).
    pub(crate) fn can_write(&self) -> bool {
        self.writable
            && self.out.len() > 0
            && matches!(self.state, State::Open | State::Closing { .. })
    }

    /// The interest this state calls for; `None` when the socket is gone.
    ///
    /// WRITABLE only while output is pending (or the connect is in flight);
    /// READABLE unless reading is blocked. Interest cannot be empty, so a conn
    /// wanting neither stays READABLE: the readiness flag remembers the event
    /// and the conn is re-run once unblocked.
    pub(crate) fn wanted_interest(&self, cfg: &super::Config) -> Option<Interest> {
        self.stream.as_ref()?;
        let write = match self.state {
            State::Connecting => true,
            State::Open | State::Closing { .. } => self.out.len() > 0,
            State::Dead => false,
        };
        let read = !self.read_blocked(cfg);
        Some(match (read, write) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            _ => Interest::READABLE,
        })
    }

    /// One read into the buffer tail (retrying `Interrupted`); `Done(0)` is never returned.
    pub(crate) fn read_once(&mut self, cap: usize, max: usize) -> IoStep {
        let Some(stream) = self.stream.as_mut() else {
            return IoStep::Failed(ErrorKind::NotConnected);
        };
        let tail = self.rbuf.tail(cap);
        if tail.is_empty() {
            return IoStep::WouldBlock;
        }
        let n = tail.len().min(max);
        loop {
            if let Some(step) = classify(stream.read(&mut tail[..n]), true) {
                if let IoStep::Done(k) = step {
                    self.rbuf.end += k;
                }
                return step;
            }
        }
    }

    /// Reads and throws the bytes away (closing conns: keeps the receive
    /// buffer empty so our close does not turn into a reset).
    pub(crate) fn read_discard(&mut self, max: usize) -> IoStep {
        self.rbuf.consume(self.rbuf.len());
        let step = self.read_once(READ_BUF_INITIAL, max);
        self.rbuf.consume(self.rbuf.len());
        step
    }

    /// Writes pending output until it is empty or the socket would block.
    ///
    /// Returns the last step: `Done(total)` when everything was written
    /// (total may be 0), `WouldBlock` when the socket is full, or `Failed`.
    pub(crate) fn flush(&mut self) -> IoStep {
        let Some(stream) = self.stream.as_mut() else {
            return IoStep::Failed(ErrorKind::NotConnected);
        };
        let mut total = 0;
        while self.out.len() > 0 {
            let mut slices = [IoSlice::new(&[]); OUT_IOVECS];
            let mut count = 0;
            for (i, chunk) in self.out.chunks.iter().take(OUT_IOVECS).enumerate() {
                let from = if i == 0 { self.out.start } else { 0 };
                slices[count] = IoSlice::new(&chunk[from..]);
                count += 1;
            }
            match classify(stream.write_vectored(&slices[..count]), false) {
                None => continue,
                Some(IoStep::Done(n)) => {
                    self.out.advance(n);
                    total += n;
                }
                Some(other) => return other,
            }
        }
        IoStep::Done(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buf_compacts_lazily_and_respects_cap() {
        let cap = 64 * 1024;
        let mut b = ReadBuf::default();
        assert_eq!(b.tail(cap).len(), READ_BUF_INITIAL);
        // Fill the first buffer: the next tail request grows it.
        b.end = b.data.len();
        assert_eq!(b.tail(cap).len(), 2 * READ_BUF_INITIAL - READ_BUF_INITIAL);
        b.data[..10].copy_from_slice(b"0123456789");
        b.end = 10;
        b.consume(4);
        // Plenty of tail left: no memmove, start stays.
        b.tail(cap);
        assert_eq!((b.start, b.unread()), (4, &b"456789"[..]));
        // A short tail forces compaction before any growth.
        b.end = b.data.len();
        assert!(!b.tail(cap).is_empty());
        assert_eq!(b.start, 0);
        assert_eq!(&b.unread()[..6], b"456789");
        // Growth stops at the cap; the tail is empty only when cap bytes are unread.
        for _ in 0..10 {
            b.end = b.data.len();
            if b.tail(cap).is_empty() {
                break;
            }
        }
        assert_eq!(b.len(), cap);
        assert_eq!(b.data.len(), cap);
        b.consume(cap);
        assert_eq!((b.start, b.end), (0, 0));
    }

    #[test]
    fn out_buf_queues_chunks_and_recycles_them_without_moving_bytes() {
        let mut o = OutBuf::default();
        // Asking for the Vec and appending nothing costs nothing.
        o.vec();
        assert_eq!(o.len(), 0);
        o.vec().extend_from_slice(&[1u8; 100]);
        o.vec().extend_from_slice(&[2u8; OUT_CHUNK]);
        // The first chunk was not full: both frames share it.
        assert_eq!(o.chunks.len(), 1);
        o.vec().extend_from_slice(&[3u8; 10]);
        assert_eq!(o.chunks.len(), 2);
        assert_eq!(o.len(), 100 + OUT_CHUNK + 10);
        o.advance(50);
        assert_eq!((o.start, o.len()), (50, 50 + OUT_CHUNK + 10));
        o.advance(50 + OUT_CHUNK);
        // The first chunk is done: popped (kept as the spare), nothing moved.
        assert_eq!((o.chunks.len(), o.start, o.len()), (1, 0, 10));
        assert!(o.spare.as_ref().is_some_and(|s| s.capacity() >= OUT_CHUNK));
        assert_eq!(o.chunks[0], vec![3u8; 10]);
        o.advance(10);
        assert_eq!((o.len(), o.chunks.len()), (0, 0));
    }
}
