//! Link models: latency, jitter, loss, reordering and duplication.

use std::time::Duration;

/// How one network segment treats the packets that cross it.
///
/// Every time a datagram crosses a segment the simulator draws, from its seeded RNG:
///
/// 1. loss: the datagram is dropped with probability [`loss`](Self::loss);
/// 2. delay: [`latency`](Self::latency) plus a uniformly distributed extra delay in
///    `[0, jitter]`, plus [`reorder_delay`](Self::reorder_delay) with probability
///    [`reorder`](Self::reorder);
/// 3. duplication: with probability [`duplicate`](Self::duplicate) a second copy is sent with
///    its own independently drawn delay.
///
/// Jitter alone reorders datagrams whenever they are sent closer together than the jitter;
/// [`reorder`](Self::reorder) forces occasional large reorderings on top.
///
/// Reliable streams see the same latency and jitter but never lose, duplicate or reorder
/// bytes: a lost segment costs a retransmission timeout instead (see
/// [`StreamConfig`](crate::StreamConfig)).
///
/// Probabilities outside `[0, 1]` are clamped, `NaN` counts as `0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Maximum extra one-way delay, drawn uniformly from `[0, jitter]` per packet.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram is held back by an extra [`reorder_delay`](Self::reorder_delay).
    pub reorder: f64,
    /// Extra delay applied to reordered datagrams.
    pub reorder_delay: Duration,
    /// Probability that a datagram is duplicated.
    pub duplicate: f64,
}

impl LinkConfig {
    /// A perfect link: no delay, no loss, no jitter.
    pub const IDEAL: LinkConfig = LinkConfig {
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        loss: 0.0,
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
        duplicate: 0.0,
    };

    /// A perfect link with a fixed one-way `latency`.
    pub fn with_latency(latency: Duration) -> Self {
        LinkConfig {
            latency,
            ..Self::IDEAL
        }
    }

    /// Returns `self` with the given maximum jitter.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Returns `self` with the given loss probability.
    pub fn loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    /// Returns `self` where a fraction `probability` of datagrams is delayed by an extra
    /// `delay`.
    pub fn reorder(mut self, probability: f64, delay: Duration) -> Self {
        self.reorder = probability;
        self.reorder_delay = delay;
        self
    }

    /// Returns `self` with the given duplication probability.
    pub fn duplicate(mut self, probability: f64) -> Self {
        self.duplicate = probability;
        self
    }

    /// The link equivalent to crossing `self` and then `next`: latencies and jitters add up,
    /// a packet survives only if it survives both, and so on.
    pub fn then(&self, next: &LinkConfig) -> LinkConfig {
        fn either(a: f64, b: f64) -> f64 {
            1.0 - (1.0 - clamp_prob(a)) * (1.0 - clamp_prob(b))
        }
        LinkConfig {
            latency: self.latency.saturating_add(next.latency),
            jitter: self.jitter.saturating_add(next.jitter),
            loss: either(self.loss, next.loss),
            reorder: either(self.reorder, next.reorder),
            reorder_delay: self.reorder_delay.max(next.reorder_delay),
            duplicate: either(self.duplicate, next.duplicate),
        }
    }
}

impl Default for LinkConfig {
    /// 25 ms of one-way latency and nothing else.
    fn default() -> Self {
        Self::with_latency(Duration::from_millis(25))
    }
}

/// Clamps a probability to `[0, 1]`, mapping `NaN` to `0`.
pub(crate) fn clamp_prob(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composition_adds_delays_and_combines_probabilities() {
        let a = LinkConfig::with_latency(Duration::from_millis(10))
            .jitter(Duration::from_millis(2))
            .loss(0.5);
        let b = LinkConfig::with_latency(Duration::from_millis(5))
            .loss(0.5)
            .reorder(0.1, Duration::from_millis(30));
        let c = a.then(&b);
        assert_eq!(c.latency, Duration::from_millis(15));
        assert_eq!(c.jitter, Duration::from_millis(2));
        assert!((c.loss - 0.75).abs() < 1e-12);
        assert!((c.reorder - 0.1).abs() < 1e-12);
        assert_eq!(c.reorder_delay, Duration::from_millis(30));
        assert_eq!(
            LinkConfig::IDEAL.then(&LinkConfig::IDEAL),
            LinkConfig::IDEAL
        );
    }

    #[test]
    fn probabilities_are_clamped() {
        assert_eq!(clamp_prob(f64::NAN), 0.0);
        assert_eq!(clamp_prob(-1.0), 0.0);
        assert_eq!(clamp_prob(2.0), 1.0);
        assert_eq!(clamp_prob(0.25), 0.25);
    }
}
