//! One owner as a download sees it: its connection state, its pieces, its requests, its rate.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::bitfield::Bitfield;
use super::piece::PieceIndex;

/// Identifies one owner connection within a download; never reused, so stale events are ignored.
pub type SlotId = u64;

/// Where a connection to an owner stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerPhase {
    /// TCP connect in progress.
    Connecting,
    /// Connected; the size question is out.
    Asked,
    /// The owner answered with its layout and pieces: requests may flow.
    Ready,
}

/// One block asked of an owner and not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outstanding {
    /// The piece.
    pub piece: PieceIndex,
    /// Offset within the piece.
    pub offset: u32,
    /// Block length.
    pub len: u32,
}

/// An owner connection of one download.
#[derive(Debug)]
pub struct Peer {
    /// The owner's address (as the tracker listed it).
    pub addr: SocketAddr,
    /// The owner's node name, for messages.
    pub name: String,
    /// Connection state.
    pub phase: PeerPhase,
    /// Pieces it holds (empty until it answers).
    pub has: Bitfield,
    /// Blocks asked and not yet received, in the order asked (owners answer in order).
    pub requests: VecDeque<Outstanding>,
    /// Sum of `requests` lengths.
    pub outstanding_bytes: u64,
    /// Bytes of a multi-block piece received so far, by piece.
    pub partial_pieces: Vec<(PieceIndex, u32)>,
    /// When this owner last made progress (connected, answered, delivered bytes).
    pub last_progress: Instant,
    /// Estimated delivery rate in bytes per second (0 until measured).
    pub rate: f64,
    bytes_since_sample: u64,
    sampled_at: Instant,
    /// Total bytes of verified data it delivered.
    pub delivered: u64,
    /// Slow-start allowance: starts small, grows by every byte delivered (doubling per round trip).
    ramp: u64,
    /// Bytes of requests we cancelled: blocks it may still send us unasked, in good faith.
    pub excused_bytes: u64,
    /// Pieces it turned down (a `Cancel` from it), not asked of it again until the time given.
    refused: Vec<(PieceIndex, Instant)>,
    /// When the connection attempt began.
    pub since: Instant,
}

/// How long a piece an owner turned down is asked of others only: long enough to try the
/// other holders first, short enough that a busy holder is asked again once it may have
/// room (1 s left pieces unasked while their holders idled, in the swarm simulation).
pub const REFUSED_FOR: Duration = Duration::from_millis(100);
/// Most turned-down pieces remembered per owner (the oldest are forgotten first).
const MAX_REFUSED: usize = 256;

/// Fewest bytes kept requested from a measured owner.
pub const MIN_WINDOW: u64 = 1 << 20;
/// Bytes requested from a new owner before it has delivered anything (at least one piece is).
pub const INITIAL_WINDOW: u64 = 256 << 10;
/// Most bytes kept requested from one owner.
pub const MAX_WINDOW: u64 = 32 << 20;
/// How much of an owner's measured rate the window covers: enough to keep its pipe full.
const WINDOW_TIME: f64 = 0.5;

impl Peer {
    /// A new connection attempt to `addr`.
    pub fn new(addr: SocketAddr, name: String, now: Instant) -> Self {
        Peer {
            addr,
            name,
            phase: PeerPhase::Connecting,
            has: Bitfield::default(),
            requests: VecDeque::new(),
            outstanding_bytes: 0,
            partial_pieces: Vec::new(),
            last_progress: now,
            rate: 0.0,
            bytes_since_sample: 0,
            sampled_at: now,
            delivered: 0,
            ramp: INITIAL_WINDOW,
            excused_bytes: 0,
            refused: Vec::new(),
            since: now,
        }
    }

    /// Bytes this owner should have outstanding: its rate over [`WINDOW_TIME`] within bounds,
    /// and no more than its slow-start allowance, so a new owner cannot take a large share of
    /// the file before it has shown its speed.
    pub fn window(&self) -> u64 {
        let by_rate = if self.rate > 0.0 {
            ((self.rate * WINDOW_TIME) as u64).clamp(MIN_WINDOW, MAX_WINDOW)
        } else {
            MAX_WINDOW
        };
        by_rate.min(self.ramp)
    }

    /// Records `bytes` received now.
    pub fn received(&mut self, now: Instant, bytes: u64) {
        self.bytes_since_sample += bytes;
        self.last_progress = now;
        self.ramp = (self.ramp + bytes).min(MAX_WINDOW);
    }

    /// Folds the bytes since the last sample into the rate estimate (call about once a second).
    pub fn sample_rate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.sampled_at).as_secs_f64();
        if elapsed < 0.05 {
            return;
        }
        let current = self.bytes_since_sample as f64 / elapsed;
        self.rate = if self.rate == 0.0 {
            current
        } else {
            0.5 * self.rate + 0.5 * current
        };
        self.bytes_since_sample = 0;
        self.sampled_at = now;
    }

    /// How long this owner may go without delivering before it is considered stalled:
    /// four times what its measured rate needs for the oldest block, within bounds.
    pub fn stall_timeout(&self, min: Duration, unknown: Duration) -> Duration {
        if self.rate <= 0.0 {
            // Delivered something but not yet sampled: it is alive and fast enough to count on.
            return if self.bytes_since_sample > 0 || self.delivered > 0 {
                min
            } else {
                unknown
            };
        }
        let block = self.requests.front().map_or(0, |r| r.len) as f64;
        Duration::from_secs_f64((4.0 * block / self.rate).min(60.0)).max(min)
    }

    /// The owner turned down its request for `piece`: it is asked of others for a while.
    pub fn refuse(&mut self, piece: PieceIndex, now: Instant) {
        self.refused.retain(|&(_, until)| until > now);
        if self.refused.len() >= MAX_REFUSED {
            self.refused.remove(0);
        }
        self.refused.push((piece, now + REFUSED_FOR));
    }

    /// True if the owner turned `piece` down a moment ago.
    pub fn refuses(&self, piece: PieceIndex, now: Instant) -> bool {
        self.refused
            .iter()
            .any(|&(p, until)| p == piece && until > now)
    }

    /// True if a block of `piece` is asked of this owner.
    pub fn is_fetching(&self, piece: PieceIndex) -> bool {
        self.requests.iter().any(|r| r.piece == piece)
    }

    /// Forgets every outstanding block of `piece`; returns true if there was any.
    pub fn forget_piece(&mut self, piece: PieceIndex) -> bool {
        let before = self.requests.len();
        self.requests.retain(|r| r.piece != piece);
        self.outstanding_bytes = self.requests.iter().map(|r| u64::from(r.len)).sum();
        self.partial_pieces.retain(|&(p, _)| p != piece);
        before != self.requests.len()
    }

    /// Pieces with blocks outstanding, each once, in request order.
    pub fn pieces_in_flight(&self) -> Vec<PieceIndex> {
        let mut pieces: Vec<PieceIndex> = Vec::new();
        for r in &self.requests {
            if pieces.last() != Some(&r.piece) && !pieces.contains(&r.piece) {
                pieces.push(r.piece);
            }
        }
        pieces
    }
}
