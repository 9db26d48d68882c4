//! Hostile owners against one download, in simulated time: fake versions, pinning,
//! trickling hash sources, unrequested blocks.

use super::*;
use crate::storage::{hash_piece, MemStore};
use crate::wire::{decode_frame, encode, Block, Decoded, ErrorCode, Limits};

const PIECE: u32 = 16 << 10;

/// How a model owner answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acts {
    /// Serves its file correctly.
    Honest,
    /// Connects are refused.
    Unreachable,
    /// Answers the size question as asked, then nothing.
    Silent,
    /// Answers with hashes that do not hash to the root.
    BadHashes,
    /// Says the file is not served (what an honest node says of a fake root).
    NotFound,
    /// Sends one hash every 5 s instead of the range asked.
    Trickles,
    /// Answers hashes, then sends unasked-for blocks every second instead of the ones asked.
    Unasked,
    /// Publishes hashes that hold, then sends blocks that do not match them.
    Corrupt,
    /// Serves its file correctly, each block 400 ms after it is asked for.
    Slow,
}

struct Owner_ {
    name: String,
    addr: SocketAddr,
    /// The version it announces.
    info: FileInfo,
    /// The file it really holds (for honest answers).
    file: Vec<u8>,
    acts: Acts,
}

#[derive(Default)]
struct Io {
    connects: Vec<(SlotId, SocketAddr)>,
    sent: Vec<(SlotId, Vec<u8>)>,
    closed: Vec<SlotId>,
    /// Take pieces offered with `verify_write` (as the node's disk thread does).
    takes_verify: bool,
    /// Pieces taken: (offset, bytes, expected hash, tag).
    jobs: Vec<(u64, Vec<u8>, Hash, u64)>,
}

impl PeerIo for Io {
    fn connect(&mut self, slot: SlotId, addr: SocketAddr) {
        self.connects.push((slot, addr));
    }
    fn send(&mut self, slot: SlotId, msg: &Message<'_>) {
        let mut out = Vec::new();
        encode(msg, &mut out).expect("the download sends only encodable frames");
        self.sent.push((slot, out));
    }
    fn disconnect(&mut self, slot: SlotId) {
        self.closed.push(slot);
    }
    fn verify_write(&mut self, offset: u64, data: &[u8], want: &Hash, tag: u64) -> bool {
        if self.takes_verify {
            self.jobs.push((offset, data.to_vec(), *want, tag));
        }
        self.takes_verify
    }
}

fn file(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn info_of(data: &[u8]) -> FileInfo {
    let layout = Layout {
        size: data.len() as u64,
        piece_size: PIECE,
    };
    let hashes: Vec<Hash> = data.chunks(PIECE as usize).map(hash_piece).collect();
    FileInfo {
        size: layout.size,
        piece_size: PIECE,
        root: storage::root_hash(layout, &hashes),
    }
}

fn owner(n: u16, info: FileInfo, file: &[u8], acts: Acts) -> Owner_ {
    Owner_ {
        name: format!("o{n}"),
        addr: SocketAddr::from(([127, 0, 0, 1], 7000 + n)),
        info,
        file: file.to_vec(),
        acts,
    }
}

/// The outcome of a run: the notice that ended it, the store's bytes, the addresses connected to.
struct Outcome {
    end: Option<Notice>,
    bytes: Vec<u8>,
    contacted: Vec<SocketAddr>,
    elapsed: Duration,
    /// Verdicts given on pieces checked "off the thread" (`run_verifying`), and how many failed.
    verdicts: usize,
    rejected: usize,
    /// Verified bytes credited to owners, all owners together.
    credited: u64,
    refetched: u64,
}

/// Runs `dl` against `owners` until it completes or fails, or `limit` of simulated time passes.
fn run(dl: Download<MemStore>, owners: &[Owner_], limit: Duration) -> Outcome {
    run_with(dl, owners, limit, None)
}

/// As [`run`], but whole pieces are taken by the driver (`verify_write`), checked and
/// written by the harness, and their verdict given `delay` later, as a disk thread would.
fn run_verifying(
    dl: Download<MemStore>,
    owners: &[Owner_],
    limit: Duration,
    delay: Duration,
) -> Outcome {
    run_with(dl, owners, limit, Some(delay))
}

fn run_with(
    mut dl: Download<MemStore>,
    owners: &[Owner_],
    limit: Duration,
    verdict_delay: Option<Duration>,
) -> Outcome {
    let start = Instant::now();
    let mut now = start;
    let mut io = Io {
        takes_verify: verdict_delay.is_some(),
        ..Io::default()
    };
    // Pieces being "verified": (due, tag, offset, bytes, expected hash).
    let mut verifying: Vec<(Instant, u64, u64, Vec<u8>, Hash)> = Vec::new();
    let (mut verdicts, mut rejected) = (0, 0);
    let listed: Vec<Owner<'_>> = owners
        .iter()
        .map(|o| Owner {
            node_name: &o.name,
            addr: o.addr,
            info: o.info,
            complete: true,
        })
        .collect();
    dl.handle_owners(now, &listed, &mut io);
    let mut slots: HashMap<SlotId, usize> = HashMap::new();
    // Frames for the downloader, due at a time: (due, slot, bytes).
    let mut pending: Vec<(Instant, SlotId, Vec<u8>)> = Vec::new();
    let mut contacted = Vec::new();
    let mut end = None;
    let mut bytes = Vec::new();
    for _ in 0..200_000 {
        while let Some(notice) = dl.poll_notice() {
            match notice {
                Notice::NeedStore { info } => {
                    let claimed = vec![false; info.layout().piece_count() as usize];
                    dl.attach_store(now, MemStore::new(info.size), &claimed, &mut io);
                }
                Notice::Complete => {
                    // Every verdict is in before the download says it is complete.
                    assert!(verifying.is_empty(), "complete with verdicts pending");
                    bytes = dl
                        .take_store()
                        .map(|s| s.bytes().to_vec())
                        .unwrap_or_default();
                    dl.finished();
                    end = Some(Notice::Complete);
                }
                Notice::Failed(why) => end = Some(Notice::Failed(why)),
                Notice::PieceDone(_) => {}
            }
        }
        if end.is_some() || now.duration_since(start) > limit {
            break;
        }
        for slot in std::mem::take(&mut io.closed) {
            slots.remove(&slot);
            pending.retain(|(_, s, _)| *s != slot);
        }
        for (at, data, want, tag) in std::mem::take(&mut io.jobs) {
            let due = now + verdict_delay.unwrap_or_default();
            verifying.push((due, tag, at, data, want));
        }
        if let Some((slot, addr)) = io.connects.pop() {
            contacted.push(addr);
            let Some(i) = owners.iter().position(|o| o.addr == addr) else {
                dl.handle_closed(now, slot, &mut io);
                continue;
            };
            if owners[i].acts == Acts::Unreachable {
                dl.handle_closed(now, slot, &mut io);
            } else {
                slots.insert(slot, i);
                dl.handle_connected(now, slot, &mut io);
            }
            continue;
        }
        if !io.sent.is_empty() {
            for (slot, frame) in std::mem::take(&mut io.sent) {
                if let Some(&i) = slots.get(&slot) {
                    answer(&owners[i], now, slot, &frame, &mut pending);
                }
            }
            continue;
        }
        pending.sort_by_key(|(due, slot, _)| (*due, *slot));
        let next_frame = pending.first().map(|(due, _, _)| *due);
        let next_timer = dl.poll_timeout();
        if let Some(due) = verifying.first().map(|v| v.0) {
            if next_frame.is_none_or(|f| due <= f) && next_timer.is_none_or(|t| due <= t) {
                now = now.max(due);
                let (_, tag, at, data, want) = verifying.remove(0);
                let good = hash_piece(&data) == want;
                if good {
                    // What the disk thread does: the bytes are written only when they match.
                    if let Some(store) = dl.store_mut() {
                        store.write_at(at, &data).expect("in range");
                    }
                } else {
                    rejected += 1;
                }
                verdicts += 1;
                dl.handle_verified(now, tag, Ok(good), &mut io);
                continue;
            }
        }
        match (next_frame, next_timer) {
            (Some(f), t) if t.is_none_or(|t| f <= t) => {
                now = now.max(f);
                let (_, slot, frame) = pending.remove(0);
                if slots.contains_key(&slot) {
                    match decode_frame(&frame, &Limits::default()) {
                        Ok(Decoded::Frame(msg, _)) => dl.handle_message(now, slot, &msg, &mut io),
                        other => panic!("model sent a bad frame: {other:?}"),
                    }
                }
            }
            (_, Some(t)) => {
                now = now.max(t);
                dl.handle_timeout(now, &mut io);
            }
            _ => break,
        }
    }
    Outcome {
        end,
        bytes,
        contacted,
        elapsed: now.duration_since(start),
        verdicts,
        rejected,
        credited: dl.sources().values().sum(),
        refetched: dl.refetched_bytes(),
    }
}

/// What model `o` sends back for one frame from the downloader.
fn answer(
    o: &Owner_,
    now: Instant,
    slot: SlotId,
    frame: &[u8],
    pending: &mut Vec<(Instant, SlotId, Vec<u8>)>,
) {
    let Ok(Decoded::Frame(msg, _)) = decode_frame(frame, &Limits::default()) else {
        panic!("the download sent a bad frame");
    };
    let real = info_of(&o.file);
    let hashes: Vec<Hash> = o.file.chunks(PIECE as usize).map(hash_piece).collect();
    let pieces = o.info.layout().piece_count();
    let mut reply = |delay: Duration, msg: &Message<'_>| {
        let mut out = Vec::new();
        encode(msg, &mut out).expect("model frames encode");
        pending.push((now + delay, slot, out));
    };
    let ms = Duration::from_millis(1);
    match (&msg, o.acts) {
        (Message::SizeInformation(_), Acts::NotFound) => reply(
            ms,
            &Message::Error {
                code: ErrorCode::NotFound,
                reason: "file not served here",
            },
        ),
        (Message::SizeInformation(SizeInformation::Question { name, .. }), _) => {
            let have = Bitfield::full(pieces);
            reply(
                ms,
                &Message::SizeInformation(SizeInformation::Answer {
                    name,
                    info: o.info,
                    have: have.as_bytes(),
                }),
            );
        }
        (Message::HashRequest { .. }, Acts::Silent) => {}
        (Message::HashRequest { root, first, count }, Acts::Trickles) => {
            for i in 0..*count {
                let at = (*first + i) as usize;
                let hash = hashes.get(at).copied().unwrap_or([7; 32]);
                reply(
                    Duration::from_secs(5 * u64::from(i + 1)),
                    &Message::Hashes {
                        root: *root,
                        first: *first + i,
                        hashes: &hash,
                    },
                );
            }
        }
        (Message::HashRequest { root, first, count }, acts) => {
            let mut got: Vec<Hash> = (*first..*first + *count)
                .map(|i| hashes.get(i as usize).copied().unwrap_or([7; 32]))
                .collect();
            if acts == Acts::BadHashes || o.info.root != real.root {
                got.iter_mut().for_each(|h| h[0] ^= 1);
            }
            reply(
                ms,
                &Message::Hashes {
                    root: *root,
                    first: *first,
                    hashes: got.as_flattened(),
                },
            );
        }
        (Message::Request(r), Acts::Unasked) => {
            // Blocks nobody asked for (another offset), one a second, for a minute.
            for i in 0..60u64 {
                let data = [0u8; 16];
                reply(
                    Duration::from_secs(i + 1),
                    &Message::FileCommunication(Block {
                        root: r.root,
                        piece: r.piece,
                        offset: r.offset + 1,
                        data: &data,
                    }),
                );
            }
        }
        (Message::Request(r), acts) => {
            let at = r.piece as usize * PIECE as usize + r.offset as usize;
            let mut data = o.file[at..at + r.len as usize].to_vec();
            if acts == Acts::Corrupt {
                data.iter_mut().for_each(|b| *b ^= 0x5a);
            }
            let delay = if acts == Acts::Slow { ms * 400 } else { ms };
            reply(
                delay,
                &Message::FileCommunication(Block {
                    root: r.root,
                    piece: r.piece,
                    offset: r.offset,
                    data: &data,
                }),
            );
        }
        _ => {}
    }
}

fn download() -> Download<MemStore> {
    Download::new("f", "me", DownloadConfig::default(), Instant::now())
}

fn fake_root(seed: u8) -> FileInfo {
    FileInfo {
        size: 5 * u64::from(PIECE),
        piece_size: PIECE,
        root: [seed; 32],
    }
}

fn failure(out: &Outcome) -> String {
    match &out.end {
        Some(Notice::Failed(why)) => why.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_fake_root_ranked_first_is_dropped_for_the_real_one() {
    let real = file(5 * PIECE as usize - 100, 1);
    let info = info_of(&real);
    for acts in [
        Acts::Unreachable,
        Acts::Silent,
        Acts::BadHashes,
        Acts::NotFound,
    ] {
        // Two fakes outrank one honest owner; root 00…00 also wins every tie.
        let owners = [
            owner(1, fake_root(0), &real, acts),
            owner(2, fake_root(0), &real, acts),
            owner(3, info, &real, Acts::Honest),
        ];
        let out = run(download(), &owners, Duration::from_secs(120));
        assert_eq!(out.end, Some(Notice::Complete), "fakes acting {acts:?}");
        assert_eq!(out.bytes, real, "fakes acting {acts:?}");
        assert!(
            out.elapsed < DownloadConfig::default().no_source_timeout,
            "fakes acting {acts:?} delayed it {:?}",
            out.elapsed
        );
    }
}

#[test]
fn a_version_nobody_serves_fails_with_a_clear_reason_when_it_is_the_only_one_left() {
    let real = file(3 * PIECE as usize, 2);
    let owners = [
        owner(1, fake_root(9), &real, Acts::NotFound),
        owner(2, fake_root(0), &real, Acts::BadHashes),
    ];
    let out = run(download(), &owners, Duration::from_secs(300));
    let why = failure(&out);
    // The first version is dropped at once; the last one left runs out the give-up clock.
    assert!(why.contains("no reachable owner answered"), "{why}");
    assert!(why.contains("no owner serves any listed version"), "{why}");
    assert!(
        why.contains("00000000") && why.contains("every owner of it failed"),
        "{why}"
    );
}

#[test]
fn a_pinned_download_takes_only_its_version() {
    let a = file(3 * PIECE as usize, 3);
    let b = file(4 * PIECE as usize + 7, 4);
    let (ia, ib) = (info_of(&a), info_of(&b));
    let owners = [
        owner(1, ia, &a, Acts::Honest),
        owner(2, ia, &a, Acts::Honest),
        owner(3, ib, &b, Acts::Honest),
    ];
    let pin = RootPin::parse(&crate::hex::hex(&ib.root)[..8]).unwrap();
    let out = run(download().with_pin(pin), &owners, Duration::from_secs(60));
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, b);
    assert_eq!(out.contacted, vec![owners[2].addr]);

    // Unpinned, the majority version wins.
    let out = run(download(), &owners, Duration::from_secs(60));
    assert_eq!(out.bytes, a);
}

#[test]
fn a_pin_nobody_lists_fails_clearly_and_a_shared_prefix_cannot_deny_it() {
    let a = file(PIECE as usize, 5);
    let ia = info_of(&a);
    let owners = [owner(1, ia, &a, Acts::Honest)];
    let other = if ia.root[0] == 0xee {
        "dddddddd"
    } else {
        "eeeeeeee"
    };
    let out = run(
        download().with_pin(RootPin::parse(other).unwrap()),
        &owners,
        Duration::from_secs(60),
    );
    let why = failure(&out);
    assert!(
        why.contains("with root eeeeeeee") || why.contains("with root dddddddd"),
        "{why}"
    );
    assert!(out.contacted.is_empty());

    // Anyone can announce a root sharing the pin's prefix: it is tried like any other
    // version, and the one whose hashes hold is taken.
    let mut twin = ia;
    twin.root[31] ^= 0xff;
    let owners = [
        owner(1, twin, &a, Acts::Honest),
        owner(2, twin, &a, Acts::Honest),
        owner(3, ia, &a, Acts::Honest),
    ];
    let prefix = &crate::hex::hex(&ia.root)[..8];
    let out = run(
        download().with_pin(RootPin::parse(prefix).unwrap()),
        &owners,
        Duration::from_secs(60),
    );
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, a);
}

#[test]
fn a_trickling_hash_source_is_dropped_and_another_owner_asked() {
    let real = file(6 * PIECE as usize, 6);
    let info = info_of(&real);
    let owners = [
        owner(1, info, &real, Acts::Trickles),
        owner(2, info, &real, Acts::Honest),
    ];
    let out = run(download(), &owners, Duration::from_secs(120));
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, real);
    assert!(out.elapsed < Duration::from_secs(15), "{:?}", out.elapsed);
}

#[test]
fn a_trickling_hash_source_alone_does_not_hold_the_download() {
    let real = file(6 * PIECE as usize, 7);
    let info = info_of(&real);
    let owners = [owner(1, info, &real, Acts::Trickles)];
    let out = run(download(), &owners, Duration::from_secs(600));
    failure(&out);
    // It gives up within the give-up time (plus a tick), not after 6 × 5 s of trickle per retry.
    let limit = DownloadConfig::default().no_source_timeout + Duration::from_secs(1);
    assert!(out.elapsed <= limit, "{:?}", out.elapsed);
}

#[test]
fn unrequested_blocks_do_not_reset_the_give_up_clock() {
    let real = file(2 * PIECE as usize, 8);
    let info = info_of(&real);
    let owners = [owner(1, info, &real, Acts::Unasked)];
    let out = run(download(), &owners, Duration::from_secs(600));
    let why = failure(&out);
    assert!(why.contains("no owner delivered"), "{why}");
    let limit = DownloadConfig::default().no_source_timeout + Duration::from_secs(1);
    assert!(out.elapsed <= limit, "{:?}", out.elapsed);
}

#[test]
fn many_names_from_one_host_do_not_outvote_owners_on_other_hosts() {
    let real = file(3 * PIECE as usize, 6);
    let info = info_of(&real);
    let on = |ip: [u8; 4], mut o: Owner_| {
        o.addr = SocketAddr::from((ip, o.addr.port()));
        o
    };
    let mut owners: Vec<Owner_> = (1..=6)
        .map(|n| on([10, 9, 9, 9], owner(n, fake_root(0), &real, Acts::Silent)))
        .collect();
    owners.push(on([10, 0, 0, 1], owner(7, info, &real, Acts::Honest)));
    owners.push(on([10, 0, 0, 2], owner(8, info, &real, Acts::Honest)));
    let out = run(download(), &owners, Duration::from_secs(60));
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, real);
    // Two hosts beat six names on one: the fake version is never even tried.
    assert!(
        out.contacted.iter().all(|a| a.ip() != owners[0].addr.ip()),
        "{:?}",
        out.contacted
    );
}

#[test]
fn a_version_whose_hashes_hold_but_whose_pieces_never_do_is_given_up() {
    let real = file(3 * PIECE as usize, 7);
    let bait = file(3 * PIECE as usize, 8);
    let (info, bait_info) = (info_of(&real), info_of(&bait));
    let on = |ip: [u8; 4], mut o: Owner_| {
        o.addr = SocketAddr::from((ip, o.addr.port()));
        o
    };
    // The bait is held on more hosts, so it is tried first; its hashes hold, its blocks lie.
    let owners = [
        on([10, 5, 0, 1], owner(1, bait_info, &bait, Acts::Corrupt)),
        on([10, 5, 0, 2], owner(2, bait_info, &bait, Acts::Corrupt)),
        on([10, 0, 0, 1], owner(3, info, &real, Acts::Honest)),
    ];
    let out = run(download(), &owners, Duration::from_secs(120));
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, real);
    let bait_hosts = [owners[0].addr, owners[1].addr];
    assert!(
        out.contacted[..2].iter().all(|a| bait_hosts.contains(a)),
        "the bait was tried first: {:?}",
        out.contacted
    );
}

#[test]
fn a_layout_with_more_pieces_than_a_download_takes_is_never_tried() {
    let real = file(2 * PIECE as usize, 9);
    let info = info_of(&real);
    let pieces = DownloadConfig::default().max_pieces + 1;
    let huge = FileInfo {
        size: pieces * u64::from(PIECE),
        piece_size: PIECE,
        root: [0x77; 32],
    };
    let owners = [
        owner(1, huge, &real, Acts::Silent),
        owner(2, huge, &real, Acts::Silent),
        owner(3, info, &real, Acts::Honest),
    ];
    let out = run(download(), &owners, Duration::from_secs(60));
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, real);
    assert_eq!(
        out.contacted,
        vec![owners[2].addr],
        "the huge layout was tried"
    );
}

/// The frames `io` holds for `slot`, decoded, and `io` emptied of them.
fn frames_to(io: &mut Io, slot: SlotId) -> Vec<Vec<u8>> {
    let (mine, rest) = std::mem::take(&mut io.sent)
        .into_iter()
        .partition(|(s, _)| *s == slot);
    io.sent = rest;
    mine.into_iter().map(|(_, f)| f).collect()
}

fn decoded(frame: &[u8]) -> Message<'_> {
    match decode_frame(frame, &Limits::default()) {
        Ok(Decoded::Frame(msg, _)) => msg,
        other => panic!("the download sent a bad frame: {other:?}"),
    }
}

/// A download connected to a complete owner `seed` and a partial owner `peer` holding
/// `peer_has`, with its first piece requests in `io`; returns the two slots.
fn seed_and_partial(
    dl: &mut Download<MemStore>,
    io: &mut Io,
    data: &[u8],
    peer_has: &[u32],
) -> (SlotId, SlotId) {
    let (seed, peers) = seed_and_partials(dl, io, data, &[peer_has]);
    (seed, peers[0])
}

/// As [`seed_and_partial`], with a partial owner for each entry of `peers_have`.
fn seed_and_partials(
    dl: &mut Download<MemStore>,
    io: &mut Io,
    data: &[u8],
    peers_have: &[&[u32]],
) -> (SlotId, Vec<SlotId>) {
    let now = Instant::now();
    let info = info_of(data);
    let seed = owner(1, info, data, Acts::Honest);
    let peers: Vec<Owner_> = (0..peers_have.len())
        .map(|i| owner(2 + i as u16, info, data, Acts::Honest))
        .collect();
    let listed: Vec<Owner<'_>> = std::iter::once((&seed, true))
        .chain(peers.iter().map(|p| (p, false)))
        .map(|(o, complete)| Owner {
            node_name: &o.name,
            addr: o.addr,
            info: o.info,
            complete,
        })
        .collect();
    dl.handle_owners(now, &listed, io);
    let slot_of = |addr| {
        io.connects
            .iter()
            .find(|(_, a)| *a == addr)
            .map(|(s, _)| *s)
            .expect("every owner is connected")
    };
    let seed_slot = slot_of(seed.addr);
    let peer_slots: Vec<SlotId> = peers.iter().map(|p| slot_of(p.addr)).collect();
    let pieces = info.layout().piece_count();
    let mut answers = vec![(seed_slot, Bitfield::full(pieces))];
    for (&slot, have) in peer_slots.iter().zip(peers_have) {
        let mut partial = Bitfield::new(pieces);
        for &p in *have {
            partial.set(p);
        }
        answers.push((slot, partial));
    }
    for (slot, has) in answers {
        dl.handle_connected(now, slot, io);
        let answer = Message::SizeInformation(SizeInformation::Answer {
            name: "f",
            info,
            have: has.as_bytes(),
        });
        dl.handle_message(now, slot, &answer, io);
    }
    // The seed is the hash source: answer its hash requests.
    let hashes: Vec<Hash> = data.chunks(PIECE as usize).map(hash_piece).collect();
    for frame in frames_to(io, seed_slot) {
        if let Message::HashRequest { root, first, count } = decoded(&frame) {
            let got = &hashes[first as usize..(first + count) as usize];
            let msg = Message::Hashes {
                root,
                first,
                hashes: got.as_flattened(),
            };
            dl.handle_message(now, seed_slot, &msg, io);
        }
    }
    let Some(Notice::NeedStore { info }) = dl.poll_notice() else {
        panic!("the layout is verified");
    };
    // The size questions are answered: only what attaching brings (piece requests) stays.
    io.sent.clear();
    dl.attach_store(
        now,
        MemStore::new(info.size),
        &vec![false; pieces as usize],
        io,
    );
    (seed_slot, peer_slots)
}

#[test]
fn a_piece_waiting_at_the_seed_moves_to_a_partial_owner_that_gains_it() {
    let data = file(8 * PIECE as usize, 3);
    let info = info_of(&data);
    let mut dl = download();
    let mut io = Io::default();
    let (seed, peer) = seed_and_partial(&mut dl, &mut io, &data, &[]);
    let asked = requested_pieces(&mut io, seed);
    assert!(!asked.is_empty(), "the seed is asked for pieces");
    assert!(
        frames_to(&mut io, peer).is_empty(),
        "the partial owner has nothing yet"
    );

    // The partial owner (another downloader) verified one of them: it is fetched there instead.
    let moved = asked[asked.len() - 1];
    let have = Message::HavePiece {
        root: info.root,
        piece: moved,
    };
    dl.handle_message(Instant::now(), peer, &have, &mut io);
    let to_seed: Vec<Vec<u8>> = frames_to(&mut io, seed);
    let cancelled: Vec<u32> = to_seed
        .iter()
        .filter_map(|f| match decoded(f) {
            Message::Cancel(r) => Some(r.piece),
            _ => None,
        })
        .collect();
    assert_eq!(cancelled, [moved], "withdrawn from the seed");
    let to_peer: Vec<Vec<u8>> = frames_to(&mut io, peer);
    let requested: Vec<BlockRequest> = to_peer
        .iter()
        .filter_map(|f| match decoded(f) {
            Message::Request(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0].piece, moved);
    assert_eq!(requested[0].len, PIECE);
    // Only once: the seed is not asked for it again.
    assert!(to_seed
        .iter()
        .all(|f| !matches!(decoded(f), Message::Request(r) if r.piece == moved)));
}

/// The pieces requested of `slot` in `io` (taken out of it).
fn requested_pieces(io: &mut Io, slot: SlotId) -> Vec<u32> {
    let mut pieces: Vec<u32> = frames_to(io, slot)
        .iter()
        .filter_map(|f| match decoded(f) {
            Message::Request(r) => Some(r.piece),
            _ => None,
        })
        .collect();
    pieces.sort();
    pieces
}

#[test]
fn the_seed_is_asked_only_for_pieces_no_partial_owner_holds() {
    let data = file(8 * PIECE as usize, 4);
    let mut dl = download();
    let mut io = Io::default();
    let (seed, peer) = seed_and_partial(&mut dl, &mut io, &data, &[0, 2, 4, 6]);
    // Both have room for the whole file; the crowd's pieces come from the crowd.
    assert_eq!(requested_pieces(&mut io, peer), [0, 2, 4, 6]);
    assert_eq!(requested_pieces(&mut io, seed), [1, 3, 5, 7]);
}

#[test]
fn requests_spread_over_the_partial_owners_instead_of_filling_the_first_one() {
    let data = file(8 * PIECE as usize, 6);
    let mut dl = download();
    let mut io = Io::default();
    let both: &[u32] = &[0, 1, 2, 3, 4, 5];
    let (seed, peers) = seed_and_partials(&mut dl, &mut io, &data, &[both, both]);
    let first = requested_pieces(&mut io, peers[0]);
    let second = requested_pieces(&mut io, peers[1]);
    // Either window holds all six pieces; a crowd that fills the first holder's window
    // queues there while the second idles.
    assert_eq!((first.len(), second.len()), (3, 3), "{first:?} {second:?}");
    let mut all: Vec<u32> = first.iter().chain(&second).copied().collect();
    all.sort();
    assert_eq!(all, both, "each piece asked of one holder");
    assert_eq!(requested_pieces(&mut io, seed), [6, 7]);
}

/// This download's rank of owner `n` (lower is preferred; see `addr_key`).
fn rank_of(dl: &Download<MemStore>, info: FileInfo, data: &[u8], n: u16) -> u64 {
    addr_key(dl.shuffle_seed(), &owner(n, info, data, Acts::Honest).addr)
}

/// An owner number from 10 on that `dl` ranks below every one of `others`.
fn ranked_below(dl: &Download<MemStore>, info: FileInfo, data: &[u8], others: &[u16]) -> u16 {
    let worst = others.iter().map(|&o| rank_of(dl, info, data, o)).max();
    (10..1000)
        .find(|&n| Some(rank_of(dl, info, data, n)) > worst)
        .expect("some owner ranks below")
}

/// The tracker's list: owner 1 complete, the others partial.
fn listing(info: FileInfo, data: &[u8], partial: &[u16]) -> Vec<Owner<'static>> {
    std::iter::once(1)
        .chain(partial.iter().copied())
        .map(|n| Owner {
            node_name: "o",
            addr: owner(n, info, data, Acts::Honest).addr,
            info,
            complete: n == 1,
        })
        .collect()
}

/// A download with its three places taken: the seed (owner 1), a partial owner asked for
/// pieces 0 and 1 (owner 2) and an idle partial owner holding nothing (owner 3).
fn three_places_taken(data: &[u8]) -> (Download<MemStore>, Io, [SlotId; 3]) {
    let config = DownloadConfig {
        max_peers: 3,
        ..DownloadConfig::default()
    };
    let mut dl = Download::new("f", "me", config, Instant::now());
    let mut io = Io::default();
    let (seed, peers) = seed_and_partials(&mut dl, &mut io, data, &[&[0, 1], &[]]);
    let (busy, idle) = (peers[0], peers[1]);
    assert_eq!(requested_pieces(&mut io, busy), [0, 1]);
    (dl, io, [seed, busy, idle])
}

#[test]
fn an_owner_listed_later_and_ranked_higher_takes_the_place_of_an_idle_partial_owner() {
    let data = file(8 * PIECE as usize, 7);
    let info = info_of(&data);
    let (mut dl, mut io, [seed, busy, idle]) = three_places_taken(&data);
    let now = Instant::now();
    // Listed later and ranked below both partial owners: nobody makes room for it.
    let lower = ranked_below(&dl, info, &data, &[2, 3]);
    io.connects.clear();
    dl.handle_owners(now, &listing(info, &data, &[2, 3, lower]), &mut io);
    assert!(io.connects.is_empty() && io.closed.is_empty());
    // Ranked above the idle one (owner 3): it takes that place, the busy one stays.
    let idle_rank = rank_of(&dl, info, &data, 3);
    let higher = (10..1000)
        .find(|&n| rank_of(&dl, info, &data, n) < idle_rank)
        .expect("some owner ranks higher");
    dl.handle_owners(now, &listing(info, &data, &[2, 3, lower, higher]), &mut io);
    assert_eq!(io.closed, [idle], "only the idle partial owner goes");
    let connected: Vec<SocketAddr> = io.connects.iter().map(|&(_, a)| a).collect();
    assert_eq!(connected, [owner(higher, info, &data, Acts::Honest).addr]);
    assert!(!io.closed.contains(&seed) && !io.closed.contains(&busy));
}

#[test]
fn with_every_place_taken_an_idle_partial_owner_makes_room_for_one_never_tried() {
    let data = file(8 * PIECE as usize, 7);
    let info = info_of(&data);
    let (mut dl, mut io, [seed, busy, idle]) = three_places_taken(&data);
    // A downloader listed a tracker round later, ranked below those connected (so its
    // listing alone changes nothing): every place is taken.
    let n = ranked_below(&dl, info, &data, &[2, 3]);
    let late = owner(n, info, &data, Acts::Honest);
    let listed = listing(info, &data, &[2, 3, n]);
    io.connects.clear();
    dl.handle_owners(Instant::now(), &listed, &mut io);
    assert!(io.connects.is_empty(), "no place free yet");
    // A tick later the partial owner that holds nothing and is asked nothing goes.
    dl.handle_timeout(Instant::now() + Duration::from_millis(300), &mut io);
    assert_eq!(io.closed, [idle], "only the idle partial owner is let go");
    let connected: Vec<SocketAddr> = io.connects.iter().map(|&(_, a)| a).collect();
    assert_eq!(connected, [late.addr], "the untried owner takes its place");
    assert!(!io.closed.contains(&seed) && !io.closed.contains(&busy));
    // Nothing is left untried: the next tick keeps everyone.
    io.connects.clear();
    dl.handle_timeout(Instant::now() + Duration::from_millis(600), &mut io);
    assert_eq!(io.closed, [idle]);
    assert!(
        io.connects.is_empty(),
        "the one let go is not asked back at once"
    );
}

#[test]
fn a_piece_an_owner_turns_down_is_asked_of_another_and_not_of_it_again_at_once() {
    let data = file(8 * PIECE as usize, 5);
    let info = info_of(&data);
    let mut dl = download();
    let mut io = Io::default();
    let (seed, peer) = seed_and_partial(&mut dl, &mut io, &data, &[0, 2, 4, 6]);
    assert_eq!(requested_pieces(&mut io, peer), [0, 2, 4, 6]);
    assert_eq!(requested_pieces(&mut io, seed), [1, 3, 5, 7]);

    // The partial owner cannot serve piece 2 soon: it sends the request back.
    let turned = BlockRequest {
        root: info.root,
        piece: 2,
        offset: 0,
        len: PIECE,
    };
    let now = Instant::now();
    dl.handle_message(now, peer, &Message::Cancel(turned), &mut io);
    assert_eq!(
        requested_pieces(&mut io, seed),
        [2],
        "asked of the other holder"
    );
    assert!(
        requested_pieces(&mut io, peer).is_empty(),
        "not asked again of the owner that turned it down"
    );
    // A turn-down of something never asked is a late echo: the owner stays.
    let never = BlockRequest { piece: 1, ..turned };
    dl.handle_message(now, peer, &Message::Cancel(never), &mut io);
    assert!(io.closed.is_empty(), "nobody dropped: {:?}", io.closed);
    assert_eq!(dl.progress().owners, 2);
}

#[test]
fn downloaders_listed_as_partial_owners_do_not_make_a_version_look_popular() {
    let real = file(3 * PIECE as usize, 8);
    let info = info_of(&real);
    let bait = fake_root(9);
    let entry = |name: &'static str, ip: [u8; 4], info: FileInfo, complete: bool| Owner {
        node_name: name,
        addr: SocketAddr::from((ip, 7000)),
        info,
        complete,
    };
    // The bait is held complete by one host, and five honest downloaders it tricked are
    // listed as its partial owners (they are listed before they verify any piece).
    let mut listed = vec![entry("bait", [10, 9, 9, 9], bait, true)];
    let names = ["d1", "d2", "d3", "d4", "d5"];
    for (i, name) in names.iter().enumerate() {
        listed.push(entry(name, [10, 1, 1, i as u8 + 1], bait, false));
    }
    listed.push(entry("s1", [10, 0, 0, 1], info, true));
    listed.push(entry("s2", [10, 0, 0, 2], info, true));
    let mut dl = download();
    let mut io = Io::default();
    dl.handle_owners(Instant::now(), &listed, &mut io);
    assert_eq!(dl.info(), Some(info), "two hosts holding it complete win");
}

#[test]
fn pieces_verified_off_the_thread_complete_and_a_corrupt_owner_is_banned() {
    // More than one owner's first window (16 pieces), so both are asked.
    let data = file(64 * PIECE as usize, 3);
    let info = info_of(&data);
    let owners = [
        owner(1, info, &data, Acts::Corrupt),
        owner(2, info, &data, Acts::Honest),
    ];
    let out = run_verifying(
        download(),
        &owners,
        Duration::from_secs(60),
        Duration::from_millis(5),
    );
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, data);
    assert!(
        out.rejected >= 1,
        "the liar's pieces were judged off the thread"
    );
    assert_eq!(out.verdicts - out.rejected, 64, "each piece written once");
    assert_eq!(out.credited, data.len() as u64);
    let liar = out
        .contacted
        .iter()
        .filter(|&&a| a == owners[0].addr)
        .count();
    assert_eq!(
        liar, 1,
        "the liar is banned, never reconnected: {:?}",
        out.contacted
    );
}

#[test]
fn an_endgame_copy_of_a_piece_awaiting_its_verdict_is_dropped_not_counted_twice() {
    // A slow owner holds pieces long enough for the fast one to be asked for copies,
    // and verdicts take long enough for the slow copies to land meanwhile.
    let data = file(64 * PIECE as usize, 4);
    let info = info_of(&data);
    let owners = [
        owner(1, info, &data, Acts::Slow),
        owner(2, info, &data, Acts::Honest),
    ];
    let out = run_verifying(
        download(),
        &owners,
        Duration::from_secs(60),
        Duration::from_millis(250),
    );
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, data);
    assert_eq!(out.verdicts, 64, "each piece checked and written once");
    assert_eq!(out.credited, data.len() as u64, "each piece credited once");
    assert!(out.refetched > 0, "some copies were dropped");
}

#[test]
fn verdicts_for_a_version_given_up_are_ignored() {
    let real = file(3 * PIECE as usize, 7);
    let bait = file(3 * PIECE as usize, 8);
    let (info, bait_info) = (info_of(&real), info_of(&bait));
    let on = |ip: [u8; 4], mut o: Owner_| {
        o.addr = SocketAddr::from((ip, o.addr.port()));
        o
    };
    let owners = [
        on([10, 5, 0, 1], owner(1, bait_info, &bait, Acts::Corrupt)),
        on([10, 5, 0, 2], owner(2, bait_info, &bait, Acts::Corrupt)),
        on([10, 0, 0, 1], owner(3, info, &real, Acts::Honest)),
    ];
    let out = run_verifying(
        download(),
        &owners,
        Duration::from_secs(120),
        Duration::from_millis(50),
    );
    assert_eq!(out.end, Some(Notice::Complete));
    assert_eq!(out.bytes, real);
    assert!(out.rejected >= 2, "{} rejected", out.rejected);
}

/// Lists owners `(n, complete)` to `dl` (a partial one holding nothing) and has each one
/// it connects to answer the size question; returns the slots of those, in connect order.
fn ready_owners(
    dl: &mut Download<MemStore>,
    io: &mut Io,
    data: &[u8],
    listed: &[(u16, bool)],
    now: Instant,
) -> Vec<SlotId> {
    let info = info_of(data);
    let owners: Vec<Owner<'_>> = listed
        .iter()
        .map(|&(n, complete)| Owner {
            node_name: "o",
            addr: owner(n, info, data, Acts::Honest).addr,
            info,
            complete,
        })
        .collect();
    let before = io.connects.len();
    dl.handle_owners(now, &owners, io);
    let new: Vec<(SlotId, SocketAddr)> = io.connects[before..].to_vec();
    let pieces = info.layout().piece_count();
    let mut slots = Vec::new();
    for (slot, addr) in new {
        slots.push(slot);
        let complete = owners.iter().any(|o| o.addr == addr && o.complete);
        let has = if complete {
            Bitfield::full(pieces)
        } else {
            Bitfield::new(pieces)
        };
        dl.handle_connected(now, slot, io);
        let answer = Message::SizeInformation(SizeInformation::Answer {
            name: "f",
            info,
            have: has.as_bytes(),
        });
        dl.handle_message(now, slot, &answer, io);
    }
    slots
}

/// True if `slot` was asked for hashes since its frames were last looked at.
fn asked_hashes(io: &mut Io, slot: SlotId) -> bool {
    frames_to(io, slot)
        .iter()
        .any(|f| matches!(decoded(f), Message::HashRequest { .. }))
}

#[test]
fn a_hash_request_turned_down_goes_to_a_partial_owner_or_back_to_the_owner_a_tick_later() {
    let data = file(8 * PIECE as usize, 8);
    let info = info_of(&data);
    let turned_down = Message::Hashes {
        root: info.root,
        first: 0,
        hashes: &[],
    };
    let t0 = Instant::now();

    // With nobody else to ask, the owner that turned us down is asked again on the tick.
    let mut dl = download();
    let mut io = Io::default();
    let seed = ready_owners(&mut dl, &mut io, &data, &[(1, true)], t0)[0];
    assert!(asked_hashes(&mut io, seed));
    dl.handle_message(t0, seed, &turned_down, &mut io);
    assert!(!asked_hashes(&mut io, seed), "not asked again at once");
    assert!(io.closed.is_empty(), "a turn-down is no fault");
    dl.handle_timeout(t0 + Duration::from_millis(300), &mut io);
    assert!(asked_hashes(&mut io, seed), "asked again a tick later");
    assert_eq!(dl.phase(), Phase::Hashes);

    // A partial owner that turns up meanwhile is asked instead.
    let mut dl = download();
    let mut io = Io::default();
    let seed = ready_owners(&mut dl, &mut io, &data, &[(1, true)], t0)[0];
    assert!(asked_hashes(&mut io, seed));
    dl.handle_message(t0, seed, &turned_down, &mut io);
    let later = t0 + Duration::from_millis(100);
    let partial = ready_owners(&mut dl, &mut io, &data, &[(1, true), (2, false)], later)[0];
    assert!(asked_hashes(&mut io, partial), "the partial owner is asked");
    assert!(!asked_hashes(&mut io, seed));
    // Its answer is taken: the download goes on to storage.
    let hashes: Vec<Hash> = data.chunks(PIECE as usize).map(hash_piece).collect();
    let answer = Message::Hashes {
        root: info.root,
        first: 0,
        hashes: hashes.as_flattened(),
    };
    dl.handle_message(later, partial, &answer, &mut io);
    assert_ne!(dl.phase(), Phase::Hashes);
}

#[test]
fn while_the_hashes_are_fetched_a_higher_ranked_listing_leaves_the_hash_source_alone() {
    let data = file(8 * PIECE as usize, 9);
    let info = info_of(&data);
    let config = DownloadConfig {
        max_peers: 2,
        ..DownloadConfig::default()
    };
    let mut dl = Download::new("f", "me", config, Instant::now());
    let mut io = Io::default();
    let t0 = Instant::now();
    // The partial owner, alone at first, is asked for the hashes; the seed takes the
    // other place.
    let source = ready_owners(&mut dl, &mut io, &data, &[(2, false)], t0)[0];
    assert!(asked_hashes(&mut io, source));
    ready_owners(&mut dl, &mut io, &data, &[(2, false), (1, true)], t0);
    let source_rank = rank_of(&dl, info, &data, 2);
    let higher = (10..1000)
        .find(|&n| rank_of(&dl, info, &data, n) < source_rank)
        .expect("some owner ranks higher");
    ready_owners(
        &mut dl,
        &mut io,
        &data,
        &[(2, false), (1, true), (higher, false)],
        t0,
    );
    assert!(
        io.closed.is_empty(),
        "the hash source stays: {:?}",
        io.closed
    );
    let hashes: Vec<Hash> = data.chunks(PIECE as usize).map(hash_piece).collect();
    let answer = Message::Hashes {
        root: info.root,
        first: 0,
        hashes: hashes.as_flattened(),
    };
    dl.handle_message(t0, source, &answer, &mut io);
    assert_ne!(dl.phase(), Phase::Hashes, "its answer is taken");
}

#[test]
fn a_partial_owner_that_turns_a_hash_request_down_is_dropped() {
    // Only an owner of the whole file has pieces of its own to send instead; a partial
    // one turning down again and again would hold its place for nothing.
    let data = file(8 * PIECE as usize, 10);
    let info = info_of(&data);
    let mut dl = download();
    let mut io = Io::default();
    let t0 = Instant::now();
    let partial = ready_owners(&mut dl, &mut io, &data, &[(2, false)], t0)[0];
    assert!(asked_hashes(&mut io, partial));
    let turned_down = Message::Hashes {
        root: info.root,
        first: 0,
        hashes: &[],
    };
    dl.handle_message(t0, partial, &turned_down, &mut io);
    assert_eq!(io.closed, [partial]);
}
