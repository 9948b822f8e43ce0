//! Natter's wire format.
//!
//! # One UDP port, three kinds of traffic
//!
//! Every datagram on a Natter port is classified by its **first byte** ([`classify`]), in the
//! spirit of RFC 7983, so STUN, overlay control and media share one socket (and one NAT
//! binding):
//!
//! | first byte    | class                       | what follows                                   |
//! |---------------|-----------------------------|------------------------------------------------|
//! | `0x00..=0x03` | [`Class::Stun`]             | an RFC 8489 message (magic cookie checked)     |
//! | `0x50..=0x5F` | [`Class::Control`]          | a Natter [`packet`]; low nibble = version      |
//! | `0x60..=0x6F` | [`Class::Media`]            | a Natter data envelope carrying media          |
//! | `0x70..=0x7F` | [`Class::Relay`]            | a relayed frame ([`relay`]: channel + packet)  |
//! | anything else | [`Class::Unknown`]          | dropped and counted                            |
//!
//! The ranges avoid those RFC 7983 assigns to DTLS (20-63), TURN channels (64-79) and RTP/RTCP
//! (128-191), so a future WebRTC gateway can share the port too.
//!
//! # Layers
//!
//! * [`packet`]: the outer packet (handshake messages and the encrypted data envelope).
//! * [`message`]: what travels *inside* an encrypted control envelope, with type numbers
//!   reserved for the whole mission (login, overlay, search, calls, media control, chat, file
//!   transfer, conferences, presence).
//! * [`frame`]: length-prefixed framing of packets on TCP (and TLS) streams.
//! * [`relay`]: the header of a packet relayed by a super node.
//! * [`stun`]: STUN messages (RFC 8489, RFC 5780 attributes), for NAT discovery and keep-alives.
//!
//! Every decoder returns a typed [`DecodeError`] on bad input, never panics and never
//! allocates more than the input it was given.

pub mod frame;
pub mod message;
pub mod packet;
mod reader;
pub mod relay;
pub mod stun;

pub use reader::Reader;

/// The protocol version this build speaks (the low nibble of a Natter packet's first byte).
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest UDP payload Natter ever sends. Chosen to fit a 1280-byte IPv6 minimum MTU with
/// room for a relay header: a file-transfer chunk or a 60 ms fullband Opus frame fits easily.
pub const MAX_DATAGRAM: usize = 1200;

/// The largest frame on a stream or datagram on the wire: a packet of [`MAX_DATAGRAM`] bytes
/// inside a relay header.
pub const MAX_FRAME: usize = MAX_DATAGRAM + relay::HEADER_LEN;

/// STUN's fixed magic cookie (RFC 8489 §5).
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;

/// First-byte base of control packets (`0x50 | version`).
pub const CONTROL_BASE: u8 = 0x50;
/// First-byte base of media packets (`0x60 | version`).
pub const MEDIA_BASE: u8 = 0x60;
/// First-byte base of relayed frames (`0x70 | version`).
pub const RELAY_BASE: u8 = 0x70;

/// The class of a datagram, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A STUN message (first two bits zero and the magic cookie at offset 4).
    Stun,
    /// A Natter control packet of the given protocol version.
    Control {
        /// Protocol version from the low nibble.
        version: u8,
    },
    /// A Natter media packet of the given protocol version.
    Media {
        /// Protocol version from the low nibble.
        version: u8,
    },
    /// A relayed frame (reserved for the relay service).
    Relay {
        /// Protocol version from the low nibble.
        version: u8,
    },
    /// Not ours: drop and count.
    Unknown,
}

/// Classify a datagram by its first byte (and, for STUN, its magic cookie).
///
/// ```
/// use natter_core::wire::{classify, Class};
/// assert_eq!(classify(&[0x51, 0x10]), Class::Control { version: 1 });
/// assert_eq!(classify(&[]), Class::Unknown);
/// ```
pub fn classify(datagram: &[u8]) -> Class {
    let Some(&first) = datagram.first() else {
        return Class::Unknown;
    };
    match first {
        0x00..=0x03 => {
            if datagram.len() >= 20 && datagram[4..8] == STUN_MAGIC_COOKIE.to_be_bytes() {
                Class::Stun
            } else {
                Class::Unknown
            }
        }
        0x50..=0x5F => Class::Control {
            version: first & 0x0F,
        },
        0x60..=0x6F => Class::Media {
            version: first & 0x0F,
        },
        0x70..=0x7F => Class::Relay {
            version: first & 0x0F,
        },
        _ => Class::Unknown,
    }
}

/// Why bytes could not be decoded. Every decoder in [`crate::wire`] returns this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("truncated: needed {needed} more bytes")]
    Truncated {
        /// How many more bytes were needed.
        needed: usize,
    },
    /// Bytes were left over after a complete structure.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// The first byte is not a Natter packet of a supported class.
    #[error("not a Natter packet (first byte {0:#04x})")]
    NotNatter(u8),
    /// The packet's protocol version is not one this build speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The packet type byte is unknown.
    #[error("unknown packet type {0:#04x}")]
    UnknownPacketType(u8),
    /// The message type byte is unknown.
    #[error("unknown message type {0:#04x}")]
    UnknownMessageType(u8),
    /// The message type is reserved for a capability this build does not implement yet.
    #[error("message type {0:?} is reserved but not implemented by this build")]
    Unimplemented(message::MessageType),
    /// A length field exceeds what the structure allows.
    #[error("{what} too long: {len} > {max}")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// The length found.
        len: usize,
        /// The maximum allowed.
        max: usize,
    },
    /// A field holds a value outside its domain.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demultiplexing rule over every first byte: STUN, control, media and relay own
    /// disjoint ranges and everything else is dropped, so one port carries all of them.
    #[test]
    fn classify_covers_every_first_byte() {
        let mut stun_like = [0u8; 20];
        stun_like[4..8].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
        let mut counts = [0usize; 5];
        for first in 0..=255u8 {
            stun_like[0] = first;
            let with_cookie = classify(&stun_like);
            let short = classify(&[first]);
            let expected = match first {
                0x00..=0x03 => Class::Stun,
                0x50..=0x5F => Class::Control {
                    version: first & 0x0F,
                },
                0x60..=0x6F => Class::Media {
                    version: first & 0x0F,
                },
                0x70..=0x7F => Class::Relay {
                    version: first & 0x0F,
                },
                _ => Class::Unknown,
            };
            assert_eq!(with_cookie, expected, "first byte {first:#04x}");
            // STUN needs its 20-byte header and cookie; the others need only the first byte.
            let expected_short = if expected == Class::Stun {
                Class::Unknown
            } else {
                expected
            };
            assert_eq!(short, expected_short, "first byte {first:#04x} alone");
            counts[match expected {
                Class::Stun => 0,
                Class::Control { .. } => 1,
                Class::Media { .. } => 2,
                Class::Relay { .. } => 3,
                Class::Unknown => 4,
            }] += 1;
        }
        assert_eq!(counts, [4, 16, 16, 16, 204]);
        // A STUN-range first byte without the cookie is not STUN.
        assert_eq!(classify(&[0x01; 20]), Class::Unknown);
        assert_eq!(classify(&[]), Class::Unknown);
    }
}
