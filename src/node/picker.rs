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

use std::collections::BTreeSet;

use super::bitfield::Bitfield;

/// Most owners fetching one piece at once (endgame duplicates included).
pub const MAX_COPIES: u8 = 2;

/// Piece states and availability for one download.
#[derive(Debug, Clone)]
pub struct Picker {
    have: Bitfield,
    copies: Vec<u8>,
    avail: Vec<u16>,
    /// Queued pieces ordered by (availability, index): the first is the rarest.
    queue: BTreeSet<(u16, u32)>,
}

impl Picker {
    /// A picker for `have.len()` pieces, of which those in `have` are already held.
    pub fn new(have: Bitfield) -> Self {
        let pieces = have.len();
        let queue = (0..pieces)
            .filter(|&p| !have.get(p))
            .map(|p| (0, p))
            .collect();
        Picker {
            copies: vec![0; pieces as usize],
            avail: vec![0; pieces as usize],
            have,
            queue,
        }
    }

    /// Pieces verified so far.
    pub fn have(&self) -> &Bitfield {
        &self.have
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
            self.gained(piece);
        }
    }

    /// An owner holding `pieces` went away.
    pub fn remove_owner(&mut self, pieces: &Bitfield) {
        for piece in pieces.iter_ones() {
            self.set_avail(piece, |a| a.saturating_sub(1));
        }
    }

    /// A connected owner announced `piece`.
    pub fn gained(&mut self, piece: u32) {
        self.set_avail(piece, |a| a.saturating_add(1));
    }

    fn set_avail(&mut self, piece: u32, change: impl Fn(u16) -> u16) {
        let Some(avail) = self.avail.get_mut(piece as usize) else {
            return;
        };
        let old = *avail;
        *avail = change(old);
        if self.queue.remove(&(old, piece)) {
            self.queue.insert((*avail, piece));
        }
    }

    /// The rarest Queued piece `owner` holds, now InFlight.
    pub fn pick(&mut self, owner: &Bitfield) -> Option<u32> {
        let &(avail, piece) = self.queue.iter().find(|&&(_, p)| owner.get(p))?;
        self.queue.remove(&(avail, piece));
        self.copies[piece as usize] = 1;
        Some(piece)
    }

    /// True when nothing is Queued: only InFlight pieces remain to be fetched.
    pub fn in_endgame(&self) -> bool {
        self.queue.is_empty() && !self.is_complete()
    }

    /// Endgame: an InFlight piece `owner` holds with the fewest copies, not one `skip` rejects.
    pub fn pick_duplicate(&mut self, owner: &Bitfield, skip: impl Fn(u32) -> bool) -> Option<u32> {
        if !self.in_endgame() {
            return None;
        }
        let piece = (0..self.have.len())
            .filter(|&p| {
                let copies = self.copies[p as usize];
                !self.have.get(p) && copies > 0 && copies < MAX_COPIES && owner.get(p) && !skip(p)
            })
            .min_by_key(|&p| self.copies[p as usize])?;
        self.copies[piece as usize] += 1;
        Some(piece)
    }

    /// One fetch of `piece` gave up (owner gone, timed out, bad data): back to Queued if it was the last.
    pub fn release(&mut self, piece: u32) {
        let Some(copies) = self.copies.get_mut(piece as usize) else {
            return;
        };
        *copies = copies.saturating_sub(1);
        if *copies == 0 && !self.have.get(piece) {
            self.queue.insert((self.avail[piece as usize], piece));
        }
    }

    /// `piece` was verified: Have. The caller still releases other copies in flight.
    pub fn complete(&mut self, piece: u32) {
        if self.have.set(piece) {
            self.queue.remove(&(self.avail[piece as usize], piece));
        }
    }

    /// Number of fetches of `piece` in flight.
    pub fn copies(&self, piece: u32) -> u8 {
        self.copies.get(piece as usize).copied().unwrap_or(0)
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
        let mut picker = Picker::new(Bitfield::new(4));
        let everyone = Bitfield::full(4);
        let partial = field(4, &[2, 3]);
        picker.add_owner(&everyone);
        picker.add_owner(&everyone);
        picker.add_owner(&partial);
        // Pieces 0 and 1 are held by two owners, 2 and 3 by three.
        assert_eq!(picker.pick(&everyone), Some(0));
        assert_eq!(picker.pick(&partial), Some(2));
        assert_eq!(picker.pick(&partial), Some(3));
        assert_eq!(picker.pick(&partial), None);
        assert_eq!(picker.pick(&everyone), Some(1));
        assert_eq!(picker.pick(&everyone), None);
    }

    #[test]
    fn released_pieces_return_and_completed_ones_never_do() {
        let mut picker = Picker::new(field(3, &[0]));
        let all = Bitfield::full(3);
        picker.add_owner(&all);
        assert_eq!(picker.pick(&all), Some(1));
        assert_eq!(picker.pick(&all), Some(2));
        picker.release(1);
        assert_eq!(picker.pick(&all), Some(1));
        picker.complete(1);
        picker.release(1);
        assert_eq!(picker.pick(&all), None);
        assert_eq!(picker.missing(), 1);
        assert!(picker.in_endgame());
    }

    #[test]
    fn endgame_duplicates_in_flight_pieces_at_most_twice() {
        let mut picker = Picker::new(Bitfield::new(1));
        let all = Bitfield::full(1);
        picker.add_owner(&all);
        assert_eq!(picker.pick(&all), Some(0));
        assert_eq!(picker.pick_duplicate(&all, |_| true), None, "skip honoured");
        assert_eq!(picker.pick_duplicate(&all, |_| false), Some(0));
        assert_eq!(picker.pick_duplicate(&all, |_| false), None, "copy cap");
        picker.complete(0);
        assert!(picker.is_complete());
    }

    #[test]
    fn availability_counts_only_connected_owners() {
        let mut picker = Picker::new(Bitfield::new(2));
        let first = field(2, &[0]);
        picker.add_owner(&first);
        assert_eq!(picker.unavailable(), 1);
        picker.gained(1);
        assert_eq!(picker.unavailable(), 0);
        picker.remove_owner(&first);
        assert_eq!(picker.unavailable(), 1);
    }
}
