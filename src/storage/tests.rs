//! Unit tests for the pure parts of storage: names, hashes, MemStore, PieceHasher
//! (the layout math is tested in `crate::layout`).
//! Tests that touch the disk are in `tests/storage.rs`.

use super::*;

fn layout(size: u64, piece_size: u32) -> Layout {
    Layout { size, piece_size }
}

fn rejected_because(name: &str) -> &'static str {
    match check_name(name) {
        Err(StorageError::BadName { why, .. }) => why,
        other => panic!("{name:?} should be rejected, got {other:?}"),
    }
}

#[test]
fn names_rejected_with_reason() {
    assert_eq!(rejected_because(""), "empty");
    assert_eq!(rejected_because("../x"), "starts with '.'");
    assert_eq!(rejected_because("x/../y"), "contains '/'");
    assert_eq!(rejected_because("a/b"), "contains '/'");
    assert_eq!(rejected_because("/etc"), "contains '/'");
    assert_eq!(rejected_because("a\\b"), "contains '\\'");
    assert_eq!(rejected_because("."), "starts with '.'");
    assert_eq!(rejected_because(".."), "starts with '.'");
    assert_eq!(rejected_because(".hidden"), "starts with '.'");
    assert_eq!(rejected_because("a\0b"), "contains NUL");
    assert_eq!(rejected_because("a\nb"), "contains a control character");
    assert_eq!(rejected_because("a\u{7f}"), "contains a control character");
    assert_eq!(rejected_because("a\u{85}"), "contains a control character");
    assert_eq!(rejected_because(&"x".repeat(256)), "longer than 255 bytes");
    // 128 two-byte characters: 128 chars but 256 bytes.
    assert_eq!(rejected_because(&"é".repeat(128)), "longer than 255 bytes");
}

#[test]
fn names_accepted() {
    for name in [
        "file.txt",
        "a",
        "movie 2024 (final).mkv",
        "x..y",
        "trailing.",
        "日本語のファイル.txt",
        "émoji-🐟.bin",
        &"x".repeat(255),
    ] {
        assert!(check_name(name).is_ok(), "{name:?} should be accepted");
    }
}

#[test]
fn bad_name_display_escapes_control_characters() {
    let text = check_name("a\nb").unwrap_err().to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("control character"), "{text}");
}

#[test]
fn root_hash_depends_on_layout_and_pieces() {
    let h = [hash_piece(b"abc"), hash_piece(b"d")];
    let l = layout(4, 3);
    assert_eq!(root_hash(l, &h), root_hash(l, &h));
    assert_ne!(root_hash(l, &h), root_hash(layout(4, 4), &h));
    assert_ne!(root_hash(l, &h), root_hash(layout(5, 3), &h));
    assert_ne!(root_hash(l, &h), root_hash(l, &[h[1], h[0]]));
    assert_eq!(hash_piece(b"abc"), *blake3::hash(b"abc").as_bytes());
}

#[test]
fn memstore_reads_writes_and_bounds() {
    let mut m = MemStore::new(8);
    m.write_at(2, b"hey").unwrap();
    let mut buf = [0; 4];
    m.read_at(1, &mut buf).unwrap();
    assert_eq!(&buf, b"\0hey");
    assert!(m.write_at(6, b"abc").is_err());
    assert!(m.read_at(u64::MAX, &mut buf).is_err());
    assert_eq!(m.bytes(), b"\0\0hey\0\0\0");
}

#[test]
fn memstore_fail_writes_after_yields_disk_full() {
    let mut m = MemStore::new(10);
    m.fail_writes_after(5);
    m.write_at(0, b"abc").unwrap();
    let err = m.write_at(3, b"defg").unwrap_err();
    assert!(matches!(err, StorageError::DiskFull(_)), "{err:?}");
    assert!(err.to_string().contains("no space left"), "{err}");
    // The part that fitted was written, as on a real disk.
    assert_eq!(&m.bytes()[..6], b"abcde\0");
    assert!(matches!(
        m.write_at(8, b"z"),
        Err(StorageError::DiskFull(_))
    ));
    // An empty write still succeeds.
    m.write_at(0, b"").unwrap();
}

fn sample(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn hasher_matches_direct_hashes_for_any_budget() {
    let data = sample(1000);
    let l = layout(1000, 64);
    let direct: Vec<Hash> = data.chunks(64).map(hash_piece).collect();
    let store = MemStore::with_bytes(data);
    for budget in [0, 1, 64, 100, 10_000] {
        let mut h = PieceHasher::new(l);
        let mut steps = 0;
        while !h.step(&store, budget).unwrap() {
            steps += 1;
            assert!(steps < 100, "no progress");
        }
        assert!(h.is_done());
        assert_eq!(h.hashes(), &direct[..]);
        assert_eq!(root_hash(l, h.hashes()), root_hash(l, &direct));
        assert_eq!(h.into_hashes(), direct);
    }
}

#[test]
fn hasher_step_is_bounded_but_always_progresses() {
    let store = MemStore::with_bytes(sample(1000));
    let mut h = PieceHasher::new(layout(1000, 64));
    assert!(!h.step(&store, 0).unwrap());
    assert_eq!(h.hashes().len(), 1);
    assert!(!h.step(&store, 128).unwrap());
    assert_eq!(h.hashes().len(), 3);
}

#[test]
fn hasher_empty_file_is_done_at_once() {
    let mut h = PieceHasher::new(layout(0, 64));
    assert!(h.step(&MemStore::new(0), 0).unwrap());
    assert!(h.hashes().is_empty());
}

#[test]
fn hasher_refuses_a_store_of_the_wrong_size() {
    let mut h = PieceHasher::new(layout(100, 64));
    let err = h.step(&MemStore::new(99), 1000).unwrap_err();
    assert!(matches!(err, StorageError::StateMismatch(_)), "{err:?}");
}
