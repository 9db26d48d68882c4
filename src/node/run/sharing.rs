//! Sharing: hashing files to publish, answering downloaders, pacing uploads.

use super::*;

/// What this node serves, borrowed apart from the connection table.
pub(super) struct Lib<'a> {
    pub(super) shared: &'a HashMap<RootHash, Shared>,
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
        match self.shared.get(root) {
            Some(s) => Some(shared_view(s)),
            None => self
                .downloads
                .values()
                .filter(|t| t.dl.info().is_some_and(|i| i.root == *root))
                .find_map(partial_view),
        }
    }
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
    let have = t.dl.have()?;
    if have.count() == 0 {
        return None;
    }
    Some(FileView {
        name: t.dl.name(),
        info,
        have,
        hashes: t.dl.hashes()?,
        store: t.dl.store()?,
    })
}

impl Node {
    pub(super) fn upload(&mut self, _ctx: &mut Ctx, name: &str) {
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
        self.disk.hash(&self.folder, store, layout.piece_size);
    }

    /// The disk thread hashed `store` (or found its hashes cached): publish it.
    pub(super) fn hashed(
        &mut self,
        ctx: &mut Ctx,
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
        self.publish(ctx, name, info, hashed.hashes, store);
    }

    pub(super) fn publish(
        &mut self,
        ctx: &mut Ctx,
        name: String,
        info: FileInfo,
        hashes: Vec<Hash>,
        store: SharedFile,
    ) {
        println!(
            "sharing {name} ({} bytes, root {})",
            info.size,
            short_hex(&info.root)
        );
        self.tell_tracker(
            ctx,
            &NodeToTracker::Have {
                name: &name,
                info,
                complete: true,
            },
        );
        let have = Bitfield::full(hashes.len() as u32);
        self.shared.insert(
            info.root,
            Shared {
                name,
                info,
                hashes,
                have,
                store,
            },
        );
    }

    pub(super) fn on_serve_frame(&mut self, ctx: &mut Ctx, conn: ConnId, msg: &Message<'_>) {
        let Some(Role::Serve(serve, last_heard)) = self.conns.get_mut(&conn) else {
            return;
        };
        *last_heard = ctx.now();
        let lib = Lib {
            shared: &self.shared,
            downloads: &self.downloads,
        };
        let Some(out) = ctx.out_buf(conn) else { return };
        if serve.on_message(msg, &lib, out) == ServeOutcome::Close {
            log::info!(
                "closing a serving connection from {:?}: bad request",
                ctx.peer_addr(conn)
            );
            self.conns.remove(&conn);
            ctx.close(conn);
        }
    }

    /// Tops up `conn`'s output with queued blocks while it has room and the rate allows.
    pub(super) fn pump(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let now = ctx.now();
        let Some(Role::Serve(serve, _)) = self.conns.get_mut(&conn) else {
            return;
        };
        let lib = Lib {
            shared: &self.shared,
            downloads: &self.downloads,
        };
        while ctx.pending_out(conn) < SERVE_TARGET && serve.queued() > 0 {
            if let Some(bucket) = self.bucket.as_mut() {
                if !bucket.ready(now) {
                    break;
                }
            }
            let Some(request) = serve.next_request() else {
                break;
            };
            let Some(out) = ctx.out_buf(conn) else { return };
            match serve_block(&request, &lib, out) {
                Ok(sent) => {
                    if let Some(bucket) = self.bucket.as_mut() {
                        bucket.take(now, u64::from(sent));
                    }
                }
                Err(why) => {
                    log::warn!("cannot serve piece {}: {why}", request.piece);
                    let _ = wire::encode(
                        &Message::Error {
                            code: ErrorCode::Refused,
                            reason: &why,
                        },
                        out,
                    );
                    self.conns.remove(&conn);
                    ctx.close(conn);
                    return;
                }
            }
        }
    }

    /// Serves every connection with queued requests, starting after the last one served first.
    pub(super) fn pump_all(&mut self, ctx: &mut Ctx) {
        let mut waiting: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(&conn, role)| serve_waiting(ctx, conn, role))
            .map(|(&conn, _)| conn)
            .collect();
        if waiting.is_empty() {
            return;
        }
        waiting.sort();
        self.serve_cursor = (self.serve_cursor + 1) % waiting.len();
        waiting.rotate_left(self.serve_cursor);
        for conn in waiting {
            self.pump(ctx, conn);
        }
    }
}

/// A serving connection waits on the rate limit when it has requests queued and room for
/// more output; one at or above the target is woken by its drain instead.
pub(super) fn serve_waiting(ctx: &Ctx, conn: ConnId, role: &Role) -> bool {
    matches!(role, Role::Serve(s, _) if s.queued() > 0) && ctx.pending_out(conn) < SERVE_TARGET
}
