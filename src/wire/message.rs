//! Every message shoal sends, as checked values borrowing from the frame they came in.

use std::fmt;
use std::net::SocketAddr;

use super::{frame::kind, WireError, MAX_PIECE_SIZE, MIN_PIECE_SIZE};
use crate::layout::Layout;

/// BLAKE3 root hash naming one version of a file: the hash of its layout and piece hashes.
pub type RootHash = [u8; 32];

/// A node's secret, created on its first start and kept in its folder: proves the node's name.
pub type NodeSecret = [u8; 32];

/// What an owner publishes about a file: enough to lay out and verify a download.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileInfo {
    /// File length in bytes.
    pub size: u64,
    /// Length of every piece but the last, in bytes (between MIN_PIECE_SIZE and MAX_PIECE_SIZE).
    pub piece_size: u32,
    /// Root hash of the piece hashes: tells versions of one name apart.
    pub root: RootHash,
}

/// Why a peer or the tracker refused something (the code in an `Error` frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The file (or version) is not served here.
    NotFound = 1,
    /// The request was well-formed but refused (busy, over a limit, not allowed).
    Refused = 2,
    /// The request named pieces or ranges that do not exist.
    BadRequest = 3,
    /// A name was refused (not a plain file name).
    BadName = 4,
    /// The sender broke the protocol; the connection closes after this frame.
    Protocol = 5,
}

/// A node speaking to the tracker (heritage `NodeToTracker`, its `mode` is the variant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeToTracker<'a> {
    /// First frame on a tracker connection: who I am and the port I serve peers on.
    Hello {
        /// The node's name (`-n`).
        node_name: &'a str,
        /// The port peers connect to; the tracker pairs it with the address it sees.
        listen_port: u16,
        /// The node's secret (kept in its folder): only its holder may reclaim the name.
        secret: NodeSecret,
    },
    /// Heritage `have`: I own (all or part of) this file version.
    Have {
        /// File name.
        name: &'a str,
        /// Size, piece size and root hash of the version I hold.
        info: FileInfo,
        /// `false` while I hold only some pieces (a partial owner).
        complete: bool,
    },
    /// Heritage `need`: send me the owner list, and keep me told while I am downloading.
    Need {
        /// File name.
        name: &'a str,
    },
    /// I no longer need updates about this file (download finished or abandoned).
    Unneed {
        /// File name.
        name: &'a str,
    },
    /// I stopped sharing this version (the file is gone or the download was dropped).
    Drop {
        /// File name.
        name: &'a str,
        /// The version no longer shared.
        root: RootHash,
    },
    /// Heritage `exit`: take me off every owner list.
    Exit,
    /// Every file I hold has been stated (`Have`) since my `Hello`: forget entries I did not state.
    Synced,
}

/// One owner of a file version, as the tracker lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner<'a> {
    /// The owner's node name.
    pub node_name: &'a str,
    /// Where to reach it: the address the tracker saw, the port it declared.
    pub addr: SocketAddr,
    /// The version it holds.
    pub info: FileInfo,
    /// `false` for a partial owner.
    pub complete: bool,
}

/// Heritage `TrackerToNode`: the owner list of one file (every version of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackerToNode<'a> {
    /// File name the list is for.
    pub name: &'a str,
    /// Its owners, at most `MAX_OWNERS_PER_REPLY`.
    pub owners: Vec<Owner<'a>>,
}

/// Heritage `SizeInformation`: on the wire `size = -1` is the question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeInformation<'a> {
    /// "What is the size?": asks an owner for a file's layout and which pieces it holds.
    Question {
        /// File name.
        name: &'a str,
        /// The version wanted, or `None` for whichever the owner has.
        root: Option<RootHash>,
    },
    /// The answer: the layout and a bitfield of the pieces the owner holds.
    Answer {
        /// File name.
        name: &'a str,
        /// Size, piece size and root hash.
        info: FileInfo,
        /// One bit per piece, most significant bit first; spare bits are zero.
        have: &'a [u8],
    },
}

/// A request for `len` bytes of piece `piece` starting at `offset` within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    /// The file version.
    pub root: RootHash,
    /// Piece index.
    pub piece: u32,
    /// Offset within the piece.
    pub offset: u32,
    /// Length in bytes, at most `MAX_BLOCK_LEN`.
    pub len: u32,
}

/// Heritage `FileCommunication`: bytes of a piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block<'a> {
    /// The file version.
    pub root: RootHash,
    /// Piece index.
    pub piece: u32,
    /// Offset within the piece.
    pub offset: u32,
    /// The bytes.
    pub data: &'a [u8],
}

/// Every frame's content. Borrows names and data from the decoded frame: no copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Node → tracker.
    NodeToTracker(NodeToTracker<'a>),
    /// Tracker → node: an owner list.
    TrackerToNode(TrackerToNode<'a>),
    /// Peer ⇄ peer: the size question and its answer.
    SizeInformation(SizeInformation<'a>),
    /// Peer → peer: data answering a `Request`.
    FileCommunication(Block<'a>),
    /// Peer → peer: ask for a block.
    Request(BlockRequest),
    /// Peer ⇄ peer: from a downloader, withdraw a request (endgame losers, a piece found
    /// nearer); from an owner, turn a queued request for a whole piece down (others hold
    /// it and this owner cannot serve it soon): the downloader asks someone else.
    Cancel(BlockRequest),
    /// Peer → peer: I now hold this verified piece.
    HavePiece {
        /// The file version.
        root: RootHash,
        /// Piece index.
        piece: u32,
    },
    /// Peer → peer: send me piece hashes `first .. first + count`.
    HashRequest {
        /// The file version.
        root: RootHash,
        /// First piece index.
        first: u32,
        /// How many hashes, at most `MAX_HASHES_PER_FRAME`.
        count: u32,
    },
    /// Peer → peer: piece hashes starting at `first`, 32 bytes each. None at all turns the
    /// request down: an original owner busy handing out pieces nobody else has sends the
    /// crowd to those who already hold the hashes (asked again, it answers).
    Hashes {
        /// The file version.
        root: RootHash,
        /// Index of the first hash.
        first: u32,
        /// Concatenated 32-byte hashes (length a multiple of 32).
        hashes: &'a [u8],
    },
    /// Either direction: a refusal with a code and a human reason.
    Error {
        /// What kind of refusal.
        code: ErrorCode,
        /// Why, for the log (at most `MAX_REASON_LEN` bytes of UTF-8).
        reason: &'a str,
    },
    /// Either direction: I am alive (sent on idle connections).
    KeepAlive,
}

impl Message<'_> {
    /// The type code this message carries in its frame header (see [`kind`](super::kind)).
    pub fn type_code(&self) -> u8 {
        match self {
            Message::NodeToTracker(_) => kind::NODE_TO_TRACKER,
            Message::TrackerToNode(_) => kind::TRACKER_TO_NODE,
            Message::SizeInformation(_) => kind::SIZE_INFORMATION,
            Message::FileCommunication(_) => kind::FILE_COMMUNICATION,
            Message::Request(_) => kind::REQUEST,
            Message::Cancel(_) => kind::CANCEL,
            Message::HavePiece { .. } => kind::HAVE_PIECE,
            Message::HashRequest { .. } => kind::HASH_REQUEST,
            Message::Hashes { .. } => kind::HASHES,
            Message::Error { .. } => kind::ERROR,
            Message::KeepAlive => kind::KEEP_ALIVE,
        }
    }
}

impl ErrorCode {
    /// The code for its wire byte, `None` for a byte no code uses.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => ErrorCode::NotFound,
            2 => ErrorCode::Refused,
            3 => ErrorCode::BadRequest,
            4 => ErrorCode::BadName,
            5 => ErrorCode::Protocol,
            _ => return None,
        })
    }
}

impl FileInfo {
    /// Number of pieces (the last may be short); `size / piece_size` rounded up.
    ///
    /// Meaningful once [`check`](Self::check) passed (a zero piece size gives 0 here).
    pub fn piece_count(&self) -> u64 {
        match self.piece_size {
            0 => 0,
            p => self.size.div_ceil(u64::from(p)),
        }
    }

    /// The file's geometry, for the piece math (offsets, lengths, the root hash).
    pub fn layout(&self) -> Layout {
        Layout {
            size: self.size,
            piece_size: self.piece_size,
        }
    }

    /// Checks the layout rule: piece size in `MIN_PIECE_SIZE..=MAX_PIECE_SIZE`, at most `u32::MAX` pieces.
    pub fn check(&self) -> Result<(), WireError> {
        if !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&self.piece_size) {
            return Err(WireError::BadField("piece size out of range"));
        }
        // Piece indices are u32 everywhere on the wire; with the piece size non-zero
        // here, this is all `is_valid` still asks.
        if !self.layout().is_valid() {
            return Err(WireError::BadField("more than u32::MAX pieces"));
        }
        Ok(())
    }

    /// Length in bytes of a bitfield with one bit per piece.
    pub fn bitfield_len(&self) -> u64 {
        self.piece_count().div_ceil(8)
    }
}

/// The name rule (see [`crate::names::check_name`]) for every name in a message.
pub fn check_name(name: &str) -> Result<(), WireError> {
    crate::names::check_name(name).map_err(WireError::BadName)
}

/// A name (or any text a peer sent) as it may be logged: control characters (which could forge log lines or
/// move the terminal's cursor) are escaped as Rust writes them, everything else kept.
#[derive(Clone, Copy, Debug)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_debug())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}
