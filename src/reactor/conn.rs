//! One connection: its socket, its two buffers, its readiness and its state.
//!
//! The I/O boundary lives here too: every socket result is classified once
//! into [`IoStep`] (sozu's `SocketResult` idea), and `Interrupted` is retried
//! right where it happens, so the loop only ever sees four outcomes.

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::Interest;

/// Initial read buffer size; it grows (up to the cap) only when a peer sends fast.
const READ_BUF_INITIAL: usize = 16 * 1024;
/// Compact the read buffer when less than this is free at its tail.
const READ_MIN_TAIL: usize = 16 * 1024;
/// Compact the output buffer after a partial write once this many flushed bytes sit at its front...
const OUT_COMPACT_MIN: usize = 64 * 1024;

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

/// The output buffer: pending bytes are `data[start..]`, appended at the end.
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    pub(crate) data: Vec<u8>,
    pub(crate) start: usize,
}

impl OutBuf {
    /// Pending bytes.
    pub(crate) fn len(&self) -> usize {
        self.data.len() - self.start
    }

    /// The Vec to append to. Nothing moves here: a handler may ask for it and
    /// append nothing (a frame that writes nothing), and that must cost nothing.
    pub(crate) fn vec(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    /// After a partial write: drops the flushed bytes at the front once there are many,
    /// so the buffer stays within about twice its pending bytes.
    fn compact(&mut self) {
        if self.start >= OUT_COMPACT_MIN && self.start * 2 >= self.data.len() {
            // At most half the buffer moves, and only after 64 KiB were flushed.
            self.data.drain(..self.start);
            self.start = 0;
        }
    }

    /// Drops all pending output.
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.start = 0;
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
        while self.out.start < self.out.data.len() {
            match classify(stream.write(&self.out.data[self.out.start..]), false) {
                None => continue,
                Some(IoStep::Done(n)) => {
                    self.out.start += n;
                    total += n;
                }
                Some(other) => {
                    self.out.compact();
                    return other;
                }
            }
        }
        self.out.clear();
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
    fn out_buf_compacts_after_enough_is_flushed() {
        let mut o = OutBuf::default();
        o.vec().extend_from_slice(&[1u8; 100_000]);
        o.start = 70_000;
        o.vec().push(2);
        // Asking for the Vec (and appending) moves nothing; the next partial write does.
        assert_eq!((o.start, o.len()), (70_000, 30_001));
        o.compact();
        assert_eq!(o.start, 0);
        assert_eq!(o.len(), 30_001);
        assert_eq!(o.data.last(), Some(&2));
    }

    #[test]
    fn out_buf_keeps_small_flushed_fronts() {
        let mut o = OutBuf::default();
        o.vec().extend_from_slice(&[1u8; 100_000]);
        o.start = 40_000;
        // Under half flushed: moving 60 KB to save 40 KB is not worth it.
        o.compact();
        assert_eq!(o.start, 40_000);
    }
}
