//! Harness for the end-to-end tests: real `shoal-tracker` and `shoal-node`
//! processes on loopback, port 0 everywhere.
//!
//! Every wait is for a line the process prints; the timeouts are only bounds
//! on failure (generous, the machines are shared), never asserted timings.

// Each test crate compiles this module on its own and uses only a subset of it.
#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bound on every wait for a line or an exit.
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub const NODE: &str = env!("CARGO_BIN_EXE_shoal-node");
pub const TRACKER: &str = env!("CARGO_BIN_EXE_shoal-tracker");

/// Lines of one output stream, appended by a reader thread.
#[derive(Default)]
struct Lines {
    state: Mutex<(Vec<String>, bool)>, // (lines, stream closed)
    changed: Condvar,
}

impl Lines {
    fn spawn_reader(stream: impl Read + Send + 'static) -> Arc<Lines> {
        let lines = Arc::new(Lines::default());
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        let mut state = sink.state.lock().unwrap();
                        state.0.push(line);
                        sink.changed.notify_all();
                    }
                }
            }
            sink.state.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        lines
    }

    fn snapshot(&self) -> Vec<String> {
        self.state.lock().unwrap().0.clone()
    }

    fn len(&self) -> usize {
        self.state.lock().unwrap().0.len()
    }

    /// First line at index `from` or later that satisfies `pred`.
    fn wait(
        &self,
        from: usize,
        pred: &mut dyn FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut next = from;
        let mut state = self.state.lock().unwrap();
        loop {
            while next < state.0.len() {
                if pred(&state.0[next]) {
                    return Ok(state.0[next].clone());
                }
                next += 1;
            }
            if state.1 {
                return Err("stream closed".into());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("no such line within {timeout:?}"));
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }
}

/// A child process with piped standard streams, killed and reaped on drop.
pub struct Proc {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Arc<Lines>,
    stderr: Arc<Lines>,
}

/// Starts `program` with all three standard streams piped.
fn spawn_piped(program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"))
}

impl Proc {
    pub fn spawn(label: &str, program: &str, args: &[String]) -> Proc {
        let mut child = spawn_piped(program, args);
        let stdout = Lines::spawn_reader(child.stdout.take().unwrap());
        let stderr = Lines::spawn_reader(child.stderr.take().unwrap());
        Proc {
            label: label.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes one command line on the process's standard input.
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| {
                panic!("{}: cannot send {cmd:?}: {e}\n{}", self.label, self.dump())
            });
    }

    /// Closes standard input (end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.snapshot()
    }

    /// Number of stdout lines so far: a mark for [`Proc::wait_stdout_from`].
    pub fn stdout_mark(&self) -> usize {
        self.stdout.len()
    }

    /// Number of stderr lines so far: a mark for [`Proc::wait_stderr_from`].
    pub fn stderr_mark(&self) -> usize {
        self.stderr.len()
    }

    pub fn wait_stdout(&self, pred: impl FnMut(&str) -> bool) -> String {
        self.wait_stdout_from(0, pred)
    }

    pub fn wait_stderr(&self, pred: impl FnMut(&str) -> bool) -> String {
        self.wait_stderr_from(0, pred)
    }

    pub fn wait_stdout_from(&self, mark: usize, mut pred: impl FnMut(&str) -> bool) -> String {
        self.stdout
            .wait(mark, &mut pred, TIMEOUT)
            .unwrap_or_else(|why| {
                panic!("{}: waiting on stdout: {why}\n{}", self.label, self.dump())
            })
    }

    pub fn wait_stderr_from(&self, mark: usize, mut pred: impl FnMut(&str) -> bool) -> String {
        self.stderr
            .wait(mark, &mut pred, TIMEOUT)
            .unwrap_or_else(|why| {
                panic!("{}: waiting on stderr: {why}\n{}", self.label, self.dump())
            })
    }

    /// Everything collected so far, for failure messages.
    pub fn dump(&self) -> String {
        format!(
            "---- {} stdout ----\n{}\n---- {} stderr ----\n{}\n",
            self.label,
            self.stdout.snapshot().join("\n"),
            self.label,
            self.stderr.snapshot().join("\n"),
        )
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM to this child's PID: asks it to leave cleanly.
    pub fn sigterm(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's PID; it is not reaped yet, so
        // the PID cannot have been reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain what the process printed last.
                let _ = self
                    .stdout
                    .wait(usize::MAX, &mut |_| false, Duration::from_secs(5));
                let _ = self
                    .stderr
                    .wait(usize::MAX, &mut |_| false, Duration::from_secs(5));
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: still running after {TIMEOUT:?}\n{}",
                    self.label,
                    self.dump()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // `Child::kill` signals this child's own PID only.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `shoal-tracker --listen 127.0.0.1:0 -v`.
pub struct Tracker {
    pub proc: Proc,
    pub addr: String,
}

impl Tracker {
    pub fn start() -> Tracker {
        Tracker::start_with(&[])
    }

    /// With extra arguments, e.g. `["--grace", "0.5"]`.
    pub fn start_with(extra: &[&str]) -> Tracker {
        Tracker::start_on("127.0.0.1:0", extra)
    }

    /// Listening on `listen` (to restart one on the address nodes know).
    pub fn start_on(listen: &str, extra: &[&str]) -> Tracker {
        let mut args = vec!["-v"];
        args.extend_from_slice(extra);
        Tracker::spawn(listen, &args)
    }

    /// Without `-v`: for tests whose owner lists are too long to log at every change.
    pub fn start_quiet(extra: &[&str]) -> Tracker {
        Tracker::spawn("127.0.0.1:0", extra)
    }

    fn spawn(listen: &str, extra: &[&str]) -> Tracker {
        let mut args: Vec<String> = vec!["--listen".into(), listen.into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn("tracker", TRACKER, &args);
        let line = proc.wait_stdout(|l| l.starts_with("tracker listening on "));
        let addr = line["tracker listening on ".len()..].trim().to_string();
        Tracker { proc, addr }
    }

    /// Waits for the tracker's log to list exactly `names` as owners of
    /// `file` (any order), complete owners or partial, as `partial` says.
    /// Returns that line.
    pub fn wait_owners(&self, file: &str, names: &[&str]) -> String {
        self.wait_owners_from(0, file, names)
    }

    pub fn wait_owners_from(&self, mark: usize, file: &str, names: &[&str]) -> String {
        let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        want.sort();
        self.proc.wait_stderr_from(mark, |l| {
            owner_list(l, file).is_some_and(|mut got| {
                got.sort();
                got == want
            })
        })
    }
}

/// The owners named on a tracker line `owners of FILE: [a@ADDR root R, ...]`,
/// or None if the line is not about `file`.
pub fn owner_list(line: &str, file: &str) -> Option<Vec<String>> {
    let tag = format!("owners of {file}: [");
    let start = line.find(&tag)? + tag.len();
    let inner = line[start..].strip_suffix(']')?;
    Some(
        inner
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(|entry| entry.split('@').next().unwrap().to_string())
            .collect(),
    )
}

/// A `shoal-node -n NAME -p 0 --tracker ADDR --dir DIR ...`.
pub struct Node {
    pub proc: Proc,
    pub name: String,
    /// Where it listens for peers.
    pub addr: String,
    pub dir: PathBuf,
}

impl Node {
    /// Starts a node; `extra` are further arguments (`--upload f`, ...).
    pub fn start(name: &str, tracker: &Tracker, dir: &Path, extra: &[&str]) -> Node {
        let mut args = node_args(name, &tracker.addr, dir);
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(&format!("node {name}"), NODE, &args);
        let prefix = format!("node {name} listening on ");
        let line = proc.wait_stdout(|l| l.starts_with(&prefix));
        let addr = line[prefix.len()..].trim().to_string();
        Node {
            proc,
            name: name.to_string(),
            addr,
            dir: dir.to_path_buf(),
        }
    }

    /// Starts a node that downloads `file` and exits when done (`--download FILE --exit-when-done`).
    pub fn start_download(name: &str, tracker: &Tracker, dir: &Path, file: &str) -> Node {
        Node::start(
            name,
            tracker,
            dir,
            &["--download", file, "--exit-when-done"],
        )
    }

    pub fn send(&mut self, cmd: &str) {
        self.proc.send(cmd);
    }

    /// Waits for `sharing FILE (...)` on stdout.
    pub fn wait_sharing(&self, file: &str) -> String {
        let prefix = format!("sharing {file} (");
        self.proc.wait_stdout(|l| l.starts_with(&prefix))
    }

    /// Waits for `downloaded FILE (...)` on stdout.
    pub fn wait_downloaded(&self, file: &str) -> String {
        let prefix = format!("downloaded {file} (");
        self.proc.wait_stdout(|l| l.starts_with(&prefix))
    }
}

/// `-n NAME -p 0 --tracker TRACKER --dir DIR`: the arguments every test node starts with.
pub fn node_args(name: &str, tracker: &str, dir: &Path) -> Vec<String> {
    vec![
        "-n".into(),
        name.into(),
        "-p".into(),
        "0".into(),
        "--tracker".into(),
        tracker.to_string(),
        "--dir".into(),
        dir.display().to_string(),
    ]
}

/// Starts an owner of `file` holding `data` in a fresh folder, with extra arguments; waits until it shares it.
pub fn start_owner(
    tracker: &Tracker,
    name: &str,
    file: &str,
    data: &[u8],
    extra: &[&str],
) -> (Node, tempfile::TempDir) {
    let dir = tempdir();
    put_file(dir.path(), file, data);
    let mut args = vec!["--upload", file];
    args.extend_from_slice(extra);
    let node = Node::start(name, tracker, dir.path(), &args);
    node.wait_sharing(file);
    (node, dir)
}

/// Downloads `file` into a fresh folder with `--exit-when-done`; asserts the node exits with status 0.
pub fn download_and_exit(tracker: &Tracker, name: &str, file: &str) -> (Node, tempfile::TempDir) {
    let dir = tempdir();
    let mut down = Node::start_download(name, tracker, dir.path(), file);
    let status = down.proc.wait_exit();
    assert!(status.success(), "{status:?}\n{}", down.proc.dump());
    (down, dir)
}

/// Waits until the tracker lists `name` among the owners of `file` as a partial owner.
pub fn wait_partial(tracker: &Tracker, mark: usize, file: &str, name: &str, dir: &Path) {
    tracker.proc.wait_stderr_from(mark, |l| {
        l.contains(&format!("{name}@"))
            && l.contains("(partial)")
            && owner_list(l, file).is_some_and(|o| o.iter().any(|n| n == name))
    });
    // A download is listed from the moment its store exists: wait for a verified piece too.
    wait_holding(dir);
}

/// Waits (bounded) until a download in `dir` has recorded a verified piece in its state file.
pub fn wait_holding(dir: &Path) {
    // The state file: a 56-byte header, then one byte per piece, 1 = verified.
    const STATE_HEADER_LEN: usize = 56;
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        let holds = list_dir(dir)
            .iter()
            .filter(|n| n.ends_with(".shoal-state"))
            .filter_map(|n| std::fs::read(dir.join(n)).ok())
            .any(|bytes| bytes.iter().skip(STATE_HEADER_LEN).any(|&b| b == 1));
        if holds {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("no verified piece recorded in {} in time", dir.display());
}

/// The number after `word ` in `line` (e.g. `fetched 123 bytes` of a `downloaded` line).
pub fn number_after(line: &str, word: &str) -> u64 {
    let tag = format!("{word} ");
    let at = line
        .find(&tag)
        .unwrap_or_else(|| panic!("no {word:?} in {line}"));
    line[at + tag.len()..]
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {line}")) as u64
}

/// Seconds of a `downloaded F (N bytes in T s, ...)` line.
pub fn seconds_of(downloaded: &str) -> f64 {
    let at = downloaded.find(" bytes in ").expect(downloaded) + " bytes in ".len();
    downloaded[at..]
        .split(' ')
        .next()
        .and_then(|t| t.parse().ok())
        .expect(downloaded)
}

/// No temporary download files (`.NAME.*.shoal-part`, `.shoal-state`) left (the node's
/// secret, `storage::SECRET_FILE`, is no temporary).
pub fn assert_no_temporaries(dir: &Path) {
    let hidden: Vec<String> = list_dir(dir)
        .into_iter()
        .filter(|n| n.starts_with('.') && n != shoal::storage::SECRET_FILE)
        .collect();
    assert!(
        hidden.is_empty(),
        "{}: left behind {hidden:?}",
        dir.display()
    );
}

/// A fresh temporary folder.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shoal-test")
        .tempdir()
        .unwrap()
}

/// `len` pseudo-random bytes, different on every call (splitmix64).
pub fn random_bytes(len: usize) -> Vec<u8> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut state = nanos
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` as `dir/name`.
pub fn put_file(dir: &Path, name: &str, data: &[u8]) {
    fs::write(dir.join(name), data).unwrap();
}

/// Asserts `dir/name` holds exactly `want` (without printing megabytes).
pub fn assert_same_file(dir: &Path, name: &str, want: &[u8]) {
    let path = dir.join(name);
    let got = fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert_eq!(got.len(), want.len(), "{}: wrong size", path.display());
    if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{}: differs from the original at byte {at}", path.display());
    }
}

/// The names in `dir`, sorted, but the node secret every folder a node ran in holds.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != shoal::storage::SECRET_FILE)
        .collect();
    names.sort();
    names
}

// ---- hostile peers (tests/attacks.rs) -------------------------------------------------

/// The full root hash (64 hex digits) of a `sharing F (N bytes, root HEX)` line.
pub fn root_of(sharing: &str) -> String {
    let at = sharing.find("root ").expect(sharing) + "root ".len();
    let hex: String = sharing[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    assert_eq!(hex.len(), 64, "no full root in {sharing}");
    hex
}

/// 64 hex digits → the root's bytes.
pub fn root_bytes(hex: &str) -> [u8; 32] {
    let mut root = [0u8; 32];
    for (i, b) in root.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect(hex);
    }
    root
}

/// Announces to the tracker at `tracker` that a node `node_name`, listening on `port`,
/// owns `file` as `info` — as a hostile program can, speaking the wire by hand. The
/// announcement lasts while the returned connection stays open. Every test that fakes an
/// owner goes through here, so a change of the tracker handshake is made in one place.
pub fn fake_announce(
    tracker: &str,
    node_name: &str,
    port: u16,
    file: &str,
    info: shoal::wire::FileInfo,
) -> std::net::TcpStream {
    use shoal::wire::{encode, Message, NodeToTracker};
    let mut stream = std::net::TcpStream::connect(tracker).expect("tracker reachable");
    let mut out = Vec::new();
    // Each fake node has a secret of its own, as a real one would.
    let hello = NodeToTracker::Hello {
        node_name,
        listen_port: port,
        secret: *blake3::hash(node_name.as_bytes()).as_bytes(),
    };
    encode(&Message::NodeToTracker(hello), &mut out).unwrap();
    let have = NodeToTracker::Have {
        name: file,
        info,
        complete: true,
    };
    encode(&Message::NodeToTracker(have), &mut out).unwrap();
    stream.write_all(&out).unwrap();
    stream
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("process alive");
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad line {line:?}"))
}

impl Proc {
    /// Like [`Proc::spawn`], but standard output is read up to its first line and then
    /// closed: everything the process prints later goes to a pipe nobody reads (`| head -1`).
    pub fn spawn_stdout_closed(label: &str, program: &str, args: &[String]) -> (Proc, String) {
        let mut child = spawn_piped(program, args);
        let mut first = String::new();
        {
            let mut reader = BufReader::new(child.stdout.take().unwrap());
            reader.read_line(&mut first).unwrap();
        }
        let stderr = Lines::spawn_reader(child.stderr.take().unwrap());
        let stdout = Arc::new(Lines::default());
        stdout.state.lock().unwrap().1 = true;
        let proc = Proc {
            label: label.to_string(),
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
        };
        (proc, first.trim_end().to_string())
    }
}
