//! [`NodeIo`]: what the node asks of its driver.

use std::io;
use std::net::SocketAddr;

use super::ConnId;
use crate::node::download::Progress;
use crate::storage::{Folder, Hash, PartialFile, SharedFile, WriteTarget};

/// What the node asks of its driver: connections, disk jobs and lines for people.
///
/// Like the tracker's `Outbox`, but with in-place output ([`NodeIo::out_buf`]) so blocks are
/// encoded straight into a connection's buffer, never copied.
pub trait NodeIo {
    /// Opens a connection to `addr`; [`Node::handle_connected`](super::Node::handle_connected) or [`Node::handle_closed`](super::Node::handle_closed) follows.
    fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId>;
    /// `conn`'s output buffer to append encoded frames to; `None` once it is closed.
    fn out_buf(&mut self, conn: ConnId) -> Option<&mut Vec<u8>>;
    /// Bytes queued on `conn` and not yet written.
    fn pending_out(&self, conn: ConnId) -> usize;
    /// Closes `conn` after what was queued on it; [`Node::handle_closed`](super::Node::handle_closed) follows.
    fn close(&mut self, conn: ConnId);
    /// Offers `conn`'s unread input again (the node stopped consuming it while backed up).
    fn resume_reading(&mut self, conn: ConnId);
    /// Where `conn` leads, for logs.
    fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr>;
    /// The node is leaving: stop driving it once the disk jobs in flight have ended.
    fn stop(&mut self);
    /// Hashes `file` in pieces of `piece_size` (or reads its hash cache): `DiskDone::Hashed`.
    fn disk_hash(&mut self, folder: &Folder, file: SharedFile, piece_size: u32);
    /// Reads a range of `file` into the page cache: `DiskDone::Warmed` with `key`; false if
    /// it cannot be queued (the node then reads it itself).
    fn disk_warm(&mut self, file: &SharedFile, offset: u64, len: u64, key: u64) -> bool;
    /// Re-hashes the pieces a resumed download recorded: `DiskDone::Checked`.
    fn disk_check(&mut self, file: PartialFile, hashes: Vec<Hash>);
    /// Flushes and renames a complete download into place: `DiskDone::Finished`.
    fn disk_finish(&mut self, file: PartialFile);
    /// Hashes a whole piece, `data`, and writes it at `offset` of `target` only if its hash
    /// is `want`: `DiskDone::Verified` with `tag`; false if not queued (the caller does it).
    fn disk_verify_write(
        &mut self,
        target: &WriteTarget,
        offset: u64,
        data: &[u8],
        want: &Hash,
        tag: u64,
    ) -> bool;
    /// Lets `file` start writeback early from the disk thread (a no-op where there is none).
    fn disk_writeback(&mut self, file: &mut PartialFile);
    /// One result line for the user (standard output).
    fn say(&mut self, line: &str);
    /// One failure line for the user (standard error).
    fn say_err(&mut self, line: &str);
    /// Where the download of `name` stands (its rate smoothed), for a bar or a log line.
    fn progress(&mut self, name: &str, progress: &Progress);
    /// The download of `name` ended (`done`: complete); its display goes.
    fn progress_end(&mut self, name: &str, done: bool);
}
