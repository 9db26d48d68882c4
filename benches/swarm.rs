//! The swarm against its physical bound, with real processes on loopback.
//!
//! Every node (the one owner and every downloader) is capped at the same upload
//! rate R. One owner must push each byte at least once, so N downloaders of a
//! file of F bytes cannot all finish before F/R; the crowd's own upload is what
//! can bring them close to it. Completion times are printed as multiples of F/R,
//! with the bytes the owner wrote to its sockets (ideal: the file once) and its
//! upload rate against R.
//!
//! `cargo bench --bench swarm` runs the 16-downloader crowd (64 MiB, 8 MiB/s) and
//! the 2-downloader case (20 MiB/s). `SHOAL_SWARM=N:SIZE_MIB:RATE_MIB` runs one crowd;
//! `SHOAL_SWARM_PIECE=256K` makes the owner share the file in pieces of that size (default 1M).

// The swarm runs real processes; of the shared helpers it needs only the file generator.
#[allow(dead_code)]
#[path = "../examples/support/mod.rs"]
mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const NODE: &str = env!("CARGO_BIN_EXE_shoal-node");
const TRACKER: &str = env!("CARGO_BIN_EXE_shoal-tracker");
/// Bound on any wait, so a broken run ends instead of hanging.
const TIMEOUT: Duration = Duration::from_secs(300);

/// A child process killed (by PID) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` and returns it with the first stdout line that starts with `prefix`.
fn spawn_until(
    program: &str,
    args: &[String],
    prefix: &str,
) -> (Proc, String, mpsc::Receiver<String>) {
    let mut proc = Proc(
        Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    // Both streams feed one channel: results on stdout, the per-owner byte log on stderr.
    let (tx, rx) = mpsc::channel();
    let stdout = proc.0.stdout.take().expect("stdout");
    let stderr = proc.0.stderr.take().expect("stderr");
    let tx2 = tx.clone();
    thread::spawn(move || forward(stdout, tx));
    thread::spawn(move || forward(stderr, tx2));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).expect("process printed its line");
        if line.starts_with(prefix) {
            return (proc, line, rx);
        }
    }
}

fn forward(stream: impl std::io::Read, tx: mpsc::Sender<String>) {
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// The bytes `owner` delivered, from a downloader's `F: bytes by owner: a 123, b 456` log line
/// (`None` for any other line).
fn bytes_from(line: &str, owner: &str) -> Option<u64> {
    let list = &line[line.find("bytes by owner: ")? + "bytes by owner: ".len()..];
    // A downloader the owner sent nothing does not list it.
    Some(
        list.split(", ")
            .find_map(|entry| {
                let (name, bytes) = entry.rsplit_once(' ')?;
                (name == owner).then(|| bytes.parse().ok())?
            })
            .unwrap_or(0),
    )
}

fn node_args(name: &str, tracker: &str, dir: &Path, rate_mib: u64) -> Vec<String> {
    [
        "-n",
        name,
        "-p",
        "0",
        "--tracker",
        tracker,
        "--dir",
        &dir.display().to_string(),
        "--max-upload-rate",
        &format!("{rate_mib}M"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One crowd: each downloader's completion time in seconds, sorted, and the bytes the owner delivered.
fn crowd(downloaders: usize, size_mib: u64, rate_mib: u64) -> (Vec<f64>, u64) {
    let root = tempfile::tempdir().expect("tempdir");
    let (tracker, line, _) = spawn_until(
        TRACKER,
        &["--listen".into(), "127.0.0.1:0".into(), "-q".into()],
        "tracker listening on ",
    );
    let tracker_addr = line["tracker listening on ".len()..].trim().to_string();
    let owner_dir = root.path().join("owner");
    fs::create_dir_all(&owner_dir).expect("dir");
    let data = owner_dir.join("f.bin");
    support::generate(&data, size_mib << 20, 0).expect("write the file");
    let mut args = node_args("owner", &tracker_addr, &owner_dir, rate_mib);
    args.extend(["--upload".into(), "f.bin".into()]);
    if let Ok(piece) = std::env::var("SHOAL_SWARM_PIECE") {
        args.extend(["--piece-size".into(), piece]);
    }
    let (owner, _, _) = spawn_until(NODE, &args, "sharing f.bin");

    let start = Instant::now();
    let (done_tx, done_rx) = mpsc::channel();
    let mut procs = Vec::new();
    for i in 0..downloaders {
        let dir = root.path().join(format!("d{i}"));
        fs::create_dir_all(&dir).expect("dir");
        let mut args = node_args(&format!("d{i}"), &tracker_addr, &dir, rate_mib);
        // `-v`: the per-owner byte count is an info line, below the default level.
        args.extend(["-v".into(), "--download".into(), "f.bin".into()]);
        let (proc, _, lines) = spawn_until(NODE, &args, "node ");
        let tx = done_tx.clone();
        thread::spawn(move || {
            // The result (stdout) and the byte count (stderr) come through two pipes: either
            // may arrive first.
            let (mut done, mut from_owner) = (None, None);
            for line in lines.iter() {
                if line.starts_with("downloaded f.bin") {
                    done = Some(start.elapsed().as_secs_f64());
                }
                from_owner = from_owner.or_else(|| bytes_from(&line, "owner"));
                if let (Some(at), Some(from_owner)) = (done, from_owner) {
                    let _ = tx.send((at, from_owner));
                    return;
                }
            }
        });
        procs.push(proc);
    }
    let (mut times, mut sent) = (Vec::new(), 0);
    for _ in 0..downloaders {
        let left = TIMEOUT.saturating_sub(start.elapsed());
        match done_rx.recv_timeout(left) {
            Ok((t, from_owner)) => {
                times.push(t);
                sent += from_owner;
            }
            Err(_) => break,
        }
    }
    let want = fs::read(&data).expect("read");
    for i in 0..downloaders {
        let got = fs::read(root.path().join(format!("d{i}/f.bin"))).unwrap_or_default();
        assert!(got == want, "downloader d{i} has a different file");
    }
    drop(procs);
    drop(owner);
    drop(tracker);
    times.sort_by(f64::total_cmp);
    (times, sent)
}

fn report(downloaders: usize, size_mib: u64, rate_mib: u64) {
    let bound = size_mib as f64 / rate_mib as f64;
    let (times, sent) = crowd(downloaders, size_mib, rate_mib);
    let last = times.last().copied().unwrap_or(f64::NAN);
    let multiples: Vec<String> = times.iter().map(|t| format!("{:.2}", t / bound)).collect();
    println!(
        "{downloaders} downloaders, {size_mib} MiB, every node at {rate_mib} MiB/s: F/R = {bound:.1} s; \
         last done at {last:.2} s = {:.2}x F/R; finished: {}/{downloaders}",
        last / bound,
        times.len()
    );
    println!("  completion times / (F/R): {}", multiples.join(" "));
    println!(
        "  the owner delivered {:.1} MiB = {:.2}x the file, at {:.2}x R until the last completion",
        sent as f64 / f64::from(1 << 20),
        sent as f64 / (size_mib << 20) as f64,
        sent as f64 / f64::from(1 << 20) / last / rate_mib as f64
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    if let Ok(spec) = std::env::var("SHOAL_SWARM") {
        let parts: Vec<u64> = spec.split(':').filter_map(|p| p.parse().ok()).collect();
        if let [n, size, rate] = parts[..] {
            report(n as usize, size, rate);
            return;
        }
        eprintln!("SHOAL_SWARM=N:SIZE_MIB:RATE_MIB, e.g. 16:64:8");
        return;
    }
    report(16, 64, 8);
    report(1, 64, 20);
    report(2, 64, 20);
}
