//! Congestion: the receiver measures queuing delay and the rate that gets through, the
//! sender follows the path's capacity with them (sans-IO: every call takes `now`).
//!
//! ## Signals ([`QueueMeter`], at the receiver)
//!
//! * **Queuing delay.** Each frame's transit (arrival minus media time, from an arbitrary
//!   anchor) minus the smallest transit of the last 30 s: how long the frame waited in
//!   queues beyond the fastest frame. Its mean over a report interval is reported. A link
//!   narrower than the stream fills its queue: the delay climbs until the queue overflows.
//!   Thirty seconds is long enough that a queue kept full for a while is still seen as one.
//! * **Received rate** on the wire (frames' bytes plus IPv4, UDP and envelope), over the
//!   interval: what the path delivers when it is the bottleneck.
//!
//! ## Control ([`RateController`], at the sender)
//!
//! A delay-and-loss controller in the manner of Google Congestion Control
//! (draft-ietf-rmcat-gcc-02): *overuse* when the reported queuing delay stands (at least
//! three times the interarrival jitter: a queue delays frames alike, jitter unevenly) and is
//! high (at least [`OVERUSE_QUEUE_MS`]) or rising (at least half that and up by a quarter of it since the
//! previous report), or when loss of at least 10 % comes with a queue of half of it (loss
//! on a link that also queues is congestion; loss with no queue, or with the 20 ms mean of
//! 40 ms of jitter, is the radio or a lossy hop, which redundancy answers, not a lower
//! rate). On overuse the estimate drops to 85 % of the received rate (at least
//! [`FLOOR_BPS`]; the rate is remembered as the path's capacity) and holds for one
//! report, and for as long as 10 % or more is lost within 30 s of the decrease (a queue the
//! receiver cannot see, its transit floor reset by a path switch, must not let it grow back
//! into the loss); otherwise it grows by [`INCREASE_PER_S`] a second, but by only
//! [`NEAR_INCREASE_PER_S`] between 95 % and 110 % of the capacity last measured (GCC's
//! additive increase near convergence: fewer overshoots, so less loss), and once it exceeds
//! what the sender wants by half it is dropped (no limit). The sender fits its plan into the
//! estimate ([`crate::sender::MediaSender::set_bandwidth`]: redundancy goes first, then
//! frames grow, then the bitrate falls).

use std::time::{Duration, Instant};

use natter_core::call::TransitFloor;

/// Queuing delay (ms) that means overuse by itself.
pub const OVERUSE_QUEUE_MS: f64 = 60.0;
/// Growth of the estimate per second without overuse: 15 % (from 16 to 43 kbit/s in 7 s).
pub const INCREASE_PER_S: f64 = 0.15;
/// Growth per second near the capacity last measured: 5 %.
pub const NEAR_INCREASE_PER_S: f64 = 0.05;
/// "Near" the capacity last measured: from this share of it...
const NEAR_LOW: f64 = 0.95;
/// ...to this one.
const NEAR_HIGH: f64 = 1.1;
/// A queue counts as one only when it is at least this many times the interarrival jitter.
const JITTER_FACTOR: f64 = 3.0;
/// The least estimate, bit/s on the wire: about the smallest stream the sender makes (6
/// kbit/s of Opus in 120 ms packets with their headers).
pub const FLOOR_BPS: f64 = 10_000.0;
/// On overuse, the estimate becomes this share of the received rate.
pub const BACKOFF: f64 = 0.85;
/// The controller decides once this much media (seconds) was reported.
const DECISION_S: f64 = 0.95;

/// What the receiver measured over one report interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueReport {
    /// Mean queuing delay of the frames received, ms.
    pub queue_ms: f64,
    /// Rate received on the wire, bit/s (0 when nothing arrived).
    pub recv_bps: f64,
    /// RFC 3550 interarrival jitter, ms (from the receiver report).
    pub jitter_ms: f64,
}

/// The receiver's side: queuing delay and received rate (see the
/// [module documentation](self)).
#[derive(Debug, Clone, Default)]
pub struct QueueMeter {
    /// The smallest transit lately.
    floor: TransitFloor,
    anchor: Option<Instant>,
    sum_queue: f64,
    count: u64,
    bytes: u64,
    since: Option<Instant>,
}

impl QueueMeter {
    /// A frame of media time `media_ms` (its timestamp in ms, unwrapped) arrived at `now`,
    /// `wire_bytes` long on the wire.
    pub fn on_arrival(&mut self, now: Instant, media_ms: f64, wire_bytes: usize) {
        let anchor = *self.anchor.get_or_insert(now);
        self.since.get_or_insert(now);
        let at = now.saturating_duration_since(anchor);
        let transit = at.as_secs_f64() * 1000.0 - media_ms;
        self.sum_queue += self.floor.queue_ms(at.as_secs_f64() * 1000.0, transit);
        self.count += 1;
        self.bytes += wire_bytes as u64;
    }

    /// The figures since the previous call (or the first frame), and a new interval.
    pub fn take(&mut self, now: Instant) -> QueueReport {
        let secs = self
            .since
            .map_or(0.0, |s| now.saturating_duration_since(s).as_secs_f64());
        let r = QueueReport {
            queue_ms: if self.count == 0 {
                0.0
            } else {
                self.sum_queue / self.count as f64
            },
            recv_bps: if secs > 0.0 {
                self.bytes as f64 * 8.0 / secs
            } else {
                0.0
            },
            jitter_ms: 0.0,
        };
        self.sum_queue = 0.0;
        self.count = 0;
        self.bytes = 0;
        self.since = Some(now);
        r
    }

    /// Forget the transit history (after a hold, whose silence is not a queue; or a new
    /// path).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// What the controller decided at a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateState {
    /// No limit: the path carries what the sender wants.
    Unlimited,
    /// Overuse seen: the estimate was lowered.
    Decreased,
    /// Holding the estimate (just after a decrease, or losing a tenth within 30 s of one).
    Hold,
    /// Growing the estimate.
    Increase,
}

/// Loss at or above which an estimate is held, not grown, for [`HOLD_LOSS_FOR_S`] after a
/// decrease.
const HOLD_LOSS: f64 = 0.10;
/// How long after a decrease loss holds the estimate, s (the transit floor's window: by then
/// a queue that is there shows again).
const HOLD_LOSS_FOR_S: f64 = 30.0;

/// The sender's side (see the [module documentation](self)).
#[derive(Debug, Clone)]
pub struct RateController {
    estimate: Option<f64>,
    last_queue: f64,
    hold: bool,
    /// The rate that got through at the last overuse, bit/s.
    capacity: Option<f64>,
    /// Reports since the last decision: (seconds, loss × s, queue ms × s, bit/s × s,
    /// jitter ms × s).
    pending: (f64, f64, f64, f64, f64),
    /// Seconds of reports since the last decrease.
    since_decrease: f64,
    state: RateState,
}

impl Default for RateController {
    fn default() -> Self {
        Self {
            estimate: None,
            last_queue: 0.0,
            hold: false,
            capacity: None,
            pending: (0.0, 0.0, 0.0, 0.0, 0.0),
            since_decrease: 0.0,
            state: RateState::Unlimited,
        }
    }
}

impl RateController {
    /// The estimate of the path's capacity on the wire, bit/s (`None`: no limit).
    pub fn estimate(&self) -> Option<u32> {
        self.estimate.map(|e| e as u32)
    }

    /// The last decision.
    pub fn state(&self) -> RateState {
        self.state
    }

    /// A report covering `elapsed` of media: `loss` (0 to 1) of the frames due, the
    /// receiver's `queue`, and `wanted_bps`, the wire rate the sender would use without a
    /// limit. Returns the new estimate.
    pub fn on_report(
        &mut self,
        elapsed: Duration,
        loss: f64,
        queue: &QueueReport,
        wanted_bps: f64,
    ) -> Option<u32> {
        // Reports come every 100 ms while frames are lost: a mean of five frames' delay is
        // noise. Decide on a second's worth at a time, each report weighted by its length.
        let w = elapsed.as_secs_f64();
        if !(w.is_finite() && w > 0.0) {
            return self.estimate();
        }
        let finite = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
        self.pending.0 += w;
        self.pending.1 += finite(loss).min(1.0) * w;
        self.pending.2 += finite(queue.queue_ms) * w;
        self.pending.3 += finite(queue.recv_bps) * w;
        self.pending.4 += finite(queue.jitter_ms) * w;
        if self.pending.0 < DECISION_S {
            return self.estimate();
        }
        let (total, loss_w, queue_w, recv_w, jitter_w) = std::mem::take(&mut self.pending);
        let queue = QueueReport {
            queue_ms: queue_w / total,
            recv_bps: recv_w / total,
            jitter_ms: jitter_w / total,
        };
        let loss = loss_w / total;
        let dt = total.min(2.0);
        self.since_decrease += total;
        let q = if queue.queue_ms.is_finite() {
            queue.queue_ms.max(0.0)
        } else {
            0.0
        };
        let rising = q >= OVERUSE_QUEUE_MS / 2.0 && q >= self.last_queue + OVERUSE_QUEUE_MS / 4.0;
        let lossy_queue = loss >= 0.10 && q >= OVERUSE_QUEUE_MS / 2.0;
        self.last_queue = q;
        // A standing queue delays every frame alike, so they arrive evenly spaced (low
        // interarrival jitter); jitter delays frames unevenly, and its mean delay is about
        // 1.5 times its RFC 3550 figure (uniform jitter). A queue is only taken for one when
        // it is well above what the jitter explains.
        let jitter = if queue.jitter_ms.is_finite() {
            queue.jitter_ms.max(0.0)
        } else {
            0.0
        };
        let standing = q >= JITTER_FACTOR * jitter;
        let overuse = standing && (q >= OVERUSE_QUEUE_MS || rising || lossy_queue);
        if overuse && queue.recv_bps.is_finite() && queue.recv_bps > 0.0 {
            // What got through while the queue was full is the path's capacity now (never
            // below the smallest stream: a second in which a frozen link delivered three
            // frames must not pin the call there).
            let recv = queue.recv_bps.max(FLOOR_BPS);
            self.capacity = Some(recv);
            let target = recv * BACKOFF;
            // Never up on overuse: a report of a rate received before the last decrease
            // took effect must not undo it.
            self.estimate = Some(self.estimate.map_or(target, |e| e.min(target)));
            self.hold = true;
            self.since_decrease = 0.0;
            self.state = RateState::Decreased;
        } else if let Some(e) = self.estimate {
            if self.hold || (loss >= HOLD_LOSS && self.since_decrease < HOLD_LOSS_FOR_S) {
                // Just after a decrease, or losing a tenth within 30 s of one: a queue the
                // receiver cannot see (its transit floor reset with a path switch, a queue
                // that stood from the start) must not let the estimate grow back into the
                // loss. (GCC's loss-based controller goes further and decreases above 10 %;
                // here random loss must keep the room its redundancy needs, so after 30 s
                // the estimate grows again, and a real bottleneck shows as a queue again.)
                self.hold = false;
                self.state = RateState::Hold;
            } else {
                // Near the capacity last measured, probe gently (a few percent a second),
                // as GCC's additive increase does near convergence; far from it, or once
                // well past it without overuse (the path widened), grow quickly.
                let near = self
                    .capacity
                    .is_some_and(|c| e >= c * NEAR_LOW && e <= c * NEAR_HIGH);
                let rate = if near {
                    NEAR_INCREASE_PER_S
                } else {
                    INCREASE_PER_S
                };
                let grown = e * (1.0 + rate).powf(dt);
                if wanted_bps.is_finite() && grown > wanted_bps * 1.5 {
                    self.estimate = None;
                    self.capacity = None;
                    self.state = RateState::Unlimited;
                } else {
                    self.estimate = Some(grown);
                    self.state = RateState::Increase;
                }
            }
        } else {
            self.state = RateState::Unlimited;
        }
        self.estimate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn the_meter_sees_a_queue_build_and_the_rate_that_gets_through() {
        let t0 = Instant::now();
        let mut m = QueueMeter::default();
        // 1 s at 20 ms spacing, 100 bytes, constant 30 ms transit: no queue, 40 kbit/s.
        for i in 0..50u64 {
            m.on_arrival(at(t0, 20 * i + 30), (20 * i) as f64, 100);
        }
        let r = m.take(at(t0, 1000 + 30));
        assert!(r.queue_ms < 0.01, "{r:?}");
        assert!((r.recv_bps - 40_000.0).abs() < 1_000.0, "{r:?}");
        // Then each frame waits 4 ms longer than the one before: a mean queue of ~100 ms.
        for i in 50..100u64 {
            let extra = 4 * (i - 50);
            m.on_arrival(at(t0, 20 * i + 30 + extra), (20 * i) as f64, 100);
        }
        let r = m.take(at(t0, 2030));
        assert!((r.queue_ms - 98.0).abs() < 3.0, "{r:?}");
        assert!(m.take(at(t0, 3000)).queue_ms == 0.0, "nothing arrived");
    }

    const SEC: Duration = Duration::from_secs(1);

    fn report(queue_ms: f64, recv_bps: f64) -> QueueReport {
        QueueReport {
            queue_ms,
            recv_bps,
            jitter_ms: 2.0,
        }
    }

    #[test]
    fn overuse_backs_off_to_what_arrives_and_quiet_grows_back() {
        let mut c = RateController::default();
        let want = 45_000.0;
        assert_eq!(c.on_report(SEC, 0.0, &report(5.0, 43_000.0), want), None);
        // A 24 kbit/s link: the queue fills and 40 % is lost.
        let e = c.on_report(SEC, 0.4, &report(150.0, 24_000.0), want);
        assert_eq!(e, Some(20_400));
        assert_eq!(c.state(), RateState::Decreased);
        // A late report of a higher rate does not raise it.
        let e = c.on_report(SEC, 0.2, &report(80.0, 30_000.0), want);
        assert_eq!(e, Some(20_400));
        // The queue drains: hold one report, then grow 15 % a second.
        assert_eq!(
            c.on_report(SEC, 0.0, &report(10.0, 20_000.0), want),
            Some(20_400)
        );
        assert_eq!(c.state(), RateState::Hold);
        let e = c
            .on_report(SEC, 0.0, &report(10.0, 20_000.0), want)
            .unwrap();
        assert_eq!(e, 23_460);
        // Quiet seconds: quick growth, slow from 95 % to 110 % of the 30 kbit/s that got
        // through at the last overuse, quick again after; past 1.5 times what is wanted, the
        // limit goes.
        let mut seconds = 1;
        let mut slow = 0;
        let mut last = e;
        while let Some(e) = c.on_report(SEC, 0.0, &report(5.0, 40_000.0), want) {
            let step = f64::from(e) / f64::from(last);
            let near =
                f64::from(last) >= 30_000.0 * NEAR_LOW && f64::from(last) <= 30_000.0 * NEAR_HIGH;
            let rate = if near {
                slow += 1;
                NEAR_INCREASE_PER_S
            } else {
                INCREASE_PER_S
            };
            assert!((step - 1.0 - rate).abs() < 0.001, "{last} -> {e}");
            last = e;
            seconds += 1;
            assert!(seconds < 20);
        }
        assert!(slow >= 2, "{slow}");
        assert_eq!(c.state(), RateState::Unlimited);
    }

    #[test]
    fn short_reports_are_judged_a_second_at_a_time() {
        // 100 ms reports under 20 % loss and 40 ms of jitter: single reports read 0 to 50
        // ms of queue, their second reads 25: not congestion.
        let mut c = RateController::default();
        let tenth = Duration::from_millis(100);
        for i in 0..50 {
            let q = if i % 2 == 0 { 50.0 } else { 0.0 };
            assert_eq!(
                c.on_report(tenth, 0.2, &report(q, 35_000.0), 45_000.0),
                None
            );
        }
        // A second of a real queue is.
        for _ in 0..10 {
            c.on_report(tenth, 0.3, &report(150.0, 24_000.0), 45_000.0);
        }
        assert_eq!(c.estimate(), Some(20_400));
    }

    #[test]
    fn a_queue_jitter_explains_is_not_congestion_and_the_floor_holds() {
        let mut c = RateController::default();
        // 70 ms of mean delay with 30 ms of interarrival jitter: jitter, not a queue.
        let jittery = QueueReport {
            queue_ms: 70.0,
            recv_bps: 40_000.0,
            jitter_ms: 30.0,
        };
        for _ in 0..5 {
            assert_eq!(c.on_report(SEC, 0.15, &jittery, 45_000.0), None);
        }
        // A frozen second that delivered three frames: the estimate stops at the floor's 85 %.
        let frozen = QueueReport {
            queue_ms: 900.0,
            recv_bps: 2_400.0,
            jitter_ms: 5.0,
        };
        assert_eq!(
            c.on_report(SEC, 0.9, &frozen, 45_000.0),
            Some((FLOOR_BPS * BACKOFF) as u32)
        );
    }

    /// Once limited, a tenth of the frames lost holds the estimate even without a queue the
    /// receiver can see (its transit floor reset with a path switch): it grows again when
    /// the loss is gone, or 30 s after the decrease (random loss after a congestion episode
    /// must not pin the call's rate, and with it its redundancy, for good).
    #[test]
    fn heavy_loss_holds_an_estimate_for_a_while() {
        let s = Duration::from_secs(1);
        let limited = |c: &mut RateController| {
            c.on_report(s, 0.3, &report(120.0, 16_000.0), 45_000.0);
            c.estimate().expect("overuse sets a limit")
        };
        let mut c = RateController::default();
        let at = limited(&mut c);
        for _ in 0..5 {
            c.on_report(s, 0.2, &report(0.0, 0.0), 45_000.0);
            assert_eq!(c.estimate(), Some(at), "held at 20 % loss");
        }
        c.on_report(s, 0.0, &report(0.0, 16_000.0), 45_000.0);
        assert!(c.estimate().unwrap() > at, "grows once the loss is gone");
        let mut c = RateController::default();
        let at = limited(&mut c);
        for _ in 0..60 {
            c.on_report(s, 0.15, &report(0.0, 14_000.0), 45_000.0);
        }
        assert!(
            c.estimate().is_none_or(|e| e > at * 2),
            "a minute of random loss after the episode: {:?}",
            c.estimate()
        );
    }

    #[test]
    fn random_loss_without_a_queue_is_not_congestion() {
        let mut c = RateController::default();
        for _ in 0..10 {
            let e = c.on_report(SEC, 0.2, &report(3.0, 34_000.0), 45_000.0);
            assert_eq!(e, None);
        }
        // A rising queue is, before it is long.
        c.on_report(SEC, 0.0, &report(10.0, 43_000.0), 45_000.0);
        assert!(c
            .on_report(SEC, 0.0, &report(40.0, 43_000.0), 45_000.0)
            .is_some());
        // Hostile figures do not panic or set a limit from nothing.
        let mut c = RateController::default();
        assert_eq!(
            c.on_report(SEC, f64::NAN, &report(f64::NAN, f64::INFINITY), f64::NAN),
            None
        );
        assert_eq!(c.on_report(SEC, 1.0, &report(1e9, 0.0), 45_000.0), None);
    }
}
