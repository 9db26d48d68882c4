//! The network of the simulator: links with buffers, uplinks and downlinks with rates and
//! latency, the event queue, and [`Io`], the network as one endpoint's machine sees it.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
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

/// One of an endpoint's connection ids: which end of which link, and the end's output,
/// kept here so that a machine asking for the backlog of each of its thousand connections
/// reads one table and not a thousand links.
#[derive(Clone, Default)]
pub(super) struct Slot {
    pub(super) link: usize,
    pub(super) side: usize,
    pub(super) out: Vec<u8>,
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
    /// A receiver's downlink queue that held an endpoint back has drained enough.
    Wake(usize),
    /// Boxed: the queue moves events about, and a disk result is most of an event's size.
    Disk(usize, Box<DiskDone>),
}

/// An event in the queue, ordered by time, then by when it was queued.
pub(super) struct Queued {
    pub(super) at: Instant,
    seq: u64,
    pub(super) event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Everything but the state machines: links, endpoint access, the event queue.
pub struct Net {
    pub(super) now: Instant,
    pub(super) access: Vec<Access>,
    pub(super) addrs: HashMap<SocketAddr, usize>,
    /// Per endpoint: its own address (the tracker's for endpoint 0).
    pub(super) addr_of: Vec<SocketAddr>,
    pub links: Vec<Link>,
    /// Per endpoint: its connection id n at index n - 1 (ids count up from 1).
    pub(super) conns: Vec<Vec<Slot>>,
    /// Per endpoint: the connections that may have output or a fin to send and an open
    /// window, so a pump looks at those and not at every connection the endpoint ever had.
    pub(super) may_send: Vec<BTreeSet<ConnId>>,
    /// Per endpoint: something reached its machine or its buffers since its timer was read.
    pub(super) timer_stale: Vec<bool>,
    /// The endpoints whose `timer_stale` is set, so reading timers visits those alone.
    pub(super) stale: Vec<usize>,
    /// Per endpoint: it may be able to send now (its machine ran, its uplink freed, its
    /// window or a receiver's queue opened), so the next pump visits it.
    dirty: Vec<bool>,
    /// The endpoints whose `dirty` is set.
    dirty_list: Vec<usize>,
    /// Per endpoint: connections held back by a receiver's full downlink queue, out of
    /// `may_send` until it will have drained enough, by that time.
    held: Vec<BTreeSet<(Instant, ConnId)>>,
    /// Per endpoint: the earliest [`Event::Wake`] queued for it and not yet fired.
    wake_at: Vec<Option<Instant>>,
    pub(super) next_conn: Vec<usize>,
    pub(super) uplink_busy: Vec<bool>,
    pub(super) down_free: Vec<Instant>,
    pub(super) cursor: Vec<usize>,
    pub(super) queue: BinaryHeap<Reverse<Queued>>,
    pub(super) seq: u64,
    /// Lines each endpoint said (result lines and failure lines).
    pub said: Vec<Vec<String>>,
    /// How many lines all endpoints said: a check of what they said can skip the steps
    /// where nobody said anything.
    pub lines_said: usize,
    /// Bytes each endpoint's uplink sent.
    pub sent: Vec<u64>,
    /// Connects made to each endpoint's address (answered or refused).
    pub connects_to: Vec<usize>,
    /// When each endpoint said it downloaded something (its last such line).
    pub(super) done_at: Vec<Option<Instant>>,
    pub(super) stopped: Vec<bool>,
}

impl Net {
    /// A network of `access.len()` endpoints at `addr_of`, none connected yet.
    pub(super) fn new(now: Instant, access: Vec<Access>, addr_of: Vec<SocketAddr>) -> Net {
        let count = access.len();
        Net {
            now,
            access,
            addrs: addr_of.iter().enumerate().map(|(ep, &a)| (a, ep)).collect(),
            addr_of,
            links: Vec::new(),
            conns: vec![Vec::new(); count],
            may_send: vec![BTreeSet::new(); count],
            timer_stale: vec![true; count],
            stale: (0..count).collect(),
            dirty: vec![false; count],
            dirty_list: Vec::new(),
            held: vec![BTreeSet::new(); count],
            wake_at: vec![None; count],
            next_conn: vec![0; count],
            uplink_busy: vec![false; count],
            down_free: vec![now; count],
            cursor: vec![0; count],
            queue: BinaryHeap::new(),
            seq: 0,
            said: vec![Vec::new(); count],
            lines_said: 0,
            sent: vec![0; count],
            connects_to: vec![0; count],
            done_at: vec![None; count],
            stopped: vec![false; count],
        }
    }

    pub(super) fn at(&mut self, t: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at: t,
            seq: self.seq,
            event,
        }));
    }

    /// The (link, end) of `ep`'s connection `conn`.
    pub(super) fn slot(&self, ep: usize, conn: ConnId) -> Option<(usize, usize)> {
        let slot = self.conns[ep].get(conn.0.checked_sub(1)?)?;
        Some((slot.link, slot.side))
    }

    /// The output buffer of `ep`'s connection `conn`.
    pub(super) fn out(&mut self, ep: usize, conn: ConnId) -> Option<&mut Vec<u8>> {
        let slot = self.conns[ep].get_mut(conn.0.checked_sub(1)?)?;
        Some(&mut slot.out)
    }

    pub(super) fn end(&mut self, ep: usize, conn: ConnId) -> Option<&mut End> {
        let (link, side) = self.slot(ep, conn)?;
        Some(&mut self.links[link].ends[side])
    }

    pub(super) fn new_conn(&mut self, ep: usize, link: usize, side: usize) -> ConnId {
        self.next_conn[ep] += 1;
        let conn = ConnId(self.next_conn[ep]);
        self.conns[ep].push(Slot {
            link,
            side,
            out: Vec::new(),
        });
        debug_assert_eq!(self.conns[ep].len(), conn.0);
        self.links[link].ends[side].conn = Some(conn);
        conn
    }

    pub(super) fn rtt_half(&self, a: usize, b: usize) -> Duration {
        self.access[a].latency + self.access[b].latency
    }

    /// `ep`'s timer may have moved: read it again before the next step.
    pub(super) fn stale(&mut self, ep: usize) {
        if !self.timer_stale[ep] {
            self.timer_stale[ep] = true;
            self.stale.push(ep);
        }
    }

    /// `ep` may be able to send: pump it after this step.
    pub(super) fn wake(&mut self, ep: usize) {
        if !self.dirty[ep] {
            self.dirty[ep] = true;
            self.dirty_list.push(ep);
        }
    }

    /// `bytes` sent from `link`'s end `side` arrived: its window may open.
    pub(super) fn arrived(&mut self, link: usize, side: usize, bytes: usize) {
        let end = &mut self.links[link].ends[side];
        let was_full = end.in_flight >= WINDOW;
        end.in_flight = end.in_flight.saturating_sub(bytes);
        if was_full && end.in_flight < WINDOW {
            let (ep, conn) = (end.ep, end.conn);
            if let Some(conn) = conn {
                self.may_send[ep].insert(conn);
            }
            self.wake(ep);
        }
    }

    /// A queued [`Event::Wake`] for `ep` fired.
    pub(super) fn woken(&mut self, ep: usize) {
        if self.wake_at[ep] == Some(self.now) {
            self.wake_at[ep] = None;
        }
        self.wake(ep);
    }

    /// Pumps every endpoint that may be able to send, in ascending order, as a pump of all
    /// of them would (the others would do nothing).
    pub(super) fn pump_dirty(&mut self) {
        let mut eps = std::mem::take(&mut self.dirty_list);
        eps.sort_unstable();
        for &ep in &eps {
            self.dirty[ep] = false;
            // A pump that sent only a fin leaves the uplink idle: go on at once.
            while self.pump(ep) {}
        }
        eps.clear();
        // Pumping wakes nobody, so the list is still empty: keep its allocation.
        if self.dirty_list.is_empty() {
            self.dirty_list = eps;
        }
    }

    /// Starts `ep`'s uplink on its next connection with output, if it is idle. True when it
    /// sent a fin alone and its uplink is still idle.
    fn pump(&mut self, ep: usize) -> bool {
        if self.uplink_busy[ep] {
            return false;
        }
        while let Some(&(t, conn)) = self.held[ep].first() {
            if t > self.now {
                break;
            }
            self.held[ep].pop_first();
            self.may_send[ep].insert(conn);
        }
        let mut ready = Vec::new();
        let mut idle = Vec::new();
        let mut held = Vec::new();
        for &conn in &self.may_send[ep] {
            let Some(slot) = self.conns[ep].get(conn.0.wrapping_sub(1)) else {
                idle.push(conn);
                continue;
            };
            let (link, side) = (slot.link, slot.side);
            let end = &self.links[link].ends[side];
            let fin_due = end.closing && !self.links[link].fin_sent[side];
            if slot.out.is_empty() && !fin_due {
                idle.push(conn);
                continue;
            }
            if end.in_flight >= WINDOW {
                // Back in `may_send` once the window opens as its bytes arrive (`Data`).
                idle.push(conn);
                continue;
            }
            let receiver = self.links[link].ends[1 - side].ep;
            // The receiver's downlink queue as a chunk sent now would find it on arrival.
            let half = self.rtt_half(ep, receiver);
            let arrives = self.now + half;
            let queued = self.down_free[receiver].saturating_duration_since(arrives);
            if queued > DOWNLINK_QUEUE {
                // From then on a chunk sent finds no more than the queue allows; not
                // before, as a downlink's queue only grows but by time.
                let opens = self.down_free[receiver] - half - DOWNLINK_QUEUE;
                held.push((opens, conn));
                continue;
            }
            ready.push((link, side, conn));
        }
        for conn in idle {
            self.may_send[ep].remove(&conn);
        }
        for (opens, conn) in held {
            self.may_send[ep].remove(&conn);
            self.held[ep].insert((opens, conn));
        }
        if ready.is_empty() {
            if let Some(&(t, _)) = self.held[ep].first() {
                if self.wake_at[ep].is_none_or(|w| w > t) {
                    self.wake_at[ep] = Some(t);
                    self.at(t, Event::Wake(ep));
                }
            }
            return false;
        }
        self.cursor[ep] = (self.cursor[ep] + 1) % ready.len();
        let (link, side, conn) = ready[self.cursor[ep]];
        let peer = self.links[link].ends[1 - side].ep;
        let end = &mut self.links[link].ends[side];
        let out = &mut self.conns[ep][conn.0 - 1].out;
        let before = out.len();
        let take = before.min(CHUNK).min(WINDOW - end.in_flight);
        end.in_flight += take;
        let chunk: Vec<u8> = match take == before {
            true => std::mem::take(out),
            false => out.drain(..take).collect(),
        };
        let after = out.len();
        if after == 0 && end.closing {
            *out = Vec::new();
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
            self.stale(ep);
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
        take == 0
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
        net.stale(ep);
        net.wake(ep);
        Io { net, ep }
    }

    /// The network as `ep` sees it, for a look that changes nothing (`poll_timeout`).
    pub(super) fn peek(net: &'a mut Net, ep: usize) -> Io<'a> {
        Io { net, ep }
    }

    fn disk_done(&mut self, done: DiskDone) {
        let now = self.net.now;
        self.net.at(now, Event::Disk(self.ep, Box::new(done)));
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
        self.net.out(ep, conn)
    }

    fn pending_out(&self, conn: ConnId) -> usize {
        let slot = self.net.conns[self.ep].get(conn.0.wrapping_sub(1));
        slot.map_or(0, |slot| slot.out.len())
    }

    fn close(&mut self, conn: ConnId) {
        let ep = self.ep;
        let Some((link, side)) = self.net.slot(ep, conn) else {
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
        if let Some((link, side)) = self.net.slot(self.ep, conn) {
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
        self.net.lines_said += 1;
    }

    fn say_err(&mut self, line: &str) {
        self.net.said[self.ep].push(line.to_owned());
        self.net.lines_said += 1;
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
        let waiting = self.conns[ep]
            .iter()
            .any(|slot| !slot.out.is_empty() && !self.links[slot.link].ends[slot.side].ended);
        match waiting {
            true => Uplink::Blocked,
            false => Uplink::Empty,
        }
    }
}
