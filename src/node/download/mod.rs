//! One download's sans-IO state machine: owners → layout → hashes → pieces → done.
//!
//! Inputs are method calls with the time passed in (`on_owners`, `on_connected`,
//! `on_message`, `on_closed`, `handle_timeout`); outputs are connection actions
//! through a [`PeerIo`] the caller supplies, and [`Notice`]s polled with
//! [`Download::poll_notice`]. Pieces are written through the [`PartStore`]
//! the caller attaches once the layout is verified, so the whole machine runs
//! in simulated time against an in-memory store in tests.
//!
//! Data safety rules:
//! - a piece of one block is hashed while still in the read buffer and written
//!   only if it matches, so bad data never reaches the disk and blame is exact;
//! - a piece of several blocks is fetched from one owner only (no endgame
//!   copies), written as it comes, and verified by reading it back;
//! - a piece that fails its hash drops the owner that sent it, and goes back in
//!   the queue for the others.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod health;
mod pieces;
#[cfg(test)]
mod tests;
mod versions;

use versions::Listed;
pub use versions::{split_pin, RootPin, MIN_PIN_HEX};

use super::bitfield::Bitfield;
use super::peer::{Outstanding, Peer, PeerPhase, SlotId};
use super::picker::Picker;
use crate::storage::{self, Hash, Layout, PieceStore, StorageError};
use crate::wire::short_hex;
use crate::wire::{
    BlockRequest, FileInfo, Message, Owner, RootHash, SizeInformation, MAX_BLOCK_LEN,
    MAX_HASHES_PER_FRAME,
};

/// Storage a download writes into: positioned writes plus a persistent record of verified pieces.
pub trait PartStore: PieceStore {
    /// Records `piece` as verified (survives a crash; re-checked on resume).
    fn mark_done(&mut self, piece: u32) -> Result<(), StorageError>;
    /// Records `piece` as not verified (it failed its check on resume).
    fn mark_bad(&mut self, piece: u32) -> Result<(), StorageError>;
    /// Makes the marks so far survive a crash (called about every quarter second).
    fn save_marks(&mut self) -> Result<(), StorageError>;
    /// Removes what was stored (a version given up before any piece of it was verified).
    fn discard(self) -> Result<(), StorageError>
    where
        Self: Sized,
    {
        Ok(())
    }
}

impl PartStore for storage::PartialFile {
    fn mark_done(&mut self, piece: u32) -> Result<(), StorageError> {
        storage::PartialFile::mark_done(self, piece)
    }
    fn mark_bad(&mut self, piece: u32) -> Result<(), StorageError> {
        storage::PartialFile::mark_bad(self, piece)
    }
    fn save_marks(&mut self) -> Result<(), StorageError> {
        storage::PartialFile::save_marks(self)
    }
    fn discard(self) -> Result<(), StorageError> {
        storage::PartialFile::discard(self)
    }
}

impl PartStore for storage::MemStore {
    fn mark_done(&mut self, _piece: u32) -> Result<(), StorageError> {
        Ok(())
    }
    fn mark_bad(&mut self, _piece: u32) -> Result<(), StorageError> {
        Ok(())
    }
    fn save_marks(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Connection actions a download asks of its driver.
pub trait PeerIo {
    /// Open a connection for `slot` to `addr`; report back with `on_connected` or `on_closed`.
    fn connect(&mut self, slot: SlotId, addr: SocketAddr);
    /// Send `msg` on `slot`'s connection.
    fn send(&mut self, slot: SlotId, msg: &Message<'_>);
    /// Close `slot`'s connection; no `on_closed` is expected for it.
    fn disconnect(&mut self, slot: SlotId);
}

/// What a download tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The version and layout are known and verified: attach a store with [`Download::attach_store`].
    NeedStore {
        /// Size, piece size and root of the version being fetched.
        info: FileInfo,
    },
    /// A piece was verified and written: others may now be served it.
    PieceDone(u32),
    /// Every piece is verified: flush and rename the store, then call [`Download::finished`].
    Complete,
    /// The download stopped; verified pieces stay on disk for a resume.
    Failed(String),
}

/// Timeouts and bounds of a download, each documented in the README.
#[derive(Clone, Debug)]
pub struct DownloadConfig {
    /// A TCP connect or the size answer taking longer than this drops the owner.
    pub connect_timeout: Duration,
    /// An owner with requests outstanding and no measured rate yet gets this long for its first bytes.
    pub first_byte_timeout: Duration,
    /// Shortest stall timeout for an owner with a measured rate.
    pub min_stall_timeout: Duration,
    /// How long a download may go without any owner delivering before it fails.
    pub no_source_timeout: Duration,
    /// How long to wait for a first owner when the tracker knows none (it tells us when one appears).
    pub owner_wait: Duration,
    /// First wait before reconnecting to an owner that dropped; doubles per attempt.
    pub reconnect_backoff: Duration,
    /// Most owners connected at once.
    pub max_peers: usize,
    /// In the endgame, a piece is asked of a second owner once it has been in flight this long.
    pub endgame_after: Duration,
    /// Bytes of claimed pieces re-verified per step on resume.
    pub verify_step_bytes: u64,
    /// Most pieces a version may have to be considered: its hashes (32 bytes each) and
    /// piece tables are held in memory, and a layout is only a claim until verified.
    pub max_pieces: u64,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(10),
            min_stall_timeout: Duration::from_secs(3),
            no_source_timeout: Duration::from_secs(30),
            owner_wait: Duration::from_secs(3),
            reconnect_backoff: Duration::from_secs(1),
            max_peers: 64,
            endgame_after: Duration::from_millis(300),
            verify_step_bytes: 32 << 20,
            max_pieces: 1 << 20,
        }
    }
}

/// Where the download stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the tracker's owner list.
    Owners,
    /// Connected to owners, fetching the piece hashes.
    Hashes,
    /// Waiting for the driver to attach storage.
    Store,
    /// Re-verifying pieces a previous run left (resume).
    Verify,
    /// Fetching pieces.
    Pieces,
    /// Every piece verified; the driver is flushing and renaming.
    Finishing,
    /// Done and renamed.
    Done,
    /// Stopped with an error.
    Failed,
}

/// A snapshot for `status` and progress display.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Where it stands.
    pub phase: Phase,
    /// Verified bytes.
    pub done: u64,
    /// File size (0 until known).
    pub total: u64,
    /// Current download rate, bytes per second.
    pub rate: f64,
    /// Owners connected and answering.
    pub owners: usize,
}

/// A known owner of the chosen version and when it may be tried again.
#[derive(Clone, Debug)]
struct Candidate {
    name: String,
    retry_at: Option<Instant>,
    failures: u32,
}

/// One download.
pub struct Download<S> {
    name: String,
    my_name: String,
    config: DownloadConfig,
    phase: Phase,
    info: Option<FileInfo>,
    candidates: BTreeMap<SocketAddr, Candidate>,
    /// Owners that sent bad data for a version (a ban is per version: an address may hold several).
    banned: HashSet<(SocketAddr, RootHash)>,
    /// Only a version whose root starts with this is ever considered.
    pin: Option<RootPin>,
    /// The tracker's latest list, filtered: versions are re-ranked from it when one is dropped.
    listed: Vec<Listed>,
    /// Versions given up on, with why; never tried again in this download.
    abandoned: Vec<(FileInfo, String)>,
    /// When the current version was chosen or last got hashes it needed (an answer to the
    /// size question alone proves nothing: anyone can echo the layout back).
    version_progress: Instant,
    /// Hash ranges (first, count) asked of the hash source and not yet answered.
    hash_asked: Vec<(u32, u32)>,
    /// The tracker answered at all (an empty list included).
    heard_owners: bool,
    peers: BTreeMap<SlotId, Peer>,
    next_slot: SlotId,
    hashes: Vec<Hash>,
    hashes_got: Vec<bool>,
    hash_source: Option<SlotId>,
    picker: Option<Picker>,
    store: Option<S>,
    verify_next: u32,
    verify_due: Option<Instant>,
    claimed: Vec<bool>,
    /// The claims were already checked against the hashes (by the driver, off the network thread).
    claims_checked: bool,
    scratch: Vec<u8>,
    /// Owners phase: since when the tracker has listed nobody.
    starving_since: Option<Instant>,
    /// When something needed last arrived (hashes we lacked, a requested block): the give-up clock.
    last_delivery: Instant,
    next_tick: Instant,
    notices: VecDeque<Notice>,
    refetched_bytes: u64,
    fetched_bytes: u64,
    kept_bytes: u64,
    /// Verified bytes each owner (by name) delivered.
    sources: BTreeMap<String, u64>,
    /// When each piece in flight was last asked for (endgame copies wait for late ones).
    asked_at: HashMap<u32, Instant>,
}

/// Where `addr` comes in a download's connect order (a hash under its seed).
fn addr_key(seed: u64, addr: &SocketAddr) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (seed, addr).hash(&mut hasher);
    hasher.finish()
}

/// How often rates are sampled and timeouts checked.
const TICK: Duration = Duration::from_millis(250);

impl<S: PartStore> Download<S> {
    /// A download of `name` by the node `my_name` (its own entries in owner lists are skipped).
    pub fn new(name: &str, my_name: &str, config: DownloadConfig, now: Instant) -> Self {
        Download {
            name: name.to_owned(),
            my_name: my_name.to_owned(),
            config,
            phase: Phase::Owners,
            info: None,
            candidates: BTreeMap::new(),
            banned: HashSet::new(),
            pin: None,
            listed: Vec::new(),
            abandoned: Vec::new(),
            version_progress: now,
            hash_asked: Vec::new(),
            heard_owners: false,
            peers: BTreeMap::new(),
            next_slot: 1,
            hashes: Vec::new(),
            hashes_got: Vec::new(),
            hash_source: None,
            picker: None,
            store: None,
            verify_next: 0,
            verify_due: None,
            claimed: Vec::new(),
            claims_checked: false,
            scratch: Vec::new(),
            starving_since: None,
            last_delivery: now,
            next_tick: now + TICK,
            notices: VecDeque::new(),
            refetched_bytes: 0,
            fetched_bytes: 0,
            kept_bytes: 0,
            sources: BTreeMap::new(),
            asked_at: HashMap::new(),
        }
    }

    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version being fetched, once chosen.
    pub fn info(&self) -> Option<FileInfo> {
        self.info
    }

    /// Where it stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True once finished or failed.
    pub fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Done | Phase::Failed)
    }

    /// Pieces verified so far (None before the layout is known).
    pub fn have(&self) -> Option<&Bitfield> {
        self.picker.as_ref().map(Picker::have)
    }

    /// The attached store, for serving verified pieces to others.
    pub fn store(&self) -> Option<&S> {
        self.store.as_ref()
    }

    /// Writes the verified-piece record now (it is otherwise saved every tick).
    pub fn save_marks(&mut self) -> Result<(), StorageError> {
        self.store.as_mut().map_or(Ok(()), PartStore::save_marks)
    }

    /// Hands the store back to the driver (to finish or close it).
    pub fn take_store(&mut self) -> Option<S> {
        self.store.take()
    }

    /// Hands the verified piece hashes to the driver once the download is complete.
    pub fn hashes_owned(&mut self) -> Vec<Hash> {
        std::mem::take(&mut self.hashes)
    }

    /// The piece hashes, once verified.
    pub fn hashes(&self) -> Option<&[Hash]> {
        (self.phase as u8 >= Phase::Store as u8 && !self.is_over()).then_some(&self.hashes[..])
    }

    /// Bytes fetched more than once (bad data, lost owners, endgame copies).
    pub fn refetched_bytes(&self) -> u64 {
        self.refetched_bytes
    }

    /// Bytes of piece data received from owners, wasted ones included.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched_bytes
    }

    /// Bytes of pieces an earlier run left that passed their hash on resume.
    pub fn kept_bytes(&self) -> u64 {
        self.kept_bytes
    }

    /// Verified bytes each owner delivered, by owner name.
    pub fn sources(&self) -> &BTreeMap<String, u64> {
        &self.sources
    }

    /// The next notice for the driver.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// A progress snapshot.
    pub fn progress(&self) -> Progress {
        let total = self.info.map_or(0, |i| i.size);
        let done = match (&self.picker, self.layout()) {
            (Some(picker), Some(layout)) => picker
                .have()
                .iter_ones()
                .map(|p| u64::from(layout.piece_len(p)))
                .sum(),
            _ => 0,
        };
        Progress {
            phase: self.phase,
            done,
            total,
            rate: self.peers.values().map(|p| p.rate).sum(),
            owners: self
                .peers
                .values()
                .filter(|p| p.phase == PeerPhase::Ready)
                .count(),
        }
    }

    /// A seed that differs between nodes (and files), so equally rare pieces are fetched in
    /// different orders by different downloaders and they have pieces to trade.
    fn shuffle_seed(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&self.my_name, &self.name).hash(&mut hasher);
        hasher.finish()
    }

    fn layout(&self) -> Option<Layout> {
        self.info.map(|i| Layout {
            size: i.size,
            piece_size: i.piece_size,
        })
    }

    /// The tracker's owner list for this file (first answer or an update).
    pub fn on_owners(&mut self, now: Instant, owners: &[Owner<'_>], io: &mut dyn PeerIo) {
        if self.is_over() {
            return;
        }
        self.remember_owners(owners);
        if self.info.is_none() && !self.choose_version(now) {
            return;
        }
        self.add_candidates(now, io);
    }

    /// Takes the listed owners of the chosen version as candidates, forgets unlisted ones.
    fn add_candidates(&mut self, now: Instant, io: &mut dyn PeerIo) {
        let Some(info) = self.info else { return };
        let listed: HashSet<SocketAddr> = self
            .listed
            .iter()
            .filter(|o| o.info.root == info.root)
            .map(|o| o.addr)
            .collect();
        self.candidates.retain(|addr, _| listed.contains(addr));
        for owner in self.listed.iter().filter(|o| o.info == info) {
            if self.banned.contains(&(owner.addr, info.root)) {
                continue;
            }
            self.candidates
                .entry(owner.addr)
                .or_insert_with(|| Candidate {
                    name: owner.name.clone(),
                    retry_at: None,
                    failures: 0,
                });
        }
        self.connect_more(now, io);
    }

    /// Opens connections to known owners not yet connected, up to the cap.
    fn connect_more(&mut self, now: Instant, io: &mut dyn PeerIo) {
        if !matches!(
            self.phase,
            Phase::Hashes | Phase::Store | Phase::Verify | Phase::Pieces
        ) || self.info.is_some_and(|i| i.size == 0)
        {
            return;
        }
        let connected: HashSet<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
        let mut ready: Vec<(SocketAddr, String)> = self
            .candidates
            .iter()
            .filter(|(addr, c)| !connected.contains(addr) && c.retry_at.is_none_or(|t| t <= now))
            .map(|(addr, c)| (*addr, c.name.clone()))
            .collect();
        // With more owners than `max_peers`, each download picks its own: in address order
        // a whole crowd would connect to the same few and leave the others' uploads idle.
        let seed = self.shuffle_seed();
        ready.sort_by_cached_key(|(addr, _)| addr_key(seed, addr));
        for (addr, name) in ready {
            if self.peers.len() >= self.config.max_peers {
                break;
            }
            let slot = self.next_slot;
            self.next_slot += 1;
            self.peers.insert(slot, Peer::new(addr, name, now));
            io.connect(slot, addr);
        }
    }

    /// `slot`'s connection is up: ask for the layout and pieces.
    pub fn on_connected(&mut self, now: Instant, slot: SlotId, io: &mut dyn PeerIo) {
        let Some(info) = self.info else { return };
        let Some(peer) = self.peers.get_mut(&slot) else {
            return;
        };
        if peer.phase != PeerPhase::Connecting {
            return;
        }
        peer.phase = PeerPhase::Asked;
        peer.last_progress = now;
        io.send(
            slot,
            &Message::SizeInformation(SizeInformation::Question {
                name: &self.name,
                root: Some(info.root),
            }),
        );
    }

    /// `slot`'s connection closed (or never opened): its work goes back to the others.
    pub fn on_closed(&mut self, now: Instant, slot: SlotId, io: &mut dyn PeerIo) {
        if self.peers.contains_key(&slot) {
            self.lose_peer(now, slot, None, io);
        }
    }

    /// A frame arrived on `slot`.
    pub fn on_message(
        &mut self,
        now: Instant,
        slot: SlotId,
        msg: &Message<'_>,
        io: &mut dyn PeerIo,
    ) {
        if !self.peers.contains_key(&slot) || self.is_over() {
            return;
        }
        match msg {
            Message::SizeInformation(SizeInformation::Answer { name, info, have }) => {
                self.on_answer(now, slot, name, info, have, io)
            }
            Message::Hashes {
                root,
                first,
                hashes,
            } => self.on_hashes(now, slot, root, *first, hashes, io),
            Message::FileCommunication(block) => {
                if Some(block.root) != self.info.map(|i| i.root) {
                    self.lose_peer(now, slot, Some("sent data of another file"), io);
                } else {
                    self.on_block(now, slot, block.piece, block.offset, block.data, io);
                }
            }
            Message::HavePiece { root, piece } => {
                if Some(*root) == self.info.map(|i| i.root) {
                    if let Some(peer) = self.peers.get_mut(&slot) {
                        if peer.phase == PeerPhase::Ready && peer.has.set(*piece) {
                            if let Some(picker) = self.picker.as_mut() {
                                picker.gained(*piece);
                            }
                        }
                    }
                    self.fill(now, io);
                }
            }
            Message::Error { code, reason } => {
                let why = format!("refused: {code:?}: {}", crate::node::text::esc(reason));
                self.lose_peer(now, slot, Some(&why), io);
            }
            Message::KeepAlive => {}
            other => {
                let why = format!("sent an unexpected message of type {}", other.type_code());
                self.lose_peer(now, slot, Some(&why), io);
            }
        }
    }

    fn on_answer(
        &mut self,
        now: Instant,
        slot: SlotId,
        name: &str,
        info: &FileInfo,
        have: &[u8],
        io: &mut dyn PeerIo,
    ) {
        let Some(expected) = self.info else { return };
        if self
            .peers
            .get(&slot)
            .is_some_and(|p| p.phase != PeerPhase::Asked)
        {
            self.lose_peer(now, slot, Some("answered a question it was not asked"), io);
            return;
        }
        if name != self.name || *info != expected {
            self.lose_peer(now, slot, Some("answered with another file's layout"), io);
            return;
        }
        let pieces = layout_of(expected).piece_count();
        let Some(has) = Bitfield::from_wire(have, pieces) else {
            self.lose_peer(now, slot, Some("sent a malformed piece bitfield"), io);
            return;
        };
        let Some(peer) = self.peers.get_mut(&slot) else {
            return;
        };
        peer.phase = PeerPhase::Ready;
        peer.last_progress = now;
        peer.has = has;
        if let Some(c) = self.candidates.get_mut(&peer.addr) {
            c.failures = 0;
        }
        if let Some(picker) = self.picker.as_mut() {
            picker.add_owner(&peer.has);
        }
        self.request_hashes(now, io);
        self.fill(now, io);
    }

    /// Asks one ready owner for every piece hash not yet received.
    fn request_hashes(&mut self, now: Instant, io: &mut dyn PeerIo) {
        if self.phase != Phase::Hashes || self.hash_source.is_some() {
            return;
        }
        let Some(info) = self.info else { return };
        let Some((&slot, peer)) = self
            .peers
            .iter_mut()
            .find(|(_, p)| p.phase == PeerPhase::Ready)
        else {
            return;
        };
        let pieces = layout_of(info).piece_count();
        if self.hashes.len() != pieces as usize {
            self.hashes = vec![[0; 32]; pieces as usize];
            self.hashes_got = vec![false; pieces as usize];
        }
        self.hash_source = Some(slot);
        self.hash_asked.clear();
        peer.last_progress = now;
        let mut first = 0;
        while first < pieces {
            let count = (pieces - first).min(MAX_HASHES_PER_FRAME);
            if !self.hashes_got[first as usize] {
                self.hash_asked.push((first, count));
                io.send(
                    slot,
                    &Message::HashRequest {
                        root: info.root,
                        first,
                        count,
                    },
                );
            }
            first += count;
        }
    }

    fn on_hashes(
        &mut self,
        now: Instant,
        slot: SlotId,
        root: &RootHash,
        first: u32,
        hashes: &[u8],
        io: &mut dyn PeerIo,
    ) {
        let Some(info) = self.info else { return };
        if self.phase != Phase::Hashes || self.hash_source != Some(slot) {
            return;
        }
        let count = hashes.len() / 32;
        let fits = (first as usize)
            .checked_add(count)
            .is_some_and(|end| end <= self.hashes.len());
        if *root != info.root || !fits || hashes.len() % 32 != 0 {
            self.lose_peer(
                now,
                slot,
                Some("sent hashes that do not fit the layout"),
                io,
            );
            return;
        }
        // Only the exact answer to a range we asked counts: a source trickling a few hashes
        // at a time must not hold the download in this phase with tiny deliveries.
        let Some(asked) = self
            .hash_asked
            .iter()
            .position(|&(f, c)| f == first && c as usize == count)
        else {
            self.lose_peer(now, slot, Some("sent hashes it was not asked for"), io);
            return;
        };
        self.hash_asked.swap_remove(asked);
        let mut new = false;
        for (i, hash) in hashes.chunks_exact(32).enumerate() {
            let index = first as usize + i;
            new |= !self.hashes_got[index];
            self.hashes[index].copy_from_slice(hash);
            self.hashes_got[index] = true;
        }
        if new {
            self.last_delivery = now;
            self.version_progress = now;
            if let Some(peer) = self.peers.get_mut(&slot) {
                peer.last_progress = now;
            }
        }
        if self.hashes_got.iter().all(|&got| got) {
            if storage::root_hash(layout_of(info), &self.hashes) != info.root {
                self.hashes_got.iter_mut().for_each(|g| *g = false);
                self.ban(
                    now,
                    slot,
                    "sent piece hashes that do not match the root hash",
                    io,
                );
                return;
            }
            self.hash_source = None;
            self.hash_asked.clear();
            self.phase = Phase::Store;
            self.notices.push_back(Notice::NeedStore { info });
        }
    }

    /// The driver attached storage; `claimed` are pieces a previous run recorded as verified,
    /// re-hashed here in steps before they count.
    pub fn attach_store(&mut self, now: Instant, store: S, claimed: &[bool], io: &mut dyn PeerIo) {
        self.claims_checked = false;
        self.attach(now, store, claimed, io);
    }

    /// As [`attach_store`](Self::attach_store), but `checked` are pieces the driver has
    /// already re-hashed against [`hashes`](Self::hashes) (on its disk thread): they count
    /// at once.
    pub fn attach_checked(
        &mut self,
        now: Instant,
        store: S,
        checked: &[bool],
        io: &mut dyn PeerIo,
    ) {
        self.claims_checked = true;
        self.attach(now, store, checked, io);
    }

    fn attach(&mut self, now: Instant, store: S, claimed: &[bool], io: &mut dyn PeerIo) {
        if self.phase != Phase::Store {
            return;
        }
        let Some(info) = self.info else { return };
        let pieces = layout_of(info).piece_count();
        self.store = Some(store);
        let mut picker = Picker::new(Bitfield::new(pieces), self.shuffle_seed());
        for peer in self.peers.values().filter(|p| p.phase == PeerPhase::Ready) {
            picker.add_owner(&peer.has);
        }
        self.picker = Some(picker);
        self.claimed = claimed.iter().take(pieces as usize).copied().collect();
        self.verify_next = 0;
        self.phase = Phase::Verify;
        self.verify_step(now, io);
    }
    /// The driver flushed and renamed the file: the download is done.
    pub fn finished(&mut self) {
        if self.phase == Phase::Finishing {
            self.phase = Phase::Done;
        }
    }

    /// Stops the download (user request, or the driver could not store it); pieces stay for a resume.
    pub fn abort(&mut self, reason: String, io: &mut dyn PeerIo) {
        self.fail(io, reason);
    }

    /// When [`Download::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_over() || self.phase == Phase::Finishing {
            return None;
        }
        Some(
            self.verify_due
                .map_or(self.next_tick, |due| due.min(self.next_tick)),
        )
    }
}

/// An empty file has no pieces to check later, so its root is checked now: an owner
/// claiming size 0 under any other root is lying and is ignored.
fn empty_root_holds(info: &FileInfo) -> bool {
    info.size != 0 || info.root == storage::root_hash(layout_of(*info), &[])
}

fn layout_of(info: FileInfo) -> Layout {
    Layout {
        size: info.size,
        piece_size: info.piece_size,
    }
}

/// Block requests covering `piece`: one per `MAX_BLOCK_LEN`.
fn blocks_of(layout: Layout, piece: u32) -> impl Iterator<Item = Outstanding> {
    let len = layout.piece_len(piece);
    (0..len.div_ceil(MAX_BLOCK_LEN)).map(move |i| {
        let offset = i * MAX_BLOCK_LEN;
        Outstanding {
            piece,
            offset,
            len: (len - offset).min(MAX_BLOCK_LEN),
        }
    })
}

fn request_of(root: RootHash, r: &Outstanding) -> BlockRequest {
    BlockRequest {
        root,
        piece: r.piece,
        offset: r.offset,
        len: r.len,
    }
}
