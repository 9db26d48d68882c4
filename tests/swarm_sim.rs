//! One download driven in simulated time against a seeded model of owners.
//!
//! Owners here are models: each has a rate, a latency, the pieces it holds, and
//! a behaviour (honest, lying about some pieces, vanishing at some time,
//! refusing). Every message crosses the real codec (encoded, then decoded on
//! delivery). The clock is a value advanced by the event queue, so a scenario
//! runs in milliseconds and repeats exactly from its seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use shoal::node::bitfield::Bitfield;
use shoal::node::download::{Download, DownloadConfig, Notice, PeerIo};
use shoal::node::peer::SlotId;
use shoal::storage::{self, Layout, MemStore};
use shoal::wire::{
    self, BlockRequest, Decoded, ErrorCode, FileInfo, Limits, Message, Owner, SizeInformation,
};

/// How a model owner behaves.
#[derive(Clone, Debug)]
struct Model {
    name: String,
    /// Bytes per second it sends at.
    rate: f64,
    /// One-way delay.
    latency: Duration,
    /// Pieces it holds.
    has: Bitfield,
    /// Pieces it corrupts (with a valid CRC: the frame is fine, the content is not).
    lies: HashSet<u32>,
    /// When it vanishes (connects refused from then on).
    dies_at: Option<Instant>,
    /// Whether its connections are reset when it vanishes (false: it just goes silent).
    resets: bool,
}

/// Something the network will do at a time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Connected(SlotId),
    Closed(SlotId),
    /// An encoded frame for the downloader on `slot`.
    Frame(SlotId, Vec<u8>),
    /// An owner's uplink finished sending its current block.
    UplinkFree(usize),
}

/// The simulated network: owners, connections, and the event queue.
struct Net {
    file: Vec<u8>,
    info: FileInfo,
    layout: Layout,
    hashes: Vec<storage::Hash>,
    owners: Vec<Model>,
    addrs: Vec<SocketAddr>,
    /// Connected slots → owner index.
    slots: HashMap<SlotId, usize>,
    /// Each owner's queue of blocks to send, in request order: (slot, request).
    uplinks: Vec<VecDeque<(SlotId, BlockRequest)>>,
    /// Whether each owner's uplink is sending a block now.
    sending: Vec<bool>,
    queue: BinaryHeap<Reverse<(Instant, u64, Event)>>,
    seq: u64,
    now: Instant,
    /// Bytes of data each owner delivered (sent frames of piece data).
    sent: Vec<u64>,
}

impl Net {
    fn new(file: Vec<u8>, piece_size: u32, owners: Vec<Model>, now: Instant) -> Net {
        let layout = Layout {
            size: file.len() as u64,
            piece_size,
        };
        let hashes: Vec<storage::Hash> = (0..layout.piece_count())
            .map(|p| {
                let start = layout.piece_offset(p) as usize;
                storage::hash_piece(&file[start..start + layout.piece_len(p) as usize])
            })
            .collect();
        let info = FileInfo {
            size: layout.size,
            piece_size,
            root: storage::root_hash(layout, &hashes),
        };
        let addrs = (0..owners.len())
            .map(|i| SocketAddr::from(([10, 0, 0, 1 + i as u8], 7000)))
            .collect();
        Net {
            uplinks: vec![VecDeque::new(); owners.len()],
            sending: vec![false; owners.len()],
            sent: vec![0; owners.len()],
            file,
            info,
            layout,
            hashes,
            owners,
            addrs,
            slots: HashMap::new(),
            queue: BinaryHeap::new(),
            seq: 0,
            now,
        }
    }

    fn at(&mut self, when: Instant, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((when, self.seq, event)));
    }

    fn alive(&self, owner: usize, at: Instant) -> bool {
        self.owners[owner].dies_at.is_none_or(|t| at < t)
    }

    fn reply(&mut self, slot: SlotId, owner: usize, msg: &Message<'_>, extra_delay: Duration) {
        let mut frame = Vec::new();
        wire::encode(msg, &mut frame).expect("model replies are valid");
        let when = self.now + self.owners[owner].latency + extra_delay;
        self.at(when, Event::Frame(slot, frame));
    }

    /// The owner's side of the protocol.
    fn owner_receives(&mut self, slot: SlotId, owner: usize, frame: &[u8]) {
        let Ok(Decoded::Frame(msg, _)) = wire::decode_frame(frame, &Limits::default()) else {
            panic!("the downloader sent a frame that does not decode");
        };
        let model = self.owners[owner].clone();
        match msg {
            Message::SizeInformation(SizeInformation::Question { .. }) => {
                let answer = Message::SizeInformation(SizeInformation::Answer {
                    name: "f",
                    info: self.info,
                    have: model.has.as_bytes(),
                });
                self.reply(slot, owner, &answer, Duration::ZERO);
            }
            Message::HashRequest { root, first, count } => {
                let hashes = self.hashes[first as usize..(first + count) as usize].concat();
                let msg = Message::Hashes {
                    root,
                    first,
                    hashes: &hashes,
                };
                self.reply(slot, owner, &msg, Duration::ZERO);
            }
            Message::Request(r) => {
                if !model.has.get(r.piece) {
                    let refusal = Message::Error {
                        code: ErrorCode::BadRequest,
                        reason: "piece not held here",
                    };
                    self.reply(slot, owner, &refusal, Duration::ZERO);
                    return;
                }
                self.uplinks[owner].push_back((slot, r));
                self.start_sending(owner);
            }
            Message::Cancel(r) => self.uplinks[owner].retain(|&(s, q)| !(s == slot && q == r)),
            Message::KeepAlive => {}
            other => panic!("unexpected message to an owner: {other:?}"),
        }
    }
}

impl Net {
    /// Starts the owner's next queued block if its uplink is idle: it leaves after len / rate.
    fn start_sending(&mut self, owner: usize) {
        if self.sending[owner] {
            return;
        }
        let Some(&(_, r)) = self.uplinks[owner].front() else {
            return;
        };
        self.sending[owner] = true;
        let took = Duration::from_secs_f64(f64::from(r.len) / self.owners[owner].rate);
        self.at(self.now + took, Event::UplinkFree(owner));
    }

    /// The block at the head of the owner's uplink is fully sent: deliver it, start the next.
    fn uplink_free(&mut self, owner: usize) {
        self.sending[owner] = false;
        if let Some((slot, r)) = self.uplinks[owner].pop_front() {
            let start = (self.layout.piece_offset(r.piece) + u64::from(r.offset)) as usize;
            let mut data = self.file[start..start + r.len as usize].to_vec();
            if self.owners[owner].lies.contains(&r.piece) {
                data[0] ^= 0xff;
            }
            self.sent[owner] += u64::from(r.len);
            let block = Message::FileCommunication(wire::Block {
                root: r.root,
                piece: r.piece,
                offset: r.offset,
                data: &data,
            });
            self.reply(slot, owner, &block, Duration::ZERO);
        }
        self.start_sending(owner);
    }
}

impl PeerIo for Net {
    fn connect(&mut self, slot: SlotId, addr: SocketAddr) {
        let owner = self
            .addrs
            .iter()
            .position(|&a| a == addr)
            .expect("known owner");
        let when = self.now + self.owners[owner].latency * 2;
        if self.alive(owner, when) {
            self.slots.insert(slot, owner);
            self.at(when, Event::Connected(slot));
        } else {
            self.at(when, Event::Closed(slot));
        }
    }

    fn send(&mut self, slot: SlotId, msg: &Message<'_>) {
        let Some(&owner) = self.slots.get(&slot) else {
            return;
        };
        if !self.alive(owner, self.now) {
            return;
        }
        let mut frame = Vec::new();
        wire::encode(msg, &mut frame).expect("downloader messages are valid");
        self.owner_receives(slot, owner, &frame);
    }

    fn disconnect(&mut self, slot: SlotId) {
        if let Some(owner) = self.slots.remove(&slot) {
            self.uplinks[owner].retain(|&(s, _)| s != slot);
        }
    }
}

/// How a simulated download ended.
#[derive(Debug)]
enum Outcome {
    Complete { at: Duration },
    Failed { reason: String },
}

/// Runs one download to its end (bounded in events), checking the bytes on completion.
fn simulate(net: &mut Net, config: DownloadConfig) -> (Outcome, Download<MemStore>) {
    let start = net.now;
    let mut dl: Download<MemStore> = Download::new("f", "me", config, start);
    let listed: Vec<(String, SocketAddr)> = net
        .owners
        .iter()
        .map(|o| o.name.clone())
        .zip(net.addrs.clone())
        .collect();
    {
        let info = net.info;
        let owners: Vec<Owner<'_>> = listed
            .iter()
            .zip(&net.owners)
            .map(|((name, addr), m)| Owner {
                node_name: name,
                addr: *addr,
                info,
                complete: m.has.is_full(),
            })
            .collect();
        dl.handle_owners(start, &owners, net);
    }
    // Owners that die take their connections down at their time of death.
    for (i, model) in net.owners.clone().iter().enumerate() {
        if let (Some(t), true) = (model.dies_at, model.resets) {
            for (&slot, &owner) in net.slots.clone().iter() {
                if owner == i {
                    net.at(t, Event::Closed(slot));
                }
            }
        }
    }
    for _ in 0..2_000_000 {
        while let Some(notice) = dl.poll_notice() {
            match notice {
                Notice::NeedStore { info } => {
                    dl.attach_store(net.now, MemStore::new(info.size), &[], net)
                }
                Notice::PieceDone(_) => {}
                Notice::Complete => {
                    let store = dl.take_store().expect("store attached");
                    assert!(store.bytes() == &net.file[..], "completed with wrong bytes");
                    dl.finished();
                    return (
                        Outcome::Complete {
                            at: net.now - start,
                        },
                        dl,
                    );
                }
                Notice::Failed(reason) => return (Outcome::Failed { reason }, dl),
            }
        }
        let timer = dl.poll_timeout();
        let next_event = net.queue.peek().map(|Reverse((t, _, _))| *t);
        match (timer, next_event) {
            (Some(t), Some(e)) if t < e => {
                net.now = net.now.max(t);
                dl.handle_timeout(net.now, net);
            }
            (_, Some(_)) => {
                let Some(Reverse((t, _, event))) = net.queue.pop() else {
                    unreachable!()
                };
                net.now = net.now.max(t);
                match event {
                    Event::Connected(slot) => {
                        if net.slots.contains_key(&slot) {
                            dl.handle_connected(net.now, slot, net);
                        }
                    }
                    Event::Closed(slot) => {
                        net.disconnect(slot);
                        dl.handle_closed(net.now, slot, net);
                    }
                    Event::UplinkFree(owner) => {
                        if net.alive(owner, net.now) {
                            net.uplink_free(owner);
                        }
                    }
                    Event::Frame(slot, frame) => {
                        let Some(&owner) = net.slots.get(&slot) else {
                            continue;
                        };
                        if !net.alive(owner, net.now) {
                            continue;
                        }
                        let Ok(Decoded::Frame(msg, _)) =
                            wire::decode_frame(&frame, &Limits::default())
                        else {
                            panic!("an owner frame does not decode");
                        };
                        dl.handle_message(net.now, slot, &msg, net);
                    }
                }
            }
            (Some(t), None) => {
                net.now = net.now.max(t);
                dl.handle_timeout(net.now, net);
            }
            (None, None) => panic!("the download waits on nothing: {:?}", dl.phase()),
        }
    }
    panic!("the simulation did not end");
}

fn file(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn honest(name: &str, rate_mib: f64, pieces: u32) -> Model {
    Model {
        name: name.to_owned(),
        rate: rate_mib * f64::from(1 << 20),
        latency: Duration::from_millis(1),
        has: Bitfield::full(pieces),
        lies: HashSet::new(),
        dies_at: None,
        resets: true,
    }
}

const PIECE: u32 = 16 << 10;

fn config() -> DownloadConfig {
    DownloadConfig {
        no_source_timeout: Duration::from_secs(10),
        ..DownloadConfig::default()
    }
}

#[test]
fn faster_owners_serve_more() {
    let start = Instant::now();
    let data = file(4 << 20, 1);
    let pieces = 256;
    let owners = vec![honest("fast", 40.0, pieces), honest("slow", 4.0, pieces)];
    let mut net = Net::new(data, PIECE, owners, start);
    let (outcome, _) = simulate(&mut net, config());
    assert!(matches!(outcome, Outcome::Complete { .. }), "{outcome:?}");
    assert!(
        net.sent[0] > 4 * net.sent[1],
        "fast sent {} vs slow {}",
        net.sent[0],
        net.sent[1]
    );
}

#[test]
fn a_liar_is_dropped_and_the_file_is_still_right() {
    let start = Instant::now();
    let data = file(2 << 20, 2);
    let pieces = 128;
    let mut liar = honest("liar", 50.0, pieces);
    liar.lies = (0..pieces).step_by(3).collect();
    let owners = vec![liar, honest("good", 10.0, pieces)];
    let mut net = Net::new(data, PIECE, owners, start);
    let (outcome, dl) = simulate(&mut net, config());
    assert!(matches!(outcome, Outcome::Complete { .. }), "{outcome:?}");
    // The liar served at most until its first bad piece: a handful of blocks, never the bulk.
    assert!(
        net.sent[1] > net.sent[0],
        "good {} liar {}",
        net.sent[1],
        net.sent[0]
    );
    assert!(dl.refetched_bytes() < 16 * u64::from(PIECE) * 4);
}

#[test]
fn a_vanishing_owner_hands_its_pieces_to_the_others() {
    let start = Instant::now();
    let data = file(4 << 20, 3);
    let pieces = 256;
    let mut dying = honest("dying", 20.0, pieces);
    dying.dies_at = Some(start + Duration::from_millis(50));
    let owners = vec![dying, honest("steady", 20.0, pieces)];
    let mut net = Net::new(data, PIECE, owners, start);
    let (outcome, _) = simulate(&mut net, config());
    assert!(matches!(outcome, Outcome::Complete { .. }), "{outcome:?}");
    assert!(net.sent[0] > 0, "the dying owner served something first");
}

#[test]
fn partial_owners_with_different_halves_make_a_whole() {
    let start = Instant::now();
    let data = file(2 << 20, 4);
    let pieces = 128;
    let mut low = honest("low", 20.0, pieces);
    let mut high = honest("high", 20.0, pieces);
    low.has = Bitfield::new(pieces);
    high.has = Bitfield::new(pieces);
    for p in 0..pieces {
        if p < pieces / 2 {
            low.has.set(p);
        } else {
            high.has.set(p);
        }
    }
    let mut net = Net::new(data, PIECE, vec![low, high], start);
    let (outcome, _) = simulate(&mut net, config());
    assert!(matches!(outcome, Outcome::Complete { .. }), "{outcome:?}");
    assert_eq!(net.sent[0], net.sent[1]);
}

#[test]
fn missing_pieces_with_no_owner_fail_naming_how_many() {
    let start = Instant::now();
    let data = file(1 << 20, 5);
    let pieces = 64;
    let mut partial = honest("partial", 20.0, pieces);
    partial.has = Bitfield::new(pieces);
    for p in 0..60 {
        partial.has.set(p);
    }
    let mut net = Net::new(data, PIECE, vec![partial], start);
    let (outcome, dl) = simulate(&mut net, config());
    let Outcome::Failed { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.contains("4 of 64 pieces missing"), "{reason}");
    assert_eq!(
        dl.have().map(|h| h.count()),
        Some(60),
        "verified pieces are kept"
    );
    assert!(
        net.now - start < Duration::from_secs(15),
        "gave up within the bounded time"
    );
}

#[test]
fn one_slow_owner_does_not_stall_the_end() {
    let start = Instant::now();
    let data = file(4 << 20, 6);
    let pieces = 256;
    // The slow owner alone would need 40 s for the file; the fast one 0.1 s.
    let owners = vec![honest("fast", 40.0, pieces), honest("crawl", 0.1, pieces)];
    let mut net = Net::new(data, PIECE, owners, start);
    let (outcome, _) = simulate(&mut net, config());
    let Outcome::Complete { at } = outcome else {
        panic!("{outcome:?}")
    };
    assert!(at < Duration::from_secs(2), "finished at {at:?}");
}

#[test]
fn a_silent_owner_does_not_hold_the_download_up() {
    let start = Instant::now();
    let data = file(2 << 20, 7);
    let pieces = 128;
    // The first owner goes silent (no reset, no answer) at 20 ms.
    let mut silent = honest("silent", 20.0, pieces);
    silent.dies_at = Some(start + Duration::from_millis(20));
    let owners = vec![silent, honest("backup", 20.0, pieces)];
    let mut net = Net::new(data, PIECE, owners, start);
    net.owners[0].resets = false;
    let (outcome, _) = simulate(&mut net, config());
    let Outcome::Complete { at } = outcome else {
        panic!("{outcome:?}")
    };
    // Its pieces are re-requested from the backup (endgame copies, then the stall timeout).
    let bound = config().min_stall_timeout + Duration::from_secs(1);
    assert!(at < bound, "finished at {at:?}");
    eprintln!("silent owner death: download finished at {at:?} of simulated time");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Any swarm: the download completes byte-identical, or fails naming missing pieces
    /// that indeed no live honest owner held.
    #[test]
    fn every_swarm_completes_or_names_what_is_missing(
        seed in any::<u64>(),
        pieces in 1u32..96,
        owner_specs in proptest::collection::vec((1u32..60, 0u8..4, any::<u64>()), 1..6),
    ) {
        let start = Instant::now();
        let data = file(pieces as usize * PIECE as usize - (seed % 1000) as usize, seed);
        let pieces = data.len().div_ceil(PIECE as usize) as u32;
        let mut owners = Vec::new();
        for (i, (rate, kind, bits)) in owner_specs.iter().enumerate() {
            let mut m = honest(&format!("o{i}"), f64::from(*rate), pieces);
            let mut x = *bits | 1;
            if kind & 1 == 1 {
                // Partial: a pseudo-random subset.
                m.has = Bitfield::new(pieces);
                for p in 0..pieces {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    if x % 3 != 0 { m.has.set(p); }
                }
            }
            match kind {
                2 => m.dies_at = Some(start + Duration::from_millis(x % 200)),
                3 => m.lies = (0..pieces).filter(|p| (x >> (p % 60)) & 1 == 1).collect(),
                _ => {}
            }
            owners.push(m);
        }
        let mut net = Net::new(data, PIECE, owners.clone(), start);
        let (outcome, dl) = simulate(&mut net, config());
        if let Outcome::Failed { reason } = outcome {
            prop_assert!(reason.contains("pieces missing") || reason.contains("no reachable owner"), "{}", reason);
            let have = dl.have().cloned().unwrap_or_default();
            // Some missing piece had no owner that stayed alive and never lied.
            let orphan = (0..pieces).any(|p| {
                !have.get(p) && !owners.iter().any(|o| o.dies_at.is_none() && o.lies.is_empty() && o.has.get(p))
            });
            prop_assert!(orphan, "failed ({}) although every missing piece had a live honest owner", reason);
        }
    }
}

/// Found by the property test: two liars were asked for the last piece (one in the endgame),
/// both failed its hash, and the piece stayed marked in flight with nobody fetching it.
#[test]
fn a_piece_every_liar_failed_is_fetched_again_from_an_honest_owner() {
    let start = Instant::now();
    let pieces = 3;
    let data = file(3 * PIECE as usize, 0);
    let mut liars = [honest("o0", 1.0, pieces), honest("o1", 1.0, pieces)];
    for liar in &mut liars {
        liar.has = Bitfield::new(pieces);
        liar.has.set(0);
        liar.has.set(2);
    }
    liars[0].lies = [0, 1, 2].into_iter().collect();
    liars[1].lies = [1, 2].into_iter().collect();
    let [l0, l1] = liars;
    let owners = vec![l0, l1, honest("o2", 1.0, pieces), honest("o3", 1.0, pieces)];
    let mut net = Net::new(data, PIECE, owners, start);
    let (outcome, _) = simulate(&mut net, config());
    assert!(matches!(outcome, Outcome::Complete { .. }), "{outcome:?}");
}
