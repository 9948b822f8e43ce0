//! The simulator's single source of randomness.

use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

use crate::link::clamp_prob;

/// A seeded ChaCha20 generator with the few draws the simulator needs.
///
/// Every helper consumes a fixed number of words for a given argument, so the sequence of
/// decisions depends only on the seed and the sequence of calls.
#[derive(Clone)]
pub(crate) struct SimRng(ChaCha20Rng);

impl SimRng {
    /// A generator seeded from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        SimRng(ChaCha20Rng::seed_from_u64(seed))
    }

    /// A uniform `f64` in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `true` with probability `p`. Certain outcomes (`p <= 0` or `p >= 1`) draw nothing.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        let p = clamp_prob(p);
        if p <= 0.0 {
            false
        } else if p >= 1.0 {
            true
        } else {
            self.unit() < p
        }
    }

    /// A uniform integer in `[0, n)`; `0` when `n == 0` (without drawing).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.0.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A uniform duration in `[0, max]`, at nanosecond resolution. Draws nothing for zero.
    pub(crate) fn duration_up_to(&mut self, max: Duration) -> Duration {
        if max.is_zero() {
            return Duration::ZERO;
        }
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX - 1);
        Duration::from_nanos(self.below(nanos + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        for _ in 0..100 {
            assert_eq!(a.below(1000), b.below(1000));
        }
        let mut c = SimRng::new(8);
        let xs: Vec<u64> = (0..16).map(|_| a.below(u64::MAX)).collect();
        let ys: Vec<u64> = (0..16).map(|_| c.below(u64::MAX)).collect();
        assert_ne!(xs, ys);
    }

    #[test]
    fn ranges_are_respected() {
        let mut r = SimRng::new(1);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(r.duration_up_to(Duration::from_millis(3)) <= Duration::from_millis(3));
        }
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
    }
}
