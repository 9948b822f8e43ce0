//! # natter-media
//!
//! The media engine of Natter: Opus encoding and decoding, the adaptive jitter buffer, loss
//! recovery (in-band FEC, redundancy, concealment), audio devices and WAV files, and call
//! quality statistics. The jitter buffer, packetizer and adaptation are sans-IO (they take
//! `now`); libopus and audio devices sit at the edge.
//!
//! ```text
//! AudioSource -> MediaSender --frame--> [Session::seal / network / Session::open]
//!                   ^  (Opus, FEC, RED)                              |
//!                   |                                               v
//!            ReceiverReport <------------------------------ MediaReceiver -> AudioSink
//!             (loss, bursts, jitter)                  (JitterBuffer, Opus, PLC)
//! ```
//!
//! * [`frame`]: the media frame inside the encrypted media envelope (5-byte header).
//! * [`codec`]: Opus through `audiopus` (system libopus).
//! * [`sender`]: framing, encoding, redundancy and adaptation ([`sender::plan`]).
//! * [`jitter`]: the adaptive jitter buffer.
//! * [`receiver`]: jitter buffer plus decoder, with statistics and reports.
//! * [`quality`]: RFC 3550 jitter and the E-model MOS.
//! * [`audio`]: sources and sinks (WAV, synthetic, push/pull, cpal devices), resampling.
//! * [`loopback`]: `natter media-loopback`, over the simulator's link model
//!   ([`natter_sim::OneWayLink`]).
//!
//! ## Example: a frame through sender and receiver
//!
//! ```
//! use std::time::{Duration, Instant};
//! use natter_media::receiver::{MediaReceiver, ReceiverConfig};
//! use natter_media::sender::{MediaSender, SenderConfig};
//!
//! let mut tx = MediaSender::new(SenderConfig::default())?;
//! let mut rx = MediaReceiver::new(ReceiverConfig::default())?;
//! let t0 = Instant::now();
//! let pcm = vec![0i16; tx.frame_samples()];
//! let mut frame = Vec::new();
//! for i in 0..10u32 {
//!     let now = t0 + Duration::from_millis(20 * u64::from(i));
//!     if tx.encode(&pcm, &mut frame)? {
//!         rx.receive(now, &frame)?; // in a call: sealed, sent, opened first
//!     }
//!     let mut out = [0i16; 320];
//!     rx.pull(now, &mut out);
//! }
//! // One frame stays buffered: the receiver keeps 20 ms for loss recovery.
//! assert_eq!(rx.stats().jitter.played, 9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod audio;
pub mod call;
pub mod codec;
pub mod congestion;
pub mod echo;
pub mod frame;
pub mod jitter;
pub mod loopback;
pub mod opus_packet;
pub mod quality;
pub mod receiver;
pub mod sender;

/// The media channel frames travel on.
pub use natter_core::wire::packet::Channel;
