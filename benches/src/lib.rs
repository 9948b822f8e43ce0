//! Natter's benchmarks live in `benches/benches/`; run them with `cargo bench -p natter-benches`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
