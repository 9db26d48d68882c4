//! Fetching the piece hashes of the chosen version from one owner, and checking them
//! against its root before anything is stored.

use super::*;

/// A download turned down for the hashes by every ready owner asks again on a tick at
/// least this long after the last turn-down: past the span an owner turns down the
/// requests sent along with one (`serve::HASH_TURN_DOWN_SPAN`, 50 ms).
const HASH_RETRY_AFTER: Duration = Duration::from_millis(100);

impl<S: PartStore> Download<S> {
    /// Asks one ready owner for every piece hash not yet received: a partial owner if there
    /// is one (an original owner's uplink is for the pieces nobody else has), never one
    /// that just turned us down.
    pub(super) fn request_hashes(&mut self, now: Instant, io: &mut dyn PeerIo) {
        let State::Hashes(fetch) = &mut self.state else {
            return;
        };
        if fetch.source.is_some() {
            return;
        }
        let Some((&slot, peer)) = self
            .peers
            .iter_mut()
            .filter(|(slot, p)| p.phase == PeerPhase::Ready && !fetch.turned_down.contains(slot))
            .min_by_key(|(_, p)| p.has.is_full())
        else {
            return;
        };
        let pieces = fetch.info.layout().piece_count();
        if fetch.hashes.len() != pieces as usize {
            fetch.hashes = vec![[0; 32]; pieces as usize];
            fetch.got = vec![false; pieces as usize];
        }
        fetch.source = Some(slot);
        fetch.asked.clear();
        peer.last_progress = now;
        let mut first = 0;
        while first < pieces {
            let count = (pieces - first).min(MAX_HASHES_PER_FRAME);
            if !fetch.got[first as usize] {
                fetch.asked.push((first, count));
                io.send(
                    slot,
                    &Message::HashRequest {
                        root: fetch.info.root,
                        first,
                        count,
                    },
                );
            }
            first += count;
        }
    }

    /// With nobody asked for the hashes because every ready owner turned us down, asks
    /// them again (on the tick: an owner answers a second ask).
    pub(super) fn retry_turned_down_hashes(&mut self, now: Instant, io: &mut dyn PeerIo) {
        let State::Hashes(fetch) = &mut self.state else {
            return;
        };
        // Not before the owner's turn-down of a burst has ended (`HASH_RETRY_AFTER`).
        let waited = fetch
            .turned_down_at
            .is_some_and(|at| now.saturating_duration_since(at) >= HASH_RETRY_AFTER);
        if fetch.source.is_none() && !fetch.turned_down.is_empty() && waited {
            fetch.turned_down.clear();
            self.request_hashes(now, io);
        }
    }

    /// Hashes arrived from `slot`; once all are in and hash to the root, storage is asked for.
    pub(super) fn on_hashes(
        &mut self,
        now: Instant,
        slot: SlotId,
        root: &RootHash,
        first: u32,
        hashes: &[u8],
        io: &mut dyn PeerIo,
    ) {
        let State::Hashes(fetch) = &mut self.state else {
            return;
        };
        if fetch.source != Some(slot) {
            return;
        }
        let info = fetch.info;
        if *root == info.root && hashes.is_empty() {
            // Turned down: this owner is busy with pieces only it has; others hold the
            // hashes, or it answers when asked again (`retry_turned_down_hashes`). Only an
            // owner of the whole file turns down: a partial one has nothing else to send.
            if self.peers.get(&slot).is_some_and(|p| !p.has.is_full()) {
                self.lose_peer(now, slot, Some("turned down a hash request"), io);
                return;
            }
            fetch.turned_down.push(slot);
            fetch.turned_down_at = Some(now);
            fetch.source = None;
            fetch.asked.clear();
            if let Some(peer) = self.peers.get_mut(&slot) {
                peer.last_progress = now;
            }
            self.request_hashes(now, io);
            return;
        }
        let count = hashes.len() / 32;
        let fits = (first as usize)
            .checked_add(count)
            .is_some_and(|end| end <= fetch.hashes.len());
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
        let Some(asked) = fetch
            .asked
            .iter()
            .position(|&(f, c)| f == first && c as usize == count)
        else {
            self.lose_peer(now, slot, Some("sent hashes it was not asked for"), io);
            return;
        };
        fetch.asked.swap_remove(asked);
        let mut new = false;
        for (i, hash) in hashes.chunks_exact(32).enumerate() {
            let index = first as usize + i;
            new |= !fetch.got[index];
            fetch.hashes[index].copy_from_slice(hash);
            fetch.got[index] = true;
        }
        if new {
            self.last_delivery = now;
            fetch.progress_at = now;
            if let Some(peer) = self.peers.get_mut(&slot) {
                peer.last_progress = now;
            }
        }
        if !fetch.got.iter().all(|&got| got) {
            return;
        }
        if storage::root_hash(info.layout(), &fetch.hashes) != info.root {
            fetch.got.iter_mut().for_each(|g| *g = false);
            self.ban(
                now,
                slot,
                "sent piece hashes that do not match the root hash",
                io,
            );
            return;
        }
        let hashes = std::mem::take(&mut fetch.hashes);
        self.state = State::Store { info, hashes };
        self.notices.push_back(Notice::NeedStore { info });
    }
}
