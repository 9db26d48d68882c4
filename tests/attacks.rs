//! Hostile peers against real node processes, each beside an honest download that must
//! complete byte-identical while the attack fails.
//!
//! Each test prints what the attack cost: the attacked process's peak RSS (VmHWM) and
//! the honest download's time with and without the attack. Those figures are printed,
//! never asserted (the machine is shared); memory bounds are asserted generously.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use shoal::node::bitfield::Bitfield;
use shoal::storage::{hash_piece, Hash};
use shoal::wire::{
    decode_frame, encode, Block, Decoded, FileInfo, Limits, Message, SizeInformation,
};

/// Downloads `file` with a fresh node (commands on stdin) that leaves once it has it;
/// returns the seconds the download took (as the node measured it), its peak RSS in KiB,
/// and its log.
fn timed_download_log(
    tracker: &Tracker,
    name: &str,
    file: &str,
    want: &[u8],
) -> (f64, u64, Vec<String>) {
    let dir = tempdir();
    let mut node = Node::start(name, tracker, dir.path(), &[]);
    node.send(&format!("download {file}"));
    let line = node.wait_downloaded(file);
    let peak = proc_kib(node.proc.pid(), "VmHWM");
    node.send("exit");
    let status = node.proc.wait_exit();
    assert!(status.success(), "{}", node.proc.dump());
    assert_same_file(dir.path(), file, want);
    (seconds_of(&line), peak, node.proc.stderr_lines())
}

/// [`timed_download_log`] without the log.
fn timed_download(tracker: &Tracker, name: &str, file: &str, want: &[u8]) -> (f64, u64) {
    let (secs, peak, _) = timed_download_log(tracker, name, file, want);
    (secs, peak)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A port nothing listens on (bound, then released).
fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn info_of(sharing: &str, piece_size: u32) -> FileInfo {
    FileInfo {
        size: sharing
            .split_once(" (")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .expect(sharing),
        piece_size,
        root: root_bytes(&root_of(sharing)),
    }
}

#[test]
fn hash_request_flood_on_connections_that_never_read() {
    let tracker = Tracker::start();
    let dir = tempdir();
    // 4096 pieces of 16 KiB: every hash request for all of them is answered with 128 KiB.
    let big = std::fs::File::create(dir.path().join("big.bin")).unwrap();
    big.set_len(64 << 20).unwrap();
    drop(big);
    let small = random_bytes(2 << 20);
    put_file(dir.path(), "small.bin", &small);
    let victim = Node::start(
        "victim",
        &tracker,
        dir.path(),
        &[
            "--upload",
            "big.bin",
            "--upload",
            "small.bin",
            "--piece-size",
            "16K",
        ],
    );
    let root = root_bytes(&root_of(&victim.wait_sharing("big.bin")));
    victim.wait_sharing("small.bin");
    let (quiet, _) = timed_download(&tracker, "before", "small.bin", &small);
    let rss_before = proc_kib(victim.proc.pid(), "VmRSS");

    // Three connections, 1000 requests each, replies never read: 375 MiB of answers
    // if every request were answered at once.
    let addr: SocketAddr = victim.addr.parse().unwrap();
    let mut request = Vec::new();
    for _ in 0..1000 {
        let msg = Message::HashRequest {
            root,
            first: 0,
            count: 4096,
        };
        encode(&msg, &mut request).unwrap();
    }
    let floods: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&request).unwrap();
            s
        })
        .collect();
    // Give the node time to take in what it will (bounded; nothing is timed).
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
    }
    let (loud, _) = timed_download(&tracker, "during", "small.bin", &small);
    let rss_after = proc_kib(victim.proc.pid(), "VmRSS");
    let peak = proc_kib(victim.proc.pid(), "VmHWM");
    println!(
        "attack hash-request flood (3 connections x 1000 requests, never read): victim peak RSS {:.1} MiB \
         (RSS {:.1} MiB before, {:.1} MiB during); honest download of 2 MiB {quiet:.2} s without, {loud:.2} s with",
        mib(peak),
        mib(rss_before),
        mib(rss_after)
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(floods);
}

#[test]
fn fake_versions_beside_an_honest_owner() {
    let tracker = Tracker::start();
    let data = random_bytes(3 << 20);
    let (honest, _honest_dir) = start_owner(&tracker, "honest", "f", &data, &[]);
    let real = info_of(&honest.wait_sharing("f"), 1 << 20);
    let (quiet, _) = timed_download(&tracker, "before", "f", &data);
    tracker.wait_owners("f", &["honest"]);

    // One owner announcing root 00…00 (at a port nobody serves), and two names announcing
    // another root at the honest owner's port (which answers "not found" for it): both fake
    // versions rank above the real one.
    let honest_port: u16 = honest.addr.parse::<SocketAddr>().unwrap().port();
    let zero = FileInfo {
        root: [0; 32],
        ..real
    };
    let other = FileInfo {
        root: [0x11; 32],
        ..real
    };
    let _fakes = [
        fake_announce(&tracker.addr, "zero", dead_port(), "f", zero),
        fake_announce(&tracker.addr, "fake-a", honest_port, "f", other),
        fake_announce(&tracker.addr, "fake-b", honest_port, "f", other),
    ];
    tracker.wait_owners("f", &["honest", "zero", "fake-a", "fake-b"]);

    let (loud, peak, log) = timed_download_log(&tracker, "victim", "f", &data);
    let gave_up = log
        .iter()
        .filter(|l| l.contains("giving up on version"))
        .count();
    println!(
        "attack fake versions (root 00..00 + two names with another root): downloader peak RSS {:.1} MiB; \
         honest download of 3 MiB {quiet:.2} s without, {loud:.2} s with; {gave_up} fake versions given up",
        mib(peak)
    );
    assert_eq!(gave_up, 2, "{}", log.join("\n"));
}

#[test]
fn pinned_downloads_take_only_their_version() {
    let tracker = Tracker::start();
    let (a_data, b_data) = (random_bytes(1_500_000), random_bytes(1_200_000));
    let (a, _a_dir) = start_owner(&tracker, "a", "f", &a_data, &[]);
    let (b, _b_dir) = start_owner(&tracker, "b", "f", &b_data, &[]);
    let root_a = root_of(&a.wait_sharing("f"));
    let root_b = root_of(&b.wait_sharing("f"));
    tracker.wait_owners("f", &["a", "b"]);

    // On the command line, a 12-digit prefix.
    let dir = tempdir();
    let spec = format!("f@{}", &root_b[..12]);
    let mut p1 = Node::start(
        "p1",
        &tracker,
        dir.path(),
        &["--download", &spec, "--exit-when-done"],
    );
    let status = p1.proc.wait_exit();
    assert!(status.success(), "{}", p1.proc.dump());
    assert_same_file(dir.path(), "f", &b_data);

    // On stdin, the shortest prefix allowed, upper case.
    let dir = tempdir();
    let mut p2 = Node::start("p2", &tracker, dir.path(), &[]);
    p2.send(&format!("download f --root {}", root_a[..8].to_uppercase()));
    p2.wait_downloaded("f");
    assert_same_file(dir.path(), "f", &a_data);
    let contacted_b = p2
        .proc
        .stderr_lines()
        .iter()
        .any(|l| l.contains(&root_b[..8]));
    assert!(!contacted_b, "{}", p2.proc.dump());
}

#[test]
fn same_bytes_under_two_names_are_both_served() {
    let tracker = Tracker::start();
    let data = random_bytes(1 << 20);
    let dir = tempdir();
    put_file(dir.path(), "a.bin", &data);
    put_file(dir.path(), "b.bin", &data);
    let owner = Node::start(
        "owner",
        &tracker,
        dir.path(),
        &["--upload", "a.bin", "--upload", "b.bin"],
    );
    owner.wait_sharing("a.bin");
    owner.wait_sharing("b.bin");
    tracker.wait_owners("a.bin", &["owner"]);
    tracker.wait_owners("b.bin", &["owner"]);
    let down = tempdir();
    let mut node = Node::start(
        "d",
        &tracker,
        down.path(),
        &[
            "--download",
            "a.bin",
            "--download",
            "b.bin",
            "--exit-when-done",
        ],
    );
    let status = node.proc.wait_exit();
    assert!(status.success(), "{}", node.proc.dump());
    assert_same_file(down.path(), "a.bin", &data);
    assert_same_file(down.path(), "b.bin", &data);
}

#[test]
fn a_shared_file_truncated_on_disk_is_withdrawn_and_rehashed_on_upload() {
    let tracker = Tracker::start();
    let data = random_bytes(2 << 20);
    let (mut owner, dir) = start_owner(&tracker, "owner", "f", &data, &[]);
    tracker.wait_owners("f", &["owner"]);
    let path = dir.path().join("f");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();

    // A downloader's question finds the change: the file is withdrawn, not served half.
    let mark = tracker.proc.stderr_mark();
    let down = tempdir();
    let first = Node::start(
        "first",
        &tracker,
        down.path(),
        &["--download", "f", "--give-up-after", "2"],
    );
    let line = owner
        .proc
        .wait_stderr(|l| l.contains("changed on disk") && l.contains("no longer shared"));
    assert!(line.contains("upload it again"), "{line}");
    tracker.wait_owners_from(mark, "f", &[]);
    drop(first);
    assert!(!Path::new(&down.path().join("f")).exists());

    // `upload f` again hashes what is there now, and that is what is downloaded.
    let out = owner.proc.stdout_mark();
    owner.send("upload f");
    owner
        .proc
        .wait_stdout_from(out, |l| l.starts_with("sharing f ("));
    let (took, _) = timed_download(&tracker, "second", "f", &data[..1 << 20]);
    println!("attack file truncated while shared: withdrawn; download after re-upload {took:.2} s");
}

#[test]
fn a_closed_stdout_does_not_stop_a_node_serving() {
    let tracker = Tracker::start();
    let data = random_bytes(1 << 20);
    let dir = tempdir();
    put_file(dir.path(), "f", &data);
    let args = node_args("mute", &tracker.addr, dir.path());
    let (mut mute, first) = Proc::spawn_stdout_closed("node mute", NODE, &args);
    assert!(first.starts_with("node mute listening on"), "{first}");
    // Both print on the closed pipe: `sharing f ...` and the command list.
    mute.send("upload f");
    mute.send("help");
    tracker.wait_owners("f", &["mute"]);
    let (took, _) = timed_download(&tracker, "reader", "f", &data);
    mute.send("help");
    let (took_again, _) = timed_download(&tracker, "reader2", "f", &data);
    assert!(mute.is_running(), "{}", mute.dump());
    println!("closed stdout: the node kept serving ({took:.2} s, then {took_again:.2} s)");
}

/// How a hand-written hostile owner behaves once it has answered the size question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hostile {
    /// Answers a hash request with one hash every 5 s.
    TrickleHashes,
    /// Sends the right hashes, then a block nobody asked for every second instead of the ones asked.
    UnaskedBlocks,
}

/// A hostile owner of `data` (as 16 KiB pieces) listening on loopback, on a thread; stopped on drop.
struct FakeOwner {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FakeOwner {
    fn start(data: &[u8], info: FileInfo, acts: Hostile) -> FakeOwner {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let hashes: Vec<Hash> = data
            .chunks(info.piece_size as usize)
            .map(hash_piece)
            .collect();
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut conns = Vec::new();
            // Bounded: 10 minutes at most, whatever happens.
            for _ in 0..60_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true).unwrap();
                    conns.push(FakeConn::new(stream));
                }
                conns.retain_mut(|c| c.step(info, &hashes, acts));
                thread::sleep(Duration::from_millis(10));
            }
        });
        FakeOwner {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeOwner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One downloader connected to a [`FakeOwner`].
struct FakeConn {
    stream: TcpStream,
    input: Vec<u8>,
    /// Hashes still to trickle: (index, when).
    trickle: Vec<(u32, Instant)>,
    /// A block to imitate, and when the next fake one goes out.
    unasked: Option<(shoal::wire::BlockRequest, Instant)>,
}

impl FakeConn {
    fn new(stream: TcpStream) -> FakeConn {
        FakeConn {
            stream,
            input: Vec::new(),
            trickle: Vec::new(),
            unasked: None,
        }
    }

    /// Reads and answers what arrived; false once the connection is gone.
    fn step(&mut self, info: FileInfo, hashes: &[Hash], acts: Hostile) -> bool {
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(n) => self.input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return false,
        }
        let mut out = Vec::new();
        let now = Instant::now();
        let mut used = 0;
        while let Ok(Decoded::Frame(msg, len)) =
            decode_frame(&self.input[used..], &Limits::default())
        {
            used += len;
            match msg {
                Message::SizeInformation(SizeInformation::Question { name, .. }) => {
                    let have = Bitfield::full(hashes.len() as u32);
                    let answer = SizeInformation::Answer {
                        name,
                        info,
                        have: have.as_bytes(),
                    };
                    encode(&Message::SizeInformation(answer), &mut out).unwrap();
                }
                Message::HashRequest { root, first, count } => match acts {
                    Hostile::TrickleHashes => {
                        for i in 0..count {
                            let at = now + Duration::from_secs(5 * u64::from(i + 1));
                            self.trickle.push((first + i, at));
                        }
                    }
                    Hostile::UnaskedBlocks => {
                        let range = &hashes[first as usize..(first + count) as usize];
                        let msg = Message::Hashes {
                            root,
                            first,
                            hashes: range.as_flattened(),
                        };
                        encode(&msg, &mut out).unwrap();
                    }
                },
                Message::Request(r) => {
                    self.unasked.get_or_insert((r, now));
                }
                _ => {}
            }
        }
        self.input.drain(..used);
        for (index, _) in self.trickle.iter().filter(|(_, at)| *at <= now) {
            let msg = Message::Hashes {
                root: info.root,
                first: *index,
                hashes: &hashes[*index as usize],
            };
            encode(&msg, &mut out).unwrap();
        }
        self.trickle.retain(|(_, at)| *at > now);
        if let Some((r, at)) = self.unasked.as_mut() {
            if *at <= now {
                *at = now + Duration::from_secs(1);
                let data = [0u8; 16];
                let block = Block {
                    root: r.root,
                    piece: r.piece,
                    offset: r.offset + 1,
                    data: &data,
                };
                encode(&Message::FileCommunication(block), &mut out).unwrap();
            }
        }
        // Small frames into a socket the node reads: a short blocking write is fine here.
        self.stream.set_nonblocking(false).unwrap();
        let ok = self.stream.write_all(&out).is_ok();
        self.stream.set_nonblocking(true).unwrap();
        ok
    }
}

/// An honest owner of a 1 MiB file of 16 KiB pieces and a hostile one of the same version:
/// the download beside the attacker completes; against the attacker alone, it gives up in
/// `--give-up-after` rather than being held.
fn hostile_owner_beside_an_honest_one(acts: Hostile) {
    let tracker = Tracker::start();
    let data = random_bytes(1 << 20);
    let (mut honest, _dir) = start_owner(&tracker, "honest", "f", &data, &["--piece-size", "16K"]);
    let info = info_of(&honest.wait_sharing("f"), 16 << 10);
    let (quiet, _) = timed_download(&tracker, "before", "f", &data);

    let fake = FakeOwner::start(&data, info, acts);
    let _announce = fake_announce(&tracker.addr, "hostile", fake.port, "f", info);
    tracker.wait_owners("f", &["honest", "hostile"]);
    let (loud, peak, log) = timed_download_log(&tracker, "beside", "f", &data);
    let dropped = log
        .iter()
        .filter(|l| l.contains("dropping owner hostile"))
        .count();

    // Alone with the attacker: a clear failure within the give-up time, not a hang.
    honest.send("exit");
    honest.proc.wait_exit();
    tracker.wait_owners("f", &["hostile"]);
    let dir = tempdir();
    let started = Instant::now();
    let mut alone = Node::start(
        "alone",
        &tracker,
        dir.path(),
        // Longer than the trickle's 5 s and the blocks' 1 s, so either would hold the
        // download if it counted as a delivery.
        &[
            "--download",
            "f",
            "--give-up-after",
            "8",
            "--exit-when-done",
        ],
    );
    let status = alone.proc.wait_exit();
    let gave_up = started.elapsed().as_secs_f64();
    assert!(!status.success(), "{}", alone.proc.dump());
    let line = alone.proc.wait_stderr(|l| l.contains("download f failed"));
    if acts == Hostile::TrickleHashes {
        alone
            .proc
            .wait_stderr(|l| l.contains("dropping owner hostile") && l.contains("not asked for"));
    }
    println!(
        "attack {acts:?}: downloader peak RSS {:.1} MiB; honest download of 1 MiB {quiet:.2} s without, \
         {loud:.2} s beside it (attacker dropped {dropped} times); alone with it, gave up after {gave_up:.1} s: {line}",
        mib(peak)
    );
    drop(fake);
}

#[test]
fn a_hash_source_trickling_hashes() {
    hostile_owner_beside_an_honest_one(Hostile::TrickleHashes);
}

#[test]
fn an_owner_sending_blocks_nobody_asked_for() {
    hostile_owner_beside_an_honest_one(Hostile::UnaskedBlocks);
}

#[test]
fn control_characters_in_names_are_escaped_in_logs() {
    let tracker = Tracker::start();
    let dir = tempdir();
    let mut node = Node::start("n", &tracker, dir.path(), &[]);
    node.send("download a\u{1b}[2Jb");
    node.send("upload c\u{7}d");
    node.send("download e\u{1b}]0;title\u{7}f --root 0123456789");
    node.proc
        .wait_stderr(|l| l.contains("download a\\u{1b}[2Jb: name refused"));
    node.proc
        .wait_stderr(|l| l.contains("upload c\\u{7}d: name refused"));
    node.send("help");
    node.proc.wait_stdout(|l| l.contains("download FILE"));
    let raw: Vec<String> = node
        .proc
        .stderr_lines()
        .into_iter()
        .filter(|l| l.chars().any(|c| c.is_control() && c != '\t'))
        .collect();
    assert!(raw.is_empty(), "raw control characters logged: {raw:?}");
}

/// A downloader announcing a data-sized frame to an owner is refused from the header: the
/// owner holds no megabyte buffer for it and serves on.
#[test]
fn an_oversized_frame_to_an_owner_is_refused_at_its_header() {
    let tracker = Tracker::start();
    let data = random_bytes(1 << 20);
    let (owner, _dir) = start_owner(&tracker, "owner", "o.bin", &data, &["-v"]);
    let mut hostile = TcpStream::connect(&owner.addr).expect("connect");
    hostile
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // "SH", version 1, Request, then a payload length of 1 MiB (a data frame's size).
    let header = [0x53, 0x48, 1, 5, 0x00, 0x10, 0x00, 0x00];
    hostile.write_all(&header).expect("write");
    hostile.write_all(&[0u8; 512]).expect("write");
    let mut reply = Vec::new();
    let _ = hostile.read_to_end(&mut reply);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("is over the limit of 4096"),
        "no protocol error: {text:?}"
    );
    let (_, got) = download_and_exit(&tracker, "fine", "o.bin");
    assert_same_file(got.path(), "o.bin", &data);
}
