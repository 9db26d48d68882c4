//! End-to-end transfer benchmark: a shoal download beside `cp` + `sync` and a plain loopback TCP copy.
//!
//! ```text
//! cargo bench --bench transfer                            # 1G/1M/4: 1 GiB in 1 MiB pieces from 4 owners
//! SHOAL_BENCH_QUICK=1 cargo bench --bench transfer        # 64M/1M/4
//! SHOAL_BENCH_RUNS=5 cargo bench --bench transfer         # more alternating runs (default 3)
//! cargo bench --bench transfer -- 1G/1M/4 64M/16K/4       # any rows, as SIZE/PIECE/OWNERS
//! ```
//!
//! Each row runs an in-process tracker and N in-process owners, then, after
//! writing and deleting a prewarm file larger than the data (the VM makes
//! first writes into fresh page-cache memory up to 10x slower at times),
//! alternates in one run: a plain TCP copy of the same bytes over loopback
//! (1 MiB buffers), `cp` of the file followed by `sync`, and a download by a
//! fresh `shoal-node` process (which fsyncs its file before the rename), timed
//! from spawn to exit. The downloader's peak RSS is its `VmHWM`, sampled every 5 ms. The ratios
//! of each alternating run are the figures to read: absolute times on a shared
//! machine drift. A row fails if any download fails or its bytes differ.

#[path = "../examples/support/mod.rs"]
mod support;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::{generate, start_owner, start_tracker, wait_for_owners, CHUNK};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One configuration.
#[derive(Clone, Copy, Debug)]
struct Case {
    size: u64,
    piece: u32,
    owners: usize,
}

/// One alternating run of a row: wall times and the downloader's peak RSS.
struct Run {
    tcp: Duration,
    cp_sync: Duration,
    shoal: Duration,
    rss_kib: u64,
}

fn main() -> io::Result<()> {
    shoal::logging::init(0, true);
    let cases = selected_cases()?;
    let runs = std::env::var("SHOAL_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(3)
        .clamp(1, 50);
    let root = tempfile::Builder::new()
        .prefix("shoal-bench-")
        .tempdir_in(bench_dir())?;
    let tracker = start_tracker()?;
    let mut table = Vec::new();
    for case in cases {
        let original = root.path().join("original");
        generate(&original, case.size, case.size)?;
        let runs = run_case(root.path(), &original, tracker.1, case, runs)?;
        fs::remove_file(&original)?;
        table.push((case, runs));
    }
    tracker.0.stop();
    print_table(&table);
    Ok(())
}

/// The rows named on the command line (`SIZE/PIECE/OWNERS`), else 1G/1M/4 (64M/1M/4 with `SHOAL_BENCH_QUICK=1`).
fn selected_cases() -> io::Result<Vec<Case>> {
    // `cargo bench` passes `--bench`; any other argument is a row label.
    let labels: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if labels.is_empty() {
        let quick = std::env::var("SHOAL_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
        let size = if quick { 64 * MIB } else { GIB };
        return Ok(vec![Case {
            size,
            piece: MIB as u32,
            owners: 4,
        }]);
    }
    labels.iter().map(|l| parse_case(l)).collect()
}

/// `64M/16K/4` → a case.
fn parse_case(label: &str) -> io::Result<Case> {
    let bad = || {
        io::Error::other(format!(
            "bad row {label:?}: want SIZE/PIECE/OWNERS, e.g. 1G/1M/4"
        ))
    };
    let parts: Vec<&str> = label.split('/').collect();
    let [size, piece, owners] = parts[..] else {
        return Err(bad());
    };
    let size = parse_bytes(size).ok_or_else(bad)?;
    let piece = parse_bytes(piece)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p >= 16 * KIB as u32)
        .ok_or_else(bad)?;
    let owners = owners
        .parse::<usize>()
        .ok()
        .filter(|&n| (1..=64).contains(&n))
        .ok_or_else(bad)?;
    Ok(Case {
        size,
        piece,
        owners,
    })
}

/// `16K`, `64M`, `1G` or a plain byte count.
fn parse_bytes(s: &str) -> Option<u64> {
    let (digits, unit) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], KIB),
        b'M' | b'm' => (&s[..s.len() - 1], MIB),
        b'G' | b'g' => (&s[..s.len() - 1], GIB),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// Starts the owners of one case, prewarms, and measures the alternating runs.
fn run_case(
    root: &Path,
    original: &Path,
    tracker: SocketAddr,
    case: Case,
    runs: usize,
) -> io::Result<Vec<Run>> {
    let name = format!("f-{}", case_label(&case).replace('/', "-"));
    // Every link first: a new link changes the inode's ctime, which voids hash caches.
    let mut dirs = Vec::new();
    for i in 0..case.owners {
        let dir = root.join(format!("owner-{i}"));
        fs::create_dir_all(&dir)?;
        fs::hard_link(original, dir.join(&name))?;
        dirs.push(dir);
    }
    let mut owners = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        owners.push(start_owner(
            i,
            dir,
            tracker,
            case.piece,
            vec![name.clone()],
        )?);
    }
    // 300 s: every owner hashes the file before publishing it.
    wait_for_owners(
        tracker,
        &name,
        case.owners,
        Duration::from_secs(300),
        Duration::from_millis(100),
    )?;
    prewarm(root, case.size + case.size / 4 + 64 * MIB)?;
    let copy = root.join("cp-copy");
    let mut results = Vec::new();
    for i in 0..runs {
        settle();
        let tcp = tcp_copy(case.size)?;
        settle();
        let cp_sync = cp_then_sync(original, &copy)?;
        settle();
        let (shoal, rss_kib) = download(root, tracker, &name, original, case.size)?;
        eprintln!(
            "{} run {}: tcp {:.2} s, cp+sync {:.2} s, shoal {:.2} s (peak RSS {:.1} MiB): shoal/(cp+sync) {:.2}, shoal/tcp {:.2}",
            case_label(&case),
            i + 1,
            tcp.as_secs_f64(),
            cp_sync.as_secs_f64(),
            shoal.as_secs_f64(),
            rss_kib as f64 / 1024.0,
            speed_ratio(shoal, cp_sync),
            speed_ratio(shoal, tcp),
        );
        results.push(Run {
            tcp,
            cp_sync,
            shoal,
            rss_kib,
        });
    }
    for owner in owners {
        owner.stop();
    }
    for dir in dirs {
        fs::remove_dir_all(dir)?;
    }
    Ok(results)
}

/// Writes and deletes `bytes` of zeros, so the measured runs do not pay the VM's first touch of fresh memory.
fn prewarm(root: &Path, bytes: u64) -> io::Result<()> {
    let path = root.join("prewarm");
    let mut f = File::create(&path)?;
    let buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    fs::remove_file(&path)
}

/// Downloads `name` with a fresh `shoal-node` process and folder: wall time from spawn to exit and peak RSS (KiB).
fn download(
    root: &Path,
    tracker: SocketAddr,
    name: &str,
    original: &Path,
    size: u64,
) -> io::Result<(Duration, u64)> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let id = RUNS.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("downloader-{id}"));
    fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal-node"));
    cmd.args(["-n", &format!("downloader-{id}"), "-p", "0", "--tracker"])
        .arg(tracker.to_string())
        .arg("--dir")
        .arg(&dir)
        .args(["--download", name, "--exit-when-done", "-q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let started = Instant::now();
    let child = cmd.spawn()?;
    let (ok, rss_kib) = wait_with_rss(child)?;
    let took = started.elapsed();
    let got = dir.join(name);
    if !ok || fs::metadata(&got).map(|m| m.len()).ok() != Some(size) {
        return Err(io::Error::other(format!("download of {name} failed")));
    }
    if !support::same_bytes(original, &got)? {
        return Err(io::Error::other(format!("{name}: downloaded bytes differ")));
    }
    fs::remove_dir_all(&dir)?;
    Ok((took, rss_kib))
}

/// Waits for `child`, sampling its `VmHWM` (peak RSS) every 5 ms; (exited with 0, peak RSS in KiB).
///
/// Not `wait4`'s `ru_maxrss`: a child spawned with vfork/posix_spawn starts its
/// exec with the parent's high-water mark, so that figure is the bench's own.
fn wait_with_rss(mut child: std::process::Child) -> io::Result<(bool, u64)> {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    // Bounded: 10 minutes of 5 ms samples.
    for _ in 0..120_000 {
        if let Some(status) = child.try_wait()? {
            return Ok((status.success(), peak));
        }
        if let Ok(text) = fs::read_to_string(&status_file) {
            let hwm = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(io::Error::other("the downloader ran for over 10 minutes"))
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

/// The time of `cp original copy` followed by `sync` (what a download's fsync compares with); the copy is then removed.
fn cp_then_sync(original: &Path, copy: &Path) -> io::Result<Duration> {
    let started = Instant::now();
    let status = Command::new("cp").arg(original).arg(copy).status()?;
    settle();
    let took = started.elapsed();
    if !status.success() {
        return Err(io::Error::other(format!("cp failed: {status}")));
    }
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

/// How many times faster shoal was than `other` (above 1: shoal took less time).
fn speed_ratio(shoal: Duration, other: Duration) -> f64 {
    other.as_secs_f64() / shoal.as_secs_f64().max(1e-9)
}

/// The median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Prints each row's median times, the medians of the per-run ratios and the highest peak RSS, as markdown.
fn print_table(rows: &[(Case, Vec<Run>)]) {
    println!();
    println!("| row | runs | shoal s | cp+sync s | tcp s | shoal/(cp+sync) speed | shoal/tcp speed | downloader peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (case, runs) in rows {
        let secs =
            |f: fn(&Run) -> Duration| median(runs.iter().map(|r| f(r).as_secs_f64()).collect());
        let vs_cp = median(
            runs.iter()
                .map(|r| speed_ratio(r.shoal, r.cp_sync))
                .collect(),
        );
        let vs_tcp = median(runs.iter().map(|r| speed_ratio(r.shoal, r.tcp)).collect());
        let rss = runs.iter().map(|r| r.rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} |",
            case_label(case),
            runs.len(),
            secs(|r| r.shoal),
            secs(|r| r.cp_sync),
            secs(|r| r.tcp),
            vs_cp,
            vs_tcp,
            rss
        );
    }
}
