//! Sharing: hashing files to publish, answering downloaders, pacing uploads.

use super::uploads::{SERVE_BUDGET, SLOW_READER};
use super::*;

/// What this node serves, borrowed apart from the connection table.
pub(super) struct Lib<'a> {
    pub(super) shared: &'a BTreeMap<SharedKey, Shared>,
    pub(super) downloads: &'a BTreeMap<String, Transfer>,
}

impl Library for Lib<'_> {
    fn by_name(&self, name: &str, root: Option<&RootHash>) -> Option<FileView<'_>> {
        let shared = self
            .shared
            .values()
            .find(|s| s.name == name && root.is_none_or(|r| *r == s.info.root));
        match shared {
            Some(s) => Some(shared_view(s)),
            None => self
                .downloads
                .get(name)
                .and_then(partial_view)
                .filter(|v| root.is_none_or(|r| *r == v.info.root)),
        }
    }

    fn by_root(&self, root: &RootHash) -> Option<FileView<'_>> {
        match shared_by_root(self.shared, root) {
            Some(s) => Some(shared_view(s)),
            None => self
                .downloads
                .values()
                .filter(|t| t.dl.info().is_some_and(|i| i.root == *root))
                .find_map(partial_view),
        }
    }
}

/// Any shared entry with this root (they all serve the same bytes).
pub(super) fn shared_by_root<'a>(
    shared: &'a BTreeMap<SharedKey, Shared>,
    root: &RootHash,
) -> Option<&'a Shared> {
    shared
        .range((*root, String::new())..)
        .next()
        .filter(|((r, _), _)| r == root)
        .map(|(_, s)| s)
}

/// Lets `write` append frames to serving connection `conn` and charges what it queued
/// to the upload cap, if there is one: `--max-upload-rate` covers everything a node
/// sends those it serves (blocks with their frames, hashes, `HavePiece`s, requests sent
/// back), not only the blocks. `None` if `conn` is closed.
pub(super) fn send_charged<R>(
    io: &mut dyn NodeIo,
    bucket: &mut Option<TokenBucket>,
    now: Instant,
    conn: ConnId,
    write: impl FnOnce(&mut Vec<u8>) -> R,
) -> Option<R> {
    let out = io.out_buf(conn)?;
    let queued = out.len();
    let result = write(out);
    if let Some(bucket) = bucket.as_mut() {
        bucket.take(now, out.len().saturating_sub(queued) as u64);
    }
    Some(result)
}

pub(super) fn shared_view(s: &Shared) -> FileView<'_> {
    FileView {
        name: &s.name,
        info: s.info,
        have: &s.have,
        hashes: &s.hashes,
        store: &s.store,
    }
}

/// A download serves the pieces it has verified, once it has them.
pub(super) fn partial_view(t: &Transfer) -> Option<FileView<'_>> {
    let info = t.dl.info()?;
    // Served from the moment it is announced, pieces or not: an asker learns what it
    // holds now and hears of each piece it gains.
    let have = t.dl.have()?;
    Some(FileView {
        name: t.dl.name(),
        info,
        have,
        hashes: t.dl.hashes()?,
        store: t.dl.store()?,
    })
}

impl Node {
    pub(super) fn upload(&mut self, io: &mut dyn NodeIo, name: &str) {
        if let Err(e) = storage::check_name(name) {
            log::error!("upload {name}: name refused: {e}");
            return;
        }
        if self.shared.values().any(|s| s.name == name)
            || self.hashing.iter().any(|j| j.name == name)
        {
            log::warn!("upload {name}: already shared");
            return;
        }
        let store = match self.folder.open_shared(name) {
            Ok(store) => store,
            Err(e) => {
                log::error!(
                    "upload {name}: not in my folder {}: {e}",
                    self.folder.dir().display()
                );
                return;
            }
        };
        let layout = Layout {
            size: store.len(),
            piece_size: self.config.piece_size,
        };
        if layout.size.div_ceil(u64::from(layout.piece_size)) > u64::from(u32::MAX) {
            log::error!(
                "upload {name}: too many pieces for piece size {}",
                layout.piece_size
            );
            return;
        }
        log::info!(
            "upload {name}: hashing {} bytes in {} pieces (unless its hash cache is current)",
            layout.size,
            layout.piece_count()
        );
        self.hashing.push(HashJob {
            name: name.to_owned(),
            layout,
        });
        // Reading a big file takes seconds: the disk thread does it, `hashed` follows.
        io.disk_hash(&self.folder, store, layout.piece_size);
    }

    /// The disk thread hashed `store` (or found its hashes cached): publish it.
    pub(super) fn hashed(
        &mut self,
        io: &mut dyn NodeIo,
        store: SharedFile,
        piece_size: u32,
        result: Result<storage::PieceHashes, storage::StorageError>,
    ) {
        let name = store.name().to_owned();
        self.hashing.retain(|j| j.name != name);
        let hashed = match result {
            Ok(hashed) => hashed,
            Err(e) => {
                log::error!("upload {name}: cannot read it: {e}");
                return;
            }
        };
        let layout = Layout {
            size: store.len(),
            piece_size,
        };
        if hashed.from_cache {
            log::info!(
                "upload {name}: piece hashes from its cache (size, times and inode unchanged)"
            );
        }
        let info = FileInfo {
            size: layout.size,
            piece_size,
            root: storage::root_hash(layout, &hashed.hashes),
        };
        self.publish(io, name, info, hashed.hashes, store);
    }

    pub(super) fn publish(
        &mut self,
        io: &mut dyn NodeIo,
        name: String,
        info: FileInfo,
        hashes: Vec<Hash>,
        store: SharedFile,
    ) {
        io.say(&format!(
            "sharing {name} ({} bytes, root {})",
            info.size,
            hex(&info.root)
        ));
        self.tell_tracker(
            io,
            &NodeToTracker::Have {
                name: &name,
                info,
                complete: true,
            },
        );
        let have = Bitfield::full(hashes.len() as u32);
        self.shared.insert(
            (info.root, name.clone()),
            Shared {
                name,
                info,
                hashes,
                have,
                store,
            },
        );
    }

    /// Withdraws shared files that changed on disk since they were hashed: by `name` or `root`.
    fn check_shared(&mut self, io: &mut dyn NodeIo, name: Option<&str>, root: Option<&RootHash>) {
        let dir = self.folder.dir();
        let changed: Vec<(SharedKey, String)> = self
            .shared
            .iter()
            .filter(|((r, n), _)| {
                name.is_none_or(|name| name == n) && root.is_none_or(|root| root == r)
            })
            .filter_map(|(key, s)| changed_on_disk(dir, s).map(|why| (key.clone(), why)))
            .collect();
        for (key, why) in changed {
            self.withdraw(io, &key, &why);
        }
    }

    /// Every shared file checked against the disk (the periodic sweep).
    pub(super) fn check_all_shared(&mut self, io: &mut dyn NodeIo) {
        self.check_shared(io, None, None);
    }

    /// Stops serving a file that changed under us, and tells the tracker.
    fn withdraw(&mut self, io: &mut dyn NodeIo, key: &SharedKey, why: &str) {
        let Some(s) = self.shared.remove(key) else {
            return;
        };
        log::warn!(
            "{} changed on disk ({why}); no longer shared (upload it again to re-hash)",
            esc(&s.name)
        );
        self.tell_tracker(
            io,
            &NodeToTracker::Drop {
                name: &s.name,
                root: s.info.root,
            },
        );
    }

    pub(super) fn on_serve_frame(&mut self, io: &mut dyn NodeIo, conn: ConnId, msg: &Message<'_>) {
        // The first questions of a downloader are where a changed file is caught cheaply
        // (one stat); blocks of a file truncated later fail to read and are caught in `serve_queued`.
        match msg {
            Message::SizeInformation(wire::SizeInformation::Question { name, .. }) => {
                self.check_shared(io, Some(name), None)
            }
            Message::HashRequest { root, .. } => self.check_shared(io, None, Some(root)),
            _ => {}
        }
        let Some(Role::Serve(serve, last_heard)) = self.conns.get_mut(&conn) else {
            return;
        };
        *last_heard = self.now;
        if let Message::HashRequest { root, first, count } = msg {
            // Only what the range holds counts (a request past the end is refused below).
            let whole = shared_by_root(&self.shared, root).map(|s| {
                let pieces = s.info.layout().piece_count();
                let valid = pieces.saturating_sub(*first).min(*count);
                (s.info.size, u64::from(valid) * 32)
            });
            let asks = &mut self.hash_asks;
            let now = self.now;
            let first_answered = || {
                whole.is_none_or(|(size, reply)| {
                    reply == 0 || asks.answer_first(root, now, reply, size)
                })
            };
            if !serve.answers_hashes(now, first_answered) {
                send_charged(io, &mut self.bucket, now, conn, |out| {
                    serve.turn_down_hashes(root, *first, out)
                });
                return;
            }
        }
        let lib = Lib {
            shared: &self.shared,
            downloads: &self.downloads,
        };
        let now = self.now;
        // Hash and size answers are uploads too, so a crowd's hash requests cannot push a
        // paced node past its rate.
        let Some(outcome) = send_charged(io, &mut self.bucket, now, conn, |out| {
            serve.handle_message(now, msg, &lib, out)
        }) else {
            return;
        };
        if outcome == ServeOutcome::Close {
            log::info!(
                "closing a serving connection from {:?}: bad request",
                io.peer_addr(conn)
            );
            self.conns.remove(&conn);
            io.close(conn);
        }
    }

    /// Sends queued blocks, node-wide, while the upload budget and the rate allow: the
    /// least-sent piece first (see [`uploads`](super::uploads)).
    pub(super) fn serve_blocks(&mut self, io: &mut dyn NodeIo) {
        self.turn_down_waiting(io);
        let UploadScan {
            mut pending,
            mut ready,
            ..
        } = scan_uploads(io, &mut self.conns, self.now);
        // Bounded: every turn either sends a block (pending grows by at least a frame
        // header) or takes a connection off the ready list.
        let turns = ready.len() + SERVE_BUDGET / 64 + 1;
        for _ in 0..turns {
            if pending >= SERVE_BUDGET || ready.is_empty() {
                break;
            }
            if let Some(bucket) = self.bucket.as_mut() {
                if !bucket.ready(self.now) {
                    break;
                }
            }
            let Some((pos, index)) = self.uploads.pick(&ready, &self.conns) else {
                break;
            };
            let conn = ready[pos];
            // A block that does not fit beside what is pending waits while the one handed
            // out before it holds it back (`Uploads::holds_back`).
            let len = match self.conns.get(&conn) {
                Some(Role::Serve(s, _)) => s.queued_front(index + 1).nth(index).map(|r| r.len),
                _ => None,
            };
            if pending + len.unwrap_or(0) as usize > SERVE_BUDGET
                && self.uploads.holds_back(io, self.now).is_some()
            {
                break;
            }
            let before = io.pending_out(conn);
            let goes_on = self.serve_queued(io, conn, index);
            let after = io.pending_out(conn);
            pending = (pending + after).saturating_sub(before);
            let still_ready = goes_on
                && after < SERVE_TARGET
                && matches!(self.conns.get(&conn), Some(Role::Serve(s, _)) if s.queued() > 0 && !s.is_waiting_disk());
            if !still_ready {
                ready.remove(pos);
            }
        }
    }

    /// Serves the request at `index` of `conn`'s queue; false if the connection now waits
    /// for the disk or was closed.
    fn serve_queued(&mut self, io: &mut dyn NodeIo, conn: ConnId, index: usize) -> bool {
        let now = self.now;
        let Some(Role::Serve(serve, _)) = self.conns.get_mut(&conn) else {
            return false;
        };
        let Some((request, since)) = serve.take_request(index) else {
            return false;
        };
        let lib = Lib {
            shared: &self.shared,
            downloads: &self.downloads,
        };
        let mut may_wait = serve.take_may_wait();
        loop {
            // The whole frame counts, its header with the block.
            let Some(served) = send_charged(io, &mut self.bucket, now, conn, |out| {
                serve_block(&request, &lib, out, may_wait)
            }) else {
                return false;
            };
            match served {
                Ok(Served::Sent(sent)) => {
                    if let Some(view) = lib.by_root(&request.root) {
                        let pieces = view.info.layout().piece_count();
                        self.uploads.record(&request.root, request.piece, pieces);
                    }
                    self.uploads.note_sent(now, u64::from(sent));
                    self.uploads.handed_out(conn, sent, now);
                    return true;
                }
                Ok(Served::NotCached) => {
                    let Some(s) = shared_by_root(&self.shared, &request.root) else {
                        // Not a shared file (a partial one): read it here after all.
                        may_wait = true;
                        continue;
                    };
                    let layout = s.info.layout();
                    let at = layout.piece_offset(request.piece) + u64::from(request.offset);
                    let key = conn.0 as u64;
                    if !io.disk_warm(&s.store, at, u64::from(request.len), key) {
                        may_wait = true;
                        continue;
                    }
                    // The disk thread reads it in and `warmed` serves it; the network goes on.
                    log::debug!(
                        "{}: piece {} not in memory; the disk thread reads it in",
                        esc(&s.name),
                        request.piece
                    );
                    serve.wait_for_disk(request, since);
                    return false;
                }
                Err(why) => {
                    log::warn!("cannot serve piece {}: {}", request.piece, esc(&why));
                    let root = request.root;
                    self.check_shared(io, None, Some(&root));
                    let refusal = Message::Error {
                        code: ErrorCode::Refused,
                        reason: &why,
                    };
                    let _ = send_charged(io, &mut self.bucket, now, conn, |out| {
                        wire::encode(&refusal, out)
                    });
                    self.conns.remove(&conn);
                    io.close(conn);
                    return false;
                }
            }
        }
    }

    /// The disk thread read in the block `conn` waits for (the key is the conn's id; a conn
    /// closed meanwhile, or its id reused, just gets a harmless extra turn).
    pub(super) fn warmed(&mut self, io: &mut dyn NodeIo, key: u64) {
        let conn = ConnId(key as usize);
        if let Some(Role::Serve(serve, _)) = self.conns.get_mut(&conn) {
            if serve.is_waiting_disk() {
                serve.disk_ready();
            }
        }
        self.serve_blocks(io);
    }
}

/// When serving should be looked at again though nothing arrives or drains: once the rate
/// allows, if a connection could send and the budget has room; once the oldest backlog
/// stops counting, if the budget is full of them.
pub(super) fn serve_wake_at(
    io: &dyn NodeIo,
    conns: &mut BTreeMap<ConnId, Role>,
    bucket: Option<&mut TokenBucket>,
    held_until: Option<Instant>,
    now: Instant,
) -> Option<Instant> {
    let scan = scan_uploads(io, conns, now);
    if scan.ready.is_empty() {
        return None;
    }
    if scan.pending >= SERVE_BUDGET {
        return scan.ages_out;
    }
    // With the rate ready now, `serve_blocks` sent whatever fitted; the next block waits
    // for output to drain (an event of its own), for the block before to stop holding it
    // back, or for a backlog to stop counting. Waking at a time already past would spin.
    let rate = bucket.map(|b| b.ready_at(now)).filter(|&t| t > now);
    let backlog = scan.ages_out.filter(|_| scan.pending > 0);
    [rate, held_until, backlog].into_iter().flatten().min()
}

/// Where the node's uploads stand, as `serve_blocks` and `serve_wake_at` both need it.
struct UploadScan {
    /// Unsent output of the serving connections that count against the budget.
    pending: usize,
    /// Connections that could be sent a block now, in connection order.
    ready: Vec<ConnId>,
    /// When the first counted backlog would stop counting, if none of them shrinks.
    ages_out: Option<Instant>,
}

/// Notes every serving connection's backlog and sums what counts. A slow reader's backlog
/// is not counted, and it gets nothing more until that backlog is gone: it can neither hold
/// others up nor pile replies up.
fn scan_uploads(io: &dyn NodeIo, conns: &mut BTreeMap<ConnId, Role>, now: Instant) -> UploadScan {
    let mut scan = UploadScan {
        pending: 0,
        ready: Vec::new(),
        ages_out: None,
    };
    for (&conn, role) in conns.iter_mut() {
        let Role::Serve(serve, _) = role else {
            continue;
        };
        let out = io.pending_out(conn);
        if !serve.note_backlog(out, now, SLOW_READER) {
            continue;
        }
        scan.pending += out;
        if let Some(t) = serve.backlog_counts_until(SLOW_READER) {
            scan.ages_out = Some(scan.ages_out.map_or(t, |a| a.min(t)));
        }
        if out < SERVE_TARGET && serve.queued() > 0 && !serve.is_waiting_disk() {
            scan.ready.push(conn);
        }
    }
    scan
}

fn changed_on_disk(dir: &std::path::Path, s: &Shared) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = match std::fs::symlink_metadata(dir.join(&s.name)) {
        Ok(meta) => meta,
        Err(e) => return Some(format!("cannot stat it: {e}")),
    };
    if meta.ino() != s.store.inode() {
        Some("replaced by another file".to_owned())
    } else if meta.len() != s.store.len() {
        Some(format!(
            "{} bytes, {} when hashed",
            meta.len(),
            s.store.len()
        ))
    } else if meta.modified().ok() != s.store.modified() {
        Some("modified since it was hashed".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn shared(folder: &Folder, name: &str) -> Shared {
        let store = folder.open_shared(name).unwrap();
        let info = FileInfo {
            size: store.len(),
            piece_size: 1 << 20,
            root: [0; 32],
        };
        Shared {
            name: name.to_owned(),
            info,
            hashes: Vec::new(),
            have: Bitfield::new(0),
            store,
        }
    }

    #[test]
    fn a_shared_file_changed_on_disk_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let s = shared(&folder, "f");
        assert_eq!(changed_on_disk(folder.dir(), &s), None);

        // Same length, other time: rewritten in place.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() + Duration::from_secs(60))
            .unwrap();
        let why = changed_on_disk(folder.dir(), &s).unwrap();
        assert!(why.contains("modified"), "{why}");

        let s = shared(&folder, "f");
        file.set_len(100).unwrap();
        let why = changed_on_disk(folder.dir(), &s).unwrap();
        assert!(why.contains("100 bytes, 5000 when hashed"), "{why}");

        let s = shared(&folder, "f");
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, vec![7u8; 100]).unwrap();
        assert!(changed_on_disk(folder.dir(), &s).is_some());
        std::fs::remove_file(&path).unwrap();
        let why = changed_on_disk(folder.dir(), &s).unwrap();
        assert!(why.contains("cannot stat"), "{why}");
    }
}
