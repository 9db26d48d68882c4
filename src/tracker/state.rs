//! The tracker's sans-IO state: who owns which file, who is watching which file.
//!
//! Inputs are calls with the current time passed in; outputs go to an [`Outbox`]
//! the caller supplies (the reactor glue encodes them straight into connection
//! buffers, tests collect them). Nothing here touches a socket or the clock.
//!
//! Identity: a node is its name. A node's owner entries outlive its connection
//! for [`TrackerLimits::grace`], so a node that reconnects (after a network
//! blip, or after *we* restarted and it re-announces) keeps its place; a node
//! that sends `Exit` is removed at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire::{
    ErrorCode, FileInfo, Message, NodeToTracker, Owner, RootHash, TrackerToNode,
    MAX_OWNERS_PER_REPLY,
};

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
}

impl Default for TrackerLimits {
    fn default() -> Self {
        TrackerLimits {
            grace: Duration::from_secs(5),
            max_files: 1 << 20,
            max_owners_per_file: 4096,
            max_files_per_node: 1 << 16,
            notify_delay: Duration::from_millis(100),
        }
    }
}

/// Where the tracker's replies go.
pub trait Outbox {
    /// Send `msg` on session `to`.
    fn send(&mut self, to: SessionId, msg: &Message<'_>);
    /// Close session `to` after what was sent to it.
    fn close(&mut self, to: SessionId);
}

/// One owner entry of a file: which node holds which version.
#[derive(Clone, Debug)]
struct OwnerEntry {
    node: String,
    info: FileInfo,
    complete: bool,
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
    /// When a disconnected node's entries expire.
    expires: Option<Instant>,
    /// File names it owns (any version).
    owns: BTreeSet<String>,
}

/// A live connection: before `Hello` it has no node.
#[derive(Debug)]
struct Session {
    peer_ip: IpAddr,
    node: Option<String>,
    watching: HashSet<String>,
}

/// The tracker's tables.
#[derive(Debug)]
pub struct TrackerState {
    limits: TrackerLimits,
    sessions: HashMap<SessionId, Session>,
    nodes: HashMap<String, NodeEntry>,
    files: HashMap<String, FileEntry>,
    /// Disconnected nodes waiting out their grace period (so timeouts never scan every node).
    expiring: HashSet<String>,
    /// Files whose owner list changed since watchers were last told.
    dirty: BTreeSet<String>,
    notify_at: Option<Instant>,
}

impl TrackerState {
    /// An empty tracker with these bounds.
    pub fn new(limits: TrackerLimits) -> Self {
        TrackerState {
            limits,
            sessions: HashMap::new(),
            nodes: HashMap::new(),
            expiring: HashSet::new(),
            files: HashMap::new(),
            dirty: BTreeSet::new(),
            notify_at: None,
        }
    }

    /// A connection arrived from `peer_ip`.
    pub fn connected(&mut self, session: SessionId, peer_ip: IpAddr) {
        self.sessions.insert(
            session,
            Session {
                peer_ip,
                node: None,
                watching: HashSet::new(),
            },
        );
    }

    /// A connection is gone: its node's entries expire after the grace period.
    pub fn disconnected(&mut self, now: Instant, session: SessionId) {
        let Some(gone) = self.sessions.remove(&session) else {
            return;
        };
        for name in &gone.watching {
            if let Some(file) = self.files.get_mut(name) {
                file.watchers.remove(&session);
            }
        }
        self.drop_empty_files(gone.watching.iter());
        let Some(name) = gone.node else { return };
        if let Some(node) = self.nodes.get_mut(&name) {
            if node.session == Some(session) {
                node.session = None;
                node.expires = Some(now + self.limits.grace);
                self.expiring.insert(name);
            }
        }
    }

    /// A decoded frame arrived on `session`.
    pub fn handle(
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
                    ..
                }),
                None,
            ) => self.hello(now, session, node_name, *listen_port, out),
            (Message::NodeToTracker(NodeToTracker::Hello { .. }), Some(_)) => {
                refuse(out, session, ErrorCode::Protocol, "hello sent twice");
            }
            (Message::KeepAlive, _) => {}
            (Message::NodeToTracker(_), None) => {
                refuse(out, session, ErrorCode::Protocol, "hello must come first");
            }
            (Message::NodeToTracker(req), Some(node)) => self.request(now, session, node, req, out),
            (Message::Error { code, reason }, _) => {
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
            if let Some(sess) = self.sessions.get_mut(&session) {
                sess.node.get_or_insert(node);
            }
        }
    }

    fn hello(
        &mut self,
        now: Instant,
        session: SessionId,
        name: &str,
        port: u16,
        out: &mut dyn Outbox,
    ) {
        let Some(peer_ip) = self.sessions.get(&session).map(|s| s.peer_ip) else {
            return;
        };
        let addr = SocketAddr::new(peer_ip, port);
        if let Some(existing) = self.nodes.get_mut(name) {
            if let Some(old) = existing.session {
                // A node restarted before we saw its old connection drop comes from the same
                // address: it takes its name back. From elsewhere, the name is taken.
                let same_host = self
                    .sessions
                    .get(&old)
                    .is_some_and(|s| s.peer_ip == peer_ip);
                if !same_host {
                    refuse(
                        out,
                        session,
                        ErrorCode::Refused,
                        "node name already connected",
                    );
                    return;
                }
                log::info!("node {name} reconnected; closing its old connection");
                out.close(old);
            }
            // A reconnect within the grace period: the node keeps its entries.
            existing.session = Some(session);
            existing.expires = None;
            self.expiring.remove(name);
            if existing.addr != addr {
                existing.addr = addr;
                let owned: Vec<String> = existing.owns.iter().cloned().collect();
                for file in owned {
                    self.mark_dirty(now, &file);
                }
            }
        } else {
            self.nodes.insert(
                name.to_owned(),
                NodeEntry {
                    addr,
                    session: Some(session),
                    expires: None,
                    owns: BTreeSet::new(),
                },
            );
        }
        if let Some(sess) = self.sessions.get_mut(&session) {
            sess.node = Some(name.to_owned());
        }
        log::info!("node {name} connected, serving at {addr}");
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
            NodeToTracker::Hello { .. } | NodeToTracker::Synced => {}
            NodeToTracker::Have {
                name,
                info,
                complete,
            } => self.have(now, session, node, name, info, complete, out),
            NodeToTracker::Need { name } => {
                // The common case, a repeated question, costs two lookups and no allocation.
                let already = self
                    .sessions
                    .get(&session)
                    .is_some_and(|s| s.watching.contains(name));
                if !already {
                    let watching = self.sessions.get(&session).map_or(0, |s| s.watching.len());
                    if watching >= self.limits.max_files_per_node {
                        refuse(out, session, ErrorCode::Refused, "watching too many files");
                        return;
                    }
                    if !self.files.contains_key(name) && self.files.len() >= self.limits.max_files {
                        send_owners(out, session, name, &[], &self.nodes);
                        return;
                    }
                    self.files
                        .entry(name.to_owned())
                        .or_default()
                        .watchers
                        .insert(session);
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.watching.insert(name.to_owned());
                    }
                }
                let owners = self.files.get(name).map_or(&[][..], |f| &f.owners[..]);
                send_owners(out, session, name, owners, &self.nodes);
            }
            NodeToTracker::Unneed { name } => {
                if let Some(file) = self.files.get_mut(name) {
                    file.watchers.remove(&session);
                }
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.watching.remove(name);
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

    #[allow(clippy::too_many_arguments)]
    fn have(
        &mut self,
        now: Instant,
        session: SessionId,
        node: &str,
        name: &str,
        info: FileInfo,
        complete: bool,
        out: &mut dyn Outbox,
    ) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        if !entry.owns.contains(name) && entry.owns.len() >= self.limits.max_files_per_node {
            refuse(out, session, ErrorCode::Refused, "node owns too many files");
            return;
        }
        if !self.files.contains_key(name) && self.files.len() >= self.limits.max_files {
            refuse(
                out,
                session,
                ErrorCode::Refused,
                "tracker file table is full",
            );
            return;
        }
        let file = self.files.entry(name.to_owned()).or_default();
        match file
            .owners
            .iter_mut()
            .find(|o| o.node == node && o.info.root == info.root)
        {
            Some(existing) => {
                if existing.info == info && existing.complete == complete {
                    return;
                }
                existing.info = info;
                existing.complete = complete;
            }
            None => {
                if file.owners.len() >= self.limits.max_owners_per_file {
                    refuse(
                        out,
                        session,
                        ErrorCode::Refused,
                        "too many owners for this file",
                    );
                    return;
                }
                file.owners.push(OwnerEntry {
                    node: node.to_owned(),
                    info,
                    complete,
                });
                entry.owns.insert(name.to_owned());
            }
        }
        self.mark_dirty(now, name);
        self.log_table(name);
    }

    /// Removes `node`'s entries for `name` (one version, or all); true if any went.
    fn remove_owner(&mut self, node: &str, name: &str, root: Option<&RootHash>) -> bool {
        let Some(file) = self.files.get_mut(name) else {
            return false;
        };
        let before = file.owners.len();
        file.owners
            .retain(|o| !(o.node == node && root.is_none_or(|r| *r == o.info.root)));
        let removed = file.owners.len() != before;
        let still_owns = file.owners.iter().any(|o| o.node == node);
        if !still_owns {
            if let Some(entry) = self.nodes.get_mut(node) {
                entry.owns.remove(name);
            }
        }
        self.drop_empty_files(std::iter::once(&name.to_owned()));
        removed
    }

    /// Takes `node` off every owner list now.
    fn forget_node(&mut self, now: Instant, node: &str) {
        self.expiring.remove(node);
        let Some(entry) = self.nodes.remove(node) else {
            return;
        };
        for name in &entry.owns {
            if let Some(file) = self.files.get_mut(name) {
                file.owners.retain(|o| o.node != node);
            }
            self.mark_dirty(now, name);
            self.log_table(name);
        }
        self.drop_empty_files(entry.owns.iter());
        if let Some(sess) = entry.session.and_then(|s| self.sessions.get_mut(&s)) {
            sess.node = None;
        }
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

    fn mark_dirty(&mut self, now: Instant, name: &str) {
        if self.files.get(name).is_some_and(|f| !f.watchers.is_empty()) {
            self.dirty.insert(name.to_owned());
            self.notify_at.get_or_insert(now + self.limits.notify_delay);
        }
    }

    fn log_table(&self, name: &str) {
        if !log::log_enabled!(log::Level::Debug) {
            return;
        }
        let owners = self.files.get(name).map_or(&[][..], |f| &f.owners[..]);
        let listed: Vec<String> = owners
            .iter()
            .map(|o| {
                let addr = self
                    .nodes
                    .get(&o.node)
                    .map(|n| n.addr.to_string())
                    .unwrap_or_default();
                let part = if o.complete { "" } else { " (partial)" };
                format!(
                    "{}@{} root {}{}",
                    o.node,
                    addr,
                    short_hex(&o.info.root),
                    part
                )
            })
            .collect();
        log::debug!("owners of {name}: [{}]", listed.join(", "));
    }

    /// When [`TrackerState::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self
            .expiring
            .iter()
            .filter_map(|name| self.nodes.get(name)?.expires)
            .min();
        match (expiry, self.notify_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires nodes past their grace period and tells watchers of changed owner lists.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut dyn Outbox) {
        let expired: Vec<String> = self
            .expiring
            .iter()
            .filter(|name| {
                self.nodes
                    .get(*name)
                    .is_some_and(|n| n.expires.is_some_and(|t| t <= now))
            })
            .cloned()
            .collect();
        for node in expired {
            log::info!("node {node} did not come back: dropped from every owner list");
            self.forget_node(now, &node);
        }
        if self.notify_at.is_some_and(|t| t <= now) {
            self.notify_at = None;
            for name in std::mem::take(&mut self.dirty) {
                if let Some(file) = self.files.get(&name) {
                    for &watcher in &file.watchers {
                        send_owners(out, watcher, &name, &file.owners, &self.nodes);
                    }
                }
            }
        }
    }

    /// Owner entries across every file (for memory accounting and tests).
    pub fn owner_entries(&self) -> usize {
        self.files.values().map(|f| f.owners.len()).sum()
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

fn refuse(out: &mut dyn Outbox, to: SessionId, code: ErrorCode, reason: &str) {
    out.send(to, &Message::Error { code, reason });
    if code == ErrorCode::Protocol {
        out.close(to);
    }
}

/// Sends the owner list, complete owners first, capped at `MAX_OWNERS_PER_REPLY`.
fn send_owners(
    out: &mut dyn Outbox,
    to: SessionId,
    name: &str,
    owners: &[OwnerEntry],
    nodes: &HashMap<String, NodeEntry>,
) {
    let listed = owners
        .iter()
        .filter(|o| o.complete)
        .chain(owners.iter().filter(|o| !o.complete))
        .filter_map(|o| {
            let addr = nodes.get(&o.node)?.addr;
            Some(Owner {
                node_name: &o.node,
                addr,
                info: o.info,
                complete: o.complete,
            })
        })
        .take(MAX_OWNERS_PER_REPLY)
        .collect();
    out.send(
        to,
        &Message::TrackerToNode(TrackerToNode {
            name,
            owners: listed,
        }),
    );
}

/// The first eight hex digits of a root hash, for logs.
pub fn short_hex(root: &RootHash) -> String {
    root[..4].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// An owner list as sent: to whom, which file, (owner, address, complete).
    type SentList = (SessionId, String, Vec<(String, SocketAddr, bool)>);

    /// Collects what the tracker sends, as owner lists and error reasons.
    #[derive(Default)]
    struct Sent {
        lists: Vec<SentList>,
        errors: Vec<(SessionId, String)>,
        closed: Vec<SessionId>,
    }

    impl Outbox for Sent {
        fn send(&mut self, to: SessionId, msg: &Message<'_>) {
            match msg {
                Message::TrackerToNode(list) => self.lists.push((
                    to,
                    list.name.to_owned(),
                    list.owners
                        .iter()
                        .map(|o| (o.node_name.to_owned(), o.addr, o.complete))
                        .collect(),
                )),
                Message::Error { reason, .. } => self.errors.push((to, (*reason).to_owned())),
                other => panic!("unexpected message {other:?}"),
            }
        }
        fn close(&mut self, to: SessionId) {
            self.closed.push(to);
        }
    }

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

    fn info(root: u8) -> FileInfo {
        FileInfo {
            size: 100,
            piece_size: 16384,
            root: [root; 32],
        }
    }

    /// Each test node's own secret (derived from its name, so a restart presents the same one).
    fn secret_of(name: &str) -> [u8; 32] {
        *blake3::hash(name.as_bytes()).as_bytes()
    }

    fn join(
        t: &mut TrackerState,
        now: Instant,
        session: SessionId,
        name: &str,
        port: u16,
        out: &mut Sent,
    ) {
        t.connected(session, IP);
        let hello = Message::NodeToTracker(NodeToTracker::Hello {
            node_name: name,
            listen_port: port,
            secret: secret_of(name),
        });
        t.handle(now, session, &hello, out);
    }

    fn have(
        t: &mut TrackerState,
        now: Instant,
        session: SessionId,
        file: &str,
        root: u8,
        out: &mut Sent,
    ) {
        let msg = Message::NodeToTracker(NodeToTracker::Have {
            name: file,
            info: info(root),
            complete: true,
        });
        t.handle(now, session, &msg, out);
    }

    fn need(t: &mut TrackerState, now: Instant, session: SessionId, file: &str, out: &mut Sent) {
        t.handle(
            now,
            session,
            &Message::NodeToTracker(NodeToTracker::Need { name: file }),
            out,
        );
    }

    #[test]
    fn owners_are_listed_at_the_seen_address_with_the_declared_port() {
        let now = Instant::now();
        let mut t = TrackerState::new(TrackerLimits::default());
        let mut out = Sent::default();
        join(&mut t, now, 1, "a", 4000, &mut out);
        have(&mut t, now, 1, "f", 1, &mut out);
        join(&mut t, now, 2, "b", 4001, &mut out);
        need(&mut t, now, 2, "f", &mut out);
        assert_eq!(
            out.lists,
            vec![(
                2,
                "f".to_owned(),
                vec![("a".to_owned(), SocketAddr::new(IP, 4000), true)]
            )]
        );
    }

    #[test]
    fn watchers_are_told_of_changes_after_the_batching_delay() {
        let now = Instant::now();
        let mut t = TrackerState::new(TrackerLimits::default());
        let mut out = Sent::default();
        join(&mut t, now, 1, "a", 4000, &mut out);
        need(&mut t, now, 1, "f", &mut out);
        join(&mut t, now, 2, "b", 4001, &mut out);
        have(&mut t, now, 2, "f", 1, &mut out);
        assert_eq!(out.lists.len(), 1, "only the first answer so far");
        let due = t.poll_timeout().expect("a notification is scheduled");
        assert!(due <= now + Duration::from_secs(1));
        t.handle_timeout(due, &mut out);
        assert_eq!(out.lists.len(), 2);
        assert_eq!(out.lists[1].2.len(), 1);
    }

    #[test]
    fn exit_removes_the_node_from_every_list() {
        let now = Instant::now();
        let mut t = TrackerState::new(TrackerLimits::default());
        let mut out = Sent::default();
        join(&mut t, now, 1, "a", 4000, &mut out);
        have(&mut t, now, 1, "f", 1, &mut out);
        have(&mut t, now, 1, "g", 2, &mut out);
        t.handle(
            now,
            1,
            &Message::NodeToTracker(NodeToTracker::Exit),
            &mut out,
        );
        assert!(t.owners_of("f").is_empty());
        assert!(t.owners_of("g").is_empty());
        assert_eq!(t.owner_entries(), 0);
        assert_eq!(out.closed, vec![1]);
    }

    #[test]
    fn a_vanished_node_is_dropped_after_the_grace_period_unless_it_returns() {
        let now = Instant::now();
        let limits = TrackerLimits::default();
        let grace = limits.grace;
        let mut t = TrackerState::new(limits);
        let mut out = Sent::default();
        join(&mut t, now, 1, "a", 4000, &mut out);
        have(&mut t, now, 1, "f", 1, &mut out);
        join(&mut t, now, 2, "b", 4001, &mut out);
        have(&mut t, now, 2, "f", 1, &mut out);
        t.disconnected(now, 1);
        t.disconnected(now, 2);
        // b comes back within the grace period; a does not.
        join(&mut t, now + grace / 2, 3, "b", 4001, &mut out);
        t.handle_timeout(now + grace + Duration::from_millis(1), &mut out);
        let owners: Vec<String> = t.owners_of("f").into_iter().map(|o| o.0).collect();
        assert_eq!(owners, vec!["b".to_owned()]);
    }

    #[test]
    fn two_versions_of_one_name_are_both_kept() {
        let now = Instant::now();
        let mut t = TrackerState::new(TrackerLimits::default());
        let mut out = Sent::default();
        join(&mut t, now, 1, "a", 4000, &mut out);
        join(&mut t, now, 2, "b", 4001, &mut out);
        have(&mut t, now, 1, "f", 1, &mut out);
        have(&mut t, now, 2, "f", 2, &mut out);
        let roots: HashSet<RootHash> = t.owners_of("f").into_iter().map(|o| o.2.root).collect();
        assert_eq!(roots.len(), 2);
    }

    #[test]
    fn requests_before_hello_and_duplicate_names_are_refused() {
        let now = Instant::now();
        let mut t = TrackerState::new(TrackerLimits::default());
        let mut out = Sent::default();
        t.connected(1, IP);
        need(&mut t, now, 1, "f", &mut out);
        assert_eq!(out.errors, vec![(1, "hello must come first".to_owned())]);
        assert_eq!(out.closed, vec![1]);
        join(&mut t, now, 2, "a", 4000, &mut out);
        // The same name from another host is refused...
        t.connected(3, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8)));
        let hello = Message::NodeToTracker(NodeToTracker::Hello {
            node_name: "a",
            listen_port: 4001,
            secret: secret_of("a"),
        });
        t.handle(now, 3, &hello, &mut out);
        assert_eq!(out.errors[1], (3, "node name already connected".to_owned()));
        // ...from the same host it is the node restarted: it takes the name, the old link closes.
        have(&mut t, now, 2, "f", 1, &mut out);
        join(&mut t, now, 4, "a", 4002, &mut out);
        assert_eq!(out.errors.len(), 2);
        assert_eq!(out.closed, vec![1, 2]);
        assert_eq!(t.owners_of("f")[0].1, SocketAddr::new(IP, 4002));
    }

    #[test]
    fn table_bounds_hold() {
        let now = Instant::now();
        let limits = TrackerLimits {
            max_owners_per_file: 2,
            ..TrackerLimits::default()
        };
        let mut t = TrackerState::new(limits);
        let mut out = Sent::default();
        for (session, name) in ["a", "b", "c"].iter().enumerate() {
            join(&mut t, now, session, name, 4000, &mut out);
            have(&mut t, now, session, "f", 1, &mut out);
        }
        assert_eq!(t.owner_entries(), 2);
        assert_eq!(out.errors.len(), 1);
    }
}
