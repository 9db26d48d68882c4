//! `node::run`: the sans-IO [`Node`] driven on one reactor and the disk thread.
//!
//! Every callback hands the event to the machine with the reactor's time, then sets the one
//! reactor timer to the machine's [`Node::poll_timeout`]. Connections, disk jobs and output
//! lines go back through `Driver`, the machine's [`NodeIo`].

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use std::collections::HashMap;

use super::config::NodeConfig;
use super::download::Progress;
use super::machine::{Node, NodeIo};
use super::progress::ProgressView;
use super::text::{say, say_err};
use crate::reactor::{CloseReason, ConnId, Ctx, Handler, ListenerId, Reactor, Stopper};
use crate::storage::{DiskWorker, Folder, Hash, PartialFile, SharedFile, WriteTarget};
use crate::wire;

pub use super::machine::RunReport;

/// The one reactor timer key the node uses.
const WAKE: u64 = 1;

/// A bound node, ready to run.
pub struct NodeServer {
    reactor: Reactor,
    runner: Runner,
    addr: SocketAddr,
}

/// Most connections a node accepts from one IP address: each may hold several MiB of
/// output and read buffer, so this bounds what one host can make a node hold (64 × about
/// 6 MiB), while a host running many downloaders still gets served.
pub const MAX_DOWNLOADERS_PER_IP: usize = 64;

/// Opens the folder, binds the peer port and starts the tracker connection; `run` drives it.
pub fn bind(config: NodeConfig) -> io::Result<NodeServer> {
    if let Err(e) = wire::check_name(&config.name) {
        let why = format!("node name {:?} refused: {e}", config.name);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, why));
    }
    let folder = Folder::open(&config.dir).map_err(io::Error::other)?;
    let secret = folder.node_secret().map_err(io::Error::other)?;
    let mut reactor = Reactor::new(crate::reactor::Config {
        max_inbound_per_ip: MAX_DOWNLOADERS_PER_IP,
        write_low_water: crate::node::machine::WRITE_LOW_WATER,
        notsent_lowat: Some(crate::node::machine::KERNEL_UNSENT),
        ..Default::default()
    })?;
    let (_, addr) = reactor.listen(config.listen)?;
    if config.stdin {
        reactor.enable_stdin()?;
    }
    reactor.enable_signals()?;
    let waker = reactor.waker();
    // fsyncs and hashing run there, so a slow disk never stalls the network.
    let disk = DiskWorker::start(move || waker.wake())?;
    let now = reactor.ctx().now();
    let progress = config.progress;
    let node = Node::new(config, folder, secret, addr.port(), now);
    let runner = Runner {
        node,
        out: Outs {
            disk,
            views: HashMap::new(),
            progress,
        },
        wake_at: None,
        stopper: reactor.stopper(),
    };
    Ok(NodeServer {
        reactor,
        runner,
        addr,
    })
}

impl NodeServer {
    /// The address peers reach this node at.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops the node from another thread.
    pub fn stopper(&self) -> Stopper {
        self.runner.stopper.clone()
    }

    /// Runs until `exit`, a signal, the stopper, or (with `exit_when_done`) the last download.
    pub fn run(mut self) -> io::Result<RunReport> {
        let runner = &mut self.runner;
        let ctx = self.reactor.ctx();
        let now = ctx.now();
        runner
            .node
            .handle_start(now, &mut Driver::new(ctx, &mut runner.out));
        runner.schedule(ctx);
        let ran = self.reactor.run(runner);
        // A download whose rename was queued when the node stopped still ends (and is reported).
        let runner = &mut self.runner;
        for done in runner.out.disk.drain() {
            let ctx = self.reactor.ctx();
            let now = ctx.now();
            let mut io = Driver::new(ctx, &mut runner.out);
            runner.node.handle_disk(now, done, &mut io);
        }
        ran?;
        Ok(runner.node.report().clone())
    }
}

/// The machine and what drives it besides the reactor.
struct Runner {
    node: Node,
    out: Outs,
    wake_at: Option<Instant>,
    stopper: Stopper,
}

impl Runner {
    /// Sets the reactor timer to the earliest deadline the machine asked for.
    fn schedule(&mut self, ctx: &mut Ctx) {
        let io = Driver::new(ctx, &mut self.out);
        if let Some(at) = self.node.poll_timeout(&io) {
            if self.wake_at.is_none_or(|w| at < w) {
                self.wake_at = Some(at);
                ctx.set_timer(at, WAKE);
            }
        }
    }
}

/// Where the machine's outputs go besides the reactor.
struct Outs {
    /// The thread for fsync + rename and hashing.
    disk: DiskWorker,
    /// Each running download's bar or log line.
    views: HashMap<String, ProgressView>,
    /// Whether progress is shown at all.
    progress: bool,
}

/// The machine's outputs applied to the reactor, the disk thread and the terminal.
struct Driver<'a> {
    ctx: &'a mut Ctx,
    out: &'a mut Outs,
}

impl<'a> Driver<'a> {
    fn new(ctx: &'a mut Ctx, out: &'a mut Outs) -> Self {
        Driver { ctx, out }
    }
}

impl NodeIo for Driver<'_> {
    fn connect(&mut self, addr: SocketAddr) -> io::Result<ConnId> {
        self.ctx.connect(addr)
    }
    fn out_buf(&mut self, conn: ConnId) -> Option<&mut Vec<u8>> {
        self.ctx.out_buf(conn)
    }
    fn pending_out(&self, conn: ConnId) -> usize {
        self.ctx.pending_out(conn)
    }
    fn close(&mut self, conn: ConnId) {
        self.ctx.close(conn)
    }
    fn resume_reading(&mut self, conn: ConnId) {
        self.ctx.resume_reading(conn)
    }
    fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        self.ctx.peer_addr(conn)
    }
    fn stop(&mut self) {
        self.ctx.stop()
    }
    fn disk_hash(&mut self, folder: &Folder, file: SharedFile, piece_size: u32) {
        self.out.disk.hash(folder, file, piece_size)
    }
    fn disk_warm(&mut self, file: &SharedFile, offset: u64, len: u64, key: u64) -> bool {
        self.out.disk.warm(file, offset, len, key)
    }
    fn disk_check(&mut self, file: PartialFile, hashes: Vec<Hash>) {
        self.out.disk.check(file, hashes)
    }
    fn disk_finish(&mut self, file: PartialFile) {
        self.out.disk.finish(file)
    }
    fn disk_verify_write(
        &mut self,
        target: &WriteTarget,
        offset: u64,
        data: &[u8],
        want: &Hash,
        tag: u64,
    ) -> bool {
        self.out.disk.verify_write(target, offset, data, want, tag)
    }
    fn disk_writeback(&mut self, file: &mut PartialFile) {
        file.start_writeback_with(&self.out.disk)
    }
    fn say(&mut self, line: &str) {
        say!("{line}")
    }
    fn say_err(&mut self, line: &str) {
        say_err!("{line}")
    }
    fn progress(&mut self, name: &str, progress: &Progress) {
        let now = self.ctx.now();
        let enabled = self.out.progress;
        self.out
            .views
            .entry(name.to_owned())
            .or_insert_with(|| ProgressView::new(name, enabled, now))
            .show(now, progress);
    }
    fn progress_end(&mut self, name: &str, done: bool) {
        if let Some(mut view) = self.out.views.remove(name) {
            view.finish(done);
        }
    }
}

impl Handler for Runner {
    fn on_accept(&mut self, ctx: &mut Ctx, _listener: ListenerId, conn: ConnId, peer: SocketAddr) {
        self.node.handle_accept(ctx.now(), conn, peer);
    }

    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let now = ctx.now();
        self.node
            .handle_connected(now, conn, &mut Driver::new(ctx, &mut self.out));
        self.schedule(ctx);
    }

    fn on_data(&mut self, ctx: &mut Ctx, conn: ConnId, input: &[u8]) -> usize {
        let now = ctx.now();
        let used = self
            .node
            .handle_data(now, conn, input, &mut Driver::new(ctx, &mut self.out));
        self.schedule(ctx);
        used
    }

    fn on_drain(&mut self, ctx: &mut Ctx, conn: ConnId) {
        let now = ctx.now();
        self.node
            .handle_drain(now, conn, &mut Driver::new(ctx, &mut self.out));
        self.schedule(ctx);
    }

    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, reason: CloseReason) {
        let now = ctx.now();
        self.node
            .handle_closed(now, conn, reason, &mut Driver::new(ctx, &mut self.out));
        self.schedule(ctx);
    }

    fn on_timer(&mut self, ctx: &mut Ctx, key: u64) {
        if key == WAKE {
            self.wake_at = None;
            let now = ctx.now();
            self.node
                .handle_timeout(now, &mut Driver::new(ctx, &mut self.out));
        }
        self.schedule(ctx);
    }

    fn on_stdin_line(&mut self, ctx: &mut Ctx, line: &str) {
        let now = ctx.now();
        self.node
            .handle_line(now, line, &mut Driver::new(ctx, &mut self.out));
        self.schedule(ctx);
    }

    fn on_stdin_eof(&mut self, _ctx: &mut Ctx) {
        log::debug!("standard input closed; serving on until exit or a signal");
    }

    fn on_signal(&mut self, ctx: &mut Ctx, signal: i32) {
        log::info!("signal {signal}: leaving the network");
        let now = ctx.now();
        self.node
            .handle_shutdown(now, &mut Driver::new(ctx, &mut self.out));
    }

    fn on_wake(&mut self, ctx: &mut Ctx) {
        let now = ctx.now();
        while let Some(done) = self.out.disk.try_next() {
            self.node
                .handle_disk(now, done, &mut Driver::new(ctx, &mut self.out));
        }
        if self.stopper.is_stopped() {
            self.node
                .handle_shutdown(now, &mut Driver::new(ctx, &mut self.out));
        }
        self.schedule(ctx);
    }
}

#[cfg(test)]
mod tests {
    /// Tests and benchmarks bind a node on one thread and run it on another.
    #[test]
    fn a_bound_node_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<super::NodeServer>();
    }
}
