//! [`Reactor`] and its loop: poll, dispatch readiness, run ready conns with a
//! bounded pass each, fire timers, settle after every callback.
//!
//! One iteration:
//! 1. poll, with a zero timeout if work is left over from the last pass
//!    (conns still ready after their budget, listeners with a backlog, stdin),
//!    else until the earliest deadline, else forever;
//! 2. record readiness (conn flags, listener flags, stdin, waker, signals);
//! 3. waker, signals, accepts, one pass per ready conn, stdin, due timers.
//!
//! After every handler callback the loop *settles*: queued `on_close`
//! notifications are delivered (then the slot may be freed), conns the
//! callback wrote to are flushed at once, and interest is re-derived.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::conn::{IoStep, State};
use super::ctx::{tune, ConnectCheck, Ctx, Flushed};
use super::stdin::Stdin;
use super::timers::Due;
use super::{CloseReason, Config, ConnId, Handler, ListenerId};

const WAKER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const STDIN: Token = Token(usize::MAX - 2);
/// Listener tokens start here; conn tokens are slab keys, far below.
const LISTENER_BASE: usize = usize::MAX / 2;

/// Reads per conn per pass, so one busy peer cannot starve the others.
const MAX_READS_PER_PASS: usize = 4;
/// Bytes read per conn per pass, for the same reason.
const READ_BUDGET: usize = 1024 * 1024;
/// Accepts per listener per iteration.
const ACCEPT_BUDGET: usize = 256;
/// Wait before accepting again after running out of descriptors or memory.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long `run` keeps flushing after `stop`.
const STOP_FLUSH: Duration = Duration::from_secs(1);
/// Capacity of the poll's event list.
const EVENTS_CAP: usize = 1024;

/// A handle that wakes the reactor from any thread (`on_wake` follows).
#[derive(Clone, Debug)]
pub struct WakeHandle(Arc<Waker>);

impl WakeHandle {
    /// Wakes the reactor; wakes may coalesce. A failure (practically impossible) is logged.
    pub fn wake(&self) {
        if let Err(e) = self.0.wake() {
            log::warn!("reactor wake failed: {e}");
        }
    }
}

/// Asks a running loop to stop from any thread: sets a flag the handler reads in `on_wake`.
#[derive(Clone, Debug)]
pub struct Stopper {
    waker: WakeHandle,
    flag: Arc<AtomicBool>,
}

impl Stopper {
    /// Requests the stop and wakes the loop.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// True once `stop` was called.
    pub fn is_stopped(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Listener {
    socket: TcpListener,
    /// Accepts may be waiting (readiness not yet drained to WouldBlock).
    ready: bool,
    /// Out of descriptors: wait for the retry timer.
    backoff: bool,
}

/// The event loop: owns the poll, the listeners and the [`Ctx`].
pub struct Reactor {
    poll: Poll,
    events: Events,
    ctx: Ctx,
    listeners: Vec<Listener>,
    waker: Arc<Waker>,
    stdin: Option<Stdin>,
    signals: Option<Signals>,
    /// A wake or signal arrived while `run` was stopping: deliver on the next run.
    woken: bool,
    signalled: bool,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("ctx", &self.ctx)
            .field("listeners", &self.listeners)
            .field("stdin", &self.stdin.is_some())
            .field("signals", &self.signals.is_some())
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// A reactor with no listeners or connections yet.
    pub fn new(config: Config) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let ctx = Ctx::new(poll.registry().try_clone()?, config);
        Ok(Reactor {
            poll,
            events: Events::with_capacity(EVENTS_CAP),
            ctx,
            listeners: Vec::new(),
            waker,
            stdin: None,
            signals: None,
            woken: false,
            signalled: false,
        })
    }

    /// Listens on `addr` (SO_REUSEADDR, backlog 1024, IPv6 allowed); returns the bound address.
    pub fn listen(
        &mut self,
        addr: std::net::SocketAddr,
    ) -> io::Result<(ListenerId, std::net::SocketAddr)> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        // Accepted sockets inherit buffer sizes; setting them before listen lets
        // the window scale they need be negotiated in the handshake.
        tune(&SockRef::from(&socket), &self.ctx.config);
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let mut listener = TcpListener::from_std(socket.into());
        let bound = listener.local_addr()?;
        let idx = self.listeners.len();
        self.poll.registry().register(
            &mut listener,
            Token(LISTENER_BASE + idx),
            Interest::READABLE,
        )?;
        self.listeners.push(Listener {
            socket: listener,
            ready: true,
            backoff: false,
        });
        Ok((ListenerId(idx), bound))
    }

    /// Delivers standard input as `on_stdin_line` / `on_stdin_eof` (see the stdin module docs).
    pub fn enable_stdin(&mut self) -> io::Result<()> {
        if self.stdin.is_none() {
            self.stdin = Some(Stdin::enable(self.poll.registry(), STDIN)?);
        }
        Ok(())
    }

    /// Delivers SIGINT and SIGTERM as `on_signal`; they no longer kill the process.
    pub fn enable_signals(&mut self) -> io::Result<()> {
        if self.signals.is_none() {
            let mut signals =
                Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
            self.poll
                .registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            self.signals = Some(signals);
        }
        Ok(())
    }

    /// A cloneable, `Send` handle that wakes this reactor.
    pub fn waker(&self) -> WakeHandle {
        WakeHandle(Arc::clone(&self.waker))
    }

    /// A handle another thread uses to ask the handler to stop (it sees `on_wake`).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            waker: self.waker(),
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The context, to connect or set timers before [`Reactor::run`].
    pub fn ctx(&mut self) -> &mut Ctx {
        &mut self.ctx
    }

    /// Runs until `ctx.stop()`; then closes every conn (`on_close(Closed)`),
    /// flushes pending output for up to ~1 s, drops what is left and returns.
    ///
    /// Errors only if polling itself fails. Listeners, timers and stdin
    /// survive, so `run` may be called again.
    pub fn run<H: Handler>(&mut self, handler: &mut H) -> io::Result<()> {
        // `stop` is reset when a run ends, so a stop requested before `run` is honoured.
        self.ctx.now = Instant::now();
        // Signals and wakes that arrived during the last stop are delivered now.
        let mut wake = std::mem::take(&mut self.woken);
        let mut signal = std::mem::take(&mut self.signalled) || self.signals.is_some();
        settle(&mut self.ctx, handler);
        while !self.ctx.stop {
            if wake {
                handler.on_wake(&mut self.ctx);
                settle(&mut self.ctx, handler);
            }
            if signal {
                if let Some(signals) = self.signals.as_mut() {
                    for sig in signals.pending() {
                        handler.on_signal(&mut self.ctx, sig);
                        settle(&mut self.ctx, handler);
                    }
                }
            }
            self.accept_all(handler);
            run_conns(&mut self.ctx, handler);
            self.read_stdin(handler);
            fire_timers(&mut self.ctx, &mut self.listeners, handler);
            if self.ctx.stop {
                break;
            }
            let timeout = self.poll_timeout();
            let (w, s) = self.poll_once(timeout)?;
            wake = w;
            signal = s;
        }
        self.shutdown(handler)
    }

    /// Zero if work is left over, else until the earliest deadline, else block.
    fn poll_timeout(&self) -> Option<Duration> {
        let busy = !self.ctx.run_next.is_empty()
            || self.listeners.iter().any(|l| l.ready && !l.backoff)
            || self.stdin.as_ref().is_some_and(Stdin::wants_zero_timeout);
        if busy {
            return Some(Duration::ZERO);
        }
        self.ctx
            .timers
            .next_deadline()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Polls once and records readiness; returns (waker fired, signals pending).
    fn poll_once(&mut self, timeout: Option<Duration>) -> io::Result<(bool, bool)> {
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            // A signal interrupted the wait: the events list is empty, go around.
            self.events.clear();
        }
        self.ctx.now = Instant::now();
        let (mut wake, mut signal) = (false, false);
        for event in self.events.iter() {
            match event.token() {
                WAKER => wake = true,
                SIGNALS => signal = true,
                STDIN => {
                    if let Some(stdin) = self.stdin.as_mut() {
                        stdin.set_ready();
                    }
                }
                Token(t) if t >= LISTENER_BASE => {
                    if let Some(l) = self.listeners.get_mut(t - LISTENER_BASE) {
                        l.ready = true;
                    }
                }
                Token(id) => note_conn_event(&mut self.ctx, id, event),
            }
        }
        Ok((wake, signal))
    }

    /// Accepts on every ready listener, up to the budget each.
    fn accept_all<H: Handler>(&mut self, handler: &mut H) {
        for (idx, l) in self.listeners.iter_mut().enumerate() {
            if !l.ready || l.backoff || self.ctx.stop {
                continue;
            }
            for _ in 0..ACCEPT_BUDGET {
                match l.socket.accept() {
                    Ok((stream, peer)) => {
                        if let Some(conn) = self.ctx.add_accepted(stream, peer) {
                            handler.on_accept(&mut self.ctx, ListenerId(idx), conn, peer);
                            settle(&mut self.ctx, handler);
                        }
                    }
                    Err(e) => match e.kind() {
                        io::ErrorKind::WouldBlock => {
                            l.ready = false;
                            break;
                        }
                        // The pending connection died before we took it, or a signal: go on.
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                        _ => {
                            // EMFILE / ENFILE / ENOBUFS: the backlog stays, edge-triggered
                            // readiness will not repeat, so retry on a timer.
                            log::warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                            l.backoff = true;
                            self.ctx
                                .timers
                                .push(self.ctx.now + ACCEPT_BACKOFF, Due::Accept(idx));
                            break;
                        }
                    },
                }
            }
        }
    }

    /// Reads stdin (bounded) and delivers lines and EOF.
    fn read_stdin<H: Handler>(&mut self, handler: &mut H) {
        let Some(stdin) = self.stdin.as_mut() else {
            return;
        };
        let read = stdin.read(self.poll.registry());
        for line in &read.lines {
            handler.on_stdin_line(&mut self.ctx, line);
            settle(&mut self.ctx, handler);
        }
        if read.eof {
            handler.on_stdin_eof(&mut self.ctx);
            settle(&mut self.ctx, handler);
        }
    }

    /// After `stop`: close everything, flush for up to [`STOP_FLUSH`], drop the rest.
    fn shutdown<H: Handler>(&mut self, handler: &mut H) -> io::Result<()> {
        self.ctx.stopping = true;
        let deadline = Instant::now() + STOP_FLUSH;
        let ids: Vec<usize> = self.ctx.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            let Some(c) = self.ctx.conns.get_mut(id) else {
                continue;
            };
            match c.state {
                State::Open => self.ctx.begin_closing(id, CloseReason::Closed, deadline),
                State::Connecting => self.ctx.kill(id, CloseReason::Closed),
                State::Closing { deadline: d } => {
                    c.state = State::Closing {
                        deadline: d.min(deadline),
                    };
                    self.ctx.mark_dirty(id);
                }
                State::Dead => {}
            }
        }
        settle(&mut self.ctx, handler);
        let mut result = Ok(());
        while !self.ctx.conns.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            run_conns(&mut self.ctx, handler);
            let timeout = if self.ctx.run_next.is_empty() {
                deadline - now
            } else {
                Duration::ZERO
            };
            match self.poll_once(Some(timeout)) {
                Ok((w, s)) => {
                    self.woken |= w;
                    self.signalled |= s;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        // Whatever is left missed the deadline: drop it.
        let ids: Vec<usize> = self.ctx.conns.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.ctx.kill(id, CloseReason::Closed);
        }
        settle(&mut self.ctx, handler);
        self.ctx.conns.clear();
        self.ctx.run_next.clear();
        self.ctx.dirty.clear();
        self.ctx.stopping = false;
        self.ctx.stop = false;
        result
    }
}

/// Records a conn's readiness; errors and hang-ups count as both, so the next
/// read or write finds out what happened.
fn note_conn_event(ctx: &mut Ctx, id: usize, event: &Event) {
    let Some(c) = ctx.conns.get_mut(id) else {
        return;
    };
    if event.is_readable() || event.is_read_closed() || event.is_error() {
        c.readable = true;
    }
    if event.is_writable() || event.is_write_closed() || event.is_error() {
        c.writable = true;
    }
    ctx.enqueue(id);
}

/// Gives every queued conn one bounded pass; conns still ready go to the next pass.
fn run_conns<H: Handler>(ctx: &mut Ctx, handler: &mut H) {
    let queue = std::mem::take(&mut ctx.run_next);
    for id in queue {
        if let Some(c) = ctx.conns.get_mut(id) {
            c.queued = false;
            run_conn(ctx, handler, id);
            ctx.update_interest(id);
        }
    }
}

/// One pass over one conn: finish a connect, redeliver, write, then read within the budget.
fn run_conn<H: Handler>(ctx: &mut Ctx, handler: &mut H, id: usize) {
    let Some(c) = ctx.conns.get_mut(id) else {
        return;
    };
    match c.state {
        State::Dead => return,
        State::Connecting => {
            if !c.writable {
                return;
            }
            match ctx.check_connect(id) {
                ConnectCheck::InProgress => {
                    if let Some(c) = ctx.conns.get_mut(id) {
                        c.writable = false;
                    }
                    return;
                }
                ConnectCheck::Failed(kind) => {
                    ctx.kill(id, CloseReason::ConnectFailed(kind));
                    settle(ctx, handler);
                    return;
                }
                ConnectCheck::Connected => {
                    if let Some(c) = ctx.conns.get_mut(id) {
                        c.state = State::Open;
                        // Bytes may already be waiting; one read attempt settles it.
                        c.readable = true;
                    }
                    // Output queued before the connect completed goes out now.
                    ctx.mark_dirty(id);
                    handler.on_connect(ctx, ConnId(id));
                    settle(ctx, handler);
                }
            }
        }
        State::Closing { .. } => {
            run_closing(ctx, id);
            return;
        }
        State::Open => {}
    }

    if ctx
        .conns
        .get(id)
        .is_some_and(|c| c.redeliver && c.state == State::Open)
    {
        if let Some(c) = ctx.conns.get_mut(id) {
            c.redeliver = false;
        }
        deliver(ctx, handler, id);
        settle(ctx, handler);
    }
    if ctx.conns.get(id).is_some_and(|c| c.can_write()) {
        if ctx.flush_conn(id) == Flushed::Drained {
            handler.on_drain(ctx, ConnId(id));
        }
        settle(ctx, handler);
    }

    let (cap, mut reads, mut bytes) = (ctx.config.read_buf_cap, 0, 0);
    while reads < MAX_READS_PER_PASS && bytes < READ_BUDGET {
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if c.state != State::Open || !c.can_read(&ctx.config) {
            return;
        }
        reads += 1;
        match c.read_once(cap, READ_BUDGET - bytes) {
            IoStep::Done(n) => {
                bytes += n;
                deliver(ctx, handler, id);
                settle(ctx, handler);
            }
            IoStep::WouldBlock => {
                c.readable = false;
                return;
            }
            IoStep::Eof => {
                c.peer_eof = true;
                let deadline = ctx.now + super::ctx::CLOSE_LINGER;
                ctx.begin_closing(id, CloseReason::Eof, deadline);
                settle(ctx, handler);
                return;
            }
            IoStep::Failed(kind) => {
                ctx.kill(id, CloseReason::Error(kind));
                settle(ctx, handler);
                return;
            }
        }
    }
    // Budget spent with readiness left: run again next pass, after the others.
    if ctx.conns.get(id).is_some_and(|c| c.can_read(&ctx.config)) {
        ctx.enqueue(id);
    }
}

/// A closing conn: flush, discard input until EOF, then let it go.
fn run_closing(ctx: &mut Ctx, id: usize) {
    if ctx.conns.get(id).is_some_and(|c| c.can_write()) {
        ctx.flush_conn(id);
    }
    for _ in 0..MAX_READS_PER_PASS {
        let Some(c) = ctx.conns.get_mut(id) else {
            return;
        };
        if !c.can_read(&ctx.config) {
            break;
        }
        match c.read_discard(READ_BUDGET) {
            IoStep::Done(_) => {}
            IoStep::WouldBlock => c.readable = false,
            IoStep::Eof => c.peer_eof = true,
            IoStep::Failed(_) => {
                ctx.drop_socket(id);
                return;
            }
        }
    }
    ctx.progress_closing(id);
    if ctx.conns.get(id).is_some_and(|c| c.can_read(&ctx.config)) {
        ctx.enqueue(id);
    }
}

/// Offers all unread input to `on_data` and consumes what the handler took.
fn deliver<H: Handler>(ctx: &mut Ctx, handler: &mut H, id: usize) {
    let Some(c) = ctx.conns.get_mut(id) else {
        return;
    };
    if c.rbuf.len() == 0 || c.state != State::Open {
        return;
    }
    // Moved out so the handler can borrow the bytes and `ctx` at once; the slot
    // cannot be freed during the callback (frees happen only while settling).
    let mut rbuf = std::mem::take(&mut c.rbuf);
    let n = handler.on_data(ctx, ConnId(id), rbuf.unread());
    let len = rbuf.len();
    if n > len {
        log::error!("conn {id}: handler consumed {n} of {len} bytes; clamped");
    }
    rbuf.consume(n.min(len));
    let cap = ctx.config.read_buf_cap;
    let Some(c) = ctx.conns.get_mut(id) else {
        return;
    };
    if n == 0 && rbuf.len() >= cap {
        // Full and nothing taken: reading more cannot help until the handler says so.
        log::debug!("conn {id}: read buffer full and nothing consumed; reading stalls");
        c.stalled = true;
    }
    if c.state == State::Open {
        c.rbuf = rbuf;
    }
}

/// Delivers queued closes and flushes dirty conns until neither is left.
fn settle<H: Handler>(ctx: &mut Ctx, handler: &mut H) {
    loop {
        if let Some((id, reason)) = ctx.closes.pop_front() {
            handler.on_close(ctx, ConnId(id), reason);
            ctx.notified(id);
            continue;
        }
        let Some(id) = ctx.dirty.pop() else { break };
        let Some(c) = ctx.conns.get_mut(id) else {
            continue;
        };
        c.dirty = false;
        if ctx.flush_conn(id) == Flushed::Drained {
            handler.on_drain(ctx, ConnId(id));
        }
        ctx.progress_closing(id);
        ctx.update_interest(id);
    }
}

/// Fires every due timer set before this pass (handler timers and internal deadlines).
fn fire_timers<H: Handler>(ctx: &mut Ctx, listeners: &mut [Listener], handler: &mut H) {
    let mark = ctx.timers.mark();
    while let Some(due) = ctx.timers.pop_due(ctx.now, mark) {
        match due {
            Due::User(key) => {
                handler.on_timer(ctx, key);
                settle(ctx, handler);
            }
            Due::Linger(id) => {
                ctx.progress_closing(id);
                settle(ctx, handler);
            }
            Due::Accept(idx) => {
                if let Some(l) = listeners.get_mut(idx) {
                    l.backoff = false;
                    l.ready = true;
                }
            }
        }
        if ctx.stop {
            break;
        }
    }
}
