//! Which hash requests an original owner turns down.
//!
//! In a flash crowd every downloader knows only the original owner at first, so all of
//! them ask it for the piece hashes at once. Answered, the hashes share its uplink with
//! the pieces only it has: 1,000 downloaders of a file in 256 KiB pieces take 12 % of the
//! file's size in hashes (32 bytes a piece each), and at 1,000 simulated nodes no piece
//! left the owner before 0.15 × F/R. A node sharing a version whole answers first asks
//! for its hashes up to [`HASH_SHARE`] of the file in each [`HASH_WINDOW`]; further first
//! asks get an empty `Hashes`, which sends the downloader to those already answered: they are listed
//! as partial owners once their hashes check, and their uplinks have nothing else to do
//! yet. A downloader that asks again is answered, so nobody waits on this for long.

use super::*;

/// Hash bytes of one version answered to first asks per [`HASH_WINDOW`], as a share of
/// the file (1 in this many): 1.6 % of the owner's upload of a copy, 128 answers when
/// pieces are 256 KiB, whatever the file's size.
pub(super) const HASH_SHARE: u64 = 64;
/// How long answered first asks count.
pub(super) const HASH_WINDOW: Duration = Duration::from_secs(1);

/// First hash requests answered lately, per version.
#[derive(Debug, Default)]
pub(super) struct HashAsks {
    /// Per version: when the window began and the hash bytes answered to first asks since.
    recent: HashMap<RootHash, (Instant, u64)>,
    /// First asks turned down so far.
    pub(super) turned_down: u64,
}

impl HashAsks {
    /// Whether a downloader's first hash request for `root`, `reply` bytes of hashes of a
    /// file of `size` bytes, is answered now (and counted) or turned down.
    pub(super) fn answer_first(
        &mut self,
        root: &RootHash,
        now: Instant,
        reply: u64,
        size: u64,
    ) -> bool {
        self.recent
            .retain(|_, (since, _)| now.saturating_duration_since(*since) < HASH_WINDOW);
        let (_, answered) = self.recent.entry(*root).or_insert((now, 0));
        if *answered > 0 && *answered + reply > size / HASH_SHARE {
            self.turned_down += 1;
            return false;
        }
        *answered += reply;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_asks_of_a_version_are_answered_up_to_its_share_in_each_window() {
        let start = Instant::now();
        let mut asks = HashAsks::default();
        let (a, b) = ([1; 32], [2; 32]);
        // 8 MiB in 256 KiB pieces: 1 KiB of hashes; 128 KiB (1/64) answered a window.
        let (reply, size) = (1024, 8 << 20);
        for _ in 0..128 {
            assert!(asks.answer_first(&a, start, reply, size));
        }
        assert!(!asks.answer_first(&a, start, reply, size));
        assert!(!asks.answer_first(&a, start + HASH_WINDOW / 2, reply, size));
        // Another version has its own count.
        assert!(asks.answer_first(&b, start, reply, size));
        // A window later the version is answered again.
        assert!(asks.answer_first(&a, start + HASH_WINDOW, reply, size));
        // However big one answer is, the first of a window is answered.
        assert!(asks.answer_first(&[3; 32], start, size, size));
        assert_eq!(asks.turned_down, 2);
    }
}
