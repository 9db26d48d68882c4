//! The tracker's sans-IO state: who owns which file, who is watching which file.
//!
//! Inputs are `handle_*` calls with the current time passed in (`handle_accept`,
//! `handle_frame`, `handle_drain`, `handle_closed`, `handle_timeout`), the shape
//! `node::machine::Node`, `Download` and `ServeConn` have too; outputs go to an [`Outbox`]
//! the caller supplies (the reactor glue encodes them straight into connection
//! buffers, tests collect them). Nothing here touches a socket or the clock.
//!
//! Identity: a node is its name, proven by its secret (the tracker keeps only a
//! BLAKE3 hash of it). A node's owner entries outlive its connection for
//! [`TrackerLimits::grace`], so a node that reconnects with its secret (after a
//! network blip, or after *we* restarted and it re-announces) keeps its place;
//! anyone else saying that name meanwhile is refused. A node that sends `Exit` is
//! removed at once.
//!
//! Nothing a peer sends grows the tables past a bound: files, owners per file,
//! owners and versions per file from one host, files per node, and a memory
//! budget per node and in total ([`TrackerLimits`]). Owner-list pushes to a
//! watcher whose output is backed up are coalesced into one latest list per file,
//! sent when it drains ([`TrackerState::handle_drain`]).
//!
//! The code is split by concern: `hello` (names, secrets, `Synced`), `owners`
//! (`Have`, the per-host caps and eviction), `notify` (pushes, coalescing, the
//! deadline heap); this file holds the tables, the dispatch and the budget.

mod hello;
mod notify;
mod owners;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::hex::short_hex;
use crate::wire::{ErrorCode, FileInfo, Message, NodeToTracker};

use notify::Due;

/// Identifies one connection to the tracker (the glue uses the reactor's connection id).
pub type SessionId = usize;

/// Bounds on the tracker's tables, each documented in the README.
#[derive(Clone, Debug)]
pub struct TrackerLimits {
    /// How long a disconnected node's entries are kept for it to reconnect.
    pub grace: Duration,
    /// Most distinct file names tracked.
    pub max_files: usize,
    /// Most owner entries (node × version) per file name.
    pub max_owners_per_file: usize,
    /// Most files one node may own or watch.
    pub max_files_per_node: usize,
    /// How long owner-list changes are batched before watchers are told.
    pub notify_delay: Duration,
    /// Most distinct versions (roots) of one file name from the nodes of one IP address.
    pub max_versions_per_host: usize,
    /// Most owner entries of one file name from the nodes of one IP address.
    pub max_owners_per_host: usize,
    /// Most bytes of table memory one node may cost (owner entries, watches, its own entry).
    pub node_budget: usize,
    /// Most bytes of table memory all nodes together may cost.
    pub total_budget: usize,
    /// A connection that has not said `Hello` this long after connecting is closed.
    pub hello_timeout: Duration,
}

/// Default [`TrackerLimits::node_budget`]: 16 MiB (about 30,000 owner entries with short names,
/// 16,000 with 250-byte ones).
pub const DEFAULT_NODE_BUDGET: usize = 16 << 20;
/// Default [`TrackerLimits::total_budget`]: 512 MiB of accounted tables, so a 2 GB machine
/// keeps room for the allocator's overhead, the connection buffers and everything else.
pub const DEFAULT_TOTAL_BUDGET: usize = 512 << 20;
/// Default [`TrackerLimits::hello_timeout`].
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for TrackerLimits {
    fn default() -> Self {
        TrackerLimits {
            grace: Duration::from_secs(5),
            max_files: 1 << 20,
            max_owners_per_file: 4096,
            max_files_per_node: 1 << 16,
            notify_delay: Duration::from_millis(100),
            max_versions_per_host: 4,
            max_owners_per_host: 256,
            node_budget: DEFAULT_NODE_BUDGET,
            total_budget: DEFAULT_TOTAL_BUDGET,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
        }
    }
}

/// Where the tracker's replies go.
pub trait Outbox {
    /// Send `msg` on session `to`.
    fn send(&mut self, to: SessionId, msg: &Message<'_>);
    /// Close session `to` after what was sent to it.
    fn close(&mut self, to: SessionId);
    /// Whether `to`'s output is backed up: pushes to it then wait, coalesced, for
    /// [`TrackerState::handle_drain`].
    fn congested(&self, to: SessionId) -> bool {
        let _ = to;
        false
    }
}

/// One owner entry of a file: which node holds which version.
#[derive(Clone, Debug)]
struct OwnerEntry {
    node: String,
    info: FileInfo,
    complete: bool,
    /// Stated (`Have`) since the node's last `Hello`; `Synced` drops the others.
    confirmed: bool,
}

/// Everything known about one file name.
#[derive(Default, Debug)]
struct FileEntry {
    owners: Vec<OwnerEntry>,
    watchers: HashSet<SessionId>,
}

/// A known node: where it serves, and whether it is connected.
#[derive(Debug)]
struct NodeEntry {
    addr: SocketAddr,
    session: Option<SessionId>,
    /// BLAKE3 of the node's secret: only a `Hello` with that secret takes the name back.
    secret_hash: [u8; 32],
    /// When a disconnected node's entries expire.
    expires: Option<Instant>,
    /// The serial of its pending grace deadline (older heap entries are stale).
    grace_serial: u64,
    /// File names it owns (any version).
    owns: BTreeSet<String>,
    /// Accounted bytes of this entry and its owner entries.
    own_bytes: usize,
}

/// A live connection: before `Hello` it has no node.
#[derive(Debug)]
struct Session {
    peer_ip: IpAddr,
    /// Unique per connection, so a reused session id never matches an old deadline.
    serial: u64,
    node: Option<String>,
    watching: HashSet<String>,
    /// Watched files whose latest list this session is owed (its output was backed up).
    owed: BTreeSet<String>,
    /// Accounted bytes of its watches.
    watch_bytes: usize,
}

/// The tracker's tables.
#[derive(Debug)]
pub struct TrackerState {
    limits: TrackerLimits,
    sessions: HashMap<SessionId, Session>,
    nodes: HashMap<String, NodeEntry>,
    files: HashMap<String, FileEntry>,
    /// Grace expiries and hello deadlines, soonest first; stale entries are skipped when popped.
    deadlines: BinaryHeap<Due>,
    /// Source of session and grace serials.
    next_serial: u64,
    /// Files whose owner list changed since watchers were last told.
    dirty: BTreeSet<String>,
    notify_at: Option<Instant>,
    /// Accounted bytes of every node and session.
    total_bytes: usize,
}

impl TrackerState {
    /// An empty tracker with these bounds.
    pub fn new(limits: TrackerLimits) -> Self {
        TrackerState {
            limits,
            sessions: HashMap::new(),
            nodes: HashMap::new(),
            files: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_serial: 0,
            dirty: BTreeSet::new(),
            notify_at: None,
            total_bytes: 0,
        }
    }

    /// A connection arrived from `peer_ip`; it has until `now + hello_timeout` to say `Hello`.
    pub fn handle_accept(&mut self, now: Instant, session: SessionId, peer_ip: IpAddr) {
        let serial = self.serial();
        self.sessions.insert(
            session,
            Session {
                peer_ip,
                serial,
                node: None,
                watching: HashSet::new(),
                owed: BTreeSet::new(),
                watch_bytes: 0,
            },
        );
        self.push_deadline(Due::hello(now + self.limits.hello_timeout, session, serial));
    }

    /// A connection is gone: its node's entries expire after the grace period.
    pub fn handle_closed(&mut self, now: Instant, session: SessionId) {
        let Some(gone) = self.sessions.remove(&session) else {
            return;
        };
        self.total_bytes -= gone.watch_bytes;
        for name in &gone.watching {
            if let Some(file) = self.files.get_mut(name) {
                file.watchers.remove(&session);
            }
        }
        self.drop_empty_files(gone.watching.iter());
        let Some(name) = gone.node else { return };
        let serial = self.serial();
        if let Some(node) = self.nodes.get_mut(&name) {
            if node.session == Some(session) {
                let at = now + self.limits.grace;
                node.session = None;
                node.expires = Some(at);
                node.grace_serial = serial;
                self.push_deadline(Due::grace(at, name, serial));
            }
        }
    }

    /// A decoded frame arrived on `session`.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        session: SessionId,
        msg: &Message<'_>,
        out: &mut dyn Outbox,
    ) {
        let Some(sess) = self.sessions.get_mut(&session) else {
            return;
        };
        // Borrowed out of the session for the call (no copy per message), put back after.
        let node = sess.node.take();
        let exiting = matches!(msg, Message::NodeToTracker(NodeToTracker::Exit));
        match (msg, node.as_deref()) {
            (
                Message::NodeToTracker(NodeToTracker::Hello {
                    node_name,
                    listen_port,
                    secret,
                }),
                None,
            ) => self.hello(now, session, node_name, *listen_port, secret, out),
            (Message::NodeToTracker(NodeToTracker::Hello { .. }), Some(_)) => {
                refuse(out, session, ErrorCode::Protocol, "hello sent twice");
            }
            (Message::KeepAlive, _) => {}
            (Message::NodeToTracker(_), None) => {
                refuse(out, session, ErrorCode::Protocol, "hello must come first");
            }
            (Message::NodeToTracker(req), Some(node)) => self.request(now, session, node, req, out),
            (Message::Error { code, reason }, _) => {
                let reason = crate::wire::Escaped(reason);
                log::info!("session {session} reports {code:?}: {reason}");
            }
            (other, _) => {
                log::debug!(
                    "session {session} sent a peer message to the tracker: {:?}",
                    other.type_code()
                );
                refuse(out, session, ErrorCode::Protocol, "not a tracker message");
            }
        }
        if let (Some(node), false) = (node, exiting) {
            // Still this session's node unless the node was forgotten meanwhile.
            let owned = self
                .nodes
                .get(&node)
                .is_some_and(|n| n.session == Some(session));
            if let Some(sess) = self.sessions.get_mut(&session).filter(|_| owned) {
                sess.node.get_or_insert(node);
            }
        }
    }

    fn request(
        &mut self,
        now: Instant,
        session: SessionId,
        node: &str,
        req: &NodeToTracker<'_>,
        out: &mut dyn Outbox,
    ) {
        match *req {
            NodeToTracker::Hello { .. } => {}
            NodeToTracker::Synced => self.synced(now, node),
            NodeToTracker::Have {
                name,
                info,
                complete,
            } => self.have(now, session, node, name, info, complete, out),
            NodeToTracker::Need { name } => self.need(session, node, name, out),
            NodeToTracker::Unneed { name } => {
                if let Some(file) = self.files.get_mut(name) {
                    file.watchers.remove(&session);
                }
                if let Some(s) = self.sessions.get_mut(&session) {
                    if s.watching.remove(name) {
                        let cost = watch_cost(name);
                        s.watch_bytes -= cost;
                        self.total_bytes -= cost;
                    }
                    s.owed.remove(name);
                }
                self.drop_empty_files(std::iter::once(&name.to_owned()));
            }
            NodeToTracker::Drop { name, root } => {
                if self.remove_owner(node, name, Some(&root)) {
                    self.mark_dirty(now, name);
                    self.log_table(name);
                }
            }
            NodeToTracker::Exit => {
                log::info!("node {node} exits");
                self.forget_node(now, node);
                out.close(session);
            }
        }
    }

    fn need(&mut self, session: SessionId, node: &str, name: &str, out: &mut dyn Outbox) {
        // The common case, a repeated question, costs two lookups and no allocation.
        let Some(sess) = self.sessions.get(&session) else {
            return;
        };
        if !sess.watching.contains(name) {
            if sess.watching.len() >= self.limits.max_files_per_node {
                refuse(out, session, ErrorCode::Refused, "watching too many files");
                return;
            }
            if !self.files.contains_key(name) && self.files.len() >= self.limits.max_files {
                notify::send_owners(out, session, name, &[], &self.nodes);
                return;
            }
            let cost = watch_cost(name);
            let own = self.nodes.get(node).map_or(0, |n| n.own_bytes);
            if let Err(why) = self.check_budget(node, own + sess.watch_bytes, cost) {
                refuse(out, session, ErrorCode::Refused, &why);
                return;
            }
            self.files
                .entry(name.to_owned())
                .or_default()
                .watchers
                .insert(session);
            if let Some(s) = self.sessions.get_mut(&session) {
                s.watching.insert(name.to_owned());
                s.watch_bytes += cost;
            }
            self.total_bytes += cost;
        }
        let owners = self.files.get(name).map_or(&[][..], |f| &f.owners[..]);
        notify::send_owners(out, session, name, owners, &self.nodes);
    }

    /// Refuses `cost` more bytes for `node` (now costing `node_bytes`) past either budget.
    fn check_budget(&self, node: &str, node_bytes: usize, cost: usize) -> Result<(), String> {
        if node_bytes + cost > self.limits.node_budget {
            return Err(format!(
                "tracker memory budget for node {node} reached ({})",
                mib(self.limits.node_budget)
            ));
        }
        if self.total_bytes + cost > self.limits.total_budget {
            return Err(format!(
                "tracker memory budget reached ({} in total)",
                mib(self.limits.total_budget)
            ));
        }
        Ok(())
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    fn drop_empty_files<'n>(&mut self, names: impl Iterator<Item = &'n String>) {
        for name in names {
            if self
                .files
                .get(name)
                .is_some_and(|f| f.owners.is_empty() && f.watchers.is_empty())
            {
                self.files.remove(name);
            }
        }
    }

    /// Owner entries across every file (for memory accounting and tests).
    pub fn owner_entries(&self) -> usize {
        self.files.values().map(|f| f.owners.len()).sum()
    }

    /// Accounted table bytes in total (held under [`TrackerLimits::total_budget`]).
    pub fn memory_used(&self) -> usize {
        self.total_bytes
    }

    /// Accounted table bytes of node `name` and its connection's watches, if it is known.
    pub fn node_memory(&self, name: &str) -> Option<usize> {
        let node = self.nodes.get(name)?;
        let watches = node
            .session
            .and_then(|s| self.sessions.get(&s))
            .map_or(0, |s| s.watch_bytes);
        Some(node.own_bytes + watches)
    }

    /// Names of the known nodes, connected or in grace (for tests and fuzzing).
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Files whose latest list `session` is owed, waiting for it to drain.
    pub fn owed(&self, session: SessionId) -> usize {
        self.sessions.get(&session).map_or(0, |s| s.owed.len())
    }

    /// The owner list of `name` as the tracker would send it.
    pub fn owners_of(&self, name: &str) -> Vec<(String, SocketAddr, FileInfo, bool)> {
        let owners = self.files.get(name).map_or(&[][..], |f| &f.owners[..]);
        owners
            .iter()
            .filter_map(|o| {
                let addr = self.nodes.get(&o.node)?.addr;
                Some((o.node.clone(), addr, o.info, o.complete))
            })
            .collect()
    }
}

/// Accounted cost of one node entry besides its name: the map slot, the struct, its sets.
const NODE_COST: usize = 256;
/// Accounted cost of one owner entry besides its file name, counted twice (the file's key
/// and the node's set): at least the heap it takes, measured by `cargo bench --bench
/// tracker` at 176 to 517 bytes with 8-byte names (the more when it is its file's only one).
const OWNER_COST: usize = 512;
/// Accounted cost of one watch besides the file name: two set slots and a file's watcher slot.
const WATCH_COST: usize = 160;

fn node_cost(name: &str) -> usize {
    NODE_COST + name.len()
}

fn owner_cost(file: &str) -> usize {
    OWNER_COST + file.len() * 2
}

fn watch_cost(file: &str) -> usize {
    WATCH_COST + file.len() * 2
}

fn mib(bytes: usize) -> String {
    format!("{} MiB", bytes >> 20)
}

fn refuse(out: &mut dyn Outbox, to: SessionId, code: ErrorCode, reason: &str) {
    out.send(to, &Message::Error { code, reason });
    if code == ErrorCode::Protocol {
        out.close(to);
    }
}
