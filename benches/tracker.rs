//! Tracker throughput: `Need` requests per second over 1,000 persistent node
//! connections, beside a raw-framing echo server, and the memory cost per owner entry.
//!
//! ```text
//! cargo bench --bench tracker
//! ```
//!
//! An in-process tracker runs on its own thread, holding `FILES` files of
//! `OWNERS` owners each (the owners stay connected). One load-generator thread
//! drives `CLIENTS` persistent connections with mio, each keeping `DEPTH`
//! `Need` requests in flight and cycling through a window of `WINDOW` files
//! (so each client watches `WINDOW` files once warm). Replies are counted by
//! frame header; the first reply on each connection is decoded in full and
//! must list `OWNERS` owners.
//!
//! The baseline, measured in the same run by the same load generator: a
//! trivial mio server that answers every frame with one pre-encoded reply of
//! the tracker's size, reading nothing but frame lengths. The ratio shows what
//! the tracker's own logic costs over framing and syscalls; the server
//! thread's CPU time (from `/proc/self/task/<tid>/stat`) gives requests per
//! CPU-second, which is the figure to hold against the target when the load
//! generator, not the server, is the limit.
//!
//! Memory: the process RSS before and after `MEM_NODES` nodes announce
//! `MEM_FILES_PER_NODE` files each, with the files shared (4 owners per file)
//! and disjoint (1 owner per file), each on a fresh tracker in a fresh child
//! process (so memory freed by an earlier phase cannot hide growth); beside it the
//! live heap bytes (a counting global allocator), which do not depend on what
//! the allocator keeps mapped (RSS figures drift by megabytes between runs).
//!
//! Churn: the state machine alone (sans-IO, in this process), with `N` nodes waiting
//! out their grace period, while connections arrive, say `Hello` and reset and a
//! downloader asks `Need`, `poll_timeout` called after every event as `tracker::run`
//! does; the cost per round beside `N = 0` shows whether deadlines scale with `N`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use shoal::tracker::state::{Outbox, SessionId, TrackerLimits, TrackerState};
use shoal::tracker::{self, TrackerConfig};
use shoal::wire::{
    self, decode_frame, kind, Decoded, FileInfo, Limits, Message, NodeToTracker, Owner,
    TrackerToNode,
};

/// Files the tracker knows during the throughput run.
const FILES: usize = 1000;
/// Owners of each of those files.
const OWNERS: usize = 4;
/// Persistent client connections.
const CLIENTS: usize = 1000;
/// Requests each client keeps in flight.
const DEPTH: usize = 8;
/// Files each client cycles through.
const WINDOW: usize = 32;
/// Load before counting starts.
const WARM_UP: Duration = Duration::from_secs(1);
/// Counted load.
const MEASURE: Duration = Duration::from_secs(5);
/// Node connections announcing files for the memory figure.
const MEM_NODES: usize = 4;
/// Files each of those nodes announces (4 × 25,000 = 100,000 owner entries).
const MEM_FILES_PER_NODE: usize = 25_000;
/// `Have` frames sent between two round trips while announcing.
const CHUNK: usize = 200;
/// A file name no one owns: a `Need` of it is a round trip that changes no owner list.
const BARRIER: &str = "barrier";
/// Read buffer of each load-generator and echo connection (replies in flight fit many times over).
const LINK_BUF: usize = 16 << 10;
/// Length of the frame header and CRC trailer around a payload.
const FRAMING: usize = wire::HEADER_LEN + wire::TRAILER_LEN;
/// The token of the echo server's listener.
const LISTENER: Token = Token(usize::MAX);

/// Counts live heap bytes (as requested), for the exact cost of an owner entry.
struct CountingAlloc;

/// Heap bytes allocated and not yet freed.
static LIVE_HEAP: AtomicUsize = AtomicUsize::new(0);

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE_HEAP.fetch_add(new_size, Ordering::Relaxed);
            LIVE_HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

/// Requests per second of tracker CPU the design asks for ("≥ 200k on one core").
const TARGET_PER_CPU_SECOND: f64 = 200_000.0;

/// Set in a child process that measures one memory shape (`shared` or `disjoint`) and exits.
const MEMORY_CHILD: &str = "SHOAL_BENCH_MEMORY_SHAPE";

/// Memory (each shape in a child process), then the tracker and the echo baseline under one load.
fn main() -> io::Result<()> {
    shoal::logging::init(0, true);
    if let Ok(shape) = std::env::var(MEMORY_CHILD) {
        let shared = shape == "shared";
        owner_memory(shared)?.print(shared);
        return Ok(());
    }
    raise_nofile_limit(4 * (CLIENTS + OWNERS) as u64 + 256);
    println!(
        "tracker bench: {FILES} files x {OWNERS} owners, {CLIENTS} connections x {DEPTH} in flight, \
         {} s warm-up + {} s",
        WARM_UP.as_secs(),
        MEASURE.as_secs()
    );
    for shape in ["shared", "disjoint"] {
        let child = Command::new(std::env::current_exe()?)
            .env(MEMORY_CHILD, shape)
            .status()?;
        check(child.success(), "the memory measurement to succeed")?;
    }
    // The first run warms the allocator and caches up; the second is the baseline.
    grace_churn(CHURN_IN_GRACE[0]);
    let base = grace_churn(CHURN_IN_GRACE[0]);
    for &n in &CHURN_IN_GRACE {
        let cost = if n == 0 { base } else { grace_churn(n) };
        println!(
            "churn: {n:>6} nodes in grace: {:.2} us per round (connect, hello, reset, Need, \
             each followed by poll_timeout); {:.2}x the cost with none",
            cost.as_secs_f64() * 1e6,
            cost.as_secs_f64() / base.as_secs_f64()
        );
    }
    let tracked = tracker_throughput()?;
    let echoed = echo_throughput()?;
    tracked.print("tracker");
    echoed.print("echo");
    println!(
        "ratio tracker/echo: {:.2} (requests/s), {:.2} (requests per server CPU-second)",
        tracked.rate() / echoed.rate(),
        tracked.per_cpu_second() / echoed.per_cpu_second()
    );
    let met = tracked.per_cpu_second() >= TARGET_PER_CPU_SECOND;
    println!(
        "target >= {TARGET_PER_CPU_SECOND:.0} req per tracker CPU-second: {}",
        if met { "met" } else { "NOT met" }
    );
    Ok(())
}

// ---- throughput ----

/// One throughput measurement.
struct Throughput {
    replies: u64,
    wall: Duration,
    server_cpu: Duration,
    load_cpu: Duration,
}

impl Throughput {
    /// Replies per wall-clock second.
    fn rate(&self) -> f64 {
        self.replies as f64 / self.wall.as_secs_f64()
    }

    /// Replies per second of the server thread's CPU time.
    fn per_cpu_second(&self) -> f64 {
        self.replies as f64 / self.server_cpu.as_secs_f64().max(1e-9)
    }

    /// Prints one result line.
    fn print(&self, label: &str) {
        let wall = self.wall.as_secs_f64();
        println!(
            "{label:>8}: {:>9.0} req/s; server thread {:.2} CPU -> {:.0} req per CPU-second; \
             load generator {:.2} CPU",
            self.rate(),
            self.server_cpu.as_secs_f64() / wall,
            self.per_cpu_second(),
            self.load_cpu.as_secs_f64() / wall
        );
    }
}

/// Runs the load against a populated tracker.
fn tracker_throughput() -> io::Result<Throughput> {
    let server = Server::tracker()?;
    let mut owners = Vec::with_capacity(OWNERS);
    for k in 0..OWNERS {
        let mut node = Node::join(server.addr, &format!("owner-{k}"), owner_port(k))?;
        node.announce((0..FILES).map(|i| file_name("file", i)))?;
        owners.push(node);
    }
    let listed = owners[0].owners_of(&file_name("file", 0))?;
    check(listed == OWNERS, "the tracker lists every owner")?;
    let load = LoadGen::connect(server.addr, true)?;
    let result = measure(load, server.tid);
    drop(owners);
    server.stop()?;
    result
}

/// Runs the same load against the echo server.
fn echo_throughput() -> io::Result<Throughput> {
    let server = Server::echo(reply_frame()?)?;
    let load = LoadGen::connect(server.addr, false)?;
    let result = measure(load, server.tid);
    server.stop()?;
    result
}

/// Warms up, then counts replies and CPU time over `MEASURE`.
fn measure(mut load: LoadGen, server_tid: u32) -> io::Result<Throughput> {
    let me = current_tid()?;
    load.run_until(Instant::now() + WARM_UP)?;
    let (replies, server_cpu, load_cpu) = (load.replies, thread_cpu(server_tid)?, thread_cpu(me)?);
    let start = Instant::now();
    load.run_until(start + MEASURE)?;
    Ok(Throughput {
        replies: load.replies - replies,
        wall: start.elapsed(),
        server_cpu: thread_cpu(server_tid)? - server_cpu,
        load_cpu: thread_cpu(me)? - load_cpu,
    })
}

/// The load generator: every client connection, driven from one thread.
struct LoadGen {
    poll: Poll,
    clients: Vec<Client>,
    /// The pre-encoded `Need` frame of each file.
    needs: Vec<Vec<u8>>,
    /// Replies received so far.
    replies: u64,
}

/// One client connection and its place in its window of files.
struct Client {
    link: Link,
    in_flight: usize,
    next: usize,
    checked: bool,
}

impl LoadGen {
    /// Opens every client connection (sending `Hello` first if `hello`) and fills its pipeline.
    fn connect(addr: SocketAddr, hello: bool) -> io::Result<LoadGen> {
        let poll = Poll::new()?;
        let mut clients = Vec::with_capacity(CLIENTS);
        for c in 0..CLIENTS {
            let mut stream = StdStream::connect(addr)?;
            stream.set_nodelay(true)?;
            if hello {
                stream.write_all(&hello_frame(&format!("client-{c}"), 9000)?)?;
            }
            stream.set_nonblocking(true)?;
            let mut stream = TcpStream::from_std(stream);
            let both = Interest::READABLE | Interest::WRITABLE;
            poll.registry().register(&mut stream, Token(c), both)?;
            clients.push(Client {
                link: Link::new(stream),
                in_flight: 0,
                next: 0,
                checked: false,
            });
        }
        let needs = (0..FILES)
            .map(|i| need_frame(&file_name("file", i)))
            .collect::<io::Result<_>>()?;
        let mut load = LoadGen {
            poll,
            clients,
            needs,
            replies: 0,
        };
        for c in 0..CLIENTS {
            load.service(c)?;
        }
        Ok(load)
    }

    /// Serves readiness events until `deadline`.
    fn run_until(&mut self, deadline: Instant) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            self.poll.poll(&mut events, Some(deadline - now))?;
            for event in &events {
                self.service(event.token().0)?;
            }
        }
    }

    /// Reads client `c`'s replies, then tops up its pipeline and writes.
    fn service(&mut self, c: usize) -> io::Result<()> {
        let client = &mut self.clients[c];
        while client.link.read()? {
            let checked = &mut client.checked;
            let n = client
                .link
                .take_frames(|frame| check_reply(frame, checked))?;
            check(n <= client.in_flight, "no more replies than requests")?;
            client.in_flight -= n;
            self.replies += n as u64;
        }
        while client.in_flight < DEPTH {
            let file = (c * WINDOW + client.next % WINDOW) % FILES;
            client.link.out.extend_from_slice(&self.needs[file]);
            client.next += 1;
            client.in_flight += 1;
        }
        client.link.flush()
    }
}

/// Checks that a reply is an owner list; the first on a connection is decoded in full.
fn check_reply(frame: &[u8], checked: &mut bool) -> io::Result<()> {
    if *checked && frame[3] == kind::TRACKER_TO_NODE {
        return Ok(());
    }
    *checked = true;
    match decode_frame(frame, &Limits::default()).map_err(io::Error::other)? {
        Decoded::Frame(msg, _) => reply_owners(&msg).and_then(|n| {
            check(
                n == OWNERS,
                &format!("a reply lists {OWNERS} owners, not {n}"),
            )
        }),
        Decoded::NeedMore(_) => check(false, "a whole frame"),
    }
}

// ---- the servers ----

/// A server on its own thread: where it listens, its thread id, how to stop it.
struct Server {
    addr: SocketAddr,
    tid: u32,
    stop: Box<dyn Fn()>,
    thread: JoinHandle<io::Result<()>>,
}

impl Server {
    /// Starts an in-process tracker with the default limits, but room for every client
    /// from 127.0.0.1 (the reactor's per-IP cap is for real networks).
    fn tracker() -> io::Result<Server> {
        let config = TrackerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            limits: Default::default(),
        };
        let caps = shoal::reactor::Config {
            max_inbound_per_ip: 2 * (CLIENTS + OWNERS + MEM_NODES),
            ..Default::default()
        };
        let server = tracker::bind_with_reactor(config, caps)?;
        let (addr, stopper) = (server.local_addr(), server.stopper());
        let (thread, tid) = spawn_reporting_tid("tracker", move || server.run())?;
        Ok(Server {
            addr,
            tid,
            stop: Box::new(move || stopper.stop()),
            thread,
        })
    }

    /// Starts the baseline server, which answers every frame with `reply`.
    fn echo(reply: Vec<u8>) -> io::Result<Server> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let flag = Arc::new(AtomicBool::new(false));
        let stopped = flag.clone();
        let (thread, tid) =
            spawn_reporting_tid("echo", move || run_echo(listener, &reply, &stopped))?;
        Ok(Server {
            addr,
            tid,
            stop: Box::new(move || flag.store(true, Ordering::SeqCst)),
            thread,
        })
    }

    /// Stops the server and waits for its thread.
    fn stop(self) -> io::Result<()> {
        (self.stop)();
        self.thread
            .join()
            .map_err(|_| io::Error::other("server thread panicked"))?
    }
}

/// Spawns `run` on a thread called `name` and returns the thread and its kernel thread id.
fn spawn_reporting_tid(
    name: &str,
    run: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> io::Result<(JoinHandle<io::Result<()>>, u32)> {
    let (tx, rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = tx.send(current_tid());
            run()
        })?;
    let tid = rx
        .recv()
        .map_err(|_| io::Error::other("server thread died"))??;
    Ok((thread, tid))
}

/// The echo server's loop: accept, and answer each frame with `reply` until `stopped`.
fn run_echo(mut listener: TcpListener, reply: &[u8], stopped: &AtomicBool) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut events = Events::with_capacity(1024);
    let mut conns: Vec<Option<Link>> = Vec::new();
    while !stopped.load(Ordering::Relaxed) {
        poll.poll(&mut events, Some(Duration::from_millis(20)))?;
        for event in &events {
            if event.token() == LISTENER {
                accept_all(&poll, &listener, &mut conns)?;
            } else if let Some(link) = conns[event.token().0].as_mut() {
                if echo_serve(link, reply).is_err() {
                    conns[event.token().0] = None;
                }
            }
        }
    }
    Ok(())
}

/// Accepts every waiting connection into `conns`, its token its index.
fn accept_all(
    poll: &Poll,
    listener: &TcpListener,
    conns: &mut Vec<Option<Link>>,
) -> io::Result<()> {
    loop {
        let (mut stream, _) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        };
        stream.set_nodelay(true)?;
        let both = Interest::READABLE | Interest::WRITABLE;
        poll.registry()
            .register(&mut stream, Token(conns.len()), both)?;
        conns.push(Some(Link::new(stream)));
    }
}

/// Reads all that came in on `link` and queues one `reply` per whole frame.
fn echo_serve(link: &mut Link, reply: &[u8]) -> io::Result<()> {
    while link.read()? {
        let n = link.take_frames(|_| Ok(()))?;
        for _ in 0..n {
            link.out.extend_from_slice(reply);
        }
    }
    link.flush()
}

/// A non-blocking socket with a fixed read buffer and a pending-output buffer.
struct Link {
    stream: TcpStream,
    rbuf: Box<[u8]>,
    len: usize,
    out: Vec<u8>,
    sent: usize,
}

impl Link {
    /// Wraps a connected socket.
    fn new(stream: TcpStream) -> Link {
        Link {
            stream,
            rbuf: vec![0; LINK_BUF].into_boxed_slice(),
            len: 0,
            out: Vec::with_capacity(LINK_BUF),
            sent: 0,
        }
    }

    /// Reads once into the free tail: `false` once the socket has nothing more; EOF is an error.
    fn read(&mut self) -> io::Result<bool> {
        loop {
            return match self.stream.read(&mut self.rbuf[self.len..]) {
                Ok(0) => Err(io::Error::new(ErrorKind::UnexpectedEof, "peer closed")),
                Ok(n) => {
                    self.len += n;
                    Ok(true)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Passes each whole buffered frame to `each` (by its length field only), drops them, returns how many.
    fn take_frames(&mut self, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<usize> {
        let (mut at, mut n) = (0, 0);
        while let Some(len) = frame_len(&self.rbuf[at..self.len]) {
            each(&self.rbuf[at..at + len])?;
            at += len;
            n += 1;
        }
        self.rbuf.copy_within(at..self.len, 0);
        self.len -= at;
        check(self.len < LINK_BUF, "frames shorter than the link buffer")?;
        Ok(n)
    }

    /// Writes pending output until it is all written or the socket is full.
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.sent = 0;
        Ok(())
    }
}

/// The length of the whole frame at the start of `buf`, if it is all there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..wire::HEADER_LEN)?;
    let payload = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let len = payload + FRAMING;
    (buf.len() >= len).then_some(len)
}

// ---- memory ----

/// RSS growth over a number of owner entries.
struct Memory {
    entries: usize,
    /// Growth as the tables were filled.
    grown: u64,
    /// Growth once freed memory (old hash tables left by growth) is handed back.
    live: u64,
    /// Growth of the live heap bytes.
    heap: u64,
}

impl Memory {
    /// Prints one result line.
    fn print(&self, shared: bool) {
        let shape = if shared {
            format!("{MEM_NODES} owners per file")
        } else {
            "1 owner per file".to_owned()
        };
        let per_entry = |bytes: u64| bytes as f64 / self.entries as f64;
        println!(
            "  memory: {} owner entries ({shape}): RSS +{:.1} MiB = {:.0} B per owner entry \
             ({:.0} B after malloc_trim); live heap +{:.0} B per owner entry",
            self.entries,
            self.grown as f64 / (1 << 20) as f64,
            per_entry(self.grown),
            per_entry(self.live),
            per_entry(self.heap)
        );
    }
}

/// Measures RSS growth as `MEM_NODES` nodes announce their files to a fresh tracker.
fn owner_memory(shared: bool) -> io::Result<Memory> {
    let server = Server::tracker()?;
    let mut nodes = Vec::with_capacity(MEM_NODES);
    for k in 0..MEM_NODES {
        let mut node = Node::join(server.addr, &format!("mem-{k}"), owner_port(k))?;
        node.owners_of(BARRIER)?;
        nodes.push(node);
    }
    let (before, heap_before) = (trimmed_rss_bytes()?, live_heap());
    for (k, node) in nodes.iter_mut().enumerate() {
        let first = if shared { 0 } else { k * MEM_FILES_PER_NODE };
        node.announce((first..first + MEM_FILES_PER_NODE).map(|i| file_name("m", i)))?;
    }
    let (after, heap_after) = (rss_bytes()?, live_heap());
    let live = trimmed_rss_bytes()?;
    let expected = if shared { MEM_NODES } else { 1 };
    check(
        nodes[0].owners_of(&file_name("m", 0))? == expected,
        "every announced owner is listed",
    )?;
    drop(nodes);
    server.stop()?;
    Ok(Memory {
        entries: MEM_NODES * MEM_FILES_PER_NODE,
        grown: after.saturating_sub(before),
        live: live.saturating_sub(before),
        heap: heap_after.saturating_sub(heap_before),
    })
}

// ---- churn ----

/// Nodes in grace during the churn measurement, the first being the baseline.
const CHURN_IN_GRACE: [usize; 3] = [0, 10_000, 100_000];
/// Rounds of churn measured at each size.
const CHURN_ROUNDS: u32 = 100_000;
/// Distinct names the churning connections cycle through.
const CHURNERS: usize = 64;

/// An outbox that drops everything (the bench measures the state machine alone).
struct Discard;

impl Outbox for Discard {
    fn send(&mut self, _to: SessionId, _msg: &Message<'_>) {}
    fn close(&mut self, _to: SessionId) {}
}

/// Cost of one churn round with `in_grace` disconnected nodes waiting out their grace.
fn grace_churn(in_grace: usize) -> Duration {
    let now = Instant::now();
    let limits = TrackerLimits {
        max_owners_per_host: usize::MAX,
        ..TrackerLimits::default()
    };
    let mut t = TrackerState::new(limits);
    let ip = std::net::IpAddr::from([127, 0, 0, 1]);
    let say = |t: &mut TrackerState, session: usize, msg: NodeToTracker<'_>| {
        t.handle_frame(now, session, &Message::NodeToTracker(msg), &mut Discard);
    };
    fn hello(name: &str) -> NodeToTracker<'_> {
        NodeToTracker::Hello {
            node_name: name,
            listen_port: 7000,
            secret: *blake3::hash(name.as_bytes()).as_bytes(),
        }
    }
    for i in 0..in_grace {
        let name = file_name("grace", i);
        t.handle_accept(now, i, ip);
        say(&mut t, i, hello(&name));
        say(
            &mut t,
            i,
            NodeToTracker::Have {
                name: "f",
                info: file_info("f"),
                complete: true,
            },
        );
        t.handle_closed(now, i);
    }
    let asker = in_grace;
    t.handle_accept(now, asker, ip);
    say(&mut t, asker, hello("asker"));
    let names: Vec<String> = (0..CHURNERS).map(|i| file_name("churn", i)).collect();
    let start = Instant::now();
    for r in 0..CHURN_ROUNDS as usize {
        let session = asker + 1 + r % CHURNERS;
        t.handle_accept(now, session, ip);
        std::hint::black_box(t.poll_timeout());
        say(&mut t, session, hello(&names[r % CHURNERS]));
        std::hint::black_box(t.poll_timeout());
        t.handle_closed(now, session);
        std::hint::black_box(t.poll_timeout());
        say(&mut t, asker, NodeToTracker::Need { name: "g" });
        std::hint::black_box(t.poll_timeout());
    }
    start.elapsed() / CHURN_ROUNDS
}

// ---- setup connections ----

/// A blocking node connection, for filling the tracker's tables.
struct Node {
    stream: StdStream,
    buf: Vec<u8>,
}

impl Node {
    /// Connects and says `Hello`.
    fn join(addr: SocketAddr, name: &str, port: u16) -> io::Result<Node> {
        let mut stream = StdStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.write_all(&hello_frame(name, port)?)?;
        Ok(Node {
            stream,
            buf: Vec::new(),
        })
    }

    /// Announces complete ownership of `names`, a round trip every `CHUNK` frames.
    fn announce(&mut self, names: impl Iterator<Item = String>) -> io::Result<()> {
        let mut frames = Vec::new();
        for (i, name) in names.enumerate() {
            let have = NodeToTracker::Have {
                name: &name,
                info: file_info(&name),
                complete: true,
            };
            encode(&have, &mut frames)?;
            if (i + 1) % CHUNK == 0 {
                self.flush_and_wait(&mut frames)?;
            }
        }
        self.flush_and_wait(&mut frames)
    }

    /// Sends `frames`, then waits for the tracker to have read them.
    fn flush_and_wait(&mut self, frames: &mut Vec<u8>) -> io::Result<()> {
        self.stream.write_all(frames)?;
        frames.clear();
        self.owners_of(BARRIER).map(drop)
    }

    /// Asks for the owner list of `name` (watching it) and returns its length.
    fn owners_of(&mut self, name: &str) -> io::Result<usize> {
        self.stream.write_all(&need_frame(name)?)?;
        loop {
            let step = match decode_frame(&self.buf, &Limits::default()) {
                Ok(Decoded::Frame(msg, len)) => Some((reply_owners(&msg), len)),
                Ok(Decoded::NeedMore(_)) => None,
                Err(e) => return Err(io::Error::other(e)),
            };
            if let Some((owners, len)) = step {
                self.buf.drain(..len);
                return owners;
            }
            let mut chunk = [0; 4096];
            let n = self.stream.read(&mut chunk)?;
            check(n > 0, "the tracker keeps the connection open")?;
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The number of owners in an owner list; an error for anything else.
fn reply_owners(msg: &Message<'_>) -> io::Result<usize> {
    match msg {
        Message::TrackerToNode(list) => Ok(list.owners.len()),
        Message::Error { code, reason } => Err(io::Error::other(format!(
            "tracker error {code:?}: {reason}"
        ))),
        other => Err(io::Error::other(format!(
            "unexpected reply of type {}",
            other.type_code()
        ))),
    }
}

// ---- frames ----

/// `file`-style names: `prefix-000042`.
fn file_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i:06}")
}

/// The port owner `k` declares.
fn owner_port(k: usize) -> u16 {
    7000 + k as u16
}

/// The version every owner of `name` holds: 64 MiB in 1 MiB pieces, a root made from the name.
fn file_info(name: &str) -> FileInfo {
    FileInfo {
        size: 64 << 20,
        piece_size: 1 << 20,
        root: *blake3::hash(name.as_bytes()).as_bytes(),
    }
}

/// Appends one encoded node-to-tracker frame to `out`.
fn encode(msg: &NodeToTracker<'_>, out: &mut Vec<u8>) -> io::Result<()> {
    let msg = Message::NodeToTracker(msg.clone());
    wire::encode(&msg, out).map(drop).map_err(io::Error::other)
}

/// The `Hello` frame of node `name` serving at `port`.
fn hello_frame(name: &str, port: u16) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let hello = NodeToTracker::Hello {
        node_name: name,
        listen_port: port,
        secret: [0; 32],
    };
    encode(&hello, &mut out)?;
    Ok(out)
}

/// The `Need` frame for `name`.
fn need_frame(name: &str) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode(&NodeToTracker::Need { name }, &mut out)?;
    Ok(out)
}

/// The echo server's answer: the owner list the tracker sends for a file, byte for byte in size.
fn reply_frame() -> io::Result<Vec<u8>> {
    let name = file_name("file", 0);
    let nodes: Vec<String> = (0..OWNERS).map(|k| format!("owner-{k}")).collect();
    let owners = (0..OWNERS)
        .map(|k| Owner {
            node_name: &nodes[k],
            addr: SocketAddr::from(([127, 0, 0, 1], owner_port(k))),
            info: file_info(&name),
            complete: true,
        })
        .collect();
    let msg = Message::TrackerToNode(TrackerToNode {
        name: &name,
        owners,
    });
    let mut out = Vec::new();
    wire::encode(&msg, &mut out).map_err(io::Error::other)?;
    Ok(out)
}

// ---- process and thread accounting ----

/// An error saying `what` was expected, unless `ok`.
fn check(ok: bool, what: &str) -> io::Result<()> {
    if ok {
        Ok(())
    } else {
        Err(io::Error::other(format!("expected {what}")))
    }
}

/// The calling thread's kernel id (from the `/proc/thread-self` link).
fn current_tid() -> io::Result<u32> {
    let link = std::fs::read_link("/proc/thread-self")?;
    link.file_name()
        .and_then(|t| t.to_str()?.parse().ok())
        .ok_or_else(|| io::Error::other("unreadable /proc/thread-self"))
}

/// CPU time (user + system) used so far by thread `tid` of this process.
fn thread_cpu(tid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (user, system) = ticks(11)
        .zip(ticks(12))
        .ok_or_else(|| io::Error::other("unreadable thread stat"))?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64((user + system) as f64 / per_second))
}

/// The process's resident set size, in bytes.
fn rss_bytes() -> io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other("unreadable /proc/self/statm"))?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Ok(pages * page)
}

/// Heap bytes allocated and not yet freed, process-wide.
fn live_heap() -> u64 {
    LIVE_HEAP.load(Ordering::Relaxed) as u64
}

/// The resident set size after handing every arena's free pages back to the kernel.
fn trimmed_rss_bytes() -> io::Result<u64> {
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    rss_bytes()
}

/// Raises the soft descriptor limit toward `want` (at most to the hard limit).
fn raise_nofile_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one plain struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= want {
            return;
        }
        lim.rlim_cur = want.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            eprintln!(
                "cannot raise the descriptor limit: {}",
                io::Error::last_os_error()
            );
        }
    }
    if lim.rlim_cur < want {
        eprintln!(
            "descriptor limit {} is below the {want} this bench wants",
            lim.rlim_cur
        );
    }
}
