//! Queuing delay: how much longer a frame took than the fastest one lately.

use std::collections::VecDeque;

/// The smallest transit of the last [`TransitFloor::SECONDS`] seconds, kept per second of
/// arrival: a frame's transit above it is the time it waited in queues. Thirty seconds is
/// long enough that a queue kept full for a while is still seen as one. Used by the call's
/// receiver reports (`MediaReport`'s extension) and by the media engine's own meter.
#[derive(Debug, Clone, Default)]
pub struct TransitFloor {
    /// (second of arrival, smallest transit in it, ms).
    mins: VecDeque<(u64, f64)>,
}

impl TransitFloor {
    /// How long the floor remembers, seconds.
    pub const SECONDS: u64 = 30;

    /// A frame arrived `at_ms` after some anchor with a transit of `transit_ms` (arrival
    /// minus media time, from any origin): its queuing delay, ms (0 for the fastest).
    pub fn queue_ms(&mut self, at_ms: f64, transit_ms: f64) -> f64 {
        let second = (at_ms.max(0.0) / 1000.0) as u64;
        match self.mins.back_mut() {
            Some((s, m)) if *s == second => *m = m.min(transit_ms),
            _ => {
                self.mins.push_back((second, transit_ms));
                while self
                    .mins
                    .front()
                    .is_some_and(|(s, _)| second.saturating_sub(*s) >= Self::SECONDS)
                {
                    self.mins.pop_front();
                }
            }
        }
        let floor = self
            .mins
            .iter()
            .map(|(_, m)| *m)
            .fold(f64::INFINITY, f64::min);
        (transit_ms - floor).max(0.0)
    }

    /// Forget everything (a hold, whose silence moves the sender's media clock against
    /// ours, or another path, with its own transit).
    pub fn clear(&mut self) {
        self.mins.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_fastest_of_the_last_thirty_seconds() {
        let mut f = TransitFloor::default();
        assert_eq!(f.queue_ms(0.0, 40.0), 0.0);
        assert_eq!(f.queue_ms(500.0, 90.0), 50.0);
        // 29 s later the 40 ms transit still counts; 31 s later it has gone.
        assert_eq!(f.queue_ms(29_500.0, 60.0), 20.0);
        assert_eq!(f.queue_ms(31_000.0, 60.0), 0.0);
        f.clear();
        assert_eq!(f.queue_ms(32_000.0, 75.0), 0.0);
    }
}
