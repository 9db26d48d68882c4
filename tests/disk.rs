//! Disk work off the reactor: the hash cache a restarted owner uses, the disk
//! worker's finish, and reads into uninitialised frame space.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::mem::MaybeUninit;
use std::time::Duration;

use common::{
    assert_same_file, download_and_exit, put_file, random_bytes, start_owner, tempdir, Node,
    Tracker,
};
use shoal::storage::{
    hash_piece, root_hash, DiskDone, DiskWorker, Folder, Layout, PieceStore, StorageError,
};
use shoal::wire::{self, Decoded, Limits, Message};

/// Rewrites `path` in place with `data` (same size) and puts its mtime back, as `touch -r` would.
fn rewrite_keeping_mtime(path: &std::path::Path, data: &[u8]) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(data).unwrap();
    f.set_modified(mtime).unwrap();
    drop(f);
    assert_eq!(fs::metadata(path).unwrap().modified().unwrap(), mtime);
}

#[test]
fn piece_hashes_come_from_the_cache_until_the_file_changes() {
    let tmp = tempdir();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = random_bytes(10_000);
    put_file(tmp.path(), "f", &data);
    let direct: Vec<_> = data.chunks(1024).map(hash_piece).collect();

    let first = folder
        .piece_hashes(&folder.open_shared("f").unwrap(), 1024)
        .unwrap();
    assert!(!first.from_cache, "nothing was cached yet");
    assert_eq!(first.hashes, direct);

    let again = folder
        .piece_hashes(&folder.open_shared("f").unwrap(), 1024)
        .unwrap();
    assert!(again.from_cache, "an unchanged file is not re-hashed");
    assert_eq!(again.hashes, direct);

    // Another piece size is another key.
    let other = folder
        .piece_hashes(&folder.open_shared("f").unwrap(), 2048)
        .unwrap();
    assert!(!other.from_cache);

    // Same size, same mtime, same inode, other bytes: the ctime gives it away.
    let mut changed = data.clone();
    changed[5000] ^= 0xff;
    rewrite_keeping_mtime(&tmp.path().join("f"), &changed);
    let after = folder
        .piece_hashes(&folder.open_shared("f").unwrap(), 1024)
        .unwrap();
    assert!(!after.from_cache, "a rewritten file must be re-hashed");
    let want: Vec<_> = changed.chunks(1024).map(hash_piece).collect();
    assert_eq!(after.hashes, want);
}

/// The root a `sharing F (N bytes, root XXXX)` line shows.
fn root_of(line: &str) -> String {
    line.rsplit("root ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_string()
}

#[test]
fn a_restarted_owner_publishes_from_its_hash_cache_and_rehashes_a_changed_file() {
    let tracker = Tracker::start();
    let dir = tempdir();
    let data = random_bytes(3 << 20);
    put_file(dir.path(), "big.bin", &data);
    let cached = "big.bin: piece hashes from its cache";

    let mut first = Node::start("alice", &tracker, dir.path(), &["--upload", "big.bin"]);
    let root1 = root_of(&first.wait_sharing("big.bin"));
    first.proc.sigterm();
    assert!(first.proc.wait_exit().success());
    assert!(
        !first.proc.stderr_lines().iter().any(|l| l.contains(cached)),
        "{}",
        first.proc.dump()
    );

    let mut second = Node::start("alice", &tracker, dir.path(), &["--upload", "big.bin"]);
    let root2 = root_of(&second.wait_sharing("big.bin"));
    second.proc.sigterm();
    assert!(second.proc.wait_exit().success());
    assert!(
        second
            .proc
            .stderr_lines()
            .iter()
            .any(|l| l.contains(cached)),
        "the unchanged file was hashed again:\n{}",
        second.proc.dump()
    );
    assert_eq!(root1, root2);

    let mut changed = data.clone();
    changed[1 << 20] ^= 1;
    rewrite_keeping_mtime(&dir.path().join("big.bin"), &changed);
    let mut third = Node::start("alice", &tracker, dir.path(), &["--upload", "big.bin"]);
    let root3 = root_of(&third.wait_sharing("big.bin"));
    third.proc.sigterm();
    assert!(third.proc.wait_exit().success());
    assert!(
        !third.proc.stderr_lines().iter().any(|l| l.contains(cached)),
        "{}",
        third.proc.dump()
    );
    assert_ne!(root1, root3, "a changed file must publish a new root");
}

/// Waits (bounded) for the worker's next result.
fn next_done(worker: &mut DiskWorker) -> DiskDone {
    for _ in 0..1000 {
        if let Some(done) = worker.try_next() {
            return done;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the disk worker reported nothing within 10 s");
}

#[test]
fn the_disk_worker_finishes_a_download_and_reports_errors() {
    let tmp = tempdir();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = random_bytes(20 << 20);
    let layout = Layout {
        size: data.len() as u64,
        piece_size: 1 << 20,
    };
    let hashes: Vec<_> = data.chunks(1 << 20).map(hash_piece).collect();
    let root = root_hash(layout, &hashes);
    let mut worker = DiskWorker::start(|| {}).unwrap();

    let mut part = folder.begin_download("out.bin", layout, &root).unwrap();
    // 20 MiB written: two writeback kicks go to the worker on the way.
    part.start_writeback_with(&worker);
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        part.write_at(layout.piece_offset(i as u32), chunk).unwrap();
        part.mark_done(i as u32).unwrap();
    }
    worker.finish(part);
    match next_done(&mut worker) {
        DiskDone::Finished { name, result } => {
            assert_eq!(name, "out.bin");
            assert_eq!(result.unwrap(), tmp.path().join("out.bin"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(fs::read(tmp.path().join("out.bin")).unwrap(), data);

    // A directory in the way: the error comes back, the temporary file stays.
    fs::create_dir(tmp.path().join("blocked")).unwrap();
    let mut part = folder.begin_download("blocked", layout, &root).unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        part.write_at(layout.piece_offset(i as u32), chunk).unwrap();
        part.mark_done(i as u32).unwrap();
    }
    worker.finish(part);
    match next_done(&mut worker) {
        DiskDone::Finished { result, .. } => {
            let e = result.unwrap_err();
            assert!(matches!(e, StorageError::Io { .. }), "{e:?}");
            assert!(e.to_string().contains("rename into place"), "{e}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(tmp.path().join("blocked").is_dir());

    // Hashing goes through the same thread and hands the file back.
    put_file(tmp.path(), "shared", &data[..5000]);
    worker.hash(&folder, folder.open_shared("shared").unwrap(), 1024);
    match next_done(&mut worker) {
        DiskDone::Hashed { file, result, .. } => {
            assert_eq!(file.name(), "shared");
            let want: Vec<_> = data[..5000].chunks(1024).map(hash_piece).collect();
            assert_eq!(result.unwrap().hashes, want);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(worker.drain().is_empty());
}

#[test]
fn read_at_uninit_fills_exactly_and_refuses_short_files() {
    let tmp = tempdir();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = random_bytes(4096);
    put_file(tmp.path(), "f", &data);
    let f = folder.open_shared("f").unwrap();
    let mut buf = [MaybeUninit::<u8>::uninit(); 1000];
    let got = f.read_at_uninit(3000, &mut buf[..]).unwrap();
    assert_eq!(got, &data[3000..4000]);
    let mut big = vec![MaybeUninit::<u8>::uninit(); 2000];
    let e = f.read_at_uninit(3000, &mut big).unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");
    // The file shrank after it was opened: a clear error, not garbage.
    File::create(tmp.path().join("f")).unwrap();
    let e = f.read_at_uninit(0, &mut buf[..]).unwrap_err();
    assert!(e.to_string().contains("read failed"), "{e}");
}

#[test]
fn a_block_read_into_uninitialised_space_is_the_same_frame() {
    let root = [7u8; 32];
    let data = random_bytes(100_000);
    let mut want = Vec::new();
    wire::encode_block_with::<()>(&mut want, &root, 3, 512, data.len(), |buf| {
        buf.copy_from_slice(&data);
        Ok(())
    })
    .unwrap();
    let mut got = b"pending".to_vec();
    wire::encode_block_uninit::<()>(&mut got, &root, 3, 512, data.len(), |buf| {
        for (slot, b) in buf.iter_mut().zip(&data) {
            slot.write(*b);
        }
        // SAFETY: every byte was just written.
        Ok(unsafe { &mut *(buf as *mut [MaybeUninit<u8>] as *mut [u8]) })
    })
    .unwrap();
    assert_eq!(&got[..7], b"pending");
    assert_eq!(&got[7..], &want[..]);

    // A fill that returns some other slice still yields a well-formed frame.
    let mut odd = Vec::new();
    let elsewhere: &'static mut [u8] = Box::leak(vec![9u8; 10].into_boxed_slice());
    wire::encode_block_uninit::<()>(&mut odd, &root, 0, 0, 10, |_| Ok(elsewhere)).unwrap();
    match wire::decode_frame(&odd, &Limits::default()).unwrap() {
        Decoded::Frame(Message::FileCommunication(block), len) => {
            assert_eq!(len, odd.len());
            assert_eq!(block.data, &[9u8; 10][..]);
        }
        other => panic!("unexpected {other:?}"),
    }

    // A failing fill leaves the buffer as it was.
    let mut out = b"keep".to_vec();
    let r = wire::encode_block_uninit(&mut out, &root, 0, 0, 10, |_| Err("disk on fire"));
    assert_eq!(r, Err("disk on fire"));
    assert_eq!(out, b"keep");
}

#[test]
fn a_rename_that_fails_on_the_disk_thread_fails_the_download_and_the_node_serves_on() {
    let tracker = Tracker::start();
    let data = random_bytes(8 << 20);
    // 2 MiB/s: the download takes about four seconds, time to block its final name.
    let (_owner, _odir) = common::start_owner(
        &tracker,
        "slow",
        "late.bin",
        &data,
        &["--max-upload-rate", "2M", "--piece-size", "256K"],
    );
    let small = random_bytes(50_000);
    let dir = tempdir();
    put_file(dir.path(), "small.bin", &small);
    let mut down = Node::start(
        "blocked",
        &tracker,
        dir.path(),
        &["--upload", "small.bin", "--download", "late.bin"],
    );
    down.wait_sharing("small.bin");
    // Once the temporary file exists, a directory takes the final name: the rename must fail.
    let part_exists = || {
        common::list_dir(dir.path())
            .iter()
            .any(|n| n.starts_with(".late.bin.") && n.ends_with(".shoal-part"))
    };
    for _ in 0..1500 {
        if part_exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(part_exists(), "{}", down.proc.dump());
    fs::create_dir(dir.path().join("late.bin")).unwrap();

    let failed = down
        .proc
        .wait_stderr(|l| l.contains("download late.bin failed:"));
    assert!(
        failed.contains("rename it into place") && failed.contains("late.bin"),
        "{failed}"
    );
    assert!(dir.path().join("late.bin").is_dir());
    // The verified data is kept for a retry.
    assert!(part_exists());

    let mark = down.proc.stdout_mark();
    down.send("status");
    down.proc
        .wait_stdout_from(mark, |l| l.starts_with("node blocked at port "));
    let (_other, other_dir) = common::download_and_exit(&tracker, "other", "small.bin");
    common::assert_same_file(other_dir.path(), "small.bin", &small);
    assert!(down.proc.is_running(), "{}", down.proc.dump());
}

/// Drops `path`'s pages from the page cache (written back first, so nothing is lost).
fn evict_from_page_cache(path: &std::path::Path) {
    use std::os::unix::io::AsRawFd;
    let file = std::fs::File::open(path).expect("open");
    file.sync_all().expect("fsync");
    // SAFETY: posix_fadvise takes an open fd and integers; no memory is shared.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise");
}

/// A block that is not in the page cache is read in by the disk thread, not the reactor,
/// and the download is exact.
#[test]
fn blocks_not_in_memory_are_read_in_by_the_disk_thread() {
    let tracker = Tracker::start();
    let data = random_bytes(4 << 20);
    let (owner, owner_dir) = start_owner(&tracker, "cold", "cold.bin", &data, &["-v"]);
    evict_from_page_cache(&owner_dir.path().join("cold.bin"));
    let (_down, down_dir) = download_and_exit(&tracker, "reader", "cold.bin");
    assert_same_file(down_dir.path(), "cold.bin", &data);
    owner
        .proc
        .wait_stderr(|l| l.contains("not in memory; the disk thread reads it in"));
}

/// On a resume the disk thread re-hashes what the earlier run left; a kept piece that was
/// damaged meanwhile is fetched again, and the file is exact.
#[test]
fn a_resume_rechecks_kept_pieces_and_refetches_a_damaged_one() {
    let tracker = Tracker::start();
    let data = random_bytes(2 * 1024 * 1024);
    let (_owner, _owner_dir) = start_owner(
        &tracker,
        "slow",
        "r.bin",
        &data,
        &["--piece-size", "16K", "--max-upload-rate", "512K"],
    );
    tracker.wait_owners("r.bin", &["slow"]);
    let dir = tempdir();
    let mark = tracker.proc.stderr_mark();
    let mut first = Node::start("again", &tracker, dir.path(), &["--download", "r.bin"]);
    common::wait_partial(&tracker, mark, "r.bin", "again", dir.path());
    first.proc.kill9();

    // Damage every byte the first run kept: whatever it recorded now fails its hash.
    let part = common::list_dir(dir.path())
        .into_iter()
        .find(|n| n.ends_with(".shoal-part"))
        .expect("a partial file is left");
    let path = dir.path().join(part);
    let len = fs::metadata(&path).expect("stat").len();
    let mut file = OpenOptions::new().write(true).open(&path).expect("open");
    file.write_all(&vec![0x55; len as usize]).expect("damage");
    file.sync_all().expect("fsync");

    let mut second = Node::start_download("again", &tracker, dir.path(), "r.bin");
    let status = second.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", second.proc.dump());
    assert!(
        second
            .proc
            .stderr_lines()
            .iter()
            .any(|l| l.contains("left by an earlier run fails its hash")),
        "the damage was not noticed\n{}",
        second.proc.dump()
    );
    assert_same_file(dir.path(), "r.bin", &data);
}
