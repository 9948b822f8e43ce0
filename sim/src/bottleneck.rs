//! A link narrower than what crosses it: a first-in first-out queue served at a fixed rate
//! that drops what would wait longer than its limit, as Linux's `tc tbf` does with a
//! `latency` (and a bucket of one packet).

use std::time::Duration;

/// A rate-limited first-in first-out queue that drops a packet which would wait longer than
/// its limit (`tc tbf` with a `latency` and a bucket of one packet). Time is the caller's:
/// `now` is any monotonic offset (the simulator's elapsed time, for example).
///
/// ```
/// use std::time::Duration;
/// use natter_sim::Bottleneck;
///
/// // 16 kbit/s, at most 60 ms of waiting: 100-byte packets take 50 ms each.
/// let mut b = Bottleneck::new(16_000, Duration::from_millis(60));
/// let ms = Duration::from_millis;
/// assert_eq!(b.send(ms(0), 100), Some(ms(50)));
/// assert_eq!(b.send(ms(0), 100), Some(ms(100)));
/// // The third would wait 100 ms before its turn: over the limit, dropped.
/// assert_eq!(b.send(ms(0), 100), None);
/// assert_eq!(b.dropped(), 1);
/// // Once the queue drained, no wait.
/// assert_eq!(b.send(ms(500), 100), Some(ms(50)));
/// ```
#[derive(Debug, Clone)]
pub struct Bottleneck {
    rate_bps: u64,
    limit: Duration,
    busy_until: Duration,
    dropped: u64,
}

impl Bottleneck {
    /// A queue served at `rate_bps` bits per second that drops a packet which would wait
    /// more than `limit` before its turn.
    pub fn new(rate_bps: u64, limit: Duration) -> Self {
        Self {
            rate_bps: rate_bps.max(1),
            limit,
            busy_until: Duration::ZERO,
            dropped: 0,
        }
    }

    /// Changes the rate (what is queued is served at the new rate from its turn on).
    pub fn set_rate(&mut self, rate_bps: u64) {
        self.rate_bps = rate_bps.max(1);
    }

    /// The rate, bits per second.
    pub fn rate(&self) -> u64 {
        self.rate_bps
    }

    /// A packet of `bytes` arrives at `now`: `None` when it is dropped, else how long it
    /// takes to leave (its wait in the queue plus its own serialization).
    pub fn send(&mut self, now: Duration, bytes: usize) -> Option<Duration> {
        let start = self.busy_until.max(now);
        if start - now > self.limit {
            self.dropped += 1;
            return None;
        }
        let nanos = (bytes as u128 * 8 * 1_000_000_000) / u128::from(self.rate_bps);
        let serialize = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.busy_until = start.saturating_add(serialize);
        Some(self.busy_until - now)
    }

    /// Packets dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_above_the_rate_is_held_to_it_and_the_rest_dropped() {
        // 40 kbit/s of 100-byte packets every 20 ms into 24 kbit/s for 10 s.
        let mut b = Bottleneck::new(24_000, Duration::from_millis(200));
        let mut delivered = 0u64;
        let mut last = Duration::ZERO;
        for i in 0..500u64 {
            let now = Duration::from_millis(20 * i);
            if let Some(d) = b.send(now, 100) {
                delivered += 1;
                last = last.max(d);
            }
        }
        // 24 kbit/s is 30 packets a second: 300 in 10 s, and the queue's worth more.
        assert!((300..=307).contains(&delivered), "{delivered}");
        assert_eq!(b.dropped(), 500 - delivered);
        assert!(last <= Duration::from_millis(200 + 34), "{last:?}");
        // A rate above the sender's: nothing waits behind anything.
        b.set_rate(64_000);
        let t = Duration::from_secs(20);
        for i in 0..100u64 {
            let d = b.send(t + Duration::from_millis(20 * i), 100).unwrap();
            assert_eq!(d, Duration::from_micros(12_500));
        }
    }

    #[test]
    fn zero_rate_and_huge_packets_do_not_panic() {
        let mut b = Bottleneck::new(0, Duration::from_millis(10));
        assert_eq!(b.rate(), 1);
        assert!(b.send(Duration::ZERO, usize::MAX).is_some());
        assert_eq!(b.send(Duration::ZERO, 1), None);
    }
}
