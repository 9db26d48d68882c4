//! Fetching pieces: keeping pipelines full, checking what arrives, resuming what an earlier run left.

use super::*;

/// Requests of each complete owner looked at for a partial owner to take over: the scan
/// runs on every delivery, so it is bounded, and it starts from the latest asked.
const STEAL_SCAN: usize = 64;

impl<S: PartStore> Download<S> {
    /// Re-verifies up to `verify_step_bytes` of claimed pieces; moves on to fetching when done.
    pub(super) fn verify_step(&mut self, now: Instant, io: &mut dyn PeerIo) {
        let State::Verify(verify) = &mut self.state else {
            return;
        };
        let fetch = &mut verify.fetch;
        let layout = fetch.info.layout();
        let pieces = layout.piece_count();
        let mut budget = self.config.verify_step_bytes;
        while verify.next < pieces && budget > 0 {
            let piece = PieceIndex(verify.next);
            verify.next += 1;
            if !verify.claimed.get(piece.idx()).copied().unwrap_or(false) {
                continue;
            }
            let len = layout.piece_len(piece.0);
            let hash = if verify.checked {
                Ok(fetch.hashes[piece.idx()])
            } else {
                budget = budget.saturating_sub(u64::from(len));
                storage::hash_stored_piece(
                    &fetch.store,
                    layout.piece_offset(piece.0),
                    len,
                    &mut self.scratch,
                )
            };
            match hash {
                Ok(hash) if hash == fetch.hashes[piece.idx()] => {
                    fetch.picker.complete(piece);
                    self.kept_bytes += u64::from(len);
                    self.notices.push_back(Notice::PieceDone(piece));
                }
                Ok(_) => {
                    log::info!("{}: piece {piece} left by an earlier run fails its hash; fetching it again", self.name);
                    if let Err(e) = fetch.store.mark_bad(piece.0) {
                        self.fail(io, format!("cannot record the state of {}: {e}", self.name));
                        return;
                    }
                }
                Err(e) => {
                    self.fail(io, format!("cannot read back {}: {e}", self.name));
                    return;
                }
            }
        }
        self.scratch = Vec::new();
        if verify.next < pieces {
            verify.due = now;
            return;
        }
        let kept = fetch.picker.have().count();
        let complete = fetch.picker.is_complete();
        if kept > 0 {
            log::info!(
                "{}: resuming with {kept} of {pieces} pieces already verified",
                self.name
            );
        }
        self.advance(|state| match state {
            State::Verify(verify) => State::Pieces(verify.fetch),
            other => other,
        });
        if complete {
            self.complete(io);
        } else {
            self.fill(now, io);
        }
    }

    /// Bytes of a piece arrived from `slot`.
    pub(super) fn on_block(
        &mut self,
        now: Instant,
        slot: SlotId,
        piece: PieceIndex,
        offset: u32,
        data: &[u8],
        io: &mut dyn PeerIo,
    ) {
        let Some(info) = self.state.info() else {
            return;
        };
        let layout = info.layout();
        let Some(peer) = self.peers.get_mut(&slot) else {
            return;
        };
        let len = data.len() as u32;
        let addr = peer.addr;
        self.fetched_bytes += u64::from(len);
        let Some(pos) = peer
            .requests
            .iter()
            .position(|r| r.piece == piece && r.offset == offset && r.len == len)
        else {
            // A late answer to a cancel is normal in the endgame; past what we cancelled,
            // blocks nobody asked for only cost us bandwidth: the sender goes.
            self.refetched_bytes += u64::from(len);
            if peer.excused_bytes >= u64::from(len) {
                peer.excused_bytes -= u64::from(len);
            } else {
                self.lose_peer(now, slot, Some("sent blocks it was not asked for"), io);
            }
            return;
        };
        // Only a block we asked for moves the give-up clock; anything else is dropped unwritten.
        self.last_delivery = now;
        peer.requests.remove(pos);
        peer.outstanding_bytes -= u64::from(len);
        peer.received(now, u64::from(len));
        let Some(fetch) = self.state.fetching_mut() else {
            return;
        };
        if fetch.picker.have().get(piece.0) {
            self.refetched_bytes += u64::from(len);
            self.fill(now, io);
            return;
        }
        if fetch.is_verifying(piece) {
            // An endgame copy of a piece whose first copy awaits its verdict: dropped, and
            // this copy's claim on the piece with it (a bad verdict makes it wanted again).
            self.refetched_bytes += u64::from(len);
            fetch.picker.release(piece);
            self.fill(now, io);
            return;
        }
        let piece_len = layout.piece_len(piece.0);
        let at = layout.piece_offset(piece.0) + u64::from(offset);
        if offset == 0 && len == piece_len {
            // The whole piece is in hand: check it before it touches the disk, off this
            // thread if the driver takes it (the verdict comes to `handle_verified`).
            let tag = self.next_tag;
            if io.verify_write(at, data, &fetch.hashes[piece.idx()], tag) {
                self.next_tag += 1;
                fetch.verifying.push(Pending {
                    tag,
                    piece,
                    slot,
                    addr,
                    at,
                    len,
                });
                self.fill(now, io);
                return;
            }
            if storage::hash_piece(data) != fetch.hashes[piece.idx()] {
                self.reject_piece(now, slot, piece, io);
                return;
            }
            if let Err(e) = fetch.store.write_at(at, data) {
                self.fail(io, format!("cannot write {}: {e}", self.name));
                return;
            }
        } else {
            if let Err(e) = fetch.store.write_at(at, data) {
                self.fail(io, format!("cannot write {}: {e}", self.name));
                return;
            }
            let received = match peer.partial_pieces.iter_mut().find(|(p, _)| *p == piece) {
                Some((_, got)) => {
                    *got += len;
                    *got
                }
                None => {
                    peer.partial_pieces.push((piece, len));
                    len
                }
            };
            if received < piece_len {
                self.fill(now, io);
                return;
            }
            peer.partial_pieces.retain(|&(p, _)| p != piece);
            match storage::hash_stored_piece(
                &fetch.store,
                layout.piece_offset(piece.0),
                piece_len,
                &mut self.scratch,
            ) {
                Ok(hash) if hash == fetch.hashes[piece.idx()] => {}
                Ok(_) => {
                    self.reject_piece(now, slot, piece, io);
                    return;
                }
                Err(e) => {
                    self.fail(io, format!("cannot read back {}: {e}", self.name));
                    return;
                }
            }
        }
        self.piece_verified(now, slot, piece, io);
    }

    /// `slot` turned down a request (a `Cancel` from an owner): others hold the piece and
    /// it could not serve it soon. The piece is asked of someone else; not of it for a while.
    pub(super) fn on_turned_down(
        &mut self,
        now: Instant,
        slot: SlotId,
        request: &BlockRequest,
        io: &mut dyn PeerIo,
    ) {
        let piece = PieceIndex(request.piece);
        let Some(info) = self.state.info() else {
            return;
        };
        if request.offset != 0 || request.len != info.layout().piece_len(piece.0) {
            // Only whole pieces are turned down: one block of a bigger piece is not
            // something to fetch elsewhere, so that owner keeps it.
            return;
        }
        let Some(peer) = self.peers.get_mut(&slot) else {
            return;
        };
        let Some(pos) = peer
            .requests
            .iter()
            .position(|r| r.piece == piece && r.offset == request.offset && r.len == request.len)
        else {
            return; // Answered or cancelled meanwhile.
        };
        peer.requests.remove(pos);
        peer.outstanding_bytes -= u64::from(request.len);
        peer.refuse(piece, now);
        if let Some(picker) = self.state.picker_mut() {
            picker.release(piece);
        }
        self.fill(now, io);
    }

    /// The driver's verdict on the piece handed over with `tag` ([`PeerIo::verify_write`]):
    /// written (it is verified now), failing its hash (nothing was written; the sender is
    /// banned), or the write failed (the download fails, as a synchronous write would).
    pub fn handle_verified(
        &mut self,
        now: Instant,
        tag: u64,
        result: Result<bool, StorageError>,
        io: &mut dyn PeerIo,
    ) {
        let Some(fetch) = self.state.fetching_mut() else {
            return;
        };
        // Not found: a verdict for a version given up since.
        let Some(i) = fetch.verifying.iter().position(|p| p.tag == tag) else {
            return;
        };
        let pending = fetch.verifying.swap_remove(i);
        match result {
            Ok(true) => {
                fetch.store.note_written(pending.at, u64::from(pending.len));
                self.piece_verified(now, pending.slot, pending.piece, io);
            }
            Ok(false) if self.peers.contains_key(&pending.slot) => {
                self.reject_piece(now, pending.slot, pending.piece, io);
            }
            Ok(false) => {
                // The sender left meanwhile: the ban still holds for its address.
                fetch.picker.release(pending.piece);
                let root = fetch.info.root;
                self.banned.insert((pending.addr, root));
                self.candidates.remove(&pending.addr);
                log::warn!(
                    "{}: banning the owner at {}: sent piece {} failing its hash",
                    self.name,
                    pending.addr,
                    pending.piece
                );
                self.fill(now, io);
            }
            Err(e) => self.fail(io, format!("cannot write {}: {e}", self.name)),
        }
    }

    /// `slot` sent `piece` failing its hash: the piece goes back in the queue (its last
    /// request is already answered, so dropping the owner alone would not release it),
    /// and the owner is banned.
    pub(super) fn reject_piece(
        &mut self,
        now: Instant,
        slot: SlotId,
        piece: PieceIndex,
        io: &mut dyn PeerIo,
    ) {
        if let Some(picker) = self.state.picker_mut() {
            picker.release(piece);
        }
        let why = format!("sent piece {piece} failing its hash");
        self.ban(now, slot, &why, io);
    }

    pub(super) fn piece_verified(
        &mut self,
        now: Instant,
        slot: SlotId,
        piece: PieceIndex,
        io: &mut dyn PeerIo,
    ) {
        let Some(fetch) = self.state.fetching_mut() else {
            return;
        };
        if let Err(e) = fetch.store.mark_done(piece.0) {
            self.fail(io, format!("cannot record progress of {}: {e}", self.name));
            return;
        }
        let picker = &mut fetch.picker;
        picker.complete(piece);
        picker.release(piece);
        fetch.asked_at.remove(&piece);
        if let Some(peer) = self.peers.get_mut(&slot) {
            let bytes = u64::from(fetch.info.layout().piece_len(piece.0));
            peer.delivered += bytes;
            *self.sources.entry(peer.name.clone()).or_default() += bytes;
        }
        // Endgame losers: withdraw their requests for this piece.
        for (&other, peer) in self.peers.iter_mut() {
            if other == slot || !peer.is_fetching(piece) {
                continue;
            }
            for r in peer.requests.iter().filter(|r| r.piece == piece) {
                io.send(other, &Message::Cancel(request_of(fetch.info.root, r)));
                peer.excused_bytes += u64::from(r.len);
            }
            peer.forget_piece(piece);
            picker.release(piece);
        }
        self.notices.push_back(Notice::PieceDone(piece));
        if picker.is_complete() {
            self.complete(io);
        } else {
            self.fill(now, io);
        }
    }

    pub(super) fn complete(&mut self, io: &mut dyn PeerIo) {
        self.advance(|state| match state {
            State::Verify(Verifying { fetch, .. }) | State::Pieces(fetch) => State::Finishing {
                info: fetch.info,
                hashes: fetch.hashes,
                have: fetch.picker.into_have(),
                store: Some(fetch.store),
            },
            other => other,
        });
        for (&slot, _) in std::mem::take(&mut self.peers).iter() {
            io.disconnect(slot);
        }
        self.notices.push_back(Notice::Complete);
    }

    /// Keeps every ready owner's pipeline full: rarest pieces first, endgame copies at the end.
    ///
    /// Partial owners (other downloaders) are asked first, so a piece the crowd already holds
    /// is taken from the crowd and a complete owner's upload goes to pieces only it has; a
    /// partial owner with room and nothing left to pick takes over a piece waiting at a
    /// complete owner (`steal_from_complete`).
    pub(super) fn fill(&mut self, now: Instant, io: &mut dyn PeerIo) {
        let State::Pieces(fetch) = &self.state else {
            return;
        };
        let info = fetch.info;
        let (complete, partial): (Vec<SlotId>, Vec<SlotId>) = self
            .peers
            .iter()
            .filter(|(_, p)| p.phase == PeerPhase::Ready)
            .map(|(&slot, _)| slot)
            .partition(|slot| self.peers[slot].has.is_full());
        let layout = info.layout();
        // One piece per partial owner per round, the least loaded first, so a crowd's
        // requests spread over every holder instead of filling the first few windows.
        // A slot leaves the rounds once it takes nothing, so each costs at most one
        // fruitless pick (a scan of the queue) per fill, as when windows were filled whole.
        let mut partial = partial;
        partial.sort_by_key(|slot| self.peers[slot].outstanding_bytes);
        let mut open = partial.clone();
        for _ in 0..=layout.piece_count() {
            open.retain(|&slot| self.fill_one(now, slot, layout, info.root, 1, io));
            if open.is_empty() {
                break;
            }
        }
        for &slot in &partial {
            self.steal_from_complete(now, slot, layout, info.root, io);
        }
        for slot in complete {
            self.fill_one(now, slot, layout, info.root, usize::MAX, io);
        }
    }

    /// Tops up one owner's pipeline from the picker, with at most `pieces` pieces; true if
    /// it asked for any.
    fn fill_one(
        &mut self,
        now: Instant,
        slot: SlotId,
        layout: Layout,
        root: RootHash,
        pieces: usize,
        io: &mut dyn PeerIo,
    ) -> bool {
        let (State::Pieces(fetch), Some(peer)) = (&mut self.state, self.peers.get_mut(&slot))
        else {
            return false;
        };
        let picker = &mut fetch.picker;
        let mut asked = 0;
        while peer.outstanding_bytes < peer.window() && asked < pieces {
            let piece = match picker.pick_where(&peer.has, |p| peer.refuses(p, now)) {
                Some(piece) => {
                    fetch.asked_at.insert(piece, now);
                    piece
                }
                // Endgame: only an owner with nothing left to do takes a copy of a piece
                // another owner has held for a while, one at a time, so copies stay few,
                // go to whoever is free, and only chase pieces that are late.
                None if peer.requests.is_empty() => {
                    let asked_at = &fetch.asked_at;
                    let verifying = &fetch.verifying;
                    let patience = self.config.endgame_after;
                    let not_yet = |p: PieceIndex| {
                        layout.piece_len(p.0) > MAX_BLOCK_LEN
                            || peer.refuses(p, now)
                            || verifying.iter().any(|v| v.piece == p)
                            || asked_at
                                .get(&p)
                                .is_some_and(|&t| now.saturating_duration_since(t) < patience)
                    };
                    match picker.pick_duplicate(&peer.has, not_yet) {
                        Some(piece) => piece,
                        None => break,
                    }
                }
                None => break,
            };
            for block in blocks_of(layout, piece) {
                io.send(slot, &Message::Request(request_of(root, &block)));
                peer.outstanding_bytes += u64::from(block.len);
                peer.requests.push_back(block);
            }
            asked += 1;
        }
        asked > 0
    }

    /// A partial owner at `slot` with room takes over single-block pieces it holds that are
    /// asked of a complete owner alone: they are cancelled there. A complete owner (the
    /// original seed above all) is the only source of pieces nobody else has yet; every
    /// piece it sends that the crowd could have forwarded delays those.
    ///
    /// If the cancel comes too late the block still arrives and is dropped as unrequested;
    /// the complete owner had sent it already either way.
    fn steal_from_complete(
        &mut self,
        now: Instant,
        slot: SlotId,
        layout: Layout,
        root: RootHash,
        io: &mut dyn PeerIo,
    ) {
        let (State::Pieces(fetch), Some(taker)) = (&self.state, self.peers.get(&slot)) else {
            return;
        };
        let picker = &fetch.picker;
        let mut room = taker.window().saturating_sub(taker.outstanding_bytes);
        if room == 0 {
            return;
        }
        let mut moved: Vec<(SlotId, Outstanding)> = Vec::new();
        'owners: for (&from, peer) in &self.peers {
            if from == slot || peer.phase != PeerPhase::Ready || !peer.has.is_full() {
                continue;
            }
            // The last asked are the least likely to be on their way already.
            for r in peer.requests.iter().rev().take(STEAL_SCAN) {
                if room == 0 {
                    break 'owners;
                }
                let single = r.offset == 0 && r.len == layout.piece_len(r.piece.0);
                if single
                    && picker.copies(r.piece) == 1
                    && taker.has.get(r.piece.0)
                    && !taker.refuses(r.piece, now)
                {
                    moved.push((from, *r));
                    room = room.saturating_sub(u64::from(r.len));
                }
            }
        }
        for (from, r) in moved {
            if let Some(peer) = self.peers.get_mut(&from) {
                io.send(from, &Message::Cancel(request_of(root, &r)));
                peer.excused_bytes += u64::from(r.len);
                peer.forget_piece(r.piece);
            }
            if let Some(taker) = self.peers.get_mut(&slot) {
                io.send(slot, &Message::Request(request_of(root, &r)));
                taker.outstanding_bytes += u64::from(r.len);
                taker.requests.push_back(r);
            }
            if let State::Pieces(fetch) = &mut self.state {
                fetch.asked_at.insert(r.piece, now);
            }
        }
    }
}
