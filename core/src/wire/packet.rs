//! Outer packets: the Noise handshake messages and the encrypted data envelope.
//!
//! ```text
//! handshake init     [0x5V][0x01 XX | 0x02 IK][sender index u32][noise message ...]
//! handshake response [0x5V][0x03][sender index u32][receiver index u32][noise message ...]
//! handshake final    [0x5V][0x04][receiver index u32][noise message ...]
//! session reset      [0x5V][0x05][unknown index u32][reset token 16]
//! data envelope      [0x5V control | 0x6V media][0x10 | key phase][receiver index u32]
//!                    [counter u64][ChaCha20-Poly1305 ciphertext ... ][tag 16]
//! short media        [0x6V][0x20 | key phase][receiver index u32]
//!                    [counter's low 32 bits u32][ciphertext ... ][tag 16]
//! ```
//!
//! The short media envelope saves 4 of the 30 bytes every 20 ms voice frame pays: the
//! counter's high half is its key generation, which the receiver knows (the current one, or
//! the next or previous one when the key phase bit differs; see
//! [`crate::crypto::Session::open`]). The full counter is still the AEAD nonce, never reused
//! under one key, and the replay window still sees every full counter.
//!
//! All integers are big-endian. Session indices are chosen at random by the receiving side so a
//! packet finds its session in O(1) without trial decryption and without trusting the source
//! address (which changes when a call moves from a direct path to a relay). The data header is
//! the AEAD's associated data, so any bit flipped in it fails authentication.
//!
//! A session reset answers a data envelope for an index the receiver does not know (it restarted
//! and forgot the session): the token is the one the same device gave inside the encrypted
//! handshake ([`crate::crypto::reset_token`]), so only that device can make the peer drop the
//! session early. A reset is never larger than the envelope that caused it.

use bytes::{BufMut, BytesMut};

use super::PROTOCOL_VERSION;
use super::{classify, Class, DecodeError, Reader, CONTROL_BASE, MAX_DATAGRAM, MEDIA_BASE};

/// Length of the data envelope header (class, type, receiver index, counter).
pub const DATA_HEADER_LEN: usize = 14;
/// Length of the short media envelope header (class, type, receiver index, counter's low half).
pub const SHORT_DATA_HEADER_LEN: usize = 10;
/// Length of the Poly1305 authentication tag.
pub const TAG_LEN: usize = 16;
/// The largest Noise handshake message accepted inside a packet.
pub const MAX_NOISE_MESSAGE: usize = MAX_DATAGRAM - 10;

const TYPE_INIT_XX: u8 = 0x01;
const TYPE_INIT_IK: u8 = 0x02;
const TYPE_RESPONSE: u8 = 0x03;
const TYPE_FINAL: u8 = 0x04;
const TYPE_RESET: u8 = 0x05;
const TYPE_DATA: u8 = 0x10;
const TYPE_DATA_SHORT: u8 = 0x20;

/// Length of a session reset packet.
pub const RESET_LEN: usize = 2 + 4 + crate::crypto::RESET_TOKEN_LEN;

/// A session index: a random number chosen by the side that will *receive* packets carrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionIndex(pub u32);

/// The Noise handshake pattern of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Noise XX: three messages, neither side knows the other's static key beforehand.
    Xx,
    /// Noise IK: two messages, the initiator knows the responder's static key (from the index).
    Ik,
}

/// Whether a data envelope carries control messages or media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Control messages ([`super::message`]); first byte `0x5V`.
    Control,
    /// Media frames; first byte `0x6V`.
    Media,
}

/// The cleartext header of an encrypted data envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Control or media.
    pub channel: Channel,
    /// Which of the two alternating key generations sealed it.
    pub key_phase: bool,
    /// The receiver's session index.
    pub receiver: SessionIndex,
    /// The explicit 64-bit counter, also the AEAD nonce. A short header carries only its low
    /// 32 bits (decoded, the high half is zero until the session completes it).
    pub counter: u64,
    /// The short media form: the counter's low 32 bits on the wire.
    pub short: bool,
}

impl DataHeader {
    /// Append the header: 14 bytes, or 10 in the short form.
    pub fn encode(&self, out: &mut impl BufMut) {
        debug_assert!(
            !self.short || self.channel == Channel::Media,
            "only media comes short"
        );
        let base = match self.channel {
            Channel::Control => CONTROL_BASE,
            Channel::Media => MEDIA_BASE,
        };
        out.put_u8(base | PROTOCOL_VERSION);
        if self.short {
            out.put_u8(TYPE_DATA_SHORT | u8::from(self.key_phase));
            out.put_u32(self.receiver.0);
            out.put_u32(self.counter as u32);
        } else {
            out.put_u8(TYPE_DATA | u8::from(self.key_phase));
            out.put_u32(self.receiver.0);
            out.put_u64(self.counter);
        }
    }

    /// Its length on the wire.
    pub fn wire_len(&self) -> usize {
        if self.short {
            SHORT_DATA_HEADER_LEN
        } else {
            DATA_HEADER_LEN
        }
    }
}

/// A decoded outer packet, borrowing from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// First handshake message.
    HandshakeInit {
        /// XX or IK.
        pattern: Pattern,
        /// The initiator's session index.
        sender: SessionIndex,
        /// The Noise message.
        noise: &'a [u8],
    },
    /// The responder's handshake message.
    HandshakeResponse {
        /// The responder's session index.
        sender: SessionIndex,
        /// The initiator's session index.
        receiver: SessionIndex,
        /// The Noise message.
        noise: &'a [u8],
    },
    /// Third message of XX.
    HandshakeFinal {
        /// The responder's session index.
        receiver: SessionIndex,
        /// The Noise message.
        noise: &'a [u8],
    },
    /// An encrypted data envelope.
    Data {
        /// The cleartext header.
        header: DataHeader,
        /// Ciphertext including the 16-byte tag.
        ciphertext: &'a [u8],
    },
    /// "I no longer know this session": the answer of a restarted device to data it cannot open.
    Reset {
        /// The index the sender chose for the session (the receiver's remote index).
        index: SessionIndex,
        /// The session's reset token, proving the sender is the device the session was with.
        token: [u8; crate::crypto::RESET_TOKEN_LEN],
    },
}

impl<'a> Packet<'a> {
    /// Decode one datagram (or one stream frame's contents).
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() > MAX_DATAGRAM {
            return Err(DecodeError::TooLong {
                what: "packet",
                len: buf.len(),
                max: MAX_DATAGRAM,
            });
        }
        let channel = match classify(buf) {
            Class::Control { version } | Class::Media { version }
                if version != PROTOCOL_VERSION =>
            {
                return Err(DecodeError::UnsupportedVersion(version))
            }
            Class::Control { .. } => Channel::Control,
            Class::Media { .. } => Channel::Media,
            _ => return Err(DecodeError::NotNatter(buf.first().copied().unwrap_or(0))),
        };
        let mut r = Reader::new(&buf[1..]);
        let ty = r.u8()?;
        if channel == Channel::Media && ty & 0xFE != TYPE_DATA && ty & 0xFE != TYPE_DATA_SHORT {
            return Err(DecodeError::UnknownPacketType(ty));
        }
        let packet = match ty {
            TYPE_INIT_XX | TYPE_INIT_IK => Packet::HandshakeInit {
                pattern: if ty == TYPE_INIT_XX {
                    Pattern::Xx
                } else {
                    Pattern::Ik
                },
                sender: SessionIndex(r.u32()?),
                noise: nonempty(r.rest())?,
            },
            TYPE_RESPONSE => Packet::HandshakeResponse {
                sender: SessionIndex(r.u32()?),
                receiver: SessionIndex(r.u32()?),
                noise: nonempty(r.rest())?,
            },
            TYPE_FINAL => Packet::HandshakeFinal {
                receiver: SessionIndex(r.u32()?),
                noise: nonempty(r.rest())?,
            },
            TYPE_RESET => {
                let packet = Packet::Reset {
                    index: SessionIndex(r.u32()?),
                    token: r.array()?,
                };
                r.finish()?;
                packet
            }
            t if t & 0xFE == TYPE_DATA
                || (t & 0xFE == TYPE_DATA_SHORT && channel == Channel::Media) =>
            {
                let short = t & 0xFE == TYPE_DATA_SHORT;
                let header = DataHeader {
                    channel,
                    key_phase: t & 1 == 1,
                    receiver: SessionIndex(r.u32()?),
                    counter: if short { u64::from(r.u32()?) } else { r.u64()? },
                    short,
                };
                let ciphertext = r.rest();
                if ciphertext.len() < TAG_LEN {
                    return Err(DecodeError::Truncated {
                        needed: TAG_LEN - ciphertext.len(),
                    });
                }
                Packet::Data { header, ciphertext }
            }
            t => return Err(DecodeError::UnknownPacketType(t)),
        };
        Ok(packet)
    }

    /// Append the encoded packet to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match *self {
            Packet::HandshakeInit {
                pattern,
                sender,
                noise,
            } => {
                out.put_u8(CONTROL_BASE | PROTOCOL_VERSION);
                out.put_u8(match pattern {
                    Pattern::Xx => TYPE_INIT_XX,
                    Pattern::Ik => TYPE_INIT_IK,
                });
                out.put_u32(sender.0);
                out.put_slice(noise);
            }
            Packet::HandshakeResponse {
                sender,
                receiver,
                noise,
            } => {
                out.put_u8(CONTROL_BASE | PROTOCOL_VERSION);
                out.put_u8(TYPE_RESPONSE);
                out.put_u32(sender.0);
                out.put_u32(receiver.0);
                out.put_slice(noise);
            }
            Packet::HandshakeFinal { receiver, noise } => {
                out.put_u8(CONTROL_BASE | PROTOCOL_VERSION);
                out.put_u8(TYPE_FINAL);
                out.put_u32(receiver.0);
                out.put_slice(noise);
            }
            Packet::Data { header, ciphertext } => {
                header.encode(out);
                out.put_slice(ciphertext);
            }
            Packet::Reset { index, token } => {
                out.put_u8(CONTROL_BASE | PROTOCOL_VERSION);
                out.put_u8(TYPE_RESET);
                out.put_u32(index.0);
                out.put_slice(&token);
            }
        }
    }
}

fn nonempty(noise: &[u8]) -> Result<&[u8], DecodeError> {
    if noise.is_empty() {
        Err(DecodeError::Truncated { needed: 1 })
    } else {
        Ok(noise)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(p: Packet<'_>) {
        let mut buf = BytesMut::new();
        p.encode(&mut buf);
        assert_eq!(Packet::decode(&buf).unwrap(), p);
    }

    /// A media header with every field set to a recognisable value, encoded.
    fn sample_media_header(short: bool) -> BytesMut {
        let mut buf = BytesMut::new();
        DataHeader {
            channel: Channel::Media,
            key_phase: true,
            receiver: SessionIndex(0x0102_0304),
            counter: 0x0A0B_0C0D_0E0F_1011,
            short,
        }
        .encode(&mut buf);
        buf
    }

    #[test]
    fn data_header_is_fourteen_bytes_and_byte_exact() {
        let buf = sample_media_header(false);
        assert_eq!(
            &buf[..],
            &[0x61, 0x11, 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11]
        );
        assert_eq!(buf.len(), DATA_HEADER_LEN);
    }

    #[test]
    fn short_media_header_is_ten_bytes_and_byte_exact() {
        let mut buf = sample_media_header(true);
        assert_eq!(&buf[..], &[0x61, 0x21, 1, 2, 3, 4, 0x0E, 0x0F, 0x10, 0x11]);
        assert_eq!(buf.len(), SHORT_DATA_HEADER_LEN);
        // Control traffic never comes short.
        buf[0] = 0x51;
        buf.put_slice(&[0; TAG_LEN]);
        assert_eq!(
            Packet::decode(&buf),
            Err(DecodeError::UnknownPacketType(0x21))
        );
    }

    #[test]
    fn rejects_wrong_version_and_media_handshakes() {
        assert_eq!(
            Packet::decode(&[0x52, 0x01, 0, 0, 0, 1, 9]),
            Err(DecodeError::UnsupportedVersion(2))
        );
        assert_eq!(
            Packet::decode(&[0x61, 0x01, 0, 0, 0, 1, 9]),
            Err(DecodeError::UnknownPacketType(1))
        );
        assert!(matches!(
            Packet::decode(&[0x51, 0x10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 5]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Packet::decode(&[0x51, 0x03, 0, 0, 0, 1, 0, 0, 0, 2]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = Packet::decode(&data);
        }

        #[test]
        fn decode_never_panics_on_natter_prefix(ty in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = vec![0x51, ty];
            buf.extend_from_slice(&data);
            let _ = Packet::decode(&buf);
        }

        #[test]
        fn handshake_roundtrip(xx in any::<bool>(), s in any::<u32>(), r in any::<u32>(),
                               noise in proptest::collection::vec(any::<u8>(), 1..MAX_NOISE_MESSAGE)) {
            let pattern = if xx { Pattern::Xx } else { Pattern::Ik };
            roundtrip(Packet::HandshakeInit { pattern, sender: SessionIndex(s), noise: &noise });
            roundtrip(Packet::HandshakeResponse { sender: SessionIndex(s), receiver: SessionIndex(r), noise: &noise });
            roundtrip(Packet::HandshakeFinal { receiver: SessionIndex(r), noise: &noise });
        }

        #[test]
        fn reset_roundtrip(i in any::<u32>(), token in any::<[u8; crate::crypto::RESET_TOKEN_LEN]>()) {
            let p = Packet::Reset { index: SessionIndex(i), token };
            let mut buf = BytesMut::new();
            p.encode(&mut buf);
            prop_assert_eq!(buf.len(), RESET_LEN);
            prop_assert_eq!(Packet::decode(&buf).unwrap(), p);
            buf.put_u8(0);
            prop_assert!(Packet::decode(&buf).is_err());
        }

        #[test]
        fn data_roundtrip(media in any::<bool>(), phase in any::<bool>(), r in any::<u32>(), c in any::<u64>(),
                          short in any::<bool>(),
                          ct in proptest::collection::vec(any::<u8>(), TAG_LEN..MAX_DATAGRAM - DATA_HEADER_LEN)) {
            // Only media comes short, and then with the low half of the counter.
            let short = short && media;
            let header = DataHeader {
                channel: if media { Channel::Media } else { Channel::Control },
                key_phase: phase,
                receiver: SessionIndex(r),
                counter: if short { c & 0xFFFF_FFFF } else { c },
                short,
            };
            roundtrip(Packet::Data { header, ciphertext: &ct });
        }
    }
}
