//! Line-oriented standard input without blocking the loop.
//!
//! Two modes, chosen when stdin is enabled:
//! - **Registered** (pipes, TTYs, sockets): a duplicate of fd 0 is registered with
//!   the poll after setting `O_NONBLOCK`, and read until `WouldBlock` on each
//!   event. `O_NONBLOCK` lives on the open file description, which fd 0 shares
//!   with whoever else holds it (the parent shell, and on a terminal usually
//!   stdout and stderr too), so the original flags are restored on EOF and on
//!   Drop. A process killed by SIGKILL cannot restore them; shells reset the
//!   terminal anyway.
//! - **Polled** (regular files, `/dev/null`): epoll refuses them with `EPERM`,
//!   and they never block, so they are read in bounded chunks once per loop
//!   iteration (with a zero poll timeout) until EOF.
//!
//! Lines are capped at [`MAX_LINE`] bytes; a longer line is discarded with a
//! warning. A trailing `\r` is stripped, bytes are decoded as lossy UTF-8, and
//! a last line without a newline is still delivered at EOF.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// Longest accepted stdin line in bytes, newline excluded.
pub(crate) const MAX_LINE: usize = 4096;
/// Most bytes read from stdin per loop iteration, so a flood of input cannot starve sockets.
const READ_BUDGET: usize = 64 * 1024;

/// Splits a byte stream into capped lines.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    line: Vec<u8>,
    /// Inside an over-long line: drop bytes until the next newline.
    discarding: bool,
}

impl LineSplitter {
    /// Feeds bytes; complete lines are appended to `out`.
    pub(crate) fn push(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while !bytes.is_empty() {
            let (chunk, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], Some(i + 1)),
                None => (bytes, None),
            };
            if !self.discarding {
                if self.line.len() + chunk.len() > MAX_LINE {
                    log::warn!("stdin: line longer than {MAX_LINE} bytes discarded");
                    self.line.clear();
                    self.discarding = true;
                } else {
                    self.line.extend_from_slice(chunk);
                }
            }
            match complete {
                Some(n) => {
                    if !self.discarding {
                        out.push(self.take_line());
                    }
                    self.discarding = false;
                    bytes = &bytes[n..];
                }
                None => break,
            }
        }
    }

    /// End of input: a pending unterminated line is delivered too.
    pub(crate) fn finish(&mut self, out: &mut Vec<String>) {
        if !self.discarding && !self.line.is_empty() {
            out.push(self.take_line());
        }
        self.discarding = false;
    }

    fn take_line(&mut self) -> String {
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let s = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        s
    }
}

#[derive(Debug)]
enum Mode {
    /// Registered with the poll; `restore` holds the flags to put back on fd 0.
    Registered { restore: Option<libc::c_int> },
    /// A regular file: read every iteration until EOF.
    Polled,
    /// EOF seen (or never enabled): nothing more to do.
    Done,
}

/// What one read pass produced.
#[derive(Debug, Default)]
pub(crate) struct StdinRead {
    /// Complete lines, in order.
    pub(crate) lines: Vec<String>,
    /// End of input was reached during this pass.
    pub(crate) eof: bool,
}

/// The reactor's standard input.
#[derive(Debug)]
pub(crate) struct Stdin {
    file: File,
    mode: Mode,
    splitter: LineSplitter,
    /// Registered mode: readiness not yet drained to `WouldBlock`.
    ready: bool,
}

impl Stdin {
    /// Duplicates fd 0 and registers it (or falls back to polling a regular file).
    pub(crate) fn enable(registry: &Registry, token: Token) -> io::Result<Stdin> {
        let fd: OwnedFd = io::stdin().as_fd().try_clone_to_owned()?;
        let raw = fd.as_raw_fd();
        let file = File::from(fd);
        let restore = set_nonblocking(raw)?;
        let mode = match registry.register(&mut SourceFd(&raw), token, Interest::READABLE) {
            Ok(()) => Mode::Registered { restore },
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                // A regular file or /dev/null: epoll cannot watch it, reads never block.
                restore_flags(raw, restore);
                log::debug!("stdin is not pollable; reading it each iteration");
                Mode::Polled
            }
            Err(e) => {
                restore_flags(raw, restore);
                return Err(e);
            }
        };
        // Registration reports current readiness, but a first read costs nothing.
        Ok(Stdin {
            file,
            mode,
            splitter: LineSplitter::default(),
            ready: true,
        })
    }

    /// Notes a readiness event.
    pub(crate) fn set_ready(&mut self) {
        self.ready = true;
    }

    /// Whether the loop should not block because stdin has more to read now.
    pub(crate) fn wants_zero_timeout(&self) -> bool {
        match self.mode {
            Mode::Registered { .. } => self.ready,
            Mode::Polled => true,
            Mode::Done => false,
        }
    }

    /// Reads up to the per-iteration budget and splits lines.
    pub(crate) fn read(&mut self, registry: &Registry) -> StdinRead {
        let mut out = StdinRead::default();
        if !self.wants_zero_timeout() {
            return out;
        }
        let mut buf = [0u8; 8192];
        let mut total = 0;
        while total < READ_BUDGET {
            match self.file.read(&mut buf) {
                Ok(0) => {
                    out.eof = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    self.splitter.push(&buf[..n], &mut out.lines);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    break;
                }
                Err(e) => {
                    // An unreadable stdin is treated like a closed one.
                    log::warn!("stdin read failed: {e}; treating it as end of input");
                    out.eof = true;
                    break;
                }
            }
        }
        if out.eof {
            self.splitter.finish(&mut out.lines);
            self.shut(registry);
        }
        out
    }

    /// Stops watching stdin and restores its flags.
    fn shut(&mut self, registry: &Registry) {
        let raw = self.file.as_raw_fd();
        if let Mode::Registered { restore } = std::mem::replace(&mut self.mode, Mode::Done) {
            if let Err(e) = registry.deregister(&mut SourceFd(&raw)) {
                log::debug!("stdin deregister: {e}");
            }
            restore_flags(raw, restore);
        }
        self.mode = Mode::Done;
    }
}

impl Drop for Stdin {
    fn drop(&mut self) {
        if let Mode::Registered { restore } = self.mode {
            restore_flags(self.file.as_raw_fd(), restore);
        }
    }
}

/// Sets `O_NONBLOCK`; returns the previous flags if they changed.
fn set_nonblocking(fd: libc::c_int) -> io::Result<Option<libc::c_int>> {
    // SAFETY: fcntl on a descriptor we own (a dup of fd 0); no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_NONBLOCK != 0 {
        return Ok(None);
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(flags))
}

/// Puts back the flags saved by [`set_nonblocking`], if any.
fn restore_flags(fd: libc::c_int, restore: Option<libc::c_int>) {
    if let Some(flags) = restore {
        // SAFETY: fcntl on a descriptor we own; failure only means the flags stay.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            log::debug!(
                "stdin: restoring flags failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn lines_split_across_chunks_and_crlf() {
        assert_eq!(
            split(&[b"torrent -set", b"Mode upload a\r\nsta", b"tus\n\nexit"]),
            vec!["torrent -setMode upload a", "status", "", "exit"]
        );
    }

    #[test]
    fn over_long_lines_are_dropped_not_fatal() {
        let long = vec![b'x'; MAX_LINE + 1];
        let exact = vec![b'y'; MAX_LINE];
        let mut input = b"a\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nb\n");
        input.extend_from_slice(&exact);
        input.push(b'\n');
        // Same input, fed one byte at a time.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let want = vec![
            "a".to_string(),
            "b".to_string(),
            String::from_utf8(exact).unwrap_or_default(),
        ];
        assert_eq!(split(&[&input]), want);
        assert_eq!(split(&bytes), want);
        // An over-long unterminated tail is dropped at EOF too.
        assert_eq!(split(&[b"ok\n", &long]), vec!["ok"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(split(&[b"a\xffb\n"]), vec!["a\u{fffd}b"]);
    }
}
