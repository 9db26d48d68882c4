//! End-to-end transfer benchmark: shoal downloads beside a plain loopback TCP copy and `cp`.
//!
//! ```text
//! cargo bench --bench transfer                       # the full matrix (minutes)
//! SHOAL_BENCH_QUICK=1 cargo bench --bench transfer   # only the 64 MiB rows
//! cargo bench --bench transfer -- 1G/1M/4 64M/16K    # rows by label or label prefix
//! ```
//!
//! Each row runs an in-process tracker, N owners and a fresh downloader on
//! loopback, and measures in the same run, right beside it, a plain TCP copy of
//! the same number of bytes (1 MiB buffers) and `std::fs::copy` of the file with
//! a warm page cache, alone and followed by an fsync (a shoal download fsyncs
//! its file before the rename; plain `cp` does not). The ratios are the figures
//! to read: absolute rates on a shared machine drift.

#[path = "../examples/support/mod.rs"]
mod support;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use shoal::node::{self, NodeConfig};
use support::{generate, start_owner, start_tracker, wait_for_owners, CHUNK};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One configuration of the matrix.
#[derive(Clone, Copy, Debug)]
struct Case {
    size: u64,
    piece: u32,
    owners: usize,
}

/// One measured row (rates in MiB/s, medians over the repetitions).
struct Row {
    case: Case,
    shoal: f64,
    tcp: f64,
    cp: f64,
    cp_sync: f64,
}

fn main() -> io::Result<()> {
    shoal::logging::init(0, true);
    let cases = selected_cases();
    if cases.is_empty() {
        eprintln!("no row matches; labels look like 64M/16K/4 (size/piece/owners)");
        return Ok(());
    }
    let root = tempfile::Builder::new()
        .prefix("shoal-bench-")
        .tempdir_in(bench_dir())?;
    let tracker = start_tracker()?;
    let mut rows = Vec::new();
    let mut sizes: Vec<u64> = cases.iter().map(|c| c.size).collect();
    sizes.dedup();
    for size in sizes {
        let original = root.path().join(format!("file-{}", label(size)));
        generate(&original, size, size)?;
        let mut pieces: Vec<u32> = cases
            .iter()
            .filter(|c| c.size == size)
            .map(|c| c.piece)
            .collect();
        pieces.dedup();
        for piece in pieces {
            let group: Vec<Case> = cases
                .iter()
                .filter(|c| c.size == size && c.piece == piece)
                .copied()
                .collect();
            rows.extend(run_group(root.path(), &original, tracker.1, &group)?);
        }
        fs::remove_file(&original)?;
    }
    tracker.0.stop();
    print_table(&rows);
    Ok(())
}

/// The full matrix, or only its 64 MiB rows with `SHOAL_BENCH_QUICK=1`, filtered by the CLI labels.
fn selected_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for piece in [16 * KIB, 64 * KIB, MIB, 4 * MIB] {
        for owners in [1, 4, 16] {
            cases.push(Case {
                size: 64 * MIB,
                piece: piece as u32,
                owners,
            });
        }
    }
    for (piece, owners) in [(MIB, 1), (MIB, 4), (MIB, 16), (16 * KIB, 4)] {
        cases.push(Case {
            size: GIB,
            piece: piece as u32,
            owners,
        });
    }
    let quick = std::env::var("SHOAL_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    // `cargo bench` passes `--bench`; any other argument is a row label or label prefix.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    cases.retain(|c| {
        let name = case_label(c);
        (!quick || c.size == 64 * MIB)
            && (filters.is_empty()
                || filters
                    .iter()
                    .any(|f| name == *f || name.starts_with(&format!("{f}/"))))
    });
    cases
}

/// Runs the cases of one file size and piece size against one set of owners.
///
/// Owner `i` shares a copy named for every owner count `k > i`, so each case's
/// file has exactly its number of owners while the owners stay up for the group.
fn run_group(
    root: &Path,
    original: &Path,
    tracker: SocketAddr,
    group: &[Case],
) -> io::Result<Vec<Row>> {
    let most = group.iter().map(|c| c.owners).max().unwrap_or(0);
    let piece = group[0].piece;
    let mut owners = Vec::new();
    for i in 0..most {
        let dir = root.join(format!("owner-{i}"));
        fs::create_dir_all(&dir)?;
        let mut uploads = Vec::new();
        for case in group.iter().filter(|c| i < c.owners) {
            let name = file_name(case);
            fs::hard_link(original, dir.join(&name))?;
            uploads.push(name);
        }
        owners.push(start_owner(i, &dir, tracker, piece, uploads)?);
    }
    let mut rows = Vec::new();
    for case in group {
        // 120 s: big files are hashed before they are published.
        wait_for_owners(
            tracker,
            &file_name(case),
            case.owners,
            Duration::from_secs(120),
            Duration::from_millis(100),
        )?;
        rows.push(measure(root, original, tracker, *case)?);
    }
    for owner in owners {
        owner.stop();
    }
    for i in 0..most {
        fs::remove_dir_all(root.join(format!("owner-{i}")))?;
    }
    Ok(rows)
}

/// Measures one row: shoal, TCP, `cp` and `cp` + fsync, three times each, keeping the medians.
fn measure(root: &Path, original: &Path, tracker: SocketAddr, case: Case) -> io::Result<Row> {
    let copy = root.join("cp-copy");
    let name = file_name(&case);
    let (mut shoal, mut tcp, mut cp, mut cp_sync) = (vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        settle();
        tcp.push(rate(case.size, tcp_copy(case.size)?));
        settle();
        cp.push(rate(case.size, fs_copy(original, &copy, false)?));
        settle();
        cp_sync.push(rate(case.size, fs_copy(original, &copy, true)?));
        settle();
        shoal.push(rate(case.size, download(root, tracker, &name, case.size)?));
    }
    let row = Row {
        case,
        shoal: median(shoal),
        tcp: median(tcp),
        cp: median(cp),
        cp_sync: median(cp_sync),
    };
    eprintln!(
        "{:>12}: shoal {:7.1} MiB/s   tcp {:7.1}   cp {:7.1}   cp+fsync {:7.1}",
        case_label(&case),
        row.shoal,
        row.tcp,
        row.cp,
        row.cp_sync
    );
    Ok(row)
}

/// Downloads `name` with a fresh node and folder; the wall time from bind to exit.
fn download(root: &Path, tracker: SocketAddr, name: &str, size: u64) -> io::Result<Duration> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let id = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("downloader-{id}"));
    fs::create_dir_all(&dir)?;
    let mut config = NodeConfig::new(&format!("downloader-{id}"));
    config.tracker = tracker;
    config.dir = dir.clone();
    config.downloads = vec![name.to_owned()];
    config.exit_when_done = true;
    let started = Instant::now();
    let report = node::bind(config)?.run()?;
    let took = started.elapsed();
    let got = fs::metadata(dir.join(name)).map(|m| m.len()).ok();
    if report.completed != 1 || got != Some(size) {
        return Err(io::Error::other(format!(
            "download of {name} failed: {report:?}, {got:?} bytes of {size}"
        )));
    }
    fs::remove_dir_all(&dir)?;
    Ok(took)
}

/// Flushes every dirty page so no measurement pays for the previous one's writeback.
fn settle() {
    // SAFETY: sync(2) takes no argument and cannot fail.
    unsafe { libc::sync() };
}

/// The time to send `size` bytes over a loopback TCP connection with 1 MiB buffers.
fn tcp_copy(size: u64) -> io::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let started = Instant::now();
    let writer = thread::spawn(move || -> io::Result<()> {
        let mut stream = TcpStream::connect(addr)?;
        let buf = vec![0x5au8; CHUNK];
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            stream.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut stream, _) = listener.accept()?;
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    while got < size {
        match stream.read(&mut buf)? {
            0 => break,
            n => got += n as u64,
        }
    }
    let took = started.elapsed();
    writer.join().expect("tcp writer panicked")?;
    if got != size {
        return Err(io::Error::other("short TCP copy"));
    }
    Ok(took)
}

/// The time of `std::fs::copy` of `original` to `copy` (page cache warm), with an fsync if `sync`; the copy is then removed.
fn fs_copy(original: &Path, copy: &Path, sync: bool) -> io::Result<Duration> {
    let started = Instant::now();
    fs::copy(original, copy)?;
    if sync {
        File::open(copy)?.sync_all()?;
    }
    let took = started.elapsed();
    fs::remove_file(copy)?;
    Ok(took)
}

/// Where the bench's files live: `target/shoal-bench` (a real disk, not a tmpfs).
fn bench_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("shoal-bench");
    let _ = fs::create_dir_all(&dir);
    dir
}

/// The file name a case's owners share (one per owner count, so counts do not mix).
fn file_name(case: &Case) -> String {
    format!(
        "f-{}-{}-{}",
        label(case.size),
        label(u64::from(case.piece)),
        case.owners
    )
}

/// `size/piece/owners`, e.g. `64M/16K/4`.
fn case_label(case: &Case) -> String {
    format!(
        "{}/{}/{}",
        label(case.size),
        label(u64::from(case.piece)),
        case.owners
    )
}

/// A byte count as `16K`, `64M`, `1G`.
fn label(bytes: u64) -> String {
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{}G", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{}M", b / MIB),
        b if b >= KIB && b % KIB == 0 => format!("{}K", b / KIB),
        b => b.to_string(),
    }
}

/// MiB per second for `bytes` in `took`.
fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / MIB as f64 / took.as_secs_f64()
}

/// The median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints the rows as a markdown table with the ratios shoal/tcp, shoal/cp and shoal/(cp+fsync).
fn print_table(rows: &[Row]) {
    println!();
    println!("| file | piece | owners | shoal MiB/s | tcp MiB/s | cp MiB/s | cp+fsync MiB/s | shoal/tcp | shoal/cp | shoal/(cp+fsync) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} |",
            label(r.case.size),
            label(u64::from(r.case.piece)),
            r.case.owners,
            r.shoal,
            r.tcp,
            r.cp,
            r.cp_sync,
            r.shoal / r.tcp,
            r.shoal / r.cp,
            r.shoal / r.cp_sync
        );
    }
}
