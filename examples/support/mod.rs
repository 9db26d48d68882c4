//! Loopback swarm helpers shared by `examples/demo.rs` and `benches/transfer.rs`.
//!
//! The bench includes this file with `#[path = "../examples/support/mod.rs"] mod support;`.
//! Cargo does not build it as an example of its own: it is in a folder without a `main.rs`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use shoal::node::{self, NodeConfig};
use shoal::reactor::Stopper;
use shoal::tracker::{self, TrackerConfig};
use shoal::wire::{self, Decoder, Limits, Message, NodeToTracker};

/// Chunk size for generating files (1 MiB), also the users' buffer size.
pub const CHUNK: usize = 1 << 20;

/// A reactor running on its own thread.
pub struct Running {
    stopper: Stopper,
    thread: JoinHandle<()>,
}

impl Running {
    /// Stops the reactor and waits for its thread.
    pub fn stop(self) {
        self.stopper.stop();
        let _ = self.thread.join();
    }
}

/// Starts a tracker on 127.0.0.1 (any port) on a thread; returns it with its address.
pub fn start_tracker() -> io::Result<(Running, SocketAddr)> {
    let server = tracker::bind(TrackerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        limits: Default::default(),
    })?;
    let addr = server.local_addr();
    let running = Running {
        stopper: server.stopper(),
        thread: thread::spawn(move || {
            if let Err(e) = server.run() {
                eprintln!("tracker: {e}");
            }
        }),
    };
    Ok((running, addr))
}

/// Starts owner `i` (named `owner-{i}`) sharing `uploads` from `dir` in pieces of `piece_size`, on a thread.
pub fn start_owner(
    i: usize,
    dir: &Path,
    tracker: SocketAddr,
    piece_size: u32,
    uploads: Vec<String>,
) -> io::Result<Running> {
    let mut config = NodeConfig::new(&format!("owner-{i}"));
    config.tracker = tracker;
    config.dir = dir.to_owned();
    config.uploads = uploads;
    config.piece_size = piece_size;
    spawn_node(config)
}

/// Binds a node on the calling thread (so bind errors return here) and runs it on a thread of its own.
fn spawn_node(config: NodeConfig) -> io::Result<Running> {
    let name = config.name.clone();
    let server = node::bind(config)?;
    let stopper = server.stopper();
    let thread = thread::spawn(move || {
        if let Err(e) = server.run() {
            eprintln!("{name}: {e}");
        }
    });
    Ok(Running { stopper, thread })
}

/// Asks the tracker every `poll` until it lists at least `want` owners of `file`; fails after `timeout`.
pub fn wait_for_owners(
    tracker: SocketAddr,
    file: &str,
    want: usize,
    timeout: Duration,
    poll: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let known = owners_known(tracker, file)?;
        if known >= want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "only {known} of {want} owners published {file} within {} s",
                timeout.as_secs()
            )));
        }
        thread::sleep(poll);
    }
}

/// Asks the tracker, as a throw-away node, how many owners of `file` it knows.
fn owners_known(tracker: SocketAddr, file: &str) -> io::Result<usize> {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let probe = format!("probe-{}", PROBES.fetch_add(1, Ordering::Relaxed));
    let mut stream = TcpStream::connect(tracker)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = Vec::new();
    for msg in [
        NodeToTracker::Hello {
            node_name: &probe,
            listen_port: 9,
            secret: [0; 32],
        },
        NodeToTracker::Need { name: file },
    ] {
        wire::encode(&Message::NodeToTracker(msg), &mut out).map_err(io::Error::other)?;
    }
    stream.write_all(&out)?;
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::other("the tracker closed the probe connection"));
        }
        let mut fed = 0;
        while fed < n {
            fed += decoder.feed(&buf[fed..n]);
            while let Some(msg) = decoder.next_frame().map_err(io::Error::other)? {
                match msg {
                    Message::TrackerToNode(list) => return Ok(list.owners.len()),
                    Message::Error { reason, .. } => {
                        return Err(io::Error::other(format!("the tracker refused: {reason}")))
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Writes `size` pseudo-random bytes (xorshift64 seeded with a constant `^ salt`) to `path` in 1 MiB chunks.
pub fn generate(path: &Path, size: u64, salt: u64) -> io::Result<()> {
    let mut out = File::create(path)?;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ salt;
    let mut buf = vec![0u8; CHUNK];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(CHUNK as u64) as usize;
        out.write_all(&buf[..n])?;
        left -= n as u64;
    }
    out.sync_all()
}

/// Whether two files hold the same bytes, compared 1 MiB at a time.
pub fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    let (mut fa, mut fb) = match (File::open(a), File::open(b)) {
        (Ok(fa), Ok(fb)) => (fa, fb),
        (Err(e), _) => return Err(e),
        (_, Err(_)) => return Ok(false),
    };
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        if n != read_full(&mut fb, &mut bb)? || ba[..n] != bb[..n] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
