//! `tracker::run`: the tracker's state machine driven on a reactor.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::state::{Outbox, SessionId, TrackerLimits, TrackerState};
use crate::reactor::{self, CloseReason, ConnId, Ctx, Handler, ListenerId, Reactor, Stopper};
use crate::wire::{self, Decoded, ErrorCode, Limits, Message};

/// The reactor timer key for the state machine's deadlines.
const WAKE: u64 = 1;
/// The reactor timer key for the idle sweep.
const SWEEP: u64 = 2;
/// A node connection silent this long is closed (nodes send a keep-alive every 20 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest frame a node may send the tracker: control messages only, so far below the data limit.
const MAX_TRACKER_PAYLOAD: usize = 64 << 10;
/// A connection with more output than this waiting is congested: its frames stay unread
/// (so a node asking and never reading costs at most this plus one reply) and owner-list
/// pushes to it are coalesced until it drains. Equal to the reactor's low water, so the
/// drain that resumes it always comes.
pub const OUTPUT_BOUND: usize = 1 << 20;

/// What `tracker::bind` needs.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Where to listen for nodes (port 0 lets the OS pick).
    pub listen: SocketAddr,
    /// Table bounds and timings.
    pub limits: TrackerLimits,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 12340)),
            limits: TrackerLimits::default(),
        }
    }
}

/// A bound tracker, ready to run.
pub struct TrackerServer {
    reactor: Reactor,
    handler: TrackerHandler,
    addr: SocketAddr,
}

/// Binds the listening socket; `run` serves.
pub fn bind(config: TrackerConfig) -> io::Result<TrackerServer> {
    bind_with_reactor(config, reactor::Config::default())
}

/// [`bind`] with the reactor's caps chosen (benches lift the per-IP cap for 1,000
/// loopback clients); low water is held at or below [`OUTPUT_BOUND`].
pub fn bind_with_reactor(
    config: TrackerConfig,
    reactor_config: reactor::Config,
) -> io::Result<TrackerServer> {
    let reactor_config = reactor::Config {
        // A congested conn (above OUTPUT_BOUND) is then above low water, so its drain comes.
        write_low_water: reactor_config.write_low_water.min(OUTPUT_BOUND),
        // Room for one whole frame of the largest kind a node may send us, no more: a
        // connection trickling a huge frame cannot make us hold a data-sized buffer.
        read_buf_cap: reactor_config
            .read_buf_cap
            .min(wire::HEADER_LEN + MAX_TRACKER_PAYLOAD + wire::TRAILER_LEN),
        ..reactor_config
    };
    let mut reactor = Reactor::new(reactor_config)?;
    let (_, addr) = reactor.listen(config.listen)?;
    reactor.enable_signals()?;
    let handler = TrackerHandler {
        state: TrackerState::new(config.limits),
        wake_at: None,
        stopper: reactor.stopper(),
        last_heard: HashMap::new(),
    };
    let first_sweep = reactor.ctx().now() + IDLE_TIMEOUT / 4;
    reactor.ctx().set_timer(first_sweep, SWEEP);
    Ok(TrackerServer {
        reactor,
        handler,
        addr,
    })
}

impl TrackerServer {
    /// The address nodes reach the tracker at.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops the tracker from another thread.
    pub fn stopper(&self) -> Stopper {
        self.handler.stopper.clone()
    }

    /// Serves until SIGINT, SIGTERM or the stopper.
    pub fn run(mut self) -> io::Result<()> {
        self.reactor.run(&mut self.handler)
    }
}

struct TrackerHandler {
    state: TrackerState,
    wake_at: Option<Instant>,
    stopper: Stopper,
    /// When each connection last sent anything.
    last_heard: HashMap<ConnId, Instant>,
}

/// Encodes the state machine's replies straight into connection buffers.
struct CtxOutbox<'a>(&'a mut Ctx);

impl Outbox for CtxOutbox<'_> {
    fn send(&mut self, to: SessionId, msg: &Message<'_>) {
        if let Some(out) = self.0.out_buf(ConnId(to)) {
            if let Err(e) = wire::encode(msg, out) {
                log::error!("cannot encode a reply: {e}");
            }
        }
    }

    fn close(&mut self, to: SessionId) {
        self.0.close(ConnId(to));
    }

    fn congested(&self, to: SessionId) -> bool {
        self.0.pending_out(ConnId(to)) > OUTPUT_BOUND
    }
}

impl TrackerHandler {
    fn schedule(&mut self, ctx: &mut Ctx) {
        if let Some(at) = self.state.poll_timeout() {
            if self.wake_at.is_none_or(|w| at < w) {
                self.wake_at = Some(at);
                ctx.set_timer(at, WAKE);
            }
        }
    }
}

impl Handler for TrackerHandler {
    fn on_accept(&mut self, ctx: &mut Ctx, _listener: ListenerId, conn: ConnId, peer: SocketAddr) {
        self.state.handle_accept(ctx.now(), conn.0, peer.ip());
        self.last_heard.insert(conn, ctx.now());
        self.schedule(ctx);
    }

    fn on_data(&mut self, ctx: &mut Ctx, conn: ConnId, input: &[u8]) -> usize {
        let limits = Limits {
            max_payload: MAX_TRACKER_PAYLOAD,
        };
        let now = ctx.now();
        self.last_heard.insert(conn, now);
        let mut used = 0;
        while used < input.len() {
            if ctx.pending_out(conn) > OUTPUT_BOUND {
                // The rest waits in the read buffer until on_drain resumes reading.
                break;
            }
            match wire::decode_frame(&input[used..], &limits) {
                Ok(Decoded::Frame(msg, len)) => {
                    used += len;
                    self.state
                        .handle_frame(now, conn.0, &msg, &mut CtxOutbox(ctx));
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => {
                    log::warn!("{:?} sent a bad frame: {e}; closing", ctx.peer_addr(conn));
                    let reason = e.to_string();
                    CtxOutbox(ctx).send(
                        conn.0,
                        &Message::Error {
                            code: ErrorCode::Protocol,
                            reason: &reason,
                        },
                    );
                    ctx.close(conn);
                    used = input.len();
                    break;
                }
            }
        }
        self.schedule(ctx);
        used
    }

    fn on_drain(&mut self, ctx: &mut Ctx, conn: ConnId) {
        self.state.handle_drain(conn.0, &mut CtxOutbox(ctx));
        ctx.resume_reading(conn);
        self.schedule(ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, _reason: CloseReason) {
        self.last_heard.remove(&conn);
        self.state.handle_closed(ctx.now(), conn.0);
        self.schedule(ctx);
    }

    fn on_timer(&mut self, ctx: &mut Ctx, key: u64) {
        if key == WAKE {
            self.wake_at = None;
            let now = ctx.now();
            self.state.handle_timeout(now, &mut CtxOutbox(ctx));
        }
        if key == SWEEP {
            let now = ctx.now();
            for (&conn, &heard) in &self.last_heard {
                if now.saturating_duration_since(heard) > IDLE_TIMEOUT {
                    log::info!(
                        "{:?} silent for {} s: closing",
                        ctx.peer_addr(conn),
                        IDLE_TIMEOUT.as_secs()
                    );
                    ctx.abort(conn);
                }
            }
            ctx.set_timer(now + IDLE_TIMEOUT / 4, SWEEP);
        }
        self.schedule(ctx);
    }

    fn on_signal(&mut self, ctx: &mut Ctx, signal: i32) {
        log::info!("signal {signal}: stopping");
        ctx.stop();
    }

    fn on_wake(&mut self, ctx: &mut Ctx) {
        if self.stopper.is_stopped() {
            ctx.stop();
        }
    }
}
