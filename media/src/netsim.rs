//! A seeded one-way network for the loopback: loss (random, or bursty with a Gilbert-Elliott
//! chain), a fixed delay, and per-packet jitter (which reorders).

use std::time::Duration;

use natter_core::rng::Rng;

/// Network impairments.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairments {
    /// Long-run fraction of packets lost (0 to 1).
    pub loss: f64,
    /// Mean length of a loss burst in packets; 1 or less means independent (random) loss.
    pub burst: f64,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Each packet is delayed by an extra uniformly random 0 to `jitter` (so packets reorder).
    pub jitter: Duration,
}

impl Default for Impairments {
    fn default() -> Self {
        Self {
            loss: 0.0,
            burst: 1.0,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
        }
    }
}

/// The loss process.
///
/// With `burst > 1`, a two-state Gilbert-Elliott chain: the *bad* state loses every packet,
/// the *good* state none; a bad state is left with probability `1 / burst` per packet (so
/// bursts last `burst` packets on average) and entered with probability `p` chosen so that the
/// long-run loss is `loss`: `p = loss / (burst × (1 − loss))`.
#[derive(Debug, Clone)]
pub struct LossModel {
    loss: f64,
    enter_bad: f64,
    leave_bad: f64,
    bad: bool,
}

impl LossModel {
    /// A model with long-run `loss` and mean burst length `burst`.
    pub fn new(loss: f64, burst: f64) -> Self {
        let loss = loss.clamp(0.0, 0.99);
        let burst = burst.max(1.0);
        Self {
            loss,
            enter_bad: (loss / (burst * (1.0 - loss))).min(1.0),
            leave_bad: 1.0 / burst,
            bad: false,
        }
    }

    /// Whether the next packet is lost.
    pub fn lose(&mut self, rng: &mut Rng) -> bool {
        if self.leave_bad >= 1.0 {
            return rng.unit() < self.loss;
        }
        self.bad = if self.bad {
            rng.unit() >= self.leave_bad
        } else {
            rng.unit() < self.enter_bad
        };
        self.bad
    }
}

/// A one-way link: decides each packet's fate.
#[derive(Debug, Clone)]
pub struct Link {
    imp: Impairments,
    loss: LossModel,
    rng: Rng,
}

impl Link {
    /// A link with `imp`, seeded with `seed`.
    pub fn new(imp: Impairments, seed: u64) -> Self {
        Self {
            imp,
            loss: LossModel::new(imp.loss, imp.burst),
            rng: Rng::from_seed(seed),
        }
    }

    /// `None` if the packet is lost, else its one-way delay.
    pub fn transit(&mut self) -> Option<Duration> {
        let lost = self.loss.lose(&mut self.rng);
        let jitter = self.imp.jitter.mul_f64(self.rng.unit());
        (!lost).then_some(self.imp.delay + jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(imp: Impairments) -> (f64, f64) {
        let mut link = Link::new(imp, 7);
        let fates: Vec<bool> = (0..200_000).map(|_| link.transit().is_none()).collect();
        let lost = fates.iter().filter(|&&l| l).count();
        let bursts = fates.windows(2).filter(|w| !w[0] && w[1]).count().max(1);
        (
            lost as f64 / fates.len() as f64,
            lost as f64 / bursts as f64,
        )
    }

    #[test]
    fn random_and_bursty_loss_hit_their_targets() {
        let (loss, burst) = runs(Impairments {
            loss: 0.1,
            ..Impairments::default()
        });
        assert!((loss - 0.1).abs() < 0.005, "{loss}");
        assert!((burst - 1.0 / 0.9).abs() < 0.05, "{burst}");
        let (loss, burst) = runs(Impairments {
            loss: 0.2,
            burst: 3.0,
            ..Impairments::default()
        });
        assert!((loss - 0.2).abs() < 0.01, "{loss}");
        assert!((burst - 3.0).abs() < 0.15, "{burst}");
    }

    #[test]
    fn jitter_stays_in_range_and_is_seeded() {
        let imp = Impairments {
            delay: Duration::from_millis(30),
            jitter: Duration::from_millis(40),
            ..Impairments::default()
        };
        let a: Vec<_> = {
            let mut l = Link::new(imp, 1);
            (0..1000).map(|_| l.transit().unwrap()).collect()
        };
        let b: Vec<_> = {
            let mut l = Link::new(imp, 1);
            (0..1000).map(|_| l.transit().unwrap()).collect()
        };
        assert_eq!(a, b);
        assert!(a
            .iter()
            .all(|d| *d >= Duration::from_millis(30) && *d <= Duration::from_millis(70)));
    }
}
