//! Serving one downloader: answer the size question and hash requests, queue block requests.
//!
//! Blocks are not encoded when asked for but when the node's upload has room
//! and the rate allows: the node picks which queued block of which connection
//! goes next ([`ServeConn::queued_front`], [`ServeConn::take_request`]), so a
//! fast requester cannot make us buffer more than the node's upload budget,
//! and the rate limit is applied where the bytes leave.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::bitfield::Bitfield;
use crate::storage::{Hash, PieceStore};
use crate::wire::{
    BlockRequest, ErrorCode, FileInfo, Message, RootHash, SizeInformation, MAX_BLOCK_LEN,
    MAX_HASHES_PER_FRAME,
};

/// Most block requests one downloader may have queued with us.
pub const MAX_QUEUED_REQUESTS: usize = 4096;

/// A file version this node can serve (complete or partial).
pub struct FileView<'a> {
    /// File name.
    pub name: &'a str,
    /// Size, piece size and root.
    pub info: FileInfo,
    /// Pieces held and verified.
    pub have: &'a Bitfield,
    /// Every piece hash.
    pub hashes: &'a [Hash],
    /// Where the bytes are.
    pub store: &'a dyn PieceStore,
}

/// Looks up what this node serves.
pub trait Library {
    /// The version of `name` served here (a specific one if `root` is given).
    fn by_name(&self, name: &str, root: Option<&RootHash>) -> Option<FileView<'_>>;
    /// The version with this root.
    fn by_root(&self, root: &RootHash) -> Option<FileView<'_>>;
}

/// What the driver should do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum ServeOutcome {
    /// Carry on.
    Continue,
    /// Close the connection after what was written (the peer broke the rules).
    Close,
}

/// One downloader connected to us.
#[derive(Debug, Default)]
pub struct ServeConn {
    /// Requests waiting, oldest first, each with when it arrived.
    queue: VecDeque<(BlockRequest, Instant)>,
    /// Versions this peer asked about: it is told of pieces we gain.
    watching: Vec<RootHash>,
    /// The next block is being read into the page cache by the disk thread.
    waiting_disk: bool,
    /// The disk thread read the next block in: read it now even if it left the cache again.
    may_wait: bool,
    /// Since when our pending output to this peer has not shrunk (None: nothing pending).
    backlog_since: Option<Instant>,
    /// Pending output when last looked at, to tell a backlog that moves from one that does not.
    backlog_last: usize,
    /// Whether this peer's hash requests are answered, decided at its first (see
    /// [`ServeConn::answers_hashes`]), and when.
    hash_verdict: Option<(bool, Instant)>,
}

/// A turned-down first hash request turns down the others sent with it (a file of more
/// than one frame of hashes is asked in several at once) for this long, not a later ask.
const HASH_TURN_DOWN_SPAN: Duration = Duration::from_millis(50);

impl ServeConn {
    /// A fresh connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// True if this peer asked about `root` (so it wants `HavePiece` news).
    pub fn watches(&self, root: &RootHash) -> bool {
        self.watching.contains(root)
    }

    /// Notes how much output is pending now; true unless that backlog has not shrunk for
    /// `slow_after`, i.e. while this peer's replies are moving. A peer that reads slowly, or
    /// not at all, is not what keeps our uplink busy: its backlog stops counting against the
    /// node's upload budget, so it cannot hold everyone else up. (A big block on a slow
    /// uplink still shrinks, so it keeps counting.)
    pub fn note_backlog(&mut self, pending: usize, now: Instant, slow_after: Duration) -> bool {
        if pending == 0 {
            self.backlog_since = None;
            self.backlog_last = 0;
            return true;
        }
        if self.backlog_since.is_none() || pending < self.backlog_last {
            self.backlog_since = Some(now);
        }
        self.backlog_last = pending;
        self.is_moving(now, slow_after)
    }

    /// True unless the backlog last noted has not shrunk for `slow_after`.
    pub fn is_moving(&self, now: Instant, slow_after: Duration) -> bool {
        self.backlog_since
            .is_none_or(|since| now.saturating_duration_since(since) < slow_after)
    }

    /// When this peer's current backlog stops counting against the budget, if it counts now.
    pub fn backlog_counts_until(&self, slow_after: Duration) -> Option<Instant> {
        self.backlog_since.map(|since| since + slow_after)
    }

    /// Whether to answer this peer's hash request now: at its first, as `first` decides;
    /// later, yes, but for the requests sent along with a first that was turned down. So a
    /// downloader turned down and asking again is answered.
    pub fn answers_hashes(&mut self, now: Instant, first: impl FnOnce() -> bool) -> bool {
        match self.hash_verdict {
            None => {
                let answer = first();
                self.hash_verdict = Some((answer, now));
                answer
            }
            Some((false, at)) if now.saturating_duration_since(at) < HASH_TURN_DOWN_SPAN => false,
            Some(_) => {
                self.hash_verdict = Some((true, now));
                true
            }
        }
    }

    /// Turns a hash request down: a `Hashes` with none sends the peer to another owner.
    pub fn turn_down_hashes(&self, root: &RootHash, first: u32, out: &mut Vec<u8>) {
        send(
            out,
            &Message::Hashes {
                root: *root,
                first,
                hashes: &[],
            },
        );
    }

    /// Requests waiting to be served.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Handles one frame from the downloader, writing any immediate answer into `out`.
    pub fn handle_message(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        lib: &dyn Library,
        out: &mut Vec<u8>,
    ) -> ServeOutcome {
        match msg {
            Message::SizeInformation(SizeInformation::Question { name, root }) => {
                let Some(view) = lib.by_name(name, root.as_ref()) else {
                    return refuse(out, ErrorCode::NotFound, "file not served here");
                };
                if self.watching.len() < 64 && !self.watches(&view.info.root) {
                    self.watching.push(view.info.root);
                }
                let answer = Message::SizeInformation(SizeInformation::Answer {
                    name: view.name,
                    info: view.info,
                    have: view.have.as_bytes(),
                });
                send(out, &answer);
                ServeOutcome::Continue
            }
            Message::HashRequest { root, first, count } => {
                let Some(view) = lib.by_root(root) else {
                    return refuse(out, ErrorCode::NotFound, "file not served here");
                };
                let end = first.checked_add(*count).map(|e| e as usize);
                let Some(end) =
                    end.filter(|&e| e <= view.hashes.len() && *count <= MAX_HASHES_PER_FRAME)
                else {
                    return refuse(out, ErrorCode::BadRequest, "hash range outside the file");
                };
                let hashes = view.hashes[*first as usize..end].as_flattened();
                send(
                    out,
                    &Message::Hashes {
                        root: *root,
                        first: *first,
                        hashes,
                    },
                );
                ServeOutcome::Continue
            }
            Message::Request(request) => {
                if self.queue.len() >= MAX_QUEUED_REQUESTS {
                    return refuse(out, ErrorCode::Refused, "too many requests queued");
                }
                match check_request(request, lib) {
                    Ok(()) => {
                        self.queue.push_back((*request, now));
                        ServeOutcome::Continue
                    }
                    Err((code, why)) => refuse(out, code, why),
                }
            }
            Message::Cancel(request) => {
                self.queue.retain(|(r, _)| r != request);
                ServeOutcome::Continue
            }
            Message::KeepAlive => ServeOutcome::Continue,
            Message::Error { code, reason } => {
                log::debug!("downloader reports {code:?}: {}", super::text::esc(reason));
                ServeOutcome::Continue
            }
            _ => refuse(
                out,
                ErrorCode::Protocol,
                "unexpected message on a serving connection",
            ),
        }
    }

    /// The first `depth` queued requests, oldest first: what an upload pick chooses among.
    pub fn queued_front(&self, depth: usize) -> impl Iterator<Item = &BlockRequest> {
        self.queue.iter().take(depth).map(|(r, _)| r)
    }

    /// Takes the queued request at `index` (as [`ServeConn::queued_front`] counts) to serve it.
    pub fn take_request(&mut self, index: usize) -> Option<(BlockRequest, Instant)> {
        self.queue.remove(index)
    }

    /// Turns down, with a `Cancel` of each, the requests waiting since before `before` that
    /// `elsewhere` says the peer can get from others; returns how many. A crowd asks the
    /// first holder of a piece all at once: those it cannot serve soon are better asked of
    /// whoever got the piece from it meanwhile.
    ///
    /// Only the oldest requests, at the front, are looked at, at most `depth` of them: the
    /// queue is in arrival order, and a sweep must stay cheap however long queues get.
    pub fn turn_down_stale(
        &mut self,
        before: Instant,
        depth: usize,
        elsewhere: impl Fn(&BlockRequest) -> bool,
        out: &mut Vec<u8>,
    ) -> usize {
        let old = self
            .queue
            .iter()
            .take(depth)
            .take_while(|(_, at)| *at < before)
            .count();
        let mut kept = Vec::with_capacity(old);
        let mut turned = 0;
        for (r, at) in self.queue.drain(..old) {
            if elsewhere(&r) {
                send(out, &Message::Cancel(r));
                turned += 1;
            } else {
                kept.push((r, at));
            }
        }
        while let Some(entry) = kept.pop() {
            self.queue.push_front(entry);
        }
        turned
    }

    /// Bytes of the blocks waiting to be served.
    pub fn queued_bytes(&self) -> u64 {
        self.queue.iter().map(|(r, _)| u64::from(r.len)).sum()
    }

    /// Turns down, with a `Cancel` of each, the newest waiting requests that `elsewhere`
    /// says the peer can get from others, until `bytes` of them are or `depth` requests
    /// from the back were looked at; returns the bytes turned down. The newest would wait
    /// longest here: a node that has more asked of it than it can send soon sends the rest
    /// back to be asked of idle holders.
    pub fn turn_down_newest(
        &mut self,
        bytes: u64,
        depth: usize,
        elsewhere: impl Fn(&BlockRequest) -> bool,
        out: &mut Vec<u8>,
    ) -> u64 {
        let mut turned = 0;
        let mut index = self.queue.len();
        let stop = self.queue.len().saturating_sub(depth);
        while turned < bytes && index > stop {
            index -= 1;
            let Some(&(r, _)) = self.queue.get(index) else {
                break;
            };
            if elsewhere(&r) {
                self.queue.remove(index);
                send(out, &Message::Cancel(r));
                turned += u64::from(r.len);
            }
        }
        turned
    }

    /// Queues `request` as if it had arrived (unit tests of the upload pick).
    #[cfg(test)]
    pub(crate) fn queue_for_test(&mut self, request: BlockRequest) {
        self.queue.push_back((request, Instant::now()));
    }

    /// Puts `request` back first: its block was not in memory and is being read in.
    pub fn wait_for_disk(&mut self, request: BlockRequest, since: Instant) {
        self.queue.push_front((request, since));
        self.waiting_disk = true;
    }

    /// The disk thread read the first queued block in: serve it, waiting if need be.
    pub fn disk_ready(&mut self) {
        self.waiting_disk = false;
        self.may_wait = true;
    }

    /// True while the next block is being read in (nothing to send until then).
    pub fn is_waiting_disk(&self) -> bool {
        self.waiting_disk
    }

    /// Whether the next read may wait for the disk (once, after a warm read), and resets it.
    pub fn take_may_wait(&mut self) -> bool {
        std::mem::take(&mut self.may_wait)
    }
}

/// What serving one block came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// The block is in the output: this many data bytes.
    Sent(u32),
    /// Not in memory, and waiting was not allowed: nothing was written.
    NotCached,
}

/// Why a block read gave nothing.
enum ReadFail {
    NotCached,
    Failed(String),
}

/// Encodes the block answering `request` into `out`, reading it from the store in place;
/// unless `may_wait`, only from memory (a block that is not gives [`Served::NotCached`] and
/// writes nothing). Errs with the error frame's reason if the piece cannot be read.
pub fn serve_block(
    request: &BlockRequest,
    lib: &dyn Library,
    out: &mut Vec<u8>,
    may_wait: bool,
) -> Result<Served, String> {
    let view = lib.by_root(&request.root).ok_or("file no longer served")?;
    let layout = view.info.layout();
    let at = layout.piece_offset(request.piece) + u64::from(request.offset);
    let read = crate::wire::encode_block_uninit(
        out,
        &request.root,
        request.piece,
        request.offset,
        request.len as usize,
        |buf| {
            if may_wait {
                return view
                    .store
                    .read_at_uninit(at, buf)
                    .map_err(|e| ReadFail::Failed(e.to_string()));
            }
            match view.store.read_cached_uninit(at, buf) {
                Ok(Some(filled)) => Ok(filled),
                Ok(None) => Err(ReadFail::NotCached),
                Err(e) => Err(ReadFail::Failed(e.to_string())),
            }
        },
    );
    match read {
        Ok(()) => Ok(Served::Sent(request.len)),
        Err(ReadFail::NotCached) => Ok(Served::NotCached),
        Err(ReadFail::Failed(why)) => Err(why),
    }
}

/// A request is served only for a held piece and a range inside it.
fn check_request(r: &BlockRequest, lib: &dyn Library) -> Result<(), (ErrorCode, &'static str)> {
    let view = lib
        .by_root(&r.root)
        .ok_or((ErrorCode::NotFound, "file not served here"))?;
    let layout = view.info.layout();
    let piece_len = layout.piece_len(r.piece);
    let end = r.offset.checked_add(r.len);
    if piece_len == 0 || r.len == 0 || r.len > MAX_BLOCK_LEN || end.is_none_or(|e| e > piece_len) {
        return Err((ErrorCode::BadRequest, "block outside the file"));
    }
    if !view.have.get(r.piece) {
        return Err((ErrorCode::BadRequest, "piece not held here"));
    }
    Ok(())
}

fn send(out: &mut Vec<u8>, msg: &Message<'_>) {
    if let Err(e) = crate::wire::encode(msg, out) {
        log::error!("cannot encode a reply: {e}");
    }
}

fn refuse(out: &mut Vec<u8>, code: ErrorCode, reason: &str) -> ServeOutcome {
    send(out, &Message::Error { code, reason });
    match code {
        ErrorCode::NotFound => ServeOutcome::Continue,
        _ => ServeOutcome::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_counts_until_it_has_not_shrunk_for_the_slow_reader_limit() {
        let mut conn = ServeConn::new();
        let t0 = Instant::now();
        let limit = Duration::from_secs(1);
        assert!(conn.note_backlog(0, t0, limit), "no backlog: moving");
        assert!(conn.note_backlog(300, t0, limit), "a fresh backlog counts");
        assert_eq!(conn.backlog_counts_until(limit), Some(t0 + limit));
        let later = t0 + Duration::from_millis(999);
        assert!(
            conn.note_backlog(300, later, limit),
            "stuck, but not for long"
        );
        assert!(
            !conn.note_backlog(300, t0 + limit, limit),
            "a backlog that has not shrunk for the limit is a slow reader's"
        );
        // A big block on a slow uplink shrinks: it keeps counting, however long it takes.
        assert!(conn.note_backlog(200, t0 + limit, limit));
        let almost = t0 + limit * 2 - Duration::from_millis(1);
        assert!(conn.note_backlog(200, almost, limit));
        // Once it has all gone out, the connection counts again from scratch.
        assert!(conn.note_backlog(0, t0 + limit * 3, limit));
        assert!(conn.note_backlog(50, t0 + limit * 3, limit));
    }

    #[test]
    fn the_newest_requests_beyond_what_is_kept_are_sent_back_and_the_unique_stay() {
        let mut conn = ServeConn::new();
        let req = |piece| BlockRequest {
            root: [7; 32],
            piece,
            offset: 0,
            len: 1000,
        };
        let t0 = Instant::now();
        for piece in 1..=4 {
            conn.queue.push_back((req(piece), t0));
        }
        assert_eq!(conn.queued_bytes(), 4000);
        let mut out = Vec::new();
        // Two blocks' worth must go; piece 3 it alone may have.
        let turned = conn.turn_down_newest(2000, 64, |r| r.piece != 3, &mut out);
        assert_eq!(turned, 2000);
        let left: Vec<u32> = conn.queued_front(8).map(|r| r.piece).collect();
        assert_eq!(left, [1, 3], "the oldest and the unique stay, in order");
        assert_eq!(conn.queued_bytes(), 2000);
        let mut cancelled = Vec::new();
        let mut at = 0;
        while at < out.len() {
            match crate::wire::decode_frame(&out[at..], &crate::wire::Limits::default()) {
                Ok(crate::wire::Decoded::Frame(Message::Cancel(r), len)) => {
                    cancelled.push(r.piece);
                    at += len;
                }
                other => panic!("expected Cancels, got {other:?}"),
            }
        }
        assert_eq!(cancelled, [4, 2], "newest first");
        // Only `depth` requests from the back are looked at: the front is never reached.
        let turned = conn.turn_down_newest(u64::MAX, 1, |_| true, &mut out);
        assert_eq!(turned, 1000);
        let left: Vec<u32> = conn.queued_front(8).map(|r| r.piece).collect();
        assert_eq!(left, [1]);
    }

    #[test]
    fn requests_waiting_too_long_for_pieces_held_elsewhere_are_sent_back() {
        let mut conn = ServeConn::new();
        let req = |piece| BlockRequest {
            root: [9; 32],
            piece,
            offset: 0,
            len: 4096,
        };
        let t0 = Instant::now();
        conn.queue.push_back((req(1), t0));
        conn.queue.push_back((req(2), t0));
        conn.queue
            .push_back((req(3), t0 + Duration::from_millis(50)));
        let mut out = Vec::new();
        // Piece 2 was never sent from here: it may be ours alone, so it waits its turn.
        let turned = conn.turn_down_stale(
            t0 + Duration::from_millis(10),
            64,
            |r| r.piece != 2,
            &mut out,
        );
        assert_eq!(turned, 1);
        let left: Vec<u32> = conn.queued_front(8).map(|r| r.piece).collect();
        assert_eq!(left, [2, 3], "the young and the unique stay queued");
        match crate::wire::decode_frame(&out, &crate::wire::Limits::default()) {
            Ok(crate::wire::Decoded::Frame(Message::Cancel(r), len)) => {
                assert_eq!((r, len), (req(1), out.len()));
            }
            other => panic!("expected one Cancel, got {other:?}"),
        }
    }
}
