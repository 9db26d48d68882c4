//! The incremental decoder: feed it any split of a stream, take whole frames out.
//!
//! It owns a buffer capped at one maximum frame, so a peer can never make it hold
//! more. The reactor does not use it (it decodes straight from its own read
//! buffer with [`decode_frame`]); tests, fuzzers and simple clients do.

use super::{decode_frame, Decoded, Limits, Message, WireError};

/// Incremental decoder over an internal bounded buffer.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    /// Buffered bytes; `buf[start..]` is not yet decoded. Never longer than one max frame.
    buf: Vec<u8>,
    /// Start of the first undecoded frame in `buf`.
    start: usize,
    /// The first error met; once set, every later call returns it again.
    failed: Option<WireError>,
}

impl Decoder {
    /// A decoder enforcing `limits`; allocates only as bytes arrive.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            buf: Vec::new(),
            start: 0,
            failed: None,
        }
    }

    /// Copies in as many bytes as fit (never holds more than one max frame); returns how many were taken.
    ///
    /// Takes nothing once the decoder has failed. Taking fewer than offered is not an
    /// error: call [`next_frame`](Self::next_frame), then feed the rest.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        if self.start > 0 {
            // Slide the partial frame to the front; it is shorter than one frame.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let room = self.limits.max_frame_len() - self.buf.len();
        let n = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed; after an `Err` the decoder stays failed.
    ///
    /// A full buffer always holds a whole frame (it is one max frame long and starts
    /// at a frame boundary), so `Ok(None)` always means `feed` will take bytes.
    pub fn next_frame(&mut self) -> Result<Option<Message<'_>>, WireError> {
        if let Some(e) = &self.failed {
            // The stream cannot be resynchronised: free what it sent. (Not done where
            // the error is met: the borrow checker holds `buf` there.)
            self.buf = Vec::new();
            self.start = 0;
            return Err(e.clone());
        }
        let Decoder {
            limits,
            buf,
            start,
            failed,
        } = self;
        match decode_frame(&buf[*start..], limits) {
            Ok(Decoded::Frame(msg, used)) => {
                *start += used;
                Ok(Some(msg))
            }
            Ok(Decoded::NeedMore(_)) => Ok(None),
            Err(e) => {
                *failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Bytes held but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether an error has stopped this decoder.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }
}
