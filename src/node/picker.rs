//! Which piece to fetch next: rarest first, each piece in exactly one state.
//!
//! Every piece is always in exactly one of three states:
//! - **Have**: verified and on disk (`have` bit set);
//! - **Queued**: wanted, nobody fetching it (in `queue`, `copies == 0`);
//! - **InFlight**: one or more owners fetching it (`copies > 0`, not had).
//!
//! [`Picker::pick`] moves Queued → InFlight, [`Picker::release`] moves InFlight
//! back to Queued when the last fetch gives up, [`Picker::complete`] moves to
//! Have. In the endgame (nothing Queued) [`Picker::pick_duplicate`] adds a
//! second copy of an InFlight piece so one slow owner cannot stall the end.
//!
//! Among pieces equally rare the order is shuffled by a per-download seed, so
//! two nodes downloading from the same owner fetch different pieces first and
//! have something to trade.

use std::collections::BTreeSet;

use super::bitfield::Bitfield;
use super::piece::PieceIndex;

/// Most owners fetching one piece at once (endgame duplicates included).
pub const MAX_COPIES: u8 = 2;

/// Piece states and availability for one download.
#[derive(Debug, Clone)]
pub struct Picker {
    have: Bitfield,
    copies: Vec<u8>,
    avail: Vec<u16>,
    /// Queued pieces ordered by (availability, shuffle key, index): the first is the rarest.
    queue: BTreeSet<(u16, u32, PieceIndex)>,
    /// InFlight pieces, so endgame picks never scan the whole file.
    in_flight: BTreeSet<PieceIndex>,
    seed: u64,
}

/// A well-mixed 32-bit value of `piece` under `seed` (splitmix64's finaliser).
fn shuffle_key(seed: u64, piece: PieceIndex) -> u32 {
    let mut z = seed ^ u64::from(piece.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

impl Picker {
    /// A picker for `have.len()` pieces, of which those in `have` are already held;
    /// `seed` shuffles the order among equally rare pieces.
    pub fn new(have: Bitfield, seed: u64) -> Self {
        let pieces = have.len();
        let queue = (0..pieces)
            .filter(|&p| !have.get(p))
            .map(PieceIndex)
            .map(|p| (0, shuffle_key(seed, p), p))
            .collect();
        Picker {
            copies: vec![0; pieces as usize],
            avail: vec![0; pieces as usize],
            have,
            queue,
            in_flight: BTreeSet::new(),
            seed,
        }
    }

    fn key(&self, piece: PieceIndex) -> (u16, u32, PieceIndex) {
        (
            self.avail[piece.idx()],
            shuffle_key(self.seed, piece),
            piece,
        )
    }

    /// Pieces verified so far.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// The verified pieces, once nothing is left to pick.
    pub fn into_have(self) -> Bitfield {
        self.have
    }

    /// Pieces not yet verified.
    pub fn missing(&self) -> u32 {
        self.have.len() - self.have.count()
    }

    /// True when every piece is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_full()
    }

    /// Missing pieces that no connected owner holds.
    pub fn unavailable(&self) -> u32 {
        (0..self.have.len())
            .filter(|&p| !self.have.get(p) && self.avail[p as usize] == 0)
            .count() as u32
    }

    /// An owner holding `pieces` connected.
    pub fn add_owner(&mut self, pieces: &Bitfield) {
        for piece in pieces.iter_ones() {
            self.gained(PieceIndex(piece));
        }
    }

    /// An owner holding `pieces` went away.
    pub fn remove_owner(&mut self, pieces: &Bitfield) {
        for piece in pieces.iter_ones() {
            self.set_avail(PieceIndex(piece), |a| a.saturating_sub(1));
        }
    }

    /// A connected owner announced `piece`.
    pub fn gained(&mut self, piece: PieceIndex) {
        self.set_avail(piece, |a| a.saturating_add(1));
    }

    fn set_avail(&mut self, piece: PieceIndex, change: impl Fn(u16) -> u16) {
        let Some(avail) = self.avail.get_mut(piece.idx()) else {
            return;
        };
        let old = *avail;
        *avail = change(old);
        let new = *avail;
        let salt = shuffle_key(self.seed, piece);
        if self.queue.remove(&(old, salt, piece)) {
            self.queue.insert((new, salt, piece));
        }
    }

    /// The rarest Queued piece `owner` holds, now InFlight.
    pub fn pick(&mut self, owner: &Bitfield) -> Option<PieceIndex> {
        self.pick_where(owner, |_| false)
    }

    /// [`Picker::pick`], passing over the pieces `skip` names (ones this owner turned down).
    pub fn pick_where(
        &mut self,
        owner: &Bitfield,
        skip: impl Fn(PieceIndex) -> bool,
    ) -> Option<PieceIndex> {
        let &key = self
            .queue
            .iter()
            .find(|&&(_, _, p)| owner.get(p.0) && !skip(p))?;
        self.queue.remove(&key);
        let piece = key.2;
        self.copies[piece.idx()] = 1;
        self.in_flight.insert(piece);
        Some(piece)
    }

    /// True when nothing is Queued: only InFlight pieces remain to be fetched.
    pub fn in_endgame(&self) -> bool {
        self.queue.is_empty() && !self.is_complete()
    }

    /// Endgame: an InFlight piece `owner` holds with the fewest copies, not one `skip` rejects.
    pub fn pick_duplicate(
        &mut self,
        owner: &Bitfield,
        skip: impl Fn(PieceIndex) -> bool,
    ) -> Option<PieceIndex> {
        if !self.queue.is_empty() {
            return None;
        }
        let piece = self
            .in_flight
            .iter()
            .copied()
            .filter(|&p| self.copies[p.idx()] < MAX_COPIES && owner.get(p.0) && !skip(p))
            .min_by_key(|&p| self.copies[p.idx()])?;
        self.copies[piece.idx()] += 1;
        Some(piece)
    }

    /// One fetch of `piece` gave up (owner gone, timed out, bad data): back to Queued if it was the last.
    pub fn release(&mut self, piece: PieceIndex) {
        let Some(copies) = self.copies.get_mut(piece.idx()) else {
            return;
        };
        *copies = copies.saturating_sub(1);
        if *copies == 0 {
            self.in_flight.remove(&piece);
            if !self.have.get(piece.0) {
                let key = self.key(piece);
                self.queue.insert(key);
            }
        }
    }

    /// `piece` was verified: Have. The caller still releases other copies in flight.
    pub fn complete(&mut self, piece: PieceIndex) {
        if self.have.set(piece.0) {
            let key = self.key(piece);
            self.queue.remove(&key);
            self.in_flight.remove(&piece);
        }
    }

    /// Number of fetches of `piece` in flight.
    pub fn copies(&self, piece: PieceIndex) -> u8 {
        self.copies.get(piece.idx()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(len: u32, ones: &[u32]) -> Bitfield {
        let mut f = Bitfield::new(len);
        for &p in ones {
            f.set(p);
        }
        f
    }

    #[test]
    fn picks_the_rarest_piece_the_owner_holds() {
        let mut picker = Picker::new(Bitfield::new(4), 7);
        let everyone = Bitfield::full(4);
        let partial = field(4, &[2, 3]);
        picker.add_owner(&everyone);
        picker.add_owner(&everyone);
        picker.add_owner(&partial);
        // Pieces 0 and 1 are held by two owners, 2 and 3 by three: 0 and 1 go first.
        let first = picker.pick(&everyone).expect("a piece").0;
        assert!(first < 2, "picked {first}");
        let mut from_partial =
            [picker.pick(&partial), picker.pick(&partial)].map(|p| p.map(|p| p.0));
        from_partial.sort();
        assert_eq!(from_partial, [Some(2), Some(3)]);
        assert_eq!(picker.pick(&partial), None);
        assert_eq!(picker.pick(&everyone), Some(PieceIndex(1 - first)));
        assert_eq!(picker.pick(&everyone), None);
    }

    #[test]
    fn released_pieces_return_and_completed_ones_never_do() {
        let mut picker = Picker::new(field(3, &[0]), 7);
        let all = Bitfield::full(3);
        picker.add_owner(&all);
        let a = picker.pick(&all).expect("a piece");
        let b = picker.pick(&all).expect("another piece");
        assert_eq!([a.min(b), a.max(b)], [PieceIndex(1), PieceIndex(2)]);
        picker.release(a);
        assert_eq!(picker.pick(&all), Some(a));
        picker.complete(a);
        picker.release(a);
        assert_eq!(picker.pick(&all), None);
        assert_eq!(picker.missing(), 1);
        assert!(picker.in_endgame());
    }

    #[test]
    fn equally_rare_pieces_come_in_a_per_seed_order() {
        let all = Bitfield::full(64);
        let order = |seed| {
            let mut picker = Picker::new(Bitfield::new(64), seed);
            picker.add_owner(&all);
            std::iter::from_fn(|| picker.pick(&all).map(|p| p.0)).collect::<Vec<u32>>()
        };
        let (one, other) = (order(1), order(2));
        assert_ne!(one, other);
        let mut sorted = one.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            (0..64).collect::<Vec<u32>>(),
            "every piece exactly once"
        );
        assert_eq!(one, order(1), "the same seed gives the same order");
    }

    #[test]
    fn endgame_duplicates_in_flight_pieces_at_most_twice() {
        let mut picker = Picker::new(Bitfield::new(1), 7);
        let all = Bitfield::full(1);
        picker.add_owner(&all);
        assert_eq!(picker.pick(&all), Some(PieceIndex(0)));
        assert_eq!(picker.pick_duplicate(&all, |_| true), None, "skip honoured");
        assert_eq!(picker.pick_duplicate(&all, |_| false), Some(PieceIndex(0)));
        assert_eq!(picker.pick_duplicate(&all, |_| false), None, "copy cap");
        picker.complete(PieceIndex(0));
        assert!(picker.is_complete());
    }

    #[test]
    fn availability_counts_only_connected_owners() {
        let mut picker = Picker::new(Bitfield::new(2), 7);
        let first = field(2, &[0]);
        picker.add_owner(&first);
        assert_eq!(picker.unavailable(), 1);
        picker.gained(PieceIndex(1));
        assert_eq!(picker.unavailable(), 0);
        picker.remove_owner(&first);
        assert_eq!(picker.unavailable(), 1);
    }
}
