//! Keeping watchers told, and the deadlines: batched pushes coalesced for backed-up
//! watchers, and one min-heap for grace expiries and hello deadlines.
//!
//! The heap uses lazy deletion: cancelling a deadline (a node reconnects, a session
//! says hello or leaves) leaves its entry in place, and a popped entry that no longer
//! matches its node's or session's serial is skipped. So `poll_timeout` is a peek and
//! `handle_timeout` costs O(log n) per deadline, however many nodes wait out their grace.

use std::cmp::{Ordering, Reverse};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::{refuse, NodeEntry, Outbox, OwnerEntry, SessionId, TrackerState};
use crate::wire::{ErrorCode, Message, Owner, TrackerToNode, MAX_OWNERS_PER_REPLY};

/// What a deadline is for.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Node `name` expires unless it reconnected since (serial = its `grace_serial`).
    Grace(String),
    /// Session closes unless it said `Hello` (serial = the session's serial).
    Hello(SessionId),
}

/// One heap entry: soonest first (the heap is a max-heap, hence `Reverse`).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Due {
    at: Reverse<Instant>,
    serial: u64,
    kind: Kind,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.at, Reverse(self.serial)).cmp(&(&other.at, Reverse(other.serial)))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Due {
    pub(super) fn grace(at: Instant, node: String, serial: u64) -> Due {
        Due {
            at: Reverse(at),
            serial,
            kind: Kind::Grace(node),
        }
    }

    pub(super) fn hello(at: Instant, session: SessionId, serial: u64) -> Due {
        Due {
            at: Reverse(at),
            serial,
            kind: Kind::Hello(session),
        }
    }
}

impl TrackerState {
    pub(super) fn push_deadline(&mut self, due: Due) {
        self.deadlines.push(due);
        // Stale entries are dropped when due; under heavy churn, rebuild so the heap stays
        // within a small multiple of the live deadlines (at most one per node and session).
        let live = self.nodes.len() + self.sessions.len();
        if self.deadlines.len() > 2 * live + 64 {
            let heap = std::mem::take(&mut self.deadlines);
            self.deadlines = heap.into_iter().filter(|d| self.is_live(d)).collect();
        }
    }

    /// Whether a deadline still means something (its node or session did not move on).
    fn is_live(&self, due: &Due) -> bool {
        match &due.kind {
            Kind::Grace(name) => self
                .nodes
                .get(name)
                .is_some_and(|n| n.session.is_none() && n.grace_serial == due.serial),
            Kind::Hello(session) => self
                .sessions
                .get(session)
                .is_some_and(|s| s.serial == due.serial && s.node.is_none()),
        }
    }

    /// Deadlines in the heap, stale ones included (for tests: the heap stays bounded).
    pub fn deadlines_queued(&self) -> usize {
        self.deadlines.len()
    }

    pub(super) fn mark_dirty(&mut self, now: Instant, name: &str) {
        if self.files.get(name).is_some_and(|f| !f.watchers.is_empty()) {
            self.dirty.insert(name.to_owned());
            self.notify_at.get_or_insert(now + self.limits.notify_delay);
        }
    }

    pub(super) fn log_table(&self, name: &str) {
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
                    super::short_hex(&o.info.root),
                    part
                )
            })
            .collect();
        log::debug!("owners of {name}: [{}]", listed.join(", "));
    }

    /// When [`TrackerState::handle_timeout`] should next be called (may be early, never late).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = self.deadlines.peek().map(|d| d.at.0);
        match (due, self.notify_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Expires nodes past their grace period, closes sessions that never said hello, and
    /// tells watchers of changed owner lists (or owes them the list if they are backed up).
    pub fn handle_timeout(&mut self, now: Instant, out: &mut dyn Outbox) {
        while self.deadlines.peek().is_some_and(|d| d.at.0 <= now) {
            let Some(due) = self.deadlines.pop() else {
                break;
            };
            if !self.is_live(&due) {
                continue;
            }
            match due.kind {
                Kind::Grace(node) => {
                    log::info!("node {node} did not come back: dropped from every owner list");
                    self.forget_node(now, &node);
                }
                Kind::Hello(session) => {
                    log::info!("session {session} said no hello in time: closing");
                    refuse(out, session, ErrorCode::Protocol, "no hello in time");
                    // Closing; no second deadline for it.
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.serial = 0;
                    }
                }
            }
        }
        if self.notify_at.is_some_and(|t| t <= now) {
            self.notify_at = None;
            for name in std::mem::take(&mut self.dirty) {
                let Some(file) = self.files.get(&name) else {
                    continue;
                };
                for &watcher in &file.watchers {
                    if out.congested(watcher) {
                        if let Some(s) = self.sessions.get_mut(&watcher) {
                            if !s.owed.contains(&name) {
                                s.owed.insert(name.clone());
                            }
                        }
                    } else {
                        send_owners(out, watcher, &name, &file.owners, &self.nodes);
                    }
                }
            }
        }
    }

    /// `session`'s output drained: sends the latest list of each file it is owed, as long
    /// as its output has room (the rest stay owed until the next drain).
    pub fn handle_drain(&mut self, session: SessionId, out: &mut dyn Outbox) {
        let Some(sess) = self.sessions.get_mut(&session) else {
            return;
        };
        while !out.congested(session) {
            let Some(name) = sess.owed.pop_first() else {
                break;
            };
            if let Some(file) = self.files.get(&name) {
                send_owners(out, session, &name, &file.owners, &self.nodes);
            }
        }
    }
}

/// Sends the owner list, complete owners first, capped at `MAX_OWNERS_PER_REPLY`.
///
/// A list longer than a reply is cut fairly: each host's first entry comes before any
/// host's second, and so on, so hosts holding many entries cannot fill every reply and
/// keep an owner elsewhere from ever being listed.
pub(super) fn send_owners(
    out: &mut dyn Outbox,
    to: SessionId,
    name: &str,
    owners: &[OwnerEntry],
    nodes: &HashMap<String, NodeEntry>,
) {
    let mut listed: Vec<Owner<'_>> = owners
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
        .collect();
    if listed.len() > MAX_OWNERS_PER_REPLY {
        let mut per_host: HashMap<IpAddr, usize> = HashMap::new();
        let mut ranked: Vec<(usize, Owner<'_>)> = listed
            .into_iter()
            .map(|o| {
                let seen = per_host.entry(o.addr.ip()).or_default();
                *seen += 1;
                (*seen, o)
            })
            .collect();
        // Stable: at one rank, complete owners still come first.
        ranked.sort_by_key(|(rank, _)| *rank);
        listed = ranked
            .into_iter()
            .take(MAX_OWNERS_PER_REPLY)
            .map(|(_, o)| o)
            .collect();
    }
    out.send(
        to,
        &Message::TrackerToNode(TrackerToNode {
            name,
            owners: listed,
        }),
    );
}
