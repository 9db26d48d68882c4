//! `node::run`: the node's state machines driven on one reactor.
//!
//! Connections have one of three roles: the tracker link, a downloader we
//! serve, or an owner one of our downloads fetches from. Every callback ends
//! with [`Node::schedule`], which sets the one reactor timer to the earliest
//! deadline any state machine asked for.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::bitfield::Bitfield;
use super::command::{self, Command};
use super::config::NodeConfig;
use super::download::{Download, Notice, PeerIo, Phase};
use super::peer::SlotId;
use super::progress::ProgressView;
use super::rate::TokenBucket;
use super::serve::{serve_block, FileView, Library, ServeConn, ServeOutcome};
use crate::reactor::{CloseReason, ConnId, Ctx, Handler, ListenerId, Reactor, Stopper};
use crate::storage::{self, Folder, Hash, Layout, PartialFile, PieceHasher, SharedFile};
use crate::tracker::short_hex;
use crate::wire::{self, Decoded, ErrorCode, FileInfo, Limits, Message, NodeToTracker, RootHash};

/// The one reactor timer key the node uses.
const WAKE: u64 = 1;
/// Bytes of pieces hashed per loop turn while publishing a file, so serving never stalls long.
const HASH_STEP: u64 = 16 << 20;
/// Pending output a serving connection is topped up to.
const SERVE_TARGET: usize = 2 << 20;
/// Longest wait between tracker reconnect attempts.
const MAX_TRACKER_BACKOFF: Duration = Duration::from_secs(10);
/// How often the node tells the tracker it is alive (the tracker closes silent links after 60 s).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// A serving connection with nothing asked for this long is closed.
const SERVE_IDLE: Duration = Duration::from_secs(120);
/// How often progress is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

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
    let folder = Folder::open(&config.dir).map_err(io::Error::other)?;
    let mut reactor = Reactor::new(Default::default())?;
    let (_, addr) = reactor.listen(config.listen)?;
    if config.stdin {
        reactor.enable_stdin()?;
    }
    reactor.enable_signals()?;
    let now = reactor.ctx().now();
    let node = Node {
        bucket: config
            .max_upload_rate
            .map(|rate| TokenBucket::new(rate, now)),
        listen_port: addr.port(),
        config,
        folder,
        conns: HashMap::new(),
        tracker: TrackerLink::default(),
        shared: HashMap::new(),
        hashing: Vec::new(),
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
        self.reactor.run(node)?;
        Ok(self.node.report.clone())
    }
}

/// What a connection is for.
enum Role {
    Tracker,
    Serve(ServeConn, Instant),
    Peer { file: Rc<str>, slot: SlotId },
}

/// The connection to the tracker and its reconnect back-off.
#[derive(Default)]
struct TrackerLink {
    conn: Option<ConnId>,
    up: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// A complete file this node shares.
struct Shared {
    name: String,
    info: FileInfo,
    hashes: Vec<Hash>,
    have: Bitfield,
    store: SharedFile,
}

/// A file being hashed before it is published.
struct HashJob {
    name: String,
    layout: Layout,
    store: SharedFile,
    hasher: PieceHasher,
}

/// A download and the connections of its owners.
struct Transfer {
    /// The file name, shared with this download's connection roles.
    key: Rc<str>,
    dl: Download<PartialFile>,
    slots: HashMap<SlotId, ConnId>,
    started: Instant,
    announced: bool,
    view: ProgressView,
    next_draw: Instant,
}

/// The node: every state machine and the connection roles.
struct Node {
    config: NodeConfig,
    folder: Folder,
    listen_port: u16,
    conns: HashMap<ConnId, Role>,
    tracker: TrackerLink,
    shared: HashMap<RootHash, Shared>,
    hashing: Vec<HashJob>,
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

/// What this node serves, borrowed apart from the connection table.
struct Lib<'a> {
    shared: &'a HashMap<RootHash, Shared>,
    downloads: &'a BTreeMap<String, Transfer>,
}

impl Library for Lib<'_> {
    fn by_name(&self, name: &str, root: Option<&RootHash>) -> Option<FileView<'_>> {
        let shared = self
            .shared
            .values()
            .find(|s| s.name == name && root.is_none_or(|r| *r == s.info.root));
        match shared {
            Some(s) => Some(shared_view(s)),
            None => self
                .downloads
                .get(name)
                .and_then(partial_view)
                .filter(|v| root.is_none_or(|r| *r == v.info.root)),
        }
    }

    fn by_root(&self, root: &RootHash) -> Option<FileView<'_>> {
        match self.shared.get(root) {
            Some(s) => Some(shared_view(s)),
            None => self
                .downloads
                .values()
                .filter(|t| t.dl.info().is_some_and(|i| i.root == *root))
                .find_map(partial_view),
        }
    }
}

fn shared_view(s: &Shared) -> FileView<'_> {
    FileView {
        name: &s.name,
        info: s.info,
        have: &s.have,
        hashes: &s.hashes,
        store: &s.store,
    }
}

/// A download serves the pieces it has verified, once it has them.
fn partial_view(t: &Transfer) -> Option<FileView<'_>> {
    let info = t.dl.info()?;
    let have = t.dl.have()?;
    if have.count() == 0 {
        return None;
    }
    Some(FileView {
        name: t.dl.name(),
        info,
        have,
        hashes: t.dl.hashes()?,
        store: t.dl.store()?,
    })
}

/// The download's connection actions, applied straight to the reactor.
struct DlIo<'a> {
    ctx: &'a mut Ctx,
    conns: &'a mut HashMap<ConnId, Role>,
    slots: &'a mut HashMap<SlotId, ConnId>,
    file: Rc<str>,
    failed: Vec<SlotId>,
}

impl PeerIo for DlIo<'_> {
    fn connect(&mut self, slot: SlotId, addr: SocketAddr) {
        match self.ctx.connect(addr) {
            Ok(conn) => {
                self.slots.insert(slot, conn);
                self.conns.insert(
                    conn,
                    Role::Peer {
                        file: self.file.clone(),
                        slot,
                    },
                );
            }
            Err(e) => {
                log::info!("{}: cannot connect to {addr}: {e}", self.file);
                self.failed.push(slot);
            }
        }
    }

    fn send(&mut self, slot: SlotId, msg: &Message<'_>) {
        let Some(&conn) = self.slots.get(&slot) else {
            return;
        };
        if let Some(out) = self.ctx.out_buf(conn) {
            if let Err(e) = wire::encode(msg, out) {
                log::error!("{}: cannot encode a request: {e}", self.file);
            }
        }
    }

    fn disconnect(&mut self, slot: SlotId) {
        if let Some(conn) = self.slots.remove(&slot) {
            self.conns.remove(&conn);
            self.ctx.close(conn);
        }
    }
}

impl Node {
    fn start(&mut self, ctx: &mut Ctx) {
        self.connect_tracker(ctx);
        for name in self.config.uploads.clone() {
            self.upload(ctx, &name);
        }
        for name in self.config.downloads.clone() {
            if self.download(ctx, &name) {
                self.awaited.insert(name);
            } else {
                self.report.failed += 1;
            }
        }
        self.check_done(ctx);
        self.schedule(ctx);
    }

    // ---- the tracker link -------------------------------------------------------------

    fn connect_tracker(&mut self, ctx: &mut Ctx) {
        self.tracker.retry_at = None;
        match ctx.connect(self.config.tracker) {
            Ok(conn) => {
                self.tracker.conn = Some(conn);
                self.conns.insert(conn, Role::Tracker);
            }
            Err(e) => self.tracker_lost(ctx, &e.to_string()),
        }
    }

    fn tracker_connected(&mut self, ctx: &mut Ctx) {
        let was_retrying = !self.tracker.backoff.is_zero();
        self.tracker.up = true;
        self.tracker.backoff = Duration::ZERO;
        if was_retrying {
            log::warn!(
                "tracker at {} reached again; re-announcing",
                self.config.tracker
            );
        }
        self.tell_tracker(
            ctx,
            &NodeToTracker::Hello {
                node_name: &self.config.name.clone(),
                listen_port: self.listen_port,
            },
        );
        let shared: Vec<(String, FileInfo)> = self
            .shared
            .values()
            .map(|s| (s.name.clone(), s.info))
            .collect();
        for (name, info) in shared {
            self.tell_tracker(
                ctx,
                &NodeToTracker::Have {
                    name: &name,
                    info,
                    complete: true,
                },
            );
        }
        let downloads: Vec<(String, Option<FileInfo>, bool)> = self
            .downloads
            .values()
            .filter(|t| !t.dl.is_over())
            .map(|t| (t.dl.name().to_owned(), t.dl.info(), t.announced))
            .collect();
        for (name, info, announced) in downloads {
            if let (Some(info), true) = (info, announced) {
                self.tell_tracker(
                    ctx,
                    &NodeToTracker::Have {
                        name: &name,
                        info,
                        complete: false,
                    },
                );
            }
            self.tell_tracker(ctx, &NodeToTracker::Need { name: &name });
        }
    }

    fn tracker_lost(&mut self, ctx: &mut Ctx, why: &str) {
        self.tracker.conn = None;
        self.tracker.up = false;
        if self.stopping {
            return;
        }
        let backoff =
            (self.tracker.backoff * 2).clamp(Duration::from_millis(500), MAX_TRACKER_BACKOFF);
        self.tracker.backoff = backoff;
        self.tracker.retry_at = Some(ctx.now() + backoff);
        log::warn!(
            "tracker at {} unreachable ({why}); retrying in {:.1} s",
            self.config.tracker,
            backoff.as_secs_f64()
        );
    }

    fn tell_tracker(&mut self, ctx: &mut Ctx, msg: &NodeToTracker<'_>) {
        let Some(conn) = self.tracker.conn.filter(|_| self.tracker.up) else {
            return;
        };
        if let Some(out) = ctx.out_buf(conn) {
            if let Err(e) = wire::encode(&Message::NodeToTracker(msg.clone()), out) {
                log::error!("cannot encode a tracker message: {e}");
            }
        }
    }

    fn on_tracker_frame(&mut self, ctx: &mut Ctx, msg: &Message<'_>) {
        match msg {
            Message::TrackerToNode(list) => {
                let now = ctx.now();
                let name = list.name.to_owned();
                self.with_download(ctx, &name, |dl, io| dl.on_owners(now, &list.owners, io));
            }
            Message::Error { code, reason } => {
                log::warn!("tracker refused: {reason} ({code:?})");
            }
            Message::KeepAlive => {}
            other => log::debug!("tracker sent unexpected message type {}", other.type_code()),
        }
    }

    // ---- sharing ------------------------------------------------------------------------

    fn upload(&mut self, ctx: &mut Ctx, name: &str) {
        if let Err(e) = storage::check_name(name) {
            log::error!("upload {name}: name refused: {e}");
            return;
        }
        if self.shared.values().any(|s| s.name == name)
            || self.hashing.iter().any(|j| j.name == name)
        {
            log::warn!("upload {name}: already shared");
            return;
        }
        let store = match self.folder.open_shared(name) {
            Ok(store) => store,
            Err(e) => {
                log::error!(
                    "upload {name}: not in my folder {}: {e}",
                    self.folder.dir().display()
                );
                return;
            }
        };
        let layout = Layout {
            size: store.len(),
            piece_size: self.config.piece_size,
        };
        if layout.size.div_ceil(u64::from(layout.piece_size)) > u64::from(u32::MAX) {
            log::error!(
                "upload {name}: too many pieces for piece size {}",
                layout.piece_size
            );
            return;
        }
        log::info!(
            "upload {name}: hashing {} bytes in {} pieces",
            layout.size,
            layout.piece_count()
        );
        self.hashing.push(HashJob {
            name: name.to_owned(),
            layout,
            store,
            hasher: PieceHasher::new(layout),
        });
        self.schedule(ctx);
    }

    fn hash_step(&mut self, ctx: &mut Ctx) {
        let mut finished = Vec::new();
        for (i, job) in self.hashing.iter_mut().enumerate() {
            match job.hasher.step(&job.store, HASH_STEP) {
                Ok(true) => finished.push(i),
                Ok(false) => {}
                Err(e) => {
                    log::error!("upload {}: cannot read it: {e}", job.name);
                    finished.push(i);
                    job.layout.piece_size = 0;
                }
            }
        }
        for i in finished.into_iter().rev() {
            let job = self.hashing.remove(i);
            if job.layout.piece_size == 0 {
                continue;
            }
            let hashes = job.hasher.into_hashes();
            let info = FileInfo {
                size: job.layout.size,
                piece_size: job.layout.piece_size,
                root: storage::root_hash(job.layout, &hashes),
            };
            self.publish(ctx, job.name, info, hashes, job.store);
        }
    }

    fn publish(
        &mut self,
        ctx: &mut Ctx,
        name: String,
        info: FileInfo,
        hashes: Vec<Hash>,
        store: SharedFile,
    ) {
        println!(
            "sharing {name} ({} bytes, root {})",
            info.size,
            short_hex(&info.root)
        );
        self.tell_tracker(
            ctx,
            &NodeToTracker::Have {
                name: &name,
                info,
                complete: true,
            },
        );
        let have = Bitfield::full(hashes.len() as u32);
        self.shared.insert(
            info.root,
            Shared {
                name,
                info,
                hashes,
                have,
                store,
            },
        );
    }

    fn on_serve_frame(&mut self, ctx: &mut Ctx, conn: ConnId, msg: &Message<'_>) {
        let Some(Role::Serve(serve, _)) = self.conns.get_mut(&conn) else {
            return;
        };
        let lib = Lib {
            shared: &self.shared,
            downloads: &self.downloads,
        };
        let Some(out) = ctx.out_buf(conn) else { return };
        if serve.on_message(msg, &lib, out) == ServeOutcome::Close {
            log::info!(
                "closing a serving connection from {:?}: bad request",
                ctx.peer_addr(conn)
            );
            self.conns.remove(&conn);
            ctx.close(conn);
        }
    }

    /// Tops up `conn`'s output with queued blocks while it has room and the rate allows.
    fn pump(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let now = ctx.now();
        let Some(Role::Serve(serve, _)) = self.conns.get_mut(&conn) else {
            return;
        };
        let lib = Lib {
            shared: &self.shared,
            downloads: &self.downloads,
        };
        while ctx.pending_out(conn) < SERVE_TARGET && serve.queued() > 0 {
            if let Some(bucket) = self.bucket.as_mut() {
                if !bucket.ready(now) {
                    break;
                }
            }
            let Some(request) = serve.next_request() else {
                break;
            };
            let Some(out) = ctx.out_buf(conn) else { return };
            match serve_block(&request, &lib, out) {
                Ok(sent) => {
                    if let Some(bucket) = self.bucket.as_mut() {
                        bucket.take(now, u64::from(sent));
                    }
                }
                Err(why) => {
                    log::warn!("cannot serve piece {}: {why}", request.piece);
                    let _ = wire::encode(
                        &Message::Error {
                            code: ErrorCode::Refused,
                            reason: &why,
                        },
                        out,
                    );
                    self.conns.remove(&conn);
                    ctx.close(conn);
                    return;
                }
            }
        }
    }

    /// Serves every connection with queued requests, starting after the last one served first.
    fn pump_all(&mut self, ctx: &mut Ctx) {
        let mut waiting: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, role)| matches!(role, Role::Serve(s, _) if s.queued() > 0))
            .map(|(&conn, _)| conn)
            .collect();
        if waiting.is_empty() {
            return;
        }
        waiting.sort();
        self.serve_cursor = (self.serve_cursor + 1) % waiting.len();
        waiting.rotate_left(self.serve_cursor);
        for conn in waiting {
            self.pump(ctx, conn);
        }
    }

    // ---- downloading --------------------------------------------------------------------

    /// Starts a download; false (with the reason logged) if it cannot start.
    fn download(&mut self, ctx: &mut Ctx, name: &str) -> bool {
        if let Err(e) = storage::check_name(name) {
            log::error!("download {name}: name refused: {e}");
            return false;
        }
        if self.downloads.get(name).is_some_and(|t| !t.dl.is_over()) {
            log::warn!("download {name}: already downloading");
            return false;
        }
        if self.folder.final_exists(name) {
            log::error!(
                "download {name}: {} already exists; remove it first",
                self.folder.dir().join(name).display()
            );
            return false;
        }
        let now = ctx.now();
        let transfer = Transfer {
            key: Rc::from(name),
            dl: Download::new(name, &self.config.name, self.config.download.clone(), now),
            slots: HashMap::new(),
            started: now,
            announced: false,
            view: ProgressView::new(name, self.config.progress, now),
            next_draw: now,
        };
        self.downloads.insert(name.to_owned(), transfer);
        if self.tracker.up {
            self.tell_tracker(ctx, &NodeToTracker::Need { name });
        } else if self.tracker.retry_at.is_some() {
            log::warn!(
                "download {name}: waiting for the tracker at {}",
                self.config.tracker
            );
        }
        true
    }

    /// Runs `f` on the download of `file` with its connection actions, then applies its notices.
    fn with_download(
        &mut self,
        ctx: &mut Ctx,
        file: &str,
        f: impl FnOnce(&mut Download<PartialFile>, &mut dyn PeerIo),
    ) {
        let now = ctx.now();
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let mut io = DlIo {
            ctx: &mut *ctx,
            conns: &mut self.conns,
            slots: &mut transfer.slots,
            file: transfer.key.clone(),
            failed: Vec::new(),
        };
        f(&mut transfer.dl, &mut io);
        // Connects that failed at once are reported like any other closed connection.
        let mut rounds = 0;
        while !io.failed.is_empty() && rounds < 1000 {
            rounds += 1;
            for slot in std::mem::take(&mut io.failed) {
                transfer.dl.on_closed(now, slot, &mut io);
            }
        }
        self.after_download(ctx, file);
    }

    fn after_download(&mut self, ctx: &mut Ctx, file: &str) {
        loop {
            let Some(transfer) = self.downloads.get_mut(file) else {
                return;
            };
            let Some(notice) = transfer.dl.poll_notice() else {
                break;
            };
            match notice {
                Notice::NeedStore { info } => self.attach_store(ctx, file, info),
                Notice::PieceDone(piece) => self.piece_done(ctx, file, piece),
                Notice::Complete => self.complete(ctx, file),
                Notice::Failed(reason) => self.failed(ctx, file, &reason),
            }
        }
    }

    fn attach_store(&mut self, ctx: &mut Ctx, file: &str, info: FileInfo) {
        let layout = Layout {
            size: info.size,
            piece_size: info.piece_size,
        };
        let opened = self.folder.begin_download(file, layout, &info.root);
        let now = ctx.now();
        self.with_download(ctx, file, |dl, io| match opened {
            Ok(partial) => {
                let claimed = partial.claimed_done();
                dl.attach_store(now, partial, &claimed, io);
            }
            Err(e) => dl.abort(format!("cannot create its temporary file: {e}"), io),
        });
    }

    fn piece_done(&mut self, ctx: &mut Ctx, file: &str, piece: u32) {
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let Some(info) = transfer.dl.info() else {
            return;
        };
        let first = !transfer.announced;
        transfer.announced = true;
        let have = Message::HavePiece {
            root: info.root,
            piece,
        };
        for (&conn, role) in &self.conns {
            if let Role::Serve(serve, _) = role {
                if serve.watches(&info.root) {
                    if let Some(out) = ctx.out_buf(conn) {
                        let _ = wire::encode(&have, out);
                    }
                }
            }
        }
        if first {
            // From its first verified piece on, a downloader is a partial owner others can use.
            self.tell_tracker(
                ctx,
                &NodeToTracker::Have {
                    name: file,
                    info,
                    complete: false,
                },
            );
        }
    }

    fn complete(&mut self, ctx: &mut Ctx, file: &str) {
        let now = ctx.now();
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let (Some(info), Some(partial)) = (transfer.dl.info(), transfer.dl.take_store()) else {
            return;
        };
        let hashes = transfer.dl.hashes_owned();
        let (fetched, kept) = (transfer.dl.fetched_bytes(), transfer.dl.kept_bytes());
        let sources: Vec<String> = transfer
            .dl
            .sources()
            .iter()
            .map(|(name, bytes)| format!("{name} {bytes}"))
            .collect();
        let elapsed = now
            .saturating_duration_since(transfer.started)
            .as_secs_f64();
        let moved = partial.finish();
        if moved.is_ok() {
            transfer.dl.finished();
            transfer.view.update(now, &transfer.dl.progress());
            transfer.view.finish(true);
        }
        if let Err(e) = moved {
            let reason = format!("cannot move it into place: {e}");
            self.with_download(ctx, file, |dl, io| dl.abort(reason, io));
            return;
        }
        let rate = info.size as f64 / elapsed.max(1e-6) / f64::from(1 << 20);
        println!(
            "downloaded {file} ({} bytes in {elapsed:.2} s, {rate:.1} MiB/s; fetched {fetched} bytes, kept {kept} from an earlier run)",
            info.size
        );
        log::info!("{file}: bytes by owner: {}", sources.join(", "));
        self.report.completed += 1;
        self.tell_tracker(ctx, &NodeToTracker::Unneed { name: file });
        match self.folder.open_shared(file) {
            Ok(store) => {
                let have = Bitfield::full(hashes.len() as u32);
                self.tell_tracker(
                    ctx,
                    &NodeToTracker::Have {
                        name: file,
                        info,
                        complete: true,
                    },
                );
                let name = file.to_owned();
                self.shared.insert(
                    info.root,
                    Shared {
                        name,
                        info,
                        hashes,
                        have,
                        store,
                    },
                );
            }
            Err(e) => log::warn!("{file}: downloaded but cannot be shared: {e}"),
        }
        self.awaited.remove(file);
        self.check_done(ctx);
    }

    fn failed(&mut self, ctx: &mut Ctx, file: &str, reason: &str) {
        eprintln!("download {file} failed: {reason}");
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        transfer.view.finish(false);
        let announced = transfer.announced;
        let info = transfer.dl.info();
        drop(transfer.dl.take_store());
        self.tell_tracker(ctx, &NodeToTracker::Unneed { name: file });
        if let (true, Some(info)) = (announced, info) {
            self.tell_tracker(
                ctx,
                &NodeToTracker::Drop {
                    name: file,
                    root: info.root,
                },
            );
        }
        self.report.failed += 1;
        self.awaited.remove(file);
        self.check_done(ctx);
    }

    fn check_done(&mut self, ctx: &mut Ctx) {
        if self.config.exit_when_done && self.awaited.is_empty() && !self.stopping {
            self.shutdown(ctx);
        }
    }

    // ---- commands, time, shutdown -------------------------------------------------------

    fn command(&mut self, ctx: &mut Ctx, line: &str) {
        match command::parse(line) {
            Ok(None) => {}
            Ok(Some(Command::Upload(name))) => self.upload(ctx, &name),
            Ok(Some(Command::Download(name))) => {
                self.download(ctx, &name);
            }
            Ok(Some(Command::Status)) => self.print_status(),
            Ok(Some(Command::Help)) => println!("{}", command::HELP),
            Ok(Some(Command::Exit)) => self.shutdown(ctx),
            Err(e) => eprintln!("{e}"),
        }
    }

    fn print_status(&self) {
        let tracker = if self.tracker.up {
            "connected"
        } else {
            "not connected"
        };
        println!(
            "node {} at port {}; tracker {} {tracker}",
            self.config.name, self.listen_port, self.config.tracker
        );
        for job in &self.hashing {
            println!("  hashing  {}: {} bytes", job.name, job.layout.size);
        }
        for shared in self.shared.values() {
            println!(
                "  sharing  {}: {} bytes, root {}",
                shared.name,
                shared.info.size,
                short_hex(&shared.info.root)
            );
        }
        for (name, t) in &self.downloads {
            let p = t.dl.progress();
            println!(
                "  download {name}: {} of {} bytes, {:.1} MiB/s, {} owners connected, {:?}",
                p.done,
                p.total,
                p.rate / f64::from(1 << 20),
                p.owners,
                p.phase
            );
        }
        if self.hashing.is_empty() && self.shared.is_empty() && self.downloads.is_empty() {
            println!("  no transfers");
        }
    }

    fn tick(&mut self, ctx: &mut Ctx) {
        let now = ctx.now();
        if !self.hashing.is_empty() {
            self.hash_step(ctx);
        }
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
                t.dl.phase() == Phase::Owners && now.saturating_duration_since(t.started) > limit
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
            t.view.update(now, &t.dl.progress());
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
        if !self.hashing.is_empty() {
            consider(now);
        }
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
                .values()
                .any(|r| matches!(r, Role::Serve(s, _) if s.queued() > 0));
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
            if self.downloads.get(&name).is_some_and(|t| !t.dl.is_over()) {
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
        let mut used = 0;
        while used < input.len() {
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
        if self.stopper.is_stopped() {
            self.shutdown(ctx);
        }
    }
}

impl Node {
    /// Closes serving connections that asked for nothing for [`SERVE_IDLE`].
    fn close_idle_serving(&mut self, ctx: &mut Ctx) {
        let now = ctx.now();
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, role)| matches!(role, Role::Serve(s, heard) if s.queued() == 0 && now.saturating_duration_since(*heard) > SERVE_IDLE))
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
