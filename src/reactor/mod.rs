//! The event loop: one single-threaded mio reactor that moves bytes between
//! sockets and a [`Handler`].
//!
//! This is the only module that imports mio, slab, socket2 and signal-hook,
//! and the only code that reads the clock ([`Ctx::now`] is cached per loop
//! iteration). It knows nothing of messages, files or trackers.
//!
//! # Model
//! - A [`Reactor`] owns the `Poll`, the listeners and a [`Ctx`]; the [`Handler`]
//!   is separate, so callbacks get `&mut Ctx` while the loop holds the handler.
//! - Each connection has a bounded read buffer and an output buffer.
//!   [`Handler::on_data`] sees *all* unread bytes and returns how many it
//!   consumed; the rest stay buffered. Output is appended with [`Ctx::send`]
//!   or in place with [`Ctx::out_buf`], and written right after the callback.
//! - mio is edge-triggered. Each conn keeps a readable and a writable flag set
//!   by events and cleared only by `WouldBlock`; a conn gets at most
//!   4 reads / 1 MiB per pass, and a conn still ready after its pass runs
//!   again on the next iteration (with a zero poll timeout), after the others.
//! - Interest is derived from state after every pass and callback: WRITABLE
//!   only while output is pending (or a connect is in flight); READABLE unless
//!   reading is blocked. A conn wanting neither stays READABLE (interest
//!   cannot be empty); the flag remembers readiness that arrives meanwhile.
//!
//! # Back-pressure
//! A conn is not read while it is paused ([`Ctx::pause_reading`]), while its
//! pending output exceeds [`Config::write_high_water`], or while its read
//! buffer holds [`Config::read_buf_cap`] unread bytes. If `on_data` consumes
//! nothing from a full buffer, reading stalls until [`Ctx::resume_reading`]
//! (which also offers the buffered bytes again). [`Handler::on_drain`] fires
//! when pending output falls from above [`Config::write_low_water`] to at or
//! below it: the refill point for uploads.
//!
//! # Connection lifetime
//! - [`Handler::on_close`] is called **exactly once per [`ConnId`]** the
//!   handler was given (`on_accept`, or `Ok` from [`Ctx::connect`]): for peer
//!   EOF ([`CloseReason::Eof`]), for errors including resets and broken pipes
//!   ([`CloseReason::Error`] with the `io::ErrorKind`), for failed connects
//!   ([`CloseReason::ConnectFailed`]), and also after the handler's own
//!   [`Ctx::close`] / [`Ctx::abort`] and when `run` stops ([`CloseReason::Closed`]).
//!   It runs right after the callback or event that ended the conn.
//! - From the moment a conn ends, [`Ctx::is_open`] is false and sends are
//!   ignored. A conn's slot (and so its `ConnId` value) is reused only after
//!   `on_close` has returned *and* the socket is gone, so a handler that forgets
//!   the id in `on_close` can never confuse two connections.
//! - Graceful ends ([`Ctx::close`], peer EOF) keep the socket for up to 5 s to
//!   flush pending output, shut down our side and discard input until the
//!   peer's EOF, so the close does not turn into a reset that could destroy
//!   the data just sent.
//!
//! # Sources besides sockets
//! Timers ([`Ctx::set_timer`]), a cross-thread waker ([`Reactor::waker`]),
//! standard input by lines ([`Reactor::enable_stdin`]; pipes and TTYs are
//! polled, regular files read in bounded chunks each iteration) and
//! SIGINT/SIGTERM ([`Reactor::enable_signals`]).

mod conn;
mod ctx;
mod event_loop;
mod limits;
mod stdin;
mod timers;

use std::net::SocketAddr;

pub use ctx::Ctx;
pub use event_loop::{Reactor, Stopper, WakeHandle};

/// A connection's handle (the slab key behind its mio `Token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// A listening socket's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerId(pub usize);

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side in order.
    Eof,
    /// We closed it ([`Ctx::close`], [`Ctx::abort`], or `run` stopping).
    Closed,
    /// An outbound connect failed (e.g. `ConnectionRefused`).
    ConnectFailed(std::io::ErrorKind),
    /// A read or write failed; `ConnectionReset` and `BrokenPipe` land here.
    Error(std::io::ErrorKind),
}

/// Buffer caps and socket options.
#[derive(Clone, Debug)]
pub struct Config {
    /// Max bytes buffered unread per connection (default 1 MiB + 64 KiB: a 1 MiB piece plus framing).
    pub read_buf_cap: usize,
    /// Stop reading a conn whose pending output exceeds this (default 4 MiB).
    pub write_high_water: usize,
    /// `on_drain` fires when pending output falls to or below this (default 1 MiB).
    pub write_low_water: usize,
    /// SO_SNDBUF/SO_RCVBUF to request; the kernel may clamp it (default 4 MiB).
    pub socket_buf: Option<usize>,
    /// TCP_NOTSENT_LOWAT to set: the most bytes the kernel holds unsent per socket, so
    /// pending output waits in our buffers, where a scheduler can still choose (default none).
    pub notsent_lowat: Option<usize>,
    /// Cap on accepted connections, closing ones included (default 4096). When full, a
    /// newcomer from an IP holding fewer takes the place of the newest conn of the IP
    /// holding the most; otherwise it is closed at once.
    pub max_inbound: usize,
    /// Cap on accepted connections from one IP address (default 256).
    pub max_inbound_per_ip: usize,
    /// Cap on outbound connections, counted apart so inbound floods cannot block them
    /// (default 1024).
    pub max_outbound: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            read_buf_cap: 1024 * 1024 + 64 * 1024,
            write_high_water: 4 * 1024 * 1024,
            write_low_water: 1024 * 1024,
            socket_buf: Some(4 * 1024 * 1024),
            notsent_lowat: None,
            max_inbound: 4096,
            max_inbound_per_ip: 256,
            max_outbound: 1024,
        }
    }
}

/// The protocol side: callbacks the loop makes; every one gets the [`Ctx`].
///
/// Only `on_data` is required. Callbacks must not block.
pub trait Handler {
    /// A listener accepted `conn` from `peer`.
    fn on_accept(&mut self, ctx: &mut Ctx, listener: ListenerId, conn: ConnId, peer: SocketAddr) {
        let _ = (ctx, listener, conn, peer);
    }
    /// An outbound connect completed (writable, no `take_error`, `peer_addr` known).
    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let _ = (ctx, conn);
    }
    /// Bytes arrived: `input` is all unread bytes of this conn (never empty);
    /// return how many were consumed. Unconsumed bytes stay buffered; if the
    /// buffer is full and nothing was consumed, reading stalls until
    /// [`Ctx::resume_reading`] (or a close).
    fn on_data(&mut self, ctx: &mut Ctx, conn: ConnId, input: &[u8]) -> usize;
    /// Pending output fell from above low water to at or below it.
    fn on_drain(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let _ = (ctx, conn);
    }
    /// The conn ended; called exactly once per conn (see the module docs).
    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, reason: CloseReason) {
        let _ = (ctx, conn, reason);
    }
    /// A timer set with [`Ctx::set_timer`] is due.
    fn on_timer(&mut self, ctx: &mut Ctx, key: u64) {
        let _ = (ctx, key);
    }
    /// One line of standard input (no newline, no trailing `\r`, at most 4 KiB).
    fn on_stdin_line(&mut self, ctx: &mut Ctx, line: &str) {
        let _ = (ctx, line);
    }
    /// Standard input ended; called once, and stdin is not watched afterwards.
    fn on_stdin_eof(&mut self, ctx: &mut Ctx) {
        let _ = ctx;
    }
    /// SIGINT or SIGTERM arrived (after [`Reactor::enable_signals`]).
    fn on_signal(&mut self, ctx: &mut Ctx, signal: i32) {
        let _ = (ctx, signal);
    }
    /// A [`WakeHandle`] fired (wakes may coalesce).
    fn on_wake(&mut self, ctx: &mut Ctx) {
        let _ = ctx;
    }
}
