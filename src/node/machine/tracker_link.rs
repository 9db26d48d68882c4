//! The link to the tracker: connect, announce, re-announce after a restart, back off.

use super::*;

impl Node {
    pub(super) fn connect_tracker(&mut self, io: &mut dyn NodeIo) {
        self.tracker.retry_at = None;
        match io.connect(self.config.tracker) {
            Ok(conn) => {
                self.tracker.conn = Some(conn);
                self.conns.insert(conn, Role::Tracker);
            }
            Err(e) => self.tracker_lost(&e.to_string()),
        }
    }

    pub(super) fn tracker_connected(&mut self, io: &mut dyn NodeIo) {
        let was_retrying = !self.tracker.backoff.is_zero();
        self.tracker.up = true;
        self.tracker.backoff = Duration::ZERO;
        if was_retrying {
            log::warn!(
                "tracker at {} reached again; re-announcing",
                self.config.tracker
            );
        }
        self.tell_tracker(
            io,
            &NodeToTracker::Hello {
                node_name: &self.config.name.clone(),
                listen_port: self.listen_port,
                secret: self.secret,
            },
        );
        let shared: Vec<(String, FileInfo)> = self
            .shared
            .values()
            .map(|s| (s.name.clone(), s.info))
            .collect();
        for (name, info) in shared {
            self.tell_tracker(
                io,
                &NodeToTracker::Have {
                    name: &name,
                    info,
                    complete: true,
                },
            );
        }
        let downloads: Vec<(String, Option<FileInfo>, Option<RootHash>)> = self
            .downloads
            .values()
            .filter(|t| !t.dl.is_over())
            .map(|t| (t.dl.name().to_owned(), t.dl.info(), t.announced))
            .collect();
        for (name, info, announced) in downloads {
            if let Some(info) = info.filter(|i| announced == Some(i.root)) {
                self.tell_tracker(
                    io,
                    &NodeToTracker::Have {
                        name: &name,
                        info,
                        complete: false,
                    },
                );
            }
            self.tell_tracker(io, &NodeToTracker::Need { name: &name });
        }
        // The tracker forgets whatever it still lists for us that we did not state again
        // (a file changed or removed while we were away).
        self.tell_tracker(io, &NodeToTracker::Synced);
    }

    pub(super) fn tracker_lost(&mut self, why: &str) {
        self.tracker.conn = None;
        self.tracker.up = false;
        if self.stopping {
            return;
        }
        let backoff =
            (self.tracker.backoff * 2).clamp(Duration::from_millis(500), MAX_TRACKER_BACKOFF);
        self.tracker.backoff = backoff;
        self.tracker.retry_at = Some(self.now + backoff);
        log::warn!(
            "tracker at {} unreachable ({why}); retrying in {:.1} s",
            self.config.tracker,
            backoff.as_secs_f64()
        );
    }

    pub(super) fn tell_tracker(&mut self, io: &mut dyn NodeIo, msg: &NodeToTracker<'_>) {
        let Some(conn) = self.tracker.conn.filter(|_| self.tracker.up) else {
            return;
        };
        if let Some(out) = io.out_buf(conn) {
            if let Err(e) = wire::encode(&Message::NodeToTracker(msg.clone()), out) {
                log::error!("cannot encode a tracker message: {e}");
            }
        }
    }

    pub(super) fn on_tracker_frame(&mut self, io: &mut dyn NodeIo, msg: &Message<'_>) {
        match msg {
            Message::TrackerToNode(list) => {
                let now = self.now;
                let name = list.name.to_owned();
                self.with_download(io, &name, |dl, io| dl.handle_owners(now, &list.owners, io));
            }
            Message::Error { code, reason } => {
                log::warn!("tracker refused: {} ({code:?})", esc(reason));
            }
            Message::KeepAlive => {}
            other => log::debug!("tracker sent unexpected message type {}", other.type_code()),
        }
    }
}
