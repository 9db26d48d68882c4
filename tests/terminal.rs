//! What a person at a terminal sees: a node run on a pseudo-terminal (its standard output and
//! error are the terminal; commands come on a pipe), the screen read back with ANSI escapes
//! stripped. A progress bar with percentage, rate and owners; no bar for a download that fails
//! before there is anything to fetch; `status` in plain words; short log times, and full ones
//! with `-v`.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_same_file, node_args, random_bytes, start_owner, tempdir, Tracker, NODE, TIMEOUT,
};

/// Most bytes of screen output kept, so a runaway child cannot exhaust memory.
const MAX_SCREEN: usize = 16 << 20;

/// Everything the terminal received, appended by a reader thread; `true` once the terminal closed.
#[derive(Default)]
struct Screen {
    state: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
}

/// A process whose standard output and error are a pseudo-terminal; killed by PID on drop.
struct OnTerminal {
    child: Child,
    stdin: Option<ChildStdin>,
    screen: Arc<Screen>,
}

/// A pseudo-terminal pair of 40 rows by 160 columns, both ends close-on-exec.
fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the out-pointers; the name and termios
    // pointers may be null; `size` outlives the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on a descriptor we own; other children must not inherit the terminal.
        let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        assert_eq!(rc, 0, "fcntl: {}", std::io::Error::last_os_error());
    }
    (master, slave)
}

impl OnTerminal {
    /// Starts `shoal-node ARGS` with the terminal as its standard output and error.
    fn spawn(args: &[String]) -> OnTerminal {
        let (master, slave) = open_pty();
        let mut child = Command::new(NODE)
            .args(args)
            .env("TERM", "xterm-256color")
            .stdin(Stdio::piped())
            .stdout(Stdio::from(slave.try_clone().expect("dup the terminal")))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {NODE}: {e}"));
        // The Command and its copies of the slave end are gone: the terminal closes with the child.
        let stdin = child.stdin.take();
        let screen = Arc::new(Screen::default());
        let sink = Arc::clone(&screen);
        thread::spawn(move || {
            let mut master = File::from(master);
            let mut buf = [0u8; 8192];
            loop {
                // EIO once every slave descriptor is closed (the child exited).
                let n = match master.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut state = sink.state.lock().unwrap();
                if state.0.len() + n > MAX_SCREEN {
                    break;
                }
                state.0.extend_from_slice(&buf[..n]);
                sink.changed.notify_all();
            }
            sink.state.lock().unwrap().1 = true;
            sink.changed.notify_all();
        });
        OnTerminal {
            child,
            stdin,
            screen,
        }
    }

    /// The screen so far as text, escapes stripped.
    fn text(&self) -> String {
        strip_ansi(&self.screen.state.lock().unwrap().0)
    }

    /// Waits until the screen text satisfies `pred`; panics with the screen after [`TIMEOUT`].
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut state = self.screen.state.lock().unwrap();
        loop {
            let text = strip_ansi(&state.0);
            if pred(&text) {
                return text;
            }
            let now = Instant::now();
            if state.1 || now >= deadline {
                panic!("no {what} on the terminal:\n{text}");
            }
            state = self
                .screen
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Types a command on the node's standard input.
    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .expect("the node reads its input");
    }

    /// Waits for the process to exit on its own, and for the terminal to close.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {TIMEOUT:?}:\n{}",
                self.text()
            );
            thread::sleep(Duration::from_millis(20));
        };
        let _ = self.wait_closed();
        status
    }

    /// True once the reader saw the terminal close (bounded wait).
    fn wait_closed(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut state = self.screen.state.lock().unwrap();
        while !state.1 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .screen
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap()
                .0;
        }
        true
    }
}

impl Drop for OnTerminal {
    fn drop(&mut self) {
        // `Child::kill` signals this child's own PID only.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Terminal output as plain lines: CSI and other escape sequences removed, `\r` read as a line end.
fn strip_ansi(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            // CSI runs to a final character in @..~; any other escape is two characters long.
            '\x1b' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' => out.push('\n'),
            c => out.push(c),
        }
    }
    out
}

/// `HH:MM:SS [LEVEL] ` at the start of a line.
fn has_short_time(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 10
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit())
        && b[2] == b':'
        && b[5] == b':'
        && &b[8..10] == b" ["
}

/// An RFC 3339 timestamp `YYYY-MM-DDTHH:MM:SS` anywhere in the line; returns what follows it.
fn rfc3339_tail(line: &str) -> Option<&str> {
    let b = line.as_bytes();
    (0..b.len().saturating_sub(18)).find_map(|i| {
        let w = &b[i..i + 19];
        let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18];
        let ok = digits.iter().all(|&j| w[j].is_ascii_digit())
            && w[4] == b'-'
            && w[7] == b'-'
            && w[10] == b'T'
            && w[13] == b':'
            && w[16] == b':';
        ok.then(|| &line[i + 19..])
    })
}

/// An 8 MiB download from one owner limited to 1 MiB/s, on a terminal: a bar with a percentage,
/// bytes, a rate and `1 owner`; `status` answers in words meanwhile; a second owner appearing
/// shows as `2 owners`; log lines carry short times; the file arrives intact.
#[test]
fn a_download_on_a_terminal_shows_a_bar_and_status_in_words() {
    let tracker = Tracker::start();
    let data = random_bytes(8 << 20);
    let (_owner, _owner_dir) = start_owner(
        &tracker,
        "slowpoke",
        "big.bin",
        &data,
        &["--max-upload-rate", "1M"],
    );
    tracker.wait_owners("big.bin", &["slowpoke"]);

    let dir = tempdir();
    let mut args = node_args("watcher", &tracker.addr, dir.path());
    args.extend(["--download", "big.bin", "--exit-when-done"].map(String::from));
    let mut node = OnTerminal::spawn(&args);

    let is_bar = |l: &str| l.starts_with("big.bin ") && l.contains("% [") && l.contains("/8.0 MiB");
    node.wait_for("progress bar", |t| t.lines().any(is_bar));
    node.send("status");
    let screen = node.wait_for("status line", |t| {
        t.contains("download big.bin: ") && t.contains("fetching pieces")
    });
    let status = screen
        .lines()
        .find(|l| l.contains("download big.bin: "))
        .unwrap();
    assert!(
        status.contains("% (") && status.contains("/s from 1 owner,"),
        "status: {status}"
    );
    assert!(screen.contains("node watcher at port "), "{screen}");

    // A second owner joins while the first one still has seconds of work: the bar counts it.
    let (_second, _second_dir) = start_owner(
        &tracker,
        "latecomer",
        "big.bin",
        &data,
        &["--max-upload-rate", "1M"],
    );
    node.wait_for("bar with two owners", |t| {
        t.lines()
            .any(|l| is_bar(l) && l.trim_end().ends_with(" 2 owners"))
    });

    let exit = node.wait_exit();
    let screen = node.text();
    assert!(exit.success(), "{exit:?}\n{screen}");
    assert_same_file(dir.path(), "big.bin", &data);

    let bars: Vec<&str> = screen.lines().filter(|l| is_bar(l)).collect();
    assert!(
        bars.iter()
            .any(|l| l.contains("/s") && l.contains(" 1 owner") && !l.contains("1 owners")),
        "no bar with a rate and its owner:\n{screen}"
    );
    let downloaded = screen
        .lines()
        .find(|l| l.contains("downloaded big.bin ("))
        .unwrap_or_else(|| panic!("no downloaded line:\n{screen}"));
    assert!(
        downloaded.contains("flushed to disk and renamed"),
        "{downloaded}"
    );
    // The download's summary log line, stamped with a short time only.
    assert!(
        screen
            .lines()
            .any(|l| has_short_time(l) && l.contains("big.bin: bytes by owner")),
        "no short-time log line:\n{screen}"
    );
    assert!(
        screen.lines().all(|l| rfc3339_tail(l).is_none()),
        "a full timestamp on a terminal without -v:\n{screen}"
    );
}

/// A download of a file nobody has, on a terminal: the one error line, and no bar at all.
#[test]
fn a_download_nobody_has_shows_only_its_error() {
    let tracker = Tracker::start();
    let dir = tempdir();
    let mut args = node_args("hopeful", &tracker.addr, dir.path());
    args.extend(["--download", "nosuch.bin", "--exit-when-done"].map(String::from));
    let mut node = OnTerminal::spawn(&args);
    let exit = node.wait_exit();
    let screen = node.text();
    assert!(!exit.success(), "{exit:?}\n{screen}");
    let errors: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("download nosuch.bin failed"))
        .collect();
    assert_eq!(errors.len(), 1, "{screen}");
    assert!(errors[0].contains("no owner"), "{}", errors[0]);
    assert!(
        !screen.contains('%') && !screen.contains("0 B/0 B") && !screen.contains("[>"),
        "a bar for a file of unknown size:\n{screen}"
    );
}

/// With `-v` the terminal gets full UTC timestamps with milliseconds, not nanoseconds.
#[test]
fn verbose_logs_on_a_terminal_have_millisecond_timestamps() {
    let tracker = Tracker::start();
    let dir = tempdir();
    common::put_file(dir.path(), "small.bin", &random_bytes(100_000));
    let mut args = node_args("chatty", &tracker.addr, dir.path());
    args.extend(["--upload", "small.bin", "-v"].map(String::from));
    let mut node = OnTerminal::spawn(&args);
    let screen = node.wait_for("sharing line", |t| t.contains("sharing small.bin ("));
    let stamped: Vec<&str> = screen.lines().filter_map(rfc3339_tail).collect();
    assert!(!stamped.is_empty(), "no timestamped log line:\n{screen}");
    for tail in stamped {
        let b = tail.as_bytes();
        assert!(
            b.len() > 5
                && b[0] == b'.'
                && b[1..4].iter().all(u8::is_ascii_digit)
                && &b[4..6] == b"Z ",
            "not millisecond UTC: {tail}\n{screen}"
        );
    }
    node.send("exit");
    assert!(node.wait_exit().success(), "{}", node.text());
}

#[test]
fn escapes_are_stripped_and_carriage_returns_end_lines() {
    let raw = b"\x1b[2K\x1b[1mbig.bin\x1b[0m  42% [\x1b[36m==>\x1b[0m]\rnext\x1b7";
    assert_eq!(strip_ansi(raw), "big.bin  42% [==>]\nnext");
    assert!(has_short_time("20:01:31 [INFO] x"));
    assert!(!has_short_time("2026-12-01T20:01:31.512Z [INFO] x"));
    assert_eq!(
        rfc3339_tail("2026-12-01T20:01:31.512Z [INFO] x"),
        Some(".512Z [INFO] x")
    );
    assert_eq!(rfc3339_tail("20:01:31 [INFO] x"), None);
}
