//! Messages carried inside an encrypted control envelope.
//!
//! The plaintext of a control-channel [`super::packet::Packet::Data`] is one message:
//! `[type u8][body ...]`. The type space is split by subsystem so every capability of the
//! mission has its numbers now, before it is built; a peer that receives a type this build does
//! not implement gets [`DecodeError::Unimplemented`] and drops the message (it is counted, the
//! session carries on), so newer peers can talk to older ones. Capabilities are negotiated in
//! the handshake ([`crate::crypto::Capabilities`]) so a peer never needs to send what the
//! other cannot read.
//!
//! | range         | subsystem                                              |
//! |---------------|--------------------------------------------------------|
//! | `0x01..=0x0F` | session: keep-alive, ping/pong, close, app data        |
//! | `0x10..=0x1F` | login (certificate renewal relayed through an SN)      |
//! | `0x20..=0x2F` | overlay: attach, host cache exchange, promotion        |
//! | `0x30..=0x3F` | global index: presence store, search                   |
//! | `0x40..=0x4F` | call signalling (see [`crate::call`])                  |
//! | `0x50..=0x5F` | media control: quality reports, path probes            |
//! | `0x60..=0x6F` | chat                                                   |
//! | `0x70..=0x7F` | file transfer                                          |
//! | `0x80..=0x8F` | conferences                                            |
//! | `0x90..=0x9F` | presence and buddy list                                |
//! | `0xF0..=0xFF` | private extensions                                     |
//!
//! Call signalling, every message `[type][call id 16][...]`, at most 51 bytes:
//!
//! | type   | message                     | body after the call id                              |
//! |--------|-----------------------------|-----------------------------------------------------|
//! | `0x40` | `CallInvite`                | caller device 16, nonce u64, media u8, unix secs u64 |
//! | `0x41` | `CallRinging`               | none                                                |
//! | `0x42` | `CallAnswer`                | media u8 (also the caller's confirmation)           |
//! | `0x43` | `CallDecline`               | none                                                |
//! | `0x44` | `CallBusy`                  | none                                                |
//! | `0x45` | `CallCancel`                | none                                                |
//! | `0x46` | `CallHangup`                | none                                                |
//! | `0x47` | `CallHold`                  | none                                                |
//! | `0x48` | `CallResume`                | none                                                |
//! | `0x49` | `CallCandidates`            | flags u8 (opened, answer me, fresh port), n u8, n × (kind, addr) |
//! | `0x4A` | `CallAnsweredElsewhere`     | none                                                |
//! | `0x4B` | `CallKeepAlive`             | held u8 (0 or 1: the sender's own hold state)       |

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, BytesMut};

use super::{DecodeError, Reader, MAX_DATAGRAM};
use crate::chat::MessageId;
use crate::crypto::{Certificate, DeviceId, UnixTime, UserName};
use crate::overlay::PresenceRecord;

/// Identifies one call: 128 random bits chosen by the caller. Ordered, because glare is
/// resolved by comparing call ids (see [`crate::call`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub [u8; 16]);

impl std::fmt::Debug for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallId(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// Most host entries in one overlay message (16 entries of at most 51 bytes fit a datagram).
pub const MAX_HOST_ENTRIES: usize = 16;
/// Most local addresses a node announces.
pub const MAX_LOCAL_ADDRESSES: usize = 4;

/// The extension of [`Message::MediaReport`] for peers that read it
/// ([`crate::crypto::Capabilities::REPORT_EXT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaReportExt {
    /// Runs of consecutive lost frames (their mean length tells bursty loss from random
    /// loss), counted once the frames are 32 behind the newest.
    pub runs: u16,
    /// Mean queuing delay of the frames received in the interval, milliseconds: each
    /// frame's transit above the smallest of the last 30 s.
    pub queue_ms: u16,
    /// The rate received in the interval on the wire, in units of 100 bit/s.
    pub recv_rate: u16,
}

impl MediaReportExt {
    /// Encoded length.
    pub const LEN: usize = 6;
}

/// A super node as other nodes know it: where it listens and its Noise static key (so the
/// next connection can use IK and is bound to that key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostEntry {
    /// UDP (and TCP) address.
    pub addr: SocketAddr,
    /// X25519 static key.
    pub static_key: [u8; 32],
}

/// Append a socket address: family (4 or 6), address bytes, port.
pub fn put_addr(out: &mut BytesMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(addr.port());
}

/// Read a canonical user name (`len u8, bytes`).
pub(crate) fn read_user(r: &mut Reader<'_>) -> Result<UserName, DecodeError> {
    let raw = r.bytes_u8("user name", UserName::MAX_LEN)?;
    let raw = std::str::from_utf8(raw).map_err(|_| DecodeError::Invalid("user name"))?;
    let user = UserName::parse(raw).map_err(|_| DecodeError::Invalid("user name"))?;
    if user.as_str() != raw {
        return Err(DecodeError::Invalid("user name not canonical"));
    }
    Ok(user)
}

/// Read a socket address written by [`put_addr`].
pub fn read_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let ip = match r.u8()? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
        _ => return Err(DecodeError::Invalid("address family")),
    };
    Ok(SocketAddr::new(ip, r.u16()?))
}

fn put_entries(out: &mut BytesMut, entries: &[HostEntry]) {
    let n = entries.len().min(MAX_HOST_ENTRIES);
    out.put_u8(n as u8);
    for e in &entries[..n] {
        put_addr(out, &e.addr);
        out.put_slice(&e.static_key);
    }
}

fn read_entries(r: &mut Reader<'_>) -> Result<Vec<HostEntry>, DecodeError> {
    let n = usize::from(r.u8()?);
    if n > MAX_HOST_ENTRIES {
        return Err(DecodeError::TooLong {
            what: "host entries",
            len: n,
            max: MAX_HOST_ENTRIES,
        });
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(HostEntry {
            addr: read_addr(r)?,
            static_key: r.array()?,
        });
    }
    Ok(v)
}

/// Most membership events in one [`Message::MemberUpdate`] (9 signed IPv6 events of 120 bytes
/// fit a datagram).
pub const MAX_MEMBER_EVENTS: usize = 9;
/// Largest piece of a chat message in one [`Message::ChatChunk`].
pub const MAX_CHAT_CHUNK: usize = 1024;
/// Most pieces of one chat message: enough for the largest envelope
/// ([`crate::chat::channel::MAX_CIPHERTEXT`] plus the sender's keys).
pub const MAX_CHAT_CHUNKS: usize = 72;
/// A sealed chat message cut in pieces for [`Message::ChatChunk`], [`Message::MailboxPut`]
/// and [`Message::MailboxDeliver`]: `(index, count, piece)`, at least one (an empty input is
/// one empty piece) and at most [`MAX_CHAT_CHUNKS`] (the largest envelope fits; longer input
/// is cut there).
pub fn chat_pieces(bytes: &[u8]) -> Vec<(u8, u8, &[u8])> {
    let count = bytes
        .len()
        .div_ceil(MAX_CHAT_CHUNK)
        .clamp(1, MAX_CHAT_CHUNKS);
    (0..count)
        .map(|i| {
            let start = (i * MAX_CHAT_CHUNK).min(bytes.len());
            let end = (start + MAX_CHAT_CHUNK).min(bytes.len());
            (i as u8, count as u8, &bytes[start..end])
        })
        .collect()
}

/// Most message ids in one [`Message::MailboxAck`].
pub const MAX_MAILBOX_ACK: usize = 32;

/// A piece of a sealed message: the device, the message id, the index, the count, the data.
type Piece<'a> = (DeviceId, MessageId, u8, u8, &'a [u8]);

fn read_piece<'a>(r: &mut Reader<'a>) -> Result<Piece<'a>, DecodeError> {
    let to = DeviceId(r.array()?);
    let id = MessageId(r.array()?);
    let index = r.u8()?;
    let count = r.u8()?;
    if count == 0 || usize::from(count) > MAX_CHAT_CHUNKS || index >= count {
        return Err(DecodeError::Invalid("chat piece index"));
    }
    Ok((
        to,
        id,
        index,
        count,
        r.bytes_u16("chat piece", MAX_CHAT_CHUNK)?,
    ))
}

fn put_piece(out: &mut BytesMut, to: &DeviceId, id: &MessageId, index: u8, count: u8, data: &[u8]) {
    out.put_slice(&to.0);
    out.put_slice(&id.0);
    out.put_u8(index);
    out.put_u8(count);
    out.put_u16(data.len() as u16);
    out.put_slice(data);
}

/// Most super nodes in one [`Message::IndexSearchAt`].
pub const MAX_SEARCH_AT: usize = 4;
/// Most users in one [`Message::IndexWatch`] (32 of the longest names fit a datagram).
pub const MAX_WATCH_USERS: usize = 32;
/// Most static keys in one [`Message::MemberCertPull`].
pub const MAX_CERT_PULL: usize = 32;
/// Most certificates in one [`Message::MemberCerts`] (5 of at most
/// [`crate::crypto::MAX_CERT_LEN`] bytes fit a datagram).
pub const MAX_MEMBER_CERTS: usize = 5;
/// Domain separation for a super node's signature on its own membership events.
pub const MEMBER_CONTEXT: &[u8] = b"natter-member-v1";
/// Hashes in one [`Message::MemberDigest`].
pub const DIGEST_BUCKETS: usize = 64;

/// One super node's membership state, as spread between super nodes: alive or gone, at an
/// incarnation (a number only the super node itself raises, to refute reports of its death;
/// at equal incarnations "gone" wins).
///
/// What a super node says of itself is signed with its certified Ed25519 key
/// ([`MemberEvent::signed_bytes`] under [`MEMBER_CONTEXT`]); what others say of it (a failure
/// their probes found) is not, and the receiver treats it as a hint to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberEvent {
    /// True: the super node is alive. False: it left or failed.
    pub alive: bool,
    /// The super node's incarnation.
    pub incarnation: u32,
    /// Who.
    pub entry: HostEntry,
    /// The super node's own signature over [`MemberEvent::signed_bytes`], when it said this
    /// itself.
    pub signature: Option<[u8; 64]>,
}

impl MemberEvent {
    /// What the subject signs: `alive u8, incarnation u32, address, static key`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = BytesMut::with_capacity(1 + 4 + 19 + 32);
        b.put_u8(u8::from(self.alive));
        b.put_u32(self.incarnation);
        put_addr(&mut b, &self.entry.addr);
        b.put_slice(&self.entry.static_key);
        b.to_vec()
    }
}

/// Member event flag: alive.
const MEMBER_ALIVE: u8 = 1;
/// Member event flag: a signature follows.
const MEMBER_SIGNED: u8 = 2;

/// The largest application payload in one [`Message::AppData`].
pub const MAX_APP_DATA: usize = MAX_DATAGRAM - 64;

macro_rules! message_types {
    ($($(#[$doc:meta])* $name:ident = $val:expr,)*) => {
        /// Every message type number, implemented or reserved.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum MessageType {
            $($(#[$doc])* $name = $val,)*
        }

        impl MessageType {
            /// The type for a number, if the number is assigned.
            pub fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($val => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// Every assigned type, in numeric order.
            pub const ALL: &'static [MessageType] = &[$(Self::$name,)*];
        }
    };
}

message_types! {
    /// Keeps NAT bindings and the session alive; no body.
    KeepAlive = 0x01,
    /// Round-trip probe: `id u32`.
    Ping = 0x02,
    /// Answer to a ping: `id u32`.
    Pong = 0x03,
    /// The sender is closing the session: `reason u8`.
    Close = 0x04,
    /// Opaque application bytes (tests, demos, app extensions).
    AppData = 0x05,
    /// The sender's certificate was renewed: the new one (same user, device and keys).
    CertificateUpdate = 0x06,
    /// Reserved: renew a certificate through an SN.
    LoginRenew = 0x10,
    /// Reserved: an ordinary node attaches to an SN.
    OverlayAttach = 0x20,
    /// Reserved: the SN accepts an attachment.
    OverlayAttachAck = 0x21,
    /// Reserved: host cache entries exchanged between nodes.
    OverlayHostCache = 0x22,
    /// Reserved: SN membership gossip.
    OverlayMembership = 0x23,
    /// Reserved: an SN hands its clients over before demoting itself.
    OverlayHandover = 0x24,
    /// A single-address super node asks its partner to answer a STUN "change IP" request.
    OverlayStunForward = 0x25,
    /// Super-node failure detection: are you there? `nonce u32`.
    MemberProbe = 0x26,
    /// Answer to [`MessageType::MemberProbe`]: `nonce u32`.
    MemberProbeAck = 0x27,
    /// Super-node membership changes (joins, leaves, failures), spread by gossip or sent
    /// during anti-entropy.
    MemberUpdate = 0x28,
    /// Anti-entropy: hashes of the sender's membership, bucket by bucket.
    MemberDigest = 0x29,
    /// Anti-entropy: send me your members in these buckets.
    MemberPull = 0x2A,
    /// Relay: give me a channel to this device (from a node to a super node).
    RelayAllocate = 0x2B,
    /// Relay: the channel is ready.
    RelayAllocated = 0x2C,
    /// Relay: refused (quota, unknown device, ...).
    RelayRefused = 0x2D,
    /// Relay: a device opened a channel to you (from the super node to the other party).
    RelayOffer = 0x2E,
    /// Relay: the channel is over (either direction).
    RelayRelease = 0x2F,
    /// Store a signed presence record in the index.
    IndexStore = 0x30,
    /// Search the index for a user name.
    IndexSearch = 0x31,
    /// A search answer: one presence record of several.
    IndexResult = 0x32,
    /// A search answer without records: "not found" or "could not tell".
    IndexNotFound = 0x33,
    /// Membership: send me these super nodes' certificates (`n u8, n x key 32`).
    MemberCertPull = 0x34,
    /// Membership: super nodes' certificates (`n u8, n x certificate`).
    MemberCerts = 0x35,
    /// Search the index, and also ask the user's own super nodes (see
    /// [`Message::IndexSearchAt`]).
    IndexSearchAt = 0x36,
    /// Watch users' presence records, or stop (see [`Message::IndexWatch`]).
    IndexWatch = 0x37,
    /// A watched user's record changed (see [`Message::IndexNotify`]).
    IndexNotify = 0x38,
    /// The record to publish when the sender's link dies (see [`Message::IndexWill`]).
    IndexWill = 0x39,
    /// Ask a super node to poke its client (see [`Message::ContactPoke`]).
    ContactPoke = 0x3A,
    /// A poke from another user, forwarded by our super node (see [`Message::ContactPoked`]).
    ContactPoked = 0x3B,
    /// Call signalling: call invitation (see [`Message::CallInvite`]).
    CallInvite = 0x40,
    /// Call signalling: the callee's device is ringing (see [`Message::CallRinging`]).
    CallRinging = 0x41,
    /// Call signalling: answered (see [`Message::CallAnswer`]).
    CallAnswer = 0x42,
    /// Call signalling: declined (see [`Message::CallDecline`]).
    CallDecline = 0x43,
    /// Call signalling: busy (see [`Message::CallBusy`]).
    CallBusy = 0x44,
    /// Call signalling: the caller cancelled (see [`Message::CallCancel`]).
    CallCancel = 0x45,
    /// Call signalling: hang-up (see [`Message::CallHangup`]).
    CallHangup = 0x46,
    /// Call signalling: hold (see [`Message::CallHold`]).
    CallHold = 0x47,
    /// Call signalling: resume (see [`Message::CallResume`]).
    CallResume = 0x48,
    /// Connectivity: the sender's candidate addresses for a direct path, and whether it has
    /// opened its NAT towards ours (see [`Message::CallCandidates`]).
    CallCandidates = 0x49,
    /// Call signalling: another device answered; stop ringing (see [`Message::CallAnsweredElsewhere`]).
    CallAnsweredElsewhere = 0x4A,
    /// Call signalling: liveness of an active call (see [`Message::CallKeepAlive`]).
    CallKeepAlive = 0x4B,
    /// Receiver report: loss, jitter and RTT of the media the sender received.
    MediaReport = 0x50,
    /// Connectivity check on a candidate path: `id u32`; answered on the path it came from.
    PathProbe = 0x51,
    /// Answer to a path probe: `id u32`, the address the probe came from.
    PathProbeAck = 0x52,
    /// Path validation: before a session moves to a new address, prove the peer is there:
    /// `token [u8; 8]`.
    PathChallenge = 0x53,
    /// Answer to [`MessageType::PathChallenge`], sent on the path it came by: `token [u8; 8]`.
    PathResponse = 0x54,
    /// A piece of a sealed chat message, for a device (see [`Message::ChatChunk`]).
    ChatChunk = 0x60,
    /// A super node cannot forward a chat message (see [`Message::ChatUnreachable`]).
    ChatUnreachable = 0x61,
    /// A piece of a sealed chat message to keep for an offline device (see
    /// [`Message::MailboxPut`]).
    MailboxPut = 0x62,
    /// A super node took a piece for a mailbox (see [`Message::MailboxStored`]).
    MailboxStored = 0x63,
    /// A piece of a message that waited in a mailbox (see [`Message::MailboxDeliver`]).
    MailboxDeliver = 0x64,
    /// A device holds messages that waited for it (see [`Message::MailboxAck`]).
    MailboxAck = 0x65,
    /// Reserved: file offer.
    FileOffer = 0x70,
    /// Reserved: file accepted.
    FileAccept = 0x71,
    /// Reserved: file chunk.
    FileChunk = 0x72,
    /// Reserved: file chunk acknowledgement.
    FileAck = 0x73,
    /// Reserved: file transfer cancelled.
    FileCancel = 0x74,
    /// Reserved: join a conference.
    ConferenceJoin = 0x80,
    /// Reserved: leave a conference.
    ConferenceLeave = 0x81,
    /// Reserved: the mixer changed.
    ConferenceMixer = 0x82,
    /// Reserved: presence update to a buddy.
    PresenceUpdate = 0x90,
    /// Reserved: signed, encrypted buddy list sync between a user's devices.
    BuddyListSync = 0x91,
}

/// Why a session is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The application asked.
    Normal,
    /// The sender is shutting down.
    Shutdown,
    /// The peer broke the protocol.
    ProtocolError,
    /// Any other code (kept so newer peers' reasons round-trip).
    Other(u8),
}

impl CloseReason {
    fn to_u8(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Shutdown => 1,
            Self::ProtocolError => 2,
            Self::Other(v) => v,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Normal,
            1 => Self::Shutdown,
            2 => Self::ProtocolError,
            v => Self::Other(v),
        }
    }
}

/// A decoded control message, borrowing from the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Message<'a> {
    /// See [`MessageType::KeepAlive`].
    KeepAlive,
    /// The sender's renewed certificate: the session's peer must present a valid one, and
    /// a session whose peer's certificate expired is closed.
    CertificateUpdate {
        /// The new certificate (same user, device and keys as the session's).
        certificate: Box<Certificate>,
    },
    /// See [`MessageType::Ping`].
    Ping {
        /// Echoed in the pong.
        id: u32,
    },
    /// See [`MessageType::Pong`].
    Pong {
        /// The ping's id.
        id: u32,
    },
    /// See [`MessageType::Close`].
    Close {
        /// Why.
        reason: CloseReason,
    },
    /// See [`MessageType::AppData`].
    AppData(&'a [u8]),
    /// An ordinary node asks a super node to serve it.
    OverlayAttach {
        /// The node's NAT type code (see `natter_core::overlay`), 0 when unknown.
        nat: u8,
        /// The node's own (private) addresses, for same-LAN shortcuts.
        local_addresses: Vec<SocketAddr>,
    },
    /// A super node's answer to [`Message::OverlayAttach`].
    OverlayAttachAck {
        /// False when the super node is full: try `super_nodes` instead.
        accepted: bool,
        /// The node's address as the super node sees it.
        reflexive: SocketAddr,
        /// Keep-alive interval the super node expects, in seconds.
        keepalive_secs: u16,
        /// Other super nodes, for the host cache.
        super_nodes: Vec<HostEntry>,
    },
    /// Host cache exchange: an empty list asks for entries, a non-empty one answers.
    OverlayHostCache {
        /// Super nodes.
        entries: Vec<HostEntry>,
    },
    /// Membership gossip between super nodes.
    OverlayMembership {
        /// Super nodes the sender knows (itself first).
        entries: Vec<HostEntry>,
    },
    /// A super node that demotes itself hands its clients to others.
    OverlayHandover {
        /// Where to go.
        entries: Vec<HostEntry>,
    },
    /// Answer this client's STUN Binding from your address (RFC 5780 "change IP" for a
    /// super node that has only one).
    OverlayStunForward {
        /// The client as the forwarding super node saw it.
        client: SocketAddr,
        /// The request's transaction id.
        transaction: [u8; 12],
    },
    /// See [`MessageType::MemberProbe`].
    MemberProbe {
        /// Echoed in the answer.
        nonce: u32,
    },
    /// See [`MessageType::MemberProbeAck`].
    MemberProbeAck {
        /// The probe's nonce.
        nonce: u32,
    },
    /// Membership changes.
    MemberUpdate {
        /// False: gossip (the receiver spreads what is new to it). True: an anti-entropy
        /// answer (the receiver keeps what is new and does not spread it).
        sync: bool,
        /// At most [`MAX_MEMBER_EVENTS`].
        events: Vec<MemberEvent>,
    },
    /// Hashes of the sender's membership: at `level` 0, one per top bucket (the first six
    /// bits of a super node's ring key); at level 1, one per sub-bucket of top bucket `bucket`
    /// (the next six bits). At most [`DIGEST_BUCKETS`].
    MemberDigest {
        /// 0 or 1.
        level: u8,
        /// The top bucket a level-1 digest details (0 at level 0).
        bucket: u8,
        /// The hashes.
        hashes: Vec<u64>,
    },
    /// Send me the certificates of the super nodes with these static keys (to check their
    /// signed membership events). At most [`MAX_CERT_PULL`].
    MemberCertPull {
        /// X25519 static keys.
        keys: Vec<[u8; 32]>,
    },
    /// Certificates of super nodes, in answer to [`Message::MemberCertPull`]. At most
    /// [`MAX_MEMBER_CERTS`].
    MemberCerts {
        /// The certificates (each checked by the receiver).
        certs: Vec<Certificate>,
    },
    /// Send me your members in the sub-buckets `mask` of top bucket `bucket`.
    MemberPull {
        /// Top bucket.
        bucket: u8,
        /// One bit per sub-bucket.
        mask: u64,
    },
    /// Store a presence record. From a node to its super node (`replicate`: spread it to the
    /// record's replicas) or from a super node to a replica (`replicate` false: hold it).
    IndexStore {
        /// Spread it (true) or hold it (false).
        replicate: bool,
        /// The signed record (verified by whoever stores it).
        record: Box<PresenceRecord>,
    },
    /// Search for a user's records. From a node to its super node (`full`: run the whole
    /// search) or from a super node to a replica (`full` false: answer from your own store).
    IndexSearch {
        /// Chosen by the asker, echoed in the answers.
        query: u32,
        /// Run the whole search (true) or answer from the local store (false).
        full: bool,
        /// Who.
        user: UserName,
    },
    /// From a node to its super node: run the whole search, and also ask these super nodes
    /// (the ones a record of the user that the node knows names: the user's own), which answer
    /// for their clients even when every replica says "not found". At most
    /// [`MAX_SEARCH_AT`]; only super nodes in the ring are asked.
    IndexSearchAt {
        /// Chosen by the asker, echoed in the answers.
        query: u32,
        /// Who.
        user: UserName,
        /// The user's super nodes.
        at: Vec<SocketAddr>,
    },
    /// One record of an answer; an answer with `total` records is `total` of these.
    IndexResult {
        /// The query answered.
        query: u32,
        /// Overlay hops the answer took to reach the super node that ran the search.
        hops: u8,
        /// How many records the answer has.
        total: u8,
        /// The signed record (verified again by whoever receives it).
        record: Box<PresenceRecord>,
    },
    /// An answer without records.
    IndexNotFound {
        /// The query answered.
        query: u32,
        /// Overlay hops, as in [`Message::IndexResult`].
        hops: u8,
        /// True: a definite "not found" (enough replicas agreed). False: the search could not
        /// tell (replicas unreachable); try again later.
        definite: bool,
    },
    /// Watch users' presence (`watch`) or stop watching them. From a node to its super node
    /// (`full`: the super node watches at the users' replicas for it) or from a super node to
    /// a replica (`full` false: push me every record you store of these users that changes
    /// their presence, and those you hold now). At most [`MAX_WATCH_USERS`].
    IndexWatch {
        /// From a node (true) or from a super node (false).
        full: bool,
        /// Start (true) or stop (false).
        watch: bool,
        /// A periodic repeat of watches already made (replicas answer with the records they
        /// hold only when they did not have the watch: it was lost, or they restarted).
        refresh: bool,
        /// Who.
        users: Vec<UserName>,
    },
    /// A record of a watched user: from a replica to a watching super node, and from there to
    /// the watching nodes.
    IndexNotify {
        /// The signed record (verified again by whoever receives it).
        record: Box<PresenceRecord>,
    },
    /// From a node to its super nodes: the signed "offline" record to publish for it when
    /// its link dies without a word (its sequence number is one past the record it last
    /// published). The super node it publishes through holds it first-hand; its other super
    /// nodes hold it on standby, for when that one is gone too. A super node, which has no
    /// super node of its own, deposits its will with those after it on the ring, naming
    /// itself as `standby`.
    IndexWill {
        /// The signed record (it says offline).
        record: Box<PresenceRecord>,
        /// `None` (absent on the wire): publish it when the link dies without a word (you are
        /// the super node the node publishes through). `Some(sn)`: the super node `sn` holds
        /// it first-hand; publish it only if, besides the link dying, the membership holds
        /// `sn` gone (a device that lost power together with it). From the super node `sn`
        /// itself: its own will, to publish once the membership holds it gone.
        standby: Option<SocketAddr>,
    },
    /// From a node to a super node: tell your client `device` that something of ours waits
    /// for it at the login server (a contact request or its answer, an edit of our own
    /// buddy list when it is our own device). Only a hint: the client then syncs with the
    /// login server, which says what is true. Dropped when `device` is not attached there.
    ContactPoke {
        /// The device to poke.
        device: DeviceId,
    },
    /// From a super node to its client: the user `from` (as the poking session proved it)
    /// has something for it at the login server ([`Message::ContactPoke`]).
    ContactPoked {
        /// Who poked.
        from: UserName,
    },
    /// A piece of a sealed chat message ([`crate::chat::Envelope`], encoded) for the
    /// device `to`: from a device to a super node, which forwards it to `to` when `to` is its
    /// client or a device with a session to it (one that sent it chat), and from the super
    /// node to `to`. A message is cut in `count` pieces of at most [`MAX_CHAT_CHUNK`] bytes,
    /// sent again whole until the receiver's receipt comes back; the receiver puts them
    /// together by `id`.
    ChatChunk {
        /// The receiving device.
        to: DeviceId,
        /// The message's id.
        id: MessageId,
        /// This piece's index, below `count`.
        index: u8,
        /// How many pieces the message has (1 to [`MAX_CHAT_CHUNKS`]).
        count: u8,
        /// The piece.
        data: &'a [u8],
    },
    /// From a super node to a device that sent it a chat piece: it can reach no device `to`
    /// (look the device up again).
    ChatUnreachable {
        /// The device it cannot reach.
        to: DeviceId,
        /// The message.
        id: MessageId,
    },
    /// A piece of a sealed chat message for the device `to` of `user`, which is offline: from
    /// a device to its super node, which forwards it to the super nodes that keep `user`'s
    /// mailbox (the first ring successors of the user's index key), and answers
    /// [`Message::MailboxStored`]; from that super node to those. Pieces as in
    /// [`Message::ChatChunk`].
    MailboxPut {
        /// False from the sending device (forward it to the mailbox's super nodes), true from
        /// a super node to those (keep it; never forwarded again).
        forwarded: bool,
        /// The recipient user.
        user: UserName,
        /// The recipient device.
        to: DeviceId,
        /// The message's id.
        id: MessageId,
        /// This piece's index, below `count`.
        index: u8,
        /// How many pieces the message has.
        count: u8,
        /// The piece.
        data: Vec<u8>,
    },
    /// From a super node to the device that sent [`Message::MailboxPut`]: the message `id` for
    /// `to` went to the mailbox (send it no more; the receipt comes when `to` opens it).
    MailboxStored {
        /// The recipient device.
        to: DeviceId,
        /// The message.
        id: MessageId,
    },
    /// A piece of a message that waited in a mailbox for the device `to`: from the mailbox's
    /// super node to `to`'s super node, which forwards it to `to`. Once it holds the message,
    /// `to` answers [`Message::MailboxAck`].
    MailboxDeliver {
        /// The receiving device.
        to: DeviceId,
        /// The message's id.
        id: MessageId,
        /// This piece's index, below `count`.
        index: u8,
        /// How many pieces.
        count: u8,
        /// The piece.
        data: Vec<u8>,
    },
    /// The device `device` of `user` holds these messages: from the device to its super node
    /// (which checks the session is that device's), and from there to the mailbox's super
    /// nodes, which delete them.
    MailboxAck {
        /// False from the device (pass it on to the mailbox's super nodes), true from its
        /// super node to those (never passed on again).
        forwarded: bool,
        /// The user.
        user: UserName,
        /// The device.
        device: DeviceId,
        /// The messages (at most [`MAX_MAILBOX_ACK`]).
        ids: Vec<MessageId>,
    },
    /// Invite the receiving device to a call.
    CallInvite {
        /// Chosen at random by the caller.
        call: CallId,
        /// The calling device (must match the session's peer).
        caller: DeviceId,
        /// Random per invite; retransmissions repeat it, so a device can tell a retransmitted
        /// invite (answer again) from a replayed one (drop).
        nonce: u64,
        /// Media capability bits (codecs, video), opaque to signalling.
        media: u8,
        /// The caller's wall clock when it placed the call; old invites are refused.
        timestamp: UnixTime,
    },
    /// The callee's device is ringing.
    CallRinging {
        /// Which call.
        call: CallId,
    },
    /// From a callee device: "I answer". From the caller, back to the device whose answer
    /// won: "you are connected".
    CallAnswer {
        /// Which call.
        call: CallId,
        /// Media capability bits of the sender.
        media: u8,
    },
    /// The callee declined.
    CallDecline {
        /// Which call.
        call: CallId,
    },
    /// The callee's device is in another call.
    CallBusy {
        /// Which call.
        call: CallId,
    },
    /// The caller gave up before the call was answered.
    CallCancel {
        /// Which call.
        call: CallId,
    },
    /// An active call ends.
    CallHangup {
        /// Which call.
        call: CallId,
    },
    /// The sender puts the call on hold.
    CallHold {
        /// Which call.
        call: CallId,
    },
    /// The sender takes the call off hold.
    CallResume {
        /// Which call.
        call: CallId,
    },
    /// Another device of the callee answered: stop ringing (or: your answer came too late).
    CallAnsweredElsewhere {
        /// Which call.
        call: CallId,
    },
    /// Periodic liveness of a call, with the sender's hold state (repairs a lost hold/resume).
    CallKeepAlive {
        /// Which call.
        call: CallId,
        /// The sender has the call on hold.
        held: bool,
    },
    /// Where the sender can be reached directly, for connectivity checks.
    CallCandidates {
        /// Which call.
        call: CallId,
        /// The sender has sent its NAT-opening packets towards the receiver's candidates:
        /// checks may start once both sides say so.
        opened: bool,
        /// The sender's candidates changed mid-call and it waits for an answer (the
        /// receiver's candidates, after it opened towards the new ones); answers never set it.
        update: bool,
        /// With `update`: the candidates are those of a fresh port the sender moved the call's
        /// direct paths to (a flow no stale NAT state clashes with). From the caller, it asks
        /// the callee to do the same before it answers (a NAT that already mapped the
        /// callee's port twice gives every new flow from it one of those mappings); from the
        /// callee, it is that answer.
        fresh: bool,
        /// At most [`MAX_CANDIDATES`].
        candidates: Vec<Candidate>,
    },
    /// A receiver report on the media of a call, sent about once a second.
    MediaReport {
        /// Which call.
        call: CallId,
        /// Frames expected in the interval (from sequence numbers).
        expected: u16,
        /// Of those, frames that did not arrive.
        lost: u16,
        /// Interarrival jitter, RFC 3550 style, in milliseconds.
        jitter_ms: u16,
        /// The sender's current round-trip time estimate on the active path, milliseconds
        /// (0: unknown).
        rtt_ms: u16,
        /// What peers with [`crate::crypto::Capabilities::REPORT_EXT`] add (only they get
        /// it: on the wire it is six more bytes at the end, which older decoders reject as
        /// trailing).
        ext: Option<MediaReportExt>,
    },
    /// A connectivity check on one path of a session; answered on the path it arrived on and
    /// never moves the session there by itself.
    PathProbe {
        /// Echoed in the answer.
        id: u32,
    },
    /// Answer to [`Message::PathProbe`].
    PathProbeAck {
        /// The probe's id.
        id: u32,
        /// The UDP address the probe came from, as the answering side saw it (a
        /// peer-reflexive candidate), when it came straight over UDP.
        observed: Option<SocketAddr>,
    },
    /// Before a session moves to the address a newer packet came from, the receiver sends this
    /// there (and only this, within three times the bytes received from it); the session moves
    /// when the answer comes back, so a spoofed source address cannot move it.
    PathChallenge {
        /// Random; echoed in the answer.
        token: [u8; 8],
    },
    /// Answer to [`Message::PathChallenge`], sent on the path it arrived by.
    PathResponse {
        /// The challenge's token.
        token: [u8; 8],
    },
    /// Ask a super node for a relay channel to `device` (which must have a session with it).
    RelayAllocate {
        /// Echoed in the answer.
        request: u32,
        /// The other party.
        device: DeviceId,
    },
    /// The relay channel is ready.
    RelayAllocated {
        /// The request answered.
        request: u32,
        /// The channel number for relayed frames (31 bits).
        channel: u32,
    },
    /// The relay refused.
    RelayRefused {
        /// The request answered.
        request: u32,
        /// Why (see `natter_overlay::relay::RelayRefusal`).
        reason: u8,
    },
    /// A device opened a relay channel to the receiver.
    RelayOffer {
        /// The channel.
        channel: u32,
        /// Who opened it (the super node vouches for the device id it authenticated).
        device: DeviceId,
    },
    /// The relay channel is over.
    RelayRelease {
        /// The channel.
        channel: u32,
    },
}

/// Most candidates in one [`Message::CallCandidates`].
pub const MAX_CANDIDATES: usize = 8;

/// What kind of address a candidate is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CandidateKind {
    /// One of the device's own addresses (same LAN).
    Host = 0,
    /// Its address as a super node saw it (server-reflexive).
    Reflexive = 1,
}

/// An address where a device may be reachable directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Host or reflexive.
    pub kind: CandidateKind,
    /// The UDP address.
    pub addr: SocketAddr,
}

impl<'a> Message<'a> {
    /// The call a call-signalling or media-control message is about; `None` for any other.
    pub fn call_id(&self) -> Option<CallId> {
        match self {
            Message::CallInvite { call, .. }
            | Message::CallRinging { call }
            | Message::CallAnswer { call, .. }
            | Message::CallDecline { call }
            | Message::CallBusy { call }
            | Message::CallCancel { call }
            | Message::CallHangup { call }
            | Message::CallHold { call }
            | Message::CallResume { call }
            | Message::CallAnsweredElsewhere { call }
            | Message::CallKeepAlive { call, .. }
            | Message::CallCandidates { call, .. }
            | Message::MediaReport { call, .. } => Some(*call),
            _ => None,
        }
    }

    /// This message's type number.
    pub fn message_type(&self) -> MessageType {
        match self {
            Message::KeepAlive => MessageType::KeepAlive,
            Message::CertificateUpdate { .. } => MessageType::CertificateUpdate,
            Message::Ping { .. } => MessageType::Ping,
            Message::Pong { .. } => MessageType::Pong,
            Message::Close { .. } => MessageType::Close,
            Message::AppData(_) => MessageType::AppData,
            Message::OverlayAttach { .. } => MessageType::OverlayAttach,
            Message::OverlayAttachAck { .. } => MessageType::OverlayAttachAck,
            Message::OverlayHostCache { .. } => MessageType::OverlayHostCache,
            Message::OverlayMembership { .. } => MessageType::OverlayMembership,
            Message::OverlayHandover { .. } => MessageType::OverlayHandover,
            Message::OverlayStunForward { .. } => MessageType::OverlayStunForward,
            Message::MemberProbe { .. } => MessageType::MemberProbe,
            Message::MemberProbeAck { .. } => MessageType::MemberProbeAck,
            Message::MemberUpdate { .. } => MessageType::MemberUpdate,
            Message::MemberDigest { .. } => MessageType::MemberDigest,
            Message::MemberPull { .. } => MessageType::MemberPull,
            Message::MemberCertPull { .. } => MessageType::MemberCertPull,
            Message::MemberCerts { .. } => MessageType::MemberCerts,
            Message::IndexStore { .. } => MessageType::IndexStore,
            Message::IndexSearch { .. } => MessageType::IndexSearch,
            Message::IndexSearchAt { .. } => MessageType::IndexSearchAt,
            Message::IndexResult { .. } => MessageType::IndexResult,
            Message::IndexNotFound { .. } => MessageType::IndexNotFound,
            Message::IndexWatch { .. } => MessageType::IndexWatch,
            Message::IndexNotify { .. } => MessageType::IndexNotify,
            Message::IndexWill { .. } => MessageType::IndexWill,
            Message::ContactPoke { .. } => MessageType::ContactPoke,
            Message::ChatChunk { .. } => MessageType::ChatChunk,
            Message::ChatUnreachable { .. } => MessageType::ChatUnreachable,
            Message::MailboxPut { .. } => MessageType::MailboxPut,
            Message::MailboxStored { .. } => MessageType::MailboxStored,
            Message::MailboxDeliver { .. } => MessageType::MailboxDeliver,
            Message::MailboxAck { .. } => MessageType::MailboxAck,
            Message::ContactPoked { .. } => MessageType::ContactPoked,
            Message::CallInvite { .. } => MessageType::CallInvite,
            Message::CallRinging { .. } => MessageType::CallRinging,
            Message::CallAnswer { .. } => MessageType::CallAnswer,
            Message::CallDecline { .. } => MessageType::CallDecline,
            Message::CallBusy { .. } => MessageType::CallBusy,
            Message::CallCancel { .. } => MessageType::CallCancel,
            Message::CallHangup { .. } => MessageType::CallHangup,
            Message::CallHold { .. } => MessageType::CallHold,
            Message::CallResume { .. } => MessageType::CallResume,
            Message::CallAnsweredElsewhere { .. } => MessageType::CallAnsweredElsewhere,
            Message::CallKeepAlive { .. } => MessageType::CallKeepAlive,
            Message::CallCandidates { .. } => MessageType::CallCandidates,
            Message::MediaReport { .. } => MessageType::MediaReport,
            Message::PathProbe { .. } => MessageType::PathProbe,
            Message::PathProbeAck { .. } => MessageType::PathProbeAck,
            Message::PathChallenge { .. } => MessageType::PathChallenge,
            Message::PathResponse { .. } => MessageType::PathResponse,
            Message::RelayAllocate { .. } => MessageType::RelayAllocate,
            Message::RelayAllocated { .. } => MessageType::RelayAllocated,
            Message::RelayRefused { .. } => MessageType::RelayRefused,
            Message::RelayOffer { .. } => MessageType::RelayOffer,
            Message::RelayRelease { .. } => MessageType::RelayRelease,
        }
    }

    /// Decode one message from a decrypted control envelope.
    pub fn decode(buf: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let raw = r.u8()?;
        let ty = MessageType::from_u8(raw).ok_or(DecodeError::UnknownMessageType(raw))?;
        let msg = match ty {
            MessageType::KeepAlive => Message::KeepAlive,
            MessageType::CertificateUpdate => Message::CertificateUpdate {
                certificate: Box::new(Certificate::read(&mut r)?),
            },
            MessageType::Ping => Message::Ping { id: r.u32()? },
            MessageType::Pong => Message::Pong { id: r.u32()? },
            MessageType::Close => Message::Close {
                reason: CloseReason::from_u8(r.u8()?),
            },
            MessageType::AppData => {
                let data = r.rest();
                if data.len() > MAX_APP_DATA {
                    return Err(DecodeError::TooLong {
                        what: "app data",
                        len: data.len(),
                        max: MAX_APP_DATA,
                    });
                }
                Message::AppData(data)
            }
            MessageType::OverlayAttach => {
                let nat = r.u8()?;
                let n = usize::from(r.u8()?);
                if n > MAX_LOCAL_ADDRESSES {
                    return Err(DecodeError::TooLong {
                        what: "local addresses",
                        len: n,
                        max: MAX_LOCAL_ADDRESSES,
                    });
                }
                let mut local_addresses = Vec::with_capacity(n);
                for _ in 0..n {
                    local_addresses.push(read_addr(&mut r)?);
                }
                Message::OverlayAttach {
                    nat,
                    local_addresses,
                }
            }
            MessageType::OverlayAttachAck => Message::OverlayAttachAck {
                accepted: r.bool("accepted")?,
                reflexive: read_addr(&mut r)?,
                keepalive_secs: r.u16()?,
                super_nodes: read_entries(&mut r)?,
            },
            MessageType::OverlayHostCache => Message::OverlayHostCache {
                entries: read_entries(&mut r)?,
            },
            MessageType::OverlayMembership => Message::OverlayMembership {
                entries: read_entries(&mut r)?,
            },
            MessageType::OverlayHandover => Message::OverlayHandover {
                entries: read_entries(&mut r)?,
            },
            MessageType::OverlayStunForward => Message::OverlayStunForward {
                client: read_addr(&mut r)?,
                transaction: r.array()?,
            },
            MessageType::MemberProbe => Message::MemberProbe { nonce: r.u32()? },
            MessageType::MemberProbeAck => Message::MemberProbeAck { nonce: r.u32()? },
            MessageType::MemberUpdate => {
                let sync = r.bool("sync")?;
                let n = usize::from(r.u8()?);
                if n > MAX_MEMBER_EVENTS {
                    return Err(DecodeError::TooLong {
                        what: "member events",
                        len: n,
                        max: MAX_MEMBER_EVENTS,
                    });
                }
                let mut events = Vec::with_capacity(n);
                for _ in 0..n {
                    let flags = r.u8()?;
                    if flags & !(MEMBER_ALIVE | MEMBER_SIGNED) != 0 {
                        return Err(DecodeError::Invalid("member event flags"));
                    }
                    events.push(MemberEvent {
                        alive: flags & MEMBER_ALIVE != 0,
                        incarnation: r.u32()?,
                        entry: HostEntry {
                            addr: read_addr(&mut r)?,
                            static_key: r.array()?,
                        },
                        signature: if flags & MEMBER_SIGNED != 0 {
                            Some(r.array()?)
                        } else {
                            None
                        },
                    });
                }
                Message::MemberUpdate { sync, events }
            }
            MessageType::MemberDigest => {
                let level = r.u8()?;
                if level > 1 {
                    return Err(DecodeError::Invalid("digest level"));
                }
                let bucket = r.u8()?;
                if usize::from(bucket) >= DIGEST_BUCKETS {
                    return Err(DecodeError::Invalid("digest bucket"));
                }
                let n = usize::from(r.u8()?);
                if n > DIGEST_BUCKETS {
                    return Err(DecodeError::TooLong {
                        what: "digest hashes",
                        len: n,
                        max: DIGEST_BUCKETS,
                    });
                }
                let mut hashes = Vec::with_capacity(n);
                for _ in 0..n {
                    hashes.push(r.u64()?);
                }
                Message::MemberDigest {
                    level,
                    bucket,
                    hashes,
                }
            }
            MessageType::MemberCertPull => {
                let n = usize::from(r.u8()?);
                if n > MAX_CERT_PULL {
                    return Err(DecodeError::TooLong {
                        what: "certificate pull",
                        len: n,
                        max: MAX_CERT_PULL,
                    });
                }
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.array()?);
                }
                Message::MemberCertPull { keys }
            }
            MessageType::MemberCerts => {
                let n = usize::from(r.u8()?);
                if n > MAX_MEMBER_CERTS {
                    return Err(DecodeError::TooLong {
                        what: "member certificates",
                        len: n,
                        max: MAX_MEMBER_CERTS,
                    });
                }
                let mut certs = Vec::with_capacity(n);
                for _ in 0..n {
                    certs.push(Certificate::read(&mut r)?);
                }
                Message::MemberCerts { certs }
            }
            MessageType::MemberPull => {
                let bucket = r.u8()?;
                if usize::from(bucket) >= DIGEST_BUCKETS {
                    return Err(DecodeError::Invalid("pull bucket"));
                }
                Message::MemberPull {
                    bucket,
                    mask: r.u64()?,
                }
            }
            MessageType::IndexStore => Message::IndexStore {
                replicate: r.bool("replicate")?,
                record: Box::new(PresenceRecord::read(&mut r)?),
            },
            MessageType::ContactPoke => Message::ContactPoke {
                device: DeviceId(r.array()?),
            },
            MessageType::ContactPoked => Message::ContactPoked {
                from: read_user(&mut r)?,
            },
            MessageType::ChatChunk => {
                let (to, id, index, count, data) = read_piece(&mut r)?;
                Message::ChatChunk {
                    to,
                    id,
                    index,
                    count,
                    data,
                }
            }
            MessageType::ChatUnreachable => Message::ChatUnreachable {
                to: DeviceId(r.array()?),
                id: MessageId(r.array()?),
            },
            MessageType::MailboxPut => {
                let forwarded = r.bool("forwarded flag")?;
                let user = read_user(&mut r)?;
                let (to, id, index, count, data) = read_piece(&mut r)?;
                Message::MailboxPut {
                    forwarded,
                    user,
                    to,
                    id,
                    index,
                    count,
                    data: data.to_vec(),
                }
            }
            MessageType::MailboxStored => Message::MailboxStored {
                to: DeviceId(r.array()?),
                id: MessageId(r.array()?),
            },
            MessageType::MailboxDeliver => {
                let (to, id, index, count, data) = read_piece(&mut r)?;
                Message::MailboxDeliver {
                    to,
                    id,
                    index,
                    count,
                    data: data.to_vec(),
                }
            }
            MessageType::MailboxAck => {
                let forwarded = r.bool("forwarded flag")?;
                let user = read_user(&mut r)?;
                let device = DeviceId(r.array()?);
                let n = usize::from(r.u8()?);
                if n > MAX_MAILBOX_ACK {
                    return Err(DecodeError::TooLong {
                        what: "mailbox ack",
                        len: n,
                        max: MAX_MAILBOX_ACK,
                    });
                }
                let ids = (0..n)
                    .map(|_| r.array().map(MessageId))
                    .collect::<Result<_, _>>()?;
                Message::MailboxAck {
                    forwarded,
                    user,
                    device,
                    ids,
                }
            }
            MessageType::IndexSearch => Message::IndexSearch {
                query: r.u32()?,
                full: r.bool("full")?,
                user: read_user(&mut r)?,
            },
            MessageType::IndexSearchAt => Message::IndexSearchAt {
                query: r.u32()?,
                user: read_user(&mut r)?,
                at: {
                    let n = usize::from(r.u8()?);
                    if n > MAX_SEARCH_AT {
                        return Err(DecodeError::TooLong {
                            what: "super nodes to ask",
                            len: n,
                            max: MAX_SEARCH_AT,
                        });
                    }
                    let mut at = Vec::with_capacity(n);
                    for _ in 0..n {
                        at.push(read_addr(&mut r)?);
                    }
                    at
                },
            },
            MessageType::IndexResult => Message::IndexResult {
                query: r.u32()?,
                hops: r.u8()?,
                total: r.u8()?,
                record: Box::new(PresenceRecord::read(&mut r)?),
            },
            MessageType::IndexNotFound => Message::IndexNotFound {
                query: r.u32()?,
                hops: r.u8()?,
                definite: r.bool("definite")?,
            },
            MessageType::IndexWatch => {
                let full = r.bool("full")?;
                let (watch, refresh) = match r.u8()? {
                    0 => (false, false),
                    1 => (true, false),
                    2 => (true, true),
                    _ => return Err(DecodeError::Invalid("watch mode")),
                };
                let n = usize::from(r.u8()?);
                if n > MAX_WATCH_USERS {
                    return Err(DecodeError::TooLong {
                        what: "watched users",
                        len: n,
                        max: MAX_WATCH_USERS,
                    });
                }
                let mut users = Vec::with_capacity(n);
                for _ in 0..n {
                    users.push(read_user(&mut r)?);
                }
                Message::IndexWatch {
                    full,
                    watch,
                    refresh,
                    users,
                }
            }
            MessageType::IndexNotify => Message::IndexNotify {
                record: Box::new(PresenceRecord::read(&mut r)?),
            },
            MessageType::IndexWill => Message::IndexWill {
                record: Box::new(PresenceRecord::read(&mut r)?),
                // Absent (as nodes before standby wills sent it): first-hand.
                standby: match r.remaining() {
                    0 => None,
                    _ if r.u8()? == 1 => Some(read_addr(&mut r)?),
                    _ => return Err(DecodeError::Invalid("standby flag")),
                },
            },
            MessageType::CallInvite => Message::CallInvite {
                call: CallId(r.array()?),
                caller: DeviceId(r.array()?),
                nonce: r.u64()?,
                media: r.u8()?,
                timestamp: UnixTime(r.u64()?),
            },
            MessageType::CallRinging => Message::CallRinging {
                call: CallId(r.array()?),
            },
            MessageType::CallAnswer => Message::CallAnswer {
                call: CallId(r.array()?),
                media: r.u8()?,
            },
            MessageType::CallDecline => Message::CallDecline {
                call: CallId(r.array()?),
            },
            MessageType::CallBusy => Message::CallBusy {
                call: CallId(r.array()?),
            },
            MessageType::CallCancel => Message::CallCancel {
                call: CallId(r.array()?),
            },
            MessageType::CallHangup => Message::CallHangup {
                call: CallId(r.array()?),
            },
            MessageType::CallHold => Message::CallHold {
                call: CallId(r.array()?),
            },
            MessageType::CallResume => Message::CallResume {
                call: CallId(r.array()?),
            },
            MessageType::CallAnsweredElsewhere => Message::CallAnsweredElsewhere {
                call: CallId(r.array()?),
            },
            MessageType::CallKeepAlive => Message::CallKeepAlive {
                call: CallId(r.array()?),
                held: r.bool("held")?,
            },
            MessageType::CallCandidates => {
                let call = CallId(r.array()?);
                let flags = r.u8()?;
                if flags & !7 != 0 {
                    return Err(DecodeError::Invalid("candidate flags"));
                }
                let (opened, update, fresh) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
                let n = usize::from(r.u8()?);
                if n > MAX_CANDIDATES {
                    return Err(DecodeError::TooLong {
                        what: "candidates",
                        len: n,
                        max: MAX_CANDIDATES,
                    });
                }
                let mut candidates = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = match r.u8()? {
                        0 => CandidateKind::Host,
                        1 => CandidateKind::Reflexive,
                        _ => return Err(DecodeError::Invalid("candidate kind")),
                    };
                    candidates.push(Candidate {
                        kind,
                        addr: read_addr(&mut r)?,
                    });
                }
                Message::CallCandidates {
                    call,
                    opened,
                    update,
                    fresh,
                    candidates,
                }
            }
            MessageType::MediaReport => Message::MediaReport {
                call: CallId(r.array()?),
                expected: r.u16()?,
                lost: r.u16()?,
                jitter_ms: r.u16()?,
                rtt_ms: r.u16()?,
                ext: if r.remaining() >= MediaReportExt::LEN {
                    Some(MediaReportExt {
                        runs: r.u16()?,
                        queue_ms: r.u16()?,
                        recv_rate: r.u16()?,
                    })
                } else {
                    None
                },
            },
            MessageType::PathProbe => Message::PathProbe { id: r.u32()? },
            MessageType::PathProbeAck => Message::PathProbeAck {
                id: r.u32()?,
                observed: if r.bool("observed")? {
                    Some(read_addr(&mut r)?)
                } else {
                    None
                },
            },
            MessageType::PathChallenge => Message::PathChallenge { token: r.array()? },
            MessageType::PathResponse => Message::PathResponse { token: r.array()? },
            MessageType::RelayAllocate => Message::RelayAllocate {
                request: r.u32()?,
                device: DeviceId(r.array()?),
            },
            MessageType::RelayAllocated => Message::RelayAllocated {
                request: r.u32()?,
                channel: r.u32()?,
            },
            MessageType::RelayRefused => Message::RelayRefused {
                request: r.u32()?,
                reason: r.u8()?,
            },
            MessageType::RelayOffer => Message::RelayOffer {
                channel: r.u32()?,
                device: DeviceId(r.array()?),
            },
            MessageType::RelayRelease => Message::RelayRelease { channel: r.u32()? },
            other => return Err(DecodeError::Unimplemented(other)),
        };
        r.finish()?;
        Ok(msg)
    }

    /// Append the encoded message to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(self.message_type() as u8);
        match self {
            Message::KeepAlive => {}
            Message::CertificateUpdate { certificate } => certificate.encode(out),
            Message::Ping { id } | Message::Pong { id } => out.put_u32(*id),
            Message::Close { reason } => out.put_u8(reason.to_u8()),
            Message::AppData(data) => out.put_slice(data),
            Message::OverlayAttach {
                nat,
                local_addresses,
            } => {
                out.put_u8(*nat);
                let n = local_addresses.len().min(MAX_LOCAL_ADDRESSES);
                out.put_u8(n as u8);
                for a in &local_addresses[..n] {
                    put_addr(out, a);
                }
            }
            Message::OverlayAttachAck {
                accepted,
                reflexive,
                keepalive_secs,
                super_nodes,
            } => {
                out.put_u8(u8::from(*accepted));
                put_addr(out, reflexive);
                out.put_u16(*keepalive_secs);
                put_entries(out, super_nodes);
            }
            Message::OverlayHostCache { entries }
            | Message::OverlayMembership { entries }
            | Message::OverlayHandover { entries } => put_entries(out, entries),
            Message::OverlayStunForward {
                client,
                transaction,
            } => {
                put_addr(out, client);
                out.put_slice(transaction);
            }
            Message::MemberProbe { nonce } | Message::MemberProbeAck { nonce } => {
                out.put_u32(*nonce)
            }
            Message::MemberUpdate { sync, events } => {
                out.put_u8(u8::from(*sync));
                let n = events.len().min(MAX_MEMBER_EVENTS);
                out.put_u8(n as u8);
                for e in &events[..n] {
                    let mut flags = 0;
                    if e.alive {
                        flags |= MEMBER_ALIVE;
                    }
                    if e.signature.is_some() {
                        flags |= MEMBER_SIGNED;
                    }
                    out.put_u8(flags);
                    out.put_u32(e.incarnation);
                    put_addr(out, &e.entry.addr);
                    out.put_slice(&e.entry.static_key);
                    if let Some(sig) = &e.signature {
                        out.put_slice(sig);
                    }
                }
            }
            Message::MemberDigest {
                level,
                bucket,
                hashes,
            } => {
                out.put_u8(*level);
                out.put_u8(*bucket);
                let n = hashes.len().min(DIGEST_BUCKETS);
                out.put_u8(n as u8);
                for h in &hashes[..n] {
                    out.put_u64(*h);
                }
            }
            Message::MemberPull { bucket, mask } => {
                out.put_u8(*bucket);
                out.put_u64(*mask);
            }
            Message::MemberCertPull { keys } => {
                let n = keys.len().min(MAX_CERT_PULL);
                out.put_u8(n as u8);
                for k in &keys[..n] {
                    out.put_slice(k);
                }
            }
            Message::MemberCerts { certs } => {
                let n = certs.len().min(MAX_MEMBER_CERTS);
                out.put_u8(n as u8);
                for c in &certs[..n] {
                    c.encode(out);
                }
            }
            Message::IndexStore { replicate, record } => {
                out.put_u8(u8::from(*replicate));
                record.encode(out);
            }
            Message::ContactPoke { device } => out.put_slice(&device.0),
            Message::ChatChunk {
                to,
                id,
                index,
                count,
                data,
            } => put_piece(out, to, id, *index, *count, data),
            Message::MailboxPut {
                forwarded,
                user,
                to,
                id,
                index,
                count,
                data,
            } => {
                out.put_u8(u8::from(*forwarded));
                out.put_u8(user.as_str().len() as u8);
                out.put_slice(user.as_str().as_bytes());
                put_piece(out, to, id, *index, *count, data);
            }
            Message::MailboxStored { to, id } => {
                out.put_slice(&to.0);
                out.put_slice(&id.0);
            }
            Message::MailboxDeliver {
                to,
                id,
                index,
                count,
                data,
            } => put_piece(out, to, id, *index, *count, data),
            Message::MailboxAck {
                forwarded,
                user,
                device,
                ids,
            } => {
                out.put_u8(u8::from(*forwarded));
                out.put_u8(user.as_str().len() as u8);
                out.put_slice(user.as_str().as_bytes());
                out.put_slice(&device.0);
                let n = ids.len().min(MAX_MAILBOX_ACK);
                out.put_u8(n as u8);
                for id in &ids[..n] {
                    out.put_slice(&id.0);
                }
            }
            Message::ChatUnreachable { to, id } => {
                out.put_slice(&to.0);
                out.put_slice(&id.0);
            }
            Message::ContactPoked { from } => {
                out.put_u8(from.as_str().len() as u8);
                out.put_slice(from.as_str().as_bytes());
            }
            Message::IndexSearch { query, full, user } => {
                out.put_u32(*query);
                out.put_u8(u8::from(*full));
                out.put_u8(user.as_str().len() as u8);
                out.put_slice(user.as_str().as_bytes());
            }
            Message::IndexSearchAt { query, user, at } => {
                out.put_u32(*query);
                out.put_u8(user.as_str().len() as u8);
                out.put_slice(user.as_str().as_bytes());
                let n = at.len().min(MAX_SEARCH_AT);
                out.put_u8(n as u8);
                for a in &at[..n] {
                    put_addr(out, a);
                }
            }
            Message::IndexResult {
                query,
                hops,
                total,
                record,
            } => {
                out.put_u32(*query);
                out.put_u8(*hops);
                out.put_u8(*total);
                record.encode(out);
            }
            Message::IndexNotFound {
                query,
                hops,
                definite,
            } => {
                out.put_u32(*query);
                out.put_u8(*hops);
                out.put_u8(u8::from(*definite));
            }
            Message::IndexWatch {
                full,
                watch,
                refresh,
                users,
            } => {
                out.put_u8(u8::from(*full));
                out.put_u8(match (watch, refresh) {
                    (false, _) => 0,
                    (true, false) => 1,
                    (true, true) => 2,
                });
                let n = users.len().min(MAX_WATCH_USERS);
                out.put_u8(n as u8);
                for u in &users[..n] {
                    out.put_u8(u.as_str().len() as u8);
                    out.put_slice(u.as_str().as_bytes());
                }
            }
            Message::IndexNotify { record } => record.encode(out),
            Message::IndexWill { record, standby } => {
                record.encode(out);
                if let Some(sn) = standby {
                    out.put_u8(1);
                    put_addr(out, sn);
                }
            }
            Message::CallInvite {
                call,
                caller,
                nonce,
                media,
                timestamp,
            } => {
                out.put_slice(&call.0);
                out.put_slice(&caller.0);
                out.put_u64(*nonce);
                out.put_u8(*media);
                out.put_u64(timestamp.0);
            }
            Message::CallAnswer { call, media } => {
                out.put_slice(&call.0);
                out.put_u8(*media);
            }
            Message::CallKeepAlive { call, held } => {
                out.put_slice(&call.0);
                out.put_u8(u8::from(*held));
            }
            Message::CallCandidates {
                call,
                opened,
                update,
                fresh,
                candidates,
            } => {
                out.put_slice(&call.0);
                out.put_u8(u8::from(*opened) | u8::from(*update) << 1 | u8::from(*fresh) << 2);
                let n = candidates.len().min(MAX_CANDIDATES);
                out.put_u8(n as u8);
                for c in &candidates[..n] {
                    out.put_u8(c.kind as u8);
                    put_addr(out, &c.addr);
                }
            }
            Message::MediaReport {
                call,
                expected,
                lost,
                jitter_ms,
                rtt_ms,
                ext,
            } => {
                out.put_slice(&call.0);
                out.put_u16(*expected);
                out.put_u16(*lost);
                out.put_u16(*jitter_ms);
                out.put_u16(*rtt_ms);
                if let Some(e) = ext {
                    out.put_u16(e.runs);
                    out.put_u16(e.queue_ms);
                    out.put_u16(e.recv_rate);
                }
            }
            Message::PathProbe { id } => out.put_u32(*id),
            Message::PathProbeAck { id, observed } => {
                out.put_u32(*id);
                out.put_u8(u8::from(observed.is_some()));
                if let Some(a) = observed {
                    put_addr(out, a);
                }
            }
            Message::PathChallenge { token } | Message::PathResponse { token } => {
                out.put_slice(token)
            }
            Message::RelayAllocate { request, device } => {
                out.put_u32(*request);
                out.put_slice(&device.0);
            }
            Message::RelayAllocated { request, channel } => {
                out.put_u32(*request);
                out.put_u32(*channel);
            }
            Message::RelayRefused { request, reason } => {
                out.put_u32(*request);
                out.put_u8(*reason);
            }
            Message::RelayOffer { channel, device } => {
                out.put_u32(*channel);
                out.put_slice(&device.0);
            }
            Message::RelayRelease { channel } => out.put_u32(*channel),
            Message::CallRinging { call }
            | Message::CallDecline { call }
            | Message::CallBusy { call }
            | Message::CallCancel { call }
            | Message::CallHangup { call }
            | Message::CallHold { call }
            | Message::CallResume { call }
            | Message::CallAnsweredElsewhere { call } => out.put_slice(&call.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn type_numbers_are_unique_and_stable() {
        let mut seen = std::collections::BTreeSet::new();
        for t in MessageType::ALL {
            assert!(seen.insert(*t as u8), "{t:?} reuses a number");
            assert_eq!(MessageType::from_u8(*t as u8), Some(*t));
        }
        assert_eq!(MessageType::KeepAlive as u8, 0x01);
        assert_eq!(MessageType::CallInvite as u8, 0x40);
        assert_eq!(MessageType::ChatChunk as u8, 0x60);
        assert_eq!(MessageType::FileChunk as u8, 0x72);
        assert_eq!(MessageType::ConferenceJoin as u8, 0x80);
    }

    #[test]
    fn reserved_types_are_typed_errors() {
        assert_eq!(
            Message::decode(&[0x70, 1, 2, 3]),
            Err(DecodeError::Unimplemented(MessageType::FileOffer))
        );
        assert_eq!(
            Message::decode(&[0xEE]),
            Err(DecodeError::UnknownMessageType(0xEE))
        );
        assert_eq!(
            Message::decode(&[0x01, 0]),
            Err(DecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn overlay_messages_roundtrip() {
        let e = HostEntry {
            addr: "198.18.0.1:4000".parse().unwrap(),
            static_key: [9; 32],
        };
        let e6 = HostEntry {
            addr: "[2001:db8::1]:4000".parse().unwrap(),
            static_key: [8; 32],
        };
        for m in [
            Message::OverlayAttach {
                nat: 3,
                local_addresses: vec!["10.0.0.2:5000".parse().unwrap()],
            },
            Message::OverlayAttachAck {
                accepted: true,
                reflexive: "198.18.0.9:1234".parse().unwrap(),
                keepalive_secs: 20,
                super_nodes: vec![e, e6],
            },
            Message::OverlayHostCache { entries: vec![] },
            Message::OverlayMembership {
                entries: vec![e; MAX_HOST_ENTRIES],
            },
            Message::OverlayHandover { entries: vec![e6] },
            Message::OverlayStunForward {
                client: "198.18.3.3:999".parse().unwrap(),
                transaction: [5; 12],
            },
        ] {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            assert!(b.len() <= MAX_APP_DATA);
            assert_eq!(Message::decode(&b).unwrap(), m);
        }
        // 17 entries announced: refused before reading them.
        assert!(matches!(
            Message::decode(&[0x22, 17]),
            Err(DecodeError::TooLong { .. })
        ));
    }

    #[test]
    fn membership_messages_roundtrip_and_fit_a_datagram() {
        let e6 = HostEntry {
            addr: "[2001:db8::1]:4000".parse().unwrap(),
            static_key: [8; 32],
        };
        let full = MemberEvent {
            alive: false,
            incarnation: u32::MAX,
            entry: e6,
            signature: Some([9; 64]),
        };
        let cert = crate::testkit::TestNetwork::new(3)
            .identity("a-very-long-user-name-of-32-char")
            .certificate;
        for m in [
            Message::MemberProbe { nonce: 7 },
            Message::MemberProbeAck { nonce: u32::MAX },
            Message::MemberUpdate {
                sync: false,
                events: vec![full; MAX_MEMBER_EVENTS],
            },
            Message::MemberUpdate {
                sync: true,
                events: vec![],
            },
            Message::MemberCertPull {
                keys: vec![[3; 32]; MAX_CERT_PULL],
            },
            Message::MemberCerts {
                certs: vec![cert; MAX_MEMBER_CERTS],
            },
            Message::MemberDigest {
                level: 1,
                bucket: 63,
                hashes: vec![u64::MAX; DIGEST_BUCKETS],
            },
            Message::MemberPull {
                bucket: 5,
                mask: 1 << 63,
            },
        ] {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            assert!(b.len() <= MAX_APP_DATA, "{} bytes", b.len());
            assert_eq!(Message::decode(&b).unwrap(), m);
        }
        for bad in [
            &[0x28, 0, 21][..],    // too many events
            &[0x28, 2, 0][..],     // sync flag not a boolean
            &[0x29, 2, 0, 0][..],  // no level 2
            &[0x29, 1, 64, 0][..], // bucket out of range
            &[0x29, 0, 0, 65][..], // too many hashes
            &[0x2A, 64, 0, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert!(Message::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn index_messages_roundtrip_and_fit_a_datagram() {
        use crate::crypto::Capabilities;
        use crate::testkit::{TestNetwork, TEST_WALL};
        let net = TestNetwork::new(1);
        let id = net.identity("alice");
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        // The largest record: four super nodes and four local addresses, all IPv6.
        let record = Box::new(PresenceRecord::sign(
            &id.device,
            id.certificate,
            true,
            vec![addr("[2001:db8::1]:4000"); 4],
            Some(addr("[2001:db8::2]:4000")),
            vec![addr("[2001:db8::3]:4000"); 4],
            3,
            Capabilities::VOICE,
            9,
            TEST_WALL,
        ));
        for m in [
            Message::IndexStore {
                replicate: true,
                record: record.clone(),
            },
            Message::IndexSearch {
                query: 7,
                full: true,
                user: UserName::parse("alice").unwrap(),
            },
            Message::IndexSearchAt {
                query: 8,
                user: UserName::parse("alice").unwrap(),
                at: vec![
                    "198.18.0.1:4000".parse().unwrap(),
                    "[2001:db8::1]:4000".parse().unwrap(),
                    "198.18.0.2:4000".parse().unwrap(),
                    "198.18.0.3:4000".parse().unwrap(),
                ],
            },
            Message::IndexResult {
                query: 7,
                hops: 2,
                total: 3,
                record: record.clone(),
            },
            Message::IndexNotFound {
                query: 7,
                hops: 2,
                definite: true,
            },
            Message::IndexWatch {
                full: true,
                watch: true,
                refresh: true,
                users: (0..MAX_WATCH_USERS)
                    .map(|i| UserName::parse(&format!("u{i:0>31}")).unwrap())
                    .collect(),
            },
            Message::IndexWatch {
                full: false,
                watch: false,
                refresh: false,
                users: vec![UserName::parse("alice").unwrap()],
            },
            Message::IndexNotify {
                record: record.clone(),
            },
            Message::IndexWill {
                record: record.clone(),
                standby: None,
            },
            Message::IndexWill {
                record,
                standby: Some("[2001:db8::1]:443".parse().unwrap()),
            },
            Message::ContactPoke {
                device: DeviceId([7; 16]),
            },
            Message::ContactPoked {
                from: UserName::parse("alice").unwrap(),
            },
            Message::ChatChunk {
                to: DeviceId([1; 16]),
                id: MessageId([2; 16]),
                index: MAX_CHAT_CHUNKS as u8 - 1,
                count: MAX_CHAT_CHUNKS as u8,
                data: &[0xAB; MAX_CHAT_CHUNK],
            },
            Message::ChatUnreachable {
                to: DeviceId([1; 16]),
                id: MessageId([2; 16]),
            },
            Message::MailboxPut {
                forwarded: true,
                user: UserName::parse("bob").unwrap(),
                to: DeviceId([1; 16]),
                id: MessageId([2; 16]),
                index: 3,
                count: 4,
                data: vec![0xCD; MAX_CHAT_CHUNK],
            },
            Message::MailboxStored {
                to: DeviceId([1; 16]),
                id: MessageId([2; 16]),
            },
            Message::MailboxDeliver {
                to: DeviceId([1; 16]),
                id: MessageId([2; 16]),
                index: 0,
                count: 1,
                data: vec![1, 2, 3],
            },
            Message::MailboxAck {
                forwarded: false,
                user: UserName::parse("bob").unwrap(),
                device: DeviceId([1; 16]),
                ids: vec![MessageId([9; 16]); MAX_MAILBOX_ACK],
            },
        ] {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            assert!(b.len() <= MAX_APP_DATA, "{} bytes", b.len());
            assert_eq!(Message::decode(&b).unwrap(), m);
        }
        // A user name that is not canonical (upper case) is refused.
        let mut b = BytesMut::new();
        Message::IndexSearch {
            query: 1,
            full: false,
            user: UserName::parse("alice").unwrap(),
        }
        .encode(&mut b);
        b[7] = b'A';
        assert!(Message::decode(&b).is_err());
    }

    #[test]
    fn call_messages_roundtrip_and_fit_a_datagram() {
        let call = CallId([0xAB; 16]);
        let all = [
            Message::CallInvite {
                call,
                caller: DeviceId([7; 16]),
                nonce: u64::MAX,
                media: 0x81,
                timestamp: UnixTime(1_700_000_000),
            },
            Message::CallRinging { call },
            Message::CallAnswer { call, media: 1 },
            Message::CallDecline { call },
            Message::CallBusy { call },
            Message::CallCancel { call },
            Message::CallHangup { call },
            Message::CallHold { call },
            Message::CallResume { call },
            Message::CallAnsweredElsewhere { call },
            Message::CallKeepAlive { call, held: true },
            Message::CallKeepAlive { call, held: false },
        ];
        for m in all {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            assert!(b.len() <= 51, "{} bytes", b.len());
            assert!(b.len() <= MAX_APP_DATA);
            assert_eq!(Message::decode(&b).unwrap(), m);
            // Every strict prefix is a typed truncation error, one byte more is trailing.
            for cut in 1..b.len() {
                assert!(
                    matches!(
                        Message::decode(&b[..cut]),
                        Err(DecodeError::Truncated { .. })
                    ),
                    "{m:?} cut at {cut}"
                );
            }
            let mut long = b.to_vec();
            long.push(0);
            assert_eq!(Message::decode(&long), Err(DecodeError::TrailingBytes(1)));
        }
        // The hold flag is a strict boolean, so decoding stays canonical.
        let mut b = BytesMut::new();
        Message::CallKeepAlive { call, held: true }.encode(&mut b);
        b[17] = 2;
        assert_eq!(Message::decode(&b), Err(DecodeError::Invalid("held")));
    }

    #[test]
    fn connectivity_and_relay_messages_roundtrip() {
        let call = CallId([3; 16]);
        let full: Vec<Candidate> = (0..MAX_CANDIDATES)
            .map(|i| Candidate {
                kind: if i % 2 == 0 {
                    CandidateKind::Host
                } else {
                    CandidateKind::Reflexive
                },
                addr: if i < 4 {
                    format!("198.18.0.{i}:4000").parse().unwrap()
                } else {
                    format!("[2001:db8::{i}]:4000").parse().unwrap()
                },
            })
            .collect();
        let all = [
            Message::CallCandidates {
                call,
                opened: false,
                update: true,
                fresh: true,
                candidates: vec![],
            },
            Message::CallCandidates {
                call,
                opened: true,
                update: false,
                fresh: false,
                candidates: full,
            },
            Message::MediaReport {
                call,
                expected: 50,
                lost: 3,
                jitter_ms: 12,
                rtt_ms: 65535,
                ext: None,
            },
            Message::PathProbe { id: 7 },
            Message::PathChallenge { token: [1; 8] },
            Message::PathResponse { token: [2; 8] },
            Message::PathProbeAck {
                id: 7,
                observed: None,
            },
            Message::PathProbeAck {
                id: u32::MAX,
                observed: Some("198.19.1.2:5000".parse().unwrap()),
            },
            Message::RelayAllocate {
                request: 1,
                device: DeviceId([4; 16]),
            },
            Message::RelayAllocated {
                request: 1,
                channel: 0x7fff_ffff,
            },
            Message::RelayRefused {
                request: 1,
                reason: 2,
            },
            Message::RelayOffer {
                channel: 9,
                device: DeviceId([5; 16]),
            },
            Message::RelayRelease { channel: 9 },
        ];
        for m in all {
            let mut b = BytesMut::new();
            m.encode(&mut b);
            assert!(b.len() <= MAX_APP_DATA, "{m:?}: {} bytes", b.len());
            assert_eq!(Message::decode(&b).unwrap(), m);
            for cut in 1..b.len() {
                assert!(Message::decode(&b[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut long = b.to_vec();
            long.push(0);
            assert_eq!(Message::decode(&long), Err(DecodeError::TrailingBytes(1)));
        }
        // A report with the extension is the older report and six more bytes: without them
        // it reads as the older one, with some of them it is malformed.
        let with_ext = Message::MediaReport {
            call,
            expected: 50,
            lost: 9,
            jitter_ms: 3,
            rtt_ms: 40,
            ext: Some(MediaReportExt {
                runs: 3,
                queue_ms: 120,
                recv_rate: 243,
            }),
        };
        let mut b = BytesMut::new();
        with_ext.encode(&mut b);
        assert_eq!(Message::decode(&b).unwrap(), with_ext);
        let older = Message::decode(&b[..b.len() - MediaReportExt::LEN]).unwrap();
        assert!(matches!(older, Message::MediaReport { ext: None, .. }));
        for cut in 1..MediaReportExt::LEN {
            assert!(matches!(
                Message::decode(&b[..b.len() - cut]),
                Err(DecodeError::TrailingBytes(_))
            ));
        }
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(Message::decode(&long), Err(DecodeError::TrailingBytes(1)));
        // Too many candidates, an unknown kind and a non-boolean flag are typed errors.
        let mut b = BytesMut::new();
        b.put_u8(0x49);
        b.put_slice(&call.0);
        b.put_u8(1);
        b.put_u8(MAX_CANDIDATES as u8 + 1);
        assert!(matches!(
            Message::decode(&b),
            Err(DecodeError::TooLong { .. })
        ));
        let mut b = BytesMut::new();
        Message::CallCandidates {
            call,
            opened: true,
            update: false,
            fresh: false,
            candidates: vec![Candidate {
                kind: CandidateKind::Host,
                addr: "198.18.0.1:1".parse().unwrap(),
            }],
        }
        .encode(&mut b);
        let mut bad = b.to_vec();
        bad[19] = 9;
        assert_eq!(
            Message::decode(&bad),
            Err(DecodeError::Invalid("candidate kind"))
        );
        let mut bad = b.to_vec();
        bad[17] = 8;
        assert_eq!(
            Message::decode(&bad),
            Err(DecodeError::Invalid("candidate flags"))
        );
    }

    fn msg_strategy() -> impl Strategy<Value = (u8, u32, Vec<u8>)> {
        (
            0u8..5,
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..MAX_APP_DATA),
        )
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let _ = Message::decode(&data);
        }

        #[test]
        fn index_decode_never_panics(
            ty in 0x30u8..0x3A,
            data in proptest::collection::vec(any::<u8>(), 0..1300),
        ) {
            let mut buf = vec![ty];
            buf.extend(data);
            let _ = Message::decode(&buf);
        }

        #[test]
        fn membership_decode_never_panics(
            ty in 0x26u8..0x2B,
            data in proptest::collection::vec(any::<u8>(), 0..1300),
        ) {
            let mut buf = vec![ty];
            buf.extend(data);
            let _ = Message::decode(&buf);
        }

        #[test]
        fn call_decode_never_panics(
            ty in 0x40u8..0x4C,
            data in proptest::collection::vec(any::<u8>(), 0..1300),
        ) {
            let mut buf = vec![ty];
            buf.extend(data);
            if let Ok(m) = Message::decode(&buf) {
                // What decodes re-encodes to the same bytes (the fuzz target's property).
                let mut out = BytesMut::new();
                m.encode(&mut out);
                prop_assert_eq!(&out[..], &buf[..]);
            }
        }

        #[test]
        fn call_invites_roundtrip(
            call in any::<[u8; 16]>(),
            caller in any::<[u8; 16]>(),
            nonce in any::<u64>(),
            media in any::<u8>(),
            ts in any::<u64>(),
        ) {
            let m = Message::CallInvite {
                call: CallId(call),
                caller: DeviceId(caller),
                nonce,
                media,
                timestamp: UnixTime(ts),
            };
            let mut buf = BytesMut::new();
            m.encode(&mut buf);
            prop_assert_eq!(Message::decode(&buf).unwrap(), m);
        }

        #[test]
        fn member_updates_roundtrip(
            sync in any::<bool>(),
            events in proptest::collection::vec(
                (any::<bool>(), any::<u32>(), any::<[u8; 4]>(), any::<u16>(), any::<[u8; 32]>(), any::<Option<u8>>()),
                0..=MAX_MEMBER_EVENTS,
            ),
        ) {
            let events: Vec<MemberEvent> = events
                .into_iter()
                .map(|(alive, incarnation, ip, port, static_key, sig)| MemberEvent {
                    alive,
                    incarnation,
                    entry: HostEntry {
                        addr: SocketAddr::from((ip, port)),
                        static_key,
                    },
                    signature: sig.map(|b| [b; 64]),
                })
                .collect();
            let m = Message::MemberUpdate { sync, events };
            let mut buf = BytesMut::new();
            m.encode(&mut buf);
            prop_assert_eq!(Message::decode(&buf).unwrap(), m);
        }

        #[test]
        fn roundtrip((kind, n, data) in msg_strategy()) {
            let m = match kind {
                0 => Message::KeepAlive,
                1 => Message::Ping { id: n },
                2 => Message::Pong { id: n },
                3 => Message::Close { reason: CloseReason::from_u8(n as u8) },
                _ => Message::AppData(&data),
            };
            let mut buf = BytesMut::new();
            m.encode(&mut buf);
            prop_assert_eq!(Message::decode(&buf).unwrap(), m);
        }
    }
}
