//! Sending requests back: a node with more asked of it than it can send soon turns the
//! rest down (a `Cancel` back to the downloader), so they are asked of holders with
//! nothing to do.
//!
//! A downloader asks each piece of one holder, and a crowd asks a piece of its first
//! holders all at once. Left alone, those requests wait there in long queues while later
//! holders of the same piece idle: the swarm tables of issue 8 showed up to 95 requests
//! queued at one downloader while 40 % of the crowd's uplinks had nothing asked of them.
//! Two rules send requests back, and only for whole pieces the downloader can get
//! elsewhere, and only while several downloaders wait here:
//!
//! - **Held elsewhere, waiting too long:** a request that has waited
//!   [`TURN_DOWN_AFTER`] for a piece this node has sent before, or that it got from
//!   someone itself (a partial owner's pieces all came from somewhere).
//! - **More waiting than sends soon:** a partial owner keeps waiting at most what it sends
//!   in [`QUEUE_TIME`] at its measured upload rate (at least [`QUEUE_MIN`]); the newest
//!   requests beyond that go back at once. An original owner never sends back a piece
//!   nobody has yet: it alone can send those.

use super::sharing::Lib;
use super::uploads::SLOW_READER;
use super::*;
use crate::wire::BlockRequest;

/// A request for a whole piece held elsewhere, waiting longer than this, is turned down:
/// three 256 KiB blocks' time at 8 MiB/s, tuned in the swarm simulation (50 and 200 ms did
/// worse, 30 ms no better).
pub(super) const TURN_DOWN_AFTER: Duration = Duration::from_millis(100);
/// How often queues are swept for requests to turn down (at most; a sweep runs when the
/// node looks at its uploads).
const SWEEP_EVERY: Duration = Duration::from_millis(10);
/// Requests looked at from the front (or back) of one queue per sweep.
const SWEEP_DEPTH: usize = 64;
/// Queues looked at per sweep (they take turns), so a sweep costs at most
/// `SWEEP_DEPTH × SWEEP_CONNS` whatever thousands of peers queue.
const SWEEP_CONNS: usize = 256;
/// A partial owner keeps waiting what it sends in this long at its upload rate (30 ms did
/// as well at 100 simulated nodes, worse at 16 and 1,000).
const QUEUE_TIME: Duration = Duration::from_millis(100);
/// ... and at least this much: three 256 KiB pieces. Before its rate is measured, a new
/// holder of a piece few have keeps enough to stay busy while those it turned down may not
/// ask it again (`REFUSED_FOR`): with one, it idled with seventy downloaders connected
/// (1,000 simulated nodes: 2.25x with one, 2.17x with three).
const QUEUE_MIN: u64 = 768 << 10;

impl Node {
    /// Sweeps the serving queues (at most every [`SWEEP_EVERY`]) and turns down what the
    /// rules of this module say, while several downloaders that read wait here: a lone
    /// downloader's requests queue behind its own, and turning them down would only leave
    /// this node idle.
    pub(super) fn turn_down_waiting(&mut self, io: &mut dyn NodeIo) {
        if self.uploads.next_sweep.is_some_and(|t| self.now < t) {
            return;
        }
        self.uploads.next_sweep = Some(self.now + SWEEP_EVERY);
        let now = self.now;
        let asking = self
            .conns
            .values()
            .filter(|role| {
                matches!(role, Role::Serve(s, _) if s.queued() > 0 && s.is_moving(now, SLOW_READER))
            })
            .count();
        if asking < 2 {
            return;
        }
        let serving: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, role)| matches!(role, Role::Serve(s, _) if s.queued() > 0))
            .map(|(&conn, _)| conn)
            .collect();
        let start = self.uploads.sweep_cursor % serving.len();
        let turns = serving.len().min(SWEEP_CONNS);
        self.uploads.sweep_cursor = start + turns;
        let mine: Vec<ConnId> = (0..turns)
            .map(|step| serving[(start + step) % serving.len()])
            .collect();
        self.turn_down_stale(io, &mine);
        self.turn_down_excess(io, &serving, &mine);
    }

    /// The first rule: requests for pieces held elsewhere that waited too long.
    fn turn_down_stale(&mut self, io: &mut dyn NodeIo, queues: &[ConnId]) {
        let Some(before) = self.now.checked_sub(TURN_DOWN_AFTER) else {
            return;
        };
        let lib = Lib {
            shared: &self.shared,
            downloads: &self.downloads,
        };
        let uploads = &self.uploads;
        let elsewhere = |r: &BlockRequest| {
            whole_piece_where(&lib, r, |v| {
                !v.have.is_full() || uploads.times_sent(&r.root, r.piece) > 0
            })
        };
        let mut stale = 0;
        for conn in queues {
            let Some(Role::Serve(serve, _)) = self.conns.get_mut(conn) else {
                continue;
            };
            stale += sharing::send_charged(io, &mut self.bucket, self.now, *conn, |out| {
                serve.turn_down_stale(before, SWEEP_DEPTH, elsewhere, out)
            })
            .unwrap_or(0) as u64;
        }
        self.uploads.turned_down.0 += stale;
    }

    /// The second rule: a partial owner sends back the newest requests beyond what it
    /// sends soon, one from each queue in turn.
    fn turn_down_excess(&mut self, io: &mut dyn NodeIo, all: &[ConnId], queues: &[ConnId]) {
        let keep = ((self.uploads.rate() * QUEUE_TIME.as_secs_f64()) as u64).max(QUEUE_MIN);
        let mut waiting: u64 = all
            .iter()
            .filter_map(|c| match self.conns.get(c) {
                Some(Role::Serve(s, _)) => Some(s.queued_bytes()),
                _ => None,
            })
            .sum();
        let lib = Lib {
            shared: &self.shared,
            downloads: &self.downloads,
        };
        let partial = |r: &BlockRequest| whole_piece_where(&lib, r, |v| !v.have.is_full());
        // Bounded: SWEEP_DEPTH passes over the swept queues, one request each per pass.
        for _ in 0..SWEEP_DEPTH {
            let mut turned_any = false;
            for conn in queues {
                if waiting <= keep {
                    return;
                }
                let Some(Role::Serve(serve, _)) = self.conns.get_mut(conn) else {
                    continue;
                };
                if let Some(turned) =
                    sharing::send_charged(io, &mut self.bucket, self.now, *conn, |out| {
                        serve.turn_down_newest(1, SWEEP_DEPTH, partial, out)
                    })
                {
                    waiting = waiting.saturating_sub(turned);
                    self.uploads.turned_down.1 += u64::from(turned > 0);
                    turned_any |= turned > 0;
                }
            }
            if !turned_any {
                return;
            }
        }
    }
}

/// True if `r` asks for a whole piece of a version served here for which `held` holds.
/// Only whole pieces are turned down: the downloader can then ask another holder for
/// exactly what it gave back.
fn whole_piece_where(
    lib: &Lib<'_>,
    r: &BlockRequest,
    held: impl Fn(&FileView<'_>) -> bool,
) -> bool {
    r.offset == 0
        && lib
            .by_root(&r.root)
            .is_some_and(|v| v.info.layout().piece_len(r.piece) == r.len && held(&v))
}
