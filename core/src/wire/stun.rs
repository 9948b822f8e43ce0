//! STUN messages (RFC 8489) with the NAT-behaviour-discovery attributes of RFC 5780.
//!
//! A small, allocation-bounded codec: [`Message::decode`] parses a datagram into a
//! [`Message`] whose [`Attribute`]s are typed where this crate uses them and kept as
//! [`Attribute::Unknown`] otherwise (MESSAGE-INTEGRITY, USERNAME, PRIORITY, ...), and
//! [`Message::encode`] writes one back, always ending it with a FINGERPRINT.
//!
//! # What the decoder checks
//!
//! * the header: at least 20 bytes, the first two bits zero, the magic cookie, a length that
//!   is a multiple of 4 and equal to the number of bytes after the header;
//! * the limits: at most [`MAX_MESSAGE`] bytes and [`MAX_ATTRIBUTES`] attributes (not counting
//!   FINGERPRINT);
//! * every attribute fits, padding included (padding bytes themselves are ignored, as RFC 8489
//!   §14 asks);
//! * FINGERPRINT, when present, is the last attribute and matches (it is optional);
//! * the attributes it interprets are well formed (address family and length, ERROR-CODE
//!   number below 100, an even UNKNOWN-ATTRIBUTES, a 4-byte CHANGE-REQUEST, text of at most
//!   763 bytes).
//!
//! MESSAGE-INTEGRITY is not verified: this codec serves unauthenticated Binding requests (NAT
//! discovery), and the attribute is kept as [`Attribute::Unknown`] like any other it does not
//! interpret. Text that is not valid UTF-8 is decoded lossily (U+FFFD), then cut to 763 bytes
//! on a character boundary, so every decoded message re-encodes to itself.
//!
//! The decoder never panics, and what it allocates is bounded: at most [`MAX_ATTRIBUTES`]
//! attributes, whose values are copies of (at most [`MAX_MESSAGE`] bytes of) input, text
//! growing at most threefold through lossy decoding and then cut to [`MAX_TEXT`].
//!
//! ```
//! use natter_core::wire::stun::{Attribute, Class, Message, TransactionId};
//!
//! let request = Message::binding_request(TransactionId([7; 12]));
//! let bytes = request.encode();
//! assert_eq!(Message::decode(&bytes).unwrap(), request);
//!
//! let response = Message {
//!     class: Class::Success,
//!     attributes: vec![Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap())],
//!     ..request
//! };
//! let decoded = Message::decode(&response.encode()).unwrap();
//! assert_eq!(decoded.mapped_address(), Some("192.0.2.1:32853".parse().unwrap()));
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// STUN's fixed magic cookie (RFC 8489 §5), also the XOR key of XOR-MAPPED-ADDRESS.
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// The Binding method, the only one RFC 8489 defines.
pub const BINDING: u16 = 0x0001;

/// The largest message [`Message::decode`] accepts and [`Message::encode`] produces, in bytes
/// RFC 5780's PADDING test pads requests past the Ethernet MTU (coturn's client sends 1532
/// bytes), so the limit is the receive buffer of Natter's runtime.
pub const MAX_MESSAGE: usize = 2048;

/// The most attributes a message may carry, FINGERPRINT not counted.
pub const MAX_ATTRIBUTES: usize = 64;

/// The longest SOFTWARE value or ERROR-CODE reason phrase, in bytes (RFC 8489 §14.8, §14.14).
pub const MAX_TEXT: usize = 763;

/// Size of the fixed STUN header.
pub const HEADER_LEN: usize = 20;

/// XORed into the CRC-32 of FINGERPRINT (RFC 8489 §14.7: "STUN" in ASCII).
const FINGERPRINT_XOR: u32 = 0x5354_554E;
/// A FINGERPRINT attribute with its header.
const FINGERPRINT_LEN: usize = 8;

/// Attribute type numbers (RFC 8489 §18.3, RFC 5780 §9.1).
pub mod kind {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// CHANGE-REQUEST (RFC 5780).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// USERNAME (kept as [`super::Attribute::Unknown`]).
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (kept as [`super::Attribute::Unknown`], not verified).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PADDING (RFC 5780; kept as [`super::Attribute::Unknown`]).
    pub const PADDING: u16 = 0x0026;
    /// RESPONSE-PORT (RFC 5780; kept as [`super::Attribute::Unknown`], read with
    /// [`super::Message::response_port`]).
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT: handled by the codec itself, never an [`super::Attribute`].
    pub const FINGERPRINT: u16 = 0x8028;
    /// RESPONSE-ORIGIN (RFC 5780).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS (RFC 5780).
    pub const OTHER_ADDRESS: u16 = 0x802C;
}

/// CHANGE-REQUEST's "change IP" flag (RFC 5780 §7.2, flag A).
const CHANGE_IP: u32 = 0x04;
/// CHANGE-REQUEST's "change port" flag (RFC 5780 §7.2, flag B).
const CHANGE_PORT: u32 = 0x02;

/// The 96-bit transaction id that pairs a response with its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionId(pub [u8; 12]);

/// A message's class (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request, answered by a success or error response.
    Request,
    /// An indication: no response.
    Indication,
    /// A success response.
    Success,
    /// An error response (carries ERROR-CODE).
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }

    fn from_bits(bits: u16) -> Self {
        match bits & 0b11 {
            0b00 => Class::Request,
            0b01 => Class::Indication,
            0b10 => Class::Success,
            _ => Class::Error,
        }
    }
}

/// One attribute of a message.
///
/// Addresses are carried as [`SocketAddr`]; an IPv6 address's flow info and scope id are not
/// on the wire and decode as zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// MAPPED-ADDRESS (0x0001): the client's reflexive address, in clear (RFC 3489 servers).
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS (0x0020): the client's reflexive address, XORed with the cookie and
    /// the transaction id so that NATs rewriting addresses in payloads leave it alone.
    XorMappedAddress(SocketAddr),
    /// RESPONSE-ORIGIN (0x802B, RFC 5780): the address the response was sent from.
    ResponseOrigin(SocketAddr),
    /// OTHER-ADDRESS (0x802C, RFC 5780): the server's alternate address and port.
    OtherAddress(SocketAddr),
    /// CHANGE-REQUEST (0x0003, RFC 5780): answer from the alternate IP and/or port.
    ChangeRequest {
        /// Flag A: answer from the other IP address.
        change_ip: bool,
        /// Flag B: answer from the other port.
        change_port: bool,
    },
    /// SOFTWARE (0x8022): a free-form description of the agent (at most [`MAX_TEXT`] bytes).
    Software(String),
    /// ERROR-CODE (0x0009): `code` is class × 100 + number (300-699 in practice), `reason` a
    /// human-readable phrase of at most [`MAX_TEXT`] bytes.
    ErrorCode {
        /// The error code, e.g. 420.
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// UNKNOWN-ATTRIBUTES (0x000A): the comprehension-required types a 420 response refused.
    UnknownAttributes(Vec<u16>),
    /// Any other attribute, kept verbatim (its padding stripped).
    ///
    /// `kind` should not be one of the types above (it would decode as the typed variant) nor
    /// FINGERPRINT (which [`Message::encode`] writes itself and skips here).
    Unknown {
        /// The attribute type.
        kind: u16,
        /// The value, without padding.
        value: Vec<u8>,
    },
}

impl Attribute {
    /// The attribute's type number on the wire.
    pub fn kind(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => kind::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => kind::XOR_MAPPED_ADDRESS,
            Attribute::ResponseOrigin(_) => kind::RESPONSE_ORIGIN,
            Attribute::OtherAddress(_) => kind::OTHER_ADDRESS,
            Attribute::ChangeRequest { .. } => kind::CHANGE_REQUEST,
            Attribute::Software(_) => kind::SOFTWARE,
            Attribute::ErrorCode { .. } => kind::ERROR_CODE,
            Attribute::UnknownAttributes(_) => kind::UNKNOWN_ATTRIBUTES,
            Attribute::Unknown { kind, .. } => *kind,
        }
    }

    /// Whether a type is comprehension-required (RFC 8489 §14: below 0x8000).
    pub fn is_comprehension_required(kind: u16) -> bool {
        kind < 0x8000
    }

    /// Append the value (without header or padding). In strict mode refuse what would not
    /// round-trip; otherwise clamp it.
    fn write_value(
        &self,
        out: &mut Vec<u8>,
        transaction: &TransactionId,
        strict: bool,
    ) -> Result<(), StunError> {
        match self {
            Attribute::MappedAddress(a)
            | Attribute::ResponseOrigin(a)
            | Attribute::OtherAddress(a) => {
                write_address(out, *a, None);
            }
            Attribute::XorMappedAddress(a) => write_address(out, *a, Some(transaction)),
            Attribute::ChangeRequest {
                change_ip,
                change_port,
            } => {
                let mut flags = 0u32;
                if *change_ip {
                    flags |= CHANGE_IP;
                }
                if *change_port {
                    flags |= CHANGE_PORT;
                }
                out.extend_from_slice(&flags.to_be_bytes());
            }
            Attribute::Software(text) => {
                out.extend_from_slice(clamp_text(text, kind::SOFTWARE, strict)?.as_bytes());
            }
            Attribute::ErrorCode { code, reason } => {
                if strict && !(300..=699).contains(code) {
                    return Err(StunError::BadAttribute {
                        kind: kind::ERROR_CODE,
                        why: "error code outside 300-699",
                    });
                }
                // Class in 3 bits, number below 100: codes up to 799 survive a round trip.
                let class = (code / 100).min(7) as u8;
                let number = (code % 100) as u8;
                out.extend_from_slice(&[0, 0, class, number]);
                out.extend_from_slice(clamp_text(reason, kind::ERROR_CODE, strict)?.as_bytes());
            }
            Attribute::UnknownAttributes(kinds) => {
                for k in kinds {
                    out.extend_from_slice(&k.to_be_bytes());
                }
            }
            Attribute::Unknown { value, .. } => out.extend_from_slice(value),
        }
        Ok(())
    }

    fn parse(kind: u16, value: &[u8], transaction: &TransactionId) -> Result<Self, StunError> {
        Ok(match kind {
            kind::MAPPED_ADDRESS => Attribute::MappedAddress(read_address(kind, value, None)?),
            kind::XOR_MAPPED_ADDRESS => {
                Attribute::XorMappedAddress(read_address(kind, value, Some(transaction))?)
            }
            kind::RESPONSE_ORIGIN => Attribute::ResponseOrigin(read_address(kind, value, None)?),
            kind::OTHER_ADDRESS => Attribute::OtherAddress(read_address(kind, value, None)?),
            kind::CHANGE_REQUEST => {
                let flags: [u8; 4] = value.try_into().map_err(|_| StunError::BadAttribute {
                    kind,
                    why: "CHANGE-REQUEST is not 4 bytes",
                })?;
                let flags = u32::from_be_bytes(flags);
                Attribute::ChangeRequest {
                    change_ip: flags & CHANGE_IP != 0,
                    change_port: flags & CHANGE_PORT != 0,
                }
            }
            kind::SOFTWARE => Attribute::Software(read_text(kind, value)?),
            kind::ERROR_CODE => {
                let (head, reason) = value.split_at_checked(4).ok_or(StunError::BadAttribute {
                    kind,
                    why: "ERROR-CODE shorter than 4 bytes",
                })?;
                let class = u16::from(head[2] & 0x07);
                let number = u16::from(head[3]);
                if number > 99 {
                    return Err(StunError::BadAttribute {
                        kind,
                        why: "ERROR-CODE number above 99",
                    });
                }
                Attribute::ErrorCode {
                    code: class * 100 + number,
                    reason: read_text(kind, reason)?,
                }
            }
            kind::UNKNOWN_ATTRIBUTES => {
                if !value.len().is_multiple_of(2) {
                    return Err(StunError::BadAttribute {
                        kind,
                        why: "UNKNOWN-ATTRIBUTES has an odd length",
                    });
                }
                Attribute::UnknownAttributes(
                    value
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect(),
                )
            }
            _ => Attribute::Unknown {
                kind,
                value: value.to_vec(),
            },
        })
    }
}

/// Why a datagram is not a valid STUN message (or, from [`Message::try_encode`], why a message
/// cannot be encoded faithfully).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Shorter than the 20-byte header.
    #[error("{0} bytes is shorter than a STUN header")]
    TooShort(usize),
    /// Longer than [`MAX_MESSAGE`].
    #[error("{0} bytes is longer than the {MAX_MESSAGE}-byte limit")]
    TooLong(usize),
    /// The first two bits are not zero: not STUN.
    #[error("the first two bits are not zero")]
    NotStun,
    /// The magic cookie is wrong (an RFC 3489 message, or not STUN).
    #[error("bad magic cookie {0:#010x}")]
    BadCookie(u32),
    /// The header's length is not a multiple of 4 or does not match the datagram.
    #[error("header length {declared} does not match the {actual} bytes after the header")]
    BadLength {
        /// The length in the header.
        declared: usize,
        /// The bytes actually following the header.
        actual: usize,
    },
    /// An attribute (or its padding) runs past the end of the message.
    #[error("attribute {kind:#06x} runs past the end of the message")]
    Truncated {
        /// The attribute type.
        kind: u16,
    },
    /// An attribute this codec interprets is malformed (or, when encoding, out of range).
    #[error("attribute {kind:#06x}: {why}")]
    BadAttribute {
        /// The attribute type.
        kind: u16,
        /// What is wrong.
        why: &'static str,
    },
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("more than {MAX_ATTRIBUTES} attributes")]
    TooManyAttributes,
    /// Something follows FINGERPRINT, which must be last.
    #[error("attribute after FINGERPRINT")]
    AfterFingerprint,
    /// FINGERPRINT does not match the message.
    #[error("FINGERPRINT mismatch: computed {computed:#010x}, found {found:#010x}")]
    BadFingerprint {
        /// What the message's bytes give.
        computed: u32,
        /// What the attribute says.
        found: u32,
    },
    /// A method number does not fit in 12 bits (encoding only).
    #[error("method {0:#x} does not fit in 12 bits")]
    BadMethod(u16),
}

/// A STUN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Request, indication, success or error.
    pub class: Class,
    /// The method (12 bits), e.g. [`BINDING`].
    pub method: u16,
    /// Pairs responses with requests.
    pub transaction: TransactionId,
    /// The attributes in wire order, FINGERPRINT excluded.
    pub attributes: Vec<Attribute>,
}

impl Message {
    /// A Binding request without attributes.
    pub fn binding_request(transaction: TransactionId) -> Self {
        Self {
            class: Class::Request,
            method: BINDING,
            transaction,
            attributes: Vec::new(),
        }
    }

    /// Encode, always appending FINGERPRINT.
    ///
    /// Never fails: what [`Message::try_encode`] would refuse is clamped instead. The method is
    /// masked to 12 bits, text is cut to [`MAX_TEXT`] bytes on a character boundary, an
    /// error code's class is capped at 7, an [`Attribute::Unknown`] FINGERPRINT is skipped,
    /// and attributes that would take the message past [`MAX_ATTRIBUTES`] or [`MAX_MESSAGE`]
    /// are left off (with all those after them). The result always decodes.
    pub fn encode(&self) -> Vec<u8> {
        // The lenient writer has no error path.
        self.write(false).unwrap_or_default()
    }

    /// Encode, refusing anything [`Message::encode`] would have to clamp, so that on success
    /// `Message::decode(&bytes) == Ok(self.clone())` (given [`Attribute::Unknown`] kinds
    /// outside the typed ones).
    ///
    /// # Errors
    /// [`StunError::BadMethod`], [`StunError::TooLong`], [`StunError::TooManyAttributes`] or
    /// [`StunError::BadAttribute`] (text too long, error code outside 300-699, an explicit
    /// FINGERPRINT).
    pub fn try_encode(&self) -> Result<Vec<u8>, StunError> {
        self.write(true)
    }

    fn write(&self, strict: bool) -> Result<Vec<u8>, StunError> {
        if strict && self.method > 0x0FFF {
            return Err(StunError::BadMethod(self.method));
        }
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&message_type(self.class, self.method).to_be_bytes());
        out.extend_from_slice(&[0, 0]); // length, filled in below
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.transaction.0);
        let mut count = 0;
        let mut value = Vec::new();
        for attr in &self.attributes {
            if attr.kind() == kind::FINGERPRINT {
                if strict {
                    return Err(StunError::BadAttribute {
                        kind: kind::FINGERPRINT,
                        why: "FINGERPRINT is written by the encoder",
                    });
                }
                continue;
            }
            value.clear();
            attr.write_value(&mut value, &self.transaction, strict)?;
            let padded = value.len().next_multiple_of(4);
            let total = out.len() + 4 + padded + FINGERPRINT_LEN;
            if count == MAX_ATTRIBUTES || total > MAX_MESSAGE {
                if !strict {
                    break;
                }
                return Err(if count == MAX_ATTRIBUTES {
                    StunError::TooManyAttributes
                } else {
                    StunError::TooLong(total)
                });
            }
            out.extend_from_slice(&attr.kind().to_be_bytes());
            // value.len() < MAX_MESSAGE, checked just above.
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
            out.extend_from_slice(&value);
            out.resize(out.len() + padded - value.len(), 0);
            count += 1;
        }
        let length = (out.len() + FINGERPRINT_LEN - HEADER_LEN) as u16;
        out[2..4].copy_from_slice(&length.to_be_bytes());
        let fingerprint = crc32(&out) ^ FINGERPRINT_XOR;
        out.extend_from_slice(&kind::FINGERPRINT.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&fingerprint.to_be_bytes());
        Ok(out)
    }

    /// Decode one message (a whole datagram), verifying FINGERPRINT when present.
    ///
    /// # Errors
    /// A [`StunError`] saying what is wrong; see the [module documentation](self) for the
    /// checks.
    pub fn decode(buf: &[u8]) -> Result<Self, StunError> {
        if buf.len() < HEADER_LEN {
            return Err(StunError::TooShort(buf.len()));
        }
        if buf.len() > MAX_MESSAGE {
            return Err(StunError::TooLong(buf.len()));
        }
        let ty = u16::from_be_bytes([buf[0], buf[1]]);
        if ty & 0xC000 != 0 {
            return Err(StunError::NotStun);
        }
        let declared = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        let cookie = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        if cookie != MAGIC_COOKIE {
            return Err(StunError::BadCookie(cookie));
        }
        let actual = buf.len() - HEADER_LEN;
        if declared % 4 != 0 || declared != actual {
            return Err(StunError::BadLength { declared, actual });
        }
        let mut transaction = [0u8; 12];
        transaction.copy_from_slice(&buf[8..HEADER_LEN]);
        let transaction = TransactionId(transaction);
        let (class, method) = split_type(ty);

        let mut attributes = Vec::new();
        let mut offset = HEADER_LEN;
        while let Some(rest) = buf.get(offset..).filter(|r| !r.is_empty()) {
            let Some(head) = rest.get(..4) else {
                return Err(StunError::Truncated { kind: 0 });
            };
            let kind = u16::from_be_bytes([head[0], head[1]]);
            let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let padded = len.next_multiple_of(4);
            if rest.len() - 4 < padded {
                return Err(StunError::Truncated { kind });
            }
            let value = &rest[4..4 + len];
            if kind == kind::FINGERPRINT {
                let found: [u8; 4] = value.try_into().map_err(|_| StunError::BadAttribute {
                    kind,
                    why: "FINGERPRINT is not 4 bytes",
                })?;
                if rest.len() != FINGERPRINT_LEN {
                    return Err(StunError::AfterFingerprint);
                }
                let found = u32::from_be_bytes(found);
                let computed = crc32(&buf[..offset]) ^ FINGERPRINT_XOR;
                if found != computed {
                    return Err(StunError::BadFingerprint { computed, found });
                }
                break;
            }
            if attributes.len() == MAX_ATTRIBUTES {
                return Err(StunError::TooManyAttributes);
            }
            attributes.push(Attribute::parse(kind, value, &transaction)?);
            offset += 4 + padded;
        }
        Ok(Self {
            class,
            method,
            transaction,
            attributes,
        })
    }

    /// The reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (first occurrence).
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.attributes
            .iter()
            .find_map(|a| match a {
                Attribute::XorMappedAddress(addr) => Some(*addr),
                _ => None,
            })
            .or_else(|| {
                self.attributes.iter().find_map(|a| match a {
                    Attribute::MappedAddress(addr) => Some(*addr),
                    _ => None,
                })
            })
    }

    /// OTHER-ADDRESS: the server's alternate address, if it has one (RFC 5780).
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::OtherAddress(addr) => Some(*addr),
            _ => None,
        })
    }

    /// RESPONSE-ORIGIN: where the server says it sent the response from (RFC 5780).
    pub fn response_origin(&self) -> Option<SocketAddr> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ResponseOrigin(addr) => Some(*addr),
            _ => None,
        })
    }

    /// CHANGE-REQUEST's `(change_ip, change_port)` flags, if present.
    pub fn change_request(&self) -> Option<(bool, bool)> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ChangeRequest {
                change_ip,
                change_port,
            } => Some((*change_ip, *change_port)),
            _ => None,
        })
    }

    /// RESPONSE-PORT's port (RFC 5780 §7.5), if present and well formed: a client asking for
    /// the response on another port of its own IP. The attribute itself stays an
    /// [`Attribute::Unknown`] (its value: the port, then two bytes of padding).
    pub fn response_port(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::Unknown { kind, value } if *kind == kind::RESPONSE_PORT => {
                match value.as_slice() {
                    [hi, lo] | [hi, lo, _, _] => Some(u16::from_be_bytes([*hi, *lo])),
                    _ => None,
                }
            }
            _ => None,
        })
    }

    /// ERROR-CODE's code, if present.
    pub fn error_code(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ErrorCode { code, .. } => Some(*code),
            _ => None,
        })
    }

    /// The comprehension-required attribute types (below 0x8000) this codec does not
    /// interpret, without duplicates, in order of appearance: a server answers a request
    /// carrying any with 420 (Unknown Attribute).
    pub fn unknown_required(&self) -> Vec<u16> {
        let mut out: Vec<u16> = Vec::new();
        for a in &self.attributes {
            if let Attribute::Unknown { kind, .. } = a {
                if Attribute::is_comprehension_required(*kind) && !out.contains(kind) {
                    out.push(*kind);
                }
            }
        }
        out
    }
}

/// The 14-bit message type: method bits M11-M0 interleaved with class bits C1, C0
/// (RFC 8489 §5, figure 3).
fn message_type(class: Class, method: u16) -> u16 {
    let m = method & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn split_type(ty: u16) -> (Class, u16) {
    let class = ((ty >> 4) & 1) | ((ty >> 7) & 2);
    let method = (ty & 0x000F) | ((ty >> 1) & 0x0070) | ((ty >> 2) & 0x0F80);
    (Class::from_bits(class), method)
}

/// The XOR key of an address: the cookie, followed by the transaction id for IPv6.
fn xor_key(transaction: &TransactionId) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    key[4..].copy_from_slice(&transaction.0);
    key
}

/// MAPPED-ADDRESS layout: reserved byte, family (1 = IPv4, 2 = IPv6), port, address; XORed
/// with the cookie (and transaction id) when `xor` is given.
fn write_address(out: &mut Vec<u8>, addr: SocketAddr, xor: Option<&TransactionId>) {
    let key = xor.map(xor_key).unwrap_or([0; 16]);
    let port = addr.port() ^ u16::from_be_bytes([key[0], key[1]]);
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend(ip.octets().iter().zip(&key).map(|(a, k)| a ^ k));
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0, 2]);
            out.extend_from_slice(&port.to_be_bytes());
            out.extend(ip.octets().iter().zip(&key).map(|(a, k)| a ^ k));
        }
    }
}

fn read_address(
    kind: u16,
    value: &[u8],
    xor: Option<&TransactionId>,
) -> Result<SocketAddr, StunError> {
    let key = xor.map(xor_key).unwrap_or([0; 16]);
    let bad = |why| StunError::BadAttribute { kind, why };
    let (head, ip) = value
        .split_at_checked(4)
        .ok_or(bad("address shorter than 4 bytes"))?;
    let port = u16::from_be_bytes([head[2], head[3]]) ^ u16::from_be_bytes([key[0], key[1]]);
    let mut octets = [0u8; 16];
    for (o, (a, k)) in octets.iter_mut().zip(ip.iter().zip(&key)) {
        *o = a ^ k;
    }
    match (head[1], ip.len()) {
        (1, 4) => {
            let ip = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]);
            Ok(SocketAddr::new(IpAddr::V4(ip), port))
        }
        (2, 16) => Ok(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(octets),
            port,
            0,
            0,
        ))),
        (1 | 2, _) => Err(bad("address length does not match its family")),
        _ => Err(bad("unknown address family")),
    }
}

/// SOFTWARE or a reason phrase: at most [`MAX_TEXT`] bytes on the wire, decoded lossily and
/// cut back to [`MAX_TEXT`] bytes (replacement characters are longer than the bytes they
/// replace) so that it re-encodes unchanged.
fn read_text(kind: u16, value: &[u8]) -> Result<String, StunError> {
    if value.len() > MAX_TEXT {
        return Err(StunError::BadAttribute {
            kind,
            why: "text longer than 763 bytes",
        });
    }
    let text = String::from_utf8_lossy(value);
    Ok(truncate_text(&text).to_owned())
}

fn clamp_text(text: &str, kind: u16, strict: bool) -> Result<&str, StunError> {
    if strict && text.len() > MAX_TEXT {
        return Err(StunError::BadAttribute {
            kind,
            why: "text longer than 763 bytes",
        });
    }
    Ok(truncate_text(text))
}

/// The longest prefix of `text` of at most [`MAX_TEXT`] bytes ending on a char boundary.
fn truncate_text(text: &str) -> &str {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), table computed at compile time.
const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC_TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 5769 §2.2: sample IPv4 response (SOFTWARE, XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY,
    /// FINGERPRINT). Note the SOFTWARE padding byte is a space, not zero.
    const RFC5769_IPV4_RESPONSE: [u8; 80] = [
        0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1,
        0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99, 0xfd, 0x9e, 0x90, 0xc3,
        0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b, 0xe7, 0xd7, 0x80, 0x28, 0x00,
        0x04, 0xc0, 0x7d, 0x4c, 0x96,
    ];

    /// RFC 5769 §2.3: sample IPv6 response.
    const RFC5769_IPV6_RESPONSE: [u8; 92] = [
        0x01, 0x01, 0x00, 0x48, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6,
        0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74, 0x20, 0x76,
        0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x14, 0x00, 0x02, 0xa1, 0x47, 0x01,
        0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2, 0xb9, 0xd9,
        0x00, 0x08, 0x00, 0x14, 0xa3, 0x82, 0x95, 0x4e, 0x4b, 0xe6, 0x7b, 0xf1, 0x17, 0x84, 0xc9,
        0x7c, 0x82, 0x92, 0xc2, 0x75, 0xbf, 0xe3, 0xed, 0x41, 0x80, 0x28, 0x00, 0x04, 0xc8, 0xfb,
        0x0b, 0x4c,
    ];

    const RFC5769_TRANSACTION: [u8; 12] = [
        0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae,
    ];

    fn check_rfc5769(sample: &[u8], mapped: SocketAddr, mi: &[u8]) {
        let m = Message::decode(sample).expect("RFC 5769 sample decodes");
        assert_eq!(m.class, Class::Success);
        assert_eq!(m.method, BINDING);
        assert_eq!(m.transaction, TransactionId(RFC5769_TRANSACTION));
        assert_eq!(
            m.attributes,
            vec![
                Attribute::Software("test vector".into()),
                Attribute::XorMappedAddress(mapped),
                Attribute::Unknown {
                    kind: kind::MESSAGE_INTEGRITY,
                    value: mi.to_vec(),
                },
            ]
        );
        assert_eq!(m.mapped_address(), Some(mapped));
        assert_eq!(m.unknown_required(), vec![kind::MESSAGE_INTEGRITY]);

        // The sample's own FINGERPRINT is what our CRC computes.
        let n = sample.len();
        let found = u32::from_be_bytes(sample[n - 4..].try_into().unwrap());
        assert_eq!(crc32(&sample[..n - 8]) ^ FINGERPRINT_XOR, found);

        // Re-encoding gives the same bytes except the SOFTWARE padding byte (the sample pads
        // with a space, we with zero) and hence the FINGERPRINT value.
        let again = m.encode();
        assert_eq!(again.len(), n);
        let mut expected = sample.to_vec();
        expected[35] = 0;
        assert_eq!(again[..n - 4], expected[..n - 4]);
        assert_eq!(Message::decode(&again).unwrap(), m);

        // Any flipped bit, padding included, breaks the FINGERPRINT (or the header checks);
        // except in FINGERPRINT's own type, which turns it into an optional attribute of
        // another type and leaves a valid message without FINGERPRINT.
        for i in (0..n).filter(|i| !(n - 8..n - 6).contains(i)) {
            let mut bad = sample.to_vec();
            bad[i] ^= 0x01;
            assert!(Message::decode(&bad).is_err(), "flipped byte {i} accepted");
        }
    }

    #[test]
    fn rfc5769_ipv4_response() {
        check_rfc5769(
            &RFC5769_IPV4_RESPONSE,
            "192.0.2.1:32853".parse().unwrap(),
            &RFC5769_IPV4_RESPONSE[52..72],
        );
    }

    #[test]
    fn rfc5769_ipv6_response() {
        check_rfc5769(
            &RFC5769_IPV6_RESPONSE,
            "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                .parse()
                .unwrap(),
            &RFC5769_IPV6_RESPONSE[64..84],
        );
    }

    #[test]
    fn padding_bytes_are_covered_by_fingerprint_but_ignored_without_it() {
        let mut sample = RFC5769_IPV4_RESPONSE.to_vec();
        sample[35] = 0x55;
        assert!(matches!(
            Message::decode(&sample),
            Err(StunError::BadFingerprint { .. })
        ));
        // Without FINGERPRINT (and with the length fixed) the padding value does not matter.
        sample.truncate(sample.len() - 8);
        sample[3] -= 8;
        let m = Message::decode(&sample).unwrap();
        assert_eq!(m.attributes[0], Attribute::Software("test vector".into()));
    }

    #[test]
    fn crc32_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn cookie_matches_the_demultiplexer() {
        assert_eq!(MAGIC_COOKIE, crate::wire::STUN_MAGIC_COOKIE);
        let bytes = Message::binding_request(TransactionId([1; 12])).encode();
        assert_eq!(crate::wire::classify(&bytes), crate::wire::Class::Stun);
    }

    #[test]
    fn binding_request_bytes() {
        let bytes = Message::binding_request(TransactionId([0xAB; 12])).encode();
        assert_eq!(bytes.len(), 28);
        assert_eq!(&bytes[..4], &[0x00, 0x01, 0x00, 0x08]);
        assert_eq!(&bytes[4..8], &MAGIC_COOKIE.to_be_bytes());
        assert_eq!(&bytes[20..24], &[0x80, 0x28, 0x00, 0x04]);
    }

    #[test]
    fn message_types() {
        for (class, ty) in [
            (Class::Request, 0x0001),
            (Class::Indication, 0x0011),
            (Class::Success, 0x0101),
            (Class::Error, 0x0111),
        ] {
            assert_eq!(message_type(class, BINDING), ty);
            assert_eq!(split_type(ty), (class, BINDING));
        }
        // ALLOCATE (0x003) success response from TURN, and the largest method.
        assert_eq!(message_type(Class::Success, 0x0003), 0x0103);
        assert_eq!(
            split_type(message_type(Class::Error, 0x0FFF)),
            (Class::Error, 0x0FFF)
        );
    }

    #[test]
    fn header_checks() {
        let good = Message::binding_request(TransactionId([3; 12])).encode();
        assert!(Message::decode(&good).is_ok());
        assert_eq!(Message::decode(&good[..19]), Err(StunError::TooShort(19)));
        let mut bad = good.clone();
        bad[0] |= 0x40;
        assert_eq!(Message::decode(&bad), Err(StunError::NotStun));
        let mut bad = good.clone();
        bad[4] ^= 1;
        assert!(matches!(
            Message::decode(&bad),
            Err(StunError::BadCookie(_))
        ));
        let mut bad = good.clone();
        bad[3] = 9;
        assert!(matches!(
            Message::decode(&bad),
            Err(StunError::BadLength { .. })
        ));
        let mut bad = good.clone();
        bad.extend_from_slice(&[0; 4]);
        assert!(matches!(
            Message::decode(&bad),
            Err(StunError::BadLength { .. })
        ));
        let long = vec![0u8; MAX_MESSAGE + 1];
        assert_eq!(
            Message::decode(&long),
            Err(StunError::TooLong(MAX_MESSAGE + 1))
        );
    }

    /// Build a message by hand (no FINGERPRINT) from raw attribute bytes.
    fn raw(attrs: &[u8]) -> Vec<u8> {
        let mut out = vec![0x00, 0x01];
        out.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&[9; 12]);
        out.extend_from_slice(attrs);
        out
    }

    #[test]
    fn attribute_after_fingerprint_is_refused() {
        let mut bytes = Message::binding_request(TransactionId([5; 12])).encode();
        bytes.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        bytes[3] += 4;
        assert_eq!(Message::decode(&bytes), Err(StunError::AfterFingerprint));
    }

    #[test]
    fn malformed_attributes_are_refused() {
        let cases: &[(&[u8], StunError)] = &[
            // Value runs past the end.
            (
                &[0x80, 0x22, 0x00, 0x08, 1, 2, 3, 4],
                StunError::Truncated { kind: 0x8022 },
            ),
            // Padding runs past the end.
            (
                &[0x80, 0x22, 0x00, 0x05, 1, 2, 3, 4],
                StunError::Truncated { kind: 0x8022 },
            ),
            // IPv4 family with an IPv6-sized address.
            (
                &[0, 1, 0, 8, 0, 2, 0, 80, 1, 2, 3, 4],
                StunError::BadAttribute {
                    kind: kind::MAPPED_ADDRESS,
                    why: "address length does not match its family",
                },
            ),
            (
                &[0, 0x20, 0, 8, 0, 3, 0, 80, 1, 2, 3, 4],
                StunError::BadAttribute {
                    kind: kind::XOR_MAPPED_ADDRESS,
                    why: "unknown address family",
                },
            ),
            (
                &[0, 3, 0, 2, 0, 6, 0, 0],
                StunError::BadAttribute {
                    kind: kind::CHANGE_REQUEST,
                    why: "CHANGE-REQUEST is not 4 bytes",
                },
            ),
            (
                &[0, 9, 0, 4, 0, 0, 4, 100],
                StunError::BadAttribute {
                    kind: kind::ERROR_CODE,
                    why: "ERROR-CODE number above 99",
                },
            ),
            (
                &[0, 0x0A, 0, 3, 0, 1, 2, 0],
                StunError::BadAttribute {
                    kind: kind::UNKNOWN_ATTRIBUTES,
                    why: "UNKNOWN-ATTRIBUTES has an odd length",
                },
            ),
            (
                &[0x80, 0x28, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0],
                StunError::BadAttribute {
                    kind: kind::FINGERPRINT,
                    why: "FINGERPRINT is not 4 bytes",
                },
            ),
        ];
        for (attrs, err) in cases {
            assert_eq!(Message::decode(&raw(attrs)).as_ref(), Err(err), "{attrs:?}");
        }
    }

    #[test]
    fn attribute_count_is_bounded() {
        let ok: Vec<u8> = [0x80, 0x99, 0, 0].repeat(MAX_ATTRIBUTES);
        assert_eq!(Message::decode(&raw(&ok)).unwrap().attributes.len(), 64);
        let too_many: Vec<u8> = [0x80, 0x99, 0, 0].repeat(MAX_ATTRIBUTES + 1);
        assert_eq!(
            Message::decode(&raw(&too_many)),
            Err(StunError::TooManyAttributes)
        );
    }

    #[test]
    fn change_request_flags() {
        // RFC 5780 §7.2: A (change IP) = 0x4, B (change port) = 0x2; other bits ignored.
        for (byte, flags) in [
            (0x00, (false, false)),
            (0x04, (true, false)),
            (0x02, (false, true)),
            (0x06, (true, true)),
            (0xF9, (false, false)),
        ] {
            let m = Message::decode(&raw(&[0, 3, 0, 4, 0, 0, 0, byte])).unwrap();
            assert_eq!(m.change_request(), Some(flags));
        }
        let m = Message {
            attributes: vec![Attribute::ChangeRequest {
                change_ip: true,
                change_port: true,
            }],
            ..Message::binding_request(TransactionId([0; 12]))
        };
        assert_eq!(&m.encode()[20..28], &[0, 3, 0, 4, 0, 0, 0, 6]);
    }

    #[test]
    fn invalid_utf8_text_is_decoded_lossily_and_round_trips() {
        let m = Message::decode(&raw(&[0x80, 0x22, 0, 3, b'a', 0xFF, b'b', 0])).unwrap();
        assert_eq!(m.attributes, vec![Attribute::Software("a\u{FFFD}b".into())]);
        // 763 invalid bytes become 763 replacement characters, cut back to 763 bytes.
        let mut attrs = vec![0x80, 0x22, 0x02, 0xFB];
        attrs.extend(std::iter::repeat_n(0xFF, 763));
        attrs.push(0);
        let m = Message::decode(&raw(&attrs)).unwrap();
        let Attribute::Software(s) = &m.attributes[0] else {
            panic!()
        };
        assert!(s.len() <= MAX_TEXT);
        assert_eq!(Message::decode(&m.try_encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn response_port_is_read_from_the_unknown_attribute() {
        let with = |value: Vec<u8>| Message {
            attributes: vec![Attribute::Unknown {
                kind: kind::RESPONSE_PORT,
                value,
            }],
            ..Message::binding_request(TransactionId([0; 12]))
        };
        assert_eq!(with(vec![0xc2, 0xc1, 0, 0]).response_port(), Some(0xc2c1));
        assert_eq!(with(vec![0xc2, 0xc1]).response_port(), Some(0xc2c1));
        assert_eq!(with(vec![0xc2]).response_port(), None);
        assert_eq!(
            Message::binding_request(TransactionId([0; 12])).response_port(),
            None
        );
    }

    #[test]
    fn accessors_prefer_xor_and_first() {
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:2".parse().unwrap();
        let m = Message {
            attributes: vec![
                Attribute::MappedAddress(a),
                Attribute::XorMappedAddress(b),
                Attribute::XorMappedAddress(a),
                Attribute::Unknown {
                    kind: 0x0024,
                    value: vec![1, 2, 3, 4],
                },
                Attribute::Unknown {
                    kind: 0x8029,
                    value: vec![0; 8],
                },
                Attribute::Unknown {
                    kind: 0x0024,
                    value: vec![],
                },
                Attribute::ErrorCode {
                    code: 420,
                    reason: "Unknown Attribute".into(),
                },
            ],
            ..Message::binding_request(TransactionId([0; 12]))
        };
        assert_eq!(m.mapped_address(), Some(b));
        assert_eq!(m.unknown_required(), vec![0x0024]);
        assert_eq!(m.error_code(), Some(420));
        assert_eq!(m.other_address(), None);
        assert_eq!(m.response_origin(), None);
        assert_eq!(m.change_request(), None);
        let only_plain = Message {
            attributes: vec![Attribute::MappedAddress(a)],
            ..m
        };
        assert_eq!(only_plain.mapped_address(), Some(a));
    }

    #[test]
    fn encode_clamps_what_try_encode_refuses() {
        let base = Message::binding_request(TransactionId([1; 12]));
        let long_text = Message {
            attributes: vec![Attribute::Software("é".repeat(500))],
            ..base.clone()
        };
        assert!(matches!(
            long_text.try_encode(),
            Err(StunError::BadAttribute { .. })
        ));
        let decoded = Message::decode(&long_text.encode()).unwrap();
        assert_eq!(
            decoded.attributes,
            vec![Attribute::Software("é".repeat(381))]
        );

        let too_many = Message {
            attributes: vec![Attribute::Software(String::new()); MAX_ATTRIBUTES + 1],
            ..base.clone()
        };
        assert_eq!(too_many.try_encode(), Err(StunError::TooManyAttributes));
        assert_eq!(
            Message::decode(&too_many.encode())
                .unwrap()
                .attributes
                .len(),
            MAX_ATTRIBUTES
        );

        let too_long = Message {
            attributes: vec![
                Attribute::Unknown {
                    kind: 0x8099,
                    value: vec![7; MAX_MESSAGE / 2 + 100]
                };
                2
            ],
            ..base.clone()
        };
        assert!(matches!(too_long.try_encode(), Err(StunError::TooLong(_))));
        let bytes = too_long.encode();
        assert!(bytes.len() <= MAX_MESSAGE);
        assert_eq!(Message::decode(&bytes).unwrap().attributes.len(), 1);

        let huge = Message {
            attributes: vec![Attribute::Unknown {
                kind: 0x8099,
                value: vec![7; 70_000],
            }],
            ..base.clone()
        };
        assert!(Message::decode(&huge.encode())
            .unwrap()
            .attributes
            .is_empty());

        let bad_method = Message {
            method: 0x1001,
            ..base.clone()
        };
        assert_eq!(bad_method.try_encode(), Err(StunError::BadMethod(0x1001)));
        assert_eq!(
            Message::decode(&bad_method.encode()).unwrap().method,
            0x0001
        );

        let explicit_fingerprint = Message {
            attributes: vec![Attribute::Unknown {
                kind: kind::FINGERPRINT,
                value: vec![0; 4],
            }],
            ..base.clone()
        };
        assert!(explicit_fingerprint.try_encode().is_err());
        assert_eq!(
            Message::decode(&explicit_fingerprint.encode()).unwrap(),
            base
        );

        let odd_code = Message {
            attributes: vec![Attribute::ErrorCode {
                code: 1234,
                reason: String::new(),
            }],
            ..base
        };
        assert!(odd_code.try_encode().is_err());
        assert!(Message::decode(&odd_code.encode()).is_ok());
    }

    fn socket_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)),
        ]
    }

    const TYPED: [u16; 9] = [
        kind::MAPPED_ADDRESS,
        kind::XOR_MAPPED_ADDRESS,
        kind::RESPONSE_ORIGIN,
        kind::OTHER_ADDRESS,
        kind::CHANGE_REQUEST,
        kind::SOFTWARE,
        kind::ERROR_CODE,
        kind::UNKNOWN_ATTRIBUTES,
        kind::FINGERPRINT,
    ];

    fn attribute() -> impl Strategy<Value = Attribute> {
        prop_oneof![
            socket_addr().prop_map(Attribute::MappedAddress),
            socket_addr().prop_map(Attribute::XorMappedAddress),
            socket_addr().prop_map(Attribute::ResponseOrigin),
            socket_addr().prop_map(Attribute::OtherAddress),
            (any::<bool>(), any::<bool>()).prop_map(|(change_ip, change_port)| {
                Attribute::ChangeRequest {
                    change_ip,
                    change_port,
                }
            }),
            ".{0,20}".prop_map(Attribute::Software),
            (300u16..700, ".{0,20}")
                .prop_map(|(code, reason)| Attribute::ErrorCode { code, reason }),
            proptest::collection::vec(any::<u16>(), 0..6).prop_map(Attribute::UnknownAttributes),
            (
                any::<u16>().prop_filter("typed", |k| !TYPED.contains(k)),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(kind, value)| Attribute::Unknown { kind, value }),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        (
            prop_oneof![
                Just(Class::Request),
                Just(Class::Indication),
                Just(Class::Success),
                Just(Class::Error)
            ],
            0u16..=0x0FFF,
            any::<[u8; 12]>(),
            proptest::collection::vec(attribute(), 0..12),
        )
            .prop_map(|(class, method, tid, attributes)| Message {
                class,
                method,
                transaction: TransactionId(tid),
                attributes,
            })
    }

    /// Whatever decodes re-encodes (leniently) to something that decodes to the same message.
    fn check_decoded(m: &Message) {
        let again = Message::decode(&m.encode()).expect("encode output decodes");
        assert_eq!(&again, m);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn round_trip(m in message()) {
            let bytes = m.try_encode().expect("within limits");
            prop_assert_eq!(bytes.len() % 4, 0);
            prop_assert_eq!(&bytes, &m.encode());
            prop_assert_eq!(Message::decode(&bytes), Ok(m));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
            if let Ok(m) = Message::decode(&data) {
                check_decoded(&m);
            }
        }

        /// Well-framed attributes with random values reach every attribute parser.
        #[test]
        fn random_attributes_never_panic(
            ty in any::<u16>(),
            attrs in proptest::collection::vec(
                (
                    prop_oneof![
                        (0usize..TYPED.len() - 1).prop_map(|i| TYPED[i]),
                        any::<u16>(),
                    ],
                    proptest::collection::vec(any::<u8>(), 0..24),
                    any::<u8>(),
                ),
                0..70,
            ),
            fingerprint in any::<bool>(),
        ) {
            let mut body = Vec::new();
            for (kind, value, pad) in &attrs {
                body.extend_from_slice(&kind.to_be_bytes());
                body.extend_from_slice(&(value.len() as u16).to_be_bytes());
                body.extend_from_slice(value);
                body.resize(body.len().next_multiple_of(4), *pad);
            }
            let mut data = raw(&body);
            data[..2].copy_from_slice(&(ty & 0x3FFF).to_be_bytes());
            if fingerprint {
                let len = u16::from_be_bytes([data[2], data[3]]) + 8;
                data[2..4].copy_from_slice(&len.to_be_bytes());
                let crc = crc32(&data) ^ FINGERPRINT_XOR;
                data.extend_from_slice(&[0x80, 0x28, 0, 4]);
                data.extend_from_slice(&crc.to_be_bytes());
            }
            if let Ok(m) = Message::decode(&data) {
                check_decoded(&m);
            }
        }
    }
}
