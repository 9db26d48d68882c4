//! `node::machine`: the node's whole protocol as one sans-IO state machine.
//!
//! [`Node`] holds the tracker link and its back-off, the shared files, the downloads, the
//! serving connections, the upload rate bucket and every deadline. Inputs are `handle_*`
//! calls with the time passed in; outputs go through a [`NodeIo`] the driver supplies
//! (connections, disk jobs, lines for people); [`Node::poll_timeout`] says when to call
//! [`Node::handle_timeout`] next. Nothing here touches a socket, a thread or the clock:
//! `node::run` drives it on the reactor and the disk thread, tests on a simulated network.
//! It does use its folder directly (opening a file to share or download, one stat to catch
//! a shared file changed on disk, piece writes and reads through the stores): short
//! synchronous calls, where the slow ones (hashing, fsync, cache misses) are disk jobs.
//!
//! Connections have one of three roles: the tracker link, a downloader we serve, or an
//! owner one of our downloads fetches from. The code is split by concern: `tracker_link`,
//! `sharing` (hashing, serving, pacing), `transfers` (downloads), `clock` (what comes due),
//! `effects` (the [`NodeIo`] trait); this file holds the tables and the dispatch.

mod clock;
mod effects;
mod hash_asks;
mod sharing;
mod tracker_link;
mod transfers;
mod turndown;
mod uploads;

pub use effects::NodeIo;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bitfield::Bitfield;
use super::command::{self, Command};
use super::config::NodeConfig;
use super::download::{split_pin, Download, Notice, PeerIo, Phase, Progress, RootPin};
use super::peer::SlotId;
use super::piece::PieceIndex;
use super::progress::ShownRate;
use super::rate::TokenBucket;
use super::serve::{serve_block, FileView, Library, ServeConn, ServeOutcome, Served};
use super::text::esc;
use crate::hex::{hex, short_hex};
pub use crate::reactor::{CloseReason, ConnId};
use crate::storage::{self, DiskDone, Folder, Hash, Layout, PartialFile, SharedFile, WriteTarget};
use crate::wire::{
    self, Decoded, ErrorCode, FileInfo, Limits, Message, NodeSecret, NodeToTracker, RootHash,
};

/// Pending output a serving connection is topped up to.
const SERVE_TARGET: usize = 2 << 20;
/// The node's reactor reports a drain when a connection's output is all handed to the
/// kernel: the upload budget is node-wide and small, so a connection holding one block
/// must still say when it has room again.
pub const WRITE_LOW_WATER: usize = 0;
/// The most a node's kernel holds unsent per socket (TCP_NOTSENT_LOWAT): with a few MiB
/// queued in each of N kernels' buffers, the node-wide upload budget would decide nothing.
/// 128 KiB is what the option's author gives as enough to keep a link busy.
pub const KERNEL_UNSENT: usize = 128 << 10;
/// Pending output above which a serving connection's further requests stay unread until it
/// drains: every reply (hashes, answers, errors) is bounded by what the peer actually reads.
const SERVE_READ_STOP: usize = 4 << 20;
/// Largest frame payload a downloader may send us: its biggest message, a size question,
/// is a name of at most 255 bytes and a root.
const MAX_SERVE_PAYLOAD: usize = 4 << 10;
/// Longest wait between tracker reconnect attempts.
const MAX_TRACKER_BACKOFF: Duration = Duration::from_secs(10);
/// How often the node tells the tracker it is alive (the tracker closes silent links after 60 s).
const KEEPALIVE_EVERY: Duration = Duration::from_secs(20);
/// A serving connection that sent nothing for this long is closed, queued requests or not: a
/// downloader that is reading asks for more as blocks arrive, one that stopped reading does not.
const SERVE_IDLE: Duration = Duration::from_secs(120);
/// How often progress is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// How a node's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Downloads that failed.
    pub failed: usize,
    /// Downloads that completed.
    pub completed: usize,
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
    /// The version this download is listed at the tracker as a partial owner of.
    announced: Option<RootHash>,
    /// The rate `status` and the progress display show.
    shown: ShownRate,
    next_draw: Instant,
    /// The disk thread is re-hashing the pieces an earlier run left.
    checking: bool,
    /// The attached store's data file, for pieces checked and written off the network thread.
    target: Option<WriteTarget>,
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
pub struct Node {
    config: NodeConfig,
    folder: Folder,
    listen_port: u16,
    /// Proves our name to the tracker (kept in the folder).
    secret: NodeSecret,
    /// Ordered, so sweeps and fan-outs run in the same order every run (a seeded
    /// simulation repeats exactly).
    conns: BTreeMap<ConnId, Role>,
    tracker: TrackerLink,
    /// Keyed by (root, name): the same bytes may be shared under several names, and data
    /// requests carry only the root (any entry with it serves the same bytes).
    shared: BTreeMap<SharedKey, Shared>,
    hashing: Vec<HashJob>,
    downloads: BTreeMap<String, Transfer>,
    bucket: Option<TokenBucket>,
    /// Start-up downloads `exit_when_done` waits for.
    awaited: HashSet<String>,
    report: RunReport,
    stopping: bool,
    /// Which queued block goes out next, node-wide.
    uploads: uploads::Uploads,
    /// First hash requests answered lately (an original owner sends a crowd elsewhere).
    hash_asks: hash_asks::HashAsks,
    /// When the tracker keep-alive and the idle sweep are next due.
    housekeep_at: Instant,
    /// Whole pieces handed to the disk thread to verify and write, verdict not in yet.
    verifying: usize,
    /// Owner connections whose input waits while [`storage::MAX_VERIFYING`] pieces are
    /// verifying (read on once a verdict comes).
    held: Vec<ConnId>,
    /// The time the current `handle_*` call was given.
    now: Instant,
}

impl Node {
    /// A node named and configured by `config`, sharing from `folder`, reachable at
    /// `listen_port`; nothing happens until [`Node::handle_start`].
    pub fn new(
        config: NodeConfig,
        folder: Folder,
        secret: NodeSecret,
        listen_port: u16,
        now: Instant,
    ) -> Node {
        Node {
            bucket: config
                .max_upload_rate
                .map(|rate| TokenBucket::new(rate, now)),
            listen_port,
            secret,
            config,
            folder,
            conns: BTreeMap::new(),
            tracker: TrackerLink::default(),
            shared: BTreeMap::new(),
            hashing: Vec::new(),
            downloads: BTreeMap::new(),
            awaited: HashSet::new(),
            report: RunReport {
                failed: 0,
                completed: 0,
            },
            stopping: false,
            uploads: uploads::Uploads::default(),
            hash_asks: hash_asks::HashAsks::default(),
            housekeep_at: now + KEEPALIVE_EVERY,
            verifying: 0,
            held: Vec::new(),
            now,
        }
    }

    /// Block requests queued by the downloaders this node serves (for status and simulations).
    pub fn queued_requests(&self) -> usize {
        self.conns
            .values()
            .map(|role| match role {
                Role::Serve(serve, _) => serve.queued(),
                _ => 0,
            })
            .sum()
    }

    /// Pieces its downloads still miss and blocks they have asked for, summed (see
    /// [`Download::demand`]).
    pub fn download_demand(&self) -> (u32, usize) {
        self.downloads.values().fold((0, 0), |(m, a), t| {
            let (missing, asked) = t.dl.demand();
            (m + missing, a + asked)
        })
    }

    /// Requests this node turned down so far: (waited too long, more waiting than it sends
    /// soon); see `turndown`.
    pub fn turned_down(&self) -> (u64, u64) {
        self.uploads.turned_down
    }

    /// First hash requests this node turned down so far, sending the downloader to others
    /// (see `hash_asks`).
    pub fn hash_requests_turned_down(&self) -> u64 {
        self.hash_asks.turned_down
    }

    /// Pieces this node has uploaded at least once, over every version it serves (for
    /// status and simulations: an original owner should hand out each before repeating).
    pub fn distinct_pieces_sent(&self) -> usize {
        self.uploads.distinct_sent()
    }

    /// How many downloads completed and failed so far.
    pub fn report(&self) -> &RunReport {
        &self.report
    }

    /// Whether the node is leaving (after `exit`, a signal, or its last awaited download).
    pub fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Connects to the tracker and starts the configured uploads and downloads.
    pub fn handle_start(&mut self, now: Instant, io: &mut dyn NodeIo) {
        self.now = now;
        self.connect_tracker(io);
        for name in self.config.uploads.clone() {
            self.upload_escaped(io, &name);
        }
        for spec in self.config.downloads.clone() {
            let (name, pin) = split_pin(&spec);
            if self.download(io, name, pin) {
                self.awaited.insert(name.to_owned());
            } else {
                self.report.failed += 1;
            }
        }
        self.check_done(io);
    }

    /// One line the user typed: parsed, then run as a command (errors said on stderr).
    pub fn handle_line(&mut self, now: Instant, line: &str, io: &mut dyn NodeIo) {
        match command::parse(line) {
            Ok(None) => {}
            Ok(Some(cmd)) => self.handle_command(now, cmd, io),
            Err(e) => io.say_err(&e.to_string()),
        }
    }

    /// A user command.
    pub fn handle_command(&mut self, now: Instant, cmd: Command, io: &mut dyn NodeIo) {
        self.now = now;
        match cmd {
            Command::Upload(name) => self.upload_escaped(io, &name),
            Command::Download(name, pin) => {
                self.download(io, &name, pin);
            }
            Command::Status => {
                let text = self.status();
                io.say(&text);
            }
            Command::Help => io.say(command::HELP),
            Command::Exit => self.shutdown(io),
        }
    }

    /// Leaves the network: tells the tracker, stops the downloads (keeping their pieces).
    pub fn handle_shutdown(&mut self, now: Instant, io: &mut dyn NodeIo) {
        self.now = now;
        self.shutdown(io);
    }

    /// A downloader connected to us.
    pub fn handle_accept(&mut self, now: Instant, conn: ConnId, peer: SocketAddr) {
        self.now = now;
        log::debug!("downloader connected from {peer}");
        self.conns.insert(conn, Role::Serve(ServeConn::new(), now));
    }

    /// A connection we opened is up.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId, io: &mut dyn NodeIo) {
        self.now = now;
        match self.conns.get(&conn) {
            Some(Role::Tracker) => self.tracker_connected(io),
            Some(Role::Peer { file, slot }) => {
                let (file, slot) = (file.clone(), *slot);
                self.with_download(io, &file, |dl, io| dl.handle_connected(now, slot, io));
            }
            _ => {}
        }
    }

    /// Bytes arrived on `conn` (all it has unread): decodes and handles whole frames and
    /// returns how many bytes it used; the rest waits (a serving connection backed up stops
    /// here until [`Node::handle_drain`]).
    pub fn handle_data(
        &mut self,
        now: Instant,
        conn: ConnId,
        input: &[u8],
        io: &mut dyn NodeIo,
    ) -> usize {
        self.now = now;
        let serving = matches!(self.conns.get(&conn), Some(Role::Serve(..)));
        let owner = matches!(self.conns.get(&conn), Some(Role::Peer { .. }));
        // A downloader only ever sends us small frames (questions, requests): a bigger one
        // is refused from its header, so it cannot make us hold a data-sized buffer.
        let limits = if serving {
            Limits {
                max_payload: MAX_SERVE_PAYLOAD,
            }
        } else {
            Limits::default()
        };
        let mut used = 0;
        while used < input.len() {
            if serving && io.pending_out(conn) > SERVE_READ_STOP {
                break;
            }
            if owner && self.verifying >= storage::MAX_VERIFYING {
                // The disk thread is behind: owners' blocks wait in the socket (back-pressure)
                // rather than being checked and written here, beside it, on the same file.
                if !self.held.contains(&conn) {
                    self.held.push(conn);
                }
                break;
            }
            match wire::decode_frame(&input[used..], &limits) {
                Ok(Decoded::Frame(msg, len)) => {
                    used += len;
                    self.handle_frame(now, conn, &msg, io);
                    if !self.conns.contains_key(&conn) {
                        return input.len();
                    }
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => {
                    log::warn!("{:?} sent a bad frame: {e}; closing", io.peer_addr(conn));
                    if let Some(out) = io.out_buf(conn) {
                        let reason = e.to_string();
                        let _ = wire::encode(
                            &Message::Error {
                                code: ErrorCode::Protocol,
                                reason: &reason,
                            },
                            out,
                        );
                    }
                    self.drop_conn(io, conn);
                    io.close(conn);
                    return input.len();
                }
            }
        }
        if matches!(self.conns.get(&conn), Some(Role::Serve(..))) {
            self.serve_blocks(io);
        }
        used
    }

    /// One decoded frame from `conn`.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        msg: &Message<'_>,
        io: &mut dyn NodeIo,
    ) {
        self.now = now;
        match self.conns.get(&conn) {
            Some(Role::Tracker) => self.on_tracker_frame(io, msg),
            Some(Role::Serve(..)) => self.on_serve_frame(io, conn, msg),
            Some(Role::Peer { file, slot }) => {
                let (file, slot) = (file.clone(), *slot);
                self.with_download(io, &file, |dl, io| dl.handle_message(now, slot, msg, io));
            }
            None => {}
        }
    }

    /// `conn`'s pending output fell low: read on, and top it up with blocks.
    pub fn handle_drain(&mut self, now: Instant, conn: ConnId, io: &mut dyn NodeIo) {
        self.now = now;
        if matches!(self.conns.get(&conn), Some(Role::Serve(..))) {
            io.resume_reading(conn);
            self.serve_blocks(io);
        }
    }

    /// `conn` ended (whoever closed it); the node forgets it and tells whoever used it.
    pub fn handle_closed(
        &mut self,
        now: Instant,
        conn: ConnId,
        reason: CloseReason,
        io: &mut dyn NodeIo,
    ) {
        self.now = now;
        let serving = matches!(self.conns.get(&conn), Some(Role::Serve(..)));
        self.drop_conn_with(io, conn, Some(reason));
        if serving {
            // Its unsent replies no longer count against the upload budget.
            self.serve_blocks(io);
        }
    }

    /// A disk job ended: a download renamed into place (or not), a file hashed, a block read
    /// in, a resume checked.
    pub fn handle_disk(&mut self, now: Instant, done: DiskDone, io: &mut dyn NodeIo) {
        self.now = now;
        match done {
            DiskDone::Finished { name, result } => self.finished(io, &name, result),
            DiskDone::Hashed {
                file,
                piece_size,
                result,
            } => self.hashed(io, file, piece_size, result),
            DiskDone::Warmed { key } => self.warmed(io, key),
            DiskDone::Checked { name, file, result } => self.checked(io, &name, *file, result),
            DiskDone::Verified { name, tag, result } => {
                self.verifying = self.verifying.saturating_sub(1);
                self.verified(io, &name, tag, result);
                if self.verifying < storage::MAX_VERIFYING {
                    for held in std::mem::take(&mut self.held) {
                        if self.conns.contains_key(&held) {
                            io.resume_reading(held);
                        }
                    }
                }
            }
        }
    }

    /// `upload`, but a name with control characters is refused here, escaped, before
    /// anything logs it raw.
    fn upload_escaped(&mut self, io: &mut dyn NodeIo, name: &str) {
        if name.chars().any(char::is_control) {
            log::error!(
                "upload {}: name refused: contains a control character",
                esc(name)
            );
            return;
        }
        self.upload(io, name);
    }

    /// The `status` answer, in sentences.
    fn status(&self) -> String {
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
            let shown = t.shown.smoothed(t.progress());
            lines.push(format!("  {}", super::progress::status_line(name, &shown)));
        }
        if self.hashing.is_empty() && self.shared.is_empty() && self.downloads.is_empty() {
            lines.push("  nothing shared or downloading yet".to_owned());
        }
        lines.join("\n")
    }

    fn shutdown(&mut self, io: &mut dyn NodeIo) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.tell_tracker(io, &NodeToTracker::Exit);
        let names: Vec<String> = self.downloads.keys().cloned().collect();
        for name in names {
            // A download being flushed and renamed is left to end: the driver waits for it.
            let running = |t: &Transfer| !t.dl.is_over() && t.dl.phase() != Phase::Finishing;
            if self.downloads.get(&name).is_some_and(running) {
                self.with_download(io, &name, |dl, io| {
                    dl.abort("stopped; verified pieces are kept for a resume".into(), io)
                });
            }
        }
        io.stop();
    }

    fn drop_conn(&mut self, io: &mut dyn NodeIo, conn: ConnId) {
        self.drop_conn_with(io, conn, None);
    }

    /// Forgets `conn` and tells whoever used it.
    fn drop_conn_with(&mut self, io: &mut dyn NodeIo, conn: ConnId, reason: Option<CloseReason>) {
        match self.conns.remove(&conn) {
            Some(Role::Tracker) => {
                let why = match reason {
                    Some(CloseReason::ConnectFailed(kind)) => format!("connect failed: {kind}"),
                    Some(CloseReason::Error(kind)) => format!("connection error: {kind}"),
                    _ => "connection closed".to_owned(),
                };
                self.tracker_lost(&why);
            }
            Some(Role::Peer { file, slot }) => {
                let now = self.now;
                if let Some(t) = self.downloads.get_mut(&*file) {
                    t.slots.remove(&slot);
                }
                self.with_download(io, &file, |dl, io| dl.handle_closed(now, slot, io));
            }
            Some(Role::Serve(..)) | None => {}
        }
    }
}

#[cfg(test)]
mod tests;
