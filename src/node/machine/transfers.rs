//! Downloads: each state machine joined to its owner connections, the folder and the tracker.

use super::*;

/// The download's connection actions, applied straight to the reactor.
pub(super) struct DlIo<'a> {
    pub(super) io: &'a mut dyn NodeIo,
    pub(super) conns: &'a mut BTreeMap<ConnId, Role>,
    pub(super) slots: &'a mut HashMap<SlotId, ConnId>,
    pub(super) file: Arc<str>,
    pub(super) failed: Vec<SlotId>,
    /// Where verified pieces go when the disk thread writes them.
    pub(super) target: Option<&'a WriteTarget>,
    /// The node's count of pieces on the disk thread.
    pub(super) verifying: &'a mut usize,
}

impl PeerIo for DlIo<'_> {
    fn connect(&mut self, slot: SlotId, addr: SocketAddr) {
        match self.io.connect(addr) {
            Ok(conn) => {
                self.slots.insert(slot, conn);
                self.conns.insert(
                    conn,
                    Role::Peer {
                        file: self.file.clone(),
                        slot,
                    },
                );
            }
            Err(e) => {
                log::info!("{}: cannot connect to {addr}: {e}", self.file);
                self.failed.push(slot);
            }
        }
    }

    fn send(&mut self, slot: SlotId, msg: &Message<'_>) {
        let Some(&conn) = self.slots.get(&slot) else {
            return;
        };
        if let Some(out) = self.io.out_buf(conn) {
            if let Err(e) = wire::encode(msg, out) {
                log::error!("{}: cannot encode a request: {e}", self.file);
            }
        }
    }

    fn disconnect(&mut self, slot: SlotId) {
        if let Some(conn) = self.slots.remove(&slot) {
            self.conns.remove(&conn);
            self.io.close(conn);
        }
    }

    fn verify_write(&mut self, offset: u64, data: &[u8], want: &Hash, tag: u64) -> bool {
        match self.target {
            Some(target) if self.io.disk_verify_write(target, offset, data, want, tag) => {
                *self.verifying += 1;
                true
            }
            _ => false,
        }
    }
}

impl Node {
    /// Starts a download (of the content `pin` names, if given); false (with the reason
    /// logged) if it cannot start.
    pub(super) fn download(
        &mut self,
        io: &mut dyn NodeIo,
        name: &str,
        pin: Option<RootPin>,
    ) -> bool {
        if let Err(e) = storage::check_name(name) {
            log::error!(
                "download {}: name refused: {}",
                esc(name),
                esc(&e.to_string())
            );
            return false;
        }
        if self.downloads.get(name).is_some_and(|t| !t.dl.is_over()) {
            log::warn!("download {name}: already downloading");
            return false;
        }
        if self.folder.final_exists(name) {
            log::error!(
                "download {name}: {} already exists; remove it first",
                self.folder.dir().join(name).display()
            );
            return false;
        }
        let now = self.now;
        let mut dl = Download::new(name, &self.config.name, self.config.download.clone(), now);
        if let Some(pin) = pin {
            log::info!("download {name}: pinned to root {}…", pin.as_str());
            dl = dl.with_pin(pin);
        }
        let transfer = Transfer {
            key: Arc::from(name),
            dl,
            slots: HashMap::new(),
            started: now,
            announced: None,
            shown: ShownRate::default(),
            next_draw: now,
            checking: false,
            target: None,
        };
        self.downloads.insert(name.to_owned(), transfer);
        if self.tracker.up {
            self.tell_tracker(io, &NodeToTracker::Need { name });
        } else if self.tracker.retry_at.is_some() {
            log::warn!(
                "download {name}: waiting for the tracker at {}",
                self.config.tracker
            );
        }
        true
    }

    /// Runs `f` on the download of `file` with its connection actions, then applies its notices.
    pub(super) fn with_download(
        &mut self,
        io: &mut dyn NodeIo,
        file: &str,
        f: impl FnOnce(&mut Download<PartialFile>, &mut dyn PeerIo),
    ) {
        let now = self.now;
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let mut peers = DlIo {
            io: &mut *io,
            conns: &mut self.conns,
            slots: &mut transfer.slots,
            file: transfer.key.clone(),
            failed: Vec::new(),
            target: transfer.target.as_ref(),
            verifying: &mut self.verifying,
        };
        f(&mut transfer.dl, &mut peers);
        // Connects that failed at once are reported like any other closed connection.
        let mut rounds = 0;
        while !peers.failed.is_empty() && rounds < 1000 {
            rounds += 1;
            for slot in std::mem::take(&mut peers.failed) {
                transfer.dl.handle_closed(now, slot, &mut peers);
            }
        }
        self.after_download(io, file);
    }

    pub(super) fn after_download(&mut self, io: &mut dyn NodeIo, file: &str) {
        loop {
            let Some(transfer) = self.downloads.get_mut(file) else {
                return;
            };
            let Some(notice) = transfer.dl.poll_notice() else {
                break;
            };
            match notice {
                Notice::NeedStore { info } => self.attach_store(io, file, info),
                Notice::PieceDone(piece) => self.piece_done(io, file, piece),
                Notice::Complete => self.complete(io, file),
                Notice::Failed(reason) => self.failed(io, file, &reason),
            }
        }
        self.withdraw_given_up(io, file);
    }

    /// A version this download was listed for and has given up (its temporary file is
    /// gone) is withdrawn at once, not when the next version's store is attached: others
    /// asking us for it meanwhile would be refused and drop us.
    fn withdraw_given_up(&mut self, io: &mut dyn NodeIo, file: &str) {
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let Some(root) = transfer.announced else {
            return;
        };
        let current = transfer.dl.info().map(|i| i.root);
        if current == Some(root) || transfer.dl.is_over() {
            return;
        }
        transfer.announced = None;
        self.tell_tracker(io, &NodeToTracker::Drop { name: file, root });
    }

    pub(super) fn attach_store(&mut self, io: &mut dyn NodeIo, file: &str, info: FileInfo) {
        let mut opened = self.folder.begin_download(file, info.layout(), &info.root);
        if let Ok(partial) = opened.as_mut() {
            io.disk_writeback(partial);
        }
        let now = self.now;
        if let Ok(partial) = opened {
            let Some(transfer) = self.downloads.get_mut(file) else {
                return;
            };
            transfer.target = Some(partial.write_target());
            if !partial.claimed_done().iter().any(|&c| c) {
                self.with_download(io, file, |dl, io| dl.attach_checked(now, partial, &[], io));
                self.announce_partial(io, file);
                return;
            }
            // A resume: what the earlier run recorded is re-hashed on the disk thread.
            let hashes = transfer.dl.hashes().map(<[_]>::to_vec).unwrap_or_default();
            transfer.checking = true;
            io.disk_check(partial, hashes);
            return;
        }
        self.with_download(io, file, |dl, io| {
            if let Err(e) = opened {
                dl.abort(format!("cannot create its temporary file: {e}"), io)
            }
        });
    }

    /// The disk thread re-hashed what an earlier run of `file` left: the download goes on.
    pub(super) fn checked(
        &mut self,
        io: &mut dyn NodeIo,
        file: &str,
        partial: PartialFile,
        result: Result<Vec<bool>, storage::StorageError>,
    ) {
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        transfer.checking = false;
        if transfer.dl.is_over() {
            return;
        }
        let now = self.now;
        self.with_download(io, file, |dl, io| match result {
            Ok(checked) => dl.attach_checked(now, partial, &checked, io),
            Err(e) => dl.abort(format!("cannot read back {file}: {e}"), io),
        });
        self.announce_partial(io, file);
    }

    /// The disk thread checked (and, if it matched, wrote) a piece of `file`.
    pub(super) fn verified(
        &mut self,
        io: &mut dyn NodeIo,
        file: &str,
        tag: u64,
        result: Result<bool, storage::StorageError>,
    ) {
        let now = self.now;
        self.with_download(io, file, |dl, io| dl.handle_verified(now, tag, result, io));
    }

    /// From the moment its store is attached, a download is a partial owner others can
    /// connect to: it answers with what it holds (maybe nothing yet) and tells them of each
    /// piece it gains. Announcing before the first piece lets a flash crowd connect while it
    /// waits on the first owner, instead of one tracker round after each first piece.
    fn announce_partial(&mut self, io: &mut dyn NodeIo, file: &str) {
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let Some(info) = transfer.dl.info().filter(|_| transfer.dl.store().is_some()) else {
            return;
        };
        if transfer.dl.is_over() || transfer.announced == Some(info.root) {
            return;
        }
        let before = transfer.announced.replace(info.root);
        if let Some(root) = before {
            // Normally withdrawn already (`withdraw_given_up`); never listed twice.
            self.tell_tracker(io, &NodeToTracker::Drop { name: file, root });
        }
        self.tell_tracker(
            io,
            &NodeToTracker::Have {
                name: file,
                info,
                complete: false,
            },
        );
    }

    pub(super) fn piece_done(&mut self, io: &mut dyn NodeIo, file: &str, piece: PieceIndex) {
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let Some(info) = transfer.dl.info() else {
            return;
        };
        let have = Message::HavePiece {
            root: info.root,
            piece: piece.0,
        };
        for (&conn, role) in &self.conns {
            if let Role::Serve(serve, _) = role {
                if serve.watches(&info.root) {
                    let _ = sharing::send_charged(io, &mut self.bucket, self.now, conn, |out| {
                        wire::encode(&have, out)
                    });
                }
            }
        }
    }

    /// Every piece is verified: the fsync and rename go to the disk thread, `finished` follows.
    ///
    /// Meanwhile the download stays in its finishing phase: not served (its store is
    /// gone), not shown at 100 %, and a second `download` of the name is refused.
    pub(super) fn complete(&mut self, io: &mut dyn NodeIo, file: &str) {
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let Some(partial) = transfer.dl.take_store() else {
            return;
        };
        io.disk_finish(partial);
    }

    /// The disk thread flushed and renamed `file` (or could not): report it and share it.
    pub(super) fn finished(
        &mut self,
        io: &mut dyn NodeIo,
        file: &str,
        moved: Result<std::path::PathBuf, storage::StorageError>,
    ) {
        let now = self.now;
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        let Some(info) = transfer.dl.info() else {
            return;
        };
        if let Err(e) = moved {
            let reason = format!("cannot flush it and rename it into place: {e}");
            self.with_download(io, file, |dl, io| dl.abort(reason, io));
            return;
        }
        transfer.dl.finished();
        let progress = transfer.progress();
        transfer.shown.update(now, &progress);
        io.progress(file, &transfer.shown.smoothed(progress));
        io.progress_end(file, true);
        let hashes = transfer.dl.hashes_owned();
        let (fetched, kept) = (transfer.dl.fetched_bytes(), transfer.dl.kept_bytes());
        let sources: Vec<String> = transfer
            .dl
            .sources()
            .iter()
            .map(|(name, bytes)| format!("{name} {bytes}"))
            .collect();
        // Up to the rename, fsync included: when the file is really there.
        let elapsed = now
            .saturating_duration_since(transfer.started)
            .as_secs_f64();
        let rate = info.size as f64 / elapsed.max(1e-6) / f64::from(1 << 20);
        io.say(&format!(
            "downloaded {file} ({} bytes in {elapsed:.2} s = {rate:.1} MiB/s, from the request to the file verified, flushed to disk and renamed; fetched {fetched} bytes, kept {kept} from an earlier run)",
            info.size
        ));
        log::info!("{file}: bytes by owner: {}", sources.join(", "));
        self.report.completed += 1;
        self.tell_tracker(io, &NodeToTracker::Unneed { name: file });
        match self.folder.open_shared(file) {
            Ok(store) => self.publish(io, file.to_owned(), info, hashes, store),
            Err(e) => log::warn!("{file}: downloaded but cannot be shared: {e}"),
        }
        self.awaited.remove(file);
        self.check_done(io);
    }

    pub(super) fn failed(&mut self, io: &mut dyn NodeIo, file: &str, reason: &str) {
        io.say_err(&format!("download {file} failed: {reason}"));
        let Some(transfer) = self.downloads.get_mut(file) else {
            return;
        };
        io.progress_end(file, false);
        let announced = transfer.announced.take();
        drop(transfer.dl.take_store());
        self.tell_tracker(io, &NodeToTracker::Unneed { name: file });
        if let Some(root) = announced {
            self.tell_tracker(io, &NodeToTracker::Drop { name: file, root });
        }
        self.report.failed += 1;
        self.awaited.remove(file);
        self.check_done(io);
    }

    pub(super) fn check_done(&mut self, io: &mut dyn NodeIo) {
        if self.config.exit_when_done && self.awaited.is_empty() && !self.stopping {
            self.shutdown(io);
        }
    }
}
