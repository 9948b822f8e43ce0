//! Natter's benchmarks live in `benches/benches/`; run them with `cargo bench -p natter-benches`.
//!
//! The library holds what the benchmarks share with tests: [`index_sim`], the message-level
//! model of the global index at scale (used by `benches/benches/index_scale.rs` and by the
//! adversarial tests in `benches/tests/index_sim.rs`), and [`presence_sim`], the same for
//! presence pushed to contacts (`benches/benches/presence_scale.rs`,
//! `benches/tests/presence_sim.rs`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod index_sim;
pub mod presence_sim;
