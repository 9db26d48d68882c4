//! Stateful: one `Download<MemStore>` against a hostile swarm. The input picks a
//! small real file (0–8 pieces of 16 KiB, rarely 1–2 pieces of two blocks each),
//! the owners the tracker lists (with honest or lying versions), pieces an
//! earlier run left (right or wrong), and then a sequence of events: which
//! connection opens or closes, which owner answers what (honest replies, wrong
//! layouts, tampered or out-of-range hashes, tampered or unasked-for blocks,
//! `HavePiece` for anything, errors, raw frames), and how far the clock moves.
//!
//! Every message crosses the codec first (`encode`, then `decode_frame`); a frame
//! that does not decode closes its connection, as the node's glue does. Due
//! deadlines are handled after every step, notices answered as the node does
//! (`NeedStore` attaches a store at once, `Complete` takes it and calls `finished`).
//!
//! Checked:
//! - everything the download sends encodes, goes to an open connection, and is
//!   a question about a listed version (the pinned one, if the download is
//!   pinned), or a hash request or block request of the version asked about on
//!   that connection and inside its layout, or a cancel; every connect is to a
//!   listed owner, on a slot never used before (versions nobody serves are
//!   dropped for the next, so several may be asked about over a run);
//! - `PieceDone(p)` comes at most once per piece, and the store then holds the
//!   real bytes of `p`;
//! - `Complete` comes only after every piece is done, and the store's bytes hash
//!   to the root of the chosen version (so they are the file, when that version
//!   is the real one), whatever the owners sent; a pinned download completes
//!   only a version its pin matches;
//! - `Failed` carries a reason; after `Complete` or `Failed` there are no more
//!   notices, connects or sends;
//! - once due deadlines are handled, `poll_timeout()` is `None` or later than now.
//!
//! Sometimes (a bit of the content seed, so the hand-written seeds keep their
//! meaning) the driver takes whole pieces off the download (`verify_write`), as
//! the node's disk thread does: it checks and writes each, in order, when the
//! clock moves or a timer fires, and gives the verdict then; blocks keep arriving
//! meanwhile, endgame copies included. The same checks hold.
//!
//! `SHOAL_FUZZ_TRACE=1` prints every step, notice, connect and disconnect (for
//! triage).
#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use shoal::hex::hex;
use shoal::node::bitfield::Bitfield;
use shoal::node::download::{Download, DownloadConfig, Notice, PeerIo, RootPin};
use shoal::node::peer::SlotId;
use shoal::storage::{hash_piece, root_hash, Hash, Layout, MemStore, PieceStore};
use shoal::wire::{
    decode_frame, encode, Block, BlockRequest, Decoded, ErrorCode, FileInfo, Limits, Message,
    NodeToTracker, Owner, RootHash, SizeInformation, TrackerToNode, MAX_BLOCK_LEN, MIN_PIECE_SIZE,
};

/// The file's name.
const FILE: &str = "f";
/// The downloading node's name (owner lists may name it too; it must skip itself).
const ME: &str = "me";

/// Most owners in the swarm.
const MAX_OWNERS: usize = 4;

/// Longest single clock advance.
const MAX_ADVANCE_MS: u64 = 10_000;

/// Most steps in one run.
const MAX_STEPS: usize = 256;

/// Largest store the driver will allocate: anything bigger was never verified.
const MAX_STORE: u64 = 8 << 20;

/// Whether `SHOAL_FUZZ_TRACE` is set: then every step and notice is printed (for triage).
fn tracing() -> bool {
    static TRACE: OnceLock<bool> = OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SHOAL_FUZZ_TRACE").is_some())
}

/// Timeouts short enough for a few clock advances to reach every one of them.
fn config(max_peers: usize, small_verify_steps: bool) -> DownloadConfig {
    DownloadConfig {
        connect_timeout: Duration::from_secs(1),
        first_byte_timeout: Duration::from_secs(2),
        min_stall_timeout: Duration::from_secs(1),
        no_source_timeout: Duration::from_secs(5),
        owner_wait: Duration::from_secs(1),
        reconnect_backoff: Duration::from_millis(100),
        max_peers,
        endgame_after: Duration::from_millis(300),
        verify_step_bytes: if small_verify_steps {
            u64::from(MIN_PIECE_SIZE)
        } else {
            DownloadConfig::default().verify_step_bytes
        },
        ..DownloadConfig::default()
    }
}

/// The real file every honest owner holds.
struct RealFile {
    bytes: Vec<u8>,
    layout: Layout,
    hashes: Vec<Hash>,
    info: FileInfo,
}

impl RealFile {
    /// A file of `pieces` pieces of `piece_size` (the last `last_len` long), content from `seed`.
    fn new(pieces: u32, piece_size: u32, last_len: u32, seed: u64) -> RealFile {
        let size = match pieces {
            0 => 0,
            n => u64::from(n - 1) * u64::from(piece_size) + u64::from(last_len),
        };
        let mut state = seed | 1;
        let mut bytes = Vec::with_capacity(size as usize + 8);
        while (bytes.len() as u64) < size {
            // xorshift64*: cheap, and different for every seed.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            bytes.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        bytes.truncate(size as usize);
        let layout = Layout { size, piece_size };
        let hashes: Vec<Hash> = (0..layout.piece_count())
            .map(|p| hash_piece(&bytes[piece_range(layout, p)]))
            .collect();
        let info = FileInfo {
            size,
            piece_size,
            root: root_hash(layout, &hashes),
        };
        RealFile {
            bytes,
            layout,
            hashes,
            info,
        }
    }

    /// `len` bytes of `piece` from `offset`: the file's where it has them, zeros past its end.
    fn block(&self, piece: u32, offset: u32, len: u32) -> Vec<u8> {
        let start = self
            .layout
            .piece_offset(piece)
            .saturating_add(u64::from(offset));
        (0..u64::from(len))
            .map(|i| {
                usize::try_from(start.saturating_add(i))
                    .ok()
                    .and_then(|at| self.bytes.get(at))
                    .copied()
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// Byte range of `piece` in the file.
fn piece_range(layout: Layout, piece: u32) -> std::ops::Range<usize> {
    let start = layout.piece_offset(piece) as usize;
    start..start + layout.piece_len(piece) as usize
}

/// Where owner `i` listens.
fn owner_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + i as u8], 7000))
}

/// Owner `i`'s node name.
fn owner_name(i: usize) -> &'static str {
    ["o0", "o1", "o2", "o3"][i]
}

/// A version of the file an owner may claim to hold.
#[derive(Clone, Copy, Debug)]
enum Version {
    /// The real one.
    Real,
    /// The real layout under another root.
    OtherRoot(u8),
    /// The real root with another size.
    OtherSize(u32),
    /// An empty file under the real root.
    Empty,
    /// Any fields at all (the codec refuses most).
    Raw(FileInfo),
}

impl Version {
    /// The `FileInfo` this version stands for.
    fn info(self, real: &RealFile) -> FileInfo {
        match self {
            Version::Real => real.info,
            Version::OtherRoot(b) => FileInfo {
                root: [b; 32],
                ..real.info
            },
            Version::OtherSize(size) => FileInfo {
                size: u64::from(size),
                ..real.info
            },
            Version::Empty => FileInfo {
                size: 0,
                ..real.info
            },
            Version::Raw(info) => info,
        }
    }
}

/// One entry of a tracker owner list.
#[derive(Clone, Copy, Debug)]
struct Listed {
    /// Owner index, or `None` for the downloader itself.
    owner: Option<usize>,
    version: Version,
    complete: bool,
}

/// The bitfield an owner answers with.
#[derive(Debug)]
enum Have<'a> {
    /// The owner's real holdings.
    Own,
    /// Every piece.
    Full,
    /// These bytes, as they are (the codec checks length and spare bits).
    Bytes(&'a [u8]),
}

/// How an owner message picks its connection: an open one, or sometimes any ever made.
type Pick = u8;

/// One thing that happens to the download.
#[derive(Debug)]
enum Op<'a> {
    /// The tracker sends an updated owner list.
    Owners(Vec<Listed>),
    /// Something happens on one connection.
    On(Pick, Event<'a>),
    /// The clock moves on by this many milliseconds.
    Advance { ms: u64 },
    /// A timer fires whether or not anything is due.
    Wake,
    /// The user stops the download.
    Abort,
}

/// Something that happens on one connection (only `Connected` and `Closed` on one not open).
#[derive(Debug)]
enum Event<'a> {
    /// A pending connect succeeds.
    Connected,
    /// A pending connect fails, or an open connection drops.
    Closed,
    /// The owner answers everything pending, honestly.
    Honest,
    /// The owner answers the size question however it likes.
    Answer {
        version: Version,
        have: Have<'a>,
        wrong_name: bool,
    },
    /// The owner answers its oldest hash request, maybe with one byte flipped.
    ReplyHashes { tamper: Option<(u16, u8)> },
    /// The owner sends hashes nobody asked for, from anywhere.
    Hashes {
        first: u32,
        count: u8,
        wrong_root: bool,
        tamper: Option<(u16, u8)>,
    },
    /// The owner answers its `n` oldest block requests; bit i of `corrupt` spoils the i-th.
    Serve { n: u8, corrupt: u8 },
    /// The owner sends a block of its choosing.
    Block {
        piece: u32,
        offset: u32,
        len: u32,
        corrupt: bool,
        wrong_root: bool,
    },
    /// The owner says it now has a piece.
    HavePiece { piece: u32, wrong_root: bool },
    /// The owner refuses something.
    Error { code: ErrorCode, reason: &'a str },
    /// The owner keeps its connection alive.
    KeepAlive,
    /// The owner sends a message only downloaders or the tracker send.
    Stray(u8),
    /// The owner sends raw bytes.
    Raw(&'a [u8]),
}

/// Any version, mostly the real one.
fn version(u: &mut Unstructured<'_>) -> Result<Version> {
    Ok(match u.int_in_range(0..=11)? {
        0..=6 => Version::Real,
        7 => Version::OtherRoot(u.arbitrary()?),
        8 => Version::OtherSize(u.int_in_range(0..=200_000)?),
        9 => Version::Empty,
        _ => Version::Raw(FileInfo {
            size: u.arbitrary()?,
            piece_size: u.arbitrary()?,
            root: u.arbitrary()?,
        }),
    })
}

/// A tracker owner list of up to six entries.
fn owner_list(u: &mut Unstructured<'_>, owners: usize) -> Result<Vec<Listed>> {
    let mut list = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        let who = u.choose_index(owners + 1)?;
        list.push(Listed {
            owner: (who < owners).then_some(who),
            version: version(u)?,
            complete: u.arbitrary()?,
        });
    }
    Ok(list)
}

/// A piece index: mostly near the file's, sometimes any.
fn piece(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(if u.ratio(7, 8)? {
        u.int_in_range(0..=9)?
    } else {
        u.arbitrary()?
    })
}

/// A byte to flip, and where (None: leave it alone).
fn tamper(u: &mut Unstructured<'_>) -> Result<Option<(u16, u8)>> {
    Ok(if u.arbitrary()? {
        Some((u.arbitrary()?, u.int_in_range(1..=255)?))
    } else {
        None
    })
}

/// The next operation, from the fuzz input.
fn op<'a>(u: &mut Unstructured<'a>, owners: usize, piece_size: u32) -> Result<Op<'a>> {
    Ok(match u.int_in_range(0..=7)? {
        0 => Op::Owners(owner_list(u, owners)?),
        1 | 2 => Op::Advance {
            ms: if u.arbitrary()? {
                u64::from(u.arbitrary::<u8>()?) * 4
            } else {
                u.int_in_range(0..=MAX_ADVANCE_MS)?
            },
        },
        3 if u.ratio(1, 8)? => Op::Abort,
        3 => Op::Wake,
        _ => Op::On(u.arbitrary()?, event(u, piece_size)?),
    })
}

/// The next connection event, from the fuzz input.
fn event<'a>(u: &mut Unstructured<'a>, piece_size: u32) -> Result<Event<'a>> {
    Ok(match u.int_in_range(0..=15)? {
        0 | 1 => Event::Connected,
        2 => Event::Closed,
        3..=5 => Event::Honest,
        6 => Event::Answer {
            version: version(u)?,
            have: match u.int_in_range(0..=2)? {
                0 => Have::Own,
                1 => Have::Full,
                _ => {
                    let len = u.int_in_range(0..=3)?;
                    Have::Bytes(u.bytes(len)?)
                }
            },
            wrong_name: u.ratio(1, 8)?,
        },
        7 => Event::ReplyHashes { tamper: tamper(u)? },
        8 => Event::Hashes {
            first: piece(u)?,
            count: u.int_in_range(0..=10)?,
            wrong_root: u.ratio(1, 8)?,
            tamper: tamper(u)?,
        },
        9 | 10 => Event::Serve {
            n: u.int_in_range(1..=8)?,
            corrupt: if u.ratio(3, 4)? { 0 } else { u.arbitrary()? },
        },
        11 => Event::Block {
            piece: piece(u)?,
            offset: match u.int_in_range(0..=3)? {
                0 | 1 => 0,
                2 => MAX_BLOCK_LEN,
                _ => u.int_in_range(0..=piece_size)?,
            },
            len: match u.int_in_range(0..=3)? {
                0 | 1 => piece_size.min(MAX_BLOCK_LEN),
                // The tail block of a two-block piece (1 byte for small pieces).
                2 => piece_size.saturating_sub(MAX_BLOCK_LEN).max(1),
                _ => u.int_in_range(1..=piece_size.min(MAX_BLOCK_LEN))?,
            },
            corrupt: u.arbitrary()?,
            wrong_root: u.ratio(1, 8)?,
        },
        12 => Event::HavePiece {
            piece: piece(u)?,
            wrong_root: u.ratio(1, 8)?,
        },
        13 => Event::Error {
            code: ErrorCode::from_u8(u.int_in_range(1..=5)?).unwrap_or(ErrorCode::Protocol),
            reason: u.arbitrary()?,
        },
        14 => match u.int_in_range(0..=2)? {
            0 => Event::KeepAlive,
            1 => Event::Stray(u.arbitrary()?),
            _ => {
                let len = u.int_in_range(0..=96)?;
                Event::Raw(u.bytes(len)?)
            }
        },
        _ => Event::Honest,
    })
}

/// Where a connection stands, as the driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Pending,
    Open,
    Closed,
}

/// One connection the download asked for, and what it asked of the owner there.
#[derive(Debug)]
struct Conn {
    owner: usize,
    state: ConnState,
    /// The size question is out.
    asked: bool,
    /// Hash requests not yet answered: (first, count).
    hash_requests: VecDeque<(u32, u32)>,
    /// Block requests not yet answered or cancelled.
    requests: VecDeque<BlockRequest>,
    /// The version the size question asked about.
    root: Option<RootHash>,
}

/// The `PeerIo`: checks and records every action of the download.
#[derive(Default)]
struct Io {
    conns: BTreeMap<SlotId, Conn>,
    /// Every address any owner list named.
    listed: HashSet<SocketAddr>,
    /// Every version any owner list named.
    versions: HashSet<FileInfo>,
    /// The pin's root prefix in hex, if the download is pinned.
    pin: Option<String>,
    /// The version the download chose (kept up to date by the driver).
    chosen: Option<FileInfo>,
    /// Set once the download completed or failed: no more I/O is allowed.
    over: bool,
    /// Whether whole pieces offered with `verify_write` are taken.
    takes_verify: bool,
    /// Pieces taken and not judged yet: (offset, bytes, expected hash, tag).
    verifying: VecDeque<(u64, Vec<u8>, Hash, u64)>,
}

impl PeerIo for Io {
    fn verify_write(&mut self, offset: u64, data: &[u8], want: &Hash, tag: u64) -> bool {
        assert!(!self.over, "a piece offered after the download ended");
        if self.takes_verify {
            self.verifying
                .push_back((offset, data.to_vec(), *want, tag));
        }
        self.takes_verify
    }

    fn connect(&mut self, slot: SlotId, addr: SocketAddr) {
        if tracing() {
            eprintln!("  connect slot {slot} to {addr}");
        }
        assert!(!self.over, "connect to {addr} after the download ended");
        assert!(
            self.listed.contains(&addr),
            "connect to {addr}, which no owner list named"
        );
        let owner = (0..MAX_OWNERS)
            .find(|&i| owner_addr(i) == addr)
            .expect("listed addresses are owners'");
        let conn = Conn {
            owner,
            state: ConnState::Pending,
            asked: false,
            hash_requests: VecDeque::new(),
            requests: VecDeque::new(),
            root: None,
        };
        assert!(
            self.conns.insert(slot, conn).is_none(),
            "slot {slot} reused"
        );
    }

    fn send(&mut self, slot: SlotId, msg: &Message<'_>) {
        assert!(!self.over, "sent {msg:?} after the download ended");
        let mut frame = Vec::new();
        if let Err(e) = encode(msg, &mut frame) {
            panic!("the download sent a message encode refuses ({e}): {msg:?}");
        }
        let conn = self
            .conns
            .get_mut(&slot)
            .expect("sent on a slot never connected");
        assert_eq!(
            conn.state,
            ConnState::Open,
            "sent {msg:?} on a connection not open"
        );
        // Layouts of the version asked about on this connection (several listed
        // versions may share a root and differ in size).
        let layouts: Vec<Layout> = self
            .versions
            .iter()
            .filter(|v| Some(v.root) == conn.root)
            .map(FileInfo::layout)
            .collect();
        match *msg {
            Message::SizeInformation(SizeInformation::Question { name, root }) => {
                assert_eq!(name, FILE);
                let root = root.expect("the question names the version");
                assert!(
                    self.versions.iter().any(|v| v.root == root),
                    "asked about a version no owner list named"
                );
                if let Some(pin) = &self.pin {
                    assert!(
                        hex(&root).starts_with(pin.as_str()),
                        "asked about a version the pin excludes"
                    );
                }
                assert!(!conn.asked, "asked the size twice");
                conn.asked = true;
                conn.root = Some(root);
            }
            Message::HashRequest { root, first, count } => {
                assert_eq!(
                    Some(root),
                    conn.root,
                    "hashes of another version than asked about"
                );
                assert!(
                    count > 0
                        && layouts
                            .iter()
                            .any(|l| u64::from(first) + u64::from(count)
                                <= u64::from(l.piece_count())),
                    "hash request {first}+{count} outside {layouts:?}"
                );
                conn.hash_requests.push_back((first, count));
            }
            Message::Request(r) => {
                assert_eq!(
                    Some(r.root),
                    conn.root,
                    "blocks of another version than asked about"
                );
                assert!(
                    r.len > 0
                        && r.len <= MAX_BLOCK_LEN
                        && layouts
                            .iter()
                            .any(|l| u64::from(r.offset) + u64::from(r.len)
                                <= u64::from(l.piece_len(r.piece))),
                    "request {r:?} outside {layouts:?}"
                );
                conn.requests.push_back(r);
            }
            Message::Cancel(r) => conn.requests.retain(|q| *q != r),
            Message::KeepAlive => {}
            ref other => panic!("the download sent an owner {other:?}"),
        }
    }

    fn disconnect(&mut self, slot: SlotId) {
        if tracing() {
            eprintln!("  disconnect slot {slot}");
        }
        let conn = self
            .conns
            .get_mut(&slot)
            .expect("disconnected a slot never connected");
        conn.state = ConnState::Closed;
        conn.hash_requests.clear();
        conn.requests.clear();
    }
}

/// The download, the swarm, the clock, and what has been reported so far.
struct Sim {
    real: RealFile,
    /// Which pieces each owner holds.
    holds: Vec<Bitfield>,
    /// Pieces an earlier run recorded as verified, and the bytes it left in the store.
    claimed: Vec<bool>,
    left: Vec<u8>,
    dl: Download<MemStore>,
    io: Io,
    now: Instant,
    done: BTreeSet<u32>,
    need_store_seen: bool,
    /// Set at `Complete` or `Failed`.
    over: bool,
}

impl Sim {
    /// A swarm, a download of its file, and the tracker's first owner list.
    fn new(u: &mut Unstructured<'_>) -> Result<Sim> {
        let big = u.ratio(1, 16)?;
        let (pieces, piece_size) = if big {
            (u.int_in_range(1..=2)?, MAX_BLOCK_LEN + MIN_PIECE_SIZE)
        } else {
            (u.int_in_range(0..=8)?, MIN_PIECE_SIZE)
        };
        let last_len = u.int_in_range(1..=piece_size)?;
        let seed: u64 = u.arbitrary()?;
        let real = RealFile::new(pieces, piece_size, last_len, seed);
        let count = real.layout.piece_count();

        let owners = u.int_in_range(1..=MAX_OWNERS)?;
        let mut holds = Vec::new();
        for _ in 0..owners {
            let mask: u8 = if u.ratio(3, 4)? { 0xff } else { u.arbitrary()? };
            let mut has = Bitfield::new(count);
            (0..count).filter(|p| mask >> p & 1 == 1).for_each(|p| {
                has.set(p);
            });
            holds.push(has);
        }

        // What an earlier run left: claimed pieces, each right or spoiled.
        let (claim_mask, spoil_mask): (u8, u8) = if u.ratio(1, 4)? {
            (u.arbitrary()?, u.arbitrary()?)
        } else {
            (0, 0)
        };
        let claimed: Vec<bool> = (0..count).map(|p| claim_mask >> p & 1 == 1).collect();
        let mut left = vec![0; real.bytes.len()];
        for p in (0..count).filter(|&p| claimed[p as usize]) {
            let range = piece_range(real.layout, p);
            left[range.clone()].copy_from_slice(&real.bytes[range.clone()]);
            if spoil_mask >> p & 1 == 1 {
                left[range.start] ^= 0x55;
            }
        }

        let config = config(u.int_in_range(1..=MAX_OWNERS)?, u.arbitrary()?);
        let now = Instant::now();
        // Sometimes pinned: to the real root, to another root owners may list, or to anything.
        // Taken from the content seed's top byte (0 in the hand-written seeds: no pin), so
        // the seeds keep their meaning.
        let top = (seed >> 56) as u8;
        let pin = match top % 8 {
            1 => Some(hex(&real.info.root)[..8 + usize::from(top / 8) % 57].to_owned()),
            2 => Some(hex(&[(seed >> 48) as u8; 4])),
            3 => Some(hex(&((seed >> 16) as u32).to_be_bytes())),
            _ => None,
        };
        let mut dl = Download::new(FILE, ME, config, now);
        if let Some(pin) = &pin {
            dl = dl.with_pin(RootPin::parse(pin).expect("8 to 64 hex digits"));
        }
        let io = Io {
            pin,
            takes_verify: (seed >> 40) & 1 == 1,
            ..Io::default()
        };
        let mut sim = Sim {
            real,
            holds,
            claimed,
            left,
            dl,
            io,
            now,
            done: BTreeSet::new(),
            need_store_seen: false,
            over: false,
        };
        let first = owner_list(u, owners)?;
        if tracing() {
            let holds: Vec<u32> = sim.holds.iter().map(Bitfield::count).collect();
            eprintln!(
                "{:?}; owners hold {holds:?} pieces; claimed {:?}; first list {first:?}",
                sim.real.layout, sim.claimed
            );
        }
        sim.owners(&first);
        sim.settle();
        Ok(sim)
    }

    fn owners_count(&self) -> usize {
        self.holds.len()
    }

    /// The tracker's owner list, through the codec, to the download.
    fn owners(&mut self, list: &[Listed]) {
        let owners: Vec<Owner<'_>> = list
            .iter()
            .map(|l| Owner {
                node_name: l.owner.map_or(ME, owner_name),
                addr: owner_addr(l.owner.unwrap_or(MAX_OWNERS)),
                info: l.version.info(&self.real),
                complete: l.complete,
            })
            .collect();
        let msg = Message::TrackerToNode(TrackerToNode { name: FILE, owners });
        let mut frame = Vec::new();
        if encode(&msg, &mut frame).is_err() {
            return;
        }
        let Ok(Decoded::Frame(Message::TrackerToNode(list), _)) =
            decode_frame(&frame, &Limits::default())
        else {
            panic!("an encoded owner list does not decode");
        };
        self.io.listed.extend(list.owners.iter().map(|o| o.addr));
        self.io.versions.extend(list.owners.iter().map(|o| o.info));
        self.dl.handle_owners(self.now, &list.owners, &mut self.io);
    }

    /// Resolves a pick to a slot: an open or pending one, or (high bit set) any ever made.
    fn pick(&self, pick: Pick) -> Option<SlotId> {
        let live: Vec<SlotId> = self
            .io
            .conns
            .iter()
            .filter(|(_, c)| c.state != ConnState::Closed)
            .map(|(&s, _)| s)
            .collect();
        let ever: Vec<SlotId> = self.io.conns.keys().copied().collect();
        let from = if pick & 0x80 == 0 && !live.is_empty() {
            &live
        } else {
            &ever
        };
        (!from.is_empty()).then(|| from[usize::from(pick & 0x7f) % from.len()])
    }

    /// The driver's view of `slot`'s connection state.
    fn state(&self, slot: SlotId) -> ConnState {
        self.io
            .conns
            .get(&slot)
            .map_or(ConnState::Closed, |c| c.state)
    }

    /// The connection closed under the download (refused, reset, or a bad frame).
    fn close(&mut self, slot: SlotId) {
        if self.state(slot) == ConnState::Closed {
            return;
        }
        self.io.disconnect(slot);
        self.dl.handle_closed(self.now, slot, &mut self.io);
    }

    /// Sends `msg` from the owner on `slot`: encoded, decoded, then handed over.
    fn deliver(&mut self, slot: SlotId, msg: &Message<'_>) {
        let mut frame = Vec::new();
        if encode(msg, &mut frame).is_ok() {
            self.deliver_bytes(slot, &frame);
        }
    }

    /// Hands every frame `bytes` decode to to the download; a bad frame closes the connection.
    fn deliver_bytes(&mut self, slot: SlotId, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.state(slot) == ConnState::Open {
            match decode_frame(bytes, &Limits::default()) {
                Ok(Decoded::Frame(msg, used)) => {
                    bytes = &bytes[used..];
                    self.dl.handle_message(self.now, slot, &msg, &mut self.io);
                }
                Ok(Decoded::NeedMore(_)) => return,
                Err(_) => return self.close(slot),
            }
        }
    }

    /// The size answer of an owner holding `version` and claiming `have`.
    fn answer(&mut self, slot: SlotId, version: Version, have: &Have<'_>, wrong_name: bool) {
        let Some(conn) = self.io.conns.get_mut(&slot) else {
            return;
        };
        conn.asked = false;
        let owner = conn.owner;
        let info = version.info(&self.real);
        let bits = match have {
            Have::Own => self.holds[owner].as_bytes().to_vec(),
            // A bitfield bigger than a frame would only be refused by the encoder.
            Have::Full if info.bitfield_len() <= 1 << 16 => {
                Bitfield::full(info.piece_count() as u32)
                    .as_bytes()
                    .to_vec()
            }
            Have::Full => Vec::new(),
            Have::Bytes(b) => b.to_vec(),
        };
        let msg = Message::SizeInformation(SizeInformation::Answer {
            name: if wrong_name { "g" } else { FILE },
            info,
            have: &bits,
        });
        self.deliver(slot, &msg);
    }

    /// `count` hashes from `first`: the real ones where they exist, garbage past the end.
    fn hashes(&self, first: u32, count: u32, tamper: Option<(u16, u8)>) -> Vec<u8> {
        let mut out: Vec<u8> = (0..count)
            .flat_map(|i| {
                let index = u64::from(first) + u64::from(i);
                usize::try_from(index)
                    .ok()
                    .and_then(|i| self.real.hashes.get(i))
                    .copied()
                    .unwrap_or([0xee; 32])
            })
            .collect();
        if let Some((at, xor)) = tamper {
            if !out.is_empty() {
                let at = usize::from(at) % out.len();
                out[at] ^= xor;
            }
        }
        out
    }

    /// The owner answers its oldest hash request.
    fn reply_hashes(&mut self, slot: SlotId, tamper: Option<(u16, u8)>) {
        let Some((first, count)) = self
            .io
            .conns
            .get_mut(&slot)
            .and_then(|c| c.hash_requests.pop_front())
        else {
            return;
        };
        let hashes = self.hashes(first, count, tamper);
        let root = self.io.chosen.map_or(self.real.info.root, |i| i.root);
        self.deliver(
            slot,
            &Message::Hashes {
                root,
                first,
                hashes: &hashes,
            },
        );
    }

    /// The owner answers its `n` oldest block requests; bit i of `corrupt` spoils the i-th.
    fn serve(&mut self, slot: SlotId, n: u8, corrupt: u8) {
        for i in 0..n {
            let Some(conn) = self.io.conns.get_mut(&slot) else {
                return;
            };
            let owner = conn.owner;
            let Some(r) = conn.requests.pop_front() else {
                return;
            };
            if !self.holds[owner].get(r.piece) {
                let refusal = Message::Error {
                    code: ErrorCode::BadRequest,
                    reason: "piece not held here",
                };
                return self.deliver(slot, &refusal);
            }
            let mut data = self.real.block(r.piece, r.offset, r.len);
            if corrupt >> (i % 8) & 1 == 1 {
                let at = data.len() / 2;
                data[at] ^= 0x80;
            }
            let block = Message::FileCommunication(Block {
                root: r.root,
                piece: r.piece,
                offset: r.offset,
                data: &data,
            });
            self.deliver(slot, &block);
        }
    }

    /// The owner on `slot` answers everything it was asked, as an honest owner would.
    fn honest(&mut self, slot: SlotId) {
        if self.io.conns.get(&slot).is_some_and(|c| c.asked) {
            self.answer(slot, Version::Real, &Have::Own, false);
        }
        while self
            .io
            .conns
            .get(&slot)
            .is_some_and(|c| !c.hash_requests.is_empty())
        {
            self.reply_hashes(slot, None);
        }
        let pending = self.io.conns.get(&slot).map_or(0, |c| c.requests.len());
        self.serve(slot, pending.min(255) as u8, 0);
    }

    /// A message only downloaders or the tracker send, from an owner.
    fn stray(&mut self, slot: SlotId, which: u8) {
        let root = self.real.info.root;
        let r = BlockRequest {
            root,
            piece: 0,
            offset: 0,
            len: 1,
        };
        let msg = match which % 5 {
            0 => Message::Request(r),
            1 => Message::Cancel(r),
            2 => Message::HashRequest {
                root,
                first: 0,
                count: 1,
            },
            3 => Message::SizeInformation(SizeInformation::Question {
                name: FILE,
                root: None,
            }),
            _ => Message::NodeToTracker(NodeToTracker::Need { name: FILE }),
        };
        self.deliver(slot, &msg);
    }

    /// Applies one operation, then does what the node does after any event.
    fn apply(&mut self, op: Op<'_>) {
        if tracing() {
            eprintln!("{:?} {op:?}", self.dl.phase());
        }
        self.io.chosen = self.dl.info();
        match op {
            Op::Owners(list) => self.owners(&list),
            Op::On(pick, event) => {
                if let Some(slot) = self.pick(pick) {
                    self.event(slot, event);
                }
            }
            Op::Advance { ms } => {
                self.judge();
                self.now += Duration::from_millis(ms);
            }
            Op::Wake => {
                self.judge();
                self.dl.handle_timeout(self.now, &mut self.io);
            }
            Op::Abort => self.dl.abort("stopped by the user".into(), &mut self.io),
        }
        self.settle();
    }

    /// The driver's verdicts on the pieces it took: each written only if it matches.
    fn judge(&mut self) {
        while let Some((at, data, want, tag)) = self.io.verifying.pop_front() {
            let good = hash_piece(&data) == want;
            if good {
                if let Some(store) = self.dl.store_mut() {
                    store
                        .write_at(at, &data)
                        .expect("a taken piece lies inside the store");
                }
            }
            if tracing() {
                eprintln!("  verdict {tag} at {at}: {good}");
            }
            self.dl
                .handle_verified(self.now, tag, Ok(good), &mut self.io);
            while let Some(notice) = self.dl.poll_notice() {
                self.notice(notice);
            }
        }
    }

    /// An event on `slot`'s connection.
    fn event(&mut self, slot: SlotId, event: Event<'_>) {
        let root = |wrong: bool, real: RootHash| if wrong { [7; 32] } else { real };
        let real_root = self.real.info.root;
        match (event, self.state(slot)) {
            (Event::Connected, ConnState::Pending) => {
                if let Some(c) = self.io.conns.get_mut(&slot) {
                    c.state = ConnState::Open;
                }
                self.dl.handle_connected(self.now, slot, &mut self.io);
            }
            (Event::Closed, _) => self.close(slot),
            // Nothing else happens on a connection that is not open.
            (_, ConnState::Pending | ConnState::Closed) | (Event::Connected, _) => {}
            (Event::Honest, _) => self.honest(slot),
            (
                Event::Answer {
                    version,
                    have,
                    wrong_name,
                },
                _,
            ) => self.answer(slot, version, &have, wrong_name),
            (Event::ReplyHashes { tamper }, _) => self.reply_hashes(slot, tamper),
            (
                Event::Hashes {
                    first,
                    count,
                    wrong_root,
                    tamper,
                },
                _,
            ) => {
                let hashes = self.hashes(first, u32::from(count), tamper);
                let msg = Message::Hashes {
                    root: root(wrong_root, real_root),
                    first,
                    hashes: &hashes,
                };
                self.deliver(slot, &msg);
            }
            (Event::Serve { n, corrupt }, _) => self.serve(slot, n, corrupt),
            (
                Event::Block {
                    piece,
                    offset,
                    len,
                    corrupt,
                    wrong_root,
                },
                _,
            ) => {
                let mut data = self.real.block(piece, offset, len);
                if corrupt {
                    data[0] ^= 1;
                }
                let msg = Message::FileCommunication(Block {
                    root: root(wrong_root, real_root),
                    piece,
                    offset,
                    data: &data,
                });
                self.deliver(slot, &msg);
            }
            (Event::HavePiece { piece, wrong_root }, _) => {
                let msg = Message::HavePiece {
                    root: root(wrong_root, real_root),
                    piece,
                };
                self.deliver(slot, &msg);
            }
            (Event::Error { code, reason }, _) => {
                self.deliver(slot, &Message::Error { code, reason })
            }
            (Event::KeepAlive, _) => self.deliver(slot, &Message::KeepAlive),
            (Event::Stray(which), _) => self.stray(slot, which),
            (Event::Raw(bytes), _) => self.deliver_bytes(slot, bytes),
        }
    }

    /// Answers notices and handles due deadlines until neither is left, then checks the clock.
    fn settle(&mut self) {
        // Resume verification may ask to run again at the same instant, a step at a time.
        for _ in 0..64 {
            self.io.chosen = self.dl.info();
            while let Some(notice) = self.dl.poll_notice() {
                self.notice(notice);
            }
            match self.dl.poll_timeout() {
                Some(at) if at <= self.now => self.dl.handle_timeout(self.now, &mut self.io),
                _ => break,
            }
        }
        while let Some(notice) = self.dl.poll_notice() {
            self.notice(notice);
        }
        if let Some(at) = self.dl.poll_timeout() {
            assert!(
                at > self.now,
                "a handled deadline is still due after 64 rounds"
            );
        }
    }

    /// What the node does with a notice, and what each notice must satisfy.
    fn notice(&mut self, notice: Notice) {
        if tracing() {
            eprintln!("  notice {notice:?}");
        }
        assert!(!self.over, "{notice:?} after the download ended");
        match notice {
            Notice::NeedStore { info } => {
                assert!(!self.need_store_seen, "NeedStore twice");
                self.need_store_seen = true;
                assert_eq!(Some(info), self.dl.info());
                assert!(
                    info.size <= MAX_STORE,
                    "a store asked for an unverified {info:?}"
                );
                let store = if info == self.real.info {
                    MemStore::with_bytes(self.left.clone())
                } else {
                    MemStore::new(info.size)
                };
                let claimed = self.claimed.clone();
                self.dl
                    .attach_store(self.now, store, &claimed, &mut self.io);
            }
            Notice::PieceDone(piece) => {
                let piece = piece.0;
                assert!(self.done.insert(piece), "PieceDone({piece}) twice");
                let info = self
                    .dl
                    .info()
                    .expect("a piece done before the version was chosen");
                assert_eq!(info, self.real.info, "a piece of another version verified");
                let store = self.dl.store().expect("a piece done without a store");
                let range = piece_range(self.real.layout, piece);
                assert!(!range.is_empty(), "PieceDone({piece}) out of range");
                assert!(
                    store.bytes()[range.clone()] == self.real.bytes[range],
                    "piece {piece} reported done with wrong bytes"
                );
            }
            Notice::Complete => {
                let info = self
                    .dl
                    .info()
                    .expect("complete before a version was chosen");
                let layout = info.layout();
                let pieces = layout.piece_count();
                assert!(
                    (0..pieces).all(|p| self.done.contains(&p)),
                    "complete with pieces never reported done"
                );
                let store = self.dl.take_store().expect("complete without a store");
                assert_eq!(store.len(), info.size);
                let hashes: Vec<Hash> = (0..pieces)
                    .map(|p| hash_piece(&store.bytes()[piece_range(layout, p)]))
                    .collect();
                let verified = root_hash(layout, &hashes) == info.root;
                {
                    assert!(
                        verified,
                        "completed {info:?} with bytes whose root is not that version's"
                    );
                    if info.root == self.real.info.root {
                        assert!(
                            store.bytes() == &self.real.bytes[..],
                            "completed with wrong bytes"
                        );
                    }
                }
                if let Some(pin) = &self.io.pin {
                    assert!(
                        hex(&info.root).starts_with(pin.as_str()),
                        "completed a version the pin excludes"
                    );
                }
                self.dl.finished();
                self.end();
            }
            Notice::Failed(reason) => {
                assert!(!reason.is_empty(), "failed without a reason");
                self.end();
            }
        }
    }

    /// The download is over: from now on it must stay quiet.
    fn end(&mut self) {
        self.over = true;
        self.io.over = true;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(mut sim) = Sim::new(&mut u) else {
        return;
    };
    let owners = sim.owners_count();
    let piece_size = sim.real.layout.piece_size;
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(op) = op(&mut u, owners, piece_size) else {
            break;
        };
        sim.apply(op);
    }
    // Nothing is due that the driver has not handled, and a last long wait changes nothing it should not.
    sim.now += Duration::from_millis(MAX_ADVANCE_MS);
    sim.settle();
});
