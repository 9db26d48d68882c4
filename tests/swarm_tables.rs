//! Flash crowds against their physical bound, in simulation (issue 8): one owner and N
//! downloaders, every node uploading at the same rate R, all starting at once.
//!
//! One owner must push every byte at least once, so no downloader can finish before F/R;
//! the crowd's own uploads are what can bring them all close to it. Each table prints the
//! last and median completion times as multiples of F/R and the bytes the owner sent as
//! multiples of the file (ideal: 1). Only correctness is asserted (every copy identical);
//! times are printed, never asserted.
//!
//! `cargo test --release --test swarm_tables -- --ignored --nocapture --test-threads 1`
//! prints the 16, 100 and 1,000-node tables (8 MiB in 256 KiB pieces; `SHOAL_TABLE_MIB` and
//! `SHOAL_TABLE_PIECE_KIB` change them).
//!
//! `SHOAL_TABLE_TRACE=1` prints, every 50 ms of simulated time: how busy the owner's and the
//! crowd's uplinks were, the distinct pieces the owner has sent, the requests waiting at the
//! owner and at the downloaders, what each crowd uplink is doing (busy, held back, idle with
//! requests queued, idle), how many pieces the downloaders miss and how many blocks they
//! ask for, the turn-downs so far by rule, and the pieces missing at busy and idle uplinks.
//!
//! The simulator models TCP's window (256 KiB in flight per direction of a link) and a
//! 20 ms queue in front of each downlink; senders wait instead of queueing without bound.
//! Each table writes N copies of the file into tempdirs: set `TMPDIR` to a folder of its
//! own, with room (32 GB for 1,000 downloaders of 32 MiB).
//!
//! What the tables showed (8 MiB in 256 KiB pieces, R = 8 MiB/s, 5 ms):
//! - before node-wide upload scheduling, with R the link's rate, the owner split its link
//!   N ways, sent the file about N/8 times, and at 1,000 no piece arrived within 30 s;
//! - with it (one budget for all serving connections, least-sent piece first, requests for
//!   pieces sent before turned down after 100 ms, downloaders listed from the start):
//!   16 downloaders at 1.69x (paced 1.47x), 100 at 2.06x (1.66x), 1,000 at 3.03x;
//! - since requests spread over partial owners one piece each, least loaded first, and a
//!   partial owner sends back what it cannot send within 100 ms: 16 at 1.56x (paced 1.36x),
//!   100 at 1.93x (1.57x), 1,000 at 2.70x (1.95x). With `SHOAL_TABLE_MIB=32`: 16 at 1.17x,
//!   100 at 1.30x (paced 1.21x), but 1,000 at about 4x: 205 uplinks busy and 795 idle for
//!   seconds, the idle ones holding more pieces. Every download's 64 places had gone to the
//!   downloaders listed in the tracker's first round, and nobody connected to the others;
//! - since a download with every place taken lets idle partial owners go for untried ones
//!   (4 per 250 ms): 1,000 at 2.31x (paced 1.79x), the owner sending 1.92 files instead of
//!   2.37; with `SHOAL_TABLE_MIB=32`, 1,000 at 1.99x, 100 at 1.28x.
//!
//! - since blocks go out one after another, an owner listed later and ranked higher takes
//!   an idle partial owner's place, a partial owner keeps three pieces' worth of requests,
//!   and an original owner answers first hash requests up to a 64th of the file a second
//!   (the rest ask partial owners), a block holding the next back only while it goes out
//!   at about the uplink's pace: 16 at 1.54x (paced 1.47x), 100 at 1.82x (1.60x), 1,000 at
//!   2.09x (1.95x); with `SHOAL_TABLE_MIB=32`, 16 at 1.14x, 100 at 1.26x, 1,000 at 1.35x
//!   (before the hold's bound), the owner sending 1.20 files.
//! - since `--max-upload-rate` counts everything a node sends (hashes, `HavePiece`s,
//!   requests sent back), paced: 16 at 1.33x, 100 at 1.80x, 1,000 at 1.97x; the flash
//!   crowds without a cap are unchanged. With `SHOAL_TABLE_MIB=64` (F/R = 8 s, as in
//!   `cargo bench --bench swarm`): 16 at 1.07x (paced 1.05x), 100 at 1.15x (1.13x), 1,000
//!   at 1.21x (1.20x; 21 minutes and 64 GB of copies each), the owner sending 1.03–1.13
//!   files; with `SHOAL_TABLE_MIB=32`, 1,000 at 1.35x (median 1.28x), the owner sending
//!   1.21 files, the crowd using 75 % of its upload.
//!
//! What is left. At 8 MiB (32 pieces) a piece spreads from holder to holder about every
//! 50 ms: 31 ms to send it at R, plus the announcement and the request, a round trip of
//! 20 ms here. The owner's last new piece leaves at about 1.1 s and needs ten such steps
//! to reach 1,000 nodes; at 1.05 s a downloader still missed 21 pieces of which 12 were at
//! none of its 64 owners (the young ones). The mesh forms late: until 0.20 s only the
//! owner and the tracker have links, since a downloader is listed as a partial owner once
//! its hashes check and the tracker pushes changed lists 100 ms after the first change
//! (25 ms instead changed 1,000 by nothing and 100 by 0.03x). Paced, the crowds pay for
//! what the cap now counts: a partial owner's `HavePiece`s to its 64 watchers are about 1 %
//! of its upload at 256 KiB pieces, yet at 100 downloaders the crowd took 1.62–1.73x with
//! them uncharged and 1.77–1.92x charged (8, 7 and 9 MiB): small shifts in who holds what
//! when move these 8 MiB crowds by a tenth. Smaller pieces do not shorten the steps:
//! with `SHOAL_TABLE_PIECE_KIB=64`, 100 took 1.91x and 1,000 2.19x.
//!
//! At 1,000 downloaders of 32 MiB (1.35x) the trace shows where the 1.4 s beyond F/R go:
//! the crowd's uplinks stay under 5 % busy until 0.45 s and reach 76 % at 0.85 s (every
//! downloader's first requests queue at the owner, a thousand of them, and at the first
//! holder of each piece, 124 at one); from there they are 90–97 % busy until the owner's
//! last block at 4.9 s, and the last copy completes 0.5 s later. The partial owners sent
//! back 655,000 requests beyond what they send soon, 655 a downloader.

// Each test binary uses its own part of the simulator.
#[allow(dead_code)]
mod sim;

use std::time::{Duration, Instant};

use sim::*;

/// Every node's upload rate R, in MiB/s.
const RATE_MIB: f64 = 8.0;
/// Every node's download rate, in MiB/s: above R, so a downloader can take from several.
const DOWN_MIB: f64 = 32.0;
/// Every node's one-way access latency, in ms.
const LATENCY_MS: u64 = 5;
/// Bound on the simulated time of one table.
const SIM_LIMIT: Duration = Duration::from_secs(600);

/// What happens to the crowd besides downloading.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// Everyone stays.
    Plain,
    /// Every fourth downloader leaves once it holds about half the file.
    Leavers,
    /// A second owner announces the same file but serves corrupt bytes.
    Liar,
    /// R is each node's own `--max-upload-rate` on a link four times faster, as in the
    /// swarm bench, instead of the link's rate.
    Paced,
}

/// One crowd's figures.
struct Table {
    downloaders: usize,
    file: usize,
    ideal: f64,
    last: f64,
    median: f64,
    owner_sent: u64,
    /// What the downloaders uploaded over what their uplinks could have in that time.
    crowd_use: f64,
    sim_secs: f64,
    wall: Duration,
    left: usize,
    failed: usize,
}

/// A name that lives as long as the swarm needs it: `Spec` takes `&'static str`, and a
/// table leaks at most a thousand short names once.
fn name(prefix: &str, i: usize) -> &'static str {
    Box::leak(format!("{prefix}{i}").into_boxed_str())
}

fn crowd(
    title: &str,
    downloaders: usize,
    file_len: usize,
    piece_size: u32,
    variant: Variant,
) -> Table {
    let file = file_bytes(file_len, 0x5EED + downloaders as u64);
    let paced = variant == Variant::Paced;
    let link = match paced {
        true => access(4.0 * RATE_MIB, DOWN_MIB, LATENCY_MS),
        false => access(RATE_MIB, DOWN_MIB, LATENCY_MS),
    };
    let limit = paced.then_some((RATE_MIB * f64::from(1 << 20)) as u64);
    let mut specs = vec![Spec {
        piece_size,
        max_upload_rate: limit,
        ..owner("seed", link, &file)
    }];
    let liar = variant == Variant::Liar;
    if liar {
        specs.push(Spec {
            piece_size,
            ..owner("liar", link, &file)
        });
    }
    let first = specs.len() + 1;
    specs.extend((0..downloaders).map(|i| Spec {
        piece_size,
        max_upload_rate: limit,
        ..downloader(name("dl", i), link)
    }));
    let eps: Vec<usize> = (first..first + downloaders).collect();
    // The tracker answers lists of up to a thousand owners to a thousand watchers: give it
    // a server's link so the crowd measures the nodes, not the tracker's uplink.
    let wall = Instant::now();
    let mut swarm = Swarm::new(access(1000.0, 1000.0, 1), specs);
    if liar {
        // The liar published the true file's hashes; from now on it serves other bytes.
        let path = swarm.node_dir(2).join("f.bin");
        let bad: Vec<u8> = file.iter().map(|b| !b).collect();
        // Its modification time is put back, or the liar would see the change and stop
        // sharing the file instead of lying.
        let mtime = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("the liar's copy");
        std::fs::write(&path, bad).expect("corrupt the liar's copy");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(mtime))
            .expect("restore the liar's mtime");
    }
    let over = |s: &Swarm, ep: usize| downloaded(s, ep, "f.bin") || failed(s, ep).is_some();
    let mut leavers: Vec<usize> = if variant == Variant::Leavers {
        eps.iter().copied().step_by(4).collect()
    } else {
        Vec::new()
    };
    let half = file_len as u64 / 2;
    let start = swarm.net.sent.clone();
    let mut left = Vec::new();
    let mut sim_spent = Duration::ZERO;
    let slice = Duration::from_millis(50);
    // `SHOAL_TABLE_TRACE=1` prints how busy the uplinks were in each slice.
    let trace = std::env::var_os("SHOAL_TABLE_TRACE").is_some();
    let mut traced = (0u64, 0u64);
    // Bounded: SIM_LIMIT / slice slices, each bounded in steps by `run_until`.
    while sim_spent < SIM_LIMIT {
        // Whether all are over changes only when one says something.
        let mut seen = usize::MAX;
        let all = swarm.run_until(slice, |s| {
            let said = std::mem::replace(&mut seen, s.net.lines_said);
            said != s.net.lines_said
                && eps
                    .iter()
                    .filter(|ep| !left.contains(*ep))
                    .all(|&ep| over(s, ep))
        });
        sim_spent += slice;
        if trace {
            let window = RATE_MIB * f64::from(1 << 20) * slice.as_secs_f64();
            let crowd: u64 = eps.iter().map(|&ep| swarm.net.sent[ep]).sum();
            let done = eps.iter().filter(|&&ep| over(&swarm, ep)).count();
            eprintln!(
                "t {:5.2} s: owner up {:3.0} %, crowd up {:3.0} %, {done} done, {} links",
                sim_spent.as_secs_f64(),
                (swarm.net.sent[1] - traced.0) as f64 / window * 100.0,
                (crowd - traced.1) as f64 / (window * downloaders as f64) * 100.0,
                swarm.net.links.len(),
            );
            let queued: Vec<usize> = swarm.nodes.iter().map(|n| n.queued_requests()).collect();
            eprintln!(
                "        owner sent {} distinct pieces; requests queued: at the owner {}, at downloaders {} (most at one {})",
                swarm.nodes[0].distinct_pieces_sent(),
                queued[0],
                queued[1..].iter().sum::<usize>(),
                queued[1..].iter().max().copied().unwrap_or(0)
            );
            let mut seen = [0usize; 4];
            // Pieces missing, summed over the busy and over the idle uplinks.
            let mut missing_by = [0u32; 2];
            for (i, &ep) in eps.iter().enumerate() {
                let kind = match swarm.net.uplink(ep) {
                    Uplink::Busy => 0,
                    Uplink::Blocked => 1,
                    Uplink::Empty if queued[first - 1 + i] > 0 => 2,
                    Uplink::Empty => 3,
                };
                seen[kind] += 1;
                let missing = swarm.nodes[ep - 1].download_demand().0;
                missing_by[usize::from(kind != 0)] += missing;
            }
            let (stale, excess) = swarm.nodes.iter().fold((0, 0), |(a, b), n| {
                let (s, e) = n.turned_down();
                (a + s, b + e)
            });
            eprintln!(
                "        turned down so far: {stale} for waiting too long, {excess} beyond what sends soon"
            );
            let per = |sum: u32, n: usize| sum as f64 / n.max(1) as f64;
            eprintln!(
                "        pieces missing per downloader: {:.1} at busy uplinks, {:.1} at the others",
                per(missing_by[0], seen[0]),
                per(missing_by[1], downloaders - seen[0])
            );
            let (missing, asked) = eps.iter().fold((0, 0), |(m, a), &ep| {
                let (missing, asked) = swarm.nodes[ep - 1].download_demand();
                (m + missing, a + asked)
            });
            eprintln!(
                "        crowd uplinks: {} busy, {} blocked, {} idle with requests queued, {} idle; downloaders miss {missing} pieces and ask for {asked} blocks",
                seen[0], seen[1], seen[2], seen[3]
            );
            traced = (swarm.net.sent[1], crowd);
        }
        if all {
            break;
        }
        // A leaver goes once it has sent about half the file's worth: by then it holds
        // pieces others are fetching from it.
        let going: Vec<usize> = leavers
            .iter()
            .copied()
            .filter(|&ep| swarm.net.sent[ep] - start[ep] > half && !over(&swarm, ep))
            .collect();
        for ep in going {
            swarm.kill(ep);
            leavers.retain(|&l| l != ep);
            left.push(ep);
        }
    }
    let wall = wall.elapsed();
    let stayed: Vec<usize> = eps
        .iter()
        .copied()
        .filter(|ep| !left.contains(ep))
        .collect();
    let mut took: Vec<f64> = stayed.iter().filter_map(|&ep| swarm.took(ep)).collect();
    took.sort_by(f64::total_cmp);
    let ideal = file_len as f64 / (RATE_MIB * f64::from(1 << 20));
    let last = took.last().copied().unwrap_or(f64::NAN);
    let table = Table {
        downloaders,
        file: file_len,
        ideal,
        last: last / ideal,
        median: took.get(took.len() / 2).copied().unwrap_or(f64::NAN) / ideal,
        owner_sent: swarm.net.sent[1],
        crowd_use: eps.iter().map(|&ep| swarm.net.sent[ep] as f64).sum::<f64>()
            / (downloaders as f64 * RATE_MIB * f64::from(1 << 20) * last),
        sim_secs: last,
        wall,
        left: left.len(),
        failed: stayed.len() - took.len(),
    };
    print(title, piece_size, &table);
    if liar {
        let sent = swarm.net.sent[2] as f64 / file_len as f64;
        eprintln!("the liar sent {sent:.2} files' worth of bad bytes");
    }
    if let Some(ep) = stayed.iter().copied().find(|&ep| swarm.took(ep).is_none()) {
        eprintln!("first failure, node {ep}: {:?}", swarm.net.said[ep]);
    }
    for ep in stayed {
        assert_same(&swarm, ep, &file);
    }
    table
}

fn print(title: &str, piece_size: u32, t: &Table) {
    eprintln!(
        "{title}: 1 owner + {} downloaders, {} MiB in {} KiB pieces, R = {RATE_MIB} MiB/s up, {DOWN_MIB} MiB/s down, {LATENCY_MS} ms",
        t.downloaders,
        t.file >> 20,
        piece_size >> 10
    );
    eprintln!(
        "| N | F/R | last/(F/R) | median/(F/R) | owner sent/F | crowd upload used | sim time | wall time | left | failed |"
    );
    eprintln!(
        "| {} | {:.2} s | {:.3} | {:.3} | {:.2} | {:.0} % | {:.2} s | {:.1} s | {} | {} |",
        t.downloaders,
        t.ideal,
        t.last,
        t.median,
        t.owner_sent as f64 / t.file as f64,
        t.crowd_use * 100.0,
        t.sim_secs,
        t.wall.as_secs_f64(),
        t.left,
        t.failed
    );
}

fn table(title: &str, downloaders: usize, variant: Variant) {
    let mib = |var: &str, default: usize| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(default)
    };
    let file = mib("SHOAL_TABLE_MIB", 8) << 20;
    let piece = (mib("SHOAL_TABLE_PIECE_KIB", 256) << 10) as u32;
    crowd(title, downloaders, file, piece, variant);
}

#[test]
fn a_small_crowd_of_four_ends_with_identical_copies() {
    let piece = 64 << 10;
    crowd("small crowd", 4, 2 << 20, piece, Variant::Plain);
}

#[test]
fn a_crowd_of_sixteen_takes_the_file_from_each_other_not_from_the_owner() {
    let file = 4 << 20;
    let t = crowd("crowd of 16", 16, file, 64 << 10, Variant::Plain);
    assert_eq!(t.failed, 0);
    // The owner sends each piece about once and the crowd forwards it: before node-wide
    // upload scheduling it sent this crowd the file 3.5 times, since about 1.3 times.
    let owner = t.owner_sent as f64 / file as f64;
    assert!(owner < 2.0, "the owner sent the file {owner:.2} times");
}

#[test]
#[ignore = "a table: run with --release -- --ignored --nocapture"]
fn table_16_downloaders() {
    table("flash crowd", 16, Variant::Plain);
}

#[test]
#[ignore = "a table: run with --release -- --ignored --nocapture"]
fn table_100_downloaders() {
    table("flash crowd", 100, Variant::Plain);
}

#[test]
#[ignore = "a table: run with --release -- --ignored --nocapture"]
fn table_1000_downloaders() {
    table("flash crowd", 1000, Variant::Plain);
}

#[test]
#[ignore = "a table: run with --release -- --ignored --nocapture"]
fn table_100_downloaders_a_quarter_leaving() {
    table("a quarter leave mid-way", 100, Variant::Leavers);
}

#[test]
#[ignore = "a table: run with --release -- --ignored --nocapture"]
fn table_100_downloaders_and_a_liar() {
    table("beside a lying owner", 100, Variant::Liar);
}

#[test]
#[ignore = "a table: run with --release -- --ignored --nocapture"]
fn table_16_downloaders_paced() {
    table("paced by --max-upload-rate", 16, Variant::Paced);
}

#[test]
#[ignore = "a table: run with --release -- --ignored --nocapture"]
fn table_100_downloaders_paced() {
    table("paced by --max-upload-rate", 100, Variant::Paced);
}

#[test]
#[ignore = "a table: run with --release -- --ignored --nocapture"]
fn table_1000_downloaders_paced() {
    table("paced by --max-upload-rate", 1000, Variant::Paced);
}
