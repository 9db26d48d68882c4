//! The machine alone, with a recording [`NodeIo`]: timers and the tracker link, no network.

use super::*;

/// Records what the machine asks for; connections are numbered from 1.
#[derive(Default)]
struct Rec {
    out: BTreeMap<ConnId, Vec<u8>>,
    connects: Vec<(Instant, SocketAddr)>,
    closed: Vec<ConnId>,
    now: Option<Instant>,
}

impl NodeIo for Rec {
    fn connect(&mut self, addr: SocketAddr) -> std::io::Result<ConnId> {
        let conn = ConnId(self.connects.len() + 1);
        if let Some(now) = self.now {
            self.connects.push((now, addr));
        }
        self.out.insert(conn, Vec::new());
        Ok(conn)
    }
    fn out_buf(&mut self, conn: ConnId) -> Option<&mut Vec<u8>> {
        self.out.get_mut(&conn)
    }
    fn pending_out(&self, conn: ConnId) -> usize {
        self.out.get(&conn).map_or(0, Vec::len)
    }
    fn close(&mut self, conn: ConnId) {
        self.closed.push(conn);
    }
    fn resume_reading(&mut self, _conn: ConnId) {}
    fn peer_addr(&self, _conn: ConnId) -> Option<SocketAddr> {
        None
    }
    fn stop(&mut self) {}
    fn disk_hash(&mut self, _folder: &Folder, _file: SharedFile, _piece_size: u32) {}
    fn disk_warm(&mut self, _file: &SharedFile, _offset: u64, _len: u64, _key: u64) -> bool {
        false
    }
    fn disk_check(&mut self, _file: PartialFile, _hashes: Vec<Hash>) {}
    fn disk_finish(&mut self, _file: PartialFile) {}
    fn disk_writeback(&mut self, _file: &mut PartialFile) {}
    fn disk_verify_write(
        &mut self,
        _target: &WriteTarget,
        _offset: u64,
        _data: &[u8],
        _want: &Hash,
        _tag: u64,
    ) -> bool {
        false
    }
    fn say(&mut self, _line: &str) {}
    fn say_err(&mut self, _line: &str) {}
    fn progress(&mut self, _name: &str, _progress: &Progress) {}
    fn progress_end(&mut self, _name: &str, _done: bool) {}
}

/// A node with an empty folder, started at `t0`; its tracker connection is conn 1.
fn started(dir: &std::path::Path, t0: Instant, io: &mut Rec) -> Node {
    let folder = Folder::open(dir).expect("folder");
    let secret = folder.node_secret().expect("secret");
    let mut config = NodeConfig::new("alice");
    config.dir = dir.to_owned();
    let mut node = Node::new(config, folder, secret, 7000, t0);
    io.now = Some(t0);
    node.handle_start(t0, io);
    node
}

/// The messages in `bytes`, by type code.
fn frames(bytes: &[u8]) -> Vec<u8> {
    let mut codes = Vec::new();
    let mut at = 0;
    while let Ok(Decoded::Frame(msg, len)) = wire::decode_frame(&bytes[at..], &Limits::default()) {
        codes.push(msg.type_code());
        at += len;
    }
    codes
}

#[test]
fn a_serving_connection_that_says_nothing_for_two_minutes_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut io = Rec::default();
    let mut node = started(dir.path(), t0, &mut io);
    let downloader = ConnId(99);
    node.handle_accept(t0, downloader, SocketAddr::from(([10, 0, 0, 2], 40000)));
    node.handle_timeout(t0 + Duration::from_secs(100), &mut io);
    assert!(io.closed.is_empty(), "closed after 100 s: {:?}", io.closed);
    node.handle_timeout(t0 + Duration::from_secs(125), &mut io);
    assert_eq!(io.closed, vec![downloader]);
}

#[test]
fn the_tracker_hears_a_keep_alive_every_twenty_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut io = Rec::default();
    let mut node = started(dir.path(), t0, &mut io);
    let tracker = ConnId(1);
    node.handle_connected(t0, tracker, &mut io);
    let hello = io.out.insert(tracker, Vec::new()).unwrap_or_default();
    let keep_alive = Message::KeepAlive.type_code();
    assert!(!frames(&hello).is_empty() && !frames(&hello).contains(&keep_alive));
    assert_eq!(node.poll_timeout(&io), Some(t0 + KEEPALIVE_EVERY));
    node.handle_timeout(t0 + KEEPALIVE_EVERY, &mut io);
    assert_eq!(frames(&io.out[&tracker]), vec![keep_alive]);
    assert_eq!(node.poll_timeout(&io), Some(t0 + 2 * KEEPALIVE_EVERY));
}

#[test]
fn an_unreachable_tracker_is_retried_with_a_doubling_wait_of_at_most_ten_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let mut io = Rec::default();
    let mut node = started(dir.path(), t0, &mut io);
    let refused = CloseReason::ConnectFailed(std::io::ErrorKind::ConnectionRefused);
    for _ in 0..100 {
        if io.connects.len() >= 8 {
            break;
        }
        let conn = ConnId(io.connects.len());
        let now = io.connects.last().map_or(t0, |&(t, _)| t);
        node.handle_closed(now, conn, refused.clone(), &mut io);
        // Keep-alive sweeps come due meanwhile; only the retry deadline connects.
        let before = io.connects.len();
        for _ in 0..10 {
            let Some(at) = node.poll_timeout(&io) else {
                break;
            };
            io.now = Some(at);
            node.handle_timeout(at, &mut io);
            if io.connects.len() > before {
                break;
            }
        }
    }
    let waits: Vec<f64> = io
        .connects
        .windows(2)
        .map(|w| w[1].0.duration_since(w[0].0).as_secs_f64())
        .collect();
    assert_eq!(waits, vec![0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
    assert!(io
        .connects
        .iter()
        .all(|&(_, addr)| addr == node.config.tracker));
}
