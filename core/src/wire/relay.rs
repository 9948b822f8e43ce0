//! Relayed frames: a Natter packet travelling through a super node's relay.
//!
//! ```text
//! byte 0      0x70 | version (0x71)
//! bytes 1-4   channel word, u32 big-endian:
//!               bit 31     direction: 0 = from a party to the relay, 1 = from the relay to a party
//!               bits 0-30  channel number (nonzero, chosen by the relay)
//! then        the relayed packet, byte for byte (a handshake message or data envelope of an
//!             end-to-end session the relay cannot read)
//! ```
//!
//! A frame travels as one UDP datagram or as one length-prefixed frame on a stream. The relay
//! forwards a frame by flipping the direction bit and sending the same bytes to the other
//! party, so what it sends is never longer than what it received. The direction bit lets one
//! node be a relay for others and a party of its own calls on the same port without ambiguity.

use bytes::{BufMut, BytesMut};

use super::{DecodeError, Reader, PROTOCOL_VERSION, RELAY_BASE};

/// Length of the relay header.
pub const HEADER_LEN: usize = 5;
/// The direction bit: set on frames from the relay to a party.
pub const TO_PARTY: u32 = 0x8000_0000;
/// The channel number's bits.
pub const CHANNEL_MASK: u32 = 0x7FFF_FFFF;

/// A decoded relay header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayHeader {
    /// The channel number (31 bits, nonzero).
    pub channel: u32,
    /// True on frames from the relay to a party.
    pub to_party: bool,
}

/// Append a relay frame: the header, then `packet`.
pub fn encode(channel: u32, to_party: bool, packet: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_LEN + packet.len());
    out.put_u8(RELAY_BASE | PROTOCOL_VERSION);
    let dir = if to_party { TO_PARTY } else { 0 };
    out.put_u32(dir | (channel & CHANNEL_MASK));
    out.put_slice(packet);
}

/// Split a relay frame into its header and the relayed packet.
///
/// Errors: shorter than the header, a first byte other than `0x71`, channel number zero, or
/// an empty packet.
pub fn decode(frame: &[u8]) -> Result<(RelayHeader, &[u8]), DecodeError> {
    let mut r = Reader::new(frame);
    let first = r.u8()?;
    if first != RELAY_BASE | PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion(first & 0x0F));
    }
    let word = r.u32()?;
    let channel = word & CHANNEL_MASK;
    if channel == 0 {
        return Err(DecodeError::Invalid("relay channel"));
    }
    let packet = &frame[HEADER_LEN..];
    if packet.is_empty() {
        return Err(DecodeError::Invalid("empty relayed packet"));
    }
    Ok((
        RelayHeader {
            channel,
            to_party: word & TO_PARTY != 0,
        },
        packet,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn roundtrip_both_directions() {
        for to_party in [false, true] {
            let mut b = BytesMut::new();
            encode(0x1234_5678, to_party, b"packet", &mut b);
            assert_eq!(b.len(), HEADER_LEN + 6);
            let (h, p) = decode(&b).unwrap();
            assert_eq!(h.channel, 0x1234_5678);
            assert_eq!(h.to_party, to_party);
            assert_eq!(p, b"packet");
        }
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x71, 0, 0, 0]).is_err());
        assert!(decode(&[0x71, 0, 0, 0, 1]).is_err(), "no packet");
        assert!(decode(&[0x71, 0x80, 0, 0, 0, 9]).is_err(), "channel 0");
        assert!(decode(&[0x72, 0, 0, 0, 1, 9]).is_err(), "version 2");
        assert!(decode(&[0x51, 0, 0, 0, 1, 9]).is_err(), "not a relay frame");
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&data);
        }
    }
}
