//! The small values the client hands out: ids, call states and reasons, statistics, search
//! outcomes, path descriptions. Each says itself in words through `Display`.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use natter_core::call::PathKind;
use natter_core::crypto::DeviceId;
use natter_media::audio::processing::VoiceProcessing;

/// A call of one client: unique within that client and never reused (0 is never a call).
///
/// It exists from the moment the call is dialled or rings here, before the network has
/// placed it; [`Client::call_by_id`](crate::Client::call_by_id) turns it back into a
/// [`Call`](crate::Call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub(crate) u64);

impl CallId {
    /// The id as a number (what the C ABI hands out).
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The id a number names (from [`CallId::as_u64`]).
    pub const fn from_u64(n: u64) -> Self {
        Self(n)
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call {}", self.0)
    }
}

/// A search started with [`Client::search`](crate::Client::search); its outcome comes as an
/// [`Event::SearchResult`](crate::Event::SearchResult) with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SearchId(pub(crate) u64);

impl SearchId {
    /// The id as a number.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for SearchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "search {}", self.0)
    }
}

/// A login-server request running in the background
/// ([`Client::begin_login`](crate::Client::begin_login),
/// [`Client::begin_register`](crate::Client::begin_register)): its outcome comes as an event
/// with the same id ([`Event::LoginFinished`](crate::Event::LoginFinished),
/// [`Event::RegisterFinished`](crate::Event::RegisterFinished)); cancel it with
/// [`Client::cancel_request`](crate::Client::cancel_request). Unique within a client, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The id as a number (what the C ABI hands out).
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The id a number names (from [`RequestId::as_u64`]).
    pub const fn from_u64(n: u64) -> Self {
        Self(n)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request {}", self.0)
    }
}

/// What a node is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum NodeRole {
    /// An ordinary node, attached to super nodes.
    #[default]
    Client,
    /// A super node: it serves clients, holds part of the global index and relays calls.
    SuperNode,
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeRole::Client => "ordinary node",
            NodeRole::SuperNode => "super node",
        })
    }
}

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallState {
    /// Outgoing: looking the callee up and inviting their devices.
    Dialing,
    /// Outgoing: at least one of the callee's devices rings.
    Ringing,
    /// Incoming: ringing here; answer or decline it.
    Incoming,
    /// Answered here; waiting for the caller's confirmation (a round trip).
    Answering,
    /// Connected (see the hold flags of [`CallStats`]).
    Active,
    /// Over (see [`CallStats::end_reason`]).
    Ended,
}

impl fmt::Display for CallState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallState::Dialing => "dialing",
            CallState::Ringing => "ringing",
            CallState::Incoming => "ringing here",
            CallState::Answering => "answering",
            CallState::Active => "connected",
            CallState::Ended => "ended",
        })
    }
}

/// Why the network refused to place a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// This device was in another call.
    InCall,
    /// The callee has no device to invite.
    NoDevices,
    /// The callee has too many devices.
    TooManyDevices,
    /// Another reason.
    Other,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::InCall => "already in a call",
            Refusal::NoDevices => "no device to invite",
            Refusal::TooManyDevices => "too many devices",
            Refusal::Other => "the call could not be placed",
        })
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndReason {
    /// A connected call was hung up (`local`: by this side).
    HungUp {
        /// This side hung up.
        local: bool,
    },
    /// The callee declined (`local`: this side declined).
    Declined {
        /// This side declined.
        local: bool,
    },
    /// Every device of the callee was in another call.
    Busy,
    /// The caller gave up before an answer (`local`: this side was the caller).
    Cancelled {
        /// This side cancelled.
        local: bool,
    },
    /// Nobody answered within 45 s.
    Missed,
    /// Nothing came from the other side for 5 s (network lost, peer crashed).
    PeerVanished,
    /// Another device of this user answered.
    AnsweredElsewhere,
    /// The callee does not exist (the call was never placed).
    UserNotFound,
    /// No device of the callee is online (the call was never placed).
    UserOffline,
    /// The global index could not be searched (not attached yet, too few super nodes
    /// answered): try again.
    SearchUnavailable,
    /// The call could not be placed.
    Refused(Refusal),
    /// The client was stopped or closed.
    Stopped,
    /// This device was already in a call and refused this one as busy.
    RejectedBusy,
}

impl EndReason {
    /// True when the call was never placed (the user does not exist or is offline, the index
    /// could not answer, the network refused).
    pub fn never_placed(self) -> bool {
        matches!(
            self,
            EndReason::UserNotFound
                | EndReason::UserOffline
                | EndReason::SearchUnavailable
                | EndReason::Refused(_)
        )
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::HungUp { local: true } => f.write_str("hung up"),
            EndReason::HungUp { local: false } => f.write_str("the other side hung up"),
            EndReason::Declined { local: true } => f.write_str("declined"),
            EndReason::Declined { local: false } => f.write_str("the callee declined"),
            EndReason::Busy => f.write_str("busy"),
            EndReason::Cancelled { local: true } => f.write_str("cancelled"),
            EndReason::Cancelled { local: false } => f.write_str("the caller gave up"),
            EndReason::Missed => f.write_str("nobody answered"),
            EndReason::PeerVanished => f.write_str("the other side vanished"),
            EndReason::AnsweredElsewhere => f.write_str("answered on another device"),
            EndReason::UserNotFound => f.write_str("no such user"),
            EndReason::UserOffline => f.write_str("the user is offline"),
            EndReason::SearchUnavailable => f.write_str("the index could not be searched"),
            EndReason::Refused(r) => write!(f, "{r}"),
            EndReason::Stopped => f.write_str("the client stopped"),
            EndReason::RejectedBusy => f.write_str("refused: this device was in another call"),
        }
    }
}

/// Why a call's path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PathReason {
    /// The first choice, or a better path started to work.
    Better,
    /// Nothing arrived on the old path for 600 ms.
    Dead,
    /// The peer reported more than 25 % loss.
    Loss,
    /// The round-trip time went above 4 s.
    Rtt,
    /// The other side moved the call and this side followed.
    Peer,
}

impl PathReason {
    /// A one-word name: `better`, `dead`, `loss`, `rtt`, `peer`.
    pub fn name(self) -> &'static str {
        match self {
            PathReason::Better => "better",
            PathReason::Dead => "dead",
            PathReason::Loss => "loss",
            PathReason::Rtt => "rtt",
            PathReason::Peer => "peer",
        }
    }
}

impl fmt::Display for PathReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathReason::Better => "a better path works",
            PathReason::Dead => "the old path went silent",
            PathReason::Loss => "too much loss on the old path",
            PathReason::Rtt => "the old path was too slow",
            PathReason::Peer => "the other side moved",
        })
    }
}

/// A call's media path.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PathInfo {
    /// What kind of path: direct on the LAN, direct through the NATs, relayed over UDP or
    /// TCP.
    pub kind: PathKind,
    /// Why the call moved to it.
    pub reason: PathReason,
    /// Where the media goes, in words (addresses, relay channel), for logs.
    pub route: String,
    /// The address the media is sent to over UDP: the peer's (direct) or the relaying super
    /// node's; `None` over a TCP stream.
    pub remote: Option<SocketAddr>,
}

impl fmt::Display for PathInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.kind.name(), self.reason, self.route)
    }
}

/// What a call's audio did.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct AudioStats {
    /// Media frames sent.
    pub frames_sent: u64,
    /// Media frames received into the jitter buffer.
    pub frames_received: u64,
    /// Media bytes sent (frames, without UDP/IP overhead).
    pub bytes_sent: u64,
    /// The jitter buffer's current delay, milliseconds.
    pub jitter_buffer_ms: f64,
    /// Fraction of received audio missing before FEC and redundancy.
    pub loss_before_recovery: f64,
    /// Fraction still missing after them (concealed).
    pub loss_after_recovery: f64,
    /// Milliseconds of received audio that had to be concealed.
    pub concealed_ms: f64,
    /// Received media bitrate, kilobits per second.
    pub bitrate_kbps: f64,
    /// Estimated listening quality of received audio (MOS, 1 to 4.5; ITU-T G.107 E-model,
    /// wideband, calibrated against wideband PESQ) over the last 8 s of received audio,
    /// recent loss weighing most, so it recovers after a burst of loss; time on hold is not
    /// counted. `None` before any audio arrived.
    pub mos: Option<f64>,
    /// The voice processing that runs on captured audio.
    pub voice_processing: VoiceProcessing,
    /// How much the echo canceller's linear filter attenuates the echo, by its own estimate
    /// (echo return loss enhancement, dB; `None` while echo cancellation is off). It starts
    /// near 0 and climbs as the filter learns the room; the suppressor after it takes the
    /// echo much further down than this says (`benches/echo.sh` measures the whole).
    pub echo_erle_db: Option<f64>,
}

/// A call's state and statistics: live while it runs, final once it ended.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CallStats {
    /// Where the call stands.
    pub state: CallState,
    /// Why it ended, once it has.
    pub end_reason: Option<EndReason>,
    /// Captured audio is replaced by silence ([`Call::set_muted`](crate::Call::set_muted)).
    pub muted: bool,
    /// This side holds the call.
    pub local_hold: bool,
    /// The other side holds the call.
    pub remote_hold: bool,
    /// The media path, once connected.
    pub path: Option<PathKind>,
    /// Time since the call connected (until it ended); zero before.
    pub duration: Duration,
    /// Round-trip time on the media path.
    pub rtt: Option<Duration>,
    /// Fraction (0 to 1) of the other side's media that did not arrive, last second.
    pub loss_in: f64,
    /// Fraction of this side's media the other side reported lost, last second.
    pub loss_out: f64,
    /// Interarrival jitter of received media, milliseconds.
    pub jitter_ms: f64,
    /// Media frames that arrived from the network.
    pub frames_in: u64,
    /// What the audio did, once it ran.
    pub audio: Option<AudioStats>,
}

impl fmt::Display for CallStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.state)?;
        if let Some(p) = self.path {
            write!(f, ", path {}", p.name())?;
        }
        if let Some(r) = self.rtt {
            write!(f, ", RTT {:.1} ms", r.as_secs_f64() * 1000.0)?;
        }
        write!(
            f,
            ", loss in {:.1} % out {:.1} %, jitter {:.1} ms, {} frames in",
            self.loss_in * 100.0,
            self.loss_out * 100.0,
            self.jitter_ms,
            self.frames_in
        )?;
        if let Some(a) = self.audio {
            write!(
                f,
                "; audio: {} frames sent, {} received",
                a.frames_sent, a.frames_received
            )?;
            if let Some(m) = a.mos {
                write!(f, ", estimated MOS {m:.2}")?;
            }
        }
        Ok(())
    }
}

/// One device of a user, as a search found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceRecord {
    /// The device.
    pub device: DeviceId,
    /// Online now (false: logged out; `last_seen` says when its record was signed).
    pub online: bool,
    /// When its record was signed.
    pub last_seen: SystemTime,
    /// The super nodes it is attached to.
    pub super_nodes: Vec<SocketAddr>,
}

/// What a search found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Found {
    /// The user exists: one record per device (online or not), each verified.
    Devices(Vec<DeviceRecord>),
    /// Definitely no such user in the index.
    NotFound,
    /// The index could not tell (not attached, too few super nodes answered): try again.
    Unavailable,
}

/// A finished search.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SearchOutcome {
    /// What was found.
    pub found: Found,
    /// Overlay hops from the super node that ran it (0: its own store or cache).
    pub hops: u8,
    /// How long it took.
    pub took: Duration,
}

impl SearchOutcome {
    /// Devices of the user online now.
    pub fn online(&self) -> usize {
        match &self.found {
            Found::Devices(d) => d.iter().filter(|d| d.online).count(),
            _ => 0,
        }
    }
}

impl fmt::Display for SearchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let took = format!("{:.1} ms", self.took.as_secs_f64() * 1000.0);
        match &self.found {
            Found::Devices(devices) => {
                write!(f, "found: ")?;
                for (i, d) in devices.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "device {} ", d.device)?;
                    if d.online {
                        f.write_str("online")?;
                    } else {
                        let secs = d
                            .last_seen
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        write!(f, "offline, last seen at {secs} (Unix time)")?;
                    }
                    let via: Vec<String> = d.super_nodes.iter().map(|a| a.to_string()).collect();
                    write!(f, " via {}", via.join(", "))?;
                }
                write!(f, " ({} hops, {took})", self.hops)
            }
            Found::NotFound => write!(f, "not found ({took})"),
            Found::Unavailable => write!(f, "the index could not answer, try again ({took})"),
        }
    }
}
