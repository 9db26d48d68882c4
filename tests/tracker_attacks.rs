//! Hostile nodes against a real `shoal-tracker`, each with an honest download beside it:
//! the attack must fail, the tracker's memory stay bounded, and the honest download
//! complete byte-identical.
//!
//! Attackers are raw clients speaking the wire format from loopback addresses other than
//! 127.0.0.1 (the kernel routes all of 127/8 to lo), so they are other hosts to the tracker;
//! the honest nodes use 127.0.0.1. Each test prints the tracker's peak RSS (VmHWM) and the
//! honest download's time without and with the attack; times are printed, never asserted.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use shoal::wire::{self, Decoded, FileInfo, Limits, Message, NodeToTracker};

/// Length of the long node names that make an owner list big (the wire allows 255).
const LONG_NAME: usize = 240;
/// Owners of the big file: 1023 owners of 240-byte names make a ~310 KB owner list (one
/// more, the flipping owner, and it is as long as a reply may be).
const BIG_OWNERS: usize = 1023;
/// Owner entries per source address (under the tracker's per-host cap of 256).
const OWNERS_PER_HOST: usize = 128;
/// Size of the honest file.
const HONEST_SIZE: usize = 8 << 20;
/// Completeness flips of the watched file's owner, 50 ms apart.
const FLIPS: usize = 160;

/// What a raw client read from the tracker.
#[derive(Debug)]
enum Got {
    /// An owner list: file name, then (node name, address, root's first byte, complete).
    Owners(String, Vec<(String, SocketAddr, u8, bool)>),
    /// An error frame's reason.
    Error(String),
}

/// A node played by hand: frames written straight to a socket bound to `from`.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(tracker: &str, from: Ipv4Addr) -> Raw {
        Raw::connect_with(tracker, from, None)
    }

    /// With SO_RCVBUF set to `rcvbuf` if given: a small receive window keeps what a
    /// non-reading client leaves unread in the tracker rather than in our kernel buffer.
    fn connect_with(tracker: &str, from: Ipv4Addr, rcvbuf: Option<usize>) -> Raw {
        let to: SocketAddr = tracker.parse().expect("tracker address");
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        if let Some(size) = rcvbuf {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        socket
            .bind(&SocketAddr::V4(SocketAddrV4::new(from, 0)).into())
            .unwrap_or_else(|e| panic!("cannot bind {from}: {e}"));
        socket.connect(&to.into()).expect("connect to the tracker");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects from `from` and says hello as `name` with `secret`.
    fn join(tracker: &str, from: Ipv4Addr, name: &str, secret: [u8; 32]) -> Raw {
        let mut raw = Raw::connect(tracker, from);
        raw.send(&[NodeToTracker::Hello {
            node_name: name,
            listen_port: 9,
            secret,
        }]);
        raw
    }

    fn send(&mut self, msgs: &[NodeToTracker<'_>]) {
        let mut frames = Vec::new();
        for msg in msgs {
            wire::encode(&Message::NodeToTracker(msg.clone()), &mut frames).expect("encode");
        }
        self.stream
            .write_all(&frames)
            .expect("write to the tracker");
    }

    /// The next frame from the tracker; `None` at end of stream.
    fn recv(&mut self) -> Option<Got> {
        let limits = Limits {
            max_payload: wire::DEFAULT_MAX_PAYLOAD,
        };
        loop {
            if let Decoded::Frame(msg, used) =
                wire::decode_frame(&self.buf, &limits).expect("a good frame")
            {
                let got = match msg {
                    Message::TrackerToNode(list) => Got::Owners(
                        list.name.to_owned(),
                        list.owners
                            .iter()
                            .map(|o| (o.node_name.to_owned(), o.addr, o.info.root[0], o.complete))
                            .collect(),
                    ),
                    Message::Error { reason, .. } => Got::Error(reason.to_owned()),
                    other => panic!("the tracker sent {other:?}"),
                };
                self.buf.drain(..used);
                return Some(got);
            }
            let mut chunk = [0u8; 64 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading from the tracker: {e}"),
            }
        }
    }

    /// Asks for `file`'s owners and returns them (skipping errors and other lists before it).
    fn owners(&mut self, file: &str) -> Vec<(String, SocketAddr, u8, bool)> {
        self.send(&[NodeToTracker::Need { name: file }]);
        for _ in 0..100_000 {
            match self.recv() {
                Some(Got::Owners(name, owners)) if name == file => return owners,
                Some(_) => {}
                None => panic!("the tracker closed the link"),
            }
        }
        panic!("no owner list of {file}");
    }
}

fn info(root: u8, complete_size: u64) -> FileInfo {
    FileInfo {
        size: complete_size,
        piece_size: 1 << 20,
        root: [root; 32],
    }
}

/// The loopback address of attacker host `k` (127.0.0.2 and up).
fn host(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(k).expect("few hosts"))
}

/// Gives `file` `BIG_OWNERS` owners with long names, from several hosts; each announces,
/// checks the tracker has it (a round trip) and leaves (the long grace keeps the entries).
fn big_owner_list(tracker: &Tracker, file: &str) {
    for i in 0..BIG_OWNERS {
        let name = format!("{i:0>width$}", width = LONG_NAME);
        let mut raw = Raw::join(&tracker.addr, host(i / OWNERS_PER_HOST), &name, [7; 32]);
        raw.send(&[NodeToTracker::Have {
            name: file,
            info: info(1, 50 << 20),
            complete: true,
        }]);
        // A round trip, so the entry is in before the link closes.
        assert!(raw.owners("barrier").is_empty());
    }
    let mut check = Raw::join(&tracker.addr, Ipv4Addr::LOCALHOST, "checker", [8; 32]);
    assert_eq!(
        check.owners(file).len(),
        BIG_OWNERS,
        "{}",
        tracker.proc.dump()
    );
}

/// Shares a fresh honest file from alice; returns her, her folder and the bytes.
fn honest_owner(tracker: &Tracker, name: &str, data: &[u8]) -> (Node, tempfile::TempDir) {
    start_owner(tracker, name, "honest.bin", data, &[])
}

/// Downloads `honest.bin` as `name`, checks the bytes, returns the download's seconds.
fn honest_download(tracker: &Tracker, name: &str, data: &[u8]) -> f64 {
    let (down, dir) = download_and_exit(tracker, name, "honest.bin");
    assert_same_file(dir.path(), "honest.bin", data);
    seconds_of(&down.wait_downloaded("honest.bin"))
}

fn hwm_mib(tracker: &Tracker) -> f64 {
    proc_kib(tracker.proc.pid(), "VmHWM") as f64 / 1024.0
}

fn rss_mib(tracker: &Tracker) -> f64 {
    proc_kib(tracker.proc.pid(), "VmRSS") as f64 / 1024.0
}

#[test]
fn need_floods_that_never_read_cost_the_tracker_little() {
    let tracker = Tracker::start_quiet(&["--grace", "300"]);
    big_owner_list(&tracker, "big");
    let data = random_bytes(HONEST_SIZE);
    let (_alice, _dir) = honest_owner(&tracker, "alice", &data);
    let quiet = honest_download(&tracker, "bob", &data);
    let before = rss_mib(&tracker);
    // Four attackers each ask 1,100 times for a 310 KB list and never read: 1.3 GB of
    // replies if the tracker answered them all at once.
    let attackers: Vec<Raw> = (0..4)
        .map(|k| {
            let mut raw = Raw::join(&tracker.addr, host(8), &format!("flood{k}"), [k; 32]);
            let needs = vec![NodeToTracker::Need { name: "big" }; 1100];
            raw.send(&needs);
            raw
        })
        .collect();
    thread::sleep(Duration::from_secs(2));
    let attacked = honest_download(&tracker, "carol", &data);
    let peak = hwm_mib(&tracker);
    println!(
        "Need flood (4 x 1,100 Needs of a {BIG_OWNERS}-owner list, unread): tracker RSS \
         {before:.1} MiB before, peak {peak:.1} MiB; honest 8 MiB download {quiet:.2} s \
         without, {attacked:.2} s with the attack"
    );
    assert!(peak < 128.0, "tracker peak RSS {peak:.1} MiB");
    // The attackers are still served, at their own pace, once they read.
    let mut first = attackers.into_iter().next().expect("an attacker");
    match first.recv() {
        Some(Got::Owners(name, owners)) => {
            assert_eq!((name.as_str(), owners.len()), ("big", BIG_OWNERS))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn watchers_that_never_read_get_coalesced_pushes() {
    let tracker = Tracker::start_quiet(&["--grace", "300"]);
    big_owner_list(&tracker, "big");
    let data = random_bytes(HONEST_SIZE);
    let (_alice, _dir) = honest_owner(&tracker, "alice", &data);
    let quiet = honest_download(&tracker, "bob", &data);
    let mut watchers: Vec<Raw> = (0..3)
        .map(|k| {
            let mut w = Raw::connect_with(&tracker.addr, host(8), Some(16 << 10));
            w.send(&[
                NodeToTracker::Hello {
                    node_name: &format!("watch{k}"),
                    listen_port: 9,
                    secret: [k; 32],
                },
                NodeToTracker::Need { name: "big" },
            ]);
            w
        })
        .collect();
    let before = rss_mib(&tracker);
    // One owner of the big file flips its completeness every 50 ms for 8 s: with changes
    // batched per 100 ms, 80 pushes of a 310 KB list to each watcher, 75 MB if every one
    // were queued.
    let flipper = thread::spawn({
        let addr = tracker.addr.clone();
        move || {
            let mut owner = Raw::join(&addr, host(9), "flipper", [9; 32]);
            for i in 0..FLIPS {
                owner.send(&[NodeToTracker::Have {
                    name: "big",
                    info: info(1, 50 << 20),
                    complete: i % 2 == 1,
                }]);
                thread::sleep(Duration::from_millis(50));
            }
            owner
        }
    });
    let attacked = honest_download(&tracker, "carol", &data);
    let mut owner = flipper.join().expect("the flipper");
    // The last flip (complete) is what a watcher finally sees.
    let owners = owner.owners("big");
    assert!(owners.iter().any(|o| o.0 == "flipper" && o.3));
    thread::sleep(Duration::from_millis(500));
    let peak = hwm_mib(&tracker);
    println!(
        "non-reading watchers (3, a {BIG_OWNERS}-owner list flipping every 50 ms for 8 s): \
         tracker RSS {before:.1} MiB before, peak {peak:.1} MiB; honest 8 MiB download \
         {quiet:.2} s without, {attacked:.2} s with the attack"
    );
    assert!(
        peak - before < 16.0,
        "tracker grew from {before:.1} to {peak:.1} MiB"
    );
    // A watcher that finally reads ends with the latest list.
    let w = &mut watchers[0];
    let mut lists = 0;
    let mut last_flip = None;
    let deadline = Instant::now() + TIMEOUT;
    w.send(&[NodeToTracker::Need { name: "honest.bin" }]);
    loop {
        assert!(Instant::now() < deadline, "the watcher was never answered");
        match w.recv() {
            Some(Got::Owners(name, owners)) if name == "big" => {
                lists += 1;
                last_flip = owners.iter().find(|o| o.0 == "flipper").map(|o| o.3);
            }
            Some(Got::Owners(name, _)) if name == "honest.bin" => break,
            other => panic!("{other:?}"),
        }
    }
    println!("a watcher that read afterwards got {lists} lists of about 80 pushes");
    assert_eq!(last_flip, Some(true), "the last list shows the last flip");
}

#[test]
fn a_stranger_cannot_take_a_nodes_name() {
    let tracker = Tracker::start_with(&["--grace", "60"]);
    let data = random_bytes(HONEST_SIZE);
    let (mut alice, alice_dir) = honest_owner(&tracker, "alice", &data);
    let quiet = honest_download(&tracker, "bob", &data);
    // From alice's own address, with another secret.
    let mut stranger = Raw::join(&tracker.addr, Ipv4Addr::LOCALHOST, "alice", [1; 32]);
    match stranger.recv() {
        Some(Got::Error(reason)) => assert_eq!(reason, "node name alice is held by another node"),
        other => panic!("{other:?}"),
    }
    assert!(stranger.recv().is_none(), "the stranger's link is closed");
    let attacked = honest_download(&tracker, "carol", &data);
    // Alice crashes; within her grace period the stranger is refused again, and her
    // entry still points at her.
    let alice_addr: SocketAddr = alice.addr.parse().expect("alice's address");
    alice.proc.kill9();
    let mut stranger = Raw::join(&tracker.addr, host(0), "alice", [1; 32]);
    match stranger.recv() {
        Some(Got::Error(reason)) => assert_eq!(reason, "node name alice is held by another node"),
        other => panic!("{other:?}"),
    }
    let mut asker = Raw::join(&tracker.addr, host(1), "asker", [2; 32]);
    let owners = asker.owners("honest.bin");
    let listed = owners
        .iter()
        .find(|o| o.0 == "alice")
        .expect("alice is listed");
    assert_eq!(
        listed.1.port(),
        alice_addr.port(),
        "alice's entry was not re-pointed"
    );
    // Alice restarts from her folder (her secret is there) and takes her name back.
    let mark = tracker.proc.stderr_mark();
    let back = Node::start(
        "alice",
        &tracker,
        alice_dir.path(),
        &["--upload", "honest.bin"],
    );
    back.wait_sharing("honest.bin");
    tracker
        .proc
        .wait_stderr_from(mark, |l| l.contains("node alice connected"));
    let after = honest_download(&tracker, "dave", &data);
    println!(
        "stolen name: honest 8 MiB download {quiet:.2} s without, {attacked:.2} s with the \
         attempt, {after:.2} s after alice's restart"
    );
}

#[test]
fn fake_roots_from_one_host_do_not_deny_a_file() {
    let tracker = Tracker::start_quiet(&[]);
    let data = random_bytes(HONEST_SIZE);
    let (_alice, _a) = honest_owner(&tracker, "alice", &data);
    let (_erin, _e) = honest_owner(&tracker, "erin", &data);
    let quiet = honest_download(&tracker, "bob", &data);
    // One raw client publishes 4,096 versions of the honest file's name.
    let mut mallory = Raw::join(&tracker.addr, host(0), "mallory", [3; 32]);
    let fakes: Vec<NodeToTracker<'_>> = (0..4096u32)
        .map(|i| {
            let mut fake = info(0, HONEST_SIZE as u64);
            fake.root[..4].copy_from_slice(&i.to_le_bytes());
            fake.root[4] = 0xfa;
            NodeToTracker::Have {
                name: "honest.bin",
                info: fake,
                complete: true,
            }
        })
        .collect();
    mallory.send(&fakes);
    let owners = mallory.owners("honest.bin");
    let fake_listed = owners.iter().filter(|o| o.0 == "mallory").count();
    println!("fake roots: {fake_listed} of 4096 listed");
    assert!(fake_listed <= 4, "{fake_listed} fake versions listed");
    // Honest owners from other hosts are still listed, one arriving after the attack too.
    let (_frank, _f) = honest_owner(&tracker, "frank", &data);
    // Frank's announcement may trail his "sharing" line: ask until he is in (bounded).
    let mut owners = Vec::new();
    for _ in 0..100 {
        owners = mallory.owners("honest.bin");
        if owners.iter().any(|o| o.0 == "frank") {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    for name in ["alice", "erin", "frank"] {
        assert!(
            owners.iter().any(|o| o.0 == name),
            "{name} missing: {owners:?}"
        );
    }
    let attacked = honest_download(&tracker, "carol", &data);
    let peak = hwm_mib(&tracker);
    println!(
        "fake roots (4,096 from one host): tracker peak RSS {peak:.1} MiB; honest 8 MiB \
         download {quiet:.2} s without, {attacked:.2} s with the attack"
    );
}

#[test]
fn a_connection_that_never_says_hello_is_closed() {
    let tracker = Tracker::start_quiet(&[]);
    let mut idle = Raw::connect(&tracker.addr, host(0));
    // Keep-alives every second do not keep it: the hello deadline (10 s) closes it.
    let started = Instant::now();
    let mut keepalive = Vec::new();
    wire::encode(&Message::KeepAlive, &mut keepalive).expect("encode");
    idle.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut closed_with = None;
    for _ in 0..30 {
        let mut chunk = [0u8; 4096];
        match idle.stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => idle.buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if let Ok(Decoded::Frame(Message::Error { reason, .. }, _)) =
            wire::decode_frame(&idle.buf, &Limits { max_payload: 4096 })
        {
            closed_with = Some(reason.to_owned());
            break;
        }
        // Once the tracker has closed, this write may fail: the read above tells why.
        let _ = idle.stream.write_all(&keepalive);
    }
    assert_eq!(closed_with.as_deref(), Some("no hello in time"));
    println!(
        "closed after {:.1} s of keep-alives",
        started.elapsed().as_secs_f64()
    );
    // And the tracker still serves nodes.
    let data = random_bytes(1 << 20);
    let (_alice, _a) = honest_owner(&tracker, "alice", &data);
    honest_download(&tracker, "bob", &data);
}

/// A node that crashes and comes back (within the grace period) with its file changed
/// states its whole set again: the tracker drops the old version instead of listing both,
/// and a downloader gets the new bytes.
#[test]
fn a_restarted_owner_with_a_changed_file_is_listed_with_the_new_version_only() {
    let tracker = Tracker::start_with(&["--grace", "60"]);
    let old = random_bytes(1 << 20);
    let (mut owner, dir) = start_owner(&tracker, "changer", "v.bin", &old, &[]);
    let old_root = root_of(&owner.wait_sharing("v.bin"));
    owner.proc.kill9();

    let new = random_bytes(1 << 20);
    put_file(dir.path(), "v.bin", &new);
    let mark = tracker.proc.stderr_mark();
    let back = Node::start("changer", &tracker, dir.path(), &["--upload", "v.bin"]);
    let new_root = root_of(&back.wait_sharing("v.bin"));
    assert_ne!(old_root, new_root);
    // The old entry goes once the node says it has stated everything it holds.
    tracker.proc.wait_stderr_from(mark, |l| {
        owner_list(l, "v.bin").is_some_and(|o| o == ["changer"])
            && l.contains(&new_root[..8])
            && !l.contains(&old_root[..8])
    });
    let mut asker = Raw::join(&tracker.addr, host(3), "asker", [3; 32]);
    let owners = asker.owners("v.bin");
    assert_eq!(owners.len(), 1, "{owners:?}");
    let (down, down_dir) = download_and_exit(&tracker, "fresh", "v.bin");
    assert_same_file(down_dir.path(), "v.bin", &new);
    drop(down);
}
