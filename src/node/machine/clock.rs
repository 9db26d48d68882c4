//! Time: what comes due (reconnects, keep-alives, idle sweeps, download deadlines,
//! owner-list timeouts, progress, paced uploads) and when the next thing does.

use super::*;

impl Node {
    /// Time passed: reconnects, keep-alives, idle sweeps, download deadlines, owner-list
    /// timeouts, progress, and paced uploads, whichever are due.
    pub fn handle_timeout(&mut self, now: Instant, io: &mut dyn NodeIo) {
        self.now = now;
        if self.tracker.retry_at.is_some_and(|t| t <= now) {
            self.connect_tracker(io);
        }
        if self.housekeep_at <= now {
            self.housekeep_at = now + KEEPALIVE_EVERY;
            if let (Some(conn), true) = (self.tracker.conn, self.tracker.up) {
                if let Some(out) = io.out_buf(conn) {
                    let _ = wire::encode(&Message::KeepAlive, out);
                }
            }
            self.close_idle_serving(io);
            self.check_all_shared(io);
            let (shared, downloads) = (&self.shared, &self.downloads);
            self.uploads.retain(|root| {
                sharing::shared_by_root(shared, root).is_some()
                    || downloads
                        .values()
                        .any(|t| t.dl.info().is_some_and(|i| i.root == *root))
            });
        }
        let due: Vec<String> = self
            .downloads
            .iter()
            .filter(|(_, t)| t.dl.poll_timeout().is_some_and(|t| t <= now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            self.with_download(io, &name, |dl, io| dl.handle_timeout(now, io));
        }
        let limit = self.config.download.no_source_timeout;
        let unanswered: Vec<String> = self
            .downloads
            .iter()
            .filter(|(_, t)| {
                t.dl.phase() == Phase::Owners
                    && !t.dl.heard_owners()
                    && now.saturating_duration_since(t.started) > limit
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in unanswered {
            let reason = format!("no owner list from the tracker at {}", self.config.tracker);
            self.with_download(io, &name, |dl, io| dl.abort(reason, io));
        }
        for (name, t) in self
            .downloads
            .iter_mut()
            .filter(|(_, t)| !t.dl.is_over() && t.next_draw <= now)
        {
            t.next_draw = now + PROGRESS_EVERY;
            let progress = t.progress();
            t.shown.update(now, &progress);
            io.progress(name, &t.shown.smoothed(progress));
        }
        self.serve_blocks(io);
    }

    /// The earliest deadline anything asked for: when to call [`Node::handle_timeout`].
    pub fn poll_timeout(&mut self, io: &dyn NodeIo) -> Option<Instant> {
        let now = self.now;
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if let Some(t) = self.tracker.retry_at {
            consider(t);
        }
        consider(self.housekeep_at);
        for t in self.downloads.values().filter(|t| !t.dl.is_over()) {
            if let Some(at) = t.dl.poll_timeout() {
                consider(at);
            }
            consider(t.next_draw);
            if t.dl.phase() == Phase::Owners {
                consider(t.started + self.config.download.no_source_timeout);
            }
        }
        let held_until = self.uploads.holds_back(io, now);
        if let Some(t) =
            sharing::serve_wake_at(io, &mut self.conns, self.bucket.as_mut(), held_until, now)
        {
            consider(t);
        }
        next
    }

    /// Closes serving connections that sent nothing for [`SERVE_IDLE`].
    fn close_idle_serving(&mut self, io: &mut dyn NodeIo) {
        let now = self.now;
        let idle: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, role)| matches!(role, Role::Serve(_, heard) if now.saturating_duration_since(*heard) > SERVE_IDLE))
            .map(|(&conn, _)| conn)
            .collect();
        for conn in idle {
            log::debug!(
                "closing an idle serving connection from {:?}",
                io.peer_addr(conn)
            );
            self.conns.remove(&conn);
            io.close(conn);
        }
    }
}
