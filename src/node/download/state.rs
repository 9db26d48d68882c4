//! What a download holds in each phase: every variant carries only what exists then,
//! so a piece cannot be checked before the hashes are verified, nor written before a
//! store is attached.
//!
//! ```text
//! Owners ─choose─▶ Hashes ─root holds─▶ Store ─attach─▶ Verify ─▶ Pieces ─▶ Finishing ─▶ Done
//!    ▲               │                                               │
//!    └───abandon─────┴───────────────────────────────────────────────┘   (any) ─fail─▶ Failed
//! ```

use super::*;

/// The piece hashes of a chosen version, being fetched from one owner at a time.
pub(super) struct HashFetch {
    /// The version chosen (its layout is only a claim until the hashes hash to its root).
    pub(super) info: FileInfo,
    /// Allocated once an owner answers, so an unanswered claim costs no memory.
    pub(super) hashes: Vec<Hash>,
    /// Which of `hashes` arrived.
    pub(super) got: Vec<bool>,
    /// The owner asked for the hashes.
    pub(super) source: Option<SlotId>,
    /// Ranges (first, count) asked of `source` and not yet answered.
    pub(super) asked: Vec<(u32, u32)>,
    /// Owners that turned our hash request down lately: asked again only when nobody else
    /// is there to ask, on the next tick.
    pub(super) turned_down: Vec<SlotId>,
    /// When the last of them turned us down.
    pub(super) turned_down_at: Option<Instant>,
    /// When the version was chosen or last got hashes it needed (an answer to the size
    /// question alone proves nothing: anyone can echo the layout back).
    pub(super) progress_at: Instant,
}

/// A verified version with its store: pieces are checked, fetched and written.
pub(super) struct Fetching<S> {
    pub(super) info: FileInfo,
    /// Verified piece hashes.
    pub(super) hashes: Vec<Hash>,
    pub(super) picker: Picker,
    pub(super) store: S,
    /// When each piece in flight was last asked for (endgame copies wait for late ones).
    pub(super) asked_at: HashMap<PieceIndex, Instant>,
    /// Pieces handed to the driver to verify and write, awaiting its verdict (a few at most).
    pub(super) verifying: Vec<Pending>,
}

impl<S> Fetching<S> {
    /// True while a copy of `piece` awaits its verdict.
    pub(super) fn is_verifying(&self, piece: PieceIndex) -> bool {
        self.verifying.iter().any(|p| p.piece == piece)
    }
}

/// A piece handed to [`PeerIo::verify_write`]: who sent it, for the verdict.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub(super) tag: u64,
    pub(super) piece: PieceIndex,
    /// The connection it came on (it may be gone when the verdict comes).
    pub(super) slot: SlotId,
    /// Where the sender is, so it can be banned even once disconnected.
    pub(super) addr: SocketAddr,
    /// Where in the file it goes, and its length.
    pub(super) at: u64,
    pub(super) len: u32,
}

/// Re-hashing the pieces an earlier run recorded as verified, a step at a time.
pub(super) struct Verifying<S> {
    pub(super) fetch: Fetching<S>,
    /// The next piece to look at.
    pub(super) next: u32,
    /// When the next step is due.
    pub(super) due: Instant,
    /// Pieces the earlier run recorded as verified.
    pub(super) claimed: Vec<bool>,
    /// The claims were already checked against the hashes (by the driver, off the network thread).
    pub(super) checked: bool,
}

/// Where one download stands, with what it holds there.
pub(super) enum State<S> {
    /// Waiting for the tracker's owner list, or for an owner of a version worth trying.
    Owners {
        /// Since when the tracker has listed nobody.
        starving_since: Option<Instant>,
    },
    /// A version is chosen; its piece hashes are being fetched.
    Hashes(HashFetch),
    /// The hashes hold: waiting for the driver to attach storage.
    Store { info: FileInfo, hashes: Vec<Hash> },
    /// Re-verifying what an earlier run left.
    Verify(Verifying<S>),
    /// Fetching pieces.
    Pieces(Fetching<S>),
    /// Every piece verified; the driver takes the store to flush and rename it.
    Finishing {
        info: FileInfo,
        hashes: Vec<Hash>,
        have: Bitfield,
        store: Option<S>,
    },
    /// Flushed and renamed; the hashes wait for the driver to publish them.
    Done {
        info: FileInfo,
        hashes: Vec<Hash>,
        have: Bitfield,
    },
    /// Stopped; what was verified stays (on disk, and here for the report).
    Failed {
        info: Option<FileInfo>,
        have: Option<Bitfield>,
        store: Option<S>,
    },
}

impl<S> State<S> {
    /// The plain phase this state is in.
    pub(super) fn phase(&self) -> Phase {
        match self {
            State::Owners { .. } => Phase::Owners,
            State::Hashes(_) => Phase::Hashes,
            State::Store { .. } => Phase::Store,
            State::Verify(_) => Phase::Verify,
            State::Pieces(_) => Phase::Pieces,
            State::Finishing { .. } => Phase::Finishing,
            State::Done { .. } => Phase::Done,
            State::Failed { .. } => Phase::Failed,
        }
    }

    /// The version chosen, if any.
    pub(super) fn info(&self) -> Option<FileInfo> {
        match self {
            State::Owners { .. } => None,
            State::Hashes(h) => Some(h.info),
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => Some(fetch.info),
            State::Store { info, .. }
            | State::Finishing { info, .. }
            | State::Done { info, .. } => Some(*info),
            State::Failed { info, .. } => *info,
        }
    }

    /// The fetch in progress (verifying or fetching pieces).
    pub(super) fn fetching(&self) -> Option<&Fetching<S>> {
        match self {
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => Some(fetch),
            _ => None,
        }
    }

    /// The fetch in progress, to change.
    pub(super) fn fetching_mut(&mut self) -> Option<&mut Fetching<S>> {
        match self {
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => Some(fetch),
            _ => None,
        }
    }

    /// The picker, while pieces are verified or fetched.
    pub(super) fn picker_mut(&mut self) -> Option<&mut Picker> {
        self.fetching_mut().map(|f| &mut f.picker)
    }

    /// Pieces verified so far, once a store is attached.
    pub(super) fn have(&self) -> Option<&Bitfield> {
        match self {
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => {
                Some(fetch.picker.have())
            }
            State::Finishing { have, .. } | State::Done { have, .. } => Some(have),
            State::Failed { have, .. } => have.as_ref(),
            _ => None,
        }
    }

    /// The attached store, until the driver takes it.
    pub(super) fn store(&self) -> Option<&S> {
        match self {
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => Some(&fetch.store),
            State::Finishing { store, .. } | State::Failed { store, .. } => store.as_ref(),
            _ => None,
        }
    }

    /// The attached store, to write to.
    pub(super) fn store_mut(&mut self) -> Option<&mut S> {
        match self {
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => Some(&mut fetch.store),
            State::Finishing { store, .. } | State::Failed { store, .. } => store.as_mut(),
            _ => None,
        }
    }

    /// Hands the store over, where the state lets it go (the driver finishing or closing it).
    pub(super) fn take_store(&mut self) -> Option<S> {
        match self {
            State::Finishing { store, .. } | State::Failed { store, .. } => store.take(),
            _ => None,
        }
    }

    /// The verified piece hashes, from the moment they hold until the download is over.
    pub(super) fn hashes(&self) -> Option<&[Hash]> {
        match self {
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => Some(&fetch.hashes),
            State::Store { hashes, .. } | State::Finishing { hashes, .. } => Some(hashes),
            _ => None,
        }
    }

    /// What outlives a failure: the version, the verified pieces and the store.
    pub(super) fn into_parts(self) -> (Option<FileInfo>, Option<Bitfield>, Option<S>) {
        match self {
            State::Owners { .. } => (None, None, None),
            State::Hashes(h) => (Some(h.info), None, None),
            State::Store { info, .. } => (Some(info), None, None),
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => (
                Some(fetch.info),
                Some(fetch.picker.into_have()),
                Some(fetch.store),
            ),
            State::Finishing {
                info, have, store, ..
            } => (Some(info), Some(have), store),
            State::Done { info, have, .. } => (Some(info), Some(have), None),
            State::Failed { info, have, store } => (info, have, store),
        }
    }
}
