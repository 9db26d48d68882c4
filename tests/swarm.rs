//! Whole networks of real processes on loopback: the heritage flow, several
//! owners, several downloads at once, nodes leaving cleanly or vanishing, and
//! garbage thrown at every port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::{
    assert_no_temporaries, assert_same_file, download_and_exit, list_dir, owner_list, put_file,
    random_bytes, start_owner, tempdir, wait_partial, Node, Tracker,
};

/// The heritage flow with the heritage commands: three owners, one downloader,
/// byte-identical result, then `torrent exit` ends the downloader with status 0.
#[test]
fn heritage_flow_three_owners() {
    let tracker = Tracker::start();
    let data = random_bytes(2 * 1024 * 1024 + 12_345);
    let mut dirs = Vec::new();
    let mut owners = Vec::new();
    for name in ["o1", "o2", "o3"] {
        let dir = tempdir();
        put_file(dir.path(), "f.bin", &data);
        let mut owner = Node::start(name, &tracker, dir.path(), &["--piece-size", "64K"]);
        owner.send("torrent -setMode upload f.bin");
        owner.wait_sharing("f.bin");
        owners.push(owner);
        dirs.push(dir);
    }
    tracker.wait_owners("f.bin", &["o1", "o2", "o3"]);

    let down_dir = tempdir();
    let mut down = Node::start("d", &tracker, down_dir.path(), &[]);
    down.send("torrent -setMode download f.bin");
    let done = down.wait_downloaded("f.bin");
    assert!(done.contains(&format!("({} bytes", data.len())), "{done}");
    assert_same_file(down_dir.path(), "f.bin", &data);
    assert_no_temporaries(down_dir.path());

    down.send("torrent exit");
    let status = down.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", down.proc.dump());
    for owner in &mut owners {
        assert!(owner.proc.is_running(), "{}", owner.proc.dump());
    }
}

/// Two downloads of two different files at once, each file owned by two
/// owners, 16 KiB pieces: both arrive intact.
#[test]
fn two_downloads_at_once() {
    let tracker = Tracker::start();
    let a = random_bytes(1024 * 1024 + 1);
    let b = random_bytes(3 * 1024 * 1024 / 2);
    let mut keep = Vec::new();
    for (name, file, data) in [
        ("a1", "a.bin", &a),
        ("a2", "a.bin", &a),
        ("b1", "b.bin", &b),
        ("b2", "b.bin", &b),
    ] {
        keep.push(start_owner(
            &tracker,
            name,
            file,
            data,
            &["--piece-size", "16K"],
        ));
    }
    tracker.wait_owners("a.bin", &["a1", "a2"]);
    tracker.wait_owners("b.bin", &["b1", "b2"]);

    let dir = tempdir();
    let mut down = Node::start(
        "both",
        &tracker,
        dir.path(),
        &[
            "--download",
            "a.bin",
            "--download",
            "b.bin",
            "--exit-when-done",
        ],
    );
    let status = down.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", down.proc.dump());
    down.wait_downloaded("a.bin");
    down.wait_downloaded("b.bin");
    assert_same_file(dir.path(), "a.bin", &a);
    assert_same_file(dir.path(), "b.bin", &b);
    assert_no_temporaries(dir.path());
}

/// Two owners of two files each; `exit` on one of them: the tracker logs
/// that it exits and it disappears from both owner lists; status 0.
#[test]
fn exit_leaves_every_owner_list() {
    let tracker = Tracker::start();
    let one = random_bytes(50_000);
    let two = random_bytes(70_000);
    let mut nodes = owners_of_one_and_two(&tracker, ["leaver", "keeper"], &one, &two);

    let mark = tracker.proc.stderr_mark();
    let leaver = &mut nodes[0].0;
    leaver.send("exit");
    tracker
        .proc
        .wait_stderr_from(mark, |l| l.contains("node leaver exits"));
    tracker.wait_owners_from(mark, "one.bin", &["keeper"]);
    tracker.wait_owners_from(mark, "two.bin", &["keeper"]);
    let status = leaver.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", leaver.proc.dump());

    // The file is still served by the one who stayed.
    let (_down, dir) = download_and_exit(&tracker, "late", "two.bin");
    assert_same_file(dir.path(), "two.bin", &two);
}

/// Starts `names` each sharing `one.bin` and `two.bin` (in its own folder) and waits until the
/// tracker lists them all as owners of both.
fn owners_of_one_and_two(
    tracker: &Tracker,
    names: [&str; 2],
    one: &[u8],
    two: &[u8],
) -> Vec<(Node, tempfile::TempDir)> {
    let mut nodes = Vec::new();
    for name in names {
        let dir = tempdir();
        put_file(dir.path(), "one.bin", one);
        put_file(dir.path(), "two.bin", two);
        let node = Node::start(
            name,
            tracker,
            dir.path(),
            &["--upload", "one.bin", "--upload", "two.bin"],
        );
        node.wait_sharing("one.bin");
        node.wait_sharing("two.bin");
        nodes.push((node, dir));
    }
    tracker.wait_owners("one.bin", &names);
    tracker.wait_owners("two.bin", &names);
    nodes
}

/// An owner killed with SIGKILL (no goodbye) is dropped from every owner
/// list once its grace period is over.
#[test]
fn vanished_node_is_dropped_after_grace() {
    let tracker = Tracker::start_with(&["--grace", "0.5"]);
    let one = random_bytes(40_000);
    let two = random_bytes(30_000);
    let mut nodes = owners_of_one_and_two(&tracker, ["ghostly", "steady"], &one, &two);

    let mark = tracker.proc.stderr_mark();
    nodes[0].0.proc.kill9();
    tracker.proc.wait_stderr_from(mark, |l| {
        l.contains("node ghostly did not come back") && l.contains("dropped")
    });
    tracker.wait_owners_from(mark, "one.bin", &["steady"]);
    tracker.wait_owners_from(mark, "two.bin", &["steady"]);
    // It did not leave cleanly, so no "exits" line.
    assert!(
        !tracker.proc.stderr_lines()[mark..]
            .iter()
            .any(|l| l.contains("node ghostly exits")),
        "{}",
        tracker.proc.dump()
    );

    // Downloads now go to the survivor only, and work.
    let (_down, dir) = download_and_exit(&tracker, "after", "one.bin");
    assert_same_file(dir.path(), "one.bin", &one);
}

/// Sends `bytes` on a fresh connection to `addr` and reads until the other
/// side closes it (EOF or reset). Panics if it stays open.
fn throw_garbage(addr: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
    // The peer may close (even reset) before taking everything: fine.
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!(
                    "{addr}: connection still open after {:?} of garbage",
                    bytes.len()
                )
            }
            Err(_) => return, // reset: closed
        }
    }
}

/// Bytes that are not a shoal stream, and streams that start like one but break a rule.
fn garbages() -> Vec<(&'static str, Vec<u8>)> {
    let mut random = random_bytes(4096);
    random[0] = b'X'; // not the magic
    let mut bad_crc = b"SH\x01\x0b\x00\x00\x00\x00".to_vec(); // keep-alive
    bad_crc.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let oversized = b"SH\x01\x05\xff\xff\xff\xf0".to_vec();
    let mut unknown_type = b"SH\x01\xee\x00\x00\x00\x00".to_vec();
    unknown_type.extend_from_slice(&[0, 0, 0, 0]);
    let mut bad_version = b"SH\x63\x0b\x00\x00\x00\x00".to_vec();
    bad_version.extend_from_slice(&[0, 0, 0, 0]);
    vec![
        ("random bytes", random),
        (
            "an HTTP request",
            b"GET /announce?info_hash=x HTTP/1.1\r\nHost: shoal\r\n\r\n".to_vec(),
        ),
        ("a frame with a bad CRC", bad_crc),
        ("a frame claiming 4 GiB", oversized),
        ("a frame of unknown type", unknown_type),
        ("a frame of an unknown version", bad_version),
    ]
}

/// Garbage on the tracker port and on a node's peer port: each bad connection
/// is logged and closed, and both processes go on serving a normal download.
#[test]
fn garbage_on_every_port() {
    let tracker = Tracker::start();
    let data = random_bytes(1024 * 1024 + 7);
    let (owner, _owner_dir) =
        start_owner(&tracker, "target", "g.bin", &data, &["--piece-size", "64K"]);
    tracker.wait_owners("g.bin", &["target"]);

    for (what, bytes) in garbages() {
        for (label, proc, addr) in [
            ("tracker", &tracker.proc, &tracker.addr),
            ("node", &owner.proc, &owner.addr),
        ] {
            let mark = proc.stderr_mark();
            throw_garbage(addr, &bytes);
            let line = proc.wait_stderr_from(mark, |l| l.contains("bad frame"));
            assert!(
                line.contains("closing"),
                "{label} after {what}: {line}\n{}",
                proc.dump()
            );
        }
    }

    // A connection that says nothing and one cut mid-frame do no harm either.
    drop(TcpStream::connect(&tracker.addr).unwrap());
    let mut half = TcpStream::connect(&owner.addr).unwrap();
    half.write_all(b"SH\x01").unwrap();
    drop(half);

    // Everyone still serving: the tracker still lists the owner, and a
    // download through that tracker from that owner works.
    let dir = tempdir();
    let mut down = Node::start_download("honest", &tracker, dir.path(), "g.bin");
    let status = down.proc.wait_exit();
    assert!(
        status.success(),
        "{status:?}\n{}{}{}",
        down.proc.dump(),
        owner.proc.dump(),
        tracker.proc.dump()
    );
    assert_same_file(dir.path(), "g.bin", &data);
    for l in tracker.proc.stderr_lines() {
        if let Some(owners) = owner_list(&l, "g.bin") {
            assert!(owners.iter().all(|o| o == "target" || o == "honest"), "{l}");
        }
    }
}

/// Eight owners, one downloader, 16 KiB pieces of a 4 MiB file (256 pieces).
#[test]
fn eight_owners_small_pieces() {
    let tracker = Tracker::start();
    let data = random_bytes(4 * 1024 * 1024);
    let names: Vec<String> = (1..=8).map(|i| format!("own{i}")).collect();
    let mut keep = Vec::new();
    for name in &names {
        let dir = tempdir();
        put_file(dir.path(), "big.bin", &data);
        let owner = Node::start(
            name,
            &tracker,
            dir.path(),
            &["--upload", "big.bin", "--piece-size", "16K", "-q"],
        );
        keep.push((owner, dir));
    }
    for (owner, _) in &keep {
        owner.wait_sharing("big.bin");
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    tracker.wait_owners("big.bin", &refs);

    let (down, dir) = download_and_exit(&tracker, "many", "big.bin");
    down.wait_downloaded("big.bin");
    assert_same_file(dir.path(), "big.bin", &data);
    assert_no_temporaries(dir.path());
    for (owner, _) in &mut keep {
        assert!(owner.proc.is_running(), "{}", owner.proc.dump());
    }
}

/// An owner killed (SIGKILL) in the middle of a transfer: its missing pieces
/// go to the other owner and the file still arrives intact.
#[test]
fn owner_killed_mid_transfer() {
    let tracker = Tracker::start();
    let data = random_bytes(2 * 1024 * 1024);
    let mut owners = Vec::new();
    for name in ["dies", "lives"] {
        // Slow owners (512 KiB/s each) so the transfer is still running
        // when one of them is killed.
        owners.push(start_owner(
            &tracker,
            name,
            "m.bin",
            &data,
            &["--piece-size", "64K", "--max-upload-rate", "512K"],
        ));
    }
    tracker.wait_owners("m.bin", &["dies", "lives"]);

    let dir = tempdir();
    let mark = tracker.proc.stderr_mark();
    let mut down = Node::start_download("fetcher", &tracker, dir.path(), "m.bin");
    // The downloader holds some pieces (the tracker lists it as partial
    // owner; the two owners are complete).
    wait_partial(&tracker, mark, "m.bin", "fetcher", dir.path());
    owners[0].0.proc.kill9();
    assert!(
        !down
            .proc
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("downloaded")),
        "precondition: the download was already over when the owner was killed"
    );

    let status = down.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", down.proc.dump());
    assert_same_file(dir.path(), "m.bin", &data);
    assert_no_temporaries(dir.path());
}

/// The tracker is killed and restarted on the same address: the owner
/// reconnects and announces its file again, and a download works.
#[test]
fn tracker_restart() {
    let first = Tracker::start();
    let addr = first.addr.clone();
    let data = random_bytes(300_000);
    let (_owner, _owner_dir) = start_owner(&first, "stays", "r.bin", &data, &[]);
    first.wait_owners("r.bin", &["stays"]);
    let mut first = first;
    first.proc.kill9();

    let second = Tracker::start_on(&addr, &[]);
    assert_eq!(second.addr, addr);
    second.wait_owners("r.bin", &["stays"]);

    let (_down, dir) = download_and_exit(&second, "fresh", "r.bin");
    assert_same_file(dir.path(), "r.bin", &data);
}

/// A node that downloaded a file serves it: once the original owner has
/// left, a second downloader gets the file from the first one.
#[test]
fn downloader_serves_what_it_got() {
    let tracker = Tracker::start();
    let data = random_bytes(1024 * 1024 + 99);
    let (mut seed, _seed_dir) =
        start_owner(&tracker, "seed", "s.bin", &data, &["--piece-size", "16K"]);
    tracker.wait_owners("s.bin", &["seed"]);

    let relay_dir = tempdir();
    let relay = Node::start(
        "relay",
        &tracker,
        relay_dir.path(),
        &["--download", "s.bin"],
    );
    relay.wait_downloaded("s.bin");
    assert_same_file(relay_dir.path(), "s.bin", &data);

    let mark = tracker.proc.stderr_mark();
    seed.send("exit");
    assert!(seed.proc.wait_exit().success(), "{}", seed.proc.dump());
    tracker.wait_owners_from(mark, "s.bin", &["relay"]);
    // Listed as a complete owner.
    let line = tracker
        .proc
        .stderr_lines()
        .into_iter()
        .rev()
        .find(|l| owner_list(l, "s.bin").is_some())
        .unwrap();
    assert!(!line.contains("partial"), "{line}");

    let (_down, dir) = download_and_exit(&tracker, "second", "s.bin");
    assert_same_file(dir.path(), "s.bin", &data);
}

/// A download interrupted by SIGKILL leaves no `DIR/FILE` behind (only hidden
/// temporaries); started again, the node resumes from the verified pieces
/// and finishes with the right bytes.
#[test]
fn interrupted_download_resumes() {
    let tracker = Tracker::start();
    let data = random_bytes(2 * 1024 * 1024);
    let (_owner, _owner_dir) = start_owner(
        &tracker,
        "slow",
        "i.bin",
        &data,
        &["--piece-size", "16K", "--max-upload-rate", "512K"],
    );
    tracker.wait_owners("i.bin", &["slow"]);

    let dir = tempdir();
    let mark = tracker.proc.stderr_mark();
    let mut first = Node::start("patient", &tracker, dir.path(), &["--download", "i.bin"]);
    wait_partial(&tracker, mark, "i.bin", "patient", dir.path());
    first.proc.kill9();
    assert!(
        !first
            .proc
            .stdout_lines()
            .iter()
            .any(|l| l.starts_with("downloaded")),
        "precondition: the download was already over when it was killed"
    );
    assert!(
        !dir.path().join("i.bin").exists(),
        "half a file under the final name: {:?}",
        list_dir(dir.path())
    );
    let temporaries = list_dir(dir.path());
    assert!(
        !temporaries.is_empty() && temporaries.iter().all(|n| n.starts_with('.')),
        "{temporaries:?}"
    );

    let mut again = Node::start_download("patient", &tracker, dir.path(), "i.bin");
    let status = again.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", again.proc.dump());
    assert!(
        again
            .proc
            .stderr_lines()
            .iter()
            .any(|l| l.contains("i.bin: resuming with")),
        "did not resume\n{}",
        again.proc.dump()
    );
    assert_same_file(dir.path(), "i.bin", &data);
    assert_no_temporaries(dir.path());
}

/// Two owners publish different contents under the same name: the download
/// gets one of the two versions whole, never a mix of both.
#[test]
fn same_name_different_contents_never_mixed() {
    let tracker = Tracker::start();
    let a = random_bytes(512 * 1024);
    let b = random_bytes(512 * 1024);
    let mut keep = Vec::new();
    for (name, data) in [("va", &a), ("vb", &b)] {
        keep.push(start_owner(
            &tracker,
            name,
            "dup.bin",
            data,
            &["--piece-size", "16K"],
        ));
    }
    tracker.wait_owners("dup.bin", &["va", "vb"]);

    let (_down, dir) = download_and_exit(&tracker, "picky", "dup.bin");
    let got = std::fs::read(dir.path().join("dup.bin")).unwrap();
    assert!(got == a || got == b, "a mix of the two versions");
    assert_no_temporaries(dir.path());
}
