//! # natter-media
//!
//! The media engine of Natter: Opus encoding and decoding, the adaptive jitter buffer, loss
//! recovery (FEC, redundancy, concealment), audio devices and WAV files, and call quality
//! statistics. The jitter buffer and packetizer are sans-IO (they take `now`); codecs and
//! devices sit at the edge.
//!
//! This crate is part of the workspace layout from the start; the engine lands with the media
//! issue. Media frames already have their channel on the wire
//! ([`natter_core::wire::packet::Channel::Media`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// The media channel frames travel on.
pub use natter_core::wire::packet::Channel;
