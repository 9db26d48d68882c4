//! The network of the simulator: links with buffers, uplinks and downlinks with rates and
//! latency, the event queue, and [`Io`], the network as one endpoint's machine sees it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use shoal::node::download::Progress;
use shoal::node::machine::{ConnId, NodeIo};
use shoal::storage::{self, DiskDone, Folder, Hash, PartialFile, SharedFile, WriteTarget};
use shoal::tracker::state::{Outbox, SessionId};
use shoal::wire::{self, Message};

/// Bytes one uplink turn sends.
pub(super) const CHUNK: usize = 64 << 10;
/// Pending output falling to this fires a drain, as the node's reactor has it.
pub(super) const LOW_WATER: usize = shoal::node::machine::WRITE_LOW_WATER;
/// Most bytes one end may have on the wire, sent and not yet delivered: TCP's window,
/// so a sender whose receiver's downlink is busy waits instead of queueing without bound.
pub(super) const WINDOW: usize = 256 << 10;
/// Most a receiver's downlink may have queued before senders hold back: the queue of the
/// router in front of it, with TCP backing off instead of losing packets. Without it a
/// thousand nodes all sending to busy downlinks queue gigabytes in the simulator.
pub(super) const DOWNLINK_QUEUE: Duration = Duration::from_millis(20);
/// Tracker output above this counts as congested.
pub(super) const TRACKER_CONGESTED: usize = 4 << 20;
/// The tracker's address on the simulated network.
pub(super) const TRACKER_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 12340);
/// Every node listens on this port of its own address.
pub(super) const NODE_PORT: u16 = 7000;

/// One endpoint's link to the network.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// Bytes per second out.
    pub up: f64,
    /// Bytes per second in.
    pub down: f64,
    /// One-way delay between this endpoint and the core of the network.
    pub latency: Duration,
}

/// One end of a connection: whose, under which id, and its buffers.
#[derive(Default)]
pub(super) struct End {
    pub(super) ep: usize,
    pub(super) conn: Option<ConnId>,
    pub(super) out: Vec<u8>,
    pub(super) input: Vec<u8>,
    /// Closed by its endpoint: output still flushes, then the peer is told.
    pub(super) closing: bool,
    /// Its endpoint was told it ended (`handle_closed`): nothing more reaches it.
    pub(super) ended: bool,
    /// When the last byte sent towards this end arrives.
    pub(super) last_arrival: Option<Instant>,
    /// Bytes this end sent that have not arrived yet (bounded by [`WINDOW`]).
    pub(super) in_flight: usize,
}

/// A connection: end 0 connected, end 1 accepted.
pub struct Link {
    pub(super) ends: [End; 2],
    pub(super) fin_sent: [bool; 2],
}

/// Something the network does at a time.
pub(super) enum Event {
    Accept(usize),
    Connected(usize),
    Refused(usize, ConnId),
    Data(usize, usize, Vec<u8>),
    Fin(usize, usize),
    /// An end's endpoint hears about the close it asked for.
    Closed(usize, usize),
    Drain(usize, usize),
    Redeliver(usize, usize),
    UplinkFree(usize),
    Disk(usize, DiskDone),
}

/// Everything but the state machines: links, endpoint access, the event queue.
pub struct Net {
    pub(super) now: Instant,
    pub(super) access: Vec<Access>,
    pub(super) addrs: HashMap<SocketAddr, usize>,
    pub links: Vec<Link>,
    /// Per endpoint: its connection ids → (link, end).
    pub(super) conns: Vec<BTreeMap<ConnId, (usize, usize)>>,
    /// Per endpoint: the connections that may have output or a fin to send, so a pump
    /// looks at those and not at every connection the endpoint ever had.
    pub(super) may_send: Vec<BTreeSet<ConnId>>,
    /// Per endpoint: something reached its machine or its buffers since its timer was read.
    pub(super) timer_stale: Vec<bool>,
    pub(super) next_conn: Vec<usize>,
    pub(super) uplink_busy: Vec<bool>,
    pub(super) down_free: Vec<Instant>,
    pub(super) cursor: Vec<usize>,
    pub(super) queue: BinaryHeap<Reverse<(Instant, u64)>>,
    pub(super) events: HashMap<u64, Event>,
    pub(super) seq: u64,
    /// Lines each endpoint said (result lines and failure lines).
    pub said: Vec<Vec<String>>,
    /// Bytes each endpoint's uplink sent.
    pub sent: Vec<u64>,
    /// Connects made to each endpoint's address (answered or refused).
    pub connects_to: Vec<usize>,
    /// When each endpoint said it downloaded something (its last such line).
    pub(super) done_at: Vec<Option<Instant>>,
    pub(super) stopped: Vec<bool>,
}

impl Net {
    pub(super) fn at(&mut self, t: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((t, self.seq)));
        self.events.insert(self.seq, event);
    }

    pub(super) fn end(&mut self, ep: usize, conn: ConnId) -> Option<&mut End> {
        let &(link, side) = self.conns[ep].get(&conn)?;
        Some(&mut self.links[link].ends[side])
    }

    pub(super) fn new_conn(&mut self, ep: usize, link: usize, side: usize) -> ConnId {
        self.next_conn[ep] += 1;
        let conn = ConnId(self.next_conn[ep]);
        self.conns[ep].insert(conn, (link, side));
        self.links[link].ends[side].conn = Some(conn);
        conn
    }

    pub(super) fn rtt_half(&self, a: usize, b: usize) -> Duration {
        self.access[a].latency + self.access[b].latency
    }

    /// Starts `ep`'s uplink on its next connection with output, if it is idle.
    pub(super) fn pump(&mut self, ep: usize) {
        if self.uplink_busy[ep] {
            return;
        }
        let mut ready = Vec::new();
        let mut idle = Vec::new();
        for &conn in &self.may_send[ep] {
            let Some(&(link, side)) = self.conns[ep].get(&conn) else {
                idle.push(conn);
                continue;
            };
            let end = &self.links[link].ends[side];
            let receiver = self.links[link].ends[1 - side].ep;
            // The receiver's downlink queue as a chunk sent now would find it on arrival.
            let arrives = self.now + self.rtt_half(ep, receiver);
            let queued = self.down_free[receiver].saturating_duration_since(arrives);
            if end.in_flight >= WINDOW || queued > DOWNLINK_QUEUE {
                // Stays in `may_send`: the window opens as its bytes arrive.
                continue;
            }
            if !end.out.is_empty() || (end.closing && !self.links[link].fin_sent[side]) {
                ready.push((link, side));
            } else {
                idle.push(conn);
            }
        }
        for conn in idle {
            self.may_send[ep].remove(&conn);
        }
        if ready.is_empty() {
            return;
        }
        self.cursor[ep] = (self.cursor[ep] + 1) % ready.len();
        let (link, side) = ready[self.cursor[ep]];
        let peer = self.links[link].ends[1 - side].ep;
        let end = &mut self.links[link].ends[side];
        let before = end.out.len();
        let take = before.min(CHUNK).min(WINDOW - end.in_flight);
        end.in_flight += take;
        let chunk: Vec<u8> = end.out.drain(..take).collect();
        let after = end.out.len();
        if after == 0 && end.closing {
            end.out = Vec::new();
        }
        let now = self.now;
        let sent_at = now + Duration::from_secs_f64(take as f64 / self.access[ep].up);
        let arrive = sent_at + self.rtt_half(ep, peer);
        let start = arrive.max(self.down_free[peer]);
        let done = start + Duration::from_secs_f64(take as f64 / self.access[peer].down);
        self.down_free[peer] = done;
        let towards = &mut self.links[link].ends[1 - side];
        let deliver = towards.last_arrival.map_or(done, |t| t.max(done));
        towards.last_arrival = Some(deliver);
        if take > 0 {
            self.timer_stale[ep] = true;
            self.sent[ep] += take as u64;
            self.at(deliver, Event::Data(link, 1 - side, chunk));
            self.uplink_busy[ep] = true;
            self.at(sent_at, Event::UplinkFree(ep));
        }
        let closing = self.links[link].ends[side].closing;
        if after == 0 && closing && !self.links[link].fin_sent[side] {
            self.links[link].fin_sent[side] = true;
            self.at(deliver, Event::Fin(link, 1 - side));
        }
        // `after <= LOW_WATER`, spelled so it reads for any low water (the node's is 0).
        if before > LOW_WATER && after.saturating_sub(LOW_WATER) == 0 && !closing {
            self.at(now, Event::Drain(link, side));
        }
    }
}

/// The network as one endpoint's machine sees it.
pub(super) struct Io<'a> {
    pub(super) net: &'a mut Net,
    pub(super) ep: usize,
}

impl<'a> Io<'a> {
    /// The network as `ep` sees it, about to be handed to its machine.
    pub(super) fn new(net: &'a mut Net, ep: usize) -> Io<'a> {
        net.timer_stale[ep] = true;
        Io { net, ep }
    }

    fn disk_done(&mut self, done: DiskDone) {
        let now = self.net.now;
        self.net.at(now, Event::Disk(self.ep, done));
    }
}

impl NodeIo for Io<'_> {
    fn connect(&mut self, addr: SocketAddr) -> std::io::Result<ConnId> {
        let net = &mut *self.net;
        let link = net.links.len();
        net.links.push(Link {
            ends: [End::default(), End::default()],
            fin_sent: [false; 2],
        });
        net.links[link].ends[0].ep = self.ep;
        let conn = net.new_conn(self.ep, link, 0);
        if let Some(&to) = net.addrs.get(&addr) {
            net.connects_to[to] += 1;
        }
        match net.addrs.get(&addr).copied().filter(|&to| !net.stopped[to]) {
            Some(to) => {
                net.links[link].ends[1].ep = to;
                let half = net.rtt_half(self.ep, to);
                let now = net.now;
                net.at(now + half, Event::Accept(link));
                net.at(now + half * 2, Event::Connected(link));
            }
            None => {
                let now = net.now;
                let wait = net.access[self.ep].latency * 2;
                net.links[link].ends[1].ended = true;
                net.at(now + wait, Event::Refused(self.ep, conn));
            }
        }
        Ok(conn)
    }

    fn out_buf(&mut self, conn: ConnId) -> Option<&mut Vec<u8>> {
        let ep = self.ep;
        let end = self.net.end(ep, conn)?;
        if end.closing || end.ended {
            return None;
        }
        self.net.may_send[ep].insert(conn);
        self.net.end(ep, conn).map(|end| &mut end.out)
    }

    fn pending_out(&self, conn: ConnId) -> usize {
        match self.net.conns[self.ep].get(&conn) {
            Some(&(link, side)) => self.net.links[link].ends[side].out.len(),
            None => 0,
        }
    }

    fn close(&mut self, conn: ConnId) {
        let ep = self.ep;
        let Some(&(link, side)) = self.net.conns[ep].get(&conn) else {
            return;
        };
        let end = &mut self.net.links[link].ends[side];
        if end.closing || end.ended {
            return;
        }
        end.closing = true;
        self.net.may_send[ep].insert(conn);
        let now = self.net.now;
        self.net.at(now, Event::Closed(link, side));
    }

    fn resume_reading(&mut self, conn: ConnId) {
        if let Some(&(link, side)) = self.net.conns[self.ep].get(&conn) {
            let now = self.net.now;
            self.net.at(now, Event::Redeliver(link, side));
        }
    }

    fn peer_addr(&self, _conn: ConnId) -> Option<SocketAddr> {
        None
    }

    fn stop(&mut self) {
        self.net.stopped[self.ep] = true;
    }

    fn disk_hash(&mut self, folder: &Folder, file: SharedFile, piece_size: u32) {
        let result = folder.piece_hashes(&file, piece_size);
        self.disk_done(DiskDone::Hashed {
            file,
            piece_size,
            result,
        });
    }

    fn disk_warm(&mut self, _file: &SharedFile, _offset: u64, _len: u64, _key: u64) -> bool {
        false
    }

    fn disk_check(&mut self, mut file: PartialFile, hashes: Vec<Hash>) {
        let layout = file.layout();
        let mut scratch = Vec::new();
        let mut checked = Vec::new();
        for (piece, claimed) in file.claimed_done().into_iter().enumerate() {
            let index = piece as u32;
            let ok = claimed
                && storage::hash_stored_piece(
                    &file,
                    layout.piece_offset(index),
                    layout.piece_len(index),
                    &mut scratch,
                )
                .ok()
                .zip(hashes.get(piece))
                .is_some_and(|(got, want)| got == *want);
            if claimed && !ok {
                let _ = file.mark_bad(index);
            }
            checked.push(ok);
        }
        let name = file.name().to_owned();
        self.disk_done(DiskDone::Checked {
            name,
            file: Box::new(file),
            result: Ok(checked),
        });
    }

    fn disk_finish(&mut self, file: PartialFile) {
        let name = file.name().to_owned();
        let result = file.finish();
        self.disk_done(DiskDone::Finished { name, result });
    }

    fn disk_writeback(&mut self, _file: &mut PartialFile) {}

    fn disk_verify_write(
        &mut self,
        target: &WriteTarget,
        offset: u64,
        data: &[u8],
        want: &Hash,
        tag: u64,
    ) -> bool {
        // As the node's disk worker: small pieces are checked by the caller.
        if data.len() < storage::MIN_VERIFY_LEN {
            return false;
        }
        // Done at once; the verdict comes as a separate event, as from a disk thread.
        let result = target.verify_write(offset, data, want);
        self.disk_done(DiskDone::Verified {
            name: target.name().clone(),
            tag,
            result,
        });
        true
    }

    fn say(&mut self, line: &str) {
        if line.starts_with("downloaded ") {
            self.net.done_at[self.ep] = Some(self.net.now);
        }
        self.net.said[self.ep].push(line.to_owned());
    }

    fn say_err(&mut self, line: &str) {
        self.net.said[self.ep].push(line.to_owned());
    }

    fn progress(&mut self, _name: &str, _progress: &Progress) {}

    fn progress_end(&mut self, _name: &str, _done: bool) {}
}

impl Outbox for Io<'_> {
    fn send(&mut self, to: SessionId, msg: &Message<'_>) {
        if let Some(out) = NodeIo::out_buf(self, ConnId(to)) {
            wire::encode(msg, out).expect("tracker replies encode");
        }
    }

    fn close(&mut self, to: SessionId) {
        NodeIo::close(self, ConnId(to));
    }

    fn congested(&self, to: SessionId) -> bool {
        self.pending_out(ConnId(to)) > TRACKER_CONGESTED
    }
}

/// What an endpoint's uplink is doing at one instant (the tables' trace).
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uplink {
    /// Sending a chunk.
    Busy,
    /// Output is waiting, held back by a window or a receiver's full downlink queue.
    Blocked,
    /// Nothing to send.
    Empty,
}

#[allow(dead_code)]
impl Net {
    /// What `ep`'s uplink is doing now.
    pub fn uplink(&self, ep: usize) -> Uplink {
        if self.uplink_busy[ep] {
            return Uplink::Busy;
        }
        let waiting = self.conns[ep].values().any(|&(link, side)| {
            let end = &self.links[link].ends[side];
            !end.ended && !end.out.is_empty()
        });
        match waiting {
            true => Uplink::Blocked,
            false => Uplink::Empty,
        }
    }
}
