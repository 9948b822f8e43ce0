//! Link models: latency, jitter, independent or bursty loss, reordering and duplication.

use std::fmt;
use std::time::Duration;

use crate::rng::SimRng;

/// How one network segment treats the packets that cross it.
///
/// Every time a datagram crosses a segment the simulator draws, from its seeded RNG:
///
/// 1. loss: the datagram is dropped with probability [`loss`](Self::loss), independently of
///    the others, or, when [`burst`](Self::burst) is above 1, as the segment's
///    Gilbert-Elliott chain decides (below);
/// 2. delay: [`latency`](Self::latency) plus a uniformly distributed extra delay in
///    `[0, jitter]`, plus [`reorder_delay`](Self::reorder_delay) with probability
///    [`reorder`](Self::reorder);
/// 3. duplication: with probability [`duplicate`](Self::duplicate) a second copy is sent with
///    its own independently drawn delay.
///
/// Jitter alone reorders datagrams whenever they are sent closer together than the jitter;
/// [`reorder`](Self::reorder) forces occasional large reorderings on top.
///
/// **Burst loss** (Gilbert-Elliott). With `burst > 1` each direction of a segment is a
/// two-state chain, stepped once per datagram that reaches it: the *bad* state loses every
/// datagram, the *good* state none. The bad state is left with probability `1 / burst` per
/// datagram (so bursts last `burst` datagrams on average) and entered with probability
/// `loss / (burst × (1 − loss))`, so the long-run loss is still [`loss`](Self::loss). A
/// mean burst cannot be shorter than `loss / (1 − loss)` (gaps of one datagram between
/// bursts): below that the bursts are lengthened to it, so the long-run loss is always met.
/// In a [`Sim`](crate::Sim) every segment and direction has its own chain, driven by the
/// simulator's RNG: the link between two nodes (an override or the network's default),
/// and a node's access link upstream and downstream; a datagram crosses them in that order
/// and the chains behind a loss do not see it. [`OneWayLink`] is one chain on its own.
///
/// Reliable streams see the same latency and jitter but never lose, duplicate or reorder
/// bytes: a lost segment costs a retransmission timeout instead (see
/// [`StreamConfig`](crate::StreamConfig)); each transmission attempt is lost with the
/// long-run [`loss`](Self::loss), without bursts.
///
/// Probabilities outside `[0, 1]` are clamped, `NaN` counts as `0`; a `burst` that is not a
/// finite number above 1 means independent loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Fixed one-way delay.
    pub latency: Duration,
    /// Maximum extra one-way delay, drawn uniformly from `[0, jitter]` per packet.
    pub jitter: Duration,
    /// Long-run probability that a datagram is lost.
    pub loss: f64,
    /// Mean length of a loss burst, in datagrams; 1 or less: independent loss (see the type's
    /// documentation for the Gilbert-Elliott chain).
    pub burst: f64,
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
        burst: 1.0,
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

    /// Returns `self` with the given (long-run) loss probability.
    pub fn loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }

    /// Returns `self` with losses in bursts of `mean` datagrams on average (Gilbert-Elliott);
    /// the long-run loss stays [`loss`](Self::loss). `mean <= 1` means independent loss.
    pub fn burst(mut self, mean: f64) -> Self {
        self.burst = mean;
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

    /// Whether losses come in bursts: a finite [`burst`](Self::burst) above 1 and a loss
    /// strictly between 0 and 1 (otherwise every datagram's fate is independent).
    pub fn is_bursty(&self) -> bool {
        let loss = clamp_prob(self.loss);
        self.burst.is_finite() && self.burst > 1.0 && loss > 0.0 && loss < 1.0
    }

    /// The link equivalent to crossing `self` and then `next`: latencies and jitters add up,
    /// a packet survives only if it survives both, and so on. The composed
    /// [`burst`](Self::burst) is the larger of the two, a summary only: two loss processes in
    /// a row make no single Gilbert-Elliott chain, so the simulator steps each segment's
    /// chain separately rather than this one.
    pub fn then(&self, next: &LinkConfig) -> LinkConfig {
        fn either(a: f64, b: f64) -> f64 {
            1.0 - (1.0 - clamp_prob(a)) * (1.0 - clamp_prob(b))
        }
        fn burst(l: &LinkConfig) -> f64 {
            if l.is_bursty() {
                l.burst
            } else {
                1.0
            }
        }
        LinkConfig {
            latency: self.latency.saturating_add(next.latency),
            jitter: self.jitter.saturating_add(next.jitter),
            loss: either(self.loss, next.loss),
            burst: burst(self).max(burst(next)),
            reorder: either(self.reorder, next.reorder),
            reorder_delay: self.reorder_delay.max(next.reorder_delay),
            duplicate: either(self.duplicate, next.duplicate),
        }
    }

    /// The chain's transition probabilities: (enter the bad state, leave it).
    fn chain(&self) -> (f64, f64) {
        let loss = clamp_prob(self.loss);
        // Gaps between bursts last at least one datagram: a shorter mean burst cannot give
        // this loss, so it is lengthened.
        let burst = self.burst.max(loss / (1.0 - loss));
        ((loss / (burst * (1.0 - loss))).min(1.0), 1.0 / burst)
    }

    /// Whether the next datagram across this link is lost, stepping the chain whose state is
    /// `bad` (left in the good state when the link is not bursty).
    pub(crate) fn lose(&self, bad: &mut bool, rng: &mut SimRng) -> bool {
        if !self.is_bursty() {
            *bad = false;
            return rng.chance(self.loss);
        }
        let (enter, leave) = self.chain();
        *bad = if *bad {
            !rng.chance(leave)
        } else {
            rng.chance(enter)
        };
        *bad
    }

    /// One datagram's delay across this link: latency, jitter and the reordering delay.
    pub(crate) fn delay(&self, rng: &mut SimRng) -> Duration {
        let mut d = self.latency + rng.duration_up_to(self.jitter);
        if rng.chance(self.reorder) {
            d += self.reorder_delay;
        }
        d
    }
}

impl Default for LinkConfig {
    /// 25 ms of one-way latency and nothing else.
    fn default() -> Self {
        Self::with_latency(Duration::from_millis(25))
    }
}

/// One direction of a link on its own, outside a [`Sim`](crate::Sim): each call to
/// [`transit`](Self::transit) is one datagram, lost or delayed as the [`LinkConfig`] says
/// (with its own seeded generator and, for bursty loss, its own Gilbert-Elliott chain).
///
/// For code that runs its own virtual-time loop, such as `natter-media`'s loopback, which
/// needs the simulator's link model but not its hosts and routing. Duplication is not
/// modelled here (one datagram in, at most one out); reordering comes from jitter and
/// [`LinkConfig::reorder`].
///
/// ```
/// use std::time::Duration;
/// use natter_sim::{LinkConfig, OneWayLink};
///
/// let config = LinkConfig::with_latency(Duration::from_millis(30))
///     .jitter(Duration::from_millis(10))
///     .loss(0.2)
///     .burst(3.0);
/// let mut link = OneWayLink::new(config, 7);
/// let fates: Vec<Option<Duration>> = (0..1000).map(|_| link.transit()).collect();
/// let lost = fates.iter().filter(|f| f.is_none()).count();
/// assert!((150..250).contains(&lost));
/// assert!(fates.iter().flatten().all(|d| {
///     (Duration::from_millis(30)..=Duration::from_millis(40)).contains(d)
/// }));
/// // The same seed gives the same fates.
/// let mut again = OneWayLink::new(config, 7);
/// assert!(fates.iter().all(|f| *f == again.transit()));
/// ```
#[derive(Clone)]
pub struct OneWayLink {
    config: LinkConfig,
    bad: bool,
    rng: SimRng,
}

impl OneWayLink {
    /// A link behaving as `config`, its random draws seeded with `seed`.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        OneWayLink {
            config,
            bad: false,
            rng: SimRng::new(seed),
        }
    }

    /// The link's configuration.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// The fate of the next datagram: `None` if it is lost, otherwise its one-way delay
    /// (latency, plus jitter drawn uniformly from `[0, jitter]`, plus the reordering delay
    /// for the datagrams it holds back).
    pub fn transit(&mut self) -> Option<Duration> {
        if self.config.lose(&mut self.bad, &mut self.rng) {
            None
        } else {
            Some(self.config.delay(&mut self.rng))
        }
    }
}

impl fmt::Debug for OneWayLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneWayLink")
            .field("config", &self.config)
            .field("in_burst", &self.bad)
            .finish_non_exhaustive()
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

    /// Sends `n` datagrams through a fresh link; returns (long-run loss, mean burst length).
    fn loss_and_burst(config: LinkConfig, seed: u64, n: usize) -> (f64, f64) {
        let mut link = OneWayLink::new(config, seed);
        let lost: Vec<bool> = (0..n).map(|_| link.transit().is_none()).collect();
        let losses = lost.iter().filter(|&&l| l).count();
        let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count() + usize::from(lost[0]);
        (
            losses as f64 / n as f64,
            losses as f64 / bursts.max(1) as f64,
        )
    }

    #[test]
    fn independent_and_bursty_loss_hit_their_targets() {
        // Independent: runs of losses are geometric, mean 1 / (1 - loss).
        let (loss, burst) = loss_and_burst(LinkConfig::IDEAL.loss(0.1), 7, 200_000);
        eprintln!("loss 0.1 independent: measured {loss:.4}, mean burst {burst:.3}");
        assert!((loss - 0.1).abs() < 0.005, "{loss}");
        assert!((burst - 1.0 / 0.9).abs() < 0.05, "{burst}");
        // `burst <= 1` is the same independent loss, draw for draw.
        let a = loss_and_burst(LinkConfig::IDEAL.loss(0.1).burst(1.0), 7, 10_000);
        let b = loss_and_burst(LinkConfig::IDEAL.loss(0.1).burst(0.5), 7, 10_000);
        assert_eq!(a, b);
        for (target, mean) in [(0.2, 3.0), (0.05, 2.0), (0.3, 8.0)] {
            let config = LinkConfig::IDEAL.loss(target).burst(mean);
            assert!(config.is_bursty());
            let (loss, burst) = loss_and_burst(config, 11, 400_000);
            eprintln!("loss {target} burst {mean}: measured {loss:.4}, mean burst {burst:.3}");
            assert!(
                (loss - target).abs() < target * 0.05,
                "loss {loss}, target {target} (burst {mean})"
            );
            assert!(
                (burst - mean).abs() < mean * 0.05,
                "mean burst {burst}, target {mean} (loss {target})"
            );
        }
    }

    #[test]
    fn bursts_too_short_for_the_loss_are_lengthened() {
        // 80 % loss cannot come in bursts of 2 with gaps of at least one datagram
        // (at most 2 / 3): the bursts grow to 0.8 / 0.2 = 4 and the loss is met.
        let (loss, burst) = loss_and_burst(LinkConfig::IDEAL.loss(0.8).burst(2.0), 3, 200_000);
        eprintln!("loss 0.8 burst 2 (lengthened): measured {loss:.4}, mean burst {burst:.3}");
        assert!((loss - 0.8).abs() < 0.02, "{loss}");
        assert!((burst - 4.0).abs() < 0.2, "{burst}");
    }

    #[test]
    fn certain_and_degenerate_losses() {
        let mut all = OneWayLink::new(LinkConfig::IDEAL.loss(1.0).burst(3.0), 1);
        assert!((0..100).all(|_| all.transit().is_none()));
        let mut none = OneWayLink::new(LinkConfig::IDEAL.burst(3.0), 1);
        assert!((0..100).all(|_| none.transit() == Some(Duration::ZERO)));
        for burst in [f64::NAN, f64::INFINITY, 1.0, -2.0] {
            assert!(
                !LinkConfig::IDEAL.loss(0.2).burst(burst).is_bursty(),
                "{burst}"
            );
        }
        assert!(!LinkConfig::IDEAL.loss(f64::NAN).burst(3.0).is_bursty());
    }

    #[test]
    fn delays_stay_in_range_and_seeded_runs_repeat() {
        let config = LinkConfig::with_latency(Duration::from_millis(30))
            .jitter(Duration::from_millis(40))
            .loss(0.2)
            .burst(3.0);
        let run = |seed| {
            let mut l = OneWayLink::new(config, seed);
            (0..5000).map(|_| l.transit()).collect::<Vec<_>>()
        };
        let a = run(1);
        assert_eq!(a, run(1));
        assert_ne!(a, run(2));
        let delivered: Vec<Duration> = a.iter().flatten().copied().collect();
        assert!(delivered
            .iter()
            .all(|d| *d >= Duration::from_millis(30) && *d <= Duration::from_millis(70)));
        // The jitter is spread over its whole range.
        let mean = delivered.iter().sum::<Duration>() / delivered.len() as u32;
        assert!(
            (mean.as_secs_f64() - 0.050).abs() < 0.002,
            "mean delay {mean:?}"
        );
    }

    #[test]
    fn composition_keeps_the_longer_burst() {
        let bursty = LinkConfig::IDEAL.loss(0.1).burst(4.0);
        let random = LinkConfig::IDEAL.loss(0.1);
        assert_eq!(bursty.then(&random).burst, 4.0);
        assert_eq!(random.then(&bursty).burst, 4.0);
        assert_eq!(random.then(&random).burst, 1.0);
        // A burst setting without loss is not a bursty segment.
        assert_eq!(LinkConfig::IDEAL.burst(5.0).then(&random).burst, 1.0);
    }

    #[test]
    fn probabilities_are_clamped() {
        assert_eq!(clamp_prob(f64::NAN), 0.0);
        assert_eq!(clamp_prob(-1.0), 0.0);
        assert_eq!(clamp_prob(2.0), 1.0);
        assert_eq!(clamp_prob(0.25), 0.25);
    }
}
