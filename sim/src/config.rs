//! Simulator-wide configuration.

use std::time::Duration;

use crate::link::LinkConfig;

/// How reliable streams behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// How long a connection attempt whose SYN was silently dropped (no route, NAT, lost too
    /// often) takes to fail. Refusals by a reachable host without a matching socket fail
    /// after one trip back instead.
    pub connect_timeout: Duration,
    /// Initial retransmission timeout: each time a segment is lost on a lossy link, its
    /// delivery is delayed by the current timeout, which then doubles.
    pub rto: Duration,
    /// After this many losses of one segment the stream is reset (both ends get
    /// `Input::StreamClosed`), as a real TCP stack eventually gives up.
    pub max_retransmits: u32,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            connect_timeout: Duration::from_secs(3),
            rto: Duration::from_millis(200),
            max_retransmits: 8,
        }
    }
}

/// Configuration of a [`Sim`](crate::Sim).
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed of the one ChaCha20 generator behind every random decision (loss, jitter,
    /// reordering, duplication, NAT port allocation).
    pub seed: u64,
    /// The default link between any two nodes on the public internet. Override it per pair
    /// with [`Sim::set_link`](crate::Sim::set_link) and per node with
    /// [`Sim::set_access_link`](crate::Sim::set_access_link).
    pub internet: LinkConfig,
    /// Reliable stream behaviour.
    pub stream: StreamConfig,
    /// Record every datagram (with contents) in the capture log; see
    /// [`Sim::captured`](crate::Sim::captured).
    pub capture: bool,
    /// Keep trace entries in memory. The digest and counters are maintained either way.
    pub record_trace: bool,
    /// Panic when more than this many consecutive steps happen without virtual time moving
    /// forward, which means some machine keeps asking for a timeout in the past.
    pub max_steps_per_instant: u64,
}

impl SimConfig {
    /// The default configuration with the given seed.
    pub fn with_seed(seed: u64) -> Self {
        SimConfig {
            seed,
            ..Self::default()
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            internet: LinkConfig::default(),
            stream: StreamConfig::default(),
            capture: false,
            record_trace: true,
            max_steps_per_instant: 1_000_000,
        }
    }
}
