//! The swarm simulator: real `node::machine::Node`s and the real `TrackerState` on a
//! simulated network, in simulated time.
//!
//! Every endpoint has an uplink and a downlink rate and an access latency; bytes leave a
//! connection's output buffer in chunks over the sender's uplink (round robin between its
//! connections), cross both latencies and queue on the receiver's downlink. Connects,
//! graceful closes (output flushed first, then the peer sees its end) and drains follow the
//! reactor's rules. Disk jobs run at once on the test's thread, in real tempdir folders.
//! The clock is a value the event queue advances, so a swarm of megabytes takes
//! milliseconds and never waits on the machine.
//!
//! A step costs what it touches, not the swarm's size: after each event or timer only the
//! endpoints that may now send are pumped (their machine ran, their uplink freed, a window
//! opened, or a [`net::Event::Wake`] says a receiver's downlink queue drained), in ascending
//! order as a pump of every endpoint would, and only the timers of machines that ran are read
//! again, into a heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

pub use shoal::node::command::Command;
use shoal::node::machine::{CloseReason, ConnId, Node, NodeIo};
use shoal::node::NodeConfig;
use shoal::storage::Folder;
use shoal::tracker::{TrackerLimits, TrackerState};
use shoal::wire::{self, Decoded, Limits};

mod net;

pub use net::{Access, Net};
// The tables' trace alone reads uplink states.
#[allow(unused_imports)]
pub use net::Uplink;
use net::{Event, Io, NODE_PORT, TRACKER_ADDR, TRACKER_CONGESTED};

/// A node of the swarm, before it starts.
pub struct Spec {
    pub name: &'static str,
    pub access: Access,
    /// Files written into its folder and shared from the start: (name, bytes).
    pub shares: Vec<(&'static str, Vec<u8>)>,
    pub downloads: Vec<&'static str>,
    pub piece_size: u32,
    /// The node's own upload limit in bytes per second (`--max-upload-rate`), if any.
    pub max_upload_rate: Option<u64>,
}

/// The tracker (endpoint 0), the nodes (1..), and the network between them.
pub struct Swarm {
    start: Instant,
    pub net: Net,
    pub tracker: TrackerState,
    pub nodes: Vec<Node>,
    /// Each node's next timer as it last said, read again once `timer_stale`.
    timers: Vec<Option<Instant>>,
    /// The nodes' timers by time: (time, endpoint, generation), an entry being current while
    /// its generation is the endpoint's in `timer_gen` (older ones are dropped when on top).
    timer_queue: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    timer_gen: Vec<u64>,
    dirs: Vec<tempfile::TempDir>,
}

impl Swarm {
    pub fn new(tracker_access: Access, specs: Vec<Spec>) -> Swarm {
        let now = Instant::now();
        let count = specs.len() + 1;
        let mut access = vec![tracker_access];
        let mut addr_of = vec![TRACKER_ADDR];
        for (i, spec) in specs.iter().enumerate() {
            let ep = i + 1;
            // 10.0.1.1 to 10.0.1.254, then 10.0.2.1...: distinct for any swarm a test builds.
            let ip = Ipv4Addr::new(
                10,
                0,
                1 + ((ep - 1) / 254) as u8,
                ((ep - 1) % 254 + 1) as u8,
            );
            access.push(spec.access);
            addr_of.push(SocketAddr::new(IpAddr::V4(ip), NODE_PORT));
        }
        let net = Net::new(now, access, addr_of);
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for spec in specs {
            let dir = tempfile::tempdir().expect("tempdir");
            for (name, bytes) in &spec.shares {
                std::fs::write(dir.path().join(name), bytes).expect("write a shared file");
            }
            let mut config = NodeConfig::new(spec.name);
            config.tracker = TRACKER_ADDR;
            config.dir = dir.path().to_owned();
            config.piece_size = spec.piece_size;
            config.max_upload_rate = spec.max_upload_rate;
            config.uploads = spec.shares.iter().map(|(n, _)| n.to_string()).collect();
            config.downloads = spec.downloads.iter().map(|n| n.to_string()).collect();
            let folder = Folder::open(dir.path()).expect("folder");
            let secret = folder.node_secret().expect("secret");
            nodes.push(Node::new(config, folder, secret, NODE_PORT, now));
            dirs.push(dir);
        }
        let mut swarm = Swarm {
            start: now,
            net,
            tracker: TrackerState::new(TrackerLimits::default()),
            nodes,
            timers: vec![None; count],
            timer_queue: BinaryHeap::new(),
            timer_gen: vec![0; count],
            dirs,
        };
        for i in 0..swarm.nodes.len() {
            let mut io = Io::new(&mut swarm.net, i + 1);
            swarm.nodes[i].handle_start(now, &mut io);
        }
        swarm.net.pump_dirty();
        swarm
    }

    pub fn node_dir(&self, ep: usize) -> &Path {
        self.dirs[ep - 1].path()
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.net.now.saturating_duration_since(self.start)
    }

    /// Simulated seconds from the start to when `ep` said it downloaded its file.
    pub fn took(&self, ep: usize) -> Option<f64> {
        let at = self.net.done_at[ep]?;
        Some(at.saturating_duration_since(self.start).as_secs_f64())
    }

    /// Cuts `ep` off: its machine hears nothing more and every peer sees its connections reset.
    pub fn kill(&mut self, ep: usize) {
        self.net.stopped[ep] = true;
        // Fins it had queued still go, as every other endpoint's would.
        self.net.wake(ep);
        let links: Vec<(usize, usize)> = self.net.conns[ep]
            .iter_mut()
            .map(|slot| {
                slot.out.clear();
                (slot.link, slot.side)
            })
            .collect();
        for (link, side) in links {
            self.net.links[link].ends[side].ended = true;
            let kind = std::io::ErrorKind::ConnectionReset;
            let peer = 1 - side;
            self.end_conn(link, peer, CloseReason::Error(kind));
        }
    }

    /// The tracker comes back with empty tables, as a restarted process would.
    pub fn restart_tracker(&mut self) {
        self.tracker = TrackerState::new(TrackerLimits::default());
        self.net.stopped[0] = false;
        self.net.wake(0);
    }

    /// Runs a command on node `ep` as if typed.
    pub fn command(&mut self, ep: usize, cmd: Command) {
        let now = self.net.now;
        let mut io = Io::new(&mut self.net, ep);
        self.nodes[ep - 1].handle_command(now, cmd, &mut io);
        self.net.pump_dirty();
    }

    /// The earliest timer of any machine, the tracker's first and then the lowest endpoint's
    /// among equal ones.
    fn next_timer(&mut self) -> Option<(Instant, usize)> {
        // A machine's timer moves only when the machine or its buffers did: asking a
        // thousand machines at every step would be most of a big swarm's cost.
        let stale = std::mem::take(&mut self.net.stale);
        for &ep in &stale {
            self.net.timer_stale[ep] = false;
            // The tracker's is read at every step below; a stopped node's never fires.
            if ep == 0 || self.net.stopped[ep] {
                continue;
            }
            let io = Io::peek(&mut self.net, ep);
            let t = self.nodes[ep - 1].poll_timeout(&io);
            if t == self.timers[ep] {
                continue;
            }
            self.timers[ep] = t;
            self.timer_gen[ep] += 1;
            if let Some(t) = t {
                self.timer_queue.push(Reverse((t, ep, self.timer_gen[ep])));
            }
        }
        self.net.stale = stale;
        self.net.stale.clear();
        // Outdated entries pile up under far timers: start over from the current ones.
        if self.timer_queue.len() > 4 * self.timers.len() + 1024 {
            let current = (1..self.timers.len())
                .filter(|&ep| !self.net.stopped[ep])
                .filter_map(|ep| Some(Reverse((self.timers[ep]?, ep, self.timer_gen[ep]))));
            self.timer_queue = current.collect();
        }
        let mut node = None;
        while let Some(&Reverse((t, ep, generation))) = self.timer_queue.peek() {
            if generation == self.timer_gen[ep] && !self.net.stopped[ep] {
                node = Some((t, ep));
                break;
            }
            self.timer_queue.pop();
        }
        let tracker = self.tracker.poll_timeout().map(|t| (t, 0));
        match (tracker, node) {
            (Some((a, _)), Some((b, ep))) if b < a => Some((b, ep)),
            (Some(a), _) => Some(a),
            (None, node) => node,
        }
    }

    /// Runs events and timers in time order until `done` holds (true) or `limit` of simulated
    /// time or a bounded number of steps pass (false).
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Swarm) -> bool) -> bool {
        let end = self.net.now + limit;
        for _ in 0..5_000_000 {
            if done(self) {
                return true;
            }
            let event_at = self.net.queue.peek().map(|Reverse(q)| q.at);
            let timer = self.next_timer();
            let next = [event_at, timer.map(|(t, _)| t)]
                .into_iter()
                .flatten()
                .min();
            if next.is_none_or(|at| at > end) {
                // Nothing happens before `end`: it is where the next call starts.
                self.net.now = self.net.now.max(end);
                return false;
            }
            match (event_at, timer) {
                (Some(e), Some((t, ep))) if t < e => self.fire_timer(t, ep),
                (None, Some((t, ep))) => self.fire_timer(t, ep),
                _ => {
                    let Some(Reverse(q)) = self.net.queue.pop() else {
                        return false;
                    };
                    self.net.now = self.net.now.max(q.at);
                    self.apply(q.event);
                }
            }
            // Only the endpoints this step may have let send: pumping all of them after
            // every step would be most of a big swarm's cost.
            self.net.pump_dirty();
            if self.net.now > end {
                return false;
            }
        }
        false
    }

    fn fire_timer(&mut self, t: Instant, ep: usize) {
        self.net.now = self.net.now.max(t);
        let now = self.net.now;
        let mut io = Io::new(&mut self.net, ep);
        if ep == 0 {
            self.tracker.handle_timeout(now, &mut io);
        } else {
            self.nodes[ep - 1].handle_timeout(now, &mut io);
        }
    }

    /// Feeds an end everything it has unread; keeps what it did not use.
    fn deliver(&mut self, link: usize, side: usize) {
        let end = &mut self.net.links[link].ends[side];
        let (ep, Some(conn)) = (end.ep, end.conn) else {
            return;
        };
        if end.ended || end.input.is_empty() || self.net.stopped[ep] {
            return;
        }
        let input = std::mem::take(&mut end.input);
        let now = self.net.now;
        let mut io = Io::new(&mut self.net, ep);
        let used = if ep == 0 {
            tracker_data(&mut self.tracker, now, conn, &input, &mut io)
        } else {
            self.nodes[ep - 1].handle_data(now, conn, &input, &mut io)
        };
        let end = &mut self.net.links[link].ends[side];
        let mut rest = input;
        match used >= rest.len() {
            // Dropped, not kept: a big swarm's idle links must not hold a chunk each.
            true => rest = Vec::new(),
            false => drop(rest.drain(..used)),
        }
        rest.append(&mut end.input);
        end.input = rest;
    }

    /// Tells an end's endpoint its connection ended.
    fn end_conn(&mut self, link: usize, side: usize, reason: CloseReason) {
        let end = &mut self.net.links[link].ends[side];
        let (ep, Some(conn)) = (end.ep, end.conn) else {
            return;
        };
        if end.ended {
            return;
        }
        end.ended = true;
        end.closing = true;
        // Nothing more is read here: a big swarm's closed links must not keep their buffers.
        end.input = Vec::new();
        self.net.may_send[ep].insert(conn);
        let now = self.net.now;
        let mut io = Io::new(&mut self.net, ep);
        if ep == 0 {
            self.tracker.handle_closed(now, conn.0);
        } else if !io.net.stopped[ep] {
            self.nodes[ep - 1].handle_closed(now, conn, reason, &mut io);
        }
    }

    fn apply(&mut self, event: Event) {
        let now = self.net.now;
        match event {
            Event::Accept(link) => {
                let ep = self.net.links[link].ends[1].ep;
                if self.net.stopped[ep] {
                    self.net.links[link].ends[1].ended = true;
                    let kind = std::io::ErrorKind::ConnectionRefused;
                    self.end_conn(link, 0, CloseReason::ConnectFailed(kind));
                    return;
                }
                let conn = self.net.new_conn(ep, link, 1);
                let from = self.net.links[link].ends[0].ep;
                let peer = SocketAddr::new(self.net.addr_of[from].ip(), 50000 + link as u16);
                self.net.stale(ep);
                if ep == 0 {
                    self.tracker.handle_accept(now, conn.0, peer.ip());
                } else {
                    self.nodes[ep - 1].handle_accept(now, conn, peer);
                }
            }
            Event::Connected(link) => {
                let end = &self.net.links[link].ends[0];
                let (ep, Some(conn)) = (end.ep, end.conn) else {
                    return;
                };
                if end.ended || self.net.stopped[ep] {
                    return;
                }
                let mut io = Io::new(&mut self.net, ep);
                self.nodes[ep - 1].handle_connected(now, conn, &mut io);
            }
            Event::Refused(ep, conn) => {
                if let Some((link, side)) = self.net.slot(ep, conn) {
                    let kind = std::io::ErrorKind::ConnectionRefused;
                    self.end_conn(link, side, CloseReason::ConnectFailed(kind));
                }
            }
            Event::Data(link, side, bytes) => {
                self.net.arrived(link, 1 - side, bytes.len());
                let end = &mut self.net.links[link].ends[side];
                if end.ended {
                    return;
                }
                match end.input.is_empty() {
                    true => end.input = bytes,
                    false => end.input.extend_from_slice(&bytes),
                }
                self.deliver(link, side);
            }
            Event::Fin(link, side) => self.end_conn(link, side, CloseReason::Eof),
            Event::Closed(link, side) => self.end_conn(link, side, CloseReason::Closed),
            Event::Drain(link, side) => {
                let end = &self.net.links[link].ends[side];
                let (ep, Some(conn)) = (end.ep, end.conn) else {
                    return;
                };
                if end.ended || self.net.stopped[ep] {
                    return;
                }
                let mut io = Io::new(&mut self.net, ep);
                if ep == 0 {
                    self.tracker.handle_drain(conn.0, &mut io);
                    self.deliver(link, side);
                } else {
                    self.nodes[ep - 1].handle_drain(now, conn, &mut io);
                }
            }
            Event::Redeliver(link, side) => self.deliver(link, side),
            Event::UplinkFree(ep) => {
                self.net.uplink_busy[ep] = false;
                self.net.wake(ep);
            }
            Event::Wake(ep) => self.net.woken(ep),
            Event::Disk(ep, done) => {
                if self.net.stopped[ep] {
                    return;
                }
                let mut io = Io::new(&mut self.net, ep);
                self.nodes[ep - 1].handle_disk(now, *done, &mut io);
            }
        }
    }
}

/// The tracker's frame loop, as `tracker::run` has it.
fn tracker_data(
    state: &mut TrackerState,
    now: Instant,
    conn: ConnId,
    input: &[u8],
    io: &mut Io<'_>,
) -> usize {
    let limits = Limits::default();
    let mut used = 0;
    while used < input.len() {
        if io.pending_out(conn) > TRACKER_CONGESTED {
            break;
        }
        match wire::decode_frame(&input[used..], &limits) {
            Ok(Decoded::Frame(msg, len)) => {
                used += len;
                state.handle_frame(now, conn.0, &msg, io);
            }
            Ok(Decoded::NeedMore(_)) => break,
            Err(_) => {
                NodeIo::close(io, conn);
                return input.len();
            }
        }
    }
    used
}

/// Deterministic bytes for a file: the same seed, the same file.
pub fn file_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn access(up_mib: f64, down_mib: f64, latency_ms: u64) -> Access {
    Access {
        up: up_mib * f64::from(1 << 20),
        down: down_mib * f64::from(1 << 20),
        latency: Duration::from_millis(latency_ms),
    }
}

pub fn downloaded(swarm: &Swarm, ep: usize, name: &str) -> bool {
    swarm.net.said[ep].iter().any(|l| {
        l.strip_prefix("downloaded ")
            .and_then(|rest| rest.strip_prefix(name))
            .is_some_and(|rest| rest.starts_with(' '))
    })
}

pub fn failed(swarm: &Swarm, ep: usize) -> Option<&String> {
    swarm.net.said[ep].iter().find(|l| l.contains("failed"))
}

pub fn node(name: &'static str, access: Access) -> Spec {
    Spec {
        name,
        access,
        shares: vec![],
        downloads: vec![],
        piece_size: 256 << 10,
        max_upload_rate: None,
    }
}

pub fn owner(name: &'static str, access: Access, file: &[u8]) -> Spec {
    Spec {
        shares: vec![("f.bin", file.to_vec())],
        ..node(name, access)
    }
}

pub fn downloader(name: &'static str, access: Access) -> Spec {
    Spec {
        downloads: vec!["f.bin"],
        ..node(name, access)
    }
}

/// Asserts node `ep` holds exactly `file` as f.bin.
pub fn assert_same(swarm: &Swarm, ep: usize, file: &[u8]) {
    assert_eq!(
        failed(swarm, ep),
        None,
        "node {ep}: {:?}",
        swarm.net.said[ep]
    );
    let got = std::fs::read(swarm.node_dir(ep).join("f.bin")).expect("a downloaded copy");
    assert!(
        got == file,
        "node {ep}'s copy differs from the owner's file"
    );
}
