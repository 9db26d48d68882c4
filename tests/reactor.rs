//! Reactor integration tests on real loopback sockets.
//!
//! Each server reactor runs in its own thread and is stopped through its
//! `WakeHandle`. Clients are blocking std sockets with read/write timeouts,
//! so a broken reactor fails a test instead of hanging it; nothing sleeps to
//! wait for a state and nothing asserts on timing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal::reactor::{CloseReason, Config, ConnId, Ctx, Handler, ListenerId, Reactor, WakeHandle};

/// Upper bound for any single blocking client operation.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts a reactor listening on 127.0.0.1:0 in a thread; the handler comes back on join.
fn spawn_server<H: Handler + Send + 'static>(
    config: Config,
    mut handler: H,
) -> (SocketAddr, WakeHandle, JoinHandle<H>) {
    let (tx, rx) = mpsc::channel();
    let join = std::thread::spawn(move || {
        let mut reactor = Reactor::new(config).expect("reactor");
        let (_, addr) = reactor
            .listen("127.0.0.1:0".parse().expect("addr"))
            .expect("listen");
        tx.send((addr, reactor.waker())).expect("send addr");
        reactor.run(&mut handler).expect("run");
        handler
    });
    let (addr, waker) = rx.recv().expect("server start");
    (addr, waker, join)
}

fn client(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// A deterministic byte pattern, different per `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Echoes everything; records the worst pending output seen and each close.
#[derive(Default)]
struct Echo {
    accepted: usize,
    closes: Vec<(ConnId, CloseReason)>,
    max_pending: usize,
    /// Told once when pending output first exceeds this.
    pressure: Option<(usize, mpsc::Sender<()>)>,
}

impl Handler for Echo {
    fn on_accept(&mut self, _: &mut Ctx, _: ListenerId, _: ConnId, _: SocketAddr) {
        self.accepted += 1;
    }
    fn on_data(&mut self, ctx: &mut Ctx, conn: ConnId, input: &[u8]) -> usize {
        ctx.send(conn, input);
        let pending = ctx.pending_out(conn);
        self.max_pending = self.max_pending.max(pending);
        if let Some((level, tx)) = &self.pressure {
            if pending > *level {
                let _ = tx.send(());
                self.pressure = None;
            }
        }
        input.len()
    }
    fn on_close(&mut self, _: &mut Ctx, conn: ConnId, reason: CloseReason) {
        self.closes.push((conn, reason));
    }
    fn on_wake(&mut self, ctx: &mut Ctx) {
        ctx.stop();
    }
}

#[test]
fn echo_200_connections_all_bytes_intact() {
    let (addr, waker, join) = spawn_server(Config::default(), Echo::default());
    let n = 200;
    let payloads: Vec<Vec<u8>> = (0..n).map(|i| pattern(i as u64, 4000 + 37 * i)).collect();
    let mut clients: Vec<TcpStream> = (0..n).map(|_| client(addr)).collect();
    // Write everything first, so the server juggles all 200 at once.
    for (c, p) in clients.iter_mut().zip(&payloads) {
        c.write_all(p).expect("write");
    }
    for (c, p) in clients.iter_mut().zip(&payloads) {
        let mut got = vec![0; p.len()];
        c.read_exact(&mut got).expect("read echo");
        assert!(got == *p, "echo differs");
    }
    // Orderly close from the clients: the server sees EOF on each.
    for c in &clients {
        c.shutdown(std::net::Shutdown::Write).expect("shutdown");
    }
    for mut c in clients {
        let mut rest = Vec::new();
        c.read_to_end(&mut rest)
            .expect("server closes after our EOF");
        assert!(rest.is_empty());
    }
    waker.wake();
    let echo = join.join().expect("server thread");
    assert_eq!(echo.accepted, n);
    assert_eq!(echo.closes.len(), n, "on_close exactly once per conn");
    assert!(echo.closes.iter().all(|(_, r)| *r == CloseReason::Eof));
}

/// Frames are `[u32 BE length][payload]`; replies `[u32 length][u32 byte sum]` per frame.
/// Consumes only whole frames, so most calls leave a partial frame buffered.
#[derive(Default)]
struct Framer {
    frames: usize,
    calls: usize,
    partial_calls: usize,
}

impl Handler for Framer {
    fn on_data(&mut self, ctx: &mut Ctx, conn: ConnId, input: &[u8]) -> usize {
        self.calls += 1;
        let mut used = 0;
        while input.len() - used >= 4 {
            let len =
                u32::from_be_bytes(input[used..used + 4].try_into().expect("4 bytes")) as usize;
            if input.len() - used - 4 < len {
                break;
            }
            let body = &input[used + 4..used + 4 + len];
            let sum: u32 = body.iter().map(|&b| u32::from(b)).sum();
            // Encode in place, as a zero-copy encoder would.
            if let Some(out) = ctx.out_buf(conn) {
                out.extend_from_slice(&(len as u32).to_be_bytes());
                out.extend_from_slice(&sum.to_be_bytes());
            }
            used += 4 + len;
            self.frames += 1;
        }
        if used < input.len() {
            self.partial_calls += 1;
        }
        used
    }
    fn on_wake(&mut self, ctx: &mut Ctx) {
        ctx.stop();
    }
}

#[test]
fn partial_reads_frames_split_across_tiny_writes() {
    let (addr, waker, join) = spawn_server(Config::default(), Framer::default());
    let mut c = client(addr);
    c.set_nodelay(true).expect("nodelay");
    // Small frames, an empty one, and one bigger than a single read.
    let sizes = [0usize, 1, 2, 3, 100, 999, 5000, 300_000, 7];
    let mut wire = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        wire.extend_from_slice(&(len as u32).to_be_bytes());
        wire.extend_from_slice(&pattern(i as u64, len));
    }
    // The first 2 KiB go out 1-3 bytes at a time, then larger uneven chunks.
    let (head, tail) = wire.split_at(2048);
    for (k, chunk) in head.chunks(3).enumerate() {
        c.write_all(&chunk[..1 + k % chunk.len()]).expect("write");
        c.write_all(&chunk[1 + k % chunk.len()..]).expect("write");
    }
    for chunk in tail.chunks(4093) {
        c.write_all(chunk).expect("write");
    }
    let mut reply = vec![0u8; 8 * sizes.len()];
    c.read_exact(&mut reply).expect("replies");
    for (i, &len) in sizes.iter().enumerate() {
        let r = &reply[8 * i..8 * i + 8];
        let sum: u32 = pattern(i as u64, len).iter().map(|&b| u32::from(b)).sum();
        assert_eq!(
            u32::from_be_bytes(r[..4].try_into().expect("4")) as usize,
            len
        );
        assert_eq!(
            u32::from_be_bytes(r[4..].try_into().expect("4")),
            sum,
            "frame {i}"
        );
    }
    drop(c);
    waker.wake();
    let f = join.join().expect("server thread");
    assert_eq!(f.frames, sizes.len());
    assert!(f.partial_calls > 0, "some input was left for later");
}

/// Records timer keys; the last key stops the reactor.
struct TimerLog {
    fired: Vec<u64>,
    last: u64,
    rearmed: bool,
}

impl Handler for TimerLog {
    fn on_data(&mut self, _: &mut Ctx, _: ConnId, input: &[u8]) -> usize {
        input.len()
    }
    fn on_timer(&mut self, ctx: &mut Ctx, key: u64) {
        self.fired.push(key);
        if key == 0 && !self.rearmed {
            // A timer set for "now" inside a timer callback fires on a later pass, not in a loop.
            self.rearmed = true;
            let now = ctx.now();
            ctx.set_timer(now, 100);
        }
        if key == self.last {
            ctx.stop();
        }
    }
    fn on_wake(&mut self, ctx: &mut Ctx) {
        ctx.stop();
    }
}

#[test]
fn timers_fire_in_deadline_order_and_drive_the_timeout() {
    let mut reactor = Reactor::new(Config::default()).expect("reactor");
    let t0 = reactor.ctx().now();
    let ms = Duration::from_millis;
    // Set out of order; two share a deadline (they keep insertion order).
    for (after, key) in [(40, 4), (10, 1), (0, 0), (25, 2), (25, 3), (60, 5)] {
        reactor.ctx().set_timer(t0 + ms(after), key);
    }
    // Nothing else can wake this reactor except a watchdog far away: only the
    // timers' deadlines can make `run` return in time.
    let waker = reactor.waker();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(IO_TIMEOUT).is_err() {
            waker.wake();
        }
    });
    let mut h = TimerLog {
        fired: Vec::new(),
        last: 5,
        rearmed: false,
    };
    reactor.run(&mut h).expect("run");
    let _ = done_tx.send(());
    watchdog.join().expect("watchdog");
    assert_eq!(h.fired, vec![0, 100, 1, 2, 3, 4, 5]);
    assert!(Instant::now() >= t0 + ms(60), "the last timer is not early");
}

#[test]
fn back_pressure_bounds_output_of_a_client_that_does_not_read() {
    let config = Config {
        read_buf_cap: 64 * 1024,
        write_high_water: 256 * 1024,
        write_low_water: 64 * 1024,
        socket_buf: Some(64 * 1024),
        notsent_lowat: Some(16 * 1024),
        max_inbound: 16,
        max_inbound_per_ip: 16,
        max_outbound: 16,
    };
    let (high, cap) = (config.write_high_water, config.read_buf_cap);
    let (ptx, prx) = mpsc::channel();
    let echo = Echo {
        pressure: Some((high, ptx)),
        ..Echo::default()
    };
    let (addr, waker, join) = spawn_server(config, echo);
    let total = 24 * 1024 * 1024;
    let data = pattern(7, total);
    let c = client(addr);
    let mut writer_side = c.try_clone().expect("clone");
    let to_send = data.clone();
    // Far more than every buffer on the path: if the server kept reading, its
    // pending output would grow to most of this.
    let writer = std::thread::spawn(move || {
        writer_side.write_all(&to_send).expect("client write");
        writer_side
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
    });
    // The client reads nothing until the server is over high water.
    prx.recv_timeout(IO_TIMEOUT)
        .expect("server reached high water");
    let mut reader = c;
    let mut got = Vec::with_capacity(total);
    reader.read_to_end(&mut got).expect("read echo");
    writer.join().expect("writer");
    assert_eq!(got.len(), total);
    assert!(got == data, "echo corrupted");
    waker.wake();
    let echo = join.join().expect("server thread");
    // One pass may add at most one read's worth on top of high water.
    assert!(
        echo.max_pending <= high + cap,
        "pending output grew to {} (high water {high}, read cap {cap})",
        echo.max_pending
    );
    assert_eq!(echo.closes, vec![(echo.closes[0].0, CloseReason::Eof)]);
}

/// Connects somewhere at start and records what happens.
struct Dialer {
    target: SocketAddr,
    conn: Option<ConnId>,
    events: Vec<String>,
    got: Vec<u8>,
}

impl Handler for Dialer {
    fn on_connect(&mut self, ctx: &mut Ctx, conn: ConnId) {
        self.events.push("connect".into());
        assert_eq!(ctx.peer_addr(conn), Some(self.target));
        assert!(ctx.local_addr(conn).is_some());
        ctx.send(conn, b" world");
    }
    fn on_data(&mut self, _: &mut Ctx, _: ConnId, input: &[u8]) -> usize {
        self.got.extend_from_slice(input);
        input.len()
    }
    fn on_close(&mut self, ctx: &mut Ctx, conn: ConnId, reason: CloseReason) {
        assert_eq!(Some(conn), self.conn);
        assert!(!ctx.is_open(conn));
        self.events.push(format!("close {reason:?}"));
        ctx.stop();
    }
    fn on_wake(&mut self, ctx: &mut Ctx) {
        ctx.stop();
    }
}

fn run_dialer(target: SocketAddr, greeting: &[u8]) -> Dialer {
    let mut reactor = Reactor::new(Config::default()).expect("reactor");
    let conn = reactor.ctx().connect(target).expect("connect starts");
    // Output queued before the connect completes goes out once it does.
    reactor.ctx().send(conn, greeting);
    assert!(reactor.ctx().is_open(conn));
    assert_eq!(reactor.ctx().conn_count(), 1);
    let mut h = Dialer {
        target,
        conn: Some(conn),
        events: Vec::new(),
        got: Vec::new(),
    };
    let waker = reactor.waker();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(IO_TIMEOUT).is_err() {
            waker.wake();
        }
    });
    reactor.run(&mut h).expect("run");
    let _ = done_tx.send(());
    watchdog.join().expect("watchdog");
    assert_eq!(reactor.ctx().conn_count(), 0);
    h
}

#[test]
fn connect_to_a_closed_port_reports_connect_failed() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let h = run_dialer(closed, b"x");
    assert_eq!(
        h.events,
        vec![format!(
            "close {:?}",
            CloseReason::ConnectFailed(std::io::ErrorKind::ConnectionRefused)
        )]
    );
}

#[test]
fn outbound_connect_sends_receives_and_sees_eof() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = l.local_addr().expect("addr");
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        let mut got = [0u8; 11];
        s.read_exact(&mut got).expect("read greeting");
        s.write_all(b"reply").expect("write");
        got
    });
    let h = run_dialer(target, b"hello");
    assert_eq!(&peer.join().expect("peer"), b"hello world");
    assert_eq!(
        h.events,
        vec![
            "connect".to_string(),
            format!("close {:?}", CloseReason::Eof)
        ]
    );
    assert_eq!(h.got, b"reply");
}

/// On accept: queues `payload` and closes at once (or on first data, then stops).
struct SendAndClose {
    payload: Vec<u8>,
    stop_instead: bool,
    closes: Vec<CloseReason>,
    pending_at_close: usize,
}

impl Handler for SendAndClose {
    fn on_accept(&mut self, ctx: &mut Ctx, _: ListenerId, conn: ConnId, _: SocketAddr) {
        ctx.send(conn, &self.payload);
        self.pending_at_close = ctx.pending_out(conn);
        if self.stop_instead {
            ctx.stop();
        } else {
            ctx.close(conn);
            assert!(!ctx.is_open(conn));
            // Sends after close are ignored.
            ctx.send(conn, b"garbage");
        }
    }
    fn on_data(&mut self, _: &mut Ctx, _: ConnId, input: &[u8]) -> usize {
        input.len()
    }
    fn on_close(&mut self, _: &mut Ctx, _: ConnId, reason: CloseReason) {
        self.closes.push(reason);
    }
    fn on_wake(&mut self, ctx: &mut Ctx) {
        ctx.stop();
    }
}

/// Socket buffers small enough that multi-MiB payloads are still pending in
/// the reactor when the handler closes or stops. (Much smaller than this,
/// loopback's 64 KiB segments meet the peer's delayed ACK and crawl.)
fn small_buffers() -> Config {
    Config {
        socket_buf: Some(256 * 1024),
        ..Config::default()
    }
}

#[test]
fn close_flushes_pending_output_first() {
    let payload = pattern(3, 6 * 1024 * 1024);
    let h = SendAndClose {
        payload: payload.clone(),
        stop_instead: false,
        closes: Vec::new(),
        pending_at_close: 0,
    };
    let (addr, waker, join) = spawn_server(small_buffers(), h);
    let mut c = client(addr);
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("read until the server closes");
    assert_eq!(got.len(), payload.len());
    assert!(got == payload);
    waker.wake();
    let h = join.join().expect("server");
    assert!(
        h.pending_at_close > 0,
        "the close really had output to flush"
    );
    assert_eq!(h.closes, vec![CloseReason::Closed]);
}

#[test]
fn stop_flushes_pending_output_and_closes_every_conn() {
    let payload = pattern(4, 4 * 1024 * 1024);
    let h = SendAndClose {
        payload: payload.clone(),
        stop_instead: true,
        closes: Vec::new(),
        pending_at_close: 0,
    };
    let (addr, _waker, join) = spawn_server(small_buffers(), h);
    let mut c = client(addr);
    let mut got = Vec::new();
    c.read_to_end(&mut got)
        .expect("read until the server closes");
    assert!(got == payload);
    let h = join.join().expect("server returns after stop");
    assert_eq!(h.closes, vec![CloseReason::Closed]);
}

/// Uploads `total` bytes, refilling on `on_drain`, then closes.
struct Uploader {
    data: Vec<u8>,
    sent: usize,
    chunk: usize,
    drains: usize,
}

impl Uploader {
    fn fill(&mut self, ctx: &mut Ctx, conn: ConnId) {
        // Fill just past low water, so on_drain comes back.
        while self.sent < self.data.len() && ctx.pending_out(conn) <= 1024 * 1024 {
            let end = (self.sent + self.chunk).min(self.data.len());
            if let Some(out) = ctx.out_buf(conn) {
                out.extend_from_slice(&self.data[self.sent..end]);
            }
            self.sent = end;
        }
        if self.sent == self.data.len() {
            ctx.close(conn);
        }
    }
}

impl Handler for Uploader {
    fn on_accept(&mut self, ctx: &mut Ctx, _: ListenerId, conn: ConnId, _: SocketAddr) {
        self.fill(ctx, conn);
    }
    fn on_data(&mut self, _: &mut Ctx, _: ConnId, input: &[u8]) -> usize {
        input.len()
    }
    fn on_drain(&mut self, ctx: &mut Ctx, conn: ConnId) {
        self.drains += 1;
        assert!(ctx.pending_out(conn) <= 1024 * 1024);
        self.fill(ctx, conn);
    }
    fn on_wake(&mut self, ctx: &mut Ctx) {
        ctx.stop();
    }
}

#[test]
fn on_drain_refills_an_upload() {
    let data = pattern(5, 20 * 1024 * 1024);
    let h = Uploader {
        data: data.clone(),
        sent: 0,
        chunk: 256 * 1024,
        drains: 0,
    };
    let (addr, waker, join) = spawn_server(small_buffers(), h);
    let mut c = client(addr);
    let mut got = Vec::new();
    c.read_to_end(&mut got).expect("read upload");
    assert!(got == data);
    waker.wake();
    let h = join.join().expect("server");
    assert!(h.drains >= 2, "drained {} times", h.drains);
}

/// Consumes nothing until the buffer is full (so reading stalls), then
/// resumes from a timer and consumes everything from then on.
struct Staller {
    cap: usize,
    conn: Option<ConnId>,
    stalls: usize,
    consuming: bool,
    total: usize,
    expect: usize,
}

impl Handler for Staller {
    fn on_data(&mut self, ctx: &mut Ctx, conn: ConnId, input: &[u8]) -> usize {
        self.conn = Some(conn);
        if !self.consuming {
            if input.len() == self.cap {
                self.stalls += 1;
                let now = ctx.now();
                ctx.set_timer(now, 1);
            }
            return 0;
        }
        self.total += input.len();
        if self.total == self.expect {
            ctx.send(conn, b"ok");
        }
        input.len()
    }
    fn on_timer(&mut self, ctx: &mut Ctx, _: u64) {
        self.consuming = true;
        if let Some(conn) = self.conn {
            ctx.resume_reading(conn);
        }
    }
    fn on_wake(&mut self, ctx: &mut Ctx) {
        ctx.stop();
    }
}

#[test]
fn full_buffer_with_nothing_consumed_stalls_until_resume() {
    let cap = 64 * 1024;
    let expect = 1024 * 1024;
    let config = Config {
        read_buf_cap: cap,
        ..Config::default()
    };
    let h = Staller {
        cap,
        conn: None,
        stalls: 0,
        consuming: false,
        total: 0,
        expect,
    };
    let (addr, waker, join) = spawn_server(config, h);
    let mut c = client(addr);
    c.write_all(&pattern(6, expect)).expect("write");
    let mut ok = [0u8; 2];
    c.read_exact(&mut ok).expect("server consumed everything");
    assert_eq!(&ok, b"ok");
    waker.wake();
    let h = join.join().expect("server");
    assert_eq!(h.stalls, 1, "stalled once, redelivered on resume");
    assert_eq!(h.total, expect);
}

/// A conn over `max_inbound_per_ip` is closed at once; the others are served.
#[test]
fn accepts_beyond_the_per_ip_cap_are_closed() {
    let config = Config {
        max_inbound_per_ip: 2,
        ..Config::default()
    };
    let (addr, waker, join) = spawn_server(config, Echo::default());
    let mut a = client(addr);
    let mut b = client(addr);
    // Make sure both are accepted (echo round trip) before the third arrives.
    for s in [&mut a, &mut b] {
        s.write_all(b"hi").expect("write");
        let mut r = [0u8; 2];
        s.read_exact(&mut r).expect("echo");
    }
    let mut extra = client(addr);
    let mut buf = [0u8; 1];
    let n = extra.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the extra conn is closed without data");
    waker.wake();
    let echo = join.join().expect("server");
    assert_eq!(echo.accepted, 2);
    // Conns open at stop are closed by the reactor, still exactly once each.
    assert_eq!(echo.closes.len(), 2);
    assert!(echo.closes.iter().all(|(_, r)| *r == CloseReason::Closed));
}

/// Prints what stdin delivers; stops at EOF (or after a generous bound).
struct StdinEcho;

impl Handler for StdinEcho {
    fn on_data(&mut self, _: &mut Ctx, _: ConnId, input: &[u8]) -> usize {
        input.len()
    }
    fn on_stdin_line(&mut self, _: &mut Ctx, line: &str) {
        println!("line:{line}");
    }
    fn on_stdin_eof(&mut self, ctx: &mut Ctx) {
        println!("eof");
        ctx.stop();
    }
    fn on_timer(&mut self, ctx: &mut Ctx, _: u64) {
        println!("timeout");
        ctx.stop();
    }
}

/// Run by `stdin_from_a_file_and_from_a_pipe` in a child process; a no-op otherwise.
#[test]
fn stdin_child() {
    if std::env::var_os("SHOAL_STDIN_CHILD").is_none() {
        return;
    }
    let mut reactor = Reactor::new(Config::default()).expect("reactor");
    reactor.enable_stdin().expect("stdin");
    let now = reactor.ctx().now();
    reactor.ctx().set_timer(now + IO_TIMEOUT, 0);
    reactor.run(&mut StdinEcho).expect("run");
}

#[test]
fn stdin_from_a_file_and_from_a_pipe() {
    use std::process::{Command, Stdio};
    let long = "x".repeat(5000);
    let input = format!("upload a.txt\r\n\n{long}\nstatus\nexit");
    let want = "line:upload a.txt\nline:\nline:status\nline:exit\neof\n";
    let child = || {
        let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--exact",
            "stdin_child",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("SHOAL_STDIN_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        cmd
    };
    let ours = |out: &[u8]| -> String {
        String::from_utf8_lossy(out)
            .lines()
            .filter(|l| l.starts_with("line:") || *l == "eof" || *l == "timeout")
            .map(|l| format!("{l}\n"))
            .collect()
    };
    // A regular file: epoll refuses it, so the reactor reads it each iteration.
    let mut file = tempfile::tempfile().expect("tempfile");
    file.write_all(input.as_bytes()).expect("write");
    std::io::Seek::rewind(&mut file).expect("rewind");
    let out = child().stdin(file).output().expect("child");
    assert_eq!(ours(&out.stdout), want, "file stdin");
    // A pipe: registered with the poll.
    let mut proc = child().stdin(Stdio::piped()).spawn().expect("child");
    let mut pipe = proc.stdin.take().expect("pipe");
    pipe.write_all(input.as_bytes()).expect("write");
    drop(pipe);
    let out = proc.wait_with_output().expect("child");
    assert_eq!(ours(&out.stdout), want, "pipe stdin");
}

/// A client socket from `source` (any 127.x address works on loopback).
fn client_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from = SocketAddr::from((source, 0));
    socket.bind(&from.into()).expect("bind source");
    socket.connect(&addr.into()).expect("connect");
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s
}

/// One IP filling the inbound table cannot lock another out: the newcomer takes the
/// place of the newest conn of the IP holding the most.
#[test]
fn a_full_inbound_table_makes_room_for_another_ip() {
    let config = Config {
        max_inbound: 3,
        ..Config::default()
    };
    let (addr, waker, join) = spawn_server(config, Echo::default());
    let mut squatters: Vec<TcpStream> = (0..3).map(|_| client(addr)).collect();
    for s in &mut squatters {
        s.write_all(b"hi").expect("write");
        let mut r = [0u8; 2];
        s.read_exact(&mut r).expect("echo");
    }
    let mut honest = client_from([127, 0, 0, 2], addr);
    honest.write_all(b"ok").expect("write");
    let mut r = [0u8; 2];
    honest.read_exact(&mut r).expect("the newcomer is served");
    assert_eq!(&r, b"ok");
    // The newest squatter made room; the two older ones are still served.
    let mut buf = [0u8; 1];
    assert_eq!(squatters[2].read(&mut buf).unwrap_or(0), 0, "evicted");
    for s in &mut squatters[..2] {
        s.write_all(b"yo").expect("write");
        let mut r = [0u8; 2];
        s.read_exact(&mut r).expect("still served");
    }
    // A fourth conn from the squatting IP is refused, not given anyone's place.
    let mut extra = client(addr);
    assert_eq!(extra.read(&mut buf).unwrap_or(0), 0, "refused");
    waker.wake();
    let echo = join.join().expect("server");
    assert_eq!(echo.accepted, 4);
}

/// Outbound connects are counted apart: a full inbound table does not stop them.
#[test]
fn outbound_connects_work_while_inbound_is_full() {
    let target = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target_addr = target.local_addr().expect("addr");
    let mut reactor = Reactor::new(Config {
        max_inbound: 1,
        ..Config::default()
    })
    .expect("reactor");
    let (_, addr) = reactor
        .listen("127.0.0.1:0".parse().expect("addr"))
        .expect("listen");
    let _squatter = client(addr);
    // Let the reactor accept the squatter, then dial out.
    let now = reactor.ctx().now();
    reactor.ctx().set_timer(now + Duration::from_millis(50), 0);
    struct DialOnTimer {
        target: SocketAddr,
        connected: bool,
        accepted: usize,
    }
    impl Handler for DialOnTimer {
        fn on_accept(&mut self, _: &mut Ctx, _: ListenerId, _: ConnId, _: SocketAddr) {
            self.accepted += 1;
        }
        fn on_data(&mut self, _: &mut Ctx, _: ConnId, input: &[u8]) -> usize {
            input.len()
        }
        fn on_timer(&mut self, ctx: &mut Ctx, key: u64) {
            if key == 0 {
                ctx.connect(self.target).expect("outbound room");
                let at = ctx.now() + IO_TIMEOUT;
                ctx.set_timer(at, 1);
            } else {
                ctx.stop();
            }
        }
        fn on_connect(&mut self, ctx: &mut Ctx, _: ConnId) {
            self.connected = true;
            ctx.stop();
        }
    }
    let mut h = DialOnTimer {
        target: target_addr,
        connected: false,
        accepted: 0,
    };
    reactor.run(&mut h).expect("run");
    assert_eq!(h.accepted, 1, "the inbound table was full");
    assert!(h.connected, "the outbound connect went through");
}
