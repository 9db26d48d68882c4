//! Stateful: an arbitrary sequence of connects, disconnects, messages and clock
//! advances drives one `TrackerState`, the way the reactor glue in
//! `tracker::run` does (closes asked for through the `Outbox` become
//! disconnects, due deadlines are handled after every step).
//!
//! Every message crosses the codec first (`encode`, then `decode_frame` under the
//! tracker's frame limit) and is fed only if it decodes, as from the network.
//!
//! Checked after every step:
//! - the tables stay bounded: `owner_entries() <= max_files * max_owners_per_file`,
//!   and every owner list (`owners_of`) has at most `max_owners_per_file` entries,
//!   at most one per (node, version);
//! - no owner entry dangles: the owner lists of every name ever fed add up to
//!   `owner_entries()` (an entry whose node is gone would be counted but not listed);
//! - the `Outbox` only gets owner lists and errors, for connected sessions, and
//!   `encode` accepts every one of them;
//! - once due deadlines are handled, `poll_timeout()` is `None` or later than now;
//! - the memory budgets hold: `memory_used() <= total_budget`, and every known node's
//!   `node_memory` is at most `node_budget`;
//! - backpressure: a congested session (the driver marks sessions congested and
//!   drains them, as the glue's `pending_out` bound would) is sent no owner list:
//!   its frames wait unread, as `on_data` leaves them, and pushes to it are owed
//!   instead (at most one per file: `owed() <= max_files_per_node`); when it drains
//!   it gets each owed file's list at most once, before its waiting frames are fed.
//!
//! At the end every session disconnects and the clock passes the grace period and
//! the hello deadline: then no owner entry, no accounted byte and no deadline may be left.
//!
//! `SHOAL_FUZZ_TRACE=1` prints every step and every reply (for triage).
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use shoal::tracker::state::{Outbox, SessionId, TrackerLimits, TrackerState};
use shoal::wire::{
    decode_frame, encode, BlockRequest, Decoded, ErrorCode, FileInfo, Limits, Message,
    NodeToTracker, RootHash, SizeInformation, TrackerToNode, MIN_PIECE_SIZE,
};

/// Whether `SHOAL_FUZZ_TRACE` is set: then every step is printed (for triage).
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SHOAL_FUZZ_TRACE").is_some())
}

/// Small tables, so the fuzzer reaches every bound within a few steps.
fn limits() -> TrackerLimits {
    TrackerLimits {
        grace: Duration::from_secs(2),
        max_files: 8,
        max_owners_per_file: 4,
        max_files_per_node: 4,
        notify_delay: Duration::from_millis(100),
        max_versions_per_host: 2,
        max_owners_per_host: 3,
        node_budget: 1800,
        total_budget: 6000,
        hello_timeout: Duration::from_secs(3),
    }
}

/// The frame limit `tracker::run` decodes node frames under (its constant is private).
const TRACKER_LIMITS: Limits = Limits {
    max_payload: 64 << 10,
};

/// Sessions are `0..SESSIONS`; the reactor reuses an id once its connection is gone.
const SESSIONS: usize = 16;

/// Longest single clock advance.
const MAX_ADVANCE_MS: u64 = 10_000;

/// Most steps in one run.
const MAX_STEPS: usize = 512;

/// File and node names most messages use: more files than `max_files`.
const NAMES: [&str; 11] = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];

/// Addresses connections come from (nodes behind one address share it).
const IPS: [IpAddr; 3] = [
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];

/// One thing that happens to the tracker.
#[derive(Debug)]
enum Op<'a> {
    /// A connection arrives on `session` (ignored if that session is live).
    Connect { session: SessionId, ip: IpAddr },
    /// `session`'s connection goes away.
    Disconnect { session: SessionId },
    /// `session` sends a message (fed only if it encodes and decodes).
    Send {
        session: SessionId,
        msg: Message<'a>,
    },
    /// `session` sends raw bytes; every frame they decode to is fed, a bad frame closes it.
    Raw { session: SessionId, bytes: &'a [u8] },
    /// The clock moves on by this many milliseconds.
    Advance { ms: u64 },
    /// A timer fires whether or not anything is due.
    Wake,
    /// `session`'s output backs up past the glue's bound.
    Congest { session: SessionId },
    /// `session`'s output drains.
    Drain { session: SessionId },
}

/// Most bytes a congested session's unread input holds in the driver (the read buffer's cap).
const MAX_UNREAD: usize = 4096;

/// A name from `NAMES`, sometimes an arbitrary string (which the codec may refuse).
fn name<'a>(u: &mut Unstructured<'a>) -> Result<&'a str> {
    Ok(if u.ratio(7, 8)? {
        NAMES[u.choose_index(NAMES.len())?]
    } else {
        u.arbitrary()?
    })
}

/// One of four roots most of the time, so versions collide; sometimes any.
fn root(u: &mut Unstructured<'_>) -> Result<RootHash> {
    Ok(if u.ratio(7, 8)? {
        [u.int_in_range(0..=3u8)?; 32]
    } else {
        u.arbitrary()?
    })
}

/// A file version: usually a valid small layout, sometimes raw fields.
fn info(u: &mut Unstructured<'_>) -> Result<FileInfo> {
    let root = root(u)?;
    Ok(if u.ratio(7, 8)? {
        FileInfo {
            size: u64::from(u.int_in_range(0..=3u32)?) * 40_000,
            piece_size: MIN_PIECE_SIZE,
            root,
        }
    } else {
        FileInfo {
            size: u.arbitrary()?,
            piece_size: u.arbitrary()?,
            root,
        }
    })
}

/// A message a node (or a confused peer) might send the tracker.
fn message<'a>(u: &mut Unstructured<'a>) -> Result<Message<'a>> {
    Ok(match u.int_in_range(0..=11)? {
        0 | 1 => Message::NodeToTracker(NodeToTracker::Hello {
            node_name: name(u)?,
            listen_port: if u.arbitrary()? { 4000 } else { u.arbitrary()? },
            secret: [u.int_in_range(0..=1)?; 32],
        }),
        2 | 3 => Message::NodeToTracker(NodeToTracker::Have {
            name: name(u)?,
            info: info(u)?,
            complete: u.arbitrary()?,
        }),
        4 => Message::NodeToTracker(NodeToTracker::Need { name: name(u)? }),
        5 => Message::NodeToTracker(NodeToTracker::Unneed { name: name(u)? }),
        6 => Message::NodeToTracker(NodeToTracker::Drop {
            name: name(u)?,
            root: root(u)?,
        }),
        7 => {
            if u.arbitrary()? {
                Message::NodeToTracker(NodeToTracker::Exit)
            } else {
                Message::NodeToTracker(NodeToTracker::Synced)
            }
        }
        8 => Message::KeepAlive,
        9 => Message::Error {
            code: ErrorCode::from_u8(u.int_in_range(1..=5)?).unwrap_or(ErrorCode::Protocol),
            reason: u.arbitrary()?,
        },
        10 => Message::HavePiece {
            root: root(u)?,
            piece: u.arbitrary()?,
        },
        // Peer-to-peer messages sent to the wrong place.
        _ => match u.int_in_range(0..=3)? {
            0 => Message::SizeInformation(SizeInformation::Question {
                name: name(u)?,
                root: None,
            }),
            1 => Message::Request(BlockRequest {
                root: root(u)?,
                piece: u.arbitrary()?,
                offset: 0,
                len: 1,
            }),
            2 => Message::TrackerToNode(TrackerToNode {
                name: name(u)?,
                owners: Vec::new(),
            }),
            _ => Message::HashRequest {
                root: root(u)?,
                first: 0,
                count: 1,
            },
        },
    })
}

/// The next operation, from the fuzz input.
fn op<'a>(u: &mut Unstructured<'a>) -> Result<Op<'a>> {
    let session = u.choose_index(SESSIONS)?;
    Ok(match u.int_in_range(0..=17)? {
        0..=2 => Op::Connect {
            session,
            ip: IPS[u.choose_index(IPS.len())?],
        },
        3 => Op::Disconnect { session },
        4..=10 => Op::Send {
            session,
            msg: message(u)?,
        },
        11 => {
            let len = u.int_in_range(0..=128)?;
            Op::Raw {
                session,
                bytes: u.bytes(len)?,
            }
        }
        12 | 13 => Op::Advance {
            ms: if u.arbitrary()? {
                u64::from(u.arbitrary::<u8>()?)
            } else {
                u.int_in_range(0..=MAX_ADVANCE_MS)?
            },
        },
        14 | 15 => Op::Wake,
        16 => Op::Congest { session },
        _ => Op::Drain { session },
    })
}

/// The `Outbox`: checks every reply and collects the closes the glue will carry out.
#[derive(Default)]
struct Sink {
    /// Sessions whose connection is live (the driver keeps this up to date).
    live: BTreeSet<SessionId>,
    /// Sessions the tracker asked to close, not yet disconnected.
    closing: Vec<SessionId>,
    /// Live sessions whose output is backed up.
    congested: BTreeSet<SessionId>,
    /// Names of the lists sent while `drained` runs, to check each goes at most once.
    drain_lists: Option<Vec<String>>,
}

impl Outbox for Sink {
    fn send(&mut self, to: SessionId, msg: &Message<'_>) {
        if tracing() {
            eprintln!("  to {to}: {msg:?}");
        }
        assert!(
            self.live.contains(&to),
            "sent to session {to}, which is not connected: {msg:?}"
        );
        assert!(
            matches!(msg, Message::TrackerToNode(_) | Message::Error { .. }),
            "the tracker sent a message it has no business sending: {msg:?}"
        );
        if let Message::TrackerToNode(list) = msg {
            assert!(list.owners.len() <= limits().max_owners_per_file);
            if let Some(names) = &mut self.drain_lists {
                assert!(
                    !names.iter().any(|n| n == list.name),
                    "one drain sent two lists of {}",
                    list.name
                );
                names.push(list.name.to_owned());
            }
        }
        // Errors (a refusal before a close) may still go; owner lists may not.
        assert!(
            !(self.congested.contains(&to) && matches!(msg, Message::TrackerToNode(_))),
            "an owner list sent to session {to} while its output is backed up: {msg:?}"
        );
        let mut frame = Vec::new();
        if let Err(e) = encode(msg, &mut frame) {
            panic!("the tracker sent a message encode refuses ({e}): {msg:?}");
        }
    }

    fn close(&mut self, to: SessionId) {
        assert!(
            self.live.contains(&to),
            "closed session {to}, which is not connected"
        );
        self.closing.push(to);
    }

    fn congested(&self, to: SessionId) -> bool {
        self.congested.contains(&to)
    }
}

/// The tracker, its clock, and what the driver knows.
struct Sim {
    tracker: TrackerState,
    now: Instant,
    sink: Sink,
    /// Every name fed to the tracker in a decoded frame (file names among them).
    names: BTreeSet<String>,
    /// Input of congested sessions, waiting unread as in the reactor's read buffer.
    unread: BTreeMap<SessionId, Vec<u8>>,
}

impl Sim {
    /// A tracker with small limits and no sessions.
    fn new() -> Sim {
        Sim {
            tracker: TrackerState::new(limits()),
            now: Instant::now(),
            sink: Sink::default(),
            names: BTreeSet::new(),
            unread: BTreeMap::new(),
        }
    }

    /// Applies one operation, then does what the glue does after any event.
    fn apply(&mut self, op: Op<'_>) {
        if tracing() {
            eprintln!("{op:?}");
        }
        match op {
            Op::Connect { session, ip } => {
                if self.sink.live.insert(session) {
                    self.tracker.handle_accept(self.now, session, ip);
                }
            }
            Op::Disconnect { session } => self.disconnect(session),
            Op::Send { session, msg } => {
                let mut frame = Vec::new();
                if encode(&msg, &mut frame).is_ok() {
                    self.deliver(session, &frame);
                }
            }
            Op::Raw { session, bytes } => self.deliver(session, bytes),
            Op::Advance { ms } => self.now += Duration::from_millis(ms),
            Op::Wake => self.tracker.handle_timeout(self.now, &mut self.sink),
            Op::Congest { session } => {
                if self.sink.live.contains(&session) {
                    self.sink.congested.insert(session);
                }
            }
            Op::Drain { session } => {
                if self.sink.congested.remove(&session) {
                    self.sink.drain_lists = Some(Vec::new());
                    self.tracker.handle_drain(session, &mut self.sink);
                    self.sink.drain_lists = None;
                    assert_eq!(self.tracker.owed(session), 0, "owed lists left after a drain");
                    let waiting = self.unread.remove(&session).unwrap_or_default();
                    self.deliver(session, &waiting);
                }
            }
        }
        self.settle();
        self.check();
    }

    /// Feeds every frame `bytes` decode to, as `on_data` does; a bad frame closes the session.
    fn deliver(&mut self, session: SessionId, mut bytes: &[u8]) {
        if !self.sink.live.contains(&session) {
            return;
        }
        while !bytes.is_empty() {
            if self.sink.congested.contains(&session) {
                let unread = self.unread.entry(session).or_default();
                let room = MAX_UNREAD.saturating_sub(unread.len());
                unread.extend_from_slice(&bytes[..bytes.len().min(room)]);
                break;
            }
            match decode_frame(bytes, &TRACKER_LIMITS) {
                Ok(Decoded::Frame(msg, used)) => {
                    bytes = &bytes[used..];
                    self.note_names(&msg);
                    self.tracker.handle_frame(self.now, session, &msg, &mut self.sink);
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(_) => {
                    self.sink.closing.push(session);
                    break;
                }
            }
        }
    }

    /// Remembers the names a message carries, to look their owner lists up later.
    fn note_names(&mut self, msg: &Message<'_>) {
        if let Message::NodeToTracker(req) = msg {
            let name = match req {
                NodeToTracker::Hello { node_name, .. } => node_name,
                NodeToTracker::Have { name, .. }
                | NodeToTracker::Need { name }
                | NodeToTracker::Unneed { name }
                | NodeToTracker::Drop { name, .. } => name,
                NodeToTracker::Exit | NodeToTracker::Synced => return,
            };
            self.names.insert((*name).to_owned());
        }
    }

    /// A live session's connection goes away.
    fn disconnect(&mut self, session: SessionId) {
        if self.sink.live.remove(&session) {
            self.sink.congested.remove(&session);
            self.unread.remove(&session);
            self.tracker.handle_closed(self.now, session);
        }
    }

    /// Carries out asked-for closes and handles due deadlines, until neither is left.
    fn settle(&mut self) {
        for _ in 0..4 {
            for session in std::mem::take(&mut self.sink.closing) {
                self.disconnect(session);
            }
            match self.tracker.poll_timeout() {
                Some(at) if at <= self.now => self.tracker.handle_timeout(self.now, &mut self.sink),
                _ if self.sink.closing.is_empty() => return,
                _ => {}
            }
        }
        panic!("deadlines or closes still pending after four rounds at one instant");
    }

    /// The invariants that hold between any two steps.
    fn check(&self) {
        let limits = limits();
        let entries = self.tracker.owner_entries();
        assert!(entries <= limits.max_files * limits.max_owners_per_file);
        let mut listed = 0;
        for name in &self.names {
            let owners = self.tracker.owners_of(name);
            assert!(
                owners.len() <= limits.max_owners_per_file,
                "{name} has {} owners",
                owners.len()
            );
            let versions: HashSet<(&str, RootHash)> =
                owners.iter().map(|o| (o.0.as_str(), o.2.root)).collect();
            assert_eq!(
                versions.len(),
                owners.len(),
                "{name}: a (node, version) listed twice"
            );
            listed += owners.len();
        }
        assert_eq!(listed, entries, "owner entries not listed under any name");
        if let Some(at) = self.tracker.poll_timeout() {
            assert!(at > self.now, "a handled deadline is still due");
        }
        assert!(self.tracker.memory_used() <= limits.total_budget);
        for node in self.tracker.node_names() {
            let used = self.tracker.node_memory(&node).unwrap_or(0);
            assert!(used <= limits.node_budget, "{node} costs {used} bytes");
        }
        for &session in &self.sink.congested {
            assert!(self.tracker.owed(session) <= limits.max_files_per_node);
        }
    }

    /// Everyone leaves and the grace period passes: nothing may be left behind.
    fn finish(&mut self) {
        for session in std::mem::take(&mut self.sink.live) {
            self.tracker.handle_closed(self.now, session);
        }
        self.sink.congested.clear();
        let limits = limits();
        self.now += limits.grace.max(limits.notify_delay).max(limits.hello_timeout)
            + Duration::from_millis(1);
        self.tracker.handle_timeout(self.now, &mut self.sink);
        assert_eq!(
            self.tracker.owner_entries(),
            0,
            "owner entries outlived their nodes"
        );
        assert_eq!(
            self.tracker.poll_timeout(),
            None,
            "a deadline outlived every node"
        );
        assert_eq!(self.tracker.memory_used(), 0, "accounted bytes outlived their nodes");
        for name in &self.names {
            assert!(self.tracker.owners_of(name).is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut sim = Sim::new();
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = op(&mut u) else { break };
        sim.apply(op);
    }
    sim.finish();
});
