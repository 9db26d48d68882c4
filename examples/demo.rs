//! The README's "run it": a tracker, N owners and a downloader on loopback, one generated file.
//!
//! ```text
//! cargo run --release --example demo [-- --size 256M --owners 4 --piece-size 1M]
//! cargo build --release && cargo run --release --example demo -- --size 1G --spawn-downloader
//! ```
//!
//! Everything runs in this process (one thread per reactor) unless
//! `--spawn-downloader` is given: then the downloader is the `shoal-node`
//! binary, run under `/usr/bin/time -v` when available so its peak memory is
//! printed. The downloader prints one speed figure, from the request to the
//! file verified, flushed to disk and renamed; the demo then says whether the
//! downloaded bytes equal the original, and exits non-zero if they do not.

mod support;

use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use shoal::node::rate::parse_size;
use shoal::node::{self, NodeConfig};
use shoal::wire;
use support::{generate, start_owner, start_tracker, wait_for_owners};

/// Name of the generated file.
const FILE: &str = "demo.bin";

/// Share a generated file from N owners and download it, all on loopback.
#[derive(Parser, Debug)]
struct Args {
    /// File size (K/M/G = KiB/MiB/GiB).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    size: u64,
    /// Number of owners sharing the file.
    #[arg(long, default_value_t = 4)]
    owners: usize,
    /// Piece size the owners publish the file with (16K to 64M).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    piece_size: u64,
    /// Run the downloader as a separate `shoal-node` process (under `/usr/bin/time -v` if present).
    #[arg(long)]
    spawn_downloader: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    shoal::logging::init(0, false);
    match demo(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the whole demo; `Ok(false)` when the download failed or differs.
fn demo(args: &Args) -> io::Result<bool> {
    let piece_size = u32::try_from(args.piece_size)
        .ok()
        .filter(|p| (wire::MIN_PIECE_SIZE..=wire::MAX_PIECE_SIZE).contains(p))
        .ok_or_else(|| io::Error::other("--piece-size must be between 16K and 64M"))?;
    let owners = args.owners.max(1);
    let root = tempfile::Builder::new().prefix("shoal-demo-").tempdir()?;
    let original = root.path().join("owner-0").join(FILE);
    fs::create_dir_all(original.parent().unwrap())?;
    println!(
        "generating {FILE} ({})",
        shoal::node::progress::size(args.size)
    );
    generate(&original, args.size, 0)?;

    let (tracker, tracker_addr) = start_tracker()?;
    println!("tracker on {tracker_addr}");

    let mut nodes = Vec::new();
    for i in 0..owners {
        let dir = root.path().join(format!("owner-{i}"));
        if i > 0 {
            fs::create_dir_all(&dir)?;
            fs::hard_link(&original, dir.join(FILE))?;
        }
        nodes.push(start_owner(
            i,
            &dir,
            tracker_addr,
            piece_size,
            vec![FILE.to_owned()],
        )?);
    }
    wait_for_owners(
        tracker_addr,
        FILE,
        owners,
        Duration::from_secs(60),
        Duration::from_millis(200),
    )?;
    println!("{owners} owners publish {FILE}; downloading");

    let dl_dir = root.path().join("downloader");
    fs::create_dir_all(&dl_dir)?;
    // The node prints the one speed figure (`downloaded demo.bin (N bytes in T s = R MiB/s, from
    // the request to the file verified, flushed to disk and renamed; ...)`): timing it again here
    // would add the node's start-up and give a second, different figure.
    let ok = if args.spawn_downloader {
        spawn_downloader(tracker_addr, &dl_dir)?
    } else {
        download_in_process(tracker_addr, &dl_dir)?
    };

    let identical = ok && support::same_bytes(&original, &dl_dir.join(FILE))?;
    if ok {
        println!(
            "from {owners} owners on loopback, pieces of {} KiB, everything on this machine",
            args.piece_size >> 10
        );
    }
    println!("bytes identical: {}", if identical { "yes" } else { "NO" });
    for node in nodes {
        node.stop();
    }
    tracker.stop();
    root.close()?;
    Ok(identical)
}

/// Downloads the file with an in-process node showing progress; true if it completed.
fn download_in_process(tracker: SocketAddr, dir: &Path) -> io::Result<bool> {
    let mut config = NodeConfig::new("downloader");
    config.tracker = tracker;
    config.dir = dir.to_owned();
    config.downloads = vec![FILE.to_owned()];
    config.exit_when_done = true;
    config.progress = true;
    let report = node::bind(config)?.run()?;
    Ok(report.completed == 1 && report.failed == 0)
}

/// Downloads the file with the `shoal-node` binary, under `/usr/bin/time -v` if present.
fn spawn_downloader(tracker: SocketAddr, dir: &Path) -> io::Result<bool> {
    let binary = node_binary()?;
    let timed = Path::new("/usr/bin/time").exists();
    let mut cmd = if timed {
        let mut c = Command::new("/usr/bin/time");
        c.arg("-v").arg(&binary);
        c
    } else {
        println!("/usr/bin/time not found (apt-get install time): no peak memory figure");
        Command::new(&binary)
    };
    cmd.args(["-n", "downloader", "-p", "0", "--tracker"])
        .arg(tracker.to_string())
        .arg("--dir")
        .arg(dir)
        .args(["--download", FILE, "--exit-when-done", "-q"]);
    let output = cmd.output()?;
    io::stdout().write_all(&output.stdout)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let rss = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"));
    match rss.map(|kb| kb.trim().parse::<f64>()) {
        Some(Ok(kb)) => println!(
            "downloader process peak RSS: {:.1} MiB ({kb} kB)",
            kb / 1024.0
        ),
        _ => {
            for line in stderr.lines().filter(|l| !l.starts_with('\t')) {
                eprintln!("shoal-node: {line}");
            }
        }
    }
    Ok(output.status.success())
}

/// The `shoal-node` binary beside this example's build (`target/PROFILE/shoal-node`).
fn node_binary() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| io::Error::other("cannot locate the target directory"))?;
    let binary = profile_dir.join(format!("shoal-node{}", std::env::consts::EXE_SUFFIX));
    if binary.exists() {
        Ok(binary)
    } else {
        Err(io::Error::other(format!(
            "{} not found: run `cargo build --release` first",
            binary.display()
        )))
    }
}
