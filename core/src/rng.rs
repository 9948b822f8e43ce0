//! Deterministic randomness for sans-IO machines.
//!
//! Machines never draw OS randomness: a [`Rng`] is built from a seed that comes in through
//! configuration. The runtime (`natter-transport`) seeds it from the operating system; the
//! simulator and tests seed it from a number, so a run can be replayed exactly.

use rand_chacha::ChaCha20Rng;
use rand_core::{Rng as _, SeedableRng};

/// A ChaCha20-based cryptographically secure generator with an explicit seed.
#[derive(Debug, Clone)]
pub struct Rng(ChaCha20Rng);

impl Rng {
    /// A generator from a 32-byte seed (use OS randomness for this in production).
    pub fn from_seed_bytes(seed: [u8; 32]) -> Self {
        Self(ChaCha20Rng::from_seed(seed))
    }

    /// A generator from a small number, for tests and simulations.
    pub fn from_seed(seed: u64) -> Self {
        Self(ChaCha20Rng::seed_from_u64(seed))
    }

    /// Derive an independent generator (for a sub-machine or a handshake).
    pub fn fork(&mut self) -> Self {
        Self::from_seed_bytes(self.bytes32())
    }

    /// 32 random bytes.
    pub fn bytes32(&mut self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.fill(&mut b);
        b
    }

    /// Fill `dest` with random bytes.
    pub fn fill(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    /// A random u32.
    pub fn u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// A random u64.
    pub fn u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// A uniformly random fraction in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl snow::types::Random for Rng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.fill(dest);
        Ok(())
    }
}
