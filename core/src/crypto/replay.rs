//! Anti-replay sliding window in the style of RFC 6479.
//!
//! A ring of 64-bit blocks remembers which counters in the last [`WINDOW`] have been seen.
//! Checking and recording are separate steps so that a packet which fails authentication never
//! changes the window: [`ReplayWindow::check`] before decrypting, [`ReplayWindow::record`] after.
//! Both are O(1) except when the window slides far, which clears at most the whole ring once.

/// Number of 64-bit blocks in the ring.
const BLOCKS: usize = 64;
const BLOCK_BITS: u64 = 64;
/// How far behind the highest counter seen a packet may be and still be accepted: 4032 packets
/// (one block of the ring is kept as slack, as RFC 6479 does). At 50 packets per second that is
/// 80 seconds of reordering, far more than any jitter buffer waits.
pub const WINDOW: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Why a counter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// This counter was already accepted once.
    #[error("replayed packet")]
    Replayed,
    /// This counter is older than the window remembers.
    #[error("packet too old for the replay window")]
    TooOld,
}

/// The window's state.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// One more than the highest counter recorded; 0 when nothing was recorded.
    next: u64,
    bitmap: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            next: 0,
            bitmap: [0; BLOCKS],
        }
    }
}

impl ReplayWindow {
    /// Would `counter` be accepted? Changes nothing. `u64::MAX` is never valid: senders stop
    /// one short of it (see [`crate::crypto::SealError::Exhausted`]).
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter == u64::MAX {
            return Err(ReplayError::TooOld);
        }
        if counter >= self.next {
            return Ok(());
        }
        if self.next - 1 - counter >= WINDOW {
            return Err(ReplayError::TooOld);
        }
        let (block, bit) = Self::position(counter);
        if self.bitmap[block] & bit != 0 {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Record `counter` as seen. Call only after [`ReplayWindow::check`] passed and the packet
    /// authenticated.
    pub fn record(&mut self, counter: u64) {
        if counter >= self.next {
            let old_block = if self.next == 0 {
                None
            } else {
                Some((self.next - 1) / BLOCK_BITS)
            };
            let new_block = counter / BLOCK_BITS;
            match old_block {
                Some(old) if new_block - old < BLOCKS as u64 => {
                    for b in old + 1..=new_block {
                        self.bitmap[(b % BLOCKS as u64) as usize] = 0;
                    }
                }
                _ => self.bitmap = [0; BLOCKS],
            }
            self.next = counter.saturating_add(1);
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] |= bit;
    }

    /// The highest counter recorded, if any.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    fn position(counter: u64) -> (usize, u64) {
        (
            ((counter / BLOCK_BITS) % BLOCKS as u64) as usize,
            1u64 << (counter % BLOCK_BITS),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn accept(w: &mut ReplayWindow, c: u64) -> Result<(), ReplayError> {
        w.check(c)?;
        w.record(c);
        Ok(())
    }

    #[test]
    fn in_order_reordered_replayed_and_old() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.highest(), None);
        for c in 0..100 {
            accept(&mut w, c).unwrap();
        }
        assert_eq!(accept(&mut w, 50), Err(ReplayError::Replayed));
        accept(&mut w, 3000).unwrap();
        accept(&mut w, 200).unwrap(); // reordered, inside the window
        assert_eq!(accept(&mut w, 200), Err(ReplayError::Replayed));
        accept(&mut w, 10_000).unwrap();
        assert_eq!(accept(&mut w, 3000), Err(ReplayError::TooOld));
        assert_eq!(accept(&mut w, 10_000 - WINDOW), Err(ReplayError::TooOld));
        accept(&mut w, 10_000 - WINDOW + 1).unwrap();
        const { assert!(WINDOW >= 2048) };
    }

    #[test]
    fn check_does_not_mutate() {
        let mut w = ReplayWindow::default();
        w.record(5);
        let before = w.clone();
        let _ = w.check(6);
        let _ = w.check(u64::MAX);
        assert_eq!(before.next, w.next);
        assert_eq!(before.bitmap, w.bitmap);
    }

    #[test]
    fn huge_jumps_and_max_counter() {
        let mut w = ReplayWindow::default();
        accept(&mut w, 0).unwrap();
        accept(&mut w, u64::MAX - 1).unwrap();
        assert_eq!(accept(&mut w, 0), Err(ReplayError::TooOld));
        assert_eq!(accept(&mut w, u64::MAX - 1), Err(ReplayError::Replayed));
        assert_eq!(accept(&mut w, u64::MAX), Err(ReplayError::TooOld));
    }

    proptest! {
        /// The window agrees with a model that remembers every counter exactly, for every
        /// counter inside the window.
        #[test]
        fn matches_exact_model(counters in proptest::collection::vec(0u64..20_000, 1..2000)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut highest: Option<u64> = None;
            for c in counters {
                let expected = match highest {
                    Some(h) if c <= h && h - c >= WINDOW => Err(ReplayError::TooOld),
                    _ if seen.contains(&c) => Err(ReplayError::Replayed),
                    _ => Ok(()),
                };
                prop_assert_eq!(accept(&mut w, c), expected);
                if expected.is_ok() {
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
