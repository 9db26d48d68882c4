//! The node-wide upload rate limit: a token bucket refilled by the clock passed in.

use std::time::{Duration, Instant};

/// How much of a second's worth a full bucket holds: keeps the rate within a few percent
/// over any second.
pub const BURST: Duration = Duration::from_millis(50);
/// The least a full bucket holds, so a slow cap still sends whole blocks at once.
pub const MIN_BURST: u64 = 64 << 10;

/// Bytes per second a node may upload, with a short burst allowance.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket allowing `rate` bytes per second, starting full.
    pub fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate * BURST.as_secs_f64()).max(MIN_BURST as f64);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
    }

    /// True if a send may start now (a block may take the bucket into debt, repaid before the next).
    pub fn ready(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens > 0.0
    }

    /// Charges `bytes` sent now.
    pub fn take(&mut self, now: Instant, bytes: u64) {
        self.refill(now);
        self.tokens -= bytes as f64;
    }

    /// When the bucket will next allow a send.
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens > 0.0 {
            return now;
        }
        // At least a nanosecond: at gigabytes a second a small debt rounds to none, and a
        // wake-up at `now` would be no wake-up at all.
        let wait = Duration::from_secs_f64((-self.tokens + 1.0) / self.rate);
        now + wait.max(Duration::from_nanos(1))
    }
}

/// Parses a rate like `50M`, `512K`, `1G` or `100000` (K/M/G = KiB/MiB/GiB per second).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|_| format!("invalid rate {text:?}: expected a number with an optional K, M or G suffix (KiB/MiB/GiB per second)"))
}

/// Parses a size like `1M`, `16K`, `4096` (K/M/G = KiB/MiB/GiB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c.to_ascii_uppercase()),
        _ => (text, ' '),
    };
    let shift = match unit {
        ' ' | 'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit}")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}"))?;
    value
        .checked_mul(1 << shift)
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("invalid size {text:?}: must be positive and fit 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units() {
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("16k"), Ok(16 << 10));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_rate("-5M").is_err());
    }

    #[test]
    fn bucket_allows_the_rate_over_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1 << 20, start);
        let mut sent = 0u64;
        let mut now = start;
        // Simulated second: send 16 KiB whenever the bucket allows.
        while now < start + Duration::from_secs(1) {
            if bucket.ready(now) {
                bucket.take(now, 16 << 10);
                sent += 16 << 10;
            } else {
                now = bucket.ready_at(now);
            }
        }
        let expected = (1u64 << 20) + (64 << 10);
        assert!(sent <= expected + (16 << 10), "sent {sent}");
        assert!(sent >= (1 << 20) - (16 << 10), "sent {sent}");
    }

    #[test]
    fn a_bucket_in_debt_is_ready_later_at_any_rate() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(8 << 30, now);
        bucket.take(now, (8u64 << 30) / 20 + 1);
        assert!(!bucket.ready(now));
        assert!(bucket.ready_at(now) > now);
    }
}
