//! Storage on a real disk: shared files, downloads with resume, atomic finish.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use shoal::storage::{
    hash_piece, root_hash, Folder, Hash, Layout, PieceHasher, PieceStore, StorageError,
};

const PIECE: u32 = 64;

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 97) as u8).collect()
}

/// Hidden files (ours) left in the folder.
fn hidden_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Layout, piece hashes and root of `data`, computed the direct way.
fn describe(data: &[u8]) -> (Layout, Vec<Hash>, Hash) {
    let layout = Layout {
        size: data.len() as u64,
        piece_size: PIECE,
    };
    let hashes: Vec<Hash> = data.chunks(PIECE as usize).map(hash_piece).collect();
    let root = root_hash(layout, &hashes);
    (layout, hashes, root)
}

fn piece_of(data: &[u8], layout: Layout, piece: u32) -> &[u8] {
    let start = layout.piece_offset(piece) as usize;
    &data[start..start + layout.piece_len(piece) as usize]
}

#[test]
fn open_shared_reads_a_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(&tmp.path().join("node_files/a")).unwrap();
    fs::write(folder.dir().join("f.bin"), b"hello world").unwrap();
    let f = folder.open_shared("f.bin").unwrap();
    assert_eq!(f.len(), 11);
    let mut buf = [0; 5];
    f.read_at(6, &mut buf).unwrap();
    assert_eq!(&buf, b"world");
    assert!(f.read_at(7, &mut buf).is_err(), "read past the end");
    let mut f = f;
    assert!(matches!(
        f.write_at(0, b"x"),
        Err(StorageError::Io { op: "write", .. })
    ));
}

#[test]
fn open_shared_refuses_bad_names_missing_files_symlinks_and_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(&tmp.path().join("share")).unwrap();
    let outside = tmp.path().join("secret");
    fs::write(&outside, b"secret").unwrap();
    symlink(&outside, folder.dir().join("link")).unwrap();
    fs::create_dir(folder.dir().join("sub")).unwrap();

    assert!(matches!(
        folder.open_shared("../secret"),
        Err(StorageError::BadName { .. })
    ));
    assert!(matches!(
        folder.open_shared("nope"),
        Err(StorageError::NotFound(_))
    ));
    assert!(matches!(
        folder.open_shared("link"),
        Err(StorageError::NotAFile(_))
    ));
    assert!(matches!(
        folder.open_shared("sub"),
        Err(StorageError::NotAFile(_))
    ));
    let text = folder.open_shared("link").unwrap_err().to_string();
    assert!(
        text.contains("link") && text.contains("not a regular file"),
        "{text}"
    );
}

#[test]
fn hasher_over_a_file_equals_direct_hashes_and_root_is_stable() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = sample(1000);
    fs::write(folder.dir().join("f"), &data).unwrap();
    let (layout, direct, root) = describe(&data);

    let f = folder.open_shared("f").unwrap();
    let mut h = PieceHasher::new(layout);
    while !h.step(&f, 200).unwrap() {}
    assert_eq!(h.hashes(), &direct[..]);
    assert_eq!(root_hash(layout, h.hashes()), root);
    // A second pass over the same bytes names the same version.
    let mut again = PieceHasher::new(layout);
    while !again.step(&f, u64::MAX).unwrap() {}
    assert_eq!(root_hash(layout, &again.into_hashes()), root);
}

#[test]
fn download_resume_and_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = sample(1000); // 16 pieces, the last one 40 bytes
    let (layout, hashes, root) = describe(&data);
    let n = layout.piece_count();
    assert_eq!(n, 16);

    // First session: some pieces out of order, then "crash" (drop).
    {
        let mut p = folder.begin_download("out.bin", layout, &root).unwrap();
        assert_eq!(p.claimed_done(), vec![false; n as usize]);
        assert_eq!(p.len(), 1000);
        for piece in [15, 3, 0, 7] {
            p.write_at(layout.piece_offset(piece), piece_of(&data, layout, piece))
                .unwrap();
            p.mark_done(piece).unwrap();
        }
        // Written but never marked: must not be claimed.
        p.write_at(layout.piece_offset(9), piece_of(&data, layout, 9))
            .unwrap();
        assert!(p.write_at(999, b"xy").is_err(), "write past the end");
    }
    assert!(!folder.final_exists("out.bin"));
    let hidden = hidden_files(folder.dir());
    let root8: String = root[..4].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hidden,
        vec![
            format!(".out.bin.{root8}.shoal-part"),
            format!(".out.bin.{root8}.shoal-state")
        ]
    );

    // Second session: resume, re-verify the claims as a caller would.
    let mut p = folder.begin_download("out.bin", layout, &root).unwrap();
    let claimed = p.claimed_done();
    let claimed_idx: Vec<u32> = (0..n).filter(|&i| claimed[i as usize]).collect();
    assert_eq!(claimed_idx, vec![0, 3, 7, 15]);
    let mut buf = vec![0; PIECE as usize];
    for &piece in &claimed_idx {
        let len = layout.piece_len(piece) as usize;
        p.read_at(layout.piece_offset(piece), &mut buf[..len])
            .unwrap();
        assert_eq!(hash_piece(&buf[..len]), hashes[piece as usize]);
    }
    assert_eq!(p.done_count(), 4);
    for piece in (0..n).rev().filter(|i| !claimed[*i as usize]) {
        p.write_at(layout.piece_offset(piece), piece_of(&data, layout, piece))
            .unwrap();
        p.mark_done(piece).unwrap();
    }
    assert!(p.is_complete());
    let path = p.finish().unwrap();
    assert_eq!(path, folder.dir().join("out.bin"));
    assert_eq!(fs::read(&path).unwrap(), data);
    assert!(hidden_files(folder.dir()).is_empty());
    assert!(folder.final_exists("out.bin"));
}

#[test]
fn finish_refuses_an_incomplete_download() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let (layout, _, root) = describe(&sample(200));
    let mut p = folder.begin_download("f", layout, &root).unwrap();
    p.mark_done(0).unwrap();
    let err = p.finish().unwrap_err();
    assert!(matches!(err, StorageError::StateMismatch(_)), "{err:?}");
    assert!(err.to_string().contains("3 of 4"), "{err}");
    assert!(!folder.final_exists("f"));
    assert_eq!(hidden_files(folder.dir()).len(), 2);
}

#[test]
fn mark_bad_unclaims_a_piece() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = sample(200);
    let (layout, _, root) = describe(&data);
    {
        let mut p = folder.begin_download("f", layout, &root).unwrap();
        p.mark_done(1).unwrap();
        p.mark_done(2).unwrap();
        assert!(p.mark_done(4).is_err(), "out of range");
    }
    {
        let mut p = folder.begin_download("f", layout, &root).unwrap();
        assert_eq!(p.claimed_done(), vec![false, true, true, false]);
        p.mark_bad(2).unwrap();
        assert!(!p.is_done(2));
    }
    let p = folder.begin_download("f", layout, &root).unwrap();
    assert_eq!(p.claimed_done(), vec![false, true, false, false]);
}

#[test]
fn empty_file_download_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let (layout, _, root) = describe(b"");
    let p = folder.begin_download("empty", layout, &root).unwrap();
    assert!(p.claimed_done().is_empty());
    let path = p.finish().unwrap();
    assert_eq!(fs::read(path).unwrap(), b"");
    assert!(hidden_files(folder.dir()).is_empty());
}

#[test]
fn a_state_file_for_another_download_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = sample(300);
    let (layout, _, root) = describe(&data);
    {
        let mut p = folder.begin_download("f", layout, &root).unwrap();
        p.mark_done(0).unwrap();
        p.mark_done(4).unwrap();
    }
    // Put a state file of another root (same first 8 hex digits, say) in its place.
    let state = hidden_files(folder.dir())
        .into_iter()
        .find(|n| n.ends_with(".shoal-state"))
        .unwrap();
    let state = folder.dir().join(state);
    let mut bytes = fs::read(&state).unwrap();
    bytes[8 + 31] ^= 0xff; // last byte of the stored root
    fs::write(&state, &bytes).unwrap();
    let p = folder.begin_download("f", layout, &root).unwrap();
    assert_eq!(p.claimed_done(), vec![false; 5]);
    drop(p);
    // It was rewritten for this download: claims now survive again.
    let mut p = folder.begin_download("f", layout, &root).unwrap();
    p.mark_done(2).unwrap();
    drop(p);
    let p = folder.begin_download("f", layout, &root).unwrap();
    assert_eq!(p.claimed_done(), vec![false, false, true, false, false]);

    // A truncated (torn) state file is replaced too.
    drop(p);
    fs::write(&state, &bytes[..20]).unwrap();
    let p = folder.begin_download("f", layout, &root).unwrap();
    assert_eq!(p.claimed_done(), vec![false; 5]);
}

#[test]
fn another_root_uses_other_temp_files() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let (layout, _, root) = describe(&sample(100));
    let (layout2, _, root2) = describe(&sample(130));
    let mut a = folder.begin_download("f", layout, &root).unwrap();
    a.mark_done(0).unwrap();
    let b = folder.begin_download("f", layout2, &root2).unwrap();
    assert_eq!(b.claimed_done(), vec![false; 3]);
    assert_eq!(hidden_files(folder.dir()).len(), 4);
    b.discard().unwrap();
    a.discard().unwrap();
    assert!(hidden_files(folder.dir()).is_empty());
}

#[test]
fn claims_are_dropped_when_the_data_file_vanished() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let (layout, _, root) = describe(&sample(100));
    let p = {
        let mut p = folder.begin_download("f", layout, &root).unwrap();
        p.mark_done(1).unwrap();
        p
    };
    fs::remove_file(p.part_path()).unwrap();
    drop(p);
    let p = folder.begin_download("f", layout, &root).unwrap();
    assert_eq!(p.claimed_done(), vec![false, false]);
    assert_eq!(fs::metadata(p.part_path()).unwrap().len(), 100);
}

#[test]
fn temp_files_that_are_symlinks_are_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(&tmp.path().join("d")).unwrap();
    let (layout, _, root) = describe(&sample(100));
    let victim = tmp.path().join("victim");
    fs::write(&victim, b"keep me").unwrap();
    let root8: String = root[..4].iter().map(|b| format!("{b:02x}")).collect();
    symlink(&victim, folder.dir().join(format!(".f.{root8}.shoal-part"))).unwrap();
    let mut p = folder.begin_download("f", layout, &root).unwrap();
    p.write_at(0, &[1; 100]).unwrap();
    assert_eq!(fs::read(&victim).unwrap(), b"keep me");
}

#[test]
fn finish_onto_a_directory_fails_and_keeps_the_temp_file() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = sample(100);
    let (layout, _, root) = describe(&data);
    fs::create_dir(folder.dir().join("f")).unwrap();
    fs::write(folder.dir().join("f").join("inner"), b"x").unwrap();
    let mut p = folder.begin_download("f", layout, &root).unwrap();
    p.write_at(0, &data).unwrap();
    p.mark_done(0).unwrap();
    p.mark_done(1).unwrap();
    let err = p.finish().unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Io {
                op: "rename into place",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(folder.dir().join("f").is_dir());
    assert_eq!(hidden_files(folder.dir()).len(), 2, "temp and state kept");
    // The download resumes with both pieces claimed.
    let p = folder.begin_download("f", layout, &root).unwrap();
    assert_eq!(p.claimed_done(), vec![true, true]);
}

#[test]
fn finish_replaces_an_existing_file() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = sample(70);
    let (layout, _, root) = describe(&data);
    fs::write(folder.dir().join("f"), b"old version").unwrap();
    assert!(folder.final_exists("f"));
    let mut p = folder.begin_download("f", layout, &root).unwrap();
    p.write_at(0, &data).unwrap();
    p.mark_done(0).unwrap();
    p.mark_done(1).unwrap();
    p.finish().unwrap();
    assert_eq!(fs::read(folder.dir().join("f")).unwrap(), data);
}

#[test]
fn begin_download_rejects_bad_names_and_layouts() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let root = [0; 32];
    let ok = Layout {
        size: 10,
        piece_size: 4,
    };
    assert!(matches!(
        folder.begin_download("../x", ok, &root),
        Err(StorageError::BadName { .. })
    ));
    let zero = Layout {
        size: 10,
        piece_size: 0,
    };
    assert!(folder.begin_download("x", zero, &root).is_err());
    assert!(!folder.final_exists("../x"));
    assert!(hidden_files(folder.dir()).is_empty());
}

#[test]
fn long_names_get_hashed_temp_names() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let name = "n".repeat(255);
    let data = sample(10);
    let (layout, _, root) = describe(&data);
    let mut p = folder.begin_download(&name, layout, &root).unwrap();
    p.write_at(0, &data).unwrap();
    p.mark_done(0).unwrap();
    drop(p);
    let p = folder.begin_download(&name, layout, &root).unwrap();
    assert_eq!(p.claimed_done(), vec![true]);
    p.finish().unwrap();
    assert_eq!(fs::read(folder.dir().join(&name)).unwrap(), data);
}

#[test]
fn folder_open_refuses_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("file");
    fs::write(&f, b"").unwrap();
    assert!(Folder::open(&f).is_err());
}

#[test]
fn hash_cache_round_trips_and_goes_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = Folder::open(tmp.path()).unwrap();
    let data = sample(500);
    fs::write(folder.dir().join("f"), &data).unwrap();
    let (_, hashes, _) = describe(&data);
    let f = folder.open_shared("f").unwrap();
    assert!(folder.load_hashes(&f, PIECE).is_none());
    folder.save_hashes(&f, PIECE, &hashes).unwrap();
    assert_eq!(folder.load_hashes(&f, PIECE), Some(hashes.clone()));
    assert!(
        folder.load_hashes(&f, PIECE * 2).is_none(),
        "other piece size"
    );
    assert!(folder.save_hashes(&f, PIECE, &hashes[1..]).is_err());
    assert_eq!(
        hidden_files(folder.dir()),
        vec![".f.shoal-hashes".to_string()]
    );
    // The file changes size: the cache no longer applies.
    fs::write(folder.dir().join("f"), sample(501)).unwrap();
    let f = folder.open_shared("f").unwrap();
    assert!(folder.load_hashes(&f, PIECE).is_none());
}
