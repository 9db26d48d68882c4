//! [`Ctx`]: the connections, their buffers and the timers, and everything a
//! handler may do with them.
//!
//! Handler calls only change state and queue work: output is appended and the
//! conn marked *dirty*, closes are queued for `on_close`. The loop then
//! *settles* (see `event_loop.rs`): it delivers queued closes, flushes dirty
//! conns right away (an immediate write saves a poll round trip) and updates
//! their interest.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use slab::Slab;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::conn::{Conn, IoStep, State};
use super::limits::{Admit, ConnLimits};
use super::timers::{Due, Timers};
use super::{CloseReason, Config, ConnId};

/// How long a closed conn may take to flush its output and see the peer's EOF.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// What a flush asks of the loop.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flushed {
    /// Nothing for the handler.
    Quiet,
    /// Pending output fell to or below low water: call `on_drain`.
    Drained,
}

/// The outcome of checking a non-blocking connect (mio's documented steps).
#[derive(Debug)]
pub(crate) enum ConnectCheck {
    /// `take_error` clean and `peer_addr` known: connected.
    Connected,
    /// `peer_addr` said `NotConnected`: the event was spurious.
    InProgress,
    /// The connect failed.
    Failed(io::ErrorKind),
}

/// Everything a handler may do: connections, output, timers, stopping.
///
/// It is separate from the handler so that callbacks can take `&mut Ctx`
/// while the loop holds the handler.
#[derive(Debug)]
pub struct Ctx {
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    pub(crate) now: Instant,
    pub(crate) conns: Slab<Conn>,
    /// Conns the handler sees as open (Connecting or Open).
    pub(crate) open: usize,
    /// Inbound, outbound and per-IP counts of conns that still hold a socket.
    pub(crate) limits: ConnLimits,
    pub(crate) timers: Timers,
    pub(crate) stop: bool,
    /// Set while `run` flushes before returning: no new connections.
    pub(crate) stopping: bool,
    /// Conns with readiness to act on in the next pass.
    pub(crate) run_next: Vec<usize>,
    /// Conns whose output or state changed in a callback.
    pub(crate) dirty: Vec<usize>,
    /// `on_close` notifications owed, in order.
    pub(crate) closes: VecDeque<(usize, CloseReason)>,
}

impl Ctx {
    pub(crate) fn new(registry: Registry, config: Config) -> Ctx {
        Ctx {
            registry,
            config,
            now: Instant::now(),
            conns: Slab::new(),
            open: 0,
            limits: ConnLimits::default(),
            timers: Timers::default(),
            stop: false,
            stopping: false,
            run_next: Vec::new(),
            dirty: Vec::new(),
            closes: VecDeque::new(),
        }
    }

    /// The time at the start of this loop iteration (the only clock handlers should use).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Starts a non-blocking connect; `on_connect` or `on_close(ConnectFailed)` follows.
    ///
    /// `Err` means no connection was created (socket creation failed, the
    /// `max_outbound` cap was reached, or the reactor is stopping) and no
    /// `on_close` will come. An immediate refusal still yields a `ConnId` and
    /// a later `on_close(ConnectFailed)`, so handlers see one failure path.
    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId> {
        if self.stopping {
            return Err(io::Error::other("reactor is stopping"));
        }
        if !self.limits.outbound_room(&self.config) {
            return Err(io::Error::other(format!(
                "outbound connection limit ({}) reached",
                self.config.max_outbound
            )));
        }
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        // Buffer sizes must be set before connecting to affect TCP window scaling.
        tune(&SockRef::from(&socket), &self.config);
        let refused = match socket.connect(&addr.into()) {
            Ok(()) => None,
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                log::debug!("connect {addr}: {e}");
                Some(e.kind())
            }
        };
        let mut stream = TcpStream::from_std(socket.into());
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        self.registry
            .register(&mut stream, Token(id), Interest::WRITABLE)?;
        let mut conn = Conn::new(stream, addr, State::Connecting);
        conn.interest = Some(Interest::WRITABLE);
        entry.insert(conn);
        self.limits.add_outbound(id);
        self.open += 1;
        if let Some(kind) = refused {
            self.kill(id, CloseReason::ConnectFailed(kind));
        }
        Ok(ConnId(id))
    }

    /// Appends bytes to the conn's output (no-op for unknown or closed conns).
    pub fn send(&mut self, conn: ConnId, bytes: &[u8]) {
        if let Some(out) = self.out_buf(conn) {
            out.extend_from_slice(bytes);
        }
    }

    /// The conn's output buffer, to append frames in place; flushed after the callback.
    ///
    /// Only append: bytes already in the Vec are pending output.
    pub fn out_buf(&mut self, conn: ConnId) -> Option<&mut Vec<u8>> {
        match self.conns.get(conn.0) {
            Some(c) if c.is_open() => {
                self.mark_dirty(conn.0);
                self.conns.get_mut(conn.0).map(|c| c.out.vec())
            }
            _ => None,
        }
    }

    /// Bytes queued and not yet written to the socket (0 for unknown conns).
    pub fn pending_out(&self, conn: ConnId) -> usize {
        self.conns.get(conn.0).map_or(0, |c| c.out.len())
    }

    /// Closes gracefully: pending output is flushed (for at most 5 s), then the socket closes.
    ///
    /// `on_close(Closed)` follows right after the current callback. A conn
    /// still connecting is aborted, as it has nothing to flush yet.
    pub fn close(&mut self, conn: ConnId) {
        let deadline = self.now + CLOSE_LINGER;
        match self.conns.get(conn.0).map(|c| c.state) {
            Some(State::Open) => self.begin_closing(conn.0, CloseReason::Closed, deadline),
            Some(State::Connecting) => self.kill(conn.0, CloseReason::Closed),
            _ => {}
        }
    }

    /// Closes now, dropping pending output; `on_close(Closed)` follows.
    pub fn abort(&mut self, conn: ConnId) {
        if self.conns.get(conn.0).is_some_and(Conn::is_open) {
            self.kill(conn.0, CloseReason::Closed);
        }
    }

    /// The remote address (the connect target for outbound conns).
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns
            .get(conn.0)
            .filter(|c| c.is_open())
            .map(|c| c.peer)
    }

    /// The local address of the conn's socket.
    pub fn local_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        let c = self.conns.get(conn.0).filter(|c| c.is_open())?;
        c.stream.as_ref()?.local_addr().ok()
    }

    /// Whether the conn is connecting or open (false once closed, even while it flushes).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.get(conn.0).is_some_and(Conn::is_open)
    }

    /// Schedules `on_timer(key)` once at or after `at`; several timers per key may coexist.
    pub fn set_timer(&mut self, at: Instant, key: u64) {
        self.timers.push(at, Due::User(key));
    }

    /// Stops reading the conn until [`Ctx::resume_reading`].
    pub fn pause_reading(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn.0) {
            c.paused = true;
            self.mark_dirty(conn.0);
        }
    }

    /// Resumes reading; buffered unread input is offered to `on_data` again.
    pub fn resume_reading(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn.0) {
            c.paused = false;
            c.stalled = false;
            c.redeliver = c.rbuf.len() > 0;
            self.mark_dirty(conn.0);
            self.enqueue(conn.0);
        }
    }

    /// Makes `run` return after the current callback (flushing output for up to ~1 s).
    pub fn stop(&mut self) {
        self.stop = true;
    }

    /// Number of connections the handler sees as open (connecting or open).
    pub fn conn_count(&self) -> usize {
        self.open
    }

    // ---- internals used by the loop ----

    /// Queues the conn for a read/write pass in the next loop pass.
    pub(crate) fn enqueue(&mut self, id: usize) {
        if let Some(c) = self.conns.get_mut(id) {
            if !c.queued {
                c.queued = true;
                self.run_next.push(id);
            }
        }
    }

    /// Marks the conn for a flush and an interest update when the loop settles.
    pub(crate) fn mark_dirty(&mut self, id: usize) {
        if let Some(c) = self.conns.get_mut(id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Ends an open conn gracefully: the handler is told `reason`, output is flushed.
    pub(crate) fn begin_closing(&mut self, id: usize, reason: CloseReason, deadline: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if !c.is_open() {
            return;
        }
        c.state = State::Closing { deadline };
        c.paused = false;
        c.stalled = false;
        c.redeliver = false;
        self.open -= 1;
        self.closes.push_back((id, reason));
        self.timers.push(deadline, Due::Linger(id));
        self.mark_dirty(id);
        self.enqueue(id);
    }

    /// Ends a conn at once: the socket is dropped, and the handler told `reason` if it was open.
    pub(crate) fn kill(&mut self, id: usize, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if c.is_open() {
            self.open -= 1;
            self.closes.push_back((id, reason));
        } else {
            log::trace!("conn {id}: dropped while closing ({reason:?})");
        }
        self.drop_socket(id);
    }

    /// Deregisters and drops the socket; frees the slot if on_close was already delivered.
    pub(crate) fn drop_socket(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        if let Some(mut stream) = c.stream.take() {
            self.limits.remove(id);
            if let Err(e) = self.registry.deregister(&mut stream) {
                log::debug!("conn {id}: deregister: {e}");
            }
            if c.out.len() > 0 {
                log::debug!("conn {id}: {} bytes of output dropped", c.out.len());
            }
        }
        c.state = State::Dead;
        c.out = Default::default();
        c.rbuf = Default::default();
        if c.notified {
            self.conns.remove(id);
        }
    }

    /// Records that on_close was delivered; frees the slot if the socket is gone.
    pub(crate) fn notified(&mut self, id: usize) {
        if let Some(c) = self.conns.get_mut(id) {
            c.notified = true;
            if c.state == State::Dead {
                self.conns.remove(id);
            }
        }
    }

    /// Checks a connect per mio's procedure: `take_error`, then `peer_addr`.
    pub(crate) fn check_connect(&mut self, id: usize) -> ConnectCheck {
        let Some(stream) = self.conns.get(id).and_then(|c| c.stream.as_ref()) else {
            return ConnectCheck::Failed(io::ErrorKind::NotConnected);
        };
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => {
                log::debug!("conn {id}: connect failed: {e}");
                ConnectCheck::Failed(e.kind())
            }
            Ok(None) => match stream.peer_addr() {
                Ok(_) => ConnectCheck::Connected,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => ConnectCheck::InProgress,
                Err(e) => ConnectCheck::Failed(e.kind()),
            },
        }
    }

    /// Writes the conn's pending output now (whatever the readiness flag says).
    pub(crate) fn flush_conn(&mut self, id: usize) -> Flushed {
        let low = self.config.write_low_water;
        let Some(c) = self.conns.get_mut(id) else {
            return Flushed::Quiet;
        };
        if c.stream.is_none() || c.state == State::Connecting || c.out.len() == 0 {
            return Flushed::Quiet;
        }
        if c.out.len() > low {
            c.drain_armed = true;
        }
        match c.flush() {
            IoStep::WouldBlock => c.writable = false,
            IoStep::Failed(kind) => {
                self.kill(id, CloseReason::Error(kind));
                return Flushed::Quiet;
            }
            IoStep::Done(_) | IoStep::Eof => {}
        }
        if c.can_read(&self.config) {
            // Output may have fallen under high water: reading can resume.
            self.enqueue(id);
        }
        let Some(c) = self.conns.get_mut(id) else {
            return Flushed::Quiet;
        };
        if c.drain_armed && c.out.len() <= low && c.state == State::Open {
            c.drain_armed = false;
            return Flushed::Drained;
        }
        Flushed::Quiet
    }

    /// Moves a closing conn along: shut down writes once flushed, drop on EOF or deadline.
    pub(crate) fn progress_closing(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let State::Closing { deadline } = c.state else {
            return;
        };
        if self.now >= deadline {
            log::debug!("conn {id}: close linger expired");
            self.drop_socket(id);
            return;
        }
        if c.out.len() == 0 && !c.shut_write {
            c.shut_write = true;
            if let Some(Err(e)) = c.stream.as_ref().map(|s| s.shutdown(Shutdown::Write)) {
                log::debug!("conn {id}: shutdown: {e}");
                self.drop_socket(id);
                return;
            }
        }
        // While stopping, do not wait for the peer's EOF once our side is flushed.
        if c.shut_write && (c.peer_eof || self.stopping) {
            self.drop_socket(id);
        }
    }

    /// Registers or reregisters the conn if its wanted interest changed.
    pub(crate) fn update_interest(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Some(want) = c.wanted_interest(&self.config) else {
            return;
        };
        if c.interest == Some(want) {
            return;
        }
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        let res = match c.interest {
            Some(_) => self.registry.reregister(stream, Token(id), want),
            None => self.registry.register(stream, Token(id), want),
        };
        if let Err(e) = res {
            log::debug!("conn {id}: (re)register: {e}");
            self.kill(id, CloseReason::Error(e.kind()));
            return;
        }
        let was_reading = c.interest.is_some_and(|i| i.is_readable());
        c.interest = Some(want);
        if want.is_readable() && !was_reading && c.state != State::Connecting {
            // Data may have arrived while READABLE was off; a read attempt is cheaper
            // than depending on how each OS reports readiness on reregistration.
            c.readable = true;
            self.enqueue(id);
        }
    }

    /// Adds an accepted stream; `None` if refused by a connection cap (the stream is dropped).
    ///
    /// A full inbound table may first evict a conn of the IP holding the most (see `limits`).
    pub(crate) fn add_accepted(
        &mut self,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<ConnId> {
        if self.stopping {
            return None;
        }
        match self.limits.admit(peer.ip(), &self.config) {
            Admit::Accept => {}
            Admit::Evict(victim) => {
                log::debug!("inbound table full: conn {victim} makes room for {peer}");
                self.kill(victim, CloseReason::Error(io::ErrorKind::ConnectionAborted));
            }
            Admit::Refuse(why) => {
                log::debug!("refusing {peer}: {why}");
                return None;
            }
        }
        tune(&SockRef::from(&stream), &self.config);
        let entry = self.conns.vacant_entry();
        let id = entry.key();
        if let Err(e) = self
            .registry
            .register(&mut stream, Token(id), Interest::READABLE)
        {
            log::debug!("register accepted {peer}: {e}");
            return None;
        }
        let mut conn = Conn::new(stream, peer, State::Open);
        conn.interest = Some(Interest::READABLE);
        // Data may already be waiting; registration reports it too, but be sure.
        conn.readable = true;
        entry.insert(conn);
        self.limits.add_inbound(id, peer.ip());
        self.open += 1;
        self.enqueue(id);
        Some(ConnId(id))
    }
}

/// Applies TCP_NODELAY and the requested socket buffer sizes; failures are logged, not fatal.
pub(crate) fn tune(sock: &SockRef<'_>, config: &Config) {
    if let Err(e) = sock.set_nodelay(true) {
        log::debug!("TCP_NODELAY: {e}");
    }
    if let Some(size) = config.socket_buf {
        // The kernel may clamp these (net.core.[rw]mem_max); that is fine.
        if let Err(e) = sock.set_send_buffer_size(size) {
            log::debug!("SO_SNDBUF {size}: {e}");
        }
        if let Err(e) = sock.set_recv_buffer_size(size) {
            log::debug!("SO_RCVBUF {size}: {e}");
        }
    }
    if let Some(lowat) = config.notsent_lowat {
        if let Err(e) = set_notsent_lowat(sock, lowat) {
            log::debug!("TCP_NOTSENT_LOWAT {lowat}: {e}");
        }
    }
}

/// Caps the bytes the kernel holds unsent for this socket (`TCP_NOTSENT_LOWAT`, Linux).
fn set_notsent_lowat(sock: &SockRef<'_>, bytes: usize) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid open socket fd, and a pointer to an int that lives across the call
    // with its exact size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
