//! Which queued block this node sends next, across every downloader it serves.
//!
//! A node used to top each serving connection up to [`SERVE_TARGET`] on its own. An
//! owner whose link is the limit then splits that link N ways and commits to N × 2 MiB of
//! replies before the crowd can take any of it over, so it sends the file about N/8
//! times and every download waits on it (the swarm tables of issue 8 showed 3.6× the
//! bound at 16 downloaders, and no piece at all within 30 s at 1,000). Two rules fix it:
//!
//! - **Upload slots by budget:** all serving connections together hold at most
//!   [`SERVE_BUDGET`] of unsent replies. A few blocks go out at the link's full rate and
//!   arrive soon, where a piece forwarded early is what lets the crowd serve itself; the
//!   other requests wait in their queues, where a cancel (the requester found the piece
//!   nearer) still costs nothing.
//! - **Least-sent piece first:** among the queued requests it looks at, the node sends
//!   the block of the piece it has sent least often, so an original owner hands out
//!   pieces nobody has yet before repeating one the crowd can forward (BitTorrent's
//!   super-seeding, decided where the bytes leave rather than by withholding `Have`s).
//!   Ties go round the connections in turn, so nobody waits on another's long queue.
//!
//! The budget is small: one 256 KiB block, a quarter of a 1 MiB one. A block that does
//! not fit beside what is pending waits while the one handed out before it is still going
//! out ([`Uploads::holds_back`]): blocks go out one after another, not two sharing the
//! uplink, so the first arrives in half the time and its receiver forwards it that much
//! sooner. The driver reports a drain as soon as a
//! connection's output has all gone to the kernel ([`super::WRITE_LOW_WATER`] is 0), and
//! the kernel's own queue ([`super::KERNEL_UNSENT`]) keeps a fast link busy meanwhile, so
//! one block at a time is enough to fill a link and still leaves the choice of the next
//! block to the last moment.

use super::*;

/// Unsent replies all serving connections together are topped up to: enough to keep a
/// fast link busy while the driver refills it, few enough blocks that each arrives soon.
pub(super) const SERVE_BUDGET: usize = 256 << 10;
/// A serving connection whose output has not all gone out for this long no longer counts
/// against [`SERVE_BUDGET`]: its reader, not our uplink, is what holds it (a downloader on
/// a slow link, or one that never reads), and the others are served meanwhile. It gets no
/// more blocks until that backlog is gone, so it cannot pile replies up either.
pub(super) const SLOW_READER: Duration = Duration::from_secs(1);
/// How often the upload rate estimate takes a sample.
const RATE_SAMPLE: Duration = Duration::from_millis(100);
/// Queued requests of one connection looked at per pick (a downloader asks in its own
/// rarest-first order, so its next few are where its choices are).
const PICK_DEPTH: usize = 16;
/// Connections looked at per pick, from where the last pick left off: a pick stays cheap
/// with thousands of downloaders, and every connection is looked at in turn.
const PICK_CONNS: usize = 64;

/// What the node has sent of each version it serves, and whose turn it is.
#[derive(Debug, Default)]
pub(super) struct Uploads {
    /// Blocks sent of each piece, per version (saturating: only the order matters).
    sent: HashMap<RootHash, Vec<u16>>,
    /// Where in the ready list the next pick starts looking.
    cursor: usize,
    /// When queues are next swept for requests to turn down.
    pub(super) next_sweep: Option<Instant>,
    /// Which queue the next sweep starts at.
    pub(super) sweep_cursor: usize,
    /// Block bytes sent per second, a moving average over [`RATE_SAMPLE`] samples.
    rate: f64,
    /// Bytes sent since the sample that began then.
    sample: (u64, Option<Instant>),
    /// Requests turned down so far: for waiting too long, and for more waiting than sends soon.
    pub(super) turned_down: (u64, u64),
    /// The block handed out last: its connection, and until when it may hold the next
    /// block back (see [`Uploads::holds_back`]).
    last_block: Option<(ConnId, Instant)>,
}

/// A block handed out holds the next one back for at most this many times what it takes
/// to send at the measured rate: a receiver slower than our uplink must not hold it idle.
pub(super) const HOLD_FACTOR: f64 = 1.5;
/// ... or for this long before the rate is measured.
pub(super) const HOLD_UNMEASURED: Duration = Duration::from_millis(50);

impl Uploads {
    /// Blocks of `piece` this node has sent.
    pub(super) fn times_sent(&self, root: &RootHash, piece: u32) -> u16 {
        self.sent
            .get(root)
            .and_then(|v| v.get(piece as usize))
            .copied()
            .unwrap_or(0)
    }

    /// Counts one block of `piece` sent; `pieces` is the version's piece count.
    pub(super) fn record(&mut self, root: &RootHash, piece: u32, pieces: u32) {
        let counts = self.sent.entry(*root).or_default();
        if counts.len() < pieces as usize {
            counts.resize(pieces as usize, 0);
        }
        if let Some(n) = counts.get_mut(piece as usize) {
            *n = n.saturating_add(1);
        }
    }

    /// Notes `bytes` of blocks sent now, for [`Uploads::rate`].
    pub(super) fn note_sent(&mut self, now: Instant, bytes: u64) {
        let (sent, since) = &mut self.sample;
        *sent += bytes;
        let began = *since.get_or_insert(now);
        let spent = now.saturating_duration_since(began);
        if spent >= RATE_SAMPLE {
            let sampled = *sent as f64 / spent.as_secs_f64();
            // Idle gaps longer than a sample count as one sample: only the pace while
            // sending matters here.
            self.rate = if self.rate == 0.0 {
                sampled
            } else {
                (self.rate + sampled) / 2.0
            };
            self.sample = (0, Some(now));
        }
    }

    /// Notes a block of `len` bytes handed to `conn` now: the next one waits for it to go
    /// (or for its hold to end) unless both fit in the budget.
    pub(super) fn handed_out(&mut self, conn: ConnId, len: u32, now: Instant) {
        let hold = if self.rate > 0.0 {
            Duration::from_secs_f64(f64::from(len) / self.rate * HOLD_FACTOR)
        } else {
            HOLD_UNMEASURED
        };
        self.last_block = Some((conn, now + hold));
    }

    /// Until when the block handed out last holds the next back: while its output is still
    /// pending and its hold lasts. One after the other, the first of two blocks arrives in
    /// half the time it takes when both share the uplink, and its receiver can forward it
    /// that much sooner; a receiver slower than the uplink only holds it for a while.
    pub(super) fn holds_back(&self, io: &dyn NodeIo, now: Instant) -> Option<Instant> {
        self.last_block
            .filter(|&(conn, until)| until > now && io.pending_out(conn) > 0)
            .map(|(_, until)| until)
    }

    /// Block bytes this node has been sending per second (0 until it has sent for a while).
    pub(super) fn rate(&self) -> f64 {
        self.rate
    }

    /// Pieces sent at least once, over every version (for status and simulations).
    pub(super) fn distinct_sent(&self) -> usize {
        self.sent
            .values()
            .map(|counts| counts.iter().filter(|&&n| n > 0).count())
            .sum()
    }

    /// Forgets versions no longer served (their counts would only take memory).
    pub(super) fn retain(&mut self, served: impl Fn(&RootHash) -> bool) {
        self.sent.retain(|root, _| served(root));
    }

    /// The next block to send among the connections in `ready` (each with requests
    /// queued and room for output): its position in `ready` and its index in that
    /// connection's queue. The least-sent piece wins; ties go to the first looked at.
    pub(super) fn pick(
        &mut self,
        ready: &[ConnId],
        conns: &BTreeMap<ConnId, Role>,
    ) -> Option<(usize, usize)> {
        if ready.is_empty() {
            return None;
        }
        let start = self.cursor % ready.len();
        let mut best: Option<(u16, usize, usize)> = None;
        for step in 0..ready.len().min(PICK_CONNS) {
            let pos = (start + step) % ready.len();
            let Some(Role::Serve(serve, _)) = conns.get(&ready[pos]) else {
                continue;
            };
            for (index, r) in serve.queued_front(PICK_DEPTH).enumerate() {
                let sent = self.times_sent(&r.root, r.piece);
                if best.is_none_or(|(least, _, _)| sent < least) {
                    best = Some((sent, pos, index));
                    if sent == 0 {
                        break;
                    }
                }
            }
            if best.is_some_and(|(least, _, _)| least == 0) {
                break;
            }
        }
        let (_, pos, index) = best?;
        self.cursor = pos + 1;
        Some((pos, index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::BlockRequest;

    fn serving(requests: &[(u8, u32)]) -> Role {
        let mut serve = ServeConn::new();
        for &(root, piece) in requests {
            serve.queue_for_test(BlockRequest {
                root: [root; 32],
                piece,
                offset: 0,
                len: 1024,
            });
        }
        Role::Serve(serve, Instant::now())
    }

    #[test]
    fn the_least_sent_piece_goes_first_whoever_asked_it() {
        let mut conns = BTreeMap::new();
        conns.insert(ConnId(1), serving(&[(7, 0), (7, 1)]));
        conns.insert(ConnId(2), serving(&[(7, 0), (7, 2)]));
        let ready = [ConnId(1), ConnId(2)];
        let mut up = Uploads::default();
        up.record(&[7; 32], 0, 4);
        up.record(&[7; 32], 1, 4);
        // Piece 0 and 1 went out once each; conn 2's piece 2 never did.
        assert_eq!(up.pick(&ready, &conns), Some((1, 1)));
    }

    #[test]
    fn ties_go_round_the_connections() {
        let mut conns = BTreeMap::new();
        conns.insert(ConnId(1), serving(&[(7, 0)]));
        conns.insert(ConnId(2), serving(&[(7, 1)]));
        conns.insert(ConnId(3), serving(&[(7, 2)]));
        let ready = [ConnId(1), ConnId(2), ConnId(3)];
        let mut up = Uploads::default();
        let order: Vec<usize> = (0..3)
            .filter_map(|_| up.pick(&ready, &conns).map(|(pos, _)| pos))
            .collect();
        assert_eq!(order, vec![0, 1, 2]);
    }

    #[test]
    fn counts_are_per_version_and_forgotten_with_it() {
        let mut up = Uploads::default();
        up.record(&[1; 32], 3, 4);
        up.record(&[1; 32], 9, 4); // outside the layout: ignored, never a panic
        assert_eq!(up.times_sent(&[1; 32], 3), 1);
        assert_eq!(up.times_sent(&[2; 32], 3), 0);
        up.retain(|root| *root != [1; 32]);
        assert_eq!(up.times_sent(&[1; 32], 3), 0);
    }

    #[test]
    fn the_upload_rate_is_the_pace_of_sending_sampled_every_tenth_of_a_second() {
        let mut uploads = Uploads::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        uploads.note_sent(t0, 100_000);
        assert_eq!(uploads.rate(), 0.0, "no sample yet");
        uploads.note_sent(t0 + ms(50), 100_000);
        uploads.note_sent(t0 + ms(100), 100_000);
        // 300 kB over 100 ms.
        assert!(
            (uploads.rate() - 3_000_000.0).abs() < 1.0,
            "{}",
            uploads.rate()
        );
        // The next sample (100 kB over 100 ms) is averaged in.
        uploads.note_sent(t0 + ms(200), 100_000);
        assert!(
            (uploads.rate() - 2_000_000.0).abs() < 1.0,
            "{}",
            uploads.rate()
        );
    }
}
