//! When owners fail: dropping, banning, stall timeouts, and giving up when nobody has what is missing.

use super::*;

impl<S: PartStore> Download<S> {
    /// Drops `slot`; its pieces go back in the queue. `why` is logged when the owner misbehaved.
    pub(super) fn lose_peer(
        &mut self,
        now: Instant,
        slot: SlotId,
        why: Option<&str>,
        io: &mut dyn PeerIo,
    ) {
        let Some(peer) = self.drop_peer(slot, io) else {
            return;
        };
        match why {
            Some(why) => log::warn!(
                "{}: dropping owner {} at {}: {why}",
                self.name,
                peer.name,
                peer.addr
            ),
            None => log::info!(
                "{}: owner {} at {} went away",
                self.name,
                peer.name,
                peer.addr
            ),
        }
        self.refetched_bytes += peer
            .partial_pieces
            .iter()
            .map(|&(_, got)| u64::from(got))
            .sum::<u64>();
        if let Some(c) = self.candidates.get_mut(&peer.addr) {
            c.failures += 1;
            let backoff =
                self.config.reconnect_backoff * 2u32.saturating_pow(c.failures.min(5) - 1);
            c.retry_at = Some(now + backoff);
        }
        if let State::Hashes(fetch) = &mut self.state {
            if fetch.source == Some(slot) {
                fetch.source = None;
                fetch.asked.clear();
                self.request_hashes(now, io);
            }
        }
        self.connect_more(now, io);
        self.fill(now, io);
        self.check_version(now, io);
    }

    /// Disconnects `slot` and takes its pieces off the picker: those it was fetching go back
    /// to the queue, those it held no longer count as available. The peer is returned for
    /// the caller's bookkeeping.
    pub(super) fn drop_peer(&mut self, slot: SlotId, io: &mut dyn PeerIo) -> Option<Peer> {
        let peer = self.peers.remove(&slot)?;
        io.disconnect(slot);
        if let Some(picker) = self.state.picker_mut() {
            for piece in peer.pieces_in_flight() {
                picker.release(piece);
            }
            if peer.phase == PeerPhase::Ready {
                picker.remove_owner(&peer.has);
            }
        }
        Some(peer)
    }

    /// Drops `slot` for sending bad data and never uses that owner again in this download.
    pub(super) fn ban(&mut self, now: Instant, slot: SlotId, why: &str, io: &mut dyn PeerIo) {
        if let (Some(peer), Some(info)) = (self.peers.get(&slot), self.state.info()) {
            self.banned.insert((peer.addr, info.root));
            self.candidates.remove(&peer.addr);
        }
        self.lose_peer(now, slot, Some(why), io);
    }

    pub(super) fn fail(&mut self, io: &mut dyn PeerIo, reason: String) {
        if self.is_over() {
            return;
        }
        self.advance(|state| {
            let (info, have, store) = state.into_parts();
            State::Failed { info, have, store }
        });
        for (&slot, _) in std::mem::take(&mut self.peers).iter() {
            io.disconnect(slot);
        }
        self.notices.push_back(Notice::Failed(reason));
    }

    /// Time passed: resume verification, sample rates, drop stalled owners, retry, give up if starved.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut dyn PeerIo) {
        if self.is_over() {
            return;
        }
        if matches!(&self.state, State::Verify(verify) if verify.due <= now) {
            self.verify_step(now, io);
        }
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        if let Some(store) = self.state.store_mut() {
            if let Err(e) = store.save_marks() {
                self.fail(io, format!("cannot record progress of {}: {e}", self.name));
                return;
            }
        }
        if let State::Owners { starving_since } = self.state {
            if starving_since
                .is_some_and(|t| now.saturating_duration_since(t) >= self.config.owner_wait)
            {
                let reason = self.no_version_reason();
                self.fail(io, reason);
            }
            return;
        }
        let hash_source = match &self.state {
            State::Hashes(fetch) => fetch.source,
            _ => None,
        };
        let mut stalled = Vec::new();
        for (&slot, peer) in self.peers.iter_mut() {
            peer.sample_rate(now);
            let quiet = now.saturating_duration_since(peer.last_progress);
            let limit = match peer.phase {
                PeerPhase::Connecting | PeerPhase::Asked => Some(self.config.connect_timeout),
                PeerPhase::Ready if !peer.requests.is_empty() => Some(peer.stall_timeout(
                    self.config.min_stall_timeout,
                    self.config.first_byte_timeout,
                )),
                PeerPhase::Ready if hash_source == Some(slot) => {
                    Some(self.config.first_byte_timeout)
                }
                PeerPhase::Ready => None,
            };
            if limit.is_some_and(|limit| quiet > limit) {
                stalled.push((slot, quiet));
            }
        }
        for (slot, quiet) in stalled {
            let why = format!("no answer for {:.1} s", quiet.as_secs_f64());
            self.lose_peer(now, slot, Some(&why), io);
        }
        self.retry_turned_down_hashes(now, io);
        self.rotate_peers(now, io);
        self.connect_more(now, io);
        self.check_version(now, io);
        self.check_sources(now, io);
        self.fill(now, io);
    }

    /// With every peer place taken and listed owners never tried, makes room for a few of
    /// them: the partial owners we wait on for nothing and that hold the fewest pieces we
    /// miss are let go (not tried again for [`ROTATED_OUT_FOR`]).
    ///
    /// A flash crowd connects within one tracker round: without this, every download's
    /// places go to the downloaders listed first, and those listed a round later are never
    /// asked for anything, however much they hold (at 1,000 simulated nodes, four in five
    /// uplinks stayed idle for seconds).
    pub(super) fn rotate_peers(&mut self, now: Instant, io: &mut dyn PeerIo) {
        if self.peers.len() < self.config.max_peers {
            return;
        }
        let connected: HashSet<SocketAddr> = self.peers.values().map(|p| p.addr).collect();
        let untried = self
            .candidates
            .iter()
            .filter(|(addr, c)| !connected.contains(addr) && c.retry_at.is_none())
            .count();
        let Some(have) = self.state.have() else {
            return;
        };
        let mut idle: Vec<(u32, SlotId)> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.phase == PeerPhase::Ready
                    && p.requests.is_empty()
                    && !p.has.is_full()
                    && now.saturating_duration_since(p.since) >= TICK
            })
            .map(|(&slot, p)| {
                let useful = p.has.iter_ones().filter(|&piece| !have.get(piece)).count();
                (useful as u32, slot)
            })
            .collect();
        idle.sort_unstable();
        let share = (self.config.max_peers / ROTATE_SHARE).max(1);
        let turns = untried.min(share).min(idle.len());
        for &(_, slot) in &idle[..turns] {
            let Some(peer) = self.drop_peer(slot, io) else {
                continue;
            };
            if let Some(c) = self.candidates.get_mut(&peer.addr) {
                c.retry_at = Some(now + ROTATED_OUT_FOR);
            }
        }
    }

    /// Fails the download when missing pieces have had no reachable owner for `no_source_timeout`.
    /// Fails the download when nothing has arrived from any owner for `no_source_timeout`:
    /// owners that connect but never deliver count as no owner at all.
    pub(super) fn check_sources(&mut self, now: Instant, io: &mut dyn PeerIo) {
        if !matches!(self.state, State::Hashes(_) | State::Pieces(_)) {
            return;
        }
        if now.saturating_duration_since(self.last_delivery) < self.config.no_source_timeout {
            return;
        }
        let waited = self.config.no_source_timeout.as_secs_f64();
        let reason = match self.state.fetching().map(|f| &f.picker) {
            Some(picker) => format!(
                "{}: {} of {} pieces missing and no owner delivered any for {waited:.0} s; verified pieces are kept for a resume",
                self.name,
                picker.missing(),
                picker.have().len()
            ),
            None if self.abandoned.is_empty() => {
                format!("{}: no reachable owner answered for {waited:.0} s", self.name)
            }
            None => format!(
                "{}: no reachable owner answered for {waited:.0} s; {}",
                self.name,
                self.no_version_reason()
            ),
        };
        self.fail(io, reason);
    }
}
