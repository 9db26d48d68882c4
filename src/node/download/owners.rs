//! The owners of the chosen version: the tracker's list, connecting to them, and what they send.

use super::*;

impl<S: PartStore> Download<S> {
    /// The tracker's owner list for this file (first answer or an update).
    pub fn handle_owners(&mut self, now: Instant, owners: &[Owner<'_>], io: &mut dyn PeerIo) {
        if self.is_over() {
            return;
        }
        self.remember_owners(owners);
        if matches!(self.state, State::Owners { .. }) && !self.choose_version(now) {
            return;
        }
        self.add_candidates(now, io);
    }

    /// Takes the listed owners of the chosen version as candidates, forgets unlisted ones.
    pub(super) fn add_candidates(&mut self, now: Instant, io: &mut dyn PeerIo) {
        let Some(info) = self.state.info() else {
            return;
        };
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
        self.make_room_for_higher_ranked(now, io);
        self.connect_more(now, io);
    }

    /// With every place taken, lets idle partial owners go for listed owners this download
    /// ranks higher (`addr_key` under its seed), the lowest ranked first.
    ///
    /// A flash crowd is listed over several tracker rounds, and the places fill from the
    /// first: without this, every download keeps the owners listed first and those listed
    /// later have nobody asking them for anything. Ranked this way, each download's places
    /// tend to its own random choice among everyone listed, so every owner is asked by
    /// about as many as any other. An owner let go ranks below every one taken for it, so
    /// it is not taken back while they stay.
    ///
    /// Only while fetching pieces: before, an idle partial owner may be the one asked for
    /// the hashes.
    fn make_room_for_higher_ranked(&mut self, now: Instant, io: &mut dyn PeerIo) {
        if self.peers.len() < self.config.max_peers || !matches!(self.state, State::Pieces(_)) {
            return;
        }
        let seed = self.shuffle_seed();
        let connected: HashSet<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
        let mut higher: Vec<u64> = self
            .candidates
            .iter()
            .filter(|(addr, c)| !connected.contains(addr) && c.retry_at.is_none_or(|t| t <= now))
            .map(|(addr, _)| addr_key(seed, addr))
            .collect();
        if higher.is_empty() {
            return;
        }
        higher.sort_unstable();
        let mut idle: Vec<(u64, SlotId)> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.phase == PeerPhase::Ready && p.requests.is_empty() && !p.has.is_full()
            })
            .map(|(&slot, p)| (addr_key(seed, &p.addr), slot))
            .collect();
        idle.sort_unstable_by(|a, b| b.cmp(a));
        for ((worst, slot), better) in idle.into_iter().zip(higher) {
            if better >= worst {
                break;
            }
            self.drop_peer(slot, io);
        }
    }

    /// Opens connections to known owners not yet connected, up to the cap.
    pub(super) fn connect_more(&mut self, now: Instant, io: &mut dyn PeerIo) {
        let fetching = matches!(
            self.state,
            State::Hashes(_) | State::Store { .. } | State::Verify(_) | State::Pieces(_)
        );
        if !fetching || self.state.info().is_some_and(|i| i.size == 0) {
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
    pub fn handle_connected(&mut self, now: Instant, slot: SlotId, io: &mut dyn PeerIo) {
        let Some(info) = self.state.info() else {
            return;
        };
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
    pub fn handle_closed(&mut self, now: Instant, slot: SlotId, io: &mut dyn PeerIo) {
        if self.peers.contains_key(&slot) {
            self.lose_peer(now, slot, None, io);
        }
    }

    /// A frame arrived on `slot`.
    pub fn handle_message(
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
                if Some(block.root) != self.state.info().map(|i| i.root) {
                    self.lose_peer(now, slot, Some("sent data of another file"), io);
                } else {
                    self.on_block(
                        now,
                        slot,
                        PieceIndex(block.piece),
                        block.offset,
                        block.data,
                        io,
                    );
                }
            }
            Message::HavePiece { root, piece } => {
                if Some(*root) == self.state.info().map(|i| i.root) {
                    if let Some(peer) = self.peers.get_mut(&slot) {
                        if peer.phase == PeerPhase::Ready && peer.has.set(*piece) {
                            if let Some(picker) = self.state.picker_mut() {
                                picker.gained(PieceIndex(*piece));
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
            Message::Cancel(request) => {
                if Some(request.root) == self.state.info().map(|i| i.root) {
                    self.on_turned_down(now, slot, request, io);
                }
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
        let Some(expected) = self.state.info() else {
            return;
        };
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
        let pieces = expected.layout().piece_count();
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
        if let Some(picker) = self.state.picker_mut() {
            picker.add_owner(&peer.has);
        }
        self.request_hashes(now, io);
        self.fill(now, io);
    }
}
