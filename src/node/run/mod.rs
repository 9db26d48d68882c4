//! `node::run`: the node's state machines driven on one reactor.
//!
//! Connections have one of three roles: the tracker link, a downloader we
//! serve, or an owner one of our downloads fetches from. Every callback ends
//! with [`Node::schedule`], which sets the one reactor timer to the earliest
//! deadline any state machine asked for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bitfield::Bitfield;
use super::command::{self, Command};
use super::config::NodeConfig;
use super::download::{split_pin, Download, Notice, PeerIo, Phase, Progress, RootPin};
use super::peer::SlotId;
use super::progress::ProgressView;
use super::rate::TokenBucket;
use super::serve::{serve_block, FileView, Library, ServeConn, ServeOutcome, Served};
use super::text::{esc, hex, say, say_err};
use crate::reactor::{CloseReason, ConnId, Ctx, Handler, ListenerId, Reactor, Stopper};
use crate::storage::{self, DiskDone, DiskWorker, Folder, Hash, Layout, PartialFile, SharedFile};
use crate::wire::short_hex;
use crate::wire::{
    self, Decoded, ErrorCode, FileInfo, Limits, Message, NodeSecret, NodeToTracker, RootHash,
};

/// The one reactor timer key the node uses.
const WAKE: u64 = 1;
/// Pending output a serving connection is topped up to.
const SERVE_TARGET: usize = 2 << 20;
/// Pending output above which a serving connection's further requests stay unread until it
/// drains: every reply (hashes, answers, errors) is bounded by what the peer actually reads.
const SERVE_READ_STOP: usize = 4 << 20;
/// Longest wait between tracker reconnect attempts.
const MAX_TRACKER_BACKOFF: Duration = Duration::from_secs(10);
/// How often the node tells the tracker it is alive (the tracker closes silent links after 60 s).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// A serving connection that sent nothing for this long is closed, queued requests or not: a
/// downloader that is reading asks for more as blocks arrive, one that stopped reading does not.
const SERVE_IDLE: Duration = Duration::from_secs(120);
/// How often progress is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

mod sharing;
mod tracker_link;
mod transfers;

/// A bound node, ready to run.
pub struct NodeServer {
    reactor: Reactor,
    node: Node,
    addr: SocketAddr,
}

/// How a node's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Downloads that failed.
    pub failed: usize,
    /// Downloads that completed.
    pub completed: usize,
}

/// Opens the folder, binds the peer port and starts the tracker connection; `run` drives it.
pub fn bind(config: NodeConfig) -> io::Result<NodeServer> {
    if let Err(e) = wire::check_name(&config.name) {
        let why = format!("node name {:?} refused: {e}", config.name);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    let folder = Folder::open(&config.dir).map_err(io::Error::other)?;
    let secret = folder.node_secret().map_err(io::Error::other)?;
    let mut reactor = Reactor::new(Default::default())?;
    let (_, addr) = reactor.listen(config.listen)?;
    if config.stdin {
        reactor.enable_stdin()?;
    }
    reactor.enable_signals()?;
    let waker = reactor.waker();
    // fsyncs and hashing run there, so a slow disk never stalls the network.
    let disk = DiskWorker::start(move || waker.wake())?;
    let now = reactor.ctx().now();
    let node = Node {
        bucket: config
            .max_upload_rate
            .map(|rate| TokenBucket::new(rate, now)),
        listen_port: addr.port(),
        secret,
        config,
        folder,
        conns: HashMap::new(),
        tracker: TrackerLink::default(),
        shared: BTreeMap::new(),
        hashing: Vec::new(),
        disk,
        downloads: BTreeMap::new(),
        wake_at: None,
        stopper: reactor.stopper(),
        awaited: HashSet::new(),
        report: RunReport {
            failed: 0,
            completed: 0,
        },
        stopping: false,
        serve_cursor: 0,
        housekeep_at: now + KEEPALIVE_EVERY,
    };
    Ok(NodeServer {
        reactor,
        node,
        addr,
    })
}

impl NodeServer {
    /// The address peers reach this node at.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops the node from another thread.
    pub fn stopper(&self) -> Stopper {
        self.node.stopper.clone()
    }

    /// Runs until `exit`, a signal, the stopper, or (with `exit_when_done`) the last download.
    pub fn run(mut self) -> io::Result<RunReport> {
        let node = &mut self.node;
        node.start(self.reactor.ctx());
        let ran = self.reactor.run(node);
        // A download whose rename was queued when the node stopped still ends (and is reported).
        for done in self.node.disk.drain() {
            self.node.disk_done(self.reactor.ctx(), done);
        }
        ran?;
        Ok(self.node.report.clone())
    }
}

/// What a connection is for.
enum Role {
    Tracker,
    Serve(ServeConn, Instant),
    Peer { file: Arc<str>, slot: SlotId },
}

/// The connection to the tracker and its reconnect back-off.
#[derive(Default)]
struct TrackerLink {
    conn: Option<ConnId>,
    up: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What a shared file is filed under.
type SharedKey = (RootHash, String);

/// A complete file this node shares.
struct Shared {
    name: String,
    info: FileInfo,
    hashes: Vec<Hash>,
    have: Bitfield,
    store: SharedFile,
}

/// A file being hashed (on the disk worker) before it is published.
struct HashJob {
    name: String,
    layout: Layout,
}

/// A download and the connections of its owners.
struct Transfer {
    /// The file name, shared with this download's connection roles.
    key: Arc<str>,
    dl: Download<PartialFile>,
    slots: HashMap<SlotId, ConnId>,
    started: Instant,
    announced: bool,
    view: ProgressView,
    next_draw: Instant,
    /// The disk thread is re-hashing the pieces an earlier run left.
    checking: bool,
}

impl Transfer {
    /// The download's progress, saying "checking" while the disk thread checks a resume.
    fn progress(&self) -> Progress {
        let mut progress = self.dl.progress();
        if self.checking {
            progress.phase = Phase::Verify;
        }
        progress
    }
}

/// The node: every state machine and the connection roles.
struct Node {
    config: NodeConfig,
    folder: Folder,
    listen_port: u16,
    /// Proves our name to the tracker (kept in the folder).
    secret: NodeSecret,
    conns: HashMap<ConnId, Role>,
    tracker: TrackerLink,
    /// Keyed by (root, name): the same bytes may be shared under several names, and data
    /// requests carry only the root (any entry with it serves the same bytes).
    shared: BTreeMap<SharedKey, Shared>,
    hashing: Vec<HashJob>,
    /// The thread for fsync + rename and hashing.
    disk: DiskWorker,
    downloads: BTreeMap<String, Transfer>,
    bucket: Option<TokenBucket>,
    wake_at: Option<Instant>,
    stopper: Stopper,
    /// Start-up downloads `exit_when_done` waits for.
    awaited: HashSet<String>,
    report: RunReport,
    stopping: bool,
    serve_cursor: usize,
    /// When the tracker keep-alive and the idle sweep are next due.
    housekeep_at: Instant,
}

impl Node {
    fn start(&mut self, ctx: &mut Ctx) {
        self.connect_tracker(ctx);
        for name in self.config.uploads.clone() {
            self.upload_escaped(ctx, &name);
        }
        for spec in self.config.downloads.clone() {
            let (name, pin) = split_pin(&spec);
            if self.download(ctx, name, pin) {
                self.awaited.insert(name.to_owned());
            } else {
                self.report.failed += 1;
            }
        }
        self.check_done(ctx);
        self.schedule(ctx);
    }

    // ---- commands, time, shutdown -------------------------------------------------------

    fn command(&mut self, ctx: &mut Ctx, line: &str) {
        match command::parse(line) {
            Ok(None) => {}
            Ok(Some(Command::Upload(name))) => self.upload_escaped(ctx, &name),
            Ok(Some(Command::Download(name, pin))) => {
                self.download(ctx, &name, pin);
            }
            Ok(Some(Command::Status)) => self.print_status(),
            Ok(Some(Command::Help)) => say!("{}", command::HELP),
            Ok(Some(Command::Exit)) => self.shutdown(ctx),
            Err(e) => say_err!("{e}"),
        }
    }

    /// `upload`, but a name with control characters is refused here, escaped, before
    /// anything logs it raw.
    fn upload_escaped(&mut self, ctx: &mut Ctx, name: &str) {
        if name.chars().any(char::is_control) {
            log::error!(
                "upload {}: name refused: contains a control character",
                esc(name)
            );
            return;
        }
        self.upload(ctx, name);
    }

    fn print_status(&self) {
        let tracker = if self.tracker.up {
            format!("connected to the tracker at {}", self.config.tracker)
        } else {
            format!(
                "not connected to the tracker at {} (retrying)",
                self.config.tracker
            )
        };
        let mut lines = vec![format!(
            "node {} at port {}, {tracker}",
            self.config.name, self.listen_port
        )];
        for job in &self.hashing {
            lines.push(format!(
                "  hashing {} ({}) before sharing it",
                job.name,
                super::progress::size(job.layout.size)
            ));
        }
        for shared in self.shared.values() {
            lines.push(format!(
                "  sharing {} ({}, root {})",
                shared.name,
                super::progress::size(shared.info.size),
                short_hex(&shared.info.root)
            ));
        }
        for (name, t) in &self.downloads {
            let shown = t.view.smoothed(t.progress());
            lines.push(format!("  {}", super::progress::status_line(name, &shown)));
        }
        if self.hashing.is_empty() && self.shared.is_empty() && self.downloads.is_empty() {
            lines.push("  nothing shared or downloading yet".to_owned());
        }
        let text = lines.join("\n");
        say!("{text}");
    }

    fn tick(&mut self, ctx: &mut Ctx) {
        let now = ctx.now();
        if self.tracker.retry_at.is_some_and(|t| t <= now) {
            self.connect_tracker(ctx);
        }
        if self.housekeep_at <= now {
            self.housekeep_at = now + KEEPALIVE_EVERY;
            if let (Some(conn), true) = (self.tracker.conn, self.tracker.up) {
                if let Some(out) = ctx.out_buf(conn) {
                    let _ = wire::encode(&Message::KeepAlive, out);
                }
            }
            self.close_idle_serving(ctx);
            self.check_all_shared(ctx);
        }
        let due: Vec<String> = self
            .downloads
            .iter()
            .filter(|(_, t)| t.dl.poll_timeout().is_some_and(|t| t <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.with_download(ctx, &name, |dl, io| dl.handle_timeout(now, io));
        }
        let limit = self.config.download.no_source_timeout;
        let unanswered: Vec<String> = self
            .downloads
            .iter()
            .filter(|(_, t)| {
                t.dl.phase() == Phase::Owners
                    && !t.dl.heard_owners()
                    && now.saturating_duration_since(t.started) > limit
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in unanswered {
            let reason = format!("no owner list from the tracker at {}", self.config.tracker);
            self.with_download(ctx, &name, |dl, io| dl.abort(reason, io));
        }
        for t in self
            .downloads
            .values_mut()
            .filter(|t| !t.dl.is_over() && t.next_draw <= now)
        {
            t.next_draw = now + PROGRESS_EVERY;
            let progress = t.progress();
            t.view.update(now, &progress);
        }
        if self.bucket.is_some() {
            self.pump_all(ctx);
        }
    }

    /// Sets the reactor timer to the earliest deadline anything asked for.
    fn schedule(&mut self, ctx: &mut Ctx) {
        let now = ctx.now();
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if let Some(t) = self.tracker.retry_at {
            consider(t);
        }
        consider(self.housekeep_at);
        for t in self.downloads.values().filter(|t| !t.dl.is_over()) {
            if let Some(at) = t.dl.poll_timeout() {
                consider(at);
            }
            consider(t.next_draw);
            if t.dl.phase() == Phase::Owners {
                consider(t.started + self.config.download.no_source_timeout);
            }
        }
        if let Some(bucket) = self.bucket.as_mut() {
            let waiting = self
                .conns
                .iter()
                .any(|(&conn, role)| sharing::serve_waiting(ctx, conn, role));
            if waiting {
                consider(bucket.ready_at(now));
            }
        }
        if let Some(at) = next {
            if self.wake_at.is_none_or(|w| at < w) {
                self.wake_at = Some(at);
                ctx.set_timer(at, WAKE);
            }
        }
    }

    fn shutdown(&mut self, ctx: &mut Ctx) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.tell_tracker(ctx, &NodeToTracker::Exit);
        let names: Vec<String> = self.downloads.keys().cloned().collect();
        for name in names {
            // A download being flushed and renamed is left to end: `run` waits for it.
            let running = |t: &Transfer| !t.dl.is_over() && t.dl.phase() != Phase::Finishing;
            if self.downloads.get(&name).is_some_and(running) {
                self.with_download(ctx, &name, |dl, io| {
                    dl.abort("stopped; verified pieces are kept for a resume".into(), io)
                });
            }
        }
        ctx.stop();
    }

    fn on_frame(&mut self, ctx: &mut Ctx, conn: ConnId, msg: &Message<'_>) {
        match self.conns.get(&conn) {
            Some(Role::Tracker) => self.on_tracker_frame(ctx, msg),
            Some(Role::Serve(..)) => self.on_serve_frame(ctx, conn, msg),
            Some(Role::Peer { file, slot }) => {
                let (file, slot) = (file.clone(), *slot);
                let now = ctx.now();
                self.with_download(ctx, &file, |dl, io| dl.on_message(now, slot, msg, io));
            }
            None => {}
        }
    }
}

impl Handler for Node {
    fn on_accept(&mut self, ctx: &mut Ctx, _listener: ListenerId, conn: ConnId, peer: SocketAddr) {
        log::debug!("downloader connected from {peer}");
        self.conns
            .insert(conn, Role::Serve(ServeConn::new(), ctx.now()));
    }

    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
        match self.conns.get(&conn) {
            Some(Role::Tracker) => self.tracker_connected(ctx),
            Some(Role::Peer { file, slot }) => {
                let (file, slot) = (file.clone(), *slot);
                let now = ctx.now();
                self.with_download(ctx, &file, |dl, io| dl.on_connected(now, slot, io));
            }
            _ => {}
        }
        self.schedule(ctx);
    }

    fn on_data(&mut self, ctx: &mut Ctx, conn: ConnId, input: &[u8]) -> usize {
        let limits = Limits::default();
        let serving = matches!(self.conns.get(&conn), Some(Role::Serve(..)));
        let mut used = 0;
        while used < input.len() {
            if serving && ctx.pending_out(conn) > SERVE_READ_STOP {
                // The rest waits in the read buffer; `on_drain` offers it again.
                break;
            }
            match wire::decode_frame(&input[used..], &limits) {
                Ok(Decoded::Frame(msg, len)) => {
                    used += len;
                    self.on_frame(ctx, conn, &msg);
                    if !self.conns.contains_key(&conn) {
                        self.schedule(ctx);
                        return input.len();
                    }
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => {
                    log::warn!("{:?} sent a bad frame: {e}; closing", ctx.peer_addr(conn));
                    if let Some(out) = ctx.out_buf(conn) {
                        let reason = e.to_string();
                        let _ = wire::encode(
                            &Message::Error {
                                code: ErrorCode::Protocol,
                                reason: &reason,
                            },
                            out,
                        );
                    }
                    self.drop_conn(ctx, conn);
                    ctx.close(conn);
                    self.schedule(ctx);
                    return input.len();
                }
            }
        }
        if matches!(self.conns.get(&conn), Some(Role::Serve(..))) {
            self.pump(ctx, conn);
        }
        self.schedule(ctx);
        used
    }

    fn on_drain(&mut self, ctx: &mut Ctx, conn: ConnId) {
        if matches!(self.conns.get(&conn), Some(Role::Serve(..))) {
            ctx.resume_reading(conn);
        }
        self.pump(ctx, conn);
        self.schedule(ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, reason: CloseReason) {
        self.drop_conn_with(ctx, conn, Some(reason));
        self.schedule(ctx);
    }

    fn on_timer(&mut self, ctx: &mut Ctx, key: u64) {
        if key == WAKE {
            self.wake_at = None;
            self.tick(ctx);
        }
        self.schedule(ctx);
    }

    fn on_stdin_line(&mut self, ctx: &mut Ctx, line: &str) {
        self.command(ctx, line);
        self.schedule(ctx);
    }

    fn on_stdin_eof(&mut self, _ctx: &mut Ctx) {
        log::debug!("standard input closed; serving on until exit or a signal");
    }

    fn on_signal(&mut self, ctx: &mut Ctx, signal: i32) {
        log::info!("signal {signal}: leaving the network");
        self.shutdown(ctx);
    }

    fn on_wake(&mut self, ctx: &mut Ctx) {
        while let Some(done) = self.disk.try_next() {
            self.disk_done(ctx, done);
        }
        if self.stopper.is_stopped() {
            self.shutdown(ctx);
        }
        self.schedule(ctx);
    }
}

impl Node {
    /// A disk job ended: a download renamed into place (or not), or a file hashed.
    fn disk_done(&mut self, ctx: &mut Ctx, done: DiskDone) {
        match done {
            DiskDone::Finished { name, result } => self.finished(ctx, &name, result),
            DiskDone::Hashed {
                file,
                piece_size,
                result,
            } => self.hashed(ctx, file, piece_size, result),
            DiskDone::Warmed { key } => self.warmed(ctx, key),
            DiskDone::Checked { name, file, result } => self.checked(ctx, &name, *file, result),
        }
    }

    /// Closes serving connections that sent nothing for [`SERVE_IDLE`].
    fn close_idle_serving(&mut self, ctx: &mut Ctx) {
        let now = ctx.now();
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, role)| matches!(role, Role::Serve(_, heard) if now.saturating_duration_since(*heard) > SERVE_IDLE))
            .map(|(&conn, _)| conn)
            .collect();
        for conn in idle {
            log::debug!(
                "closing an idle serving connection from {:?}",
                ctx.peer_addr(conn)
            );
            self.conns.remove(&conn);
            ctx.close(conn);
        }
    }

    fn drop_conn(&mut self, ctx: &mut Ctx, conn: ConnId) {
        self.drop_conn_with(ctx, conn, None);
    }

    /// Forgets `conn` and tells whoever used it.
    fn drop_conn_with(&mut self, ctx: &mut Ctx, conn: ConnId, reason: Option<CloseReason>) {
        match self.conns.remove(&conn) {
            Some(Role::Tracker) => {
                let why = match reason {
                    Some(CloseReason::ConnectFailed(kind)) => format!("connect failed: {kind}"),
                    Some(CloseReason::Error(kind)) => format!("connection error: {kind}"),
                    _ => "connection closed".to_owned(),
                };
                self.tracker_lost(ctx, &why);
            }
            Some(Role::Peer { file, slot }) => {
                let now = ctx.now();
                if let Some(t) = self.downloads.get_mut(&*file) {
                    t.slots.remove(&slot);
                }
                self.with_download(ctx, &file, |dl, io| dl.on_closed(now, slot, io));
            }
            Some(Role::Serve(..)) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    /// Tests and benchmarks bind a node on one thread and run it on another.
    #[test]
    fn a_bound_node_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<super::NodeServer>();
    }
}
