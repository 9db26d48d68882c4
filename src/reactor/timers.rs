//! The deadline heap: handler timers plus the reactor's own deadlines.
//!
//! One `BinaryHeap` ordered by `(deadline, seq)`; `seq` makes the order total
//! (equal deadlines fire in the order they were set) and lets one firing pass
//! skip timers set *during* that pass, so a handler that re-arms a timer at
//! `now` cannot keep the loop spinning inside one iteration.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// A handler timer: `on_timer(key)`.
    User(u64),
    /// A closing connection's linger time is up (slab key); checked against the conn's own deadline.
    Linger(usize),
    /// Retry accepting on a listener (index) after running out of file descriptors.
    Accept(usize),
}

/// A min-heap of deadlines.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, Due)>>,
    seq: u64,
}

impl Timers {
    /// Adds a deadline; several entries for the same `Due` may coexist.
    pub(crate) fn push(&mut self, at: Instant, due: Due) {
        self.heap.push(Reverse((at, self.seq, due)));
        self.seq += 1;
    }

    /// The earliest deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// A mark to pass to [`Timers::pop_due`]: only timers set before it fire.
    pub(crate) fn mark(&self) -> u64 {
        self.seq
    }

    /// Pops the earliest timer if it is due at `now` and was set before `mark`.
    ///
    /// Timers set after the mark stay for the next iteration even if already
    /// due; the poll timeout is then zero, so they fire promptly.
    pub(crate) fn pop_due(&mut self, now: Instant, mark: u64) -> Option<Due> {
        match self.heap.peek() {
            Some(Reverse((at, seq, _))) if *at <= now && *seq < mark => {
                self.heap.pop().map(|Reverse((_, _, due))| due)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_then_insertion_order() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.push(t0 + Duration::from_millis(30), Due::User(3));
        t.push(t0 + Duration::from_millis(10), Due::User(1));
        t.push(t0 + Duration::from_millis(20), Due::User(2));
        t.push(t0 + Duration::from_millis(10), Due::User(4));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        let mark = t.mark();
        // Only what is due at the given instant comes out.
        assert_eq!(
            t.pop_due(t0 + Duration::from_millis(15), mark),
            Some(Due::User(1))
        );
        assert_eq!(
            t.pop_due(t0 + Duration::from_millis(15), mark),
            Some(Due::User(4))
        );
        assert_eq!(t.pop_due(t0 + Duration::from_millis(15), mark), None);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(t.pop_due(later, mark), Some(Due::User(2)));
        assert_eq!(t.pop_due(later, mark), Some(Due::User(3)));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn timers_set_after_the_mark_wait_for_the_next_pass() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let mark = t.mark();
        t.push(t0, Due::User(7));
        assert_eq!(t.pop_due(t0, mark), None);
        assert_eq!(t.pop_due(t0, t.mark()), Some(Due::User(7)));
    }
}
