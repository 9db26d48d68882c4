//! One download's sans-IO state machine: owners → layout → hashes → pieces → done.
//!
//! Inputs are method calls with the time passed in (`handle_owners`, `handle_connected`,
//! `handle_message`, `handle_closed`, `handle_timeout`); outputs are connection actions
//! through a [`PeerIo`] the caller supplies, and [`Notice`]s polled with
//! [`Download::poll_notice`]. Pieces are written through the [`PartStore`]
//! the caller attaches once the layout is verified, so the whole machine runs
//! in simulated time against an in-memory store in tests.
//!
//! What the download holds lives in one `State` variant per phase (`state.rs`): the hashes
//! exist only once fetched, the picker and store only once attached, so no step can
//! run on data its phase does not have.
//!
//! Data safety rules:
//! - a piece of one block is hashed and written only if it matches, so bad data
//!   never reaches the disk and blame is exact: either while still in the read
//!   buffer, or by the driver off the network thread ([`PeerIo::verify_write`]),
//!   whose verdict ([`Download::handle_verified`]) then decides, exactly as the
//!   synchronous check would;
//! - a piece is recorded as done (`mark_done`) only once its bytes are written, and
//!   the download is complete only once every verdict is in;
//! - a copy of a piece arriving while another copy is being verified is dropped
//!   (never written twice, never counted twice);
//! - a piece of several blocks is fetched from one owner only (no endgame
//!   copies), written as it comes, and verified by reading it back;
//! - a piece that fails its hash drops the owner that sent it, and goes back in
//!   the queue for the others.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod hashes;
mod health;
mod owners;
mod pieces;
mod state;
#[cfg(test)]
mod tests;
mod versions;

use state::{Fetching, HashFetch, Pending, State, Verifying};
use versions::Listed;
pub use versions::{split_pin, RootPin, MIN_PIN_HEX};

use super::bitfield::Bitfield;
use super::peer::{Outstanding, Peer, PeerPhase, SlotId};
use super::picker::Picker;
use super::piece::PieceIndex;
use crate::hex::short_hex;
use crate::storage::{self, Hash, Layout, PieceStore, StorageError};
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
    /// `len` bytes at `offset` were written by the driver, not through `write_at`.
    fn note_written(&mut self, _offset: u64, _len: u64) {}
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
    fn note_written(&mut self, offset: u64, len: u64) {
        storage::PartialFile::note_written(self, offset, len)
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

/// Connection actions (and the one disk job) a download asks of its driver.
pub trait PeerIo {
    /// Open a connection for `slot` to `addr`; report back with `handle_connected` or `handle_closed`.
    fn connect(&mut self, slot: SlotId, addr: SocketAddr);
    /// Send `msg` on `slot`'s connection.
    fn send(&mut self, slot: SlotId, msg: &Message<'_>);
    /// Close `slot`'s connection; no `handle_closed` is expected for it.
    fn disconnect(&mut self, slot: SlotId);
    /// Offers a whole piece, `data`, to be hashed against `want` and, only if it matches,
    /// written at `offset` of the attached store, off the network thread: true if taken
    /// (a [`Download::handle_verified`] with `tag` follows), false to check and write it
    /// here. None is taken unless the driver overrides this.
    fn verify_write(&mut self, _offset: u64, _data: &[u8], _want: &Hash, _tag: u64) -> bool {
        false
    }
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
    PieceDone(PieceIndex),
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
    state: State<S>,
    candidates: BTreeMap<SocketAddr, Candidate>,
    /// Owners that sent bad data for a version (a ban is per version: an address may hold several).
    banned: HashSet<(SocketAddr, RootHash)>,
    /// Only a version whose root starts with this is ever considered.
    pin: Option<RootPin>,
    /// The tracker's latest list, filtered: versions are re-ranked from it when one is dropped.
    listed: Vec<Listed>,
    /// Versions given up on, with why; never tried again in this download.
    abandoned: Vec<(FileInfo, String)>,
    /// The tracker answered at all (an empty list included).
    heard_owners: bool,
    peers: BTreeMap<SlotId, Peer>,
    next_slot: SlotId,
    /// Reused buffer for reading pieces back.
    scratch: Vec<u8>,
    /// The tag of the next piece handed to [`PeerIo::verify_write`] (never reused, so a
    /// verdict for a version given up is recognised as stale).
    next_tag: u64,
    /// When something needed last arrived (hashes we lacked, a requested block): the give-up clock.
    last_delivery: Instant,
    next_tick: Instant,
    notices: VecDeque<Notice>,
    refetched_bytes: u64,
    fetched_bytes: u64,
    kept_bytes: u64,
    /// Verified bytes each owner (by name) delivered.
    sources: BTreeMap<String, u64>,
}

/// Where `addr` comes in a download's connect order (a hash under its seed).
pub(super) fn addr_key(seed: u64, addr: &SocketAddr) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (seed, addr).hash(&mut hasher);
    hasher.finish()
}

/// How often rates are sampled and timeouts checked.
const TICK: Duration = Duration::from_millis(250);
/// At most this share of the peer places (1 in N) is given to untried owners per tick.
const ROTATE_SHARE: usize = 16;
/// An owner let go to make room for untried ones is not connected again for this long.
const ROTATED_OUT_FOR: Duration = Duration::from_secs(5);

impl<S: PartStore> Download<S> {
    /// A download of `name` by the node `my_name` (its own entries in owner lists are skipped).
    pub fn new(name: &str, my_name: &str, config: DownloadConfig, now: Instant) -> Self {
        Download {
            name: name.to_owned(),
            my_name: my_name.to_owned(),
            config,
            state: State::Owners {
                starving_since: None,
            },
            candidates: BTreeMap::new(),
            banned: HashSet::new(),
            pin: None,
            listed: Vec::new(),
            abandoned: Vec::new(),
            heard_owners: false,
            peers: BTreeMap::new(),
            next_slot: 1,
            scratch: Vec::new(),
            next_tag: 0,
            last_delivery: now,
            next_tick: now + TICK,
            notices: VecDeque::new(),
            refetched_bytes: 0,
            fetched_bytes: 0,
            kept_bytes: 0,
            sources: BTreeMap::new(),
        }
    }

    /// The file name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version being fetched, once chosen.
    pub fn info(&self) -> Option<FileInfo> {
        self.state.info()
    }

    /// Where it stands.
    pub fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// True once finished or failed.
    pub fn is_over(&self) -> bool {
        matches!(self.state, State::Done { .. } | State::Failed { .. })
    }

    /// Pieces verified so far (None before a store is attached).
    pub fn have(&self) -> Option<&Bitfield> {
        self.state.have()
    }

    /// The attached store, for serving verified pieces to others.
    pub fn store(&self) -> Option<&S> {
        self.state.store()
    }

    /// The attached store, for a driver that writes the pieces it takes with
    /// [`PeerIo::verify_write`] into it itself (an in-memory store has no other way in).
    pub fn store_mut(&mut self) -> Option<&mut S> {
        self.state.store_mut()
    }

    /// Writes the verified-piece record now (it is otherwise saved every tick).
    pub fn save_marks(&mut self) -> Result<(), StorageError> {
        self.state.store_mut().map_or(Ok(()), PartStore::save_marks)
    }

    /// Hands the store back to the driver (to finish it once complete, or close it once failed).
    pub fn take_store(&mut self) -> Option<S> {
        self.state.take_store()
    }

    /// Hands the verified piece hashes to the driver once the download is done (empty before).
    pub fn hashes_owned(&mut self) -> Vec<Hash> {
        match &mut self.state {
            State::Done { hashes, .. } => std::mem::take(hashes),
            _ => Vec::new(),
        }
    }

    /// The piece hashes, once verified.
    pub fn hashes(&self) -> Option<&[Hash]> {
        self.state.hashes()
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

    /// Pieces still missing and blocks asked of owners now (for status and simulations:
    /// a download that asks for far fewer than it misses leaves holders idle).
    pub fn demand(&self) -> (u32, usize) {
        let missing = self.state.have().map_or(0, |h| h.len() - h.count());
        let asked = self.peers.values().map(|p| p.requests.len()).sum();
        (missing, asked)
    }

    /// A progress snapshot.
    pub fn progress(&self) -> Progress {
        let info = self.state.info();
        let total = info.map_or(0, |i| i.size);
        let done = match (self.state.have(), info) {
            (Some(have), Some(info)) => {
                let layout = info.layout();
                have.iter_ones()
                    .map(|p| u64::from(layout.piece_len(p)))
                    .sum()
            }
            _ => 0,
        };
        Progress {
            phase: self.state.phase(),
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
    pub(super) fn shuffle_seed(&self) -> u64 {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&self.my_name, &self.name).hash(&mut hasher);
        hasher.finish()
    }

    /// The driver attached storage; `claimed` are pieces a previous run recorded as verified,
    /// re-hashed here in steps before they count.
    pub fn attach_store(&mut self, now: Instant, store: S, claimed: &[bool], io: &mut dyn PeerIo) {
        self.attach(now, store, claimed, false, io);
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
        self.attach(now, store, checked, true, io);
    }

    fn attach(
        &mut self,
        now: Instant,
        store: S,
        claimed: &[bool],
        checked: bool,
        io: &mut dyn PeerIo,
    ) {
        let (info, hashes) = match &mut self.state {
            State::Store { info, hashes } => (*info, std::mem::take(hashes)),
            _ => return,
        };
        let pieces = info.layout().piece_count();
        let mut picker = Picker::new(Bitfield::new(pieces), self.shuffle_seed());
        for peer in self.peers.values().filter(|p| p.phase == PeerPhase::Ready) {
            picker.add_owner(&peer.has);
        }
        self.state = State::Verify(Verifying {
            fetch: Fetching {
                info,
                hashes,
                picker,
                store,
                asked_at: HashMap::new(),
                verifying: Vec::new(),
            },
            next: 0,
            due: now,
            claimed: claimed.iter().take(pieces as usize).copied().collect(),
            checked,
        });
        self.verify_step(now, io);
    }

    /// The driver flushed and renamed the file: the download is done.
    pub fn finished(&mut self) {
        self.advance(|state| match state {
            State::Finishing {
                info, hashes, have, ..
            } => State::Done { info, hashes, have },
            other => other,
        });
    }

    /// Replaces the state with what `next` makes of it (a phase change moves its data).
    fn advance(&mut self, next: impl FnOnce(State<S>) -> State<S>) {
        let old = std::mem::replace(
            &mut self.state,
            State::Owners {
                starving_since: None,
            },
        );
        self.state = next(old);
    }

    /// Stops the download (user request, or the driver could not store it); pieces stay for a resume.
    pub fn abort(&mut self, reason: String, io: &mut dyn PeerIo) {
        self.fail(io, reason);
    }

    /// When [`Download::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Finishing { .. } | State::Done { .. } | State::Failed { .. } => None,
            State::Verify(verify) => Some(verify.due.min(self.next_tick)),
            _ => Some(self.next_tick),
        }
    }
}

/// An empty file has no pieces to check later, so its root is checked now: an owner
/// claiming size 0 under any other root is lying and is ignored.
fn empty_root_holds(info: &FileInfo) -> bool {
    info.size != 0 || info.root == storage::root_hash(info.layout(), &[])
}

/// Block requests covering `piece`: one per `MAX_BLOCK_LEN`.
fn blocks_of(layout: Layout, piece: PieceIndex) -> impl Iterator<Item = Outstanding> {
    let len = layout.piece_len(piece.0);
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
        piece: r.piece.0,
        offset: r.offset,
        len: r.len,
    }
}
